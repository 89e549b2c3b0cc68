import Inference
import ModelFile
import Tensor
import Training

/// Quantization-aware training for INT4 weights: every forward and backward pass of training sees
/// the dense layers' weights as `quantize --precision int4 --group G` will store them (symmetric
/// groups of G inputs, scale max|w|/7, round half to even), and the update goes to the FP32 master
/// weights with the gradient taken at the quantized ones (straight-through estimator: with the
/// scale at max|w| nothing is clipped, so the estimator's derivative is 1 everywhere).
/// The quantizer later computes the same groups from the final master weights: the INT4 file holds
/// the final weights on the grid that training ran on (the last update, at the end of the cosine
/// schedule, moves the masters a little past the quantized weights the last step saw).
public final class Int4WeightFakeQuantizer {
    public let network: Network
    public let group: Int
    /// The dense layers the quantizer will make INT4 (an even input count).
    public let layers: [Int]
    private var masters: [Int: [Float]] = [:]

    public init(network: Network, group: Int) {
        precondition(group >= 2 && group % 2 == 0, "INT4 groups are even and at least 2")
        self.network = network
        self.group = group
        layers = network.layers.indices.filter { i in
            let l = network.layers[i]
            guard l.kind == .dense, let w = l.weight else { return false }
            return (w.count / w.shape[0]) % 2 == 0
        }
    }

    /// Replaces each weight by its INT4 value, keeping the FP32 master.
    public func quantizeWeights() {
        for l in layers {
            let w = network.layers[l].weight!
            masters[l] = w.values
            let q = Int4GroupWeights(w, group: group)
            let inputs = q.inputs
            for i in 0..<w.count { w.pointer[i] = Float(q.q[i]) * q.scales[(i / inputs) * q.groups + (i % inputs) / group] }
        }
    }

    /// Puts the FP32 master weights back (before the optimizer updates them).
    public func restoreWeights() {
        for (l, master) in masters {
            let w = network.layers[l].weight!
            master.withUnsafeBufferPointer { w.pointer.update(from: $0.baseAddress!, count: master.count) }
        }
        masters.removeAll(keepingCapacity: true)
    }

    /// Wires the fake quantization into a trainer's steps.
    public func attach(to trainer: Trainer) {
        trainer.beforeForward = { self.quantizeWeights() }
        trainer.beforeStep = { self.restoreWeights() }
        // The test accuracy printed per epoch is the INT4 weights' as `quantize` will make them (activations FP32).
        trainer.beforeEvaluation = { self.quantizeWeights() }
        trainer.afterEvaluation = { self.restoreWeights() }
    }
}

/// Quantization-aware training for INT8 (`train --qat int8`): every forward and backward pass
/// of training sees
/// - the dense and conv2d weights as `quantize --precision int8` stores them (symmetric per
///   output channel, scale max|w|/127, round half to even; the update goes to the FP32 masters,
///   the straight-through estimator, which clips nothing since the scale is at max|w|), and
/// - every activation tensor the INT8 plan holds as UINT8 (the inputs of the integer layers, after
///   pooling and flatten are walked back, and the outputs they write) fake-quantized with the
///   plan's per-tensor parameters (`QuantParams(lo:hi:)`) over a range tracked during training:
///   the first batch's min/max, then an exponential moving average of each batch's (0.01 a batch).
///   The backward pass lets the gradient through where the value was inside the range and stops
///   it where the value was clipped (the clipped straight-through estimator).
/// The ranges go into the file's `qat` section (`QATRanges`); `quantize` uses them in place of
/// calibrated ones for these tensors.
public final class Int8FakeQuantizer {
    public let network: Network
    /// The dense and conv2d layers (INT8 weights).
    public let layers: [Int]
    /// The tensors fake-quantized to UINT8 (0: the preprocessed input, l + 1: layer l's output).
    public let tensors: [Int]
    public static let momentum: Float = 0.01
    /// The tracked range of each tensor in `tensors` (after the first batch).
    public private(set) var ranges: [Int: ClosedRange<Float>] = [:]
    /// Off: the ranges stay as they are (evaluation, or a forward pass that is not a training step).
    public var tracking = true
    private let tensorSet: Set<Int>
    private var masters: [Int: [Float]] = [:]
    private var masks: [Int: [UInt8]] = [:]
    private var bytes: [UInt8] = []

    public init(network: Network, ranges: [Int: ClosedRange<Float>] = [:]) {
        self.network = network
        layers = Quantizer.weightedLayers(network)
        var tensors = Set<Int>()
        for l in layers {
            tensors.insert(Self.source(of: l, network))
            if let t = QuantizedModel.uint8OutputTensor(of: l, network: network, readsUInt8: { _ in true }) { tensors.insert(t) }
        }
        self.tensors = tensors.sorted()
        tensorSet = tensors
        self.ranges = ranges.filter { tensors.contains($0.key) }
    }

    /// The tensor whose values reach layer `l`'s input: its input walked back through pooling and
    /// flatten, which carry UINT8 unchanged in the plan.
    static func source(of l: Int, _ network: Network) -> Int {
        var t = l
        while t > 0 {
            switch network.layers[t - 1].kind {
            case .maxpool2d, .avgpool2d, .globalavgpool, .flatten: t -= 1
            default: return t
            }
        }
        return t
    }

    /// Replaces each weight by its INT8 value, keeping the FP32 master.
    public func quantizeWeights() {
        for l in layers {
            let w = network.layers[l].weight!
            masters[l] = w.values
            let q = Int8ChannelWeights(w)
            for i in 0..<w.count { w.pointer[i] = Float(q.q[i]) * q.scales[i / q.inputs] }
        }
    }

    /// Puts the FP32 master weights back (before the optimizer updates them).
    public func restoreWeights() {
        for (l, master) in masters {
            let w = network.layers[l].weight!
            master.withUnsafeBufferPointer { w.pointer.update(from: $0.baseAddress!, count: master.count) }
        }
        masters.removeAll(keepingCapacity: true)
    }

    /// The forward half: tracks tensor `t`'s range and fake-quantizes its `count` values in place,
    /// remembering which were inside the range.
    public func fakeQuantize(tensor t: Int, _ values: UnsafeMutablePointer<Float>, count: Int) {
        guard tensorSet.contains(t), count > 0 else { return }
        var lo = values[0], hi = values[0]
        for i in 1..<count { lo = min(lo, values[i]); hi = max(hi, values[i]) }
        if tracking, lo.isFinite, hi.isFinite {
            if let r = ranges[t] {
                let m = Self.momentum
                ranges[t] = (r.lowerBound + m * (lo - r.lowerBound))...(r.upperBound + m * (hi - r.upperBound))
            } else {
                ranges[t] = lo...hi
            }
        }
        guard let r = ranges[t] else { return }
        let params = QuantParams(lo: r.lowerBound, hi: r.upperBound)
        let inside = params.range
        if bytes.count < count { bytes = [UInt8](repeating: 0, count: count) }
        if masks[t, default: []].count < count { masks[t] = [UInt8](repeating: 0, count: count) }
        // In place: a copy of the mask taken out of the dictionary would be a new array every step.
        masks[t]!.withUnsafeMutableBufferPointer { mask in
            for i in 0..<count { mask[i] = inside.contains(values[i]) ? 1 : 0 }
        }
        bytes.withUnsafeMutableBufferPointer { b in
            quantize(values, count: count, params, b.baseAddress!)
            dequantize(b.baseAddress!, count: count, params, values)
        }
    }

    /// The backward half: the gradient of tensor `t` stops where its value was clipped.
    public func maskGradient(tensor t: Int, _ gradient: UnsafeMutablePointer<Float>, count: Int) {
        guard let mask = masks[t] else { return }
        for i in 0..<min(count, mask.count) where mask[i] == 0 { gradient[i] = 0 }
    }

    /// The learned ranges as the manifest's `qat` section.
    public var section: QATRanges { QATRanges(precision: "int8", activations: ranges) }

    /// The INT8 model `quantize` will build with these ranges (calibrated ones for any other tensor
    /// from `calibration`), over the current weights.
    public func quantizedModel(calibration: DataSet) -> QuantizedModel {
        let params = Quantizer.activationParams(Quantizer.histograms(network, calibration), network: network, method: .minmax,
                                                learned: ranges)
        let precisions = Dictionary(uniqueKeysWithValues: layers.map { ($0, LayerPrecision.int8) })
        return Quantizer.build(network, activations: params, precisions: precisions, method: .minmax, calibrationRows: calibration.count)
    }

    /// Wires the fake quantization into a trainer: its graph's hooks and steps, and the per-epoch
    /// test accuracy, which is the INT8 plan's with the ranges learned so far.
    public func attach(to trainer: Trainer, calibration: DataSet) {
        trainer.graph.tensorHook = { [unowned self] t, v, n in self.fakeQuantize(tensor: t, v, count: n) }
        trainer.graph.gradientHook = { [unowned self] t, g, n in self.maskGradient(tensor: t, g, count: n) }
        trainer.beforeForward = { [unowned self] in self.quantizeWeights() }
        trainer.beforeStep = { [unowned self] in self.restoreWeights() }
        trainer.evaluate = { [unowned self] data in
            let plan = QuantizedPlan(model: self.quantizedModel(calibration: calibration), batchCapacity: 64, adaptive: .off)
            return Evaluation(scores: plan.predict(data.features), classes: self.network.outputCount, labels: data.labels ?? []).accuracy
        }
    }
}
