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
    /// Packed weights, once for all the plans of this model (workers, larger batches, fallback).
    public let packedWeights = PackedWeightCache()

    /// Bytes of the model file as read, which the network's tensors point into, plus the tensors
    /// made from it at load (widened, folded, rebuilt from integer weights).
    public let fileBytes: Int

    public init(version: Int, network: Network, quantized: QuantizedModel?, useAdaptive: Bool = true,
                embedding: EmbeddingProjection? = nil, observer: (any RowObserver)? = nil, sampler: (any RowObserver)? = nil,
                fileBytes: Int = 0) {
        self.version = version
        self.fileBytes = fileBytes
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
            return QuantizedPlan(model: quantized, batchCapacity: batch, adaptive: useAdaptive ? nil : .off, embedding: embedding,
                                 weights: packedWeights)
        }
        return ExecutionPlan(network: network, batchCapacity: batch, embedding: embedding, weights: packedWeights)
    }

    public var precision: String {
        guard let quantized else { return "fp32" }
        return quantized.precisionName + (useAdaptive && quantized.spec.adaptive.map { $0.mode != .off } == true ? "+adaptive" : "")
    }

    /// What this model holds in memory when `plans` plans of `batch` samples serve it (one per
    /// worker): the file as read (the FP32 weights are views into it), the integer weights the
    /// quantization section decodes to, the packed weights the plans share, and each plan's own
    /// buffers. The plans' buffers are measured by building one such plan (the first call for a
    /// batch size; remembered after).
    public func memory(plans: Int, batch: Int) -> ModelMemory {
        let buffers = planBuffers(batch: max(1, batch))
        var decoded = 0
        if let quantized {
            for w in quantized.int8.values { decoded += w.q.count + w.scales.count * 4 }
            for w in quantized.int4.values { decoded += w.q.count + w.scales.count * 4 }
        }
        return ModelMemory(file: fileBytes, decoded: decoded, packed: packedWeights.bytes, planBuffers: buffers, plans: plans)
    }

    private let buffersLock = NSLock()
    private var buffersByBatch: [Int: Int] = [:]
    private func planBuffers(batch: Int) -> Int {
        buffersLock.lock()
        let known = buffersByBatch[batch]
        buffersLock.unlock()
        if let known { return known }
        // Built outside the lock (concurrent first calls may each build one; they agree).
        let m = makePlan(batch: batch).memory
        buffersLock.lock()
        buffersByBatch[batch] = m.workspace + m.activations
        buffersLock.unlock()
        return m.workspace + m.activations
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

/// A serving model's memory, by what holds it.
public struct ModelMemory: Sendable, Equatable, Codable {
    /// The model file as read (F32 weights are views into it) and the FP32 tensors made from it at
    /// load (F16 widened, batch norm folded, an integer-only file's weights rebuilt).
    public var file: Int
    /// INT8 and INT4 weights decoded from the quantization section (one byte a weight) and their scales.
    public var decoded: Int
    /// Weights packed for the kernels, once for all plans.
    public var packed: Int
    /// One plan's activation buffers and workspace (its fallback's included).
    public var planBuffers: Int
    public var plans: Int
    public var total: Int { file + decoded + packed + planBuffers * plans }
}

extension QuantizedPlan: EscalationCounting {
    public var escalationCount: Int { escalations }
}
