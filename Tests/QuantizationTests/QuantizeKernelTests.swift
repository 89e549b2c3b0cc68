import Quantization
import Tensor
import Testing

/// The vectorised activation quantizer (AVX-512, AVX2 or NEON in blocks of 32 and 8, the C loop for
/// the rest) gives the byte the scalar rule gives: round half to even, then the zero point, then
/// clamped to [0, 255]; NaN to the lower bound.
@Suite struct QuantizeKernelTests {
    @Test(arguments: [QuantParams(scale: 0.05, zeroPoint: 128), QuantParams(scale: 0.5, zeroPoint: 0),
                      QuantParams(scale: 1, zeroPoint: 255)])
    func vectorisedQuantizeIsTheScalarRule(params: QuantParams) {
        var rng = SeededGenerator(seed: 7)
        var values: [Float] = []
        for k in -300...300 { values.append((Float(k) + 0.5) * params.scale) }  // exact halves: ties to even
        for _ in 0..<400 { values.append(rng.nextFloat(limit: 20)) }
        values += [.nan, -.nan, .infinity, -.infinity, 3e38, -3e38, 0, -0.0, .leastNonzeroMagnitude, 1e9, -1e9]
        values.shuffle(using: &rng)
        // Every length 0...75 from several offsets: each block size and each tail length.
        for start in [0, 1, 3, 17] {
            for length in 0...75 where start + length <= values.count {
                let slice = Array(values[start..<(start + length)])
                var out = [UInt8](repeating: 0xAA, count: length + 1)
                slice.withUnsafeBufferPointer { x in
                    out.withUnsafeMutableBufferPointer { y in
                        quantize(x.baseAddress ?? UnsafePointer(bitPattern: 8)!, count: length, params, y.baseAddress!)
                    }
                }
                let expected = slice.map { params.quantize($0) }
                #expect(Array(out[..<length]) == expected, "length \(length) from \(start)")
                #expect(out[length] == 0xAA, "wrote past the end at length \(length)")
            }
        }
        #expect(params.quantize(.nan) == 0)
    }
}
