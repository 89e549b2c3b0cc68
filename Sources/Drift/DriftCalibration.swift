import Foundation
import Tensor

/// Builds a field reference from rows of signal values: histograms on one part of the rows,
/// thresholds on a second part the histograms never saw, and the run length between false alarms
/// checked on a third.
public enum DriftCalibration {
    public struct Options: Sendable {
        /// Samples between false alarms wanted for the union of the signals.
        public var falseAlarmRun = 2_000
        public var bins = 16
        public var alpha = 0.5
        public var signals = SignalSpec.defaults
        public var seed: UInt64 = 1
        /// Shares of the rows for the histograms and the thresholds; the rest checks the run length.
        public var referenceShare = 0.5
        public var calibrationShare = 0.25
        /// Rows `0..<referenceRows` build the histograms and the rest are split half and half
        /// between thresholds and check, instead of the shares above (prepare --reference-data).
        public var referenceRows: Int?
        public init() {}
    }

    public struct Outcome: Sendable {
        public var reference: DriftReference
        /// Per signal: the run length of its false alarms alone on the check rows.
        public var signalRunLengths: [Double]
        public var checkSamples: Int
    }

    public enum Failure: Error, CustomStringConvertible {
        case tooFewRows(Int, needed: Int)
        public var description: String {
            switch self {
            case .tooFewRows(let n, let needed): "\(n) rows are too few for a drift reference; give at least \(needed)"
            }
        }
    }

    /// - Parameters:
    ///   - values: per source, `[rows, features]` row-major, the same rows in the same order.
    ///   - directions: the embedding directions (stored with the reference), `embeddingLayer` their layer.
    ///   - progress: called with a line of text for each stage.
    public static func build(values: [SignalSource: [Float]], rows: Int, classes: Int, scoresAreProbabilities: Bool,
                             embeddingLayer: Int?, directions: Tensor?, options: Options,
                             progress: (String) -> Void = { _ in }) throws -> Outcome {
        let needed = 40
        guard rows >= needed else { throw Failure.tooFewRows(rows, needed: needed) }
        let (refRows, calRows, testRows) = split(rows: rows, options: options)
        let nRef = refRows.count, nCal = calRows.count
        let signals = options.signals.filter { values[$0.source] != nil }

        // Histograms from the reference rows.
        var sources: [SignalSource: SourceReference] = [:]
        for (source, v) in values where signals.contains(where: { $0.source == source }) {
            let f = v.count / rows
            let refValues = refRows.flatMap { v[($0 * f)..<(($0 + 1) * f)] }
            let bins = source == .output ? FeatureBins.categorical(classes: classes)
                                         : FeatureBins.quantiles(refValues, features: f, bins: options.bins)
            sources[source] = SourceReference(bins: bins, counts: [Float](repeating: 0, count: f * bins.maxBins))
        }
        var reference = DriftReference(alpha: options.alpha, rows: nRef, calibrationRows: nCal, testRows: testRows.count,
                                       falseAlarmRun: options.falseAlarmRun, verifiedRunLength: nil, signals: signals,
                                       sources: sources, embeddingLayer: embeddingLayer, directions: directions)
        let binner = SampleBinner(reference: reference, classes: classes, scoresAreProbabilities: scoresAreProbabilities)
        let binned = binRows(values, rows: rows, binner: binner)
        for (source, src) in sources {
            let o = binner.offsets[source]!, f = src.bins.features
            var counts = [Float](repeating: 0, count: f * src.bins.maxBins)
            for r in refRows { for i in 0..<f { counts[i * src.bins.maxBins + Int(binned[r * binner.width + o + i])] += 1 } }
            sources[source]!.counts = counts
        }
        reference.sources = sources

        // Thresholds on the calibration rows; the budget is split evenly (Bonferroni). An alarm
        // clears after the longest alarming window of quiet, as in the detector.
        let quiet = signals.filter(\.alarms).map(\.window).max() ?? 1
        var margin = 1.0
        var attempts: [(signals: [SignalSpec], union: Double)] = []
        for attempt in 0..<5 {
            let perSignal = Double(options.falseAlarmRun) * Double(max(1, signals.count { $0.alarms })) * margin
            for (i, spec) in signals.enumerated() {
                let length = Int(min(2_000_000, max(100_000, 30 * perSignal)))
                let series = scoreSeries(reference: reference, signal: i, binned: binned, width: binner.width,
                                         offset: binner.offsets[spec.source]!, rows: calRows, length: length,
                                         seed: options.seed &+ UInt64(attempt * 100 + i + 1))
                reference.signals[i].threshold = threshold(series: series, runLength: perSignal, quiet: quiet)
                reference.signals[i].calibratedRunLength = runLength(series: series, threshold: reference.signals[i].threshold, quiet: quiet)
                progress("calibrated \(spec.name): threshold \(String(format: "%.4f", reference.signals[i].threshold)) over \(length) samples")
            }
            // Bonferroni alone is conservative (the signals' false alarms overlap) or not (the
            // double bootstrap): tune the margin so the union's run length on a fresh stream of
            // the calibration rows is 1.2–3 times the one asked for — never on the check rows.
            let tuning = checkRunLengths(reference: reference, binner: binner, binned: binned, rows: calRows, classes: classes,
                                         scoresAreProbabilities: scoresAreProbabilities, length: max(60_000, 30 * options.falseAlarmRun),
                                         seed: options.seed &+ 5_555 &+ UInt64(attempt))
            let target = Double(options.falseAlarmRun)
            attempts.append((reference.signals, tuning.union))
            if (1.2 * target...3 * target).contains(tuning.union) { break }
            if attempt == 4 {
                // None in range: the shortest run that still reaches the target, else the longest.
                let reaching = attempts.filter { $0.union >= target }
                reference.signals = (reaching.min { $0.union < $1.union } ?? attempts.max { $0.union < $1.union }!).signals
                break
            }
            progress("the union alarms every \(tuning.union.isFinite ? String(Int(tuning.union)) : "∞") samples on the calibration rows; recalibrating")
            margin *= min(4, max(0.25, 1.6 * target / tuning.union))
        }
        // The check, once: the whole monitor on rows neither the histograms nor the thresholds saw.
        let checkLength = max(100_000, 50 * options.falseAlarmRun)
        let check = checkRunLengths(reference: reference, binner: binner, binned: binned, rows: testRows.isEmpty ? calRows : testRows,
                                    classes: classes, scoresAreProbabilities: scoresAreProbabilities,
                                    length: checkLength, seed: options.seed &+ 7_777)
        reference.verifiedRunLength = check.union
        progress("checked the union on \(checkLength) samples: \(check.union.isFinite ? String(format: "%.0f", check.union) : "no") samples between false alarms")
        return Outcome(reference: reference, signalRunLengths: check.signals, checkSamples: checkLength)
    }

    /// The three disjoint parts of `rows` rows: histograms, thresholds, check (seeded shuffle).
    public static func split(rows: Int, options: Options) -> (reference: [Int], calibration: [Int], check: [Int]) {
        if let given = options.referenceRows, given < rows {
            var rest = Array(given..<rows)
            var rng = SeededGenerator(seed: options.seed)
            rng.shuffle(&rest)
            let half = rest.count / 2
            return (Array(0..<given), Array(rest[0..<half]), Array(rest[half...]))
        }
        var order = Array(0..<rows)
        var rng = SeededGenerator(seed: options.seed)
        rng.shuffle(&order)
        let nRef = min(rows, max(1, Int(Double(rows) * options.referenceShare)))
        let nCal = min(rows - nRef, max(1, Int(Double(rows) * options.calibrationShare)))
        return (Array(order[0..<nRef]), Array(order[nRef..<(nRef + nCal)]), Array(order[(nRef + nCal)...]))
    }

    static func binRows(_ values: [SignalSource: [Float]], rows: Int, binner: SampleBinner) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: rows * binner.width)
        out.withUnsafeMutableBufferPointer { o in
            for (source, v) in values {
                guard let offset = binner.offsets[source], let src = binner.reference.sources[source] else { continue }
                let f = src.bins.features
                v.withUnsafeBufferPointer { vb in
                    for r in 0..<rows {
                        if source == .output {
                            o[r * binner.width + offset] = UInt8(truncatingIfNeeded: Int(vb[r]))
                        } else {
                            src.bins.bin(vb.baseAddress! + r * f, into: o.baseAddress! + r * binner.width + offset)
                        }
                    }
                }
            }
        }
        return out
    }

    /// One signal's score after every sample of a stream drawn with replacement from `rows`.
    static func scoreSeries(reference: DriftReference, signal i: Int, binned: [UInt8], width: Int, offset: Int,
                            rows: [Int], length: Int, seed: UInt64) -> [Double] {
        let spec = reference.signals[i], src = reference.sources[spec.source]!
        let w = SlidingKL(bins: src.bins, referenceCounts: src.counts, window: spec.window, alpha: reference.alpha)
        var rng = SeededGenerator(seed: seed)
        var series: [Double] = []
        series.reserveCapacity(length)
        // Live rows come from a population, not from these few rows: each stretch of the stream
        // draws from a fresh resample of them, so the thresholds allow for how far another
        // sample of the population may sit from the reference (a double bootstrap).
        var pool = rows
        binned.withUnsafeBufferPointer { b in
            for t in 0..<(length + spec.window) {
                if t % 2_000 == 0 { for i in pool.indices { pool[i] = rows[Int(rng.next() % UInt64(rows.count))] } }
                let r = pool[Int(rng.next() % UInt64(pool.count))]
                w.push(b.baseAddress! + r * width + offset)
                if w.isFull { series.append(w.score(spec.aggregate)) }
            }
        }
        return Array(series.suffix(length))
    }

    /// Alarm episodes in a score series at a threshold: an episode starts above it and ends once
    /// the score has stayed at or below it for `quiet` samples, as the detector's state does.
    public static func episodes(series: [Double], threshold: Double, quiet: Int) -> Int {
        var n = 0, alarmed = false, run = 0
        for s in series {
            if alarmed {
                run = s > threshold ? 0 : run + 1
                if run >= quiet { alarmed = false }
            } else if s > threshold {
                alarmed = true
                run = 0
                n += 1
            }
        }
        return n
    }

    public static func runLength(series: [Double], threshold: Double, quiet: Int) -> Double {
        let n = episodes(series: series, threshold: threshold, quiet: quiet)
        return n == 0 ? .infinity : Double(series.count) / Double(n)
    }

    /// The smallest threshold at and above which every threshold leaves at least `runLength`
    /// samples between alarm episodes. Episodes are not monotone in the threshold: one low
    /// enough keeps the alarm on for good (one long episode), so the search walks down from
    /// the top of the series and stops at the first threshold that fails, then bisects.
    public static func threshold(series: [Double], runLength: Double, quiet: Int) -> Double {
        let allowed = Int(Double(series.count) / runLength)
        let sorted = series.sorted()
        guard let top = sorted.last, top > 0 else { return 1e-9 }
        func passes(_ t: Double) -> Bool { episodes(series: series, threshold: t, quiet: quiet) <= allowed }
        // Grid: quantiles from the median up, densest in the tail.
        var grid: [Double] = [top * 1.05 + 1e-9]
        for i in 0..<400 {
            let q = 1 - 0.5 * pow(Double(i + 1) / 400, 3)
            grid.append(sorted[min(sorted.count - 1, Int(q * Double(sorted.count - 1)))])
        }
        var pass = grid[0], fail: Double?
        for t in grid.dropFirst() where t < pass {
            if passes(t) { pass = t } else { fail = t; break }
        }
        if var lo = fail {
            var hi = pass
            for _ in 0..<30 {
                let mid = (lo + hi) / 2
                if passes(mid) { hi = mid } else { lo = mid }
            }
            pass = hi
        }
        return max(pass, 1e-9)
    }

    /// Runs the whole detector on a stationary stream: the union's run length and each signal's.
    static func checkRunLengths(reference: DriftReference, binner: SampleBinner, binned: [UInt8], rows: [Int], classes: Int,
                                scoresAreProbabilities: Bool, length: Int, seed: UInt64) -> (union: Double, signals: [Double]) {
        let detector = DriftDetector(reference: reference, classes: classes, scoresAreProbabilities: scoresAreProbabilities)
        var rng = SeededGenerator(seed: seed)
        var alarms = 0
        var perSignal = [Int](repeating: 0, count: reference.signals.count)
        var above = [Bool](repeating: false, count: reference.signals.count)
        var quietRuns = [Int](repeating: 0, count: reference.signals.count)
        binned.withUnsafeBufferPointer { b in
            for _ in 0..<length {
                let r = rows[Int(rng.next() % UInt64(rows.count))]
                if case .detected = detector.observe(b.baseAddress! + r * binner.width) { alarms += 1 }
                for i in perSignal.indices {
                    let t = reference.signals[i].threshold
                    if above[i] {
                        quietRuns[i] = detector.scores[i] > t ? 0 : quietRuns[i] + 1
                        if quietRuns[i] >= detector.quiet { above[i] = false }
                    } else if detector.scores[i] > t {
                        above[i] = true
                        quietRuns[i] = 0
                        perSignal[i] += 1
                    }
                }
            }
        }
        func rl(_ n: Int) -> Double { n == 0 ? .infinity : Double(length) / Double(n) }
        return (rl(alarms), perSignal.map(rl))
    }
}
