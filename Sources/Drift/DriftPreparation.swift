import Foundation
import Inference
import Tensor

/// Turns model outputs on data rows into the per-source values a reference is built from.
public enum DriftPreparation {
    /// The first `k` principal directions of the penultimate activations (the input of the last
    /// dense or conv2d layer) over `rows`, computed with the FP32 network by subspace iteration.
    public static func principalDirections(network: Network, rows: [Float], count k: Int, seed: UInt64 = 1) -> EmbeddingProjection? {
        guard let layer = EmbeddingProjection.penultimateLayer(of: network) else { return nil }
        let n = rows.count / network.inputCount
        let head = Network(name: network.name, inputShape: network.inputShape, labels: network.labels,
                           preprocessing: network.preprocessing, layers: Array(network.layers[0..<layer]))
        let h = ExecutionPlan(network: head, batchCapacity: 256).predict(rows)
        let d = network.layers[layer].inputCount
        let k = min(k, d)
        // Centred covariance C = XᵀX/n of the activations.
        var mean = [Float](repeating: 0, count: d)
        for r in 0..<n { for j in 0..<d { mean[j] += h[r * d + j] } }
        for j in 0..<d { mean[j] /= Float(max(n, 1)) }
        var x = h
        for r in 0..<n { for j in 0..<d { x[r * d + j] -= mean[j] } }
        var c = [Float](repeating: 0, count: d * d)
        x.withUnsafeBufferPointer { xb in
            c.withUnsafeMutableBufferPointer { cb in
                BLAS.gemm(transA: true, m: d, n: d, k: n, alpha: 1 / Float(max(n, 1)), a: xb.baseAddress!, lda: d,
                          b: xb.baseAddress!, ldb: d, c: cb.baseAddress!, ldc: d)
            }
        }
        // Subspace iteration: V ← orth(C·V), V as k rows of length d.
        var rng = SeededGenerator(seed: seed)
        var v = (0..<(k * d)).map { _ in rng.nextGaussian() }
        var next = [Float](repeating: 0, count: k * d)
        for _ in 0..<60 {
            orthonormalize(&v, k: k, d: d)
            c.withUnsafeBufferPointer { cb in
                v.withUnsafeBufferPointer { vb in
                    next.withUnsafeMutableBufferPointer { nb in
                        BLAS.gemm(transB: true, m: k, n: d, k: d, a: vb.baseAddress!, lda: d, b: cb.baseAddress!, ldb: d,
                                  c: nb.baseAddress!, ldc: d)
                    }
                }
            }
            swap(&v, &next)
        }
        orthonormalize(&v, k: k, d: d)
        return EmbeddingProjection(layer: layer, directions: Tensor(shape: [k, d], values: v))
    }

    /// Seeded random unit directions: the embedding of a reference learnt from live rows, where
    /// no data was there to find principal ones.
    public static func randomDirections(network: Network, count k: Int, seed: UInt64) -> EmbeddingProjection? {
        guard let layer = EmbeddingProjection.penultimateLayer(of: network) else { return nil }
        let d = network.layers[layer].inputCount
        var rng = SeededGenerator(seed: seed)
        var v = (0..<(k * d)).map { _ in rng.nextGaussian() }
        orthonormalize(&v, k: min(k, d), d: d)
        return EmbeddingProjection(layer: layer, directions: Tensor(shape: [min(k, d), d], values: Array(v.prefix(min(k, d) * d))))
    }

    static func orthonormalize(_ v: inout [Float], k: Int, d: Int) {
        for i in 0..<k {
            for j in 0..<i {
                var dot: Float = 0
                for t in 0..<d { dot += v[i * d + t] * v[j * d + t] }
                for t in 0..<d { v[i * d + t] -= dot * v[j * d + t] }
            }
            var norm: Float = 0
            for t in 0..<d { norm += v[i * d + t] * v[i * d + t] }
            norm = norm.squareRoot()
            if norm < 1e-20 {
                // A collapsed direction: the first basis vector orthogonal to the ones before.
                for axis in 0..<d {
                    for t in 0..<d { v[i * d + t] = t == axis ? 1 : 0 }
                    for j in 0..<i { let p = v[j * d + axis]; for t in 0..<d { v[i * d + t] -= p * v[j * d + t] } }
                    norm = (0..<d).reduce(0) { $0 + v[i * d + $1] * v[i * d + $1] }.squareRoot()
                    if norm > 1e-3 { break }
                }
            }
            for t in 0..<d { v[i * d + t] /= norm }
        }
    }

    /// The sources a model supports: the predicted class needs 2...256 classes, the embedding a
    /// weighted layer.
    public static func sources(classes: Int, embedding: Bool) -> [SignalSource] {
        var s: [SignalSource] = [.input]
        if (2...256).contains(classes) { s.append(.output) }
        s.append(.confidence)
        if embedding { s.append(.embedding) }
        return s
    }

    /// Runs `rows` through `plan` (which carries the embedding projection when one is wanted) and
    /// collects each source's values, `[rows, features]` per source.
    public static func signalValues(plan: InferencePlan, rows: [Float], sources: [SignalSource], classes: Int,
                                    probabilities: Bool) -> [SignalSource: [Float]] {
        var out: [SignalSource: [Float]] = [:]
        for s in sources { out[s] = [] }
        forEachRow(plan: plan, rows: rows) { _, input, scores, embedding, k in
            let v = SampleBinner.values(sources: sources, inputCount: plan.inputCount, classes: classes, probabilities: probabilities,
                                        embeddingCount: k, input: input, scores: scores, embedding: embedding)
            for (s, x) in v { out[s]!.append(contentsOf: x) }
        }
        return out
    }

    /// Runs `rows` through `plan` in batches and hands each row to `body` in order: its index,
    /// its input, its scores, its projected embedding (nil without a projection) and k.
    public static func forEachRow(plan: InferencePlan, rows: [Float],
                                  _ body: (Int, UnsafePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>?, Int) -> Void) {
        let n = plan.inputCount, classes = plan.outputCount
        let count = rows.count / n
        rows.withUnsafeBufferPointer { buf in
            var start = 0
            while start < count {
                let b = min(plan.batchCapacity, count - start)
                let scores = plan.run(buf.baseAddress! + start * n, batch: b)
                let emb = plan.embeddings
                let k = emb.map { $0.count / b } ?? 0
                for r in 0..<b {
                    body(start + r, buf.baseAddress! + (start + r) * n, scores.baseAddress! + r * classes, emb.map { $0.baseAddress! + r * k }, k)
                }
                start += b
            }
        }
    }
}
