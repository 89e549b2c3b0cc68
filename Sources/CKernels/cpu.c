#include "ckernels.h"
#include <stdlib.h>
#include <string.h>
#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

static int isa_supported_uncached(edge_isa isa);

int edge_isa_supported(edge_isa isa) {
    static int cache[8] = {0};  // 0 unknown, 1 no, 2 yes; racing threads store the same value
    if ((unsigned)isa >= 8) return 0;
    int known = __atomic_load_n(&cache[isa], __ATOMIC_RELAXED);
    if (known == 0) {
        known = isa_supported_uncached(isa) ? 2 : 1;
        __atomic_store_n(&cache[isa], known, __ATOMIC_RELAXED);
    }
    return known == 2;
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
    case EDGE_ISA_AVX2_U8S8:
        return isa_supported_uncached(EDGE_ISA_AVX2);
#endif
#if defined(__aarch64__) && defined(__linux__)
    case EDGE_ISA_NEONDOT:
        return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#endif
    default:
        return 0;
    }
}

/// The ISA named by EDGE_ISA, or AUTO when it is unset, unknown or unsupported here.
static edge_isa forced_isa(void) {
    const char *name = getenv("EDGE_ISA");
    if (!name || !*name) return EDGE_ISA_AUTO;
    static const struct { const char *name; edge_isa isa; } names[] = {
        {"portable", EDGE_ISA_PORTABLE}, {"avx2", EDGE_ISA_AVX2}, {"avx512", EDGE_ISA_AVX512},
        {"vnni", EDGE_ISA_AVX512VNNI}, {"avx512-vnni", EDGE_ISA_AVX512VNNI}, {"neon-dot", EDGE_ISA_NEONDOT}, {"neondot", EDGE_ISA_NEONDOT},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i].name) == 0) return edge_isa_supported(names[i].isa) ? names[i].isa : EDGE_ISA_AUTO;
    return EDGE_ISA_AUTO;
}

edge_isa edge_isa_best(void) {
    static int best = EDGE_ISA_AUTO;  // racing threads store the same value
    int known = __atomic_load_n(&best, __ATOMIC_RELAXED);
    if (known != EDGE_ISA_AUTO) return (edge_isa)known;
    {
        edge_isa forced = forced_isa();
        if (forced != EDGE_ISA_AUTO) {
            __atomic_store_n(&best, (int)forced, __ATOMIC_RELAXED);
            return forced;
        }
        edge_isa found = EDGE_ISA_PORTABLE;
        if (edge_isa_supported(EDGE_ISA_AVX2)) found = EDGE_ISA_AVX2;
        if (edge_isa_supported(EDGE_ISA_AVX512)) found = EDGE_ISA_AVX512;
        if (edge_isa_supported(EDGE_ISA_AVX512VNNI)) found = EDGE_ISA_AVX512VNNI;
        if (edge_isa_supported(EDGE_ISA_NEONDOT)) found = EDGE_ISA_NEONDOT;
        __atomic_store_n(&best, (int)found, __ATOMIC_RELAXED);
        return found;
    }
}

const char *edge_isa_name(edge_isa isa) {
    switch (isa) {
    case EDGE_ISA_AUTO: return edge_isa_name(edge_isa_best());
    case EDGE_ISA_PORTABLE: return "portable";
    case EDGE_ISA_AVX2: return "avx2";
    case EDGE_ISA_AVX512: return "avx512";
    case EDGE_ISA_AVX512VNNI: return "avx512-vnni";
    case EDGE_ISA_NEONDOT: return "neon-dot";
    case EDGE_ISA_AVX2_U8S8: return "avx2-u8s8";
    }
    return "unknown";
}
