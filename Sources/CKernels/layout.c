// Data movement around the GEMMs: transposes and the im2row unfolding of convolutions.

#include "ckernels.h"
#include <string.h>

void edge_transpose(const float *src, int rows, int cols, float *dst) {
    enum { B = 16 };
    for (int r0 = 0; r0 < rows; r0 += B) {
        int r1 = r0 + B < rows ? r0 + B : rows;
        for (int c0 = 0; c0 < cols; c0 += B) {
            int c1 = c0 + B < cols ? c0 + B : cols;
            for (int r = r0; r < r1; r++)
                for (int c = c0; c < c1; c++) dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
        }
    }
}

void edge_im2row(const float *x, int channels, int height, int width, int kh, int kw, int sh, int sw, int ph, int pw,
                 float *hwc, float *rows) {
    // Channels last first, so that each (ky, kx) tap of a patch is one contiguous copy of C floats.
    edge_transpose(x, channels, height * width, hwc);
    int oh = (height + 2 * ph - kh) / sh + 1, ow = (width + 2 * pw - kw) / sw + 1;
    size_t tap = (size_t)channels * sizeof(float);
    float *d = rows;
    for (int oy = 0; oy < oh; oy++) {
        for (int ox = 0; ox < ow; ox++) {
            for (int ky = 0; ky < kh; ky++) {
                int iy = oy * sh - ph + ky;
                for (int kx = 0; kx < kw; kx++) {
                    int ix = ox * sw - pw + kx;
                    if (iy < 0 || iy >= height || ix < 0 || ix >= width) memset(d, 0, tap);
                    else memcpy(d, hwc + ((size_t)iy * width + ix) * channels, tap);
                    d += channels;
                }
            }
        }
    }
}

void edge_transpose_u8(const uint8_t *src, int rows, int cols, uint8_t *dst) {
    enum { B = 32 };
    for (int r0 = 0; r0 < rows; r0 += B) {
        int r1 = r0 + B < rows ? r0 + B : rows;
        for (int c0 = 0; c0 < cols; c0 += B) {
            int c1 = c0 + B < cols ? c0 + B : cols;
            for (int r = r0; r < r1; r++)
                for (int c = c0; c < c1; c++) dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
        }
    }
}

void edge_im2row_u8(const uint8_t *x, int channels, int height, int width, int kh, int kw, int sh, int sw, int ph, int pw,
                    uint8_t pad, uint8_t *hwc, uint8_t *rows, int ldrow) {
    edge_transpose_u8(x, channels, height * width, hwc);
    int oh = (height + 2 * ph - kh) / sh + 1, ow = (width + 2 * pw - kw) / sw + 1;
    int patch = kh * kw * channels;
    for (int oy = 0; oy < oh; oy++) {
        for (int ox = 0; ox < ow; ox++) {
            uint8_t *d = rows + (size_t)(oy * ow + ox) * ldrow;
            for (int ky = 0; ky < kh; ky++) {
                int iy = oy * sh - ph + ky;
                for (int kx = 0; kx < kw; kx++) {
                    int ix = ox * sw - pw + kx;
                    if (iy < 0 || iy >= height || ix < 0 || ix >= width) memset(d, pad, (size_t)channels);
                    else memcpy(d, hwc + ((size_t)iy * width + ix) * channels, (size_t)channels);
                    d += channels;
                }
            }
            // The row's padding up to ldrow meets zero weights; keep it defined.
            memset(d, pad, (size_t)(ldrow - patch));
        }
    }
}
