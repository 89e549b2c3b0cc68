// Softmax over each row, with an exponential of its own: a classifier's last step runs once per
// row of the batch, and ten calls to libm's expf cost more than the row's whole vector.
//
// exp(x) for x ≤ 0 (the row's maximum is taken off first): n = round(x·log2 e), r = x − n·ln 2
// in two parts (Cody and Waite), then a degree-6 polynomial for exp(r) on |r| ≤ ln2/2 (Cephes'
// expf coefficients, within 2 ulp of exp) and 2^n put into the exponent. Below −87.33, where
// exp(x) would be a subnormal that the agent flushes anyway, the result is 0. NaN stays NaN; a
// row whose maximum is +∞ or NaN gives NaN, one of −∞ only gives NaN (0/0), as libm does.

#include "ckernels.h"
#include <math.h>

#define EXP_LOW (-87.33654f)
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f
#define LN2_LO (-2.12194440e-4f)

/// The same steps in scalar arithmetic, for the paths without a vector one.
static float exp_scalar(float x) {
    if (x != x) return x;
    if (x < EXP_LOW) return 0.0f;
    float n = nearbyintf(x * LOG2E);
    float r = fmaf(n, -LN2_HI, x);
    r = fmaf(n, -LN2_LO, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    float e = fmaf(p, r * r, r) + 1.0f;
    return ldexpf(e, (int)n);
}

static void softmax_scalar(float *y, int columns) {
    float m = -INFINITY, sum = 0;
    for (int c = 0; c < columns; c++) m = y[c] > m || y[c] != y[c] ? y[c] : m;
    for (int c = 0; c < columns; c++) {
        y[c] = exp_scalar(y[c] - m);
        sum += y[c];
    }
    float inv = 1.0f / sum;
    for (int c = 0; c < columns; c++) y[c] *= inv;
}

#if defined(__x86_64__)
#include <immintrin.h>
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

static inline T512 __m512 exp512(__m512 x) {
    __mmask16 low = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_LOW), _CMP_LT_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(EXP_LOW));  // (a NaN x is the caller's to keep)
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    // 2^n, n in [−126, 0]: added to the exponent field.
    __m512i bits = _mm512_add_epi32(_mm512_castps_si512(e), _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23));
    return _mm512_maskz_mov_ps((__mmask16)~low, _mm512_castsi512_ps(bits));
}

/// A block of `rows` (≤ 16 / VECS) rows of up to 16·VECS columns in registers, the last vector
/// masked. All of the block's rows are loaded before any is stored: a load that overlaps an
/// earlier masked store (the row before, 16 lanes wide) waits for that store to reach the cache,
/// which row by row made the whole softmax serial.
static inline T512 __attribute__((always_inline)) void softmax512_block(const int VECS, float *y, int rows, int columns,
                                                                      __mmask16 last) {
    __m512 v[16][4], mv[16];
    float inv[16];
    for (int r = 0; r < rows; r++) {
        __m512 m = _mm512_set1_ps(-INFINITY);
        __mmask16 nan = 0;
        for (int i = 0; i < VECS; i++) {
            v[r][i] = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), i == VECS - 1 ? last : 0xFFFF, y + (size_t)r * columns + 16 * i);
            nan |= _mm512_cmp_ps_mask(v[r][i], v[r][i], _CMP_UNORD_Q);
            m = _mm512_max_ps(m, v[r][i]);
        }
        mv[r] = _mm512_set1_ps(nan ? __builtin_nanf("") : _mm512_reduce_max_ps(m));
    }
    for (int r = 0; r < rows; r++) {
        __m512 sum = _mm512_setzero_ps();
        for (int i = 0; i < VECS; i++) {
            // A NaN anywhere, or a maximum of ±∞, makes x − max NaN: kept as it is.
            __m512 x = _mm512_sub_ps(v[r][i], mv[r]);
            v[r][i] = _mm512_mask_mov_ps(exp512(x), _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
            sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(i == VECS - 1 ? last : 0xFFFF, v[r][i]));
        }
        inv[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < VECS; i++)
            _mm512_mask_storeu_ps(y + (size_t)r * columns + 16 * i, i == VECS - 1 ? last : 0xFFFF,
                                  _mm512_mul_ps(v[r][i], _mm512_set1_ps(inv[r])));
}

/// Rows of up to 64 columns, 16 lanes a vector, in blocks of 16, 8 or 4 rows.
static T512 void softmax512(float *y, int rows, int columns) {
    int vecs = (columns + 15) / 16, block = vecs == 1 ? 16 : vecs == 2 ? 8 : 4;
    __mmask16 last = (__mmask16)(0xFFFFu >> (16 * vecs - columns));
    for (int r = 0; r < rows; r += block) {
        int n = rows - r < block ? rows - r : block;
        float *yr = y + (size_t)r * columns;
        switch (vecs) {
        case 1: softmax512_block(1, yr, n, columns, last); break;
        case 2: softmax512_block(2, yr, n, columns, last); break;
        case 3: softmax512_block(3, yr, n, columns, last); break;
        default: softmax512_block(4, yr, n, columns, last); break;
        }
    }
}
#endif

void edge_softmax(float *y, int rows, int columns) {
    if (rows <= 0 || columns <= 0) return;
#if defined(__x86_64__)
    if (columns <= 64 && edge_isa_supported(EDGE_ISA_AVX512)) {
        softmax512(y, rows, columns);
        return;
    }
#endif
    for (int row = 0; row < rows; row++) softmax_scalar(y + (size_t)row * columns, columns);
}
