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
    private var counts: [Int32]
    private var ring: [UInt8]
    private var head = 0
    public private(set) var filled = 0
    private var h: [Double], q: [Double]
    /// (c + α)·log(c + α) for c in 0...window.
    private let hTable: [Double]
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
        counts = [Int32](repeating: 0, count: features * maxBins)
        ring = [UInt8](repeating: 0, count: window * features)
        hTable = (0...window).map { (Double($0) + alpha) * Foundation.log(Double($0) + alpha) }
        h = [Double](repeating: 0, count: features)
        q = [Double](repeating: 0, count: features)
        reset()
    }

    public var isFull: Bool { filled == window }

    public func reset() {
        for i in counts.indices { counts[i] = 0 }
        head = 0
        filled = 0
        recompute()
    }

    /// Adds one sample's bins (one per feature); the oldest leaves once the window is full.
    @inline(__always)
    public func push(_ bins: UnsafePointer<UInt8>) {
        let f = features, mb = maxBins
        counts.withUnsafeMutableBufferPointer { c in
            ring.withUnsafeMutableBufferPointer { r in
                h.withUnsafeMutableBufferPointer { h in
                    q.withUnsafeMutableBufferPointer { q in
                        hTable.withUnsafeBufferPointer { t in
                            referenceLog.withUnsafeBufferPointer { ref in
                                let slot = head * f
                                if filled == window {
                                    for i in 0..<f {
                                        let b = i * mb + Int(r[slot + i])
                                        let n = Int(c[b])
                                        h[i] += t[n - 1] - t[n]
                                        q[i] -= ref[b]
                                        c[b] = Int32(n - 1)
                                    }
                                }
                                for i in 0..<f {
                                    let v = bins[i]
                                    r[slot + i] = v
                                    let b = i * mb + Int(v)
                                    let n = Int(c[b])
                                    h[i] += t[n + 1] - t[n]
                                    q[i] += ref[b]
                                    c[b] = Int32(n + 1)
                                }
                            }
                        }
                    }
                }
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
                qs += (Double(n) + alpha) * referenceLog[i * maxBins + b]
            }
            h[i] = hs
            q[i] = qs
        }
    }

    /// KL(window ‖ reference) of one feature.
    @inline(__always)
    public func kl(feature i: Int) -> Double {
        let z = Double(filled) + Double(binCounts[i]) * alpha
        return (h[i] - q[i]) / z - Foundation.log(z)
    }

    /// The signal's score: max or sum over features of their KL.
    public func score(_ aggregate: Aggregate) -> Double {
        var s = 0.0
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
            out.append(contentsOf: ring[(slot * features)..<((slot + 1) * features)])
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
