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
        // 8 channels or more: the direct (indirection table) path on AVX2.
        ConvCase(c: 8, h: 7, w: 9, o: 20, k: 3, stride: Window(2, 1), padding: Window(1, 0)),
        ConvCase(c: 12, h: 6, w: 6, o: 16, k: 5, stride: Window(1, 1), padding: Window(2, 2)),
        // 8 channels and a kernel taller than the image (one output row by truncation): no table
        // can be built, so the plan takes im2row rows and sizes its workspace for them.
        ConvCase(c: 8, h: 2, w: 5, o: 4, k: 3, stride: Window(2, 2), padding: Window(0, 0)),
        // 3×3, stride 1, 32 channels (or 16 into 32): Winograd F(2×2, 3×3), odd output sizes.
        ConvCase(c: 32, h: 7, w: 8, o: 20, k: 3, stride: Window(1, 1), padding: Window(1, 0)),
        ConvCase(c: 16, h: 5, w: 9, o: 33, k: 3, stride: Window(1, 1), padding: Window(2, 1)),
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

    /// Three channels in, two convolutions, both poolings and a dense head, at a batch that needs
    /// three im2row chunks (32×32 with 5×5 taps: 307 KB of rows per sample, 1 MiB per chunk): the
    /// channels-last plan equals the channels-first scalar reference, and so does its embedding tap.
    @Test func channelsLastCNNEqualsTheChannelsFirstReference() {
        var rng = SeededGenerator(seed: 31)
        let w1 = randomTensor([6, 3, 5, 5], &rng), b1 = randomTensor([6], &rng)
        let w2 = randomTensor([4, 6, 3, 3], &rng), b2 = randomTensor([4], &rng)
        let w3 = randomTensor([5, 4 * 8 * 8], &rng, limit: 0.2), b3 = randomTensor([5], &rng)
        let net = Network(name: "cnn3", inputShape: [3, 32, 32], labels: (0..<5).map(String.init), layers: [
            NetworkLayer(kind: .conv2d(stride: Window(1, 1), padding: Window(2, 2)), inputShape: [3, 32, 32], outputShape: [6, 32, 32],
                         weight: w1, bias: b1, weightName: "c1", biasName: "c1b"),
            NetworkLayer(kind: .relu, inputShape: [6, 32, 32], outputShape: [6, 32, 32]),
            NetworkLayer(kind: .maxpool2d(kernel: Window(2, 2), stride: Window(2, 2)), inputShape: [6, 32, 32], outputShape: [6, 16, 16]),
            NetworkLayer(kind: .conv2d(stride: Window(1, 1), padding: Window(1, 1)), inputShape: [6, 16, 16], outputShape: [4, 16, 16],
                         weight: w2, bias: b2, weightName: "c2", biasName: "c2b"),
            NetworkLayer(kind: .avgpool2d(kernel: Window(2, 2), stride: Window(2, 2)), inputShape: [4, 16, 16], outputShape: [4, 8, 8]),
            NetworkLayer(kind: .flatten, inputShape: [4, 8, 8], outputShape: [256]),
            NetworkLayer(kind: .dense, inputShape: [256], outputShape: [5], weight: w3, bias: b3, weightName: "fc", biasName: "fcb"),
        ])
        let batch = 7, n = 3 * 32 * 32
        let x = (0..<(batch * n)).map { _ in rng.nextFloat(limit: 1) }
        let directions = randomTensor([3, 256], &rng)
        let projection = EmbeddingProjection(layer: 6, directions: directions)
        let plan = ExecutionPlan(network: net, batchCapacity: batch, embedding: projection)
        let y = plan.predict(x)
        var ref: [Float] = [], embedded: [Float] = []
        for s in 0..<batch {
            var h = Reference.conv2d(Array(x[(s * n)..<((s + 1) * n)]), c: 3, h: 32, w: 32, weight: w1, bias: b1,
                                     stride: Window(1, 1), padding: Window(2, 2)).map { max($0, 0) }
            h = Reference.pool(h, c: 6, h: 32, w: 32, kernel: Window(2, 2), stride: Window(2, 2), average: false)
            h = Reference.conv2d(h, c: 6, h: 16, w: 16, weight: w2, bias: b2, stride: Window(1, 1), padding: Window(1, 1))
            h = Reference.pool(h, c: 4, h: 16, w: 16, kernel: Window(2, 2), stride: Window(2, 2), average: true)
            ref += Reference.dense(h, weight: w3, bias: b3)
            embedded += Reference.dense(h, weight: directions, bias: nil)
        }
        close(y, ref, tolerance: 1e-4)
        close(Array(plan.embeddings!), embedded, tolerance: 1e-4)
    }

    /// The tapped layer is the first convolution of a 3-channel input (whose input the plan turns
    /// channels last): the embeddings still equal the projection of the CHW input.
    @Test func embeddingTapOnTheFirstConvolutionOfAMultiChannelInput() {
        var rng = SeededGenerator(seed: 33)
        let w1 = randomTensor([4, 3, 3, 3], &rng), b1 = randomTensor([4], &rng)
        let net = Network(name: "tap", inputShape: [3, 5, 6], labels: (0..<4).map(String.init), layers: [
            NetworkLayer(kind: .conv2d(stride: Window(1, 1), padding: Window(1, 1)), inputShape: [3, 5, 6], outputShape: [4, 5, 6],
                         weight: w1, bias: b1, weightName: "c1", biasName: "c1b"),
            NetworkLayer(kind: .globalavgpool, inputShape: [4, 5, 6], outputShape: [4]),
        ])
        let x = (0..<(3 * 90)).map { _ in rng.nextFloat(limit: 1) }
        let directions = randomTensor([2, 90], &rng)
        let plan = ExecutionPlan(network: net, batchCapacity: 3, embedding: EmbeddingProjection(layer: 0, directions: directions))
        _ = plan.predict(x)
        let expected = (0..<3).flatMap { s in Reference.dense(Array(x[(s * 90)..<((s + 1) * 90)]), weight: directions, bias: nil) }
        close(Array(plan.embeddings!), expected, tolerance: 1e-5)
    }

    @Test func globalAveragePoolOverChannelsLast() {
        var rng = SeededGenerator(seed: 32)
        let w1 = randomTensor([5, 2, 3, 3], &rng), b1 = randomTensor([5], &rng)
        let net = Network(name: "gap", inputShape: [2, 6, 7], labels: [], layers: [
            NetworkLayer(kind: .conv2d(stride: Window(1, 1), padding: Window(1, 1)), inputShape: [2, 6, 7], outputShape: [5, 6, 7],
                         weight: w1, bias: b1, weightName: "c1", biasName: "c1b"),
            NetworkLayer(kind: .globalavgpool, inputShape: [5, 6, 7], outputShape: [5]),
        ])
        let x = (0..<(3 * 84)).map { _ in rng.nextFloat(limit: 1) }
        let y = ExecutionPlan(network: net, batchCapacity: 3).predict(x)
        let ref = (0..<3).flatMap { s -> [Float] in
            let h = Reference.conv2d(Array(x[(s * 84)..<((s + 1) * 84)]), c: 2, h: 6, w: 7, weight: w1, bias: b1,
                                     stride: Window(1, 1), padding: Window(1, 1))
            return (0..<5).map { c in h[(c * 42)..<((c + 1) * 42)].reduce(0, +) / 42 }
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
