import Foundation
import ModelFile
import Testing

/// One test per manifest rule; each file breaks exactly that rule.
@Suite struct ManifestRuleTests {
    func expectError(_ model: ValidModel, contains fragment: String, location: String? = nil,
                     sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try load(model.raw().bytes())
            Issue.record("model was accepted; expected an error containing '\(fragment)'", sourceLocation: sourceLocation)
        } catch let error as ModelFileError {
            #expect(error.description.hasPrefix("m.safetensors: "), sourceLocation: sourceLocation)
            #expect(error.description.contains(fragment), "\(error)", sourceLocation: sourceLocation)
            if let location { #expect(error.location == location, "\(error)", sourceLocation: sourceLocation) }
        } catch {
            Issue.record("unexpected error type \(error)", sourceLocation: sourceLocation)
        }
    }

    nonisolated(unsafe) static let cnnLayers: [[String: Any]] = [
        ["op": "conv2d", "weight": "c.weight", "bias": "c.bias", "padding": 1],
        ["op": "relu"],
        ["op": "maxpool2d", "kernel": 2],
        ["op": "flatten"],
        ["op": "dense", "weight": "fc.weight"],
    ]

    /// A valid 1x4x4 CNN: conv 2 filters 3x3 pad 1 → maxpool 2 → flatten (8) → dense 3.
    static func cnn() -> ValidModel {
        var m = ValidModel()
        m.manifest["input"] = ["shape": [1, 4, 4]]
        m.manifest["labels"] = ["x", "y", "z"]
        m.setLayers(cnnLayers)
        m.tensors = []
        m.replace("c.weight", shape: [2, 1, 3, 3], values: (0..<18).map { Float($0) / 18 })
        m.replace("c.bias", shape: [2], values: [0.1, -0.1])
        m.replace("fc.weight", shape: [3, 8], values: (0..<24).map { Float($0) / 24 - 0.5 })
        return m
    }

    @Test func validCNNLoads() throws {
        let model = try load(Self.cnn().raw().bytes())
        #expect(model.layers.map(\.outputShape) == [[2, 4, 4], [2, 4, 4], [2, 2, 2], [8], [3]])
    }

    @Test func missingFormatKey() {
        var m = ValidModel()
        m.metadata = ["something": "else"]
        expectError(m, contains: "not an edge-agent model", location: "__metadata__")
    }

    @Test func unsupportedFormat() {
        var m = ValidModel()
        m.metadata = ["edge.format": "9", "edge.manifest": "{}"]
        expectError(m, contains: "edge.format '9' is not supported")
    }

    @Test func missingManifest() {
        var m = ValidModel()
        m.metadata = ["edge.format": "1"]
        expectError(m, contains: "no 'edge.manifest' key")
    }

    @Test func manifestNotJSON() {
        var m = ValidModel()
        m.metadata = ["edge.format": "1", "edge.manifest": "{layers: ["]
        expectError(m, contains: "is not valid JSON", location: "edge.manifest")
    }

    @Test func manifestMissingLayers() {
        var m = ValidModel()
        m.manifest.removeValue(forKey: "layers")
        expectError(m, contains: "layers is missing", location: "edge.manifest")
    }

    @Test func manifestWrongType() {
        var m = ValidModel()
        m.manifest["version"] = "one"
        expectError(m, contains: "version is not an integer", location: "edge.manifest")
    }

    @Test func emptyLayers() {
        var m = ValidModel()
        m.setLayers([])
        expectError(m, contains: "'layers' is empty")
    }

    @Test func unknownOp() {
        var m = ValidModel()
        m.setLayers([["op": "dense", "weight": "fc1.weight", "bias": "fc1.bias"], ["op": "gelu"]])
        expectError(m, contains: "unknown op 'gelu'", location: "layer 1")
    }

    @Test func unknownLayerField() {
        var m = ValidModel()
        m.setLayers([["op": "dense", "weight": "fc1.weight", "bais": "fc1.bias"]])
        expectError(m, contains: "unknown field 'bais'")
    }

    @Test func fieldThatDoesNotApply() {
        var m = ValidModel()
        m.setLayers([["op": "relu", "alpha": 0.1], ["op": "dense", "weight": "fc1.weight"]])
        expectError(m, contains: "field 'alpha' does not apply to relu", location: "layer 0 (relu)")
    }

    @Test func missingTensor() {
        var m = ValidModel()
        m.setLayers([["op": "dense", "weight": "fc9.weight"]])
        expectError(m, contains: "weight tensor 'fc9.weight' is not in the file", location: "layer 0 (dense)")
    }

    @Test func wrongDTypeForWeight() {
        var m = ValidModel()
        m.tensors.removeAll { $0.name == "fc2.bias" }
        m.tensors.append(("fc2.bias", "I32", [2], [0, 0, 0, 0, 0, 0, 0, 0]))
        expectError(m, contains: "is I32; expected F32, F16 or BF16", location: "layer 2 (dense)")
    }

    @Test func denseWeightDoesNotMatchInput() {
        var m = ValidModel()
        m.manifest["input"] = ["shape": [5]]
        expectError(m, contains: "has shape [3, 4] but the input has 5 features", location: "layer 0 (dense)")
    }

    @Test func biasShapeMismatch() {
        var m = ValidModel()
        m.replace("fc1.bias", shape: [4], values: [0, 0, 0, 0])
        expectError(m, contains: "bias tensor 'fc1.bias' has shape [4], expected [3]", location: "layer 0 (dense)")
    }

    @Test func convChannelsMismatch() {
        var m = Self.cnn()
        m.manifest["input"] = ["shape": [2, 4, 4]]
        expectError(m, contains: "has 1 input channels but the input has 2", location: "layer 0 (conv2d)")
    }

    @Test func convWeightWrongRank() {
        var m = Self.cnn()
        m.replace("c.weight", shape: [2, 9], values: Array(repeating: 0, count: 18))
        expectError(m, contains: "expected [out, in, kh, kw]", location: "layer 0 (conv2d)")
    }

    @Test func convKernelDoesNotFit() {
        var m = Self.cnn()
        m.replace("c.weight", shape: [2, 1, 7, 7], values: Array(repeating: 0, count: 98))
        expectError(m, contains: "does not fit the padded input", location: "layer 0 (conv2d)")
    }

    @Test func badStride() {
        var m = Self.cnn()
        var layers = Self.cnnLayers
        layers[0]["stride"] = [0, 1]
        m.setLayers(layers)
        expectError(m, contains: "'stride' [0, 1] must be", location: "layer 0 (conv2d)")
    }

    @Test func denseOnImageWithoutFlatten() {
        var m = Self.cnn()
        var layers = Self.cnnLayers
        layers.remove(at: 3)
        m.setLayers(layers)
        expectError(m, contains: "add a flatten layer", location: "layer 3 (dense)")
    }

    @Test func poolLargerThanInput() {
        var m = Self.cnn()
        var layers = Self.cnnLayers
        layers[2] = ["op": "maxpool2d", "kernel": 5]
        m.setLayers(layers)
        expectError(m, contains: "kernel 5x5 is larger than the input", location: "layer 2 (maxpool2d)")
    }

    @Test func poolWithoutKernel() {
        var m = Self.cnn()
        var layers = Self.cnnLayers
        layers[2] = ["op": "avgpool2d"]
        m.setLayers(layers)
        expectError(m, contains: "needs 'kernel'", location: "layer 2 (avgpool2d)")
    }

    @Test func batchnormWithoutPrecedingLayer() {
        var m = ValidModel()
        m.setLayers([["op": "batchnorm", "weight": "fc1.bias", "bias": "fc1.bias", "mean": "fc1.bias", "var": "fc1.bias"]])
        expectError(m, contains: "must follow a dense or conv2d layer", location: "layer 0 (batchnorm)")
    }

    @Test func batchnormNegativeVariance() {
        var m = ValidModel()
        m.replace("bn.var", shape: [3], values: [1, -2, 1])
        m.setLayers([["op": "dense", "weight": "fc1.weight", "bias": "fc1.bias"],
                     ["op": "batchnorm", "weight": "fc1.bias", "bias": "fc1.bias", "mean": "fc1.bias", "var": "bn.var"]])
        expectError(m, contains: "variance element 1 plus eps is not positive", location: "tensor 'bn.var'")
    }

    @Test func softmaxNotLast() {
        var m = ValidModel()
        m.setLayers([["op": "dense", "weight": "fc1.weight", "bias": "fc1.bias"], ["op": "softmax"],
                     ["op": "dense", "weight": "fc2.weight", "bias": "fc2.bias"]])
        expectError(m, contains: "softmax may only be the last layer", location: "layer 1 (softmax)")
    }

    @Test func labelCountMismatch() {
        var m = ValidModel()
        m.manifest["labels"] = ["a", "b", "c"]
        expectError(m, contains: "'labels' has 3 names but the model outputs 2 scores")
    }

    @Test func outputNotFlat() {
        var m = Self.cnn()
        m.setLayers([Self.cnnLayers[0]])
        expectError(m, contains: "is not flat")
    }

    @Test func nonFiniteWeight() {
        var m = ValidModel()
        m.replace("fc2.bias", shape: [2], values: [0, .nan])
        expectError(m, contains: "element 1 is nan, not a finite number", location: "tensor 'fc2.bias'")
    }

    @Test func badInputRank() {
        var m = ValidModel()
        m.manifest["input"] = ["shape": [2, 2]]
        expectError(m, contains: "must be [features] or [channels, height, width]", location: "input")
    }

    @Test func meanWithoutStd() {
        var m = ValidModel()
        m.manifest["input"] = ["shape": [4], "mean": "fc1.bias"]
        expectError(m, contains: "'mean' and 'std' must be given together", location: "input")
    }

    @Test func zeroScale() {
        var m = ValidModel()
        m.manifest["input"] = ["shape": [4], "scale": 0]
        expectError(m, contains: "scale 0.0 must be finite and non-zero", location: "input")
    }

    @Test func unknownTrainableTensor() {
        var m = ValidModel()
        m.manifest["trainable"] = ["fc3.weight"]
        expectError(m, contains: "trainable tensor 'fc3.weight'")
    }

    // Shapes that once crashed or exhausted memory at load (overflowing products and window
    // arithmetic, a label list per output value): each is refused with the layer at fault.

    @Test func inputLargerThanTheActivationLimit() {
        var m = ValidModel()
        m.manifest["input"] = ["shape": [3_000_000_000]]
        m.manifest["labels"] = nil
        m.setLayers([["op": "relu"]])
        m.tensors = []
        expectError(m, contains: "has more than 16777216 values per sample", location: "input")
        m.manifest["input"] = ["shape": [4_294_967_296, 4_294_967_296, 2]]
        m.setLayers([["op": "flatten"]])
        expectError(m, contains: "has more than 16777216 values per sample", location: "input")
    }

    @Test func layerOutputLargerThanTheActivationLimit() {
        var m = ValidModel()
        m.manifest["input"] = ["shape": [1, 4096, 4096]]
        m.manifest["labels"] = nil
        m.setLayers([["op": "conv2d", "weight": "c.weight", "padding": 1], ["op": "flatten"]])
        m.tensors = []
        m.replace("c.weight", shape: [2, 1, 1, 1], values: [1, 2])
        expectError(m, contains: "output [2, 4098, 4098] has more than 16777216 values per sample", location: "layer 0 (conv2d)")
    }

    @Test func convWorkspaceLargerThanTheLimit() {
        var m = ValidModel()
        m.manifest["input"] = ["shape": [1, 2048, 2048]]
        m.manifest["labels"] = nil
        m.setLayers([["op": "conv2d", "weight": "c.weight", "padding": 16], ["op": "globalavgpool"]])
        m.tensors = []
        m.replace("c.weight", shape: [1, 1, 32, 32], values: Array(repeating: 0, count: 1024))
        expectError(m, contains: "floats of workspace", location: "layer 0 (conv2d)")
    }

    @Test func windowsLargerThanTheLimit() {
        var m = Self.cnn()
        var layers = Self.cnnLayers
        layers[0]["padding"] = [4_611_686_018_427_387_904, 1]
        m.setLayers(layers)
        expectError(m, contains: "must be one integer or two, each from 0 to 65536", location: "layer 0 (conv2d)")
        layers = Self.cnnLayers
        layers[2]["stride"] = [Int.max, 1]
        m.setLayers(layers)
        expectError(m, contains: "'stride' [\(Int.max), 1] must be", location: "layer 2 (maxpool2d)")
    }
}
