import ArgumentParser
import Foundation
import Inference
import Learning
import ModelFile
import Tensor
import Training

struct Distill: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a small student model on a teacher's softened outputs and the labels.",
        discussion: """
            The student (a new --arch) learns (1 - ALPHA) x cross-entropy on the labels
            plus ALPHA x T^2 x KL(softmax(teacher/T) || softmax(student/T)) on the
            training split (every 5th row held out, as 'train' splits); the
            teacher's logits are computed on every row the student sees. A higher
            T shows the student more of how the teacher ranks the wrong classes.
            The student takes the teacher's input preprocessing and labels.
            Each batch of real rows is joined by --mixup blends of two training rows
            (λ·x_i + (1 − λ)·x_j) that carry the teacher's logits only, and the
            training is long (--epochs 100): the student matches the teacher's
            function between the rows too (Beyer et al. 2022, "a good teacher is
            patient and consistent").
            --compare also trains the same architecture on the labels alone (same
            seed, epochs and optimizer) and reports both, so the gain is measured;
            --seeds N repeats both for N seeds (one held-out row is 0.28 points
            on digits, so one seed cannot show a small gain).
            For a new student much smaller than its teacher, patient function
            matching did best on digits: --temperature 1 --alpha 1 --epochs 1000
            (ahead of labels alone, where the defaults trail it; README,
            Compression).
            One progress line per epoch goes to stderr.

            Example:
              agentctl model distill --teacher cnn.safetensors --arch mlp:64-64-10 --data tools/data/digits.csv --out student.safetensors --compare
            """
    )

    @Option(help: ArgumentHelp("The teacher model file.", valueName: "FILE")) var teacher: String
    @Option(help: ArgumentHelp("The student's architecture (the ARCH grammar of 'train').", valueName: "ARCH")) var arch: String?
    @Option(help: ArgumentHelp("Start the student from this model file instead (a pruned model, say); not with --arch.", valueName: "FILE")) var from: String?
    @Option(help: ArgumentHelp("Training data (CSV with a 'label' column).", valueName: "CSV")) var data: String
    @Option(help: ArgumentHelp("Where to write the student.", valueName: "FILE")) var out: String
    @Option(help: "Softmax temperature T for the soft targets.") var temperature: Float = 4
    @Option(help: "Weight of the soft targets, in [0, 1] (1: soft targets only).") var alpha: Float = 0.9
    @Option(help: "Passes over the training split (distillation pays with long training).") var epochs: Int = 100
    @Option(help: "With --compare: repeat both trainings for this many seeds (SEED, SEED+1, ...) and report each.") var seeds: Int = 1
    @Option(help: "AdamW learning rate (cosine decay).") var lr: Float = 0.002
    @Option(help: "Seed for initialisation and shuffling.") var seed: UInt64 = 1
    @Option(help: "Mixed rows (teacher-labelled blends of two training rows) per real row; 0 for none.") var mixup: Int = 1
    @Option(help: "Model name written to the manifest (default: the output file's stem).") var name: String?
    @Flag(help: "Also train the student's architecture on labels alone and report both.") var compare = false
    @Flag(help: "Print the summary as JSON.") var json = false

    func validate() throws {
        guard (arch == nil) != (from == nil) else { throw ValidationError("give --arch ARCH for a new student or --from FILE to start from a model, one of them") }
        guard temperature.isFinite, temperature >= 1, temperature <= 100 else { throw ValidationError("--temperature must be between 1 and 100") }
        guard alpha.isFinite, alpha >= 0, alpha <= 1 else { throw ValidationError("--alpha must be between 0 and 1") }
        guard (1...10_000).contains(epochs) else { throw ValidationError("--epochs must be between 1 and 10000") }
        guard lr.isFinite, lr > 0 else { throw ValidationError("--lr must be positive") }
        guard (0...8).contains(mixup) else { throw ValidationError("--mixup must be between 0 and 8") }
        guard (1...100).contains(seeds) else { throw ValidationError("--seeds must be between 1 and 100") }
        guard seeds == 1 || compare else { throw ValidationError("--seeds needs --compare") }
    }

    struct Summary: Codable {
        var teacherParameters: Int
        var teacherAccuracy: Float
        var studentParameters: Int
        var studentAccuracy: Float
        /// The same architecture, seed and epochs trained on the labels alone (with --compare).
        var labelsOnlyAccuracy: Float?
        /// Per seed, with --compare --seeds N: distilled and labels-only held-out accuracy.
        var perSeed: [SeedResult]?
        var parameterRatio: Double
        var temperature: Float
        var alpha: Float
        var out: String
    }

    struct SeedResult: Codable {
        var seed: UInt64
        var distilled: Float
        var labelsOnly: Float
    }

    func run() throws {
        try reportingErrors {
            let teacherModel = try LoadedModel(path: teacher)
            let teacherNet = teacherModel.network
            if teacherModel.quantized != nil && !json {
                printError("note: \(teacher) is quantized; the teacher runs (and is scored) in FP32 here")
            }
            let dataSet = try DataSet.load(path: data, featureCount: teacherNet.inputCount, classNames: teacherNet.labels)
            let (train, test) = dataSet.split()
            guard train.count > 0, test.count > 0 else { throw ValidationError("\(data): too few rows to split into training and held-out rows") }
            let stem = URL(fileURLWithPath: out).deletingPathExtension().lastPathComponent
            let startModel = try from.map { try LoadedModel(path: $0) }
            let start = startModel?.network
            if let start, let from {
                guard start.labels == teacherNet.labels, start.inputShape == teacherNet.inputShape else {
                    throw ValidationError("\(from) has labels \(start.labels.prefix(12)) and input \(start.inputShape); the teacher has \(teacherNet.labels.prefix(12)) and \(teacherNet.inputShape): the student must answer the teacher's classes in its order")
                }
                if startModel?.quantized != nil && !json {
                    printError("note: \(from) is quantized; the student starts from its FP32 weights and is written FP32 (run 'agentctl model quantize' on it again)")
                }
                let weights = start.parameters.filter { $0.name.hasSuffix("weight") }
                let zeros = weights.reduce(0) { $0 + $1.tensor.buffer.filter { $0 == 0 }.count }
                let total = weights.reduce(0) { $0 + $1.tensor.count }
                if total > 0, zeros * 10 >= total * 3, !json {
                    printError("note: \(zeros * 100 / total)% of \(from)'s weights are zero (unstructured pruning?); distillation trains them all, so they will not stay zero")
                }
            }
            let described = arch ?? from!
            func build(seed: UInt64) throws -> Network {
                let net: Network
                if let start {
                    net = start.copy()
                    net.name = name ?? stem
                    net.version = start.version + 1
                    net.trainable = nil
                    net.dropFieldSections()
                } else {
                    net = try Architecture.build(arch!, seed: seed, name: name ?? stem, labels: teacherNet.labels, preprocessing: teacherNet.preprocessing)
                }
                guard net.inputCount == teacherNet.inputCount, net.outputCount == teacherNet.outputCount else {
                    throw ArchitectureError(arch: described, message: "takes \(net.inputCount) inputs and gives \(net.outputCount) outputs; the teacher takes \(teacherNet.inputCount) and gives \(teacherNet.outputCount)")
                }
                return net
            }
            let student = try build(seed: seed)
            var settings = Distillation.Settings()
            settings.temperature = temperature
            settings.alpha = alpha
            settings.epochs = epochs
            settings.learningRate = lr
            settings.seed = seed
            if !json {
                printError("distilling \(teacherNet.name) (\(teacherNet.parameterCount) parameters) into \(described) (\(student.parameterCount) parameters), T \(temperature), alpha \(alpha)")
            }
            settings.mixup = mixup
            Distillation.train(student: student, teacher: teacherNet, data: train, settings: settings) { epoch, loss in
                if !json { printError(String(format: "epoch %3d/%d  loss %.4f", epoch, epochs, loss)) }
            }
            var labelsOnly: Float?
            var perSeed: [SeedResult]?
            if compare {
                func labelsOnlyAccuracy(seed: UInt64) throws -> Float {
                    let baseline = try build(seed: seed)
                    let trainer = Trainer(network: baseline, optimizer: .adam(learningRate: lr), batchSize: settings.batchSize, seed: seed)
                    trainer.fit(train, test: nil, epochs: epochs) { _ in }
                    return Evaluation(network: baseline, data: test).accuracy
                }
                var results = [SeedResult(seed: seed, distilled: Evaluation(network: student, data: test).accuracy,
                                          labelsOnly: try labelsOnlyAccuracy(seed: seed))]
                for extra in 1..<seeds {
                    let s = seed &+ UInt64(extra)
                    let other = try build(seed: s)
                    var seeded = settings
                    seeded.seed = s
                    Distillation.train(student: other, teacher: teacherNet, data: train, settings: seeded) { _, _ in }
                    results.append(SeedResult(seed: s, distilled: Evaluation(network: other, data: test).accuracy, labelsOnly: try labelsOnlyAccuracy(seed: s)))
                    if !json { printError("seed \(s): distilled \(percent(results.last!.distilled)), labels only \(percent(results.last!.labelsOnly))") }
                }
                labelsOnly = results.map(\.labelsOnly).reduce(0, +) / Float(results.count)
                if seeds > 1 { perSeed = results }
            }
            student.qat = nil  // ranges learned by QAT describe weights distillation has changed
            try student.write(to: out)
            // With several seeds the student's figure is the mean too (the file written is the first seed's).
            let studentAccuracy = perSeed.map { $0.map(\.distilled).reduce(0, +) / Float($0.count) } ?? Evaluation(network: student, data: test).accuracy
            let summary = Summary(teacherParameters: teacherNet.parameterCount, teacherAccuracy: Evaluation(network: teacherNet, data: test).accuracy,
                                  studentParameters: student.parameterCount, studentAccuracy: studentAccuracy,
                                  labelsOnlyAccuracy: labelsOnly, perSeed: perSeed,
                                  parameterRatio: Double(student.parameterCount) / Double(teacherNet.parameterCount),
                                  temperature: temperature, alpha: alpha, out: out)
            if json {
                printJSON(summary, pretty: false)
                return
            }
            print(table(["model", "parameters", seeds > 1 ? "held-out accuracy (mean of \(seeds) seeds)" : "held-out accuracy"], [
                ["teacher", "\(summary.teacherParameters)", percent(summary.teacherAccuracy)],
                ["student, distilled", "\(summary.studentParameters)", percent(summary.studentAccuracy)],
            ] + (labelsOnly.map { [["student, labels only", "\(summary.studentParameters)", percent($0)]] } ?? []), rightAligned: [1, 2]))
            print(String(format: "wrote %@: 1/%.1f of the teacher's parameters, %+.2f points against the teacher", out,
                         1 / summary.parameterRatio, Double(summary.studentAccuracy - summary.teacherAccuracy) * 100))
        }
    }
}
