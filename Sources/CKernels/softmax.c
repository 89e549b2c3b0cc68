// Softmax over each row, with an exponential of its own: a classifier's last step runs once per
// row of the batch, and ten calls to libm's expf cost more than the row's whole vector.
//
// The vector paths' exp(x) for x ≤ 0 (the row's maximum is taken off first): n = round(x·log2 e),
// r = x − n·ln 2 in two parts (Cody and Waite), then a degree-6 polynomial for exp(r) on
// |r| ≤ ln2/2 (Cephes' expf coefficients; 1.8e-7 relative measured for the whole softmax) and 2^n
// put into the exponent. Below −87.33 the result is 0 (libm would give a subnormal there, which
// nothing in a softmax needs). NaN stays NaN; a row whose maximum is +∞ or NaN gives NaN, one of
// −∞ only gives NaN (0/0), as libm does.

#include "ckernels.h"
#include "vector.h"
#include <math.h>

#define EXP_LOW (-87.33654f)
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f
#define LN2_LO (-2.12194440e-4f)
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

/// Rows of over 64 columns (32 on AVX2), and the portable path: libm's expf (glibc's picks its
/// own FMA code; this file is built for the baseline ISA, where the vector paths' polynomial would cost
/// twice as much), the sum in double (a row here may be thousands of columns long).
static void softmax_scalar(float *y, int columns) {
    float m = -INFINITY;
    double sum = 0;
    for (int c = 0; c < columns; c++) m = y[c] > m || y[c] != y[c] ? y[c] : m;
    for (int c = 0; c < columns; c++) {
        y[c] = expf(y[c] - m);
        sum += y[c];
    }
    float inv = (float)(1.0 / sum);
    for (int c = 0; c < columns; c++) y[c] *= inv;
}

#if defined(__x86_64__)
#define T512 EDGE_T512
#define T256 EDGE_T256

static inline T512 __m512 exp512(__m512 x) {
    __mmask16 low = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_LOW), _CMP_LT_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(EXP_LOW));  // (a NaN x is the caller's to keep)
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(EXP_P0), r, _mm512_set1_ps(EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
    __m512 e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    // 2^n, n in [−126, 0]: added to the exponent field (x ≥ −87.33 keeps r ≥ 0 at n = −126).
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

static inline T256 __m256 exp256(__m256 x) {
    __m256 low = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LOW), _CMP_LT_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(EXP_LOW));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(EXP_P0), r, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
    __m256 e = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_add_epi32(_mm256_castps_si256(e), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23));
    return _mm256_andnot_ps(low, _mm256_castsi256_ps(bits));
}

/// AVX2: the same, 8 lanes a vector, rows of up to 32 columns in blocks of 8 / VECS rows (the
/// masked stores of vmaskmovps stall an overlapping load as AVX-512's do).
static inline T256 __attribute__((always_inline)) void softmax256_block(const int VECS, float *y, int rows, int columns,
                                                                      __m256i last) {
    __m256 v[8][4], mv[8];
    float inv[8];
    const __m256i all = _mm256_set1_epi32(-1);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    for (int r = 0; r < rows; r++) {
        __m256 m = ninf, nan = _mm256_setzero_ps();
        for (int i = 0; i < VECS; i++) {
            __m256i k = i == VECS - 1 ? last : all;
            __m256 x = _mm256_maskload_ps(y + (size_t)r * columns + 8 * i, k);
            v[r][i] = _mm256_blendv_ps(ninf, x, _mm256_castsi256_ps(k));
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(v[r][i], v[r][i], _CMP_UNORD_Q));
            m = _mm256_max_ps(m, v[r][i]);
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        mv[r] = _mm256_set1_ps(_mm256_movemask_ps(nan) ? __builtin_nanf("") : _mm_cvtss_f32(h));
    }
    for (int r = 0; r < rows; r++) {
        __m256 sum = _mm256_setzero_ps();
        for (int i = 0; i < VECS; i++) {
            __m256 x = _mm256_sub_ps(v[r][i], mv[r]);
            v[r][i] = _mm256_blendv_ps(exp256(x), x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
            sum = _mm256_add_ps(sum, _mm256_and_ps(v[r][i], _mm256_castsi256_ps(i == VECS - 1 ? last : all)));
        }
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        inv[r] = 1.0f / _mm_cvtss_f32(s);
    }
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < VECS; i++)
            _mm256_maskstore_ps(y + (size_t)r * columns + 8 * i, i == VECS - 1 ? last : all, _mm256_mul_ps(v[r][i], _mm256_set1_ps(inv[r])));
}

static T256 void softmax256(float *y, int rows, int columns) {
    int vecs = (columns + 7) / 8, block = vecs == 1 ? 8 : vecs == 2 ? 4 : 2;
    int n = columns - 8 * (vecs - 1);  // lanes of the last vector
    __m256i last = edge_mask256(n);
    for (int r = 0; r < rows; r += block) {
        int b = rows - r < block ? rows - r : block;
        float *yr = y + (size_t)r * columns;
        switch (vecs) {
        case 1: softmax256_block(1, yr, b, columns, last); break;
        case 2: softmax256_block(2, yr, b, columns, last); break;
        case 3: softmax256_block(3, yr, b, columns, last); break;
        default: softmax256_block(4, yr, b, columns, last); break;
        }
    }
}
#endif

void edge_softmax(edge_isa isa, float *y, int rows, int columns) {
    if (rows <= 0 || columns <= 0) return;
    if (isa == EDGE_ISA_AUTO) isa = edge_isa_best();
#if defined(__x86_64__)
    if ((isa == EDGE_ISA_AVX512 || isa == EDGE_ISA_AVX512VNNI) && columns <= 64 && edge_isa_supported(EDGE_ISA_AVX512)) {
        softmax512(y, rows, columns);
        return;
    }
    if (isa != EDGE_ISA_PORTABLE && isa != EDGE_ISA_NEONDOT && columns <= 32 && edge_isa_supported(EDGE_ISA_AVX2)) {
        softmax256(y, rows, columns);
        return;
    }
#endif
    for (int row = 0; row < rows; row++) softmax_scalar(y + (size_t)row * columns, columns);
}
