import Foundation
import Inference
import Tensor
import Training

/// Knowledge distillation (Hinton et al. 2015): a student trained on
/// (1 − α)·CE(hard labels) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)).
/// The T² keeps the soft term's gradient on the scale of the hard one as T grows.
public enum Distillation {
    public struct Settings: Sendable {
        public var temperature: Float = 4
        public var alpha: Float = 0.7
        public var epochs = 30
        public var batchSize = 32
        public var learningRate: Float = 0.002
        public var seed: UInt64 = 1
        /// Mixed rows added per real row: λ·x_i + (1 − λ)·x_j, λ uniform in [0, 1], with the teacher's
        /// logits on that very row and no hard label (Beyer et al. 2022, "Knowledge distillation: A
        /// good teacher is patient and consistent": the student matches the teacher's function
        /// between the training rows, not only on them).
        public var mixup = 1
        public init() {}
    }

    /// Trains `student` in place on `data`, the teacher's logits computed on every row the student
    /// sees (the real ones and the mixed ones); calls `progress` after every epoch with (epoch, mean loss).
    public static func train(student: Network, teacher: Network, data: DataSet, settings: Settings,
                             progress: (Int, Float) -> Void) {
        guard let labels = data.labels, data.count > 0 else { return }
        let classes = student.outputCount
        let capacity = settings.batchSize * (1 + max(0, settings.mixup))
        let trainer = Trainer(network: student, optimizer: .adam(learningRate: settings.learningRate), batchSize: capacity,
                              seed: settings.seed)
        let teacherGraph = TrainingGraph(network: teacher, batchCapacity: capacity)
        let graph = trainer.graph, optimizer = trainer.optimizer
        let n = data.featureCount
        let input = UnsafeMutablePointer<Float>.allocate(capacity: capacity * n)
        let stored = UnsafeMutablePointer<Float>.allocate(capacity: capacity * classes)
        let dy = UnsafeMutablePointer<Float>.allocate(capacity: capacity * classes)
        let rowLabels = UnsafeMutablePointer<Int32>.allocate(capacity: capacity)
        let hasStored = UnsafeMutablePointer<Bool>.allocate(capacity: capacity)
        hasStored.initialize(repeating: true, count: capacity)
        defer { input.deallocate(); stored.deallocate(); dy.deallocate(); rowLabels.deallocate(); hasStored.deallocate() }
        // (1 − α)·[CE + α/(1 − α)·T²·KL] through the update loss, then scaled; α = 1 is soft targets only.
        let hard = settings.alpha < 1
        let kdWeight = hard ? settings.alpha / (1 - settings.alpha) : 1
        let scale = hard ? 1 - settings.alpha : 1
        var rng = SeededGenerator(seed: settings.seed)
        var order = Array(0..<data.count)
        for epoch in 1...max(1, settings.epochs) {
            optimizer.learningRateScale = 0.5 * (1 + cosf(Float.pi * Float(epoch - 1) / Float(max(settings.epochs, 1))))
            rng.shuffle(&order)
            var lossSum: Double = 0
            BLAS.withDenormalsFlushedToZero {
                data.features.withUnsafeBufferPointer { f in
                    var start = 0
                    while start < data.count {
                        let real = min(settings.batchSize, data.count - start)
                        for j in 0..<real {
                            let row = order[start + j]
                            (input + j * n).update(from: f.baseAddress! + row * n, count: n)
                            rowLabels[j] = hard ? Int32(labels[row]) : -1
                        }
                        var b = real
                        for _ in 0..<(real * max(0, settings.mixup)) {
                            let i = order[start + Int(rng.next() % UInt64(real))], j = Int(rng.next() % UInt64(data.count))
                            let lambda = rng.nextUnitFloat()
                            let x = f.baseAddress! + i * n, y = f.baseAddress! + j * n, dst = input + b * n
                            for k in 0..<n { dst[k] = lambda * x[k] + (1 - lambda) * y[k] }
                            rowLabels[b] = -1
                            b += 1
                        }
                        teacherGraph.forward(input, batch: b)
                        let t = teacherGraph.output(batch: b)
                        stored.update(from: t.baseAddress!, count: b * classes)
                        graph.forward(input, batch: b)
                        let z = graph.output(batch: b)
                        let (ce, kd) = UpdateLoss.gradient(logits: z.baseAddress!, rows: b, classes: classes, labels: rowLabels, stored: stored,
                                                           hasStored: hasStored, alpha: kdWeight, temperature: settings.temperature, dy: dy)
                        if scale != 1 { for i in 0..<(b * classes) { dy[i] *= scale } }
                        graph.backward(dy, batch: b)
                        optimizer.step()
                        lossSum += Double(scale * (ce + kdWeight * kd)) * Double(real)
                        start += real
                    }
                }
            }
            progress(epoch, Float(lossSum / Double(data.count)))
        }
    }
}
