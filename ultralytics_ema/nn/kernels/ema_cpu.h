/*
 * EMA attention (Efficient Multi-Scale Attention, https://arxiv.org/abs/2305.13563) on CPU: shared definitions of the
 * forward (ema_forward.c) and backward (ema_backward.c) kernels.
 *
 * Both compute the functions of ultralytics_ema/nn/ema_function.py (notation as there) in float32 on contiguous
 * (b, c, h, w) tensors, one channel group (c / factor channels of one image) at a time: a group's data stays in
 * cache between the passes over it, so full-size tensors are read from memory about once. Groups run in parallel
 * (OpenMP, when compiled with it). Built and loaded by ultralytics_ema/nn/native.py.
 */
#ifndef EMA_CPU_H
#define EMA_CPU_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _WIN32
#include <malloc.h>
#endif
#include <string.h>

/* The layer: parameters, sizes, and the terms that depend on the parameters only. */
typedef struct {
    const float *w1, *b1, *w3, *b3, *gamma, *beta; /* conv1x1 (cg, cg), (cg); conv3x3 (cg, cg, 3, 3), (cg); gn (cg) */
    int64_t groups, cg, h, w;                      /* groups = batch * factor, cg = channels / factor */
    float eps;
    float *s1;     /* (cg) softmax(beta): the GroupNorm output's spatial means are its bias */
    float *kernel; /* (cg, 9) the s1-weighted 3x3 kernel of each input channel */
    float *bias;   /* (cg) beta + s1 . b3: the 3x3 conv bias folded into the GroupNorm bias */
} Layer;

/* Per-group results of the forward pass that the backward pass reads, as (groups, ...) arrays. */
typedef struct {
    float *map;     /* (hw) the attention map's logits (its sigmoid scales the output) */
    float *gates;   /* (cg, h + w) sigmoid of the 1x1 conv of the row and column means */
    float *pooled;  /* (cg, h + w) row means, then column means */
    float *windows; /* (cg, 9) means of the pixels that each 3x3 tap reads */
    float *s2;      /* (cg) softmax of the 3x3 conv output's spatial means */
    float *mean;    /* (cg) GroupNorm statistics of y = x * gate_h * gate_w */
    float *rstd;
    float *gate_deriv; /* (cg, h + w) sigmoid' of the gates' logits (see sigmoid_inplace) */
} Saved;

/* The kernels are compiled with -ffast-math -fno-finite-math-only (see native.py): sums may be reordered (vectorised
   reductions), but infinities and NaN keep their meaning and divisions and square roots are exact (with
   -ffinite-math-only GCC computes them by approximate reciprocals: 1 / (1 + inf) became NaN, and sigmoid(88) 1 - 2^-24).
   The functions that saturate (exp, sigmoid, softmax) only ever compute e^x for x <= 0, which cannot overflow. */

/* e^x for x <= 0 (or NaN), within 1.3 ulp of the exact value: x = n ln 2 + r with |r| <= ln 2 / 2, e^r by its
   Taylor polynomial (Cephes' coefficients for expf), times 2^n as two powers of two, so that results below 2^-126 come
   out as subnormal numbers, as from expf. r is computed in double: reordering x - n ln2_hi - n ln2_lo, as -ffast-math
   may, would lose its low bits. Written without calls or branches, so that loops over it vectorise. */
static inline float exp_nonpositive(float x) {
    x = x < -104.0f ? -104.0f : x; /* e^-104 < 2^-150: rounds to 0 (the test keeps NaN) */
    const int32_t n = (int32_t)(x * 1.44269504088896341f - 0.5f); /* round(x / ln 2), as x <= 0 */
    const float r = (float)((double)x - (double)n * 0.69314718055994531);
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const int32_t half = n >> 1; /* n >= -150: 2^half and 2^(n - half) are normal floats */
    const int32_t bits_a = (half + 127) << 23, bits_b = (n - half + 127) << 23;
    float scale_a, scale_b;
    memcpy(&scale_a, &bits_a, sizeof scale_a), memcpy(&scale_b, &bits_b, sizeof scale_b);
    return p * scale_a * scale_b;
}

/* sigmoid(v) into v, from t = e^-|v| in (0, 1] (1 / (1 + e^-v) overflows below v = -88.7): sigmoid(|v|) = 1 / (1 + t),
   sigmoid(-|v|) = t / (1 + t). If deriv is not NULL, also sigmoid'(v) = sigmoid(v) sigmoid(-v) into it, from the same
   two terms: exact where sigmoid(v) rounds to 1, where sigmoid(v) (1 - sigmoid(v)) would be 0 or one rounding step. */
static inline void sigmoid_inplace(float *restrict v, float *restrict deriv, int64_t n) {
    if (deriv)
        for (int64_t i = 0; i < n; i++) {
            const float t = exp_nonpositive(-fabsf(v[i])), s = 1.0f / (1.0f + t);
            deriv[i] = (t * s) * s;
            v[i] = v[i] >= 0.0f ? s : t * s;
        }
    else
        for (int64_t i = 0; i < n; i++) {
            const float t = exp_nonpositive(-fabsf(v[i])), s = 1.0f / (1.0f + t);
            v[i] = v[i] >= 0.0f ? s : t * s;
        }
}

/* Softmax of n values: e^(v - largest v) in (0, 1], divided by their sum (in [1, n]). */
static inline void softmax(float *v, int64_t n) {
    float top = v[0], total = 0.0f;
    for (int64_t i = 1; i < n; i++) top = fmaxf(top, v[i]);
    for (int64_t i = 0; i < n; i++) total += (v[i] = exp_nonpositive(v[i] - top));
    for (int64_t i = 0; i < n; i++) v[i] /= total;
}

/* y = x * (gate_h * gate_w) for one row of w pixels (g: the row's gate_h). Defined once, in ema_forward.c, and never
   inlined: the forward and backward passes get bitwise the same y, so that y - mean is exactly 0 where GroupNorm
   sees a single value (a 1x1 map), as in PyTorch. */
void ema_gated_row(const float *x, float g, const float *gw, float *y, int64_t w);

/* Scratch memory for n floats, aligned to 64 bytes (NULL if missing). The vectorised sums start where the data is
   aligned: with memory aligned alike in every thread, results do not depend on which thread computes a group. */
static inline float *floats(int64_t n) {
    const size_t size = sizeof(float) * (size_t)(n > 0 ? n : 1);
#ifdef _WIN32
    return _aligned_malloc(size, 64);
#else
    void *p = NULL;
    return posix_memalign(&p, 64, size) ? NULL : p;
#endif
}

static inline void free_floats(float *p) {
#ifdef _WIN32
    _aligned_free(p);
#else
    free(p);
#endif
}

static inline void layer_free(Layer *L) { free_floats(L->s1), free_floats(L->kernel), free_floats(L->bias); }

/* Fill s1, kernel and bias (allocated here, freed by layer_free); return -1, with nothing left allocated, if memory
   is missing. */
static inline int layer_init(Layer *L) {
    const int64_t cg = L->cg;
    L->s1 = floats(cg), L->bias = floats(cg), L->kernel = floats(cg * 9);
    if (!L->s1 || !L->kernel || !L->bias) {
        layer_free(L);
        return -1;
    }
    float conv_bias = 0.0f;
    for (int64_t o = 0; o < cg; o++) L->s1[o] = L->beta[o];
    softmax(L->s1, cg);
    for (int64_t o = 0; o < cg; o++) conv_bias += L->s1[o] * L->b3[o];
    for (int64_t o = 0; o < cg; o++) L->bias[o] = L->beta[o] + conv_bias;
    for (int64_t j = 0; j < cg * 9; j++) {
        float sum = 0.0f;
        for (int64_t o = 0; o < cg; o++) sum += L->s1[o] * L->w3[o * cg * 9 + j];
        L->kernel[j] = sum;
    }
    return 0;
}

/* Whether tap t (0, 1, 2) of a zero-padded 3-tap conv along an axis of length n reads entry i of the input:
   tap 0 reads the input shifted by -1 (never its last entry), tap 2 never reads its first one. */
static inline int tap_reads(int t, int64_t i, int64_t n) { return t == 1 || (t == 0 ? i < n - 1 : i > 0); }

#endif
