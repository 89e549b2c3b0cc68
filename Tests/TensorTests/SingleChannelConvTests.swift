import Tensor
import Testing

/// The single-channel INT8 convolution (windows read from a padded image, 8 pixels a vector)
/// equals the integer definition of the convolution, requantized by the scalar epilogue every
/// INT8 GEMM path matches, bit for bit; it writes nothing past its outputs; and it refuses what
/// it cannot compute exactly.
@Suite(.enabled(if: KernelISA.avx2.isSupported)) struct SingleChannelConvTests {
    struct Shape: Sendable, CustomTestStringConvertible {
        var height, width, kh, kw, sh, ph, pw, outputs: Int
        var oh: Int { (height + 2 * ph - kh) / sh + 1 }
        var ow: Int { width + 2 * pw - kw + 1 }
        var testDescription: String { "\(height)x\(width) k\(kh)x\(kw) s\(sh) p\(ph),\(pw) -> \(outputs)" }
    }

    static let shapes = [
        // The 28x28 CNN's first layer, and the digits CNN's.
        Shape(height: 28, width: 28, kh: 5, kw: 5, sh: 1, ph: 2, pw: 2, outputs: 8),
        Shape(height: 8, width: 8, kh: 3, kw: 3, sh: 1, ph: 1, pw: 1, outputs: 16),
        // One pixel; one output column (a row shorter than a vector); a kernel of 8 taps a row.
        Shape(height: 1, width: 1, kh: 1, kw: 1, sh: 1, ph: 0, pw: 0, outputs: 8),
        Shape(height: 5, width: 3, kh: 3, kw: 3, sh: 1, ph: 0, pw: 0, outputs: 8),
        Shape(height: 7, width: 9, kh: 2, kw: 8, sh: 1, ph: 0, pw: 0, outputs: 24),
        // Four taps a row (one quad), a vertical stride, padding on one axis only.
        Shape(height: 6, width: 11, kh: 4, kw: 4, sh: 2, ph: 0, pw: 3, outputs: 8),
        // A kernel taller than the image, its windows partly in the padding rows.
        Shape(height: 3, width: 17, kh: 7, kw: 6, sh: 1, ph: 3, pw: 0, outputs: 16),
        Shape(height: 10, width: 10, kh: 1, kw: 1, sh: 3, ph: 0, pw: 0, outputs: 8),
        // Five vectors of pixels a row, the last one partial; wide padding.
        Shape(height: 2, width: 40, kh: 2, kw: 5, sh: 1, ph: 0, pw: 2, outputs: 8),
        Shape(height: 9, width: 13, kh: 3, kw: 7, sh: 2, ph: 1, pw: 3, outputs: 32),
        // Padding wider than the kernel; 7x7.
        Shape(height: 4, width: 5, kh: 1, kw: 3, sh: 1, ph: 2, pw: 5, outputs: 8),
        Shape(height: 7, width: 7, kh: 7, kw: 7, sh: 1, ph: 3, pw: 3, outputs: 16),
        // The largest padded images the buffer takes (1,170 rows of 28 bytes = 32,760 of 32,768):
        // the last row's 16-byte loads end at the buffer's end; one and two quads a kernel row.
        Shape(height: 1170, width: 8, kh: 1, kw: 1, sh: 1, ph: 0, pw: 0, outputs: 8),
        Shape(height: 1170, width: 12, kh: 1, kw: 5, sh: 1, ph: 0, pw: 0, outputs: 8),
    ]

    /// Σ x·w over the window, a padding tap reading `zp`, as im2row writes it.
    func exactAccumulators(_ x: [UInt8], samples: Int, _ s: Shape, _ w: [Int8], zp: UInt8) -> [Int32] {
        var acc = [Int32](repeating: 0, count: samples * s.oh * s.ow * s.outputs)
        for n in 0..<samples {
            for oy in 0..<s.oh {
                for ox in 0..<s.ow {
                    for o in 0..<s.outputs {
                        var sum: Int64 = 0
                        for ky in 0..<s.kh {
                            for kx in 0..<s.kw {
                                let iy = oy * s.sh - s.ph + ky, ix = ox - s.pw + kx
                                let v = (iy >= 0 && iy < s.height && ix >= 0 && ix < s.width) ? x[(n * s.height + iy) * s.width + ix] : zp
                                sum += Int64(v) * Int64(w[(o * s.kh + ky) * s.kw + kx])
                            }
                        }
                        acc[((n * s.oh + oy) * s.ow + ox) * s.outputs + o] = Int32(sum)
                    }
                }
            }
        }
        return acc
    }

    /// AVX2 named (not .auto), so the suite also runs on a CPU whose best INT8 path is VNNI.
    func make(_ w: [Int8], _ s: Shape, sw: Int = 1, isa: KernelISA = .avx2) -> SingleChannelInt8Conv? {
        w.withUnsafeBufferPointer {
            SingleChannelInt8Conv(weight: $0.baseAddress!, outputs: s.outputs, height: s.height, width: s.width, kernelH: s.kh,
                                  kernelW: s.kw, strideH: s.sh, strideW: sw, padH: s.ph, padW: s.pw, isa: isa)
        }
    }

    @Test(arguments: shapes, [1, 3])
    func equalsTheIntegerDefinition(s: Shape, samples: Int) throws {
        var rng = SeededGenerator(seed: UInt64(s.height * 131 + s.width * 17 + s.kh * 5 + s.kw + s.outputs * 7 + samples))
        // 7-bit weights (what --reduce-range writes), with ±63 at both ends so pair sums reach ±126.
        var w = (0..<(s.outputs * s.kh * s.kw)).map { _ in Int8(Int(rng.next() % 127) - 63) }
        w[0] = 63
        w[w.count - 1] = -63
        let x = (0..<(samples * s.height * s.width)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let conv = try #require(make(w, s))
        #expect(conv.byteCount == ((s.outputs + 7) / 8) * s.kh * (s.kw > 4 ? 2 : 1) * 32)
        let ep = QuantizedEpilogue(outputs: s.outputs)
        for o in 0..<s.outputs {
            ep.bias[o] = Int32(Int(rng.next() % 20001) - 10000)
            ep.scale[o] = 0.0005 + rng.nextUnitFloat() * 0.002
        }
        let count = samples * s.oh * s.ow * s.outputs
        for (zp, lo, hi, leaky) in [(UInt8(128), Int32(0), Int32(255), Float?.none), (0, 0, 255, nil), (30, 30, 90, nil), (255, 0, 255, Float(0.1))] {
            ep.zeroPoint = Int32(zp)
            ep.qmin = lo
            ep.qmax = hi
            ep.leakyAlpha = leaky
            let acc = exactAccumulators(x, samples: samples, s, w, zp: zp)
            var y = [UInt8](repeating: 7, count: count + 64)
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { conv.run(samples: samples, xp.baseAddress!, pad: zp, epilogue: ep, output: $0.baseAddress!) }
            }
            var wrong = 0
            for i in 0..<count where y[i] != ep.referenceRequantize(acc[i], output: i % s.outputs) { wrong += 1 }
            #expect(wrong == 0, "zero point \(zp), clamp \(lo)...\(hi), leaky \(String(describing: leaky)): \(wrong) of \(count) outputs differ")
            #expect(y[count...].allSatisfy { $0 == 7 }, "written past the outputs")
        }
    }

    /// The worst case for vpmaddubsw: pairs of taps at +64 + 64 and −64 − 64 (255 · ±128 = ±32640
    /// fits int16), inputs at 0 and 255.
    @Test func extremeOperandsAreExact() throws {
        let s = Shape(height: 6, width: 12, kh: 3, kw: 6, sh: 1, ph: 1, pw: 2, outputs: 16)
        let n = s.outputs * s.kh * s.kw
        let patterns: [[Int8]] = [(0..<n).map { i in i % 3 == 0 ? -64 : 64 }, [Int8](repeating: -64, count: n), [Int8](repeating: 64, count: n)]
        for (w, fill) in patterns.flatMap({ w in [UInt8(0), 255].map { (w, $0) } }) {
            let x = (0..<(s.height * s.width)).map { i in i % 5 == 0 ? 255 - fill : fill }
            let conv = try #require(make(w, s))
            let ep = QuantizedEpilogue(outputs: s.outputs)
            for o in 0..<s.outputs { ep.scale[o] = 1e-5 }
            ep.zeroPoint = 100
            let acc = exactAccumulators(x, samples: 1, s, w, zp: fill)
            var y = [UInt8](repeating: 0, count: s.oh * s.ow * s.outputs)
            x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { conv.run(samples: 1, xp.baseAddress!, pad: fill, epilogue: ep, output: $0.baseAddress!) } }
            #expect((0..<y.count).allSatisfy { y[$0] == ep.referenceRequantize(acc[$0], output: $0 % s.outputs) })
        }
    }

    /// Where the kernel cannot compute the convolution exactly, or was not written for it, there is
    /// no kernel (the plan then takes im2row + GEMM), never a wrong answer or a read out of bounds.
    @Test func refusesWhatItDoesNotCompute() {
        let base = Shape(height: 8, width: 8, kh: 3, kw: 3, sh: 1, ph: 1, pw: 1, outputs: 8)
        let w = [Int8](repeating: 1, count: 64 * 64)
        #expect(make(w, base) != nil)
        var s = base
        s.outputs = 12  // not a multiple of 8
        #expect(make(w, s) == nil)
        s = base
        s.kw = 9  // more than two quads a kernel row
        #expect(make(w, s) == nil)
        #expect(make(w, base, sw: 2) == nil)  // a horizontal stride
        #expect(make(w, base, isa: .portable) == nil)
        s = base
        s.height = 200
        s.width = 200  // a padded image over 32 KiB
        #expect(make(w, s) == nil)
        // One row past the largest image the buffer takes (1,171 rows of 28 bytes = 32,788).
        #expect(make(w, Shape(height: 1171, width: 8, kh: 1, kw: 1, sh: 1, ph: 0, pw: 0, outputs: 8)) == nil)
        #expect(make(w, Shape(height: 1170, width: 8, kh: 1, kw: 1, sh: 1, ph: 0, pw: 0, outputs: 8)) != nil)
        // 8-bit weights whose pair can saturate vpmaddubsw: 127 + 127 > 128.
        var strong = [Int8](repeating: 0, count: 8 * 9)
        strong[3] = 127
        strong[4] = 127
        #expect(make(strong, base) == nil)
        // Hostile geometries: zero, negative and enormous sizes, strides and paddings.
        for mutate in [{ (s: inout Shape) in s.height = 0 }, { $0.width = -3 }, { $0.kh = 0 }, { $0.kw = -1 }, { $0.sh = 0 },
                       { $0.ph = -1 }, { $0.pw = 1 << 40 }, { $0.height = Int.max }, { $0.sh = Int(Int32.max) + 1 }, { $0.kh = 11 },
                       { $0.outputs = 0 }] as [(inout Shape) -> Void] {
            var bad = base
            mutate(&bad)
            #expect(make(w, bad) == nil, "\(bad)")
        }
    }
}
