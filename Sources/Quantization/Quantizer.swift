import Inference
import ModelFile
import Tensor
import Training

/// Rows to calibrate on, delivered in batches so memory stays bounded whatever their source
/// (a CSV file offline; the replay memory in the agent).
public protocol CalibrationSource {
    var featureCount: Int { get }
    var rowCount: Int { get }
    /// Calls `body` with consecutive batches of at most `batch` rows.
    func forEachBatch(_ batch: Int, _ body: (UnsafePointer<Float>, Int) -> Void)
}

extension DataSet: CalibrationSource {
    public var rowCount: Int { count }
    public func forEachBatch(_ batch: Int, _ body: (UnsafePointer<Float>, Int) -> Void) {
        features.withUnsafeBufferPointer { buf in
            var start = 0
            while start < count {
                let b = min(batch, count - start)
                body(buf.baseAddress! + start * featureCount, b)
                start += b
            }
        }
    }
}

public enum Quantizer {
    public static let minimumCalibrationRows = 32

    /// Histograms of every tensor (0 = preprocessed input, l + 1 = layer l's output), in two
    /// streamed passes over the rows: ranges, then bins.
    public static func histograms(_ network: Network, _ source: CalibrationSource, bins: Int = ActivationHistogram.defaultBins) -> [ActivationHistogram] {
        let batch = 64
        let graph = TrainingGraph(network: network, batchCapacity: batch, dropFinalSoftmax: false)
        var h = Array(repeating: ActivationHistogram(bins: bins), count: network.layers.count + 1)
        for pass in 0..<2 {
            source.forEachBatch(batch) { rows, b in
                graph.forward(rows, batch: b)
                for t in h.indices {
                    let a = graph.activation(t, batch: b)
                    if pass == 0 { h[t].observeRange(a.baseAddress!, count: a.count) } else { h[t].observeValues(a.baseAddress!, count: a.count) }
                }
            }
        }
        return h
    }

    /// Parameters per tensor. Pooling, flatten and a ReLU that is not fused keep their input's
    /// parameters, so UINT8 flows through them with no dequantize/quantize pair. `learned`:
    /// ranges that replace the calibrated ones (quantization-aware training's, `QATRanges`).
    public static func activationParams(_ histograms: [ActivationHistogram], network: Network, method: CalibrationMethod,
                                        percentile: Double = 99.99, learned: [Int: ClosedRange<Float>] = [:]) -> [String: QuantParams] {
        var out: [String: QuantParams] = [:]
        for (t, h) in histograms.enumerated() {
            let r = method.range(of: h, percentile: percentile)
            out[String(t)] = QuantParams(lo: r.lo, hi: r.hi)
        }
        for (t, r) in learned { out[String(t)] = QuantParams(lo: r.lowerBound, hi: r.upperBound) }
        for (l, layer) in network.layers.enumerated() {
            switch layer.kind {
            case .maxpool2d, .avgpool2d, .globalavgpool, .flatten:
                out[String(l + 1)] = out[String(l)]
            default:
                break
            }
        }
        return out
    }

    /// A quantized model with the given precision per weighted layer (others FP32).
    public static func build(_ network: Network, activations: [String: QuantParams], precisions: [Int: LayerPrecision],
                             method: CalibrationMethod, calibrationRows: Int, int4Group: Int = 32,
                             adaptive: AdaptivePrecision? = nil, reduceRange: Bool = false,
                             int4Activations: Int4Activations = .calibrated) -> QuantizedModel {
        var entries: [QuantizationSpec.LayerEntry] = []
        var int8: [Int: Int8ChannelWeights] = [:], int4: [Int: Int4GroupWeights] = [:]
        for (l, layer) in network.layers.enumerated() {
            guard let w = layer.weight else { continue }
            let base = layer.weightName ?? "layer\(l).weight"
            var p = precisions[l] ?? .fp32
            var note: String? = nil
            if p == .int4, case .conv2d = layer.kind { p = .int8; note = "INT4 is for dense layers; conv2d runs INT8" }
            if p == .int4, (w.count / w.shape[0]) % 2 != 0 { p = .int8; note = "odd input count; INT4 needs pairs" }
            if p == .int4, w.count / w.shape[0] > QuantizedModel.maxInt4Inputs {
                p = .int8; note = "more than \(QuantizedModel.maxInt4Inputs) inputs; INT4 widens a panel of all of them"
            }
            switch p {
            case .int8:
                let source = layer.kind == .dense ? w : Kernels.tapMajor(w)
                int8[l] = Int8ChannelWeights(source, reduceRange: reduceRange)
                entries.append(.init(layer: l, precision: .int8, weight: base + ".q8", weightScale: base + ".q8scale", note: note))
            case .int4:
                int4[l] = Int4GroupWeights(w, group: int4Group)
                entries.append(.init(layer: l, precision: .int4, weight: base + ".q4", weightScale: base + ".q4scale", group: int4Group))
            case .fp32:
                entries.append(.init(layer: l, precision: .fp32, note: note))
            }
        }
        let spec = QuantizationSpec(method: method, calibrationRows: calibrationRows, activations: activations, layers: entries,
                                    adaptive: adaptive, reduceRange: reduceRange && !int8.isEmpty, int4Activations: int4Activations)
        return QuantizedModel(network: network, spec: spec, int8: int8, int4: int4)
    }

    /// Calibrates on `rows` and builds a model with the given precisions; with `adaptive`, the
    /// adaptive-precision threshold is measured on the same rows against the FP32 network. What
    /// agentd runs to quantize a file on first start and to re-quantize a local update.
    public static func calibrated(_ network: Network, rows: DataSet, method: CalibrationMethod, precisions: [Int: LayerPrecision],
                                  int4Group: Int = 32, adaptive: Bool, reduceRange: Bool = false,
                                  int4Activations: Int4Activations = .calibrated) -> QuantizedModel {
        let params = activationParams(histograms(network, rows), network: network, method: method)
        let plain = build(network, activations: params, precisions: precisions, method: method, calibrationRows: rows.count,
                          int4Group: int4Group, reduceRange: reduceRange, int4Activations: int4Activations)
        guard adaptive else { return plain }
        let q = QuantizedPlan(model: plain, batchCapacity: 64, adaptive: .off).predict(rows.features)
        let f = ExecutionPlan(network: network, batchCapacity: 64).predict(rows.features)
        let threshold = Sensitivity.adaptiveThreshold(quantized: q, reference: f, classes: network.outputCount)
        return build(network, activations: params, precisions: precisions, method: method, calibrationRows: rows.count,
                     int4Group: int4Group, adaptive: threshold, reduceRange: reduceRange, int4Activations: int4Activations)
    }

    /// Re-quantizes `network` as `like` was: its method, each layer's precision, its INT4 group,
    /// its weight range, how its INT4 layers quantize their inputs and whether it had an adaptive
    /// threshold, calibrated anew on `rows`. With fewer rows than
    /// `minimumCalibrationRows` the weights are quantized anew and `like`'s activation ranges
    /// (and adaptive threshold) are kept.
    public static func requantize(_ network: Network, like: QuantizedModel, rows: DataSet) -> QuantizedModel {
        var precisions: [Int: LayerPrecision] = [:]
        for e in like.spec.layers { precisions[e.layer] = e.precision }
        let group = like.spec.layers.first { $0.precision == .int4 }?.group ?? 32
        guard rows.count >= minimumCalibrationRows else {
            return build(network, activations: like.spec.activations, precisions: precisions, method: like.spec.method,
                         calibrationRows: like.spec.calibrationRows, int4Group: group, adaptive: like.spec.adaptive,
                         reduceRange: like.spec.reduceRange == true, int4Activations: like.spec.int4ActivationsOrDefault)
        }
        return calibrated(network, rows: rows, method: like.spec.method, precisions: precisions, int4Group: group,
                          adaptive: like.spec.adaptive != nil, reduceRange: like.spec.reduceRange == true,
                          int4Activations: like.spec.int4ActivationsOrDefault)
    }

    /// The weighted layers (dense, conv2d) of a network.
    public static func weightedLayers(_ network: Network) -> [Int] {
        network.layers.indices.filter { network.layers[$0].weight != nil }
    }
}
