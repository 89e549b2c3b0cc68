import ArgumentParser
import Drift
import Foundation
import Inference
import Learning
import ModelFile
import Quantization
import Tensor
import Training

struct Prepare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ready a model for the field: a calibrated drift reference, the EWC anchor and a labelled replay seed.",
        discussion: """
            Give rows the model was not trained on (a validation set): the rows are shuffled and
            split three ways (or give --reference-data, e.g. the training rows, for the
            histograms, and --data is split between thresholds and check). Half build the
            reference histograms: per input feature (bin edges at
            the data's quantiles, about --bins bins), the predicted class, the top-class
            confidence (quantile bins) and the penultimate activations projected on their first
            --embedding-dims principal directions. A quarter calibrate each signal's threshold on
            stationary streams drawn from rows the histograms never saw (a threshold fitted on the
            reference rows themselves gives many times too many false alarms). The last quarter
            checks the result: the whole monitor runs on a stationary stream and the run length
            between its false alarms must reach --false-alarm-run samples; the budget is split
            evenly across the signals (Bonferroni). If the check falls short, the thresholds are
            recalibrated for a longer run.

            Signals (name, source, aggregate over features, window):
              input       raw input, max over features   32   local changes: rotation, noise, offset
              input_sum   raw input, sum over features  128   small changes everywhere: gain
              output      predicted class                32   a change of label prior
              confidence  top-class probability          64
              embedding   penultimate projections, sum   64

            On-device learning: a class-balanced sample of --replay-seed labelled rows (from
            --reference-data when it has labels, else --data) is stored with the FP32 model's
            logits as the replay memory's seed, and the diagonal Fisher information (exact over
            the classes: weighted by the model's own probabilities, so no labels are needed) is
            measured on up to 1000 rows and stored with the anchor weights θ* it was measured at.
            The model's accuracy on the labelled --data rows is stored as what an update must
            beat ('not_needed' below it). Without labels there is no seed (a warning says so).

            Works on FP32 and quantized files (a quantized file is measured as agentd serves it).
            The reference is written as the manifest's 'drift_reference' section plus 'drift.*'
            tensors; 'quantize' and every later rewrite keep it. Nothing is written on failure.

            Example:
              agentctl model prepare digits-mlp.safetensors --data holdout.csv --out digits-field.safetensors
            """
    )

    @Argument(help: ArgumentHelp("The model file to prepare.", valueName: "IN")) var input: String
    @Option(help: ArgumentHelp("Rows the model was not trained on (CSV; a 'label' column is optional).", valueName: "CSV")) var data: String
    @Option(help: ArgumentHelp("Rows for the histograms only (e.g. the training rows); --data is then split half and half between thresholds and check.", valueName: "CSV"))
    var referenceData: String?
    @Option(help: ArgumentHelp("Where to write the prepared model.", valueName: "OUT")) var out: String
    @Option(help: "Samples between false alarms the drift monitor must reach on the check rows.") var falseAlarmRun: Int = 2_000
    @Option(help: "Histogram bins per feature (4...64; two of them catch values outside the data's range).") var bins: Int = 16
    @Option(help: "Principal directions of the penultimate activations for the embedding signal (1...64).") var embeddingDims: Int = 8
    @Option(help: ArgumentHelp("A signal's window in samples, e.g. --window input=48 (repeatable; defaults: input 32, input_sum 128, output 32, confidence 64, embedding 64). Thresholds are calibrated for these windows.", valueName: "NAME=N"))
    var window: [String] = []
    @Option(help: "Labelled rows for the replay seed, class-balanced (0 for none; 0...100000).") var replaySeed: Int = 200
    @Option(help: "Seed for the split and the calibration streams.") var seed: UInt64 = 1
    @Flag(help: "Print the report as JSON.") var json = false

    func validate() throws {
        guard (100...10_000_000).contains(falseAlarmRun) else { throw ValidationError("--false-alarm-run must be 100...10000000") }
        guard (4...64).contains(bins) else { throw ValidationError("--bins must be 4...64") }
        guard (1...64).contains(embeddingDims) else { throw ValidationError("--embedding-dims must be 1...64") }
        guard (0...ReplaySeed.maxRows).contains(replaySeed) else { throw ValidationError("--replay-seed must be 0...\(ReplaySeed.maxRows)") }
        _ = try Self.windows(window)
    }

    struct SignalRow: Codable {
        var name: String
        var source: String
        var aggregate: String
        var bins: Int
        var window: Int
        var threshold: Double
        var runLength: Double
    }

    struct Report: Codable {
        var out: String
        var referenceRows: Int
        var calibrationRows: Int
        var testRows: Int
        var falseAlarmRun: Int
        var verifiedRunLength: Double
        var checkSamples: Int
        var signals: [SignalRow]
        var replaySeedRows: Int
        var expectedAccuracy: Float?
        var fisherRows: Int
    }

    func run() throws {
        try reportingErrors {
            let loaded = try LoadedModel(path: input)
            let network = loaded.network
            var data = try DataSet.load(path: data, featureCount: network.inputCount, classNames: network.labels, requireLabels: false)
            var referenceRows: Int?
            var labelled: DataSet? = data.labels == nil ? nil : data
            let heldOut = data
            if let path = referenceData {
                let ref = try DataSet.load(path: path, featureCount: network.inputCount, classNames: network.labels, requireLabels: false)
                if ref.labels != nil { labelled = ref }
                guard ref.count >= 20, data.count >= 20 else { throw ValidationError("--reference-data and --data need at least 20 rows each") }
                referenceRows = ref.count
                data = DataSet(features: ref.features + data.features, featureCount: data.featureCount, labels: nil, classNames: data.classNames)
            }
            guard data.count >= 40 else { throw DataSetError(file: self.data, "has \(data.count) rows; a drift reference needs at least 40 (a few hundred for useful thresholds)") }
            var options = DriftCalibration.Options()
            options.falseAlarmRun = falseAlarmRun
            options.bins = bins
            options.seed = seed
            options.referenceRows = referenceRows
            let windows = try Self.windows(window)
            options.signals = options.signals.map { var s = $0; s.window = windows[s.name] ?? s.window; return s }
            // Directions from the histogram rows only, like everything the reference holds.
            let histogramRows = DriftCalibration.split(rows: data.count, options: options).reference
            let projection = DriftPreparation.principalDirections(network: network, rows: data.rows(histogramRows).features,
                                                                  count: embeddingDims, seed: seed)
            let plan: InferencePlan = loaded.quantized.map { QuantizedPlan(model: $0, batchCapacity: 256, embedding: projection) }
                ?? ExecutionPlan(network: network, batchCapacity: 256, embedding: projection)
            let classes = network.outputCount
            let sources = DriftPreparation.sources(classes: classes, embedding: projection != nil)
            let values = DriftPreparation.signalValues(plan: plan, rows: data.features, sources: sources, classes: classes,
                                                       probabilities: network.endsWithSoftmax)
            let quiet = json
            let outcome = try DriftCalibration.build(values: values, rows: data.count, classes: classes,
                                                     scoresAreProbabilities: network.endsWithSoftmax,
                                                     embeddingLayer: projection?.layer, directions: projection?.directions,
                                                     options: options) { line in if !quiet { printError(line) } }
            let reference = outcome.reference
            let (section, tensors) = reference.encoded()
            network.driftReference = section
            network.fieldTensors = network.fieldTensors.filter { !$0.name.hasPrefix("drift.") } + tensors
            let learning = Self.addLearningParts(network: network, plan: plan, labelled: labelled, heldOut: heldOut,
                                                 all: data, seedRows: replaySeed, seed: seed)
            if learning.seedRows == 0 && replaySeed > 0 && !json {
                printError("warning: no labelled rows (a 'label' column in --data or --reference-data): no replay seed written")
            }
            if let q = loaded.quantized { try q.write(to: out) } else { try network.write(to: out) }

            let report = Report(
                out: out, referenceRows: reference.rows, calibrationRows: reference.calibrationRows, testRows: reference.testRows,
                falseAlarmRun: falseAlarmRun, verifiedRunLength: reference.verifiedRunLength ?? 0, checkSamples: outcome.checkSamples,
                signals: reference.signals.enumerated().map { i, s in
                    SignalRow(name: s.name, source: s.source.rawValue, aggregate: s.aggregate.rawValue,
                              bins: reference.sources[s.source]!.bins.maxBins, window: s.window, threshold: s.threshold,
                              runLength: outcome.signalRunLengths[i])
                }, replaySeedRows: learning.seedRows, expectedAccuracy: learning.expected, fisherRows: learning.fisherRows)
            if json { printJSON(report); return }
            print(table(["signal", "source", "aggregate", "bins", "window", "threshold", "run length (check)"],
                        report.signals.map { [$0.name, $0.source, $0.aggregate, String($0.bins), String($0.window),
                                              String(format: "%.4f", $0.threshold), runText($0.runLength)] },
                        rightAligned: [3, 4, 5, 6]))
            print("rows: \(report.referenceRows) reference, \(report.calibrationRows) calibration, \(report.testRows) check")
            print("run length between false alarms, all signals: \(runText(report.verifiedRunLength)) samples (wanted ≥ \(falseAlarmRun), \(report.checkSamples) stationary samples)")
            if report.verifiedRunLength < Double(falseAlarmRun) {
                printError("warning: the check rows gave a shorter run length than asked; give more rows")
            }
            print("learning: replay seed \(report.replaySeedRows) labelled rows, Fisher on \(report.fisherRows) rows"
                  + (report.expectedAccuracy.map { String(format: ", held-out accuracy %.2f%%", $0 * 100) } ?? ""))
            print("wrote \(out)")
        }
    }

    /// The EWC anchor (exact Fisher on up to 1000 rows, θ* = the FP32 weights) and a
    /// class-balanced labelled replay seed with the FP32 model's logits.
    static func addLearningParts(network: Network, plan: InferencePlan, labelled: DataSet?, heldOut: DataSet, all: DataSet,
                                 seedRows: Int, seed: UInt64) -> (seedRows: Int, expected: Float?, fisherRows: Int) {
        var rng = SeededGenerator(seed: seed &+ 0x7EED)
        let fisherSource = labelled ?? all
        var order = Array(0..<fisherSource.count)
        rng.shuffle(&order)
        let fisherRows = fisherSource.rows(Array(order.prefix(1000)))
        let fisher = fisherRows.features.withUnsafeBufferPointer {
            FisherInformation.diagonal(network: network, rows: $0.baseAddress!, count: fisherRows.count)
        }
        var anchor: [String: [Float]] = [:]
        for (name, t) in network.parameters { anchor[name] = Array(UnsafeBufferPointer(start: t.pointer, count: t.count)) }
        EWCAnchor(fisher: fisher, anchor: anchor, samples: fisherRows.count, gamma: 0.9, updates: 0).encode(into: network)

        var expected: Float? = nil
        if let labels = heldOut.labels {
            expected = Evaluation(scores: plan.predict(heldOut.features), classes: network.outputCount, labels: labels).accuracy
        }
        guard let labelled, let sample = ReplaySeed.sample(labelled, count: seedRows, network: network, seed: seed &+ 0x5EED,
                                                          expectedAccuracy: expected) else {
            network.replaySeed = nil
            network.fieldTensors.removeAll { $0.name.hasPrefix("replay.") }
            return (0, expected, fisherRows.count)
        }
        sample.encode(into: network)
        return (sample.rows, expected, fisherRows.count)
    }
}

extension Prepare {
    /// `--window NAME=N` values by signal name.
    static func windows(_ args: [String]) throws -> [String: Int] {
        var out: [String: Int] = [:]
        let names = SignalSpec.defaults.map(\.name)
        for a in args {
            let parts = a.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, names.contains(parts[0]), let n = Int(parts[1]), (4...4096).contains(n) else {
                throw ValidationError("--window \(a): expected NAME=N with NAME one of \(names.joined(separator: ", ")) and N in 4...4096")
            }
            out[parts[0]] = n
        }
        return out
    }
}

func runText(_ x: Double) -> String { x.isFinite ? String(format: "%.0f", x) : "no alarm" }
