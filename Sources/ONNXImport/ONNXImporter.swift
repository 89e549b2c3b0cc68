import Foundation
import ModelFile
import SwiftProtobuf
import Tensor

/// Turns an ONNX model into the agent's model file: the manifest and its F32 tensors.
///
/// The graph must be a chain: every node reads the one running activation (plus constants), as
/// a classifier exported from PyTorch, Keras or scikit-learn is. Nodes are matched to the agent's
/// ops one by one; anything else stops the import with one line naming the node, its op and why.
/// Nothing is written unless the whole graph converts and the result passes the model loader's
/// own validation.
public enum ONNXImporter {
    /// What an import produced, with a line per ONNX node for the report.
    public struct Result: Sendable {
        public var manifest: Manifest
        public var tensors: [TensorBlob]
        public var steps: [Step]
        public var opset: Int
        public var producer: String
        public var irVersion: Int
        /// The graph output imported, and the nodes left out because that output does not need them.
        public var output: String
        public var unusedNodes: Int
    }

    /// One ONNX node and what it became.
    public struct Step: Sendable, Codable, Equatable {
        public var node: String
        public var opType: String
        /// The agent's layer ("dense", "conv2d", ...), "preprocessing", "bias of layer N" or "nothing".
        public var becomes: String
    }

    public static let supportedOps = ["Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Conv", "Relu", "Clip", "LeakyRelu",
                                      "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",
                                      "BatchNormalization", "Softmax", "Identity", "Dropout", "Cast", "Constant"]

    /// Files above this are refused before decoding (the agent's models are megabytes).
    public static let maxFileBytes = 1 << 30

    public static func load(path: String, name: String? = nil, labels: [String]? = nil, output: String? = nil) throws -> Result {
        let storage = try ModelFile.readWholeFile(path: path)
        guard storage.byteCount <= maxFileBytes else {
            throw ModelFileError(file: path, "\(storage.byteCount) bytes is more than the importer reads (\(maxFileBytes))")
        }
        let bytes = [UInt8](UnsafeRawBufferPointer(storage.bytes))
        let base = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        return try convert(bytes: bytes, file: path, name: name ?? base, labels: labels, output: output)
    }

    /// `output` names the graph output to import; without it, the graph's only output, or its only
    /// float output (skl2onnx classifiers also give an int64 label).
    public static func convert(bytes: [UInt8], file: String, name: String, labels: [String]? = nil, output: String? = nil) throws -> Result {
        let model: Onnx_ModelProto
        do {
            var options = BinaryDecodingOptions()
            options.messageDepthLimit = 32
            model = try Onnx_ModelProto(serializedBytes: bytes, options: options)
        } catch {
            throw ModelFileError(file: file, "not an ONNX model: the protobuf does not decode (\(error))")
        }
        do {
            var converter = try Converter(model: model, file: file, output: output)
            try converter.run()
            var result = try converter.result(name: name, labels: labels)
            result.steps = result.steps.map { .init(node: printable($0.node), opType: printable($0.opType), becomes: $0.becomes) }
            result.producer = printable(result.producer)
            return result
        } catch let error as ModelFileError {
            // Names come from the file: no control character reaches a terminal or splits the line.
            throw ModelFileError(file: error.file, location: error.location.map(printable), printable(error.message))
        }
    }

    /// `text` with control characters written as \u{…} escapes.
    static func printable(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else { return text }
        return text.unicodeScalars.map { $0.properties.generalCategory == .control ? "\\u{\(String($0.value, radix: 16))}" : String($0) }.joined()
    }
}

/// An F32 constant of the graph: an initializer or a Constant node's value.
struct Constant {
    var dims: [Int]
    var values: [Float]
    var count: Int { values.count }
}

struct Converter {
    let file: String
    let graph: Onnx_GraphProto
    let opset: Int
    let irVersion: Int
    let producer: String

    var constants: [String: Constant] = [:]
    var integerConstants: [String: [Int64]] = [:]
    /// Constants of a type the importer does not read (float16, int8, ...), by name.
    var skippedTypes: [String: String] = [:]
    /// Weights already given to a layer: a shared initializer is refused rather than copied again.
    var usedWeights: Set<String> = []
    /// After GlobalAveragePool the ONNX value is [N, C, 1, 1] while the agent holds [C]: only a
    /// flatten (or an element-wise op) may come before anything that depends on the rank.
    var pooledToOnes = false
    let inputName: String
    let outputName: String
    let inputShape: [Int]

    // The running state: the ONNX name holding the activation, and its shape per sample.
    var current: String
    var shape: [Int]
    // Input preprocessing x·a + b, per element of one sample (or one value for all).
    var preScale: [Float] = [1]
    var preShift: [Float] = [0]
    var layers: [LayerSpec] = []
    var tensors: [TensorBlob] = []
    var steps: [ONNXImporter.Step] = []
    // A MatMul waiting for its Add: the layer index and the ONNX name of its output.
    var pendingBias: (layer: Int, output: String, outputs: Int)?
    var unusedNodes = 0
    /// Whether the nodes after the current one (of those imported) are all Identity.
    var onlyIdentityFollows = false

    init(model: Onnx_ModelProto, file: String, output: String?) throws {
        self.file = file
        guard model.hasGraph else { throw ModelFileError(file: file, "the ONNX model has no graph") }
        graph = model.graph
        irVersion = Int(model.irVersion)
        producer = [model.producerName, model.producerVersion].filter { !$0.isEmpty }.joined(separator: " ")
        let standard = model.opsetImport.filter { $0.domain.isEmpty || $0.domain == "ai.onnx" }
        guard let version = standard.map(\.version).max() else {
            throw ModelFileError(file: file, "the model imports no version of the standard ONNX operator set")
        }
        guard model.irVersion >= 3 else {
            throw ModelFileError(file: file, "IR version \(model.irVersion) is older than 3, the oldest the importer reads; re-export with a newer exporter")
        }
        opset = Int(clamping: version)
        guard opset >= 6 else {
            throw ModelFileError(file: file, "operator set \(opset) is older than 6, the oldest the importer reads; re-export with a newer exporter")
        }

        var seen = Set<String>()
        for tensor in graph.initializer {
            guard seen.insert(tensor.name).inserted else {
                throw ModelFileError(file: file, location: "initializer '\(tensor.name)'", "is listed twice")
            }
        }
        // The real input: the first graph input that is not an initializer (IR < 4 lists them as inputs too).
        let inputs = graph.input.filter { !seen.contains($0.name) }
        guard inputs.count == 1 else {
            throw ModelFileError(file: file, "the graph has \(inputs.count) inputs (\(inputs.map { "'\($0.name)'" }.joined(separator: ", "))); the agent's models take exactly one")
        }
        let outputs = graph.output.map(\.name)
        if let output {
            guard outputs.contains(output) else {
                throw ModelFileError(file: file, "the graph has no output '\(output)' (its outputs: \(outputs.joined(separator: ", ")))")
            }
            outputName = output
        } else if outputs.count == 1 {
            outputName = outputs[0]
        } else {
            let floats = graph.output.filter { if case .tensorType(let t)? = $0.type.value { t.elemType == 1 } else { false } }
            guard floats.count == 1 else {
                throw ModelFileError(file: file, "the graph has \(outputs.count) outputs (\(outputs.joined(separator: ", "))); choose one with --output")
            }
            outputName = floats[0].name
        }
        let input = inputs[0]
        inputName = input.name
        let at = "input '\(input.name)'"
        guard case .tensorType(let type)? = input.type.value else {
            throw ModelFileError(file: file, location: at, "is not a tensor")
        }
        guard type.elemType == 1 else {
            throw ModelFileError(file: file, location: at, "has element type \(Converter.typeName(type.elemType)); the agent's input is float")
        }
        guard type.hasShape else { throw ModelFileError(file: file, location: at, "has no shape; the importer needs [batch, features] or [batch, C, H, W]") }
        var dims: [Int] = []
        for (i, d) in type.shape.dim.enumerated() {
            switch d.value {
            case .dimValue(let v)?:
                guard v > 0, v <= 1 << 24 else { throw ModelFileError(file: file, location: at, "dimension \(i) is \(v)") }
                dims.append(Int(v))
            default:
                // A named or unknown dimension: allowed for the batch only.
                guard i == 0 else {
                    throw ModelFileError(file: file, location: at, "dimension \(i) has no fixed size; only the batch dimension may vary")
                }
                dims.append(-1)
            }
        }
        guard dims.count == 2 || dims.count == 4 else {
            throw ModelFileError(file: file, location: at, "has shape \(Converter.format(dims)); the importer reads [batch, features] or [batch, C, H, W]")
        }
        inputShape = Array(dims.dropFirst())
        let elements = inputShape.reduce(1) { $0.multipliedReportingOverflow(by: $1).overflow ? Int.max : $0 * $1 }
        guard elements <= Converter.maxSampleElements else {
            throw ModelFileError(file: file, location: at, "one sample of \(Converter.format(dims)) has more than \(Converter.maxSampleElements) values")
        }
        current = inputName
        shape = inputShape

        for tensor in graph.initializer {
            try addConstant(tensor, at: "initializer '\(tensor.name)'")
        }
    }

    /// The model loader's own bound on the values of one sample at any layer.
    static let maxSampleElements = 1 << 24

    static func typeName(_ t: Int32) -> String {
        let names = [1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
                     9: "bool", 10: "float16", 11: "double", 12: "uint32", 13: "uint64", 16: "bfloat16"]
        return names[Int(t)] ?? "type \(t)"
    }

    static func format(_ dims: [Int]) -> String {
        "[" + dims.map { $0 < 0 ? "N" : String($0) }.joined(separator: ", ") + "]"
    }

    func fail(_ node: Onnx_NodeProto, index: Int, _ why: String) -> ModelFileError {
        let label = node.name.isEmpty ? "node \(index)" : "node \(index) '\(node.name)'"
        return ModelFileError(file: file, location: "\(label) (\(node.opType))", why)
    }

    /// Decodes an initializer or constant; float data to F32, int64/int32 kept as integers.
    mutating func addConstant(_ t: Onnx_TensorProto, at: String, as name: String? = nil) throws {
        let name = name ?? t.name
        if t.dataLocation == .external || !t.externalData.isEmpty {
            throw ModelFileError(file: file, location: at, "keeps its data in an external file; save the model with its data inside (onnx.save_model(m, path, save_as_external_data=False))")
        }
        var dims: [Int] = []
        var count = 1
        for d in t.dims {
            guard d >= 0, d <= 1 << 31 else { throw ModelFileError(file: file, location: at, "has dimension \(d)") }
            dims.append(Int(d))
            let (c, o) = count.multipliedReportingOverflow(by: Int(d))
            guard !o, c <= 1 << 31 else { throw ModelFileError(file: file, location: at, "has too many elements") }
            count = c
        }
        func sizeError(_ got: Int) -> ModelFileError {
            ModelFileError(file: file, location: at, "holds \(got) values but its shape \(Converter.format(dims)) needs \(count)")
        }
        switch t.dataType {
        case 1, 11:  // float, double
            var values: [Float]
            let width = t.dataType == 1 ? 4 : 8
            if t.hasRawData {
                guard t.rawData.count == count * width else { throw sizeError(t.rawData.count / width) }
                values = [Float](repeating: 0, count: count)
                t.rawData.withUnsafeBytes { raw in
                    for i in 0..<count {
                        if width == 4 {
                            values[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                        } else {
                            values[i] = Float(Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))))
                        }
                    }
                }
            } else if t.dataType == 1 {
                guard t.floatData.count == count else { throw sizeError(t.floatData.count) }
                values = t.floatData
            } else {
                guard t.doubleData.count == count else { throw sizeError(t.doubleData.count) }
                values = t.doubleData.map { Float($0) }
            }
            if let bad = values.firstIndex(where: { !$0.isFinite }) {
                throw ModelFileError(file: file, location: at, "element \(bad) is \(values[bad]), not a finite number")
            }
            constants[name] = Constant(dims: dims, values: values)
        case 6, 7, 9:  // int32, int64: shapes and axes; bool: Dropout's training_mode
            var values: [Int64]
            if t.hasRawData {
                let width = t.dataType == 7 ? 8 : t.dataType == 9 ? 1 : 4
                guard t.rawData.count == count * width else { throw sizeError(t.rawData.count / width) }
                values = t.rawData.withUnsafeBytes { raw in
                    (0..<count).map { i in
                        width == 8 ? Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))
                            : width == 1 ? Int64(raw[i])
                            : Int64(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)))
                    }
                }
            } else if t.dataType == 7 {
                guard t.int64Data.count == count else { throw sizeError(t.int64Data.count) }
                values = t.int64Data
            } else {
                guard t.int32Data.count == count else { throw sizeError(t.int32Data.count) }
                values = t.int32Data.map { Int64($0) }
            }
            integerConstants[name] = values
        default:
            // Kept out: an op that reads it is refused, naming the type, when it asks for it.
            skippedTypes[name] = Converter.typeName(t.dataType)
        }
    }

    // MARK: attributes

    func attribute(_ node: Onnx_NodeProto, _ name: String) -> Onnx_AttributeProto? {
        node.attribute.first { $0.name == name }
    }

    func int(_ node: Onnx_NodeProto, _ index: Int, _ name: String, default value: Int) throws -> Int {
        guard let a = attribute(node, name) else { return value }
        guard a.type == .int || (a.type == .undefined && a.hasI) else { throw fail(node, index: index, "attribute '\(name)' is not an integer") }
        guard a.i >= -(1 << 30), a.i <= 1 << 30 else { throw fail(node, index: index, "attribute '\(name)' is \(a.i)") }
        return Int(a.i)
    }

    func float(_ node: Onnx_NodeProto, _ index: Int, _ name: String, default value: Float) throws -> Float {
        guard let a = attribute(node, name) else { return value }
        guard a.type == .float || (a.type == .undefined && a.hasF) else { throw fail(node, index: index, "attribute '\(name)' is not a float") }
        guard a.f.isFinite else { throw fail(node, index: index, "attribute '\(name)' is \(a.f)") }
        return a.f
    }

    func ints(_ node: Onnx_NodeProto, _ index: Int, _ name: String) throws -> [Int]? {
        guard let a = attribute(node, name) else { return nil }
        guard a.type == .ints || a.type == .undefined else { throw fail(node, index: index, "attribute '\(name)' is not a list of integers") }
        guard a.ints.allSatisfy({ $0 >= -(1 << 30) && $0 <= 1 << 30 }) else {
            throw fail(node, index: index, "attribute '\(name)' holds \(a.ints)")
        }
        return a.ints.map { Int($0) }
    }

    func string(_ node: Onnx_NodeProto, _ name: String) -> String? {
        attribute(node, name).map { String(decoding: $0.s, as: UTF8.self) }
    }

    /// Refuses attributes the conversion would silently ignore.
    func onlyAttributes(_ node: Onnx_NodeProto, _ index: Int, _ known: Set<String>) throws {
        var seen = Set<String>()
        if let twice = node.attribute.first(where: { !seen.insert($0.name).inserted }) {
            throw fail(node, index: index, "attribute '\(twice.name)' is given twice")
        }
        // Before opset 7, is_test=0 asked for training behaviour.
        if opset < 7, let test = attribute(node, "is_test"), test.i == 0 {
            throw fail(node, index: index, "is_test=0 asks for training behaviour")
        }
        if let extra = node.attribute.first(where: { !known.contains($0.name) }) {
            throw fail(node, index: index, "attribute '\(extra.name)' is not supported")
        }
    }

    /// A constant input of the node, by position.
    func constant(_ node: Onnx_NodeProto, _ index: Int, input position: Int, _ role: String) throws -> Constant {
        guard position < node.input.count, !node.input[position].isEmpty else {
            throw fail(node, index: index, "has no \(role) input")
        }
        let name = node.input[position]
        guard let c = constants[name] else {
            if integerConstants[name] != nil { throw fail(node, index: index, "\(role) '\(name)' is an integer tensor, expected float") }
            if let type = skippedTypes[name] {
                throw fail(node, index: index, "\(role) '\(name)' is \(type); only float and double constants are imported (convert the model to float32 first)")
            }
            throw fail(node, index: index, "\(role) '\(name)' is not a constant (an initializer or a Constant node); the agent's layers hold their weights")
        }
        return c
    }

    // MARK: the walk

    /// Indices of the nodes the chosen output depends on, in graph order.
    func neededNodes() -> [Int] {
        var needed: Set<String> = [outputName]
        var kept: [Int] = []
        for (index, node) in graph.node.enumerated().reversed() where node.output.contains(where: needed.contains) {
            kept.append(index)
            needed.formUnion(node.input.filter { !$0.isEmpty })
        }
        return kept.reversed()
    }

    mutating func run() throws {
        let kept = neededNodes()
        unusedNodes = graph.node.count - kept.count
        let lastNonIdentity = kept.lastIndex { graph.node[$0].opType != "Identity" } ?? -1
        for (position, index) in kept.enumerated() {
            let node = graph.node[index]
            onlyIdentityFollows = position >= lastNonIdentity
            let label = node.name.isEmpty ? "node \(index)" : node.name
            guard node.domain.isEmpty || node.domain == "ai.onnx" else {
                throw fail(node, index: index, "is from operator domain '\(node.domain)'; only standard ONNX operators are imported")
            }
            guard ONNXImporter.supportedOps.contains(node.opType) else {
                throw fail(node, index: index, "is not an operator the agent runs (supported: \(ONNXImporter.supportedOps.joined(separator: ", ")))")
            }
            if node.opType == "Constant" {
                try constantNode(node, index)
                steps.append(.init(node: label, opType: node.opType, becomes: "constant"))
                continue
            }
            // PyTorch names a shared parameter through an Identity of the initializer.
            if node.opType == "Identity", node.input.count == 1, let out = node.output.first, !out.isEmpty, node.input[0] != current {
                let source = node.input[0]
                if let c = constants[source] { constants[out] = c } else if let c = integerConstants[source] { integerConstants[out] = c }
                else if let t = skippedTypes[source] { skippedTypes[out] = t }
                else { throw fail(node, index: index, "does not read the running activation '\(current)' or a constant") }
                steps.append(.init(node: label, opType: node.opType, becomes: "constant"))
                continue
            }
            guard let data = node.input.first, !data.isEmpty else { throw fail(node, index: index, "has no input") }
            // The node must read the running activation (a bias Add reads the pending MatMul's output).
            let readsActivation = node.input.enumerated().filter { $0.element == current }.map(\.offset)
            guard !readsActivation.isEmpty else {
                throw fail(node, index: index, "does not read the running activation '\(current)'; the importer takes a chain of layers, not a graph with branches")
            }
            if readsActivation.count > 1 || (readsActivation[0] != 0 && !["Add", "Mul", "Sub", "Div"].contains(node.opType)) {
                throw fail(node, index: index, "reads the activation '\(current)' in an unsupported position")
            }
            guard let output = node.output.first, !output.isEmpty else { throw fail(node, index: index, "has no output") }
            if node.output.count > 1, node.output.dropFirst().contains(where: { !$0.isEmpty }) {
                if node.opType != "Dropout" || node.output.count > 2 {
                    throw fail(node, index: index, "has \(node.output.count) outputs; only the first is supported")
                }
            }
            let becomes = try convert(node, index, activationAt: readsActivation[0])
            steps.append(.init(node: label, opType: node.opType, becomes: becomes))
            current = output
        }
        guard current == outputName else {
            throw ModelFileError(file: file, "the graph's output '\(outputName)' is not the end of the chain of layers ('\(current)')")
        }
        guard !layers.isEmpty else { throw ModelFileError(file: file, "the graph has no layer the agent runs") }
        guard shape.count == 1 else {
            throw ModelFileError(file: file, "the graph's output has shape \(Converter.format(shape)) per sample; the agent's models end flat (add Flatten)")
        }
    }

    mutating func constantNode(_ node: Onnx_NodeProto, _ index: Int) throws {
        guard let out = node.output.first, !out.isEmpty, node.attribute.count == 1 else {
            throw fail(node, index: index, "needs one output and one value attribute")
        }
        let a = node.attribute[0]
        switch a.name {
        case "value":
            try addConstant(a.t, at: "node \(index) (Constant)", as: out)
        case "value_float":
            constants[out] = Constant(dims: [], values: [a.f])
        case "value_floats":
            constants[out] = Constant(dims: [a.floats.count], values: a.floats)
        case "value_int":
            integerConstants[out] = [a.i]
        case "value_ints":
            integerConstants[out] = a.ints
        default:
            throw fail(node, index: index, "attribute '\(a.name)' is not supported")
        }
    }

    /// Converts one node that reads the activation; returns what it became.
    mutating func convert(_ node: Onnx_NodeProto, _ index: Int, activationAt position: Int) throws -> String {
        // A MatMul's bias must come right after it.
        if let pending = pendingBias, !["Identity", "Dropout"].contains(node.opType) {
            pendingBias = nil
            if node.opType == "Add" {
                let bias = try constant(node, index, input: 1 - position, "bias")
                guard bias.count == pending.outputs, bias.dims.count <= 2, bias.dims.dropLast().allSatisfy({ $0 == 1 }) else {
                    throw fail(node, index: index, "bias has shape \(Converter.format(bias.dims)); expected [\(pending.outputs)]")
                }
                let name = "l\(pending.layer).bias"
                tensors.append(TensorBlob(name: name, floats: bias.values, shape: [pending.outputs]))
                layers[pending.layer].bias = name
                return "bias of layer \(pending.layer)"
            }
        }
        if pooledToOnes {
            switch node.opType {
            case "Flatten", "Reshape":
                pooledToOnes = false
            case "Identity", "Dropout", "Relu", "Clip", "LeakyRelu", "Cast":
                break
            default:
                throw fail(node, index: index, "reads GlobalAveragePool's [N, \(shape[0]), 1, 1] output; add Flatten before it")
            }
        }
        switch node.opType {
        case "Identity":
            try onlyAttributes(node, index, [])
            return "nothing"
        case "Cast":
            try onlyAttributes(node, index, ["to", "saturate"])
            guard try int(node, index, "to", default: 0) == 1 else {
                throw fail(node, index: index, "casts to \(Converter.typeName(Int32(try int(node, index, "to", default: 0)))); only a cast of the float input to float is supported")
            }
            return "nothing"
        case "Dropout":
            // Inference: the identity. A training_mode input must be a false constant.
            if node.input.count > 2, !node.input[2].isEmpty {
                guard let mode = integerConstants[node.input[2]] ?? constants[node.input[2]].map({ $0.values.map { Int64($0) } }),
                      mode.allSatisfy({ $0 == 0 }) else {
                    throw fail(node, index: index, "runs in training mode")
                }
            }
            return "nothing"
        case "Add", "Sub", "Mul", "Div":
            return try preprocessing(node, index, activationAt: position)
        case "Gemm":
            try onlyAttributes(node, index, opset < 7 ? ["alpha", "beta", "transA", "transB", "broadcast"] : ["alpha", "beta", "transA", "transB"])
            guard try int(node, index, "transA", default: 0) == 0 else { throw fail(node, index: index, "transA=1 is not supported") }
            let transB = try int(node, index, "transB", default: 0) != 0
            let alpha = try float(node, index, "alpha", default: 1), beta = try float(node, index, "beta", default: 1)
            let b = try constant(node, index, input: 1, "weight")
            try claimWeight(node, index, input: 1)
            guard shape.count == 1 else {
                throw fail(node, index: index, "needs a flat input but gets \(Converter.format(shape)); add Flatten before it")
            }
            guard b.dims.count == 2 else { throw fail(node, index: index, "weight has shape \(Converter.format(b.dims)); expected 2 dimensions") }
            let (inputs, outputs) = transB ? (b.dims[1], b.dims[0]) : (b.dims[0], b.dims[1])
            guard inputs == shape[0] else {
                throw fail(node, index: index, "weight has shape \(Converter.format(b.dims)) but the input has \(shape[0]) features")
            }
            var w = transB ? b.values : Converter.transpose(b.values, rows: inputs, columns: outputs)
            if alpha != 1 { w = w.map { $0 * alpha } }
            var biasName: String?
            if node.input.count > 2, !node.input[2].isEmpty {
                let c = try constant(node, index, input: 2, "bias")
                let values: [Float]
                guard c.dims.count <= 2 else {
                    throw fail(node, index: index, "bias has shape \(Converter.format(c.dims)); Gemm's C has at most 2 dimensions")
                }
                if c.count == outputs, c.dims.dropLast().allSatisfy({ $0 == 1 }) {
                    values = c.values
                } else if c.count == 1 {
                    values = [Float](repeating: c.values[0], count: outputs)
                } else {
                    throw fail(node, index: index, "bias has shape \(Converter.format(c.dims)); expected [\(outputs)] (one per output, the same for every sample)")
                }
                biasName = "l\(layers.count).bias"
                tensors.append(TensorBlob(name: biasName!, floats: values.map { $0 * beta }, shape: [outputs]))
            }
            addDense(weights: w, outputs: outputs, inputs: inputs, bias: biasName)
            return "dense \(inputs)→\(outputs)"
        case "MatMul":
            try onlyAttributes(node, index, [])
            guard position == 0 else { throw fail(node, index: index, "multiplies a constant by the activation; only activation × weight is supported") }
            let b = try constant(node, index, input: 1, "weight")
            try claimWeight(node, index, input: 1)
            guard shape.count == 1 else {
                throw fail(node, index: index, "needs a flat input but gets \(Converter.format(shape)); add Flatten before it")
            }
            guard b.dims.count == 2, b.dims[0] == shape[0] else {
                throw fail(node, index: index, "weight has shape \(Converter.format(b.dims)); expected [\(shape[0]), outputs]")
            }
            addDense(weights: Converter.transpose(b.values, rows: b.dims[0], columns: b.dims[1]), outputs: b.dims[1], inputs: b.dims[0], bias: nil)
            pendingBias = (layers.count - 1, node.output[0], b.dims[1])
            return "dense \(b.dims[0])→\(b.dims[1])"
        case "Conv":
            return try conv(node, index)
        case "Relu":
            try onlyAttributes(node, index, [])
            layers.append(LayerSpec(op: "relu"))
            return "relu"
        case "LeakyRelu":
            try onlyAttributes(node, index, ["alpha"])
            let alpha = try float(node, index, "alpha", default: 0.01)
            layers.append(LayerSpec(op: "leakyrelu", alpha: alpha))
            return "leakyrelu"
        case "Clip":
            return try clip(node, index)
        case "MaxPool", "AveragePool":
            return try pool(node, index)
        case "GlobalAveragePool":
            try onlyAttributes(node, index, [])
            guard shape.count == 3 else { throw fail(node, index: index, "needs an image input [C, H, W] but gets \(Converter.format(shape))") }
            layers.append(LayerSpec(op: "globalavgpool"))
            shape = [shape[0]]
            pooledToOnes = true
            return "globalavgpool"
        case "Flatten":
            try onlyAttributes(node, index, ["axis"])
            let axis = try int(node, index, "axis", default: 1)
            let rank = shape.count == 1 && layers.last?.op == "globalavgpool" ? 4 : shape.count + 1
            guard axis == 1 || axis == 1 - rank else {
                throw fail(node, index: index, "axis=\(axis) would fold the batch or keep spatial axes; only axis=1 is supported")
            }
            return flatten()
        case "Reshape":
            try onlyAttributes(node, index, ["allowzero"])
            guard node.input.count > 1, let target = integerConstants[node.input[1]] else {
                throw fail(node, index: index, "target shape is not a constant int64 tensor")
            }
            let features = shape.reduce(1, *)
            if try int(node, index, "allowzero", default: 0) != 0, target.contains(0) {
                throw fail(node, index: index, "allowzero=1 with a 0 in the target shape makes an empty tensor")
            }
            let flattens = target.count == 2 && (target[0] == 0 || target[0] == -1) && (target[1] == -1 || target[1] == Int64(features))
                && !(target[0] == -1 && target[1] == -1)
            guard flattens else {
                throw fail(node, index: index, "reshapes to \(target); only the reshape that flattens each sample ([-1, \(features)] or [0, -1]) is supported")
            }
            return flatten()
        case "BatchNormalization":
            try onlyAttributes(node, index, ["epsilon", "momentum", "spatial", "training_mode", "is_test", "consumed_inputs"])
            guard try int(node, index, "training_mode", default: 0) == 0 else { throw fail(node, index: index, "runs in training mode") }
            guard try int(node, index, "spatial", default: 1) == 1 else { throw fail(node, index: index, "spatial=0 is not supported") }
            guard let previous = layers.last, ["dense", "conv2d"].contains(previous.op) else {
                throw fail(node, index: index, "does not follow a Conv or Gemm directly; the agent folds batch normalisation into the layer before it")
            }
            let channels = shape[0]
            let eps = try float(node, index, "epsilon", default: 1e-5)
            var names: [String] = []
            for (position, role) in [(1, "weight"), (2, "bias"), (3, "mean"), (4, "var")] {
                let c = try constant(node, index, input: position, role == "weight" ? "scale" : role)
                guard c.count == channels else {
                    throw fail(node, index: index, "\(role) has \(c.count) values for \(channels) channels")
                }
                if role == "var", let bad = c.values.firstIndex(where: { $0 + eps <= 0 }) {
                    throw fail(node, index: index, "variance element \(bad) plus epsilon is not positive")
                }
                let name = "l\(layers.count).\(role == "weight" ? "gamma" : role == "bias" ? "beta" : role)"
                tensors.append(TensorBlob(name: name, floats: c.values, shape: [channels]))
                names.append(name)
            }
            layers.append(LayerSpec(op: "batchnorm", weight: names[0], bias: names[1], mean: names[2], var: names[3], eps: eps))
            return "batchnorm"
        case "Softmax":
            try onlyAttributes(node, index, ["axis"])
            let axis = try int(node, index, "axis", default: opset >= 13 ? -1 : 1)
            guard shape.count == 1, axis == 1 || axis == -1 else {
                throw fail(node, index: index, "softmax over axis \(axis) of \(Converter.format([-1] + shape)); only the class axis of a flat output is supported")
            }
            guard onlyIdentityFollows else {
                throw fail(node, index: index, "is not the last node; the agent's softmax ends the model")
            }
            layers.append(LayerSpec(op: "softmax"))
            return "softmax"
        default:
            throw fail(node, index: index, "is not an operator the agent runs")
        }
    }

    /// Each layer owns its weights: a weight shared by several nodes would be copied per layer.
    mutating func claimWeight(_ node: Onnx_NodeProto, _ index: Int, input position: Int) throws {
        guard usedWeights.insert(node.input[position]).inserted else {
            throw fail(node, index: index, "weight '\(node.input[position])' is shared with an earlier layer; the agent's layers own their weights")
        }
    }

    mutating func flatten() -> String {
        guard shape.count > 1 else { return "nothing" }
        layers.append(LayerSpec(op: "flatten"))
        shape = [shape.reduce(1, *)]
        return "flatten"
    }

    mutating func addDense(weights: [Float], outputs: Int, inputs: Int, bias: String?) {
        let name = "l\(layers.count).weight"
        tensors.append(TensorBlob(name: name, floats: weights, shape: [outputs, inputs]))
        layers.append(LayerSpec(op: "dense", weight: name, bias: bias))
        shape = [outputs]
    }

    static func transpose(_ values: [Float], rows: Int, columns: Int) -> [Float] {
        var out = [Float](repeating: 0, count: values.count)
        for r in 0..<rows {
            for c in 0..<columns { out[c * rows + r] = values[r * columns + c] }
        }
        return out
    }

    /// Pads from `pads` ([top, left, bottom, right]) or `auto_pad`, as one symmetric window.
    func padding(_ node: Onnx_NodeProto, _ index: Int, kernel: [Int], stride: [Int]) throws -> [Int] {
        let auto = string(node, "auto_pad") ?? "NOTSET"
        switch auto {
        case "NOTSET", "":
            let pads = try ints(node, index, "pads") ?? [0, 0, 0, 0]
            guard pads.count == 4, pads.allSatisfy({ $0 >= 0 }) else { throw fail(node, index: index, "pads \(pads) are not four non-negative values") }
            guard pads[0] == pads[2], pads[1] == pads[3] else {
                throw fail(node, index: index, "pads \(pads) are not symmetric; the agent pads top and bottom (left and right) alike")
            }
            return [pads[0], pads[1]]
        case "VALID":
            return [0, 0]
        case "SAME_UPPER", "SAME_LOWER":
            var result: [Int] = []
            for axis in 0..<2 {
                let size = shape[1 + axis]
                let out = (size + stride[axis] - 1) / stride[axis]
                let total = max((out - 1) * stride[axis] + kernel[axis] - size, 0)
                guard total % 2 == 0 else {
                    throw fail(node, index: index, "auto_pad=\(auto) pads one side more than the other here; the agent pads symmetrically")
                }
                result.append(total / 2)
            }
            return result
        default:
            throw fail(node, index: index, "auto_pad '\(auto)' is not an ONNX value")
        }
    }

    func window(_ node: Onnx_NodeProto, _ index: Int, _ name: String, default value: [Int]) throws -> [Int] {
        let w = try ints(node, index, name) ?? value
        guard w.count == 2, w.allSatisfy({ $0 >= 1 }) else { throw fail(node, index: index, "\(name) \(w) is not two positive values (2-D only)") }
        return w
    }

    mutating func conv(_ node: Onnx_NodeProto, _ index: Int) throws -> String {
        try onlyAttributes(node, index, ["auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"])
        guard shape.count == 3 else { throw fail(node, index: index, "needs an image input [C, H, W] but gets \(Converter.format(shape))") }
        let w = try constant(node, index, input: 1, "weight")
        try claimWeight(node, index, input: 1)
        guard w.dims.count == 4 else { throw fail(node, index: index, "weight has shape \(Converter.format(w.dims)); only 2-D convolution is supported") }
        let group = try int(node, index, "group", default: 1)
        guard group == 1 else { throw fail(node, index: index, "group=\(group): grouped and depthwise convolution are not supported") }
        guard try window(node, index, "dilations", default: [1, 1]) == [1, 1] else { throw fail(node, index: index, "dilated convolution is not supported") }
        let kernel = [w.dims[2], w.dims[3]]
        if let k = try ints(node, index, "kernel_shape"), k != kernel {
            throw fail(node, index: index, "kernel_shape \(k) disagrees with the weight's \(kernel)")
        }
        guard w.dims[1] == shape[0] else {
            throw fail(node, index: index, "weight has \(w.dims[1]) input channels but the input has \(shape[0])")
        }
        let stride = try window(node, index, "strides", default: [1, 1])
        let pad = try padding(node, index, kernel: kernel, stride: stride)
        let name = "l\(layers.count).weight"
        tensors.append(TensorBlob(name: name, floats: w.values, shape: w.dims))
        var biasName: String?
        if node.input.count > 2, !node.input[2].isEmpty {
            let b = try constant(node, index, input: 2, "bias")
            guard b.count == w.dims[0], b.dims.count == 1 else {
                throw fail(node, index: index, "bias has shape \(Converter.format(b.dims)); expected [\(w.dims[0])]")
            }
            biasName = "l\(layers.count).bias"
            tensors.append(TensorBlob(name: biasName!, floats: b.values, shape: [w.dims[0]]))
        }
        layers.append(LayerSpec(op: "conv2d", weight: name, bias: biasName, stride: stride, padding: pad))
        let oh = (shape[1] + 2 * pad[0] - kernel[0]) / stride[0] + 1
        let ow = (shape[2] + 2 * pad[1] - kernel[1]) / stride[1] + 1
        guard oh > 0, ow > 0, shape[1] + 2 * pad[0] >= kernel[0], shape[2] + 2 * pad[1] >= kernel[1] else {
            throw fail(node, index: index, "kernel \(kernel) does not fit the padded input \(Converter.format(shape))")
        }
        shape = [w.dims[0], oh, ow]
        return "conv2d \(w.dims[1])→\(w.dims[0]) \(kernel[0])x\(kernel[1])"
    }

    mutating func pool(_ node: Onnx_NodeProto, _ index: Int) throws -> String {
        try onlyAttributes(node, index, ["auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads", "storage_order", "strides"])
        guard shape.count == 3 else { throw fail(node, index: index, "needs an image input [C, H, W] but gets \(Converter.format(shape))") }
        guard attribute(node, "kernel_shape") != nil else { throw fail(node, index: index, "has no kernel_shape") }
        let kernel = try window(node, index, "kernel_shape", default: [1, 1])
        let stride = try window(node, index, "strides", default: [1, 1])
        guard try window(node, index, "dilations", default: [1, 1]) == [1, 1] else { throw fail(node, index: index, "dilated pooling is not supported") }
        guard try int(node, index, "storage_order", default: 0) == 0 else { throw fail(node, index: index, "storage_order=1 is not supported") }
        guard try padding(node, index, kernel: kernel, stride: stride) == [0, 0] else {
            throw fail(node, index: index, "padded pooling is not supported")
        }
        guard kernel[0] <= shape[1], kernel[1] <= shape[2] else {
            throw fail(node, index: index, "kernel \(kernel) is larger than the input \(Converter.format(shape))")
        }
        let oh = (shape[1] - kernel[0]) / stride[0] + 1, ow = (shape[2] - kernel[1]) / stride[1] + 1
        if try int(node, index, "ceil_mode", default: 0) != 0 {
            // Rounding up only matters where a last window would start inside the input.
            let ch = (shape[1] - kernel[0] + stride[0] - 1) / stride[0] + 1, cw = (shape[2] - kernel[1] + stride[1] - 1) / stride[1] + 1
            guard ch == oh, cw == ow else { throw fail(node, index: index, "ceil_mode=1 adds a partial window here; the agent's pools round down") }
        }
        let op = node.opType == "MaxPool" ? "maxpool2d" : "avgpool2d"
        layers.append(LayerSpec(op: op, stride: stride, kernel: kernel))
        shape = [shape[0], oh, ow]
        return "\(op) \(kernel[0])x\(kernel[1])"
    }

    mutating func clip(_ node: Onnx_NodeProto, _ index: Int) throws -> String {
        var low: Float = -.infinity, high: Float = .infinity
        if opset < 11 {
            try onlyAttributes(node, index, ["min", "max"])
            low = try float(node, index, "min", default: -.infinity)
            high = try float(node, index, "max", default: .infinity)
        } else {
            try onlyAttributes(node, index, [])
            for (position, role) in [(1, "min"), (2, "max")] where node.input.count > position && !node.input[position].isEmpty {
                let c = try constant(node, index, input: position, role)
                guard c.count == 1 else { throw fail(node, index: index, "\(role) is not a single value") }
                if role == "min" { low = c.values[0] } else { high = c.values[0] }
            }
        }
        switch (low, high) {
        case (0, 6): layers.append(LayerSpec(op: "relu6")); return "relu6"
        case (0, .infinity): layers.append(LayerSpec(op: "relu")); return "relu"
        default: throw fail(node, index: index, "Clip(\(low), \(high)): only Clip(0, 6) (relu6) and Clip(0) (relu) are supported")
        }
    }

    /// A leading Mul/Add/Sub/Div by a constant becomes the input's x·scale + offset.
    mutating func preprocessing(_ node: Onnx_NodeProto, _ index: Int, activationAt position: Int) throws -> String {
        try onlyAttributes(node, index, [])
        guard layers.isEmpty else {
            throw fail(node, index: index, "element-wise \(node.opType) between layers is not supported; only a leading Mul/Add/Sub/Div by constants (input preprocessing) and a MatMul's bias Add are")
        }
        guard node.input.count == 2 else { throw fail(node, index: index, "needs two inputs") }
        let c = try constant(node, index, input: 1 - position, "operand")
        // Broadcast the constant over one sample; a leading batch dimension must be 1.
        let sample = shape
        guard c.dims.count <= sample.count + 1 else {
            throw fail(node, index: index, "operand of shape \(Converter.format(c.dims)) has more dimensions than the input; it would change the output's rank")
        }
        var dims = c.dims
        while dims.count > sample.count {
            guard dims.first == 1 else { throw fail(node, index: index, "operand of shape \(Converter.format(c.dims)) does not broadcast over one sample") }
            dims.removeFirst()
        }
        dims = [Int](repeating: 1, count: sample.count - dims.count) + dims
        guard zip(dims, sample).allSatisfy({ $0 == 1 || $0 == $1 }) else {
            throw fail(node, index: index, "operand of shape \(Converter.format(c.dims)) does not broadcast to the input \(Converter.format(sample))")
        }
        let perElement = c.count > 1
        if perElement, preScale.count == 1 {
            let n = sample.reduce(1, *)
            preScale = [Float](repeating: preScale[0], count: n)
            preShift = [Float](repeating: preShift[0], count: n)
        }
        // The constant's value for element i of the sample.
        let strides = Converter.strides(dims)
        let sampleStrides = Converter.strides(sample)
        func value(_ i: Int) -> Float {
            if !perElement { return c.values[0] }
            var rest = i, offset = 0
            for axis in 0..<sample.count {
                let coordinate = rest / sampleStrides[axis]
                rest %= sampleStrides[axis]
                if dims[axis] != 1 { offset += coordinate * strides[axis] }
            }
            return c.values[offset]
        }
        for i in 0..<preScale.count {
            let v = value(i)
            switch (node.opType, position) {
            case ("Mul", _): preScale[i] *= v; preShift[i] *= v
            case ("Add", _): preShift[i] += v
            case ("Sub", 0): preShift[i] -= v
            case ("Sub", _): preScale[i] = -preScale[i]; preShift[i] = v - preShift[i]
            case ("Div", 0):
                guard v != 0 else { throw fail(node, index: index, "divides by zero") }
                preScale[i] /= v; preShift[i] /= v
            default:
                throw fail(node, index: index, "divides a constant by the input; only input ÷ constant is supported")
            }
        }
        return "preprocessing"
    }

    static func strides(_ dims: [Int]) -> [Int] {
        var s = [Int](repeating: 1, count: dims.count)
        var acc = 1
        for axis in stride(from: dims.count - 1, through: 0, by: -1) {
            s[axis] = acc
            acc *= dims[axis]
        }
        return s
    }

    func result(name: String, labels: [String]?) throws -> ONNXImporter.Result {
        var input = InputSpec(shape: inputShape)
        var blobs = tensors
        if preScale.count == 1 {
            if preScale[0] != 1 { input.scale = preScale[0] }
            if preShift[0] != 0 { input.offset = preShift[0] }
        } else {
            // (x − mean) / std = x·a + b with std = 1/a and mean = −b/a.
            guard let zero = preScale.firstIndex(of: 0) else {
                let mean = zip(preScale, preShift).map { -$1 / $0 }, std = preScale.map { 1 / $0 }
                if let bad = (0..<mean.count).first(where: { !mean[$0].isFinite || !std[$0].isFinite }) {
                    throw ModelFileError(file: file, "the input preprocessing of element \(bad) (x·\(preScale[bad]) + \(preShift[bad])) is out of float range as a mean and standard deviation")
                }
                input.mean = "input.mean"
                input.std = "input.std"
                blobs.append(TensorBlob(name: "input.mean", floats: mean, shape: inputShape))
                blobs.append(TensorBlob(name: "input.std", floats: std, shape: inputShape))
                return try finish(input: input, blobs: blobs, name: name, labels: labels)
            }
            throw ModelFileError(file: file, "the input preprocessing multiplies element \(zero) by zero")
        }
        return try finish(input: input, blobs: blobs, name: name, labels: labels)
    }

    func finish(input: InputSpec, blobs: [TensorBlob], name: String, labels: [String]?) throws -> ONNXImporter.Result {
        let classes = shape[0]
        if let labels, labels.count != classes {
            throw ModelFileError(file: file, "\(labels.count) labels given for a model with \(classes) outputs")
        }
        let manifest = Manifest(name: name, input: input, labels: labels ?? (0..<classes).map(String.init), layers: layers)
        // The loader's own validation, on the bytes that would be written.
        let bytes = ModelWriter.encode(manifest: manifest, tensors: blobs)
        do {
            _ = try ModelFile(bytes: bytes, path: file)
        } catch let error as ModelFileError {
            throw ModelFileError(file: file, "the converted model is refused by the loader: \(error.location.map { "\($0): " } ?? "")\(error.message)")
        }
        return ONNXImporter.Result(manifest: manifest, tensors: blobs, steps: steps, opset: opset, producer: producer, irVersion: irVersion,
                                   output: outputName, unusedNodes: unusedNodes)
    }
}

extension TensorBlob {
    init(name: String, floats: [Float], shape: [Int]) {
        let bytes = floats.withUnsafeBufferPointer { Array(UnsafeRawBufferPointer($0)) }
        self.init(name: name, dtype: .f32, shape: shape, bytes: bytes)
    }
}
