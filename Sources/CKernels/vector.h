// Vector helpers shared by the kernels' AVX2 and AVX-512 paths (private to CKernels).
#ifndef EDGE_CKERNELS_VECTOR_H
#define EDGE_CKERNELS_VECTOR_H

#include "ckernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define EDGE_T512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define EDGE_T256 __attribute__((target("avx2,fma")))

/// The fused activation on 16 or 8 lanes, as edge_activate_scalar on each.
static inline EDGE_T512 __attribute__((always_inline)) __m512 edge_act512(__m512 v, edge_activation act, __m512 alpha) {
    __m512 zero = _mm512_setzero_ps();
    switch (act) {
    case EDGE_ACT_RELU: return _mm512_max_ps(v, zero);
    case EDGE_ACT_RELU6: return _mm512_min_ps(_mm512_max_ps(v, zero), _mm512_set1_ps(6.0f));
    case EDGE_ACT_LEAKY: return _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v, alpha);
    default: return v;
    }
}

static inline EDGE_T256 __attribute__((always_inline)) __m256 edge_act256(__m256 v, edge_activation act, __m256 alpha) {
    __m256 zero = _mm256_setzero_ps();
    switch (act) {
    case EDGE_ACT_RELU: return _mm256_max_ps(v, zero);
    case EDGE_ACT_RELU6: return _mm256_min_ps(_mm256_max_ps(v, zero), _mm256_set1_ps(6.0f));
    case EDGE_ACT_LEAKY: return _mm256_blendv_ps(v, _mm256_mul_ps(v, alpha), _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
    default: return v;
    }
}

/// 16 (or 8) values already divided by their scale to UINT8 codes in int32 lanes: clamped to
/// ±2^30 (a NaN meets max_ps's second operand first and becomes −2^30), rounded half to even
/// (MXCSR), + the zero point, clamped to [lo, hi] within 0…255. The rule of every vector UINT8
/// output on x86 (the scalar one is edge_quantize_u8's portable loop, NEON its own), computed
/// 32 values at a time by edge_quantize512x2 where a tile has them.
static inline EDGE_T512 __attribute__((always_inline)) __m512i edge_quantize512(__m512 v, __m512i zero_point, __m512i lo, __m512i hi) {
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-1073741824.0f)), _mm512_set1_ps(1073741824.0f));
    return _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(v), zero_point), lo), hi);
}

/// edge_quantize512 on 32 values at once (a's 16, then b's), in 32 bytes: the same codes, with
/// saturating packs doing most of the clamping, for 0 ≤ lo ≤ hi ≤ 255 (the byte clamps) and a
/// zero point the int16 lanes hold exactly (callers pass 0…255, what a UINT8 tensor has). Only the upper
/// bound is clamped in float, with the bound first so that a NaN stays NaN; cvtps2dq makes a NaN,
/// or anything below −2^31, INT32_MIN, which saturates to 0 and ends at `lo`, where
/// edge_quantize512's −2^30 ends too. Beyond the int32 codes r: sat16(sat16(r) + zero_point) is
/// r + zero_point wherever that is within 0…255, and on the same side of it otherwise, so the
/// unsigned byte saturation and the byte clamp to [lo, hi] give edge_quantize512's code. One pack
/// per 32 values instead of two vpmovdb, and byte clamps once per 32 instead of per 16.
static inline EDGE_T512 __attribute__((always_inline)) __m256i edge_quantize512x2(__m512 a, __m512 b, __m512i zero_point16, __m512i lo8,
                                                                                  __m512i hi8) {
    __m512 top = _mm512_set1_ps(1073741824.0f);
    __m512i ia = _mm512_cvtps_epi32(_mm512_min_ps(top, a)), ib = _mm512_cvtps_epi32(_mm512_min_ps(top, b));
    // Per 128-bit lane L: int16 a[4L … 4L+3], b[4L … 4L+3]; then those 8 as bytes, twice.
    __m512i h = _mm512_adds_epi16(_mm512_packs_epi32(ia, ib), zero_point16);
    __m512i u = _mm512_min_epu8(_mm512_max_epu8(_mm512_packus_epi16(h, h), lo8), hi8);
    // Dword 0 of each lane holds 4 of a's codes, dword 1 4 of b's.
    return _mm512_castsi512_si256(_mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0), u));
}

static inline EDGE_T256 __attribute__((always_inline)) __m256i edge_quantize256(__m256 v, __m256i zero_point, __m256i lo, __m256i hi) {
    v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-1073741824.0f)), _mm256_set1_ps(1073741824.0f));
    return _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(v), zero_point), lo), hi);
}

/// The AVX2 mask of lanes 0 … n − 1 (maskload, maskstore).
static inline EDGE_T256 __attribute__((always_inline)) __m256i edge_mask256(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif

#endif
