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
    /// Quantization levels between 0 and the threshold T, as the quantizer will use them: 256 for
    /// a tensor that is never negative ([0, T] over 255 steps), 127.5 for a signed one ([−T, T]
    /// over 255 steps: half of them on each side).
    static func levels(_ h: ActivationHistogram) -> Double { h.isNonNegative ? 256 : 127.5 }

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

    /// KL(P‖Q) search over thresholds i = ⌈levels⌉ … bins (every bin is a candidate), as
    /// TensorRT's entropy calibrator does it (onnxruntime's calibrate.py has reference code, and
    /// NVIDIA's pytorch-quantization the zero-bin step below):
    /// P is the histogram cut at i with the clipped mass added to its last bin; Q merges the first
    /// i bins into `levels` levels with fractional edges (no integer truncation of i / levels; a
    /// signed tensor's 127.5 levels give a half-width last level) and spreads each level's mass
    /// evenly over the bins that are non-empty in P. Both are smoothed on counts, then compared.
    /// The first bin is counted as the second, as NVIDIA's pytorch-quantization entropy
    /// calibrator does: a ReLU output's exact zeros (half its values) would otherwise dominate both
    /// distributions and the search would clip the bulk (1.9 σ of a ReLU'd Gaussian; a 28x28 CNN
    /// lost 1.7 points in INT8 to it, 0 after).
    public static func entropyThreshold(_ h: ActivationHistogram) -> Float {
        var hist = h.counts
        let bins = hist.count, levels = Self.levels(h)
        if bins > 1 { hist[0] = hist[1] }
        let slots = Int(levels.rounded(.up))
        guard bins > slots else { return h.maxAbs }
        var suffix = [Double](repeating: 0, count: bins + 1)
        for b in stride(from: bins - 1, through: 0, by: -1) { suffix[b] = suffix[b + 1] + hist[b] }
        var best = (kl: Double.infinity, i: bins)
        var p = [Double](repeating: 0, count: bins), q = [Double](repeating: 0, count: bins)
        var mass = [Double](repeating: 0, count: slots), cover = [Double](repeating: 0, count: slots)
        for i in slots...bins {
            for b in 0..<i { p[b] = hist[b] }
            p[i - 1] += suffix[i]
            for j in 0..<slots { mass[j] = 0; cover[j] = 0 }
            let width = Double(i) / levels
            // Each source bin [b, b+1) overlaps at most two levels (width ≥ 1).
            @inline(__always) func split(_ b: Int) -> (j: Int, first: Double) {
                let j = min(Int(Double(b) / width), slots - 1)
                return (j, min(1, max(0, Double(j + 1) * width - Double(b))))
            }
            for b in 0..<i {
                let (j, first) = split(b)
                let nonEmpty: Double = p[b] > 0 ? 1 : 0
                mass[j] += hist[b] * first
                cover[j] += nonEmpty * first
                if first < 1, j + 1 < slots {
                    mass[j + 1] += hist[b] * (1 - first)
                    cover[j + 1] += nonEmpty * (1 - first)
                }
            }
            for b in 0..<i {
                guard p[b] > 0 else { q[b] = 0; continue }
                let (j, first) = split(b)
                var v = first * (cover[j] > 0 ? mass[j] / cover[j] : 0)
                if first < 1, j + 1 < slots, cover[j + 1] > 0 { v += (1 - first) * mass[j + 1] / cover[j + 1] }
                q[b] = v
            }
            let kl = divergence(p, q, count: i)
            if kl < best.kl { best = (kl, i) }
        }
        return Float(best.i) * h.binWidth
    }

    /// KL(P‖Q) of two histograms of counts: each smoothed on its counts (ε = 1e-4 added to every
    /// empty bin and taken evenly from the others, as the reference does), then normalised.
    public static func divergence(_ p: [Double], _ q: [Double], count n: Int) -> Double {
        func smoothed(_ x: [Double]) -> (values: [Double], total: Double)? {
            let zeros = x[0..<n].reduce(0) { $0 + ($1 == 0 ? 1 : 0) }
            let nonZeros = n - zeros
            guard nonZeros > 0 else { return nil }
            let eps = 1e-4, take = eps * Double(zeros) / Double(nonZeros)
            // A non-empty bin below `take` (a sliver of a level's mass) stays just above zero.
            let y = x[0..<n].map { $0 == 0 ? eps : max($0 - take, 1e-12) }
            return (y, y.reduce(0, +))
        }
        guard let (ps, pt) = smoothed(p), let (qs, qt) = smoothed(q), pt > 0, qt > 0 else { return .infinity }
        var kl = 0.0
        for k in 0..<n {
            let a = ps[k] / pt
            kl += a * log(a / (qs[k] / qt))
        }
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
