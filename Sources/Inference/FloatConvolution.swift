import CKernels
import Tensor

/// An FP32 convolution step of either plan (`ExecutionPlan`, and an FP32 layer of a
/// `QuantizedPlan`): its weights, packed for the method this CPU runs it with. The one place that
/// chooses the method, builds the weights, names the step, sizes its workspace and runs it.
/// Channels last in and out.
public enum FloatConvolution: @unchecked Sendable {
    /// Tap-major weights (`Kernels.tapMajor`) for im2row rows or the indirection table.
    case packed(PackedWeights, Kernels.ConvMethod)
    /// 3×3 stride 1 by Winograd F(2×2, 3×3).
    case winograd(WinogradWeights)

    /// How a convolution of `g` with `weight` runs here, without building it (memory estimates).
    public enum Kind: Sendable { case im2row, direct, winograd }

    /// Winograd where `WinogradWeights.applies` (3×3, stride 1, enough channels, AVX2 or AVX-512,
    /// `EDGE_WINOGRAD` not 0) and the weights are within 10³⁷ (their transform, up to 2.25 times
    /// larger, stays finite); else the direct kernel where it applies; else im2row rows.
    public static func kind(_ g: Kernels.ConvGeometry, weight: Tensor) -> Kind {
        if WinogradWeights.applies(kernelH: g.kernelH, kernelW: g.kernelW, strideH: g.strideH, strideW: g.strideW, outH: g.outH, outW: g.outW,
                                   channels: g.channels, outputs: g.outChannels),
           weight.shape == [g.outChannels, g.channels, 3, 3], UnsafeBufferPointer(start: weight.pointer, count: weight.count).allSatisfy({ abs($0) <= 1e37 }) {
            return .winograd
        }
        return Kernels.fp32ConvIsDirect(g) ? .direct : .im2row
    }

    /// Built for `kind(g, weight:)`, through `cache` under `key` (e.g. "fp32.3"; Winograd's under
    /// `key` + ".winograd").
    public static func make(weight: Tensor, bias: Tensor?, _ g: Kernels.ConvGeometry, batch: Int, cache: PackedWeightCache?,
                            key: String) -> FloatConvolution {
        let kind = kind(g, weight: weight)
        if kind == .winograd {
            return .winograd(cache.value(key + ".winograd", bytes: { $0.byteCount }) { WinogradWeights(weight: weight, bias: bias) })
        }
        let packed = cache.value(key, bytes: { $0.byteCount }) { PackedWeights(weight: Kernels.tapMajor(weight), bias: bias) }
        if kind == .direct, let table = Kernels.indirection(g) { return .packed(packed, .direct(table)) }
        return .packed(packed, .im2row(chunk: im2rowChunk(g, batch: batch)))
    }

    /// Samples a chunk of im2row rows holds (as many as fit 1 MiB of FP32 rows).
    private static func im2rowChunk(_ g: Kernels.ConvGeometry, batch: Int) -> Int {
        Kernels.convChunk(bytesPerSample: g.outH * g.outW * g.patch * 4, batch: batch)
    }

    public var kind: Kind {
        switch self {
        case .packed(_, .direct): .direct
        case .packed(_, .im2row): .im2row
        case .winograd: .winograd
        }
    }

    /// Bytes of the weights `kind` packs for `g`.
    public static func weightBytes(_ kind: Kind, _ g: Kernels.ConvGeometry) -> Int {
        switch kind {
        case .winograd: edge_winograd_packed_floats(Int32(g.outChannels), Int32(g.channels)) * 4
        case .im2row, .direct: edgePackedFloats(outputs: g.outChannels, inputs: g.patch) * 4
        }
    }

    /// Floats of workspace a step of `kind` needs for `batch` samples (im2row rows of a chunk; a
    /// Winograd block, whatever the batch; none for the direct kernel) and the bytes of its
    /// indirection table.
    public static func workspace(_ kind: Kind, _ g: Kernels.ConvGeometry, batch: Int) -> (floats: Int, tableBytes: Int) {
        switch kind {
        case .winograd: (edge_winograd_workspace_floats(Int32(g.outChannels), Int32(g.channels)), 0)
        case .direct: (0, ConvIndirection.byteCount(pixels: g.outH * g.outW, taps: g.kernelH * g.kernelW, channels: g.channels))
        case .im2row: (im2rowChunk(g, batch: batch) * g.outH * g.outW * g.patch, 0)
        }
    }

    /// The step's name in `stepNames` (and `inspect`).
    public var stepName: String {
        switch self {
        case .packed(_, let method): "fp32 conv2d" + method.stepSuffix
        case .winograd: "fp32 conv2d (winograd)"
        }
    }

    /// The shared weights' identity (tests: which plans share them).
    public var weightsIdentity: ObjectIdentifier {
        switch self {
        case .packed(let w, _): ObjectIdentifier(w)
        case .winograd(let w): ObjectIdentifier(w)
        }
    }

    public var byteCount: Int {
        switch self {
        case .packed(let w, _): w.byteCount
        case .winograd(let w): w.byteCount
        }
    }

    /// `batch` channels-last samples into channels-last outputs; `workspace` holds at least
    /// `workspace(kind, g, batch:).floats` floats.
    public func run(_ x: UnsafePointer<Float>, batch: Int, _ g: Kernels.ConvGeometry, activation: FusedActivation,
                    workspace: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        switch self {
        case .packed(let w, let method):
            Kernels.conv2dNHWC(x, batch: batch, g, weights: w, activation: activation, method: method, workspace: workspace, y)
        case .winograd(let w):
            w.convolve(samples: batch, x, height: g.height, width: g.width, padH: g.padH, padW: g.padW, y, activation: activation,
                       workspace: workspace)
        }
    }
}
