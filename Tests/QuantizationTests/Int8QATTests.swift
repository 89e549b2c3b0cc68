import Foundation
import Inference
import ModelFile
import Quantization
import Tensor
import Testing
import Training

/// `train --qat int8`: weights and UINT8 activations fake-quantized in training, ranges tracked and
/// kept in the file's `qat` section for `quantize`.
@Suite struct Int8QATTests {
    /// Probabilities of the training graph with the fake quantization on (ranges frozen).
    func fakeQuantized(_ net: Network, _ fake: Int8FakeQuantizer, _ x: [Float], rows: Int, hooks: Bool = true) -> [Float] {
        let graph = TrainingGraph(network: net, batchCapacity: rows, dropFinalSoftmax: false)
        if hooks { graph.tensorHook = { t, v, n in fake.fakeQuantize(tensor: t, v, count: n) } }
        fake.tracking = false
        fake.quantizeWeights()
        defer { fake.restoreWeights() }
        x.withUnsafeBufferPointer { graph.forward($0.baseAddress!, batch: rows) }
        return Array(graph.output(batch: rows))
    }

    /// After INT8 QAT the INT8 plan built with the learned ranges computes what training computed
    /// (the fake-quantized graph), far closer than the same graph without the activations
    /// fake-quantized; on an MLP and on a CNN whose dense layer reads through pooling and flatten.
    @Test(arguments: ["mlp:16-12-4", "cnn:1x4x4-c6-m2-f8-4"])
    func theInt8PlanComputesWhatTrainingComputed(arch: String) throws {
        let data = labelled(160, seed: 1)
        let net = try Architecture.build(arch, seed: 2)
        let trainer = Trainer(network: net, optimizer: .adam(learningRate: 0.01), batchSize: 16, seed: 3)
        let fake = Int8FakeQuantizer(network: net)
        fake.attach(to: trainer, calibration: data)
        var accuracies: [Float] = []
        trainer.fit(data, test: data, epochs: 4) { accuracies.append($0.testAccuracy ?? -1) }
        #expect(Set(fake.ranges.keys) == Set(fake.tensors) && fake.tensors.contains(0))
        // The per-epoch accuracy is the INT8 plan's.
        let rows = 40, x = Array(data.features.prefix(16 * rows))
        let plan = QuantizedPlan(model: fake.quantizedModel(calibration: data), batchCapacity: rows, adaptive: .off).predict(x)
        let expectedAccuracy = Evaluation(scores: QuantizedPlan(model: fake.quantizedModel(calibration: data), batchCapacity: 64,
                                                                adaptive: .off).predict(data.features),
                                          classes: 4, labels: data.labels!).accuracy
        #expect(accuracies.last == expectedAccuracy)
        let trained = fakeQuantized(net, fake, x, rows: rows)
        let weightsOnly = fakeQuantized(net, fake, x, rows: rows, hooks: false)
        let offTrained = zip(plan, trained).map { abs($0 - $1) }.max()!
        let offWeightsOnly = zip(plan, weightsOnly).map { abs($0 - $1) }.max()!
        #expect(offTrained < 5e-3, "INT8 plan against the fake-quantized graph: \(offTrained)")
        #expect(offTrained * 3 < offWeightsOnly, "\(offTrained) against \(offWeightsOnly) without the activations fake-quantized")
    }

    /// The clipped straight-through estimator: values outside the range are clipped in the
    /// forward pass and their gradient stops; values inside are rounded to the grid and pass it.
    @Test func clippedValuesStopTheirGradient() throws {
        let net = try Architecture.build("mlp:4-3-2", seed: 1)
        let fake = Int8FakeQuantizer(network: net, ranges: [0: 0...2])
        fake.tracking = false
        var v: [Float] = [-1, 0.5, 3, 2, 0.001]
        v.withUnsafeMutableBufferPointer { fake.fakeQuantize(tensor: 0, $0.baseAddress!, count: 5) }
        let p = QuantParams(lo: 0, hi: 2)
        #expect(v == [0, p.dequantize(p.quantize(0.5)), 2, 2, p.dequantize(p.quantize(0.001))])
        var g: [Float] = [1, 1, 1, 1, 1]
        g.withUnsafeMutableBufferPointer { fake.maskGradient(tensor: 0, $0.baseAddress!, count: 5) }
        #expect(g == [0, 1, 0, 1, 1])
        // A tensor that is not fake-quantized (layer 0's pre-activation output) is left alone.
        var w: [Float] = [-5, 5]
        w.withUnsafeMutableBufferPointer { fake.fakeQuantize(tensor: 1, $0.baseAddress!, count: 2) }
        #expect(w == [-5, 5] && !fake.tensors.contains(1))
    }

    /// Wired into a trainer, the mask reaches the backward pass: through the graph, the input's
    /// gradient is zero where an input was clipped and flows where it was not.
    @Test func theTrainersGraphStopsTheGradientOfClippedInputs() throws {
        let net = try Architecture.build("mlp:4-3-2", seed: 5)
        let trainer = Trainer(network: net, optimizer: .sgd(learningRate: 0.1, momentum: 0, weightDecay: 0), batchSize: 1, seed: 1)
        let fake = Int8FakeQuantizer(network: net, ranges: [0: 0...1])
        fake.attach(to: trainer, calibration: labelled(40, seed: 1).rows(Array(0..<40)))
        fake.tracking = false
        let graph = trainer.graph
        graph.computesInputGradient = true
        let x: [Float] = [-0.5, 0.5, 2, 0.3]
        x.withUnsafeBufferPointer { graph.forward($0.baseAddress!, batch: 1) }
        let dy: [Float] = [1, -1]
        let dx = Array(dy.withUnsafeBufferPointer { graph.backward($0.baseAddress!, batch: 1) })
        #expect(dx[0] == 0 && dx[2] == 0, "\(dx)")
        #expect(dx[1] != 0 && dx[3] != 0, "\(dx)")
    }

    /// The section survives a write and a read, `quantize` takes its ranges (and pooling/flatten
    /// pass them on), and hostile sections are refused on load with one line naming the key.
    @Test func theSectionIsKeptCheckedAndUsed() throws {
        let net = try Architecture.build("cnn:1x4x4-c6-m2-f8-4", seed: 2)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("qat-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let fake = Int8FakeQuantizer(network: net)
        #expect(fake.tensors == [0, 2, 6])  // the input; conv → relu output (read through maxpool and flatten); dense → relu output
        net.qat = QATRanges(precision: "int8", activations: [0: -0.5...1.5, 2: 0...3.25]).json
        let path = dir.appendingPathComponent("m.safetensors").path
        try net.write(to: path)
        let back = Network(model: try ModelFile.load(path: path))
        let ranges = try QATRanges(try #require(back.qat), tensors: back.layers.count + 1)
        #expect(ranges.activations == [0: -0.5...1.5, 2: 0...3.25])
        let params = Quantizer.activationParams(Quantizer.histograms(back, labelled(40, seed: 4)), network: back, method: .minmax,
                                                learned: ranges.activations)
        #expect(params["2"] == QuantParams(lo: 0, hi: 3.25) && params["3"] == params["2"] && params["4"] == params["2"])
        #expect(params["0"] == QuantParams(lo: -0.5, hi: 1.5))

        let hostile: [(JSONValue, String)] = [
            (.string("x"), "is not an object"),
            (.object(["precision": .string("int4"), "activations": .object([:])]), "precision: 'int4' is not supported"),
            (.object(["precision": .string("int8")]), "activations: missing"),
            (.object(["precision": .string("int8"), "activations": .object(["9": .array([.number(0), .number(1)])])]),
             "activations.9: not a tensor index"),
            (.object(["precision": .string("int8"), "activations": .object(["-1": .array([.number(0), .number(1)])])]),
             "activations.-1: not a tensor index"),
            (.object(["precision": .string("int8"), "activations": .object(["02": .array([.number(0), .number(1)])])]),
             "activations.02: not a tensor index"),
            (.object(["precision": .string("int8"), "activations": .object(["2": .array([.number(3), .number(1)])])]),
             "not a finite range"),
            (.object(["precision": .string("int8"), "activations": .object(["2": .array([.number(0), .number(1e300)])])]),
             "not a finite range"),
            (.object(["precision": .string("int8"), "activations": .object(["2": .array([.number(0)])])]), "expected [lo, hi]"),
            (.object(["precision": .string("int8"), "activations": .object(["2": .string("0,1")])]), "expected [lo, hi]"),
            (.object(["precision": .string("int8"), "activations": .object([:]), "extra": .null]), "unknown key 'extra'"),
            (.object(["activations": .object([:])]), "precision: missing or not a string"),
            (.object(["precision": .number(8), "activations": .object([:])]), "precision: missing or not a string"),
            (.object(["precision": .string("int8"), "activations": .array([])]), "activations: missing or not an object"),
            (.object(["precision": .string("int8"), "activations": .object(["x": .array([.number(0), .number(1)])])]),
             "activations.\"x\": not a tensor index"),
            (.object(["precision": .string("int8"), "activations": .object(["99999999999999999999": .array([.number(0), .number(1)])])]),
             "activations.99999999999999999999: not a tensor index"),
            (.object(["precision": .string("int8"), "activations": .object(["1\n2" + String(repeating: "9", count: 5000): .array([])])]),
             "activations.\"1\\n2999"),
            (.object(["precision": .string("int8"), "activations": .object(["2": .array([.number(0), .number(1), .number(2)])])]),
             "expected [lo, hi]"),
            (.object(["precision": .string("int8"), "activations": .object(["2": .array([.string("0"), .number(1)])])]),
             "expected [lo, hi]"),
            (.object(["precision": .string("int8"), "activations": .object(["2": .array([.number(-1e300), .number(0)])])]),
             "not a finite range"),
        ]
        for (section, message) in hostile {
            net.qat = section
            try net.write(to: path)
            do {
                _ = try ModelFile.load(path: path)
                Issue.record("accepted \(section)")
            } catch let error as ModelFileError {
                #expect(error.location == "qat" && error.message.contains(message), "\(error)")
                #expect(!error.message.contains("\n") && error.message.count < 200, "not one short line: \(error.message.prefix(300))")
            }
        }
    }
}
