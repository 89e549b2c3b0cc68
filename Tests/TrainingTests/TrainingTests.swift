import Foundation
import Inference
import ModelFile
import Tensor
import Testing
import Training

let digitsPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../../tools/data/digits.csv").standardized.path

@Suite struct OptimizerTests {
    @Test func sgdWithMomentumAndWeightDecay() {
        let w = Tensor(shape: [2], values: [1, -2]), g = Tensor(shape: [2], values: [0.5, 0.25])
        let opt = Optimizer(kind: .sgd(learningRate: 0.1, momentum: 0.9, weightDecay: 0.01), pairs: [(w, g)])
        opt.step()
        // v = g + λw; w -= lr·v
        let v1: [Float] = [0.5 + 0.01, 0.25 - 0.02]
        #expect(w.values == [1 - 0.1 * v1[0], -2 - 0.1 * v1[1]])
        let w1 = w.values
        opt.step()
        let v2 = [0.9 * v1[0] + 0.5 + 0.01 * w1[0], 0.9 * v1[1] + 0.25 + 0.01 * w1[1]]
        #expect(abs(w[0] - (w1[0] - 0.1 * v2[0])) < 1e-7)
        #expect(abs(w[1] - (w1[1] - 0.1 * v2[1])) < 1e-7)
    }

    @Test func adamFirstStepMovesByTheLearningRate() {
        let w = Tensor(shape: [3], values: [1, 1, 1]), g = Tensor(shape: [3], values: [3, -0.001, 0])
        let opt = Optimizer(kind: .adam(learningRate: 0.01), pairs: [(w, g)])
        opt.step()
        // With bias correction the first step is lr·g/(|g|+ε): ±lr, and nothing for g = 0.
        #expect(abs(w[0] - 0.99) < 1e-6)
        #expect(abs(w[1] - 1.01) < 1e-4)
        #expect(w[2] == 1)
    }

    @Test func adamDecoupledWeightDecay() {
        let w = Tensor(shape: [1], values: [2]), g = Tensor(shape: [1], values: [0])
        let opt = Optimizer(kind: .adam(learningRate: 0.1, weightDecay: 0.5), pairs: [(w, g)])
        opt.step()
        #expect(abs(w[0] - 2 * (1 - 0.05)) < 1e-6)
    }
}

@Suite struct TrainerTests {
    func digits() throws -> (DataSet, DataSet) {
        try DataSet.load(path: digitsPath).split()
    }

    /// Training flushes denormals to zero for speed, but only while it runs: the mode is per
    /// thread, and Swift concurrency runs other work on the same threads afterwards.
    @Test func trainingLeavesTheThreadsFloatingPointModeAsItFoundIt() throws {
        let (train, _) = try digits()
        let net = try Architecture.build("mlp:64-16-10", seed: 1, preprocessing: Preprocessing(scale: 1.0 / 16, shift: 0))
        Trainer(network: net, optimizer: .sgd(learningRate: 0.01, momentum: 0, weightDecay: 0), batchSize: 64, seed: 1)
            .fit(train, test: nil, epochs: 1) { _ in }
        // Decoded at run time (opaque to the optimizer), then used in this thread's mode. A left-
        // over denormals-are-zero made JSONDecoder refuse this very number.
        let decoded = try JSONDecoder().decode([Float].self, from: Data("[1e-45, 2]".utf8))
        #expect(decoded[0] == Float(bitPattern: 1))
        #expect(decoded[0] * decoded[1] == Float(bitPattern: 2), "subnormals flushed to zero after training")
        let inside = BLAS.withDenormalsFlushedToZero { decoded[0] * decoded[1] }
        #expect(inside == 0, "denormals-are-zero was not in force inside the scope")
    }

    @Test func frozenTensorsDoNotChange() throws {
        let (train, _) = try digits()
        let net = try Architecture.build("mlp:64-32-10", seed: 1, preprocessing: Preprocessing(scale: 1.0 / 16, shift: 0))
        let before = net.copy()
        let trainer = Trainer(network: net, optimizer: .adam(learningRate: 0.01), batchSize: 32, seed: 1, trainable: ["fc2.weight"])
        _ = trainer.trainEpoch(train)
        let params = Dictionary(uniqueKeysWithValues: net.parameters.map { ($0.name, $0.tensor.values) })
        let old = Dictionary(uniqueKeysWithValues: before.parameters.map { ($0.name, $0.tensor.values) })
        #expect(params["fc1.weight"] == old["fc1.weight"])
        #expect(params["fc1.bias"] == old["fc1.bias"])
        #expect(params["fc2.bias"] == old["fc2.bias"])
        #expect(params["fc2.weight"] != old["fc2.weight"])
    }

    @Test func sameSeedSameModelBitForBit() throws {
        let (train, _) = try digits()
        func run(seed: UInt64) throws -> [Float] {
            let net = try Architecture.build("mlp:64-16-10", seed: seed, preprocessing: Preprocessing(scale: 1.0 / 16, shift: 0))
            let trainer = Trainer(network: net, optimizer: .sgd(learningRate: 0.05, momentum: 0.9, weightDecay: 0), batchSize: 16, seed: seed)
            _ = trainer.trainEpoch(train)
            return net.parameters.flatMap { $0.tensor.values }
        }
        #expect(try run(seed: 3) == run(seed: 3))
        #expect(try run(seed: 3) != run(seed: 4))
    }

    @Test func mlpLearnsDigits() throws {
        let (train, test) = try digits()
        let net = try Architecture.build("mlp:64-64-10", seed: 1, preprocessing: Preprocessing(scale: 1.0 / 16, shift: 0))
        let trainer = Trainer(network: net, optimizer: .adam(learningRate: 0.003), batchSize: 32, seed: 1)
        var reports: [EpochReport] = []
        trainer.fit(train, test: test, epochs: 8) { reports.append($0) }
        #expect(reports.count == 8)
        #expect(reports.last!.loss < reports.first!.loss)
        #expect(reports.last!.testAccuracy! >= 0.94, "test accuracy \(reports.last!.testAccuracy!)")
        let e = Evaluation(network: net, data: test)
        #expect(e.confusion.flatMap { $0 }.reduce(0, +) == test.count)
        #expect(abs(e.accuracy - reports.last!.testAccuracy!) < 1e-6)
    }

    @Test func cnnTrainsThroughConvAndPooling() throws {
        let (train, test) = try digits()
        let net = try Architecture.build("cnn:1x8x8-c8-m2-f32-10", seed: 2, preprocessing: Preprocessing(scale: 1.0 / 16, shift: 0))
        let trainer = Trainer(network: net, optimizer: .adam(learningRate: 0.003), batchSize: 32, seed: 2)
        var last: EpochReport?
        trainer.fit(train, test: test, epochs: 3) { last = $0 }
        #expect(last!.testAccuracy! >= 0.90, "test accuracy \(last!.testAccuracy!)")
    }
}

@Suite struct DataSetTests {
    func expectError(_ text: String, _ fragment: String, featureCount: Int? = nil, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try DataSet.parse(text, file: "d.csv", featureCount: featureCount)
            Issue.record("accepted; expected '\(fragment)'", sourceLocation: sourceLocation)
        } catch let e as DataSetError {
            #expect(e.description.contains(fragment), "\(e)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func parsesAndMapsLabels() throws {
        let d = try DataSet.parse("a,b,label\n1,2,10\n3,4,9\r\n5,6,10\n\n", file: "d.csv")
        #expect(d.count == 3)
        #expect(d.featureCount == 2)
        #expect(d.classNames == ["9", "10"])
        #expect(d.labels == [1, 0, 1])
        #expect(d.features == [1, 2, 3, 4, 5, 6])
    }

    @Test func wrongColumnCountNamesTheLine() { expectError("a,b,label\n1,2,0\n1,0\n", "d.csv:3: expected 3 columns, found 2") }
    @Test func nonNumericNamesLineAndColumn() { expectError("a,b,label\n1,2,0\n1,x,0\n", "d.csv:3: column 2 ('b'): 'x' is not a number") }
    @Test func notFinite() { expectError("a,label\nnan,0\n", "d.csv:2: column 1 ('a'): nan is not finite") }
    @Test func missingLabelColumn() { expectError("a,b\n1,2\n", "d.csv:1: no 'label' column") }
    @Test func labelNotLast() { expectError("label,a\n1,2\n", "must be the last column") }
    @Test func emptyFile() { expectError("", "d.csv: is empty") }
    @Test func headerOnly() { expectError("a,label\n", "has a header but no samples") }
    @Test func featureCountDiffersFromModel() { expectError("a,b,label\n1,2,0\n", "has 2 feature columns but the model takes 64", featureCount: 64) }

    @Test func unknownLabelForModel() {
        #expect(throws: DataSetError.self) { try DataSet.parse("a,label\n1,7\n", file: "d.csv", classNames: ["0", "1"]) }
    }

    @Test func splitIsEveryFifthRow() throws {
        let text = "a,label\n" + (0..<10).map { "\($0),0" }.joined(separator: "\n")
        let (train, test) = try DataSet.parse(text, file: "d.csv").split()
        #expect(test.features == [4, 9])
        #expect(train.count == 8)
    }

    @Test func digitsFileShipsWhole() throws {
        let d = try DataSet.load(path: digitsPath)
        #expect(d.count == 1797)
        #expect(d.featureCount == 64)
        #expect(d.classNames == (0..<10).map(String.init))
        #expect(d.features.max() == 16)
    }
}

@Suite struct ArchitectureTests {
    @Test func mlpShapes() throws {
        let n = try Architecture.build("mlp:64-256-256-10", seed: 1)
        #expect(n.layers.map(\.name) == ["dense", "relu", "dense", "relu", "dense", "softmax"])
        #expect(n.parameterCount == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10)
    }

    @Test func cnnShapes() throws {
        let n = try Architecture.build("cnn:1x28x28-c16k5-m2-c32k5s1p0-a2-f64-10", seed: 1)
        #expect(n.layers.map(\.outputShape) == [[16, 28, 28], [16, 28, 28], [16, 14, 14], [32, 10, 10], [32, 10, 10], [32, 5, 5],
                                                [800], [64], [64], [10], [10]])
        let g = try Architecture.build("cnn:1x8x8-c8-g-10", seed: 1)
        #expect(g.layers.map(\.name) == ["conv2d", "relu", "globalavgpool", "dense", "softmax"])
    }

    @Test(arguments: ["mlp", "mlp:64", "mlp:64-x-10", "rnn:1-2", "cnn:8x8-10", "cnn:1x8x8-q3-10", "cnn:1x8x8-c-10",
                      "cnn:1x8x8-m9-10", "cnn:1x8x8-f10-c3-10", "cnn:1x8x8-c4k3z2-10", "cnn:1x8x8-c4-ten"])
    func badSpecsAreRefused(_ spec: String) {
        #expect(throws: ArchitectureError.self) { try Architecture.build(spec, seed: 1) }
    }
}
