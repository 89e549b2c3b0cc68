import CKernels
import ModelFile
import Tensor

/// FP32 layer kernels on flat row-major buffers. Batches are `[batch, …sample shape]` (NCHW).
/// None of them allocates.
public enum Kernels {
    /// An activation applied in the epilogue of dense/conv2d or on its own.
    public enum Activation: Sendable, Equatable {
        case none, relu, relu6, leaky(Float)

        public var fused: FusedActivation {
            switch self {
            case .none: .none
            case .relu: .relu
            case .relu6: .relu6
            case .leaky(let a): .leaky(a)
            }
        }

        @inline(__always) public func apply(_ v: Float) -> Float {
            switch self {
            case .none: v
            case .relu: max(v, 0)
            case .relu6: min(max(v, 0), 6)
            case .leaky(let a): v > 0 ? v : v * a
            }
        }
    }

    /// y[b, o] = Σᵢ x[b, i]·W[o, i] + bias[o], then the activation.
    public static func dense(
        _ x: UnsafePointer<Float>, batch: Int, inputs: Int, outputs: Int,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, activation: Activation,
        _ y: UnsafeMutablePointer<Float>
    ) {
        if batch == 1 {
            BLAS.gemv(m: outputs, n: inputs, a: weight, lda: inputs, x: x, y: y)
        } else {
            BLAS.gemm(transB: true, m: batch, n: outputs, k: inputs, a: x, lda: inputs, b: weight, ldb: inputs,
                      c: y, ldc: outputs)
        }
        epilogueRows(y, rows: batch, columns: outputs, bias: bias, activation: activation)
    }

    /// Adds a per-column bias and applies the activation to a `rows × columns` block.
    @inline(__always)
    public static func epilogueRows(_ y: UnsafeMutablePointer<Float>, rows: Int, columns: Int,
                                    bias: UnsafePointer<Float>?, activation: Activation) {
        if bias == nil && activation == .none { return }
        for r in 0..<rows {
            let row = y + r * columns
            if let bias {
                switch activation {
                case .none: for c in 0..<columns { row[c] += bias[c] }
                case .relu: for c in 0..<columns { row[c] = max(row[c] + bias[c], 0) }
                default: for c in 0..<columns { row[c] = activation.apply(row[c] + bias[c]) }
                }
            } else {
                activate(row, count: columns, activation)
            }
        }
    }

    public static func activate(_ y: UnsafeMutablePointer<Float>, count: Int, _ activation: Activation) {
        switch activation {
        case .none: return
        case .relu: for i in 0..<count { y[i] = max(y[i], 0) }
        case .relu6: for i in 0..<count { y[i] = min(max(y[i], 0), 6) }
        case .leaky(let a): for i in 0..<count { let v = y[i]; y[i] = v > 0 ? v : v * a }
        }
    }

    /// Geometry of a conv2d or pooling window over one `[C, H, W]` sample.
    public struct ConvGeometry: Sendable, Equatable {
        public var channels, height, width: Int
        public var outChannels: Int
        public var kernelH, kernelW, strideH, strideW, padH, padW: Int
        public var outH: Int { Op.convOutput(height, kernel: kernelH, stride: strideH, padding: padH) }
        public var outW: Int { Op.convOutput(width, kernel: kernelW, stride: strideW, padding: padW) }
        /// Rows of the im2col matrix: C·kh·kw.
        public var patch: Int { channels * kernelH * kernelW }
        public var isPointwise: Bool { kernelH == 1 && kernelW == 1 && strideH == 1 && strideW == 1 && padH == 0 && padW == 0 }

        public init(channels: Int, height: Int, width: Int, outChannels: Int, kernel: Window, stride: Window, padding: Window) {
            self.channels = channels
            self.height = height
            self.width = width
            self.outChannels = outChannels
            self.kernelH = kernel.height
            self.kernelW = kernel.width
            self.strideH = stride.height
            self.strideW = stride.width
            self.padH = padding.height
            self.padW = padding.width
        }
    }

    /// Unfolds one sample into `col[C·kh·kw, outH·outW]`, zero where the window hangs over the padding.
    public static func im2col(_ x: UnsafePointer<Float>, _ g: ConvGeometry, _ col: UnsafeMutablePointer<Float>) {
        let oh = g.outH, ow = g.outW, plane = oh * ow
        var row = 0
        for c in 0..<g.channels {
            let xc = x + c * g.height * g.width
            for ky in 0..<g.kernelH {
                for kx in 0..<g.kernelW {
                    let dst = col + row * plane
                    for oy in 0..<oh {
                        let iy = oy * g.strideH - g.padH + ky
                        let d = dst + oy * ow
                        if iy < 0 || iy >= g.height {
                            d.update(repeating: 0, count: ow)
                            continue
                        }
                        let src = xc + iy * g.width
                        for ox in 0..<ow {
                            let ix = ox * g.strideW - g.padW + kx
                            d[ox] = (ix >= 0 && ix < g.width) ? src[ix] : 0
                        }
                    }
                    row += 1
                }
            }
        }
    }

    /// A conv2d weight `[out, C, kh, kw]` reordered to `[out, kh, kw, C]`, the tap order of `im2row`.
    public static func tapMajor(_ w: Tensor) -> Tensor {
        let o = w.shape[0], c = w.shape[1], kh = w.shape[2], kw = w.shape[3]
        let t = Tensor(zeros: [o, kh, kw, c])
        for oc in 0..<o {
            for ic in 0..<c {
                for ky in 0..<kh {
                    for kx in 0..<kw { t[((oc * kh + ky) * kw + kx) * c + ic] = w[((oc * c + ic) * kh + ky) * kw + kx] }
                }
            }
        }
        return t
    }

    /// Samples unfolded into one batched convolution GEMM: as many as keep the im2row rows
    /// (`bytesPerSample` each) within 1 MiB, at least 1, at most `batch`.
    public static func convChunk(bytesPerSample: Int, batch: Int) -> Int {
        max(1, min(batch, (1 << 20) / max(bytesPerSample, 1)))
    }

    /// A dense weight `[O, C·H·W]` whose columns follow a CHW-flattened input, re-ordered for the
    /// same input flattened channels last (HWC): column p·C + c takes column c·P + p.
    public static func channelsLastColumns(_ w: Tensor, channels c: Int, pixels: Int) -> Tensor {
        let o = w.shape[0], d = w.count / o
        precondition(d == c * pixels, "the dense layer's input is not the flattened tensor")
        var out = [Float](repeating: 0, count: w.count)
        let src = UnsafePointer(w.pointer)
        for r in 0..<o {
            let s = r * d
            for ch in 0..<c {
                for p in 0..<pixels { out[s + p * c + ch] = src[s + ch * pixels + p] }
            }
        }
        return Tensor(shape: w.shape, values: out)
    }

    /// How a GEMM convolution step (FP32 tap-major weights or INT8) runs: the im2row rows of
    /// `chunk` samples at a time into one GEMM (the workspace holds them), or straight from the
    /// input through an indirection table. (An FP32 3×3 one may run by Winograd instead:
    /// `FloatConvolution`.)
    public enum ConvMethod: Sendable {
        case im2row(chunk: Int)
        case direct(ConvIndirection)

        /// What a plan's step name adds for this method: " (direct)" or nothing.
        public var stepSuffix: String { if case .direct = self { " (direct)" } else { "" } }
    }

    /// The indirection table of `g`, nil for a geometry edge_conv_table refuses.
    public static func indirection(_ g: ConvGeometry) -> ConvIndirection? {
        ConvIndirection(channels: g.channels, height: g.height, width: g.width, kernelH: g.kernelH, kernelW: g.kernelW,
                        strideH: g.strideH, strideW: g.strideW, padH: g.padH, padW: g.padW)
    }

    /// Whether an FP32 convolution of `g` runs direct here: the AVX2 or AVX-512 kernel with 8
    /// channels or more, and a geometry a table can be built for. The one predicate for the method and for
    /// the workspace a plan sizes (an im2row step needs its rows).
    public static func fp32ConvIsDirect(_ g: ConvGeometry) -> Bool {
        PackedWeights.convolvesDirectly(channels: g.channels)
            && ConvIndirection.accepts(channels: g.channels, height: g.height, width: g.width, kernelH: g.kernelH, kernelW: g.kernelW,
                                       strideH: g.strideH, strideW: g.strideW, padH: g.padH, padW: g.padW)
    }

    /// Convolution of `batch` channels-last samples into output rows that are already channels
    /// last (no transposes): through the indirection table, or the im2row rows of `chunk`
    /// samples at a time into one GEMM (`workspace` holds `chunk` × outH·outW × patch floats).
    /// `weights` come from `tapMajor(weight)`.
    public static func conv2dNHWC(
        _ x: UnsafePointer<Float>, batch: Int, _ g: ConvGeometry, weights: PackedWeights, activation: FusedActivation,
        method: ConvMethod, workspace: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>
    ) {
        let chunk: Int
        switch method {
        case .direct(let table):
            weights.convolve(samples: batch, x, table, y, ldy: g.outChannels, activation: activation)
            return
        case .im2row(let c): chunk = c
        }
        let plane = g.outH * g.outW, inCount = g.channels * g.height * g.width, outCount = g.outChannels * plane
        var s0 = 0
        while s0 < batch {
            let n = min(chunk, batch - s0)
            for s in 0..<n {
                edge_im2row_nhwc(x + (s0 + s) * inCount, Int32(g.channels), Int32(g.height), Int32(g.width), Int32(g.kernelH),
                                 Int32(g.kernelW), Int32(g.strideH), Int32(g.strideW), Int32(g.padH), Int32(g.padW),
                                 workspace + s * plane * g.patch)
            }
            weights.multiply(rows: n * plane, workspace, ldx: g.patch, y + s0 * outCount, ldy: g.outChannels, activation: activation)
            s0 += n
        }
    }

    /// The adjoint of `im2col`: accumulates `col` back into the sample gradient `dx` (which it zeroes first).
    public static func col2im(_ col: UnsafePointer<Float>, _ g: ConvGeometry, _ dx: UnsafeMutablePointer<Float>) {
        let oh = g.outH, ow = g.outW, plane = oh * ow
        dx.update(repeating: 0, count: g.channels * g.height * g.width)
        var row = 0
        for c in 0..<g.channels {
            let xc = dx + c * g.height * g.width
            for ky in 0..<g.kernelH {
                for kx in 0..<g.kernelW {
                    let src = col + row * plane
                    for oy in 0..<oh {
                        let iy = oy * g.strideH - g.padH + ky
                        if iy < 0 || iy >= g.height { continue }
                        let d = xc + iy * g.width
                        for ox in 0..<ow {
                            let ix = ox * g.strideW - g.padW + kx
                            if ix >= 0 && ix < g.width { d[ix] += src[oy * ow + ox] }
                        }
                    }
                    row += 1
                }
            }
        }
    }

    /// conv2d by im2col + GEMM, one sample at a time so the workspace stays one sample's patch matrix.
    /// `workspace` holds at least `patch · outH · outW` floats (unused for pointwise convolutions).
    public static func conv2d(
        _ x: UnsafePointer<Float>, batch: Int, _ g: ConvGeometry,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, activation: Activation,
        workspace: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>
    ) {
        let plane = g.outH * g.outW
        let inCount = g.channels * g.height * g.width
        let outCount = g.outChannels * plane
        for s in 0..<batch {
            let xs = x + s * inCount, ys = y + s * outCount
            let cols: UnsafePointer<Float>
            if g.isPointwise {
                cols = xs
            } else {
                im2col(xs, g, workspace)
                cols = UnsafePointer(workspace)
            }
            BLAS.gemm(m: g.outChannels, n: plane, k: g.patch, a: weight, lda: g.patch, b: cols, ldb: plane,
                      c: ys, ldc: plane)
            for o in 0..<g.outChannels {
                let row = ys + o * plane
                if let bias {
                    let b = bias[o]
                    for i in 0..<plane { row[i] = activation.apply(row[i] + b) }
                } else {
                    activate(row, count: plane, activation)
                }
            }
        }
    }

    public static func maxpool2d(_ x: UnsafePointer<Float>, batch: Int, _ g: ConvGeometry, _ y: UnsafeMutablePointer<Float>) {
        pool(x, batch: batch, g, y, average: false)
    }

    public static func avgpool2d(_ x: UnsafePointer<Float>, batch: Int, _ g: ConvGeometry, _ y: UnsafeMutablePointer<Float>) {
        pool(x, batch: batch, g, y, average: true)
    }

    private static func pool(_ x: UnsafePointer<Float>, batch: Int, _ g: ConvGeometry, _ y: UnsafeMutablePointer<Float>, average: Bool) {
        edge_pool_f32(x, Int32(batch * g.channels), Int32(g.height), Int32(g.width), Int32(g.kernelH), Int32(g.kernelW),
                      Int32(g.strideH), Int32(g.strideW), average ? 1 : 0, y)
    }

    /// Mean over each `[H, W]` plane: `[batch, C, H, W]` → `[batch, C]`.
    public static func globalAveragePool(_ x: UnsafePointer<Float>, planes: Int, planeSize: Int, _ y: UnsafeMutablePointer<Float>) {
        let inv = 1 / Float(planeSize)
        for p in 0..<planes {
            var acc: Float = 0
            let xp = x + p * planeSize
            for i in 0..<planeSize { acc += xp[i] }
            y[p] = acc * inv
        }
    }

    /// Numerically stable softmax of each row, in place (`edge_softmax`: the row's maximum taken
    /// off, a vectorised exponential; `isa` forces a path, for tests).
    public static func softmax(_ y: UnsafeMutablePointer<Float>, rows: Int, columns: Int, isa: KernelISA = .auto) {
        edge_softmax(isa.c, y, Int32(rows), Int32(columns))
    }
}

#if canImport(Glibc)
import Glibc
#endif
