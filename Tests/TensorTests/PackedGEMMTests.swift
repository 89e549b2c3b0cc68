import Tensor
import Testing

/// Every kernel path this CPU can run against a scalar reference and against CBLAS.
@Suite struct PackedGEMMTests {
    static let paths = KernelISA.allCases.filter { $0 != .auto && $0.isSupported }

    struct Shape: Sendable, CustomTestStringConvertible {
        var rows, outputs, inputs: Int
        var testDescription: String { "\(rows)x\(inputs) -> \(outputs)" }
    }

    static let shapes = [
        Shape(rows: 1, outputs: 256, inputs: 64), Shape(rows: 1, outputs: 10, inputs: 257), Shape(rows: 1, outputs: 100, inputs: 3),
        Shape(rows: 3, outputs: 17, inputs: 5), Shape(rows: 8, outputs: 32, inputs: 16), Shape(rows: 9, outputs: 33, inputs: 31),
        Shape(rows: 17, outputs: 80, inputs: 40), Shape(rows: 64, outputs: 10, inputs: 256), Shape(rows: 5, outputs: 1, inputs: 1),
    ]

    static let activations: [FusedActivation] = [.none, .relu, .relu6, .leaky(0.1)]

    func apply(_ v: Float, _ a: FusedActivation) -> Float {
        switch a {
        case .none: v
        case .relu: max(v, 0)
        case .relu6: min(max(v, 0), 6)
        case .leaky(let alpha): v > 0 ? v : v * alpha
        }
    }

    @Test(arguments: paths, shapes)
    func matchesScalarReferenceAndBLAS(isa: KernelISA, shape: Shape) {
        var rng = SeededGenerator(seed: UInt64(shape.rows * 1000 + shape.outputs * 10 + shape.inputs))
        let m = shape.rows, o = shape.outputs, k = shape.inputs
        let w = (0..<(o * k)).map { _ in rng.nextFloat(limit: 1) }
        let b = (0..<o).map { _ in rng.nextFloat(limit: 4) }
        let ldx = k + 3, ldy = o + 5  // strided rows, to prove ldx/ldy are honoured
        let x = (0..<(m * ldx)).map { _ in rng.nextFloat(limit: 4) }
        let packed = w.withUnsafeBufferPointer { wp in
            b.withUnsafeBufferPointer { bp in PackedWeights(weight: wp.baseAddress!, bias: bp.baseAddress!, outputs: o, inputs: k) }
        }
        // CBLAS reference without the epilogue.
        var blas = [Float](repeating: 0, count: m * o)
        x.withUnsafeBufferPointer { xp in w.withUnsafeBufferPointer { wp in blas.withUnsafeMutableBufferPointer { cp in
            BLAS.gemm(transB: true, m: m, n: o, k: k, a: xp.baseAddress!, lda: ldx, b: wp.baseAddress!, ldb: k, c: cp.baseAddress!, ldc: o)
        } } }
        for activation in Self.activations {
            let sentinel: Float = -12345
            var y = [Float](repeating: sentinel, count: m * ldy)
            x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
                packed.multiply(rows: m, xp.baseAddress!, ldx: ldx, yp.baseAddress!, ldy: ldy, activation: activation, isa: isa)
            } }
            var worst: Float = 0
            for r in 0..<m {
                for c in 0..<o {
                    var acc = Double(b[c]), magnitude = Double(abs(b[c]))
                    for i in 0..<k {
                        acc += Double(x[r * ldx + i]) * Double(w[c * k + i])
                        magnitude += abs(Double(x[r * ldx + i]) * Double(w[c * k + i]))
                    }
                    let scalar = apply(Float(acc), activation)
                    let viaBLAS = apply(blas[r * o + c] + b[c], activation)
                    let got = y[r * ldy + c]
                    // FP32 sums in another order differ by rounding, which scales with Σ|terms|.
                    let scale = Float(max(magnitude, 1))
                    worst = max(worst, abs(got - scalar) / scale, abs(got - viaBLAS) / scale)
                }
                // Padding between rows is never written.
                for c in o..<ldy { #expect(y[r * ldy + c] == sentinel) }
            }
            #expect(worst <= 2e-6, "\(isa) \(shape.testDescription) \(activation): relative error \(worst)")
        }
    }

    @Test func autoResolvesToASupportedPath() {
        #expect(KernelISA.best.isSupported)
    }
}
