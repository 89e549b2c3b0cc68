import Foundation
import Inference
import Quantization

/// A model ready to serve: the FP32 network, its quantization if any, and how to build plans.
/// Immutable; swapped as a whole through `ModelSlot`.
public final class ServingModel: @unchecked Sendable {
    /// Registry version (the number rollback takes).
    public let version: Int
    public let name: String
    public let network: Network
    public let quantized: QuantizedModel?
    public let useAdaptive: Bool
    /// Projection of the penultimate activations the plans compute (for the drift monitor).
    public let embedding: EmbeddingProjection?
    /// Sees every answered row of this model (the drift monitor), before the answer is sent.
    public let observer: (any RowObserver)?
    /// Also sees every answered row, after the observer: the replay memory's live sampler.
    public let sampler: (any RowObserver)?
    /// A plan's memory is fixed + perSample · batch; measured once here, when the model is loaded,
    /// so that sizing a batch on the serving path is arithmetic.
    private var planMemory: (fixed: Int, perSample: Int) = (0, 1)

    public init(version: Int, network: Network, quantized: QuantizedModel?, useAdaptive: Bool = true,
                embedding: EmbeddingProjection? = nil, observer: (any RowObserver)? = nil, sampler: (any RowObserver)? = nil) {
        self.version = version
        self.name = network.name
        self.network = network
        self.quantized = quantized
        self.useAdaptive = useAdaptive
        self.embedding = embedding
        self.observer = observer
        self.sampler = sampler
        let one = makePlan(batch: 1).memory.total, two = makePlan(batch: 2).memory.total
        planMemory = (one - max(two - one, 1), max(two - one, 1))
    }

    public var inputCount: Int { network.inputCount }
    public var outputCount: Int { network.outputCount }
    public var labels: [String] { network.labels }

    public func makePlan(batch: Int) -> InferencePlan {
        if let quantized {
            return QuantizedPlan(model: quantized, batchCapacity: batch, adaptive: useAdaptive ? nil : .off, embedding: embedding)
        }
        return ExecutionPlan(network: network, batchCapacity: batch, embedding: embedding)
    }

    public var precision: String {
        guard let quantized else { return "fp32" }
        return quantized.precisionName + (useAdaptive && quantized.spec.adaptive.map { $0.mode != .off } == true ? "+adaptive" : "")
    }

    /// The largest batch whose plan fits `budgetBytes` (at least 1), up to `limit`.
    public func batchLimit(budgetBytes: Int, limit: Int) -> Int {
        let (fixed, perSample) = planMemory
        guard budgetBytes > fixed + perSample else { return 1 }
        return max(1, min(limit, (budgetBytes - fixed) / perSample))
    }
}

/// The serving model, swapped atomically: a batch takes a reference when it starts and finishes on
/// that model; the next batch takes the new one; the old model is freed when its last batch ends.
public final class ModelSlot: @unchecked Sendable {
    private let lock = NSLock()
    private var model: ServingModel?

    public init(_ model: ServingModel? = nil) { self.model = model }

    public var current: ServingModel? {
        lock.lock()
        defer { lock.unlock() }
        return model
    }

    @discardableResult
    public func swap(_ new: ServingModel) -> ServingModel? {
        lock.lock()
        defer { lock.unlock() }
        let old = model
        model = new
        return old
    }
}

extension QuantizedPlan: EscalationCounting {
    public var escalationCount: Int { escalations }
}
