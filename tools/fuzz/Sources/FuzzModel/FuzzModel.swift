import Inference
import ModelFile
import Quantization
import Tensor

/// One model file from the fuzzer's bytes, taken through what agentd does at load: every
/// safetensors and manifest rule, the network, the quantization section, and one inference.
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
    // Inference time grows with the plan's size; small plans keep the fuzzer fast, larger ones are still built above.
    guard ExecutionPlan.memoryEstimate(network: network, batch: 1).total <= 8 << 20 else { return 0 }
    let input = [Float](repeating: 0.5, count: network.inputCount)
    let scores = ExecutionPlan(network: network, batchCapacity: 1).predict(input)
    precondition(scores.count == network.outputCount, "FP32 plan returned \(scores.count) scores, expected \(network.outputCount)")
    if let quantized {
        let q = QuantizedPlan(model: quantized, batchCapacity: 1).predict(input)
        precondition(q.count == network.outputCount, "INT8 plan returned \(q.count) scores, expected \(network.outputCount)")
    }
    return 0
}
