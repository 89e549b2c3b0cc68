import Foundation
import Inference
import Tensor
import Testing

/// `Kernels.softmax` (edge_softmax: its own exponential, 16 lanes a vector on AVX-512 for rows of
/// up to 64 columns, 8 on AVX2 up to 32, scalar beyond and on the portable path) against softmax in
/// Double, on every path this CPU has.
@Suite struct SoftmaxTests {
    static let paths = [KernelISA.auto, .avx2, .portable].filter(\.isSupported)

    /// x − max taken in Float, as any float softmax does (its rounding alone moves exp(−50) by 2e-6).
    static func reference(_ row: [Float]) -> [Double] {
        let m = row.max()!
        let e = row.map { Foundation.exp(Double($0 - m)) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }

    func run(_ x: [Float], rows: Int, columns: Int, isa: KernelISA) -> [Float] {
        var y = x
        y.withUnsafeMutableBufferPointer { Kernels.softmax($0.baseAddress!, rows: rows, columns: columns, isa: isa) }
        return y
    }

    /// Within 4e-7 (about 3 ulp) of the Double softmax, for every column count around the vector widths and
    /// for spreads from ±0.01 to ±200 (exp below −87.33 is 0: a subnormal at most in the reference),
    /// 21 rows (blocks of 16, 8, 4 and 2 rows and a rest).
    @Test(arguments: paths, [1, 2, 8, 9, 10, 15, 16, 17, 24, 32, 33, 48, 49, 63, 64, 65, 100])
    func closeToTheDoubleReference(isa: KernelISA, columns: Int) {
        var rng = SeededGenerator(seed: 11)
        let spreads: [Float] = [0.01, 1, 10, 40, 200]
        let rows = 21
        var x = [Float](repeating: 0, count: rows * columns)
        for r in 0..<rows { for c in 0..<columns { x[r * columns + c] = rng.nextFloat(limit: spreads[r % spreads.count]) + Float(r) } }
        let y = run(x, rows: rows, columns: columns, isa: isa)
        for r in 0..<rows {
            let expected = Self.reference(Array(x[(r * columns)..<((r + 1) * columns)]))
            var sum: Float = 0
            for c in 0..<columns {
                let got = Double(y[r * columns + c]), want = expected[c]
                sum += y[r * columns + c]
                #expect(abs(got - want) <= 4e-7 * want + 1e-37, "\(isa) columns \(columns) row \(r) column \(c): \(got) against \(want)")
            }
            #expect(abs(sum - 1) < 1e-5)
        }
    }

    /// The exponential over its whole range, one point per 2^-7 from −90 to 0 (rows [x, 0, −1000…]:
    /// the first output is exp(x) / (1 + exp(x))), in the vector paths (2 columns) and the scalar (70).
    @Test(arguments: paths, [2, 70]) func theExponentialOverItsRange(isa: KernelISA, columns: Int) {
        let xs = stride(from: Float(-90), through: 0, by: 1.0 / 128).map { $0 }
        var x = [Float]()
        for v in xs { x += [v, 0] + [Float](repeating: -1000, count: columns - 2) }
        let y = run(x, rows: xs.count, columns: columns, isa: isa)
        for (i, v) in xs.enumerated() {
            let e = Foundation.exp(Double(v)), want = e / (1 + e)
            let tolerance = v < -87.33654 ? 1.2e-38 : 2.5e-7 * want  // 1.8e-7 measured: 1.5 ulp
            #expect(abs(Double(y[columns * i]) - want) <= tolerance, "\(isa) x = \(v): \(y[columns * i]) against \(want)")
        }
    }

    /// NaN anywhere, +∞, or a row of −∞ only give a row of NaN; −∞ beside finite values is 0; the
    /// rows around them are untouched, in every vector of a row (10 to 64 columns) and the scalar
    /// path (70).
    @Test(arguments: paths, [10, 20, 40, 64, 70]) func nonFiniteRows(isa: KernelISA, columns: Int) {
        var x = [Float](repeating: 1, count: 6 * columns)
        x[1 * columns + columns - 1] = .nan
        x[2 * columns + columns / 2] = .infinity
        for c in 0..<columns { x[3 * columns + c] = -.infinity }
        x[4 * columns + 2] = -.infinity
        let y = run(x, rows: 6, columns: columns, isa: isa)
        let even = 1 / Float(columns)
        for r in [0, 5] { #expect(y[(r * columns)..<((r + 1) * columns)].allSatisfy { abs($0 - even) < 1e-6 }, "row \(r)") }
        for r in [1, 2, 3] { #expect(y[(r * columns)..<((r + 1) * columns)].allSatisfy { $0.isNaN }, "row \(r)") }
        #expect(y[4 * columns + 2] == 0)
        #expect(abs(y[(4 * columns)..<(5 * columns)].reduce(0, +) - 1) < 1e-5)
    }
}
