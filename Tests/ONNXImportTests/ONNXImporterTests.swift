import Foundation
import Inference
import ModelFile
@testable import ONNXImport
import Tensor
import Testing

/// ONNX graphs built from the generated messages: what converts, and every refusal as one line
/// naming its place. (The interop tests in tools/export compare imported models with onnxruntime.)
func tensor(_ name: String, _ dims: [Int], _ values: [Float]) -> Onnx_TensorProto {
    var t = Onnx_TensorProto()
    t.name = name
    t.dims = dims.map(Int64.init)
    t.dataType = 1
    t.rawData = values.withUnsafeBufferPointer { Data(buffer: $0) }
    return t
}

func node(_ op: String, _ inputs: [String], _ outputs: [String], name: String = "", ints: [String: [Int]] = [:],
                 int: [String: Int] = [:], floats: [String: Float] = [:]) -> Onnx_NodeProto {
    var n = Onnx_NodeProto()
    n.opType = op
    n.input = inputs
    n.output = outputs
    n.name = name
    for (k, v) in ints.sorted(by: { $0.key < $1.key }) {
        var a = Onnx_AttributeProto(); a.name = k; a.type = .ints; a.ints = v.map(Int64.init); n.attribute.append(a)
    }
    for (k, v) in int.sorted(by: { $0.key < $1.key }) {
        var a = Onnx_AttributeProto(); a.name = k; a.type = .int; a.i = Int64(v); n.attribute.append(a)
    }
    for (k, v) in floats.sorted(by: { $0.key < $1.key }) {
        var a = Onnx_AttributeProto(); a.name = k; a.type = .float; a.f = v; n.attribute.append(a)
    }
    return n
}

func valueInfo(_ name: String, _ dims: [Int?]) -> Onnx_ValueInfoProto {
    var t = Onnx_TypeProto.Tensor()
    t.elemType = 1
    t.shape.dim = dims.map { d in
        var dim = Onnx_TensorShapeProto.Dimension()
        if let d { dim.dimValue = Int64(d) } else { dim.dimParam = "N" }
        return dim
    }
    var v = Onnx_ValueInfoProto()
    v.name = name
    v.type.tensorType = t
    return v
}

func onnxModel(_ nodes: [Onnx_NodeProto], _ initializers: [Onnx_TensorProto], input: [Int?] = [nil, 4], opset: Int = 17) -> [UInt8] {
    var m = Onnx_ModelProto()
    m.irVersion = 8
    var o = Onnx_OperatorSetIdProto(); o.version = Int64(opset)
    m.opsetImport = [o]
    m.graph.node = nodes
    m.graph.initializer = initializers
    m.graph.input = [valueInfo("x", input)]
    m.graph.output = [valueInfo("y", [nil, 3])]
    return try! m.serializedBytes()
}

@Suite struct ONNXImporterTests {
    func convert(_ bytes: [UInt8], labels: [String]? = nil) throws -> ONNXImporter.Result {
        try ONNXImporter.convert(bytes: bytes, file: "t.onnx", name: "t", labels: labels)
    }

    /// The error's one line, or nil if the import succeeded.
    func refusal(_ bytes: [UInt8]) -> String? {
        do { _ = try convert(bytes); return nil } catch { return "\(error)" }
    }

    func network(_ result: ONNXImporter.Result) throws -> Network {
        let bytes = ModelWriter.encode(manifest: result.manifest, tensors: result.tensors)
        return Network(model: try ModelFile(bytes: bytes, path: "t"))
    }

    // W is [3, 4] as Gemm with transB=1 reads it.
    static let w: [Float] = [1, 0, -1, 2, 0.5, 0.5, 0.5, 0.5, -2, 1, 0, 0]
    static let b: [Float] = [0.1, -0.2, 0.3]

    @Test func gemmWithPreprocessingMatchesTheArithmetic() throws {
        // y = alpha·((x − 3)/2)·Wᵀ + beta·b, then (10 − that) is refused later; here just Sub, Div, Gemm.
        let bytes = onnxModel([
            node("Sub", ["x", "three"], ["a"]),
            node("Div", ["a", "two"], ["b"]),
            node("Gemm", ["b", "w", "bias"], ["y"], int: ["transB": 1], floats: ["alpha": 0.5, "beta": 2]),
        ], [tensor("three", [], [3]), tensor("two", [1], [2]), tensor("w", [3, 4], Self.w), tensor("bias", [3], Self.b)])
        let result = try convert(bytes, labels: ["a", "b", "c"])
        #expect(result.manifest.layers.map(\.op) == ["dense"])
        #expect(result.manifest.input.scale == 0.5 && result.manifest.input.offset == -1.5)
        let x: [Float] = [1, 2, 3, 4, 5, 6, 7, 8]
        let got = ExecutionPlan(network: try network(result), batchCapacity: 2).predict(x)
        var want: [Float] = []
        for s in 0..<2 {
            let xs = (0..<4).map { (x[s * 4 + $0] - 3) / 2 }
            for o in 0..<3 {
                want.append(0.5 * (0..<4).reduce(Float(0)) { $0 + xs[$1] * Self.w[o * 4 + $1] } + 2 * Self.b[o])
            }
        }
        for (g, w) in zip(got, want) { #expect(abs(g - w) < 1e-5) }
    }

    @Test func perFeaturePreprocessingAndMatMulBias() throws {
        // (c − x)·s, constant first: scale −s, offset c·s per feature; MatMul weight is [in, out].
        let c: [Float] = [1, 2, 3, 4], s: [Float] = [1, 0.5, 0.25, 2]
        let wIn = (0..<12).map { Float($0 % 5) - 2 }
        let bytes = onnxModel([
            node("Sub", ["c", "x"], ["a"]),
            node("Mul", ["a", "s"], ["b"]),
            node("MatMul", ["b", "w"], ["m"]),
            node("Add", ["bias", "m"], ["y"]),
        ], [tensor("c", [1, 4], c), tensor("s", [4], s), tensor("w", [4, 3], wIn), tensor("bias", [1, 3], Self.b)])
        let result = try convert(bytes)
        #expect(result.steps.map(\.becomes) == ["preprocessing", "preprocessing", "dense 4→3", "bias of layer 0"])
        let x: [Float] = [0.5, -1, 2, 3]
        let got = ExecutionPlan(network: try network(result), batchCapacity: 1).predict(x)
        let xs = (0..<4).map { (c[$0] - x[$0]) * s[$0] }
        for o in 0..<3 {
            let want = (0..<4).reduce(Float(0)) { $0 + xs[$1] * wIn[$1 * 3 + o] } + Self.b[o]
            #expect(abs(got[o] - want) < 1e-5)
        }
    }

    @Test func nodesTheOutputDoesNotNeedAreLeftOut() throws {
        var m = Onnx_ModelProto()
        m.irVersion = 8
        var o = Onnx_OperatorSetIdProto(); o.version = 17
        m.opsetImport = [o]
        m.graph.node = [node("Gemm", ["x", "w"], ["y"], int: ["transB": 1]), node("ArgMax", ["y"], ["label"])]
        m.graph.initializer = [tensor("w", [3, 4], Self.w)]
        m.graph.input = [valueInfo("x", [nil, 4])]
        var label = valueInfo("label", [nil])
        label.type.tensorType.elemType = 7
        m.graph.output = [label, valueInfo("y", [nil, 3])]
        let result = try convert(try m.serializedBytes())
        #expect(result.output == "y" && result.unusedNodes == 1)
        // Asking for the int64 output reaches ArgMax, which is refused by name.
        let refused = #expect(throws: ModelFileError.self) {
            try ONNXImporter.convert(bytes: try m.serializedBytes(), file: "t.onnx", name: "t", output: "label")
        }
        #expect(refused?.location == "node 1 (ArgMax)")
    }

    @Test(arguments: [
        // (what, nodes, initializers, a fragment the one line must hold)
        ("residual branch", [node("Gemm", ["x", "w4"], ["h"], int: ["transB": 1]), node("Relu", ["h"], ["r"]), node("Add", ["r", "h"], ["y"])],
         ["w4"], "node 2 (Add)"),
        ("unknown op", [node("Gemm", ["x", "w"], ["h"], int: ["transB": 1]), node("Tanh", ["h"], ["y"], name: "act")], ["w"], "node 1 'act' (Tanh)"),
        ("foreign domain", [node("Gemm", ["x", "w"], ["y"], int: ["transB": 1])], ["w"], "node 0 (Gemm)"),
        ("weight from the input", [node("MatMul", ["x", "x"], ["y"])], [], "node 0 (MatMul)"),
        ("wrong weight shape", [node("Gemm", ["x", "w"], ["y"])], ["w"], "but the input has 4 features"),
        ("transA", [node("Gemm", ["x", "w"], ["y"], int: ["transA": 1, "transB": 1])], ["w"], "transA"),
        ("unknown attribute", [node("Relu", ["x"], ["r"], int: ["bogus": 1]), node("Gemm", ["r", "w"], ["y"], int: ["transB": 1])], ["w"], "'bogus'"),
        ("huge attribute", [node("Gemm", ["x", "w"], ["y"], int: ["transB": 1 << 40])], ["w"], "transB"),
        ("divide by zero", [node("Div", ["x", "zero"], ["a"]), node("Gemm", ["a", "w"], ["y"], int: ["transB": 1])], ["w", "zero"], "divides by zero"),
        ("constant over input", [node("Div", ["two", "x"], ["a"]), node("Gemm", ["a", "w"], ["y"], int: ["transB": 1])], ["w", "two"], "constant by the input"),
        ("mul between layers", [node("Gemm", ["x", "w"], ["h"], int: ["transB": 1]), node("Mul", ["h", "two"], ["y"])], ["w", "two"], "between layers"),
        ("softmax not last", [node("Softmax", ["x"], ["s"]), node("Gemm", ["s", "w"], ["y"], int: ["transB": 1])], ["w"], "last"),
        ("batchnorm after relu", [node("Relu", ["x"], ["r"]), node("BatchNormalization", ["r", "g", "g", "g", "g"], ["n"]),
                                  node("Gemm", ["n", "w"], ["y"], int: ["transB": 1])], ["w", "g"], "does not follow"),
        ("conv on a vector", [node("Conv", ["x", "w"], ["y"])], ["w"], "needs an image"),
        ("reshape that is not a flatten", [node("Reshape", ["x", "w"], ["y"])], ["w"], "int64"),
        ("not a chain end", [node("Gemm", ["x", "w"], ["h"], int: ["transB": 1])], ["w"], "not the end of the chain"),
    ] as [(String, [Onnx_NodeProto], [String], String)])
    func unsupportedGraphsAreRefusedByNode(_ what: String, _ nodes: [Onnx_NodeProto], _ names: [String], _ fragment: String) throws {
        let all = ["w": tensor("w", [3, 4], Self.w), "w4": tensor("w4", [4, 4], Self.w + Self.w[0..<4]),
                   "zero": tensor("zero", [], [0]), "two": tensor("two", [], [2]), "g": tensor("g", [4], [1, 1, 1, 1])]
        var nodes = nodes
        if what == "foreign domain" { nodes[0].domain = "com.example" }
        let line = try #require(refusal(onnxModel(nodes, names.map { all[$0]! })), "\(what) was imported")
        #expect(line.hasPrefix("t.onnx: ") && !line.contains("\n"))
        #expect(line.contains(fragment), "\(what): \(line)")
        if what == "foreign domain" { #expect(line.contains("com.example")) }
    }

    @Test func hostileFilesAndTensorsAreRefused() throws {
        let gemm = [node("Gemm", ["x", "w"], ["y"], int: ["transB": 1])]
        // Not protobuf at all, truncated, a length past the end.
        for bytes: [UInt8] in [[0xff], [0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], Array("hello".utf8), [0x3a, 0x05, 0x0a]] {
            let line = try #require(refusal(bytes))
            #expect(line.hasPrefix("t.onnx: "))
        }
        #expect(refusal([])?.contains("no graph") == true)
        // Data shorter than the shape; absurd dims; NaN; external data; a duplicated initializer.
        var short = tensor("w", [3, 4], Self.w)
        short.rawData = short.rawData.prefix(40)
        #expect(refusal(onnxModel(gemm, [short]))?.contains("initializer 'w': holds 10 values") == true)
        var huge = tensor("w", [3, 4], Self.w)
        huge.dims = [1 << 40, 1 << 40]
        #expect(refusal(onnxModel(gemm, [huge]))?.contains("initializer 'w'") == true)
        var negative = tensor("w", [3, 4], Self.w)
        negative.dims = [-3, -4]
        #expect(refusal(onnxModel(gemm, [negative]))?.contains("dimension -3") == true)
        #expect(refusal(onnxModel(gemm, [tensor("w", [3, 4], Self.w.map { $0 == 2 ? .nan : $0 })]))?.contains("not a finite number") == true)
        var external = tensor("w", [3, 4], [])
        external.rawData = Data()
        external.dataLocation = .external
        #expect(refusal(onnxModel(gemm, [external]))?.contains("external file") == true)
        #expect(refusal(onnxModel(gemm, [tensor("w", [3, 4], Self.w), tensor("w", [3, 4], Self.w)]))?.contains("listed twice") == true)
        // Inputs the agent cannot take.
        #expect(refusal(onnxModel(gemm, [tensor("w", [3, 4], Self.w)], input: [nil, 2, 2]))?.contains("[batch, features]") == true)
        #expect(refusal(onnxModel(gemm, [tensor("w", [3, 4], Self.w)], input: [nil, nil]))?.contains("only the batch") == true)
        #expect(refusal(onnxModel(gemm, [tensor("w", [3, 4], Self.w)], opset: 5))?.contains("older than 6") == true)
        // Labels that do not fit the outputs.
        #expect(throws: ModelFileError.self) { try convert(onnxModel(gemm, [tensor("w", [3, 4], Self.w)]), labels: ["a"]) }
    }

    @Test func convPaddingFromAutoPadAndPads() throws {
        func conv(_ attrs: [String: [Int]], auto: String? = nil) -> [UInt8] {
            var c = node("Conv", ["x", "k"], ["c"], ints: attrs)
            if let auto {
                var a = Onnx_AttributeProto(); a.name = "auto_pad"; a.type = .string; a.s = Data(auto.utf8); c.attribute.append(a)
            }
            var m = Onnx_ModelProto()
            m.irVersion = 8
            var o = Onnx_OperatorSetIdProto(); o.version = 17
            m.opsetImport = [o]
            m.graph.node = [c, node("Flatten", ["c"], ["y"])]
            m.graph.initializer = [tensor("k", [2, 1, 3, 3], [Float](repeating: 0.1, count: 18))]
            m.graph.input = [valueInfo("x", [nil, 1, 6, 6])]
            m.graph.output = [valueInfo("y", [nil, 72])]
            return try! m.serializedBytes()
        }
        #expect(try convert(conv([:], auto: "SAME_UPPER")).manifest.layers[0].padding == [1, 1])
        #expect(try convert(conv(["pads": [1, 1, 1, 1]])).manifest.layers[0].padding == [1, 1])
        #expect(try convert(conv(["pads": [1, 2, 1, 2]])).manifest.layers[0].padding == [1, 2])
        // SAME with stride 2 on 6 pixels pads 1 in total: one side only.
        #expect(refusal(conv(["strides": [2, 2]], auto: "SAME_UPPER"))?.contains("symmetrically") == true)
        #expect(refusal(conv(["pads": [1, 1]]))?.contains("four") == true)
        #expect(refusal(conv(["dilations": [2, 2]]))?.contains("dilated") == true)
        #expect(refusal(conv(["kernel_shape": [5, 5]]))?.contains("disagrees") == true)
        #expect(refusal(conv([:], auto: "BOGUS"))?.contains("auto_pad") == true)
    }
}

/// What a cold reading of the importer found; each failed (or hung, or crashed) before its fix.
@Suite struct ONNXImporterHostileTests {
    func refusal(_ bytes: [UInt8]) -> String? {
        do { _ = try ONNXImporter.convert(bytes: bytes, file: "t.onnx", name: "t"); return nil } catch { return "\(error)" }
    }

    @Test func hugeInputsAreRefusedBeforeAnyWork() {
        // Flatten of 2^72 values overflowed; a per-element Mul allocated petabytes.
        let flatten = onnxModel([node("Flatten", ["x"], ["f"]), node("Gemm", ["f", "w"], ["y"], int: ["transB": 1])],
                                [tensor("w", [2, 4], [Float](repeating: 0, count: 8))], input: [nil, 1 << 24, 1 << 24, 1 << 24])
        #expect(refusal(flatten)?.contains("more than 16777216 values") == true)
        let mul = onnxModel([node("Mul", ["x", "c"], ["a"]), node("Flatten", ["a"], ["y"])],
                            [tensor("c", [1, 1, 4], [1, 2, 3, 4])], input: [nil, 1 << 22, 1 << 22, 4])
        #expect(refusal(mul)?.contains("more than 16777216 values") == true)
    }

    @Test func aLongChainOfIdentitiesIsLinear() throws {
        let chain = (0..<20000).map { node("Identity", [$0 == 0 ? "x" : "i\($0 - 1)"], ["i\($0)"]) }
        let bytes = onnxModel(chain + [node("Gemm", ["i19999", "w"], ["y"], int: ["transB": 1])], [tensor("w", [3, 4], ONNXImporterTests.w)])
        let started = Date()
        _ = try ONNXImporter.convert(bytes: bytes, file: "t.onnx", name: "t")
        #expect(Date().timeIntervalSince(started) < 5)
    }

    @Test func rankChangesAndSharedWeightsAreRefused() {
        // GlobalAveragePool leaves [N, C, 1, 1]: a softmax or Gemm on it is not what the agent would compute.
        func gap(_ then: [Onnx_NodeProto]) -> [UInt8] {
            var m = Onnx_ModelProto()
            m.irVersion = 8
            var o = Onnx_OperatorSetIdProto(); o.version = 13
            m.opsetImport = [o]
            m.graph.node = [node("Conv", ["x", "k"], ["c"]), node("GlobalAveragePool", ["c"], ["g"])] + then
            m.graph.initializer = [tensor("k", [3, 1, 3, 3], [Float](repeating: 0.1, count: 27)), tensor("w", [2, 3], [1, 2, 3, 4, 5, 6])]
            m.graph.input = [valueInfo("x", [nil, 1, 5, 5])]
            m.graph.output = [valueInfo("y", [nil, 3])]
            return try! m.serializedBytes()
        }
        #expect(refusal(gap([node("Softmax", ["g"], ["y"])]))?.contains("add Flatten") == true)
        #expect(refusal(gap([node("Gemm", ["g", "w"], ["y"], int: ["transB": 1])]))?.contains("add Flatten") == true)
        #expect(refusal(gap([node("Flatten", ["g"], ["y"], int: ["axis": -1])]))?.contains("axis=-1") == true)
        #expect(refusal(gap([node("Flatten", ["g"], ["f"]), node("Gemm", ["f", "w"], ["y"], int: ["transB": 1])])) == nil)
        // A constant of higher rank than the input changes the output's rank.
        let rank = onnxModel([node("Mul", ["x", "c"], ["a"]), node("Gemm", ["a", "w"], ["y"], int: ["transB": 1])],
                             [tensor("c", [1, 1, 4], [1, 2, 3, 4]), tensor("w", [3, 4], ONNXImporterTests.w)])
        #expect(refusal(rank)?.contains("more dimensions than the input") == true)
        // One initializer used by two layers would be copied for each.
        let shared = onnxModel([node("MatMul", ["x", "w"], ["a"]), node("MatMul", ["a", "w"], ["y"])], [tensor("w", [4, 4], [Float](repeating: 1, count: 16))])
        #expect(refusal(shared)?.contains("shared with an earlier layer") == true)
        // Duplicated attributes.
        var twice = node("Gemm", ["x", "w"], ["y"], int: ["transB": 1])
        twice.attribute.append(twice.attribute[0])
        #expect(refusal(onnxModel([twice], [tensor("w", [3, 4], ONNXImporterTests.w)]))?.contains("given twice") == true)
    }

    @Test func namesFromTheFileCannotSplitTheErrorLine() {
        let bytes = onnxModel([node("Gemm", ["x", "w"], ["h"], int: ["transB": 1]), node("Tanh", ["h"], ["y"], name: "evil\n\u{1b}[31mred")],
                              [tensor("w", [3, 4], ONNXImporterTests.w)])
        let line = refusal(bytes) ?? ""
        #expect(!line.contains("\n") && !line.contains("\u{1b}") && line.contains("evil\\u{a}\\u{1b}[31mred"))
    }

    @Test func boolTrainingModeAndPyTorchIdentityWeightsImport() throws {
        var mode = Onnx_TensorProto()
        mode.name = "t"
        mode.dataType = 9
        mode.rawData = Data([0])
        let bytes = onnxModel([node("Identity", ["w"], ["w_shared"]), node("Gemm", ["x", "w_shared"], ["h"], int: ["transB": 1]),
                               node("Dropout", ["h", "", "t"], ["y"])], [tensor("w", [3, 4], ONNXImporterTests.w), mode])
        #expect(refusal(bytes) == nil)
        mode.rawData = Data([1])
        let training = onnxModel([node("Gemm", ["x", "w"], ["h"], int: ["transB": 1]), node("Dropout", ["h", "", "t"], ["y"])],
                                 [tensor("w", [3, 4], ONNXImporterTests.w), mode])
        #expect(refusal(training)?.contains("training mode") == true)
        var half = tensor("w", [3, 4], [])
        half.dataType = 10
        half.rawData = Data(count: 24)
        #expect(refusal(onnxModel([node("Gemm", ["x", "w"], ["y"], int: ["transB": 1])], [half]))?.contains("is float16") == true)
    }
}
