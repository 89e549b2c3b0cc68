#if canImport(Glibc)
import Glibc
#endif

/// How an activation range is chosen from its histogram.
public enum CalibrationMethod: String, CaseIterable, Codable, Sendable {
    /// The observed minimum and maximum.
    case minmax
    /// The given percentile of |x| (default 99.99).
    case percentile
    /// TensorRT's entropy calibration: the threshold whose quantized distribution is closest
    /// to the observed one in KL divergence.
    case kl
    /// The threshold with the least expected squared error (rounding inside, clipping outside).
    case mse

    public func range(of h: ActivationHistogram, percentile: Double = 99.99) -> (lo: Float, hi: Float) {
        guard h.samples > 0, h.maxAbs > 0 else { return (0, 0) }
        if self == .minmax { return (h.minimum, h.maximum) }
        let threshold: Float = switch self {
        case .percentile: Calibration.percentileThreshold(h, percentile: percentile)
        case .kl: Calibration.entropyThreshold(h)
        case .mse: Calibration.mseThreshold(h)
        case .minmax: h.maxAbs
        }
        if h.isNonNegative { return (0, min(threshold, h.maximum)) }
        return (max(h.minimum, -threshold), min(h.maximum, threshold))
    }
}

public enum Calibration {
    /// Levels available on one side of zero: 256 for an unsigned tensor, 128 for a signed one.
    static func levels(_ h: ActivationHistogram) -> Int { h.isNonNegative ? 256 : 128 }

    public static func percentileThreshold(_ h: ActivationHistogram, percentile: Double) -> Float {
        let total = h.counts.reduce(0, +)
        let target = total * percentile / 100
        var cumulative = 0.0
        for (b, c) in h.counts.enumerated() {
            cumulative += c
            if cumulative >= target { return Float(b + 1) * h.binWidth }
        }
        return h.maxAbs
    }

    /// KL(P‖Q) search over thresholds i = levels … bins (every bin is a candidate).
    /// P is the histogram cut at i with the clipped mass added to its last bin; Q merges the
    /// first i bins into `levels` levels with fractional bin boundaries (no integer truncation of
    /// i / levels) and spreads each level back over the non-empty source bins it covers.
    public static func entropyThreshold(_ h: ActivationHistogram) -> Float {
        let hist = h.counts, bins = hist.count, levels = Self.levels(h)
        guard bins > levels else { return h.maxAbs }
        var suffix = [Double](repeating: 0, count: bins + 1)
        for b in stride(from: bins - 1, through: 0, by: -1) { suffix[b] = suffix[b + 1] + hist[b] }
        var best = (kl: Double.infinity, i: bins)
        var p = [Double](repeating: 0, count: bins), q = [Double](repeating: 0, count: bins)
        var mass = [Double](repeating: 0, count: levels), cover = [Double](repeating: 0, count: levels)
        for i in levels...bins {
            for b in 0..<i { p[b] = hist[b] }
            p[i - 1] += suffix[i]
            for j in 0..<levels { mass[j] = 0; cover[j] = 0 }
            let width = Double(i) / Double(levels)
            // Each source bin [b, b+1) overlaps at most two levels.
            for b in 0..<i {
                let j0 = min(Int(Double(b) / width), levels - 1)
                let edge = Double(j0 + 1) * width
                let inFirst = min(1, max(0, edge - Double(b)))
                let nonEmpty: Double = hist[b] > 0 ? 1 : 0
                mass[j0] += hist[b] * inFirst
                cover[j0] += nonEmpty * inFirst
                if inFirst < 1, j0 + 1 < levels {
                    mass[j0 + 1] += hist[b] * (1 - inFirst)
                    cover[j0 + 1] += nonEmpty * (1 - inFirst)
                }
            }
            for b in 0..<i {
                guard hist[b] > 0 else { q[b] = 0; continue }
                let j0 = min(Int(Double(b) / width), levels - 1)
                let edge = Double(j0 + 1) * width
                let inFirst = min(1, max(0, edge - Double(b)))
                var v = inFirst * (cover[j0] > 0 ? mass[j0] / cover[j0] : 0)
                if inFirst < 1, j0 + 1 < levels, cover[j0 + 1] > 0 { v += (1 - inFirst) * mass[j0 + 1] / cover[j0 + 1] }
                q[b] = v
            }
            let kl = divergence(p, q, count: i)
            if kl < best.kl { best = (kl, i) }
        }
        return Float(best.i) * h.binWidth
    }

    /// KL(P‖Q) of two unnormalised distributions after normalising and smoothing zeros (ε = 1e-4,
    /// taken from the non-zero entries so the total stays 1).
    public static func divergence(_ p: [Double], _ q: [Double], count n: Int) -> Double {
        func normalisedSmoothed(_ x: [Double]) -> [Double]? {
            let total = x[0..<n].reduce(0, +)
            guard total > 0 else { return nil }
            var y = x[0..<n].map { $0 / total }
            let zeros = y.filter { $0 == 0 }.count
            guard zeros > 0 else { return y }
            let nonZeros = n - zeros
            guard nonZeros > 0 else { return nil }
            let eps = 1e-4, take = eps * Double(zeros) / Double(nonZeros)
            for k in 0..<n { y[k] += y[k] == 0 ? eps : -take }
            return y.map { max($0, 1e-12) }
        }
        guard let ps = normalisedSmoothed(p), let qs = normalisedSmoothed(q) else { return .infinity }
        var kl = 0.0
        for k in 0..<n where ps[k] > 0 { kl += ps[k] * log(ps[k] / qs[k]) }
        return kl
    }

    /// The threshold T minimising Σ count · error², where a value inside [0, T] costs the uniform
    /// rounding noise Δ²/12 and a value beyond costs its clipping distance (x − T)².
    public static func mseThreshold(_ h: ActivationHistogram) -> Float {
        let width = Double(h.binWidth), bins = h.counts.count
        let steps = h.isNonNegative ? 255.0 : 127.5
        var best = (err: Double.infinity, t: Double(h.maxAbs))
        for i in stride(from: max(bins / 64, 1), through: bins, by: 1) {
            let t = Double(i) * width
            let delta = t / steps
            let rounding = delta * delta / 12
            var err = 0.0
            for b in 0..<bins {
                let c = h.counts[b]
                guard c > 0 else { continue }
                let centre = (Double(b) + 0.5) * width
                if centre <= t { err += c * rounding } else { let d = centre - t; err += c * (d * d + rounding) }
            }
            if err < best.err { best = (err, t) }
        }
        return Float(best.t)
    }
}
