// FP32 GEMM against weights packed once at load: Y = act(X · Wᵀ + b).
//
// Layout: 16-output panels, gathered in groups of up to four that are interleaved per k
// (group base + (k·np + q)·16 + j), so that batch 1 reads the weights as one contiguous stream
// and a tile loads the 16 weights of a panel per k with one vector load. Register blocking: AVX-512 keeps an
// 8-row × 32-output tile (16 accumulators); AVX2 a 4-row × 16-output tile (8 accumulators).
// Row/column counts are template-like compile-time constants through always_inline helpers.

#include "ckernels.h"
#include "scalar.h"
#include <string.h>

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

// ---- INT4 weight-only, 16-output panels ------------------------------------------------------
//
// Per panel: for each k, 8 bytes holding the panel's 16 nibbles (byte j: output 2j low, 2j+1
// high, q + 8); then, per group, the panel's 16 scales; then its 16 biases. A call widens one
// panel at a time into `scratch` ([k][16] FP32, the group scales applied) and runs the FP32
// panel kernel over every row: the weights stay INT4 in memory, the arithmetic is FP32.

#define Q4_NIBBLE_BYTES 8

size_t edge_q4_packed_bytes(int outputs, int inputs, int group) {
    size_t panels = (size_t)(outputs + PANEL - 1) / PANEL, groups = (size_t)(inputs + group - 1) / group;
    return panels * (size_t)inputs * Q4_NIBBLE_BYTES + panels * groups * PANEL * 4 + panels * PANEL * 4;
}

size_t edge_q4_scratch_floats(int inputs) { return (size_t)PANEL * (size_t)(inputs > 0 ? inputs : 0); }

void edge_q4_pack(const int8_t *q, const float *scales, const float *bias, int outputs, int inputs, int group, void *packed) {
    int panels = (outputs + PANEL - 1) / PANEL, groups = (inputs + group - 1) / group;
    uint8_t *nib = packed;
    float *sc = (float *)(nib + (size_t)panels * inputs * Q4_NIBBLE_BYTES);
    float *b = sc + (size_t)panels * groups * PANEL;
    for (int p = 0; p < panels; p++) {
        for (int k = 0; k < inputs; k++) {
            uint8_t *dst = nib + ((size_t)p * inputs + k) * Q4_NIBBLE_BYTES;
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

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

static inline T512 __attribute__((always_inline)) __m512 act512(__m512 v, edge_activation act, __m512 alpha) {
    __m512 zero = _mm512_setzero_ps();
    switch (act) {
    case EDGE_ACT_RELU: return _mm512_max_ps(v, zero);
    case EDGE_ACT_RELU6: return _mm512_min_ps(_mm512_max_ps(v, zero), _mm512_set1_ps(6.0f));
    case EDGE_ACT_LEAKY: return _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v, alpha);
    default: return v;
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
    for (int p = 0; p < NP; p++) {
        int n = cols - p * PANEL;
        if (n <= 0) break;
        __mmask16 mask = n >= PANEL ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
        for (int r = 0; r < MR; r++)
            _mm512_mask_storeu_ps(y + (size_t)r * ldy + p * PANEL, mask, act512(acc[r][p], act, alpha));
    }
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
        _mm512_mask_storeu_ps(y + p * PANEL, mask, act512(_mm512_add_ps(a[p], b[p]), act, alpha));
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

// ---- AVX2 + FMA -------------------------------------------------------------------------------

#define T256 __attribute__((target("avx2,fma")))

static inline T256 __attribute__((always_inline)) __m256 act256(__m256 v, edge_activation act, __m256 alpha) {
    __m256 zero = _mm256_setzero_ps();
    switch (act) {
    case EDGE_ACT_RELU: return _mm256_max_ps(v, zero);
    case EDGE_ACT_RELU6: return _mm256_min_ps(_mm256_max_ps(v, zero), _mm256_set1_ps(6.0f));
    case EDGE_ACT_LEAKY: return _mm256_blendv_ps(v, _mm256_mul_ps(v, alpha), _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
    default: return v;
    }
}

static inline T256 __attribute__((always_inline)) void store256(float *dst, __m256 v, int n) {
    if (n >= 8) { _mm256_storeu_ps(dst, v); return; }
    float tmp[8];
    _mm256_storeu_ps(tmp, v);
    for (int j = 0; j < n; j++) dst[j] = tmp[j];
}

/// One MR × 16 tile (one panel as two 8-wide halves).
static inline T256 __attribute__((always_inline)) void tile256(
    const int MR, int inputs, const float *x, int ldx, const float *w, size_t ks, const float *bias, float *y, int ldy,
    int cols, edge_activation act, __m256 alpha) {
    __m256 lo[4], hi[4];
    for (int r = 0; r < MR; r++) { lo[r] = _mm256_loadu_ps(bias); hi[r] = _mm256_loadu_ps(bias + 8); }
    for (int k = 0; k < inputs; k++) {
        __m256 w0 = _mm256_loadu_ps(w + (size_t)k * ks), w1 = _mm256_loadu_ps(w + (size_t)k * ks + 8);
        for (int r = 0; r < MR; r++) {
            __m256 xv = _mm256_broadcast_ss(x + (size_t)r * ldx + k);
            lo[r] = _mm256_fmadd_ps(xv, w0, lo[r]);
            hi[r] = _mm256_fmadd_ps(xv, w1, hi[r]);
        }
    }
    int n = cols < PANEL ? cols : PANEL;
    for (int r = 0; r < MR; r++) {
        store256(y + (size_t)r * ldy, act256(lo[r], act, alpha), n);
        if (n > 8) store256(y + (size_t)r * ldy + 8, act256(hi[r], act, alpha), n - 8);
    }
}

#define TILE256(MR) \
    static T256 void tile256_##MR(int K, const float *x, int ldx, const float *w, size_t ks, const float *b, float *y, \
                                  int ldy, int cols, edge_activation act, __m256 alpha) { \
        tile256(MR, K, x, ldx, w, ks, b, y, ldy, cols, act, alpha); \
    }
TILE256(1) TILE256(2) TILE256(3) TILE256(4)

/// Every row of one 16-output panel, 4 rows at a time (`y` at the panel's first column).
static T256 void panel256(int rows, int inputs, const float *x, int ldx, const float *w, size_t ks, const float *bias, float *y,
                          int ldy, int cols, edge_activation act, __m256 av) {
    for (int m = 0; m < rows; m += 4) {
        int mr = rows - m < 4 ? rows - m : 4;
        const float *xm = x + (size_t)m * ldx;
        float *ym = y + (size_t)m * ldy;
        switch (mr) {
        case 1: tile256_1(inputs, xm, ldx, w, ks, bias, ym, ldy, cols, act, av); break;
        case 2: tile256_2(inputs, xm, ldx, w, ks, bias, ym, ldy, cols, act, av); break;
        case 3: tile256_3(inputs, xm, ldx, w, ks, bias, ym, ldy, cols, act, av); break;
        default: tile256_4(inputs, xm, ldx, w, ks, bias, ym, ldy, cols, act, av); break;
        }
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

/// A panel's nibbles widened: per k, 8 bytes → 16 floats, times the group's 16 scales.
static T256 void q4_widen_panel_avx2(const uint8_t *nib, const float *sc, int inputs, int group, float *dst) {
    __m128i mask = _mm_set1_epi8(15);
    __m256 eight = _mm256_set1_ps(8.0f);
    for (int k0 = 0; k0 < inputs; k0 += group) {
        int k1 = k0 + group < inputs ? k0 + group : inputs;
        const float *s = sc + (size_t)(k0 / group) * PANEL;
        __m256 s0 = _mm256_loadu_ps(s), s1 = _mm256_loadu_ps(s + 8);
        for (int k = k0; k < k1; k++) {
            __m128i b = _mm_loadl_epi64((const __m128i *)(nib + (size_t)k * Q4_NIBBLE_BYTES));
            __m128i v = _mm_unpacklo_epi8(_mm_and_si128(b, mask), _mm_and_si128(_mm_srli_epi16(b, 4), mask));  // outputs 0..15
            __m256 f0 = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)), eight);
            __m256 f1 = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8))), eight);
            _mm256_storeu_ps(dst + (size_t)k * PANEL, _mm256_mul_ps(f0, s0));
            _mm256_storeu_ps(dst + (size_t)k * PANEL + 8, _mm256_mul_ps(f1, s1));
        }
    }
}

static T256 void q4_gemm_avx2(int rows, int outputs, int inputs, int group, const float *x, int ldx, const void *packed,
                              float *y, int ldy, edge_activation act, float alpha, float *scratch) {
    int panels = (outputs + PANEL - 1) / PANEL, groups = (inputs + group - 1) / group;
    const uint8_t *nib = packed;
    const float *sc = (const float *)(nib + (size_t)panels * inputs * Q4_NIBBLE_BYTES);
    const float *bias = sc + (size_t)panels * groups * PANEL;
    __m256 av = _mm256_set1_ps(alpha);
    for (int p = 0; p < panels; p++) {
        q4_widen_panel_avx2(nib + (size_t)p * inputs * Q4_NIBBLE_BYTES, sc + (size_t)p * groups * PANEL, inputs, group, scratch);
        int cols = outputs - p * PANEL;
        panel256(rows, inputs, x, ldx, scratch, PANEL, bias + p * PANEL, y + p * PANEL, ldy, cols, act, av);
    }
}
#endif

void edge_q4_gemm(edge_isa isa, int rows, int outputs, int inputs, int group, const float *x, int ldx, const void *packed,
                  float *y, int ldy, edge_activation act, float alpha, float *scratch) {
    if (rows <= 0 || outputs <= 0) return;
    if (isa == EDGE_ISA_AUTO) isa = edge_isa_best();
#if defined(__x86_64__)
    if (isa != EDGE_ISA_PORTABLE && edge_isa_supported(EDGE_ISA_AVX2)) {
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
    case EDGE_ISA_AVX2: sgemm_avx2(rows, outputs, inputs, x, ldx, packed, y, ldy, act, alpha); return;
#endif
    default: sgemm_portable(rows, outputs, inputs, x, ldx, packed, y, ldy, act, alpha); return;
    }
}
