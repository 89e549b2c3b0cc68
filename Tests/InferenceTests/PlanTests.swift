import Foundation
import Inference
import ModelFile
import Tensor
import Testing

@Suite struct PlanTests {
    func smallCNN(_ rng: inout SeededGenerator) -> Network {
        let w1 = randomTensor([4, 1, 3, 3], &rng), b1 = randomTensor([4], &rng)
        let w2 = randomTensor([5, 16], &rng), b2 = randomTensor([5], &rng)
        return Network(name: "cnn", inputShape: [1, 4, 4], labels: (0..<5).map(String.init), layers: [
            NetworkLayer(kind: .conv2d(stride: Window(1, 1), padding: Window(1, 1)), inputShape: [1, 4, 4], outputShape: [4, 4, 4],
                         weight: w1, bias: b1, weightName: "c.weight", biasName: "c.bias"),
            NetworkLayer(kind: .relu, inputShape: [4, 4, 4], outputShape: [4, 4, 4]),
            NetworkLayer(kind: .maxpool2d(kernel: Window(2, 2), stride: Window(2, 2)), inputShape: [4, 4, 4], outputShape: [4, 2, 2]),
            NetworkLayer(kind: .flatten, inputShape: [4, 2, 2], outputShape: [16]),
            NetworkLayer(kind: .dense, inputShape: [16], outputShape: [5], weight: w2, bias: b2, weightName: "fc.weight", biasName: "fc.bias"),
            NetworkLayer(kind: .softmax, inputShape: [5], outputShape: [5]),
        ])
    }

    @Test func batchedRunEqualsOneSampleAtATime() {
        var rng = SeededGenerator(seed: 21)
        let net = smallCNN(&rng)
        let x = (0..<(7 * 16)).map { _ in rng.nextFloat(limit: 1) }
        let batched = ExecutionPlan(network: net, batchCapacity: 7).predict(x)
        let single = ExecutionPlan(network: net, batchCapacity: 1).predict(x)
        close(batched, single, tolerance: 1e-6)
        // Running again reuses the buffers and gives the same answer.
        close(ExecutionPlan(network: net, batchCapacity: 4).predict(x), batched, tolerance: 1e-6)
    }

    @Test func memoryEstimateCountsWeightsWorkspaceAndActivations() {
        var rng = SeededGenerator(seed: 2)
        let net = smallCNN(&rng)
        let m1 = ExecutionPlan.memoryEstimate(network: net, batch: 1)
        let m8 = ExecutionPlan(network: net, batchCapacity: 8).memory
        // Weights as packed for the kernels (16-output panels plus the padded bias).
        #expect(m1.weights == (edgePackedFloats(outputs: 4, inputs: 9) + edgePackedFloats(outputs: 5, inputs: 16)) * 4)
        // The im2row rows of the samples batched into one GEMM (here all of them): pixels × patch each.
        #expect(m1.workspace == 16 * 9 * 4)
        #expect(m8.workspace == 8 * 16 * 9 * 4)
        #expect(m1.activations == 2 * 64 * 4)           // two buffers of the largest activation
        #expect(m8.activations == 8 * m1.activations)
        #expect(m8.total == m8.weights + m8.workspace + m8.activations)
    }

    @Test func batchnormIsFoldedIntoTheLayerBefore() throws {
        var rng = SeededGenerator(seed: 4)
        let w = randomTensor([3, 2, 3, 3], &rng), b = randomTensor([3], &rng)
        let gamma = Tensor(shape: [3], values: [1.5, 0.5, -1]), beta = Tensor(shape: [3], values: [0.1, 0.2, 0.3])
        let mean = Tensor(shape: [3], values: [0.2, -0.1, 0.05]), variance = Tensor(shape: [3], values: [0.5, 2, 1.5])
        let manifest = Manifest(name: "bn", input: InputSpec(shape: [2, 5, 5]), labels: nil, layers: [
            LayerSpec(op: "conv2d", weight: "w", bias: "b", padding: [1, 1]),
            LayerSpec(op: "batchnorm", weight: "g", bias: "be", mean: "m", var: "v", eps: 1e-3),
            LayerSpec(op: "flatten"),
        ])
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bn-\(getpid()).safetensors").path
        try ModelWriter.write(manifest: manifest, tensors: [
            TensorBlob(name: "w", tensor: w), TensorBlob(name: "b", tensor: b), TensorBlob(name: "g", tensor: gamma),
            TensorBlob(name: "be", tensor: beta), TensorBlob(name: "m", tensor: mean), TensorBlob(name: "v", tensor: variance),
        ], to: path)
        let net = Network(model: try ModelFile.load(path: path))
        #expect(net.layers.map(\.name) == ["conv2d", "flatten"])
        let x = (0..<50).map { _ in rng.nextFloat(limit: 1) }
        let y = ExecutionPlan(network: net, batchCapacity: 1).predict(x)
        let conv = Reference.conv2d(x, c: 2, h: 5, w: 5, weight: w, bias: b, stride: Window(1, 1), padding: Window(1, 1))
        let ref = conv.enumerated().map { i, v -> Float in
            let c = i / 25
            return gamma[c] * (v - mean[c]) / (variance[c] + 1e-3).squareRoot() + beta[c]
        }
        close(y, ref, tolerance: 1e-5)
    }

    @Test func meanStdPreprocessingAndRoundTrip() throws {
        var rng = SeededGenerator(seed: 6)
        let w = randomTensor([2, 3], &rng)
        let mean = Tensor(shape: [3], values: [1, 2, 3]), std = Tensor(shape: [3], values: [2, 4, 0.5])
        let manifest = Manifest(name: "pre", input: InputSpec(shape: [3], mean: "mu", std: "sd"), labels: ["n", "y"],
                                layers: [.dense("w", nil)])
        let dir = FileManager.default.temporaryDirectory.path
        let path = dir + "/pre-\(getpid()).safetensors"
        try ModelWriter.write(manifest: manifest, tensors: [TensorBlob(name: "w", tensor: w), TensorBlob(name: "mu", tensor: mean),
                                                            TensorBlob(name: "sd", tensor: std)], to: path)
        let net = Network(model: try ModelFile.load(path: path))
        let x: [Float] = [3, 6, 4]
        let normalised: [Float] = [1, 1, 2]
        close(ExecutionPlan(network: net, batchCapacity: 1).predict(x), Reference.dense(normalised, weight: w, bias: nil))
        // Written back by the network, the file gives the same answers.
        let again = dir + "/pre2-\(getpid()).safetensors"
        try net.write(to: again)
        let reread = Network(model: try ModelFile.load(path: again))
        close(ExecutionPlan(network: reread, batchCapacity: 1).predict(x), Reference.dense(normalised, weight: w, bias: nil))
    }
}
