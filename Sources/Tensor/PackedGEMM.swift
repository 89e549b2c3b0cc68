import CKernels

/// The instruction set a kernel runs with; `.auto` picks the best this CPU supports.
public enum KernelISA: String, CaseIterable, Sendable {
    case auto, portable, avx2, avx512
    case avx512vnni = "avx512-vnni"
    case neondot = "neon-dot"

    /// The C kernels' name for this path.
    public var c: edge_isa {
        switch self {
        case .auto: EDGE_ISA_AUTO
        case .portable: EDGE_ISA_PORTABLE
        case .avx2: EDGE_ISA_AVX2
        case .avx512: EDGE_ISA_AVX512
        case .avx512vnni: EDGE_ISA_AVX512VNNI
        case .neondot: EDGE_ISA_NEONDOT
        }
    }

    public var isSupported: Bool { edge_isa_supported(c) != 0 }

    /// What the INT8 GEMM runs on this path, named as it is ("avx2 vpmaddwd", "avx512-vnni vpdpbusd").
    public var int8Kernel: String { String(cString: edge_q8_kernel_name(c)) }

    /// What the INT4 GEMM runs on this path: integer (W4A16) or FP32 weight-only.
    public var int4Kernel: String { String(cString: edge_q4_kernel_name(c)) }

    /// What `.auto` resolves to here.
    public static var best: KernelISA {
        switch edge_isa_best() {
        case EDGE_ISA_AVX512VNNI: .avx512vnni
        case EDGE_ISA_NEONDOT: .neondot
        case EDGE_ISA_AVX512: .avx512
        case EDGE_ISA_AVX2: .avx2
        default: .portable
        }
    }
}

/// An activation fused into a GEMM epilogue.
public enum FusedActivation: Sendable, Equatable {
    case none, relu, relu6, leaky(Float)

    var c: (edge_activation, Float) {
        switch self {
        case .none: (EDGE_ACT_NONE, 0)
        case .relu: (EDGE_ACT_RELU, 0)
        case .relu6: (EDGE_ACT_RELU6, 0)
        case .leaky(let a): (EDGE_ACT_LEAKY, a)
        }
    }
}

/// FP32 weights `[outputs, inputs]` and bias packed once into 16-output panels for the
/// register-blocked kernels of `CKernels`; `multiply` computes `act(X · Wᵀ + b)` without allocating.
public final class PackedWeights: @unchecked Sendable {
    public let outputs: Int
    public let inputs: Int
    private let storage: UnsafeMutablePointer<Float>
    public let floatCount: Int

    public init(weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, outputs: Int, inputs: Int) {
        self.outputs = outputs
        self.inputs = inputs
        floatCount = edge_sgemm_packed_floats(Int32(outputs), Int32(inputs))
        // 64-byte alignment: a misaligned 64-byte vector load touches two cache lines.
        storage = UnsafeMutableRawPointer.allocate(byteCount: floatCount * 4, alignment: 64).bindMemory(to: Float.self, capacity: floatCount)
        edge_sgemm_pack(weight, bias, Int32(outputs), Int32(inputs), storage)
    }

    public convenience init(weight: Tensor, bias: Tensor?) {
        let inputs = weight.count / weight.shape[0]
        self.init(weight: weight.pointer, bias: bias.map { UnsafePointer($0.pointer) }, outputs: weight.shape[0], inputs: inputs)
    }

    deinit { storage.deallocate() }

    public var byteCount: Int { floatCount * MemoryLayout<Float>.stride }

    /// y[r, o] = act(Σₖ x[r, k]·W[o, k] + b[o]) for `rows` rows; rows are `ldx` and `ldy` floats apart.
    @inline(__always)
    public func multiply(rows: Int, _ x: UnsafePointer<Float>, ldx: Int, _ y: UnsafeMutablePointer<Float>, ldy: Int,
                         activation: FusedActivation = .none, isa: KernelISA = .auto) {
        let (act, alpha) = activation.c
        edge_sgemm_packed(isa.c, Int32(rows), Int32(outputs), Int32(inputs), x, Int32(ldx), storage, y, Int32(ldy), act, alpha)
    }
}

extension PackedWeights {
    /// Whether `convolve` beats im2row rows + `multiply` here for an input of `channels` channels
    /// (edge_sgemm_conv_direct: the AVX2 or AVX-512 kernel, at least 8 channels).
    public static func convolvesDirectly(channels: Int, isa: KernelISA = .auto) -> Bool {
        edge_sgemm_conv_direct(isa.c, Int32(clamping: channels)) != 0
    }

    /// The convolution of `samples` channels-last samples through `table`, without im2row rows:
    /// the same sums in the same order as their rows through `multiply`. `self` holds the
    /// tap-major weights ([out][kh][kw][C]); output rows are channels last, `ldy` apart.
    public func convolve(samples: Int, _ x: UnsafePointer<Float>, _ table: ConvIndirection, _ y: UnsafeMutablePointer<Float>, ldy: Int,
                         activation: FusedActivation = .none, isa: KernelISA = .auto) {
        precondition(table.taps * table.channels == inputs, "the indirection table does not fit these weights")
        let (act, alpha) = activation.c
        edge_sgemm_conv(isa.c, Int32(samples), Int32(table.pixels), Int32(table.taps), Int32(table.channels), table.table, x,
                        table.sampleValues, table.pad, storage, Int32(outputs), y, Int32(ldy), act, alpha)
    }
}

/// A 3×3 stride-1 convolution's weights transformed for Winograd F(2×2, 3×3) (edge_winograd_pack):
/// 16 packed GEMM matrices of outputs × channels and the bias. `convolve` computes 2×2 outputs from
/// each 4×4 window with 16 multiplies a channel pair instead of 36; the results differ from the
/// direct sum by rounding only (for values below about 10³⁷: ckernels.h).
public final class WinogradWeights: @unchecked Sendable {
    public let outputs: Int
    public let channels: Int
    private let storage: UnsafeMutablePointer<Float>
    public let floatCount: Int

    /// `weight`: the file's `[outputs, channels, 3, 3]`.
    public init(weight: Tensor, bias: Tensor?) {
        precondition(weight.shape.count == 4 && weight.shape[2] == 3 && weight.shape[3] == 3, "not a 3×3 convolution weight")
        outputs = weight.shape[0]
        channels = weight.shape[1]
        floatCount = edge_winograd_packed_floats(Int32(outputs), Int32(channels))
        storage = allocateAlignedFloats(floatCount)
        let scratch = allocateAlignedFloats(outputs * channels)  // one transformed plane at a time
        defer { scratch.deallocate() }
        edge_winograd_pack(weight.pointer, bias.map { UnsafePointer($0.pointer) }, Int32(outputs), Int32(channels), storage, scratch)
    }

    deinit { storage.deallocate() }

    public var byteCount: Int { floatCount * MemoryLayout<Float>.stride }

    /// Whether a plan may run a convolution this way (edge_winograd_applies: AVX2 or AVX-512, 3×3,
    /// stride 1, outputs at least 2 × 2, at least 32 input channels or 16 and 32 outputs, at most
    /// 4096 of each; `EDGE_WINOGRAD=0` never).
    public static func applies(kernelH: Int, kernelW: Int, strideH: Int, strideW: Int, outH: Int, outW: Int, channels: Int, outputs: Int,
                               isa: KernelISA = .auto) -> Bool {
        edge_winograd_applies(isa.c, Int32(clamping: kernelH), Int32(clamping: kernelW), Int32(clamping: strideH), Int32(clamping: strideW),
                              Int32(clamping: outH), Int32(clamping: outW), Int32(clamping: channels), Int32(clamping: outputs)) != 0
    }

    /// Floats of workspace `convolve` needs, whatever the batch.
    public var workspaceFloats: Int { edge_winograd_workspace_floats(Int32(outputs), Int32(channels)) }

    /// `samples` channels-last samples (height × width × channels each) into channels-last outputs
    /// ((height + 2·padH − 2) × (width + 2·padW − 2) × outputs each), bias and activation applied.
    public func convolve(samples: Int, _ x: UnsafePointer<Float>, height: Int, width: Int, padH: Int, padW: Int,
                         _ y: UnsafeMutablePointer<Float>, activation: FusedActivation = .none, workspace: UnsafeMutablePointer<Float>,
                         isa: KernelISA = .auto) {
        let (act, alpha) = activation.c
        edge_winograd_conv(isa.c, Int32(samples), Int32(height), Int32(width), Int32(channels), Int32(padH), Int32(padW), Int32(outputs),
                           x, storage, y, act, alpha, workspace)
    }
}

/// Where each output pixel's taps read in a channels-last sample (edge_conv_table), and the zeros
/// a padding tap reads: a convolution without im2row rows (`PackedWeights.convolve`). XNNPACK's
/// indirection idea, with offsets from the sample's start rather than pointers, so one table
/// serves every sample and buffer.
public final class ConvIndirection: @unchecked Sendable {
    public let pixels: Int
    public let taps: Int
    public let channels: Int
    /// Values in one input sample (height · width · channels).
    public let sampleValues: Int
    let table: UnsafeMutablePointer<Int32>
    let pad: UnsafeMutablePointer<Float>

    /// Whether a table can be built for this geometry (what `init` checks): positive sizes and
    /// strides, no negative padding, a kernel within the padded input, every value within int32
    /// and the sample and the table within int32 offsets.
    public static func accepts(channels: Int, height: Int, width: Int, kernelH: Int, kernelW: Int, strideH: Int, strideW: Int,
                               padH: Int, padW: Int) -> Bool {
        let limit = Int(Int32.max)
        guard [channels, height, width, kernelH, kernelW, strideH, strideW].allSatisfy({ $0 > 0 && $0 <= limit }),
              padH >= 0, padW >= 0, padH <= limit / 4, padW <= limit / 4,
              height <= limit / width, height * width <= limit / channels, kernelH <= limit / kernelW,
              height + 2 * padH >= kernelH, width + 2 * padW >= kernelW else { return false }
        let oh = (height + 2 * padH - kernelH) / strideH + 1, ow = (width + 2 * padW - kernelW) / strideW + 1
        let (pixels, o1) = oh.multipliedReportingOverflow(by: ow)
        let (count, o2) = pixels.multipliedReportingOverflow(by: kernelH * kernelW)
        return !o1 && !o2 && count <= limit
    }

    /// nil where `accepts` is false.
    public init?(channels: Int, height: Int, width: Int, kernelH: Int, kernelW: Int, strideH: Int, strideW: Int, padH: Int, padW: Int) {
        guard Self.accepts(channels: channels, height: height, width: width, kernelH: kernelH, kernelW: kernelW, strideH: strideH,
                           strideW: strideW, padH: padH, padW: padW) else { return nil }
        let oh = (height + 2 * padH - kernelH) / strideH + 1, ow = (width + 2 * padW - kernelW) / strideW + 1
        let count = oh * ow * kernelH * kernelW
        pixels = oh * ow
        taps = kernelH * kernelW
        self.channels = channels
        sampleValues = height * width * channels
        table = .allocate(capacity: count)
        pad = .allocate(capacity: channels)
        pad.initialize(repeating: 0, count: channels)
        guard edge_conv_table(Int32(channels), Int32(height), Int32(width), Int32(kernelH), Int32(kernelW), Int32(strideH), Int32(strideW),
                              Int32(padH), Int32(padW), table) != 0 else {
            table.deallocate()
            pad.deallocate()
            return nil
        }
    }

    deinit {
        table.deallocate()
        pad.deallocate()
    }

    /// The table and the padding vector.
    public var byteCount: Int { Self.byteCount(pixels: pixels, taps: taps, channels: channels) }

    /// What a table for this geometry holds, without building it.
    public static func byteCount(pixels: Int, taps: Int, channels: Int) -> Int { pixels * taps * 4 + channels * 4 }
}

/// Floats a packed copy of a `[outputs, inputs]` weight and its bias occupies.
public func edgePackedFloats(outputs: Int, inputs: Int) -> Int {
    edge_sgemm_packed_floats(Int32(outputs), Int32(inputs))
}
