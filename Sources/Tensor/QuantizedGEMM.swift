import CKernels

/// INT8 weights `[outputs, inputs]` (values in −127…127) packed once for the INT8 kernel of one
/// ISA (k-quads of INT8, or k-pairs widened to INT16 for AVX2), with their column sums (used to
/// fold the input zero point into the bias). On AVX2, weights that cannot saturate vpmaddubsw
/// (7-bit ones, from `quantize --reduce-range`) get that kernel instead: see `edge_q8_choose`.
public final class PackedInt8Weights: @unchecked Sendable {
    public let outputs: Int
    public let inputs: Int
    /// The ISA path these weights are packed for (on AVX2 the weights then choose between two
    /// kernels: `kernelName` says which runs).
    public let isa: KernelISA
    /// The kernel the weights are packed for: `isa`'s own, or the AVX2 vpmaddubsw one.
    let kernel: edge_isa
    /// Input rows must have at least this many readable bytes (inputs rounded up to 4).
    public let paddedInputs: Int
    let storage: UnsafeMutableRawPointer
    public let byteCount: Int

    /// - Parameters:
    ///   - isa: `.auto` packs for the best path here (or the one `EDGE_ISA` forces).
    ///   - narrowKernel: false keeps AVX2 on the vpmaddwd kernel even for weights that fit
    ///     vpmaddubsw (to compare the two).
    public init(weight: UnsafePointer<Int8>, outputs: Int, inputs: Int, isa: KernelISA = .auto, narrowKernel: Bool = true) {
        self.outputs = outputs
        self.inputs = inputs
        self.isa = isa == .auto ? .best : isa
        kernel = narrowKernel ? edge_q8_choose(self.isa.c, weight, Int32(outputs), Int32(inputs)) : self.isa.c
        paddedInputs = (inputs + 3) & ~3
        byteCount = edge_q8_packed_bytes(kernel, Int32(outputs), Int32(inputs))
        storage = .allocate(byteCount: byteCount, alignment: 64)
        edge_q8_pack(kernel, weight, Int32(outputs), Int32(inputs), storage)
    }

    deinit { storage.deallocate() }

    /// What multiplies these weights, named as it is ("avx2 vpmaddwd", "avx2 vpmaddubsw (…)").
    public var kernelName: String { String(cString: edge_q8_kernel_name(kernel)) }

    /// Σₖ W[o, k] per output.
    public func columnSum(_ o: Int) -> Int32 {
        edge_q8_column_sums(kernel, storage, Int32(outputs), Int32(inputs))[o]
    }

    /// `rows` rows of UINT8 input → INT32 accumulators → `epilogue`, into UINT8 or FP32 rows.
    @inline(__always)
    public func multiply(rows: Int, _ x: UnsafePointer<UInt8>, ldx: Int, epilogue: QuantizedEpilogue,
                         output: QuantizedOutput, ldy: Int) {
        epilogue.withC { ep in
            edge_q8_gemm(kernel, Int32(rows), Int32(outputs), Int32(inputs), x, Int32(ldx), storage, ep, output.uint8, output.float, Int32(ldy))
        }
    }
}

extension PackedInt8Weights {
    /// Whether `convolve` runs for an input of `channels` channels: VNNI weights and a channel
    /// count of at least 8 that is a multiple of 4 (edge_q8_conv_direct).
    public func convolvesDirectly(channels: Int) -> Bool {
        edge_q8_conv_direct(kernel, Int32(clamping: channels)) != 0
    }

    /// The convolution of `samples` channels-last UINT8 samples through `table` without im2row
    /// rows (`pad`: `table.channels` bytes of the input zero point): the same integer sums as
    /// their rows through `multiply`, so the same outputs. Only where `convolvesDirectly`.
    public func convolve(samples: Int, _ x: UnsafePointer<UInt8>, _ table: ConvIndirection, pad: UnsafePointer<UInt8>,
                         epilogue: QuantizedEpilogue, output: QuantizedOutput, ldy: Int) {
        precondition(table.taps * table.channels == inputs && convolvesDirectly(channels: table.channels),
                     "the indirection table does not fit these weights")
        epilogue.withC { ep in
            edge_q8_conv(kernel, Int32(samples), Int32(table.pixels), Int32(table.taps), Int32(table.channels), table.table, x,
                         table.sampleValues, pad, storage, Int32(outputs), ep, output.uint8, output.float, Int32(ldy))
        }
    }
}

/// The INT8 convolution of a single-channel image (a model's first layer on grey images) without
/// im2row rows: windows read from a padded copy of each image, 8 output pixels at a time (see
/// `edge_q8_conv1`). Its outputs equal im2row + `PackedInt8Weights.multiply` to the bit. `init`
/// returns nil where the kernel does not apply: not AVX2 with weights the vpmaddubsw kernel
/// takes, outputs not a multiple of 8, a kernel wider than 8, a horizontal stride other than 1,
/// or a padded image over 32 KiB.
public final class SingleChannelInt8Conv: @unchecked Sendable {
    public let outputs: Int
    public let height: Int, width: Int
    public let kernelH: Int, kernelW: Int
    public let strideH: Int
    public let padH: Int, padW: Int
    private let storage: UnsafeMutableRawPointer
    public let byteCount: Int

    /// `weight` is `[outputs, kernelH, kernelW]`.
    public init?(weight: UnsafePointer<Int8>, outputs: Int, height: Int, width: Int, kernelH: Int, kernelW: Int,
                 strideH: Int, strideW: Int, padH: Int, padW: Int, isa: KernelISA = .auto) {
        let sizes = [outputs, height, width, kernelH, kernelW, strideH, strideW, padH, padW]
        guard sizes.allSatisfy({ $0 >= 0 && $0 <= Int(Int32.max) }),
              edge_q8_conv1_supported((isa == .auto ? KernelISA.best : isa).c, weight, Int32(outputs), Int32(height), Int32(width),
                                      Int32(kernelH), Int32(kernelW), Int32(strideH), Int32(strideW), Int32(padH), Int32(padW)) == 1
        else { return nil }
        self.outputs = outputs
        self.height = height
        self.width = width
        self.kernelH = kernelH
        self.kernelW = kernelW
        self.strideH = strideH
        self.padH = padH
        self.padW = padW
        byteCount = edge_q8_conv1_packed_bytes(Int32(outputs), Int32(kernelH), Int32(kernelW))
        storage = .allocate(byteCount: byteCount, alignment: 64)
        edge_q8_conv1_pack(weight, Int32(outputs), Int32(kernelH), Int32(kernelW), storage)
    }

    deinit { storage.deallocate() }

    /// What computes it, named as it is.
    public var kernelName: String { "avx2 vpmaddubsw (single-channel conv, 8 pixels a vector)" }

    /// `samples` images of `height × width` UINT8 values → `[samples, outH, outW, outputs]` UINT8,
    /// the padding taps reading `pad` (the input zero point).
    public func run(samples: Int, _ x: UnsafePointer<UInt8>, pad: UInt8, epilogue: QuantizedEpilogue, output: UnsafeMutablePointer<UInt8>) {
        epilogue.withC { ep in
            edge_q8_conv1(Int32(samples), x, Int32(height), Int32(width), Int32(kernelH), Int32(kernelW), Int32(strideH), Int32(padH),
                          Int32(padW), pad, storage, Int32(outputs), ep, output)
        }
    }
}

public enum QuantizedOutput {
    case uint8(UnsafeMutablePointer<UInt8>)
    case float(UnsafeMutablePointer<Float>)

    /// The C kernels' two output pointers, one of them nil.
    var uint8: UnsafeMutablePointer<UInt8>? { if case .uint8(let y) = self { y } else { nil } }
    var float: UnsafeMutablePointer<Float>? { if case .float(let y) = self { y } else { nil } }
}

/// Per-output INT32 bias and FP32 scale, plus the output zero point and clamp (see `edge_q8_epilogue`).
public final class QuantizedEpilogue: @unchecked Sendable {
    public let bias: UnsafeMutablePointer<Int32>
    public let scale: UnsafeMutablePointer<Float>
    public let count: Int
    public var zeroPoint: Int32 = 0
    public var qmin: Int32 = 0
    public var qmax: Int32 = 255
    public var leakyAlpha: Float? = nil

    /// `outputs` entries, padded to a multiple of 16 with zeros.
    public init(outputs: Int) {
        count = (outputs + 15) & ~15
        bias = .allocate(capacity: count)
        bias.initialize(repeating: 0, count: count)
        scale = .allocate(capacity: count)
        scale.initialize(repeating: 0, count: count)
    }

    deinit {
        bias.deallocate()
        scale.deallocate()
    }

    @inline(__always)
    func withC<R>(_ body: (UnsafePointer<edge_q8_epilogue>) -> R) -> R {
        var ep = edge_q8_epilogue(bias: bias, scale: scale, zero_point: zeroPoint, qmin: qmin, qmax: qmax,
                                  leaky: leakyAlpha == nil ? 0 : 1, alpha: leakyAlpha ?? 0)
        return withUnsafePointer(to: &ep) { body($0) }
    }

    /// The scalar definition every kernel path must match bit for bit.
    public func referenceRequantize(_ acc: Int32, output o: Int) -> UInt8 {
        var v = Float(acc &+ bias[o]) * scale[o]
        if let a = leakyAlpha, v < 0 { v *= a }
        v = min(max(v, -1_073_741_824), 1_073_741_824)
        let q = Int32(v.rounded(.toNearestOrEven)) &+ zeroPoint
        return UInt8(min(max(q, qmin), qmax))
    }

    public func referenceDequantize(_ acc: Int32, output o: Int) -> Float {
        let v = Float(acc &+ bias[o]) * scale[o]
        if let a = leakyAlpha, v < 0 { return v * a }
        return v
    }
}

/// INT4 dense: group-wise INT4 weights packed in 16-output panels (half a byte a weight) and
/// widened a panel at a time in the kernel. On AVX-512 VNNI the arithmetic is integer with UINT8
/// activations (W4A8): rows already UINT8 with calibrated parameters (`multiply(rows:uint8:…)`),
/// or each FP32 row quantized over its own range; on AVX2 with each row quantized to int16
/// (W4A16, see `edge_q4_gemm`); on the portable path it is FP32 (weight-only).
/// `KernelISA.int4Kernel` names which.
public final class PackedInt4Weights: @unchecked Sendable {
    public let outputs: Int
    public let inputs: Int
    public let group: Int
    /// The path these weights run on, and are packed for (W4A8 reads its own nibble order).
    public let isa: KernelISA
    private let storage: UnsafeMutableRawPointer
    public let byteCount: Int

    /// `q` holds values in −8…7, `[outputs, inputs]`; `scales` `[outputs, groups]`.
    public init(q: [Int8], scales: [Float], bias: [Float]?, outputs: Int, inputs: Int, group: Int, isa: KernelISA = .auto) {
        // The file stores two nibbles a byte along the inputs, a group read from whole bytes.
        precondition(inputs % 2 == 0 && group > 0 && group <= 256 && group % 2 == 0, "INT4 needs an even input count and an even group of at most 256")
        let groups = (inputs + group - 1) / group
        precondition(q.count == outputs * inputs && scales.count == outputs * groups && (bias?.count ?? outputs) == outputs)
        // A nibble holds q + 8: a value outside −8…7 would spill into its neighbour's.
        precondition(q.allSatisfy { $0 >= -8 && $0 <= 7 }, "INT4 weights must lie in -8...7")
        self.outputs = outputs
        self.inputs = inputs
        self.group = group
        self.isa = isa == .auto ? .best : isa
        byteCount = edge_q4_packed_bytes(self.isa.c, Int32(outputs), Int32(inputs), Int32(group))
        storage = .allocate(byteCount: byteCount, alignment: 64)
        q.withUnsafeBufferPointer { qp in
            scales.withUnsafeBufferPointer { sp in
                if let bias {
                    bias.withUnsafeBufferPointer { edge_q4_pack(self.isa.c, qp.baseAddress!, sp.baseAddress!, $0.baseAddress!, Int32(outputs), Int32(inputs), Int32(group), storage) }
                } else {
                    edge_q4_pack(self.isa.c, qp.baseAddress!, sp.baseAddress!, nil, Int32(outputs), Int32(inputs), Int32(group), storage)
                }
            }
        }
    }

    deinit { storage.deallocate() }

    /// Floats of per-thread scratch `multiply` needs: one panel's weights widened (two on VNNI),
    /// and on the integer paths 64 rows quantized (192 bytes an input at most, for any path).
    public var scratchFloats: Int { edge_q4_scratch_floats(Int32(inputs)) }

    /// `scratch`: `scratchFloats` floats owned by the calling thread (these weights are shared
    /// between plans).
    public func multiply(rows: Int, _ x: UnsafePointer<Float>, ldx: Int, _ y: UnsafeMutablePointer<Float>, ldy: Int,
                         activation: FusedActivation, scratch: UnsafeMutablePointer<Float>) {
        let (act, alpha) = activation.c
        edge_q4_gemm(isa.c, Int32(rows), Int32(outputs), Int32(inputs), Int32(group), x, Int32(ldx), storage, y, Int32(ldy),
                     act, alpha, scratch)
    }

    /// Whether `multiply(rows:uint8:…)` runs for these weights: W4A8 (AVX-512 VNNI) with groups of
    /// whole k-quads, which files' groups (32, 64, 128) always are.
    public var acceptsUInt8: Bool { Self.acceptsUInt8(isa: isa, group: group) }

    /// The same for weights of `group` packed for `isa`.
    public static func acceptsUInt8(isa: KernelISA = .best, group: Int) -> Bool { edge_q4_u8_supported(isa.c, Int32(group)) != 0 }

    /// W4A8 with static activations: UINT8 rows standing for `inputScale · (x − inputZeroPoint)`,
    /// read in 4-byte quads up to 3 bytes past `inputs` (which the last row must have readable);
    /// `output` FP32 after the activation, or UINT8 quantized with `outputScale` and
    /// `outputZeroPoint` after it. Only where `acceptsUInt8`.
    public func multiply(rows: Int, uint8 x: UnsafePointer<UInt8>, ldx: Int, inputScale: Float, inputZeroPoint: Int32,
                         output: QuantizedOutput, outputScale: Float = 1, outputZeroPoint: Int32 = 0, ldy: Int,
                         activation: FusedActivation, scratch: UnsafeMutablePointer<Float>) {
        let (act, alpha) = activation.c
        let status: Int32
        switch output {
        case .float(let y):
            status = edge_q4_gemm_u8(isa.c, Int32(rows), Int32(outputs), Int32(inputs), Int32(group), x, Int32(ldx), inputScale, inputZeroPoint,
                                     storage, y, Int32(ldy), act, alpha, scratch)
        case .uint8(let y):
            status = edge_q4_gemm_u8_requant(isa.c, Int32(rows), Int32(outputs), Int32(inputs), Int32(group), x, Int32(ldx), inputScale,
                                             inputZeroPoint, storage, y, Int32(ldy), 1 / outputScale, outputZeroPoint, act, alpha, scratch)
        }
        precondition(status == 0, "UINT8 rows need INT4 weights packed for W4A8 with groups of whole quads")
    }
}
