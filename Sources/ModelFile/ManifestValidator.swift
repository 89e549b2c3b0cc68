import Foundation
import Tensor

/// Checks the `edge.manifest` against the tensors of the file and resolves every layer's shapes.
struct ManifestValidator {
    /// Values per sample at the input and after any layer (64 MB of F32): far above an edge model,
    /// low enough that shape arithmetic cannot overflow and one sample's buffers stay allocatable.
    static let maxActivationElements = 1 << 24
    /// Floats of one conv2d's im2col workspace (1 GiB).
    static let maxConvWorkspace = 1 << 28
    /// Largest stride, padding or pooling window.
    static let maxWindow = 1 << 16

    let header: SafeTensorsHeader
    let storage: Storage
    let file: String

    struct Result {
        var manifest: Manifest
        var layers: [Layer]
        var weights: [String: Tensor]
    }

    private func fail(_ location: String?, _ message: String) -> ModelFileError {
        ModelFileError(file: file, location: location, message)
    }

    func validate() throws -> Result {
        guard let format = header.metadata[Manifest.formatKey] else {
            throw fail("__metadata__", "no '\(Manifest.formatKey)' key: this safetensors file is not an edge-agent model")
        }
        guard format == Manifest.formatVersion else {
            throw fail("__metadata__", "edge.format '\(format)' is not supported (this agent reads format \(Manifest.formatVersion))")
        }
        guard let manifestText = header.metadata[Manifest.manifestKey] else {
            throw fail("__metadata__", "no '\(Manifest.manifestKey)' key")
        }
        let manifest: Manifest
        do {
            manifest = try JSONDecoder().decode(Manifest.self, from: Data(manifestText.utf8))
        } catch let error as DecodingError {
            throw fail("edge.manifest", Self.describe(error))
        } catch {
            throw fail("edge.manifest", "is not valid JSON")
        }

        var weights: [String: Tensor] = [:]
        func floatTensor(_ name: String, at location: String, role: String) throws -> Tensor {
            if let t = weights[name] { return t }
            guard let entry = header.entry(name) else {
                throw fail(location, "\(role) tensor '\(name)' is not in the file")
            }
            guard entry.dtype.isFloatWeight else {
                throw fail(location, "\(role) tensor '\(name)' is \(entry.dtype.rawValue); expected F32, F16 or BF16")
            }
            let t = widen(entry)
            if let bad = (0..<t.count).first(where: { !t[$0].isFinite }) {
                throw fail("tensor '\(name)'", "element \(bad) is \(t[bad]), not a finite number")
            }
            weights[name] = t
            return t
        }
        /// A layer's FP32 weights: the file's, or, in an integer-only file (`quantize --integer-only`),
        /// rebuilt from the layer's INT8 or INT4 tensors in the quantization section (q · scale).
        // Weights rebuilt from integer tensors, and the integer tensors they came from: each used once
        // (a name shared by two layers would give them one rebuilt tensor but two integer ones, and
        // one small tensor referenced by many layers would rebuild it many times).
        var rebuiltFrom: Set<String> = []
        func weightTensor(_ name: String, layer: Int, input: [Int], at location: String) throws -> Tensor {
            if header.entry(name) != nil { return try floatTensor(name, at: location, role: "weight") }
            guard weights[name] == nil else {
                throw fail(location, "weight tensor '\(name)' is not in the file and another layer's weights are rebuilt under that name")
            }
            guard let entry = try Self.quantizationEntry(manifest.quantization, layer: layer, fail: fail) else {
                throw fail(location, "weight tensor '\(name)' is not in the file (nor INT8/INT4 weights for this layer in the quantization section)")
            }
            if let source = entry.weight, !rebuiltFrom.insert(source).inserted {
                throw fail("quantization layer \(layer)", "tensor '\(source)' already rebuilt another layer's weights")
            }
            let t = try dequantized(entry, input: input, at: "quantization layer \(layer)")
            weights[name] = t
            return t
        }
        func expectShape(_ t: Tensor, _ name: String, _ shape: [Int], at location: String, role: String) throws {
            guard t.shape == shape else {
                throw fail(location, "\(role) tensor '\(name)' has shape \(formatShape(t.shape)), expected \(formatShape(shape))")
            }
        }

        // Input
        let input = manifest.input
        guard manifest.name.isEmpty == false else { throw fail("edge.manifest", "'name' is empty") }
        guard input.shape.count == 1 || input.shape.count == 3 else {
            throw fail("input", "shape \(formatShape(input.shape)) must be [features] or [channels, height, width]")
        }
        guard input.shape.allSatisfy({ $0 > 0 }) else {
            throw fail("input", "shape \(formatShape(input.shape)) has a dimension that is not positive")
        }
        guard Self.elementCount(input.shape) != nil else {
            throw fail("input", "shape \(formatShape(input.shape)) has more than \(Self.maxActivationElements) values per sample")
        }
        if let s = input.scale, !s.isFinite || s == 0 { throw fail("input", "scale \(s) must be finite and non-zero") }
        if let o = input.offset, !o.isFinite { throw fail("input", "offset \(o) must be finite") }
        if (input.mean == nil) != (input.std == nil) { throw fail("input", "'mean' and 'std' must be given together") }
        if input.mean != nil && (input.scale != nil || input.offset != nil) {
            throw fail("input", "give either 'scale'/'offset' or 'mean'/'std', not both")
        }
        if let m = input.mean, let s = input.std {
            let mt = try floatTensor(m, at: "input", role: "mean")
            try expectShape(mt, m, input.shape, at: "input", role: "mean")
            let st = try floatTensor(s, at: "input", role: "std")
            try expectShape(st, s, input.shape, at: "input", role: "std")
            if let z = (0..<st.count).first(where: { st[$0] == 0 }) {
                throw fail("tensor '\(s)'", "std element \(z) is zero")
            }
        }

        // Layers, chaining shapes
        guard !manifest.layers.isEmpty else { throw fail("edge.manifest", "'layers' is empty") }
        var shape = input.shape
        var layers: [Layer] = []
        for (i, spec) in manifest.layers.enumerated() {
            let at = "layer \(i) (\(spec.op))"
            guard Op.knownNames.contains(spec.op) else {
                throw fail("layer \(i)", "unknown op '\(spec.op)' (known: \(Op.knownNames.joined(separator: ", ")))")
            }
            try checkFields(spec, at: at)
            let op: Op
            let out: [Int]
            switch spec.op {
            case "dense":
                guard shape.count == 1 else {
                    throw fail(at, "needs a flat input but gets \(formatShape(shape)); add a flatten layer before it")
                }
                let wName = try required(spec.weight, "weight", at)
                let w = try weightTensor(wName, layer: i, input: shape, at: at)
                guard w.rank == 2 else { throw fail(at, "weight tensor '\(wName)' has shape \(formatShape(w.shape)), expected [out, in]") }
                guard w.shape[1] == shape[0] else {
                    throw fail(at, "weight tensor '\(wName)' has shape \(formatShape(w.shape)) but the input has \(shape[0]) features")
                }
                guard w.shape[0] > 0 else { throw fail(at, "weight tensor '\(wName)' has no outputs") }
                if let b = spec.bias {
                    try expectShape(try floatTensor(b, at: at, role: "bias"), b, [w.shape[0]], at: at, role: "bias")
                }
                op = .dense(weight: wName, bias: spec.bias)
                out = [w.shape[0]]
            case "conv2d":
                try needImage(shape, at)
                let wName = try required(spec.weight, "weight", at)
                let w = try weightTensor(wName, layer: i, input: shape, at: at)
                guard w.rank == 4 else { throw fail(at, "weight tensor '\(wName)' has shape \(formatShape(w.shape)), expected [out, in, kh, kw]") }
                guard w.shape[1] == shape[0] else {
                    throw fail(at, "weight tensor '\(wName)' has \(w.shape[1]) input channels but the input has \(shape[0])")
                }
                guard w.shape[0] > 0, w.shape[2] > 0, w.shape[3] > 0 else { throw fail(at, "weight tensor '\(wName)' has an empty dimension") }
                let stride = try window(spec.stride, default: Window(1, 1), "stride", at, minimum: 1)
                let padding = try window(spec.padding, default: Window(0, 0), "padding", at, minimum: 0)
                let oh = Op.convOutput(shape[1], kernel: w.shape[2], stride: stride.height, padding: padding.height)
                let ow = Op.convOutput(shape[2], kernel: w.shape[3], stride: stride.width, padding: padding.width)
                guard shape[1] + 2 * padding.height >= w.shape[2], shape[2] + 2 * padding.width >= w.shape[3], oh > 0, ow > 0 else {
                    throw fail(at, "kernel \(w.shape[2])x\(w.shape[3]) does not fit the padded input \(formatShape(shape))")
                }
                // The im2col buffer: one patch of C·kh·kw values (plus the output) per output pixel.
                let patch = w.count / w.shape[0] + w.shape[0]
                let (pixels, o1) = oh.multipliedReportingOverflow(by: ow)
                let (workspace, o2) = pixels.multipliedReportingOverflow(by: patch)
                guard !o1, !o2, workspace <= Self.maxConvWorkspace else {
                    throw fail(at, "a \(oh)x\(ow) output of \(w.shape[1])x\(w.shape[2])x\(w.shape[3]) patches needs more than \(Self.maxConvWorkspace) floats of workspace")
                }
                if let b = spec.bias {
                    try expectShape(try floatTensor(b, at: at, role: "bias"), b, [w.shape[0]], at: at, role: "bias")
                }
                op = .conv2d(weight: wName, bias: spec.bias, stride: stride, padding: padding)
                out = [w.shape[0], oh, ow]
            case "maxpool2d", "avgpool2d":
                try needImage(shape, at)
                guard let k = spec.kernel else { throw fail(at, "needs 'kernel'") }
                let kernel = try window(k, default: Window(1, 1), "kernel", at, minimum: 1)
                let stride = try window(spec.stride, default: kernel, "stride", at, minimum: 1)
                guard kernel.height <= shape[1], kernel.width <= shape[2] else {
                    throw fail(at, "kernel \(kernel.height)x\(kernel.width) is larger than the input \(formatShape(shape))")
                }
                op = spec.op == "maxpool2d" ? .maxpool2d(kernel: kernel, stride: stride) : .avgpool2d(kernel: kernel, stride: stride)
                out = [shape[0], Op.convOutput(shape[1], kernel: kernel.height, stride: stride.height, padding: 0),
                       Op.convOutput(shape[2], kernel: kernel.width, stride: stride.width, padding: 0)]
            case "globalavgpool":
                try needImage(shape, at)
                op = .globalavgpool
                out = [shape[0]]
            case "flatten":
                op = .flatten
                out = [shape.reduce(1, *)]
            case "relu": op = .relu; out = shape
            case "relu6": op = .relu6; out = shape
            case "leakyrelu":
                let alpha = spec.alpha ?? 0.01
                guard alpha.isFinite else { throw fail(at, "alpha \(alpha) is not finite") }
                op = .leakyrelu(alpha: alpha)
                out = shape
            case "batchnorm":
                guard let previous = layers.last, ["dense", "conv2d"].contains(previous.op.name) else {
                    throw fail(at, "must follow a dense or conv2d layer, into which it is folded at load")
                }
                let channels = shape[0]
                var names: [String] = []
                for (role, value) in [("weight", spec.weight), ("bias", spec.bias), ("mean", spec.mean), ("var", spec.var)] {
                    let name = try required(value, role, at)
                    try expectShape(try floatTensor(name, at: at, role: role), name, [channels], at: at, role: role)
                    names.append(name)
                }
                let eps = spec.eps ?? 1e-5
                guard eps.isFinite, eps >= 0 else { throw fail(at, "eps \(eps) must be finite and non-negative") }
                let variance = weights[names[3]]!
                if let bad = (0..<variance.count).first(where: { variance[$0] + eps <= 0 }) {
                    throw fail("tensor '\(names[3])'", "variance element \(bad) plus eps is not positive")
                }
                op = .batchnorm(weight: names[0], bias: names[1], mean: names[2], variance: names[3], eps: eps)
                out = shape
            case "softmax":
                guard i == manifest.layers.count - 1 else { throw fail(at, "softmax may only be the last layer") }
                op = .softmax
                out = shape
            default:
                preconditionFailure("op list and switch disagree")
            }
            guard Self.elementCount(out) != nil else {
                throw fail(at, "output \(formatShape(out)) has more than \(Self.maxActivationElements) values per sample")
            }
            layers.append(Layer(index: i, op: op, inputShape: shape, outputShape: out))
            shape = out
        }
        guard shape.count == 1 else {
            throw fail("layer \(layers.count - 1) (\(layers.last!.op.name))",
                       "the model's output \(formatShape(shape)) is not flat; end with flatten or dense")
        }
        if let labels = manifest.labels, labels.count != shape[0] {
            throw fail("edge.manifest", "'labels' has \(labels.count) names but the model outputs \(shape[0]) scores")
        }
        for name in manifest.trainable ?? [] where weights[name] == nil {
            throw fail("edge.manifest", "trainable tensor '\(name)' is not a tensor any layer uses")
        }
        if let qat = manifest.qat {
            do throws(QATRangesError) { _ = try QATRanges(qat, tensors: layers.count + 1) } catch { throw fail("qat", error.message) }
        }
        return Result(manifest: manifest, layers: layers, weights: weights)
    }

    /// The product of `shape`, or nil past `maxActivationElements` (checked per factor, so it never overflows).
    static func elementCount(_ shape: [Int]) -> Int? {
        var n = 1
        for d in shape {
            guard d <= maxActivationElements else { return nil }
            n *= d
            guard n <= maxActivationElements else { return nil }
        }
        return n
    }

    private func required(_ value: String?, _ role: String, _ at: String) throws -> String {
        guard let value else { throw fail(at, "needs '\(role)'") }
        return value
    }

    private func needImage(_ shape: [Int], _ at: String) throws {
        guard shape.count == 3 else {
            throw fail(at, "needs a [channels, height, width] input but gets \(formatShape(shape))")
        }
    }

    private func window(_ pair: [Int]?, default value: Window, _ role: String, _ at: String, minimum: Int) throws -> Window {
        guard let pair else { return value }
        guard pair.count == 2, pair.allSatisfy({ $0 >= minimum && $0 <= Self.maxWindow }) else {
            throw fail(at, "'\(role)' \(pair) must be one integer or two, each from \(minimum) to \(Self.maxWindow)")
        }
        return Window(pair[0], pair[1])
    }

    /// Fields that an op does not read are refused, so a typo never goes unnoticed.
    private func checkFields(_ spec: LayerSpec, at: String) throws {
        let allowed: Set<String> = switch spec.op {
        case "dense": ["weight", "bias"]
        case "conv2d": ["weight", "bias", "stride", "padding"]
        case "maxpool2d", "avgpool2d": ["kernel", "stride"]
        case "leakyrelu": ["alpha"]
        case "batchnorm": ["weight", "bias", "mean", "var", "eps"]
        default: []
        }
        let present: [(String, Bool)] = [
            ("weight", spec.weight != nil), ("bias", spec.bias != nil), ("mean", spec.mean != nil),
            ("var", spec.var != nil), ("eps", spec.eps != nil), ("stride", spec.stride != nil),
            ("padding", spec.padding != nil), ("kernel", spec.kernel != nil), ("alpha", spec.alpha != nil),
        ]
        for (field, isSet) in present where isSet && !allowed.contains(field) {
            throw fail(at, "field '\(field)' does not apply to \(spec.op)")
        }
    }

    /// F32 tensors aligned to 4 bytes are views of the file; others are widened or copied once.
    /// The quantization section's entry for `layer` when it is INT8 or INT4: (precision, weight, scale, group).
    /// Layer entries listing `layer` twice are refused (the quantized model's loader refuses them
    /// too; every reader of the file must read one entry).
    static func quantizationEntry(_ section: JSONValue?, layer: Int, fail: (String?, String) -> ModelFileError) throws
        -> (precision: String, weight: String?, scale: String?, group: Int?)? {
        guard case .object(let q)? = section, case .array(let entries)? = q["layers"] else { return nil }
        var found: (precision: String, weight: String?, scale: String?, group: Int?)?
        var listed = false
        for case .object(let e) in entries {
            guard case .number(let l)? = e["layer"], l == Double(layer) else { continue }
            guard !listed else { throw fail("quantization layer \(layer)", "is listed more than once") }
            listed = true
            guard case .string(let precision)? = e["precision"], precision == "int8" || precision == "int4" else { continue }
            var weight: String?, scale: String?, group: Int?
            if case .string(let w)? = e["weight"] { weight = w }
            if case .string(let sc)? = e["weight_scale"] { scale = sc }
            if case .number(let g)? = e["group"], g == g.rounded(), g >= 1, g <= 256 { group = Int(g) }
            found = (precision, weight, scale, group)
        }
        return found
    }

    /// FP32 weights from a layer's INT8 (`[out, in]`, conv2d `[out, kh, kw, in]` tap-major, one scale
    /// an output) or INT4 tensors (U8 nibbles `[out, in/2]`, q + 8, low nibble first; a scale per
    /// output and group). Every dtype, shape and scale is checked; the quantized model's own loader
    /// checks the rest of the section.
    private func dequantized(_ entry: (precision: String, weight: String?, scale: String?, group: Int?), input: [Int],
                             at location: String) throws -> Tensor {
        guard let wName = entry.weight, let w = header.entry(wName) else {
            throw fail(location, "has no FP32 weights in the file and its '\(entry.weight ?? "weight")' tensor is missing")
        }
        guard let sName = entry.scale, let s = header.entry(sName), s.dtype == .f32 else {
            throw fail(location, "has no FP32 weights in the file and no F32 'weight_scale' tensor")
        }
        // No zero dimension: the header checked the element count in the stored order, which a
        // zero makes 0 however large the other dimensions; rebuilt in another order, they would overflow.
        guard !w.shape.isEmpty, w.shape.allSatisfy({ $0 > 0 }), !s.shape.isEmpty, s.shape.allSatisfy({ $0 > 0 }) else {
            throw fail(location, "integer weights of shape \(formatShape(w.shape)) with scales \(formatShape(s.shape)): every dimension must be positive")
        }
        let out = w.shape[0]
        let scaleCount = s.shape.reduce(1, *)
        func scales() throws -> [Float] {
            let raw = UnsafeRawBufferPointer(start: storage.base + header.dataStart + s.begin, count: s.end - s.begin)
            let v = (0..<scaleCount).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
            guard v.allSatisfy({ $0.isFinite && $0 > 0 }) else { throw fail(location, "weight_scale holds a scale that is not a positive finite number") }
            return v
        }
        let raw = UnsafeRawBufferPointer(start: storage.base + header.dataStart + w.begin, count: w.end - w.begin)
        if entry.precision == "int8" {
            guard w.dtype == .i8, out > 0, scaleCount == out, s.shape.first == out else {
                throw fail(location, "INT8 weights need an I8 tensor [out, ...] and one scale an output")
            }
            let sc = try scales()
            let perOutput = w.shape.reduce(1, *) / out
            let t: Tensor
            if w.shape.count == 4 {
                // Stored tap-major [out, kh, kw, in]; the layer reads [out, in, kh, kw].
                let (kh, kw, cin) = (w.shape[1], w.shape[2], w.shape[3])
                t = Tensor(zeros: [out, cin, kh, kw])
                for o in 0..<out {
                    for y in 0..<kh {
                        for x in 0..<kw {
                            for c in 0..<cin {
                                let q = Int8(bitPattern: raw[((o * kh + y) * kw + x) * cin + c])
                                guard q != -128 else { throw fail(location, "INT8 weights must lie in -127...127") }
                                let v = Float(q) * sc[o]
                                guard v.isFinite else { throw fail(location, "weight_scale \(sc[o]) makes a weight of output \(o) overflow") }
                                t[((o * cin + c) * kh + y) * kw + x] = v
                            }
                        }
                    }
                }
            } else {
                guard w.shape.count == 2 else { throw fail(location, "INT8 dense weights need shape [out, in], not \(formatShape(w.shape))") }
                t = Tensor(zeros: [out, perOutput])
                for i in 0..<(out * perOutput) {
                    let q = Int8(bitPattern: raw[i])
                    guard q != -128 else { throw fail(location, "INT8 weights must lie in -127...127") }
                    let v = Float(q) * sc[i / perOutput]
                    guard v.isFinite else { throw fail(location, "weight_scale \(sc[i / perOutput]) makes a weight overflow") }
                    t[i] = v
                }
            }
            return t
        }
        // INT4
        guard w.dtype == .u8, w.shape.count == 2, out > 0, let group = entry.group, group % 2 == 0 else {
            throw fail(location, "INT4 weights need a U8 tensor [out, in/2] and an even group")
        }
        let inputs = w.shape[1] * 2
        let groups = (inputs + group - 1) / group
        guard scaleCount == out * groups, s.shape.first == out else {
            throw fail(location, "INT4 weights need a scale per output and group of \(group) inputs")
        }
        let sc = try scales()
        let t = Tensor(zeros: [out, inputs])
        for o in 0..<out {
            for k in 0..<inputs {
                let byte = raw[o * (inputs / 2) + k / 2]
                let q = Int(k % 2 == 0 ? byte & 15 : byte >> 4) - 8
                let v = Float(q) * sc[o * groups + k / group]
                guard v.isFinite else { throw fail(location, "weight_scale \(sc[o * groups + k / group]) makes a weight overflow") }
                t[o * inputs + k] = v
            }
        }
        return t
    }

    private func widen(_ entry: TensorEntry) -> Tensor {
        let offset = header.dataStart + entry.begin
        let count = entry.shape.reduce(1, *)
        let src = storage.base + offset
        if entry.dtype == .f32 && offset % 4 == 0 {
            return Tensor(shape: entry.shape, storage: storage, byteOffset: offset)
        }
        let t = Tensor(zeros: entry.shape)
        let dst = t.pointer
        for i in 0..<count {
            switch entry.dtype {
            case .f32:
                dst[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
            case .f16:
                let bits = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                dst[i] = Float(Float16(bitPattern: bits))
            case .bf16:
                let bits = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                dst[i] = Float(bitPattern: UInt32(bits) << 16)
            default:
                preconditionFailure("widen called on \(entry.dtype)")
            }
        }
        return t
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ keys: [CodingKey]) -> String {
            let parts = keys.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return parts.isEmpty ? "the document" : String(parts.drop(while: { $0 == "." }))
        }
        switch error {
        case .keyNotFound(let key, let ctx): return "\(path(ctx.codingPath + [key])) is missing"
        case .typeMismatch(let type, let ctx): return "\(path(ctx.codingPath)) is not \(Self.typeName(type))"
        case .valueNotFound(let type, let ctx): return "\(path(ctx.codingPath)) is null, expected \(Self.typeName(type))"
        case .dataCorrupted(let ctx):
            if ctx.codingPath.isEmpty { return "is not valid JSON" }
            return "\(path(ctx.codingPath.dropLast())): \(ctx.debugDescription)"
        @unknown default: return "cannot be decoded"
        }
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Int.Type: "an integer"
        case is Float.Type, is Double.Type: "a number"
        case is [Int].Type: "an array of integers"
        default: "of the expected type"
        }
    }
}
