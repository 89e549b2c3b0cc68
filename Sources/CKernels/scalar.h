// Scalar helpers shared by the kernels' portable paths (private to CKernels).
#ifndef EDGE_CKERNELS_SCALAR_H
#define EDGE_CKERNELS_SCALAR_H

#include "ckernels.h"

/// The fused activation on one value, as every vector path computes it.
static inline float edge_activate_scalar(float v, edge_activation act, float alpha) {
    switch (act) {
    case EDGE_ACT_RELU: return v > 0 ? v : 0;
    case EDGE_ACT_RELU6: return v > 0 ? (v < 6 ? v : 6) : 0;
    case EDGE_ACT_LEAKY: return v > 0 ? v : v * alpha;
    default: return v;
    }
}

/// Where output rows m … m+mr−1 of a convolution read (samples of `pixels` output pixels each):
/// each row's sample index and its pixel's `taps` entries in the indirection table, with one
/// division for all of them.
static inline void edge_conv_rows(int mr, size_t m, int pixels, int taps, const int32_t *table, size_t *sample,
                                  const int32_t **tab) {
    size_t s = m / (size_t)pixels, px = m % (size_t)pixels;
    for (int r = 0; r < mr; r++) {
        sample[r] = s;
        tab[r] = table + px * taps;
        if (++px == (size_t)pixels) { px = 0; s++; }
    }
}

#endif
