#ifndef EDGE_CKERNELS_H
#define EDGE_CKERNELS_H

// Micro-kernels that need instructions Swift cannot select per function (AVX-512, AVX2+FMA,
// and later VNNI and NEON dot products). Each has a portable C path; the best path for the
// running CPU is chosen once, at first use.

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Instruction sets a kernel may use. `EDGE_ISA_AUTO` picks the best the CPU supports.
typedef enum {
    EDGE_ISA_AUTO = 0,
    EDGE_ISA_PORTABLE = 1,
    EDGE_ISA_AVX2 = 2,
    EDGE_ISA_AVX512 = 3,
    EDGE_ISA_AVX512VNNI = 4,  // AVX-512 plus vpdpbusd (INT8 dot products)
    EDGE_ISA_NEONDOT = 5,     // aarch64 with sdot
    // The AVX2 vpmaddubsw INT8 kernel: never a CPU's best nor an EDGE_ISA choice, only what
    // edge_q8_choose picks for weights that cannot saturate it.
    EDGE_ISA_AVX2_U8S8 = 6,
} edge_isa;

/// Epilogue activation fused into a GEMM's output.
typedef enum {
    EDGE_ACT_NONE = 0,
    EDGE_ACT_RELU = 1,
    EDGE_ACT_RELU6 = 2,
    EDGE_ACT_LEAKY = 3,
} edge_activation;

/// Whether the running CPU (and OS) can execute `isa`.
int edge_isa_supported(edge_isa isa);
/// The ISA that `EDGE_ISA_AUTO` resolves to on this CPU: the best it supports, or the one the
/// `EDGE_ISA` environment variable names (portable, avx2, avx512, vnni, neon-dot) when the CPU
/// supports it, for benchmarks and tests. Read once.
edge_isa edge_isa_best(void);
const char *edge_isa_name(edge_isa isa);

/// Packed FP32 weights: W[out][in] (nn.Linear layout) in panels of 16 outputs, each panel
/// k-major ([in][16]), zero-padded to a multiple of 16 outputs, followed by the padded bias.
size_t edge_sgemm_packed_floats(int outputs, int inputs);
void edge_sgemm_pack(const float *weight, const float *bias, int outputs, int inputs, float *packed);

/// Y[m][o] = act(Σ_k X[m][k] · W[o][k] + bias[o]) for m < rows, o < outputs.
/// X rows are `ldx` floats apart, Y rows `ldy`. Allocates nothing.
void edge_sgemm_packed(edge_isa isa, int rows, int outputs, int inputs,
                       const float *x, int ldx, const float *packed,
                       float *y, int ldy, edge_activation act, float alpha);

/// Softmax over each of `rows` rows of `columns` floats, in place: exp(x − max) / Σ, with an
/// exponential of its own (1.8e-7 relative measured; 0 below −87.33, where libm's would be
/// subnormal). AVX-512 for rows of up to 64 columns, AVX2 up to 32, scalar beyond or on the
/// portable path. A row holding NaN or +∞, or only −∞, gives NaN.
void edge_softmax(edge_isa isa, float *y, int rows, int columns);

/// ---- INT8 ----------------------------------------------------------------------------------
///
/// Weights: INT8 in [-127, 127], [out][in], packed into 16-output panels of k-quads
/// ([panel][in/4][16][4]), `in` padded to a multiple of 4 with zeros, followed by the per-output
/// column sums (int32, padded to 16) that fold the input zero point. Activations: UINT8 rows of
/// at least round_up(in, 4) readable bytes (the padding multiplies zero weights).
/// Accumulation is INT32 and never saturates: u8·s8 products summed in INT32 (vpdpbusd, or
/// int16 × int16 → int32 madd on AVX2); the one kernel that sums pairs in int16 first (AVX2
/// vpmaddubsw) runs only weights edge_q8_choose has shown cannot reach the int16 limits.
/// The packed block must be 32-byte aligned (the AVX2 kernels use aligned loads).

/// The layout depends on the ISA that will run it (`EDGE_ISA_AUTO`: the best one, resolved at
/// pack time): k-quads of INT8 for vpdpbusd, sdot, AVX2 vpmaddubsw and the portable path;
/// k-pairs of INT16 ([panel][in/2][16][2], widened once here) for the AVX2 vpmaddwd kernel. On
/// AVX2 the kernel also depends on the weights: pack for what edge_q8_choose returns. A block
/// packed for one kernel must be multiplied with the same one.
size_t edge_q8_packed_bytes(edge_isa isa, int outputs, int inputs);
/// The kernel to pack `weight` for: `isa` resolved, except that on AVX2 (and AVX-512 without
/// VNNI) weights that cannot saturate vpmaddubsw's int16 pair sums get EDGE_ISA_AVX2_U8S8, which
/// multiplies 32 values an instruction instead of 16. A pair (k = 2i, 2i + 1) is safe when, for
/// every UINT8 input, −32768 ≤ x0·w0 + x1·w1 ≤ 32767: its positive weights sum to at most 128
/// and its negative ones to at least −128 (weights within ±64, "7-bit", always are).
/// Bit-identical results either way. EDGE_ISA_AVX2_U8S8 passed in is checked like AVX2, so
/// the answer is never a kernel the weights could saturate.
edge_isa edge_q8_choose(edge_isa isa, const int8_t *weight, int outputs, int inputs);
void edge_q8_pack(edge_isa isa, const int8_t *weight, int outputs, int inputs, void *packed);
/// Σ_k W[o][k] for each output, as stored in the packed block.
const int32_t *edge_q8_column_sums(edge_isa isa, const void *packed, int outputs, int inputs);
/// What the INT8 GEMM runs for `isa`, named as it is (e.g. "avx2 vpmaddwd").
const char *edge_q8_kernel_name(edge_isa isa);

/// What happens to each INT32 accumulator `acc[m][o]`:
///   v = (float)(acc + bias[o]) * scale[o];  if leaky and v < 0: v *= alpha
///   u8 output:  y = clamp(round_half_even(v) + zero_point, qmin, qmax)
///   f32 output: y = v
/// `bias` and `scale` hold at least round_up(outputs, 16) entries; 0 <= qmin <= qmax <= 255 (the
/// vector paths saturate when packing to bytes and equal the scalar definition only in that range).
typedef struct {
    const int32_t *bias;
    const float *scale;
    int32_t zero_point;
    int32_t qmin;
    int32_t qmax;
    int32_t leaky;
    float alpha;
} edge_q8_epilogue;

/// Y = epilogue(X · Wᵀ) for `rows` rows; exactly one of y_u8 / y_f32 is non-null. `isa` must be
/// the one the block was packed for (an ISA this CPU cannot run means the portable path, in both).
void edge_q8_gemm(edge_isa isa, int rows, int outputs, int inputs, const uint8_t *x, int ldx, const void *packed,
                  const edge_q8_epilogue *epilogue, uint8_t *y_u8, float *y_f32, int ldy);

/// ---- INT8 convolution without im2row rows (VNNI) -----------------------------------------
///
/// edge_q8_gemm over the im2row rows of `samples` channels-last UINT8 samples (`sample_stride`
/// bytes apart, `pixels` output pixels and `taps` taps each, `table` from edge_conv_table),
/// without writing the rows: a padding tap reads `pad` (`channels` bytes of the input zero point,
/// as edge_im2row_nhwc_u8 writes). The same integer sums, so the outputs equal im2row +
/// edge_q8_gemm's to the bit. Output row s·pixels + p, `ldy` apart; one of yu / yf non-null.
/// edge_q8_conv_direct says where it runs: AVX-512 VNNI (weights packed for it, k-quads that do
/// not straddle taps: channels a multiple of 4), at least 8 channels; edge_q8_conv writes nothing
/// elsewhere.
int edge_q8_conv_direct(edge_isa isa, int channels);
void edge_q8_conv(edge_isa isa, int samples, int pixels, int taps, int channels, const int32_t *table, const uint8_t *x,
                  size_t sample_stride, const uint8_t *pad, const void *packed, int outputs, const edge_q8_epilogue *ep, uint8_t *yu,
                  float *yf, int ldy);

/// ---- INT8 convolution of a single-channel image (a model's first layer) ----------------------
///
/// The convolution of `samples` single-channel UINT8 images (height × width each) by `outputs`
/// INT8 filters of kh × kw (w: [outputs][kh][kw]), without im2row rows: windows are read from a
/// padded copy of each image (padding = `pad`, the input zero point), 8 output pixels at a time,
/// and the epilogue is edge_q8_gemm's, so y ([samples][oh][ow][outputs], channels last) equals
/// im2row + edge_q8_gemm's to the bit. AVX2 (vpmaddubsw) only: edge_q8_conv1_supported says
/// whether it applies (x86-64 with AVX2 where edge_q8_choose picks the vpmaddubsw kernel for
/// these weights and their pairs here cannot saturate it either; outputs a multiple of 8; kw ≤ 8;
/// horizontal stride 1; the padded image, rows × (8·⌈ow/8⌉ + 20) bytes, within 32 KiB).
/// edge_q8_conv1 writes nothing for a geometry or CPU that check refuses; it does not re-check the
/// weights, so pack only weights edge_q8_conv1_supported accepted.
int edge_q8_conv1_supported(edge_isa isa, const int8_t *w, int outputs, int height, int width, int kh, int kw, int sh, int sw, int ph,
                            int pw);
size_t edge_q8_conv1_packed_bytes(int outputs, int kh, int kw);
void edge_q8_conv1_pack(const int8_t *w, int outputs, int kh, int kw, void *packed);
void edge_q8_conv1(int samples, const uint8_t *x, int height, int width, int kh, int kw, int sh, int ph, int pw, uint8_t pad,
                   const void *packed, int outputs, const edge_q8_epilogue *ep, uint8_t *y);

/// ---- INT4 (group-wise) -----------------------------------------------------------------------
///
/// Weights q in [-8, 7] with one FP32 scale per (output, group of `group` inputs), packed by
/// edge_q4_pack for `isa`'s path into 16-output panels: the panel's nibbles (q + 8) in the order
/// that path reads them; then its scales per group, its biases and (VNNI) its scaled column sums C
/// (below): edge_q4_packed_bytes in all, about half a byte a weight plus 4 bytes a group and 4 or
/// 8 an output (on VNNI each group is padded to whole k-quads: a group of 2 takes a byte a weight).
/// Weights packed for one `isa` run with that `isa` only.
/// y[m][o] = act(Σ_g scale[o][g] · Σ_{k in g} x[m][k] · q[o][k] + bias[o]).
/// On AVX2 the arithmetic is integer (W4A16): each row is quantized to int16, symmetric with
/// scale max|x[m]| / 32767 (round half to even), each panel widened to int16, and vpmaddwd sums a
/// group in INT32 before its scales are applied in FP32; a row holding an infinity or NaN gives
/// NaN before the activation. On AVX-512 VNNI (W4A8) each row is quantized to UINT8, asymmetric
/// over a range that holds 0 (step hi·pre/255 − lo·pre/255, zero point round(−lo·pre·(1/step))), each
/// panel unpacked to INT8 k-quads (groups padded to whole quads with zero weights), vpdpbusd sums
/// a group in INT32, and y = act((F − z·C)·step + bias) with F the group sums times their scales
/// and C the scaled column sums. The portable path is weight-only: FP32 activations and arithmetic
/// on INT4 storage. Every path unpacks panels as it goes into `scratch`
/// (edge_q4_scratch_floats floats, owned by the calling thread: the packed weights are shared).
/// `group` is even and at most 256 (so a group's INT32 sums cannot overflow), `inputs` even.
size_t edge_q4_packed_bytes(edge_isa isa, int outputs, int inputs, int group);
size_t edge_q4_scratch_floats(int inputs);
void edge_q4_pack(edge_isa isa, const int8_t *q, const float *scales, const float *bias, int outputs, int inputs, int group, void *packed);
/// "avx512-vnni vpdpbusd (w4a8)", "avx2 vpmaddwd (w4a16)" or "portable c (fp32 weight-only)":
/// what edge_q4_gemm runs for `isa`.
const char *edge_q4_kernel_name(edge_isa isa);
void edge_q4_gemm(edge_isa isa, int rows, int outputs, int inputs, int group, const float *x, int ldx, const void *packed,
                  float *y, int ldy, edge_activation act, float alpha, float *scratch);

/// W4A8 with static activations, for a plan whose INT4 layers have calibrated activation
/// parameters: rows of UINT8 x (ldx bytes apart) that stand for x_scale · (x − x_zero_point), so
/// nothing is quantized per row, and the same sums as edge_q4_gemm's W4A8 path with step = x_scale
/// and z = x_zero_point. A row is read in 4-byte quads up to 3 bytes past `inputs` (those bytes
/// meet zero weights; the last row's must be readable). edge_q4_gemm_u8 writes FP32 after the
/// activation; edge_q4_gemm_u8_requant UINT8: the activation, then round half to even of
/// v · y_inv_scale, + y_zero_point, clamped to 0…255 (NaN to 0), as edge_quantize_u8. Both run
/// only where edge_q4_u8_supported (weights packed for AVX-512 VNNI, groups of whole quads) and
/// otherwise return −1 having written nothing; 0 when done. Scratch as edge_q4_gemm's.
int edge_q4_u8_supported(edge_isa isa, int group);
int edge_q4_gemm_u8(edge_isa isa, int rows, int outputs, int inputs, int group, const uint8_t *x, int ldx, float x_scale,
                    int32_t x_zero_point, const void *packed, float *y, int ldy, edge_activation act, float alpha, float *scratch);
int edge_q4_gemm_u8_requant(edge_isa isa, int rows, int outputs, int inputs, int group, const uint8_t *x, int ldx, float x_scale,
                            int32_t x_zero_point, const void *packed, uint8_t *y, int ldy, float y_inv_scale, int32_t y_zero_point,
                            edge_activation act, float alpha, float *scratch);

/// dst[c][r] = src[r][c] for a rows × cols matrix (CHW ↔ HWC of one sample).
void edge_transpose(const float *src, int rows, int cols, float *dst);
void edge_transpose_u8(const uint8_t *src, int rows, int cols, uint8_t *dst);

/// Unfolds one channels-last (HWC) sample into rows[oh·ow][kh·kw·C], taps ordered (ky, kx, c), so
/// a convolution is rows · Wᵀ with W permuted to [out][kh][kw][C]; zero where the window hangs
/// over the padding. The UINT8 version pads with `pad` (the input zero point, i.e. real 0) and
/// writes rows `ldrow` bytes apart (>= kh·kw·C rounded up to 4, the extra bytes `pad` too).
void edge_im2row_nhwc(const float *x, int channels, int height, int width, int kh, int kw, int sh, int sw, int ph, int pw,
                      float *rows);
void edge_im2row_nhwc_u8(const uint8_t *x, int channels, int height, int width, int kh, int kw, int sh, int sw, int ph, int pw,
                         uint8_t pad, uint8_t *rows, int ldrow);
/// edge_im2row_nhwc_u8 over `samples` samples `sample_stride` bytes apart, sample s's rows from
/// rows + s·oh·ow·ldrow: the same bytes. Small single-channel images (kh padded input rows within
/// 64 bytes, an output row's windows within 128) take byte permutes on AVX-512 with VBMI.
void edge_im2row_nhwc_u8_batch(const uint8_t *x, int samples, size_t sample_stride, int channels, int height, int width, int kh, int kw,
                               int sh, int sw, int ph, int pw, uint8_t pad, uint8_t *rows, int ldrow);

/// ---- Convolution without im2row rows (an indirection table, as XNNPACK's indirect GEMM) -------
///
/// For output pixel p of one channels-last sample and tap t = ky·kw + kx, table[p·kh·kw + t] is
/// the offset (in values) of the input pixel the tap reads, `channels` values from there, or −1
/// where the window hangs over the padding. Returns 0, writing nothing, for a size or stride that
/// is not positive, negative padding, a kernel larger than the padded input, or a sample too
/// large for int32 offsets.
int edge_conv_table(int channels, int height, int width, int kh, int kw, int sh, int sw, int ph, int pw, int32_t *table);

/// The convolution of `samples` channels-last samples (`sample_stride` floats apart, `pixels`
/// output pixels and `taps` taps each, `table` from edge_conv_table) as the packed GEMM over their
/// im2row rows, without writing the rows: a padding tap reads `pad` (`channels` zeros). Output
/// row s·pixels + p, `ldy` apart. The same products are summed in the same order as
/// edge_im2row_nhwc + edge_sgemm_packed, so the results are identical on every path (the AVX-512
/// ISAs run 8-row × 32-output tiles, AVX2 6 × 16, both fused multiply-adds from the bias in k
/// order as every x86 GEMM tile does, and a single row, which the AVX-512 GEMM runs as a GEMV,
/// summed as that GEMV does: even and odd k apart, then added; the others a portable loop).
/// edge_sgemm_conv_direct says whether it beats im2row there: AVX2 or AVX-512 with at least 8
/// channels (a shorter tap costs more in pointer set-up than im2row does).
/// The INT8 counterpart (edge_q8_conv) runs on VNNI only: tried with the AVX2 vpmaddubsw kernel,
/// it ran within ±3% of im2row + GEMM (a UINT8 im2row moves a quarter of the bytes, and the GEMM's
/// contiguous rows keep its tile in registers); on VNNI, where the GEMM is four times faster, the
/// im2row was a fifth of the 8×8 CNN's INT8 time.
int edge_sgemm_conv_direct(edge_isa isa, int channels);
void edge_sgemm_conv(edge_isa isa, int samples, int pixels, int taps, int channels, const int32_t *table, const float *x,
                     size_t sample_stride, const float *pad, const float *packed, int outputs, float *y, int ldy,
                     edge_activation act, float alpha);

/// ---- 3×3 stride-1 convolution by Winograd F(2×2, 3×3) (winograd.c) ----------------------------
///
/// Each 2×2 block of outputs from a 4×4 input window: 16 multiplies a channel pair instead of 36,
/// as 16 packed FP32 GEMMs (edge_sgemm_packed on `isa`'s path) between transformed windows and
/// transformed filters. Not the direct sum's order: the results differ from it by rounding, except
/// near FLT_MAX (a window's transform adds up to 4 inputs, the output transform 9 products, so
/// values beyond about 10³⁷ can overflow where the direct sum does not).
/// edge_winograd_applies says where a plan uses it (measured at batch 64 against the direct kernel
/// on AVX-512: 1.11–1.67× there, 0.74–0.93× with 8 channels or 16 into 16): AVX2 or AVX-512, a 3×3
/// stride-1 kernel, outputs at least 2 × 2, at least 32 input channels or 16 and at least 32
/// outputs, and at most 4096 of each; EDGE_WINOGRAD=0 never (read once), to compare.
/// edge_winograd_pack transforms the file's weights w[outputs][channels][3][3] (and the bias, or
/// zeros) into edge_winograd_packed_floats floats, using `scratch` (outputs · channels floats).
/// edge_winograd_conv convolves `samples` channels-last samples (height × width × channels,
/// padding ph, pw ≥ 0; output (height + 2ph − 2) × (width + 2pw − 2) × outputs a sample, channels
/// last), then the bias and the activation; `workspace`: edge_winograd_workspace_floats floats,
/// whatever the batch (at most 4 MiB + 16 KiB within the limits above). Allocates nothing;
/// 64-byte alignment of the buffers is for speed only.
int edge_winograd_applies(edge_isa isa, int kh, int kw, int sh, int sw, int out_h, int out_w, int channels, int outputs);
size_t edge_winograd_packed_floats(int outputs, int channels);
void edge_winograd_pack(const float *w, const float *bias, int outputs, int channels, float *packed, float *scratch);
size_t edge_winograd_workspace_floats(int outputs, int channels);
void edge_winograd_conv(edge_isa isa, int samples, int height, int width, int channels, int ph, int pw, int outputs,
                        const float *x, const float *packed, float *y, edge_activation act, float alpha, float *workspace);

/// Channels-last pooling of `batch` HWC samples (no padding, floor output size), and global
/// average pooling of `batch` samples of `pixels` × `channels` into [batch][channels]. Pooling
/// writes nothing for a size, kernel or stride that is not positive, or a window larger than the
/// image.
void edge_pool_nhwc_f32(const float *x, int batch, int height, int width, int channels, int kh, int kw, int sh, int sw,
                        int average, float *y);
void edge_pool_nhwc_u8(const uint8_t *x, int batch, int height, int width, int channels, int kh, int kw, int sh, int sw,
                       int average, uint8_t *y);
void edge_global_pool_nhwc_f32(const float *x, int batch, int pixels, int channels, float *y);
void edge_global_pool_nhwc_u8(const uint8_t *x, int batch, int pixels, int channels, uint8_t *y);

/// q = clamp(round_half_even(x · inv_scale) + zero_point, 0, 255); and back: y = scale · (q − zero_point).
void edge_quantize_u8(const float *x, size_t n, float inv_scale, int32_t zero_point, uint8_t *y);
void edge_dequantize_u8(const uint8_t *x, size_t n, float scale, int32_t zero_point, float *y);

/// Max (average = 0) or average pooling of `planes` planes, no padding, floor output size.
void edge_pool_f32(const float *x, int planes, int height, int width, int kh, int kw, int sh, int sw, int average, float *y);
void edge_pool_u8(const uint8_t *x, int planes, int height, int width, int kh, int kw, int sh, int sw, int average, uint8_t *y);

#ifdef __cplusplus
}
#endif

#endif
