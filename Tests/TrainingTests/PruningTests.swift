import Inference
import ModelFile
import Tensor
import Testing
@testable import Training

@Suite struct PruningTests {
    /// Random inputs, and random biases so that every unit carries signal.
    func randomized(_ spec: String, seed: UInt64) throws -> Network {
        let net = try Architecture.build(spec, seed: seed)
        var rng = SeededGenerator(seed: seed &+ 100)
        for l in net.layers { if let b = l.bias { for i in 0..<b.count { b.pointer[i] = rng.nextFloat(limit: 0.5) } } }
        return net
    }

    func inputs(_ net: Network, rows: Int, seed: UInt64) -> [Float] {
        var rng = SeededGenerator(seed: seed)
        return (0..<(rows * net.inputCount)).map { _ in rng.nextUnitFloat() }
    }

    /// Removing units equals zeroing the consumer's columns that read them in the original:
    /// the pruned network must give the same scores.
    @Test(arguments: ["mlp:12-16-9-4", "cnn:1x8x8-c6-c5-m2-f7-4", "cnn:2x6x6-c4-a2-g-f5-3", "cnn:1x6x6-c3s2-f6-4"])
    func prunedNetworkEqualsTheOriginalWithTheUnitsSilenced(_ spec: String) throws {
        let net = try randomized(spec, seed: 3)
        let sites = Pruning.sites(net)
        #expect(!sites.isEmpty)
        // The class layer is never a site.
        let lastWeighted = net.layers.indices.last { net.layers[$0].weight != nil }!
        #expect(!sites.contains { $0.layer == lastWeighted })
        var rng = SeededGenerator(seed: 9)
        let keep = sites.map { site -> [Int] in
            var order = Array(0..<site.units)
            rng.shuffle(&order)
            return order.prefix(max(1, site.units / 2)).sorted()
        }
        let pruned = try Pruning.apply(net, sites: sites, keep: keep)
        // The same units silenced in a copy of the original.
        let silenced = net.copy()
        for (site, kept) in zip(sites, keep) {
            let w = silenced.layers[site.consumer].weight!
            let outputs = w.shape[0], inputs = w.count / outputs
            let block = inputs / site.units
            for u in 0..<site.units where !kept.contains(u) {
                for o in 0..<outputs { for k in 0..<block { w.pointer[o * inputs + u * block + k] = 0 } }
            }
        }
        let x = inputs(net, rows: 5, seed: 4)
        let a = ExecutionPlan(network: pruned, batchCapacity: 5).predict(x)
        let b = ExecutionPlan(network: silenced, batchCapacity: 5).predict(x)
        #expect(a.count == b.count)
        for (p, q) in zip(a, b) { #expect(abs(p - q) < 1e-5, "\(spec): \(p) vs \(q)") }
        // Smaller, by exactly what the parameter model predicts for that many kept units.
        #expect(pruned.parameterCount < net.parameterCount)
        for (site, kept) in zip(Pruning.sites(pruned), keep) { #expect(site.units == kept.count) }
    }

    @Test func parameterCountPredictionMatchesPruning() throws {
        let net = try randomized("cnn:1x8x8-c8-c12-m2-f20-5", seed: 1)
        for fraction in [0.9, 0.5, 0.26] {
            let predicted = Pruning.parameters(net, sites: Pruning.sites(net), fraction: fraction)
            let pruned = try Pruning.prune(net, fraction: fraction, method: .l1, data: nil)
            #expect(predicted == pruned.parameterCount, "fraction \(fraction)")
        }
        let target = net.parameterCount * 3 / 10
        let f = Pruning.fraction(net, sites: Pruning.sites(net), target: target)
        #expect(Pruning.parameters(net, sites: Pruning.sites(net), fraction: f) <= target)
    }

    @Test func importanceScores() throws {
        let net = try randomized("mlp:6-5-3", seed: 2)
        let site = try #require(Pruning.sites(net).first)
        let w = net.layers[0].weight!
        let l1 = Pruning.importance(net, sites: [site], method: .l1, data: nil)[0]
        for u in 0..<5 {
            let want = (0..<6).reduce(0.0) { $0 + Double(abs(w[u * 6 + $1])) }
            #expect(abs(l1[u] - want) < 1e-6)
        }
        // Taylor: a unit the next layer ignores changes nothing, so its score is zero; the others are not.
        let next = net.layers[2].weight!
        for o in 0..<3 { next.pointer[o * 5 + 2] = 0 }
        // Biases large enough that no hidden unit is dead (a dead ReLU also scores zero).
        for u in 0..<5 { net.layers[0].bias!.pointer[u] = 3 }
        var rng = SeededGenerator(seed: 5)
        let data = DataSet(features: (0..<(40 * 6)).map { _ in rng.nextUnitFloat() }, featureCount: 6,
                           labels: (0..<40).map { $0 % 3 }, classNames: ["a", "b", "c"])
        let taylor = Pruning.importance(net, sites: [site], method: .taylor, data: data, batchSize: 8)[0]
        #expect(taylor[2] == 0)
        #expect(taylor.enumerated().filter { $0.offset != 2 }.allSatisfy { $0.element > 0 })
        // The zero-score unit is the first one removed.
        let pruned = try Pruning.prune(net, fraction: 0.8, method: .taylor, data: data)
        #expect(pruned.layers[0].outputShape == [4])
        let kept = (0..<4).map { pruned.layers[0].weight![$0 * 6] }
        #expect(!kept.contains(w[2 * 6]))
    }

    @Test func magnitudeMasksZeroTheSmallestWeightsAndStayZeroWhileTraining() throws {
        let net = try randomized("mlp:8-16-16-3", seed: 4)
        let masks = Pruning.magnitudeMasks(net, sparsity: 0.6)
        #expect(masks.keys.sorted() == [0, 2])  // the class layer is left whole
        for (i, mask) in masks {
            let w = net.layers[i].weight!
            let removed = mask.filter { $0 == 0 }.count
            #expect(removed == Int(Double(w.count) * 0.6))
            let largestRemoved = (0..<w.count).filter { mask[$0] == 0 }.map { abs(w[$0]) }.max()!
            let smallestKept = (0..<w.count).filter { mask[$0] == 1 }.map { abs(w[$0]) }.min()!
            #expect(largestRemoved <= smallestKept)
        }
        Pruning.applyMasks(net, masks)
        var rng = SeededGenerator(seed: 6)
        let data = DataSet(features: (0..<(64 * 8)).map { _ in rng.nextUnitFloat() }, featureCount: 8,
                           labels: (0..<64).map { $0 % 3 }, classNames: ["a", "b", "c"])
        let trainer = Trainer(network: net, optimizer: .adam(learningRate: 0.01), batchSize: 16, seed: 1)
        trainer.afterStep = { Pruning.applyMasks(net, masks) }
        trainer.fit(data, test: nil, epochs: 2) { _ in }
        for (i, mask) in masks {
            let w = net.layers[i].weight!
            #expect((0..<w.count).allSatisfy { mask[$0] == 1 || w[$0] == 0 })
        }
    }

    /// From a cold reading: a file's `trainable` list froze gradients that Taylor scoring read (a
    /// crash) and pruning dropped the list; a narrow layer overshot its target.
    @Test func trainableListsSurviveAndTaylorScoresFrozenLayers() throws {
        let net = try randomized("mlp:6-8-5-3", seed: 8)
        net.trainable = ["fc3.weight", "fc3.bias"]
        var rng = SeededGenerator(seed: 1)
        let data = DataSet(features: (0..<(32 * 6)).map { _ in rng.nextUnitFloat() }, featureCount: 6,
                           labels: (0..<32).map { $0 % 3 }, classNames: ["a", "b", "c"])
        let scores = Pruning.importance(net, sites: Pruning.sites(net), method: .taylor, data: data)
        #expect(scores.allSatisfy { $0.contains { $0 > 0 } })
        let pruned = try Pruning.prune(net, fraction: 0.5, method: .taylor, data: data)
        #expect(pruned.trainable == ["fc3.weight", "fc3.bias"])
    }

    @Test func wholeUnitsComeAsCloseToTheTargetAsTheyCan() throws {
        // 4 channels of a strided conv into 10 classes: keeping 2 is 5 over a 50% target, keeping 1 is 170 under.
        let net = try randomized("cnn:1x8x8-c4s2-10", seed: 2)
        let sites = Pruning.sites(net)
        let f = Pruning.fraction(net, sites: sites, target: net.parameterCount / 2)
        #expect(Pruning.parameters(net, sites: sites, fraction: f) == Pruning.parameters(net, sites: sites, fraction: 0.5))
        // Unstructured: the masks reach the share of all parameters asked for.
        let mlp = try randomized("mlp:8-16-16-3", seed: 4)
        let masks = Pruning.magnitudeMasks(mlp, sparsity: Pruning.maskSparsity(mlp, left: 0.5))
        let zeros = masks.values.reduce(0) { $0 + $1.filter { $0 == 0 }.count }
        #expect(abs(Double(mlp.parameterCount - zeros) / Double(mlp.parameterCount) - 0.5) < 0.01)
    }

    @Test func keptUnitsRoundToWholePanels() throws {
        #expect(Pruning.keptUnits(256, fraction: 0.44, multiple: 16) == 112)
        #expect(Pruning.keptUnits(32, fraction: 0.1, multiple: 8) == 8)
        #expect(Pruning.keptUnits(6, fraction: 0.5, multiple: 8) == 6)
        #expect(Pruning.keptUnits(10, fraction: 0.01) == 1)
        let net = try randomized("cnn:1x8x8-c32-c48-m2-f40-5", seed: 3)
        let pruned = try Pruning.prune(net, fraction: 0.4, method: .l1, data: nil, multiple: 8)
        #expect(pruned.layers.filter { $0.weight != nil }.map { $0.outputShape[0] } == [16, 16, 16, 5])
        #expect(Pruning.parameters(net, sites: Pruning.sites(net), fraction: 0.4, multiple: 8) == pruned.parameterCount)
    }
}
