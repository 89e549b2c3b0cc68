/// Sees every row a serving plan answers, before the answer is sent: the drift monitor.
/// Called on inference worker threads; must not block and should allocate nothing.
public protocol RowObserver: AnyObject, Sendable {
    /// - Parameters: `worker`: the calling worker's index (0..<workers); `input`: raw rows
    ///   `[rows, inputCount]`; `scores`: `[rows, classes]`; `embeddings`: `[rows, k]` when the plan projects.
    func observe(worker: Int, input: UnsafePointer<Float>, scores: UnsafePointer<Float>, embeddings: UnsafePointer<Float>?, rows: Int)
}
