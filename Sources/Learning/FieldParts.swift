import Foundation
import Inference
import ModelFile
import Tensor
import Training

/// Why a model file's learning sections were refused: names the section, the tensor and what.
public struct LearningFileError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension Network {
    /// The F32 values of field tensor `name`, checked against `shape`.
    func fieldFloats(_ name: String, shape: [Int], section: String) throws -> [Float] {
        guard let blob = fieldTensors.first(where: { $0.name == name }) else {
            throw LearningFileError("\(section): tensor '\(name)' is missing")
        }
        guard blob.dtype == .f32 else { throw LearningFileError("\(section): tensor '\(name)' is \(blob.dtype), not F32") }
        guard blob.shape == shape else {
            throw LearningFileError("\(section): tensor '\(name)' has shape \(formatShape(blob.shape)), expected \(formatShape(shape))")
        }
        var out = [Float](repeating: 0, count: shape.reduce(1, *))
        out.withUnsafeMutableBytes { dst in blob.bytes.withUnsafeBytes { dst.copyMemory(from: $0) } }
        if let bad = out.firstIndex(where: { !$0.isFinite }) {
            throw LearningFileError("\(section): tensor '\(name)' holds a non-finite value at index \(bad)")
        }
        return out
    }

    func replaceFieldTensors(prefix: String, with blobs: [TensorBlob]) {
        fieldTensors = fieldTensors.filter { !$0.name.hasPrefix(prefix) } + blobs
    }
}

/// Reads a number from a section object, checked to be in `range`.
func sectionNumber(_ o: [String: JSONValue], _ key: String, section: String, in range: ClosedRange<Double>) throws -> Double {
    guard case .number(let v)? = o[key] else { throw LearningFileError("\(section).\(key): missing or not a number") }
    guard v.isFinite, range.contains(v) else { throw LearningFileError("\(section).\(key): \(v) is outside \(range.lowerBound)...\(range.upperBound)") }
    return v
}

/// The EWC anchor in a model file: the diagonal Fisher information of every trainable
/// parameter and the weights θ* it was measured at. Section `ewc`; tensors
/// `ewc.fisher.<parameter>` and `ewc.anchor.<parameter>`.
public struct EWCAnchor: Sendable {
    /// Fisher diagonal by parameter name, same element order as the parameter.
    public var fisher: [String: [Float]]
    public var anchor: [String: [Float]]
    /// Samples the latest Fisher term was averaged over.
    public var samples: Int
    /// Decay of the older Fisher at each accepted update (online EWC).
    public var gamma: Float
    /// Accepted local updates folded in since `prepare`.
    public var updates: Int

    public init(fisher: [String: [Float]], anchor: [String: [Float]], samples: Int, gamma: Float, updates: Int) {
        self.fisher = fisher
        self.anchor = anchor
        self.samples = samples
        self.gamma = gamma
        self.updates = updates
    }

    static let section = "ewc"

    /// The anchor of `network`'s file; nil when it has no `ewc` section.
    public static func decode(_ network: Network) throws -> EWCAnchor? {
        guard let json = network.ewc else { return nil }
        guard case .object(let o) = json else { throw LearningFileError("ewc: not a JSON object") }
        guard case .string(let kind)? = o["fisher"], kind == "exact" else { throw LearningFileError("ewc.fisher: expected \"exact\"") }
        let samples = try sectionNumber(o, "samples", section: section, in: 1...1e9)
        let gamma = try sectionNumber(o, "gamma", section: section, in: 0...1)
        let updates = try sectionNumber(o, "updates", section: section, in: 0...1e9)
        var fisher: [String: [Float]] = [:], anchor: [String: [Float]] = [:]
        for (name, t) in network.parameters {
            let f = try network.fieldFloats("ewc.fisher.\(name)", shape: t.shape, section: section)
            if let bad = f.firstIndex(where: { $0 < 0 || $0 > 1e6 }) {
                throw LearningFileError("ewc: tensor 'ewc.fisher.\(name)' holds \(f[bad]) at index \(bad), outside 0...1e6")
            }
            fisher[name] = f
            anchor[name] = try network.fieldFloats("ewc.anchor.\(name)", shape: t.shape, section: section)
        }
        return EWCAnchor(fisher: fisher, anchor: anchor, samples: Int(samples), gamma: Float(gamma), updates: Int(updates))
    }

    /// Writes the section and its tensors into `network` (replacing any there).
    public func encode(into network: Network) {
        network.ewc = .object(["fisher": .string("exact"), "samples": .number(Double(samples)), "gamma": .number(Double(gamma)),
                               "updates": .number(Double(updates))])
        var blobs: [TensorBlob] = []
        for (name, t) in network.parameters {
            guard let f = fisher[name], let a = anchor[name] else { continue }
            blobs.append(TensorBlob(name: "ewc.fisher.\(name)", tensor: Tensor(shape: t.shape, values: f)))
            blobs.append(TensorBlob(name: "ewc.anchor.\(name)", tensor: Tensor(shape: t.shape, values: a)))
        }
        network.replaceFieldTensors(prefix: "ewc.", with: blobs)
    }

    /// Online EWC after an accepted update: F ← γ·F + F_new, θ* ← the new weights.
    public func updated(newFisher: [String: [Float]], samples: Int, network: Network) -> EWCAnchor {
        var f = fisher
        for (name, new) in newFisher {
            let old = fisher[name] ?? [Float](repeating: 0, count: new.count)
            f[name] = zip(old, new).map { gamma * $0 + $1 }
        }
        var a: [String: [Float]] = [:]
        for (name, t) in network.parameters { a[name] = Array(UnsafeBufferPointer(start: t.pointer, count: t.count)) }
        return EWCAnchor(fisher: f, anchor: a, samples: samples, gamma: gamma, updates: updates + 1)
    }
}

/// The labelled replay seed in a model file: a class-balanced sample of rows with the model's
/// logits. Section `replay_seed` (`rows`, optionally `expected_accuracy`: the model's accuracy on
/// held-out labelled rows when it was prepared); tensors `replay.inputs` `[rows, inputs]`,
/// `replay.labels` `[rows]` (class indices as F32), `replay.logits` `[rows, classes]`.
public struct ReplaySeed: Sendable {
    public var inputs: [Float]
    public var labels: [Int]
    public var logits: [Float]
    /// Accuracy on held-out labelled rows at prepare time: what "as well as before" means.
    public var expectedAccuracy: Float?
    public var rows: Int { labels.count }

    public init(inputs: [Float], labels: [Int], logits: [Float], expectedAccuracy: Float?) {
        self.inputs = inputs
        self.labels = labels
        self.logits = logits
        self.expectedAccuracy = expectedAccuracy
    }

    static let section = "replay_seed"
    public static let maxRows = 100_000

    public static func decode(_ network: Network) throws -> ReplaySeed? {
        guard let json = network.replaySeed else { return nil }
        guard case .object(let o) = json else { throw LearningFileError("replay_seed: not a JSON object") }
        let rows = Int(try sectionNumber(o, "rows", section: section, in: 1...Double(maxRows)))
        var expected: Float? = nil
        if o["expected_accuracy"] != nil {
            expected = Float(try sectionNumber(o, "expected_accuracy", section: section, in: 0...1))
        }
        let classes = network.outputCount
        let inputs = try network.fieldFloats("replay.inputs", shape: [rows, network.inputCount], section: section)
        let rawLabels = try network.fieldFloats("replay.labels", shape: [rows], section: section)
        let logits = try network.fieldFloats("replay.logits", shape: [rows, classes], section: section)
        // Logits far beyond what a network produces would only overflow the softmaxes of training.
        if let bad = logits.firstIndex(where: { abs($0) > 1e4 }) {
            throw LearningFileError("replay_seed: tensor 'replay.logits' holds \(logits[bad]) at index \(bad), outside ±10000")
        }
        let labels = try rawLabels.enumerated().map { i, v -> Int in
            guard v == v.rounded(), v >= 0, v < Float(classes) else {
                throw LearningFileError("replay_seed: tensor 'replay.labels' row \(i) holds \(v), not a class index 0..<\(classes)")
            }
            return Int(v)
        }
        return ReplaySeed(inputs: inputs, labels: labels, logits: logits, expectedAccuracy: expected)
    }

    /// A class-balanced sample of `count` labelled rows (round-robin over the classes, each
    /// class's rows in a seeded order) with `network`'s logits.
    public static func sample(_ data: DataSet, count: Int, network: Network, seed: UInt64, expectedAccuracy: Float? = nil) -> ReplaySeed? {
        guard count > 0, let labels = data.labels, data.count > 0 else { return nil }
        var rng = SeededGenerator(seed: seed)
        var byClass: [Int: [Int]] = [:]
        for (i, l) in labels.enumerated() { byClass[l, default: []].append(i) }
        // Classes in order: a Dictionary's key order changes from process to process, and with it
        // which shuffle each class got from the generator (the seed picked other rows every run).
        let classes = byClass.keys.sorted()
        for k in classes { rng.shuffle(&byClass[k]!) }
        var picked: [Int] = [], round = 0
        let want = min(count, data.count)
        while picked.count < want {
            for c in classes where picked.count < want && round < byClass[c]!.count { picked.append(byClass[c]![round]) }
            round += 1
        }
        let rows = data.rows(picked)
        let logits = Evaluator(network: network).logits(rows.features)
        return ReplaySeed(inputs: rows.features, labels: rows.labels!, logits: logits, expectedAccuracy: expectedAccuracy)
    }

    /// The rows as learner samples.
    public var samples: [LearnSample] {
        let n = inputs.count / max(rows, 1), k = logits.count / max(rows, 1)
        return (0..<rows).map { i in
            LearnSample(input: Array(inputs[(i * n)..<((i + 1) * n)]), label: labels[i], logits: Array(logits[(i * k)..<((i + 1) * k)]))
        }
    }

    public func encode(into network: Network) {
        var o: [String: JSONValue] = ["rows": .number(Double(rows))]
        if let expectedAccuracy { o["expected_accuracy"] = .number(Double(expectedAccuracy)) }
        network.replaySeed = .object(o)
        network.replaceFieldTensors(prefix: "replay.", with: [
            TensorBlob(name: "replay.inputs", tensor: Tensor(shape: [rows, network.inputCount], values: inputs)),
            TensorBlob(name: "replay.labels", tensor: Tensor(shape: [rows], values: labels.map(Float.init))),
            TensorBlob(name: "replay.logits", tensor: Tensor(shape: [rows, network.outputCount], values: logits)),
        ])
    }
}
