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

/// One patch row's taps at kernel row `ky` for output column ox: the kw taps are kw·C contiguous
/// values of input row iy (channels last), less what hangs over the left or right padding.
#define IM2ROW_NHWC_BODY(T, ZERO)                                                                         \
    int oh = (height + 2 * ph - kh) / sh + 1, ow = (width + 2 * pw - kw) / sw + 1;                       \
    size_t run = (size_t)kw * channels;                                                                   \
    for (int oy = 0; oy < oh; oy++) {                                                                     \
        for (int ox = 0; ox < ow; ox++) {                                                                 \
            T *d = rows + (size_t)(oy * ow + ox) * ldrow;                                                 \
            int ix0 = ox * sw - pw;                                                                       \
            int left = ix0 < 0 ? -ix0 : 0;                                                                \
            int right = ix0 + kw > width ? ix0 + kw - width : 0;                                         \
            if (left > kw) left = kw;                                                                     \
            if (right > kw - left) right = kw - left;                                                     \
            for (int ky = 0; ky < kh; ky++, d += run) {                                                   \
                int iy = oy * sh - ph + ky;                                                               \
                if (iy < 0 || iy >= height) {                                                             \
                    for (size_t i = 0; i < run; i++) d[i] = ZERO;                                          \
                    continue;                                                                             \
                }                                                                                         \
                size_t lz = (size_t)left * channels, n = (size_t)(kw - left - right) * channels;          \
                for (size_t i = 0; i < lz; i++) d[i] = ZERO;                                              \
                if (n > 0) {  /* a window wholly in the padding forms no input pointer */                \
                    const T *s = x + ((size_t)iy * width + (size_t)(ix0 + left)) * channels;              \
                    for (size_t i = 0; i < n; i++) d[lz + i] = s[i];                                      \
                }                                                                                         \
                for (size_t i = lz + n; i < run; i++) d[i] = ZERO;                                        \
            }                                                                                             \
            for (int c = kh * kw * channels; c < ldrow; c++) *d++ = ZERO;                                 \
        }                                                                                                 \
    }

void edge_im2row_nhwc(const float *x, int channels, int height, int width, int kh, int kw, int sh, int sw, int ph, int pw,
                      float *rows) {
    int ldrow = kh * kw * channels;
    IM2ROW_NHWC_BODY(float, 0.0f)
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

void edge_im2row_nhwc_u8(const uint8_t *x, int channels, int height, int width, int kh, int kw, int sh, int sw, int ph, int pw,
                         uint8_t pad, uint8_t *rows, int ldrow) {
    IM2ROW_NHWC_BODY(uint8_t, pad)
}

// ---- pooling ----------------------------------------------------------------------------------
// Max pooling is exact on UINT8 (monotonic); average pooling rounds half up. Each plane is
// independent, so `planes` = batch · channels.

void edge_pool_f32(const float *x, int planes, int height, int width, int kh, int kw, int sh, int sw, int average, float *y) {
    int oh = (height - kh) / sh + 1, ow = (width - kw) / sw + 1;
    if (kh == 2 && kw == 2 && sh == 2 && sw == 2 && !average) {  // the common case, unrolled
        for (int p = 0; p < planes; p++) {
            const float *xp = x + (size_t)p * height * width;
            for (int oy = 0; oy < oh; oy++) {
                const float *r0 = xp + (size_t)2 * oy * width, *r1 = r0 + width;
                for (int ox = 0; ox < ow; ox++) {
                    float a = r0[2 * ox] > r0[2 * ox + 1] ? r0[2 * ox] : r0[2 * ox + 1];
                    float b = r1[2 * ox] > r1[2 * ox + 1] ? r1[2 * ox] : r1[2 * ox + 1];
                    *y++ = a > b ? a : b;
                }
            }
        }
        return;
    }
    float inv = 1.0f / (float)(kh * kw);
    for (int p = 0; p < planes; p++) {
        const float *xp = x + (size_t)p * height * width;
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++) {
                const float *base = xp + (size_t)oy * sh * width + (size_t)ox * sw;
                float acc = average ? 0.0f : base[0];
                for (int ky = 0; ky < kh; ky++)
                    for (int kx = 0; kx < kw; kx++) {
                        float v = base[ky * width + kx];
                        if (average) acc += v; else acc = v > acc ? v : acc;
                    }
                *y++ = average ? acc * inv : acc;
            }
    }
}

void edge_pool_u8(const uint8_t *x, int planes, int height, int width, int kh, int kw, int sh, int sw, int average, uint8_t *y) {
    int oh = (height - kh) / sh + 1, ow = (width - kw) / sw + 1, n = kh * kw;
    if (kh == 2 && kw == 2 && sh == 2 && sw == 2 && !average) {
        for (int p = 0; p < planes; p++) {
            const uint8_t *xp = x + (size_t)p * height * width;
            for (int oy = 0; oy < oh; oy++) {
                const uint8_t *r0 = xp + (size_t)2 * oy * width, *r1 = r0 + width;
                for (int ox = 0; ox < ow; ox++) {
                    uint8_t a = r0[2 * ox] > r0[2 * ox + 1] ? r0[2 * ox] : r0[2 * ox + 1];
                    uint8_t b = r1[2 * ox] > r1[2 * ox + 1] ? r1[2 * ox] : r1[2 * ox + 1];
                    *y++ = a > b ? a : b;
                }
            }
        }
        return;
    }
    for (int p = 0; p < planes; p++) {
        const uint8_t *xp = x + (size_t)p * height * width;
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++) {
                const uint8_t *base = xp + (size_t)oy * sh * width + (size_t)ox * sw;
                int acc = 0;
                for (int ky = 0; ky < kh; ky++)
                    for (int kx = 0; kx < kw; kx++) {
                        int v = base[ky * width + kx];
                        if (average) acc += v; else acc = v > acc ? v : acc;
                    }
                *y++ = (uint8_t)(average ? (acc + n / 2) / n : acc);
            }
    }
}

// ---- channels last (NHWC) pooling -------------------------------------------------------------
// Each output pixel reduces its window channel by channel over contiguous runs of C values.
// Average rounds as the CHW versions do (FP32: sum · 1/n; UINT8: half up).

/// 2×2 max pooling with stride 2, the common case: four runs of C values per output pixel.
#define MAXPOOL2X2_NHWC_BODY(T)                                                                           \
    size_t rowStride = (size_t)width * channels;                                                          \
    for (int b = 0; b < batch; b++)                                                                       \
        for (int oy = 0; oy < oh; oy++)                                                                   \
            for (int ox = 0; ox < ow; ox++) {                                                             \
                const T *a = x + ((size_t)b * height + (size_t)(2 * oy)) * rowStride + (size_t)(2 * ox) * channels; \
                const T *a1 = a + channels, *r = a + rowStride, *r1 = r + channels;                       \
                T *d = y + (((size_t)b * oh + oy) * ow + ox) * channels;                                  \
                for (int c = 0; c < channels; c++) {                                                      \
                    T m0 = a[c] > a1[c] ? a[c] : a1[c], m1 = r[c] > r1[c] ? r[c] : r1[c];                  \
                    d[c] = m0 > m1 ? m0 : m1;                                                             \
                }                                                                                         \
            }

void edge_pool_nhwc_f32(const float *x, int batch, int height, int width, int channels, int kh, int kw, int sh, int sw,
                        int average, float *y) {
    int oh = (height - kh) / sh + 1, ow = (width - kw) / sw + 1;
    if (!average && kh == 2 && kw == 2 && sh == 2 && sw == 2) {
        MAXPOOL2X2_NHWC_BODY(float)
        return;
    }
    float inv = 1.0f / (float)(kh * kw);
    for (int b = 0; b < batch; b++) {
        const float *xb = x + (size_t)b * height * width * channels;
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++) {
                float *d = y + (((size_t)b * oh + oy) * ow + ox) * channels;
                const float *first = xb + ((size_t)oy * sh * width + (size_t)ox * sw) * channels;
                for (int c = 0; c < channels; c++) d[c] = average ? 0.0f : first[c];
                for (int ky = 0; ky < kh; ky++)
                    for (int kx = 0; kx < kw; kx++) {
                        const float *s = xb + ((size_t)(oy * sh + ky) * width + (size_t)(ox * sw + kx)) * channels;
                        if (average) for (int c = 0; c < channels; c++) d[c] += s[c];
                        else for (int c = 0; c < channels; c++) d[c] = s[c] > d[c] ? s[c] : d[c];
                    }
                if (average) for (int c = 0; c < channels; c++) d[c] *= inv;
            }
    }
}

void edge_pool_nhwc_u8(const uint8_t *x, int batch, int height, int width, int channels, int kh, int kw, int sh, int sw,
                       int average, uint8_t *y) {
    int oh = (height - kh) / sh + 1, ow = (width - kw) / sw + 1, n = kh * kw;
    if (!average && kh == 2 && kw == 2 && sh == 2 && sw == 2) {
        MAXPOOL2X2_NHWC_BODY(uint8_t)
        return;
    }
    enum { CB = 256 };
    int acc[CB];
    for (int b = 0; b < batch; b++) {
        const uint8_t *xb = x + (size_t)b * height * width * channels;
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++) {
                uint8_t *d = y + (((size_t)b * oh + oy) * ow + ox) * channels;
                for (int c0 = 0; c0 < channels; c0 += CB) {
                    int cn = channels - c0 < CB ? channels - c0 : CB;
                    for (int c = 0; c < cn; c++) acc[c] = 0;
                    for (int ky = 0; ky < kh; ky++)
                        for (int kx = 0; kx < kw; kx++) {
                            const uint8_t *s = xb + ((size_t)(oy * sh + ky) * width + (size_t)(ox * sw + kx)) * channels + c0;
                            if (average) for (int c = 0; c < cn; c++) acc[c] += s[c];
                            else for (int c = 0; c < cn; c++) acc[c] = s[c] > acc[c] ? s[c] : acc[c];
                        }
                    for (int c = 0; c < cn; c++) d[c0 + c] = (uint8_t)(average ? (acc[c] + n / 2) / n : acc[c]);
                }
            }
    }
}

void edge_global_pool_nhwc_f32(const float *x, int batch, int pixels, int channels, float *y) {
    float inv = 1.0f / (float)pixels;
    for (int b = 0; b < batch; b++) {
        float *d = y + (size_t)b * channels;
        const float *xb = x + (size_t)b * pixels * channels;
        for (int c = 0; c < channels; c++) d[c] = 0.0f;
        for (int p = 0; p < pixels; p++)
            for (int c = 0; c < channels; c++) d[c] += xb[(size_t)p * channels + c];
        for (int c = 0; c < channels; c++) d[c] *= inv;
    }
}

void edge_global_pool_nhwc_u8(const uint8_t *x, int batch, int pixels, int channels, uint8_t *y) {
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < channels; c++) {
            int64_t s = 0;  // 2^24 pixels of 255 overflow an int
            for (int p = 0; p < pixels; p++) s += x[((size_t)b * pixels + p) * channels + c];
            y[(size_t)b * channels + c] = (uint8_t)((s + pixels / 2) / pixels);
        }
}
