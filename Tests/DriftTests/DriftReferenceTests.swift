import Foundation
import Inference
import ModelFile
import Tensor
import Testing
@testable import Drift

/// A small MLP 6 → 12 (relu) → 3 (softmax) with seeded weights, and Gaussian rows for it.
enum Fixture {
    static func network(seed: UInt64 = 7) -> Network {
        var rng = SeededGenerator(seed: seed)
        func t(_ shape: [Int]) -> Tensor { Tensor(shape: shape, values: (0..<shape.reduce(1, *)).map { _ in rng.nextGaussian() * 0.6 }) }
        return Network(name: "mlp", inputShape: [6], labels: ["a", "b", "c"], layers: [
            NetworkLayer(kind: .dense, inputShape: [6], outputShape: [12], weight: t([12, 6]), bias: t([12]), weightName: "l1.weight", biasName: "l1.bias"),
            NetworkLayer(kind: .relu, inputShape: [12], outputShape: [12]),
            NetworkLayer(kind: .dense, inputShape: [12], outputShape: [3], weight: t([3, 12]), bias: t([3]), weightName: "l2.weight", biasName: "l2.bias"),
            NetworkLayer(kind: .softmax, inputShape: [3], outputShape: [3]),
        ])
    }

    static func rows(_ n: Int, seed: UInt64, shift: Float = 0, feature: Int? = nil) -> [Float] {
        var rng = SeededGenerator(seed: seed)
        return (0..<(n * 6)).map { i in rng.nextGaussian() + (feature == nil || i % 6 == feature! ? shift : 0) }
    }

    /// Values of every source for `rows` through an FP32 plan with the projection.
    static func values(_ net: Network, _ rows: [Float], _ projection: EmbeddingProjection?) -> [SignalSource: [Float]] {
        let plan = ExecutionPlan(network: net, batchCapacity: 64, embedding: projection)
        return DriftPreparation.signalValues(plan: plan, rows: rows, sources: [.input, .output, .confidence, .embedding],
                                             classes: 3, probabilities: true)
    }

    static func reference(_ net: Network, falseAlarmRun: Int = 300) throws -> (DriftReference, EmbeddingProjection) {
        let rows = Self.rows(800, seed: 11)
        let projection = DriftPreparation.principalDirections(network: net, rows: rows, count: 4)!
        var options = DriftCalibration.Options()
        options.falseAlarmRun = falseAlarmRun
        let outcome = try DriftCalibration.build(values: values(net, rows, projection), rows: 800, classes: 3, scoresAreProbabilities: true,
                                                 embeddingLayer: projection.layer, directions: projection.directions, options: options)
        return (outcome.reference, projection)
    }
}

@Suite struct EmbeddingTapTests {
    @Test func tapIsThePenultimateActivationsTimesTheDirections() {
        let net = Fixture.network()
        let rows = Fixture.rows(9, seed: 3)
        let projection = DriftPreparation.randomDirections(network: net, count: 4, seed: 5)!
        #expect(projection.layer == 2)
        let plan = ExecutionPlan(network: net, batchCapacity: 9, embedding: projection)
        let withTap = rows.withUnsafeBufferPointer { Array(plan.run($0.baseAddress!, batch: 9)) }
        let emb = Array(plan.embeddings!)
        // The tap changes nothing in the scores.
        #expect(withTap == ExecutionPlan(network: net, batchCapacity: 9).predict(rows))
        let head = Network(name: "h", inputShape: [6], labels: [], layers: Array(net.layers[0..<2]))
        let h = ExecutionPlan(network: head, batchCapacity: 9).predict(rows)
        for r in 0..<9 {
            for j in 0..<4 {
                var s: Float = 0
                for i in 0..<12 { s += h[r * 12 + i] * projection.directions[j * 12 + i] }
                #expect(abs(emb[r * 4 + j] - s) < 1e-4)
            }
        }
    }

    @Test func principalDirectionsAreOrthonormal() {
        let net = Fixture.network()
        let p = DriftPreparation.principalDirections(network: net, rows: Fixture.rows(300, seed: 1), count: 4)!
        for a in 0..<4 {
            for b in 0..<4 {
                var dot: Float = 0
                for i in 0..<12 { dot += p.directions[a * 12 + i] * p.directions[b * 12 + i] }
                #expect(abs(dot - (a == b ? 1 : 0)) < 1e-3)
            }
        }
    }
}

@Suite struct DriftReferenceTests {
    @Test func calibratedThresholdsHoldOnNewRowsAndCatchAShift() throws {
        let net = Fixture.network()
        let (reference, projection) = try Fixture.reference(net, falseAlarmRun: 300)
        #expect(reference.verifiedRunLength.map { $0 >= 300 } == true)
        let detector = DriftDetector(reference: reference, classes: 3, scoresAreProbabilities: true)
        func run(_ rows: [Float]) -> [Int] {
            let v = Fixture.values(net, rows, projection)
            let binned = DriftCalibration.binRows(v, rows: rows.count / 6, binner: detector.binner)
            var alarms: [Int] = []
            binned.withUnsafeBufferPointer { b in
                for t in 0..<(rows.count / 6) {
                    if case .detected = detector.observe(b.baseAddress! + t * detector.binner.width) { alarms.append(t) }
                }
            }
            return alarms
        }
        // Fresh rows from the same population: few false alarms.
        let stationary = run(Fixture.rows(12_000, seed: 99))
        #expect(stationary.count <= 12_000 / 300 + 2, "false alarms: \(stationary.count)")
        // One feature shifted by 1.5 σ: detected within a window or two.
        detector.reset()
        let shifted = run(Fixture.rows(200, seed: 5) + Fixture.rows(300, seed: 6, shift: 1.5, feature: 2))
        let hit = shifted.first { $0 >= 200 }
        #expect(hit != nil && hit! - 200 < 64, "alarm at \(String(describing: hit))")
    }

    @Test func referenceSurvivesAModelFileAndEveryRewrite() throws {
        let net = Fixture.network()
        let (reference, _) = try Fixture.reference(net)
        let (section, tensors) = reference.encoded()
        net.driftReference = section
        net.fieldTensors = tensors
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("drift-\(getpid()).safetensors").path
        defer { unlink(path) }
        try net.write(to: path)
        let file = try ModelFile.load(path: path)
        let loaded = try DriftReference.load(file, inputCount: 6, classCount: 3, penultimate: (2, 12))
        #expect(loaded == reference)
        // A rewrite (what quantize and training do: Network from the file, then write) keeps it.
        let again = Network(model: file)
        try again.write(to: path)
        #expect(try DriftReference.load(try ModelFile.load(path: path), inputCount: 6, classCount: 3, penultimate: (2, 12)) == reference)
    }

    /// The stored reference with one thing changed: section JSON or a tensor.
    static func decode(_ reference: DriftReference, section edit: (inout [String: JSONValue]) -> Void = { _ in },
                       tensor: (String, DriftReference.StoredTensor) -> DriftReference.StoredTensor = { $1 }) throws -> DriftReference {
        let (section, blobs) = reference.encoded()
        guard case .object(var o) = section else { fatalError() }
        edit(&o)
        let stored = Dictionary(uniqueKeysWithValues: blobs.map { b in
            (b.name, DriftReference.StoredTensor(dtype: "F32", shape: b.shape, values: b.bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }))
        })
        return try DriftReference.decode(section: .object(o), file: "m.safetensors", inputCount: 6, classCount: 3, penultimate: (2, 12)) { name in
            stored[name].map { tensor(name, $0) }
        }
    }

    static func signal(_ o: inout [String: JSONValue], _ i: Int, _ key: String, _ value: JSONValue) {
        guard case .array(var signals) = o["signals"], case .object(var s) = signals[i] else { return }
        s[key] = value
        signals[i] = .object(s)
        o["signals"] = .array(signals)
    }

    @Test func hostileReferencesAreRefusedWithTheirPlace() throws {
        let (reference, _) = try Fixture.reference(Fixture.network())
        #expect(try Self.decode(reference) == reference)
        let cases: [(String, (inout [String: JSONValue]) -> Void)] = [
            ("alpha must be", { $0["alpha"] = .number(-1) }),
            ("alpha must be", { $0["alpha"] = .number(1e300) }),
            ("needs 1 to 16 signals", { $0["signals"] = .array([]) }),
            ("window must be", { Self.signal(&$0, 0, "window", .number(0)) }),
            ("window must be", { Self.signal(&$0, 0, "window", .number(1e9)) }),
            ("threshold must be", { Self.signal(&$0, 1, "threshold", .number(-3)) }),
            ("threshold must be", { Self.signal(&$0, 1, "threshold", .number(0)) }),
            ("unique identifier", { Self.signal(&$0, 1, "name", .string("input")) }),
            ("unique identifier", { Self.signal(&$0, 1, "name", .string("in put\n")) }),
            ("malformed", { Self.signal(&$0, 1, "source", .string("weather")) }),
            ("malformed", { Self.signal(&$0, 1, "aggregate", .string("median")) }),
            ("malformed", { $0["rows"] = .string("many") }),
            ("embedding_layer", { $0["embedding_layer"] = .number(0) }),
            ("row counts", { $0["rows"] = .number(0) }),
        ]
        for (expected, edit) in cases {
            #expect(throws: ModelFileError.self) { try Self.decode(reference, section: edit) }
            do { _ = try Self.decode(reference, section: edit) } catch { #expect("\(error)".contains(expected), "\(error)") }
        }
        let tensorCases: [(String, String, (DriftReference.StoredTensor) -> DriftReference.StoredTensor)] = [
            ("drift.input.edges", "NaN", { var t = $0; t.values[3] = .nan; return t }),
            ("drift.input.edges", "−∞", { var t = $0; t.values[0] = -.infinity; return t }),
            ("drift.input.edges", "increase", { var t = $0; t.values[1] = t.values[0] - 1; return t }),
            ("drift.input.edges", "must be F32", { var t = $0; t.shape = [7, t.shape[1]]; return t }),
            ("drift.input.counts", "counts must be", { var t = $0; t.values[0] = -1; return t }),
            ("drift.input.counts", "counts must be", { var t = $0; t.values[0] = .infinity; return t }),
            ("drift.output.edges", "one bin per class", { var t = $0; t.shape = [1, 1]; t.values = [0.5]; return t }),
            ("drift.embedding.directions", "not finite", { var t = $0; t.values[0] = .nan; return t }),
            ("drift.confidence.edges", "must be F32", { var t = $0; t.dtype = "F16"; return t }),
        ]
        for (name, expected, edit) in tensorCases {
            do {
                _ = try Self.decode(reference, tensor: { n, t in n == name ? edit(t) : t })
                Issue.record("\(name): \(expected) accepted")
            } catch {
                #expect("\(error)".contains(expected), "\(name): \(error)")
            }
        }
    }
}
