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
        case conv2d(PackedWeights, geometry: Kernels.ConvGeometry, activation: FusedActivation)
        case maxpool2d(Kernels.ConvGeometry)
        case avgpool2d(Kernels.ConvGeometry)
        case globalAveragePool(channels: Int, planeSize: Int)
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

    public init(network: Network, batchCapacity: Int, embedding: EmbeddingProjection? = nil) {
        precondition(batchCapacity >= 1, "batch capacity must be at least 1")
        self.network = network
        self.batchCapacity = batchCapacity
        self.steps = Self.compile(network)
        if let embedding {
            precondition(embedding.layer == EmbeddingProjection.penultimateLayer(of: network)
                         && embedding.inputCount == network.layers[embedding.layer].inputCount, "projection does not fit the network")
            tap = EmbeddingTap(embedding, batchCapacity: batchCapacity)
            tapStep = steps.lastIndex { if case .dense = $0 { true } else if case .conv2d = $0 { true } else { false } }!
        } else {
            tap = nil
            tapStep = -1
        }
        let sizes = Self.bufferSizes(network)
        self.activationFloats = sizes.activation * batchCapacity
        self.workspaceFloats = sizes.workspace
        bufferA = allocateAlignedFloats(activationFloats)
        bufferB = allocateAlignedFloats(activationFloats)
        workspace = allocateAlignedFloats(workspaceFloats)
    }

    deinit {
        bufferA.deallocate()
        bufferB.deallocate()
        workspace.deallocate()
    }

    public var memory: MemoryEstimate { Self.memoryEstimate(network: network, batch: batchCapacity) }
    public var inputCount: Int { network.inputCount }
    public var outputCount: Int { network.outputCount }
    public var precision: String { "fp32" }
    public var embeddings: UnsafeBufferPointer<Float>? { tap?.embeddings }

    /// What a plan for `batch` samples would hold, without building it.
    public static func memoryEstimate(network: Network, batch: Int) -> MemoryEstimate {
        let sizes = bufferSizes(network)
        let packed = network.layers.reduce(0) { total, layer in
            guard let w = layer.weight else { return total }
            return total + edgePackedFloats(outputs: w.shape[0], inputs: w.count / w.shape[0]) * 4
        }
        return MemoryEstimate(weights: packed, workspace: sizes.workspace * 4,
                              activations: 2 * sizes.activation * batch * 4)
    }

    static func bufferSizes(_ network: Network) -> (activation: Int, workspace: Int) {
        var activation = network.inputCount
        var workspace = 0
        for layer in network.layers {
            activation = max(activation, layer.outputCount)
            if case .conv2d = layer.kind, let g = layer.geometry {
                workspace = max(workspace, Kernels.conv2dWorkspace(g))
            }
        }
        return (activation, workspace)
    }

    static func compile(_ network: Network) -> [Step] {
        var steps: [Step] = []
        let layers = network.layers
        var i = 0
        while i < layers.count {
            let layer = layers[i]
            let fused = network.fusedActivation(at: i)
            switch layer.kind {
            case .dense:
                steps.append(.dense(PackedWeights(weight: layer.weight!, bias: layer.bias), activation: fused.fused))
            case .conv2d:
                steps.append(.conv2d(PackedWeights(weight: Kernels.tapMajor(layer.weight!), bias: layer.bias), geometry: layer.geometry!,
                                     activation: fused.fused))
            case .maxpool2d: steps.append(.maxpool2d(layer.geometry!))
            case .avgpool2d: steps.append(.avgpool2d(layer.geometry!))
            case .globalavgpool:
                steps.append(.globalAveragePool(channels: layer.inputShape[0], planeSize: layer.inputShape[1] * layer.inputShape[2]))
            case .flatten: break
            case .relu, .relu6, .leakyrelu:
                steps.append(.activation(layer.kind.activation!, count: layer.outputCount))
            case .softmax: steps.append(.softmax(columns: layer.outputCount))
            }
            i += fused == .none ? 1 : 2
        }
        return steps
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
            case .conv2d(let w, let g, let act):
                Kernels.conv2dPacked(current, batch: batch, g, weights: w, activation: act, workspace: workspace, other)
            case .maxpool2d(let g): Kernels.maxpool2d(current, batch: batch, g, other)
            case .avgpool2d(let g): Kernels.avgpool2d(current, batch: batch, g, other)
            case .globalAveragePool(let c, let p): Kernels.globalAveragePool(current, planes: batch * c, planeSize: p, other)
            case .activation(let a, let count): Kernels.activate(current, count: batch * count, a)
            case .softmax(let columns): Kernels.softmax(current, rows: batch, columns: columns)
            }
            if step.swaps { swap(&current, &other) }
        }
        return UnsafeBufferPointer(start: current, count: batch * network.outputCount)
    }
}
