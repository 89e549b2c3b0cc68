import Foundation
import Inference
import ModelFile
import ONNXImport
import Tensor

/// One ONNX file from the fuzzer's bytes through `agentctl model import`: decoding, the
/// conversion, the loader's validation of the result; a converted model is loaded back from the
/// bytes that would be written and run once.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzONNX(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = [UInt8](UnsafeBufferPointer(start: data, count: size))
    guard let result = try? ONNXImporter.convert(bytes: bytes, file: "fuzz.onnx", name: "fuzz") else { return 0 }
    let encoded = ModelWriter.encode(manifest: result.manifest, tensors: result.tensors)
    let file: ModelFile
    do {
        file = try ModelFile(bytes: encoded, path: "fuzz.safetensors")
    } catch {
        preconditionFailure("an imported model was refused on reload: \(error)")
    }
    let network = Network(model: file)
    guard ExecutionPlan.memoryEstimate(network: network, batch: 1).total <= 8 << 20 else { return 0 }
    let scores = ExecutionPlan(network: network, batchCapacity: 1).predict([Float](repeating: 0.5, count: network.inputCount))
    precondition(scores.count == network.outputCount, "plan returned \(scores.count) scores, expected \(network.outputCount)")
    return 0
}
