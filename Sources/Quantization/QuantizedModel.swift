import Foundation
import Inference
import ModelFile
import Tensor

/// An FP32 network (the master copy, kept for FP32 fallback and for learning) with the
/// quantized weights and calibrated activation parameters of its quantization spec.
public final class QuantizedModel: @unchecked Sendable {
    public let network: Network
    public let spec: QuantizationSpec
    public let int8: [Int: Int8ChannelWeights]
    public let int4: [Int: Int4GroupWeights]

    /// Inputs of an INT4 layer at most (its kernel's scratch is at most 192 bytes an input: 12 MiB here).
    public static let maxInt4Inputs = 1 << 16

    public init(network: Network, spec: QuantizationSpec, int8: [Int: Int8ChannelWeights], int4: [Int: Int4GroupWeights]) {
        self.network = network
        self.spec = spec
        self.int8 = int8
        self.int4 = int4
    }

    /// The quantization recorded in a model file, or nil for an FP32 file. Every reference is
    /// checked: layer indices, tensor names, dtypes and shapes, activation parameters.
    public static func load(_ model: ModelFile, network: Network) throws -> QuantizedModel? {
        guard let json = model.manifest.quantization else { return nil }
        let file = model.path
        func fail(_ location: String, _ message: String) -> ModelFileError { ModelFileError(file: file, location: location, message) }
        let spec = try QuantizationSpec(json: json, file: file)
        if model.manifest.layers.contains(where: { $0.op == "batchnorm" }) {
            throw fail("edge.manifest", "quantization section with unfolded batchnorm layers; the agent writes quantized files folded")
        }
        for (key, p) in spec.activations {
            guard let t = Int(key), t >= 0, t <= network.layers.count else { throw fail("quantization", "activation '\(key)' is not a tensor index") }
            // 1/scale must be finite too: below about 3e-39 it is not, and a zero would quantize as NaN.
            guard p.scale.isFinite, p.scale > 0, (1 / p.scale).isFinite, (0...255).contains(p.zeroPoint) else {
                throw fail("quantization", "activation \(key): scale \(p.scale) / zero point \(p.zeroPoint) out of range")
            }
        }
        var int8: [Int: Int8ChannelWeights] = [:], int4: [Int: Int4GroupWeights] = [:]
        if let twice = Dictionary(grouping: spec.layers, by: \.layer).first(where: { $0.value.count > 1 })?.key {
            throw fail("quantization layer \(twice)", "is listed more than once")
        }
        for entry in spec.layers {
            let at = "quantization layer \(entry.layer)"
            guard entry.layer >= 0, entry.layer < network.layers.count, let w = network.layers[entry.layer].weight else {
                throw fail(at, "is not a dense or conv2d layer")
            }
            let outputs = w.shape[0], inputs = w.count / outputs
            func tensor(_ name: String?, _ role: String, _ dtype: DType, _ shape: [Int]) throws -> UnsafeRawBufferPointer {
                guard let name else { throw fail(at, "needs '\(role)'") }
                guard let e = model.header.entry(name) else { throw fail(at, "\(role) tensor '\(name)' is not in the file") }
                guard e.dtype == dtype else { throw fail(at, "\(role) tensor '\(name)' is \(e.dtype.rawValue), expected \(dtype.rawValue)") }
                guard e.shape.reduce(1, *) == shape.reduce(1, *), e.shape.first == shape.first else {
                    throw fail(at, "\(role) tensor '\(name)' has shape \(formatShape(e.shape)), expected \(formatShape(shape))")
                }
                return model.rawBytes(e)
            }
            func floats(_ raw: UnsafeRawBufferPointer, _ what: String) throws -> [Float] {
                let v = (0..<(raw.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
                guard v.allSatisfy({ $0.isFinite && $0 > 0 }) else { throw fail(at, "\(what) holds a scale that is not a positive finite number") }
                return v
            }
            switch entry.precision {
            case .fp32: continue
            case .int8:
                let q = try tensor(entry.weight, "weight", .i8, [outputs, inputs])
                let s = try floats(try tensor(entry.weightScale, "weight_scale", .f32, [outputs]), "weight_scale")
                let values = q.map { Int8(bitPattern: $0) }
                guard !values.contains(-128) else { throw fail(at, "INT8 weights must lie in -127...127") }
                int8[entry.layer] = Int8ChannelWeights(q: values, scales: s, outputs: outputs, inputs: inputs)
            case .int4:
                guard case .dense = network.layers[entry.layer].kind else { throw fail(at, "INT4 is for dense layers only") }
                guard let group = entry.group, [32, 64, 128].contains(group), inputs % 2 == 0 else {
                    throw fail(at, "INT4 needs a group of 32, 64 or 128 and an even input count")
                }
                // The kernel widens one 16-output panel of all inputs into per-plan scratch (at most 192 bytes an input).
                guard inputs <= Self.maxInt4Inputs else {
                    throw fail(at, "INT4 takes at most \(Self.maxInt4Inputs) inputs (this layer has \(inputs)); keep it INT8")
                }
                let groups = (inputs + group - 1) / group
                let n = try tensor(entry.weight, "weight", .u8, [outputs, inputs / 2])
                let s = try floats(try tensor(entry.weightScale, "weight_scale", .f32, [outputs, groups]), "weight_scale")
                int4[entry.layer] = Int4GroupWeights(nibbles: Array(n), scales: s, outputs: outputs, inputs: inputs, group: group)
            }
            if entry.precision == .int8 {
                // The tensors feeding and leaving an integer layer must have parameters.
                guard spec.activation(entry.layer) != nil else {
                    throw fail(at, "no activation parameters for its input (tensor \(entry.layer))")
                }
                if let t = uint8OutputTensor(of: entry.layer, network: network, readsUInt8: { spec.precision(ofLayer: $0) == .int8 }),
                   spec.activation(t) == nil {
                    throw fail(at, "no activation parameters for its output (tensor \(t)), which the next INT8 layer reads as UINT8")
                }
            }
        }
        return QuantizedModel(network: network, spec: spec, int8: int8, int4: int4)
    }

    /// The tensor an integer layer `l` writes as UINT8: its output (after a fused activation) when
    /// the next layer with weights reads UINT8 (INT8, or INT4 on W4A8 with calibrated inputs);
    /// nil when it writes FP32. A file must give the parameters of that tensor only where the
    /// next layer is INT8: an INT4 layer without them quantizes each FP32 row on its own.
    static func uint8OutputTensor(of l: Int, network: Network, readsUInt8: (Int) -> Bool) -> Int? {
        let layers = network.layers
        let output = network.fusedActivation(at: l) == .none ? l + 1 : l + 2
        var j = output
        while j < layers.count {
            switch layers[j].kind {
            case .dense, .conv2d: return readsUInt8(j) ? output : nil
            case .softmax: return nil
            default: j += 1
            }
        }
        return nil
    }

    /// Extra tensors a file needs for this model's quantized layers.
    public func tensorBlobs() -> [TensorBlob] {
        var blobs: [TensorBlob] = []
        for entry in spec.layers {
            let shape = network.layers[entry.layer].weight!.shape
            if let q = int8[entry.layer], let w = entry.weight, let s = entry.weightScale {
                // conv2d weights are stored tap-major, as the kernels read them.
                let stored = shape.count == 4 ? [shape[0], shape[2], shape[3], shape[1]] : shape
                blobs.append(TensorBlob(name: w, dtype: .i8, shape: stored, bytes: q.q.map { UInt8(bitPattern: $0) }))
                blobs.append(TensorBlob(name: s, dtype: .f32, shape: [q.outputs], bytes: q.scales.withUnsafeBytes { Array($0) }))
            }
            if let q = int4[entry.layer], let w = entry.weight, let s = entry.weightScale {
                blobs.append(TensorBlob(name: w, dtype: .u8, shape: [q.outputs, q.inputs / 2], bytes: q.nibbles))
                blobs.append(TensorBlob(name: s, dtype: .f32, shape: [q.outputs, q.groups], bytes: q.scales.withUnsafeBytes { Array($0) }))
            }
        }
        return blobs
    }

    /// Writes the FP32 network plus the quantized tensors and the `quantization` section.
    /// `integerOnly`: without the FP32 weights of the INT8 and INT4 layers, which the loader rebuilds
    /// from the integer ones (q · scale): a smaller file whose FP32 fallback and on-device learning
    /// start from the dequantized weights.
    public func write(to path: String, integerOnly: Bool = false) throws {
        var manifest = network.manifest()
        manifest.quantization = spec.json
        var blobs = network.tensorBlobs()
        if integerOnly {
            let dropped = Set(spec.layers.filter { $0.precision != .fp32 }.compactMap { network.layers[$0.layer].weightName })
            blobs.removeAll { dropped.contains($0.name) }
        }
        try ModelWriter.write(manifest: manifest, tensors: blobs + tensorBlobs(), to: path)
    }

    public var precisionName: String {
        let used = Set(spec.layers.map(\.precision))
        let weighted = network.layers.indices.filter { network.layers[$0].weight != nil }
        let all = Set(weighted.map { spec.precision(ofLayer: $0) })
        if all.count == 1 { return all.first!.rawValue }
        return used.isEmpty ? "fp32" : "mixed"
    }
}
