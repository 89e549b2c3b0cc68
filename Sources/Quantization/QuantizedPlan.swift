import CKernels
import Inference
import ModelFile
import Tensor

/// A quantized model compiled for a batch capacity. Activations move between layers as UINT8
/// while consecutive layers are integer, and as FP32 around FP32 layers, with quantize and
/// dequantize steps only at those boundaries. ReLU and ReLU6 after an integer layer are its
/// clamp; max/average pooling, flatten and global pooling run on UINT8 with unchanged parameters.
/// With adaptive precision, samples whose top-1 margin is below the threshold are re-run by an
/// FP32 plan inside the same call. `run` allocates nothing.
public final class QuantizedPlan: InferencePlan, @unchecked Sendable {
    enum Step {
        case quantize(QuantParams, count: Int)
        case dequantize(QuantParams, count: Int)
        case int8Dense(PackedInt8Weights, QuantizedEpilogue, floatOutput: Bool)
        case int8Conv(PackedInt8Weights, QuantizedEpilogue, Kernels.ConvGeometry, inputZeroPoint: UInt8, floatOutput: Bool)
        case int4Dense(PackedInt4Weights, FusedActivation)
        case floatDense(PackedWeights, FusedActivation)
        case floatConv(PackedWeights, Kernels.ConvGeometry, FusedActivation)
        case maxpoolU8(Kernels.ConvGeometry)
        case avgpoolU8(Kernels.ConvGeometry)
        case globalAveragePoolU8(channels: Int, planeSize: Int)
        case clampU8(lo: UInt8, hi: UInt8, count: Int)
        case maxpool(Kernels.ConvGeometry)
        case avgpool(Kernels.ConvGeometry)
        case globalAveragePool(channels: Int, planeSize: Int)
        case activation(Kernels.Activation, count: Int)
        case softmax(columns: Int)

        var inPlace: Bool {
            switch self {
            case .clampU8, .activation, .softmax: true
            default: false
            }
        }
    }

    public let model: QuantizedModel
    public let batchCapacity: Int
    let steps: [Step]
    private let bufferA: UnsafeMutableRawPointer
    private let bufferB: UnsafeMutableRawPointer
    private let workspace: UnsafeMutableRawPointer
    private let bufferBytes: Int
    private let workspaceBytes: Int
    private let weightBytes: Int
    /// FP32 plan for escalated samples, and its gather buffer.
    private let fallback: ExecutionPlan?
    private let gather: UnsafeMutablePointer<Float>?
    private let gatherIndex: UnsafeMutablePointer<Int>?
    public var adaptiveThreshold: Float?
    /// Samples answered so far, and how many of them were re-run in FP32.
    public private(set) var samples = 0
    public private(set) var escalations = 0

    public var inputCount: Int { model.network.inputCount }
    public var outputCount: Int { model.network.outputCount }
    public var precision: String { model.precisionName + (adaptiveThreshold != nil ? "+adaptive" : "") }
    public var embeddings: UnsafeBufferPointer<Float>? { tap?.embeddings }

    /// - Parameter adaptive: nil uses the spec's setting; pass `.off` to force plain integer inference.
    private let tap: EmbeddingTap?
    private let tapStep: Int
    /// The tapped layer's input parameters when that input is UINT8.
    private let tapInput: QuantParams?

    public init(model: QuantizedModel, batchCapacity: Int, adaptive: AdaptivePrecision.Mode? = nil,
                embedding: EmbeddingProjection? = nil) {
        precondition(batchCapacity >= 1)
        self.model = model
        self.batchCapacity = batchCapacity
        let compiled = Self.compile(model)
        steps = compiled.steps
        if let embedding {
            precondition(embedding.layer == EmbeddingProjection.penultimateLayer(of: model.network)
                         && embedding.inputCount == model.network.layers[embedding.layer].inputCount, "projection does not fit the network")
            let index = compiled.steps.lastIndex {
                switch $0 {
                case .int8Dense, .int8Conv, .int4Dense, .floatDense, .floatConv: true
                default: false
                }
            }!
            tapStep = index
            switch compiled.steps[index] {
            case .int8Dense, .int8Conv: tapInput = model.spec.activation(embedding.layer)
            default: tapInput = nil
            }
            tap = EmbeddingTap(embedding, batchCapacity: batchCapacity, quantizedInput: tapInput != nil)
        } else {
            tap = nil
            tapStep = -1
            tapInput = nil
        }
        weightBytes = compiled.weightBytes
        let net = model.network
        var maxActivation = net.inputCount
        var work = 16
        for l in net.layers {
            maxActivation = max(maxActivation, l.outputCount)
            if case .conv2d = l.kind, let g = l.geometry {
                let pixels = g.outH * g.outW
                work = max(work, Kernels.conv2dWorkspace(g) * 4, pixels * ((g.patch + 3) & ~3) + pixels * g.outChannels + g.channels * g.height * g.width + 64)
            }
        }
        // 64 spare bytes: INT8 kernels read rows in 4-byte quads.
        bufferBytes = maxActivation * batchCapacity * 4 + 64
        workspaceBytes = work
        bufferA = .allocate(byteCount: bufferBytes, alignment: 64)
        bufferB = .allocate(byteCount: bufferBytes, alignment: 64)
        workspace = .allocate(byteCount: workspaceBytes, alignment: 64)
        bufferA.initializeMemory(as: UInt8.self, repeating: 0, count: bufferBytes)
        bufferB.initializeMemory(as: UInt8.self, repeating: 0, count: bufferBytes)
        workspace.initializeMemory(as: UInt8.self, repeating: 0, count: workspaceBytes)
        let mode = adaptive ?? model.spec.adaptive?.mode ?? .off
        if mode != .off, let threshold = model.spec.adaptive?.threshold {
            adaptiveThreshold = threshold
            fallback = ExecutionPlan(network: net, batchCapacity: batchCapacity)
            gather = allocateAlignedFloats(batchCapacity * net.inputCount)
            gatherIndex = .allocate(capacity: batchCapacity)
        } else {
            fallback = nil
            gather = nil
            gatherIndex = nil
        }
    }

    deinit {
        bufferA.deallocate()
        bufferB.deallocate()
        workspace.deallocate()
        gather?.deallocate()
        gatherIndex?.deallocate()
    }

    /// The compiled steps, one name each ("int8 dense", "fp32 conv2d", "quantize", …): what
    /// actually runs, for `inspect` and for tests that a layer ran in the precision it was given.
    public var stepNames: [String] {
        steps.map { step in
            switch step {
            case .quantize: "quantize"
            case .dequantize: "dequantize"
            case .int8Dense(_, _, let f): "int8 dense" + (f ? " -> fp32" : "")
            case .int8Conv(_, _, _, _, let f): "int8 conv2d" + (f ? " -> fp32" : "")
            case .int4Dense: "int4 dense"
            case .floatDense: "fp32 dense"
            case .floatConv: "fp32 conv2d"
            case .maxpoolU8: "uint8 maxpool"
            case .avgpoolU8: "uint8 avgpool"
            case .globalAveragePoolU8: "uint8 global average pool"
            case .clampU8: "uint8 clamp"
            case .maxpool: "fp32 maxpool"
            case .avgpool: "fp32 avgpool"
            case .globalAveragePool: "fp32 global average pool"
            case .activation(let a, _): "fp32 \(a)"
            case .softmax: "softmax"
            }
        }
    }

    public var memory: MemoryEstimate {
        var m = MemoryEstimate(weights: weightBytes, workspace: workspaceBytes, activations: 2 * bufferBytes)
        if let fallback { m.weights += fallback.memory.weights; m.activations += fallback.memory.activations }
        return m
    }

    // MARK: compile

    static func compile(_ model: QuantizedModel) -> (steps: [Step], weightBytes: Int) {
        let net = model.network, spec = model.spec
        var steps: [Step] = []
        var bytes = 0
        var domain: QuantParams? = nil  // nil: FP32
        let layers = net.layers
        func precision(_ l: Int) -> LayerPrecision {
            if model.int8[l] != nil { return .int8 }
            if model.int4[l] != nil { return .int4 }
            return .fp32
        }
        func toFloat() {
            if let p = domain {
                steps.append(.dequantize(p, count: 0))
                domain = nil
            }
        }
        var l = 0
        while l < layers.count {
            let layer = layers[l]
            let fused = net.fusedActivation(at: l)
            switch layer.kind {
            case .dense, .conv2d:
                switch precision(l) {
                case .int8:
                    let q = model.int8[l]!
                    let input = spec.activation(l)!
                    if domain != input {
                        toFloat()
                        steps.append(.quantize(input, count: 0))
                        domain = input
                    }
                    let uint8Out = QuantizedModel.uint8OutputTensor(of: l, network: net, precision: precision)
                    let out = uint8Out.flatMap { spec.activation($0) }
                    let floatOut = out == nil
                    let ep = epilogue(q, bias: layer.bias, input: input, output: out, activation: fused)
                    let packed = q.packed()
                    bytes += packed.byteCount + ep.count * 8
                    if case .conv2d = layer.kind {
                        steps.append(.int8Conv(packed, ep, layer.geometry!, inputZeroPoint: UInt8(input.zeroPoint), floatOutput: floatOut))
                    } else {
                        steps.append(.int8Dense(packed, ep, floatOutput: floatOut))
                    }
                    domain = out
                    if floatOut, fused == .relu6 {
                        // The FP32 epilogue applies ReLU only; the upper clamp at 6 follows.
                        steps.append(.activation(.relu6, count: layers[l + 1].outputCount))
                    }
                case .int4:
                    toFloat()
                    let q = model.int4[l]!.packed(bias: layer.bias)
                    bytes += q.byteCount
                    steps.append(.int4Dense(q, fused.fused))
                case .fp32:
                    toFloat()
                    if case .conv2d = layer.kind {
                        let p = PackedWeights(weight: Kernels.tapMajor(layer.weight!), bias: layer.bias)
                        bytes += p.byteCount
                        steps.append(.floatConv(p, layer.geometry!, fused.fused))
                    } else {
                        let p = PackedWeights(weight: layer.weight!, bias: layer.bias)
                        bytes += p.byteCount
                        steps.append(.floatDense(p, fused.fused))
                    }
                }
                l += fused == .none ? 1 : 2
                continue
            case .maxpool2d: steps.append(domain == nil ? .maxpool(layer.geometry!) : .maxpoolU8(layer.geometry!))
            case .avgpool2d: steps.append(domain == nil ? .avgpool(layer.geometry!) : .avgpoolU8(layer.geometry!))
            case .globalavgpool:
                let c = layer.inputShape[0], p = layer.inputShape[1] * layer.inputShape[2]
                steps.append(domain == nil ? .globalAveragePool(channels: c, planeSize: p) : .globalAveragePoolU8(channels: c, planeSize: p))
            case .flatten: break
            case .relu, .relu6, .leakyrelu:
                let a = layer.kind.activation!
                if let p = domain {
                    switch a {
                    case .relu: steps.append(.clampU8(lo: UInt8(p.zeroPoint), hi: 255, count: layer.outputCount))
                    case .relu6:
                        let hi = min(255, Int(p.zeroPoint) + Int(min(255, (6 / p.scale).rounded())))
                        steps.append(.clampU8(lo: UInt8(p.zeroPoint), hi: UInt8(hi), count: layer.outputCount))
                    default:
                        toFloat()
                        steps.append(.activation(a, count: layer.outputCount))
                    }
                } else {
                    toFloat()
                    steps.append(.activation(a, count: layer.outputCount))
                }
            case .softmax:
                toFloat()
                steps.append(.softmax(columns: layer.outputCount))
            }
            l += 1
        }
        toFloat()
        // Fill in element counts for the boundary steps from the shapes they sit between.
        return (resolveCounts(steps, net), bytes)
    }

    /// Boundary steps were emitted with count 0; give each the element count of its tensor.
    static func resolveCounts(_ steps: [Step], _ net: Network) -> [Step] {
        var out: [Step] = []
        var count = net.inputCount
        for step in steps {
            switch step {
            case .quantize(let p, _): out.append(.quantize(p, count: count))
            case .dequantize(let p, _): out.append(.dequantize(p, count: count))
            default: out.append(step)
            }
            switch step {
            case .int8Dense(let w, _, _): count = w.outputs
            case .int8Conv(let w, _, let g, _, _): count = w.outputs * g.outH * g.outW
            case .int4Dense(let w, _): count = w.outputs
            case .floatDense(let w, _): count = w.outputs
            case .floatConv(let w, let g, _): count = w.outputs * g.outH * g.outW
            case .maxpoolU8(let g), .avgpoolU8(let g), .maxpool(let g), .avgpool(let g): count = g.channels * g.outH * g.outW
            case .globalAveragePoolU8(let c, _), .globalAveragePool(let c, _): count = c
            default: break
            }
        }
        return out
    }

    /// INT32 bias with the input zero point folded in, FP32 output scale, and the clamp.
    static func epilogue(_ q: Int8ChannelWeights, bias: Tensor?, input: QuantParams, output: QuantParams?,
                         activation: Kernels.Activation) -> QuantizedEpilogue {
        let ep = QuantizedEpilogue(outputs: q.outputs)
        for o in 0..<q.outputs {
            let accScale = input.scale * q.scales[o]
            let b = bias.map { Double($0[o]) / Double(accScale) } ?? 0
            var columnSum: Int64 = 0
            for k in 0..<q.inputs { columnSum += Int64(q.q[o * q.inputs + k]) }
            // Saturated in Double: a large bias over a small accumulator scale (or an underflowed scale) would trap in Int64().
            let total = b.rounded() - Double(input.zeroPoint) * Double(columnSum)
            ep.bias[o] = total.isNaN ? 0 : Int32(max(Double(Int32.min), min(Double(Int32.max), total)))
            ep.scale[o] = output.map { accScale / $0.scale } ?? accScale
        }
        if let output {
            ep.zeroPoint = output.zeroPoint
            ep.qmin = 0
            ep.qmax = 255
            switch activation {
            case .relu: ep.qmin = output.zeroPoint
            case .relu6:
                ep.qmin = output.zeroPoint
                ep.qmax = min(255, output.zeroPoint + Int32(min(255, (6 / output.scale).rounded())))
            default: break
            }
        }
        if case .leaky(let a) = activation { ep.leakyAlpha = a }
        if output == nil, activation == .relu || activation == .relu6 {
            // FP32 output: the clamp cannot express ReLU; a leaky slope of 0 can.
            ep.leakyAlpha = 0
        }
        return ep
    }

    // MARK: run

    @discardableResult
    public func run(_ input: UnsafePointer<Float>, batch: Int) -> UnsafeBufferPointer<Float> {
        precondition(batch >= 1 && batch <= batchCapacity, "batch \(batch) outside 1...\(batchCapacity)")
        let net = model.network
        net.preprocessing.apply(input, bufferA.assumingMemoryBound(to: Float.self), batch: batch, sampleCount: net.inputCount)
        var cur = bufferA, other = bufferB
        for (index, step) in steps.enumerated() {
            let f = cur.assumingMemoryBound(to: Float.self), u = cur.assumingMemoryBound(to: UInt8.self)
            if index == tapStep {
                if let p = tapInput { tap!.capture(u, scale: p.scale, zeroPoint: Int(p.zeroPoint), batch: batch) } else { tap!.capture(f, batch: batch) }
            }
            let of = other.assumingMemoryBound(to: Float.self), ou = other.assumingMemoryBound(to: UInt8.self)
            switch step {
            case .quantize(let p, let count): Quantization.quantize(f, count: batch * count, p, ou)
            case .dequantize(let p, let count): Quantization.dequantize(u, count: batch * count, p, of)
            case .int8Dense(let w, let ep, let floatOut):
                w.multiply(rows: batch, u, ldx: w.inputs, epilogue: ep, output: floatOut ? .float(of) : .uint8(ou), ldy: w.outputs)
            case .int8Conv(let w, let ep, let g, let zp, let floatOut):
                int8Conv(u, batch: batch, g, w, ep, zp, floatOut ? nil : ou, floatOut ? of : nil)
            case .int4Dense(let w, let act): w.multiply(rows: batch, f, ldx: w.inputs, of, ldy: w.outputs, activation: act)
            case .floatDense(let w, let act): w.multiply(rows: batch, f, ldx: w.inputs, of, ldy: w.outputs, activation: act)
            case .floatConv(let w, let g, let act):
                Kernels.conv2dPacked(f, batch: batch, g, weights: w, activation: act, workspace: workspace.assumingMemoryBound(to: Float.self), of)
            case .maxpoolU8(let g): poolU8(u, batch: batch, g, ou, average: false)
            case .avgpoolU8(let g): poolU8(u, batch: batch, g, ou, average: true)
            case .globalAveragePoolU8(let c, let p):
                for plane in 0..<(batch * c) {
                    var s = 0
                    for i in 0..<p { s &+= Int(u[plane * p + i]) }
                    ou[plane] = UInt8((s + p / 2) / p)
                }
            case .clampU8(let lo, let hi, let count):
                for i in 0..<(batch * count) { u[i] = min(max(u[i], lo), hi) }
            case .maxpool(let g): Kernels.maxpool2d(f, batch: batch, g, of)
            case .avgpool(let g): Kernels.avgpool2d(f, batch: batch, g, of)
            case .globalAveragePool(let c, let p): Kernels.globalAveragePool(f, planes: batch * c, planeSize: p, of)
            case .activation(let a, let count): Kernels.activate(f, count: batch * count, a)
            case .softmax(let columns): Kernels.softmax(f, rows: batch, columns: columns)
            }
            if !step.inPlace { swap(&cur, &other) }
        }
        let scores = cur.assumingMemoryBound(to: Float.self)
        samples += batch
        if let threshold = adaptiveThreshold { escalate(input, batch: batch, scores: scores, threshold: threshold) }
        return UnsafeBufferPointer(start: scores, count: batch * net.outputCount)
    }

    private func int8Conv(_ x: UnsafePointer<UInt8>, batch: Int, _ g: Kernels.ConvGeometry, _ w: PackedInt8Weights,
                          _ ep: QuantizedEpilogue, _ zp: UInt8, _ yu: UnsafeMutablePointer<UInt8>?, _ yf: UnsafeMutablePointer<Float>?) {
        let pixels = g.outH * g.outW, ld = w.paddedInputs
        let inCount = g.channels * g.height * g.width, outCount = g.outChannels * pixels
        let rows = workspace.assumingMemoryBound(to: UInt8.self)
        let product = workspace + pixels * ld   // UINT8 or FP32 [pixels, out]
        let hwc = (product + pixels * g.outChannels * (yf == nil ? 1 : 4)).assumingMemoryBound(to: UInt8.self)
        for s in 0..<batch {
            edge_im2row_u8(x + s * inCount, Int32(g.channels), Int32(g.height), Int32(g.width), Int32(g.kernelH), Int32(g.kernelW),
                           Int32(g.strideH), Int32(g.strideW), Int32(g.padH), Int32(g.padW), zp, hwc, rows, Int32(ld))
            if let yu {
                let p = product.assumingMemoryBound(to: UInt8.self)
                w.multiply(rows: pixels, rows, ldx: ld, epilogue: ep, output: .uint8(p), ldy: g.outChannels)
                edge_transpose_u8(p, Int32(pixels), Int32(g.outChannels), yu + s * outCount)
            } else if let yf {
                let p = product.assumingMemoryBound(to: Float.self)
                w.multiply(rows: pixels, rows, ldx: ld, epilogue: ep, output: .float(p), ldy: g.outChannels)
                edge_transpose(p, Int32(pixels), Int32(g.outChannels), yf + s * outCount)
            }
        }
    }

    private func poolU8(_ x: UnsafePointer<UInt8>, batch: Int, _ g: Kernels.ConvGeometry, _ y: UnsafeMutablePointer<UInt8>, average: Bool) {
        edge_pool_u8(x, Int32(batch * g.channels), Int32(g.height), Int32(g.width), Int32(g.kernelH), Int32(g.kernelW),
                     Int32(g.strideH), Int32(g.strideW), average ? 1 : 0, y)
    }

    /// Re-runs, in FP32, the samples whose top-1 margin is below `threshold`.
    private func escalate(_ input: UnsafePointer<Float>, batch: Int, scores: UnsafeMutablePointer<Float>, threshold: Float) {
        guard let fallback, let gather, let gatherIndex else { return }
        let k = outputCount, n = inputCount
        var count = 0
        for b in 0..<batch where Self.margin(scores + b * k, k) < threshold {
            (gather + count * n).update(from: input + b * n, count: n)
            gatherIndex[count] = b
            count += 1
        }
        guard count > 0 else { return }
        escalations += count
        let exact = fallback.run(gather, batch: count)
        for i in 0..<count { (scores + gatherIndex[i] * k).update(from: exact.baseAddress! + i * k, count: k) }
    }

    /// Top-1 score minus top-2 score.
    @inline(__always)
    public static func margin(_ s: UnsafePointer<Float>, _ k: Int) -> Float {
        guard k > 1 else { return .infinity }
        var a = -Float.infinity, b = -Float.infinity
        for i in 0..<k {
            let v = s[i]
            if v > a { b = a; a = v } else if v > b { b = v }
        }
        return a - b
    }
}
