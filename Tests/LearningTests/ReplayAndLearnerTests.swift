import Foundation
import Inference
import Learning
import ModelFile
import Tensor
import Testing
import Training

let digitsPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../../tools/data/digits.csv").standardized.path

@Suite struct ReplayIndexTests {
    func entry(_ id: Int64, _ label: Int?, score: Float = 0) -> ReplayEntry {
        ReplayEntry(id: id, label: label, group: label ?? Int(id % 3), source: label == nil ? .live : .feedback, score: score)
    }

    @Test func classBalancedKeepsEveryClassUnderASkewedStream() {
        var index = ReplayIndex(kind: .classBalanced, capacity: 40, liveShare: 0)
        var id: Int64 = 0
        // 90% of the stream is class 0; classes 1–3 share the rest.
        var rng = SeededGenerator(seed: 3)
        for _ in 0..<2_000 {
            id += 1
            let label = rng.nextUnitFloat() < 0.9 ? 0 : 1 + Int(rng.next() % 3)
            _ = index.offer(entry(id, label))
        }
        let fill = index.fill.perClass
        #expect(index.entries.count == 40)
        for c in 1...3 { #expect((fill[c] ?? 0) >= 8, "class \(c): \(fill)") }
        var plain = ReplayIndex(kind: .reservoir, capacity: 40, liveShare: 0)
        rng = SeededGenerator(seed: 3)
        for i in 0..<2_000 {
            let label = rng.nextUnitFloat() < 0.9 ? 0 : 1 + Int(rng.next() % 3)
            _ = plain.offer(entry(Int64(i + 1), label))
        }
        // A plain reservoir mirrors the stream: class 0 dominates.
        #expect((plain.fill.perClass[0] ?? 0) > (fill[0] ?? 0))
    }

    @Test func reservoirKeepsEachSampleWithEqualProbability() {
        var kept = [Int](repeating: 0, count: 100)
        for trial in 0..<400 {
            var index = ReplayIndex(kind: .reservoir, capacity: 10, liveShare: 0, seed: UInt64(trial + 1))
            for i in 0..<100 { _ = index.offer(entry(Int64(i), 0)) }
            for e in index.entries { kept[Int(e.id)] += 1 }
        }
        // Each of 100 kept with p = 0.1: 40 of 400 trials expected; early and late alike.
        let early = kept[0..<20].reduce(0, +), late = kept[80..<100].reduce(0, +)
        #expect(abs(early - 800) < 200 && abs(late - 800) < 200, "early \(early) late \(late)")
    }

    @Test func liveSamplesNeverPushOutLabelledOnesAndGiveWayToThem() {
        var index = ReplayIndex(kind: .classBalanced, capacity: 10, liveShare: 0.3)
        for i in 0..<7 { #expect(index.offer(entry(Int64(i), i % 2)) == []) }
        for i in 0..<10 { _ = index.offer(entry(Int64(100 + i), nil)) }
        #expect(index.liveCount == 3 && index.labelledCount == 7)
        // Full: a labelled newcomer replaces a live one.
        let evicted = index.offer(entry(50, 1))
        #expect(evicted?.count == 1 && evicted![0] >= 100)
        #expect(index.liveCount == 2 && index.labelledCount == 8)
        // Labelled only from here: 10 more push out the rest of the live ones first.
        for i in 0..<10 { _ = index.offer(entry(Int64(60 + i), i % 2)) }
        #expect(index.liveCount == 0 && index.entries.count == 10)
        // A live newcomer cannot enter a memory full of labelled samples.
        #expect(index.offer(entry(999, nil)) == nil)
    }

    @Test func valueScoredKeepsTheHighestValuedSamplesOfTheLargestClass() {
        var index = ReplayIndex(kind: .valueScored, capacity: 4, liveShare: 0)
        for (i, s) in [Float(1), 2, 3, 4].enumerated() { _ = index.offer(entry(Int64(i), 0, score: s)) }
        #expect(index.offer(entry(10, 0, score: 0.5)) == nil)
        #expect(index.offer(entry(11, 0, score: 9)) == [0])
        // Another class gets in whatever its score.
        #expect(index.offer(entry(12, 1, score: 0.1)) == [1])
    }

    @Test func countersRestoreTheReservoirProbabilities() {
        var index = ReplayIndex(kind: .classBalanced, capacity: 10, liveShare: 0)
        for i in 0..<500 { _ = index.offer(entry(Int64(i), i % 2)) }
        var back = ReplayIndex(kind: .classBalanced, capacity: 10, liveShare: 0)
        back.restore(index.entries, counters: index.counters)
        #expect(back.labelledSeen == 500 && back.seenPerClass == index.seenPerClass && back.fullClasses == index.fullClasses)
        // Without the counters a restart would keep the next sample of a class for sure.
        var kept = 0
        for trial in 0..<200 {
            var copy = ReplayIndex(kind: .classBalanced, capacity: 10, liveShare: 0, seed: UInt64(trial + 1))
            copy.restore(index.entries, counters: index.counters)
            if copy.offer(entry(10_000, 0)) != nil { kept += 1 }
        }
        #expect(kept < 20, "kept \(kept) of 200 (expected about 2%)")
    }

    @Test func valueIsLossPlusEntropy() {
        let z: [Float] = [2, 0, 0]
        let p = z.map { expf($0) / (expf(2) + 2) }
        let entropy = -p.reduce(0) { $0 + $1 * logf($1) }
        let v = z.withUnsafeBufferPointer { replayValue(logits: $0.baseAddress!, classes: 3, label: 1) }
        #expect(abs(v - (entropy - logf(p[1]))) < 1e-5)
        let u = z.withUnsafeBufferPointer { replayValue(logits: $0.baseAddress!, classes: 3, label: nil) }
        #expect(abs(u - entropy) < 1e-5)
    }
}

@Suite struct FieldPartTests {
    @Test func anchorAndSeedRoundTripThroughAFile() throws {
        var rng = SeededGenerator(seed: 5)
        let net = smallMLP(&rng)
        let x = (0..<20).map { _ in rng.nextFloat(limit: 2) }
        let fisher = x.withUnsafeBufferPointer { FisherInformation.diagonal(network: net, rows: $0.baseAddress!, count: 4) }
        var anchor: [String: [Float]] = [:]
        for (n, t) in net.parameters { anchor[n] = t.values }
        EWCAnchor(fisher: fisher, anchor: anchor, samples: 4, gamma: 0.9, updates: 0).encode(into: net)
        ReplaySeed(inputs: x, labels: [0, 1, 2, 1], logits: (0..<12).map(Float.init), expectedAccuracy: 0.9).encode(into: net)
        let path = NSTemporaryDirectory() + "field-\(UInt32.random(in: 0...UInt32.max)).safetensors"
        defer { unlink(path) }
        try net.write(to: path)
        let back = Network(model: try ModelFile.load(path: path))
        let a = try #require(try EWCAnchor.decode(back))
        #expect(a.fisher == fisher && a.anchor == anchor && a.samples == 4 && a.gamma == Float(0.9))
        let s = try #require(try ReplaySeed.decode(back))
        #expect(s.labels == [0, 1, 2, 1] && s.inputs == x && s.expectedAccuracy == 0.9)
        // Carried by copies (every rewrite starts from one).
        #expect(try ReplaySeed.decode(back.copy())?.rows == 4)
    }

    @Test(arguments: [
        ("labels", "not a class index"), ("shape", "has shape"), ("nan", "non-finite"), ("rows", "outside"), ("negative", "outside 0...1e6"), ("hugeFisher", "outside 0...1e6"), ("hugeLogits", "outside ±10000"),
        ("missing", "is missing"), ("kind", "expected \"exact\""),
    ])
    func hostileSectionsAreRefusedByName(_ what: String, _ fragment: String) throws {
        var rng = SeededGenerator(seed: 6)
        let net = smallMLP(&rng)
        var fisher: [String: [Float]] = [:], anchor: [String: [Float]] = [:]
        for (n, t) in net.parameters { fisher[n] = [Float](repeating: 1, count: t.count); anchor[n] = t.values }
        EWCAnchor(fisher: fisher, anchor: anchor, samples: 4, gamma: 0.9, updates: 0).encode(into: net)
        ReplaySeed(inputs: [Float](repeating: 0, count: 10), labels: [0, 1], logits: [Float](repeating: 0, count: 6), expectedAccuracy: nil).encode(into: net)
        func replace(_ name: String, _ values: [Float], shape: [Int]) {
            net.fieldTensors = net.fieldTensors.filter { $0.name != name } + [TensorBlob(name: name, tensor: Tensor(shape: shape, values: values))]
        }
        switch what {
        case "labels": replace("replay.labels", [0, 7], shape: [2])
        case "shape": replace("replay.logits", [0, 0], shape: [1, 2])
        case "nan": replace("replay.inputs", [.nan] + [Float](repeating: 0, count: 9), shape: [2, 5])
        case "rows": net.replaySeed = .object(["rows": .number(1e12)])
        case "negative": replace("ewc.fisher.fc1.bias", [-1, 0, 0, 0], shape: [4])
        case "hugeFisher": replace("ewc.fisher.fc2.bias", [3e38, 0, 0], shape: [3])
        case "hugeLogits": replace("replay.logits", [0, 0, 0, 3e38, -3e38, 0], shape: [2, 3])
        case "missing": net.fieldTensors.removeAll { $0.name == "ewc.anchor.fc2.weight" }
        case "kind": net.ewc = .object(["fisher": .string("empirical"), "samples": .number(1), "gamma": .number(1), "updates": .number(0)])
        default: break
        }
        var message = ""
        do {
            _ = try EWCAnchor.decode(net)
            _ = try ReplaySeed.decode(net)
        } catch {
            message = "\(error)"
        }
        #expect(message.contains(fragment), "\(what): \(message)")
    }
}

@Suite struct ContinualLearnerTests {
    /// A digits MLP trained on the original images, and the samples of a shifted copy.
    static func setting() throws -> (net: Network, old: [LearnSample], oldTest: [LearnSample], shifted: [LearnSample], shiftedTest: [LearnSample]) {
        let data = try DataSet.load(path: digitsPath)
        let (train, test) = data.split()
        let net = try Architecture.build("mlp:64-32-10", seed: 1, labels: data.classNames, preprocessing: Preprocessing(scale: 1 / 16, shift: 0))
        Trainer(network: net, optimizer: .adam(learningRate: 3e-3), batchSize: 32, seed: 1).fit(train, test: nil, epochs: 12) { _ in }
        // The shift: a fixed permutation of the pixels (as hard as drift gets: new features).
        var rng = SeededGenerator(seed: 9)
        var perm = Array(0..<64)
        rng.shuffle(&perm)
        func samples(_ d: DataSet, shifted: Bool) -> [LearnSample] {
            (0..<d.count).map { i in
                let row = Array(d.features[(i * 64)..<((i + 1) * 64)])
                return LearnSample(input: shifted ? perm.map { row[$0] } : row, label: d.labels![i], logits: nil)
            }
        }
        return (net, samples(train, shifted: false), samples(test, shifted: false), samples(train, shifted: true), samples(test, shifted: true))
    }

    static func replay(_ net: Network, _ old: [LearnSample], count: Int) -> [LearnSample] {
        let rows = Array(old.prefix(count))
        let logits = Evaluator(network: net).logits(rows.flatMap(\.input))
        return rows.enumerated().map { i, s in LearnSample(input: s.input, label: s.label, logits: Array(logits[(i * 10)..<((i + 1) * 10)])) }
    }

    @Test func learnsTheShiftWithoutForgettingAndTheGateAccepts() throws {
        let s = try Self.setting()
        let replay = Self.replay(s.net, s.old, count: 200)
        let fisher = replay.flatMap(\.input).withUnsafeBufferPointer { FisherInformation.diagonal(network: s.net, rows: $0.baseAddress!, count: 200) }
        var anchorWeights: [String: [Float]] = [:]
        for (n, t) in s.net.parameters { anchorWeights[n] = t.values }
        let anchor = EWCAnchor(fisher: fisher, anchor: anchorWeights, samples: 200, gamma: 0.9, updates: 0)
        let before = s.net.parameters.map { $0.tensor.values }
        var settings = LearnSettings()
        settings.seed = 2
        let outcome = try ContinualLearner.run(base: s.net, anchor: anchor, newData: Array(s.shifted.prefix(200)), replay: replay,
                                               expectedAccuracy: nil, settings: settings)
        #expect(outcome.decision == .accepted, "\(outcome.reason)")
        #expect(s.net.parameters.map { $0.tensor.values } == before, "the base network changed")
        let trained = try #require(outcome.network)
        let oldBefore = Evaluator(network: s.net).accuracy(s.oldTest), oldAfter = Evaluator(network: trained).accuracy(s.oldTest)
        let newBefore = Evaluator(network: s.net).accuracy(s.shiftedTest), newAfter = Evaluator(network: trained).accuracy(s.shiftedTest)
        #expect(newAfter > newBefore + 0.3, "new \(newBefore) → \(newAfter)")
        #expect(oldAfter > oldBefore - 0.05, "old \(oldBefore) → \(oldAfter)")
        #expect(outcome.steps > 0 && outcome.labels.gate == 40)
    }

    /// The gate's false accepts: updates on labels unrelated to the inputs, over many seeds.
    @Test func theGateRarelyAcceptsLabelsThatCannotBeLearnt() throws {
        let s = try Self.setting()
        let replay = Self.replay(s.net, s.old, count: 100)
        var accepted = 0
        for seed in 0..<20 {
            var rng = SeededGenerator(seed: UInt64(100 + seed))
            let noise = s.shifted.shuffled(using: &rng).prefix(50).map { LearnSample(input: $0.input, label: Int(rng.next() % 10), logits: nil) }
            var settings = LearnSettings()
            settings.maxSteps = 200
            settings.seed = UInt64(seed)
            settings.alwaysTrain = true
            if try ContinualLearner.run(base: s.net, anchor: nil, newData: noise, replay: replay, expectedAccuracy: nil, settings: settings).decision == .accepted {
                accepted += 1
            }
        }
        #expect(accepted <= 2, "\(accepted) of 20 updates on random labels accepted")
    }

    @Test func undriftedLabelsAreNotNeeded() throws {
        let s = try Self.setting()
        let replay = Self.replay(s.net, s.old, count: 100)
        let outcome = try ContinualLearner.run(base: s.net, anchor: nil, newData: Array(s.oldTest.prefix(60)), replay: replay,
                                               expectedAccuracy: Evaluator(network: s.net).accuracy(s.oldTest), settings: LearnSettings())
        #expect(outcome.decision == .notNeeded, "\(outcome.reason)")
        #expect(outcome.network == nil && outcome.totalSteps == 0)
    }

    @Test func labelsThatCannotBeLearntAreRejectedWithTheNumbers() throws {
        let s = try Self.setting()
        let replay = Self.replay(s.net, s.old, count: 100)
        // Labels unrelated to the inputs: nothing the update learns carries to the held-out ones.
        var rng = SeededGenerator(seed: 4)
        let noise = s.shifted.prefix(100).map { LearnSample(input: $0.input, label: Int(rng.next() % 10), logits: nil) }
        var settings = LearnSettings()
        settings.maxSteps = 300
        let outcome = try ContinualLearner.run(base: s.net, anchor: nil, newData: noise, replay: replay, expectedAccuracy: nil, settings: settings)
        #expect(outcome.decision == .rejected, "\(outcome.reason)")
        #expect(outcome.reason.contains("gain") && outcome.reason.contains("forgetting"))
    }

    @Test func tooFewLabelsAndCancellationAreErrors() throws {
        let s = try Self.setting()
        #expect(throws: LearnError.self) {
            try ContinualLearner.run(base: s.net, anchor: nil, newData: Array(s.shifted.prefix(3)), replay: [], expectedAccuracy: nil, settings: LearnSettings())
        }
        var settings = LearnSettings()
        settings.alwaysTrain = true
        #expect(throws: LearnError.self) {
            try ContinualLearner.run(base: s.net, anchor: nil, newData: Array(s.shifted.prefix(50)), replay: [], expectedAccuracy: nil,
                                     settings: settings, isCancelled: { true })
        }
    }
}
