import Tensor
import Testing

@Suite struct BLASTests {
    func naiveGemm(_ a: [Float], _ b: [Float], m: Int, n: Int, k: Int, transA: Bool, transB: Bool) -> [Float] {
        var c = [Float](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var acc: Double = 0
                for p in 0..<k {
                    let av = transA ? a[p * m + i] : a[i * k + p]
                    let bv = transB ? b[j * k + p] : b[p * n + j]
                    acc += Double(av) * Double(bv)
                }
                c[i * n + j] = Float(acc)
            }
        }
        return c
    }

    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func gemmMatchesReference(transA: Bool, transB: Bool) {
        var rng = SeededGenerator(seed: 3)
        let m = 7, n = 5, k = 11
        let a = (0..<(m * k)).map { _ in rng.nextFloat(limit: 1) }
        let b = (0..<(k * n)).map { _ in rng.nextFloat(limit: 1) }
        var c = [Float](repeating: 0, count: m * n)
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                c.withUnsafeMutableBufferPointer { cp in
                    BLAS.gemm(transA: transA, transB: transB, m: m, n: n, k: k, a: ap.baseAddress!, lda: transA ? m : k,
                              b: bp.baseAddress!, ldb: transB ? k : n, c: cp.baseAddress!, ldc: n)
                }
            }
        }
        let ref = naiveGemm(a, b, m: m, n: n, k: k, transA: transA, transB: transB)
        for (x, y) in zip(c, ref) { #expect(abs(x - y) <= 1e-5 * max(1, abs(y))) }
    }
}

@Suite struct SeededGeneratorTests {
    @Test func sameSeedSameSequence() {
        var a = SeededGenerator(seed: 42), b = SeededGenerator(seed: 42), c = SeededGenerator(seed: 43)
        let xs = (0..<8).map { _ in a.next() }
        #expect(xs == (0..<8).map { _ in b.next() })
        #expect(xs != (0..<8).map { _ in c.next() })
    }

    @Test func shuffleIsAPermutationAndDeterministic() {
        var a = SeededGenerator(seed: 9), b = SeededGenerator(seed: 9)
        var x = Array(0..<100), y = Array(0..<100)
        a.shuffle(&x)
        b.shuffle(&y)
        #expect(x == y)
        #expect(x != Array(0..<100))
        #expect(x.sorted() == Array(0..<100))
    }

    @Test func unitFloatsStayInRange() {
        var g = SeededGenerator(seed: 1)
        let xs = (0..<10_000).map { _ in g.nextUnitFloat() }
        #expect(xs.allSatisfy { $0 >= 0 && $0 < 1 })
        let mean = xs.reduce(0, +) / Float(xs.count)
        #expect(abs(mean - 0.5) < 0.02)
    }
}

@Suite struct TensorStorageTests {
    @Test func viewsShareAndCopiesDoNot() {
        let t = Tensor(shape: [2, 2], values: [1, 2, 3, 4])
        let view = t.reshaped([4])
        let copy = t.copy()
        view[0] = 9
        #expect(t[0] == 9)
        #expect(copy[0] == 1)
        #expect(Int(bitPattern: t.pointer) % Storage.alignment == 0)
    }
}
