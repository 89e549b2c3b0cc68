import Inference
import ModelFile
import Tensor

/// A network laid out for training: every layer's output kept for the backward pass, gradient
/// buffers for every parameter, all allocated once for a batch capacity. `forward`, `backward`
/// and `lossAndGradients` allocate nothing.
public final class TrainingGraph: @unchecked Sendable {
    public let network: Network
    public let batchCapacity: Int
    /// acts[0] is the preprocessed input; acts[l + 1] is layer l's output. `[batch, …]` each.
    private var acts: [UnsafeMutablePointer<Float>]
    private let gradA: UnsafeMutablePointer<Float>
    private let gradB: UnsafeMutablePointer<Float>
    private let col: UnsafeMutablePointer<Float>
    private let dcol: UnsafeMutablePointer<Float>
    private let maxActivation: Int
    /// Gradients by layer index: weight then bias, same shapes as the parameters.
    public private(set) var weightGrads: [Tensor?]
    public private(set) var biasGrads: [Tensor?]
    /// Which layers' parameters get gradients (frozen ones still pass gradients through).
    public let trainableLayers: [Bool]
    /// Layers run by `forward`: all, or all but a final softmax when training with cross-entropy.
    public let forwardCount: Int
    /// Also compute ∂loss/∂input at layer 0 (gradient checks, saliency); training does not need it.
    public var computesInputGradient = false
    /// Called in `forward` with each tensor as soon as it is computed (0: the preprocessed input,
    /// l + 1: layer l's output; `count` values for the batch), before any layer reads it; it may
    /// change the values in place (quantization-aware training fake-quantizes activations here).
    public var tensorHook: ((_ tensor: Int, _ values: UnsafeMutablePointer<Float>, _ count: Int) -> Void)?
    /// Called in the backward pass with ∂loss/∂tensor for each tensor l ≥ 1 (and 0 when the
    /// input gradient is computed), before it flows into the layer that produced the tensor: the
    /// derivative of what `tensorHook` did (a straight-through estimator's mask).
    public var gradientHook: ((_ tensor: Int, _ gradient: UnsafeMutablePointer<Float>, _ count: Int) -> Void)?

    /// - Parameter trainable: names of tensors to train; nil trains every parameter.
    public init(network: Network, batchCapacity: Int, trainable: Set<String>? = nil, dropFinalSoftmax: Bool = true) {
        self.network = network
        self.batchCapacity = batchCapacity
        let layers = network.layers
        forwardCount = dropFinalSoftmax && network.endsWithSoftmax ? layers.count - 1 : layers.count
        var maxAct = network.inputCount
        var workspace = 1
        for l in layers {
            maxAct = max(maxAct, l.outputCount)
            if case .conv2d = l.kind, let g = l.geometry { workspace = max(workspace, g.patch * g.outH * g.outW) }
        }
        maxActivation = maxAct
        acts = ([network.inputCount] + layers.map(\.outputCount)).map { n in
            allocateAlignedFloats(n * batchCapacity)
        }
        gradA = allocateAlignedFloats(maxAct * batchCapacity)
        gradB = allocateAlignedFloats(maxAct * batchCapacity)
        col = allocateAlignedFloats(workspace)
        dcol = allocateAlignedFloats(workspace)
        let names = trainable ?? network.trainable.map(Set.init)
        trainableLayers = layers.map { l in
            guard l.weight != nil else { return false }
            guard let names else { return true }
            return names.contains(l.weightName ?? "") || names.contains(l.biasName ?? "")
        }
        weightGrads = zip(layers, trainableLayers).map { l, t in t ? l.weight.map { Tensor(zeros: $0.shape) } : nil }
        biasGrads = zip(layers, trainableLayers).map { l, t in t ? l.bias.map { Tensor(zeros: $0.shape) } : nil }
        // A frozen tensor in a trainable layer gets no update: drop its gradient.
        if let names {
            for (i, l) in layers.enumerated() where trainableLayers[i] {
                if !names.contains(l.weightName ?? "") { weightGrads[i] = nil }
                if !names.contains(l.biasName ?? "") { biasGrads[i] = nil }
            }
        }
    }

    deinit {
        acts.forEach { $0.deallocate() }
        gradA.deallocate()
        gradB.deallocate()
        col.deallocate()
        dcol.deallocate()
    }

    /// The output of the last layer `forward` ran (logits when the final softmax is dropped).
    public func output(batch: Int) -> UnsafeBufferPointer<Float> {
        let n = forwardCount == 0 ? network.inputCount : network.layers[forwardCount - 1].outputCount
        return UnsafeBufferPointer(start: acts[forwardCount], count: batch * n)
    }

    /// Tensor `t` of the last forward pass: 0 is the preprocessed input, l + 1 is layer l's output.
    public func activation(_ t: Int, batch: Int) -> UnsafeBufferPointer<Float> {
        let n = t == 0 ? network.inputCount : network.layers[t - 1].outputCount
        return UnsafeBufferPointer(start: acts[t], count: batch * n)
    }

    public var outputCount: Int { forwardCount == 0 ? network.inputCount : network.layers[forwardCount - 1].outputCount }

    /// Forward pass over raw input rows, keeping every layer's output.
    public func forward(_ input: UnsafePointer<Float>, batch: Int) {
        precondition(batch >= 1 && batch <= batchCapacity, "batch \(batch) outside 1...\(batchCapacity)")
        network.preprocessing.apply(input, acts[0], batch: batch, sampleCount: network.inputCount)
        tensorHook?(0, acts[0], batch * network.inputCount)
        for l in 0..<forwardCount {
            let layer = network.layers[l]
            let x = UnsafePointer(acts[l]), y = acts[l + 1]
            switch layer.kind {
            case .dense:
                Kernels.dense(x, batch: batch, inputs: layer.inputCount, outputs: layer.outputCount,
                              weight: layer.weight!.pointer, bias: layer.bias.map { UnsafePointer($0.pointer) }, activation: .none, y)
            case .conv2d:
                Kernels.conv2d(x, batch: batch, layer.geometry!, weight: layer.weight!.pointer,
                               bias: layer.bias.map { UnsafePointer($0.pointer) }, activation: .none, workspace: col, y)
            case .maxpool2d: Kernels.maxpool2d(x, batch: batch, layer.geometry!, y)
            case .avgpool2d: Kernels.avgpool2d(x, batch: batch, layer.geometry!, y)
            case .globalavgpool:
                Kernels.globalAveragePool(x, planes: batch * layer.inputShape[0], planeSize: layer.inputShape[1] * layer.inputShape[2], y)
            case .flatten:
                y.update(from: x, count: batch * layer.inputCount)
            case .relu, .relu6, .leakyrelu:
                y.update(from: x, count: batch * layer.inputCount)
                Kernels.activate(y, count: batch * layer.outputCount, layer.kind.activation!)
            case .softmax:
                y.update(from: x, count: batch * layer.inputCount)
                Kernels.softmax(y, rows: batch, columns: layer.outputCount)
            }
            tensorHook?(l + 1, y, batch * layer.outputCount)
        }
    }

    /// Mean softmax cross-entropy of the last forward output against `labels`; leaves
    /// ∂loss/∂logits in the gradient buffer and returns (loss, correct predictions).
    public func crossEntropy(labels: UnsafePointer<Int32>, batch: Int) -> (loss: Float, correct: Int) {
        let classes = outputCount
        let logits = acts[forwardCount]
        var loss: Float = 0
        var correct = 0
        let invBatch = 1 / Float(batch)
        for b in 0..<batch {
            let z = logits + b * classes, g = gradA + b * classes
            var m = -Float.infinity, arg = 0
            for c in 0..<classes where z[c] > m { m = z[c]; arg = c }
            var sum: Float = 0
            for c in 0..<classes { let e = expf(z[c] - m); g[c] = e; sum += e }
            let label = Int(labels[b])
            if arg == label { correct += 1 }
            loss += logf(sum) - (z[label] - m)
            let inv = 1 / sum
            for c in 0..<classes { g[c] = g[c] * inv * invBatch }
            g[label] -= invBatch
        }
        return (loss * invBatch, correct)
    }

    /// One forward and backward pass; parameter gradients end up in `weightGrads`/`biasGrads`.
    public func lossAndGradients(_ input: UnsafePointer<Float>, labels: UnsafePointer<Int32>, batch: Int) -> (loss: Float, correct: Int) {
        forward(input, batch: batch)
        let result = crossEntropy(labels: labels, batch: batch)
        backwardFromBuffer(batch: batch)
        return result
    }

    /// Backward from an explicit output gradient `dy` (`[batch, outputCount]`); returns ∂/∂(preprocessed input).
    /// Used by the gradient checks and by losses other than cross-entropy.
    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>, batch: Int) -> UnsafeBufferPointer<Float> {
        gradA.update(from: dy, count: batch * outputCount)
        return backwardFromBuffer(batch: batch)
    }

    @discardableResult
    private func backwardFromBuffer(batch: Int) -> UnsafeBufferPointer<Float> {
        var dy = gradA, dx = gradB
        for l in stride(from: forwardCount - 1, through: 0, by: -1) {
            let layer = network.layers[l]
            let x = UnsafePointer(acts[l]), y = UnsafePointer(acts[l + 1])
            let needInput = l > 0 || computesInputGradient
            switch layer.kind {
            case .dense:
                let inN = layer.inputCount, outN = layer.outputCount
                if let dW = weightGrads[l] {
                    BLAS.gemm(transA: true, m: outN, n: inN, k: batch, a: dy, lda: outN, b: x, ldb: inN, c: dW.pointer, ldc: inN)
                }
                if let dB = biasGrads[l] { sumRows(dy, rows: batch, columns: outN, into: dB.pointer) }
                if needInput {
                    BLAS.gemm(m: batch, n: inN, k: outN, a: dy, lda: outN, b: layer.weight!.pointer, ldb: inN, c: dx, ldc: inN)
                }
            case .conv2d:
                convBackward(layer, l, x: x, dy: dy, dx: needInput ? dx : nil, batch: batch)
            case .maxpool2d:
                if needInput { maxpoolBackward(layer.geometry!, x: x, dy: dy, dx: dx, batch: batch) }
            case .avgpool2d:
                if needInput { avgpoolBackward(layer.geometry!, dy: dy, dx: dx, batch: batch) }
            case .globalavgpool:
                let planes = batch * layer.inputShape[0], size = layer.inputShape[1] * layer.inputShape[2]
                let inv = 1 / Float(size)
                for p in 0..<planes { (dx + p * size).update(repeating: dy[p] * inv, count: size) }
            case .flatten:
                dx.update(from: dy, count: batch * layer.inputCount)
            case .relu:
                for i in 0..<(batch * layer.inputCount) { dx[i] = x[i] > 0 ? dy[i] : 0 }
            case .relu6:
                for i in 0..<(batch * layer.inputCount) { dx[i] = (x[i] > 0 && x[i] < 6) ? dy[i] : 0 }
            case .leakyrelu(let alpha):
                for i in 0..<(batch * layer.inputCount) { dx[i] = x[i] > 0 ? dy[i] : dy[i] * alpha }
            case .softmax:
                let n = layer.outputCount
                for b in 0..<batch {
                    let yb = y + b * n, gb = dy + b * n, d = dx + b * n
                    var dot: Float = 0
                    for c in 0..<n { dot += gb[c] * yb[c] }
                    for c in 0..<n { d[c] = yb[c] * (gb[c] - dot) }
                }
            }
            swap(&dy, &dx)
            if l > 0 || computesInputGradient { gradientHook?(l, dy, batch * layer.inputCount) }
        }
        let n = forwardCount == 0 ? 0 : network.layers[0].inputCount
        return UnsafeBufferPointer(start: dy, count: batch * n)
    }

    private func sumRows(_ g: UnsafePointer<Float>, rows: Int, columns: Int, into out: UnsafeMutablePointer<Float>) {
        out.update(repeating: 0, count: columns)
        for r in 0..<rows {
            let row = g + r * columns
            for c in 0..<columns { out[c] += row[c] }
        }
    }

    private func convBackward(_ layer: NetworkLayer, _ l: Int, x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                              dx: UnsafeMutablePointer<Float>?, batch: Int) {
        let g = layer.geometry!
        let plane = g.outH * g.outW, inCount = g.channels * g.height * g.width, outCount = g.outChannels * plane
        let dW = weightGrads[l], dB = biasGrads[l]
        dW?.fill(0)
        dB?.fill(0)
        for s in 0..<batch {
            let xs = x + s * inCount, dys = dy + s * outCount
            if let dW {
                Kernels.im2col(xs, g, col)
                BLAS.gemm(transB: true, m: g.outChannels, n: g.patch, k: plane, a: dys, lda: plane, b: col, ldb: plane,
                          beta: 1, c: dW.pointer, ldc: g.patch)
            }
            if let dB {
                for o in 0..<g.outChannels {
                    var acc: Float = 0
                    let row = dys + o * plane
                    for i in 0..<plane { acc += row[i] }
                    dB[o] += acc
                }
            }
            if let dx {
                BLAS.gemm(transA: true, m: g.patch, n: plane, k: g.outChannels, a: layer.weight!.pointer, lda: g.patch,
                          b: dys, ldb: plane, c: dcol, ldc: plane)
                Kernels.col2im(dcol, g, dx + s * inCount)
            }
        }
    }

    private func maxpoolBackward(_ g: Kernels.ConvGeometry, x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                 dx: UnsafeMutablePointer<Float>, batch: Int) {
        let oh = g.outH, ow = g.outW, size = g.height * g.width
        dx.update(repeating: 0, count: batch * g.channels * size)
        var o = 0
        for p in 0..<(batch * g.channels) {
            let xp = x + p * size, dp = dx + p * size
            for oy in 0..<oh {
                for ox in 0..<ow {
                    // The gradient goes to the first maximum, as the forward pass chose it.
                    var best = -Float.infinity, at = 0
                    for ky in 0..<g.kernelH {
                        for kx in 0..<g.kernelW {
                            let idx = (oy * g.strideH + ky) * g.width + ox * g.strideW + kx
                            if xp[idx] > best { best = xp[idx]; at = idx }
                        }
                    }
                    dp[at] += dy[o]
                    o += 1
                }
            }
        }
    }

    private func avgpoolBackward(_ g: Kernels.ConvGeometry, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, batch: Int) {
        let oh = g.outH, ow = g.outW, size = g.height * g.width
        let inv = 1 / Float(g.kernelH * g.kernelW)
        dx.update(repeating: 0, count: batch * g.channels * size)
        var o = 0
        for p in 0..<(batch * g.channels) {
            let dp = dx + p * size
            for oy in 0..<oh {
                for ox in 0..<ow {
                    let v = dy[o] * inv
                    for ky in 0..<g.kernelH {
                        for kx in 0..<g.kernelW { dp[(oy * g.strideH + ky) * g.width + ox * g.strideW + kx] += v }
                    }
                    o += 1
                }
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
