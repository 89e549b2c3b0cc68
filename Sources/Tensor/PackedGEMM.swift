import CKernels

/// The instruction set a kernel runs with; `.auto` picks the best this CPU supports.
public enum KernelISA: String, CaseIterable, Sendable {
    case auto, portable, avx2, avx512
    case avx512vnni = "avx512-vnni"
    case neondot = "neon-dot"

    var c: edge_isa {
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

/// Floats a packed copy of a `[outputs, inputs]` weight and its bias occupies.
public func edgePackedFloats(outputs: Int, inputs: Int) -> Int {
    edge_sgemm_packed_floats(Int32(outputs), Int32(inputs))
}
