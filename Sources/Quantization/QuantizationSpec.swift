import Foundation
import ModelFile

public enum LayerPrecision: String, Codable, Sendable, CaseIterable {
    case fp32, int8, int4
}

/// How INT4 layers quantize their inputs where the arithmetic is W4A8 (AVX-512 VNNI): `static`,
/// with the input tensor's calibrated parameters, as INT8 layers do (UINT8 then flows between
/// integer layers); `per-row`, each row over its own range when the layer runs.
public enum Int4Activations: String, Codable, Sendable {
    case calibrated = "static"
    case perRow = "per-row"
}

/// The manifest's `quantization` section: per-layer precision, where the quantized weights are,
/// and the calibrated parameters of every activation tensor, so loading needs no recalibration.
public struct QuantizationSpec: Codable, Equatable, Sendable {
    public struct LayerEntry: Codable, Equatable, Sendable {
        /// Index into the manifest's layers (a dense or conv2d layer).
        public var layer: Int
        public var precision: LayerPrecision
        /// INT8: I8 `[out, in]` (conv2d: `[out, kh, kw, in]`, taps channels-last); INT4: U8 nibbles `[out, in/2]`.
        public var weight: String?
        /// F32 `[out]` (INT8) or `[out, groups]` (INT4).
        public var weightScale: String?
        public var group: Int?
        /// Why a layer stays FP32, when it was not chosen ("leakyrelu after dense is not fused", …).
        public var note: String?

        enum CodingKeys: String, CodingKey {
            case layer, precision, weight, group, note
            case weightScale = "weight_scale"
        }

        public init(layer: Int, precision: LayerPrecision, weight: String? = nil, weightScale: String? = nil,
                    group: Int? = nil, note: String? = nil) {
            self.layer = layer
            self.precision = precision
            self.weight = weight
            self.weightScale = weightScale
            self.group = group
            self.note = note
        }
    }

    public var method: CalibrationMethod
    public var calibrationRows: Int
    /// Activation parameters by tensor index: "0" is the preprocessed input, "l+1" layer l's output.
    public var activations: [String: QuantParams]
    public var layers: [LayerEntry]
    public var adaptive: AdaptivePrecision?
    /// INT8 weights in −63…63 (`quantize --reduce-range`, recorded only when some layer is INT8);
    /// absent means −127…127. The kernels need no flag (they look at the weights); requantizing
    /// after local learning keeps the choice.
    public var reduceRange: Bool?
    /// Recorded only when some layer is INT4; absent (files written before it existed) means
    /// `per-row`, so an existing file keeps computing what it computed. Requantizing after local
    /// learning keeps the choice.
    public var int4Activations: Int4Activations?

    enum CodingKeys: String, CodingKey {
        case method, layers, activations, adaptive
        case calibrationRows = "calibration_rows"
        case reduceRange = "reduce_range"
        case int4Activations = "int4_activations"
    }

    public init(method: CalibrationMethod, calibrationRows: Int, activations: [String: QuantParams], layers: [LayerEntry],
                adaptive: AdaptivePrecision? = nil, reduceRange: Bool = false, int4Activations: Int4Activations = .calibrated) {
        self.method = method
        self.calibrationRows = calibrationRows
        self.activations = activations
        self.layers = layers
        self.adaptive = adaptive
        self.reduceRange = reduceRange ? true : nil
        self.int4Activations = layers.contains { $0.precision == .int4 } ? int4Activations : nil
    }

    /// How the INT4 layers quantize their inputs (absent: per row).
    public var int4ActivationsOrDefault: Int4Activations { int4Activations ?? .perRow }

    public func activation(_ tensor: Int) -> QuantParams? { activations[String(tensor)] }

    public func precision(ofLayer l: Int) -> LayerPrecision {
        layers.first { $0.layer == l }?.precision ?? .fp32
    }

    public var json: JSONValue {
        let data = try! JSONEncoder().encode(self)
        return try! JSONDecoder().decode(JSONValue.self, from: data)
    }

    public init(json: JSONValue, file: String) throws {
        do {
            let data = try JSONEncoder().encode(json)
            self = try JSONDecoder().decode(QuantizationSpec.self, from: data)
        } catch let error as DecodingError {
            throw ModelFileError(file: file, location: "edge.manifest", "quantization section: \(Self.describe(error))")
        }
    }

    static func describe(_ error: DecodingError) -> String {
        switch error {
        case .keyNotFound(let key, let ctx): return (ctx.codingPath + [key]).map(\.stringValue).joined(separator: ".") + " is missing"
        case .typeMismatch(_, let ctx), .valueNotFound(_, let ctx), .dataCorrupted(let ctx):
            return ctx.codingPath.map(\.stringValue).joined(separator: ".") + ": " + ctx.debugDescription
        @unknown default: return "cannot be decoded"
        }
    }
}

/// Re-running low-confidence samples in FP32.
public struct AdaptivePrecision: Codable, Equatable, Sendable {
    public enum Mode: String, Codable, Sendable { case off, fixed, auto }
    public var mode: Mode
    /// Samples whose top-1 minus top-2 score is below this are answered by the FP32 plan.
    public var threshold: Float
    /// On the calibration rows when the threshold was chosen.
    public var escalationRate: Double?
    public var agreement: Double?

    enum CodingKeys: String, CodingKey {
        case mode, threshold, agreement
        case escalationRate = "escalation_rate"
    }

    public init(mode: Mode, threshold: Float, escalationRate: Double? = nil, agreement: Double? = nil) {
        self.mode = mode
        self.threshold = threshold
        self.escalationRate = escalationRate
        self.agreement = agreement
    }
}
