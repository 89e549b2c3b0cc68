import Inference
import ModelFile
import Tensor
import Testing

/// Scalar references, written for clarity: the kernels must agree with them.
enum Reference {
    static func conv2d(_ x: [Float], c: Int, h: Int, w: Int, weight: Tensor, bias: Tensor?, stride: Window, padding: Window) -> [Float] {
        let o = weight.shape[0], kh = weight.shape[2], kw = weight.shape[3]
        let oh = (h + 2 * padding.height - kh) / stride.height + 1
        let ow = (w + 2 * padding.width - kw) / stride.width + 1
        var y = [Float](repeating: 0, count: o * oh * ow)
        for oc in 0..<o {
            for oy in 0..<oh {
                for ox in 0..<ow {
                    var acc: Double = Double(bias?[oc] ?? 0)
                    for ic in 0..<c {
                        for ky in 0..<kh {
                            for kx in 0..<kw {
                                let iy = oy * stride.height - padding.height + ky
                                let ix = ox * stride.width - padding.width + kx
                                guard iy >= 0, iy < h, ix >= 0, ix < w else { continue }
                                acc += Double(x[(ic * h + iy) * w + ix]) * Double(weight[((oc * c + ic) * kh + ky) * kw + kx])
                            }
                        }
                    }
                    y[(oc * oh + oy) * ow + ox] = Float(acc)
                }
            }
        }
        return y
    }

    static func pool(_ x: [Float], c: Int, h: Int, w: Int, kernel: Window, stride: Window, average: Bool) -> [Float] {
        let oh = (h - kernel.height) / stride.height + 1, ow = (w - kernel.width) / stride.width + 1
        var y: [Float] = []
        for ch in 0..<c {
            for oy in 0..<oh {
                for ox in 0..<ow {
                    var values: [Float] = []
                    for ky in 0..<kernel.height {
                        for kx in 0..<kernel.width {
                            values.append(x[(ch * h + oy * stride.height + ky) * w + ox * stride.width + kx])
                        }
                    }
                    y.append(average ? values.reduce(0, +) / Float(values.count) : values.max()!)
                }
            }
        }
        return y
    }

    static func dense(_ x: [Float], weight: Tensor, bias: Tensor?) -> [Float] {
        let o = weight.shape[0], i = weight.shape[1]
        return (0..<o).map { r in
            var acc = Double(bias?[r] ?? 0)
            for k in 0..<i { acc += Double(weight[r * i + k]) * Double(x[k]) }
            return Float(acc)
        }
    }
}

func close(_ a: [Float], _ b: [Float], tolerance: Float = 1e-5, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(a.count == b.count, sourceLocation: sourceLocation)
    for (i, (x, y)) in zip(a, b).enumerated() where abs(x - y) > tolerance * max(1, abs(y)) {
        Issue.record("element \(i): \(x) vs reference \(y)", sourceLocation: sourceLocation)
        return
    }
}

func randomTensor(_ shape: [Int], _ rng: inout SeededGenerator, limit: Float = 1) -> Tensor {
    Tensor(shape: shape, values: (0..<shape.reduce(1, *)).map { _ in rng.nextFloat(limit: limit) })
}

func convOut(_ n: Int, _ k: Int, _ s: Int, _ p: Int) -> Int { (n + 2 * p - k) / s + 1 }

@Suite struct KernelReferenceTests {
    @Test(arguments: [1, 5])
    func denseMatchesReference(batch: Int) {
        var rng = SeededGenerator(seed: 11)
        let w = randomTensor([6, 9], &rng), b = randomTensor([6], &rng)
        let net = Network(name: "d", inputShape: [9], labels: (0..<6).map(String.init), layers: [
            NetworkLayer(kind: .dense, inputShape: [9], outputShape: [6], weight: w, bias: b, weightName: "w", biasName: "b"),
        ])
        let x = (0..<(batch * 9)).map { _ in rng.nextFloat(limit: 2) }
        let y = ExecutionPlan(network: net, batchCapacity: batch).predict(x)
        let ref = (0..<batch).flatMap { s in Reference.dense(Array(x[(s * 9)..<((s + 1) * 9)]), weight: w, bias: b) }
        close(y, ref)
    }

    struct ConvCase: Sendable, CustomTestStringConvertible {
        var c, h, w, o, k: Int
        var stride: Window, padding: Window
        var testDescription: String { "c\(c) \(h)x\(w) o\(o) k\(k) s\(stride.height),\(stride.width) p\(padding.height),\(padding.width)" }
    }

    @Test(arguments: [
        ConvCase(c: 1, h: 8, w: 8, o: 4, k: 3, stride: Window(1, 1), padding: Window(1, 1)),
        ConvCase(c: 3, h: 7, w: 9, o: 5, k: 3, stride: Window(2, 2), padding: Window(1, 1)),
        ConvCase(c: 2, h: 9, w: 6, o: 3, k: 3, stride: Window(2, 1), padding: Window(0, 2)),
        ConvCase(c: 4, h: 5, w: 5, o: 6, k: 1, stride: Window(1, 1), padding: Window(0, 0)),
        ConvCase(c: 2, h: 6, w: 6, o: 2, k: 5, stride: Window(1, 1), padding: Window(2, 2)),
    ])
    func conv2dMatchesReference(_ t: ConvCase) {
        var rng = SeededGenerator(seed: 5)
        let weight = randomTensor([t.o, t.c, t.k, t.k], &rng), bias = randomTensor([t.o], &rng)
        let out = [t.o, convOut(t.h, t.k, t.stride.height, t.padding.height), convOut(t.w, t.k, t.stride.width, t.padding.width)]
        let net = Network(name: "c", inputShape: [t.c, t.h, t.w], labels: [], layers: [
            NetworkLayer(kind: .conv2d(stride: t.stride, padding: t.padding), inputShape: [t.c, t.h, t.w], outputShape: out,
                         weight: weight, bias: bias, weightName: "w", biasName: "b"),
            NetworkLayer(kind: .flatten, inputShape: out, outputShape: [out.reduce(1, *)]),
        ])
        let batch = 3, n = t.c * t.h * t.w
        let x = (0..<(batch * n)).map { _ in rng.nextFloat(limit: 1) }
        let y = ExecutionPlan(network: net, batchCapacity: batch).predict(x)
        let ref = (0..<batch).flatMap { s in
            Reference.conv2d(Array(x[(s * n)..<((s + 1) * n)]), c: t.c, h: t.h, w: t.w, weight: weight, bias: bias,
                             stride: t.stride, padding: t.padding)
        }
        close(y, ref, tolerance: 1e-5)
    }

    @Test(arguments: [(2, 2, false), (3, 2, false), (2, 1, true), (3, 3, true)])
    func poolingMatchesReference(kernel: Int, stride: Int, average: Bool) {
        var rng = SeededGenerator(seed: 8)
        let c = 3, h = 7, w = 6
        let k = Window(kernel, kernel), s = Window(stride, stride)
        let out = [c, (h - kernel) / stride + 1, (w - kernel) / stride + 1]
        let kind: NetworkLayer.Kind = average ? .avgpool2d(kernel: k, stride: s) : .maxpool2d(kernel: k, stride: s)
        let net = Network(name: "p", inputShape: [c, h, w], labels: [], layers: [
            NetworkLayer(kind: kind, inputShape: [c, h, w], outputShape: out),
            NetworkLayer(kind: .flatten, inputShape: out, outputShape: [out.reduce(1, *)]),
        ])
        let x = (0..<(2 * c * h * w)).map { _ in rng.nextFloat(limit: 3) }
        let y = ExecutionPlan(network: net, batchCapacity: 2).predict(x)
        let n = c * h * w
        let ref = (0..<2).flatMap { i in Reference.pool(Array(x[(i * n)..<((i + 1) * n)]), c: c, h: h, w: w, kernel: k, stride: s, average: average) }
        close(y, ref)
    }

    @Test func globalAveragePoolAndActivations() {
        let x: [Float] = [1, -2, 3, 8, /* channel 2 */ -1, -1, -1, -5]
        let gap = Network(name: "g", inputShape: [2, 2, 2], labels: [], layers: [
            NetworkLayer(kind: .globalavgpool, inputShape: [2, 2, 2], outputShape: [2]),
        ])
        close(ExecutionPlan(network: gap, batchCapacity: 1).predict(x), [2.5, -2])
        func act(_ kind: NetworkLayer.Kind) -> [Float] {
            let n = Network(name: "a", inputShape: [8], labels: [], layers: [NetworkLayer(kind: kind, inputShape: [8], outputShape: [8])])
            return ExecutionPlan(network: n, batchCapacity: 1).predict(x)
        }
        close(act(.relu), [1, 0, 3, 8, 0, 0, 0, 0])
        close(act(.relu6), [1, 0, 3, 6, 0, 0, 0, 0])
        close(act(.leakyrelu(alpha: 0.1)), [1, -0.2, 3, 8, -0.1, -0.1, -0.1, -0.5])
    }

    @Test func softmaxIsStableAndNormalised() {
        let n = Network(name: "s", inputShape: [3], labels: ["a", "b", "c"], layers: [
            NetworkLayer(kind: .softmax, inputShape: [3], outputShape: [3]),
        ])
        let y = ExecutionPlan(network: n, batchCapacity: 2).predict([1000, 1001, 1002, -5, 0, 5])
        #expect(y.allSatisfy { $0.isFinite })
        close(Array(y[0..<3]), [0.09003057, 0.24472847, 0.66524096])
        #expect(abs(y[3...].reduce(0, +) - 1) < 1e-6)
    }
}
