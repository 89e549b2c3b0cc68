import CKernels
import Tensor
import Testing

/// The channels-last 2×2 stride-2 max pooling (FP32 and UINT8) against its definition, on the
/// path the CPU runs (AVX2 32 bytes or 8 floats a step, then the scalar tail): channel counts
/// below, at and past one vector and with tails, odd heights and widths (the last row and
/// column dropped), several samples. FP32 keeps `p > q ? p : q`'s answer for a NaN (the second
/// operand) and for ±0.
@Suite struct PoolNHWCTests {
    static func reference<T: Comparable>(_ x: [T], batch: Int, height: Int, width: Int, channels: Int) -> [T] {
        let oh = height / 2, ow = width / 2
        var y: [T] = []
        for b in 0..<batch {
            for oy in 0..<oh {
                for ox in 0..<ow {
                    for c in 0..<channels {
                        func at(_ dy: Int, _ dx: Int) -> T { x[((b * height + 2 * oy + dy) * width + 2 * ox + dx) * channels + c] }
                        func larger(_ p: T, _ q: T) -> T { p > q ? p : q }
                        y.append(larger(larger(at(0, 0), at(0, 1)), larger(at(1, 0), at(1, 1))))
                    }
                }
            }
        }
        return y
    }

    /// Sizes no checked model has write nothing and do not crash, on every path (`make test` runs
    /// this suite with EDGE_ISA=portable too), channels last and first: −1 channels once divided by
    /// zero on the portable path, a zero stride in the general one; a window larger than the image
    /// read past it.
    @Test(arguments: [(1, 4, 4, -1, 2, 2), (0, 4, 4, 8, 2, 2), (0, 4, 4, Int(Int32.max), 2, 2), (1, 4, 4, 8, 2, 0), (1, 1, 4, 8, 2, 3),
                      (1, 4, 1, 8, 2, 2), (1, -4, 4, 8, 2, 2), (1, 4, 4, 8, 0, 1)])
    func invalidSizesWriteNothing(_ a: (batch: Int, height: Int, width: Int, channels: Int, kernel: Int, stride: Int)) {
        let x = [UInt8](repeating: 9, count: 256), xf = [Float](repeating: 1, count: 256)
        var y = [UInt8](repeating: 0xEE, count: 256), yf = [Float](repeating: -7, count: 256)
        for average: Int32 in [0, 1] {
            edge_pool_nhwc_u8(x, Int32(a.batch), Int32(a.height), Int32(a.width), Int32(a.channels), Int32(a.kernel), Int32(a.kernel),
                              Int32(a.stride), Int32(a.stride), average, &y)
            edge_pool_nhwc_f32(xf, Int32(a.batch), Int32(a.height), Int32(a.width), Int32(a.channels), Int32(a.kernel), Int32(a.kernel),
                               Int32(a.stride), Int32(a.stride), average, &yf)
            // The channels-first kernels (planes = batch · channels, when that is small) take the same sizes.
            let planes = Int32(clamping: a.channels > 64 ? 0 : a.batch * a.channels)
            edge_pool_u8(x, planes, Int32(a.height), Int32(a.width), Int32(a.kernel), Int32(a.kernel), Int32(a.stride), Int32(a.stride),
                         average, &y)
            edge_pool_f32(xf, planes, Int32(a.height), Int32(a.width), Int32(a.kernel), Int32(a.kernel), Int32(a.stride), Int32(a.stride),
                          average, &yf)
        }
        #expect(y.allSatisfy { $0 == 0xEE })
        #expect(yf.allSatisfy { $0 == -7 })
    }

    @Test(arguments: [1, 7, 31, 32, 33, 40, 64, 71, 96])
    func uint8MaxPoolIsItsDefinition(channels: Int) {
        var rng = SeededGenerator(seed: UInt64(channels))
        let batch = 3, height = 5, width = 7
        let x = (0..<(batch * height * width * channels)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        var y = [UInt8](repeating: 0xAA, count: batch * (height / 2) * (width / 2) * channels + 1)
        edge_pool_nhwc_u8(x, Int32(batch), Int32(height), Int32(width), Int32(channels), 2, 2, 2, 2, 0, &y)
        #expect(Array(y.dropLast()) == Self.reference(x, batch: batch, height: height, width: width, channels: channels))
        #expect(y.last == 0xAA, "wrote past the output")
    }

    @Test(arguments: [1, 5, 8, 12, 16, 64, 67])
    func float32MaxPoolIsItsDefinition(channels: Int) {
        var rng = SeededGenerator(seed: UInt64(100 + channels))
        let batch = 2, height = 6, width = 5
        let specials: [Float] = [.nan, 0, -0.0, .infinity, -.infinity]
        let x = (0..<(batch * height * width * channels)).map { i -> Float in
            i % 11 == 3 ? specials[(i / 11) % specials.count] : rng.nextFloat(limit: 4)
        }
        var y = [Float](repeating: 42, count: batch * (height / 2) * (width / 2) * channels + 1)
        edge_pool_nhwc_f32(x, Int32(batch), Int32(height), Int32(width), Int32(channels), 2, 2, 2, 2, 0, &y)
        let ref: [Float] = Self.reference(x, batch: batch, height: height, width: width, channels: channels)
        // Bit for bit: NaN against NaN, and -0 against +0, count.
        #expect(y.dropLast().map { $0.bitPattern } == ref.map { $0.bitPattern })
        #expect(y.last == 42, "wrote past the output")
    }
}
