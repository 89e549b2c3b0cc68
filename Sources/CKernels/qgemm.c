// INT8 GEMM: UINT8 activations × INT8 weights → INT32 → requantized UINT8 or dequantized FP32.
//
// Requantization is in FP32 (as XNNPACK does): one conversion, one multiply by a per-output
// scale, one round-half-even, then the zero point and the clamp that also implements ReLU and
// ReLU6. Every path performs exactly these IEEE operations in this order, so all paths and the
// scalar reference agree bit for bit.

#include "ckernels.h"
#include <math.h>
#include <string.h>

#define PANEL 16
#define ROUND4(n) (((n) + 3) & ~3)

size_t edge_q8_packed_bytes(int outputs, int inputs) {
    size_t panels = (size_t)(outputs + PANEL - 1) / PANEL;
    return panels * PANEL * (size_t)ROUND4(inputs) + panels * PANEL * sizeof(int32_t);
}

const int32_t *edge_q8_column_sums(const void *packed, int outputs, int inputs) {
    size_t panels = (size_t)(outputs + PANEL - 1) / PANEL;
    return (const int32_t *)((const int8_t *)packed + panels * PANEL * (size_t)ROUND4(inputs));
}

void edge_q8_pack(const int8_t *w, int outputs, int inputs, void *packed) {
    int panels = (outputs + PANEL - 1) / PANEL, kp = ROUND4(inputs);
    int8_t *dst = (int8_t *)packed;
    for (int p = 0; p < panels; p++)
        for (int kq = 0; kq < kp / 4; kq++)
            for (int j = 0; j < PANEL; j++)
                for (int t = 0; t < 4; t++) {
                    int o = p * PANEL + j, k = kq * 4 + t;
                    *dst++ = (o < outputs && k < inputs) ? w[(size_t)o * inputs + k] : 0;
                }
    int32_t *sums = (int32_t *)edge_q8_column_sums(packed, outputs, inputs);
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

// ---- AVX-512 VNNI -----------------------------------------------------------------------------

#define TVNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

static inline TVNNI __attribute__((always_inline)) void finish512(__m512i acc, int o0, int n, const edge_q8_epilogue *ep,
                                                                  uint8_t *yu, float *yf) {
    __mmask16 mask = n >= PANEL ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc, _mm512_loadu_si512(ep->bias + o0))),
                             _mm512_loadu_ps(ep->scale + o0));
    if (ep->leaky) v = _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), v, _mm512_set1_ps(ep->alpha));
    if (yf) { _mm512_mask_storeu_ps(yf + o0, mask, v); return; }
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-1073741824.0f)), _mm512_set1_ps(1073741824.0f));
    __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), _mm512_set1_epi32(ep->zero_point));  // MXCSR: round half even
    q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(ep->qmin)), _mm512_set1_epi32(ep->qmax));
    _mm_mask_storeu_epi8(yu + o0, mask, _mm512_cvtepi32_epi8(q));
}

/// MR rows × NP panels over all k-quads.
static inline TVNNI __attribute__((always_inline)) void tile_vnni(const int MR, const int NP, int kq, const uint8_t *x, int ldx,
                                                                 const int8_t *w, size_t pstride, int o0, int cols,
                                                                 const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) {
    __m512i acc[8][2];
    for (int r = 0; r < MR; r++)
        for (int p = 0; p < NP; p++) acc[r][p] = _mm512_setzero_si512();
    for (int q = 0; q < kq; q++) {
        __m512i w0 = _mm512_loadu_si512(w + (size_t)q * 64);
        __m512i w1 = NP > 1 ? _mm512_loadu_si512(w + pstride + (size_t)q * 64) : w0;
        for (int r = 0; r < MR; r++) {
            int32_t quad;
            memcpy(&quad, x + (size_t)r * ldx + (size_t)q * 4, 4);
            __m512i xv = _mm512_set1_epi32(quad);
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], xv, w0);
            if (NP > 1) acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], xv, w1);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int p = 0; p < NP; p++) {
            int n = cols - p * PANEL;
            if (n <= 0) break;
            finish512(acc[r][p], o0 + p * PANEL, n, ep, yu ? yu + (size_t)r * ldy : 0, yf ? yf + (size_t)r * ldy : 0);
        }
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
        for (int p = 0; p < panels; p += 4) {
            int np = panels - p < 4 ? panels - p : 4, cols = outputs - p * PANEL;
            const int8_t *wp = w + p * ps;
            switch (np) {
            case 1: qgemv_1(kq, x, wp, ps, p * PANEL, cols, ep, yu, yf); break;
            case 2: qgemv_2(kq, x, wp, ps, p * PANEL, cols, ep, yu, yf); break;
            case 3: qgemv_3(kq, x, wp, ps, p * PANEL, cols, ep, yu, yf); break;
            default: qgemv_4(kq, x, wp, ps, p * PANEL, cols, ep, yu, yf); break;
            }
        }
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

// ---- AVX2 -------------------------------------------------------------------------------------
// No vpmaddubsw: it sums two u8·s8 products into int16 and saturates (2·255·127 > 32767).
// Both operands are widened to int16 and vpmaddwd sums pairs into int32 instead.

#define TAVX2 __attribute__((target("avx2,fma")))

static inline TAVX2 __attribute__((always_inline)) void tile_avx2(const int MR, int kq, const uint8_t *x, int ldx,
                                                                 const int8_t *w, int o0, int cols,
                                                                 const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) {
    // acc[r][i] holds outputs 4i … 4i+3 as pairs of partial sums.
    __m256i acc[2][4];
    for (int r = 0; r < MR; r++)
        for (int i = 0; i < 4; i++) acc[r][i] = _mm256_setzero_si256();
    for (int q = 0; q < kq; q++) {
        const int8_t *wq = w + (size_t)q * 64;
        __m256i w16[4];
        for (int i = 0; i < 4; i++) w16[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wq + 16 * i)));
        for (int r = 0; r < MR; r++) {
            const uint8_t *xq = x + (size_t)r * ldx + (size_t)q * 4;
            int64_t four = (int64_t)xq[0] | ((int64_t)xq[1] << 16) | ((int64_t)xq[2] << 32) | ((int64_t)xq[3] << 48);
            __m256i xv = _mm256_set1_epi64x(four);
            for (int i = 0; i < 4; i++) acc[r][i] = _mm256_add_epi32(acc[r][i], _mm256_madd_epi16(w16[i], xv));
        }
    }
    int n = cols < PANEL ? cols : PANEL;
    for (int r = 0; r < MR; r++) {
        int32_t sums[PANEL];
        for (int h = 0; h < 2; h++) {
            __m256i s = _mm256_hadd_epi32(acc[r][2 * h], acc[r][2 * h + 1]);
            s = _mm256_permute4x64_epi64(s, 0xD8);
            _mm256_storeu_si256((__m256i *)(sums + 8 * h), s);
        }
        finish_row(sums, o0, n, ep, yu ? yu + (size_t)r * ldy : 0, yf ? yf + (size_t)r * ldy : 0);
    }
}

static TAVX2 void qtile2_1(int kq, const uint8_t *x, int ldx, const int8_t *w, int o0, int cols, const edge_q8_epilogue *ep,
                           uint8_t *yu, float *yf, int ldy) { tile_avx2(1, kq, x, ldx, w, o0, cols, ep, yu, yf, ldy); }
static TAVX2 void qtile2_2(int kq, const uint8_t *x, int ldx, const int8_t *w, int o0, int cols, const edge_q8_epilogue *ep,
                           uint8_t *yu, float *yf, int ldy) { tile_avx2(2, kq, x, ldx, w, o0, cols, ep, yu, yf, ldy); }

static void q8_avx2(int rows, int outputs, int inputs, const uint8_t *x, int ldx, const void *packed,
                    const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) {
    int panels = (outputs + PANEL - 1) / PANEL, kq = ROUND4(inputs) / 4;
    size_t ps = (size_t)kq * 64;
    const int8_t *w = (const int8_t *)packed;
    for (int p = 0; p < panels; p++) {
        int cols = outputs - p * PANEL;
        for (int m = 0; m < rows; m += 2) {
            uint8_t *ym = yu ? yu + (size_t)m * ldy : 0;
            float *fm = yf ? yf + (size_t)m * ldy : 0;
            if (rows - m >= 2) qtile2_2(kq, x + (size_t)m * ldx, ldx, w + p * ps, p * PANEL, cols, ep, ym, fm, ldy);
            else qtile2_1(kq, x + (size_t)m * ldx, ldx, w + p * ps, p * PANEL, cols, ep, ym, fm, ldy);
        }
    }
}
#endif

#if defined(__aarch64__)
#include <arm_neon.h>

// ---- NEON dot product -------------------------------------------------------------------------
// sdot multiplies s8 × s8: the u8 input is shifted to s8 (x − 128) and 128·Σ_k W[o][k] is added back.

__attribute__((target("dotprod")))
static void q8_neondot(int rows, int outputs, int inputs, const uint8_t *x, int ldx, const void *packed,
                       const edge_q8_epilogue *ep, uint8_t *yu, float *yf, int ldy) {
    int panels = (outputs + PANEL - 1) / PANEL, kq = ROUND4(inputs) / 4;
    const int8_t *w0 = (const int8_t *)packed;
    const int32_t *sums = edge_q8_column_sums(packed, outputs, inputs);
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
    if (rows <= 0 || outputs <= 0) return;
    if (isa == EDGE_ISA_AUTO) isa = edge_isa_best();
    switch (isa) {
#if defined(__x86_64__)
    case EDGE_ISA_AVX512VNNI: q8_vnni(rows, outputs, inputs, x, ldx, packed, ep, yu, yf, ldy); return;
    case EDGE_ISA_AVX512:
    case EDGE_ISA_AVX2: q8_avx2(rows, outputs, inputs, x, ldx, packed, ep, yu, yf, ldy); return;
#endif
#if defined(__aarch64__)
    case EDGE_ISA_NEONDOT: q8_neondot(rows, outputs, inputs, x, ldx, packed, ep, yu, yf, ldy); return;
#endif
    default: q8_portable(rows, outputs, inputs, x, ldx, packed, ep, yu, yf, ldy); return;
    }
}

// ---- INT4 weight-only -------------------------------------------------------------------------

void edge_q4_gemm(int rows, int outputs, int inputs, int group, const float *x, int ldx, const uint8_t *nibbles,
                  const float *scales, const float *bias, float *y, int ldy, edge_activation act, float alpha) {
    int groups = (inputs + group - 1) / group;
    float wf[256];  // one group widened to FP32 (group <= 256)
    for (int o = 0; o < outputs; o++) {
        const uint8_t *row = nibbles + (size_t)o * (inputs / 2);
        for (int m = 0; m < rows; m++) y[(size_t)m * ldy + o] = bias ? bias[o] : 0.0f;
        for (int g = 0; g < groups; g++) {
            int k0 = g * group, k1 = k0 + group < inputs ? k0 + group : inputs;
            float s = scales[(size_t)o * groups + g];
            for (int k = k0; k < k1; k++) {
                uint8_t byte = row[k / 2];
                int q = (k & 1) ? (byte >> 4) : (byte & 15);
                wf[k - k0] = (float)(q - 8);
            }
            for (int m = 0; m < rows; m++) {
                const float *xm = x + (size_t)m * ldx + k0;
                float acc = 0;
                for (int k = 0; k < k1 - k0; k++) acc += xm[k] * wf[k];
                y[(size_t)m * ldy + o] += s * acc;
            }
        }
        for (int m = 0; m < rows; m++) {
            float v = y[(size_t)m * ldy + o];
            switch (act) {
            case EDGE_ACT_RELU: v = v > 0 ? v : 0; break;
            case EDGE_ACT_RELU6: v = v > 0 ? (v < 6 ? v : 6) : 0; break;
            case EDGE_ACT_LEAKY: v = v > 0 ? v : v * alpha; break;
            default: break;
            }
            y[(size_t)m * ldy + o] = v;
        }
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
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void quantize_avx512(const float *x, size_t n, float inv, int32_t zp, uint8_t *y) {
    __m512 vi = _mm512_set1_ps(inv), lo = _mm512_set1_ps(-1073741824.0f), hi = _mm512_set1_ps(1073741824.0f);
    __m512i z = _mm512_set1_epi32(zp), q0 = _mm512_setzero_si512(), q255 = _mm512_set1_epi32(255);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vi), lo), hi);
        __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), z);
        q = _mm512_min_epi32(_mm512_max_epi32(q, q0), q255);
        _mm_storeu_si128((__m128i *)(y + i), _mm512_cvtepi32_epi8(q));
    }
    quantize_portable(x + i, n - i, inv, zp, y + i);
}
#endif

void edge_quantize_u8(const float *x, size_t n, float inv_scale, int32_t zero_point, uint8_t *y) {
#if defined(__x86_64__)
    if (edge_isa_supported(EDGE_ISA_AVX512)) { quantize_avx512(x, n, inv_scale, zero_point, y); return; }
#endif
    quantize_portable(x, n, inv_scale, zero_point, y);
}

void edge_dequantize_u8(const uint8_t *x, size_t n, float scale, int32_t zero_point, float *y) {
    for (size_t i = 0; i < n; i++) y[i] = scale * (float)((int32_t)x[i] - zero_point);
}
