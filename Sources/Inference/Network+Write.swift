import ModelFile
import Tensor

extension Network {
    /// The manifest describing this network as it is now (batch normalisation already folded).
    public func manifest() -> Manifest {
        var input = InputSpec(shape: inputShape)
        if preprocessing.scales != nil {
            input.mean = "input.mean"
            input.std = "input.std"
        } else {
            if preprocessing.scale != 1 { input.scale = preprocessing.scale }
            if preprocessing.shift != 0 { input.offset = preprocessing.shift }
        }
        let specs = layers.map { l -> LayerSpec in
            switch l.kind {
            case .dense: return LayerSpec(op: "dense", weight: l.weightName, bias: l.biasName)
            case .conv2d(let s, let p):
                return LayerSpec(op: "conv2d", weight: l.weightName, bias: l.biasName,
                                 stride: [s.height, s.width], padding: [p.height, p.width])
            case .maxpool2d(let k, let s):
                return LayerSpec(op: "maxpool2d", stride: [s.height, s.width], kernel: [k.height, k.width])
            case .avgpool2d(let k, let s):
                return LayerSpec(op: "avgpool2d", stride: [s.height, s.width], kernel: [k.height, k.width])
            case .leakyrelu(let a): return LayerSpec(op: "leakyrelu", alpha: a)
            default: return LayerSpec(op: l.name)
            }
        }
        var m = Manifest(name: name, version: version, input: input, labels: labels, layers: specs, trainable: trainable)
        m.lineage = lineage
        m.qat = qat
        m.driftReference = driftReference
        m.ewc = ewc
        m.replaySeed = replaySeed
        return m
    }

    public func tensorBlobs() -> [TensorBlob] {
        var blobs = parameters.map { TensorBlob(name: $0.name, tensor: $0.tensor) } + fieldTensors
        if let a = preprocessing.scales, let b = preprocessing.shifts {
            let std = Tensor(zeros: inputShape), mean = Tensor(zeros: inputShape)
            for i in 0..<a.count {
                std[i] = 1 / a[i]
                mean[i] = -b[i] / a[i]
            }
            blobs.append(TensorBlob(name: "input.mean", tensor: mean))
            blobs.append(TensorBlob(name: "input.std", tensor: std))
        }
        return blobs
    }

    /// Writes the network as a model file, atomically.
    public func write(to path: String) throws {
        try ModelWriter.write(manifest: manifest(), tensors: tensorBlobs(), to: path)
    }
}
