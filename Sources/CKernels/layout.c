// Data movement around the GEMMs: transposes and the im2row unfolding of convolutions.

#include "ckernels.h"
#include <stdint.h>
#include <string.h>

#include "vector.h"

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

// Copies and fills of a few bytes (a 5-tap run of one channel is 20 bytes, or 5): a variable-size
// memcpy or memset is a library call, which costs more than the copy. Two overlapping fixed-size
// moves cover any length from w to 2w; src and dst never overlap each other.
static inline __attribute__((always_inline)) void copy_small(unsigned char *d, const unsigned char *s, size_t n) {
    if (n >= 32) {
        size_t i = 0;
        for (; i + 32 <= n; i += 32) memcpy(d + i, s + i, 32);
        if (i < n) memcpy(d + n - 32, s + n - 32, 32);
    } else if (n >= 16) {
        memcpy(d, s, 16);
        memcpy(d + n - 16, s + n - 16, 16);
    } else if (n >= 8) {
        memcpy(d, s, 8);
        memcpy(d + n - 8, s + n - 8, 8);
    } else if (n >= 4) {
        memcpy(d, s, 4);
        memcpy(d + n - 4, s + n - 4, 4);
    } else if (n > 0) {
        d[0] = s[0];
        d[n / 2] = s[n / 2];
        d[n - 1] = s[n - 1];
    }
}

static inline __attribute__((always_inline)) void fill_small(unsigned char *d, unsigned char byte, size_t n) {
    if (n >= 32) {
        size_t i = 0;
        for (; i + 32 <= n; i += 32) memset(d + i, byte, 32);
        if (i < n) memset(d + n - 32, byte, 32);
    } else if (n >= 16) {
        memset(d, byte, 16);
        memset(d + n - 16, byte, 16);
    } else if (n >= 8) {
        memset(d, byte, 8);
        memset(d + n - 8, byte, 8);
    } else if (n >= 4) {
        memset(d, byte, 4);
        memset(d + n - 4, byte, 4);
    } else if (n > 0) {
        d[0] = byte;
        d[n / 2] = byte;
        d[n - 1] = byte;
    }
}

enum { PADDED_ROW_BYTES = 32768 };

// im2row_bytes moves short UINT8 runs as 4-byte words whose low bytes come first in memory.
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "im2row_bytes's 4-byte moves assume a little-endian target");

/// im2row on bytes: a pixel is `cb` bytes (its channels), the padding a repeated byte (0 for
/// FP32's 0.0, the zero point for UINT8), a row of `rows` is `ldrow` bytes (the taps, then the
/// pad byte up to ldrow). Every window is one copy of kw·cb bytes from a padded copy of the input
/// in one stack buffer of PADDED_ROW_BYTES: the whole padded image when it fits (a 28x28 image of
/// 8 channels), else each input row with its left and right padding just before its windows are
/// copied; a padded row wider than the buffer (a 128-wide, 64-channel FP32 image) takes the
/// window-by-window path. Non-positive sizes or strides (which a model's checked shapes never
/// have) write nothing.
static void im2row_bytes(const unsigned char *x, size_t cb, int height, int width, int kh, int kw, int sh, int sw, int ph, int pw,
                         unsigned char pad, unsigned char *rows, size_t ldrow) {
    if (height <= 0 || width <= 0 || kh <= 0 || kw <= 0 || sh <= 0 || sw <= 0) return;
    int oh = (height + 2 * ph - kh) / sh + 1, ow = (width + 2 * pw - kw) / sw + 1;
    size_t run = (size_t)kw * cb, taps = (size_t)kh * run, line = (size_t)width * cb;
    if (oh <= 0 || ow <= 0) return;
    // The pad bytes after the taps. Up to 4 of them (the rounding to whole k-quads) are one 4-byte
    // store ending the row: the byte or bytes of taps it also covers are written after it, by the
    // window copies below. (fill_small's branches and byte stores here were a quarter of the
    // im2row of a single-channel 5x5 convolution, whose rows are 25 taps and 3 pad bytes.)
    if (ldrow > taps && ldrow - taps <= 4 && ldrow >= 4)
        for (size_t p = 0; p < (size_t)oh * ow; p++) memset(rows + p * ldrow + ldrow - 4, pad, 4);
    else if (ldrow > taps)
        for (size_t p = 0; p < (size_t)oh * ow; p++) fill_small(rows + p * ldrow + taps, pad, ldrow - taps);
    // The padded paths need the kernel to fit the padded image (the C API does not check it; a
    // model's shapes are checked on load) and no negative padding; otherwise windows are clipped.
    size_t pline = line + 2 * (size_t)pw * cb;
    unsigned char buffer[PADDED_ROW_BYTES], *img = buffer, *padded = buffer;  // one buffer for either padded path
    long long hp = (long long)height + 2LL * ph, wp = (long long)width + 2LL * pw;
    if (pw >= 0 && ph >= 0 && kw <= wp && kh <= hp && pline <= PADDED_ROW_BYTES && hp <= (long long)(PADDED_ROW_BYTES / pline)) {
        // The whole image, padded on all sides, is laid out once; every window is then one copy
        // from it. (Laying out each input row just before its windows read it made those reads
        // wait on the row's own stores: 20% of im2row on a 28x28 single-channel conv.)
        fill_small(img, pad, (size_t)ph * pline);
        for (int iy = 0; iy < height; iy++) {
            unsigned char *r = img + (size_t)(iy + ph) * pline;
            fill_small(r, pad, (size_t)pw * cb);
            memcpy(r + (size_t)pw * cb, x + (size_t)iy * line, line);
            fill_small(r + (size_t)pw * cb + line, pad, (size_t)pw * cb);
        }
        fill_small(img + (size_t)(height + ph) * pline, pad, (size_t)ph * pline);
        // A run of 4 to 7 bytes (a 5-tap single-channel window) is one 8-byte move, not two 4-byte
        // ones, for every kernel row but the last: the 1 to 4 bytes past the run land in the next
        // kernel row's run, which is written after it, and are read from the padded image itself
        // (the image row below exists, since this is not the last kernel row); the 8 bytes of
        // slack asked for past the image are only a second guard.
        int wide = run >= 4 && run < 8 && (size_t)hp * pline + 8 <= PADDED_ROW_BYTES;
        // A run of 1 to 3 bytes (a 3-tap single-channel window) is one 4-byte move for every kernel
        // row: past the run, the bytes land in the next kernel row's run, written after it, or, for
        // the last kernel row, in the row's pad bytes, and that move carries `pad` there instead of
        // image bytes (the window's bytes in memory order are the word's low ones: little-endian,
        // as every target is). Its reads past the last window stay in the 4 bytes after the image,
        // set to `pad`. (copy_small's three byte moves a run were half the im2row of the 8x8 CNN's
        // first convolution.)
        int narrow = run < 4 && (size_t)(kh - 1) * run + 4 <= ldrow && (size_t)hp * pline + 4 <= PADDED_ROW_BYTES;
        if (narrow) fill_small(img + (size_t)hp * pline, pad, 4);
        const uint32_t runMask = narrow ? 0xFFFFFFFFu >> (8 * (4 - run)) : 0, padWord = (uint32_t)pad * 0x01010101u;
        for (int oy = 0; oy < oh; oy++)
            for (int ky = 0; ky < kh; ky++) {
                unsigned char *d = rows + (size_t)oy * ow * ldrow + (size_t)ky * run;
                const unsigned char *src = img + (size_t)(oy * sh + ky) * pline;
                if (narrow) {
                    uint32_t keep = ky + 1 < kh ? 0xFFFFFFFFu : runMask, fill = padWord & ~keep;
                    for (int ox = 0; ox < ow; ox++) {
                        uint32_t v;
                        memcpy(&v, src + (size_t)ox * sw * cb, 4);
                        v = (v & keep) | fill;
                        memcpy(d + (size_t)ox * ldrow, &v, 4);
                    }
                } else if (wide && ky + 1 < kh)
                    for (int ox = 0; ox < ow; ox++) memcpy(d + (size_t)ox * ldrow, src + (size_t)ox * sw * cb, 8);
                else
                    for (int ox = 0; ox < ow; ox++) copy_small(d + (size_t)ox * ldrow, src + (size_t)ox * sw * cb, run);
            }
        return;
    }
    if (pw >= 0 && ph >= 0 && kw <= wp && pline <= PADDED_ROW_BYTES) {
        fill_small(padded, pad, (size_t)pw * cb);
        fill_small(padded + (size_t)pw * cb + line, pad, (size_t)pw * cb);
        for (int oy = 0; oy < oh; oy++) {
            for (int ky = 0; ky < kh; ky++) {
                unsigned char *d = rows + (size_t)oy * ow * ldrow + (size_t)ky * run;
                int iy = oy * sh - ph + ky;
                if (iy < 0 || iy >= height) {
                    for (int ox = 0; ox < ow; ox++) fill_small(d + (size_t)ox * ldrow, pad, run);
                    continue;
                }
                const unsigned char *src = x + (size_t)iy * line;
                if (pw > 0) {
                    memcpy(padded + (size_t)pw * cb, src, line);
                    src = padded;
                }
                for (int ox = 0; ox < ow; ox++) copy_small(d + (size_t)ox * ldrow, src + (size_t)ox * sw * cb, run);
            }
        }
        return;
    }
    // Window by window: the kw taps of kernel row ky are kw·cb contiguous bytes of input row iy,
    // less what hangs over the left or right padding.
    for (int oy = 0; oy < oh; oy++) {
        for (int ox = 0; ox < ow; ox++) {
            unsigned char *d = rows + (size_t)(oy * ow + ox) * ldrow;
            int ix0 = ox * sw - pw;
            int left = ix0 < 0 ? -ix0 : 0;
            int right = ix0 + kw > width ? ix0 + kw - width : 0;
            if (left > kw) left = kw;
            if (right > kw - left) right = kw - left;
            size_t lz = (size_t)left * cb, n = (size_t)(kw - left - right) * cb;
            for (int ky = 0; ky < kh; ky++, d += run) {
                int iy = oy * sh - ph + ky;
                if (iy < 0 || iy >= height || n == 0) {  // a window wholly in the padding forms no input pointer
                    fill_small(d, pad, run);
                    continue;
                }
                fill_small(d, pad, lz);
                copy_small(d + lz, x + (size_t)iy * line + (size_t)(ix0 + left) * cb, n);
                fill_small(d + lz + n, pad, run - lz - n);
            }
        }
    }
}

void edge_im2row_nhwc(const float *x, int channels, int height, int width, int kh, int kw, int sh, int sw, int ph, int pw,
                      float *rows) {
    if (channels <= 0) return;
    size_t cb = (size_t)channels * sizeof(float);
    im2row_bytes((const unsigned char *)x, cb, height, width, kh, kw, sh, sw, ph, pw, 0, (unsigned char *)rows, (size_t)kh * kw * cb);
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
    if (channels <= 0 || ldrow < 0) return;
    im2row_bytes(x, (size_t)channels, height, width, kh, kw, sh, sw, ph, pw, pad, rows, (size_t)ldrow);
}

#if defined(__x86_64__)
#define EDGE_TVBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi")))

enum { SMALL_IMAGE_BYTES = 2048 };

/// The im2row rows of `samples` small single-channel images by byte permutes (AVX-512 VBMI): an
/// output row's kh padded input rows are one 64-byte load from the image laid out padded, and its
/// ow·ldrow bytes of windows (≤ 128) two vpermb with the pad byte where no tap reads. The indices
/// depend on the geometry only and are built once per call. (The 8×8 CNN's first convolution:
/// three 4-byte moves per window before, 11 µs of a 320-µs batch of 64.) Returns 0, writing
/// nothing, where it does not apply: more than one channel, kh padded rows wider than 64 bytes,
/// output rows longer than 128 bytes, negative padding, a kernel larger than the padded image.
static EDGE_TVBMI int im2row_small_u8(const uint8_t *x, int samples, size_t sample_stride, int height, int width, int kh, int kw, int sh,
                                      int sw, int ph, int pw, uint8_t pad, uint8_t *rows, int ldrow) {
    if (height <= 0 || width <= 0 || kh <= 0 || kw <= 0 || sh <= 0 || sw <= 0) return 0;
    if (ph < 0 || pw < 0 || ph > 64 || pw > 32 || height > 64 || width > 64 || kh > 64 || kw > 64 || ldrow < kh * kw || ldrow > 128)
        return 0;
    int hp = height + 2 * ph, pline = width + 2 * pw;
    if (kh > hp || kw > pline || kh * pline > 64 || width > 64) return 0;
    int oh = (hp - kh) / sh + 1, ow = (pline - kw) / sw + 1, n = ow * ldrow;
    if (n > 128) return 0;
    // Bytes laid out: the padded image, and past it the rest of the last output row's 64-byte load.
    int used = ((oh - 1) * sh * pline + 64 > hp * pline) ? (oh - 1) * sh * pline + 64 : hp * pline;
    if (used > SMALL_IMAGE_BYTES) return 0;
    uint8_t idx[128] = {0}, keep[128] = {0};
    for (int j = 0, ox = 0, k = 0, ky = 0, kx = 0; j < n; j++) {  // byte j: window ox, its byte k, tap (ky, kx)
        if (ky < kh) {
            keep[j] = 1;
            idx[j] = (uint8_t)(ky * pline + ox * sw + kx);
            if (++kx == kw) kx = 0, ky++;
        }
        if (++k == ldrow) k = 0, ox++, ky = 0, kx = 0;
    }
    __m512i idx0 = _mm512_loadu_si512(idx), idx1 = _mm512_loadu_si512(idx + 64);
    __mmask64 keep0 = _mm512_test_epi8_mask(_mm512_loadu_si512(keep), _mm512_loadu_si512(keep)),
              keep1 = _mm512_test_epi8_mask(_mm512_loadu_si512(keep + 64), _mm512_loadu_si512(keep + 64));
    __mmask64 store0 = n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
    __mmask64 store1 = n <= 64 ? 0 : n == 128 ? ~(__mmask64)0 : (((__mmask64)1 << (n - 64)) - 1);
    __mmask64 line = width == 64 ? ~(__mmask64)0 : (((__mmask64)1 << width) - 1);
    __m512i padv = _mm512_set1_epi8((char)pad);
    uint8_t img[SMALL_IMAGE_BYTES];
    for (int b = 0; b < used; b += 64) _mm512_storeu_si512(img + b, padv);  // used + 63 < sizeof img: 2048 is a multiple of 64
    for (int s = 0; s < samples; s++) {
        const uint8_t *xs = x + (size_t)s * sample_stride;
        for (int iy = 0; iy < height; iy++)
            _mm512_mask_storeu_epi8(img + (iy + ph) * pline + pw, line, _mm512_maskz_loadu_epi8(line, xs + (size_t)iy * width));
        uint8_t *d = rows + (size_t)s * oh * n;
        for (int oy = 0; oy < oh; oy++, d += n) {
            __m512i win = _mm512_loadu_si512(img + oy * sh * pline);
            _mm512_mask_storeu_epi8(d, store0, _mm512_mask_permutexvar_epi8(padv, keep0, idx0, win));
            if (store1) _mm512_mask_storeu_epi8(d + 64, store1, _mm512_mask_permutexvar_epi8(padv, keep1, idx1, win));
        }
    }
    return 1;
}
#endif

void edge_im2row_nhwc_u8_batch(const uint8_t *x, int samples, size_t sample_stride, int channels, int height, int width, int kh, int kw,
                               int sh, int sw, int ph, int pw, uint8_t pad, uint8_t *rows, int ldrow) {
    if (samples <= 0 || channels <= 0 || ldrow < 0 || height <= 0 || width <= 0 || kh <= 0 || kw <= 0 || sh <= 0 || sw <= 0) return;
    long long oh = ((long long)height + 2LL * ph - kh) / sh + 1, ow = ((long long)width + 2LL * pw - kw) / sw + 1;
    if (oh <= 0 || ow <= 0) return;
#if defined(__x86_64__)
    edge_isa isa = edge_isa_best();
    if (channels == 1 && (isa == EDGE_ISA_AVX512 || isa == EDGE_ISA_AVX512VNNI) && __builtin_cpu_supports("avx512vbmi") &&
        im2row_small_u8(x, samples, sample_stride, height, width, kh, kw, sh, sw, ph, pw, pad, rows, ldrow))
        return;
#endif
    for (int s = 0; s < samples; s++)
        im2row_bytes(x + (size_t)s * sample_stride, (size_t)channels, height, width, kh, kw, sh, sw, ph, pw, pad,
                     rows + (size_t)s * (size_t)oh * (size_t)ow * (size_t)ldrow, (size_t)ldrow);
}

// ---- pooling ----------------------------------------------------------------------------------
// Max pooling is exact on UINT8 (monotonic); average pooling rounds half up. Each plane is
// independent, so `planes` = batch · channels.

/// Pooling writes nothing for sizes a model's checked shapes never have: a size, kernel or stride
/// that is not positive (a zero stride divided by 0), or a window larger than the image (whose
/// output size, rounded toward zero, would be 1 and read past the input).
static int pool_sizes_valid(int batch, int height, int width, int channels, int kh, int kw, int sh, int sw) {
    return batch > 0 && height > 0 && width > 0 && channels > 0 && kh > 0 && kw > 0 && sh > 0 && sw > 0 && kh <= height && kw <= width;
}

void edge_pool_f32(const float *x, int planes, int height, int width, int kh, int kw, int sh, int sw, int average, float *y) {
    if (!pool_sizes_valid(planes, height, width, 1, kh, kw, sh, sw)) return;
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
    if (!pool_sizes_valid(planes, height, width, 1, kh, kw, sh, sw)) return;
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

/// The largest of four runs of n values, channel by channel, as `p > q ? p : q` (a NaN meets the
/// second operand, as maxps does): the 2×2 stride-2 max pooling's work per output pixel.
#define MAX4_SCALAR(NAME, T)                                                                        \
    static __attribute__((noinline)) void NAME(const T *a, const T *a1, const T *r, const T *r1, T *d, int n) { \
        for (int c = 0; c < n; c++) {                                                               \
            T m0 = a[c] > a1[c] ? a[c] : a1[c], m1 = r[c] > r1[c] ? r[c] : r1[c];                    \
            d[c] = m0 > m1 ? m0 : m1;                                                               \
        }                                                                                           \
    }
MAX4_SCALAR(max4_u8, uint8_t)
MAX4_SCALAR(max4_f32, float)

/// 2×2 max pooling with stride 2, the common case: four runs of C values per output pixel. BODY
/// reduces the first VEC channels of the pixel at `a` into `d` (whole vector steps; none on the
/// portable path), the scalar function the rest. Sizes are positive here.
#define MAXPOOL2X2_NHWC(NAME, TARGET, T, VEC, BODY, TAIL)                                                 \
    static TARGET void NAME(const T *x, int batch, int height, int width, int channels, T *y) {           \
        int oh = height / 2, ow = width / 2, vec = VEC;                                                   \
        size_t rs = (size_t)width * channels;                                                             \
        for (int b = 0; b < batch; b++)                                                                   \
            for (int oy = 0; oy < oh; oy++)                                                               \
                for (int ox = 0; ox < ow; ox++) {                                                         \
                    const T *a = x + ((size_t)b * height + (size_t)(2 * oy)) * rs + (size_t)(2 * ox) * channels; \
                    T *d = y + (((size_t)b * oh + oy) * ow + ox) * channels;                              \
                    BODY                                                                                  \
                    if (vec < channels)                                                                   \
                        TAIL(a + vec, a + channels + vec, a + rs + vec, a + rs + channels + vec, d + vec, channels - vec); \
                }                                                                                         \
    }
MAXPOOL2X2_NHWC(maxpool2x2_u8_scalar, , uint8_t, 0, , max4_u8)
MAXPOOL2X2_NHWC(maxpool2x2_f32_scalar, , float, 0, , max4_f32)

#if defined(__x86_64__)
// Compiled for the baseline, the scalar loops vectorise 16 bytes a step behind alias checks;
// these take 32 bytes (8 floats) a step, the scalar loop the channels past the last whole step.
#define MAX4_U8_AVX2                                                                                     \
    for (int c = 0; c < vec; c += 32) {                                                                  \
        __m256i m0 = _mm256_max_epu8(_mm256_loadu_si256((const __m256i *)(a + c)),                       \
                                     _mm256_loadu_si256((const __m256i *)(a + channels + c)));           \
        __m256i m1 = _mm256_max_epu8(_mm256_loadu_si256((const __m256i *)(a + rs + c)),                  \
                                     _mm256_loadu_si256((const __m256i *)(a + rs + channels + c)));      \
        _mm256_storeu_si256((__m256i *)(d + c), _mm256_max_epu8(m0, m1));                                \
    }
#define MAX4_F32_AVX2                                                                                    \
    for (int c = 0; c < vec; c += 8) {                                                                   \
        __m256 m0 = _mm256_max_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(a + channels + c));            \
        __m256 m1 = _mm256_max_ps(_mm256_loadu_ps(a + rs + c), _mm256_loadu_ps(a + rs + channels + c));  \
        _mm256_storeu_ps(d + c, _mm256_max_ps(m0, m1));                                                  \
    }
MAXPOOL2X2_NHWC(maxpool2x2_u8_avx2, EDGE_T256, uint8_t, channels / 32 * 32, MAX4_U8_AVX2, max4_u8)
MAXPOOL2X2_NHWC(maxpool2x2_f32_avx2, EDGE_T256, float, channels / 8 * 8, MAX4_F32_AVX2, max4_f32)

/// Whether the 2×2 pooling takes its AVX2 loops: on the ISA the kernels run (EDGE_ISA included).
static int pool_avx2(void) {
    edge_isa isa = edge_isa_best();
    return isa == EDGE_ISA_AVX2 || isa == EDGE_ISA_AVX512 || isa == EDGE_ISA_AVX512VNNI;
}
#define POOL_AVX2 pool_avx2()
#else
#define POOL_AVX2 0  // elsewhere the "AVX2" loops are the scalar ones, never chosen
#define maxpool2x2_u8_avx2 maxpool2x2_u8_scalar
#define maxpool2x2_f32_avx2 maxpool2x2_f32_scalar
#endif

/// The 2×2 stride-2 max pooling on the path the kernels run.
#define MAXPOOL2X2_BEST(SUFFIX, T)                                                                       \
    static void maxpool2x2_##SUFFIX(const T *x, int batch, int height, int width, int channels, T *y) { \
        (POOL_AVX2 ? maxpool2x2_##SUFFIX##_avx2 : maxpool2x2_##SUFFIX##_scalar)(x, batch, height, width, channels, y); \
    }
MAXPOOL2X2_BEST(u8, uint8_t)
MAXPOOL2X2_BEST(f32, float)

void edge_pool_nhwc_f32(const float *x, int batch, int height, int width, int channels, int kh, int kw, int sh, int sw,
                        int average, float *y) {
    if (!pool_sizes_valid(batch, height, width, channels, kh, kw, sh, sw)) return;
    int oh = (height - kh) / sh + 1, ow = (width - kw) / sw + 1;
    if (!average && kh == 2 && kw == 2 && sh == 2 && sw == 2) {
        maxpool2x2_f32(x, batch, height, width, channels, y);
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
    if (!pool_sizes_valid(batch, height, width, channels, kh, kw, sh, sw)) return;
    int oh = (height - kh) / sh + 1, ow = (width - kw) / sw + 1, n = kh * kw;
    if (!average && kh == 2 && kw == 2 && sh == 2 && sw == 2) {
        maxpool2x2_u8(x, batch, height, width, channels, y);
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

int edge_conv_table(int channels, int height, int width, int kh, int kw, int sh, int sw, int ph, int pw, int32_t *table) {
    if (channels <= 0 || height <= 0 || width <= 0 || kh <= 0 || kw <= 0 || sh <= 0 || sw <= 0 || ph < 0 || pw < 0) return 0;
    if ((long long)height * width * channels > INT32_MAX) return 0;
    long long hp = (long long)height + 2LL * ph, wp = (long long)width + 2LL * pw;
    if (hp < kh || wp < kw) return 0;  // no window fits
    long long oh = (hp - kh) / sh + 1, ow = (wp - kw) / sw + 1;
    for (long long oy = 0; oy < oh; oy++)
        for (long long ox = 0; ox < ow; ox++)
            for (int ky = 0; ky < kh; ky++)
                for (int kx = 0; kx < kw; kx++) {
                    long long iy = oy * sh - ph + ky, ix = ox * sw - pw + kx;
                    *table++ = (iy >= 0 && iy < height && ix >= 0 && ix < width) ? (int32_t)((iy * width + ix) * channels) : -1;
                }
    return 1;
}
