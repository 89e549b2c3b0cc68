import CKernels
import Inference
import ModelFile
import Tensor
import Testing

/// The FP32 3×3 convolution by Winograd F(2×2, 3×3) against a direct sum in double, on every path
/// this CPU has (AVX-512, AVX2, portable): channel and output counts around every vector width,
/// odd output sizes (half-used tiles), paddings 0 to 2 that differ per axis, a batch whose tiles
/// span blocks (with a last block of one tile), every fused activation, nothing written past the
/// outputs. Winograd does not sum in the direct order, so the bound is on rounding: 10⁻⁶ of the
/// sum of the products' magnitudes (2.3·10⁻⁷ the worst measured).
@Suite struct WinogradTests {
    struct Shape: Sendable, CustomTestStringConvertible {
        var channels, outputs, height, width, padH, padW, samples: Int
        var outH: Int { height + 2 * padH - 2 }
        var outW: Int { width + 2 * padW - 2 }
        var testDescription: String { "c\(channels) o\(outputs) \(height)x\(width) p\(padH),\(padW) ×\(samples)" }
    }

    static let shapes = [
        Shape(channels: 32, outputs: 64, height: 8, width: 8, padH: 1, padW: 1, samples: 5),  // the 8×8 CNN's; 80 tiles, blocks of 40
        Shape(channels: 19, outputs: 21, height: 7, width: 9, padH: 1, padW: 1, samples: 3),  // odd outputs both ways, lane tails
        Shape(channels: 16, outputs: 33, height: 9, width: 6, padH: 0, padW: 1, samples: 2),
        Shape(channels: 33, outputs: 17, height: 3, width: 3, padH: 1, padW: 1, samples: 1),
        Shape(channels: 8, outputs: 5, height: 3, width: 4, padH: 0, padW: 0, samples: 4),    // one output row, two columns
        Shape(channels: 64, outputs: 16, height: 5, width: 5, padH: 2, padW: 2, samples: 4),  // windows wholly in the padding
        Shape(channels: 1, outputs: 3, height: 4, width: 4, padH: 1, padW: 0, samples: 2),
        Shape(channels: 40, outputs: 24, height: 2, width: 2, padH: 1, padW: 1, samples: 65),  // one tile a sample: blocks of 64, then 1
    ]
    static let paths = [KernelISA.auto, .avx512, .avx2, .portable].filter(\.isSupported)

    @Test(arguments: shapes, paths)
    func winogradEqualsTheDirectSumWithinRounding(shape s: Shape, isa: KernelISA) {
        var rng = SeededGenerator(seed: UInt64(s.channels * 100 + s.outputs + s.samples))
        let n = s.height * s.width * s.channels, outCount = s.outH * s.outW * s.outputs
        let x = (0..<(s.samples * n)).map { _ in rng.nextFloat(limit: 1) }  // channels last
        let weight = randomTensor([s.outputs, s.channels, 3, 3], &rng), bias = randomTensor([s.outputs], &rng)
        let w = WinogradWeights(weight: weight, bias: bias)
        #expect(w.byteCount == edge_winograd_packed_floats(Int32(s.outputs), Int32(s.channels)) * 4)
        // The direct sums in double, and the sums of the products' magnitudes.
        var exact = [Double](repeating: 0, count: s.samples * outCount), scale = exact
        for b in 0..<s.samples {
            for oy in 0..<s.outH {
                for ox in 0..<s.outW {
                    for o in 0..<s.outputs {
                        var acc = Double(bias[o]), mag = abs(Double(bias[o]))
                        for ky in 0..<3 {
                            for kx in 0..<3 {
                                let iy = oy - s.padH + ky, ix = ox - s.padW + kx
                                guard iy >= 0, iy < s.height, ix >= 0, ix < s.width else { continue }
                                for c in 0..<s.channels {
                                    let p = Double(x[b * n + (iy * s.width + ix) * s.channels + c]) * Double(weight[((o * s.channels + c) * 3 + ky) * 3 + kx])
                                    acc += p
                                    mag += abs(p)
                                }
                            }
                        }
                        let i = b * outCount + (oy * s.outW + ox) * s.outputs + o
                        exact[i] = acc
                        scale[i] = mag
                    }
                }
            }
        }
        let workspace = allocateAlignedFloats(w.workspaceFloats)
        defer { workspace.deallocate() }
        for activation in [FusedActivation.none, .relu, .relu6, .leaky(0.1)] {
            var got = [Float](repeating: .nan, count: s.samples * outCount + 9)
            x.withUnsafeBufferPointer { xp in
                got.withUnsafeMutableBufferPointer {
                    w.convolve(samples: s.samples, xp.baseAddress!, height: s.height, width: s.width, padH: s.padH, padW: s.padW,
                               $0.baseAddress!, activation: activation, workspace: workspace, isa: isa)
                }
            }
            var worst = 0.0, at = -1
            for i in 0..<exact.count {
                let e = exact[i]
                let want: Double = switch activation {
                case .relu: max(e, 0)
                case .relu6: min(max(e, 0), 6)
                case .leaky(let a): e < 0 ? e * Double(a) : e
                default: e
                }
                let err = abs(Double(got[i]) - want) / max(scale[i], 1e-30)
                if !(err <= worst) { worst = err; at = i }  // NaN is the worst
            }
            let what = "\(s.testDescription) \(isa) \(activation)", tailIntact = got[exact.count...].allSatisfy(\.isNaN)
            #expect(worst <= 1e-6, "\(what): error \(worst) of the magnitudes at output \(at)")
            #expect(tailIntact, "\(what): wrote past the outputs")
        }
    }

    /// A NaN or an infinity reaches exactly the outputs whose windows hold it, as in the direct sum
    /// (an infinity may come out NaN there: its transform subtracts it from itself), at a corner, an
    /// edge and inside, in the second sample of two; the first stays finite.
    @Test(arguments: paths)
    func nonFiniteInputsReachTheirOutputs(isa: KernelISA) {
        var rng = SeededGenerator(seed: 9)
        let h = 7, w = 6, c = 32, o = 16
        var x = (0..<(2 * h * w * c)).map { _ in rng.nextFloat(limit: 1) }
        let bad = [(0, 0, Float.nan), (0, 3, .infinity), (4, 2, -.infinity), (6, 5, .nan)]
        for (iy, ix, v) in bad { x[h * w * c + (iy * w + ix) * c + (iy + ix) % c] = v }
        let weights = WinogradWeights(weight: randomTensor([o, c, 3, 3], &rng), bias: randomTensor([o], &rng))
        var y = [Float](repeating: 0, count: 2 * h * w * o)
        let workspace = allocateAlignedFloats(weights.workspaceFloats)
        defer { workspace.deallocate() }
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer {
            weights.convolve(samples: 2, xp.baseAddress!, height: h, width: w, padH: 1, padW: 1, $0.baseAddress!, workspace: workspace, isa: isa)
        } }
        let firstFinite = y[..<(h * w * o)].allSatisfy { $0.isFinite }
        #expect(firstFinite)
        for oy in 0..<h {
            for ox in 0..<w {
                let reached = bad.contains { abs($0.0 - oy) <= 1 && abs($0.1 - ox) <= 1 }
                let finite = (0..<o).map { y[h * w * o + (oy * w + ox) * o + $0].isFinite }
                #expect(finite.allSatisfy { $0 == !reached }, "\(isa) output (\(oy), \(ox)): \(finite)")
            }
        }
    }

    /// Where plans use it: AVX2 or AVX-512, 3×3, stride 1, outputs at least 2 × 2, at least 32
    /// channels or 16 and at least 32 outputs, at most 4096 of each (in the measured table it was
    /// faster than the direct kernel in every such shape, slower in the others); weights within 10³⁷.
    @Test func whereItApplies() throws {
        try #require(WinogradWeights.applies(kernelH: 3, kernelW: 3, strideH: 1, strideW: 1, outH: 8, outW: 8, channels: 32, outputs: 64),
                     "EDGE_WINOGRAD=0 is set, or this CPU has neither AVX2 nor AVX-512")
        func applies(_ k: Int, _ s: Int, _ c: Int, _ o: Int, out: Int = 8, isa: KernelISA = .auto) -> Bool {
            WinogradWeights.applies(kernelH: k, kernelW: k, strideH: s, strideW: s, outH: out, outW: out, channels: c, outputs: o, isa: isa)
        }
        #expect(applies(3, 1, 32, 64) && applies(3, 1, 32, 8) && applies(3, 1, 16, 32) && applies(3, 1, 4096, 4096) && applies(3, 1, 32, 32, out: 2))
        #expect(!applies(3, 1, 16, 16) && !applies(3, 1, 8, 64) && !applies(3, 1, 1, 32))
        #expect(!applies(5, 1, 32, 64) && !applies(1, 1, 64, 64) && !applies(3, 2, 32, 64))
        #expect(!applies(3, 1, 4097, 64) && !applies(3, 1, 64, 4097) && !applies(3, 1, 32, 32, out: 1))
        #expect(!applies(3, 1, 32, 64, isa: .portable))
        #expect(applies(3, 1, 32, 64, isa: .avx2) == KernelISA.avx2.isSupported)
        #expect(!WinogradWeights.applies(kernelH: 3, kernelW: 5, strideH: 1, strideW: 1, outH: 8, outW: 8, channels: 32, outputs: 32))
        #expect(!WinogradWeights.applies(kernelH: 3, kernelW: 3, strideH: 1, strideW: 2, outH: 8, outW: 8, channels: 32, outputs: 32))
        #expect(!WinogradWeights.applies(kernelH: 3, kernelW: 3, strideH: 1, strideW: 1, outH: 8, outW: 1, channels: 32, outputs: 32))
        #expect(!applies(Int.max, 1, 32, 32) && !applies(3, Int.min, 32, 32))
        // Weights beyond 10³⁷ (a transformed one could overflow to infinity, and 0 · ∞ is NaN
        // where the direct sum gives the bias) keep the other methods.
        let g = Kernels.ConvGeometry(channels: 32, height: 8, width: 8, outChannels: 16, kernel: Window(3, 3), stride: Window(1, 1),
                                     padding: Window(1, 1))
        var weight = Tensor(shape: [16, 32, 3, 3], values: [Float](repeating: 0.5, count: 16 * 32 * 9))
        #expect(FloatConvolution.kind(g, weight: weight) == .winograd)
        weight[77] = 3e38
        #expect(FloatConvolution.kind(g, weight: weight) != .winograd)
    }

    /// An FP32 plan runs the 8×8 CNN's second convolution this way, names the step so, counts the
    /// transformed weights and the block's workspace in its memory, and equals the reference.
    @Test func aPlanRunsItAndCountsIt() throws {
        var rng = SeededGenerator(seed: 12)
        let w1 = randomTensor([32, 1, 3, 3], &rng), b1 = randomTensor([32], &rng)
        let w2 = randomTensor([64, 32, 3, 3], &rng, limit: 0.2), b2 = randomTensor([64], &rng)
        let w3 = randomTensor([10, 64 * 16], &rng, limit: 0.1), b3 = randomTensor([10], &rng)
        let net = Network(name: "c", inputShape: [1, 8, 8], labels: [], layers: [
            NetworkLayer(kind: .conv2d(stride: Window(1, 1), padding: Window(1, 1)), inputShape: [1, 8, 8], outputShape: [32, 8, 8],
                         weight: w1, bias: b1, weightName: "w1", biasName: "b1"),
            NetworkLayer(kind: .relu, inputShape: [32, 8, 8], outputShape: [32, 8, 8]),
            NetworkLayer(kind: .conv2d(stride: Window(1, 1), padding: Window(1, 1)), inputShape: [32, 8, 8], outputShape: [64, 8, 8],
                         weight: w2, bias: b2, weightName: "w2", biasName: "b2"),
            NetworkLayer(kind: .relu, inputShape: [64, 8, 8], outputShape: [64, 8, 8]),
            NetworkLayer(kind: .maxpool2d(kernel: Window(2, 2), stride: Window(2, 2)), inputShape: [64, 8, 8], outputShape: [64, 4, 4]),
            NetworkLayer(kind: .flatten, inputShape: [64, 4, 4], outputShape: [1024]),
            NetworkLayer(kind: .dense, inputShape: [1024], outputShape: [10], weight: w3, bias: b3, weightName: "w3", biasName: "b3"),
        ])
        let g = try #require(net.layers[2].geometry)
        try #require(FloatConvolution.kind(g, weight: w2) == .winograd, "EDGE_WINOGRAD=0 is set, or this CPU has neither AVX2 nor AVX-512")
        let cache = PackedWeightCache()
        let plan = ExecutionPlan(network: net, batchCapacity: 6, weights: cache)
        #expect(plan.stepNames.filter { $0.hasPrefix("fp32 conv2d") } == ["fp32 conv2d", "fp32 conv2d (winograd)"], "\(plan.stepNames)")
        // The estimate (made without building a plan) counts what the plan packed: the transformed weights, 16/9 of the file's.
        let estimate = ExecutionPlan.memoryEstimate(network: net, batch: 6)
        #expect(estimate.weights == cache.bytes)
        #expect(estimate.weights == (edgePackedFloats(outputs: 32, inputs: 9) + edge_winograd_packed_floats(64, 32) + edgePackedFloats(outputs: 10, inputs: 1024)) * 4)
        // The workspace is the Winograd block's (40 tiles of 96 channels in and out, and a vector of
        // zeros), more than the first convolution's im2row rows, and the same for any batch, so plan
        // memory stays linear in the batch (ServingModel draws its batch limit from plans of 1 and 2).
        #expect(estimate.workspace == (40 * 16 * 96 + 32) * 4)
        #expect(edge_winograd_workspace_floats(64, 32) == 40 * 16 * 96 + 32)
        #expect(ExecutionPlan.memoryEstimate(network: net, batch: 1).workspace == estimate.workspace)
        let x = (0..<(6 * 64)).map { _ in rng.nextFloat(limit: 1) }
        let y = plan.predict(x)
        let ref = (0..<6).flatMap { s -> [Float] in
            var h = Reference.conv2d(Array(x[(s * 64)..<((s + 1) * 64)]), c: 1, h: 8, w: 8, weight: w1, bias: b1, stride: Window(1, 1), padding: Window(1, 1)).map { max($0, 0) }
            h = Reference.conv2d(h, c: 32, h: 8, w: 8, weight: w2, bias: b2, stride: Window(1, 1), padding: Window(1, 1)).map { max($0, 0) }
            h = Reference.pool(h, c: 64, h: 8, w: 8, kernel: Window(2, 2), stride: Window(2, 2), average: false)
            return (0..<10).map { o in Float((0..<1024).reduce(Double(b3[o])) { $0 + Double(w3[o * 1024 + $1]) * Double(h[$1]) }) }
        }
        close(y, ref, tolerance: 1e-4)
        // One sample at a time gives the same scores within rounding (tiles batch differently).
        close(ExecutionPlan(network: net, batchCapacity: 1).predict(x), y, tolerance: 1e-5)
    }
}
