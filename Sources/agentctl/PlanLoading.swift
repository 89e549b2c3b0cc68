import ArgumentParser
import Inference
import ModelFile
import Quantization

/// `--precision` for commands that run a model file.
enum PrecisionChoice: String, ExpressibleByArgument, CaseIterable {
    case fp32, int8
}

struct LoadedModel {
    let file: ModelFile
    let network: Network
    let quantized: QuantizedModel?

    init(path: String) throws {
        file = try ModelFile.load(path: path)
        network = Network(model: file)
        quantized = try QuantizedModel.load(file, network: network)
    }

    /// The file's own precision unless `precision` forces one; INT8 needs a quantized file.
    func plan(batch: Int, precision: PrecisionChoice?, adaptive: Bool? = nil) throws -> InferencePlan {
        switch precision {
        case .fp32:
            return ExecutionPlan(network: network, batchCapacity: batch)
        case .int8, nil:
            guard let quantized else {
                if precision == .int8 {
                    throw ValidationError("\(file.path) has no quantization section; make one with 'agentctl model quantize'")
                }
                return ExecutionPlan(network: network, batchCapacity: batch)
            }
            let mode: AdaptivePrecision.Mode? = adaptive.map { $0 ? .auto : .off }
            return QuantizedPlan(model: quantized, batchCapacity: batch, adaptive: precision == .int8 ? (mode ?? .off) : mode)
        }
    }
}
