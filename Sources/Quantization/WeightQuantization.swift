import Tensor

/// INT8 weights, symmetric per output channel: W[o, k] ≈ scale[o] · q[o, k], q in [−127, 127]
/// (or [−63, 63] with `reduceRange`).
public struct Int8ChannelWeights: Sendable {
    public var q: [Int8]
    public var scales: [Float]
    public var outputs: Int
    public var inputs: Int

    public init(q: [Int8], scales: [Float], outputs: Int, inputs: Int) {
        self.q = q
        self.scales = scales
        self.outputs = outputs
        self.inputs = inputs
    }

    /// Quantizes a `[outputs, …]` weight (flattened per output); with `reduceRange` to 7 bits
    /// (±63), which the AVX2 vpmaddubsw kernel multiplies exactly (see `edge_q8_choose`).
    public init(_ w: Tensor, reduceRange: Bool = false) {
        let top: Float = reduceRange ? 63 : 127
        outputs = w.shape[0]
        inputs = w.count / outputs
        var q = [Int8](repeating: 0, count: w.count)
        var scales = [Float](repeating: 1, count: outputs)
        for o in 0..<outputs {
            var m: Float = 0
            for k in 0..<inputs { m = max(m, abs(w[o * inputs + k])) }
            // A channel of subnormal weights would get a scale whose inverse overflows (0 · inf = NaN traps in
            // Int8()): it quantizes to zeros with scale 1, as an all-zero channel does.
            let s = m / top
            guard s.isNormal else { continue }
            scales[o] = s
            let inv = 1 / s
            for k in 0..<inputs {
                // A NaN weight (only training can make one; files are checked) quantizes to 0, not a trap.
                let x = (w[o * inputs + k] * inv).rounded(.toNearestOrEven)
                q[o * inputs + k] = x.isNaN ? 0 : Int8(min(max(x, -top), top))
            }
        }
        self.q = q
        self.scales = scales
    }

    /// The same weights for an input flattened channels last (see `Kernels.channelsLastColumns`).
    public func channelsLast(channels c: Int, pixels: Int) -> Int8ChannelWeights {
        precondition(inputs == c * pixels, "the dense layer's input is not the flattened tensor")
        var out = [Int8](repeating: 0, count: q.count)
        for r in 0..<outputs {
            let s = r * inputs
            for ch in 0..<c {
                for p in 0..<pixels { out[s + p * c + ch] = q[s + ch * pixels + p] }
            }
        }
        return Int8ChannelWeights(q: out, scales: scales, outputs: outputs, inputs: inputs)
    }

    public func packed() -> PackedInt8Weights {
        q.withUnsafeBufferPointer { PackedInt8Weights(weight: $0.baseAddress!, outputs: outputs, inputs: inputs) }
    }

    public func dequantized() -> [Float] {
        (0..<q.count).map { Float(q[$0]) * scales[$0 / inputs] }
    }
}

/// INT4 weights, symmetric per group of `group` inputs: W ≈ scale[o, g] · q, q in [−8, 7]
/// (scale = max|W| / 7 over the group, so −8 is never produced; it stays available to files).
public struct Int4GroupWeights: Sendable {
    public var q: [Int8]
    public var scales: [Float]
    public var outputs: Int
    public var inputs: Int
    public var group: Int
    public var groups: Int { (inputs + group - 1) / group }

    public init(_ w: Tensor, group: Int) {
        outputs = w.shape[0]
        inputs = w.count / outputs
        self.group = group
        let groups = (inputs + group - 1) / group
        var q = [Int8](repeating: 0, count: w.count)
        var scales = [Float](repeating: 1, count: outputs * groups)
        for o in 0..<outputs {
            for g in 0..<groups {
                let k0 = g * group, k1 = min(k0 + group, inputs)
                var m: Float = 0
                for k in k0..<k1 { m = max(m, abs(w[o * inputs + k])) }
                // As for INT8: a group of subnormal weights (scale 0, 0/0 = NaN) quantizes to zeros with scale 1.
                let s = m / 7
                guard s.isNormal else { continue }
                scales[o * groups + g] = s
                for k in k0..<k1 {
                    let x = (w[o * inputs + k] / s).rounded(.toNearestOrEven)
                    q[o * inputs + k] = x.isNaN ? 0 : Int8(min(max(x, -8), 7))
                }
            }
        }
        self.q = q
        self.scales = scales
    }

    public init(q: [Int8], scales: [Float], outputs: Int, inputs: Int, group: Int) {
        self.q = q
        self.scales = scales
        self.outputs = outputs
        self.inputs = inputs
        self.group = group
    }

    /// Nibbles q + 8, two per byte, low nibble first.
    public var nibbles: [UInt8] {
        var out = [UInt8](repeating: 0, count: outputs * inputs / 2)
        for i in stride(from: 0, to: q.count, by: 2) {
            out[i / 2] = UInt8(Int(q[i]) + 8) | (UInt8(Int(q[i + 1]) + 8) << 4)
        }
        return out
    }

    public init(nibbles: [UInt8], scales: [Float], outputs: Int, inputs: Int, group: Int) {
        var q = [Int8](repeating: 0, count: outputs * inputs)
        for i in 0..<q.count {
            let byte = nibbles[i / 2]
            q[i] = Int8(Int(i % 2 == 0 ? byte & 15 : byte >> 4) - 8)
        }
        self.init(q: q, scales: scales, outputs: outputs, inputs: inputs, group: group)
    }

    public func packed(bias: Tensor?) -> PackedInt4Weights {
        PackedInt4Weights(q: q, scales: scales, bias: bias?.values, outputs: outputs, inputs: inputs, group: group)
    }
}

/// Signal-to-quantization-noise ratio in dB of `approx` against `exact`.
public func sqnr(_ exact: [Float], _ approx: [Float]) -> Double {
    var signal = 0.0, noise = 0.0
    for (a, b) in zip(exact, approx) {
        signal += Double(a) * Double(a)
        noise += Double(a - b) * Double(a - b)
    }
    guard noise > 0 else { return .infinity }
    guard signal > 0 else { return -.infinity }
    return 10 * log10(signal / noise)
}

#if canImport(Glibc)
import Glibc
#endif
