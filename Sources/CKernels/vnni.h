// The AVX-512 VNNI inner loop, shared by the INT8 GEMM (qgemm.c) and INT4's W4A8 one (sgemm.c)
// (private to CKernels).
#ifndef EDGE_CKERNELS_VNNI_H
#define EDGE_CKERNELS_VNNI_H

#if defined(__x86_64__)
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define EDGE_TVNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

/// acc[r][p] += row r's UINT8 quads × panel p's INT8 k-quads (64 bytes a quad, panels `pstride`
/// bytes apart) over quads [q0, q1): MR rows (`ldx` bytes apart) × NP (1 or 2) panels.
static inline EDGE_TVNNI __attribute__((always_inline)) void edge_vnni_quads(const int MR, const int NP, int q0, int q1, const uint8_t *x,
                                                                            size_t ldx, const int8_t *w, size_t pstride, __m512i acc[][2]) {
    for (int q = q0; q < q1; q++) {
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
}
#endif

#endif
