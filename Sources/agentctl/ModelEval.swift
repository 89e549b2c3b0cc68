import ArgumentParser
import Foundation
import Inference
import ModelFile
import Tensor
import Training

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Accuracy, per-class accuracy and confusion matrix of a model on labelled CSV rows.",
        discussion: """
            Every row of the file is evaluated (use the same file as training to see both splits
            together). Labels must be among the model's labels.

            Example:
              agentctl model eval mlp.safetensors --data tools/data/digits.csv
            """
    )

    @Argument(help: ArgumentHelp("The model file.", valueName: "FILE"))
    var file: String

    @Option(help: ArgumentHelp("Labelled rows (CSV with a 'label' column).", valueName: "CSV"))
    var data: String

    @Flag(help: "Only the held-out test split of the file (every 5th row), as 'train' reports it.")
    var testSplit = false

    @Option(help: "Run as fp32 or int8 (default: the file's own precision, with its adaptive setting).")
    var precision: PrecisionChoice?

    @Flag(help: "Print the result as JSON.")
    var json = false

    struct Output: Codable {
        var model: String
        var version: Int
        var precision: String
        var rows: Int
        var accuracy: Float
        var labels: [String]
        var perClassAccuracy: [Float?]
        var confusion: [[Int]]
    }

    func run() throws {
        try reportingErrors {
            let loaded = try LoadedModel(path: file)
            let network = loaded.network
            var rows = try DataSet.load(path: data, featureCount: network.inputCount, classNames: network.labels)
            if testSplit { rows = rows.split().test }
            let plan = try loaded.plan(batch: 64, precision: precision)
            let e = Evaluation(scores: plan.predict(rows.features), classes: network.outputCount, labels: rows.labels ?? [])
            let out = Output(model: network.name, version: network.version, precision: plan.precision, rows: e.samples, accuracy: e.accuracy,
                             labels: network.labels, perClassAccuracy: e.perClass, confusion: e.confusion)
            if json { printJSON(out); return }
            print("\(network.name) v\(network.version) (\(plan.precision)) on \(data): \(e.samples) rows, accuracy \(percent(e.accuracy))\n")
            let perClass = network.labels.enumerated().map { c, label in
                [label, e.perClass[c].map(percent) ?? "-", String(e.confusion[c].reduce(0, +))]
            }
            print(table(["class", "accuracy", "rows"], perClass, rightAligned: [1, 2]))
            print("\nconfusion matrix (rows: true class, columns: predicted)")
            let header = ["true\\pred"] + network.labels
            let matrix = network.labels.enumerated().map { c, label in [label] + e.confusion[c].map(String.init) }
            print(table(header, matrix, rightAligned: Set(1...network.labels.count)))
        }
    }
}

struct Predict: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Class and scores for every row of a CSV file.",
        discussion: """
            The CSV has a header row and the model's input features; a trailing 'label' column is
            allowed and ignored. --json prints one object per line: {"row", "class", "label", "scores"}.

            Example:
              agentctl model predict mlp.safetensors --data tools/data/digits.csv --json | head -3
            """
    )

    @Argument(help: ArgumentHelp("The model file.", valueName: "FILE"))
    var file: String

    @Option(help: ArgumentHelp("Rows to classify (CSV).", valueName: "CSV"))
    var data: String

    @Option(help: "Run as fp32 or int8 (default: the file's own precision).")
    var precision: PrecisionChoice?

    @Flag(help: "One JSON object per row.")
    var json = false

    struct Row: Codable {
        var row: Int
        var `class`: Int
        var label: String
        var scores: [Float]
    }

    func run() throws {
        try reportingErrors {
            let loaded = try LoadedModel(path: file)
            let network = loaded.network
            let rows = try DataSet.load(path: data, featureCount: network.inputCount, classNames: network.labels, requireLabels: false)
            let plan = try loaded.plan(batch: 64, precision: precision)
            let scores = plan.predict(rows.features)
            let k = network.outputCount
            var out = ""
            for i in 0..<rows.count {
                let s = Array(scores[(i * k)..<((i + 1) * k)])
                let c = s.argmax()
                if json {
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.sortedKeys]
                    out += String(decoding: try encoder.encode(Row(row: i + 1, class: c, label: network.labels[c], scores: s)), as: UTF8.self)
                } else {
                    out += "row \(i + 1): \(network.labels[c]) " + String(format: "(%.4f)", s[c])
                }
                out += "\n"
                if out.utf8.count > 1 << 16 { print(out, terminator: ""); out = "" }
            }
            print(out, terminator: "")
        }
    }
}
