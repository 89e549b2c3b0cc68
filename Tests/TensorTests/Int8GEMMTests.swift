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
        for (zp, lo, hi, leaky) in [(Int32(128), Int32(0), Int32(255), Float?.none), (0, 0, 255, nil), (30, 30, 90, nil), (100, 0, 255, Float(0.1))] {
            ep.zeroPoint = zp
            ep.qmin = lo
            ep.qmax = hi
            ep.leakyAlpha = leaky
            var y = [UInt8](repeating: 7, count: c.rows * ldy)
            x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
                weights.multiply(rows: c.rows, xp.baseAddress!, ldx: ldx, epilogue: ep, output: .uint8(yp.baseAddress!), ldy: ldy)
            } }
            var mismatches = 0
            for r in 0..<c.rows {
                for o in 0..<c.outputs where y[r * ldy + o] != ep.referenceRequantize(acc[r * c.outputs + o], output: o) { mismatches += 1 }
                for o in c.outputs..<ldy { #expect(y[r * ldy + o] == 7, "wrote past the row") }
            }
            #expect(mismatches == 0, "\(isa) \(c.testDescription) zp \(zp): \(mismatches) outputs differ from the reference")
            var f = [Float](repeating: -7, count: c.rows * ldy)
            x.withUnsafeBufferPointer { xp in f.withUnsafeMutableBufferPointer { fp in
                weights.multiply(rows: c.rows, xp.baseAddress!, ldx: ldx, epilogue: ep, output: .float(fp.baseAddress!), ldy: ldy)
            } }
            for r in 0..<c.rows {
                for o in 0..<c.outputs {
                    #expect(f[r * ldy + o] == ep.referenceDequantize(acc[r * c.outputs + o], output: o))
                }
                for o in c.outputs..<ldy { #expect(f[r * ldy + o] == -7, "wrote past the row") }
            }
        }
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

    /// Shapes for the vectorised path's edges: row blocks of 8 and a partial one, groups of 32,
    /// 64 and 128, and an input count that leaves a short last group.
    /// Row tiles of 4 and a partial one, partial and several 16-output panels, a short last group,
    /// a group of 2, on the portable path and the best one here.
    @Test(arguments: [(3, 5, 64, 32), (19, 7, 100, 32), (9, 33, 200, 128), (8, 16, 128, 64), (1, 3, 6, 32), (4, 1, 2, 2), (64, 40, 256, 256)],
          [KernelISA.portable, .auto])
    func int4WeightOnlyMatchesReference(_ shape: (Int, Int, Int, Int), isa: KernelISA) {
        var rng = SeededGenerator(seed: 44)
        let (rows, outputs, inputs, group) = shape
        let groups = (inputs + group - 1) / group
        let q = (0..<(outputs * inputs)).map { _ in Int8(Int(rng.next() % 16) - 8) }
        let scales = (0..<(outputs * groups)).map { _ in rng.nextUnitFloat() }
        let bias = (0..<outputs).map { _ in rng.nextFloat(limit: 1) }
        let w = PackedInt4Weights(q: q, scales: scales, bias: bias, outputs: outputs, inputs: inputs, group: group, isa: isa)
        let x = (0..<(rows * inputs)).map { _ in rng.nextFloat(limit: 1) }
        var y = [Float](repeating: 0, count: rows * outputs)
        var scratch = [Float](repeating: .nan, count: w.scratchFloats)
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in scratch.withUnsafeMutableBufferPointer { sp in
            w.multiply(rows: rows, xp.baseAddress!, ldx: inputs, yp.baseAddress!, ldy: outputs, activation: .relu, scratch: sp.baseAddress!)
        } } }
        for r in 0..<rows {
            for o in 0..<outputs {
                var acc = Double(bias[o])
                for k in 0..<inputs { acc += Double(x[r * inputs + k]) * Double(q[o * inputs + k]) * Double(scales[o * groups + k / group]) }
                #expect(abs(Double(y[r * outputs + o]) - max(acc, 0)) < 1e-4 * (1 + abs(acc)), "\(shape) row \(r) output \(o)")
            }
        }
    }
}
