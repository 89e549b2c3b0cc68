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

#endif
