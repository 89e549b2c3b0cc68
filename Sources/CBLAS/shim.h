#ifndef EDGE_CBLAS_SHIM_H
#define EDGE_CBLAS_SHIM_H
// OpenBLAS's cblas.h also declares openblas_set_num_threads and openblas_get_config.
#include <cblas.h>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

/* Flush-to-zero and denormals-are-zero on the calling thread (MXCSR FTZ|DAZ on x86, FPCR.FZ on
   ARM): tiny gradients late in training otherwise turn into denormals that run 100x slower.
   Returns the previous control word, for edge_restore_fp_control. */
static inline unsigned long edge_flush_denormals_to_zero(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned long saved = _mm_getcsr();
    _mm_setcsr((unsigned int)saved | 0x8040);
    return saved;
#elif defined(__aarch64__)
    unsigned long fpcr;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
    __asm__ __volatile__("msr fpcr, %0" : : "r"(fpcr | (1UL << 24)));
    return fpcr;
#else
    return 0;
#endif
}

static inline void edge_restore_fp_control(unsigned long saved) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr((unsigned int)saved);
#elif defined(__aarch64__)
    __asm__ __volatile__("msr fpcr, %0" : : "r"(saved));
#else
    (void)saved;
#endif
}

#endif
