// INT8 GEMM: UINT8 activations × INT8 weights → INT32 → requantized UINT8 or dequantized FP32.
//
// Requantization is in FP32 (as XNNPACK does): one conversion, one multiply by a per-output
// scale, one round-half-even, then the zero point and the clamp that also implements ReLU and
// ReLU6. Every path performs exactly these IEEE operations in this order, so all paths and the
// scalar reference agree bit for bit.

#include "ckernels.h"
#include "scalar.h"
#include "vector.h"
#include "vnni.h"
#include <math.h>
#include <string.h>

#define PANEL 16
#define ROUND4(n) (((n) + 3) & ~3)

/// The path that runs for `isa`: AUTO is the best here, and a path this CPU cannot run (or this
/// build has no kernel for) is the portable one, so a pack and a multiply always agree.
static edge_isa resolve(edge_isa isa) {
    if (isa == EDGE_ISA_AUTO) return edge_isa_best();
    return edge_isa_supported(isa) ? isa : EDGE_ISA_PORTABLE;
}

/// 1 when `isa` packs INT8 weights as INT16 k-pairs (the vpmaddwd kernels), 0 for k-quads.
static int pairs_layout(edge_isa isa) {
    isa = resolve(isa);
    return isa == EDGE_ISA_AVX2 || isa == EDGE_ISA_AVX512;
}

/// Bytes of the weight panels alone (the column sums follow them).
static size_t panel_bytes(edge_isa isa, int outputs, int inputs) {
    if (outputs < 0) outputs = 0;  // sizes no checked model has: an empty block
    if (inputs < 0) inputs = 0;
    size_t panels = (size_t)(outputs + PANEL - 1) / PANEL;
    return panels * PANEL * (size_t)ROUND4(inputs) * (pairs_layout(isa) ? 2 : 1);
}

/// 1 when no adjacent pair of any output's weights (k = 2i, 2i + 1; the last one alone) can take
/// a UINT8 input's vpmaddubsw pair sum outside int16.
static inline int u8s8_pair_safe(int a, int b) {
    int pos = (a > 0 ? a : 0) + (b > 0 ? b : 0), neg = (a < 0 ? a : 0) + (b < 0 ? b : 0);
    return pos * 255 <= 32767 && neg * 255 >= -32768;
}

static int u8s8_safe(const int8_t *w, int outputs, int inputs) {
    for (int o = 0; o < outputs; o++) {
        const int8_t *row = w + (size_t)o * inputs;
        for (int k = 0; k < inputs; k += 2)
            if (!u8s8_pair_safe(row[k], k + 1 < inputs ? row[k + 1] : 0)) return 0;
    }
    return 1;
}

edge_isa edge_q8_choose(edge_isa isa, const int8_t *w, int outputs, int inputs) {
    if (isa == EDGE_ISA_AVX2_U8S8) isa = EDGE_ISA_AVX2;  // asked for it: still proven safe first
    isa = resolve(isa);
    if ((isa == EDGE_ISA_AVX2 || isa == EDGE_ISA_AVX512) && outputs > 0 && inputs > 0 && u8s8_safe(w, outputs, inputs))
        return EDGE_ISA_AVX2_U8S8;
    return isa;
}

size_t edge_q8_packed_bytes(edge_isa isa, int outputs, int inputs) {
    if (outputs < 0) outputs = 0;
    size_t panels = (size_t)(outputs + PANEL - 1) / PANEL;
    return panel_bytes(isa, outputs, inputs) + panels * PANEL * sizeof(int32_t);
}

const int32_t *edge_q8_column_sums(edge_isa isa, const void *packed, int outputs, int inputs) {
    return (const int32_t *)((const int8_t *)packed + panel_bytes(isa, outputs, inputs));
}

void edge_q8_pack(edge_isa isa, const int8_t *w, int outputs, int inputs, void *packed) {
    if (outputs < 0) outputs = 0;
    if (inputs < 0) inputs = 0;
    int panels = (outputs + PANEL - 1) / PANEL, kp = ROUND4(inputs);
    if (pairs_layout(isa)) {
        // [panel][k/2][16 outputs][2] int16: one k-pair of 8 outputs is one 256-bit vpmaddwd operand.
        int16_t *dst = (int16_t *)packed;
        for (int p = 0; p < panels; p++)
            for (int kq = 0; kq < kp / 2; kq++)
                for (int j = 0; j < PANEL; j++)
                    for (int t = 0; t < 2; t++) {
                        int o = p * PANEL + j, k = kq * 2 + t;
                        *dst++ = (o < outputs && k < inputs) ? w[(size_t)o * inputs + k] : 0;
                    }
    } else {
        // [panel][k/4][16 outputs][4] int8: one k-quad of 16 outputs is one 512-bit vpdpbusd operand.
        int8_t *dst = (int8_t *)packed;
        for (int p = 0; p < panels; p++)
            for (int kq = 0; kq < kp / 4; kq++)
                for (int j = 0; j < PANEL; j++)
                    for (int t = 0; t < 4; t++) {
                        int o = p * PANEL + j, k = kq * 4 + t;
                        *dst++ = (o < outputs && k < inputs) ? w[(size_t)o * inputs + k] : 0;
                    }
    }
    int32_t *sums = (int32_t *)edge_q8_column_sums(isa, packed, outputs, inputs);
    for (int o = 0; o < panels * PANEL; o++) {
        int32_t s = 0;
        if (o < outputs)
            for (int k = 0; k < inputs; k++) s += w[(size_t)o * inputs + k];
        sums[o] = s;
    }
}

static inline int32_t requantize_one(int32_t acc, int o, const edge_q8_epilogue *ep) {
    float v = (float)(acc + ep->bias[o]) * ep->scale[o];
    if (ep->leaky && v < 0) v *= ep->alpha;
    v = fminf(fmaxf(v, -1073741824.0f), 1073741824.0f);
    int32_t q = (int32_t)nearbyintf(v) + ep->zero_point;
    return q < ep->qmin ? ep->qmin : (q > ep->qmax ? ep->qmax : q);
}

static inline float dequantize_one(int32_t acc, int o, const edge_q8_epilogue *ep) {
    float v = (float)(acc + ep->bias[o]) * ep->scale[o];
    return (ep->leaky && v < 0) ? v * ep->alpha : v;
}

/// Finishes one row of `n` accumulators for outputs o0 … o0+n-1.
static inline void finish_row(const int32_t *acc, int o0, int n, const edge_q8_epilogue *ep, uint8_t *yu, float *yf) {
    if (yf) for (int j = 0; j < n; j++) yf[o0 + j] = dequantize_one(acc[j], o0 + j, ep);
    else for (int j = 0; j < n; j++) yu[o0 + j] = (uint8_t)requantize_one(acc[j], o0 + j, ep);
}

// ---- portable ---------------------------------------------------------------------------------

static void q8_portable(int rows, int outputs, int inputs, const uint8_t *x, int ldx, const void *packed,
                        const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) {
    int panels = (outputs + PANEL - 1) / PANEL, kq = ROUND4(inputs) / 4;
    const int8_t *w0 = (const int8_t *)packed;
    for (int m = 0; m < rows; m++) {
        const uint8_t *xr = x + (size_t)m * ldx;
        for (int p = 0; p < panels; p++) {
            const int8_t *w = w0 + (size_t)p * kq * PANEL * 4;
            int32_t acc[PANEL] = {0};
            for (int q = 0; q < kq; q++)
                for (int j = 0; j < PANEL; j++)
                    for (int t = 0; t < 4; t++) acc[j] += (int32_t)xr[q * 4 + t] * (int32_t)w[((size_t)q * PANEL + j) * 4 + t];
            int n = outputs - p * PANEL < PANEL ? outputs - p * PANEL : PANEL;
            finish_row(acc, p * PANEL, n, ep, yu ? yu + (size_t)m * ldy : 0, yf ? yf + (size_t)m * ldy : 0);
        }
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

/// One batch-1 call over up to four panels of k-quad weights (`np` of them, from output o0).
typedef void (*q8_gemv_fn)(int kq, const uint8_t *x, const int8_t *w, size_t pstride, int o0, int cols,
                           const edge_q8_epilogue *ep, uint8_t *yu, float *yf);

/// Batch 1 on k-quad weights: four panels a call, the last call the 1–3 left (`gemv[np − 1]`).
static inline void gemv_quads(const q8_gemv_fn gemv[4], int outputs, int kq, const uint8_t *x, const int8_t *w,
                              const edge_q8_epilogue *ep, uint8_t *yu, float *yf) {
    int panels = (outputs + PANEL - 1) / PANEL;
    size_t ps = (size_t)kq * 64;
    for (int p = 0; p < panels; p += 4) {
        int np = panels - p < 4 ? panels - p : 4;
        gemv[np - 1](kq, x, w + p * ps, ps, p * PANEL, outputs - p * PANEL, ep, yu, yf);
    }
}

// ---- AVX-512 VNNI -----------------------------------------------------------------------------

#define TVNNI EDGE_TVNNI
#define T512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl")))

/// The epilogue of 16 INT32 sums (outputs o0 … o0+15, `n` of them real) on AVX-512, shared by the
/// VNNI kernel and the 512-bit vpmaddwd one (bit-identical to finish_row): FP32 outputs, batch 1,
/// and UINT8 tiles whose zero point is outside 0…255 (finish512_tile).
/// The epilogue's real values of 16 sums: (float)(acc + bias) · scale, then the leaky slope.
static inline T512 __attribute__((always_inline)) __m512 real512(__m512i acc, __m512i bias, __m512 scale, int leaky, __m512 alpha) {
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc, bias)), scale);
    return leaky ? _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), v, alpha) : v;
}

static inline T512 __attribute__((always_inline)) void finish512(__m512i acc, int o0, int n, const edge_q8_epilogue *ep,
                                                                  uint8_t *yu, float *yf) {
    __mmask16 mask = n >= PANEL ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
    __m512 v = real512(acc, _mm512_loadu_si512(ep->bias + o0), _mm512_loadu_ps(ep->scale + o0), ep->leaky, _mm512_set1_ps(ep->alpha));
    if (yf) { _mm512_mask_storeu_ps(yf + o0, mask, v); return; }
    __m512i q = edge_quantize512(v, _mm512_set1_epi32(ep->zero_point), _mm512_set1_epi32(ep->qmin), _mm512_set1_epi32(ep->qmax));
    _mm_mask_storeu_epi8(yu + o0, mask, _mm512_cvtepi32_epi8(q));
}

/// The epilogue of an MR × NP tile of sums (rows `ldy` apart; `cols` outputs left from o0): FP32
/// rows by finish512, UINT8 rows a row's panels through one edge_quantize512x2 (the same codes as
/// finish512's; its vpmovdb per panel made the epilogue a fifth of a 288-k convolution's time).
static inline T512 __attribute__((always_inline)) void finish512_tile(const int MR, const int NP, __m512i acc[][2], int o0, int cols,
                                                                      const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) {
    // (Bounds and zero point outside 0…255, which no plan makes, take finish512: the byte clamps
    // and int16 zero point below hold only inside.)
    if (yu && (uint32_t)ep->zero_point <= 255 && 0 <= ep->qmin && ep->qmin <= ep->qmax && ep->qmax <= 255) {
        int n = NP * PANEL < cols ? NP * PANEL : cols;
        __mmask32 mask = n >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << n) - 1);
        __m512i bias0 = _mm512_loadu_si512(ep->bias + o0), bias1 = _mm512_loadu_si512(ep->bias + o0 + (NP - 1) * PANEL);
        __m512 scale0 = _mm512_loadu_ps(ep->scale + o0), scale1 = _mm512_loadu_ps(ep->scale + o0 + (NP - 1) * PANEL);
        __m512i zp = _mm512_set1_epi16((short)ep->zero_point), lo = _mm512_set1_epi8((char)ep->qmin), hi = _mm512_set1_epi8((char)ep->qmax);
        int leaky = ep->leaky;
        __m512 alpha = _mm512_set1_ps(ep->alpha);
        for (int r = 0; r < MR; r++) {
            __m512 a = real512(acc[r][0], bias0, scale0, leaky, alpha);
            // One panel: the second half of the 32 codes is not stored.
            __m512 b = NP > 1 ? real512(acc[r][NP - 1], bias1, scale1, leaky, alpha) : a;
            _mm256_mask_storeu_epi8(yu + (size_t)r * ldy + o0, mask, edge_quantize512x2(a, b, zp, lo, hi));
        }
        return;
    }
    for (int r = 0; r < MR; r++)
        for (int p = 0; p < NP; p++) {
            int n = cols - p * PANEL;
            if (n <= 0) break;
            finish512(acc[r][p], o0 + p * PANEL, n, ep, yu ? yu + (size_t)r * ldy : 0, yf ? yf + (size_t)r * ldy : 0);
        }
}

/// MR rows × NP panels over all k-quads.
static inline TVNNI __attribute__((always_inline)) void tile_vnni(const int MR, const int NP, int kq, const uint8_t *x, int ldx,
                                                                 const int8_t *w, size_t pstride, int o0, int cols,
                                                                 const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) {
    __m512i acc[8][2];
    for (int r = 0; r < MR; r++)
        for (int p = 0; p < NP; p++) acc[r][p] = _mm512_setzero_si512();
    edge_vnni_quads(MR, NP, 0, kq, x, (size_t)ldx, w, pstride, acc);
    finish512_tile(MR, NP, acc, o0, cols, ep, yu, yf, ldy);
}

/// Batch 1: four panels at once, k-quads unrolled by two into separate accumulators.
static inline TVNNI __attribute__((always_inline)) void gemv_vnni(const int NP, int kq, const uint8_t *x, const int8_t *w,
                                                                 size_t pstride, int o0, int cols,
                                                                 const edge_q8_epilogue *ep, uint8_t *yu, float *yf) {
    __m512i a[4], b[4];
    for (int p = 0; p < NP; p++) { a[p] = _mm512_setzero_si512(); b[p] = _mm512_setzero_si512(); }
    int q = 0;
    for (; q + 1 < kq; q += 2) {
        int32_t q0, q1;
        memcpy(&q0, x + (size_t)q * 4, 4);
        memcpy(&q1, x + (size_t)q * 4 + 4, 4);
        __m512i x0 = _mm512_set1_epi32(q0), x1 = _mm512_set1_epi32(q1);
        for (int p = 0; p < NP; p++) {
            a[p] = _mm512_dpbusd_epi32(a[p], x0, _mm512_loadu_si512(w + p * pstride + (size_t)q * 64));
            b[p] = _mm512_dpbusd_epi32(b[p], x1, _mm512_loadu_si512(w + p * pstride + (size_t)q * 64 + 64));
        }
    }
    if (q < kq) {
        int32_t q0;
        memcpy(&q0, x + (size_t)q * 4, 4);
        __m512i x0 = _mm512_set1_epi32(q0);
        for (int p = 0; p < NP; p++) a[p] = _mm512_dpbusd_epi32(a[p], x0, _mm512_loadu_si512(w + p * pstride + (size_t)q * 64));
    }
    for (int p = 0; p < NP; p++) {
        int n = cols - p * PANEL;
        if (n <= 0) break;
        finish512(_mm512_add_epi32(a[p], b[p]), o0 + p * PANEL, n, ep, yu, yf);
    }
}

/// MR rows × NP panels of a convolution on VNNI: tile_vnni's sums, each row's taps read through
/// the indirection table (a padding tap reads `pad`, the input zero point), tap by tap; a tap's
/// `cq` quads are quads t·cq … t·cq + cq − 1 of the packed k-quads (channels a multiple of 4).
static inline TVNNI __attribute__((always_inline)) void ctile_vnni(const int MR, const int NP, int taps, int cq, const uint8_t *const *xs,
                                                                  const int32_t *const *tab, const uint8_t *pad, const int8_t *w,
                                                                  size_t pstride, int o0, int cols, const edge_q8_epilogue *ep,
                                                                  uint8_t *yu, float *yf, int ldy) {
    __m512i acc[8][2];
    for (int r = 0; r < MR; r++)
        for (int p = 0; p < NP; p++) acc[r][p] = _mm512_setzero_si512();
    for (int t = 0; t < taps; t++) {
        const uint8_t *src[8];
        for (int r = 0; r < MR; r++) src[r] = tab[r][t] >= 0 ? xs[r] + tab[r][t] : pad;
        const int8_t *wt = w + (size_t)t * cq * 64;
        for (int c = 0; c < cq; c++) {
            __m512i w0 = _mm512_loadu_si512(wt + (size_t)c * 64);
            __m512i w1 = NP > 1 ? _mm512_loadu_si512(wt + pstride + (size_t)c * 64) : w0;
            for (int r = 0; r < MR; r++) {
                int32_t quad;
                memcpy(&quad, src[r] + (size_t)c * 4, 4);
                __m512i xv = _mm512_set1_epi32(quad);
                acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], xv, w0);
                if (NP > 1) acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], xv, w1);
            }
        }
    }
    finish512_tile(MR, NP, acc, o0, cols, ep, yu, yf, ldy);
}

#define CQTILE(MR, NP) \
    static TVNNI void cqtile_##MR##_##NP(int taps, int cq, const uint8_t *const *xs, const int32_t *const *tab, const uint8_t *pad, \
                                         const int8_t *w, size_t ps, int o0, int cols, const edge_q8_epilogue *ep, uint8_t *yu, \
                                         float *yf, int ldy) { \
        ctile_vnni(MR, NP, taps, cq, xs, tab, pad, w, ps, o0, cols, ep, yu, yf, ldy); \
    }
CQTILE(1, 1) CQTILE(2, 1) CQTILE(3, 1) CQTILE(4, 1) CQTILE(5, 1) CQTILE(6, 1) CQTILE(7, 1) CQTILE(8, 1)
CQTILE(1, 2) CQTILE(2, 2) CQTILE(3, 2) CQTILE(4, 2) CQTILE(5, 2) CQTILE(6, 2) CQTILE(7, 2) CQTILE(8, 2)
typedef void (*cqtile_fn)(int, int, const uint8_t *const *, const int32_t *const *, const uint8_t *, const int8_t *, size_t, int, int,
                          const edge_q8_epilogue *, uint8_t *, float *, int);

static TVNNI void q8_conv_vnni(int samples, int pixels, int taps, int channels, const int32_t *table, const uint8_t *x,
                               size_t sample_stride, const uint8_t *pad, const void *packed, int outputs, const edge_q8_epilogue *ep,
                               uint8_t *yu, float *yf, int ldy) {
    static const cqtile_fn tiles[2][8] = {
        {cqtile_1_1, cqtile_2_1, cqtile_3_1, cqtile_4_1, cqtile_5_1, cqtile_6_1, cqtile_7_1, cqtile_8_1},
        {cqtile_1_2, cqtile_2_2, cqtile_3_2, cqtile_4_2, cqtile_5_2, cqtile_6_2, cqtile_7_2, cqtile_8_2},
    };
    int panels = (outputs + PANEL - 1) / PANEL, cq = channels / 4;
    size_t ps = (size_t)taps * cq * 64, rows = (size_t)samples * pixels;
    const int8_t *w = (const int8_t *)packed;
    for (size_t m = 0; m < rows; m += 8) {
        int mr = rows - m < 8 ? (int)(rows - m) : 8;
        const uint8_t *xs[8];
        const int32_t *tab[8];
        size_t sample[8];
        edge_conv_rows(mr, m, pixels, taps, table, sample, tab);
#pragma clang loop vectorize(disable)  // as conv_rows in sgemm.c: no store forwarding into a vector load
        for (int r = 0; r < mr; r++) xs[r] = x + sample[r] * sample_stride;
        for (int p = 0; p < panels; p += 2) {
            int np = panels - p >= 2 ? 2 : 1;
            tiles[np - 1][mr - 1](taps, cq, xs, tab, pad, w + p * ps, ps, p * PANEL, outputs - p * PANEL, ep,
                                  yu ? yu + m * ldy : 0, yf ? yf + m * ldy : 0, ldy);
        }
    }
}

#define QTILE(MR, NP) \
    static TVNNI void qtile_##MR##_##NP(int kq, const uint8_t *x, int ldx, const int8_t *w, size_t ps, int o0, int cols, \
                                        const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) { \
        tile_vnni(MR, NP, kq, x, ldx, w, ps, o0, cols, ep, yu, yf, ldy); \
    }
QTILE(1, 1) QTILE(2, 1) QTILE(3, 1) QTILE(4, 1) QTILE(5, 1) QTILE(6, 1) QTILE(7, 1) QTILE(8, 1)
QTILE(1, 2) QTILE(2, 2) QTILE(3, 2) QTILE(4, 2) QTILE(5, 2) QTILE(6, 2) QTILE(7, 2) QTILE(8, 2)
typedef void (*qtile_fn)(int, const uint8_t *, int, const int8_t *, size_t, int, int, const edge_q8_epilogue *, uint8_t *,
                         float *, int);

#define QGEMV(NP) \
    static TVNNI void qgemv_##NP(int kq, const uint8_t *x, const int8_t *w, size_t ps, int o0, int cols, \
                                 const edge_q8_epilogue *ep, uint8_t *yu, float *yf) { \
        gemv_vnni(NP, kq, x, w, ps, o0, cols, ep, yu, yf); \
    }
QGEMV(1) QGEMV(2) QGEMV(3) QGEMV(4)

static TVNNI void q8_vnni(int rows, int outputs, int inputs, const uint8_t *x, int ldx, const void *packed,
                          const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) {
    static const qtile_fn tiles[2][8] = {
        {qtile_1_1, qtile_2_1, qtile_3_1, qtile_4_1, qtile_5_1, qtile_6_1, qtile_7_1, qtile_8_1},
        {qtile_1_2, qtile_2_2, qtile_3_2, qtile_4_2, qtile_5_2, qtile_6_2, qtile_7_2, qtile_8_2},
    };
    int panels = (outputs + PANEL - 1) / PANEL, kq = ROUND4(inputs) / 4;
    size_t ps = (size_t)kq * 64;
    const int8_t *w = (const int8_t *)packed;
    if (rows == 1) {
        static const q8_gemv_fn gemv[4] = {qgemv_1, qgemv_2, qgemv_3, qgemv_4};
        gemv_quads(gemv, outputs, kq, x, w, ep, yu, yf);
        return;
    }
    for (int p = 0; p < panels; p += 2) {
        int np = panels - p >= 2 ? 2 : 1, cols = outputs - p * PANEL;
        for (int m = 0; m < rows; m += 8) {
            int mr = rows - m < 8 ? rows - m : 8;
            tiles[np - 1][mr - 1](kq, x + (size_t)m * ldx, ldx, w + p * ps, ps, p * PANEL, cols, ep,
                                  yu ? yu + (size_t)m * ldy : 0, yf ? yf + (size_t)m * ldy : 0, ldy);
        }
    }
}

// ---- AVX2 (and AVX-512 without VNNI): vpmaddwd ---------------------------------------------
// No vpmaddubsw here: it sums two u8·s8 products into int16, which 8-bit weights can saturate
// (2·255·127 > 32767); weights that cannot get the vpmaddubsw kernel below (edge_q8_choose).
// The weights are widened to int16 once, at pack time, in k-pairs; each tile widens its input
// rows once per block of k into a small stack buffer, so the inner loop is one broadcast and two
// vpmaddwd + vpaddd per row and k-pair, with 6 rows × 16 outputs held in 12 accumulators (one
// vpmaddwd for a half panel of at most 8 outputs).

#define TAVX2 __attribute__((target("avx2,fma")))
#define XBLOCK 1024  // input values per row widened at a time (a multiple of 16)
#define MR_AVX2 6

/// Widens rows [0, mr) of x, values [k0, k0 + kb), into xw (rows XBLOCK int16 apart). Only the
/// values below `kin` (the layer's inputs) are read; the rest of the block (the k-quad padding) is
/// zero. (The contract still asks for round_up(inputs, 4) readable bytes a row: the other paths
/// read them.) A tail shorter than 16 is widened by a vector that ends at the last value
/// (overlapping the previous one) when the block holds 16 values, so a 25- or 200-value conv row
/// costs no scalar loop.
static inline TAVX2 __attribute__((always_inline)) void widen_rows(int mr, const uint8_t *x, int ldx, int k0, int kb, int kin,
                                                                  int16_t *xw) {
    int real = kin - k0 < kb ? kin - k0 : kb;
    for (int r = 0; r < mr; r++) {
        const uint8_t *src = x + (size_t)r * ldx + k0;
        int16_t *dst = xw + r * XBLOCK;
        int k = 0;
        for (; k + 16 <= real; k += 16)
            _mm256_storeu_si256((__m256i *)(dst + k), _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(src + k))));
        if (k < real && real >= 16) {
            _mm256_storeu_si256((__m256i *)(dst + real - 16),
                                _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(src + real - 16))));
        } else {
            for (; k < real; k++) dst[k] = src[k];
        }
        for (k = real; k < kb; k++) dst[k] = 0;
    }
}

/// Stores the first n (< 16) bytes of b without a library call: 8, 4, 2 and 1-byte pieces.
static inline TAVX2 __attribute__((always_inline)) void store_u8_part(uint8_t *y, __m128i b, int n) {
    if (n & 8) {
        _mm_storel_epi64((__m128i *)y, b);
        y += 8;
        b = _mm_srli_si128(b, 8);
    }
    uint64_t rest = (uint64_t)_mm_cvtsi128_si64(b);
    if (n & 4) {
        uint32_t v = (uint32_t)rest;
        memcpy(y, &v, 4);
        y += 4;
        rest >>= 32;
    }
    if (n & 2) {
        uint16_t v = (uint16_t)rest;
        memcpy(y, &v, 2);
    }
    if (n & 1) y[n & 2] = (uint8_t)(rest >> (8 * (n & 2)));
}

/// The requantization of 8 sums (outputs o0 … o0+7) to 8 INT32 codes, clamped.
static inline TAVX2 __attribute__((always_inline)) __m256i requantize8_avx2(__m256 v, const edge_q8_epilogue *ep) {
    return edge_quantize256(v, _mm256_set1_epi32(ep->zero_point), _mm256_set1_epi32(ep->qmin), _mm256_set1_epi32(ep->qmax));
}

/// (acc + bias) · scale lane by lane, then the leaky slope: every AVX2 epilogue's arithmetic.
static inline TAVX2 __attribute__((always_inline)) __m256 dequantize_avx2(__m256i acc, __m256i bias, __m256 scale, const edge_q8_epilogue *ep) {
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(acc, bias)), scale);
    if (ep->leaky) v = _mm256_blendv_ps(v, _mm256_mul_ps(v, _mm256_set1_ps(ep->alpha)), _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ));
    return v;
}

/// (acc + bias) · scale for 8 outputs from o0, then the leaky slope.
static inline TAVX2 __attribute__((always_inline)) __m256 dequantize8_avx2(__m256i acc, int o0, const edge_q8_epilogue *ep) {
    return dequantize_avx2(acc, _mm256_loadu_si256((const __m256i *)(ep->bias + o0)), _mm256_loadu_ps(ep->scale + o0), ep);
}

/// The epilogue for NV·8 outputs from NV vectors of 8 INT32 sums (bit-identical to finish_row).
/// A panel of 9 to 15 outputs (a pruned layer of 12 channels) is finished with both vectors, the
/// bias and scale arrays being padded to 16; a half panel (NV = 1, at most 8 outputs) converts one.
/// Only the n real values are stored, by masked or piecewise stores (no library call per row).
static inline TAVX2 __attribute__((always_inline)) void finish_avx2(const int NV, __m256i a0, __m256i a1, int o0, int n,
                                                                   const edge_q8_epilogue *ep, uint8_t *yu, float *yf) {
    __m256 v0 = dequantize8_avx2(a0, o0, ep);
    __m256 v1 = NV == 2 ? dequantize8_avx2(a1, o0 + 8, ep) : v0;
    if (yf) {
        // Whole vectors first; the rest (fewer than 8) by a masked store of lanes below `left`.
        float *y = yf + o0;
        __m256 rest = v0;
        if (n >= 8) {
            _mm256_storeu_ps(y, v0);
            y += 8;
            rest = v1;
        }
        int left = n >= 8 ? n - 8 : n;
        if (left == 8) _mm256_storeu_ps(y, rest);
        else if (left) _mm256_maskstore_ps(y, edge_mask256(left), rest);
        return;
    }
    __m256i q0 = requantize8_avx2(v0, ep);
    if (NV == 1) {
        __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q0), _mm256_extracti128_si256(q0, 1));  // 8 int16 in order
        __m128i b = _mm_packus_epi16(w, w);
        if (n == 8) _mm_storel_epi64((__m128i *)(yu + o0), b);
        else store_u8_part(yu + o0, b, n);
        return;
    }
    __m256i q1 = requantize8_avx2(v1, ep);
    __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8);  // 16 int16 in order
    __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    if (n == PANEL) _mm_storeu_si128((__m128i *)(yu + o0), b);
    else store_u8_part(yu + o0, b, n);
}

/// MR rows × NV·8 outputs over kb values (k-pairs) of widened input: accp holds MR × 2 vectors of
/// INT32 sums, loaded before and stored after so the loop keeps all twelve in registers. NV = 1 is
/// the half panel: a panel with at most 8 outputs (a pruned layer of 8 channels, the 8 left over
/// from 24) reads only the first 8 outputs of each k-pair, half the multiplies.
static inline TAVX2 __attribute__((always_inline)) void block_avx2(const int MR, const int NV, int kb, const int16_t *xw,
                                                                  const int16_t *w, __m256i *accp) {
    __m256i a[MR_AVX2][2];
    for (int r = 0; r < MR; r++) { a[r][0] = accp[2 * r]; a[r][1] = accp[2 * r + 1]; }
    for (int k = 0; k < kb; k += 2) {
        __m256i w0 = _mm256_load_si256((const __m256i *)(w + (size_t)k * PANEL));
        __m256i w1 = NV == 2 ? _mm256_load_si256((const __m256i *)(w + (size_t)k * PANEL + 16)) : w0;
        for (int r = 0; r < MR; r++) {
            int32_t pair;
            memcpy(&pair, xw + r * XBLOCK + k, 4);
            __m256i xv = _mm256_set1_epi32(pair);
            a[r][0] = _mm256_add_epi32(a[r][0], _mm256_madd_epi16(w0, xv));
            if (NV == 2) a[r][1] = _mm256_add_epi32(a[r][1], _mm256_madd_epi16(w1, xv));
        }
    }
    for (int r = 0; r < MR; r++) { accp[2 * r] = a[r][0]; accp[2 * r + 1] = a[r][1]; }
}

/// MR rows × one 16-output panel (NV = 2) or its first 8 outputs (NV = 1) over all k; xw holds
/// the rows widened when `widened`, else each block is widened here.
static inline TAVX2 __attribute__((always_inline)) void tile_avx2(const int MR, const int NV, int kp, int kin, const uint8_t *x,
                                                                 int ldx, int widened, int16_t *xw, const int16_t *w, int o0,
                                                                 int cols, const edge_q8_epilogue *ep, uint8_t *yu, float *yf,
                                                                 int ldy) {
    __m256i acc[2 * MR_AVX2];
    for (int i = 0; i < 2 * MR; i++) acc[i] = _mm256_setzero_si256();
    for (int k0 = 0; k0 < kp; k0 += XBLOCK) {
        int kb = kp - k0 < XBLOCK ? kp - k0 : XBLOCK;
        if (!widened) widen_rows(MR, x, ldx, k0, kb, kin, xw);
        block_avx2(MR, NV, kb, xw, w + (size_t)k0 * PANEL, acc);
    }
    int n = cols < PANEL ? cols : PANEL;
    for (int r = 0; r < MR; r++)
        finish_avx2(NV, acc[2 * r], acc[2 * r + 1], o0, n, ep, yu ? yu + (size_t)r * ldy : 0, yf ? yf + (size_t)r * ldy : 0);
}

/// One row, four panels at once (eight independent accumulator chains), the row widened once.
static inline TAVX2 __attribute__((always_inline)) void gemv_avx2(const int NP, int kp, const int16_t *xw, const int16_t *w,
                                                                 size_t pstride, int o0, int cols, const edge_q8_epilogue *ep,
                                                                 uint8_t *yu, float *yf) {
    __m256i acc[4][2];
    for (int p = 0; p < NP; p++) acc[p][0] = acc[p][1] = _mm256_setzero_si256();
    for (int k = 0; k < kp; k += 2) {
        int32_t pair;
        memcpy(&pair, xw + k, 4);
        __m256i xv = _mm256_set1_epi32(pair);
        for (int p = 0; p < NP; p++) {
            const int16_t *wk = w + p * pstride + (size_t)k * PANEL;
            acc[p][0] = _mm256_add_epi32(acc[p][0], _mm256_madd_epi16(_mm256_load_si256((const __m256i *)wk), xv));
            acc[p][1] = _mm256_add_epi32(acc[p][1], _mm256_madd_epi16(_mm256_load_si256((const __m256i *)(wk + 16)), xv));
        }
    }
    for (int p = 0; p < NP; p++) {
        int n = cols - p * PANEL;
        if (n <= 0) break;
        finish_avx2(2, acc[p][0], acc[p][1], o0 + p * PANEL, n < PANEL ? n : PANEL, ep, yu, yf);
    }
}

#define ATILE(MR) \
    static TAVX2 void atile_##MR(int kp, int kin, const uint8_t *x, int ldx, int widened, int16_t *xw, const int16_t *w, int o0, \
                                 int cols, const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) { \
        tile_avx2(MR, 2, kp, kin, x, ldx, widened, xw, w, o0, cols, ep, yu, yf, ldy); \
    } \
    static TAVX2 void htile_##MR(int kp, int kin, const uint8_t *x, int ldx, int widened, int16_t *xw, const int16_t *w, int o0, \
                                 int cols, const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) { \
        tile_avx2(MR, 1, kp, kin, x, ldx, widened, xw, w, o0, cols, ep, yu, yf, ldy); \
    }
ATILE(1) ATILE(2) ATILE(3) ATILE(4) ATILE(5) ATILE(6)
typedef void (*atile_fn)(int, int, const uint8_t *, int, int, int16_t *, const int16_t *, int, int, const edge_q8_epilogue *,
                         uint8_t *, float *, int);

#define AGEMV(NP) \
    static TAVX2 void agemv_##NP(int kp, const int16_t *xw, const int16_t *w, size_t ps, int o0, int cols, \
                                 const edge_q8_epilogue *ep, uint8_t *yu, float *yf) { \
        gemv_avx2(NP, kp, xw, w, ps, o0, cols, ep, yu, yf); \
    }
AGEMV(1) AGEMV(2) AGEMV(3) AGEMV(4)

static TAVX2 void q8_avx2(int rows, int outputs, int inputs, const uint8_t *x, int ldx, const void *packed,
                          const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) {
    static const atile_fn tiles[MR_AVX2] = {atile_1, atile_2, atile_3, atile_4, atile_5, atile_6};
    static const atile_fn halves[MR_AVX2] = {htile_1, htile_2, htile_3, htile_4, htile_5, htile_6};
    int panels = (outputs + PANEL - 1) / PANEL, kp = ROUND4(inputs);
    size_t ps = (size_t)kp * PANEL;  // int16 per panel
    const int16_t *w = (const int16_t *)packed;
    _Alignas(32) int16_t xw[MR_AVX2 * XBLOCK];
    int fits = kp <= XBLOCK;
    if (rows == 1 && fits) {
        widen_rows(1, x, ldx, 0, kp, inputs, xw);
        for (int p = 0; p < panels; p += 4) {
            int np = panels - p < 4 ? panels - p : 4, cols = outputs - p * PANEL;
            const int16_t *wp = w + p * ps;
            switch (np) {
            case 1: agemv_1(kp, xw, wp, ps, p * PANEL, cols, ep, yu, yf); break;
            case 2: agemv_2(kp, xw, wp, ps, p * PANEL, cols, ep, yu, yf); break;
            case 3: agemv_3(kp, xw, wp, ps, p * PANEL, cols, ep, yu, yf); break;
            default: agemv_4(kp, xw, wp, ps, p * PANEL, cols, ep, yu, yf); break;
            }
        }
        return;
    }
    for (int m = 0; m < rows; m += MR_AVX2) {
        int mr = rows - m < MR_AVX2 ? rows - m : MR_AVX2;
        const uint8_t *xm = x + (size_t)m * ldx;
        // Inputs that fit one block are widened once for every panel.
        if (fits) widen_rows(mr, xm, ldx, 0, kp, inputs, xw);
        for (int p = 0; p < panels; p++) {
            int cols = outputs - p * PANEL;
            (cols <= PANEL / 2 ? halves : tiles)[mr - 1](kp, inputs, xm, ldx, fits, xw, w + p * ps, p * PANEL, cols, ep,
                                                         yu ? yu + (size_t)m * ldy : 0, yf ? yf + (size_t)m * ldy : 0, ldy);
        }
    }
}

// ---- AVX-512 without VNNI: 512-bit vpmaddwd -------------------------------------------------
// The AVX2 vpmaddwd kernel's weights (int16 k-pairs, packed once) and widened input rows on
// 512-bit vectors: one k-pair of a whole 16-output panel is one operand, so a row and a k-pair
// cost one vpmaddwd and one vpaddd for 32 products, where AVX2 spends two of each. A tile is
// 8 rows × 2 panels, 16 accumulators of the 32 registers; batch 1 runs four panels at once. The
// sums are the same integers in the same order as every other path, finished by finish512_tile.

#define MR_512 8

/// MR rows × NP panels over kb values (k-pairs) of widened input, the sums kept in accp between blocks.
static inline T512 __attribute__((always_inline)) void block_512(const int MR, const int NP, int kb, const int16_t *xw,
                                                                const int16_t *w, size_t pstride, __m512i accp[][2]) {
    __m512i a[MR_512][2];
    for (int r = 0; r < MR; r++)
        for (int p = 0; p < NP; p++) a[r][p] = accp[r][p];
    for (int k = 0; k < kb; k += 2) {
        __m512i w0 = _mm512_loadu_si512(w + (size_t)k * PANEL);
        __m512i w1 = NP == 2 ? _mm512_loadu_si512(w + pstride + (size_t)k * PANEL) : w0;
        for (int r = 0; r < MR; r++) {
            int32_t pair;
            memcpy(&pair, xw + r * XBLOCK + k, 4);
            __m512i xv = _mm512_set1_epi32(pair);
            a[r][0] = _mm512_add_epi32(a[r][0], _mm512_madd_epi16(w0, xv));
            if (NP == 2) a[r][1] = _mm512_add_epi32(a[r][1], _mm512_madd_epi16(w1, xv));
        }
    }
    for (int r = 0; r < MR; r++)
        for (int p = 0; p < NP; p++) accp[r][p] = a[r][p];
}

/// MR rows × NP panels (from output o0, `cols` outputs left) over all k, as tile_avx2.
static inline T512 __attribute__((always_inline)) void tile_512(const int MR, const int NP, int kp, int kin, const uint8_t *x, int ldx,
                                                               int widened, int16_t *xw, const int16_t *w, size_t pstride, int o0,
                                                               int cols, const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) {
    __m512i acc[MR_512][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    for (int k0 = 0; k0 < kp; k0 += XBLOCK) {
        int kb = kp - k0 < XBLOCK ? kp - k0 : XBLOCK;
        if (!widened) widen_rows(MR, x, ldx, k0, kb, kin, xw);
        block_512(MR, NP, kb, xw, w + (size_t)k0 * PANEL, pstride, acc);
    }
    finish512_tile(MR, NP, acc, o0, cols, ep, yu, yf, ldy);
}

/// One widened row, NP panels at once.
static inline T512 __attribute__((always_inline)) void gemv_512(const int NP, int kp, const int16_t *xw, const int16_t *w,
                                                               size_t pstride, int o0, int cols, const edge_q8_epilogue *ep,
                                                               uint8_t *yu, float *yf) {
    __m512i acc[4];
    for (int p = 0; p < NP; p++) acc[p] = _mm512_setzero_si512();
    for (int k = 0; k < kp; k += 2) {
        int32_t pair;
        memcpy(&pair, xw + k, 4);
        __m512i xv = _mm512_set1_epi32(pair);
        for (int p = 0; p < NP; p++)
            acc[p] = _mm512_add_epi32(acc[p], _mm512_madd_epi16(_mm512_loadu_si512(w + p * pstride + (size_t)k * PANEL), xv));
    }
    for (int p = 0; p < NP; p++) {
        int n = cols - p * PANEL;
        if (n <= 0) break;
        finish512(acc[p], o0 + p * PANEL, n, ep, yu, yf);
    }
}

#define WTILE(MR, NP) \
    static T512 void wtile_##MR##_##NP(int kp, int kin, const uint8_t *x, int ldx, int widened, int16_t *xw, const int16_t *w, \
                                       size_t ps, int o0, int cols, const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) { \
        tile_512(MR, NP, kp, kin, x, ldx, widened, xw, w, ps, o0, cols, ep, yu, yf, ldy); \
    }
WTILE(1, 1) WTILE(2, 1) WTILE(3, 1) WTILE(4, 1) WTILE(5, 1) WTILE(6, 1) WTILE(7, 1) WTILE(8, 1)
WTILE(1, 2) WTILE(2, 2) WTILE(3, 2) WTILE(4, 2) WTILE(5, 2) WTILE(6, 2) WTILE(7, 2) WTILE(8, 2)
typedef void (*wtile_fn)(int, int, const uint8_t *, int, int, int16_t *, const int16_t *, size_t, int, int, const edge_q8_epilogue *,
                         uint8_t *, float *, int);

#define WGEMV(NP) \
    static T512 void wgemv_##NP(int kp, const int16_t *xw, const int16_t *w, size_t ps, int o0, int cols, \
                                const edge_q8_epilogue *ep, uint8_t *yu, float *yf) { \
        gemv_512(NP, kp, xw, w, ps, o0, cols, ep, yu, yf); \
    }
WGEMV(1) WGEMV(2) WGEMV(3) WGEMV(4)
typedef void (*wgemv_fn)(int, const int16_t *, const int16_t *, size_t, int, int, const edge_q8_epilogue *, uint8_t *, float *);

static T512 void q8_avx512(int rows, int outputs, int inputs, const uint8_t *x, int ldx, const void *packed,
                           const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) {
    static const wtile_fn tiles[2][MR_512] = {
        {wtile_1_1, wtile_2_1, wtile_3_1, wtile_4_1, wtile_5_1, wtile_6_1, wtile_7_1, wtile_8_1},
        {wtile_1_2, wtile_2_2, wtile_3_2, wtile_4_2, wtile_5_2, wtile_6_2, wtile_7_2, wtile_8_2},
    };
    int panels = (outputs + PANEL - 1) / PANEL, kp = ROUND4(inputs);
    size_t ps = (size_t)kp * PANEL;  // int16 per panel
    const int16_t *w = (const int16_t *)packed;
    _Alignas(64) int16_t xw[MR_512 * XBLOCK];
    int fits = kp <= XBLOCK;
    if (rows == 1 && fits) {
        static const wgemv_fn gemv[4] = {wgemv_1, wgemv_2, wgemv_3, wgemv_4};
        widen_rows(1, x, ldx, 0, kp, inputs, xw);
        for (int p = 0; p < panels; p += 4) {
            int np = panels - p < 4 ? panels - p : 4;
            gemv[np - 1](kp, xw, w + p * ps, ps, p * PANEL, outputs - p * PANEL, ep, yu, yf);
        }
        return;
    }
    for (int m = 0; m < rows; m += MR_512) {
        int mr = rows - m < MR_512 ? rows - m : MR_512;
        const uint8_t *xm = x + (size_t)m * ldx;
        if (fits) widen_rows(mr, xm, ldx, 0, kp, inputs, xw);  // once for every panel
        for (int p = 0; p < panels; p += 2) {
            int np = panels - p >= 2 ? 2 : 1;
            tiles[np - 1][mr - 1](kp, inputs, xm, ldx, fits, xw, w + p * ps, ps, p * PANEL, outputs - p * PANEL, ep,
                                  yu ? yu + (size_t)m * ldy : 0, yf ? yf + (size_t)m * ldy : 0, ldy);
        }
    }
}

// ---- AVX2 vpmaddubsw, for weights that cannot saturate it ---------------------------------
// edge_q8_choose picks this kernel only when every pair sum x0·w0 + x1·w1 fits int16 for any
// UINT8 x, so vpmaddubsw (32 u8·s8 products summed in pairs) is exact; vpmaddwd by ones then sums
// the pairs of pairs into INT32. Per 32 products that is two multiplies and one add, where the
// vpmaddwd kernel spends two multiplies and two adds on 16 widened ones (and widens the rows).
// The weights are the k-quad layout; each row's quads are broadcast straight from the UINT8 row.

#define MR_U8S8 6

/// MR rows × one panel (NV = 2: 16 outputs, NV = 1: the first 8) over all k-quads.
static inline TAVX2 __attribute__((always_inline)) void tile_u8s8(const int MR, const int NV, int kq, const uint8_t *x, int ldx,
                                                                 const int8_t *w, int o0, int cols, const edge_q8_epilogue *ep,
                                                                 uint8_t *yu, float *yf, int ldy) {
    __m256i a[2 * MR_U8S8 + 2];
    __m256i ones = _mm256_set1_epi16(1);
    for (int i = 0; i < 2 * MR; i++) a[i] = _mm256_setzero_si256();
    for (int q = 0; q < kq; q++) {
        __m256i w0 = _mm256_load_si256((const __m256i *)(w + (size_t)q * 64));
        __m256i w1 = NV == 2 ? _mm256_load_si256((const __m256i *)(w + (size_t)q * 64 + 32)) : w0;
        for (int r = 0; r < MR; r++) {
            int32_t quad;
            memcpy(&quad, x + (size_t)r * ldx + (size_t)q * 4, 4);
            __m256i xv = _mm256_set1_epi32(quad);
            a[2 * r] = _mm256_add_epi32(a[2 * r], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, w0), ones));
            if (NV == 2) a[2 * r + 1] = _mm256_add_epi32(a[2 * r + 1], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, w1), ones));
        }
    }
    int n = cols < PANEL ? cols : PANEL;
    for (int r = 0; r < MR; r++)
        finish_avx2(NV, a[2 * r], a[2 * r + 1], o0, n, ep, yu ? yu + (size_t)r * ldy : 0, yf ? yf + (size_t)r * ldy : 0);
}

/// One row, NP panels at once (2·NP independent accumulator chains).
static inline TAVX2 __attribute__((always_inline)) void gemv_u8s8(const int NP, int kq, const uint8_t *x, const int8_t *w,
                                                                 size_t pstride, int o0, int cols, const edge_q8_epilogue *ep,
                                                                 uint8_t *yu, float *yf) {
    __m256i acc[4][2];
    __m256i ones = _mm256_set1_epi16(1);
    for (int p = 0; p < NP; p++) acc[p][0] = acc[p][1] = _mm256_setzero_si256();
    for (int q = 0; q < kq; q++) {
        int32_t quad;
        memcpy(&quad, x + (size_t)q * 4, 4);
        __m256i xv = _mm256_set1_epi32(quad);
        for (int p = 0; p < NP; p++) {
            const int8_t *wq = w + p * pstride + (size_t)q * 64;
            acc[p][0] = _mm256_add_epi32(acc[p][0], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, _mm256_load_si256((const __m256i *)wq)), ones));
            acc[p][1] = _mm256_add_epi32(acc[p][1],
                                         _mm256_madd_epi16(_mm256_maddubs_epi16(xv, _mm256_load_si256((const __m256i *)(wq + 32))), ones));
        }
    }
    for (int p = 0; p < NP; p++) {
        int n = cols - p * PANEL;
        if (n <= 0) break;
        finish_avx2(2, acc[p][0], acc[p][1], o0 + p * PANEL, n < PANEL ? n : PANEL, ep, yu, yf);
    }
}

#define UTILE(MR) \
    static TAVX2 void utile_##MR(int kq, const uint8_t *x, int ldx, const int8_t *w, int o0, int cols, const edge_q8_epilogue *ep, \
                                 uint8_t *yu, float *yf, int ldy) { \
        tile_u8s8(MR, 2, kq, x, ldx, w, o0, cols, ep, yu, yf, ldy); \
    } \
    static TAVX2 void uhalf_##MR(int kq, const uint8_t *x, int ldx, const int8_t *w, int o0, int cols, const edge_q8_epilogue *ep, \
                                 uint8_t *yu, float *yf, int ldy) { \
        tile_u8s8(MR, 1, kq, x, ldx, w, o0, cols, ep, yu, yf, ldy); \
    }
UTILE(1) UTILE(2) UTILE(3) UTILE(4) UTILE(5) UTILE(6)
typedef void (*utile_fn)(int, const uint8_t *, int, const int8_t *, int, int, const edge_q8_epilogue *, uint8_t *, float *, int);

#define UGEMV(NP) \
    static TAVX2 void ugemv_##NP(int kq, const uint8_t *x, const int8_t *w, size_t ps, int o0, int cols, \
                                 const edge_q8_epilogue *ep, uint8_t *yu, float *yf) { \
        gemv_u8s8(NP, kq, x, w, ps, o0, cols, ep, yu, yf); \
    }
UGEMV(1) UGEMV(2) UGEMV(3) UGEMV(4)

static TAVX2 void q8_u8s8(int rows, int outputs, int inputs, const uint8_t *x, int ldx, const void *packed,
                          const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) {
    static const utile_fn tiles[MR_U8S8] = {utile_1, utile_2, utile_3, utile_4, utile_5, utile_6};
    static const utile_fn halves[MR_U8S8] = {uhalf_1, uhalf_2, uhalf_3, uhalf_4, uhalf_5, uhalf_6};
    int panels = (outputs + PANEL - 1) / PANEL, kq = ROUND4(inputs) / 4;
    size_t ps = (size_t)kq * 64;
    const int8_t *w = (const int8_t *)packed;
    if (rows == 1) {
        static const q8_gemv_fn gemv[4] = {ugemv_1, ugemv_2, ugemv_3, ugemv_4};
        gemv_quads(gemv, outputs, kq, x, w, ep, yu, yf);
        return;
    }
    // Panels outer: one panel's weights (64 bytes a k-quad) stay in L1 while every row tile reads them.
    for (int p = 0; p < panels; p++) {
        int cols = outputs - p * PANEL;
        for (int m = 0; m < rows; m += MR_U8S8) {
            int mr = rows - m < MR_U8S8 ? rows - m : MR_U8S8;
            (cols <= PANEL / 2 ? halves : tiles)[mr - 1](kq, x + (size_t)m * ldx, ldx, w + p * ps, p * PANEL, cols, ep,
                                                         yu ? yu + (size_t)m * ldy : 0, yf ? yf + (size_t)m * ldy : 0, ldy);
        }
    }
}
// ---- INT8 convolution of a single-channel image (a first layer), AVX2 vpmaddubsw ----------
// im2row + GEMM is at its worst here: a 5×5 window of one channel is a 25-byte row (28 with the
// quad padding) that im2row writes and the GEMM reads back (1.4 MB for 64 28×28 images, out of
// L2), and a layer of 8 outputs fills half a panel, so each row's epilogue costs about as much as
// its multiplies. This kernel reads windows straight from a padded copy of each image and puts
// 8 output pixels in the lanes instead of outputs: for kernel row ky and taps 4q … 4q+3, lane j
// holds the 4 bytes from pixel j's window start (one 16-byte load and a vpshufb for all 8
// pixels), multiplied by output c's 4 weights broadcast (vpmaddubsw, then vpmaddwd by ones).
// A kernel row of kw ≤ 4 taps is one quad, of 5 to 8 two (the taps past kw weigh 0). 8 outputs
// are 8 accumulators; their epilogue is the GEMM's per lane, and a byte transpose writes the
// 8 pixels' 8 channels. The integer sums are the GEMM's (padding taps read the zero point, as
// im2row writes it), so the outputs are identical.

#define C1_IMAGE_BYTES 32768

/// The padded image's rows and pitch, or 0 for a geometry the kernel does not take.
static int c1_shape(int height, int width, int kh, int kw, int sh, int sw, int ph, int pw, int *oh, int *ow, int *hp, int *pitch) {
    if (height <= 0 || width <= 0 || kh <= 0 || kw <= 0 || kw > 8 || sh <= 0 || sw != 1 || ph < 0 || pw < 0) return 0;
    if (height > C1_IMAGE_BYTES || width > C1_IMAGE_BYTES || kh > C1_IMAGE_BYTES || ph > C1_IMAGE_BYTES || pw > C1_IMAGE_BYTES ||
        sh > C1_IMAGE_BYTES)
        return 0;  // far from int overflow below; such an image cannot fit the buffer anyway
    int rows = height + 2 * ph, cols = width + 2 * pw;
    if (kh > rows || kw > cols) return 0;
    int w = cols - kw + 1, blocks = (w + 7) / 8;
    // A window load is 16 bytes from x0 + 4q (x0 ≤ 8·(blocks − 1), q ≤ 1): it ends by 8·blocks + 12.
    // The pitch also covers the padded row (cols = w + kw − 1 ≤ 8·blocks + 7).
    int p = 8 * blocks + 20;
    if ((long long)rows * p > C1_IMAGE_BYTES) return 0;
    *oh = (rows - kh) / sh + 1;
    *ow = w;
    *hp = rows;
    *pitch = p;
    return 1;
}

/// 1 when no pair of taps a vpmaddubsw lane multiplies (kx = 2i, 2i + 1 of one kernel row, a tap
/// past kw weighing 0) can reach the int16 limits for any UINT8 input.
static int c1_weights_safe(const int8_t *w, int outputs, int kh, int kw) {
    for (int r = 0; r < outputs * kh; r++)  // each kernel row of each output: u8s8_safe's pairs, per row
        if (!u8s8_safe(w + (size_t)r * kw, 1, kw)) return 0;
    return 1;
}

/// Requantizes 8 outputs' accumulators (8 pixels each) and writes the 8 pixels' 8 channels
/// (`valid` of them, rows `ldy` bytes apart) — finish_avx2's arithmetic, lane for lane.
static inline TAVX2 __attribute__((always_inline)) void c1_finish(const __m256i *acc, int o0, const edge_q8_epilogue *ep, uint8_t *y,
                                                                 int ldy, int valid) {
    __m256i q[8];
    for (int c = 0; c < 8; c++)  // one output a vector: its bias and scale broadcast
        q[c] = requantize8_avx2(dequantize_avx2(acc[c], _mm256_set1_epi32(ep->bias[o0 + c]), _mm256_set1_ps(ep->scale[o0 + c]), ep), ep);
    // Bytes per 128-bit lane: channels 0-3 (b0) or 4-7 (b1) × pixels 0-3 (lane 0) or 4-7 (lane 1),
    // channel-major; the shuffle makes them pixel-major, the unpacks join the two channel halves.
    __m256i b0 = _mm256_packus_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    __m256i b1 = _mm256_packus_epi16(_mm256_packs_epi32(q[4], q[5]), _mm256_packs_epi32(q[6], q[7]));
    const __m256i t = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7,
                                       11, 15);
    b0 = _mm256_shuffle_epi8(b0, t);
    b1 = _mm256_shuffle_epi8(b1, t);
    __m256i lo = _mm256_unpacklo_epi32(b0, b1), hi = _mm256_unpackhi_epi32(b0, b1);  // pixels 0,1 | 4,5 and 2,3 | 6,7
    __m256i p03 = _mm256_permute2x128_si256(lo, hi, 0x20), p47 = _mm256_permute2x128_si256(lo, hi, 0x31);
    if (ldy == 8 && valid == 8) {
        _mm256_storeu_si256((__m256i *)y, p03);
        _mm256_storeu_si256((__m256i *)(y + 32), p47);
        return;
    }
    _Alignas(32) uint8_t px[64];
    _mm256_store_si256((__m256i *)px, p03);
    _mm256_store_si256((__m256i *)(px + 32), p47);
    for (int p = 0; p < valid; p++) memcpy(y + (size_t)p * ldy, px + 8 * p, 8);
}

static TAVX2 void conv1_avx2(int samples, const uint8_t *x, int height, int width, int kh, int kw, int sh, int ph, int pw, uint8_t pad,
                             const int32_t *wq, int outputs, const edge_q8_epilogue *ep, uint8_t *y, int oh, int ow, int hp, int pitch) {
    _Alignas(32) uint8_t img[C1_IMAGE_BYTES];
    const __m256i ones = _mm256_set1_epi16(1);
    // Lane j (pixel j of 8): bytes j … j+3 of the 16 loaded (both 128-bit lanes hold the same 16).
    const __m256i slide = _mm256_setr_epi8(0, 1, 2, 3, 1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5, 6, 4, 5, 6, 7, 5, 6, 7, 8, 6, 7, 8, 9, 7, 8, 9, 10);
    int quads = kw > 4 ? 2 : 1, groups = outputs / 8;
    size_t out_sample = (size_t)oh * ow * outputs;
    memset(img, pad, (size_t)hp * pitch);  // the padding; each sample's rows overwrite only their own bytes
    for (int n = 0; n < samples; n++) {
        const uint8_t *xs = x + (size_t)n * height * width;
        for (int iy = 0; iy < height; iy++) memcpy(img + (size_t)(iy + ph) * pitch + pw, xs + (size_t)iy * width, (size_t)width);
        uint8_t *ys = y + (size_t)n * out_sample;
        for (int oy = 0; oy < oh; oy++)
            for (int x0 = 0; x0 < ow; x0 += 8) {
                int valid = ow - x0 < 8 ? ow - x0 : 8;
                for (int g = 0; g < groups; g++) {
                    __m256i acc[8];
                    for (int c = 0; c < 8; c++) acc[c] = _mm256_setzero_si256();
                    const int32_t *wg = wq + (size_t)g * kh * quads * 8;
                    for (int ky = 0; ky < kh; ky++) {
                        const uint8_t *src = img + (size_t)(oy * sh + ky) * pitch + x0;
                        for (int q = 0; q < quads; q++) {
                            __m256i a = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(src + 4 * q))), slide);
                            const int32_t *wk = wg + (size_t)(ky * quads + q) * 8;
                            for (int c = 0; c < 8; c++)
                                acc[c] = _mm256_add_epi32(acc[c], _mm256_madd_epi16(_mm256_maddubs_epi16(a, _mm256_set1_epi32(wk[c])), ones));
                        }
                    }
                    c1_finish(acc, g * 8, ep, ys + ((size_t)oy * ow + x0) * outputs + g * 8, outputs, valid);
                }
            }
    }
}
#endif

// ---- the single-channel convolution's entry points (x86-64 only; elsewhere it never applies) ----

int edge_q8_conv1_supported(edge_isa isa, const int8_t *w, int outputs, int height, int width, int kh, int kw, int sh, int sw, int ph,
                            int pw) {
#if defined(__x86_64__)
    int oh, ow, hp, pitch;
    if (outputs <= 0 || outputs % 8 || outputs > 4096 || !c1_shape(height, width, kh, kw, sh, sw, ph, pw, &oh, &ow, &hp, &pitch)) return 0;
    // The GEMM's own choice first (AVX2 here, and weights safe in its pairing), then this pairing.
    if (edge_q8_choose(isa, w, outputs, kh * kw) != EDGE_ISA_AVX2_U8S8 || !edge_isa_supported(EDGE_ISA_AVX2)) return 0;
    return c1_weights_safe(w, outputs, kh, kw);
#else
    (void)isa, (void)w, (void)outputs, (void)height, (void)width, (void)kh, (void)kw, (void)sh, (void)sw, (void)ph, (void)pw;
    return 0;
#endif
}

size_t edge_q8_conv1_packed_bytes(int outputs, int kh, int kw) {
    if (outputs <= 0 || kh <= 0 || kw <= 0 || kw > 8) return 0;
    return (size_t)((outputs + 7) / 8) * (size_t)kh * (kw > 4 ? 2 : 1) * 8 * sizeof(int32_t);
}

void edge_q8_conv1_pack(const int8_t *w, int outputs, int kh, int kw, void *packed) {
    if (outputs <= 0 || kh <= 0 || kw <= 0 || kw > 8) return;
    int quads = kw > 4 ? 2 : 1;
    int8_t *dst = (int8_t *)packed;
    for (int g = 0; g < (outputs + 7) / 8; g++)
        for (int ky = 0; ky < kh; ky++)
            for (int q = 0; q < quads; q++)
                for (int c = 0; c < 8; c++)
                    for (int t = 0; t < 4; t++) {
                        int o = g * 8 + c, kx = 4 * q + t;
                        *dst++ = (o < outputs && kx < kw) ? w[((size_t)o * kh + ky) * kw + kx] : 0;
                    }
}

void edge_q8_conv1(int samples, const uint8_t *x, int height, int width, int kh, int kw, int sh, int ph, int pw, uint8_t pad,
                   const void *packed, int outputs, const edge_q8_epilogue *ep, uint8_t *y) {
#if defined(__x86_64__)
    int oh, ow, hp, pitch;
    if (samples <= 0 || outputs <= 0 || outputs % 8 || !c1_shape(height, width, kh, kw, sh, 1, ph, pw, &oh, &ow, &hp, &pitch)) return;
    if (!edge_isa_supported(EDGE_ISA_AVX2)) return;
    conv1_avx2(samples, x, height, width, kh, kw, sh, ph, pw, pad, (const int32_t *)packed, outputs, ep, y, oh, ow, hp, pitch);
#else
    (void)samples, (void)x, (void)height, (void)width, (void)kh, (void)kw, (void)sh, (void)ph, (void)pw, (void)pad, (void)packed,
        (void)outputs, (void)ep, (void)y;
#endif
}

#if defined(__aarch64__)
#include <arm_neon.h>

// ---- NEON dot product -------------------------------------------------------------------------
// sdot multiplies s8 × s8: the u8 input is shifted to s8 (x − 128) and 128·Σ_k W[o][k] is added back.

__attribute__((target("dotprod")))
static void q8_neondot(int rows, int outputs, int inputs, const uint8_t *x, int ldx, const void *packed,
                       const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) {
    int panels = (outputs + PANEL - 1) / PANEL, kq = ROUND4(inputs) / 4;
    const int8_t *w0 = (const int8_t *)packed;
    const int32_t *sums = edge_q8_column_sums(EDGE_ISA_NEONDOT, packed, outputs, inputs);
    for (int m = 0; m < rows; m++) {
        const uint8_t *xr = x + (size_t)m * ldx;
        for (int p = 0; p < panels; p++) {
            const int8_t *w = w0 + (size_t)p * kq * 64;
            int32x4_t acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
            for (int q = 0; q < kq; q++) {
                uint32_t quad;
                memcpy(&quad, xr + (size_t)q * 4, 4);
                int8x16_t xv = vreinterpretq_s8_u32(vdupq_n_u32(quad ^ 0x80808080u));
                for (int i = 0; i < 4; i++) acc[i] = vdotq_s32(acc[i], vld1q_s8(w + (size_t)q * 64 + 16 * i), xv);
            }
            int32_t out[PANEL];
            for (int i = 0; i < 4; i++) {
                int32x4_t fix = vmulq_n_s32(vld1q_s32(sums + p * PANEL + 4 * i), 128);
                vst1q_s32(out + 4 * i, vaddq_s32(acc[i], fix));
            }
            int n = outputs - p * PANEL < PANEL ? outputs - p * PANEL : PANEL;
            finish_row(out, p * PANEL, n, ep, yu ? yu + (size_t)m * ldy : 0, yf ? yf + (size_t)m * ldy : 0);
        }
    }
}
#endif

void edge_q8_gemm(edge_isa isa, int rows, int outputs, int inputs, const uint8_t *x, int ldx, const void *packed,
                  const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) {
    if (rows <= 0 || outputs <= 0 || inputs < 0) return;
    isa = resolve(isa);
    switch (isa) {
#if defined(__x86_64__)
    case EDGE_ISA_AVX512VNNI: q8_vnni(rows, outputs, inputs, x, ldx, packed, ep, yu, yf, ldy); return;
    case EDGE_ISA_AVX512: q8_avx512(rows, outputs, inputs, x, ldx, packed, ep, yu, yf, ldy); return;
    case EDGE_ISA_AVX2: q8_avx2(rows, outputs, inputs, x, ldx, packed, ep, yu, yf, ldy); return;
    case EDGE_ISA_AVX2_U8S8: q8_u8s8(rows, outputs, inputs, x, ldx, packed, ep, yu, yf, ldy); return;
#endif
#if defined(__aarch64__)
    case EDGE_ISA_NEONDOT: q8_neondot(rows, outputs, inputs, x, ldx, packed, ep, yu, yf, ldy); return;
#endif
    default: q8_portable(rows, outputs, inputs, x, ldx, packed, ep, yu, yf, ldy); return;
    }
}

int edge_q8_conv_direct(edge_isa isa, int channels) {
#if defined(__x86_64__)
    return resolve(isa) == EDGE_ISA_AVX512VNNI && channels >= 8 && channels % 4 == 0;
#else
    (void)isa, (void)channels;
    return 0;
#endif
}

void edge_q8_conv(edge_isa isa, int samples, int pixels, int taps, int channels, const int32_t *table, const uint8_t *x,
                  size_t sample_stride, const uint8_t *pad, const void *packed, int outputs, const edge_q8_epilogue *ep, uint8_t *yu,
                  float *yf, int ldy) {
    if (samples <= 0 || pixels <= 0 || taps <= 0 || outputs <= 0 || !edge_q8_conv_direct(isa, channels)) return;
#if defined(__x86_64__)
    q8_conv_vnni(samples, pixels, taps, channels, table, x, sample_stride, pad, packed, outputs, ep, yu, yf, ldy);
#endif
}

const char *edge_q8_kernel_name(edge_isa isa) {
    isa = resolve(isa);
    switch (isa) {
#if defined(__x86_64__)
    case EDGE_ISA_AVX512VNNI: return "avx512-vnni vpdpbusd";
    case EDGE_ISA_AVX512: return "avx512 vpmaddwd";
    case EDGE_ISA_AVX2: return "avx2 vpmaddwd";
    case EDGE_ISA_AVX2_U8S8: return "avx2 vpmaddubsw (weights that cannot saturate it)";
#endif
#if defined(__aarch64__)
    case EDGE_ISA_NEONDOT: return "neon sdot";
#endif
    default: return "portable c";
    }
}

// ---- quantize / dequantize --------------------------------------------------------------------
// q = clamp(round_half_even(x · inv_scale) + zero_point, 0, 255), as QuantParams.quantize.

static void quantize_portable(const float *x, size_t n, float inv, int32_t zp, uint8_t *y) {
    for (size_t i = 0; i < n; i++) {
        float v = fminf(fmaxf(x[i] * inv, -1073741824.0f), 1073741824.0f);
        int32_t q = (int32_t)nearbyintf(v) + zp;
        y[i] = (uint8_t)(q < 0 ? 0 : (q > 255 ? 255 : q));
    }
}

#if defined(__x86_64__)
EDGE_T512 static void quantize_avx512(const float *x, size_t n, float inv, int32_t zp, uint8_t *y) {
    __m512 vi = _mm512_set1_ps(inv);
    __m512i z = _mm512_set1_epi32(zp), q0 = _mm512_setzero_si512(), q255 = _mm512_set1_epi32(255);
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm_storeu_si128((__m128i *)(y + i), _mm512_cvtepi32_epi8(edge_quantize512(_mm512_mul_ps(_mm512_loadu_ps(x + i), vi), z, q0, q255)));
    quantize_portable(x + i, n - i, inv, zp, y + i);
}
#endif

#if defined(__x86_64__)
// edge_quantize256's rule; the codes are 0…255 already, so the two saturating packs only narrow them.
static inline TAVX2 __attribute__((always_inline)) __m256i quantize8_avx2(const float *x, __m256 vi, __m256i z, __m256i q0, __m256i q255) {
    return edge_quantize256(_mm256_mul_ps(_mm256_loadu_ps(x), vi), z, q0, q255);
}

TAVX2 static void quantize_avx2(const float *x, size_t n, float inv, int32_t zp, uint8_t *y) {
    __m256 vi = _mm256_set1_ps(inv);
    __m256i z = _mm256_set1_epi32(zp), q0 = _mm256_setzero_si256(), q255 = _mm256_set1_epi32(255);
    __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i a = quantize8_avx2(x + i, vi, z, q0, q255), b = quantize8_avx2(x + i + 8, vi, z, q0, q255);
        __m256i c = quantize8_avx2(x + i + 16, vi, z, q0, q255), d = quantize8_avx2(x + i + 24, vi, z, q0, q255);
        // packs/packus work within 128-bit lanes: the bytes come out as 4-byte groups a0 b0 c0 d0 a1 b1 c1 d1.
        __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
        _mm256_storeu_si256((__m256i *)(y + i), _mm256_permutevar8x32_epi32(bytes, order));
    }
    for (; i + 8 <= n; i += 8) {
        __m256i a = quantize8_avx2(x + i, vi, z, q0, q255);
        __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
        _mm_storel_epi64((__m128i *)(y + i), _mm_packus_epi16(words, words));
    }
    quantize_portable(x + i, n - i, inv, zp, y + i);
}
#endif

#if defined(__aarch64__)
// vcvtnq rounds half to even; the saturating narrows clamp to [0, 255]. vmax propagates a NaN (and
// vcvtnq makes it 0, which the zero point would move), so NaN lanes are selected to the lower bound
// first: 0 after clamping, as in the portable code.
static void quantize_neon(const float *x, size_t n, float inv, int32_t zp, uint8_t *y) {
    float32x4_t vi = vdupq_n_f32(inv), lo = vdupq_n_f32(-1073741824.0f), hi = vdupq_n_f32(1073741824.0f);
    int32x4_t z = vdupq_n_s32(zp);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float32x4_t v0 = vmulq_f32(vld1q_f32(x + i), vi), v1 = vmulq_f32(vld1q_f32(x + i + 4), vi);
        uint32x4_t ok0 = vceqq_f32(v0, v0), ok1 = vceqq_f32(v1, v1);
        v0 = vbslq_f32(ok0, vminq_f32(vmaxq_f32(v0, lo), hi), lo);
        v1 = vbslq_f32(ok1, vminq_f32(vmaxq_f32(v1, lo), hi), lo);
        int32x4_t q0 = vaddq_s32(vcvtnq_s32_f32(v0), z), q1 = vaddq_s32(vcvtnq_s32_f32(v1), z);
        vst1_u8(y + i, vqmovun_s16(vcombine_s16(vqmovn_s32(q0), vqmovn_s32(q1))));
    }
    quantize_portable(x + i, n - i, inv, zp, y + i);
}
#endif

void edge_quantize_u8(const float *x, size_t n, float inv_scale, int32_t zero_point, uint8_t *y) {
#if defined(__x86_64__)
    if (edge_isa_supported(EDGE_ISA_AVX512)) { quantize_avx512(x, n, inv_scale, zero_point, y); return; }
    if (edge_isa_supported(EDGE_ISA_AVX2)) { quantize_avx2(x, n, inv_scale, zero_point, y); return; }
#endif
#if defined(__aarch64__)
    quantize_neon(x, n, inv_scale, zero_point, y);
#else
    quantize_portable(x, n, inv_scale, zero_point, y);
#endif
}

void edge_dequantize_u8(const uint8_t *x, size_t n, float scale, int32_t zero_point, float *y) {
    for (size_t i = 0; i < n; i++) y[i] = scale * (float)((int32_t)x[i] - zero_point);
}
