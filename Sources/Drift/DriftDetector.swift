import Foundation

public enum DriftState: String, Codable, Sendable {
    case warmingUp = "warming_up"
    /// A signal whose window is not full yet (after a start or a reset).
    case filling
    case ok, warning, drift
}

/// A change of alarm state, with what caused it.
public enum DriftTransition: Sendable, Equatable {
    case detected(signal: String, score: Double, threshold: Double, top: [FeatureScore])
    case cleared
}

public struct FeatureScore: Codable, Sendable, Equatable {
    public var feature: Int
    public var score: Double
    public init(feature: Int, score: Double) {
        self.feature = feature
        self.score = score
    }
}

/// Bins one sample for every source of a reference: raw input, predicted class, confidence and
/// embedding, laid out source after source.
public struct SampleBinner: Sendable {
    public let reference: DriftReference
    public let width: Int
    public let classes: Int
    /// Where each source's bins start in a binned sample.
    public let offsets: [SignalSource: Int]
    /// Whether the scores are already probabilities (the network ends with softmax).
    public let scoresAreProbabilities: Bool
    /// Sources in binning order with their bins and offsets, so binning allocates nothing.
    private let plan: [(source: SignalSource, bins: FeatureBins, offset: Int)]

    public init(reference: DriftReference, classes: Int, scoresAreProbabilities: Bool) {
        self.reference = reference
        self.classes = classes
        self.scoresAreProbabilities = scoresAreProbabilities
        var offsets: [SignalSource: Int] = [:], w = 0
        for s in reference.sourceOrder {
            offsets[s] = w
            w += reference.sources[s]!.bins.features
        }
        self.offsets = offsets
        width = w
        plan = reference.sourceOrder.map { ($0, reference.sources[$0]!.bins, offsets[$0]!) }
    }

    /// The values a sample gives each source, `embedding` being its projected activations.
    public static func confidence(_ scores: UnsafePointer<Float>, classes: Int, probabilities: Bool) -> (top: Int, confidence: Float) {
        var top = 0
        for j in 1..<max(classes, 1) where scores[j] > scores[top] { top = j }
        if probabilities { return (top, scores[top]) }
        var sum: Float = 0
        let m = scores[top]
        for j in 0..<classes { sum += expf(scores[j] - m) }
        return (top, 1 / sum)
    }

    @inline(__always)
    public func bin(input: UnsafePointer<Float>, scores: UnsafePointer<Float>, embedding: UnsafePointer<Float>?,
                    into out: UnsafeMutablePointer<UInt8>) {
        let needsScores = offsets[.output] != nil || offsets[.confidence] != nil
        let (top, conf) = needsScores ? Self.confidence(scores, classes: classes, probabilities: scoresAreProbabilities) : (0, 0)
        for (source, bins, o) in plan {
            switch source {
            case .input: bins.bin(input, into: out + o)
            case .output: out[o] = UInt8(truncatingIfNeeded: top)
            case .confidence: out[o] = bins.bin(conf, feature: 0)
            case .embedding:
                if let embedding { bins.bin(embedding, into: out + o) } else { (out + o).update(repeating: 0, count: bins.features) }
            }
        }
    }

    /// The raw value of each source for a sample, laid out like the bins (to build references).
    public func values(input: UnsafePointer<Float>, scores: UnsafePointer<Float>, embedding: UnsafePointer<Float>?) -> [SignalSource: [Float]] {
        Self.values(sources: reference.sourceOrder, inputCount: reference.sources[.input]?.bins.features ?? 0, classes: classes,
                    probabilities: scoresAreProbabilities, embeddingCount: reference.sources[.embedding]?.bins.features ?? 0,
                    input: input, scores: scores, embedding: embedding)
    }

    public static func values(sources: [SignalSource], inputCount: Int, classes: Int, probabilities: Bool, embeddingCount: Int,
                              input: UnsafePointer<Float>, scores: UnsafePointer<Float>, embedding: UnsafePointer<Float>?) -> [SignalSource: [Float]] {
        var out: [SignalSource: [Float]] = [:]
        let (top, conf) = confidence(scores, classes: classes, probabilities: probabilities)
        for s in sources {
            switch s {
            case .input: out[s] = Array(UnsafeBufferPointer(start: input, count: inputCount))
            case .output: out[s] = [Float(top)]
            case .confidence: out[s] = [conf]
            case .embedding: out[s] = embedding.map { Array(UnsafeBufferPointer(start: $0, count: embeddingCount)) } ?? [Float](repeating: 0, count: embeddingCount)
            }
        }
        return out
    }
}

/// The calibrated detectors of one reference and the alarm state over them: `drift` when an
/// alarming signal's score exceeds its threshold; back to `ok` once every alarming score has
/// stayed at or below its threshold for `quiet` samples (the longest alarming window), so an
/// alarm neither sticks on scores that hover near their threshold nor flaps on every sample.
public final class DriftDetector: @unchecked Sendable {
    public let reference: DriftReference
    public let binner: SampleBinner
    let windows: [SlidingKL]
    let offsets: [Int]
    // The signals' specs unpacked, for the per-sample loop.
    private let thresholds: [Double]
    private let aggregates: [Aggregate]
    private let alarming: [Bool]
    public private(set) var state: DriftState = .ok
    /// Samples since the reference was set (or the last reset).
    public private(set) var samples = 0
    public private(set) var scores: [Double]
    /// Samples an alarm must stay quiet before it clears.
    public let quiet: Int
    private var quietRun = 0

    public init(reference: DriftReference, classes: Int, scoresAreProbabilities: Bool) {
        self.reference = reference
        let binner = SampleBinner(reference: reference, classes: classes, scoresAreProbabilities: scoresAreProbabilities)
        self.binner = binner
        windows = reference.signals.map { s in
            let src = reference.sources[s.source]!
            return SlidingKL(bins: src.bins, referenceCounts: src.counts, window: s.window, alpha: reference.alpha)
        }
        offsets = reference.signals.map { binner.offsets[$0.source]! }
        scores = [Double](repeating: 0, count: reference.signals.count)
        quiet = reference.signals.filter(\.alarms).map(\.window).max() ?? 1
        thresholds = reference.signals.map(\.threshold)
        aggregates = reference.signals.map(\.aggregate)
        alarming = reference.signals.map(\.alarms)
    }

    /// Feeds one binned sample; returns the state change it caused, if any.
    @inline(__always)
    public func observe(_ binned: UnsafePointer<UInt8>) -> DriftTransition? {
        samples &+= 1
        var worst = 0.0, worstSignal = -1
        var alarmingFull = true
        for i in 0..<windows.count {
            let w = windows[i]
            w.push(binned + offsets[i])
            guard w.isFull else {
                scores[i] = 0
                if alarming[i] { alarmingFull = false }
                continue
            }
            let s = w.score(aggregates[i])
            scores[i] = s
            let ratio = s / thresholds[i]
            if ratio > worst && alarming[i] { worst = ratio; worstSignal = i }
        }
        switch state {
        case .drift:
            // Quiet counts only while every alarming window is full (a restored alarm whose
            // windows came back empty is not cleared by scores of 0).
            quietRun = worst > 1 || !alarmingFull ? 0 : quietRun + 1
            if quietRun >= quiet { state = .ok; return .cleared }
            return nil
        default:
            if worst > 1 {
                state = .drift
                quietRun = 0
                let spec = reference.signals[worstSignal]
                let features = spec.source == .input || spec.source == .embedding ? top(worstSignal, 5) : []
                return .detected(signal: spec.name, score: scores[worstSignal], threshold: spec.threshold, top: features)
            }
            state = worst > 0.5 ? .warning : .ok
            return nil
        }
    }

    /// The features with the largest divergence in a signal's window.
    public func top(_ signal: Int, _ n: Int) -> [FeatureScore] {
        let w = windows[signal]
        guard w.filled > 0 else { return [] }
        return (0..<w.features).map { FeatureScore(feature: $0, score: w.kl(feature: $0)) }
            .sorted { $0.score > $1.score }.prefix(n).map { $0 }
    }

    /// Empties the windows and clears the alarm; the reference stays.
    public func reset() {
        for w in windows { w.reset() }
        state = .ok
        samples = 0
        for i in scores.indices { scores[i] = 0 }
    }

    /// Forgets the alarm but keeps the windows (the harness, at a stream's change point).
    public func clearAlarm() { state = .ok }

    public struct SignalReport: Codable, Sendable, Equatable {
        public var name: String
        public var score: Double
        public var threshold: Double
        public var window: Int
        public var filled: Int
        public var state: DriftState
        public var psi: Double
        public var js: Double
        public var top: [FeatureScore]
    }

    /// Every signal's score, PSI and Jensen–Shannon divergence (aggregated like the score) and top features.
    public func report(top n: Int = 5) -> [SignalReport] {
        reference.signals.enumerated().map { i, spec in
            let w = windows[i]
            var psi = 0.0, js = 0.0
            if w.filled > 0 {
                for f in 0..<w.features {
                    let p = w.windowProbabilities(feature: f), q = w.referenceProbabilities(feature: f)
                    let a = Divergence.psi(p, q), b = Divergence.js(p, q)
                    switch spec.aggregate {
                    case .max: psi = max(psi, a); js = max(js, b)
                    case .sum: psi += a; js += b
                    }
                }
            }
            let ratio = scores[i] / spec.threshold
            let st: DriftState = !w.isFull ? .filling : ratio > 1 ? .drift : ratio > 0.5 ? .warning : .ok
            return SignalReport(name: spec.name, score: scores[i], threshold: spec.threshold, window: spec.window, filled: w.filled,
                                state: st, psi: psi, js: js, top: spec.source == .input || spec.source == .embedding ? top(i, n) : [])
        }
    }

    /// Each signal's window, oldest first (to persist it).
    public func windowContents() -> [[UInt8]] { windows.map { $0.contents() } }

    /// Refills the windows from `windowContents()` of a detector of the same reference; the
    /// alarm state is set as saved.
    public func restore(windows contents: [[UInt8]], state: DriftState, samples: Int) {
        guard contents.count == windows.count else { return }
        for (w, c) in zip(windows, contents) {
            w.reset()
            guard c.count % w.features == 0, c.allSatisfy({ Int($0) < w.maxBins }) else { continue }
            c.withUnsafeBufferPointer { buf in
                // The newest `window` rows, oldest first.
                let rows = c.count / w.features
                for k in max(0, rows - w.window)..<rows {
                    // Keep bins inside each feature's own range.
                    var row = Array(buf[(k * w.features)..<((k + 1) * w.features)])
                    for f in 0..<w.features where Int(row[f]) >= w.binCounts[f] { row[f] = UInt8(w.binCounts[f] - 1) }
                    row.withUnsafeBufferPointer { w.push($0.baseAddress!) }
                }
            }
        }
        for i in windows.indices where windows[i].isFull { scores[i] = windows[i].score(reference.signals[i].aggregate) }
        self.state = state == .drift ? .drift : .ok
        self.samples = min(max(0, samples), 1 << 52)
        quietRun = 0
    }
}
