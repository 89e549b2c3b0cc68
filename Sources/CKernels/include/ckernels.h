#ifndef EDGE_CKERNELS_H
#define EDGE_CKERNELS_H

// Micro-kernels that need instructions Swift cannot select per function (AVX-512, AVX2+FMA,
// and later VNNI and NEON dot products). Each has a portable C path; the best path for the
// running CPU is chosen once, at first use.

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Instruction sets a kernel may use. `EDGE_ISA_AUTO` picks the best the CPU supports.
typedef enum {
    EDGE_ISA_AUTO = 0,
    EDGE_ISA_PORTABLE = 1,
    EDGE_ISA_AVX2 = 2,
    EDGE_ISA_AVX512 = 3,
} edge_isa;

/// Epilogue activation fused into a GEMM's output.
typedef enum {
    EDGE_ACT_NONE = 0,
    EDGE_ACT_RELU = 1,
    EDGE_ACT_RELU6 = 2,
    EDGE_ACT_LEAKY = 3,
} edge_activation;

/// Whether the running CPU (and OS) can execute `isa`.
int edge_isa_supported(edge_isa isa);
/// The ISA that `EDGE_ISA_AUTO` resolves to on this CPU.
edge_isa edge_isa_best(void);
const char *edge_isa_name(edge_isa isa);

/// Packed FP32 weights: W[out][in] (nn.Linear layout) in panels of 16 outputs, each panel
/// k-major ([in][16]), zero-padded to a multiple of 16 outputs, followed by the padded bias.
size_t edge_sgemm_packed_floats(int outputs, int inputs);
void edge_sgemm_pack(const float *weight, const float *bias, int outputs, int inputs, float *packed);

/// Y[m][o] = act(Σ_k X[m][k] · W[o][k] + bias[o]) for m < rows, o < outputs.
/// X rows are `ldx` floats apart, Y rows `ldy`. Allocates nothing.
void edge_sgemm_packed(edge_isa isa, int rows, int outputs, int inputs,
                       const float *x, int ldx, const float *packed,
                       float *y, int ldy, edge_activation act, float alpha);

/// dst[c][r] = src[r][c] for a rows × cols matrix.
void edge_transpose(const float *src, int rows, int cols, float *dst);

/// Unfolds one CHW sample into rows[oh·ow][kh·kw·C], taps ordered (ky, kx, c), so a convolution
/// is rows · Wᵀ with W permuted to [out][kh][kw][C]. `hwc` is scratch of C·H·W floats.
void edge_im2row(const float *x, int channels, int height, int width, int kh, int kw, int sh, int sw, int ph, int pw,
                 float *hwc, float *rows);

#ifdef __cplusplus
}
#endif

#endif
