/*
 * EMA attention (Efficient Multi-Scale Attention, https://arxiv.org/abs/2305.13563), inference forward pass on CPU.
 *
 * The whole layer in one call, float32, input and output contiguous (b, c, h, w). It computes the function of
 * ultralytics_ema/ema_function.py (ema_forward; notation as there), one channel group at a time: a group's data
 * (c / factor channels of one image) stays in cache between the passes over it, so the input is read from memory
 * about once and the output written once. Groups run in parallel (OpenMP, when compiled with it).
 *
 * Per group: row and column sums (one pass) give the 1x1 conv's gates and the window means that set the second
 * softmax; two passes give the mean and variance of y = x * gate_h * gate_w; one pass adds the s1-weighted 3x3 conv
 * and the s2-weighted GroupNorm of y into the attention map; one pass writes x * sigmoid(map).
 *
 * Built and loaded by ultralytics_ema/native.py. Returns 0, or -1 if memory for the scratch buffers is missing.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static void sigmoid_inplace(float *restrict v, int64_t n) {
    for (int64_t i = 0; i < n; i++) v[i] = 1.0f / (1.0f + expf(-v[i]));
}

static void softmax(float *v, int64_t n) {
    float top = v[0], total = 0.0f;
    for (int64_t i = 1; i < n; i++) top = fmaxf(top, v[i]);
    for (int64_t i = 0; i < n; i++) total += (v[i] = expf(v[i] - top));
    for (int64_t i = 0; i < n; i++) v[i] /= total;
}

/* Means of rows and columns of each channel into pooled (cg, h + w); 3x3 window means into windows (cg, 9). */
static void pool(const float *xg, float *pooled, float *windows, int64_t cg, int64_t h, int64_t w) {
    const int64_t hw = h * w;
    for (int64_t i = 0; i < cg; i++) {
        const float *xi = xg + i * hw;
        float *rows = pooled + i * (h + w), *cols = rows + h;
        double total = 0.0;
        for (int64_t c = 0; c < w; c++) cols[c] = 0.0f;
        for (int64_t r = 0; r < h; r++) {
            const float *xr = xi + r * w;
            float sum = 0.0f;
            for (int64_t c = 0; c < w; c++) {
                sum += xr[c];
                cols[c] += xr[c];
            }
            rows[r] = sum;
            total += sum;
        }
        /* Tap (di, dj) of the zero-padded conv reads every row but the last (di = 0) or the first (di = 2), and
           every column but the last (dj = 0) or the first (dj = 2). */
        const double drop_row[3] = {rows[h - 1], 0.0, rows[0]}, drop_col[3] = {cols[w - 1], 0.0, cols[0]};
        const double corner[2][2] = {{xi[hw - 1], xi[(h - 1) * w]}, {xi[w - 1], xi[0]}};
        for (int di = 0; di < 3; di++)
            for (int dj = 0; dj < 3; dj++) {
                const double both = (di != 1 && dj != 1) ? corner[di / 2][dj / 2] : 0.0;
                windows[i * 9 + di * 3 + dj] = (float)((total - drop_row[di] - drop_col[dj] + both) / (double)hw);
            }
        for (int64_t r = 0; r < h; r++) rows[r] /= (float)w;
        for (int64_t c = 0; c < w; c++) cols[c] /= (float)h;
    }
}

/* Mean and reciprocal standard deviation of y = x * gate_h * gate_w for one channel (two passes: no cancellation). */
static void gated_stats(const float *xo, const float *gh, const float *gw, int64_t h, int64_t w, float eps,
                        float *mean_out, float *rstd_out) {
    double sum = 0.0, squares = 0.0;
    for (int64_t r = 0; r < h; r++) {
        const float *xr = xo + r * w;
        float row = 0.0f;
        for (int64_t c = 0; c < w; c++) row += xr[c] * gw[c];
        sum += (double)row * gh[r];
    }
    const float mean = (float)(sum / (double)(h * w));
    for (int64_t r = 0; r < h; r++) {
        const float *xr = xo + r * w, g = gh[r];
        float row = 0.0f;
        for (int64_t c = 0; c < w; c++) {
            const float d = xr[c] * g * gw[c] - mean;
            row += d * d;
        }
        squares += row;
    }
    *mean_out = mean;
    *rstd_out = 1.0f / sqrtf((float)(squares / (double)(h * w)) + eps);
}

/* att += the zero-padded 3x3 conv of one channel xi with kernel k (9 taps) plus scale * gh (x) gw * xi. */
static void add_channel(float *restrict att, const float *restrict xi, const float *k, const float *gh, const float *gw, float scale,
                        int64_t h, int64_t w) {
    for (int64_t r = 0; r < h; r++) {
        float *ar = att + r * w;
        const float *xr = xi + r * w, g = scale * gh[r];
        for (int64_t c = 0; c < w; c++) ar[c] += g * gw[c] * xr[c];
        for (int di = 0; di < 3; di++) {
            const int64_t rr = r + di - 1;
            if (rr < 0 || rr >= h) continue;
            const float *xs = xi + rr * w, k0 = k[di * 3], k1 = k[di * 3 + 1], k2 = k[di * 3 + 2];
            if (w == 1) {
                ar[0] += k1 * xs[0];
                continue;
            }
            ar[0] += k1 * xs[0] + k2 * xs[1];
            for (int64_t c = 1; c < w - 1; c++) ar[c] += k0 * xs[c - 1] + k1 * xs[c] + k2 * xs[c + 1];
            ar[w - 1] += k0 * xs[w - 2] + k1 * xs[w - 1];
        }
    }
}

/* Scratch memory of one thread. */
typedef struct {
    float *pooled, *gates, *windows, *s2, *k, *att;
} Scratch;

/* The layer for one group: cg channels of one image at xg, written to og. */
static void group_forward(const float *restrict xg, float *restrict og, const float *w1, const float *b1,
                          const float *w3, const float *b3, const float *gamma, const float *bias, const float *kernel,
                          int64_t cg, int64_t h, int64_t w, float eps, const Scratch *sc) {
    const int64_t hw = h * w, hpw = h + w;
    float *restrict gates = sc->gates, *restrict att = sc->att, *restrict s2 = sc->s2, *restrict k = sc->k;
    pool(xg, sc->pooled, sc->windows, cg, h, w);
    /* gates = sigmoid(conv1x1(pooled)); s2 = softmax of the 3x3 conv output's spatial means. */
    for (int64_t o = 0; o < cg; o++) {
        float *restrict go = gates + o * hpw, s = b3[o];
        for (int64_t t = 0; t < hpw; t++) go[t] = b1[o];
        for (int64_t i = 0; i < cg; i++) {
            const float wt = w1[o * cg + i], *restrict pi = sc->pooled + i * hpw;
            for (int64_t t = 0; t < hpw; t++) go[t] += wt * pi[t];
        }
        sigmoid_inplace(go, hpw);
        for (int64_t j = 0; j < cg * 9; j++) s += w3[o * cg * 9 + j] * sc->windows[j];
        s2[o] = s;
    }
    softmax(s2, cg);
    /* sum_o s2_o GroupNorm(y)_o = sum_o k_o y_o + constant. */
    float constant = 0.0f;
    for (int64_t o = 0; o < cg; o++) {
        float mean, rstd;
        gated_stats(xg + o * hw, gates + o * hpw, gates + o * hpw + h, h, w, eps, &mean, &rstd);
        k[o] = s2[o] * gamma[o] * rstd;
        constant += s2[o] * bias[o] - k[o] * mean;
    }
    for (int64_t p = 0; p < hw; p++) att[p] = constant;
    for (int64_t i = 0; i < cg; i++)
        add_channel(att, xg + i * hw, kernel + i * 9, gates + i * hpw, gates + i * hpw + h, k[i], h, w);
    sigmoid_inplace(att, hw);
    for (int64_t i = 0; i < cg; i++) {
        const float *restrict xi = xg + i * hw;
        float *restrict oi = og + i * hw;
        for (int64_t p = 0; p < hw; p++) oi[p] = xi[p] * att[p];
    }
}

int ema_forward_f32(const float *x, float *out, const float *w1, const float *b1, const float *w3, const float *b3,
                    const float *gamma, const float *beta, int64_t groups, int64_t cg, int64_t h, int64_t w,
                    float eps, int threads) {
    const int64_t hw = h * w, hpw = h + w;
    int failed = 0;
    /* Weight-only terms: s1 = softmax(beta), the s1-weighted 3x3 kernels, and the GroupNorm bias with the 3x3 conv
       bias folded in (the softmax weights sum to one). */
    float *s1 = malloc(sizeof(float) * cg), *kernel = malloc(sizeof(float) * cg * 9);
    float *bias = malloc(sizeof(float) * cg);
    if (!s1 || !kernel || !bias) {
        free(s1), free(kernel), free(bias);
        return -1;
    }
    float conv_bias = 0.0f;
    for (int64_t o = 0; o < cg; o++) s1[o] = beta[o];
    softmax(s1, cg);
    for (int64_t o = 0; o < cg; o++) conv_bias += s1[o] * b3[o];
    for (int64_t o = 0; o < cg; o++) bias[o] = beta[o] + conv_bias;
    for (int64_t j = 0; j < cg * 9; j++) {
        float sum = 0.0f;
        for (int64_t o = 0; o < cg; o++) sum += s1[o] * w3[o * cg * 9 + j];
        kernel[j] = sum;
    }

#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        Scratch sc = {malloc(sizeof(float) * cg * hpw), malloc(sizeof(float) * cg * hpw), malloc(sizeof(float) * cg * 9),
                      malloc(sizeof(float) * cg), malloc(sizeof(float) * cg), malloc(sizeof(float) * hw)};
        failed = !sc.pooled || !sc.gates || !sc.windows || !sc.s2 || !sc.k || !sc.att;
#pragma omp for schedule(static)
        for (int64_t n = 0; n < groups; n++)
            if (!failed)
                group_forward(x + n * cg * hw, out + n * cg * hw, w1, b1, w3, b3, gamma, bias, kernel, cg, h, w, eps,
                              &sc);
        free(sc.pooled), free(sc.gates), free(sc.windows), free(sc.s2), free(sc.k), free(sc.att);
    }
    free(s1), free(kernel), free(bias);
    return failed ? -1 : 0;
}
