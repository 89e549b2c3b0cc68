#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import Inference
import Learning
import Tensor
import Training

/// The continual-learning benchmark: the learner agentd runs, offline, on digits domain shifts.
struct LearnEval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "learn-eval",
        abstract: "Measure on-device learning on domain shifts: what EWC, replay and distillation each add.",
        discussion: """
            FILE must be trained on --data's training rows with 'agentctl model train' (the fixed
            split: row i is a test row when i % 5 == 4). For each shift of the inputs (rotation
            15/30/45°, a pixel permutation, Gaussian noise σ 2, gain ×0.6, a one-pixel
            translation) and each seed, L labelled shifted training rows are the new labels and
            a class-balanced buffer of old training rows (with the model's logits) is the replay
            memory; every method then updates the model with the same code agentd runs:
              none            the model as it is
              fine-tune       cross-entropy on the new labels only
              ewc             + λ·EWC to the anchor (exact Fisher on ≤ 1000 old training rows)
              replay          + cross-entropy on the buffer
              replay+distill  + α·KL to the buffer's stored logits
              product         EWC + replay + distillation (what agentd does)
              joint           all old training rows + the new labels (the upper bound)
            Accuracy is measured on the shifted test rows (new) and the original test rows (old);
            forgetting is the old accuracy lost; the stability gap the lowest old accuracy seen
            during the update below the model's. 'A→B→A' updates on rotation 30° and then on
            fresh original rows; backward transfer is the rotated accuracy the second update
            lost. Settings: L = 200 with a 200-row buffer, and L = 50 with 20. A policy table
            compares the replay policies on a class-skewed stream at L = 50 / 20.

            Example:
              agentctl model train --data digits.csv --arch mlp:64-128-10 --epochs 30 --out mlp.safetensors
              agentctl model learn-eval mlp.safetensors --data digits.csv --seeds 5
            """)

    @Argument(help: ArgumentHelp("A model trained on --data's training rows.", valueName: "FILE")) var file: String
    @Option(help: ArgumentHelp("The labelled CSV it was trained on.", valueName: "CSV")) var data: String
    @Option(help: "Seeds per scenario (1...100).") var seeds: Int = 5
    @Option(help: "Training steps at most per grid point.") var maxSteps: Int = 1000
    @Option(help: ArgumentHelp("Methods to run, comma-separated (default all).", valueName: "LIST"))
    var methods: String = "none,fine-tune,ewc,replay,replay+distill,product,joint"
    @Flag(help: "Skip the replay-policy table.") var noPolicies = false
    @Flag(help: "Print the report as JSON.") var json = false

    static let allMethods = ["none", "fine-tune", "ewc", "replay", "replay+distill", "product", "joint"]

    func validate() throws {
        guard (1...100).contains(seeds) else { throw ValidationError("--seeds must be 1...100") }
        guard (1...100_000).contains(maxSteps) else { throw ValidationError("--max-steps must be 1...100000") }
        for m in methods.split(separator: ",") where !Self.allMethods.contains(String(m)) {
            throw ValidationError("--methods: unknown method '\(m)' (known: \(Self.allMethods.joined(separator: ", ")))")
        }
    }

    struct Row: Codable {
        var setting: String
        var scenario: String
        var method: String
        var newAccuracy: Double
        var oldAccuracy: Double
        var forgetting: Double
        var worstForgetting: Double
        var backwardTransfer: Double?
        var stabilityGap: Double
        var steps: Double
        var milliseconds: Double
        var accepted: Int
        var runs: Int
    }

    struct PolicyRow: Codable {
        var policy: String
        var newAccuracy: Double
        var forgetting: Double
        var classesKept: Double
    }

    struct Report: Codable {
        var baseOldAccuracy: Double
        var rows: [Row]
        var policies: [PolicyRow]
        var fisherMilliseconds: Double
        var productUpdateMilliseconds: Double
        /// Of which the Fisher of the new labels (after the update, for the next one).
        var productFisherMilliseconds: Double
        var peakRSSIncreaseMiB: Double
    }

    enum Shift { case rotate(Float), permute, noise(Float), gain(Float), translate }

    func run() throws {
        try reportingErrors {
            let loaded = try LoadedModel(path: file)
            let network = loaded.network
            let all = try DataSet.load(path: data, featureCount: network.inputCount, classNames: network.labels)
            let (train, test) = all.split()
            guard train.count >= 200, test.count >= 20 else { throw DataSetError(file: data, "has \(all.count) rows; the harness needs at least 250") }
            let rssStart = Self.maxRSSKiB()
            let chosen = Set(methods.split(separator: ",").map(String.init))
            let methodList = Self.allMethods.filter { chosen.contains($0) }
            let image = DriftEval.imageShape(network.inputShape)
            var shifts: [(String, Shift)] = []
            if image != nil { shifts += [("rotation 15°", .rotate(15)), ("rotation 30°", .rotate(30)), ("rotation 45°", .rotate(45))] }
            shifts += [("permutation", .permute), ("noise σ2", .noise(2)), ("gain ×0.6", .gain(0.6))]
            if image != nil { shifts.append(("translation 1px", .translate)) }
            let trainSamples = Self.samples(train), oldTest = Self.samples(test)
            let baseOld = Evaluator(network: network).accuracy(oldTest)

            let fisherStart = Date()
            let fisherRows = Array(trainSamples.prefix(1000))
            let fisher = fisherRows.flatMap(\.input).withUnsafeBufferPointer {
                FisherInformation.diagonal(network: network, rows: $0.baseAddress!, count: fisherRows.count)
            }
            let fisherMs = Date().timeIntervalSince(fisherStart) * 1000
            let anchor = EWCAnchor(fisher: fisher, anchor: Dictionary(uniqueKeysWithValues: network.parameters.map { ($0.name, $0.tensor.values) }),
                                   samples: fisherRows.count, gamma: 0.9, updates: 0)

            func transform(_ s: Shift, _ rows: [LearnSample], _ rng: inout SeededGenerator, permutation: [Int]) -> [LearnSample] {
                rows.map { r in
                    var x = r.input
                    switch s {
                    case .rotate(let d): x = DriftEval.rotate(x, image!, degrees: d)
                    case .permute: x = permutation.map { x[$0] }
                    case .noise(let sigma): x = x.map { $0 + sigma * rng.nextGaussian() }
                    case .gain(let g): x = x.map { $0 * g }
                    case .translate: x = DriftEval.translate(x, image!)
                    }
                    return LearnSample(input: x, label: r.label, logits: nil)
                }
            }

            func settings(_ m: String, seed: UInt64) -> LearnSettings {
                var s = LearnSettings()
                s.maxSteps = maxSteps
                s.seed = seed
                s.alwaysTrain = true
                switch m {
                case "fine-tune": s.method = LearnMethod(ewc: false, replay: false, distillation: false)
                case "ewc": s.method = LearnMethod(ewc: true, replay: false, distillation: false)
                case "replay", "joint": s.method = LearnMethod(ewc: false, replay: true, distillation: false)
                case "replay+distill": s.method = LearnMethod(ewc: false, replay: true, distillation: true)
                default: s.method = .product
                }
                return s
            }

            var productFisherMs: [Double] = []
            /// One update; returns the network after it (the base for "none") and the outcome.
            func update(_ m: String, base: Network, anchor: EWCAnchor?, new: [LearnSample], buffer: [LearnSample], seed: UInt64,
                        probe: [LearnSample]) throws -> (Network, LearnOutcome?, Double) {
                guard m != "none" else { return (base, nil, 0) }
                let replay = m == "joint" ? trainSamples + buffer.filter { $0.logits == nil } : buffer
                let t = Date()
                let o = try ContinualLearner.run(base: base, anchor: m == "ewc" || m == "product" ? anchor : nil, newData: new, replay: replay,
                                                 expectedAccuracy: nil, settings: settings(m, seed: seed), probe: probe)
                if m == "product", let trained = o.network {
                    // As agentd does after an update: the Fisher of the new labels for the next one.
                    let f0 = Date()
                    _ = new.flatMap(\.input).withUnsafeBufferPointer {
                        FisherInformation.diagonal(network: trained, rows: $0.baseAddress!, count: min(new.count, 1000))
                    }
                    productFisherMs.append(Date().timeIntervalSince(f0) * 1000)
                }
                return (o.network ?? base, o, Date().timeIntervalSince(t) * 1000)
            }

            struct Acc { var new = [Double](), old = [Double](), forget = [Double](), bwt = [Double](), gap = [Double](), steps = [Double](), ms = [Double](), accepted = 0 }
            var rows: [Row] = []
            var productMs: [Double] = []
            let configurations = [(name: "L=200, buffer 200", labels: 200, buffer: 200), (name: "L=50, buffer 20", labels: 50, buffer: 20)]
            for config in configurations {
                for (si, (name, shift)) in (shifts + [("A→B→A", Shift.rotate(30))]).enumerated() {
                    let abba = name == "A→B→A"
                    if abba && image == nil { continue }
                    var acc = [String: Acc]()
                    for seed in 0..<seeds {
                        var rng = SeededGenerator(seed: UInt64(7_919 * (seed + 1) + si))
                        var permutation = Array(0..<network.inputCount)
                        rng.shuffle(&permutation)
                        var order = Array(trainSamples.indices)
                        rng.shuffle(&order)
                        let picked = order.prefix(config.labels).map { trainSamples[$0] }
                        let newLabels = transform(shift, picked, &rng, permutation: permutation)
                        let newTest = transform(shift, oldTest, &rng, permutation: permutation)
                        let buffer = ReplaySeed.sample(train, count: config.buffer, network: network, seed: UInt64(seed + 1))!.samples
                        if !abba && !json { printError("\(config.name) · \(name) · seed \(seed + 1)/\(seeds)") }
                        for m in methodList {
                            var a = acc[m] ?? Acc()
                            if abba {
                                guard m != "none" else { continue }
                                if !json { printError("\(config.name) · \(name) · seed \(seed + 1)/\(seeds) · \(m)") }
                                // Update 1 on B; the agent then keeps B's labels in the replay memory with the new
                                // model's logits and moves the anchor (online EWC); update 2 on fresh A rows.
                                let (m1, _, _) = try update(m, base: network, anchor: anchor, new: newLabels, buffer: buffer, seed: UInt64(seed), probe: [])
                                let b1 = Evaluator(network: m1).accuracy(newTest)
                                var buffer2 = buffer
                                var anchor2 = anchor
                                if m != "fine-tune" && m != "ewc" {
                                    let logits = Evaluator(network: m1).logits(newLabels.flatMap(\.input))
                                    let k = network.outputCount
                                    let withLogits = newLabels.enumerated().map { i, s in
                                        LearnSample(input: s.input, label: s.label, logits: m == "joint" ? nil : Array(logits[(i * k)..<((i + 1) * k)]))
                                    }
                                    buffer2 = Self.policyMerge(buffer, withLogits, capacity: config.buffer, joint: m == "joint", seed: UInt64(seed))
                                }
                                if m == "ewc" || m == "product" {
                                    // As agentd does: the Fisher of B's labels joins the decayed old one.
                                    let f = newLabels.flatMap(\.input).withUnsafeBufferPointer {
                                        FisherInformation.diagonal(network: m1, rows: $0.baseAddress!, count: newLabels.count)
                                    }
                                    anchor2 = anchor.updated(newFisher: f, samples: newLabels.count, network: m1)
                                }
                                let freshA = order.dropFirst(config.labels).prefix(config.labels).map { trainSamples[$0] }
                                let (m2, _, _) = try update(m, base: m1, anchor: anchor2, new: Array(freshA), buffer: buffer2, seed: UInt64(seed + 100), probe: [])
                                a.bwt.append((Evaluator(network: m2).accuracy(newTest) - b1) * 100)
                                a.new.append(b1 * 100)
                                let old = Evaluator(network: m2).accuracy(oldTest)
                                a.old.append(old * 100)
                                a.forget.append((baseOld - old) * 100)
                                acc[m] = a
                                continue
                            }
                            let (net, outcome, ms) = try update(m, base: network, anchor: anchor, new: newLabels, buffer: buffer, seed: UInt64(seed), probe: oldTest)
                            let eval = Evaluator(network: net)
                            let old = eval.accuracy(oldTest)
                            a.new.append(eval.accuracy(newTest) * 100)
                            a.old.append(old * 100)
                            a.forget.append((baseOld - old) * 100)
                            a.gap.append(max(0, baseOld - (outcome?.lowestProbeAccuracy ?? baseOld)) * 100)
                            a.steps.append(Double(outcome?.totalSteps ?? 0))
                            a.ms.append(ms)
                            if outcome?.decision == .accepted { a.accepted += 1 }
                            if m == "product" && config.labels == 200 { productMs.append(ms) }
                            acc[m] = a
                        }
                    }
                    for m in methodList {
                        guard let a = acc[m], !a.new.isEmpty else { continue }
                        rows.append(Row(setting: config.name, scenario: name, method: m, newAccuracy: Self.mean(a.new), oldAccuracy: Self.mean(a.old),
                                        forgetting: Self.mean(a.forget), worstForgetting: a.forget.max() ?? 0,
                                        backwardTransfer: a.bwt.isEmpty ? nil : Self.mean(a.bwt), stabilityGap: Self.mean(a.gap),
                                        steps: Self.mean(a.steps), milliseconds: Self.mean(a.ms), accepted: a.accepted, runs: a.new.count))
                    }
                }
            }

            var policies: [PolicyRow] = []
            if !noPolicies && methodList.contains("product") {
                for kind in ReplayPolicyKind.allCases {
                    var new: [Double] = [], forget: [Double] = [], kept: [Double] = []
                    for seed in 0..<seeds {
                        var rng = SeededGenerator(seed: UInt64(31 * (seed + 1)))
                        var permutation = Array(0..<network.inputCount)
                        rng.shuffle(&permutation)
                        // A skewed stream: classes in the first half of the labels come 4× as often.
                        var stream: [Int] = []
                        for (i, s) in trainSamples.enumerated() { stream += Array(repeating: i, count: s.label! < network.outputCount / 2 ? 4 : 1) }
                        rng.shuffle(&stream)
                        var index = ReplayIndex(kind: kind, capacity: 20, liveShare: 0, seed: UInt64(seed + 1))
                        let logits = Evaluator(network: network).logits(trainSamples.flatMap(\.input))
                        let k = network.outputCount
                        for (n, i) in stream.enumerated() {
                            let l = Array(logits[(i * k)..<((i + 1) * k)])
                            let score = l.withUnsafeBufferPointer { replayValue(logits: $0.baseAddress!, classes: k, label: trainSamples[i].label) }
                            _ = index.offer(ReplayEntry(id: Int64(n), label: trainSamples[i].label, group: trainSamples[i].label!, source: .seed, score: score))
                        }
                        let buffer = index.entries.map { e -> LearnSample in
                            let i = stream[Int(e.id)]
                            return LearnSample(input: trainSamples[i].input, label: trainSamples[i].label, logits: Array(logits[(i * k)..<((i + 1) * k)]))
                        }
                        kept.append(Double(Set(buffer.map { $0.label! }).count))
                        var order = Array(trainSamples.indices)
                        rng.shuffle(&order)
                        let shift: Shift = image != nil ? .rotate(30) : .permute
                        let newLabels = transform(shift, order.prefix(50).map { trainSamples[$0] }, &rng, permutation: permutation)
                        let newTest = transform(shift, oldTest, &rng, permutation: permutation)
                        let (net, _, _) = try update("product", base: network, anchor: anchor, new: newLabels, buffer: buffer, seed: UInt64(seed), probe: [])
                        let eval = Evaluator(network: net)
                        new.append(eval.accuracy(newTest) * 100)
                        forget.append((baseOld - eval.accuracy(oldTest)) * 100)
                    }
                    policies.append(PolicyRow(policy: kind.rawValue, newAccuracy: Self.mean(new), forgetting: Self.mean(forget), classesKept: Self.mean(kept)))
                }
            }

            let report = Report(baseOldAccuracy: baseOld * 100, rows: rows, policies: policies, fisherMilliseconds: fisherMs,
                                productUpdateMilliseconds: Self.mean(productMs), productFisherMilliseconds: Self.mean(productFisherMs), peakRSSIncreaseMiB: Double(Self.maxRSSKiB() - rssStart) / 1024)
            if json { printJSON(report); return }
            Self.printReport(report, methods: methodList)
        }
    }

    /// B's labels join the buffer as the agent's class-balanced replay memory would take them.
    static func policyMerge(_ buffer: [LearnSample], _ new: [LearnSample], capacity: Int, joint: Bool, seed: UInt64) -> [LearnSample] {
        if joint { return buffer + new }
        var index = ReplayIndex(kind: .classBalanced, capacity: capacity, liveShare: 0, seed: seed)
        let all = buffer + new
        for (i, s) in all.enumerated() { _ = index.offer(ReplayEntry(id: Int64(i), label: s.label, group: s.label ?? 0, source: .seed, score: 0)) }
        return index.entries.map { all[Int($0.id)] }
    }

    static func samples(_ d: DataSet) -> [LearnSample] {
        (0..<d.count).map { i in LearnSample(input: Array(d.features[(i * d.featureCount)..<((i + 1) * d.featureCount)]), label: d.labels![i], logits: nil) }
    }

    static func mean(_ x: [Double]) -> Double { x.isEmpty ? 0 : x.reduce(0, +) / Double(x.count) }

    static func maxRSSKiB() -> Int {
        var u = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
        return u.ru_maxrss
    }

    static func printReport(_ r: Report, methods: [String]) {
        func f(_ x: Double) -> String { String(format: "%.1f", x) }
        print("old test accuracy before any update: \(f(r.baseOldAccuracy))%")
        for setting in ["L=200, buffer 200", "L=50, buffer 20"] {
            let rows = r.rows.filter { $0.setting == setting }
            guard !rows.isEmpty else { continue }
            print("\n\(setting): new accuracy % / forgetting pt (mean over seeds)")
            let scenarios = rows.map(\.scenario).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
            print(table(["scenario"] + methods, scenarios.map { s in
                [s] + methods.map { m in
                    guard let x = rows.first(where: { $0.scenario == s && $0.method == m }) else { return "–" }
                    return x.backwardTransfer.map { "\(f(x.newAccuracy)) / bwt \(f($0))" } ?? "\(f(x.newAccuracy)) / \(f(x.forgetting))"
                }
            }, rightAligned: Set(1...methods.count)))
            print("\nsummary over the shifts (A→B→A apart)")
            print(table(["method", "new %", "new / joint (worst)", "forgetting mean", "worst", "stability gap", "steps", "ms", "accepted"],
                        methods.map { m in
                            let xs = rows.filter { $0.method == m && $0.backwardTransfer == nil }
                            let joint = rows.filter { $0.method == "joint" && $0.backwardTransfer == nil }
                            let ratio = xs.compactMap { x in joint.first { $0.scenario == x.scenario }.map { x.newAccuracy / max($0.newAccuracy, 1e-9) } }.min()
                            let abba = rows.first { $0.method == m && $0.backwardTransfer != nil }
                            return [m, f(mean(xs.map(\.newAccuracy))), ratio.map { String(format: "%.3f", $0) } ?? "–",
                                    f(mean(xs.map(\.forgetting))), f(xs.map(\.worstForgetting).max() ?? 0), f(mean(xs.map(\.stabilityGap))),
                                    String(format: "%.0f", mean(xs.map(\.steps))), String(format: "%.0f", mean(xs.map(\.milliseconds))),
                                    "\(xs.reduce(0) { $0 + $1.accepted })/\(xs.reduce(0) { $0 + $1.runs })"
                                    + (abba?.backwardTransfer.map { "  (A→B→A bwt \(f($0)))" } ?? "")]
                        }, rightAligned: Set(1...7)))
        }
        if !r.policies.isEmpty {
            print("\nreplay policies, class-skewed stream, L=50, buffer 20, product:")
            print(table(["policy", "new %", "forgetting pt", "classes kept"],
                        r.policies.map { [$0.policy, f($0.newAccuracy), f($0.forgetting), f($0.classesKept)] }, rightAligned: [1, 2, 3]))
        }
        let grid = Double(LearnSettings().lambdas.count * LearnSettings().alphas.count)
        print(String(format: "\nFisher on ≤ 1000 rows (prepare): %.0f ms. A product update at L=200, mean: %.0f ms for the grid of %.0f runs "
                     + "and the Fisher of the new labels (%.0f ms); one run (≤ %d steps, early stopping) + that Fisher: %.0f ms. Peak RSS increase %.1f MiB",
                     r.fisherMilliseconds, r.productUpdateMilliseconds, grid, r.productFisherMilliseconds, LearnSettings().maxSteps,
                     (r.productUpdateMilliseconds - r.productFisherMilliseconds) / grid + r.productFisherMilliseconds, r.peakRSSIncreaseMiB))
    }
}
