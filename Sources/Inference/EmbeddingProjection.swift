import Tensor

/// Fixed directions onto which a plan projects the input of the network's last weighted layer
/// (its penultimate activations), for the drift monitor's embedding signal.
public final class EmbeddingProjection: @unchecked Sendable {
    /// Index in `network.layers` of the layer whose input is projected.
    public let layer: Int
    /// `[k, d]`, d being that layer's input count.
    public let directions: Tensor
    public var count: Int { directions.shape[0] }
    public var inputCount: Int { directions.shape[1] }

    public init(layer: Int, directions: Tensor) {
        precondition(directions.shape.count == 2 && directions.shape[0] >= 1, "directions must be [k, d]")
        self.layer = layer
        self.directions = directions
    }

    /// The last dense or conv2d layer: its input is what the model has learnt to separate classes with.
    public static func penultimateLayer(of network: Network) -> Int? {
        network.layers.lastIndex { $0.weight != nil }
    }
}

/// A plan's buffers for one projection: the projected rows of the last run, `[batch, k]`.
public final class EmbeddingTap {
    public let projection: EmbeddingProjection
    let output: UnsafeMutablePointer<Float>
    /// UINT8 activations are widened here first (only plans whose tapped input is UINT8).
    private let scratch: UnsafeMutablePointer<Float>?
    private(set) var rows = 0

    /// The directions as the plan holds the tapped input: the projection's own, or re-ordered
    /// for an input the plan keeps channels last.
    private let directions: Tensor

    /// - Parameter channelsLast: the tapped input's (channels, pixels) when the plan holds it
    ///   channels last (HWC) while the projection was made for the file's CHW order.
    public init(_ projection: EmbeddingProjection, batchCapacity: Int, quantizedInput: Bool = false,
                channelsLast: (channels: Int, pixels: Int)? = nil) {
        self.projection = projection
        output = allocateAlignedFloats(batchCapacity * projection.count)
        scratch = quantizedInput ? allocateAlignedFloats(batchCapacity * projection.inputCount) : nil
        if let c = channelsLast {
            directions = Kernels.channelsLastColumns(projection.directions, channels: c.channels, pixels: c.pixels)
        } else {
            directions = projection.directions
        }
    }

    deinit {
        output.deallocate()
        scratch?.deallocate()
    }

    public func capture(_ h: UnsafePointer<Float>, batch: Int) {
        let k = projection.count, d = projection.inputCount
        BLAS.gemm(transB: true, m: batch, n: k, k: d, a: h, lda: d, b: directions.pointer, ldb: d, c: output, ldc: k)
        rows = batch
    }

    /// Activations held as UINT8 with `value = scale · (q − zeroPoint)`.
    public func capture(_ q: UnsafePointer<UInt8>, scale: Float, zeroPoint: Int, batch: Int) {
        guard let scratch else { preconditionFailure("tap built for FP32 input") }
        let n = batch * projection.inputCount, zp = Float(zeroPoint)
        for i in 0..<n { scratch[i] = scale * (Float(q[i]) - zp) }
        capture(scratch, batch: batch)
    }

    public var embeddings: UnsafeBufferPointer<Float> { UnsafeBufferPointer(start: output, count: rows * projection.count) }
}
