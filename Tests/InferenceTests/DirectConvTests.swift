import CKernels
import Inference
import ModelFile
import Tensor
import Testing

/// The FP32 convolution through an indirection table (no im2row rows) against im2row rows through
/// the packed GEMM: the same sums in the same order, so equal bit for bit, on the path this CPU
/// picks (the AVX-512 kernel on an AVX-512 CPU, else the AVX2 one, also where im2row stays the
/// plan's choice), on the AVX2 kernel forced, and on the portable one; every im2row shape (1 to 64 channels, strides and paddings that
/// differ per axis, windows wholly in the padding, very wide rows), several samples so a row tile
/// spans two of them, and output counts with panel tails. Hostile geometries get no table.
@Suite struct DirectConvTests {
    @Test(arguments: Im2RowTests.shapes, [KernelISA.auto, .avx2, .portable].filter(\.isSupported))
    func convolutionThroughTheTableEqualsTheIm2RowGEMM(shape s: Im2RowTests.Shape, isa: KernelISA) throws {
        // 1, 2 or 5 samples: the last row tile holds 1 to 6 rows across shapes; 5 to 70 outputs:
        // partial panels and a second group of four panels.
        try expectDirectEqualsIm2Row(s, samples: [1, 2, 5][s.height % 3], outputs: [5, 16, 20, 70][(s.channels + s.width) % 4], isa: isa)
    }

    /// One output pixel of one sample is one GEMM row, which the AVX-512 GEMM sums as a GEMV (even
    /// and odd k apart): the direct kernel too. An odd k count (9 channels × 9 taps) and 1 to 5 panels.
    @Test(arguments: [KernelISA.auto, .avx2, .portable].filter(\.isSupported))
    func aSingleOutputRowEqualsTheGEMV(isa: KernelISA) throws {
        for (shape, outputs) in [(Im2RowTests.Shape(channels: 8, height: 4, width: 4, kernelH: 4, kernelW: 4, stride: 1, pad: 0), 20),
                                 (Im2RowTests.Shape(channels: 8, height: 4, width: 4, kernelH: 4, kernelW: 4, stride: 1, pad: 0), 70),
                                 (Im2RowTests.Shape(channels: 9, height: 3, width: 3, kernelH: 3, kernelW: 3, stride: 1, pad: 0), 5),
                                 (Im2RowTests.Shape(channels: 9, height: 3, width: 3, kernelH: 3, kernelW: 3, stride: 2, pad: 1), 33)] {
            try expectDirectEqualsIm2Row(shape, samples: 1, outputs: outputs, isa: isa)
            try expectDirectEqualsIm2Row(shape, samples: 3, outputs: outputs, isa: isa)
        }
    }

    /// Rows written `ldy` apart, wider than the outputs.
    func expectDirectEqualsIm2Row(_ s: Im2RowTests.Shape, samples: Int, outputs: Int, isa: KernelISA,
                                  sourceLocation: SourceLocation = #_sourceLocation) throws {
        var rng = SeededGenerator(seed: UInt64(s.channels * 1000 + s.height * 10 + s.kernelW + outputs))
        let n = s.height * s.width * s.channels, pixels = s.outH * s.outW, ldy = outputs + 3
        let x = (0..<(samples * n)).map { _ in rng.nextFloat(limit: 1) }
        let w = (0..<(outputs * s.taps)).map { _ in rng.nextFloat(limit: 1) }, b = (0..<outputs).map { _ in rng.nextFloat(limit: 1) }
        let packed = w.withUnsafeBufferPointer { wp in b.withUnsafeBufferPointer { PackedWeights(weight: wp.baseAddress!, bias: $0.baseAddress!, outputs: outputs, inputs: s.taps) } }
        let made = ConvIndirection(channels: s.channels, height: s.height, width: s.width, kernelH: s.kernelH, kernelW: s.kernelW,
                                   strideH: s.strideH, strideW: s.strideW, padH: s.padH, padW: s.padW)
        // A kernel taller than the padded image (one output row by truncation) has no table: the
        // plan takes im2row rows for it.
        guard s.kernelH <= s.height + 2 * s.padH else { return #expect(made == nil, sourceLocation: sourceLocation) }
        let table = try #require(made, sourceLocation: sourceLocation)
        #expect(table.pixels == pixels && table.taps == s.kernelH * s.kernelW && table.sampleValues == n)
        var rows = [Float](repeating: 0, count: samples * pixels * s.taps)
        var expected = [Float](repeating: .nan, count: samples * pixels * ldy), got = [Float](repeating: .nan, count: samples * pixels * ldy + 7)
        for activation in [FusedActivation.none, .relu, .relu6, .leaky(0.1)] {
            x.withUnsafeBufferPointer { xp in
                rows.withUnsafeMutableBufferPointer { rp in
                    for i in 0..<samples {
                        edge_im2row_nhwc(xp.baseAddress! + i * n, Int32(s.channels), Int32(s.height), Int32(s.width), Int32(s.kernelH),
                                         Int32(s.kernelW), Int32(s.strideH), Int32(s.strideW), Int32(s.padH), Int32(s.padW),
                                         rp.baseAddress! + i * pixels * s.taps)
                    }
                    expected.withUnsafeMutableBufferPointer {
                        packed.multiply(rows: samples * pixels, rp.baseAddress!, ldx: s.taps, $0.baseAddress!, ldy: ldy, activation: activation, isa: isa)
                    }
                }
                got.withUnsafeMutableBufferPointer {
                    packed.convolve(samples: samples, xp.baseAddress!, table, $0.baseAddress!, ldy: ldy, activation: activation, isa: isa)
                }
            }
            // Bit patterns: the gaps between rows stay NaN in both.
            let wrong = (0..<expected.count).filter { got[$0].bitPattern != expected[$0].bitPattern }
            #expect(wrong.isEmpty, "\(s) \(samples) samples \(outputs) outputs \(isa) \(activation): \(wrong.count) outputs differ, the first at \(wrong.first ?? -1)",
                    sourceLocation: sourceLocation)
            #expect(got[expected.count...].allSatisfy { $0.isNaN }, "wrote past the output", sourceLocation: sourceLocation)
        }
    }

    /// Where the direct kernel is chosen: AVX2 or AVX-512 with 8 channels or more.
    @Test func theDirectKernelNeedsAVX2AndEightChannels() {
        #expect(!PackedWeights.convolvesDirectly(channels: 8, isa: .portable))
        #expect(!PackedWeights.convolvesDirectly(channels: 7, isa: .avx2))
        #expect(!PackedWeights.convolvesDirectly(channels: 7, isa: .avx512))
        #expect(PackedWeights.convolvesDirectly(channels: 8, isa: .avx2) == KernelISA.avx2.isSupported)
        #expect(PackedWeights.convolvesDirectly(channels: 64, isa: .avx512) == KernelISA.avx512.isSupported)
        #expect(PackedWeights.convolvesDirectly(channels: 64, isa: .avx512vnni) == KernelISA.avx512vnni.isSupported)
    }

    /// A plan whose convolution runs direct holds its table, not im2row rows: its memory estimate
    /// says so (a plan of 64 would otherwise hold 1 MiB of rows).
    @Test func aDirectConvolutionHoldsATableAndNoRows() {
        let g = Kernels.ConvGeometry(channels: 8, height: 14, width: 14, outChannels: 16, kernel: Window(5, 5), stride: Window(1, 1),
                                     padding: Window(2, 2))
        let net = Network(name: "c", inputShape: [8, 14, 14], labels: [], layers: [
            NetworkLayer(kind: .conv2d(stride: Window(1, 1), padding: Window(2, 2)), inputShape: [8, 14, 14], outputShape: [16, 14, 14],
                         weight: Tensor(zeros: [16, 8, 5, 5]), bias: Tensor(zeros: [16]), weightName: "w", biasName: "b"),
            NetworkLayer(kind: .flatten, inputShape: [16, 14, 14], outputShape: [3136]),
        ])
        let memory = ExecutionPlan.memoryEstimate(network: net, batch: 64)
        if Kernels.fp32ConvIsDirect(g) {
            #expect(memory.workspace == ConvIndirection.byteCount(pixels: 196, taps: 25, channels: 8))
        } else {
            #expect(memory.workspace == Kernels.convChunk(bytesPerSample: 196 * 200 * 4, batch: 64) * 196 * 200 * 4)
        }
        #expect(Kernels.fp32ConvIsDirect(g) == PackedWeights.convolvesDirectly(channels: 8))
        // The plan built chooses what the estimate counted: the direct step on AVX2.
        let plan = ExecutionPlan(network: net, batchCapacity: 64)
        #expect(plan.directConvolutions == (Kernels.fp32ConvIsDirect(g) ? 1 : 0))
        // and names it so (`inspect` prints these names).
        #expect(plan.stepNames.filter { $0.hasPrefix("fp32 conv2d") } == [Kernels.fp32ConvIsDirect(g) ? "fp32 conv2d (direct)" : "fp32 conv2d"],
                "\(plan.stepNames)")
    }

    @Test(arguments: [
        (0, 4, 4, 3, 3, 1, 1, 0, 0), (2, 4, 4, 3, 3, 0, 1, 0, 0), (2, 4, 4, 3, 3, 1, 1, -1, 0), (2, 4, 4, 7, 3, 1, 1, 1, 1),
        (2, 4, 4, 3, 3, 2, 2, 0, Int(Int32.max)), (1 << 20, 1 << 10, 1 << 10, 1, 1, 1, 1, 0, 0), (1, Int.max, 2, 1, 1, 1, 1, 0, 0),
        (2, 4, 4, Int.max, Int.max, 1, 1, 0, 0), (2, 4, 4, 3, 3, 1, 1, Int.max, 0), (2, 4, 4, 3, 3, 1 << 40, 1, 0, 0),
        (2, 4, 4, 3, 3, 1, Int(Int32.max) + 1, 0, 0), (-8, 4, 4, 3, 3, 1, 1, 0, 0), (8, 0, 4, 1, 1, 1, 1, 0, 0),
    ])
    func hostileGeometriesGetNoTable(_ a: (c: Int, h: Int, w: Int, kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int)) {
        #expect(ConvIndirection(channels: a.c, height: a.h, width: a.w, kernelH: a.kh, kernelW: a.kw, strideH: a.sh, strideW: a.sw,
                                padH: a.ph, padW: a.pw) == nil)
        #expect(!ConvIndirection.accepts(channels: a.c, height: a.h, width: a.w, kernelH: a.kh, kernelW: a.kw, strideH: a.sh, strideW: a.sw,
                                         padH: a.ph, padW: a.pw))
        // The C function alone refuses what fits its int parameters, writing nothing.
        guard [a.c, a.h, a.w, a.kh, a.kw, a.sh, a.sw, a.ph, a.pw].allSatisfy({ $0 <= Int(Int32.max) }),
              a.c.multipliedReportingOverflow(by: a.h * a.w).partialValue > Int(Int32.max) || a.c <= 0 || a.h <= 0
              || a.sh <= 0 || a.ph < 0 || a.kh > a.h + 2 * a.ph else { return }
        var table = [Int32](repeating: 77, count: 64)
        #expect(edge_conv_table(Int32(a.c), Int32(a.h), Int32(a.w), Int32(a.kh), Int32(a.kw), Int32(a.sh), Int32(a.sw), Int32(a.ph), Int32(a.pw),
                                &table) == 0)
        #expect(table.allSatisfy { $0 == 77 })
    }
}

/// The INT8 convolution through an indirection table (VNNI) against im2row rows (padding at the
/// input zero point) through the INT8 GEMM: the same integer sums, so equal bit for bit, into
/// UINT8 and FP32 rows, for every im2row test shape it takes (a multiple of 4 channels, at least
/// 8), 1 to 5 samples and one output row; other shapes and CPUs it refuses.
@Suite struct Int8DirectConvTests {
    static var vnni: Bool { KernelISA.avx512vnni.isSupported }
    static let shapes = Im2RowTests.shapes.filter { $0.channels >= 8 && $0.channels % 4 == 0 } + [
        Im2RowTests.Shape(channels: 32, height: 8, width: 8, kernelH: 3, kernelW: 3, stride: 1, pad: 1),
        Im2RowTests.Shape(channels: 12, height: 4, width: 4, kernelH: 4, kernelW: 4, stride: 1, pad: 0),  // one output pixel
        Im2RowTests.Shape(channels: 8, height: 6, width: 5, kernelH: 3, kernelW: 2, stride: 2, pad: 2, strideW: 1, padW: 0),
    ]

    @Test(.enabled(if: vnni), arguments: shapes, [1, 2, 5])
    func convolutionThroughTheTableEqualsTheIm2RowGEMM(shape s: Im2RowTests.Shape, samples: Int) throws {
        var rng = SeededGenerator(seed: UInt64(s.channels * 1000 + s.height * 10 + s.kernelW + samples))
        let outputs = [5, 16, 20, 70][(s.channels + s.width + samples) % 4], ldy = outputs + 3, zp: UInt8 = 37
        let n = s.height * s.width * s.channels, pixels = s.outH * s.outW, ld = (s.taps + 3) & ~3
        let x = (0..<(samples * n)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let w = (0..<(outputs * s.taps)).map { _ in Int8(Int(rng.next() % 255) - 127) }
        let weights = w.withUnsafeBufferPointer { PackedInt8Weights(weight: $0.baseAddress!, outputs: outputs, inputs: s.taps, isa: .avx512vnni) }
        #expect(weights.convolvesDirectly(channels: s.channels))
        let table = try #require(Kernels.indirection(Kernels.ConvGeometry(
            channels: s.channels, height: s.height, width: s.width, outChannels: outputs, kernel: Window(s.kernelH, s.kernelW),
            stride: Window(s.strideH, s.strideW), padding: Window(s.padH, s.padW))))
        let ep = QuantizedEpilogue(outputs: outputs)
        for o in 0..<outputs {
            ep.bias[o] = Int32(Int(rng.next() % 20001) - 10000)
            ep.scale[o] = 0.0005 + rng.nextUnitFloat() * 0.002
        }
        ep.zeroPoint = 9
        ep.qmin = 9
        var rows = [UInt8](repeating: 0, count: samples * pixels * ld + 8)
        x.withUnsafeBufferPointer { xp in rows.withUnsafeMutableBufferPointer { rp in
            for i in 0..<samples {
                edge_im2row_nhwc_u8(xp.baseAddress! + i * n, Int32(s.channels), Int32(s.height), Int32(s.width), Int32(s.kernelH), Int32(s.kernelW),
                                    Int32(s.strideH), Int32(s.strideW), Int32(s.padH), Int32(s.padW), zp, rp.baseAddress! + i * pixels * ld, Int32(ld))
            }
        } }
        let pad = [UInt8](repeating: zp, count: s.channels)
        for floatOutput in [false, true] {
            var expected = [UInt8](repeating: 0xEE, count: samples * pixels * ldy * 4), got = expected
            func run(_ out: inout [UInt8], direct: Bool) {
                out.withUnsafeMutableBytes { raw in
                    let output: QuantizedOutput = floatOutput ? .float(raw.baseAddress!.assumingMemoryBound(to: Float.self))
                        : .uint8(raw.baseAddress!.assumingMemoryBound(to: UInt8.self))
                    if direct {
                        x.withUnsafeBufferPointer { xp in pad.withUnsafeBufferPointer {
                            weights.convolve(samples: samples, xp.baseAddress!, table, pad: $0.baseAddress!, epilogue: ep, output: output, ldy: ldy)
                        } }
                    } else {
                        rows.withUnsafeBufferPointer {
                            weights.multiply(rows: samples * pixels, $0.baseAddress!, ldx: ld, epilogue: ep, output: output, ldy: ldy)
                        }
                    }
                }
            }
            run(&expected, direct: false)
            run(&got, direct: true)
            let wrong = (0..<expected.count).filter { got[$0] != expected[$0] }
            #expect(wrong.isEmpty, "\(s) \(samples) samples, \(floatOutput ? "fp32" : "uint8"): \(wrong.count) bytes differ")
            #expect(got.contains(0xEE) == expected.contains(0xEE), "the gaps between rows")
        }
    }

    /// Where it runs: VNNI weights, at least 8 channels, a multiple of 4.
    @Test func whereItRuns() {
        let w = [Int8](repeating: 1, count: 16 * 36)
        for isa in [KernelISA.avx512vnni, .avx2, .portable] where isa.isSupported {
            let packed = w.withUnsafeBufferPointer { PackedInt8Weights(weight: $0.baseAddress!, outputs: 16, inputs: 36, isa: isa) }
            #expect(packed.convolvesDirectly(channels: 12) == (isa == .avx512vnni), "\(isa)")
            #expect(!packed.convolvesDirectly(channels: 4) && !packed.convolvesDirectly(channels: 10) && !packed.convolvesDirectly(channels: 9))
        }
    }
}
