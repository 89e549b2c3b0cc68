import ArgumentParser
import Foundation
import Inference
import ModelFile
import Quantization
import Tensor
import Training

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a model on a CSV file and write it as a model file.",
        discussion: """
            The CSV has a header row, features first and the class in a last column named 'label'.
            Every 5th row (rows 5, 10, 15, ... counting from 1 after the header) is held out as the
            test split; the rest is trained on. The same split is used by every run, so results
            are comparable; --seed changes initialisation and shuffling only.

            Inputs are scaled by 1/max|x| of the training rows (written to the manifest as
            input.scale). One progress line per epoch goes to stderr.

            --qat int8 (quantization-aware training): every step computes with the
            dense and conv2d weights as 'quantize --precision int8' stores them and
            with each UINT8 activation of the INT8 plan rounded to 256 steps of a
            range tracked during training (a 0.01 moving average); gradients pass
            the rounding unchanged inside the range and stop outside it (clipped
            straight-through estimator). The ranges go into the file's 'qat'
            section and 'agentctl model quantize' uses them in place of calibrated
            ones (it says so); the per-epoch test accuracy is the INT8 plan's.

            --qat int4: every step computes with the dense layers' weights as
            'quantize --precision int4 --group G' will store them and updates the
            FP32 weights behind them (straight-through estimator); then 'agentctl
            model quantize ... --precision int4 --group G' stores exactly the
            weights the training ended with.

            ARCH grammar:
            \(Architecture.grammar)

            Examples:
              agentctl model train --data tools/data/digits.csv --arch mlp:64-256-256-10 --out mlp.safetensors
              agentctl model train --data tools/data/digits.csv --arch cnn:1x8x8-c32-c64-m2-f128-10 --epochs 20 --out cnn.safetensors
              agentctl model train --data local.csv --from mlp.safetensors --trainable fc3.weight,fc3.bias --out tuned.safetensors
              agentctl model train --data tools/data/digits.csv --from mlp.safetensors --qat int8 --epochs 5 --out qat.safetensors
            """
    )

    @Option(help: ArgumentHelp("Training data (CSV with a 'label' column).", valueName: "CSV"))
    var data: String

    @Option(help: ArgumentHelp("Architecture to build (see the grammar below). Not used with --from.", valueName: "ARCH"))
    var arch: String?

    @Option(help: ArgumentHelp("Start from this model file instead of a fresh architecture (fine-tuning).", valueName: "FILE"))
    var from: String?

    @Option(help: "Passes over the training split.")
    var epochs: Int = 30

    @Option(help: "Seed for initialisation and shuffling.")
    var seed: UInt64 = 1

    @Option(help: ArgumentHelp("Where to write the trained model.", valueName: "FILE"))
    var out: String

    @Option(help: "Mini-batch size.")
    var batchSize: Int = 32

    @Option(help: "adam (AdamW) or sgd (with momentum).")
    var optimizer: String = "adam"

    @Option(help: "Learning rate (default 0.002 for adam, 0.05 for sgd); decays by a cosine schedule.")
    var lr: Float?

    @Option(help: "SGD momentum.")
    var momentum: Float = 0.9

    @Option(help: "Weight decay (L2 for sgd, decoupled for adam).")
    var weightDecay: Float = 0

    @Option(help: ArgumentHelp("Comma-separated tensor names to train; the rest stay frozen.", valueName: "NAMES"))
    var trainable: String?

    @Option(help: "Model name written to the manifest (default: the output file's stem).")
    var name: String?

    @Option(help: ArgumentHelp("""
        Quantization-aware training. int8: the dense and conv2d weights as 'quantize --precision int8' stores \
        them and the UINT8 activations with ranges tracked during training, which the file keeps for 'quantize'. \
        int4: the dense layers' weights as 'quantize --precision int4' stores them.
        """, valueName: "int8|int4"))
    var qat: QATMode?

    @Option(help: "INT4 group size for --qat int4 (give 'quantize' the same --group): 32, 64 or 128.")
    var group: Int = 32

    enum QATMode: String, ExpressibleByArgument { case int8, int4 }

    @Flag(help: "Print per-epoch lines and the summary as JSON (one object per line).")
    var json = false

    func validate() throws {
        if arch == nil && from == nil { throw ValidationError("give --arch ARCH for a new model or --from FILE to fine-tune one") }
        if arch != nil && from != nil { throw ValidationError("give --arch or --from, not both") }
        if epochs < 1 { throw ValidationError("--epochs must be at least 1") }
        if batchSize < 1 { throw ValidationError("--batch-size must be at least 1") }
        if !["adam", "sgd"].contains(optimizer) { throw ValidationError("--optimizer must be adam or sgd") }
        if ![32, 64, 128].contains(group) { throw ValidationError("--group must be 32, 64 or 128") }
        if group != 32 && qat != .int4 { throw ValidationError("--group is for --qat int4") }
    }

    struct Summary: Codable {
        var model: String
        var arch: String?
        var parameters: Int
        var trainRows: Int
        var testRows: Int
        var epochs: Int
        var seed: UInt64
        var trainAccuracy: Float
        var testAccuracy: Float
        var secondsPerEpoch: Double
        var out: String
    }

    func run() throws {
        try reportingErrors {
            let network: Network
            let dataSet: DataSet
            if let from {
                let base = Network(model: try ModelFile.load(path: from)).copy()
                dataSet = try DataSet.load(path: data, featureCount: base.inputCount, classNames: base.labels)
                network = base
            } else {
                dataSet = try DataSet.load(path: data)
                let probe = try Architecture.build(arch!, seed: seed)
                guard probe.inputCount == dataSet.featureCount else {
                    throw ArchitectureError(arch: arch!, message: "takes \(probe.inputCount) inputs but \(data) has \(dataSet.featureCount) feature columns")
                }
                let (trainRows, _) = dataSet.split()
                let maxAbs = trainRows.features.reduce(Float(0)) { max($0, abs($1)) }
                let scale: Float = maxAbs > 0 ? 1 / maxAbs : 1
                let stem = URL(fileURLWithPath: out).deletingPathExtension().lastPathComponent
                network = try Architecture.build(arch!, seed: seed, name: name ?? stem, labels: dataSet.classNames,
                                                 preprocessing: Preprocessing(scale: scale, shift: 0))
            }
            if let name { network.name = name }
            let names = trainable.map { Set($0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }) }
            if let names {
                let known = Set(network.parameters.map(\.name))
                if let unknown = names.subtracting(known).sorted().first {
                    throw ValidationError("--trainable: '\(unknown)' is not a tensor of the model (tensors: \(known.sorted().joined(separator: ", ")))")
                }
                network.trainable = names.sorted()
            }
            let (train, test) = dataSet.split()
            let kind: OptimizerKind = optimizer == "sgd"
                ? .sgd(learningRate: lr ?? 0.05, momentum: momentum, weightDecay: weightDecay)
                : .adam(learningRate: lr ?? 0.002, weightDecay: weightDecay)
            let trainer = Trainer(network: network, optimizer: kind, batchSize: batchSize, seed: seed, trainable: names)
            // Ranges learned earlier describe the weights they were learned with; a new QAT run starts
            // from them, any other training drops them.
            // (The loader has checked the section.)
            let earlier = network.qat.flatMap { try? QATRanges($0, tensors: network.layers.count + 1) }?.activations
            network.qat = nil
            var int8QAT: Int8FakeQuantizer?
            switch qat {
            case .int4:
                let fake = Int4WeightFakeQuantizer(network: network, group: group)
                fake.attach(to: trainer)
                if !json { printError("quantization-aware: \(fake.layers.count) dense layers trained through INT4 weights, groups of \(group)") }
            case .int8:
                let fake = Int8FakeQuantizer(network: network, ranges: earlier ?? [:])
                fake.attach(to: trainer, calibration: train)
                int8QAT = fake
                if !json {
                    printError("quantization-aware: \(fake.layers.count) layers trained through INT8 weights, \(fake.tensors.count) activation " +
                               "tensors through UINT8 (ranges tracked, moving average \(Int8FakeQuantizer.momentum)); test accuracy is the INT8 plan's")
                }
            case nil:
                break
            }
            if !json {
                printError("training \(network.name): \(network.parameterCount) parameters, \(train.count) training rows, \(test.count) test rows")
            }
            var last: EpochReport?
            var totalSeconds = 0.0
            trainer.fit(train, test: test, epochs: epochs) { report in
                last = report
                totalSeconds += report.seconds
                if json {
                    printJSON(report, pretty: false)
                } else {
                    printError(String(format: "epoch %3d/%d  loss %.4f  train %@  test %@  %.3f s", report.epoch, epochs,
                                      report.loss, percent(report.trainAccuracy), percent(report.testAccuracy ?? 0), report.seconds))
                }
            }
            if from != nil { network.version += 1 }
            if let int8QAT { network.qat = int8QAT.section.json }
            try network.write(to: out)
            let summary = Summary(model: network.name, arch: arch, parameters: network.parameterCount, trainRows: train.count,
                                  testRows: test.count, epochs: epochs, seed: seed, trainAccuracy: last?.trainAccuracy ?? 0,
                                  testAccuracy: last?.testAccuracy ?? 0, secondsPerEpoch: totalSeconds / Double(epochs), out: out)
            if json {
                printJSON(summary, pretty: false)
            } else {
                print("wrote \(out): test accuracy \(percent(summary.testAccuracy)), train \(percent(summary.trainAccuracy)), " +
                      String(format: "%.3f s per epoch", summary.secondsPerEpoch))
            }
        }
    }
}
