import CKernels
import Testing

/// The channels-last im2row (FP32 and UINT8) against its definition: row (oy, ox), column
/// (ky, kx, c) holds x[oy·sh − ph + ky][ox·sw − pw + kx][c], or the padding value outside the
/// input; UINT8 rows are `ldrow` bytes, the pad also fills the columns past the taps. Runs of 1 to
/// 80 bytes (every copy and fill size), windows wholly in the padding, strides of 2, and input rows
/// too wide for the padded-row buffer.
@Suite struct Im2RowTests {
    struct Shape: Sendable, CustomTestStringConvertible {
        var channels, height, width, kernelH, kernelW, strideH, strideW, padH, padW: Int
        init(channels: Int, height: Int, width: Int, kernelH: Int, kernelW: Int, stride: Int, pad: Int, strideW: Int? = nil,
             padW: Int? = nil) {
            (self.channels, self.height, self.width, self.kernelH, self.kernelW) = (channels, height, width, kernelH, kernelW)
            (strideH, padH, self.strideW, self.padW) = (stride, pad, strideW ?? stride, padW ?? pad)
        }
        var testDescription: String { "C\(channels) \(height)x\(width) k\(kernelH)x\(kernelW) s\(strideH),\(strideW) p\(padH),\(padW)" }
        var outH: Int { (height + 2 * padH - kernelH) / strideH + 1 }
        var outW: Int { (width + 2 * padW - kernelW) / strideW + 1 }
        var taps: Int { kernelH * kernelW * channels }

        func reference<T>(_ x: [T], pad value: T, ldrow: Int) -> [T] {
            var rows = [T](repeating: value, count: outH * outW * ldrow)
            for oy in 0..<outH {
                for ox in 0..<outW {
                    for ky in 0..<kernelH {
                        for kx in 0..<kernelW {
                            let iy = oy * strideH - padH + ky, ix = ox * strideW - padW + kx
                            guard iy >= 0, iy < height, ix >= 0, ix < width else { continue }
                            for c in 0..<channels {
                                rows[(oy * outW + ox) * ldrow + (ky * kernelW + kx) * channels + c] = x[(iy * width + ix) * channels + c]
                            }
                        }
                    }
                }
            }
            return rows
        }
    }

    static let shapes = [
        Shape(channels: 1, height: 28, width: 28, kernelH: 5, kernelW: 5, stride: 1, pad: 2),
        Shape(channels: 8, height: 14, width: 14, kernelH: 5, kernelW: 5, stride: 1, pad: 2),
        Shape(channels: 3, height: 7, width: 6, kernelH: 3, kernelW: 3, stride: 2, pad: 1),
        Shape(channels: 1, height: 5, width: 5, kernelH: 2, kernelW: 2, stride: 1, pad: 3),  // windows wholly in the padding
        Shape(channels: 16, height: 5, width: 4, kernelH: 1, kernelW: 5, stride: 1, pad: 2),  // 80-value runs
        Shape(channels: 2, height: 6, width: 9, kernelH: 3, kernelW: 1, stride: 2, pad: 0),
        Shape(channels: 5, height: 4, width: 4, kernelH: 4, kernelW: 4, stride: 1, pad: 0),
        Shape(channels: 1, height: 3, width: 9, kernelH: 1, kernelW: 3, stride: 1, pad: 1),  // 1- to 3-value runs
        // UINT8 runs of 1 to 3 bytes moved as 4 (the last kernel row's extra bytes are pad): the
        // 8x8 CNN's first convolution (9 taps, 3 pad bytes), 3 channels one tap wide, 2 channels.
        Shape(channels: 1, height: 8, width: 8, kernelH: 3, kernelW: 3, stride: 1, pad: 1),
        Shape(channels: 3, height: 5, width: 5, kernelH: 2, kernelW: 1, stride: 1, pad: 1),
        // Strides and paddings that differ along the two axes (no padding along one).
        Shape(channels: 2, height: 9, width: 7, kernelH: 3, kernelW: 2, stride: 2, pad: 0, strideW: 1, padW: 1),
        Shape(channels: 3, height: 6, width: 10, kernelH: 2, kernelW: 3, stride: 1, pad: 2, strideW: 3, padW: 0),
        // (The paths below are named for FP32; a UINT8 image is a quarter the bytes.) A padded
        // FP32 row of exactly 32 KiB ((126 + 2) · 64 · 4 bytes: row by row) and one of 32,772
        // bytes ((8191 + 2) · 4: window by window).
        Shape(channels: 64, height: 2, width: 126, kernelH: 1, kernelW: 3, stride: 1, pad: 0, padW: 1),
        Shape(channels: 1, height: 2, width: 8191, kernelH: 1, kernelW: 3, stride: 4, pad: 0, padW: 1),
        // A padded FP32 image of exactly 32 KiB (128 rows of (62 + 2) · 4 bytes: laid out whole)
        // and one row more (row by row).
        Shape(channels: 1, height: 126, width: 62, kernelH: 3, kernelW: 3, stride: 1, pad: 1),
        Shape(channels: 1, height: 127, width: 62, kernelH: 3, kernelW: 3, stride: 1, pad: 1),
        // A kernel taller than the padded image, one output row by truncation: never laid out whole.
        Shape(channels: 2, height: 2, width: 5, kernelH: 3, kernelW: 3, stride: 2, pad: 0),
        // A padded input row over 32 KiB (in both types): the window-by-window path.
        Shape(channels: 64, height: 3, width: 520, kernelH: 3, kernelW: 3, stride: 2, pad: 1),
        // A padded image over 32 KiB in both types (62 · 42 · 16 bytes as UINT8) with side and top
        // padding: row by row for UINT8 too.
        Shape(channels: 16, height: 60, width: 40, kernelH: 3, kernelW: 3, stride: 1, pad: 1),
        // Runs of 4 to 7 bytes copied as 8 (all kernel rows but the last): 7 taps at stride 2, 3 of
        // 2 channels, a 4-tap FP32 run (one channel, kw 1); a UINT8 image of 32,512 bytes (8-byte
        // moves) and one of exactly 32 KiB (no slack past it: two 4-byte moves).
        Shape(channels: 1, height: 15, width: 17, kernelH: 7, kernelW: 7, stride: 2, pad: 3),
        Shape(channels: 2, height: 6, width: 7, kernelH: 3, kernelW: 3, stride: 1, pad: 1),
        Shape(channels: 1, height: 9, width: 5, kernelH: 4, kernelW: 1, stride: 1, pad: 0),
        Shape(channels: 1, height: 123, width: 252, kernelH: 5, kernelW: 5, stride: 1, pad: 2),
        Shape(channels: 1, height: 124, width: 252, kernelH: 5, kernelW: 5, stride: 1, pad: 2),
        // Small single-channel images, which the batched UINT8 im2row permutes on AVX-512 with
        // VBMI: kh padded rows of exactly 64 bytes (4 × 16, stride 2 across; its output row of
        // windows 133 bytes with 7 pad bytes, too long) and of 65 (too wide), a kernel as wide as
        // the padded image, windows of 136 bytes (too long), a window hanging over a padding of 3,
        // no padding at all, a 1×1 kernel. (The 8×8 CNN's shape above makes 128 bytes with 7.)
        Shape(channels: 1, height: 9, width: 14, kernelH: 4, kernelW: 3, stride: 1, pad: 1, strideW: 2),
        Shape(channels: 1, height: 9, width: 11, kernelH: 5, kernelW: 3, stride: 1, pad: 1, strideW: 2),
        Shape(channels: 1, height: 6, width: 6, kernelH: 2, kernelW: 8, stride: 1, pad: 1),
        Shape(channels: 1, height: 6, width: 12, kernelH: 2, kernelW: 5, stride: 1, pad: 0, strideW: 1),
        Shape(channels: 1, height: 5, width: 5, kernelH: 3, kernelW: 3, stride: 2, pad: 3),
        Shape(channels: 1, height: 7, width: 9, kernelH: 3, kernelW: 2, stride: 1, pad: 0),
        Shape(channels: 1, height: 4, width: 6, kernelH: 1, kernelW: 1, stride: 1, pad: 0),
    ]

    /// Sizes a model's checked shapes never have write nothing and do not crash (a negative height
    /// once sent the whole-image path's fills outside its stack buffer; a zero stride divided by 0).
    @Test(arguments: [(1, -3, 20000, 1, 1, 1, 2), (1, -4, 5, 0, 1, 1, 2), (1, 4, 4, 3, 3, 0, 1), (-2, 4, 4, 3, 3, 1, 1),
                      (1, 0, 4, 1, 1, 1, 0), (1, 4, 4, -1, 3, 1, 1)])
    func invalidSizesWriteNothing(_ a: (channels: Int, height: Int, width: Int, kh: Int, kw: Int, stride: Int, pad: Int)) {
        var rows = [UInt8](repeating: 0xEE, count: 256)
        let x = [UInt8](repeating: 9, count: 64)
        x.withUnsafeBufferPointer { xp in rows.withUnsafeMutableBufferPointer { rp in
            edge_im2row_nhwc_u8(xp.baseAddress, Int32(a.channels), Int32(a.height), Int32(a.width), Int32(a.kh), Int32(a.kw),
                                Int32(a.stride), Int32(a.stride), Int32(a.pad), Int32(a.pad), 131, rp.baseAddress, 4)
        } }
        #expect(rows.allSatisfy { $0 == 0xEE })
        x.withUnsafeBufferPointer { xp in rows.withUnsafeMutableBufferPointer { rp in
            edge_im2row_nhwc_u8_batch(xp.baseAddress, 2, 0, Int32(a.channels), Int32(a.height), Int32(a.width), Int32(a.kh), Int32(a.kw),
                                      Int32(a.stride), Int32(a.stride), Int32(a.pad), Int32(a.pad), 131, rp.baseAddress, 4)
        } }
        #expect(rows.allSatisfy { $0 == 0xEE }, "batched")
        var f = [Float](repeating: -7, count: 256)
        let xf = [Float](repeating: 1, count: 64)
        xf.withUnsafeBufferPointer { xp in f.withUnsafeMutableBufferPointer { fp in
            edge_im2row_nhwc(xp.baseAddress, Int32(a.channels), Int32(a.height), Int32(a.width), Int32(a.kh), Int32(a.kw),
                             Int32(a.stride), Int32(a.stride), Int32(a.pad), Int32(a.pad), fp.baseAddress)
        } }
        #expect(f.allSatisfy { $0 == -7 })
    }

    @Test(arguments: shapes)
    func float32RowsAreTheDefinition(shape s: Shape) {
        let x = (0..<(s.height * s.width * s.channels)).map { Float($0 + 1) }
        let count = s.outH * s.outW * s.taps
        var rows = [Float](repeating: -1, count: count + 8)
        x.withUnsafeBufferPointer { xp in rows.withUnsafeMutableBufferPointer { rp in
            edge_im2row_nhwc(xp.baseAddress, Int32(s.channels), Int32(s.height), Int32(s.width), Int32(s.kernelH), Int32(s.kernelW),
                             Int32(s.strideH), Int32(s.strideW), Int32(s.padH), Int32(s.padW), rp.baseAddress)
        } }
        #expect(Array(rows[..<count]) == s.reference(x, pad: 0, ldrow: s.taps))
        #expect(rows[count...].allSatisfy { $0 == -1 }, "wrote past the rows")
    }

    @Test(arguments: shapes, [0, 3])
    func uint8RowsAreTheDefinitionWithTheZeroPointAsPadding(shape s: Shape, extra: Int) {
        let x = (0..<(s.height * s.width * s.channels)).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }
        let ldrow = s.taps + extra, count = s.outH * s.outW * ldrow
        var rows = [UInt8](repeating: 0xEE, count: count + 40)
        x.withUnsafeBufferPointer { xp in rows.withUnsafeMutableBufferPointer { rp in
            edge_im2row_nhwc_u8(xp.baseAddress, Int32(s.channels), Int32(s.height), Int32(s.width), Int32(s.kernelH), Int32(s.kernelW),
                                Int32(s.strideH), Int32(s.strideW), Int32(s.padH), Int32(s.padW), 131, rp.baseAddress, Int32(ldrow))
        } }
        #expect(Array(rows[..<count]) == s.reference(x, pad: 131, ldrow: ldrow))
        #expect(rows[count...].allSatisfy { $0 == 0xEE }, "wrote past the rows")
    }

    /// The batched UINT8 im2row: three samples 5 bytes more than an image apart, each sample's rows
    /// the definition, nothing written past the last; pad bytes past the taps of 0, 3 and 7 (a
    /// small image's output row of 8 windows of 16 bytes is exactly 128).
    @Test(arguments: shapes, [0, 3, 7])
    func uint8BatchedRowsAreTheDefinition(shape s: Shape, extra: Int) {
        let image = s.height * s.width * s.channels, stride = image + 5, samples = 3
        let x = (0..<(samples * stride)).map { UInt8(truncatingIfNeeded: $0 * 13 + 5) }
        let ldrow = s.taps + extra, count = s.outH * s.outW * ldrow
        var rows = [UInt8](repeating: 0xEE, count: samples * count + 40)
        x.withUnsafeBufferPointer { xp in rows.withUnsafeMutableBufferPointer { rp in
            edge_im2row_nhwc_u8_batch(xp.baseAddress, Int32(samples), stride, Int32(s.channels), Int32(s.height), Int32(s.width),
                                      Int32(s.kernelH), Int32(s.kernelW), Int32(s.strideH), Int32(s.strideW), Int32(s.padH), Int32(s.padW),
                                      77, rp.baseAddress, Int32(ldrow))
        } }
        for i in 0..<samples {
            let sample = Array(x[(i * stride)..<(i * stride + image)])
            #expect(Array(rows[(i * count)..<((i + 1) * count)]) == s.reference(sample, pad: 77, ldrow: ldrow), "sample \(i)")
        }
        #expect(rows[(samples * count)...].allSatisfy { $0 == 0xEE }, "wrote past the rows")
    }
}
