import Inference
import Tensor
import Training

/// Quantization-aware training for INT4 weights: every forward and backward pass of training sees
/// the dense layers' weights as `quantize --precision int4 --group G` will store them (symmetric
/// groups of G inputs, scale max|w|/7, round half to even), and the update goes to the FP32 master
/// weights with the gradient taken at the quantized ones (straight-through estimator: with the
/// scale at max|w| nothing is clipped, so the estimator's derivative is 1 everywhere).
/// The quantizer later computes the same groups from the final master weights: the INT4 file holds
/// the final weights on the grid that training ran on (the last update, at the end of the cosine
/// schedule, moves the masters a little past the quantized weights the last step saw).
public final class Int4WeightFakeQuantizer {
    public let network: Network
    public let group: Int
    /// The dense layers the quantizer will make INT4 (an even input count).
    public let layers: [Int]
    private var masters: [Int: [Float]] = [:]

    public init(network: Network, group: Int) {
        precondition(group >= 2 && group % 2 == 0, "INT4 groups are even and at least 2")
        self.network = network
        self.group = group
        layers = network.layers.indices.filter { i in
            let l = network.layers[i]
            guard l.kind == .dense, let w = l.weight else { return false }
            return (w.count / w.shape[0]) % 2 == 0
        }
    }

    /// Replaces each weight by its INT4 value, keeping the FP32 master.
    public func quantizeWeights() {
        for l in layers {
            let w = network.layers[l].weight!
            masters[l] = w.values
            let q = Int4GroupWeights(w, group: group)
            let inputs = q.inputs
            for i in 0..<w.count { w.pointer[i] = Float(q.q[i]) * q.scales[(i / inputs) * q.groups + (i % inputs) / group] }
        }
    }

    /// Puts the FP32 master weights back (before the optimizer updates them).
    public func restoreWeights() {
        for (l, master) in masters {
            let w = network.layers[l].weight!
            master.withUnsafeBufferPointer { w.pointer.update(from: $0.baseAddress!, count: master.count) }
        }
        masters.removeAll(keepingCapacity: true)
    }

    /// Wires the fake quantization into a trainer's steps.
    public func attach(to trainer: Trainer) {
        trainer.beforeForward = { self.quantizeWeights() }
        trainer.beforeStep = { self.restoreWeights() }
        // The test accuracy printed per epoch is the INT4 network's, as `quantize` will make it.
        trainer.beforeEvaluation = { self.quantizeWeights() }
        trainer.afterEvaluation = { self.restoreWeights() }
    }
}
