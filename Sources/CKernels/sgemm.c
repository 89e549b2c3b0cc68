// FP32 GEMM against weights packed once at load: Y = act(X · Wᵀ + b).
//
// Layout: 16-output panels, gathered in groups of up to four that are interleaved per k
// (group base + (k·np + q)·16 + j), so that batch 1 reads the weights as one contiguous stream
// and a tile loads the 16 weights of a panel per k with one vector load. Register blocking: AVX-512 keeps an
// 8-row × 32-output tile (16 accumulators); AVX2 a 6-row × 16-output tile (12 accumulators).
// Row/column counts are template-like compile-time constants through always_inline helpers.

#include "ckernels.h"
#include "scalar.h"
#include "vector.h"
#include "vnni.h"
#include <math.h>
#include <string.h>

/// Where a W4A8 call writes: FP32 rows into yf, or (yf NULL) UINT8 rows into yu quantized with
/// inv_scale and zero_point; both ldy apart.
typedef struct {
    float *yf;
    uint8_t *yu;
    float inv_scale;
    int32_t zero_point;
    int ldy;
} q4v_output;


#define PANEL 16

size_t edge_sgemm_packed_floats(int outputs, int inputs) {
    size_t panels = (size_t)(outputs + PANEL - 1) / PANEL;
    return panels * PANEL * (size_t)inputs + panels * PANEL;
}

#define GROUP 4

/// Where panel p starts and how far apart its k rows are.
static inline const float *panel_at(const float *packed, int panels, int inputs, int p, size_t *kstride) {
    int g0 = p / GROUP * GROUP;
    int np = panels - g0 < GROUP ? panels - g0 : GROUP;
    *kstride = (size_t)np * PANEL;
    return packed + (size_t)g0 * PANEL * inputs + (size_t)(p - g0) * PANEL;
}

void edge_sgemm_pack(const float *w, const float *bias, int outputs, int inputs, float *packed) {
    int panels = (outputs + PANEL - 1) / PANEL;
    for (int p = 0; p < panels; p++) {
        size_t ks;
        float *dst = (float *)panel_at(packed, panels, inputs, p, &ks);
        for (int k = 0; k < inputs; k++) {
            for (int j = 0; j < PANEL; j++) {
                int o = p * PANEL + j;
                dst[(size_t)k * ks + j] = o < outputs ? w[(size_t)o * inputs + k] : 0.0f;
            }
        }
    }
    float *b = packed + (size_t)panels * PANEL * inputs;
    for (int o = 0; o < panels * PANEL; o++) b[o] = (bias && o < outputs) ? bias[o] : 0.0f;
}

// ---- portable ---------------------------------------------------------------------------------

static void sgemm_portable(int rows, int outputs, int inputs, const float *x, int ldx, const float *packed,
                           float *y, int ldy, edge_activation act, float alpha) {
    int panels = (outputs + PANEL - 1) / PANEL;
    const float *bias = packed + (size_t)panels * PANEL * inputs;
    for (int m = 0; m < rows; m++) {
        const float *xr = x + (size_t)m * ldx;
        for (int p = 0; p < panels; p++) {
            size_t ks;
            const float *w = panel_at(packed, panels, inputs, p, &ks);
            float acc[PANEL];
            for (int j = 0; j < PANEL; j++) acc[j] = bias[p * PANEL + j];
            for (int k = 0; k < inputs; k++) {
                float xv = xr[k];
                for (int j = 0; j < PANEL; j++) acc[j] += xv * w[(size_t)k * ks + j];
            }
            int n = outputs - p * PANEL < PANEL ? outputs - p * PANEL : PANEL;
            for (int j = 0; j < n; j++) y[(size_t)m * ldy + p * PANEL + j] = edge_activate_scalar(acc[j], act, alpha);
        }
    }
}

// ---- INT4, 16-output panels --------------------------------------------------------------------
//
// Per panel: its nibbles (q + 8); then, per group, the panel's 16 scales; then its 16 biases;
// then, for W4A8 only, its 16 scaled column sums (C). For the AVX2 and portable paths the nibbles are k
// by k, 8 bytes holding the panel's 16 (byte j: output 2j low, 2j+1 high). The portable path
// widens one panel at a time into `scratch` ([k][16] FP32, the group scales applied) and runs the
// FP32 panel loop over every row (weight-only: the arithmetic is FP32); the AVX2 path is integer
// (W4A16, below). For the VNNI path (W4A8, below) they are in its k-quads, each group padded to
// whole quads with weights 0: quads 2i and 2i + 1 share 64 bytes, byte 4j + t holding output j's
// weight at the quads' k + t, the first quad's low and the second's high, so that two quads
// unpack with shifts and masks alone.

#define Q4_NIBBLE_BYTES 8

/// Which INT4 path `isa` runs: 2 the VNNI one (W4A8), 1 the AVX2 one (W4A16), 0 the portable
/// one (FP32 weight-only). The one place the choice is made.
static int q4_integer(edge_isa isa) {
#if defined(__x86_64__)
    if (isa == EDGE_ISA_AUTO) isa = edge_isa_best();
    if (isa == EDGE_ISA_AVX512VNNI && edge_isa_supported(EDGE_ISA_AVX512VNNI)) return 2;
    return isa != EDGE_ISA_PORTABLE && edge_isa_supported(EDGE_ISA_AVX2);
#else
    (void)isa;
    return 0;
#endif
}

/// The quad-padded length of the inputs: each group (the last may be short) rounded up to 4.
static int q4v_padded(int inputs, int group) {
    int full = inputs / group, rest = inputs - full * group;
    return full * ((group + 3) & ~3) + ((rest + 3) & ~3);
}

/// The bytes of one panel's nibbles.
static size_t q4_panel_nibbles(int vnni, int inputs, int group) {
    return vnni ? (size_t)((q4v_padded(inputs, group) / 4 + 1) / 2) * 64 : (size_t)inputs * Q4_NIBBLE_BYTES;
}

size_t edge_q4_packed_bytes(edge_isa isa, int outputs, int inputs, int group) {
    size_t panels = (size_t)(outputs + PANEL - 1) / PANEL, groups = (size_t)(inputs + group - 1) / group;
    int vnni = q4_integer(isa) == 2;  // only W4A8 reads the column sums
    return panels * q4_panel_nibbles(vnni, inputs, group) + panels * groups * PANEL * 4 + (size_t)(vnni ? 2 : 1) * panels * PANEL * 4;
}

/// The portable path widens a panel to FP32 (16 floats an input); the AVX2 path holds a panel
/// as int16 (8 floats' worth an input) and Q4_ROWS rows quantized to int16 (32 an input) plus
/// their scales; the VNNI path two panels as INT8 quads and Q4_ROWS rows as UINT8 over at most
/// 2·inputs quad-padded values (48 floats' worth an input) plus 256 floats of row scales, zero
/// points, pre-scales and reciprocals. The largest.
size_t edge_q4_scratch_floats(int inputs) {
    size_t k = (size_t)(inputs > 0 ? inputs : 0);
    size_t avx2 = k * PANEL / 2 + k * 64 / 2 + 64, vnni = k * 48 + 256, portable = k * PANEL;
    size_t most = avx2 > vnni ? avx2 : vnni;
    return most > portable ? most : portable;
}

void edge_q4_pack(edge_isa isa, const int8_t *q, const float *scales, const float *bias, int outputs, int inputs, int group,
                  void *packed) {
    int panels = (outputs + PANEL - 1) / PANEL, groups = (inputs + group - 1) / group, vnni = q4_integer(isa) == 2;
    size_t pn = q4_panel_nibbles(vnni, inputs, group);
    uint8_t *nib = packed;
    float *sc = (float *)(nib + (size_t)panels * pn);
    float *b = sc + (size_t)panels * groups * PANEL, *cs = b + (size_t)panels * PANEL;
    if (vnni) memset(nib, 0x88, (size_t)panels * pn);  // every weight 0 until set
    for (int p = 0; p < panels; p++) {
        for (int k = 0, quad = 0; vnni && k < inputs; k += group) {  // quad: the group's first, in the padded layout
            for (int u = 0; u < group && k + u < inputs; u++) {
                int qd = quad + u / 4, t = u % 4;
                uint8_t *pair = nib + (size_t)p * pn + (size_t)(qd / 2) * 64;
                for (int j = 0; j < PANEL && p * PANEL + j < outputs; j++) {
                    int v = q[(size_t)(p * PANEL + j) * inputs + k + u] + 8, shift = qd % 2 ? 4 : 0;
                    pair[4 * j + t] = (uint8_t)((pair[4 * j + t] & (0xF0 >> shift)) | (v << shift));
                }
            }
            quad += ((inputs - k < group ? inputs - k : group) + 3) / 4;
        }
        for (int k = 0; !vnni && k < inputs; k++) {
            uint8_t *dst = nib + (size_t)p * pn + (size_t)k * Q4_NIBBLE_BYTES;
            for (int j = 0; j < PANEL; j += 2) {
                int o = p * PANEL + j;
                int lo = o < outputs ? q[(size_t)o * inputs + k] + 8 : 8;
                int hi = o + 1 < outputs ? q[(size_t)(o + 1) * inputs + k] + 8 : 8;
                dst[j / 2] = (uint8_t)(lo | (hi << 4));
            }
        }
        for (int g = 0; g < groups; g++) {
            for (int j = 0; j < PANEL; j++) {
                int o = p * PANEL + j;
                sc[((size_t)p * groups + g) * PANEL + j] = o < outputs ? scales[(size_t)o * groups + g] : 0.0f;
            }
        }
        for (int j = 0; j < PANEL; j++) {
            int o = p * PANEL + j;
            b[(size_t)p * PANEL + j] = bias && o < outputs ? bias[o] : 0.0f;
            // W4A8's scaled column sum C = Σ_g scale_g·Σ_k q (fused multiply-adds in group order).
            if (!vnni) continue;
            float c = 0;
            for (int g = 0; o < outputs && g < groups; g++) {
                int sum = 0;
                for (int k = g * group; k < inputs && k < (g + 1) * group; k++) sum += q[(size_t)o * inputs + k];
                c = fmaf((float)sum, scales[(size_t)o * groups + g], c);
            }
            cs[(size_t)p * PANEL + j] = c;
        }
    }
}

static void q4_widen_panel_portable(const uint8_t *nib, const float *sc, int inputs, int group, float *dst) {
    for (int k = 0; k < inputs; k++) {
        const float *s = sc + (size_t)(k / group) * PANEL;
        for (int j = 0; j < PANEL; j++) {
            uint8_t byte = nib[(size_t)k * Q4_NIBBLE_BYTES + j / 2];
            dst[(size_t)k * PANEL + j] = (float)(((j & 1) ? byte >> 4 : byte & 15) - 8) * s[j];
        }
    }
}

static void q4_gemm_portable(int rows, int outputs, int inputs, int group, const float *x, int ldx, const void *packed,
                             float *y, int ldy, edge_activation act, float alpha, float *scratch) {
    int panels = (outputs + PANEL - 1) / PANEL, groups = (inputs + group - 1) / group;
    const uint8_t *nib = packed;
    const float *sc = (const float *)(nib + (size_t)panels * inputs * Q4_NIBBLE_BYTES);
    const float *b = sc + (size_t)panels * groups * PANEL;
    for (int p = 0; p < panels; p++) {
        q4_widen_panel_portable(nib + (size_t)p * inputs * Q4_NIBBLE_BYTES, sc + (size_t)p * groups * PANEL, inputs, group, scratch);
        int n = outputs - p * PANEL < PANEL ? outputs - p * PANEL : PANEL;
        for (int m = 0; m < rows; m++) {
            const float *xr = x + (size_t)m * ldx;
            float acc[PANEL];
            for (int j = 0; j < PANEL; j++) acc[j] = b[(size_t)p * PANEL + j];
            for (int k = 0; k < inputs; k++) {
                float xv = xr[k];
                for (int j = 0; j < PANEL; j++) acc[j] += xv * scratch[(size_t)k * PANEL + j];
            }
            for (int j = 0; j < n; j++) y[(size_t)m * ldy + p * PANEL + j] = edge_activate_scalar(acc[j], act, alpha);
        }
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

// ---- AVX-512 ----------------------------------------------------------------------------------

#define T512 EDGE_T512

/// The activation and the masked stores of an MR × (NP·16) tile (`cols` real outputs from y).
static inline T512 __attribute__((always_inline)) void store512(const int MR, const int NP, __m512 acc[][2], float *y, int ldy, int cols,
                                                               edge_activation act, __m512 alpha) {
    for (int p = 0; p < NP; p++) {
        int n = cols - p * PANEL;
        if (n <= 0) break;
        __mmask16 mask = n >= PANEL ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
        for (int r = 0; r < MR; r++)
            _mm512_mask_storeu_ps(y + (size_t)r * ldy + p * PANEL, mask, edge_act512(acc[r][p], act, alpha));
    }
}

/// One MR × (NP·16) tile over the whole k range.
static inline T512 __attribute__((always_inline)) void tile512(
    const int MR, const int NP, int inputs, const float *x, int ldx, const float *w, size_t ks, const float *bias,
    float *y, int ldy, int cols, edge_activation act, __m512 alpha) {
    __m512 acc[8][2];
    for (int r = 0; r < MR; r++)
        for (int p = 0; p < NP; p++) acc[r][p] = _mm512_loadu_ps(bias + p * PANEL);
    for (int k = 0; k < inputs; k++) {
        __m512 w0 = _mm512_loadu_ps(w + (size_t)k * ks);
        __m512 w1 = NP > 1 ? _mm512_loadu_ps(w + (size_t)k * ks + PANEL) : w0;
        for (int r = 0; r < MR; r++) {
            __m512 xv = _mm512_set1_ps(x[(size_t)r * ldx + k]);
            acc[r][0] = _mm512_fmadd_ps(xv, w0, acc[r][0]);
            if (NP > 1) acc[r][1] = _mm512_fmadd_ps(xv, w1, acc[r][1]);
        }
    }
    store512(MR, NP, acc, y, ldy, cols, act, alpha);
}

/// Batch 1: four panels at a time, k unrolled by two with separate accumulators, so eight FMA
/// chains hide the FMA latency; the loop is bound by loading the weights.
static inline T512 __attribute__((always_inline)) void gemv512(
    const int NP, int inputs, const float *x, const float *w, const float *bias, float *y, int cols,
    edge_activation act, __m512 alpha) {
    __m512 a[4], b[4];
    for (int p = 0; p < NP; p++) { a[p] = _mm512_loadu_ps(bias + p * PANEL); b[p] = _mm512_setzero_ps(); }
    const size_t ks = (size_t)NP * PANEL;  // the group is one contiguous stream
    int k = 0;
    for (; k + 1 < inputs; k += 2) {
        __m512 x0 = _mm512_set1_ps(x[k]), x1 = _mm512_set1_ps(x[k + 1]);
        const float *wk = w + (size_t)k * ks;
        for (int p = 0; p < NP; p++) {
            a[p] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(wk + p * PANEL), a[p]);
            b[p] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(wk + ks + p * PANEL), b[p]);
        }
    }
    if (k < inputs) {
        __m512 x0 = _mm512_set1_ps(x[k]);
        for (int p = 0; p < NP; p++) a[p] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(w + (size_t)k * ks + p * PANEL), a[p]);
    }
    for (int p = 0; p < NP; p++) {
        int n = cols - p * PANEL;
        if (n <= 0) break;
        __mmask16 mask = n >= PANEL ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
        _mm512_mask_storeu_ps(y + p * PANEL, mask, edge_act512(_mm512_add_ps(a[p], b[p]), act, alpha));
    }
}

#define TILE512(MR, NP) \
    static T512 void tile512_##MR##_##NP(int K, const float *x, int ldx, const float *w, size_t ks, const float *b, \
                                         float *y, int ldy, int cols, edge_activation act, __m512 alpha) { \
        tile512(MR, NP, K, x, ldx, w, ks, b, y, ldy, cols, act, alpha); \
    }
TILE512(1, 1) TILE512(2, 1) TILE512(3, 1) TILE512(4, 1) TILE512(5, 1) TILE512(6, 1) TILE512(7, 1) TILE512(8, 1)
TILE512(1, 2) TILE512(2, 2) TILE512(3, 2) TILE512(4, 2) TILE512(5, 2) TILE512(6, 2) TILE512(7, 2) TILE512(8, 2)

typedef void (*tile512_fn)(int, const float *, int, const float *, size_t, const float *, float *, int, int,
                           edge_activation, __m512);

#define GEMV512(NP) \
    static T512 void gemv512_##NP(int K, const float *x, const float *w, const float *b, float *y, int cols, \
                                  edge_activation act, __m512 alpha) { \
        gemv512(NP, K, x, w, b, y, cols, act, alpha); \
    }
GEMV512(1) GEMV512(2) GEMV512(3) GEMV512(4)

static T512 void sgemm_avx512(int rows, int outputs, int inputs, const float *x, int ldx, const float *packed,
                              float *y, int ldy, edge_activation act, float alpha) {
    static const tile512_fn tiles[2][8] = {
        {tile512_1_1, tile512_2_1, tile512_3_1, tile512_4_1, tile512_5_1, tile512_6_1, tile512_7_1, tile512_8_1},
        {tile512_1_2, tile512_2_2, tile512_3_2, tile512_4_2, tile512_5_2, tile512_6_2, tile512_7_2, tile512_8_2},
    };
    int panels = (outputs + PANEL - 1) / PANEL;
    const float *bias = packed + (size_t)panels * PANEL * inputs;
    __m512 av = _mm512_set1_ps(alpha);
    if (rows == 1) {
        for (int p = 0; p < panels; p += GROUP) {
            int np = panels - p < GROUP ? panels - p : GROUP;
            const float *w = packed + (size_t)p * PANEL * inputs;
            int cols = outputs - p * PANEL;
            switch (np) {
            case 1: gemv512_1(inputs, x, w, bias + p * PANEL, y + p * PANEL, cols, act, av); break;
            case 2: gemv512_2(inputs, x, w, bias + p * PANEL, y + p * PANEL, cols, act, av); break;
            case 3: gemv512_3(inputs, x, w, bias + p * PANEL, y + p * PANEL, cols, act, av); break;
            default: gemv512_4(inputs, x, w, bias + p * PANEL, y + p * PANEL, cols, act, av); break;
            }
        }
        return;
    }
    for (int p = 0; p < panels; p += 2) {
        // Pairs never straddle a group: groups hold an even number of panels except the last.
        int np = panels - p >= 2 ? 2 : 1;
        int cols = outputs - p * PANEL;
        size_t ks;
        const float *w = panel_at(packed, panels, inputs, p, &ks);
        for (int m = 0; m < rows; m += 8) {
            int mr = rows - m < 8 ? rows - m : 8;
            tiles[np - 1][mr - 1](inputs, x + (size_t)m * ldx, ldx, w, ks, bias + p * PANEL, y + (size_t)m * ldy + p * PANEL,
                                  ldy, cols, act, av);
        }
    }
}

/// edge_conv_rows for FP32 samples `sample_stride` floats apart: each row's sample start.
static inline void conv_rows(int mr, size_t m, int pixels, int taps, const int32_t *table, const float *x, size_t sample_stride,
                             const float **xs, const int32_t **tab) {
    size_t sample[8];
    edge_conv_rows(mr, m, pixels, taps, table, sample, tab);
    // Not vectorised: a vector load of the scalar stores just made waits for them to reach the
    // cache (no store forwarding), and 64-bit products have no AVX-512F instruction.
#pragma clang loop vectorize(disable)
    for (int r = 0; r < mr; r++) xs[r] = x + sample[r] * sample_stride;
}

/// One MR × (NP·16) tile of a convolution on AVX-512: tile512's sums (from the bias, fused
/// multiply-adds in k order) with each row's taps read through the indirection table, as ctile256;
/// a tile of one row sums as gemv512 does.
static inline T512 __attribute__((always_inline)) void ctile512(
    const int MR, const int NP, int taps, int channels, const float *const *xs, const int32_t *const *tab, const float *pad,
    const float *w, size_t ks, const float *bias, float *y, int ldy, int cols, edge_activation act, __m512 alpha, int split) {
    __m512 acc[8][2];
    for (int r = 0; r < MR; r++)
        for (int p = 0; p < NP; p++) acc[r][p] = _mm512_loadu_ps(bias + p * PANEL);
    const float *wk = w;
    // `split` (MR = 1 only): one row (a single output pixel of a single sample) is what sgemm_avx512 hands to gemv512,
    // which sums even k from the bias and odd k from 0 and adds the two: the same here.
    __m512 odd[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    int k = 0;
    for (int t = 0; t < taps; t++) {
        const float *src[8];
        for (int r = 0; r < MR; r++) src[r] = tab[r][t] >= 0 ? xs[r] + tab[r][t] : pad;
        for (int c = 0; c < channels; c++, wk += ks, k++) {
            __m512 w0 = _mm512_loadu_ps(wk);
            __m512 w1 = NP > 1 ? _mm512_loadu_ps(wk + PANEL) : w0;
            if (MR == 1 && split && (k & 1)) {
                __m512 xv = _mm512_set1_ps(src[0][c]);
                odd[0] = _mm512_fmadd_ps(xv, w0, odd[0]);
                if (NP > 1) odd[1] = _mm512_fmadd_ps(xv, w1, odd[1]);
                continue;
            }
            for (int r = 0; r < MR; r++) {
                __m512 xv = _mm512_set1_ps(src[r][c]);
                acc[r][0] = _mm512_fmadd_ps(xv, w0, acc[r][0]);
                if (NP > 1) acc[r][1] = _mm512_fmadd_ps(xv, w1, acc[r][1]);
            }
        }
    }
    if (MR == 1 && split)
        for (int p = 0; p < NP; p++) acc[0][p] = _mm512_add_ps(acc[0][p], odd[p]);
    store512(MR, NP, acc, y, ldy, cols, act, alpha);
}

#define CTILE512(MR, NP) \
    static T512 void ctile512_##MR##_##NP(int taps, int channels, const float *const *xs, const int32_t *const *tab, \
                                          const float *pad, const float *w, size_t ks, const float *b, float *y, int ldy, int cols, \
                                          edge_activation act, __m512 alpha, int split) { \
        ctile512(MR, NP, taps, channels, xs, tab, pad, w, ks, b, y, ldy, cols, act, alpha, split); \
    }
CTILE512(1, 1) CTILE512(2, 1) CTILE512(3, 1) CTILE512(4, 1) CTILE512(5, 1) CTILE512(6, 1) CTILE512(7, 1) CTILE512(8, 1)
CTILE512(1, 2) CTILE512(2, 2) CTILE512(3, 2) CTILE512(4, 2) CTILE512(5, 2) CTILE512(6, 2) CTILE512(7, 2) CTILE512(8, 2)
typedef void (*ctile512_fn)(int, int, const float *const *, const int32_t *const *, const float *, const float *, size_t,
                            const float *, float *, int, int, edge_activation, __m512, int);

/// The convolution on AVX-512: sgemm_avx512's panel pairs and 8-row tiles (rows may span samples).
static T512 void sgemm_conv_avx512(int samples, int pixels, int taps, int channels, const int32_t *table, const float *x,
                                   size_t sample_stride, const float *pad, const float *packed, int outputs, float *y, int ldy,
                                   edge_activation act, float alpha) {
    static const ctile512_fn tiles[2][8] = {
        {ctile512_1_1, ctile512_2_1, ctile512_3_1, ctile512_4_1, ctile512_5_1, ctile512_6_1, ctile512_7_1, ctile512_8_1},
        {ctile512_1_2, ctile512_2_2, ctile512_3_2, ctile512_4_2, ctile512_5_2, ctile512_6_2, ctile512_7_2, ctile512_8_2},
    };
    int inputs = taps * channels, panels = (outputs + PANEL - 1) / PANEL;
    const float *bias = packed + (size_t)panels * PANEL * inputs;
    size_t rows = (size_t)samples * pixels;
    __m512 av = _mm512_set1_ps(alpha);
    for (int p = 0; p < panels; p += 2) {
        int np = panels - p >= 2 ? 2 : 1;  // pairs never straddle a group of four panels
        size_t ks;
        const float *w = panel_at(packed, panels, inputs, p, &ks);
        for (size_t m = 0; m < rows; m += 8) {
            int mr = rows - m < 8 ? (int)(rows - m) : 8;
            const float *xs[8];
            const int32_t *tab[8];
            conv_rows(mr, m, pixels, taps, table, x, sample_stride, xs, tab);
            tiles[np - 1][mr - 1](taps, channels, xs, tab, pad, w, ks, bias + p * PANEL, y + m * ldy + p * PANEL, ldy,
                                  outputs - p * PANEL, act, av, rows == 1);
        }
    }
}

// ---- AVX2 + FMA -------------------------------------------------------------------------------

#define T256 EDGE_T256

static inline T256 __attribute__((always_inline)) void store256(float *dst, __m256 v, int n) {
    if (n >= 8) { _mm256_storeu_ps(dst, v); return; }
    float tmp[8];
    _mm256_storeu_ps(tmp, v);
    for (int j = 0; j < n; j++) dst[j] = tmp[j];
}

/// Rows a tile holds: 6 × 16 outputs is 12 accumulators, two weight vectors and a broadcast (15 of
/// 16 registers); 12 FMAs a k for 8 loads, and 12 independent chains cover FMA's latency times
/// its pipes (4 × 2 on Zen 3, 5 × 2 on Skylake).
#define S_MR 6

/// The activation and the stores of an MR × 16 tile (`cols` real outputs from y).
static inline T256 __attribute__((always_inline)) void finish256(const int MR, const __m256 *lo, const __m256 *hi, float *y, int ldy,
                                                               int cols, edge_activation act, __m256 alpha) {
    int n = cols < PANEL ? cols : PANEL;
    for (int r = 0; r < MR; r++) {
        store256(y + (size_t)r * ldy, edge_act256(lo[r], act, alpha), n);
        if (n > 8) store256(y + (size_t)r * ldy + 8, edge_act256(hi[r], act, alpha), n - 8);
    }
}

/// One MR × 16 tile (one panel as two 8-wide halves).
static inline T256 __attribute__((always_inline)) void tile256(
    const int MR, int inputs, const float *x, int ldx, const float *w, size_t ks, const float *bias, float *y, int ldy,
    int cols, edge_activation act, __m256 alpha) {
    __m256 lo[S_MR], hi[S_MR];
    for (int r = 0; r < MR; r++) { lo[r] = _mm256_loadu_ps(bias); hi[r] = _mm256_loadu_ps(bias + 8); }
    for (int k = 0; k < inputs; k++) {
        __m256 w0 = _mm256_loadu_ps(w + (size_t)k * ks), w1 = _mm256_loadu_ps(w + (size_t)k * ks + 8);
        for (int r = 0; r < MR; r++) {
            __m256 xv = _mm256_broadcast_ss(x + (size_t)r * ldx + k);
            lo[r] = _mm256_fmadd_ps(xv, w0, lo[r]);
            hi[r] = _mm256_fmadd_ps(xv, w1, hi[r]);
        }
    }
    finish256(MR, lo, hi, y, ldy, cols, act, alpha);
}

/// One MR × 16 tile of a convolution: each row's taps read through the indirection table, the
/// same k order (tap, channel) and weights as tile256 over the im2row rows.
static inline T256 __attribute__((always_inline)) void ctile256(
    const int MR, int taps, int channels, const float *const *xs, const int32_t *const *tab, const float *pad, const float *w,
    size_t ks, const float *bias, float *y, int ldy, int cols, edge_activation act, __m256 alpha) {
    __m256 lo[S_MR], hi[S_MR];
    for (int r = 0; r < MR; r++) { lo[r] = _mm256_loadu_ps(bias); hi[r] = _mm256_loadu_ps(bias + 8); }
    const float *wk = w;
    for (int t = 0; t < taps; t++) {
        const float *p[S_MR];
        for (int r = 0; r < MR; r++) p[r] = tab[r][t] >= 0 ? xs[r] + tab[r][t] : pad;
        for (int c = 0; c < channels; c++, wk += ks) {
            __m256 w0 = _mm256_loadu_ps(wk), w1 = _mm256_loadu_ps(wk + 8);
            for (int r = 0; r < MR; r++) {
                __m256 xv = _mm256_broadcast_ss(p[r] + c);
                lo[r] = _mm256_fmadd_ps(xv, w0, lo[r]);
                hi[r] = _mm256_fmadd_ps(xv, w1, hi[r]);
            }
        }
    }
    finish256(MR, lo, hi, y, ldy, cols, act, alpha);
}

#define TILE256(MR) \
    static T256 void tile256_##MR(int K, const float *x, int ldx, const float *w, size_t ks, const float *b, float *y, \
                                  int ldy, int cols, edge_activation act, __m256 alpha) { \
        tile256(MR, K, x, ldx, w, ks, b, y, ldy, cols, act, alpha); \
    }
TILE256(1) TILE256(2) TILE256(3) TILE256(4) TILE256(5) TILE256(6)
typedef void (*tile256_fn)(int, const float *, int, const float *, size_t, const float *, float *, int, int,
                           edge_activation, __m256);

#define CTILE256(MR) \
    static T256 void ctile256_##MR(int taps, int channels, const float *const *xs, const int32_t *const *tab, const float *pad, \
                                   const float *w, size_t ks, const float *b, float *y, int ldy, int cols, edge_activation act, \
                                   __m256 alpha) { \
        ctile256(MR, taps, channels, xs, tab, pad, w, ks, b, y, ldy, cols, act, alpha); \
    }
CTILE256(1) CTILE256(2) CTILE256(3) CTILE256(4) CTILE256(5) CTILE256(6)
typedef void (*ctile256_fn)(int, int, const float *const *, const int32_t *const *, const float *, const float *, size_t,
                            const float *, float *, int, int, edge_activation, __m256);

/// The convolution on AVX2: panels outer (a panel's weights stay in L1 across the row tiles), then
/// S_MR output rows at a time, which may span samples.
static T256 void sgemm_conv_avx2(int samples, int pixels, int taps, int channels, const int32_t *table, const float *x,
                                 size_t sample_stride, const float *pad, const float *packed, int outputs, float *y, int ldy,
                                 edge_activation act, float alpha) {
    static const ctile256_fn tiles[S_MR] = {ctile256_1, ctile256_2, ctile256_3, ctile256_4, ctile256_5, ctile256_6};
    int inputs = taps * channels, panels = (outputs + PANEL - 1) / PANEL;
    const float *bias = packed + (size_t)panels * PANEL * inputs;
    size_t rows = (size_t)samples * pixels;
    __m256 av = _mm256_set1_ps(alpha);
    for (int p = 0; p < panels; p++) {
        size_t ks;
        const float *w = panel_at(packed, panels, inputs, p, &ks);
        for (size_t m = 0; m < rows; m += S_MR) {
            int mr = rows - m < S_MR ? (int)(rows - m) : S_MR;
            const float *xs[S_MR];
            const int32_t *tab[S_MR];
            conv_rows(mr, m, pixels, taps, table, x, sample_stride, xs, tab);
            tiles[mr - 1](taps, channels, xs, tab, pad, w, ks, bias + p * PANEL, y + m * ldy + p * PANEL, ldy, outputs - p * PANEL,
                          act, av);
        }
    }
}

/// Every row of one 16-output panel, S_MR rows at a time (`y` at the panel's first column).
static T256 void panel256(int rows, int inputs, const float *x, int ldx, const float *w, size_t ks, const float *bias, float *y,
                          int ldy, int cols, edge_activation act, __m256 av) {
    static const tile256_fn tiles[S_MR] = {tile256_1, tile256_2, tile256_3, tile256_4, tile256_5, tile256_6};
    for (int m = 0; m < rows; m += S_MR) {
        int mr = rows - m < S_MR ? rows - m : S_MR;
        tiles[mr - 1](inputs, x + (size_t)m * ldx, ldx, w, ks, bias, y + (size_t)m * ldy, ldy, cols, act, av);
    }
}

static T256 void sgemm_avx2(int rows, int outputs, int inputs, const float *x, int ldx, const float *packed,
                            float *y, int ldy, edge_activation act, float alpha) {
    int panels = (outputs + PANEL - 1) / PANEL;
    const float *bias = packed + (size_t)panels * PANEL * inputs;
    __m256 av = _mm256_set1_ps(alpha);
    for (int p = 0; p < panels; p++) {
        size_t ks;
        const float *w = panel_at(packed, panels, inputs, p, &ks);
        int cols = outputs - p * PANEL;
        panel256(rows, inputs, x, ldx, w, ks, bias + p * PANEL, y + p * PANEL, ldy, cols, act, av);
    }
}

// ---- INT4 on AVX2: integer arithmetic (W4A16) -------------------------------------------------
//
// A block of up to Q4_ROWS rows is quantized once per call to int16, symmetric per row (scale
// max|x| / 32767, round half to even). Each panel's nibbles are widened into `scratch` as int16
// in k-pairs (the INT8 kernel's layout), and vpmaddwd multiplies int16 activations by int16
// weights into INT32 sums, one group at a time: |sum| <= 256 · 32767 · 8 < 2^31 for a group of at
// most 256 inputs. After each group the sums are converted and multiplied by the group's 16
// scales into FP32 accumulators; at the end by the row's scale, plus the bias, then the activation.
// A row with a non-finite value has no scale: its outputs are NaN.

#define Q4_ROWS 64
#define Q4_MR 6

/// Rows [0, mb) of x quantized to int16 (rows `inputs` apart) and their scales: 0 for a row of
/// zeros, NaN for a row holding an infinity or a NaN (its values are not used).
static T256 void q4_quantize_rows(int mb, int inputs, const float *x, int ldx, int16_t *xq, float *rs) {
    __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), fmax = _mm256_set1_ps(3.4028235e38f);
    for (int r = 0; r < mb; r++) {
        const float *xr = x + (size_t)r * ldx;
        __m256 mv = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        int k = 0;
        for (; k + 8 <= inputs; k += 8) {
            __m256 v = _mm256_and_ps(_mm256_loadu_ps(xr + k), absmask);
            mv = _mm256_max_ps(mv, v);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, fmax, _CMP_NLE_UQ));  // NaN or infinity
        }
        float m[8], amax = 0.0f;
        _mm256_storeu_ps(m, mv);
        for (int j = 0; j < 8; j++) amax = m[j] > amax ? m[j] : amax;
        int finite = !_mm256_movemask_ps(bad);
        for (; k < inputs; k++) {
            float a = xr[k] < 0 ? -xr[k] : xr[k];
            if (!(a <= 3.4028235e38f)) finite = 0;
            else if (a > amax) amax = a;
        }
        int16_t *q = xq + (size_t)r * inputs;
        if (!finite || amax == 0.0f) {
            memset(q, 0, (size_t)inputs * sizeof(int16_t));
            rs[r] = finite ? 0.0f : __builtin_nanf("");
            continue;
        }
        // Below 2^-100, 32767 / amax would overflow: such a row is scaled up by 2^64 first (exact).
        float pre = amax < 0x1p-100f ? 0x1p64f : 1.0f;
        float inv = 32767.0f / (amax * pre);
        rs[r] = amax / 32767.0f;
        __m256 vi = _mm256_set1_ps(inv), vp = _mm256_set1_ps(pre);
        for (k = 0; k + 16 <= inputs; k += 16) {
            // |x · inv| <= 32767 up to rounding, which the saturating pack absorbs.
            __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + k), vp), vi));
            __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + k + 8), vp), vi));
            _mm256_storeu_si256((__m256i *)(q + k), _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8));
        }
        for (; k < inputs; k++) {
            float v = nearbyintf(xr[k] * pre * inv);
            q[k] = (int16_t)(v > 32767.0f ? 32767 : (v < -32767.0f ? -32767 : v));
        }
    }
}

/// A panel's nibbles as int16 in k-pairs: per pair (k, k+1), 16 values for outputs 0..7 then
/// 16 for outputs 8..15, each output's two weights adjacent (what vpmaddwd pairs).
static T256 void q4_widen_panel_i16(const uint8_t *nib, int inputs, int16_t *dst) {
    __m128i mask = _mm_set1_epi8(15);
    __m256i eight = _mm256_set1_epi16(8);
    for (int k = 0; k < inputs; k += 2) {
        __m128i b0 = _mm_loadl_epi64((const __m128i *)(nib + (size_t)k * Q4_NIBBLE_BYTES));
        __m128i b1 = _mm_loadl_epi64((const __m128i *)(nib + (size_t)(k + 1) * Q4_NIBBLE_BYTES));
        __m128i v0 = _mm_unpacklo_epi8(_mm_and_si128(b0, mask), _mm_and_si128(_mm_srli_epi16(b0, 4), mask));  // k: outputs 0..15
        __m128i v1 = _mm_unpacklo_epi8(_mm_and_si128(b1, mask), _mm_and_si128(_mm_srli_epi16(b1, 4), mask));  // k + 1
        __m256i lo = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v0, v1)), eight);  // outputs 0..7
        __m256i hi = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_unpackhi_epi8(v0, v1)), eight);  // outputs 8..15
        _mm256_storeu_si256((__m256i *)(dst + (size_t)k * PANEL), lo);
        _mm256_storeu_si256((__m256i *)(dst + (size_t)k * PANEL + 16), hi);
    }
}

/// MR rows × one panel: INT32 sums per group, FP32 across groups.
static inline T256 __attribute__((always_inline)) void q4_tile_i16(const int MR, int inputs, int group, const int16_t *xq,
                                                                  const float *rs, const int16_t *w, const float *sc,
                                                                  const float *bias, float *y, int ldy, int cols,
                                                                  edge_activation act, __m256 alpha) {
    __m256 f[Q4_MR][2];
    for (int r = 0; r < MR; r++) f[r][0] = f[r][1] = _mm256_setzero_ps();
    for (int k0 = 0, g = 0; k0 < inputs; k0 += group, g++) {
        int k1 = k0 + group < inputs ? k0 + group : inputs;
        __m256i a[Q4_MR][2];
        for (int r = 0; r < MR; r++) a[r][0] = a[r][1] = _mm256_setzero_si256();
        for (int k = k0; k < k1; k += 2) {
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + (size_t)k * PANEL));
            __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + (size_t)k * PANEL + 16));
            for (int r = 0; r < MR; r++) {
                int32_t pair;
                memcpy(&pair, xq + (size_t)r * inputs + k, 4);
                __m256i xv = _mm256_set1_epi32(pair);
                a[r][0] = _mm256_add_epi32(a[r][0], _mm256_madd_epi16(w0, xv));
                a[r][1] = _mm256_add_epi32(a[r][1], _mm256_madd_epi16(w1, xv));
            }
        }
        __m256 s0 = _mm256_loadu_ps(sc + (size_t)g * PANEL), s1 = _mm256_loadu_ps(sc + (size_t)g * PANEL + 8);
        for (int r = 0; r < MR; r++) {
            f[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[r][0]), s0, f[r][0]);
            f[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[r][1]), s1, f[r][1]);
        }
    }
    __m256 b0 = _mm256_loadu_ps(bias), b1 = _mm256_loadu_ps(bias + 8);
    int n = cols < PANEL ? cols : PANEL;
    for (int r = 0; r < MR; r++) {
        __m256 s = _mm256_set1_ps(rs[r]);
        store256(y + (size_t)r * ldy, edge_act256(_mm256_fmadd_ps(f[r][0], s, b0), act, alpha), n);
        if (n > 8) store256(y + (size_t)r * ldy + 8, edge_act256(_mm256_fmadd_ps(f[r][1], s, b1), act, alpha), n - 8);
    }
}

#define Q4TILE(MR) \
    static T256 void q4_tile_##MR(int K, int G, const int16_t *xq, const float *rs, const int16_t *w, const float *sc, \
                                  const float *b, float *y, int ldy, int cols, edge_activation act, __m256 alpha) { \
        q4_tile_i16(MR, K, G, xq, rs, w, sc, b, y, ldy, cols, act, alpha); \
    }
Q4TILE(1) Q4TILE(2) Q4TILE(3) Q4TILE(4) Q4TILE(5) Q4TILE(6)
typedef void (*q4_tile_fn)(int, int, const int16_t *, const float *, const int16_t *, const float *, const float *, float *, int,
                           int, edge_activation, __m256);

static T256 void q4_gemm_avx2(int rows, int outputs, int inputs, int group, const float *x, int ldx, const void *packed,
                              float *y, int ldy, edge_activation act, float alpha, void *scratch) {
    static const q4_tile_fn tiles[Q4_MR] = {q4_tile_1, q4_tile_2, q4_tile_3, q4_tile_4, q4_tile_5, q4_tile_6};
    int panels = (outputs + PANEL - 1) / PANEL, groups = (inputs + group - 1) / group;
    const uint8_t *nib = packed;
    const float *sc = (const float *)(nib + (size_t)panels * inputs * Q4_NIBBLE_BYTES);
    const float *bias = sc + (size_t)panels * groups * PANEL;
    int16_t *wq = scratch;                                       // one panel: inputs · 16 int16
    int16_t *xq = wq + (size_t)inputs * PANEL;                    // Q4_ROWS rows of inputs int16
    float *rs = (float *)(xq + (size_t)Q4_ROWS * inputs);         // their scales
    __m256 av = _mm256_set1_ps(alpha);
    for (int m0 = 0; m0 < rows; m0 += Q4_ROWS) {
        int mb = rows - m0 < Q4_ROWS ? rows - m0 : Q4_ROWS;
        q4_quantize_rows(mb, inputs, x + (size_t)m0 * ldx, ldx, xq, rs);
        for (int p = 0; p < panels; p++) {
            q4_widen_panel_i16(nib + (size_t)p * inputs * Q4_NIBBLE_BYTES, inputs, wq);
            for (int m = 0; m < mb; m += Q4_MR) {
                int mr = mb - m < Q4_MR ? mb - m : Q4_MR;
                tiles[mr - 1](inputs, group, xq + (size_t)m * inputs, rs + m, wq, sc + (size_t)p * groups * PANEL,
                              bias + (size_t)p * PANEL, y + (size_t)(m0 + m) * ldy + (size_t)p * PANEL, ldy, outputs - p * PANEL,
                              act, av);
            }
        }
    }
}

// ---- INT4 on AVX-512 VNNI: integer arithmetic (W4A8) ------------------------------------------
//
// vpdpbusd multiplies UINT8 by INT8 four at a time, 64 products an instruction: with the weights
// as INT8 (−8…7) and the activations as UINT8, INT4 runs at the INT8 kernel's rate. Rows already
// UINT8 with one calibrated scale and zero point (q4_gemm_vnni_u8, a plan's static activations)
// go straight to the tiles; otherwise a block of up to Q4_ROWS FP32 rows is quantized to UINT8,
// asymmetric per row over a range that holds 0 (scale s = (hi − lo)/255, zero point
// z = round(−lo/s), as ONNX Runtime's dynamic quantization). Each panel's nibbles are unpacked
// into `scratch` as INT8 k-quads. A group is
// padded to whole quads (a group of 2, 6, … gets zero weights), so per group the sums are exact
// INT32, then converted and multiplied by the group's 16 scales into FP32 accumulators. The zero
// point comes off at the end: Σ_g sc_g·Σ_k (u_k − z)·q_k = F − z·C with C = Σ_g sc_g·Σ_k q_k,
// computed at pack time. y = (F − z·C)·s + bias, then the activation. A row with a non-finite
// value has s = NaN: its outputs are NaN (before the activation). 8-bit activations add an error
// of about s/2 per input (a value at the end of the range, clamped to 255, up to s), against the
// INT4 weights' step of a sixteenth of their range. EDGE_ISA=avx512 (no VNNI) runs W4A16.

#define TQ4V EDGE_TVNNI
// Rows a tile: 6 over two panels, 12 over one (a single panel's 6 would leave vpdpbusd waiting
// on its own latency); with the FP32 sums, 24 or 27 registers.
#define Q4V_MR 6
#define Q4V_MR1 12

/// Dword 4i + j from dword 4j + i: a 4×4 transpose of a vector's dwords (its own inverse).
#define Q4V_TRANSPOSE4X4 _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15)

/// Lane r: the maximum (max = 1) or the minimum of v[r]'s 16 lanes. A tree of 128-bit block,
/// then lane, shuffles leaves row 4t + j in lane 4j + t; a permutation puts it in lane 4t + j.
static inline TQ4V __attribute__((always_inline)) __m512 q4v_reduce16(const __m512 v[16], const int max) {
#define Q4V_OP(a, b) (max ? _mm512_max_ps((a), (b)) : _mm512_min_ps((a), (b)))
    __m512 w1[8], w2[4], w3[2];
    for (int i = 0; i < 8; i++)  // blocks: v[2i]'s halves folded, v[2i+1]'s halves folded
        w1[i] = Q4V_OP(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)  // block j: row 4i + j's four lanes
        w2[i] = Q4V_OP(_mm512_shuffle_f32x4(w1[2 * i], w1[2 * i + 1], 0x88), _mm512_shuffle_f32x4(w1[2 * i], w1[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)  // block j: rows 8i + j and 8i + 4 + j, two lanes each
        w3[i] = Q4V_OP(_mm512_unpacklo_ps(w2[2 * i], w2[2 * i + 1]), _mm512_unpackhi_ps(w2[2 * i], w2[2 * i + 1]));
    __m512 w = Q4V_OP(_mm512_shuffle_ps(w3[0], w3[1], 0x44), _mm512_shuffle_ps(w3[0], w3[1], 0xEE));  // lane 4j + t: row 4t + j
#undef Q4V_OP
    return _mm512_permutexvar_ps(Q4V_TRANSPOSE4X4, w);
}

/// Rows [0, mb) quantized to UINT8 in the padded layout (rows kp apart, padding 0), with each
/// row's scale s (NaN for a non-finite row, 0 for a row of zeros), zero point z as a float, and
/// the pre-scale and 1/s the values are multiplied by (1/s = 0: a row not quantized). 16 rows at
/// a time, in three passes, so that no row waits on another's reductions and divisions and the
/// rows are still in L1 for the last: the ranges; the steps and zero points, a vector; the values.
static TQ4V void q4v_quantize_16(int mb, int inputs, int group, int kp, const float *x, int ldx, uint8_t *xq, float *rs, float *rz,
                                 float *rpre, float *rinv);
static TQ4V void q4v_quantize_rows(int mb, int inputs, int group, int kp, const float *x, int ldx, uint8_t *xq, float *rs, float *rz,
                                   float *rpre, float *rinv) {
    for (int r = 0; r < mb; r += 16)
        q4v_quantize_16(mb - r < 16 ? mb - r : 16, inputs, group, kp, x + (size_t)r * ldx, ldx, xq + (size_t)r * kp, rs + r, rz + r, rpre + r,
                        rinv + r);
}

static TQ4V void q4v_quantize_16(int mb, int inputs, int group, int kp, const float *x, int ldx, uint8_t *xq, float *rs, float *rz,
                                 float *rpre, float *rinv) {
    __m512 los[16], his[16];
    __mmask16 bads = 0;
    for (int r = 0; r < 16; r++) los[r] = his[r] = _mm512_setzero_ps();
    for (int r = 0; r < mb; r++) {  // the ranges, 16 lanes a row
        const float *xr = x + (size_t)r * ldx;
        __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
        __mmask16 bad = 0;
        int k = 0;
        if (inputs >= 64) {  // four chains of min and max: one would wait on their latency
            __m512 l4[4], h4[4];
            for (int t = 0; t < 4; t++) l4[t] = h4[t] = lo;
            for (; k + 64 <= inputs; k += 64)
                for (int t = 0; t < 4; t++) {
                    __m512 v = _mm512_loadu_ps(xr + k + 16 * t);
                    l4[t] = _mm512_min_ps(l4[t], v);
                    h4[t] = _mm512_max_ps(h4[t], v);
                    bad |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);  // NaN (an infinity shows in the range)
                }
            lo = _mm512_min_ps(_mm512_min_ps(l4[0], l4[1]), _mm512_min_ps(l4[2], l4[3]));
            hi = _mm512_max_ps(_mm512_max_ps(h4[0], h4[1]), _mm512_max_ps(h4[2], h4[3]));
        }
        for (; k + 16 <= inputs; k += 16) {
            __m512 v = _mm512_loadu_ps(xr + k);
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
            bad |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        }
        if (k < inputs) {
            __mmask16 m = (__mmask16)((1u << (inputs - k)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(m, xr + k);
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
            bad |= _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q);
        }
        los[r] = lo;
        his[r] = hi;
        bads |= (__mmask16)((bad != 0) << r);
    }
    const __m512 v0 = _mm512_setzero_ps(), v255 = _mm512_set1_ps(255.0f), one = _mm512_set1_ps(1.0f);
    {  // s = h·pre/255 − l·pre/255 (two quotients: h − l may overflow), z = round(−l·pre·(1/s)); lane r is row r
        __mmask16 m = (__mmask16)((1u << mb) - 1);
        __m512 h = q4v_reduce16(his, 1), l = q4v_reduce16(los, 0), inf = _mm512_set1_ps(__builtin_inff());
        __mmask16 bad = bads | _mm512_cmp_ps_mask(h, inf, _CMP_EQ_OQ) | _mm512_cmp_ps_mask(l, _mm512_sub_ps(_mm512_setzero_ps(), inf), _CMP_EQ_OQ);
        h = _mm512_mask_blend_ps(bad, h, _mm512_set1_ps(__builtin_nanf("")));
        __mmask16 flat = _mm512_cmp_ps_mask(h, l, _CMP_EQ_OQ);
        // Below 2^-100, 255 / (h − l) would overflow: such a row is scaled up by 2^64 first (exact).
        __m512 pre = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(_mm512_sub_ps(h, l), _mm512_set1_ps(0x1p-100f), _CMP_LT_OQ), one,
                                          _mm512_set1_ps(0x1p64f));
        __m512 step = _mm512_sub_ps(_mm512_div_ps(_mm512_mul_ps(h, pre), v255), _mm512_div_ps(_mm512_mul_ps(l, pre), v255));
        __m512 inv = _mm512_div_ps(one, step);
        __m512 z = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(l), _mm512_set1_epi32(INT32_MIN))), pre), inv),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        z = _mm512_maskz_mov_ps((__mmask16)~(bad | flat), _mm512_min_ps(_mm512_max_ps(z, v0), v255));
        __m512 s = _mm512_maskz_mov_ps((__mmask16)~flat, _mm512_div_ps(step, pre));  // NaN stays NaN, a row of zeros 0
        _mm512_mask_storeu_ps(rs, m, s);
        _mm512_mask_storeu_ps(rz, m, z);
        _mm512_mask_storeu_ps(rpre, m, pre);
        _mm512_mask_storeu_ps(rinv, m, _mm512_maskz_mov_ps((__mmask16)~(bad | flat), inv));
    }
    int packed = group % 4 == 0;  // no group padding: a row is its inputs, then zeros to kp
    const __m512i lanes = Q4V_TRANSPOSE4X4;
    for (int r = 0; r < mb; r++) {
        const float *xr = x + (size_t)r * ldx;
        uint8_t *q = xq + (size_t)r * kp;
        if (rinv[r] == 0) {  // a row of zeros, or a non-finite one
            memset(q, 0, (size_t)kp);
            continue;
        }
        __m512 vp = _mm512_set1_ps(rpre[r]), vi = _mm512_set1_ps(rinv[r]);
        __m512i vz = _mm512_set1_epi32((int)rz[r]), i0 = _mm512_setzero_si512();
        // round half to even (MXCSR) of x·pre·(1/s), + z, clamped to 0…255 (vpmovusdb saturates above).
#define Q4V_VALUES(v) _mm512_max_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_mul_ps((v), vp), vi)), vz), i0)
        if (packed) {
            int k = 0;
            if (rpre[r] == 1) {  // (x·1)·(1/s) = x·(1/s), 64 values at a time: |x/s| ≤ 256 packs to int16 exactly, + z there, then 0…255 by saturation
                __m512i vz16 = _mm512_set1_epi16((short)rz[r]);
                for (; k + 64 <= inputs; k += 64) {
                    __m512i v[4];
                    for (int t = 0; t < 4; t++) v[t] = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xr + k + 16 * t), vi));
                    __m512i lo = _mm512_add_epi16(_mm512_packs_epi32(v[0], v[1]), vz16), hi = _mm512_add_epi16(_mm512_packs_epi32(v[2], v[3]), vz16);
                    __m512i b = _mm512_packus_epi16(lo, hi);
                    _mm512_storeu_si512(q + k, _mm512_permutexvar_epi32(lanes, b));  // lane L held v[t]'s values 4L…4L+3 at dword 4L + t
                }
            }
            for (; k + 16 <= inputs; k += 16) _mm512_mask_cvtusepi32_storeu_epi8(q + k, 0xFFFF, Q4V_VALUES(_mm512_loadu_ps(xr + k)));
            if (k < kp) {  // the tail, and the zeros after it to the last quad's end (kp − k ≤ 16)
                __mmask16 in = (__mmask16)((1u << (inputs - k)) - 1), out = (__mmask16)((1u << (kp - k)) - 1);
                _mm512_mask_cvtusepi32_storeu_epi8(q + k, out, _mm512_maskz_mov_epi32(in, Q4V_VALUES(_mm512_maskz_loadu_ps(in, xr + k))));
            }
            continue;
        }
        int o = 0;
        for (int k0 = 0; k0 < inputs; k0 += group) {
            int len = inputs - k0 < group ? inputs - k0 : group, padded = (len + 3) & ~3;
            for (int k = 0; k < padded; k += 16) {
                int n = padded - k < 16 ? padded - k : 16, real = len - k;
                __mmask16 store = (__mmask16)((1u << n) - 1);
                __mmask16 load = real >= 16 ? (__mmask16)0xFFFF : (real > 0 ? (__mmask16)((1u << real) - 1) : 0);
                __m512i v = _mm512_maskz_mov_epi32(load, Q4V_VALUES(_mm512_maskz_loadu_ps(load, xr + k0 + k)));
                _mm512_mask_cvtusepi32_storeu_epi8(q + o + k, store, v);
            }
            o += padded;
        }
#undef Q4V_VALUES
    }
}

/// One panel's `quads` k-quads as INT8 ([quad][16 outputs][4]): two quads from each 64 bytes,
/// the low nibbles and the high, − 8.
static TQ4V void q4v_unpack_panel(const uint8_t *nib, int quads, int8_t *dst) {
    const __m512i low = _mm512_set1_epi8(15), eight = _mm512_set1_epi8(8);
    for (int qd = 0; qd < quads; qd += 2, nib += 64, dst += 128) {
        __m512i v = _mm512_loadu_si512(nib);
        _mm512_storeu_si512(dst, _mm512_sub_epi8(_mm512_and_si512(v, low), eight));
        if (qd + 1 < quads) _mm512_storeu_si512(dst + 64, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 4), low), eight));
    }
}

/// UINT8 output rows (ldy apart) from the tile's FP32 results: the activation, then as
/// edge_quantize_u8: round half to even of v·(1/scale), + zero point, clamped to 0…255 (NaN to 0);
/// a row's panels through one edge_quantize512x2, or (a zero point outside 0…255, which plans do
/// not produce) a panel at a time through edge_quantize512.
static inline TQ4V __attribute__((always_inline)) void q4v_store_u8(const int MR, const int NP, __m512 f[][2], const q4v_output *out,
                                                                   int cols, edge_activation act, __m512 alpha) {
    const __m512 vi = _mm512_set1_ps(out->inv_scale);
    if ((uint32_t)out->zero_point <= 255) {  // a row's panels through one edge_quantize512x2, as the INT8 tiles
        int n = NP * PANEL < cols ? NP * PANEL : cols;
        __mmask32 mask = n >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << n) - 1);
        __m512i z16 = _mm512_set1_epi16((short)out->zero_point), lo = _mm512_setzero_si512(), hi = _mm512_set1_epi8((char)255);
        for (int r = 0; r < MR; r++) {
            __m512 a = _mm512_mul_ps(edge_act512(f[r][0], act, alpha), vi);
            __m512 b = NP > 1 ? _mm512_mul_ps(edge_act512(f[r][1], act, alpha), vi) : a;
            _mm256_mask_storeu_epi8(out->yu + (size_t)r * out->ldy, mask, edge_quantize512x2(a, b, z16, lo, hi));
        }
        return;
    }
    const __m512i z = _mm512_set1_epi32(out->zero_point), q0 = _mm512_setzero_si512(), q255 = _mm512_set1_epi32(255);
    for (int p = 0; p < NP; p++) {
        int n = cols - p * PANEL;
        if (n <= 0) break;
        __mmask16 mask = n >= PANEL ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
        for (int r = 0; r < MR; r++)
            _mm512_mask_cvtepi32_storeu_epi8(out->yu + (size_t)r * out->ldy + p * PANEL, mask,
                                             edge_quantize512(_mm512_mul_ps(edge_act512(f[r][p], act, alpha), vi), z, q0, q255));
    }
}

/// MR rows × NP panels (NP·16 outputs from the tile's first) over every group; FP32 into y, or
/// UINT8 where out->y is set (y then unused).
static inline TQ4V __attribute__((always_inline)) void q4v_tile(const int MR, const int NP, int inputs, int group, int kp,
                                                               const uint8_t *xq, const float *rs, const float *rz,
                                                               const int8_t *w, size_t wstride, const float *sc, size_t scstride,
                                                               const float *csum, const float *bias, const q4v_output *out, int cols,
                                                               edge_activation act, __m512 alpha) {
    __m512 f[Q4V_MR1][2];
    for (int r = 0; r < MR; r++) f[r][0] = f[r][1] = _mm512_setzero_ps();
    int qk = 0;  // quads done
    for (int k0 = 0, g = 0; k0 < inputs; k0 += group, g++) {
        int len = inputs - k0 < group ? inputs - k0 : group, quads = (len + 3) / 4;
        __m512i a[Q4V_MR1][2];
        for (int r = 0; r < MR; r++) a[r][0] = a[r][1] = _mm512_setzero_si512();
        edge_vnni_quads(MR, NP, qk, qk + quads, xq, (size_t)kp, w, wstride, a);
        qk += quads;
        __m512 s0 = _mm512_loadu_ps(sc + (size_t)g * PANEL);
        __m512 s1 = NP > 1 ? _mm512_loadu_ps(sc + scstride + (size_t)g * PANEL) : s0;
        for (int r = 0; r < MR; r++) {
            f[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[r][0]), s0, f[r][0]);
            if (NP > 1) f[r][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[r][1]), s1, f[r][1]);
        }
    }
    for (int p = 0; p < NP; p++) {  // NP = 2 only where the second panel exists: its C and biases are there
        __m512 c = _mm512_loadu_ps(csum + p * PANEL), b = _mm512_loadu_ps(bias + p * PANEL);
        for (int r = 0; r < MR; r++) {
            __m512 t = _mm512_fnmadd_ps(_mm512_set1_ps(rz[r]), c, f[r][p]);  // F − z·C
            f[r][p] = _mm512_fmadd_ps(t, _mm512_set1_ps(rs[r]), b);
        }
    }
    if (out->yf)
        store512(MR, NP, f, out->yf, out->ldy, cols, act, alpha);
    else
        q4v_store_u8(MR, NP, f, out, cols, act, alpha);
}

#define Q4VTILE(MR, NP) \
    static TQ4V void q4v_tile_##MR##_##NP(int K, int G, int kp, const uint8_t *xq, const float *rs, const float *rz, const int8_t *w, \
                                          size_t ws, const float *sc, size_t ss, const float *cs, const float *b, \
                                          const q4v_output *out, int cols, edge_activation act, __m512 alpha) { \
        q4v_tile(MR, NP, K, G, kp, xq, rs, rz, w, ws, sc, ss, cs, b, out, cols, act, alpha); \
    }
Q4VTILE(1, 1) Q4VTILE(2, 1) Q4VTILE(3, 1) Q4VTILE(4, 1) Q4VTILE(5, 1) Q4VTILE(6, 1)
Q4VTILE(7, 1) Q4VTILE(8, 1) Q4VTILE(9, 1) Q4VTILE(10, 1) Q4VTILE(11, 1) Q4VTILE(12, 1)
Q4VTILE(1, 2) Q4VTILE(2, 2) Q4VTILE(3, 2) Q4VTILE(4, 2) Q4VTILE(5, 2) Q4VTILE(6, 2)
typedef void (*q4v_tile_fn)(int, int, int, const uint8_t *, const float *, const float *, const int8_t *, size_t, const float *,
                            size_t, const float *, const float *, const q4v_output *, int, edge_activation, __m512);
static const q4v_tile_fn q4v_tiles[2][Q4V_MR1] = {
    {q4v_tile_1_1, q4v_tile_2_1, q4v_tile_3_1, q4v_tile_4_1, q4v_tile_5_1, q4v_tile_6_1, q4v_tile_7_1, q4v_tile_8_1, q4v_tile_9_1,
     q4v_tile_10_1, q4v_tile_11_1, q4v_tile_12_1},
    {q4v_tile_1_2, q4v_tile_2_2, q4v_tile_3_2, q4v_tile_4_2, q4v_tile_5_2, q4v_tile_6_2},
};

/// The packed weights' parts: nibbles, scales, biases, column sums; and the sizes the tiles step by.
typedef struct {
    const uint8_t *nib;
    const float *sc, *bias, *cs;
    int panels, kp;
    size_t pn, ws, ss;
} q4v_parts;

static q4v_parts q4v_split(const void *packed, int outputs, int inputs, int group) {
    q4v_parts w;
    int groups = (inputs + group - 1) / group;
    w.panels = (outputs + PANEL - 1) / PANEL;
    w.kp = q4v_padded(inputs, group);
    w.pn = q4_panel_nibbles(1, inputs, group);
    w.nib = packed;
    w.sc = (const float *)(w.nib + (size_t)w.panels * w.pn);
    w.bias = w.sc + (size_t)w.panels * groups * PANEL;
    w.cs = w.bias + (size_t)w.panels * PANEL;
    w.ws = (size_t)w.kp * PANEL;
    w.ss = (size_t)groups * PANEL;
    return w;
}

/// The same output from row m and output column o on.
static inline q4v_output q4v_at(const q4v_output *out, size_t m, size_t o) {
    size_t at = m * (size_t)out->ldy + o;
    q4v_output r = {out->yf ? out->yf + at : NULL, out->yf ? NULL : out->yu + at, out->inv_scale, out->zero_point, out->ldy};
    return r;
}

/// Rows [0, mb) of UINT8 xq (ldq apart) through panels p and p + 1 (when there), unpacked into wq;
/// row m's scale and zero point are rs[m] and rz[m], or (shared) the first Q4V_MR1 of each for all.
static TQ4V void q4v_panels(const q4v_parts *w, int p, int mb, int inputs, int group, int outputs, const uint8_t *xq, int ldq,
                            const float *rs, const float *rz, int shared, int8_t *wq, const q4v_output *out, edge_activation act,
                            __m512 av) {
    int np = w->panels - p >= 2 ? 2 : 1;
    for (int i = 0; i < np; i++) q4v_unpack_panel(w->nib + (size_t)(p + i) * w->pn, w->kp / 4, wq + i * w->ws);
    int most = np == 2 ? Q4V_MR : Q4V_MR1;
    for (int m = 0; m < mb; m += most) {
        int mr = mb - m < most ? mb - m : most;
        q4v_output o = q4v_at(out, (size_t)m, (size_t)p * PANEL);
        int rm = shared ? 0 : m;
        q4v_tiles[np - 1][mr - 1](inputs, group, ldq, xq + (size_t)m * ldq, rs + rm, rz + rm, wq, w->ws, w->sc + (size_t)p * w->ss, w->ss,
                                  w->cs + (size_t)p * PANEL, w->bias + (size_t)p * PANEL, &o, outputs - p * PANEL, act, av);
    }
}

/// Scratch (bytes): two panels unpacked (2·kp·16), Q4_ROWS rows (Q4_ROWS·kp)
/// and their scales, zero points, pre-scales and reciprocals (4·Q4_ROWS floats); kp ≤ 2·inputs.
static TQ4V void q4_gemm_vnni(int rows, int outputs, int inputs, int group, const float *x, int ldx, const void *packed,
                              float *y, int ldy, edge_activation act, float alpha, void *scratch) {
    q4v_parts w = q4v_split(packed, outputs, inputs, group);
    float *rs = scratch, *rz = rs + Q4_ROWS, *rpre = rz + Q4_ROWS, *rinv = rpre + Q4_ROWS;
    int8_t *wq = (int8_t *)(rinv + Q4_ROWS);                      // 2 panels: kp · 16 bytes each
    uint8_t *xq = (uint8_t *)(wq + (size_t)2 * w.kp * PANEL);     // Q4_ROWS rows of kp bytes
    __m512 av = _mm512_set1_ps(alpha);
    for (int m0 = 0; m0 < rows; m0 += Q4_ROWS) {
        int mb = rows - m0 < Q4_ROWS ? rows - m0 : Q4_ROWS;
        q4v_quantize_rows(mb, inputs, group, w.kp, x + (size_t)m0 * ldx, ldx, xq, rs, rz, rpre, rinv);
        q4v_output out = {y + (size_t)m0 * ldy, NULL, 0, 0, ldy};
        for (int p = 0; p < w.panels; p += 2) q4v_panels(&w, p, mb, inputs, group, outputs, xq, w.kp, rs, rz, 0, wq, &out, act, av);
    }
}

/// Rows already UINT8 with one scale and zero point: no quantizing, and every row through each
/// pair of panels as it is unpacked (once). Scratch: 64 floats (the rows' scale and zero point,
/// and the panels 64-byte aligned: split stores would halve the unpacking's speed), two panels.
static TQ4V void q4_gemm_vnni_u8(int rows, int outputs, int inputs, int group, const uint8_t *x, int ldx, float x_scale,
                                 int32_t x_zero_point, const void *packed, const q4v_output *out, edge_activation act, float alpha,
                                 void *scratch) {
    q4v_parts w = q4v_split(packed, outputs, inputs, group);
    float *rs = scratch, *rz = rs + Q4V_MR1;
    int8_t *wq = (int8_t *)((float *)scratch + 64);
    for (int r = 0; r < Q4V_MR1; r++) {
        rs[r] = x_scale;
        rz[r] = (float)x_zero_point;
    }
    __m512 av = _mm512_set1_ps(alpha);
    for (int p = 0; p < w.panels; p += 2) q4v_panels(&w, p, rows, inputs, group, outputs, x, ldx, rs, rz, 1, wq, out, act, av);
}
#endif

const char *edge_q4_kernel_name(edge_isa isa) {
    switch (q4_integer(isa)) {
    case 2: return "avx512-vnni vpdpbusd (w4a8)";
    case 1: return "avx2 vpmaddwd (w4a16)";
    default: return "portable c (fp32 weight-only)";
    }
}

int edge_q4_u8_supported(edge_isa isa, int group) { return q4_integer(isa) == 2 && group % 4 == 0; }

/// Both UINT8-row entry points: −1 where W4A8 does not run, else 0 (having written y or out->y).
static int q4_gemm_u8(edge_isa isa, int rows, int outputs, int inputs, int group, const uint8_t *x, int ldx, float x_scale,
                      int32_t x_zero_point, const void *packed, const q4v_output *out, edge_activation act, float alpha,
                      float *scratch) {
    if (!edge_q4_u8_supported(isa, group)) return -1;
    if (rows <= 0 || outputs <= 0) return 0;
#if defined(__x86_64__)
    q4_gemm_vnni_u8(rows, outputs, inputs, group, x, ldx, x_scale, x_zero_point, packed, out, act, alpha, scratch);
#else
    (void)inputs, (void)x, (void)ldx, (void)x_scale, (void)x_zero_point, (void)packed, (void)out, (void)act, (void)alpha, (void)scratch;
#endif
    return 0;
}

int edge_q4_gemm_u8(edge_isa isa, int rows, int outputs, int inputs, int group, const uint8_t *x, int ldx, float x_scale,
                    int32_t x_zero_point, const void *packed, float *y, int ldy, edge_activation act, float alpha, float *scratch) {
    const q4v_output out = {y, NULL, 0, 0, ldy};
    return q4_gemm_u8(isa, rows, outputs, inputs, group, x, ldx, x_scale, x_zero_point, packed, &out, act, alpha, scratch);
}

int edge_q4_gemm_u8_requant(edge_isa isa, int rows, int outputs, int inputs, int group, const uint8_t *x, int ldx, float x_scale,
                            int32_t x_zero_point, const void *packed, uint8_t *y, int ldy, float y_inv_scale, int32_t y_zero_point,
                            edge_activation act, float alpha, float *scratch) {
    const q4v_output out = {NULL, y, y_inv_scale, y_zero_point, ldy};
    return q4_gemm_u8(isa, rows, outputs, inputs, group, x, ldx, x_scale, x_zero_point, packed, &out, act, alpha, scratch);
}

void edge_q4_gemm(edge_isa isa, int rows, int outputs, int inputs, int group, const float *x, int ldx, const void *packed,
                  float *y, int ldy, edge_activation act, float alpha, float *scratch) {
    if (rows <= 0 || outputs <= 0) return;
#if defined(__x86_64__)
    if (q4_integer(isa) == 2) {
        q4_gemm_vnni(rows, outputs, inputs, group, x, ldx, packed, y, ldy, act, alpha, scratch);
        return;
    }
    if (q4_integer(isa)) {
        q4_gemm_avx2(rows, outputs, inputs, group, x, ldx, packed, y, ldy, act, alpha, scratch);
        return;
    }
#endif
    q4_gemm_portable(rows, outputs, inputs, group, x, ldx, packed, y, ldy, act, alpha, scratch);
}

void edge_sgemm_packed(edge_isa isa, int rows, int outputs, int inputs, const float *x, int ldx, const float *packed,
                       float *y, int ldy, edge_activation act, float alpha) {
    if (rows <= 0 || outputs <= 0) return;
    if (isa == EDGE_ISA_AUTO) isa = edge_isa_best();
    switch (isa) {
#if defined(__x86_64__)
    case EDGE_ISA_AVX512VNNI:
    case EDGE_ISA_AVX512: sgemm_avx512(rows, outputs, inputs, x, ldx, packed, y, ldy, act, alpha); return;
    case EDGE_ISA_AVX2_U8S8:
    case EDGE_ISA_AVX2: sgemm_avx2(rows, outputs, inputs, x, ldx, packed, y, ldy, act, alpha); return;
#endif
    default: sgemm_portable(rows, outputs, inputs, x, ldx, packed, y, ldy, act, alpha); return;
    }
}

/// The portable convolution: sgemm_portable's sums, one output at a time, reading through the table.
static void sgemm_conv_portable(int samples, int pixels, int taps, int channels, const int32_t *table, const float *x,
                                size_t sample_stride, const float *pad, const float *packed, int outputs, float *y, int ldy,
                                edge_activation act, float alpha) {
    int inputs = taps * channels, panels = (outputs + PANEL - 1) / PANEL;
    const float *bias = packed + (size_t)panels * PANEL * inputs;
    for (size_t m = 0; m < (size_t)samples * pixels; m++) {
        const float *xs = x + m / pixels * sample_stride;
        const int32_t *tab = table + m % pixels * taps;
        for (int p = 0; p < panels; p++) {
            size_t ks;
            const float *w = panel_at(packed, panels, inputs, p, &ks);
            float acc[PANEL];
            for (int j = 0; j < PANEL; j++) acc[j] = bias[p * PANEL + j];
            for (int t = 0, k = 0; t < taps; t++) {
                const float *xt = tab[t] >= 0 ? xs + tab[t] : pad;
                for (int c = 0; c < channels; c++, k++)
                    for (int j = 0; j < PANEL; j++) acc[j] += xt[c] * w[(size_t)k * ks + j];
            }
            int n = outputs - p * PANEL < PANEL ? outputs - p * PANEL : PANEL;
            for (int j = 0; j < n; j++) y[m * ldy + p * PANEL + j] = edge_activate_scalar(acc[j], act, alpha);
        }
    }
}

/// Whether `isa` runs the AVX2 convolution kernel (any channel count; edge_sgemm_conv_direct
/// says when it is worth it); the AVX-512 ISAs run conv_avx512's kernel first.
static int conv_avx2(edge_isa isa) {
    if (isa == EDGE_ISA_AUTO) isa = edge_isa_best();
    return isa != EDGE_ISA_PORTABLE && isa != EDGE_ISA_NEONDOT && edge_isa_supported(EDGE_ISA_AVX2);
}

/// Whether `isa` runs the AVX-512 convolution kernel.
static int conv_avx512(edge_isa isa) {
    if (isa == EDGE_ISA_AUTO) isa = edge_isa_best();
    return (isa == EDGE_ISA_AVX512 || isa == EDGE_ISA_AVX512VNNI) && edge_isa_supported(EDGE_ISA_AVX512);
}

/// Where it was measured to beat im2row: AVX2 and AVX-512 with at least 8 channels.
int edge_sgemm_conv_direct(edge_isa isa, int channels) {
    if (isa == EDGE_ISA_AUTO) isa = edge_isa_best();
    return (((isa == EDGE_ISA_AVX2 || isa == EDGE_ISA_AVX2_U8S8) && conv_avx2(isa)) || conv_avx512(isa)) && channels >= 8;
}

void edge_sgemm_conv(edge_isa isa, int samples, int pixels, int taps, int channels, const int32_t *table, const float *x,
                     size_t sample_stride, const float *pad, const float *packed, int outputs, float *y, int ldy,
                     edge_activation act, float alpha) {
    if (samples <= 0 || pixels <= 0 || taps <= 0 || channels <= 0 || outputs <= 0) return;
#if defined(__x86_64__)
    if (conv_avx512(isa)) {
        sgemm_conv_avx512(samples, pixels, taps, channels, table, x, sample_stride, pad, packed, outputs, y, ldy, act, alpha);
        return;
    }
    if (conv_avx2(isa)) {
        sgemm_conv_avx2(samples, pixels, taps, channels, table, x, sample_stride, pad, packed, outputs, y, ldy, act, alpha);
        return;
    }
#endif
    sgemm_conv_portable(samples, pixels, taps, channels, table, x, sample_stride, pad, packed, outputs, y, ldy, act, alpha);
}
