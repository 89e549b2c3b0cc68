import ArgumentParser
import Drift
import Foundation
import Inference
import ModelFile
import Quantization
import Tensor
import Training

struct DriftEval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drift-eval",
        abstract: "Measure a prepared model's drift monitor on synthetic drifted streams.",
        discussion: """
            Runs the monitor agentd runs (same code, same reference) offline. Each stream draws
            --before rows at random from --data (give rows neither the model nor 'prepare' saw),
            then --after rows changed by a scenario: rotation 15/30/45°, a fixed pixel
            permutation, Gaussian noise σ 1/2/4 (raw units), gain ×0.6, offset +3, a one-pixel
            translation, a label-prior shift (only classes 0–4; needs a 'label' column) and a
            ramp to rotation 30° over --after samples. Rotations and translation need an image
            input ([C, H, W], or a square feature count). Each scenario runs --seeds times.

            Per scenario: the median and 90th percentile delay (drifted samples seen when the
            alarm goes off), misses (no alarm within --after samples), the signal that fired
            first, and false alarms before the change. Then the run length between false alarms
            on --stationary samples of unchanged rows.

            --export-confidence writes each stream's top-class confidence (CSV: scenario, seed,
            change index, values) for other detectors (tools/bench/drift_river.py).

            Example:
              agentctl model drift-eval digits-field.safetensors --data eval.csv --seeds 30
            """
    )

    @Argument(help: ArgumentHelp("A model file with a drift reference ('agentctl model prepare').", valueName: "FILE")) var file: String
    @Option(help: ArgumentHelp("Rows the reference never saw (CSV).", valueName: "CSV")) var data: String
    @Option(help: "Streams per scenario.") var seeds: Int = 30
    @Option(help: "Unchanged samples before the change.") var before: Int = 600
    @Option(help: "Changed samples after it; no alarm within them is a miss.") var after: Int = 500
    @Option(help: "Stationary samples for the false-alarm run length.") var stationary: Int = 100_000
    @Option(help: ArgumentHelp("Write each stream's confidence values to this CSV.", valueName: "FILE")) var exportConfidence: String?
    @Flag(help: "Print the report as JSON.") var json = false

    func validate() throws {
        guard (1...1_000).contains(seeds) else { throw ValidationError("--seeds must be 1...1000") }
        guard (1...100_000).contains(before), (1...100_000).contains(after) else { throw ValidationError("--before and --after must be 1...100000") }
        guard (1_000...10_000_000).contains(stationary) else { throw ValidationError("--stationary must be 1000...10000000") }
    }

    struct ScenarioRow: Codable {
        var scenario: String
        var medianDelay: Double?
        var p90Delay: Double?
        var misses: Int
        /// Streams whose alarm (false, before the change) was still on at the change: left out of the delays.
        var alarmedAtChange: Int
        var streams: Int
        var firstSignal: [String: Int]
        var falseAlarmsBefore: Int
    }

    struct Report: Codable {
        var scenarios: [ScenarioRow]
        var stationarySamples: Int
        var stationaryFalseAlarms: Int
        var runLength: Double
        /// Share of the stationary samples spent in the drift state.
        var timeInDrift: Double
    }

    enum Change {
        case rotate(Float), permute, noise(Float), gain(Float), offset(Float), translate, labelPrior, ramp(Float)
    }

    func run() throws {
        try reportingErrors {
            let loaded = try LoadedModel(path: file)
            let network = loaded.network
            let penultimate = EmbeddingProjection.penultimateLayer(of: network)
            guard let reference = try DriftReference.load(loaded.file, inputCount: network.inputCount, classCount: network.outputCount,
                                                          penultimate: penultimate.map { ($0, network.layers[$0].inputCount) }) else {
                throw ValidationError("\(file) has no drift reference; make one with 'agentctl model prepare'")
            }
            let data = try DataSet.load(path: data, featureCount: network.inputCount, classNames: network.labels, requireLabels: false)
            guard data.count >= 10 else { throw DataSetError(file: self.data, "has \(data.count) rows; give at least 10") }
            let projection = reference.directions.flatMap { d in reference.embeddingLayer.map { EmbeddingProjection(layer: $0, directions: d) } }
            let plan: InferencePlan = loaded.quantized.map { QuantizedPlan(model: $0, batchCapacity: 256, embedding: projection) }
                ?? ExecutionPlan(network: network, batchCapacity: 256, embedding: projection)
            let detector = DriftDetector(reference: reference, classes: network.outputCount, scoresAreProbabilities: network.endsWithSoftmax)
            let image = Self.imageShape(network.inputShape)
            let n = network.inputCount

            var scenarios: [(String, Change)] = []
            if image != nil { scenarios += [("rotation 15°", .rotate(15)), ("rotation 30°", .rotate(30)), ("rotation 45°", .rotate(45))] }
            scenarios += [("permutation", .permute), ("noise σ1", .noise(1)), ("noise σ2", .noise(2)), ("noise σ4", .noise(4)),
                          ("gain ×0.6", .gain(0.6)), ("offset +3", .offset(3))]
            if image != nil { scenarios.append(("translation 1px", .translate)) }
            let lowClasses = data.labels.map { l in l.indices.filter { l[$0] < 5 } } ?? []
            if !lowClasses.isEmpty { scenarios.append(("label prior 0–4", .labelPrior)) }
            if image != nil { scenarios.append(("ramp to 30°", .ramp(30))) }

            var export = exportConfidence.map { _ in "scenario,seed,change,values\n" }
            var rows: [ScenarioRow] = []
            var binned = [UInt8](repeating: 0, count: detector.binner.width)
            // Runs a stream through plan and detector; returns (sample index, signal) of each alarm and the confidences.
            func stream(_ x: [Float], change: Int?) -> (alarms: [(Int, String)], confidence: [Float], alarmedAtChange: Bool, inDrift: Int) {
                detector.reset()
                var alarmedAtChange = false, inDrift = 0
                var alarms: [(Int, String)] = []
                var conf: [Float] = []
                DriftPreparation.forEachRow(plan: plan, rows: x) { t, input, s, embedding, _ in
                    if t == change && detector.state == .drift { alarmedAtChange = true }
                    binned.withUnsafeMutableBufferPointer { out in
                        detector.binner.bin(input: input, scores: s, embedding: embedding, into: out.baseAddress!)
                    }
                    if export != nil {
                        conf.append(SampleBinner.confidence(s, classes: network.outputCount, probabilities: network.endsWithSoftmax).confidence)
                    }
                    if case .detected(let signal, _, _, _) = binned.withUnsafeBufferPointer({ detector.observe($0.baseAddress!) }) {
                        alarms.append((t, signal))
                    }
                    if detector.state == .drift { inDrift += 1 }
                }
                return (alarms, conf, alarmedAtChange, inDrift)
            }

            for (index, (name, change)) in scenarios.enumerated() {
                var delays: [Int] = [], first: [String: Int] = [:], falseBefore = 0, alarmedAtChange = 0
                for seed in 0..<seeds {
                    var rng = SeededGenerator(seed: UInt64(1_000 * seed + index + 1))
                    var x: [Float] = []
                    x.reserveCapacity((before + after) * n)
                    for _ in 0..<before { x += data.features[Self.row(Int(rng.next() % UInt64(data.count)), n)] }
                    let permutation: [Int] = { var p = Array(0..<n); rng.shuffle(&p); return p }()
                    for t in 0..<after {
                        let pick = { if case .labelPrior = change { return lowClasses[Int(rng.next() % UInt64(lowClasses.count))] }
                                     return Int(rng.next() % UInt64(data.count)) }()
                        var row = Array(data.features[Self.row(pick, n)])
                        switch change {
                        case .rotate(let deg): row = Self.rotate(row, image!, degrees: deg)
                        case .ramp(let deg): row = Self.rotate(row, image!, degrees: deg * Float(t + 1) / Float(after))
                        case .permute: row = permutation.map { row[$0] }
                        case .noise(let s): row = row.map { $0 + s * rng.nextGaussian() }
                        case .gain(let g): row = row.map { $0 * g }
                        case .offset(let o): row = row.map { $0 + o }
                        case .translate: row = Self.translate(row, image!)
                        case .labelPrior: break
                        }
                        x += row
                    }
                    let (alarms, conf, alarmed, _) = stream(x, change: before)
                    falseBefore += alarms.filter { $0.0 < before }.count
                    if alarmed {
                        // Still in a false alarm at the change: no honest delay to measure.
                        alarmedAtChange += 1
                    } else if let hit = alarms.first(where: { $0.0 >= before }) {
                        delays.append(hit.0 - before + 1)
                        first[hit.1, default: 0] += 1
                    }
                    if export != nil {
                        export! += "\(name),\(seed),\(before)," + conf.map { String(format: "%.6f", $0) }.joined(separator: ",") + "\n"
                    }
                }
                let sorted = delays.sorted()
                let measured = seeds - alarmedAtChange
                func quantile(_ q: Double) -> Double? {
                    // Misses count as later than any alarm.
                    let i = Int((Double(measured) * q).rounded(.up)) - 1
                    return i < sorted.count ? Double(sorted[max(i, 0)]) : nil
                }
                rows.append(ScenarioRow(scenario: name, medianDelay: measured > 0 ? quantile(0.5) : nil, p90Delay: measured > 0 ? quantile(0.9) : nil,
                                        misses: measured - delays.count, alarmedAtChange: alarmedAtChange,
                                        streams: seeds, firstSignal: first, falseAlarmsBefore: falseBefore))
                if !json { printError("\(name): done") }
            }

            // Stationary streams: false alarms on unchanged rows.
            var falseAlarms = 0, inDrift = 0
            let pieces = 4, length = stationary / pieces
            for p in 0..<pieces {
                var rng = SeededGenerator(seed: UInt64(77_777 + p))
                var x: [Float] = []
                x.reserveCapacity(length * n)
                for _ in 0..<length { x += data.features[Self.row(Int(rng.next() % UInt64(data.count)), n)] }
                let (alarms, conf, _, drifting) = stream(x, change: nil)
                falseAlarms += alarms.count
                inDrift += drifting
                if export != nil {
                    export! += "stationary,\(p),-1," + conf.map { String(format: "%.6f", $0) }.joined(separator: ",") + "\n"
                }
            }
            let total = pieces * length
            let report = Report(scenarios: rows, stationarySamples: total, stationaryFalseAlarms: falseAlarms,
                                runLength: falseAlarms == 0 ? .infinity : Double(total) / Double(falseAlarms),
                                timeInDrift: Double(inDrift) / Double(total))
            if let path = exportConfidence, let text = export {
                try ModelWriter.writeAtomically(Array(text.utf8), to: path)
            }
            if json { printJSON(report); return }
            func d(_ x: Double?) -> String { x.map { String(format: "%.0f", $0) } ?? ">\(after)" }
            print(table(["scenario", "median delay", "p90 delay", "misses", "alarm on at change", "first signal", "false alarms before"],
                        rows.map { r in
                            [r.scenario, d(r.medianDelay), d(r.p90Delay), "\(r.misses)/\(r.streams - r.alarmedAtChange)", "\(r.alarmedAtChange)",
                             r.firstSignal.sorted { $0.value > $1.value }.map { "\($0.key) \($0.value)" }.joined(separator: ", "),
                             String(r.falseAlarmsBefore)]
                        }, rightAligned: [1, 2, 3, 4, 6]))
            print("stationary: \(falseAlarms) false alarms in \(total) samples, run length \(runText(report.runLength)), "
                  + String(format: "%.2f%% of samples in the drift state", report.timeInDrift * 100))
        }
    }

    static func row(_ i: Int, _ n: Int) -> Range<Int> { (i * n)..<((i + 1) * n) }

    /// `[channels, height, width]` of an image input, or of a square feature count.
    static func imageShape(_ shape: [Int]) -> (c: Int, h: Int, w: Int)? {
        if shape.count == 3 { return (shape[0], shape[1], shape[2]) }
        let n = shape.reduce(1, *), s = Int(Double(n).squareRoot().rounded())
        return s * s == n && s >= 3 ? (1, s, s) : nil
    }

    /// Rotation about the image centre, bilinear, zero outside.
    static func rotate(_ x: [Float], _ g: (c: Int, h: Int, w: Int), degrees: Float) -> [Float] {
        let a = degrees * .pi / 180, cs = cos(a), sn = sin(a)
        let cy = Float(g.h - 1) / 2, cx = Float(g.w - 1) / 2
        var out = [Float](repeating: 0, count: x.count)
        for c in 0..<g.c {
            let base = c * g.h * g.w
            func at(_ y: Int, _ x0: Int) -> Float { y >= 0 && y < g.h && x0 >= 0 && x0 < g.w ? x[base + y * g.w + x0] : 0 }
            for y in 0..<g.h {
                for xx in 0..<g.w {
                    let dy = Float(y) - cy, dx = Float(xx) - cx
                    let sy = cs * dy - sn * dx + cy, sx = sn * dy + cs * dx + cx
                    let y0 = Int(sy.rounded(.down)), x0 = Int(sx.rounded(.down))
                    let fy = sy - Float(y0), fx = sx - Float(x0)
                    out[base + y * g.w + xx] = (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
                        + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1))
                }
            }
        }
        return out
    }

    /// One pixel to the right, zero fill.
    static func translate(_ x: [Float], _ g: (c: Int, h: Int, w: Int)) -> [Float] {
        var out = [Float](repeating: 0, count: x.count)
        for c in 0..<g.c { for y in 0..<g.h { for xx in 1..<g.w { out[(c * g.h + y) * g.w + xx] = x[(c * g.h + y) * g.w + xx - 1] } } }
        return out
    }
}
