import Foundation
import Inference
import Tensor

/// What one epoch did.
public struct EpochReport: Sendable, Codable {
    public var epoch: Int
    public var loss: Float
    public var trainAccuracy: Float
    public var testAccuracy: Float?
    public var seconds: Double
}

/// Mini-batch training of a network with softmax cross-entropy. After the first step no step
/// allocates: batches are gathered into preallocated buffers.
public final class Trainer: @unchecked Sendable {
    public let network: Network
    public let graph: TrainingGraph
    public let optimizer: Optimizer
    public let batchSize: Int
    private var rng: SeededGenerator
    private let batchInput: UnsafeMutablePointer<Float>
    private let batchLabels: UnsafeMutablePointer<Int32>
    private var order: [Int] = []
    /// Called after every optimizer step (pruning masks re-zero the weights they removed).
    public var afterStep: (() -> Void)?
    /// Called before every forward pass and before every optimizer step: quantization-aware
    /// training puts fake-quantized weights in for the forward and backward passes and the FP32
    /// master weights back for the update (the straight-through estimator).
    public var beforeForward: (() -> Void)?
    public var beforeStep: (() -> Void)?
    /// Around the per-epoch test evaluation of `fit` (QAT evaluates the quantized weights).
    public var beforeEvaluation: (() -> Void)?
    public var afterEvaluation: (() -> Void)?
    /// The per-epoch test accuracy of `fit`, when not the FP32 network's (INT8 QAT evaluates the
    /// INT8 plan it is training for).
    public var evaluate: ((DataSet) -> Float)?

    /// - Parameters:
    ///   - network: trained in place (pass a copy to keep the original).
    ///   - trainable: tensor names to train; nil uses the network's own list, or all.
    public init(network: Network, optimizer kind: OptimizerKind, batchSize: Int, seed: UInt64, trainable: Set<String>? = nil) {
        self.network = network
        self.batchSize = batchSize
        graph = TrainingGraph(network: network, batchCapacity: batchSize, trainable: trainable)
        var pairs: [(parameter: Tensor, gradient: Tensor)] = []
        for (i, layer) in network.layers.enumerated() {
            if let g = graph.weightGrads[i], let w = layer.weight { pairs.append((w, g)) }
            if let g = graph.biasGrads[i], let b = layer.bias { pairs.append((b, g)) }
        }
        optimizer = Optimizer(kind: kind, pairs: pairs)
        rng = SeededGenerator(seed: seed)
        batchInput = .allocate(capacity: batchSize * network.inputCount)
        batchLabels = .allocate(capacity: batchSize)
    }

    deinit {
        batchInput.deallocate()
        batchLabels.deallocate()
    }

    /// One pass over `data` in a seeded shuffled order; returns (mean loss, accuracy).
    public func trainEpoch(_ data: DataSet) -> (loss: Float, accuracy: Float) {
        precondition(data.featureCount == network.inputCount, "data has \(data.featureCount) features, network takes \(network.inputCount)")
        guard let labels = data.labels, data.count > 0 else { return (0, 0) }
        if order.count != data.count { order = Array(0..<data.count) }
        rng.shuffle(&order)
        let n = data.featureCount
        var lossSum: Float = 0, correct = 0, start = 0
        data.features.withUnsafeBufferPointer { features in
            while start < data.count {
                let b = min(batchSize, data.count - start)
                for j in 0..<b {
                    let row = order[start + j]
                    (batchInput + j * n).update(from: features.baseAddress! + row * n, count: n)
                    batchLabels[j] = Int32(labels[row])
                }
                beforeForward?()
                let result = graph.lossAndGradients(batchInput, labels: batchLabels, batch: b)
                beforeStep?()
                optimizer.step()
                afterStep?()
                lossSum += result.loss * Float(b)
                correct += result.correct
                start += b
            }
        }
        return (lossSum / Float(data.count), Float(correct) / Float(data.count))
    }

    /// Trains for `epochs`, calling `progress` after each one (with test accuracy when `test` is given).
    /// The learning rate follows a cosine schedule to zero over the run.
    public func fit(_ train: DataSet, test: DataSet?, epochs: Int, progress: (EpochReport) -> Void) {
        for epoch in 1...max(epochs, 1) {
            optimizer.learningRateScale = 0.5 * (1 + cosf(Float.pi * Float(epoch - 1) / Float(max(epochs, 1))))
            let started = Date()
            let (loss, accuracy) = BLAS.withDenormalsFlushedToZero { trainEpoch(train) }
            let seconds = Date().timeIntervalSince(started)
            let testAccuracy = test.map { data -> Float in
                beforeEvaluation?()
                defer { afterEvaluation?() }
                return evaluate?(data) ?? Evaluation(network: network, data: data).accuracy
            }
            progress(EpochReport(epoch: epoch, loss: loss, trainAccuracy: accuracy, testAccuracy: testAccuracy, seconds: seconds))
        }
    }
}

/// Accuracy, per-class accuracy and confusion matrix of a network on labelled data.
public struct Evaluation: Sendable, Codable {
    public var samples: Int
    public var accuracy: Float
    public var perClass: [Float?]
    /// confusion[true][predicted]
    public var confusion: [[Int]]

    public init(network: Network, data: DataSet, batch: Int = 64) {
        let plan = ExecutionPlan(network: network, batchCapacity: batch)
        let scores = plan.predict(data.features)
        self.init(scores: scores, classes: network.outputCount, labels: data.labels ?? [])
    }

    public init(scores: [Float], classes: Int, labels: [Int]) {
        var confusion = Array(repeating: Array(repeating: 0, count: classes), count: classes)
        for (i, label) in labels.enumerated() {
            let row = scores[(i * classes)..<((i + 1) * classes)]
            let predicted = row.argmax()
            confusion[label][predicted] += 1
        }
        let correct = (0..<classes).reduce(0) { $0 + confusion[$1][$1] }
        samples = labels.count
        accuracy = labels.isEmpty ? 0 : Float(correct) / Float(labels.count)
        perClass = (0..<classes).map { c in
            let total = confusion[c].reduce(0, +)
            return total == 0 ? nil : Float(confusion[c][c]) / Float(total)
        }
        self.confusion = confusion
    }
}
