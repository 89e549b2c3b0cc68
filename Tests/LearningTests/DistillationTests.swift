import Inference
import Learning
import Tensor
import Testing
import Training

@Suite struct DistillationTests {
    func data(rows: Int, seed: UInt64) -> DataSet {
        var rng = SeededGenerator(seed: seed)
        var features: [Float] = [], labels: [Int] = []
        for r in 0..<rows {
            let label = r % 3
            for k in 0..<6 { features.append(rng.nextUnitFloat() + (k % 3 == label ? 1 : 0)) }
            labels.append(label)
        }
        return DataSet(features: features, featureCount: 6, labels: labels, classNames: ["a", "b", "c"])
    }

    func agreement(_ a: Network, _ b: Network, _ d: DataSet) -> Float {
        let pa = ExecutionPlan(network: a, batchCapacity: d.count).predict(d.features)
        let pb = ExecutionPlan(network: b, batchCapacity: d.count).predict(d.features)
        var same = 0
        for r in 0..<d.count {
            let ra = Array(pa[(r * 3)..<(r * 3 + 3)]), rb = Array(pb[(r * 3)..<(r * 3 + 3)])
            if ra.firstIndex(of: ra.max()!) == rb.firstIndex(of: rb.max()!) { same += 1 }
        }
        return Float(same) / Float(d.count)
    }

    /// α = 0 without mixed rows is plain cross-entropy training: the same weights as the Trainer's.
    @Test func alphaZeroIsCrossEntropyTraining() throws {
        let d = data(rows: 96, seed: 1)
        let teacher = try Architecture.build("mlp:6-8-3", seed: 9)
        let a = try Architecture.build("mlp:6-5-3", seed: 2), b = try Architecture.build("mlp:6-5-3", seed: 2)
        var settings = Distillation.Settings()
        settings.alpha = 0
        settings.mixup = 0
        settings.epochs = 2
        settings.seed = 3
        Distillation.train(student: a, teacher: teacher, data: d, settings: settings) { _, _ in }
        Trainer(network: b, optimizer: .adam(learningRate: settings.learningRate), batchSize: settings.batchSize, seed: 3)
            .fit(d, test: nil, epochs: 2) { _ in }
        for (pa, pb) in zip(a.parameters, b.parameters) {
            for i in 0..<pa.tensor.count { #expect(abs(pa.tensor[i] - pb.tensor[i]) < 1e-4, "\(pa.name)[\(i)]") }
        }
    }

    /// Soft targets only, on rows whose labels disagree with the teacher: the student follows the
    /// teacher, not the labels.
    @Test func softTargetsTeachTheTeachersFunction() throws {
        let d = data(rows: 120, seed: 4)
        let teacher = try Architecture.build("mlp:6-16-3", seed: 5)
        var wrong = d
        wrong.labels = d.labels!.map { ($0 + 1) % 3 }  // never what a teacher trained on d says
        let student = try Architecture.build("mlp:6-16-3", seed: 6)
        let before = agreement(student, teacher, d)
        var settings = Distillation.Settings()
        settings.alpha = 1
        settings.temperature = 2
        settings.epochs = 60
        Distillation.train(student: student, teacher: teacher, data: wrong, settings: settings) { _, loss in #expect(loss.isFinite) }
        let after = agreement(student, teacher, d)
        #expect(after >= 0.9 && after > before, "agreement \(before) -> \(after)")
    }
}
