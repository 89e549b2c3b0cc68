import ModelFile
import Tensor

/// A layer of an FP32 network: what it computes, its parameters, and one sample's shapes.
public struct NetworkLayer: @unchecked Sendable {
    public enum Kind: Sendable, Equatable {
        case dense
        case conv2d(stride: Window, padding: Window)
        case maxpool2d(kernel: Window, stride: Window)
        case avgpool2d(kernel: Window, stride: Window)
        case globalavgpool
        case flatten
        case relu
        case relu6
        case leakyrelu(alpha: Float)
        case softmax
    }

    public var kind: Kind
    public var inputShape: [Int]
    public var outputShape: [Int]
    /// `[out, in]` for dense, `[out, in, kh, kw]` for conv2d.
    public var weight: Tensor?
    public var bias: Tensor?
    public var weightName: String?
    public var biasName: String?

    public init(kind: Kind, inputShape: [Int], outputShape: [Int], weight: Tensor? = nil, bias: Tensor? = nil,
                weightName: String? = nil, biasName: String? = nil) {
        self.kind = kind
        self.inputShape = inputShape
        self.outputShape = outputShape
        self.weight = weight
        self.bias = bias
        self.weightName = weightName
        self.biasName = biasName
    }

    public var name: String {
        switch kind {
        case .dense: "dense"
        case .conv2d: "conv2d"
        case .maxpool2d: "maxpool2d"
        case .avgpool2d: "avgpool2d"
        case .globalavgpool: "globalavgpool"
        case .flatten: "flatten"
        case .relu: "relu"
        case .relu6: "relu6"
        case .leakyrelu: "leakyrelu"
        case .softmax: "softmax"
        }
    }

    public var parameterCount: Int { (weight?.count ?? 0) + (bias?.count ?? 0) }
    public var inputCount: Int { inputShape.reduce(1, *) }
    public var outputCount: Int { outputShape.reduce(1, *) }

    /// Multiply-accumulates for one sample (dense and conv2d; other layers are counted as 0).
    public var macs: Int {
        switch kind {
        case .dense: weight!.count
        case .conv2d: weight!.count * outputShape[1] * outputShape[2]
        default: 0
        }
    }

    /// Floating-point operations for one sample: 2 per MAC plus one per element for the rest.
    public var flops: Int {
        switch kind {
        case .dense, .conv2d: 2 * macs + (bias == nil ? 0 : outputCount)
        case .maxpool2d(let k, _), .avgpool2d(let k, _): outputCount * k.height * k.width
        case .globalavgpool: inputCount
        case .flatten: 0
        case .softmax: 3 * outputCount
        default: outputCount
        }
    }
}

/// How raw input values become the network's input: `x * scale + shift`, per element or for all.
public struct Preprocessing: @unchecked Sendable {
    /// Per-element factors (mean/std form) or nil for the scalar form.
    public let scales: Tensor?
    public let shifts: Tensor?
    public let scale: Float
    public let shift: Float

    public static let identity = Preprocessing(scale: 1, shift: 0)

    public init(scale: Float, shift: Float) {
        self.scales = nil
        self.shifts = nil
        self.scale = scale
        self.shift = shift
    }

    public init(mean: Tensor, std: Tensor) {
        let a = Tensor(zeros: mean.shape), b = Tensor(zeros: mean.shape)
        for i in 0..<mean.count {
            a[i] = 1 / std[i]
            b[i] = -mean[i] / std[i]
        }
        self.scales = a
        self.shifts = b
        self.scale = 1
        self.shift = 0
    }

    public var isIdentity: Bool { scales == nil && scale == 1 && shift == 0 }

    /// Writes `batch` preprocessed samples of `sampleCount` values from `src` to `dst`.
    public func apply(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, batch: Int, sampleCount: Int) {
        if let scales, let shifts {
            let a = scales.pointer, b = shifts.pointer
            for s in 0..<batch {
                let x = src + s * sampleCount, y = dst + s * sampleCount
                for i in 0..<sampleCount { y[i] = x[i] * a[i] + b[i] }
            }
        } else {
            let n = batch * sampleCount, a = scale, b = shift
            for i in 0..<n { dst[i] = src[i] * a + b }
        }
    }
}

/// An FP32 network with shapes resolved and batch normalisation folded into the layer before it.
public final class Network: @unchecked Sendable {
    public var name: String
    public var version: Int
    public let inputShape: [Int]
    public let labels: [String]
    public let preprocessing: Preprocessing
    public var layers: [NetworkLayer]
    /// The manifest's `trainable` list; nil means every parameter.
    public var trainable: [String]?
    public var lineage: JSONValue?
    /// The activation ranges of quantization-aware training (`QATRanges`): kept by a copy, dropped
    /// by whatever changes the weights without them (pruning, training without QAT).
    public var qat: JSONValue?
    /// The field sections (`drift_reference`) and their tensors, carried unchanged through every
    /// rewrite (quantize, training) until a stage that owns them renews them.
    public var driftReference: JSONValue?
    /// The `ewc` and `replay_seed` sections (on-device learning), carried like `drift_reference`.
    public var ewc: JSONValue?
    public var replaySeed: JSONValue?
    public var fieldTensors: [TensorBlob] = []

    public var outputShape: [Int] { layers.last?.outputShape ?? inputShape }
    public var inputCount: Int { inputShape.reduce(1, *) }
    public var outputCount: Int { outputShape.reduce(1, *) }
    public var parameterCount: Int { layers.reduce(0) { $0 + $1.parameterCount } }
    public var endsWithSoftmax: Bool { layers.last?.kind == .softmax }

    public init(name: String, version: Int = 1, inputShape: [Int], labels: [String], preprocessing: Preprocessing = .identity,
                layers: [NetworkLayer], trainable: [String]? = nil) {
        self.name = name
        self.version = version
        self.inputShape = inputShape
        self.labels = labels
        self.preprocessing = preprocessing
        self.layers = layers
        self.trainable = trainable
    }

    /// Builds the network of a validated model file; F32 weights stay views of the file's bytes
    /// unless batch normalisation has to be folded into them.
    public convenience init(model: ModelFile) {
        let input = model.manifest.input
        let pre: Preprocessing
        if let m = input.mean, let s = input.std {
            pre = Preprocessing(mean: model.weight(m), std: model.weight(s))
        } else {
            pre = Preprocessing(scale: input.scale ?? 1, shift: input.offset ?? 0)
        }
        var layers: [NetworkLayer] = []
        for layer in model.layers {
            let kind: NetworkLayer.Kind
            var weightName: String?, biasName: String?
            switch layer.op {
            case .dense(let w, let b):
                kind = .dense
                weightName = w
                biasName = b
            case .conv2d(let w, let b, let stride, let padding):
                kind = .conv2d(stride: stride, padding: padding)
                weightName = w
                biasName = b
            case .batchnorm(let w, let b, let m, let v, let eps):
                Network.fold(into: &layers[layers.count - 1], gamma: model.weight(w), beta: model.weight(b),
                             mean: model.weight(m), variance: model.weight(v), eps: eps)
                continue
            case .maxpool2d(let k, let s): kind = .maxpool2d(kernel: k, stride: s)
            case .avgpool2d(let k, let s): kind = .avgpool2d(kernel: k, stride: s)
            case .globalavgpool: kind = .globalavgpool
            case .flatten: kind = .flatten
            case .relu: kind = .relu
            case .relu6: kind = .relu6
            case .leakyrelu(let a): kind = .leakyrelu(alpha: a)
            case .softmax: kind = .softmax
            }
            layers.append(NetworkLayer(
                kind: kind, inputShape: layer.inputShape, outputShape: layer.outputShape,
                weight: weightName.map(model.weight), bias: biasName.map(model.weight),
                weightName: weightName, biasName: biasName))
        }
        self.init(name: model.manifest.name, version: model.manifest.version, inputShape: model.inputShape,
                  labels: model.labels, preprocessing: pre, layers: layers, trainable: model.manifest.trainable)
        self.lineage = model.manifest.lineage
        self.qat = model.manifest.qat
        self.driftReference = model.manifest.driftReference
        self.ewc = model.manifest.ewc
        self.replaySeed = model.manifest.replaySeed
        self.fieldTensors = model.header.entries.filter { Manifest.isFieldTensor($0.name) }.map {
            TensorBlob(name: $0.name, dtype: $0.dtype, shape: $0.shape, bytes: Array(model.rawBytes($0)))
        }
    }

    /// y = γ·(x − μ)/√(σ²+ε) + β folded into the weights and bias of the dense or conv2d before it.
    static func fold(into layer: inout NetworkLayer, gamma: Tensor, beta: Tensor, mean: Tensor, variance: Tensor, eps: Float) {
        let w = layer.weight!.copy()
        let channels = w.shape[0]
        let perChannel = w.count / channels
        let b = Tensor(zeros: [channels])
        for c in 0..<channels {
            let factor = gamma[c] / (variance[c] + eps).squareRoot()
            for i in 0..<perChannel { w[c * perChannel + i] *= factor }
            let oldBias = layer.bias?[c] ?? 0
            b[c] = (oldBias - mean[c]) * factor + beta[c]
        }
        layer.weight = w
        layer.bias = b
        if layer.biasName == nil {
            let base = layer.weightName ?? "layer"
            layer.biasName = base.hasSuffix(".weight") ? String(base.dropLast(".weight".count)) + ".bias" : base + ".bias"
        }
    }

    /// Deep copy: the parameters get storage of their own (training changes them).
    public func copy() -> Network {
        let layers = self.layers.map { layer -> NetworkLayer in
            var l = layer
            l.weight = layer.weight?.copy()
            l.bias = layer.bias?.copy()
            return l
        }
        let n = Network(name: name, version: version, inputShape: inputShape, labels: labels,
                        preprocessing: preprocessing, layers: layers, trainable: trainable)
        n.lineage = lineage
        n.qat = qat
        n.driftReference = driftReference
        n.ewc = ewc
        n.replaySeed = replaySeed
        n.fieldTensors = fieldTensors
        return n
    }

    /// Drops the field sections (drift reference, EWC anchor, replay seed) and their tensors: after
    /// a change of the layers' shapes or meaning they describe a network that is gone.
    public func dropFieldSections() {
        driftReference = nil
        ewc = nil
        replaySeed = nil
        fieldTensors = []
    }

    /// Every named parameter tensor, in layer order.
    public var parameters: [(name: String, tensor: Tensor)] {
        layers.flatMap { l -> [(name: String, tensor: Tensor)] in
            var out: [(name: String, tensor: Tensor)] = []
            if let w = l.weight, let n = l.weightName { out.append((n, w)) }
            if let b = l.bias, let n = l.biasName { out.append((n, b)) }
            return out
        }
    }

    public var weightBytes: Int { parameterCount * MemoryLayout<Float>.stride }

    /// Bytes this network holds for the file it was read from: the file's storage (F32 tensors are
    /// views into it), the parameter tensors that are not (F16/BF16 widened, batch norm folded,
    /// integer-only weights rebuilt, anything trained) and the field sections' copies. Each
    /// storage counted once.
    public func heldBytes(readFrom file: ModelFile) -> Int {
        var seen: Set<ObjectIdentifier> = [ObjectIdentifier(file.storage)]
        var total = file.fileSize + fieldTensors.reduce(0) { $0 + $1.bytes.count }
        for (_, t) in parameters where seen.insert(ObjectIdentifier(t.storage)).inserted {
            total += t.storage.byteCount
        }
        return total
    }
}

extension NetworkLayer {
    /// Window geometry for conv2d and pooling layers.
    public var geometry: Kernels.ConvGeometry? {
        let s = inputShape
        guard s.count == 3 else { return nil }
        switch kind {
        case .conv2d(let stride, let padding):
            let w = weight!.shape
            return .init(channels: s[0], height: s[1], width: s[2], outChannels: w[0], kernel: Window(w[2], w[3]),
                         stride: stride, padding: padding)
        case .maxpool2d(let k, let st), .avgpool2d(let k, let st):
            return .init(channels: s[0], height: s[1], width: s[2], outChannels: s[0], kernel: k, stride: st,
                         padding: Window(0, 0))
        default:
            return nil
        }
    }
}

extension NetworkLayer.Kind {
    /// The element-wise activation this layer is, if it is one.
    public var activation: Kernels.Activation? {
        switch self {
        case .relu: .relu
        case .relu6: .relu6
        case .leakyrelu(let a): .leaky(a)
        default: nil
        }
    }
}

extension Network {
    /// The activation that layer `index` (dense or conv2d) runs in its epilogue: the one right
    /// after it, which the plans then skip. `.none` for other layers or no activation.
    public func fusedActivation(at index: Int) -> Kernels.Activation {
        guard index + 1 < layers.count, let a = layers[index + 1].kind.activation else { return .none }
        switch layers[index].kind {
        case .dense, .conv2d: return a
        default: return .none
        }
    }
}
