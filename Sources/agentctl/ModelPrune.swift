import ArgumentParser
import Foundation
import Inference
import ModelFile
import Tensor
import Training

struct Prune: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Prune a model in rounds with fine-tuning between them; structured pruning makes it smaller and faster.",
        discussion: """
            --structured removes whole neurons of dense layers and whole channels of
            conv2d layers, with the columns of the next layer that read them: the file
            is genuinely smaller and runs faster on the same kernels. The class layer
            is never pruned. Every prunable layer keeps the same share of its units,
            chosen so the model ends with (1 - SPARSITY) of its parameters.
            Importance (--importance): l1 (default) is the sum of |w| of a unit's
            incoming weights (Li et al. 2017), data-free; taylor scores a unit by
            the squared sum of gradient x weight over its parameters on training
            batches, the first-order estimate of the loss change if it goes
            (Molchanov et al. 2019), and sees what later layers do with the unit.
            On digits l1 did as well or better (README, "Compression"), so it is
            the default.
            Without --structured: unstructured magnitude pruning, for comparison:
            the smallest weights of every layer but the last are zeroed (and kept at
            zero while fine-tuning); the file and the latency stay the same.

            Rounds: the parameters (or non-zero weights) left shrink geometrically,
            so each round removes the same share of what is left; after each round
            the model is fine-tuned for --epochs on the training split (every 5th
            row held out, as 'train' splits) with AdamW. One table line per round:
            parameters, FLOPs, held-out accuracy, FP32 batch-64 latency.
            The drift reference, EWC anchor and replay seed describe the old layers
            and are not carried: run 'agentctl model prepare' on the result.

            Example:
              agentctl model prune mlp.safetensors --data tools/data/digits.csv --out mlp-pruned.safetensors --sparsity 0.7 --structured --rounds 5
            """
    )

    @Argument(help: ArgumentHelp("The FP32 model file.", valueName: "IN")) var input: String
    @Option(help: ArgumentHelp("Training data (CSV with a 'label' column).", valueName: "CSV")) var data: String
    @Option(help: ArgumentHelp("Where to write the pruned model.", valueName: "OUT")) var out: String
    @Option(help: "Share of the parameters to remove, in (0, 1): 0.7 leaves 30%.") var sparsity: Double
    @Flag(help: "Remove whole neurons and channels (a smaller model); without it, unstructured magnitude pruning.") var structured = false
    @Option(help: "Pruning rounds, each followed by fine-tuning.") var rounds: Int = 5
    @Option(help: "Fine-tuning epochs after each round.") var epochs: Int = 3
    @Option(help: "l1 or taylor (structured only).") var importance: Pruning.Importance = .l1
    @Option(help: "Fine-tuning learning rate (AdamW, cosine decay within each round).") var lr: Float = 0.001
    @Option(help: "Seed for shuffling.") var seed: UInt64 = 1
    @Option(help: "Keep a multiple of this many units per layer (8 or 16 fills the kernels' SIMD panels; structured only).") var multiple: Int = 1
    @Flag(help: "Print the table as JSON lines.") var json = false

    func validate() throws {
        guard sparsity > 0, sparsity < 1 else { throw ValidationError("--sparsity must be between 0 and 1 (0.7 removes 70% of the parameters)") }
        guard (1...64).contains(multiple) else { throw ValidationError("--multiple must be between 1 and 64") }
        guard (1...100).contains(rounds) else { throw ValidationError("--rounds must be between 1 and 100") }
        guard (0...1000).contains(epochs) else { throw ValidationError("--epochs must be between 0 and 1000") }
        guard lr > 0, lr <= 1 else { throw ValidationError("--lr must be in (0, 1]") }
    }

    struct Row: Codable {
        var round: Int
        var parameters: Int
        var parametersShare: Double
        var flops: Int
        var accuracy: Float
        var latencyBatch64Us: Double
        var widths: [Int]
    }

    func run() throws {
        try reportingErrors {
            let loaded = try LoadedModel(path: input)
            var network = loaded.network.copy()
            let dataSet = try DataSet.load(path: data, featureCount: network.inputCount, classNames: network.labels)
            let (train, test) = dataSet.split()
            guard train.count > 0, test.count > 0 else { throw ValidationError("\(data): too few rows to split into training and held-out rows") }
            let sites = Pruning.sites(network)
            if structured && sites.isEmpty {
                throw ValidationError("\(input): no layer can be pruned (a single weighted layer, or none that feeds another)")
            }
            if !structured && Pruning.maskableLayers(network).isEmpty {
                throw ValidationError("\(input): no layer can be pruned (the only weighted layer is the class layer)")
            }
            if loaded.quantized != nil && !json {
                printError("note: \(input) is quantized; pruning works on its FP32 weights and writes an FP32 model (run 'agentctl model quantize' on it again); the table is FP32 throughout")
            }
            let original = network.parameterCount
            let unpruned = network.copy()
            var rows: [Row] = []
            func record(_ round: Int, _ net: Network, nonZero: Int) {
                let row = Row(round: round, parameters: nonZero, parametersShare: Double(nonZero) / Double(original),
                              flops: net.layers.reduce(0) { $0 + $1.flops }, accuracy: Evaluation(network: net, data: test).accuracy,
                              latencyBatch64Us: Self.latency(net, rows: test, batch: 64),
                              widths: net.layers.filter { $0.weight != nil }.map { $0.outputShape[0] })
                rows.append(row)
                if json {
                    printJSON(row, pretty: false)
                } else {
                    printError(String(format: "round %2d  parameters %8d (%5.1f%%)  FLOPs %10d  accuracy %@  batch 64 %9.1f us  widths %@",
                                      round, row.parameters, row.parametersShare * 100, row.flops, percent(row.accuracy),
                                      row.latencyBatch64Us, row.widths.map(String.init).joined(separator: "-")))
                }
            }
            record(0, network, nonZero: original)
            var masks: [Int: [Float]] = [:]
            for round in 1...rounds {
                let left = pow(1 - sparsity, Double(round) / Double(rounds))
                if structured {
                    let target = Int((Double(original) * left).rounded())
                    let current = Pruning.sites(network)
                    let fraction = Pruning.fraction(network, sites: current, target: target, multiple: multiple)
                    network = try Pruning.prune(network, fraction: fraction, method: importance, data: train, multiple: multiple)
                } else {
                    masks = Pruning.magnitudeMasks(network, sparsity: Pruning.maskSparsity(network, left: left))
                    Pruning.applyMasks(network, masks)
                }
                if epochs > 0 {
                    let trainer = Trainer(network: network, optimizer: .adam(learningRate: lr), batchSize: 32, seed: seed &+ UInt64(round))
                    if !masks.isEmpty {
                        let net = network, m = masks
                        trainer.afterStep = { Pruning.applyMasks(net, m) }
                    }
                    trainer.fit(train, test: nil, epochs: epochs) { _ in }
                }
                let nonZero = structured ? network.parameterCount : network.parameters.reduce(0) { total, p in
                    total + p.tensor.buffer.reduce(0) { $0 + ($1 != 0 ? 1 : 0) }
                }
                record(round, network, nonZero: nonZero)
            }
            if let bad = network.parameters.first(where: { p in p.tensor.buffer.contains { !$0.isFinite } }) {
                throw ValidationError("fine-tuning diverged ('\(bad.name)' holds a non-finite value); nothing written: try a lower --lr")
            }
            if structured, let last = rows.last, abs(last.parametersShare - (1 - sparsity)) > 0.05, !json {
                printError(String(format: "note: whole units left %.1f%% of the parameters against the %.1f%% asked: the layers are too narrow to come closer",
                                  last.parametersShare * 100, (1 - sparsity) * 100))
            }
            network.version = loaded.network.version + 1
            network.dropFieldSections()
            try network.write(to: out)
            // The speed-up is measured again at the end, the two plans alternating, so that a busy
            // moment of the machine does not fall on one side only.
            let (before, after) = Self.interleavedLatency(unpruned, network, rows: test, batch: 64)
            if !json, let first = rows.first, let last = rows.last {
                print(table(["round", "parameters", "share", "FLOPs", "accuracy", "batch 64 (us)", "widths"],
                            rows.map { ["\($0.round)", "\($0.parameters)", String(format: "%.1f%%", $0.parametersShare * 100), "\($0.flops)",
                                        percent($0.accuracy), String(format: "%.1f", $0.latencyBatch64Us),
                                        $0.widths.map(String.init).joined(separator: "-")] },
                            rightAligned: [0, 1, 2, 3, 4, 5]))
                print(String(format: "wrote %@: %@ parameters, accuracy %@ (%+.2f points), FLOPs %.2fx fewer, batch 64 %.1f -> %.1f us (%.2fx, alternating runs)",
                             out, "\(last.parameters)", percent(last.accuracy), Double(last.accuracy - first.accuracy) * 100,
                             Double(first.flops) / Double(max(last.flops, 1)), before, after, before / max(after, 1e-9)))
            }
        }
    }

    /// Median batch latency of two networks over 7 alternating windows (median of the windows' medians).
    static func interleavedLatency(_ a: Network, _ b: Network, rows: DataSet, batch: Int) -> (Double, Double) {
        var la: [Double] = [], lb: [Double] = []
        for _ in 0..<7 {
            la.append(latency(a, rows: rows, batch: batch, window: 0.1))
            lb.append(latency(b, rows: rows, batch: batch, window: 0.1))
        }
        return (la.sorted()[3], lb.sorted()[3])
    }

    /// Median FP32 latency of one batch-64 call, in microseconds.
    static func latency(_ network: Network, rows: DataSet, batch: Int, window: Double = 0.3) -> Double {
        let plan = ExecutionPlan(network: network, batchCapacity: batch)
        var input = [Float](repeating: 0, count: batch * network.inputCount)
        for i in 0..<input.count { input[i] = rows.features[i % rows.features.count] }
        return BLAS.withDenormalsFlushedToZero {
            medianLatency(plan, input: input, batch: batch, seconds: window, warmUp: 5, minimumCalls: 15).microseconds
        }
    }
}

extension Pruning.Importance: ExpressibleByArgument {}
