import Foundation
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
        /// Channels last in and out: `chunk` samples per GEMM over their im2row rows, or (VNNI, see
        /// `PackedInt8Weights.convolvesDirectly`) every sample through an indirection table.
        case int8Conv(PackedInt8Weights, QuantizedEpilogue, Kernels.ConvGeometry, inputZeroPoint: UInt8, floatOutput: Bool,
                      method: Kernels.ConvMethod)
        /// A single-channel image's convolution to UINT8 without im2row rows (see `SingleChannelInt8Conv`).
        case int8SingleChannelConv(SingleChannelInt8Conv, QuantizedEpilogue, Kernels.ConvGeometry, inputZeroPoint: UInt8)
        /// FP32 rows in and out (each row quantized on its own on the integer paths), or, with
        /// calibrated `input` parameters on W4A8 (`PackedInt4Weights.acceptsUInt8`), UINT8 rows in
        /// and UINT8 rows out where `output` is given (the next layer reads UINT8), FP32 otherwise.
        case int4Dense(PackedInt4Weights, FusedActivation, input: QuantParams?, output: QuantParams?)
        case floatDense(PackedWeights, FusedActivation)
        case floatConv(FloatConvolution, Kernels.ConvGeometry, FusedActivation)
        case maxpoolU8(Kernels.ConvGeometry)
        case avgpoolU8(Kernels.ConvGeometry)
        case globalAveragePoolU8(channels: Int, planeSize: Int)
        case clampU8(lo: UInt8, hi: UInt8, count: Int)
        case maxpool(Kernels.ConvGeometry)
        case avgpool(Kernels.ConvGeometry)
        case globalAveragePool(channels: Int, planeSize: Int)
        /// CHW → HWC per sample before the first spatial layer (more than one channel), and back.
        case toChannelsLast(channels: Int, pixels: Int, uint8: Bool)
        case toChannelsFirst(channels: Int, pixels: Int, uint8: Bool)
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
    /// The direct FP32 convolutions' indirection tables (reported as workspace).
    private let tableBytes: Int
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

    /// `weights`: packed weights shared with the other plans of the same model (and the fallback's).
    /// `singleChannelConv: false` runs a single-channel INT8 convolution as im2row + GEMM even
    /// where `SingleChannelInt8Conv` applies (the two give identical outputs; to compare them);
    /// `int8DirectConv: false` the same for the convolution through an indirection table on VNNI;
    /// `int4StaticActivations: false` (or `EDGE_INT4_STATIC=0`) quantizes each FP32 row of an INT4
    /// layer on its own even where its calibrated input parameters could be used (to compare).
    public init(model: QuantizedModel, batchCapacity: Int, adaptive: AdaptivePrecision.Mode? = nil,
                embedding: EmbeddingProjection? = nil, weights: PackedWeightCache? = nil, singleChannelConv: Bool = true,
                int8DirectConv: Bool = true, int4StaticActivations: Bool = true) {
        precondition(batchCapacity >= 1)
        self.model = model
        self.batchCapacity = batchCapacity
        let compiled = Self.compile(model, batch: batchCapacity, weights: weights, singleChannelConv: singleChannelConv,
                                    int8DirectConv: int8DirectConv, int4StaticActivations: int4StaticActivations)
        steps = compiled.steps
        if let embedding {
            precondition(embedding.layer == EmbeddingProjection.penultimateLayer(of: model.network)
                         && embedding.inputCount == model.network.layers[embedding.layer].inputCount, "projection does not fit the network")
            let index = compiled.steps.lastIndex {
                switch $0 {
                case .int8Dense, .int8Conv, .int8SingleChannelConv, .int4Dense, .floatDense, .floatConv: true
                default: false
                }
            }!
            tapStep = index
            switch compiled.steps[index] {
            case .int8Dense, .int8Conv, .int8SingleChannelConv: tapInput = model.spec.activation(embedding.layer)
            case .int4Dense(_, _, let input, _): tapInput = input
            default: tapInput = nil
            }
            tap = EmbeddingTap(embedding, batchCapacity: batchCapacity, quantizedInput: tapInput != nil, channelsLast: compiled.tapChannelsLast)
        } else {
            tap = nil
            tapStep = -1
            tapInput = nil
        }
        weightBytes = compiled.weightBytes
        let net = model.network
        var maxActivation = net.inputCount
        var work = 16, tableBytes = 0
        for l in net.layers {
            maxActivation = max(maxActivation, l.outputCount)
        }
        for step in compiled.steps {
            switch step {
            case .int8Conv(let w, _, let g, _, _, .im2row(let chunk)): work = max(work, chunk * g.outH * g.outW * w.paddedInputs + 64)
            case .int8Conv(_, _, let g, _, _, .direct(let t)):
                tableBytes += t.byteCount
                work = max(work, g.channels)  // the padding tap's bytes
            case .floatConv(let c, let g, _):
                let need = FloatConvolution.workspace(c.kind, g, batch: batchCapacity)
                work = max(work, need.floats * 4)
                tableBytes += need.tableBytes
            case .int4Dense(let w, _, _, _): work = max(work, w.scratchFloats * 4)
            default: break
            }
        }
        // 64 spare bytes: INT8 kernels read rows in 4-byte quads.
        bufferBytes = maxActivation * batchCapacity * 4 + 64
        workspaceBytes = work
        self.tableBytes = tableBytes
        bufferA = .allocate(byteCount: bufferBytes, alignment: 64)
        bufferB = .allocate(byteCount: bufferBytes, alignment: 64)
        workspace = .allocate(byteCount: workspaceBytes, alignment: 64)
        bufferA.initializeMemory(as: UInt8.self, repeating: 0, count: bufferBytes)
        bufferB.initializeMemory(as: UInt8.self, repeating: 0, count: bufferBytes)
        workspace.initializeMemory(as: UInt8.self, repeating: 0, count: workspaceBytes)
        let mode = adaptive ?? model.spec.adaptive?.mode ?? .off
        if mode != .off, let threshold = model.spec.adaptive?.threshold {
            adaptiveThreshold = threshold
            fallback = ExecutionPlan(network: net, batchCapacity: batchCapacity, weights: weights)
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
            case .int8Conv(_, _, _, _, let f, let method):
                "int8 conv2d" + (f ? " -> fp32" : "") + method.stepSuffix
            case .int8SingleChannelConv: "int8 conv2d (single channel)"
            case .int4Dense(_, _, let input, let output): input == nil ? "int4 dense" : "int4 dense (uint8 in" + (output == nil ? ")" : ", uint8 out)")
            case .floatDense: "fp32 dense"
            case .floatConv(let c, _, _): c.stepName
            case .maxpoolU8: "uint8 maxpool"
            case .avgpoolU8: "uint8 avgpool"
            case .globalAveragePoolU8: "uint8 global average pool"
            case .clampU8: "uint8 clamp"
            case .maxpool: "fp32 maxpool"
            case .avgpool: "fp32 avgpool"
            case .globalAveragePool: "fp32 global average pool"
            case .toChannelsLast(_, _, let u): (u ? "uint8" : "fp32") + " to channels last"
            case .toChannelsFirst(_, _, let u): (u ? "uint8" : "fp32") + " to channels first"
            case .activation(let a, _): "fp32 \(a)"
            case .softmax: "softmax"
            }
        }
    }

    /// The INT8 kernels the integer layers run, each named once in layer order ("avx2 vpmaddwd",
    /// or "avx2 vpmaddubsw (…)" for 7-bit weights); empty without INT8 layers.
    public var int8Kernels: [String] {
        var names: [String] = []
        for step in steps {
            switch step {
            case .int8Dense(let w, _, _), .int8Conv(let w, _, _, _, _, _):
                if !names.contains(w.kernelName) { names.append(w.kernelName) }
            case .int8SingleChannelConv(let c, _, _, _):
                if !names.contains(c.kernelName) { names.append(c.kernelName) }
            default: break
            }
        }
        return names
    }

    public var memory: MemoryEstimate {
        var m = MemoryEstimate(weights: weightBytes, workspace: workspaceBytes + tableBytes, activations: 2 * bufferBytes)
        if let fallback {
            m.weights += fallback.memory.weights
            m.workspace += fallback.memory.workspace
            m.activations += fallback.memory.activations
        }
        return m
    }

    // MARK: compile

    /// As the FP32 plan: activations channels last (HWC) from the first spatial layer on,
    /// convolutions batched over chunks of samples, the first dense layer after them with its
    /// columns re-ordered (an INT4 layer, whose groups follow the file's order, gets CHW back).
    static func compile(_ model: QuantizedModel, batch: Int, weights: PackedWeightCache? = nil, singleChannelConv: Bool = true,
                        int8DirectConv: Bool = true, int4StaticActivations: Bool = true) -> (steps: [Step], weightBytes: Int, tapChannelsLast: (channels: Int, pixels: Int)?) {
        let net = model.network, spec = model.spec
        var steps: [Step] = []
        var bytes = 0
        var domain: QuantParams? = nil  // nil: FP32
        var channelsLast: (channels: Int, pixels: Int)? = nil
        /// The layout of the last weighted step's input (the embedding tap's).
        var tapChannelsLast: (channels: Int, pixels: Int)? = nil
        func toChannelsLast(_ shape: [Int]) {
            guard channelsLast == nil else { return }
            let c = shape[0], p = shape[1] * shape[2]
            if c > 1 { steps.append(.toChannelsLast(channels: c, pixels: p, uint8: domain != nil)) }
            channelsLast = (c, p)
        }
        func toChannelsFirst() {
            if let l = channelsLast, l.channels > 1 { steps.append(.toChannelsFirst(channels: l.channels, pixels: l.pixels, uint8: domain != nil)) }
            channelsLast = nil
        }
        /// Entering a dense layer: its columns follow the HWC order when the input is channels last.
        func denseInput() -> (channels: Int, pixels: Int)? {
            defer { channelsLast = nil }
            return channelsLast.flatMap { $0.channels > 1 ? $0 : nil }
        }
        let layers = net.layers
        func precision(_ l: Int) -> LayerPrecision {
            if model.int8[l] != nil { return .int8 }
            if model.int4[l] != nil { return .int4 }
            return .fp32
        }
        /// The INT4 layers that read UINT8 with their input tensor's calibrated parameters: where
        /// the file asks for it (`int4_activations: static`), gives the parameters, and the W4A8
        /// kernel runs. The others quantize each FP32 row on its own.
        let staticInt4 = int4StaticActivations && spec.int4ActivationsOrDefault == .calibrated
            && ProcessInfo.processInfo.environment["EDGE_INT4_STATIC"] != "0"
        let int4UInt8 = Set(model.int4.compactMap { l, q in
            staticInt4 && spec.activation(l) != nil && PackedInt4Weights.acceptsUInt8(group: q.group) ? l : nil
        })
        func readsUInt8(_ l: Int) -> Bool { precision(l) == .int8 || int4UInt8.contains(l) }
        func toFloat() {
            if let p = domain {
                steps.append(.dequantize(p, count: 0))
                domain = nil
            }
        }
        /// Into the UINT8 domain of `input`, through FP32 from any other.
        func enter(_ input: QuantParams) {
            if domain != input {
                toFloat()
                steps.append(.quantize(input, count: 0))
                domain = input
            }
        }
        /// The parameters integer layer `l` writes UINT8 with, or nil where it writes FP32.
        func uint8Output(of l: Int) -> QuantParams? {
            QuantizedModel.uint8OutputTensor(of: l, network: net, readsUInt8: readsUInt8).flatMap { spec.activation($0) }
        }
        var l = 0
        while l < layers.count {
            let layer = layers[l]
            let fused = net.fusedActivation(at: l)
            switch layer.kind {
            case .dense, .conv2d:
                if case .conv2d = layer.kind { toChannelsLast(layer.inputShape) }
                if case .dense = layer.kind, precision(l) == .int4 {
                    if !int4UInt8.contains(l) { toFloat() }
                    toChannelsFirst()
                }
                tapChannelsLast = channelsLast.flatMap { $0.channels > 1 ? $0 : nil }
                switch precision(l) {
                case .int8:
                    let q = model.int8[l]!
                    let input = spec.activation(l)!
                    enter(input)
                    let out = uint8Output(of: l)
                    let floatOut = out == nil
                    let ep = epilogue(q, bias: layer.bias, input: input, output: out, activation: fused)
                    if case .conv2d = layer.kind, let g = layer.geometry, !floatOut, singleChannelConv,
                       let conv = weights.optionalValue("int8.single-channel.\(l)", bytes: { $0.byteCount }, make: { Self.makeSingleChannelConv(q, g) }) {
                        bytes += conv.byteCount + ep.count * 8
                        steps.append(.int8SingleChannelConv(conv, ep, g, inputZeroPoint: UInt8(input.zeroPoint)))
                        channelsLast = (g.outChannels, g.outH * g.outW)
                    } else if case .conv2d = layer.kind {
                        let g = layer.geometry!
                        let packed = weights.value("int8.\(l)", bytes: { $0.byteCount }) { q.packed() }
                        bytes += packed.byteCount + ep.count * 8
                        let method: Kernels.ConvMethod
                        if int8DirectConv, packed.convolvesDirectly(channels: g.channels), let table = Kernels.indirection(g) {
                            method = .direct(table)
                        } else {
                            method = .im2row(chunk: Kernels.convChunk(bytesPerSample: g.outH * g.outW * packed.paddedInputs, batch: batch))
                        }
                        steps.append(.int8Conv(packed, ep, g, inputZeroPoint: UInt8(input.zeroPoint), floatOutput: floatOut, method: method))
                        channelsLast = (g.outChannels, g.outH * g.outW)
                    } else {
                        let columns = denseInput()
                        let packed = weights.value("int8.\(l)", bytes: { $0.byteCount }) { () -> PackedInt8Weights in
                            guard let c = columns else { return q.packed() }
                            return q.channelsLast(channels: c.channels, pixels: c.pixels).packed()
                        }
                        bytes += packed.byteCount + ep.count * 8
                        steps.append(.int8Dense(packed, ep, floatOutput: floatOut))
                    }
                    domain = out
                    if floatOut, fused == .relu6 {
                        // The FP32 epilogue applies ReLU only; the upper clamp at 6 follows.
                        steps.append(.activation(.relu6, count: layers[l + 1].outputCount))
                    }
                case .int4:
                    let q = weights.value("int4.\(l)", bytes: { $0.byteCount }) { model.int4[l]!.packed(bias: layer.bias) }
                    bytes += q.byteCount
                    // (Weights from the cache were packed for the same ISA; were they not, FP32 rows stay correct.)
                    if int4UInt8.contains(l), q.acceptsUInt8, let input = spec.activation(l) {
                        enter(input)
                        let out = uint8Output(of: l)
                        steps.append(.int4Dense(q, fused.fused, input: input, output: out))
                        domain = out
                    } else {
                        toFloat()
                        steps.append(.int4Dense(q, fused.fused, input: nil, output: nil))
                    }
                case .fp32:
                    toFloat()
                    if case .conv2d = layer.kind {
                        let g = layer.geometry!
                        let conv = FloatConvolution.make(weight: layer.weight!, bias: layer.bias, g, batch: batch, cache: weights,
                                                         key: "quantized.fp32.\(l)")
                        bytes += conv.byteCount
                        steps.append(.floatConv(conv, g, fused.fused))
                        channelsLast = (g.outChannels, g.outH * g.outW)
                    } else {
                        let columns = denseInput()
                        let p = weights.value("quantized.fp32.\(l)", bytes: { $0.byteCount }) { () -> PackedWeights in
                            var w = layer.weight!
                            if let c = columns { w = Kernels.channelsLastColumns(w, channels: c.channels, pixels: c.pixels) }
                            return PackedWeights(weight: w, bias: layer.bias)
                        }
                        bytes += p.byteCount
                        steps.append(.floatDense(p, fused.fused))
                    }
                }
                l += fused == .none ? 1 : 2
                continue
            case .maxpool2d, .avgpool2d:
                let g = layer.geometry!
                toChannelsLast(layer.inputShape)
                if case .maxpool2d = layer.kind {
                    steps.append(domain == nil ? .maxpool(g) : .maxpoolU8(g))
                } else {
                    steps.append(domain == nil ? .avgpool(g) : .avgpoolU8(g))
                }
                channelsLast = (g.channels, g.outH * g.outW)
            case .globalavgpool:
                toChannelsLast(layer.inputShape)
                let c = layer.inputShape[0], p = layer.inputShape[1] * layer.inputShape[2]
                steps.append(domain == nil ? .globalAveragePool(channels: c, planeSize: p) : .globalAveragePoolU8(channels: c, planeSize: p))
                channelsLast = nil
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
                toChannelsFirst()
                steps.append(.softmax(columns: layer.outputCount))
            }
            l += 1
        }
        toFloat()
        // A network that ends on a spatial tensor answers in the file's order.
        toChannelsFirst()
        // Fill in element counts for the boundary steps from the shapes they sit between.
        return (resolveCounts(steps, net), bytes, tapChannelsLast)
    }

    /// The single-channel convolution kernel for an INT8 conv layer, where it applies (see
    /// `SingleChannelInt8Conv`); `EDGE_SINGLE_CHANNEL_CONV=0` keeps im2row + GEMM (to compare).
    static func makeSingleChannelConv(_ q: Int8ChannelWeights, _ g: Kernels.ConvGeometry) -> SingleChannelInt8Conv? {
        guard g.channels == 1, q.outputs == g.outChannels, q.inputs == g.kernelH * g.kernelW,
              ProcessInfo.processInfo.environment["EDGE_SINGLE_CHANNEL_CONV"] != "0" else { return nil }
        return q.q.withUnsafeBufferPointer {
            SingleChannelInt8Conv(weight: $0.baseAddress!, outputs: q.outputs, height: g.height, width: g.width, kernelH: g.kernelH,
                                  kernelW: g.kernelW, strideH: g.strideH, strideW: g.strideW, padH: g.padH, padW: g.padW)
        }
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
            case .int8Conv(let w, _, let g, _, _, _): count = w.outputs * g.outH * g.outW
            case .int8SingleChannelConv(_, _, let g, _): count = g.outChannels * g.outH * g.outW
            case .int4Dense(let w, _, _, _): count = w.outputs
            case .floatDense(let w, _): count = w.outputs
            case .floatConv(_, let g, _): count = g.outChannels * g.outH * g.outW
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
            case .int8Conv(let w, let ep, let g, let zp, let floatOut, .im2row(let chunk)):
                int8Conv(u, batch: batch, g, w, ep, zp, chunk: chunk, floatOut ? nil : ou, floatOut ? of : nil)
            case .int8Conv(let w, let ep, _, let zp, let floatOut, .direct(let table)):
                let pad = workspace.assumingMemoryBound(to: UInt8.self)
                pad.update(repeating: zp, count: table.channels)
                w.convolve(samples: batch, u, table, pad: pad, epilogue: ep, output: floatOut ? .float(of) : .uint8(ou), ldy: w.outputs)
            case .int8SingleChannelConv(let c, let ep, _, let zp): c.run(samples: batch, u, pad: zp, epilogue: ep, output: ou)
            case .int4Dense(let w, let act, nil, _):
                w.multiply(rows: batch, f, ldx: w.inputs, of, ldy: w.outputs, activation: act,
                           scratch: workspace.assumingMemoryBound(to: Float.self))
            case .int4Dense(let w, let act, let input?, let output):
                w.multiply(rows: batch, uint8: u, ldx: w.inputs, inputScale: input.scale, inputZeroPoint: input.zeroPoint,
                           output: output == nil ? .float(of) : .uint8(ou), outputScale: output?.scale ?? 1,
                           outputZeroPoint: output?.zeroPoint ?? 0, ldy: w.outputs, activation: act,
                           scratch: workspace.assumingMemoryBound(to: Float.self))
            case .floatDense(let w, let act): w.multiply(rows: batch, f, ldx: w.inputs, of, ldy: w.outputs, activation: act)
            case .floatConv(let c, let g, let act):
                c.run(f, batch: batch, g, activation: act, workspace: workspace.assumingMemoryBound(to: Float.self), of)
            case .maxpoolU8(let g): poolU8(u, batch: batch, g, ou, average: false)
            case .avgpoolU8(let g): poolU8(u, batch: batch, g, ou, average: true)
            case .globalAveragePoolU8(let c, let p): edge_global_pool_nhwc_u8(u, Int32(batch), Int32(p), Int32(c), ou)
            case .clampU8(let lo, let hi, let count):
                for i in 0..<(batch * count) { u[i] = min(max(u[i], lo), hi) }
            case .maxpool(let g), .avgpool(let g):
                var average: Int32 = 0
                if case .avgpool = step { average = 1 }
                edge_pool_nhwc_f32(f, Int32(batch), Int32(g.height), Int32(g.width), Int32(g.channels), Int32(g.kernelH), Int32(g.kernelW),
                                   Int32(g.strideH), Int32(g.strideW), average, of)
            case .globalAveragePool(let c, let p): edge_global_pool_nhwc_f32(f, Int32(batch), Int32(p), Int32(c), of)
            case .toChannelsLast(let c, let p, let uint8):
                for s in 0..<batch {
                    if uint8 { edge_transpose_u8(u + s * c * p, Int32(c), Int32(p), ou + s * c * p) } else { edge_transpose(f + s * c * p, Int32(c), Int32(p), of + s * c * p) }
                }
            case .toChannelsFirst(let c, let p, let uint8):
                for s in 0..<batch {
                    if uint8 { edge_transpose_u8(u + s * c * p, Int32(p), Int32(c), ou + s * c * p) } else { edge_transpose(f + s * c * p, Int32(p), Int32(c), of + s * c * p) }
                }
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

    /// `chunk` channels-last samples at a time: their im2row rows (each `paddedInputs` bytes, the
    /// padding taps at the input zero point) into one INT8 GEMM whose output rows are channels last.
    private func int8Conv(_ x: UnsafePointer<UInt8>, batch: Int, _ g: Kernels.ConvGeometry, _ w: PackedInt8Weights,
                          _ ep: QuantizedEpilogue, _ zp: UInt8, chunk: Int, _ yu: UnsafeMutablePointer<UInt8>?, _ yf: UnsafeMutablePointer<Float>?) {
        let pixels = g.outH * g.outW, ld = w.paddedInputs
        let inCount = g.channels * g.height * g.width, outCount = g.outChannels * pixels
        let rows = workspace.assumingMemoryBound(to: UInt8.self)
        var s0 = 0
        while s0 < batch {
            let n = min(chunk, batch - s0)
            edge_im2row_nhwc_u8_batch(x + s0 * inCount, Int32(n), inCount, Int32(g.channels), Int32(g.height), Int32(g.width), Int32(g.kernelH),
                                      Int32(g.kernelW), Int32(g.strideH), Int32(g.strideW), Int32(g.padH), Int32(g.padW), zp, rows, Int32(ld))
            if let yu {
                w.multiply(rows: n * pixels, rows, ldx: ld, epilogue: ep, output: .uint8(yu + s0 * outCount), ldy: g.outChannels)
            } else if let yf {
                w.multiply(rows: n * pixels, rows, ldx: ld, epilogue: ep, output: .float(yf + s0 * outCount), ldy: g.outChannels)
            }
            s0 += n
        }
    }

    private func poolU8(_ x: UnsafePointer<UInt8>, batch: Int, _ g: Kernels.ConvGeometry, _ y: UnsafeMutablePointer<UInt8>, average: Bool) {
        edge_pool_nhwc_u8(x, Int32(batch), Int32(g.height), Int32(g.width), Int32(g.channels), Int32(g.kernelH), Int32(g.kernelW),
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
