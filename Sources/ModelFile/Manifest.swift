import Foundation

/// The `edge.manifest` document: what the tensors of a model file mean.
public struct Manifest: Codable, Equatable, Sendable {
    public var name: String
    public var version: Int
    public var input: InputSpec
    public var labels: [String]?
    public var layers: [LayerSpec]
    /// Names of the tensors that on-device training may change; absent means all.
    public var trainable: [String]?
    // Sections written by later stages of the agent, kept as JSON here.
    public var quantization: JSONValue?
    public var driftReference: JSONValue?
    /// The EWC anchor: which Fisher, how many samples, decay; tensors `ewc.fisher.*`, `ewc.anchor.*`.
    public var ewc: JSONValue?
    /// The labelled replay seed: tensors `replay.inputs`, `replay.labels`, `replay.logits`.
    public var replaySeed: JSONValue?
    public var lineage: JSONValue?
    /// Activation ranges learned by quantization-aware training (`train --qat int8`), which
    /// `quantize` keeps: see `QATRanges`.
    public var qat: JSONValue?

    enum CodingKeys: String, CodingKey {
        case name, version, input, labels, layers, trainable, quantization, lineage, ewc, qat
        case driftReference = "drift_reference"
        case replaySeed = "replay_seed"
    }

    public init(name: String, version: Int = 1, input: InputSpec, labels: [String]?, layers: [LayerSpec],
                trainable: [String]? = nil, lineage: JSONValue? = nil) {
        self.name = name
        self.version = version
        self.input = input
        self.labels = labels
        self.layers = layers
        self.trainable = trainable
        self.lineage = lineage
    }

    public static let formatKey = "edge.format"
    public static let manifestKey = "edge.manifest"
    public static let formatVersion = "1"

    /// Tensors that belong to a field section rather than to a layer: `drift.*` for
    /// `drift_reference`, `ewc.*` for `ewc`, `replay.*` for `replay_seed`.
    public static func isFieldTensor(_ name: String) -> Bool {
        fieldTensorPrefixes.contains { name.hasPrefix($0) }
    }

    public static let fieldTensorPrefixes = ["drift.", "ewc.", "replay."]

    public func jsonString() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Encoding plain structs of numbers and strings cannot fail.
        let data = try! encoder.encode(self)
        return String(decoding: data, as: UTF8.self)
    }
}

public struct InputSpec: Codable, Equatable, Sendable {
    /// One sample's shape: `[features]` or `[channels, height, width]`.
    public var shape: [Int]
    public var scale: Float?
    public var offset: Float?
    /// Names of F32 tensors of the input's shape: `(x - mean) / std` instead of scale/offset.
    public var mean: String?
    public var std: String?

    public init(shape: [Int], scale: Float? = nil, offset: Float? = nil, mean: String? = nil, std: String? = nil) {
        self.shape = shape
        self.scale = scale
        self.offset = offset
        self.mean = mean
        self.std = std
    }
}

/// One layer as written in the manifest. Fields an op does not use must be absent.
public struct LayerSpec: Codable, Equatable, Sendable {
    public var op: String
    public var weight: String?
    public var bias: String?
    public var mean: String?
    public var `var`: String?
    public var eps: Float?
    public var stride: [Int]?
    public var padding: [Int]?
    public var kernel: [Int]?
    public var alpha: Float?

    public init(op: String, weight: String? = nil, bias: String? = nil, mean: String? = nil, `var`: String? = nil,
                eps: Float? = nil, stride: [Int]? = nil, padding: [Int]? = nil, kernel: [Int]? = nil, alpha: Float? = nil) {
        self.op = op
        self.weight = weight
        self.bias = bias
        self.mean = mean
        self.var = `var`
        self.eps = eps
        self.stride = stride
        self.padding = padding
        self.kernel = kernel
        self.alpha = alpha
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case op, weight, bias, mean, `var`, eps, stride, padding, kernel, alpha
    }

    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: Decoder) throws {
        let any = try decoder.container(keyedBy: AnyKey.self)
        for key in any.allKeys where CodingKeys(rawValue: key.stringValue) == nil {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath + [key],
                                                    debugDescription: "unknown field '\(key.stringValue)'"))
        }
        let c = try decoder.container(keyedBy: CodingKeys.self)
        op = try c.decode(String.self, forKey: .op)
        weight = try c.decodeIfPresent(String.self, forKey: .weight)
        bias = try c.decodeIfPresent(String.self, forKey: .bias)
        mean = try c.decodeIfPresent(String.self, forKey: .mean)
        `var` = try c.decodeIfPresent(String.self, forKey: .var)
        eps = try c.decodeIfPresent(Float.self, forKey: .eps)
        alpha = try c.decodeIfPresent(Float.self, forKey: .alpha)
        stride = try Self.decodePair(c, .stride)
        padding = try Self.decodePair(c, .padding)
        kernel = try Self.decodePair(c, .kernel)
    }

    /// `3` and `[3, 3]` both mean a 3×3 window, as in PyTorch.
    private static func decodePair(_ c: KeyedDecodingContainer<CodingKeys>, _ key: CodingKeys) throws -> [Int]? {
        if let n = try? c.decode(Int.self, forKey: key) { return [n, n] }
        return try c.decodeIfPresent([Int].self, forKey: key)
    }

    public static func dense(_ weight: String, _ bias: String?) -> LayerSpec { LayerSpec(op: "dense", weight: weight, bias: bias) }
    public static func op(_ name: String) -> LayerSpec { LayerSpec(op: name) }
}
