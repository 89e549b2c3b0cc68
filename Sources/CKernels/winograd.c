// FP32 3×3 stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, "Fast
// Algorithms for Convolutional Neural Networks", 2016): each 2×2 block of outputs from a 4×4
// window of the input, with 16 multiplies a channel pair instead of 36.
//
//   Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
//
//   Bᵀ = | 1  0 −1  0 |   G = | 1    0    0  |   Aᵀ = | 1  1  1  0 |
//        | 0  1  1  0 |       | ½    ½    ½  |        | 0  1 −1 −1 |
//        | 0 −1  1  0 |       | ½   −½    ½  |
//        | 0  1  0 −1 |       | 0    0    1  |
//
// Summed over the input channels, the ⊙ becomes 16 GEMMs, one a position ξ of the 4×4 transform:
// M_ξ[tile][o] = Σ_c V_ξ[tile][c] · U_ξ[o][c], run by the packed FP32 GEMM (edge_sgemm_packed) on
// the CPU's path. The filters are transformed and packed once (edge_winograd_pack); per block of
// tiles the input windows are transformed (V), the 16 GEMMs run, and the output transform adds the
// bias and the activation and writes the 2×2 outputs that exist (an odd output size leaves the
// last row or column of tiles half used). The transforms' coefficients are 0, ±1 and ±½, exact in
// FP32; the results differ from the direct sum only by rounding (a few units in the last place of
// the largest partial sums).

#include "ckernels.h"
#include "scalar.h"
#include "vector.h"
#include <stdlib.h>
#include <string.h>

#define WG_TILE 16    // positions of the 4×4 transform
#define WG_MAX 4096   // channels or outputs: the smallest block's workspace is at most 4 MiB + 16 KiB

int edge_winograd_applies(edge_isa isa, int kh, int kw, int sh, int sw, int out_h, int out_w, int channels, int outputs) {
    static int enabled = -1;  // EDGE_WINOGRAD, read once (plans are compiled on several threads)
    int on = __atomic_load_n(&enabled, __ATOMIC_RELAXED);
    if (on < 0) {
        const char *e = getenv("EDGE_WINOGRAD");
        on = !(e && strcmp(e, "0") == 0);
        __atomic_store_n(&enabled, on, __ATOMIC_RELAXED);
    }
    if (isa == EDGE_ISA_AUTO) isa = edge_isa_best();
    int measured = (isa == EDGE_ISA_AVX2 || isa == EDGE_ISA_AVX512 || isa == EDGE_ISA_AVX512VNNI) && edge_isa_supported(isa);
    return on && measured && kh == 3 && kw == 3 && sh == 1 && sw == 1 && out_h >= 2 && out_w >= 2 && channels <= WG_MAX &&
           outputs <= WG_MAX && (channels >= 32 || (channels >= 16 && outputs >= 32));
}

size_t edge_winograd_packed_floats(int outputs, int channels) {
    return WG_TILE * edge_sgemm_packed_floats(outputs, channels) + (size_t)outputs;
}

void edge_winograd_pack(const float *w, const float *bias, int outputs, int channels, float *packed, float *scratch) {
    size_t one = edge_sgemm_packed_floats(outputs, channels);
    // One plane U_ξ[o][c] at a time in scratch, then packed. Each term is halved before the sum
    // (exact for normal numbers), so weights near FLT_MAX do not overflow where G g Gᵀ does not.
    for (int xi = 0; xi < WG_TILE; xi++) {
        int i = xi / 4, j = xi % 4;
        for (int o = 0; o < outputs; o++)
            for (int c = 0; c < channels; c++) {
                const float *g = w + ((size_t)o * channels + c) * 9;
                float t[3];  // row i of G g
                for (int k = 0; k < 3; k++) {
                    float a = g[k], b = g[3 + k], d = g[6 + k];
                    t[k] = i == 0 ? a : i == 1 ? 0.5f * a + 0.5f * b + 0.5f * d : i == 2 ? 0.5f * a - 0.5f * b + 0.5f * d : d;
                }
                scratch[(size_t)o * channels + c] = j == 0   ? t[0]
                                                    : j == 1 ? 0.5f * t[0] + 0.5f * t[1] + 0.5f * t[2]
                                                    : j == 2 ? 0.5f * t[0] - 0.5f * t[1] + 0.5f * t[2]
                                                             : t[2];
            }
        edge_sgemm_pack(scratch, NULL, outputs, channels, packed + (size_t)xi * one);
    }
    float *b = packed + (size_t)WG_TILE * one;
    for (int o = 0; o < outputs; o++) b[o] = bias ? bias[o] : 0.0f;
}

/// Tiles a block holds: as many as keep its transformed inputs and GEMM outputs within 256 KiB
/// (in L2 while the 16 GEMMs read and write them; 32 KiB to 1.5 MiB measured within the noise on
/// the 8×8 CNN's 32 → 64 convolution), a multiple of 8, at least 8. Not capped by the batch's
/// tiles: a workspace that does not depend on the batch keeps a plan's memory linear in it (the
/// serving model's batch limit is drawn from plans of 1 and 2).
static int wg_block(int channels, int outputs) {
    size_t per = (size_t)WG_TILE * (size_t)(channels + outputs) * sizeof(float);
    size_t n = ((size_t)256 << 10) / per;
    n = n / 8 * 8;
    return n < 8 ? 8 : (n > 4096 ? 4096 : (int)n);
}

size_t edge_winograd_workspace_floats(int outputs, int channels) {
    // The block's V and M, and a vector of zeros for the padding (channels floats).
    return (size_t)wg_block(channels, outputs) * WG_TILE * (size_t)(channels + outputs) + (size_t)channels;
}

/// The transforms, LANES channels at a time (a short last step masked), for each path:
///  input:  d[16] the window's 16 pixels (the zeros for one over the padding); V_ξ = (Bᵀ d B)_ξ
///          written `vstride` floats apart;
///  output: m_ξ read `mstride` apart; Aᵀ m A + bias, the activation, written to the `rows` × `cols`
///          (1 or 2 each) outputs that exist, y[i][j] at y + (i·ldrow + j)·outputs.
#define WG_TRANSFORMS(SUFFIX, ATTR, V, LANES, LOAD, STORE, ADD, SUB, SET1, ACT)                                                      \
    static inline ATTR __attribute__((always_inline)) void wg_input_##SUFFIX(const float *const d[16], int channels, float *v,     \
                                                                             size_t vstride) {                                     \
        for (int c = 0; c < channels; c += LANES) {                                                                                \
            int n = channels - c < LANES ? channels - c : LANES;                                                                   \
            V r[4][4];                                                                                                             \
            for (int j = 0; j < 4; j++) { /* Bᵀ d: rows */                                                                         \
                V d0 = LOAD(d[j] + c, n), d1 = LOAD(d[4 + j] + c, n), d2 = LOAD(d[8 + j] + c, n), d3 = LOAD(d[12 + j] + c, n);     \
                r[0][j] = SUB(d0, d2);                                                                                             \
                r[1][j] = ADD(d1, d2);                                                                                             \
                r[2][j] = SUB(d2, d1);                                                                                             \
                r[3][j] = SUB(d1, d3);                                                                                             \
            }                                                                                                                      \
            for (int i = 0; i < 4; i++) { /* (Bᵀ d) B: columns */                                                                  \
                STORE(v + (size_t)(4 * i + 0) * vstride + c, SUB(r[i][0], r[i][2]), n);                                            \
                STORE(v + (size_t)(4 * i + 1) * vstride + c, ADD(r[i][1], r[i][2]), n);                                            \
                STORE(v + (size_t)(4 * i + 2) * vstride + c, SUB(r[i][2], r[i][1]), n);                                            \
                STORE(v + (size_t)(4 * i + 3) * vstride + c, SUB(r[i][1], r[i][3]), n);                                            \
            }                                                                                                                      \
        }                                                                                                                          \
    }                                                                                                                              \
    static inline ATTR __attribute__((always_inline)) void wg_output_##SUFFIX(const float *m, size_t mstride, const float *bias,   \
                                                                              int outputs, int rows, int cols, float *y,           \
                                                                              size_t ldrow, edge_activation act, float alpha) {    \
        V va = SET1(alpha);                                                                                                        \
        (void)va;                                                                                                                  \
        for (int o = 0; o < outputs; o += LANES) {                                                                                 \
            int n = outputs - o < LANES ? outputs - o : LANES;                                                                     \
            V t[2][4];                                                                                                             \
            for (int j = 0; j < 4; j++) { /* Aᵀ m: rows */                                                                         \
                V m0 = LOAD(m + (size_t)j * mstride + o, n), m1 = LOAD(m + (size_t)(4 + j) * mstride + o, n);                      \
                V m2 = LOAD(m + (size_t)(8 + j) * mstride + o, n), m3 = LOAD(m + (size_t)(12 + j) * mstride + o, n);               \
                t[0][j] = ADD(ADD(m0, m1), m2);                                                                                    \
                t[1][j] = SUB(SUB(m1, m2), m3);                                                                                    \
            }                                                                                                                      \
            V b = LOAD(bias + o, n);                                                                                               \
            for (int i = 0; i < rows; i++) { /* (Aᵀ m) A + bias */                                                                 \
                STORE(y + (size_t)i * ldrow * outputs + o, ACT(ADD(ADD(ADD(t[i][0], t[i][1]), t[i][2]), b), act, va), n);          \
                if (cols > 1)                                                                                                      \
                    STORE(y + ((size_t)i * ldrow + 1) * outputs + o, ACT(ADD(SUB(SUB(t[i][1], t[i][2]), t[i][3]), b), act, va), n); \
            }                                                                                                                      \
        }                                                                                                                          \
    }

#if defined(__x86_64__)
#define WG_LOAD512(p, n) _mm512_maskz_loadu_ps((__mmask16)((1u << (n)) - 1), (p))
#define WG_STORE512(p, v, n) _mm512_mask_storeu_ps((p), (__mmask16)((1u << (n)) - 1), (v))
#define WG_LOAD256(p, n) ((n) == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps((p), edge_mask256(n)))
#define WG_STORE256(p, v, n) ((n) == 8 ? _mm256_storeu_ps((p), (v)) : _mm256_maskstore_ps((p), edge_mask256(n), (v)))
WG_TRANSFORMS(avx512, EDGE_T512, __m512, 16, WG_LOAD512, WG_STORE512, _mm512_add_ps, _mm512_sub_ps, _mm512_set1_ps, edge_act512)
WG_TRANSFORMS(avx2, EDGE_T256, __m256, 8, WG_LOAD256, WG_STORE256, _mm256_add_ps, _mm256_sub_ps, _mm256_set1_ps, edge_act256)
#endif
#define WG_LOAD1(p, n) ((void)(n), *(p))
#define WG_STORE1(p, v, n) ((void)(n), *(p) = (v))
#define WG_ADD1(a, b) ((a) + (b))
#define WG_SUB1(a, b) ((a) - (b))
#define WG_SET1(a) (a)
#define WG_ACT1(v, act, alpha) edge_activate_scalar((v), (act), (alpha))
WG_TRANSFORMS(portable, , float, 1, WG_LOAD1, WG_STORE1, WG_ADD1, WG_SUB1, WG_SET1, WG_ACT1)

/// Tiles [t0, t0 + n) of the batch (tile t: sample t / (th·tw), then row-major), transformed in,
/// multiplied, transformed out.
#define WG_BLOCK_BODY                                                                                                              \
    int th = (oh + 1) / 2, tw = (ow + 1) / 2;                                                                                      \
    size_t per = (size_t)th * tw;                                                                                                  \
    for (int t = 0; t < n; t++) {                                                                                                  \
        size_t tile = t0 + (size_t)t, s = tile / per, r = tile % per;                                                              \
        int ty = (int)(r / (size_t)tw), tx = (int)(r % (size_t)tw);                                                                \
        const float *d[16];                                                                                                        \
        for (int u = 0; u < 4; u++)                                                                                                \
            for (int v = 0; v < 4; v++) {                                                                                          \
                int iy = 2 * ty - ph + u, ix = 2 * tx - pw + v;                                                                    \
                d[4 * u + v] = (iy < 0 || iy >= height || ix < 0 || ix >= width)                                                   \
                                   ? zeros                                                                                         \
                                   : x + ((s * (size_t)height + (size_t)iy) * (size_t)width + (size_t)ix) * (size_t)channels;      \
            }                                                                                                                      \
        WG_INPUT(d, channels, vb + (size_t)t * channels, (size_t)block * channels);                                                \
    }                                                                                                                              \
    for (int xi = 0; xi < WG_TILE; xi++)                                                                                           \
        edge_sgemm_packed(isa, n, outputs, channels, vb + (size_t)xi * block * channels, channels, packed + (size_t)xi * one,       \
                          mb + (size_t)xi * block * outputs, outputs, EDGE_ACT_NONE, 0);                                           \
    for (int t = 0; t < n; t++) {                                                                                                  \
        size_t tile = t0 + (size_t)t, s = tile / per, r = tile % per;                                                              \
        int ty = (int)(r / (size_t)tw), tx = (int)(r % (size_t)tw);                                                                \
        int rows = oh - 2 * ty < 2 ? 1 : 2, cols = ow - 2 * tx < 2 ? 1 : 2;                                                        \
        float *yt = y + ((s * (size_t)oh + (size_t)(2 * ty)) * (size_t)ow + (size_t)(2 * tx)) * (size_t)outputs;                  \
        WG_OUTPUT(mb + (size_t)t * outputs, (size_t)block * outputs, bias, outputs, rows, cols, yt, (size_t)ow, act, alpha);      \
    }

#define WG_BLOCK_ARGS                                                                                                              \
    edge_isa isa, size_t t0, int n, int block, int height, int width, int channels, int ph, int pw, int oh, int ow, int outputs, \
        const float *x, const float *packed, size_t one, const float *bias, const float *zeros, float *vb, float *mb, float *y,    \
        edge_activation act, float alpha

#if defined(__x86_64__)
#define WG_INPUT wg_input_avx512
#define WG_OUTPUT wg_output_avx512
EDGE_T512 static void wg_block_avx512(WG_BLOCK_ARGS) { WG_BLOCK_BODY }
#undef WG_INPUT
#undef WG_OUTPUT
#define WG_INPUT wg_input_avx2
#define WG_OUTPUT wg_output_avx2
EDGE_T256 static void wg_block_avx2(WG_BLOCK_ARGS) { WG_BLOCK_BODY }
#undef WG_INPUT
#undef WG_OUTPUT
#endif
#define WG_INPUT wg_input_portable
#define WG_OUTPUT wg_output_portable
static void wg_block_portable(WG_BLOCK_ARGS) { WG_BLOCK_BODY }

void edge_winograd_conv(edge_isa isa, int samples, int height, int width, int channels, int ph, int pw, int outputs,
                        const float *x, const float *packed, float *y, edge_activation act, float alpha, float *workspace) {
    int oh = height + 2 * ph - 2, ow = width + 2 * pw - 2;
    if (samples <= 0 || oh <= 0 || ow <= 0 || channels <= 0 || outputs <= 0) return;
    if (isa == EDGE_ISA_AUTO) isa = edge_isa_best();
    if (!edge_isa_supported(isa)) isa = EDGE_ISA_PORTABLE;
    size_t tiles = (size_t)samples * (size_t)((oh + 1) / 2) * (size_t)((ow + 1) / 2);
    int block = wg_block(channels, outputs);
    size_t one = edge_sgemm_packed_floats(outputs, channels);
    const float *bias = packed + (size_t)WG_TILE * one;
    float *vb = workspace, *mb = vb + (size_t)block * WG_TILE * channels, *zeros = mb + (size_t)block * WG_TILE * outputs;
    memset(zeros, 0, (size_t)channels * sizeof(float));
    void (*run)(WG_BLOCK_ARGS) = wg_block_portable;
#if defined(__x86_64__)
    if (isa == EDGE_ISA_AVX512 || isa == EDGE_ISA_AVX512VNNI) run = wg_block_avx512;
    if (isa == EDGE_ISA_AVX2) run = wg_block_avx2;
#endif
    for (size_t t0 = 0; t0 < tiles; t0 += (size_t)block) {
        int n = tiles - t0 < (size_t)block ? (int)(tiles - t0) : block;
        run(isa, t0, n, block, height, width, channels, ph, pw, oh, ow, outputs, x, packed, one, bias, zeros, vb, mb, y, act, alpha);
    }
}
