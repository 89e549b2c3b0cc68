#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Inference
import Tensor
import Training

/// One sample the learner sees: a raw input row, its class (nil for an unlabelled live row) and
/// the logits stored with it (nil for new labels, which have none).
public struct LearnSample: Sendable {
    public var input: [Float]
    public var label: Int?
    public var logits: [Float]?
    public init(input: [Float], label: Int?, logits: [Float]?) {
        self.input = input
        self.label = label
        self.logits = logits
    }
}

public enum LearnDecision: String, Codable, Sendable {
    case accepted, rejected
    case notNeeded = "not_needed"
}

public struct LearnAccuracies: Codable, Equatable, Sendable {
    /// Accuracy on the held-out share of the new labels.
    public var newAccuracy: Double
    /// Accuracy on the held-out share of the labelled replay memory (the old distribution).
    public var oldAccuracy: Double
    enum CodingKeys: String, CodingKey {
        case newAccuracy = "new_accuracy"
        case oldAccuracy = "old_accuracy"
    }
    public init(newAccuracy: Double, oldAccuracy: Double) {
        self.newAccuracy = newAccuracy
        self.oldAccuracy = oldAccuracy
    }
}

/// What the update uses: the harness turns the parts off one at a time.
public struct LearnMethod: Sendable, Equatable {
    public var ewc: Bool
    public var replay: Bool
    public var distillation: Bool
    public init(ewc: Bool, replay: Bool, distillation: Bool) {
        self.ewc = ewc
        self.replay = replay
        self.distillation = distillation
    }
    /// What agentd runs: EWC + replay + distillation on stored logits.
    public static let product = LearnMethod(ewc: true, replay: true, distillation: true)
}

public struct LearnSettings: Sendable {
    public var maxSteps = 1_000
    public var batchSize = 32
    public var learningRate: Float = 1e-3
    /// Validation every this many steps; training stops after `patience` checks without a gain
    /// and keeps the best weights seen.
    public var evalEvery = 25
    public var patience = 6
    /// The grid λ (EWC) and α (distillation) are chosen from on the validation share. The
    /// Fisher is a mean over rows, so λ = 1 weighs the old data like one mean batch loss.
    public var lambdas: [Float] = [0, 100]
    public var alphas: [Float] = [1, 3]
    public var temperature: Float = 2
    /// Gate: new accuracy must rise by `minGain`, old may fall by at most `maxForgetting`.
    public var minGain = 0.01
    public var maxForgetting = 0.01
    public var validationShare = 0.2
    /// The gate's share of the new labels, and at least `minimumGate` of them (a third at most).
    public var gateShare = 0.2
    public var minimumGate = 30
    /// Labelled replay rows never trained on, for early stopping and the gate's old accuracy:
    /// half of them, at most `oldHoldoutMax` (100: one sample is the gate's 1 point).
    public var oldHoldoutMax = 100
    /// One-sided z of the gate's tests (1.64: 5%).
    public var z = 1.64
    public var method = LearnMethod.product
    public var seed: UInt64 = 1
    /// CPU seconds the job may use on its thread; training stops (best weights so far) past it.
    public var cpuBudgetSeconds: Double = .infinity
    /// Skip the not-needed check (the harness measures every update).
    public var alwaysTrain = false
    public init() {}
}

/// Why an update could not run at all (too few labels, a cancelled job).
public struct LearnError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public struct LearnOutcome: Sendable {
    public var decision: LearnDecision
    /// Why, in one line with the numbers.
    public var reason: String
    public var before: LearnAccuracies
    public var after: LearnAccuracies?
    /// Steps of the chosen run (to its best validation point) and of all runs.
    public var steps: Int
    public var totalSteps: Int
    public var seconds: Double
    public var lambda: Float
    public var alpha: Float
    /// The trained FP32 network (nil for not_needed); the base network is never changed.
    public var network: Network?
    /// Lowest old accuracy seen at a validation check of the chosen run (the stability gap).
    public var lowestOldAccuracy: Double?
    /// Lowest accuracy on `probe` seen at a validation check of the chosen run (harness).
    public var lowestProbeAccuracy: Double?
    /// Labels used: train, validation, gate.
    public var labels: (train: Int, validation: Int, gate: Int)
    public var budgetExhausted: Bool
}

/// The on-device update: cross-entropy on the new labels and the labelled replay, α·KL to the
/// stored logits of replay rows, λ·EWC to the anchor; the manifest's trainable subset; early
/// stopping on a validation share; (λ, α) from a small grid; then the quality gate on held-out
/// new labels and the labelled replay. Runs on the FP32 master; never changes `base`.
public enum ContinualLearner {
    public static let minimumLabels = 5

    public static func run(base: Network, anchor: EWCAnchor?, newData: [LearnSample], replay: [LearnSample],
                           expectedAccuracy: Double?, settings: LearnSettings, probe: [LearnSample] = [],
                           served: (base: any Classifier, make: (Network) throws -> any Classifier)? = nil,
                           isCancelled: () -> Bool = { false }, progress: (Int) -> Void = { _ in }) throws -> LearnOutcome {
        let started = Date()
        let cpuStart = threadCPUSeconds()
        let labelled = newData.filter { $0.label != nil }
        guard labelled.count >= minimumLabels else {
            throw LearnError("an update needs at least \(minimumLabels) new labels; \(labelled.count) are stored")
        }
        var rng = SeededGenerator(seed: settings.seed)
        var order = Array(labelled.indices)
        rng.shuffle(&order)
        let n = labelled.count
        let gateCount = max(1, Int((Double(n) * settings.gateShare).rounded()), min(settings.minimumGate, n / 3))
        let valCount = max(1, Int((Double(n) * settings.validationShare).rounded()))
        let gate = order.prefix(gateCount).map { labelled[$0] }
        let validation = order.dropFirst(gateCount).prefix(valCount).map { labelled[$0] }
        let train = order.dropFirst(gateCount + valCount).map { labelled[$0] }
        guard !train.isEmpty else { throw LearnError("\(n) new labels leave none to train on after the gate and validation shares") }
        // Part of the labelled replay is never trained on: it measures what the update costs the
        // old distribution, for early stopping and the gate. Every other labelled row, up to
        // oldHoldoutMax, spread over the whole memory.
        var oldHoldout: [LearnSample] = [], replayTrain: [LearnSample] = []
        // A method without replay has no old data at all (the harness's fine-tune and EWC alone).
        let labelledCount = settings.method.replay ? replay.reduce(0) { $0 + ($1.label == nil ? 0 : 1) } : 0
        let holdoutCount = min(labelledCount / 2, settings.oldHoldoutMax)
        let every = holdoutCount == 0 ? Int.max : max(2, labelledCount / holdoutCount)
        var labelledSeen = 0
        for r in replay {
            if r.label != nil {
                labelledSeen += 1
                if labelledSeen % every == 0 && oldHoldout.count < holdoutCount { oldHoldout.append(r); continue }
            }
            replayTrain.append(r)
        }
        let replayRows = settings.method.replay ? replayTrain : []

        // The gate and the not-needed check judge the model as it serves (with `served`: its
        // quantized plan); training and early stopping use the FP32 master.
        let baseFP32 = Evaluator(network: base)
        let baseEval: any Classifier = served?.base ?? baseFP32
        let before = LearnAccuracies(newAccuracy: baseEval.accuracy(gate), oldAccuracy: oldHoldout.isEmpty ? 1 : baseEval.accuracy(oldHoldout))
        let splits = (train: train.count, validation: validation.count, gate: gate.count)

        if !settings.alwaysTrain {
            // Judged on the labels the gate does not use, against what the model scored on held-out
            // rows when it was prepared: a deficit within min_gain plus sampling noise needs no update.
            let reference = expectedAccuracy ?? (oldHoldout.isEmpty ? 1 : before.oldAccuracy)
            let seen = train + validation
            let accuracy = baseEval.accuracy(seen)
            let noise = settings.z * (reference * (1 - reference) / Double(seen.count)).squareRoot()
            if reference - accuracy <= settings.minGain + noise {
                return LearnOutcome(
                    decision: .notNeeded,
                    reason: String(format: "the serving model already scores %.1f%% on %d of the new labels (%.1f%% expected, %.1f pt of noise allowed); no update",
                                   accuracy * 100, seen.count, reference * 100, (settings.minGain + noise) * 100),
                    before: before, after: nil, steps: 0, totalSteps: 0, seconds: Date().timeIntervalSince(started),
                    lambda: 0, alpha: 0, network: nil, lowestOldAccuracy: nil, lowestProbeAccuracy: nil, labels: splits, budgetExhausted: false)
            }
        }

        let lambdas = settings.method.ewc && anchor != nil ? settings.lambdas.ifEmpty([0]) : [0]
        let hasLogits = replayRows.contains { $0.logits != nil }
        let alphas = settings.method.distillation && hasLogits ? settings.alphas.filter { $0 > 0 }.ifEmpty([0]) : [0]
        var best: (score: Double, run: Run, lambda: Float, alpha: Float)? = nil
        var totalSteps = 0
        var exhausted = false
        for lambda in lambdas {
            for alpha in alphas {
                if exhausted || isCancelled() { break }
                let run = train1(base: base, anchor: anchor, train: train, replay: replayRows, validation: validation, old: oldHoldout,
                                 lambda: lambda, alpha: alpha, settings: settings, seed: settings.seed &+ UInt64(totalSteps), probe: probe,
                                 cpuDeadline: cpuStart + settings.cpuBudgetSeconds, isCancelled: isCancelled,
                                 progress: { progress(totalSteps + $0) })
                totalSteps += run.stepsRun
                exhausted = run.budgetExhausted
                if best == nil || run.bestScore > best!.score + 1e-12 { best = (run.bestScore, run, lambda, alpha) }
            }
        }
        if isCancelled() { throw LearnError("the update was cancelled") }
        guard let best else { throw LearnError("the CPU budget ran out before any training") }
        let trained = best.run.network
        if isCancelled() { throw LearnError("the update was cancelled") }
        let eval: any Classifier = try served?.make(trained) ?? Evaluator(network: trained)
        let after = LearnAccuracies(newAccuracy: eval.accuracy(gate), oldAccuracy: oldHoldout.isEmpty ? 1 : eval.accuracy(oldHoldout))
        let gain = after.newAccuracy - before.newAccuracy, forgetting = before.oldAccuracy - after.oldAccuracy
        // The gain must be real, not one lucky sample: of the gate rows whose answer changed, the
        // fixes must outnumber the breaks by z·√(changed) (a one-sided sign test, as McNemar's).
        let (fixes, breaks) = Self.changes(gate, before: baseEval, after: eval)
        let significant = Double(fixes - breaks) >= settings.z * Double(fixes + breaks).squareRoot() && fixes > breaks
        let accepted = gain >= settings.minGain - 1e-9 && significant && forgetting <= settings.maxForgetting + 1e-9
        let numbers = String(format: "new %.1f%% → %.1f%% (gain %+.1f pt, %.1f needed; %d fixed, %d broken of %d%@), old %.1f%% → %.1f%% (forgetting %.1f pt, %.1f allowed)",
                             before.newAccuracy * 100, after.newAccuracy * 100, gain * 100, settings.minGain * 100, fixes, breaks, gate.count,
                             significant ? "" : ": not significant", before.oldAccuracy * 100, after.oldAccuracy * 100, forgetting * 100,
                             settings.maxForgetting * 100)
        return LearnOutcome(
            decision: accepted ? .accepted : .rejected, reason: numbers, before: before, after: after,
            steps: best.run.bestStep, totalSteps: totalSteps, seconds: Date().timeIntervalSince(started),
            lambda: best.lambda, alpha: best.alpha, network: trained, lowestOldAccuracy: best.run.lowestOld,
            lowestProbeAccuracy: probe.isEmpty ? nil : best.run.lowestProbe,
            labels: splits, budgetExhausted: exhausted)
    }

    /// Gate rows `after` answers right and `before` wrong (fixes), and the other way (breaks).
    static func changes(_ rows: [LearnSample], before: any Classifier, after: any Classifier) -> (Int, Int) {
        let b = before.correct(rows), a = after.correct(rows)
        var fixes = 0, breaks = 0
        for i in rows.indices where a[i] != b[i] { if a[i] { fixes += 1 } else { breaks += 1 } }
        return (fixes, breaks)
    }

    struct Run {
        let network: Network
        let bestScore: Double
        let bestStep: Int
        let stepsRun: Int
        let lowestOld: Double
        let lowestProbe: Double
        let budgetExhausted: Bool
    }

    /// One training run from `base` at (λ, α), keeping the weights of its best validation check.
    static func train1(base: Network, anchor: EWCAnchor?, train: [LearnSample], replay: [LearnSample], validation: [LearnSample],
                       old: [LearnSample], lambda: Float, alpha: Float, settings: LearnSettings, seed: UInt64, probe: [LearnSample],
                       cpuDeadline: Double, isCancelled: () -> Bool, progress: (Int) -> Void) -> Run {
        let network = base.copy()
        network.qat = nil  // ranges learned by QAT describe the weights before this update
        let batch = settings.batchSize
        let graph = TrainingGraph(network: network, batchCapacity: batch)
        var pairs: [(parameter: Tensor, gradient: Tensor)] = []
        for (i, layer) in network.layers.enumerated() {
            if let g = graph.weightGrads[i], let w = layer.weight { pairs.append((w, g)) }
            if let g = graph.biasGrads[i], let b = layer.bias { pairs.append((b, g)) }
        }
        let optimizer = Optimizer(kind: .adam(learningRate: settings.learningRate), pairs: pairs)
        let ewc = anchor.map { EWCPenalty(graph: graph, anchor: $0) }
        let classes = graph.outputCount, features = network.inputCount
        let x = UnsafeMutablePointer<Float>.allocate(capacity: batch * features)
        let labels = UnsafeMutablePointer<Int32>.allocate(capacity: batch)
        let stored = UnsafeMutablePointer<Float>.allocate(capacity: batch * classes)
        let has = UnsafeMutablePointer<Bool>.allocate(capacity: batch)
        let dy = UnsafeMutablePointer<Float>.allocate(capacity: batch * classes)
        defer { x.deallocate(); labels.deallocate(); stored.deallocate(); has.deallocate(); dy.deallocate() }
        var rng = SeededGenerator(seed: seed)
        let evaluator = Evaluator(network: network)
        let oldStart = old.isEmpty ? 1 : evaluator.accuracy(old)
        // A checkpoint that loses more old accuracy than the gate allows (or one holdout sample,
        // whichever is more) is chosen only over nothing better: among the others the best
        // validation accuracy wins, then the better old accuracy. (One new validation sample
        // must never buy heavy forgetting; one flipped sample of a small holdout must not freeze
        // training.)
        let tolerance = max(settings.maxForgetting, old.isEmpty ? 0 : 1 / Double(old.count)) + 1e-9
        func score() -> (Double, Double) {
            let o = old.isEmpty ? 1 : evaluator.accuracy(old)
            let excess = max(0, oldStart - o - tolerance)
            return ((excess == 0 ? 10 : 0) + evaluator.accuracy(validation) - 2 * excess + 1e-3 * o, o)
        }
        var (bestScore, lowest) = score()
        var lowestProbe = probe.isEmpty ? 0 : evaluator.accuracy(probe)
        var bestWeights = pairs.map { Array(UnsafeBufferPointer(start: $0.parameter.pointer, count: $0.parameter.count)) }
        var bestStep = 0, sinceBest = 0, step = 0, exhausted = false
        let replayShare = replay.isEmpty ? 0 : batch / 2
        BLAS.withDenormalsFlushedToZero {
            while step < settings.maxSteps {
                if isCancelled() { break }
                for r in 0..<batch {
                    let s = r < batch - replayShare ? train[Int(rng.next() % UInt64(train.count))] : replay[Int(rng.next() % UInt64(replay.count))]
                    s.input.withUnsafeBufferPointer { (x + r * features).update(from: $0.baseAddress!, count: features) }
                    labels[r] = Int32(s.label ?? -1)
                    if let l = s.logits, l.count == classes {
                        l.withUnsafeBufferPointer { (stored + r * classes).update(from: $0.baseAddress!, count: classes) }
                        has[r] = true
                    } else {
                        has[r] = false
                    }
                }
                graph.forward(x, batch: batch)
                let z = graph.output(batch: batch)
                _ = UpdateLoss.gradient(logits: z.baseAddress!, rows: batch, classes: classes, labels: labels, stored: stored, hasStored: has,
                                        alpha: alpha, temperature: settings.temperature, dy: dy)
                graph.backward(dy, batch: batch)
                ewc?.addGradient(lambda: lambda)
                optimizer.step()
                step += 1
                if step % settings.evalEvery == 0 || step == settings.maxSteps {
                    progress(step)
                    // Weights that left the finite numbers (a huge input row, a hostile Fisher) end the
                    // run: the best finite checkpoint so far is kept.
                    if !pairs.allSatisfy({ p in (0..<p.parameter.count).allSatisfy { p.parameter.pointer[$0].isFinite } }) { break }
                    let (s, o) = score()
                    lowest = min(lowest, o)
                    if !probe.isEmpty { lowestProbe = min(lowestProbe, evaluator.accuracy(probe)) }
                    if s > bestScore + 1e-9 {
                        bestScore = s
                        bestStep = step
                        sinceBest = 0
                        for (i, p) in pairs.enumerated() { bestWeights[i].withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: p.parameter.pointer, count: p.parameter.count) } }
                    } else {
                        sinceBest += 1
                        if sinceBest >= settings.patience { break }
                    }
                    if threadCPUSeconds() > cpuDeadline { exhausted = true; break }
                }
            }
        }
        for (i, p) in pairs.enumerated() { bestWeights[i].withUnsafeBufferPointer { p.parameter.pointer.update(from: $0.baseAddress!, count: p.parameter.count) } }
        return Run(network: network, bestScore: bestScore, bestStep: bestStep, stepsRun: step, lowestOld: lowest, lowestProbe: lowestProbe,
                   budgetExhausted: exhausted)
    }

    /// CPU seconds the calling thread has used.
    public static func threadCPUSeconds() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }
}

/// Answers whether a model gets each labelled sample right.
public protocol Classifier {
    func correct(_ samples: [LearnSample]) -> [Bool]
}

extension Classifier {
    public func accuracy(_ samples: [LearnSample]) -> Double {
        let right = correct(samples.filter { $0.label != nil })
        guard !right.isEmpty else { return 0 }
        return Double(right.reduce(0) { $0 + ($1 ? 1 : 0) }) / Double(right.count)
    }
}

/// A model as it serves (a quantized plan, adaptive precision and all), for the gate.
public final class PlanClassifier: Classifier {
    let plan: InferencePlan
    public init(plan: InferencePlan) { self.plan = plan }

    public func correct(_ samples: [LearnSample]) -> [Bool] {
        var x = [Float](repeating: 0, count: plan.batchCapacity * plan.inputCount)
        return x.withUnsafeMutableBufferPointer { buffer in
            topClassIsLabel(samples, batch: plan.batchCapacity, inputs: plan.inputCount, classes: plan.outputCount, staging: buffer.baseAddress!) {
                plan.run(buffer.baseAddress!, batch: $0)
            }
        }
    }
}

/// Runs `samples` in batches through `run` (scores of the rows staged in `staging`) and says
/// whether each one's top class is its label (unlabelled ones count as wrong).
func topClassIsLabel(_ samples: [LearnSample], batch: Int, inputs n: Int, classes k: Int, staging x: UnsafeMutablePointer<Float>,
                     run: (Int) -> UnsafeBufferPointer<Float>) -> [Bool] {
    var out = [Bool](repeating: false, count: samples.count)
    var start = 0
    while start < samples.count {
        let b = min(batch, samples.count - start)
        for r in 0..<b { samples[start + r].input.withUnsafeBufferPointer { (x + r * n).update(from: $0.baseAddress!, count: n) } }
        let scores = run(b)
        for r in 0..<b {
            var arg = 0
            for c in 1..<k where scores[r * k + c] > scores[r * k + arg] { arg = c }
            out[start + r] = arg == samples[start + r].label
        }
        start += b
    }
    return out
}

/// Accuracy of a network (as it is now: training changes it in place) on labelled samples.
public final class Evaluator: Classifier {
    let graph: TrainingGraph
    let batch = 64
    private let x: UnsafeMutablePointer<Float>

    public init(network: Network) {
        graph = TrainingGraph(network: network, batchCapacity: batch)
        x = .allocate(capacity: batch * network.inputCount)
    }

    deinit { x.deallocate() }

    /// Whether each labelled sample's top class is its label (unlabelled ones count as wrong).
    public func correct(_ samples: [LearnSample]) -> [Bool] {
        topClassIsLabel(samples, batch: batch, inputs: graph.network.inputCount, classes: graph.outputCount, staging: x) { b in
            graph.forward(x, batch: b)
            return graph.output(batch: b)
        }
    }

    /// Logits of raw rows, `[rows, classes]`.
    public func logits(_ rows: [Float]) -> [Float] {
        let features = graph.network.inputCount, classes = graph.outputCount
        let count = rows.count / features
        var out = [Float](repeating: 0, count: count * classes)
        var start = 0
        rows.withUnsafeBufferPointer { src in
            while start < count {
                let b = min(batch, count - start)
                x.update(from: src.baseAddress! + start * features, count: b * features)
                graph.forward(x, batch: b)
                let z = graph.output(batch: b)
                for i in 0..<(b * classes) { out[start * classes + i] = z[i] }
                start += b
            }
        }
        return out
    }
}

extension Array {
    func ifEmpty(_ fallback: [Element]) -> [Element] { isEmpty ? fallback : self }
}
