import Tensor
import Testing

/// Every INT8 path this CPU runs equals the scalar definition bit for bit, and none saturates.
@Suite struct Int8GEMMTests {
    static let paths = KernelISA.allCases.filter { $0 != .auto && $0.isSupported }

    struct Case: Sendable, CustomTestStringConvertible {
        var rows, outputs, inputs: Int
        var testDescription: String { "\(rows)x\(inputs) -> \(outputs)" }
    }

    static let cases = [
        Case(rows: 1, outputs: 256, inputs: 64), Case(rows: 1, outputs: 10, inputs: 257), Case(rows: 1, outputs: 70, inputs: 5),
        Case(rows: 2, outputs: 16, inputs: 4), Case(rows: 3, outputs: 17, inputs: 9), Case(rows: 8, outputs: 32, inputs: 32),
        Case(rows: 9, outputs: 33, inputs: 30), Case(rows: 64, outputs: 10, inputs: 256), Case(rows: 17, outputs: 48, inputs: 288),
        // Past one widened block of inputs (1024), with row tiles of 6 and a partial last one.
        Case(rows: 1, outputs: 70, inputs: 2100), Case(rows: 13, outputs: 40, inputs: 2100), Case(rows: 7, outputs: 64, inputs: 1024),
        // Half panels (at most 8 outputs left over) and conv-shaped rows whose widening ends in an
        // overlapping vector: a 5x5 single-channel conv (25 inputs, 8 channels), 24 channels of 216.
        Case(rows: 13, outputs: 8, inputs: 25), Case(rows: 7, outputs: 24, inputs: 216), Case(rows: 6, outputs: 3, inputs: 17),
        Case(rows: 5, outputs: 9, inputs: 12),
        // Partial stores of every width class: 12 and 15 outputs (8 + 4 + ... bytes, 8 + 4..7 floats),
        // 28 (a full panel then a half of 12), 5 and 7 (half panels of odd widths).
        Case(rows: 7, outputs: 12, inputs: 40), Case(rows: 8, outputs: 15, inputs: 33), Case(rows: 6, outputs: 28, inputs: 20),
        Case(rows: 3, outputs: 5, inputs: 7), Case(rows: 9, outputs: 7, inputs: 3),
        // Inputs not a multiple of 4 over two widened blocks: the second block's tail is shorter
        // than a vector (1025) or longer (2101), its k-quad padding zero-filled.
        Case(rows: 7, outputs: 20, inputs: 1025), Case(rows: 6, outputs: 9, inputs: 2101),
        // Batch 1 over two and three panels (the GEMVs of 2 and 3), the last a half panel.
        Case(rows: 1, outputs: 24, inputs: 36), Case(rows: 1, outputs: 40, inputs: 19),
    ]

    func exactAccumulators(_ x: [UInt8], ldx: Int, _ w: [Int8], rows: Int, outputs: Int, inputs: Int) -> [Int32] {
        var acc = [Int32](repeating: 0, count: rows * outputs)
        for r in 0..<rows {
            for o in 0..<outputs {
                var s: Int64 = 0
                for k in 0..<inputs { s += Int64(x[r * ldx + k]) * Int64(w[o * inputs + k]) }
                acc[r * outputs + o] = Int32(s)
            }
        }
        return acc
    }

    func packed(_ w: [Int8], outputs: Int, inputs: Int, isa: KernelISA) -> PackedInt8Weights {
        w.withUnsafeBufferPointer { PackedInt8Weights(weight: $0.baseAddress!, outputs: outputs, inputs: inputs, isa: isa) }
    }

    @Test(arguments: paths, cases)
    func requantizedOutputEqualsScalarDefinition(isa: KernelISA, c: Case) {
        var rng = SeededGenerator(seed: UInt64(c.rows * 7919 + c.outputs * 31 + c.inputs))
        let ldx = ((c.inputs + 3) & ~3) + 4, ldy = c.outputs + 3
        let x = (0..<(c.rows * ldx + 8)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let w = (0..<(c.outputs * c.inputs)).map { _ in Int8(Int(rng.next() % 255) - 127) }
        let weights = packed(w, outputs: c.outputs, inputs: c.inputs, isa: isa)
        #expect(weights.columnSum(0) == w[0..<c.inputs].reduce(Int32(0)) { $0 + Int32($1) })
        let acc = exactAccumulators(x, ldx: ldx, w, rows: c.rows, outputs: c.outputs, inputs: c.inputs)
        let ep = QuantizedEpilogue(outputs: c.outputs)
        for o in 0..<c.outputs {
            ep.bias[o] = Int32(Int(rng.next() % 20001) - 10000)
            ep.scale[o] = 0.0005 + rng.nextUnitFloat() * 0.002
        }
        expectEveryEpilogueExact(weights, x, ldx: ldx, ldy: ldy, acc, c, ep)
    }

    /// Runs `weights` over `x` with four epilogues (zero points 128 and 0, a narrow clamp, a leaky
    /// slope) into UINT8 and FP32 rows `ldy` apart, and expects each output to equal the scalar
    /// definition on the exact accumulators and nothing written past a row's outputs.
    static let epilogues: [(Int32, Int32, Int32, Float?)] = [(128, 0, 255, nil), (0, 0, 255, nil), (30, 30, 90, nil), (100, 0, 255, 0.1),
                                                              (255, 0, 255, nil)]

    func expectEveryEpilogueExact(_ weights: PackedInt8Weights, _ x: [UInt8], ldx: Int, ldy: Int, _ acc: [Int32], _ c: Case,
                                  _ ep: QuantizedEpilogue, epilogues: [(Int32, Int32, Int32, Float?)] = Self.epilogues,
                                  sourceLocation: SourceLocation = #_sourceLocation) {
        for (zp, lo, hi, leaky) in epilogues {
            ep.zeroPoint = zp
            ep.qmin = lo
            ep.qmax = hi
            ep.leakyAlpha = leaky
            var y = [UInt8](repeating: 7, count: c.rows * ldy)
            var f = [Float](repeating: -7, count: c.rows * ldy)
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer {
                    weights.multiply(rows: c.rows, xp.baseAddress!, ldx: ldx, epilogue: ep, output: .uint8($0.baseAddress!), ldy: ldy)
                }
                f.withUnsafeMutableBufferPointer {
                    weights.multiply(rows: c.rows, xp.baseAddress!, ldx: ldx, epilogue: ep, output: .float($0.baseAddress!), ldy: ldy)
                }
            }
            var mismatches = 0, past = 0
            for r in 0..<c.rows {
                for o in 0..<c.outputs {
                    if y[r * ldy + o] != ep.referenceRequantize(acc[r * c.outputs + o], output: o) { mismatches += 1 }
                    if f[r * ldy + o] != ep.referenceDequantize(acc[r * c.outputs + o], output: o) { mismatches += 1 }
                }
                for o in c.outputs..<ldy where y[r * ldy + o] != 7 || f[r * ldy + o] != -7 { past += 1 }
            }
            #expect(mismatches == 0, "\(weights.kernelName) \(c.testDescription) zp \(zp): \(mismatches) outputs differ",
                    sourceLocation: sourceLocation)
            #expect(past == 0, "\(weights.kernelName) \(c.testDescription): wrote past the row", sourceLocation: sourceLocation)
        }
    }

    /// Scales that take the sums far past the UINT8 codes and the int16 range the vector epilogue
    /// packs through (to ±∞ at 3e38, to ±10¹⁵ at 1e10), to nothing (1e-30, 0) and of both signs,
    /// with biases of ±10⁶: every output saturates or rounds as the definition does, on rows of
    /// one and two panels and a half panel. Zero points outside 0…255 (no plan makes one) take the
    /// vector paths' other epilogue, and equal the definition too.
    @Test(arguments: paths)
    func extremeScalesSaturateAsTheDefinition(isa: KernelISA) {
        var rng = SeededGenerator(seed: 77)
        let c = Case(rows: 9, outputs: 40, inputs: 64)
        let ldx = 68, ldy = 43
        let x = (0..<(c.rows * ldx + 8)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let w = (0..<(c.outputs * c.inputs)).map { _ in Int8(Int(rng.next() % 255) - 127) }
        let weights = packed(w, outputs: c.outputs, inputs: c.inputs, isa: isa)
        let acc = exactAccumulators(x, ldx: ldx, w, rows: c.rows, outputs: c.outputs, inputs: c.inputs)
        let ep = QuantizedEpilogue(outputs: c.outputs)
        let scales: [Float] = [3e38, -3e38, 1e10, -1e10, 1e-30, 0, 0.5, 1e-3, 40_000, -0.02]
        for o in 0..<c.outputs {
            ep.bias[o] = Int32(Int(rng.next() % 2_000_001) - 1_000_000)
            ep.scale[o] = scales[o % scales.count]
        }
        expectEveryEpilogueExact(weights, x, ldx: ldx, ldy: ldy, acc, c, ep,
                                 epilogues: Self.epilogues + [(300, 0, 255, nil), (-20, 10, 200, 0.25), (40_000, 0, 255, nil)])
    }

    /// 255 × 127, 255 × −128, 0 × −128 and alternating extremes over K = 512, whose sums reach
    /// ±16.7 M: exact in INT32 and in the FP32 conversion (< 2²⁴), so any saturation shows.
    @Test(arguments: paths)
    func worstCaseOperandsDoNotSaturate(isa: KernelISA) {
        let k = 512, rows = 4, outputs = 4
        let x: [UInt8] = (0..<k).map { _ in 255 } + (0..<k).map { _ in 255 } + (0..<k).map { _ in 0 } + (0..<k).map { $0 % 2 == 0 ? 255 : 0 }
        let w: [Int8] = (0..<k).map { _ in 127 } + (0..<k).map { _ in -128 } + (0..<k).map { $0 % 2 == 0 ? 127 : -128 }
            + (0..<k).map { $0 % 2 == 0 ? -128 : 127 }
        let weights = packed(w, outputs: outputs, inputs: k, isa: isa)
        let ep = QuantizedEpilogue(outputs: outputs)
        for o in 0..<outputs { ep.scale[o] = 1 }
        var y = [Float](repeating: 0, count: rows * outputs)
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
            weights.multiply(rows: rows, xp.baseAddress!, ldx: k, epilogue: ep, output: .float(yp.baseAddress!), ldy: outputs)
        } }
        let exact = exactAccumulators(x, ldx: k, w, rows: rows, outputs: outputs, inputs: k)
        #expect(exact[0] == 255 * 127 * 512)
        #expect(exact[1] == -255 * 128 * 512)
        #expect(exact.allSatisfy { abs($0) < 1 << 24 })
        #expect(y == exact.map(Float.init), "\(isa)")
    }

    /// The vpmaddubsw kernel runs wherever AVX2 does (a VNNI CPU forced to AVX2 too): these
    /// tests pack for AVX2 when the CPU has it, else for the best path (which must agree anyway).
    static let narrowISA: KernelISA = KernelISA.avx2.isSupported ? .avx2 : .auto

    /// Weights that cannot saturate vpmaddubsw (7-bit, and pairs of mixed sign up to 127/−128)
    /// run that kernel on AVX2 and still equal the scalar definition on every case's shape, for
    /// both outputs, with the extreme input 255 in every other row.
    @Test(arguments: cases)
    func weightsThatFitVpmaddubswRunItExactly(c: Case) {
        var rng = SeededGenerator(seed: UInt64(c.rows * 131 + c.outputs * 7 + c.inputs))
        let ldx = ((c.inputs + 3) & ~3) + 4, ldy = c.outputs + 1
        let x = (0..<(c.rows * ldx + 8)).map { i in (i / ldx) % 2 == 0 ? 255 : UInt8(truncatingIfNeeded: rng.next()) }
        // Even k: −64…64; odd k: mostly −64…64, and 127 or −128 where the pair's other weight has the other sign.
        var w = [Int8](repeating: 0, count: c.outputs * c.inputs)
        for o in 0..<c.outputs {
            for k in stride(from: 0, to: c.inputs, by: 2) {
                let a = Int8(Int(rng.next() % 129) - 64)
                w[o * c.inputs + k] = a
                guard k + 1 < c.inputs else { continue }
                let extreme = rng.next() % 4 == 0
                w[o * c.inputs + k + 1] = extreme ? (a <= 0 ? 127 : -128) : Int8(Int(rng.next() % 129) - 64)
            }
        }
        let weights = packed(w, outputs: c.outputs, inputs: c.inputs, isa: Self.narrowISA)
        if Self.narrowISA == .avx2 { #expect(weights.kernelName.contains("vpmaddubsw"), "\(weights.kernelName)") }
        let acc = exactAccumulators(x, ldx: ldx, w, rows: c.rows, outputs: c.outputs, inputs: c.inputs)
        let ep = QuantizedEpilogue(outputs: c.outputs)
        for o in 0..<c.outputs {
            ep.bias[o] = Int32(Int(rng.next() % 2001) - 1000)
            ep.scale[o] = 0.001 + rng.nextUnitFloat() * 0.004
        }
        expectEveryEpilogueExact(weights, x, ldx: ldx, ldy: ldy, acc, c, ep)
    }

    /// The choice is exactly the int16 bound: pairs (64, 64), (−64, −64), (127, −128) and a lone
    /// last 127 fit; (65, 64), (−65, −64) and (−128, −1) do not, and fall back to vpmaddwd. At the
    /// bound, 255 in every input sums 2·255·64 a pair with nothing lost.
    @Test func theNarrowKernelIsChosenAtExactlyTheInt16Bound() {
        guard Self.narrowISA == .avx2 else { return }
        func kernel(_ w: [Int8]) -> String { packed(w, outputs: 1, inputs: w.count, isa: .avx2).kernelName }
        for fits in [[64, 64, 1, 2], [-64, -64, 0, 0], [127, -128, -128, 127], [3, 4, 127], [64, 64, -64, -64, 64]] as [[Int8]] {
            #expect(kernel(fits).contains("vpmaddubsw"), "\(fits)")
        }
        for over in [[65, 64], [-65, -64], [0, 0, -128, -1], [1, 1, 1, 1, 127, 2]] as [[Int8]] {
            #expect(kernel(over).contains("vpmaddwd"), "\(over)")
        }
        let k = 1024
        let w = [Int8](repeating: 64, count: k), x = [UInt8](repeating: 255, count: k * 5)
        let narrow = packed(w, outputs: 1, inputs: k, isa: .avx2)
        let ep = QuantizedEpilogue(outputs: 1)
        ep.scale[0] = 1
        var y = [Float](repeating: 0, count: 5)
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer {
            narrow.multiply(rows: 5, xp.baseAddress!, ldx: k, epilogue: ep, output: .float($0.baseAddress!), ldy: 1)
        } }
        #expect(y == [Float](repeating: Float(255 * 64 * k), count: 5))
        let wide = w.withUnsafeBufferPointer { PackedInt8Weights(weight: $0.baseAddress!, outputs: 1, inputs: k, isa: .avx2, narrowKernel: false) }
        #expect(wide.kernelName.contains("vpmaddwd") && wide.byteCount > narrow.byteCount)
    }

    /// A negative input count (which no checked model has) multiplies nothing and writes nothing:
    /// the AVX2 widening once zero-filled below its stack buffer for -1 and -3.
    @Test(arguments: paths, [-1, -3, -5])
    func aNegativeInputCountWritesNothing(isa: KernelISA, inputs: Int) {
        let weights = packed([0], outputs: 3, inputs: inputs, isa: isa)
        let ep = QuantizedEpilogue(outputs: 3)
        let x = [UInt8](repeating: 1, count: 64)
        var y = [UInt8](repeating: 0xEE, count: 16)
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
            weights.multiply(rows: 2, xp.baseAddress!, ldx: 4, epilogue: ep, output: .uint8(yp.baseAddress!), ldy: 3)
            weights.multiply(rows: 1, xp.baseAddress!, ldx: 4, epilogue: ep, output: .uint8(yp.baseAddress!), ldy: 3)
        } }
        #expect(y.allSatisfy { $0 == 0xEE })
    }

    /// Row tiles and a partial one, partial and several 16-output panels, a short last group, a
    /// group of 2, more rows than one quantized block (64): (rows, outputs, inputs, group).
    static let int4Shapes = [(3, 5, 64, 32), (19, 7, 100, 32), (9, 33, 200, 128), (8, 16, 128, 64), (1, 3, 6, 32), (4, 1, 2, 2),
                             (64, 40, 256, 256), (130, 17, 34, 2)]

    /// The portable path: FP32 arithmetic on INT4 weights (weight-only).
    @Test(arguments: int4Shapes)
    func int4WeightOnlyMatchesReference(_ shape: (Int, Int, Int, Int)) {
        let isa = KernelISA.portable
        var rng = SeededGenerator(seed: 44)
        let (rows, outputs, inputs, group) = shape
        let groups = (inputs + group - 1) / group
        let q = (0..<(outputs * inputs)).map { _ in Int8(Int(rng.next() % 16) - 8) }
        let scales = (0..<(outputs * groups)).map { _ in rng.nextUnitFloat() }
        let bias = (0..<outputs).map { _ in rng.nextFloat(limit: 1) }
        let w = PackedInt4Weights(q: q, scales: scales, bias: bias, outputs: outputs, inputs: inputs, group: group, isa: isa)
        let x = (0..<(rows * inputs)).map { _ in rng.nextFloat(limit: 1) }
        let y = runInt4(w, x, rows: rows, ldx: inputs, ldy: outputs, activation: .relu)
        for r in 0..<rows {
            for o in 0..<outputs {
                var acc = Double(bias[o])
                for k in 0..<inputs { acc += Double(x[r * inputs + k]) * Double(q[o * inputs + k]) * Double(scales[o * groups + k / group]) }
                #expect(abs(Double(y[r * outputs + o]) - max(acc, 0)) < 1e-4 * (1 + abs(acc)), "\(shape) row \(r) output \(o)")
            }
        }
    }

    /// The integer INT4 paths: W4A16 on AVX2 (forced on a VNNI CPU too), W4A8 on AVX-512 VNNI.
    static var integerInt4: Bool { KernelISA.avx2.isSupported }
    static var vnniInt4: Bool { KernelISA.avx512vnni.isSupported }
    static var integerInt4Paths: [KernelISA] { [KernelISA.avx2, .avx512vnni].filter(\.isSupported) }

    /// Runs `w` on rows `ldx` apart into rows `ldy` apart, with scratch followed by a guard region
    /// that must stay untouched.
    func runInt4(_ w: PackedInt4Weights, _ x: [Float], rows: Int, ldx: Int, ldy: Int, activation: FusedActivation) -> [Float] {
        var y = [Float](repeating: -99, count: rows * ldy)
        var scratch = [Float](repeating: .nan, count: w.scratchFloats + 64)
        for i in w.scratchFloats..<scratch.count { scratch[i] = 12345 }
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in scratch.withUnsafeMutableBufferPointer { sp in
            w.multiply(rows: rows, xp.baseAddress!, ldx: ldx, yp.baseAddress!, ldy: ldy, activation: activation, scratch: sp.baseAddress!)
        } } }
        #expect(scratch[w.scratchFloats...].allSatisfy { $0 == 12345 }, "wrote past its scratch")
        for r in 0..<rows { for o in w.outputs..<ldy { #expect(y[r * ldy + o] == -99, "wrote past the row") } }
        return y
    }

    static let int4Activations: [(FusedActivation, @Sendable (Float) -> Float)] = [(.none, { $0 }), (.relu6, { min(max($0, 0), 6) }),
                                                                                   (.leaky(0.1), { $0 < 0 ? $0 * 0.1 : $0 })]

    /// Random INT4 weights, group scales and biases (odd outputs without one: beside a bias of
    /// ~0.5 a row at 2^-120 would vanish in the sum) packed for `isa`, and rows `inputs + 3` apart
    /// scaled by magnitudes from 2^-120 (below the 2^-100 where a row is pre-scaled) to 1e30.
    func int4Case(_ shape: (Int, Int, Int, Int), seed: UInt64, isa: KernelISA)
        -> (q: [Int8], scales: [Float], bias: [Float], x: [Float], w: (weights: PackedInt4Weights, groups: Int)) {
        var rng = SeededGenerator(seed: seed)
        let (rows, outputs, inputs, group) = shape
        let groups = (inputs + group - 1) / group, ldx = inputs + 3
        let q = (0..<(outputs * inputs)).map { _ in Int8(Int(rng.next() % 16) - 8) }
        let scales = (0..<(outputs * groups)).map { _ in rng.nextUnitFloat() }
        let bias = (0..<outputs).map { o in o % 2 == 1 ? 0 : rng.nextFloat(limit: 1) }
        let w = PackedInt4Weights(q: q, scales: scales, bias: bias, outputs: outputs, inputs: inputs, group: group, isa: isa)
        var x = (0..<(rows * ldx)).map { _ in rng.nextFloat(limit: 1) }
        let magnitudes: [Float] = [1, 2, 64, 0x1p-120, 0x1p-60, 0.5, 8, 1e30]
        for r in 0..<rows { for k in 0..<ldx { x[r * ldx + k] *= magnitudes[r % magnitudes.count] } }
        return (q, scales, bias, x, (w, groups))
    }

    /// The integer path (W4A16 on AVX2) equals its definition bit for bit: each row quantized to
    /// int16 with scale max|x| / 32767 (round half to even), exact INT32 sums per group, the group
    /// scales applied in FP32 with fused multiply-adds in group order, then the row scale and bias
    /// and the activation. And it stays within half an activation step per input of the FP32
    /// product. Rows `ldx` apart (a padded input), magnitudes from 2^-120 (below the 2^-100 where
    /// the row is pre-scaled) to 64.
    @Test(.enabled(if: integerInt4), arguments: int4Shapes)
    func int4IntegerPathIsItsDefinition(_ shape: (Int, Int, Int, Int)) {
        let (rows, outputs, inputs, group) = shape
        let (q, scales, bias, x, w) = int4Case(shape, seed: 45, isa: .avx2)
        let groups = w.groups, ldx = inputs + 3, ldy = outputs + 2
        #expect(w.weights.isa.int4Kernel.contains("w4a16"))
        for (activation, apply) in Self.int4Activations {
            let y = runInt4(w.weights, x, rows: rows, ldx: ldx, ldy: ldy, activation: activation)
            var mismatches = 0
            for r in 0..<rows {
                let row = x[(r * ldx)..<(r * ldx + inputs)]
                let amax = row.map(abs).max()!
                let pre: Float = amax < 0x1p-100 ? 0x1p64 : 1
                let inv: Float = 32767 / (amax * pre), rowScale: Float = amax / 32767
                let xq = row.map { Int(min(max(($0 * pre * inv).rounded(.toNearestOrEven), -32767), 32767)) }
                for o in 0..<outputs {
                    var f: Float = 0, bound = 0.0, exact = Double(bias[o])
                    for g in 0..<groups {
                        var acc = 0
                        for k in (g * group)..<min((g + 1) * group, inputs) {
                            acc += xq[k] * Int(q[o * inputs + k])
                            let wk = Double(q[o * inputs + k]) * Double(scales[o * groups + g])
                            exact += Double(row[row.startIndex + k]) * wk
                            bound += abs(wk) * Double(rowScale) / 2
                        }
                        f = f.addingProduct(Float(acc), scales[o * groups + g])
                    }
                    let expected = apply(bias[o].addingProduct(f, rowScale))
                    if y[r * ldy + o] != expected { mismatches += 1 }
                    let exactOut = Double(apply(Float(exact)))
                    #expect(abs(Double(y[r * ldy + o]) - exactOut) <= bound + 1e-5 * (1 + abs(exactOut)), "\(shape) row \(r) output \(o)")
                }
            }
            #expect(mismatches == 0, "\(shape) \(activation): \(mismatches) outputs differ from the definition")
        }
    }

    /// The VNNI path (W4A8) equals its definition bit for bit: each row quantized to UINT8 over a
    /// range that holds 0 (step hi·pre/255 − lo·pre/255, zero point round(−lo·pre/step), values
    /// round(x·pre/step) + z clamped, round half to even; pre = 2^64 below a range of 2^-100),
    /// exact INT32 sums per group (groups of 2, 6, 10 padded to quads), the group scales applied in
    /// FP32 with fused multiply-adds in group order, the zero point taken off as z·C with
    /// C = Σ_g scale_g·Σ_k q, then the row's step and the bias, then the activation. And it stays
    /// within half a step per input of the FP32 product.
    @Test(.enabled(if: vnniInt4), arguments: int4Shapes + [(7, 48, 30, 6), (65, 33, 70, 10), (1, 256, 64, 32), (23, 16, 66, 32),
                                                           (10, 5, 32, 6), (70, 16, 128, 32), (11, 40, 64, 32)])
    func int4VNNIPathIsItsDefinition(_ shape: (Int, Int, Int, Int)) {
        let (rows, outputs, inputs, group) = shape
        let (q, scales, bias, scaled, w) = int4Case(shape, seed: 46, isa: .avx512vnni)
        var x = scaled
        let groups = w.groups, ldx = inputs + 3, ldy = outputs + 2
        #expect(w.weights.isa.int4Kernel.contains("w4a8"))
        // Besides the scaled rows, a row of positives only (zero point 0) and one of negatives only (255).
        if rows > 2 { for k in 0..<ldx { x[ldx + k] = abs(x[ldx + k]); x[2 * ldx + k] = -abs(x[2 * ldx + k]) } }
        for (activation, apply) in Self.int4Activations {
            let y = runInt4(w.weights, x, rows: rows, ldx: ldx, ldy: ldy, activation: activation)
            var mismatches = 0
            for r in 0..<rows {
                let row = Array(x[(r * ldx)..<(r * ldx + inputs)])
                let lo = min(row.min()!, 0), hi = max(row.max()!, 0)
                var u = [Int](repeating: 0, count: inputs), step: Float = 0, z: Float = 0
                if hi != lo {
                    let pre: Float = hi - lo < 0x1p-100 ? 0x1p64 : 1
                    let s = hi * pre / 255 - lo * pre / 255, inv = 1 / s
                    z = min(max((-lo * pre * inv).rounded(.toNearestOrEven), 0), 255)
                    u = row.map { Int(min(max(($0 * pre * inv).rounded(.toNearestOrEven) + z, 0), 255)) }
                    step = s / pre
                }
                for o in 0..<outputs {
                    var f: Float = 0, c: Float = 0, bound = 0.0, exact = Double(bias[o])
                    for g in 0..<groups {
                        var acc = 0, qsum = 0
                        for k in (g * group)..<min((g + 1) * group, inputs) {
                            acc += u[k] * Int(q[o * inputs + k])
                            qsum += Int(q[o * inputs + k])
                            let wk = Double(q[o * inputs + k]) * Double(scales[o * groups + g])
                            exact += Double(row[k]) * wk
                            bound += abs(wk) * Double(step) / 2
                        }
                        f = f.addingProduct(Float(acc), scales[o * groups + g])
                        c = c.addingProduct(Float(qsum), scales[o * groups + g])
                    }
                    let expected = apply(bias[o].addingProduct(f.addingProduct(-z, c), step))
                    if y[r * ldy + o] != expected { mismatches += 1 }
                    let exactOut = Double(apply(Float(exact)))
                    #expect(abs(Double(y[r * ldy + o]) - exactOut) <= bound + 1e-4 * (1 + abs(exactOut)), "\(shape) row \(r) output \(o)")
                }
            }
            #expect(mismatches == 0, "\(shape) \(activation): \(mismatches) outputs differ from the definition")
        }
    }

    /// W4A8 with static activations equals its definition bit for bit: UINT8 rows standing for
    /// s·(u − z), exact INT32 sums per group, the group scales applied in FP32 with fused
    /// multiply-adds in group order, the zero point taken off as z·C, then s and the bias, then the
    /// activation; with a UINT8 output, that value quantized as `edge_quantize_u8` (round half to
    /// even of v·(1/scale), + zero point, clamped to 0…255, NaN to 0). Rows read in quads up to 3
    /// bytes past the inputs (30, 34, 66 inputs), whose bytes (255 here) must not count; nothing
    /// written past a row's outputs or past the scratch; more rows than one tile or block.
    @Test(.enabled(if: vnniInt4), arguments: [(3, 5, 64, 32), (19, 7, 100, 4), (9, 33, 200, 128), (64, 40, 256, 128), (7, 48, 30, 8),
                                               (130, 17, 34, 4), (1, 256, 64, 32), (23, 16, 66, 32), (70, 16, 128, 64), (11, 40, 64, 32)])
    func int4StaticW4A8IsItsDefinition(_ shape: (Int, Int, Int, Int)) {
        let (rows, outputs, inputs, group) = shape
        let (q, scales, bias, _, w) = int4Case(shape, seed: 47, isa: .avx512vnni)
        let groups = w.groups, ldy = outputs + 2
        #expect(w.weights.acceptsUInt8)
        var rng = SeededGenerator(seed: UInt64(rows * 1000 + inputs))
        // Odd shapes read rows packed (ldx = inputs), the others rows 3 bytes apart.
        let ldx = rows % 2 == 1 ? inputs : inputs + 3
        var x = [UInt8](repeating: 255, count: rows * ldx + 3)
        for r in 0..<rows { for k in 0..<inputs { x[r * ldx + k] = UInt8(rng.next() % 256) } }
        let s: Float = 0.0173, z: Int32 = 37, outScale: Float = 0.051, outZero: Int32 = 101
        func quantized(_ v: Float) -> UInt8 {
            let t = v * (1 / outScale)
            let c = t.isNaN ? -1_073_741_824 : min(max(t, -1_073_741_824), 1_073_741_824)
            return UInt8(min(max(Int32(c.rounded(.toNearestOrEven)) + outZero, 0), 255))
        }
        for (activation, apply) in Self.int4Activations + [(FusedActivation.relu, { @Sendable in max($0, 0) })] {
            var yf = [Float](repeating: -99, count: rows * ldy), yu = [UInt8](repeating: 0xEE, count: rows * ldy)
            var scratch = [Float](repeating: .nan, count: w.weights.scratchFloats + 64)
            for i in w.weights.scratchFloats..<scratch.count { scratch[i] = 12345 }
            x.withUnsafeBufferPointer { xp in scratch.withUnsafeMutableBufferPointer { sp in
                yf.withUnsafeMutableBufferPointer { yp in
                    w.weights.multiply(rows: rows, uint8: xp.baseAddress!, ldx: ldx, inputScale: s, inputZeroPoint: z, output: .float(yp.baseAddress!),
                                       ldy: ldy, activation: activation, scratch: sp.baseAddress!)
                }
                yu.withUnsafeMutableBufferPointer { yp in
                    w.weights.multiply(rows: rows, uint8: xp.baseAddress!, ldx: ldx, inputScale: s, inputZeroPoint: z, output: .uint8(yp.baseAddress!),
                                       outputScale: outScale, outputZeroPoint: outZero, ldy: ldy, activation: activation, scratch: sp.baseAddress!)
                }
            } }
            #expect(scratch[w.weights.scratchFloats...].allSatisfy { $0 == 12345 }, "wrote past its scratch")
            var mismatches = 0, u8Mismatches = 0
            for r in 0..<rows {
                for o in outputs..<ldy {
                    #expect(yf[r * ldy + o] == -99 && yu[r * ldy + o] == 0xEE, "wrote past row \(r)")
                }
                for o in 0..<outputs {
                    var f: Float = 0, c: Float = 0
                    for g in 0..<groups {
                        var acc = 0, qsum = 0
                        for k in (g * group)..<min((g + 1) * group, inputs) {
                            acc += Int(x[r * ldx + k]) * Int(q[o * inputs + k])
                            qsum += Int(q[o * inputs + k])
                        }
                        f = f.addingProduct(Float(acc), scales[o * groups + g])
                        c = c.addingProduct(Float(qsum), scales[o * groups + g])
                    }
                    let expected = apply(bias[o].addingProduct(f.addingProduct(-Float(z), c), s))
                    if yf[r * ldy + o] != expected { mismatches += 1 }
                    if yu[r * ldy + o] != quantized(expected) { u8Mismatches += 1 }
                }
            }
            #expect(mismatches == 0, "\(shape) \(activation): \(mismatches) FP32 outputs differ from the definition")
            #expect(u8Mismatches == 0, "\(shape) \(activation): \(u8Mismatches) UINT8 outputs differ from the definition")
        }
    }

    /// Where the static W4A8 path runs: VNNI weights with groups of whole quads; not with groups
    /// of 2 or 6, nor for weights packed for AVX2 or the portable path (whose multiply would refuse).
    @Test func int4AcceptsUInt8OnlyOnW4A8WithQuadGroups() {
        for isa in [KernelISA.portable, .avx2, .avx512, .avx512vnni] where isa.isSupported {
            for group in [2, 4, 6, 32, 128] {
                let expected = isa == .avx512vnni && group % 4 == 0
                #expect(PackedInt4Weights.acceptsUInt8(isa: isa, group: group) == expected, "\(isa) group \(group)")
            }
        }
    }

    /// Hostile magnitudes on the static path: a scale of 3e38 makes the sums overflow to ±inf
    /// and F − z·C to NaN; the FP32 output is then the definition's ±inf or NaN and the UINT8
    /// output the quantization's clamp (0 for NaN and −inf, 255 for +inf), never a trap or garbage.
    @Test(.enabled(if: vnniInt4)) func int4StaticPathSaturatesOverflowingScales() {
        let outputs = 4, inputs = 32
        let q = (0..<(outputs * inputs)).map { Int8($0 % 16 - 8) }
        let w = PackedInt4Weights(q: q, scales: [Float](repeating: 3e38, count: outputs), bias: [0, 1, -1, 2], outputs: outputs, inputs: inputs,
                                  group: 32, isa: .avx512vnni)
        let x = (0..<(3 * inputs + 3)).map { UInt8(($0 * 37) % 256) }
        var yf = [Float](repeating: 0, count: 3 * outputs), yu = [UInt8](repeating: 0xEE, count: 3 * outputs)
        var scratch = [Float](repeating: 0, count: w.scratchFloats)
        x.withUnsafeBufferPointer { xp in scratch.withUnsafeMutableBufferPointer { sp in
            yf.withUnsafeMutableBufferPointer { yp in
                w.multiply(rows: 3, uint8: xp.baseAddress!, ldx: inputs, inputScale: 3e38, inputZeroPoint: 200, output: .float(yp.baseAddress!),
                           ldy: outputs, activation: .none, scratch: sp.baseAddress!)
            }
            yu.withUnsafeMutableBufferPointer { yp in
                w.multiply(rows: 3, uint8: xp.baseAddress!, ldx: inputs, inputScale: 3e38, inputZeroPoint: 200, output: .uint8(yp.baseAddress!),
                           outputScale: 1, outputZeroPoint: 0, ldy: outputs, activation: .none, scratch: sp.baseAddress!)
            }
        } }
        #expect(yf.contains { !$0.isFinite }, "\(yf)")
        for (f, u) in zip(yf, yu) {
            let expected: UInt8 = f.isNaN || f < 0 ? 0 : (f > 255 ? 255 : UInt8(f.rounded(.toNearestOrEven)))
            #expect(u == expected, "fp32 \(f) gave \(u)")
        }
    }

    /// A row of zeros gives the bias; a row with NaN or an infinity, in the vector part or the
    /// scalar tail (and with 100 inputs, in the part read 64 at a time), gives NaN (before the
    /// activation) on the integer path, and its neighbours are untouched by it.
    @Test(arguments: integerInt4Paths, [20, 100]) func int4RowsOfZerosAndNonFiniteValues(isa: KernelISA, inputs: Int) {
        let outputs = 3, groups = inputs / 20
        let q = (0..<(outputs * inputs)).map { Int8($0 % 16 - 8) }
        let w = PackedInt4Weights(q: q, scales: [Float](repeating: 0.5, count: outputs * groups), bias: [1, 2, 3], outputs: outputs,
                                  inputs: inputs, group: 20, isa: isa)
        // With 100 inputs: rows 3 and 5 in the part read 64 at a time, row 6 in the 16-wide, rows 1 and 4 in the tail.
        let far = inputs - 20
        let bad: [(row: Int, column: Int, value: Float)] = [(1, 17 + far, .nan), (3, 3, .infinity), (4, 19 + far, -.infinity), (5, 5, .nan),
                                                            (6, 9 + far, -.nan)]
        var x = [Float](repeating: 1, count: 8 * inputs)
        for k in 0..<inputs { x[k] = 0; x[2 * inputs + k] = 0 }
        for b in bad { x[b.row * inputs + b.column] = b.value }
        let y = runInt4(w, x, rows: 8, ldx: inputs, ldy: outputs, activation: .none)
        #expect(Array(y[0..<3]) == [1, 2, 3])
        #expect(Array(y[6..<9]) == [1, 2, 3])
        for b in bad { #expect(y[(b.row * outputs)..<((b.row + 1) * outputs)].allSatisfy { $0.isNaN }, "row \(b.row)") }
        #expect(y[(7 * outputs)..<(8 * outputs)].allSatisfy { $0.isFinite })
    }
}
