/// A streamed histogram of one tensor's values: a first pass finds the range, a second fills
/// `binCount` bins over [0, max|x|] of |x| (or of x, for tensors that are never negative).
/// Memory stays `binCount` counters however many rows are seen.
public struct ActivationHistogram: Sendable {
    public static let defaultBins = 2048
    public private(set) var minimum: Float = .infinity
    public private(set) var maximum: Float = -.infinity
    public private(set) var counts: [Double]
    public private(set) var samples: Int = 0

    public init(bins: Int = ActivationHistogram.defaultBins) {
        counts = Array(repeating: 0, count: bins)
    }

    /// True when no observed value was negative: the tensor gets an unsigned range.
    public var isNonNegative: Bool { minimum >= 0 }
    public var maxAbs: Float { max(abs(minimum), abs(maximum)) }
    public var binWidth: Float { maxAbs / Float(counts.count) }

    /// First pass: the range.
    public mutating func observeRange(_ x: UnsafePointer<Float>, count: Int) {
        var lo = minimum, hi = maximum
        // Overflowed activations (inf, NaN) would make the range and every bin index non-finite.
        for i in 0..<count where x[i].isFinite {
            lo = min(lo, x[i])
            hi = max(hi, x[i])
        }
        minimum = lo
        maximum = hi
    }

    /// Second pass: the bins of |x|.
    public mutating func observeValues(_ x: UnsafePointer<Float>, count: Int) {
        let top = maxAbs
        guard top > 0 else { samples += count; return }
        let scale = Float(counts.count) / top, last = counts.count - 1
        counts.withUnsafeMutableBufferPointer { c in
            for i in 0..<count {
                // Values past the range (and NaN) count in the last bin; Int() would trap on them.
                let v = abs(x[i]) * scale
                c[v < Float(last) ? Int(v) : last] += 1
            }
        }
        samples += count
    }
}
