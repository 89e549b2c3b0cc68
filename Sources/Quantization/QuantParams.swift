import CKernels

/// UINT8 affine quantization of one activation tensor: real = scale · (q − zeroPoint).
public struct QuantParams: Codable, Equatable, Sendable {
    public var scale: Float
    public var zeroPoint: Int32

    enum CodingKeys: String, CodingKey {
        case scale
        case zeroPoint = "zero_point"
    }

    public init(scale: Float, zeroPoint: Int32) {
        self.scale = scale
        self.zeroPoint = zeroPoint
    }

    /// Parameters covering [lo, hi], widened to include 0 so that 0 is exact (padding, ReLU).
    /// A non-negative range gets zero point 0 and all 256 levels.
    public init(lo: Float, hi: Float) {
        let lo = min(lo, 0), hi = max(hi, 0)
        // hi − lo overflows to inf for ranges near ±Float.greatestFiniteMagnitude; halves do not.
        let width = hi - lo
        let scale = max(width.isFinite ? width / 255 : hi / 255 - lo / 255, 1e-12)
        self.scale = scale
        self.zeroPoint = Int32(min(max((-lo / scale).rounded(.toNearestOrEven), 0), 255))
    }

    public var inverseScale: Float { 1 / scale }

    @inline(__always)
    public func quantize(_ x: Float) -> UInt8 {
        let scaled = x * inverseScale
        // NaN goes to the lower bound, as in the vectorised kernels (Int32(NaN) would trap).
        let v = scaled.isNaN ? -1_073_741_824 : min(max(scaled, -1_073_741_824), 1_073_741_824)
        let q = Int32(v.rounded(.toNearestOrEven)) &+ zeroPoint
        return UInt8(min(max(q, 0), 255))
    }

    @inline(__always)
    public func dequantize(_ q: UInt8) -> Float { scale * Float(Int32(q) - zeroPoint) }

    /// The represented real range.
    public var range: ClosedRange<Float> { dequantize(0)...dequantize(255) }
}

/// Quantizes `count` floats to UINT8 with `params` (vectorised in CKernels; no allocation).
public func quantize(_ x: UnsafePointer<Float>, count: Int, _ params: QuantParams, _ y: UnsafeMutablePointer<UInt8>) {
    edge_quantize_u8(x, count, params.inverseScale, params.zeroPoint, y)
}

public func dequantize(_ x: UnsafePointer<UInt8>, count: Int, _ params: QuantParams, _ y: UnsafeMutablePointer<Float>) {
    edge_dequantize_u8(x, count, params.scale, params.zeroPoint, y)
}
