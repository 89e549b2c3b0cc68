import Drift
import Foundation
import Inference
import Learning
import ModelFile
import Quantization
import Tensor
import Training

/// One model file from the fuzzer's bytes, taken through what agentd does at load: every
/// safetensors and manifest rule, the network, the quantization section (or a calibration and
/// quantization, as at first start), and one FP32 and one quantized inference.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzModel(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let storage = Storage(byteCount: size)
    storage.base.copyMemory(from: data, byteCount: size)
    guard let file = try? ModelFile(storage: storage, path: "fuzz.safetensors") else { return 0 }
    let network = Network(model: file)
    let quantized: QuantizedModel?
    do {
        quantized = try QuantizedModel.load(file, network: network)
    } catch {
        return 0
    }
    // The drift reference, as agentd reads it; a valid one is watched through a plan as agentd does.
    let penultimate = EmbeddingProjection.penultimateLayer(of: network).map { ($0, network.layers[$0].inputCount) }
    let reference: DriftReference?
    do {
        reference = try DriftReference.load(file, inputCount: network.inputCount, classCount: network.outputCount, penultimate: penultimate)
    } catch {
        return 0
    }
    // The learning sections, as agentd reads them (a bad one refuses the file); a valid seed's
    // rows are scored as the replay memory scores them.
    let seed: ReplaySeed?
    do {
        _ = try EWCAnchor.decode(network)
        seed = try ReplaySeed.decode(network)
    } catch {
        return 0
    }
    if let seed {
        let k = network.outputCount
        for i in 0..<min(seed.rows, 16) {
            let v = seed.logits.withUnsafeBufferPointer { replayValue(logits: $0.baseAddress! + i * k, classes: k, label: seed.labels[i]) }
            precondition(v.isFinite, "replay value \(v) is not finite")
        }
    }
    // Inference time grows with the plan's size; small plans keep the fuzzer fast, larger ones are still built above.
    guard ExecutionPlan.memoryEstimate(network: network, batch: 1).total <= 8 << 20 else { return 0 }
    if let reference {
        var settings = DriftMonitor.Settings()
        settings.ringBytes = 1 << 16
        let monitor = DriftMonitor(version: 1, network: network, fileReference: reference, settings: settings) { _ in }
        let plan = ExecutionPlan(network: network, batchCapacity: 2, embedding: monitor.projection)
        let rows = [Float](repeating: 0.5, count: network.inputCount) + [Float](repeating: -1e30, count: network.inputCount)
        rows.withUnsafeBufferPointer { x in
            for _ in 0..<3 {
                let scores = plan.run(x.baseAddress!, batch: 2)
                monitor.observe(worker: 0, input: x.baseAddress!, scores: scores.baseAddress!, embeddings: plan.embeddings?.baseAddress, rows: 2)
            }
        }
        precondition(monitor.snapshot().samples + monitor.snapshot().dropped == 6, "drift monitor lost rows")
    }
    let input = [Float](repeating: 0.5, count: network.inputCount)
    let scores = ExecutionPlan(network: network, batchCapacity: 1).predict(input)
    precondition(scores.count == network.outputCount, "FP32 plan returned \(scores.count) scores, expected \(network.outputCount)")
    let model: QuantizedModel
    if let quantized {
        model = quantized
    } else {
        // agentd's first start quantizes an FP32 initial model on calibration rows: here two made-up rows.
        let rows = DataSet(features: input + input.map { -3 * $0 }, featureCount: network.inputCount, labels: nil, classNames: [])
        let method = CalibrationMethod.allCases[size % CalibrationMethod.allCases.count]
        let params = Quantizer.activationParams(Quantizer.histograms(network, rows), network: network, method: method)
        let precisions = Dictionary(uniqueKeysWithValues: Quantizer.weightedLayers(network).map { ($0, LayerPrecision.int8) })
        model = Quantizer.build(network, activations: params, precisions: precisions, method: method, calibrationRows: rows.count)
    }
    let q = QuantizedPlan(model: model, batchCapacity: 1).predict(input)
    precondition(q.count == network.outputCount, "quantized plan returned \(q.count) scores, expected \(network.outputCount)")
    return 0
}
