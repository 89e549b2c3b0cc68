#include "ckernels.h"
#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

static int isa_supported_uncached(edge_isa isa);

int edge_isa_supported(edge_isa isa) {
    static int cache[8] = {0};  // 0 unknown, 1 no, 2 yes
    if ((unsigned)isa >= 8) return 0;
    if (cache[isa] == 0) cache[isa] = isa_supported_uncached(isa) ? 2 : 1;
    return cache[isa] == 2;
}

static int isa_supported_uncached(edge_isa isa) {
    switch (isa) {
    case EDGE_ISA_AUTO:
    case EDGE_ISA_PORTABLE:
        return 1;
#if defined(__x86_64__) || defined(__i386__)
    case EDGE_ISA_AVX2:
        // __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0).
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case EDGE_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl");
    case EDGE_ISA_AVX512VNNI:
        return isa_supported_uncached(EDGE_ISA_AVX512) && __builtin_cpu_supports("avx512vnni");
#endif
#if defined(__aarch64__) && defined(__linux__)
    case EDGE_ISA_NEONDOT:
        return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#endif
    default:
        return 0;
    }
}

edge_isa edge_isa_best(void) {
    static edge_isa best = EDGE_ISA_AUTO;
    if (best == EDGE_ISA_AUTO) {
        edge_isa found = EDGE_ISA_PORTABLE;
        if (edge_isa_supported(EDGE_ISA_AVX2)) found = EDGE_ISA_AVX2;
        if (edge_isa_supported(EDGE_ISA_AVX512)) found = EDGE_ISA_AVX512;
        if (edge_isa_supported(EDGE_ISA_AVX512VNNI)) found = EDGE_ISA_AVX512VNNI;
        if (edge_isa_supported(EDGE_ISA_NEONDOT)) found = EDGE_ISA_NEONDOT;
        best = found;  // idempotent: racing threads store the same value
    }
    return best;
}

const char *edge_isa_name(edge_isa isa) {
    switch (isa) {
    case EDGE_ISA_AUTO: return edge_isa_name(edge_isa_best());
    case EDGE_ISA_PORTABLE: return "portable";
    case EDGE_ISA_AVX2: return "avx2";
    case EDGE_ISA_AVX512: return "avx512";
    case EDGE_ISA_AVX512VNNI: return "avx512-vnni";
    case EDGE_ISA_NEONDOT: return "neon-dot";
    }
    return "unknown";
}
