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
    float *att;     /* (hw) sigmoid of the attention map */
    float *gates;   /* (cg, h + w) sigmoid of the 1x1 conv of the row and column means */
    float *pooled;  /* (cg, h + w) row means, then column means */
    float *windows; /* (cg, 9) means of the pixels that each 3x3 tap reads */
    float *s2;      /* (cg) softmax of the 3x3 conv output's spatial means */
    float *mean;    /* (cg) GroupNorm statistics of y = x * gate_h * gate_w */
    float *rstd;
} Saved;

static inline void sigmoid_inplace(float *restrict v, int64_t n) {
    for (int64_t i = 0; i < n; i++) v[i] = 1.0f / (1.0f + expf(-v[i]));
}

static inline void softmax(float *v, int64_t n) {
    float top = v[0], total = 0.0f;
    for (int64_t i = 1; i < n; i++) top = fmaxf(top, v[i]);
    for (int64_t i = 0; i < n; i++) total += (v[i] = expf(v[i] - top));
    for (int64_t i = 0; i < n; i++) v[i] /= total;
}

/* y = x * (gate_h * gate_w) for one row of w pixels (g: the row's gate_h). Defined once, in ema_forward.c, and never
   inlined: the forward and backward passes get bitwise the same y, so that y - mean is exactly 0 where GroupNorm
   sees a single value (a 1x1 map), as in PyTorch. */
void ema_gated_row(const float *x, float g, const float *gw, float *y, int64_t w);

static inline void layer_free(Layer *L) { free(L->s1), free(L->kernel), free(L->bias); }

/* Fill s1, kernel and bias (allocated here, freed by layer_free); return -1, with nothing left allocated, if memory
   is missing. */
static inline int layer_init(Layer *L) {
    const int64_t cg = L->cg;
    L->s1 = malloc(sizeof(float) * cg), L->bias = malloc(sizeof(float) * cg);
    L->kernel = malloc(sizeof(float) * cg * 9);
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
