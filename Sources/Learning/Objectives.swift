import Foundation
import Inference
import Tensor
import Training

/// The update's loss on one batch of logits: softmax cross-entropy on the labelled rows plus
/// α·T²·KL(softmax(s/T) ‖ softmax(z/T)) to the stored logits s on the rows that have them
/// (DER++'s distillation, as a KL at temperature T instead of a logit MSE). Each term is a mean
/// over its own rows.
public enum UpdateLoss {
    /// Writes ∂loss/∂z into `dy` (`[rows, classes]`) and returns (cross-entropy, distillation).
    /// - Parameters:
    ///   - labels: class per row, or −1 for a row without a label.
    ///   - stored: `[rows, classes]` stored logits; `hasStored[r]` says whether row r has them.
    public static func gradient(logits z: UnsafePointer<Float>, rows: Int, classes: Int,
                                labels: UnsafePointer<Int32>, stored: UnsafePointer<Float>, hasStored: UnsafePointer<Bool>,
                                alpha: Float, temperature: Float, dy: UnsafeMutablePointer<Float>) -> (crossEntropy: Float, distillation: Float) {
        var nCE = 0, nKD = 0
        for r in 0..<rows {
            if labels[r] >= 0 { nCE += 1 }
            if hasStored[r] { nKD += 1 }
        }
        let wCE: Float = nCE == 0 ? 0 : 1 / Float(nCE)
        let wKD: Float = (nKD == 0 || alpha == 0) ? 0 : alpha / Float(nKD)
        var ce: Double = 0, kd: Double = 0
        let invT = 1 / temperature
        for r in 0..<rows {
            let zr = z + r * classes, g = dy + r * classes
            g.update(repeating: 0, count: classes)
            let label = Int(labels[r])
            if label >= 0 {
                var m = -Float.infinity
                for c in 0..<classes { m = max(m, zr[c]) }
                var sum: Float = 0
                for c in 0..<classes { sum += expf(zr[c] - m) }
                let logSum = logf(sum)
                ce += Double(logSum - (zr[label] - m))
                for c in 0..<classes { g[c] += wCE * expf(zr[c] - m - logSum) }
                g[label] -= wCE
            }
            if hasStored[r] && wKD > 0 {
                let sr = stored + r * classes
                var mz = -Float.infinity, ms = -Float.infinity
                for c in 0..<classes { mz = max(mz, zr[c] * invT); ms = max(ms, sr[c] * invT) }
                var sumZ: Float = 0, sumS: Float = 0
                for c in 0..<classes { sumZ += expf(zr[c] * invT - mz); sumS += expf(sr[c] * invT - ms) }
                let lz = logf(sumZ), ls = logf(sumS)
                var klRow: Float = 0
                for c in 0..<classes {
                    let logP = sr[c] * invT - ms - ls, logQ = zr[c] * invT - mz - lz
                    let p = expf(logP), q = expf(logQ)
                    if p > 0 { klRow += p * (logP - logQ) }
                    // ∂(T²·KL)/∂z_c = T·(q_c − p_c).
                    g[c] += wKD * temperature * (q - p)
                }
                kd += Double(temperature * temperature * klRow)
            }
        }
        return (Float(ce) * wCE, nKD == 0 ? 0 : Float(kd / Double(nKD)))
    }
}

/// Elastic weight consolidation over the parameters a `TrainingGraph` trains: the penalty
/// (λ/2)·Σ F_i (θ_i − θ*_i)² and its gradient, added to the graph's gradient buffers.
public struct EWCPenalty {
    struct Term {
        let parameter: Tensor
        let gradient: Tensor
        let fisher: [Float]
        let anchor: [Float]
    }
    let terms: [Term]

    /// The terms for every trainable parameter the anchor covers.
    public init(graph: TrainingGraph, anchor: EWCAnchor) {
        var terms: [Term] = []
        for (i, layer) in graph.network.layers.enumerated() {
            if let g = graph.weightGrads[i], let w = layer.weight, let n = layer.weightName, let f = anchor.fisher[n], let a = anchor.anchor[n] {
                terms.append(Term(parameter: w, gradient: g, fisher: f, anchor: a))
            }
            if let g = graph.biasGrads[i], let b = layer.bias, let n = layer.biasName, let f = anchor.fisher[n], let a = anchor.anchor[n] {
                terms.append(Term(parameter: b, gradient: g, fisher: f, anchor: a))
            }
        }
        self.terms = terms
    }

    /// Adds λ·F·(θ − θ*) to each gradient and returns the penalty.
    @discardableResult
    public func addGradient(lambda: Float) -> Float {
        guard lambda > 0 else { return 0 }
        var penalty: Double = 0
        for t in terms {
            let w = t.parameter.pointer, g = t.gradient.pointer
            t.fisher.withUnsafeBufferPointer { f in
                t.anchor.withUnsafeBufferPointer { a in
                    var acc: Float = 0
                    for j in 0..<t.parameter.count {
                        let d = w[j] - a[j]
                        g[j] += lambda * f[j] * d
                        acc += f[j] * d * d
                    }
                    penalty += Double(acc)
                }
            }
        }
        return Float(0.5 * Double(lambda) * penalty)
    }

    /// The penalty alone (gradient checks, reports).
    public func penalty(lambda: Float) -> Float {
        var s: Double = 0
        for t in terms {
            for j in 0..<t.parameter.count {
                let d = Double(t.parameter[j] - t.anchor[j])
                s += Double(t.fisher[j]) * d * d
            }
        }
        return Float(0.5 * Double(lambda) * s)
    }
}

/// The diagonal Fisher information F_i = E_x Σ_c p(c|x) (∂ log p(c|x)/∂θ_i)², exact over the
/// classes (the model's own predictive distribution, not the labels: the empirical Fisher's
/// gradients vanish on the rows the model already fits and it needs labels the live replay rows
/// do not have). Every class is summed (`floor` > 0 would skip classes below it, but on a
/// confident row the Fisher is mostly made of exactly those). Every parameter of the network
/// gets an entry (frozen ones zero).
public enum FisherInformation {
    public static func diagonal(network: Network, rows: UnsafePointer<Float>, count: Int, floor: Float = 0) -> [String: [Float]] {
        let graph = TrainingGraph(network: network, batchCapacity: 1, trainable: nil)
        let classes = graph.outputCount
        var fisher: [String: [Float]] = [:]
        for (name, t) in network.parameters { fisher[name] = [Float](repeating: 0, count: t.count) }
        guard count > 0 else { return fisher }
        var accumulators: [(UnsafePointer<Float>, Int, String)] = []
        for (i, layer) in network.layers.enumerated() {
            if let g = graph.weightGrads[i], let n = layer.weightName { accumulators.append((UnsafePointer(g.pointer), g.count, n)) }
            if let g = graph.biasGrads[i], let n = layer.biasName { accumulators.append((UnsafePointer(g.pointer), g.count, n)) }
        }
        var sums = accumulators.map { [Double](repeating: 0, count: $0.1) }
        let dy = UnsafeMutablePointer<Float>.allocate(capacity: classes)
        let q = UnsafeMutablePointer<Float>.allocate(capacity: classes)
        defer { dy.deallocate(); q.deallocate() }
        BLAS.withDenormalsFlushedToZero {
            for s in 0..<count {
                graph.forward(rows + s * network.inputCount, batch: 1)
                let z = graph.output(batch: 1)
                var m = -Float.infinity
                for c in 0..<classes { m = max(m, z[c]) }
                var sum: Float = 0
                for c in 0..<classes { q[c] = expf(z[c] - m); sum += q[c] }
                for c in 0..<classes { q[c] /= sum }
                for c in 0..<classes where q[c] >= floor && q[c] > 0 {
                    // ∂(−log p_c)/∂z = q − e_c; its square is the same with either sign.
                    for k in 0..<classes { dy[k] = q[k] }
                    dy[c] -= 1
                    graph.backward(dy, batch: 1)
                    let w = Double(q[c])
                    for (a, acc) in accumulators.enumerated() {
                        let g = acc.0
                        sums[a].withUnsafeMutableBufferPointer { out in
                            for j in 0..<acc.1 { let v = Double(g[j]); out[j] += w * v * v }
                        }
                    }
                }
            }
        }
        let inv = 1 / Double(count)
        for (a, acc) in accumulators.enumerated() { fisher[acc.2] = sums[a].map { Float($0 * inv) } }
        return fisher
    }
}
