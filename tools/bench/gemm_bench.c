// The INT8 and FP32 GEMM kernels of Sources/CKernels, timed per path (`make kernel-bench`):
// GMAC/s for rows × n × n at batch 1, 64 and 256, each INT8 path checked against the portable
// path bit for bit first. Built straight from the kernel sources with the system C compiler, so
// it needs no Swift build; `make microbench` has the same GEMMs inside the Swift benchmarks.
#include "ckernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static unsigned long long state = 88172645463325252ull;
static unsigned next(void) { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return (unsigned)state; }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void *aligned(size_t bytes) { return aligned_alloc(64, (bytes + 63) & ~(size_t)63); }

static double time_int8(edge_isa isa, int rows, int n, const uint8_t *x, const int8_t *w, const edge_q8_epilogue *ep, uint8_t *y) {
    void *packed = aligned(edge_q8_packed_bytes(isa, n, n));
    edge_q8_pack(isa, w, n, n, packed);
    double best = 1e30;
    for (int run = 0; run < 5; run++) {
        int it = 0;
        double t0 = now(), t;
        do { edge_q8_gemm(isa, rows, n, n, x, n, packed, ep, y, 0, n); it++; } while ((t = now() - t0) < 0.1);
        if (t / it < best) best = t / it;
    }
    free(packed);
    return (double)rows * n * n / best / 1e9;
}

static double time_fp32(edge_isa isa, int rows, int n, const float *x, const float *w, float *y) {
    float *packed = aligned(edge_sgemm_packed_floats(n, n) * sizeof(float));
    edge_sgemm_pack(w, 0, n, n, packed);
    double best = 1e30;
    for (int run = 0; run < 5; run++) {
        int it = 0;
        double t0 = now(), t;
        do { edge_sgemm_packed(isa, rows, n, n, x, n, packed, y, n, EDGE_ACT_NONE, 0); it++; } while ((t = now() - t0) < 0.1);
        if (t / it < best) best = t / it;
    }
    free(packed);
    return (double)rows * n * n / best / 1e9;
}

#if defined(__x86_64__)
#include <immintrin.h>
#define PEAK_STEPS 20000000L
// In-register peaks: R rows x 2 vectors of multiply-accumulates a step, each row with its own
// broadcast value and the two weight vectors shared, nothing loaded or stored: what the instruction
// mix alone allows on this CPU. The asm barrier keeps every operand opaque (no product can be
// computed once for two rows) and every chain feeds the result, so nothing is hoisted or dropped.
// 4 rows: 8 chains, FMA's latency (4) times its pipes (2) on Zen 3 (5 rows, 17 registers, spill
// and measured a third of this); the integer chains wait only on a vpaddd. A different method
// from the GEMM rows (a GEMM can come within noise of it), so it is reported as best of 5 after a
// warm-up, like them.
#define PEAK_LOOP(T, R, ZERO, STEP, SUM)                                                           \
    T a[2 * R];                                                                                   \
    for (int i = 0; i < 2 * R; i++) a[i] = ZERO;                                                  \
    double t0 = now();                                                                            \
    for (long i = 0; i < PEAK_STEPS; i++) {                                                       \
        for (int r = 0; r < R; r++) {                                                             \
            a[2 * r] = STEP(a[2 * r], w0, x[r]);                                                  \
            a[2 * r + 1] = STEP(a[2 * r + 1], w1, x[r]);                                          \
        }                                                                                         \
        __asm__ volatile("" : "+x"(w0), "+x"(w1));                                                \
        for (int r = 0; r < R; r++) __asm__ volatile("" : "+x"(x[r]));                            \
    }                                                                                             \
    double t = now() - t0;                                                                        \
    for (int i = 1; i < 2 * R; i++) a[0] = SUM(a[0], a[i]);                                       \
    sink_bytes(&a[0], sizeof a[0]);

static volatile unsigned char peak_sink;
static void sink_bytes(const void *p, size_t n) {
    for (size_t i = 0; i < n; i++) peak_sink ^= ((const unsigned char *)p)[i];
}

#define STEP_MADDWD(acc, w, x) _mm256_add_epi32(acc, _mm256_madd_epi16(w, x))
#define STEP_MADDUBSW(acc, w, x) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), ones))
#define STEP_FMA(acc, w, x) _mm256_fmadd_ps(w, x, acc)

__attribute__((target("avx2"), noinline)) static double peak_vpmaddwd(void) {
    __m256i w0 = _mm256_set1_epi16(3), w1 = _mm256_set1_epi16(5), x[4];
    for (int r = 0; r < 4; r++) x[r] = _mm256_set1_epi32(r + 1);
    PEAK_LOOP(__m256i, 4, _mm256_setzero_si256(), STEP_MADDWD, _mm256_add_epi32)
    return PEAK_STEPS * 8.0 * 16 / t / 1e9;  // 16 products a vpmaddwd
}
__attribute__((target("avx2"), noinline)) static double peak_vpmaddubsw(void) {
    __m256i w0 = _mm256_set1_epi8(3), w1 = _mm256_set1_epi8(5), x[4], ones = _mm256_set1_epi16(1);
    for (int r = 0; r < 4; r++) x[r] = _mm256_set1_epi32(r + 1);
    PEAK_LOOP(__m256i, 4, _mm256_setzero_si256(), STEP_MADDUBSW, _mm256_add_epi32)
    return PEAK_STEPS * 8.0 * 32 / t / 1e9;  // 32 products a vpmaddubsw
}
__attribute__((target("avx2,fma"), noinline)) static double peak_fma(void) {
    __m256 w0 = _mm256_set1_ps(1.0f), w1 = _mm256_set1_ps(0.5f), x[4];
    for (int r = 0; r < 4; r++) x[r] = _mm256_set1_ps(1e-3f * (float)(r + 1));
    PEAK_LOOP(__m256, 4, _mm256_setzero_ps(), STEP_FMA, _mm256_add_ps)
    return PEAK_STEPS * 8.0 * 8 / t / 1e9;  // 8 products an FMA
}

/// Best of 5 after one warm-up run.
static double best_peak(double (*peak)(void)) {
    double best = peak();
    for (int i = 0; i < 5; i++) {
        double g = peak();
        if (g > best) best = g;
    }
    return best;
}
#endif

int main(void) {
#if defined(__x86_64__)
    if (edge_isa_supported(EDGE_ISA_AVX2)) {
        double fma = best_peak(peak_fma), madd = best_peak(peak_vpmaddwd), ubs = best_peak(peak_vpmaddubsw);
        printf("in-register peak (no loads or stores, best of 5): fp32 fma %.1f GMAC/s, int8 vpmaddwd %.1f, "
               "int8 vpmaddubsw + vpmaddwd %.1f\n", fma, madd, ubs);
    }
#endif
    const edge_isa paths[] = {EDGE_ISA_PORTABLE, EDGE_ISA_AVX2, EDGE_ISA_AVX512, EDGE_ISA_AVX512VNNI, EDGE_ISA_NEONDOT, EDGE_ISA_AVX2_U8S8};
    const int sizes[] = {256, 1024}, batches[] = {1, 64, 256};
    int failed = 0;
    for (int s = 0; s < 2; s++) {
        int n = sizes[s], maxrows = 256;
        uint8_t *x8 = malloc((size_t)maxrows * n), *y8 = malloc((size_t)maxrows * n), *ref = malloc((size_t)maxrows * n);
        int8_t *w8 = malloc((size_t)n * n), *w7 = malloc((size_t)n * n);
        float *xf = malloc(sizeof(float) * maxrows * n), *wf = malloc(sizeof(float) * n * n), *yf = malloc(sizeof(float) * maxrows * n);
        int32_t *bias = calloc(n, 4);
        float *scale = malloc(sizeof(float) * n);
        for (size_t i = 0; i < (size_t)maxrows * n; i++) { x8[i] = next(); xf[i] = (float)(next() % 1000) / 1000; }
        for (size_t i = 0; i < (size_t)n * n; i++) { w8[i] = (int8_t)((int)(next() % 255) - 127); wf[i] = (float)(next() % 1000) / 1000 - 0.5f; }
        // 7-bit weights (within ±64), which the vpmaddubsw kernel (EDGE_ISA_AVX2_U8S8) needs.
        for (size_t i = 0; i < (size_t)n * n; i++) w7[i] = (int8_t)(w8[i] / 2);
        for (int o = 0; o < n; o++) { bias[o] = (int)(next() % 2001) - 1000; scale[o] = 0.0002f; }
        edge_q8_epilogue ep = {bias, scale, 128, 0, 255, 0, 0};
        void *pref = aligned(edge_q8_packed_bytes(EDGE_ISA_PORTABLE, n, n));
        edge_q8_pack(EDGE_ISA_PORTABLE, w8, n, n, pref);
        edge_q8_gemm(EDGE_ISA_PORTABLE, maxrows, n, n, x8, n, pref, &ep, ref, 0, n);
        uint8_t *ref7 = malloc((size_t)maxrows * n);
        edge_q8_pack(EDGE_ISA_PORTABLE, w7, n, n, pref);
        edge_q8_gemm(EDGE_ISA_PORTABLE, maxrows, n, n, x8, n, pref, &ep, ref7, 0, n);
        for (int b = 0; b < 3; b++) {
            int rows = batches[b];
            printf("%4d x %4d x %4d  fp32 %-12s %6.1f GMAC/s\n", rows, n, n, edge_isa_supported(EDGE_ISA_AVX2) ? "avx2" : "portable",
                   time_fp32(edge_isa_supported(EDGE_ISA_AVX2) ? EDGE_ISA_AVX2 : EDGE_ISA_PORTABLE, rows, n, xf, wf, yf));
            for (unsigned p = 0; p < sizeof paths / sizeof paths[0]; p++) {
                edge_isa isa = paths[p];
                if (!edge_isa_supported(isa) || (isa == EDGE_ISA_PORTABLE && n > 256 && rows > 1)) continue;
                const int8_t *w = isa == EDGE_ISA_AVX2_U8S8 ? w7 : w8;
                void *packed = aligned(edge_q8_packed_bytes(isa, n, n));
                edge_q8_pack(isa, w, n, n, packed);
                memset(y8, 0, (size_t)maxrows * n);
                edge_q8_gemm(isa, maxrows, n, n, x8, n, packed, &ep, y8, 0, n);
                int same = memcmp(y8, isa == EDGE_ISA_AVX2_U8S8 ? ref7 : ref, (size_t)maxrows * n) == 0;
                failed += !same;
                free(packed);
                printf("%4d x %4d x %4d  int8 %-12s %6.1f GMAC/s  (%s)%s\n", rows, n, n, edge_isa_name(isa),
                       time_int8(isa, rows, n, x8, w, &ep, y8), edge_q8_kernel_name(isa), same ? "" : "  DIFFERS FROM PORTABLE");
            }
        }
        free(pref);
        free(ref7);
        free(x8), free(y8), free(ref), free(w8), free(w7), free(xf), free(wf), free(yf), free(bias), free(scale);
    }
    return failed != 0;
}
