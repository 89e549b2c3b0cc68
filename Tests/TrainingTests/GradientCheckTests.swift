import Inference
import ModelFile
import Tensor
import Testing
import Training

/// Finite-difference checks of every layer's backward pass: the analytic gradient of
/// L = Σ r ⊙ f(x) (r random) against central differences, for the input and every parameter.
@Suite struct GradientCheckTests {
    enum Case: String, CaseIterable, Sendable {
        case dense, conv2d, conv2dStrided, conv2dPointwise, maxpool2d, avgpool2d, globalavgpool, flatten
        case relu, relu6, leakyrelu, softmax
    }

    static func network(_ c: Case, _ rng: inout SeededGenerator) -> Network {
        func t(_ shape: [Int]) -> Tensor {
            Tensor(shape: shape, values: (0..<shape.reduce(1, *)).map { _ in rng.nextFloat(limit: 1) })
        }
        let img = [2, 5, 5]
        func conv(_ k: Int, _ s: Int, _ p: Int) -> NetworkLayer {
            let o = (5 + 2 * p - k) / s + 1
            return NetworkLayer(kind: .conv2d(stride: Window(s, s), padding: Window(p, p)), inputShape: img, outputShape: [3, o, o],
                                weight: t([3, 2, k, k]), bias: t([3]), weightName: "w", biasName: "b")
        }
        let single: NetworkLayer
        switch c {
        case .dense:
            single = NetworkLayer(kind: .dense, inputShape: [6], outputShape: [4], weight: t([4, 6]), bias: t([4]), weightName: "w", biasName: "b")
        case .conv2d: single = conv(3, 1, 1)
        case .conv2dStrided: single = conv(3, 2, 1)
        case .conv2dPointwise: single = conv(1, 1, 0)
        case .maxpool2d:
            single = NetworkLayer(kind: .maxpool2d(kernel: Window(2, 2), stride: Window(2, 1)), inputShape: img, outputShape: [2, 2, 4])
        case .avgpool2d:
            single = NetworkLayer(kind: .avgpool2d(kernel: Window(3, 2), stride: Window(1, 2)), inputShape: img, outputShape: [2, 3, 2])
        case .globalavgpool: single = NetworkLayer(kind: .globalavgpool, inputShape: img, outputShape: [2])
        case .flatten: single = NetworkLayer(kind: .flatten, inputShape: img, outputShape: [50])
        case .relu: single = NetworkLayer(kind: .relu, inputShape: [6], outputShape: [6])
        case .relu6: single = NetworkLayer(kind: .relu6, inputShape: [6], outputShape: [6])
        case .leakyrelu: single = NetworkLayer(kind: .leakyrelu(alpha: 0.2), inputShape: [6], outputShape: [6])
        case .softmax: single = NetworkLayer(kind: .softmax, inputShape: [6], outputShape: [6])
        }
        return Network(name: c.rawValue, inputShape: single.inputShape, labels: [], layers: [single])
    }

    /// Inputs that keep every kink (0 and 6 for the ReLUs, ties for max pooling) further than h away.
    static func input(_ c: Case, count: Int, _ rng: inout SeededGenerator) -> [Float] {
        switch c {
        case .maxpool2d:
            var order = Array(0..<count)
            rng.shuffle(&order)
            return order.map { Float($0) * 0.1 - 2 }
        case .relu, .leakyrelu:
            return (0..<count).map { i in (i % 2 == 0 ? 1 : -1) * (0.2 + rng.nextUnitFloat()) }
        case .relu6:
            return (0..<count).map { i in [-1, 2, 7, 5.5, 6.5, -0.3][i % 6] + rng.nextFloat(limit: 0.1) }
        default:
            return (0..<count).map { _ in rng.nextFloat(limit: 1) }
        }
    }

    @Test(arguments: Case.allCases)
    func backwardMatchesFiniteDifferences(_ c: Case) {
        var rng = SeededGenerator(seed: 100 + UInt64(c.rawValue.count))
        let net = Self.network(c, &rng)
        let batch = 2
        let graph = TrainingGraph(network: net, batchCapacity: batch, dropFinalSoftmax: false)
        graph.computesInputGradient = true
        var x = Self.input(c, count: batch * net.inputCount, &rng)
        let r = (0..<(batch * net.outputCount)).map { _ in rng.nextFloat(limit: 1) }

        func loss() -> Double {
            x.withUnsafeBufferPointer { graph.forward($0.baseAddress!, batch: batch) }
            return zip(graph.output(batch: batch), r).reduce(0) { $0 + Double($1.0) * Double($1.1) }
        }
        _ = loss()
        let dx = r.withUnsafeBufferPointer { Array(graph.backward($0.baseAddress!, batch: batch)) }
        let h: Float = 1e-2

        func check(_ analytic: Float, _ bump: (Float) -> Void, _ what: String) -> Bool {
            bump(h)
            let plus = loss()
            bump(-2 * h)
            let minus = loss()
            bump(h)
            let numeric = Float((plus - minus) / Double(2 * h))
            if abs(analytic - numeric) > 2e-3 + 2e-3 * abs(numeric) {
                Issue.record("\(c) \(what): analytic \(analytic), numeric \(numeric)")
                return false
            }
            return true
        }
        #expect(dx.count == x.count)
        for i in 0..<x.count {
            guard check(dx[i], { x[i] += $0 }, "input[\(i)]") else { break }
        }
        for (index, layer) in net.layers.enumerated() {
            for (param, grad, name) in [(layer.weight, graph.weightGrads[index], "weight"), (layer.bias, graph.biasGrads[index], "bias")] {
                guard let param else { continue }
                guard let grad else { Issue.record("\(c): no gradient for \(name)"); continue }
                // Gradients are from the unperturbed point; copy them before the bumps overwrite the graph's buffers.
                let g = grad.values
                for i in 0..<param.count {
                    guard check(g[i], { param[i] += $0 }, "\(name)[\(i)]") else { break }
                }
            }
        }
    }

    @Test func crossEntropyGradientMatchesFiniteDifferences() {
        var rng = SeededGenerator(seed: 77)
        let w = Tensor(shape: [3, 5], values: (0..<15).map { _ in rng.nextFloat(limit: 1) })
        let b = Tensor(shape: [3], values: [0.1, -0.2, 0.3])
        let net = Network(name: "ce", inputShape: [5], labels: ["a", "b", "c"], layers: [
            NetworkLayer(kind: .dense, inputShape: [5], outputShape: [3], weight: w, bias: b, weightName: "w", biasName: "b"),
            NetworkLayer(kind: .softmax, inputShape: [3], outputShape: [3]),
        ])
        let graph = TrainingGraph(network: net, batchCapacity: 4)
        #expect(graph.forwardCount == 1)
        let x = (0..<20).map { _ in rng.nextFloat(limit: 2) }
        let labels: [Int32] = [0, 2, 1, 2]
        func loss() -> Float {
            x.withUnsafeBufferPointer { xp in
                labels.withUnsafeBufferPointer { lp in
                    graph.forward(xp.baseAddress!, batch: 4)
                    return graph.crossEntropy(labels: lp.baseAddress!, batch: 4).loss
                }
            }
        }
        _ = x.withUnsafeBufferPointer { xp in labels.withUnsafeBufferPointer { lp in
            graph.lossAndGradients(xp.baseAddress!, labels: lp.baseAddress!, batch: 4)
        } }
        let gw = graph.weightGrads[0]!.values, gb = graph.biasGrads[0]!.values
        let h: Float = 1e-2
        for (param, g) in [(w, gw), (b, gb)] {
            for i in 0..<param.count {
                param[i] += h
                let plus = loss()
                param[i] -= 2 * h
                let minus = loss()
                param[i] += h
                let numeric = (plus - minus) / (2 * h)
                #expect(abs(g[i] - numeric) <= 1e-3 + 1e-2 * abs(numeric), "element \(i): \(g[i]) vs \(numeric)")
            }
        }
    }
}
