import CKernels
import ModelFile
import Tensor

/// Memory an execution plan needs for a batch size, in bytes.
public struct MemoryEstimate: Sendable, Equatable, Codable {
    public var weights: Int
    public var workspace: Int
    public var activations: Int
    public var total: Int { weights + workspace + activations }

    public init(weights: Int, workspace: Int, activations: Int) {
        self.weights = weights
        self.workspace = workspace
        self.activations = activations
    }
}

/// A network compiled for a batch capacity: shapes resolved, activation fused into the layer
/// before it, and every buffer allocated once. `run` allocates nothing.
///
/// A plan is not thread-safe: one thread runs it at a time (the scheduler gives each worker its own).
public final class ExecutionPlan: InferencePlan, @unchecked Sendable {
    enum Step {
        case dense(PackedWeights, activation: FusedActivation)
        /// Channels last in and out.
        case conv2d(FloatConvolution, geometry: Kernels.ConvGeometry, activation: FusedActivation)
        case maxpool2d(Kernels.ConvGeometry)
        case avgpool2d(Kernels.ConvGeometry)
        case globalAveragePool(channels: Int, pixels: Int)
        /// CHW → HWC per sample (before the first spatial layer, when there is more than one channel), and back.
        case toChannelsLast(channels: Int, pixels: Int)
        case toChannelsFirst(channels: Int, pixels: Int)
        case activation(Kernels.Activation, count: Int)
        case softmax(columns: Int)

        /// Whether the step writes into the other buffer (true) or works in place.
        var swaps: Bool {
            switch self {
            case .activation, .softmax: false
            default: true
            }
        }
    }

    public let network: Network
    public let batchCapacity: Int
    let steps: [Step]
    private let bufferA: UnsafeMutablePointer<Float>
    private let bufferB: UnsafeMutablePointer<Float>
    private let workspace: UnsafeMutablePointer<Float>
    private let activationFloats: Int
    private let workspaceFloats: Int

    private let tap: EmbeddingTap?
    /// Index in `steps` of the step whose input the tap projects.
    private let tapStep: Int

    /// `weights`: packed weights shared with the other plans of the same immutable model.
    public init(network: Network, batchCapacity: Int, embedding: EmbeddingProjection? = nil, weights: PackedWeightCache? = nil) {
        precondition(batchCapacity >= 1, "batch capacity must be at least 1")
        self.network = network
        self.batchCapacity = batchCapacity
        let compiled = Self.compile(network, batch: batchCapacity, weights: weights)
        self.steps = compiled.steps
        if let embedding {
            precondition(embedding.layer == EmbeddingProjection.penultimateLayer(of: network)
                         && embedding.inputCount == network.layers[embedding.layer].inputCount, "projection does not fit the network")
            tapStep = steps.lastIndex { if case .dense = $0 { true } else if case .conv2d = $0 { true } else { false } }!
            tap = EmbeddingTap(embedding, batchCapacity: batchCapacity, channelsLast: compiled.tapChannelsLast)
        } else {
            tap = nil
            tapStep = -1
        }
        let sizes = Self.bufferSizes(network, batch: batchCapacity)
        self.activationFloats = sizes.activation * batchCapacity
        self.workspaceFloats = sizes.workspace
        memory = Self.estimate(sizes, batch: batchCapacity)
        bufferA = allocateAlignedFloats(activationFloats)
        bufferB = allocateAlignedFloats(activationFloats)
        workspace = allocateAlignedFloats(workspaceFloats)
    }

    deinit {
        bufferA.deallocate()
        bufferB.deallocate()
        workspace.deallocate()
    }

    /// What `memoryEstimate` says for this plan, computed once (the same sizes its buffers have).
    public let memory: MemoryEstimate

    /// How many convolution steps read their input through an indirection table (the others take
    /// im2row rows or run by Winograd): what the plan chose, for tests.
    public var directConvolutions: Int {
        steps.reduce(0) { n, step in
            if case .conv2d(let c, _, _) = step, c.kind == .direct { return n + 1 }
            return n
        }
    }

    /// The compiled steps, one name each, in the names `QuantizedPlan.stepNames` uses ("fp32 conv2d
    /// (direct)", "fp32 dense", "fp32 maxpool", …): what actually runs, for `inspect`.
    public var stepNames: [String] {
        steps.map { step in
            switch step {
            case .dense: "fp32 dense"
            case .conv2d(let c, _, _): c.stepName
            case .maxpool2d: "fp32 maxpool"
            case .avgpool2d: "fp32 avgpool"
            case .globalAveragePool: "fp32 global average pool"
            case .toChannelsLast: "fp32 to channels last"
            case .toChannelsFirst: "fp32 to channels first"
            case .activation(let a, _): "fp32 \(a)"
            case .softmax: "softmax"
            }
        }
    }

    /// The packed weights' object identities, step by step (tests: which plans share them).
    public var packedWeightIdentities: [ObjectIdentifier] {
        steps.compactMap {
            switch $0 {
            case .dense(let w, _): ObjectIdentifier(w)
            case .conv2d(let c, _, _): c.weightsIdentity
            default: nil
            }
        }
    }
    public var inputCount: Int { network.inputCount }
    public var outputCount: Int { network.outputCount }
    public var precision: String { "fp32" }
    public var embeddings: UnsafeBufferPointer<Float>? { tap?.embeddings }

    /// What a plan for `batch` samples would hold, without building it.
    public static func memoryEstimate(network: Network, batch: Int) -> MemoryEstimate {
        estimate(bufferSizes(network, batch: batch), batch: batch)
    }

    private static func estimate(_ sizes: BufferSizes, batch: Int) -> MemoryEstimate {
        MemoryEstimate(weights: sizes.weightBytes, workspace: sizes.workspace * 4 + sizes.tableBytes, activations: 2 * sizes.activation * batch * 4)
    }

    typealias BufferSizes = (activation: Int, workspace: Int, tableBytes: Int, weightBytes: Int)

    /// Activation floats per sample, workspace floats for `batch` (the largest convolution's: im2row
    /// rows of a chunk, or a Winograd block), the bytes of the direct convolutions' indirection
    /// tables, and of the weights as packed for the kernels; each convolution's method chosen once.
    static func bufferSizes(_ network: Network, batch: Int) -> BufferSizes {
        var activation = network.inputCount
        var workspace = 0, tableBytes = 0, weightBytes = 0
        for layer in network.layers {
            activation = max(activation, layer.outputCount)
            guard let w = layer.weight else { continue }
            if case .conv2d = layer.kind, let g = layer.geometry {
                let kind = FloatConvolution.kind(g, weight: w)
                let need = FloatConvolution.workspace(kind, g, batch: batch)
                workspace = max(workspace, need.floats)
                tableBytes += need.tableBytes
                weightBytes += FloatConvolution.weightBytes(kind, g)
            } else {
                weightBytes += edgePackedFloats(outputs: w.shape[0], inputs: w.count / w.shape[0]) * 4
            }
        }
        return (activation, workspace, tableBytes, weightBytes)
    }

    /// Activations are channels last (HWC) from the first spatial layer on: convolutions unfold
    /// a chunk of samples straight into one GEMM whose output is already HWC (or read the input
    /// through an indirection table, or run by Winograd: `FloatConvolution`), and the first dense
    /// layer after them has its columns re-ordered at compile time. The file stays CHW.
    /// `tapChannelsLast`: the layout of the last weighted step's input (the embedding tap's), when
    /// it is channels last with more than one channel.
    static func compile(_ network: Network, batch: Int, weights: PackedWeightCache? = nil) -> (steps: [Step], tapChannelsLast: (channels: Int, pixels: Int)?) {
        var steps: [Step] = []
        var tapChannelsLast: (channels: Int, pixels: Int)? = nil
        let layers = network.layers
        var channelsLast: (channels: Int, pixels: Int)? = nil
        func toChannelsLast(_ shape: [Int]) {
            guard channelsLast == nil else { return }
            let c = shape[0], p = shape[1] * shape[2]
            if c > 1 { steps.append(.toChannelsLast(channels: c, pixels: p)) }
            channelsLast = (c, p)
        }
        func toChannelsFirst() {
            if let l = channelsLast, l.channels > 1 { steps.append(.toChannelsFirst(channels: l.channels, pixels: l.pixels)) }
            channelsLast = nil
        }
        var i = 0
        while i < layers.count {
            let layer = layers[i]
            let fused = network.fusedActivation(at: i)
            switch layer.kind {
            case .dense:
                tapChannelsLast = channelsLast.flatMap { $0.channels > 1 ? $0 : nil }
                let columns = channelsLast
                channelsLast = nil
                let packed = weights.value("fp32.\(i)", bytes: { $0.byteCount }) { () -> PackedWeights in
                    var w = layer.weight!
                    if let l = columns, l.channels > 1 { w = Kernels.channelsLastColumns(w, channels: l.channels, pixels: l.pixels) }
                    return PackedWeights(weight: w, bias: layer.bias)
                }
                steps.append(.dense(packed, activation: fused.fused))
            case .conv2d:
                let g = layer.geometry!
                toChannelsLast(layer.inputShape)
                tapChannelsLast = channelsLast.flatMap { $0.channels > 1 ? $0 : nil }
                let conv = FloatConvolution.make(weight: layer.weight!, bias: layer.bias, g, batch: batch, cache: weights, key: "fp32.\(i)")
                steps.append(.conv2d(conv, geometry: g, activation: fused.fused))
                channelsLast = (g.outChannels, g.outH * g.outW)
            case .maxpool2d, .avgpool2d:
                let g = layer.geometry!
                toChannelsLast(layer.inputShape)
                if case .maxpool2d = layer.kind { steps.append(.maxpool2d(g)) } else { steps.append(.avgpool2d(g)) }
                channelsLast = (g.channels, g.outH * g.outW)
            case .globalavgpool:
                toChannelsLast(layer.inputShape)
                steps.append(.globalAveragePool(channels: layer.inputShape[0], pixels: layer.inputShape[1] * layer.inputShape[2]))
                channelsLast = nil
            case .flatten: break
            case .relu, .relu6, .leakyrelu:
                steps.append(.activation(layer.kind.activation!, count: layer.outputCount))
            case .softmax:
                toChannelsFirst()
                steps.append(.softmax(columns: layer.outputCount))
            }
            i += fused == .none ? 1 : 2
        }
        // A network that ends on a spatial tensor answers in the file's order.
        toChannelsFirst()
        return (steps, tapChannelsLast)
    }

    /// Runs `batch` samples of raw input (before preprocessing) and returns the scores, valid until
    /// the next call: `[batch, classes]`.
    @discardableResult
    public func run(_ input: UnsafePointer<Float>, batch: Int) -> UnsafeBufferPointer<Float> {
        precondition(batch >= 1 && batch <= batchCapacity, "batch \(batch) outside 1...\(batchCapacity)")
        network.preprocessing.apply(input, bufferA, batch: batch, sampleCount: network.inputCount)
        var current = bufferA, other = bufferB
        for (index, step) in steps.enumerated() {
            if index == tapStep { tap!.capture(current, batch: batch) }
            switch step {
            case .dense(let w, let act):
                w.multiply(rows: batch, current, ldx: w.inputs, other, ldy: w.outputs, activation: act)
            case .conv2d(let c, let g, let act): c.run(current, batch: batch, g, activation: act, workspace: workspace, other)
            case .maxpool2d(let g), .avgpool2d(let g):
                var average: Int32 = 0
                if case .avgpool2d = step { average = 1 }
                edge_pool_nhwc_f32(current, Int32(batch), Int32(g.height), Int32(g.width), Int32(g.channels), Int32(g.kernelH),
                                   Int32(g.kernelW), Int32(g.strideH), Int32(g.strideW), average, other)
            case .globalAveragePool(let c, let p): edge_global_pool_nhwc_f32(current, Int32(batch), Int32(p), Int32(c), other)
            case .toChannelsLast(let c, let p):
                for s in 0..<batch { edge_transpose(current + s * c * p, Int32(c), Int32(p), other + s * c * p) }
            case .toChannelsFirst(let c, let p):
                for s in 0..<batch { edge_transpose(current + s * c * p, Int32(p), Int32(c), other + s * c * p) }
            case .activation(let a, let count): Kernels.activate(current, count: batch * count, a)
            case .softmax(let columns): Kernels.softmax(current, rows: batch, columns: columns)
            }
            if step.swaps { swap(&current, &other) }
        }
        return UnsafeBufferPointer(start: current, count: batch * network.outputCount)
    }
}
