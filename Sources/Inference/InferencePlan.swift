/// Anything that turns a batch of raw input rows into scores: the FP32 `ExecutionPlan` and the
/// quantized plans. One thread runs a plan at a time; `run` allocates nothing.
public protocol InferencePlan: AnyObject, Sendable {
    var batchCapacity: Int { get }
    var inputCount: Int { get }
    var outputCount: Int { get }
    var memory: MemoryEstimate { get }
    /// "fp32", "int8", "int4", "mixed", with "+adaptive" when low-margin samples re-run in FP32.
    var precision: String { get }
    /// The compiled steps, one name each ("int8 conv2d (direct)", "fp32 dense", "softmax", …).
    var stepNames: [String] { get }
    /// Scores `[batch, classes]`, valid until the next call.
    @discardableResult
    func run(_ input: UnsafePointer<Float>, batch: Int) -> UnsafeBufferPointer<Float>
    /// With an embedding projection: the last run's projected penultimate activations `[batch, k]`,
    /// valid until the next call; nil without one.
    var embeddings: UnsafeBufferPointer<Float>? { get }
}

extension InferencePlan {
    /// Runs any number of rows through the plan in chunks (tests and tools).
    public func predict(_ rows: [Float]) -> [Float] {
        let n = inputCount
        precondition(rows.count % n == 0, "input is not a whole number of samples")
        let samples = rows.count / n
        var out: [Float] = []
        out.reserveCapacity(samples * outputCount)
        rows.withUnsafeBufferPointer { buf in
            var start = 0
            while start < samples {
                let b = min(batchCapacity, samples - start)
                out.append(contentsOf: run(buf.baseAddress! + start * n, batch: b))
                start += b
            }
        }
        return out
    }
}
