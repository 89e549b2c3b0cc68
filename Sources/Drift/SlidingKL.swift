import Foundation

/// How a multi-feature signal turns per-feature divergences into one score.
public enum Aggregate: String, Codable, Sendable {
    /// The largest feature's divergence: sharp on changes confined to a few features.
    case max
    /// The sum over features: sensitive to small changes spread over many.
    case sum
}

/// KL(window ‖ reference) per feature over a sliding window of binned samples, kept up to date in
/// O(features) per sample with no allocation.
///
/// With counts c_b in a window of n samples, B bins, smoothing α, Z = n + Bα and reference log
/// probabilities r_b: KL = H/Z − log Z − Q/Z, where H = Σ (c_b+α)·log(c_b+α) and Q = Σ (c_b+α)·r_b.
/// A sample entering bin b changes H by h(c_b+1) − h(c_b) and Q by r_b, both read from tables.
public final class SlidingKL: @unchecked Sendable {
    public let features: Int
    public let window: Int
    public let maxBins: Int
    public let alpha: Double
    public let binCounts: [Int]
    /// `[features, maxBins]`: log reference probabilities (smoothed).
    public let referenceLog: [Double]
    // Raw storage: the per-sample path touches nothing that could copy or check uniqueness.
    private let counts: UnsafeMutablePointer<Int32>
    private let ring: UnsafeMutablePointer<UInt8>
    private let h: UnsafeMutablePointer<Double>
    private let q: UnsafeMutablePointer<Double>
    private let refLog: UnsafeMutablePointer<Double>
    /// (c + α)·log(c + α) for c in 0...window, and its step h(c + 1) − h(c).
    private let hTable: UnsafeMutablePointer<Double>
    private let hStep: UnsafeMutablePointer<Double>
    /// 1/Z and log Z of each feature once the window is full (Z = window + bins·α).
    private let fullInverseZ: UnsafeMutablePointer<Double>
    private let fullLogZ: UnsafeMutablePointer<Double>
    private var head = 0
    public private(set) var filled = 0
    private var pushes = 0

    /// - Parameter referenceCounts: `[features, maxBins]` bin counts of the reference rows.
    public init(bins: FeatureBins, referenceCounts: [Float], window: Int, alpha: Double) {
        precondition(window >= 1 && alpha > 0 && referenceCounts.count == bins.features * bins.maxBins)
        features = bins.features
        self.window = window
        maxBins = bins.maxBins
        self.alpha = alpha
        binCounts = bins.binCounts
        let mb = bins.maxBins
        var logs = [Double](repeating: 0, count: bins.features * mb)
        for f in 0..<bins.features {
            let used = bins.binCounts[f]
            var total = Double(used) * alpha
            for b in 0..<used { total += Double(referenceCounts[f * mb + b]) }
            for b in 0..<used { logs[f * mb + b] = Foundation.log((Double(referenceCounts[f * mb + b]) + alpha) / total) }
        }
        referenceLog = logs
        counts = .allocate(capacity: features * mb)
        ring = .allocate(capacity: window * features)
        ring.initialize(repeating: 0, count: window * features)
        h = .allocate(capacity: features)
        q = .allocate(capacity: features)
        refLog = .allocate(capacity: features * mb)
        refLog.initialize(from: logs, count: logs.count)
        hTable = .allocate(capacity: window + 1)
        for c in 0...window { hTable[c] = (Double(c) + alpha) * Foundation.log(Double(c) + alpha) }
        hStep = .allocate(capacity: window)
        for c in 0..<window { hStep[c] = hTable[c + 1] - hTable[c] }
        fullInverseZ = .allocate(capacity: features)
        fullLogZ = .allocate(capacity: features)
        for f in 0..<features {
            let z = Double(window) + Double(bins.binCounts[f]) * alpha
            fullInverseZ[f] = 1 / z
            fullLogZ[f] = Foundation.log(z)
        }
        reset()
    }

    deinit {
        counts.deallocate()
        ring.deallocate()
        h.deallocate()
        q.deallocate()
        refLog.deallocate()
        hTable.deallocate()
        hStep.deallocate()
        fullInverseZ.deallocate()
        fullLogZ.deallocate()
    }

    public var isFull: Bool { filled == window }

    public func reset() {
        counts.initialize(repeating: 0, count: features * maxBins)
        head = 0
        filled = 0
        recompute()
    }

    /// Adds one sample's bins (one per feature); the oldest leaves once the window is full.
    @inline(__always)
    public func push(_ bins: UnsafePointer<UInt8>) {
        let f = features, mb = maxBins
        let slot = ring + head * f
        if filled == window {
            // The leaving and the entering sample in one pass; a feature whose bin does not
            // change (common: a background pixel) costs one compare.
            for i in 0..<f {
                let old = slot[i], new = bins[i]
                if old == new { continue }
                slot[i] = new
                let bo = i &* mb &+ Int(old), bn = i &* mb &+ Int(new)
                let no = Int(counts[bo]), nn = Int(counts[bn])
                h[i] += hStep[nn] - hStep[no &- 1]
                q[i] += refLog[bn] - refLog[bo]
                counts[bo] = Int32(truncatingIfNeeded: no &- 1)
                counts[bn] = Int32(truncatingIfNeeded: nn &+ 1)
            }
        } else {
            for i in 0..<f {
                let v = bins[i]
                slot[i] = v
                let b = i &* mb &+ Int(v)
                let n = Int(counts[b])
                h[i] += hStep[n]
                q[i] += refLog[b]
                counts[b] = Int32(truncatingIfNeeded: n &+ 1)
            }
        }
        head = head + 1 == window ? 0 : head + 1
        if filled < window { filled += 1 }
        pushes &+= 1
        // Rounding in the running sums stays bounded: rebuild them now and then.
        if pushes & 0xFFFF == 0 { recompute() }
    }

    private func recompute() {
        for i in 0..<features {
            var hs = 0.0, qs = 0.0
            for b in 0..<binCounts[i] {
                let n = Int(counts[i * maxBins + b])
                hs += hTable[n]
                qs += (Double(n) + alpha) * refLog[i * maxBins + b]
            }
            h[i] = hs
            q[i] = qs
        }
    }

    /// KL(window ‖ reference) of one feature.
    @inline(__always)
    public func kl(feature i: Int) -> Double {
        if filled == window { return (h[i] - q[i]) * fullInverseZ[i] - fullLogZ[i] }
        let z = Double(filled) + Double(binCounts[i]) * alpha
        return (h[i] - q[i]) / z - Foundation.log(z)
    }

    /// The signal's score: max or sum over features of their KL.
    @inline(__always)
    public func score(_ aggregate: Aggregate) -> Double {
        var s = 0.0
        if filled == window {
            switch aggregate {
            case .max: for i in 0..<features { s = Swift.max(s, (h[i] - q[i]) * fullInverseZ[i] - fullLogZ[i]) }
            case .sum: for i in 0..<features { s += (h[i] - q[i]) * fullInverseZ[i] - fullLogZ[i] }
            }
            return s
        }
        switch aggregate {
        case .max: for i in 0..<features { s = Swift.max(s, kl(feature: i)) }
        case .sum: for i in 0..<features { s += kl(feature: i) }
        }
        return s
    }

    /// The window's smoothed bin probabilities for one feature (for PSI, JS and reports).
    public func windowProbabilities(feature i: Int) -> [Double] {
        let z = Double(filled) + Double(binCounts[i]) * alpha
        return (0..<binCounts[i]).map { (Double(counts[i * maxBins + $0]) + alpha) / z }
    }

    public func referenceProbabilities(feature i: Int) -> [Double] {
        (0..<binCounts[i]).map { Foundation.exp(referenceLog[i * maxBins + $0]) }
    }

    /// The window's contents, oldest first, `[filled, features]` (to persist and restore it).
    public func contents() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(filled * features)
        let start = filled == window ? head : 0
        for k in 0..<filled {
            let slot = (start + k) % window
            out.append(contentsOf: UnsafeBufferPointer(start: ring + slot * features, count: features))
        }
        return out
    }
}

/// Divergences between two discrete distributions, computed directly (reports and tests).
public enum Divergence {
    public static func kl(_ p: [Double], _ q: [Double]) -> Double {
        zip(p, q).reduce(0) { $0 + ($1.0 > 0 ? $1.0 * Foundation.log($1.0 / $1.1) : 0) }
    }

    /// Population stability index: Σ (p − q)·log(p/q).
    public static func psi(_ p: [Double], _ q: [Double]) -> Double {
        zip(p, q).reduce(0) { $0 + ($1.0 - $1.1) * Foundation.log($1.0 / $1.1) }
    }

    /// Jensen–Shannon divergence (natural log, at most log 2).
    public static func js(_ p: [Double], _ q: [Double]) -> Double {
        let m = zip(p, q).map { ($0 + $1) / 2 }
        return (kl(p, m) + kl(q, m)) / 2
    }
}
