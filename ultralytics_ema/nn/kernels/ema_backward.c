/*
 * EMA attention, backward pass on CPU (see ema_cpu.h); the steps of EMAFunction.backward in
 * ultralytics_ema/nn/ema_function.py, one group at a time. It writes the input gradient and, per group, the small
 * tensors from which ultralytics_ema/nn/ema_function.py (parameter_grads) assembles the parameter gradients.
 *
 * Per group: one pass gives the attention map's gradient d_att; one pass per channel the GroupNorm terms; then per
 * channel one pass writes the direct and GroupNorm parts of dx and the gates' gradients, one adds the 3x3 conv's
 * part and the kernel's gradient, and one (after the 1x1 conv's backward, which mixes channels) the parts that flow
 * through the row, column and window means.
 */
#include "ema_cpu.h"

/* Per-group results besides dx, as (groups, ...) arrays. */
typedef struct {
    float *d_kernel; /* (cg, 9) gradient of the s1-weighted kernels */
    float *d_gates;  /* (cg, h + w) gradient of the 1x1 conv's output (before the sigmoid) */
    float *d_logits; /* (cg) gradient of the second softmax's input */
    float *q;        /* (cg) mean of d_att times the normalised y */
    float *sum_d;    /* (1) sum of d_att */
} Grads;

/* Scratch memory of one thread. */
typedef struct {
    float *d_att, *att, *att_deriv, *alpha, *slope, *d_windows, *d_pooled, *row;
} Scratch;

/* From the map's logits: att = sigmoid(map) and d_att = (sum_i grad_i * x_i) * sigmoid'(map), the gradient of the map
   before its sigmoid (deriv: scratch memory for hw values); returns the sum of d_att. Computed here from the logits
   rather than kept by the forward pass: with 2 channels per group, reading one more map-sized array cost ~10%. */
static double map_grad(const float *restrict gg, const float *restrict xg, const float *restrict map,
                       float *restrict att, float *restrict deriv, float *restrict d_att, int64_t cg, int64_t hw) {
    double total = 0.0;
    memcpy(att, map, sizeof(float) * (size_t)hw);
    sigmoid_inplace(att, deriv, hw);
    for (int64_t p = 0; p < hw; p++) d_att[p] = 0.0f;
    for (int64_t i = 0; i < cg; i++)
        for (int64_t p = 0; p < hw; p++) d_att[p] += gg[i * hw + p] * xg[i * hw + p];
    for (int64_t p = 0; p < hw; p++) {
        d_att[p] *= deriv[p];
        total += d_att[p];
    }
    return total;
}

/* sum_p (y_p - mean) * d_att_p for one channel, y = x * gate_h * gate_w (row: scratch memory for w values). Centred:
   sum_p y_p d_att_p - mean * sum_p d_att_p would cancel where the channel is near-constant. */
static double gated_dot(const float *xo, const float *gh, const float *gw, float mean, const float *restrict d_att,
                        float *restrict row, int64_t h, int64_t w) {
    double total = 0.0;
    for (int64_t r = 0; r < h; r++) {
        ema_gated_row(xo + r * w, gh[r], gw, row, w);
        float part = 0.0f;
        for (int64_t c = 0; c < w; c++) part += (row[c] - mean) * d_att[r * w + c];
        total += part;
    }
    return total;
}

/* Add to d (n) the multiple of g (n) that makes sum_i g_i d_i equal target: the rounding errors of d along g go. */
static void project(float *restrict d, const float *restrict g, double target, int64_t n) {
    double dot = 0.0, norm = 0.0;
    for (int64_t i = 0; i < n; i++) dot += (double)g[i] * d[i], norm += (double)g[i] * g[i];
    if (norm > 0.0) {
        const float shift = (float)((target - dot) / norm);
        for (int64_t i = 0; i < n; i++) d[i] += shift * g[i];
    }
}

/* One channel: dx = grad * att + dy * gate_h * gate_w with dy = alpha * (d_att - mean_d) + slope * (y - mean), the
   GroupNorm's backward; the gradients of the gates' logits into dgh (h) and dgw (w), through the sigmoid's derivatives
   derivs (h + w). sum_dy_y: sum_p dy * y, known in closed form (see group_backward); the gates' gradients before
   the sigmoid, weighted by the gates, add up to it exactly, and are corrected so that their float sums do too. */
static void direct_part(const float *restrict go, const float *xo, const float *restrict att,
                        const float *restrict d_att, const float *gh, const float *gw, const float *restrict derivs,
                        float alpha, float mean_d, float slope, float mean, double sum_dy_y, float *restrict row,
                        float *restrict dxo, float *restrict dgh, float *restrict dgw, int64_t h, int64_t w) {
    for (int64_t c = 0; c < w; c++) dgw[c] = 0.0f;
    for (int64_t r = 0; r < h; r++) {
        const int64_t at = r * w;
        const float g = gh[r];
        float part = 0.0f;
        ema_gated_row(xo + at, g, gw, row, w);
        for (int64_t c = 0; c < w; c++) {
            const float x = xo[at + c], dy = alpha * (d_att[at + c] - mean_d) + slope * (row[c] - mean);
            dxo[at + c] = go[at + c] * att[at + c] + dy * (g * gw[c]);
            part += dy * x * gw[c];
            dgw[c] += dy * x * g;
        }
        dgh[r] = part;
    }
    project(dgh, gh, sum_dy_y, h);
    project(dgw, gw, sum_dy_y, w);
    for (int64_t r = 0; r < h; r++) dgh[r] *= derivs[r];
    for (int64_t c = 0; c < w; c++) dgw[c] *= derivs[h + c];
}

/* One channel's zero-padded 3x3 conv with kernel k: dx += its transpose applied to d_att; d_kernel = sum d_att * x. */
static void conv_part(const float *restrict xo, const float *restrict d_att, const float *k, float *restrict dxo,
                      float *d_kernel, int64_t h, int64_t w) {
    float dk[9] = {0};
    for (int64_t r = 0; r < h; r++) {
        const float *restrict da = d_att + r * w;
        for (int di = 0; di < 3; di++) {
            const int64_t rr = r + di - 1;
            if (rr < 0 || rr >= h) continue;
            const float *restrict xs = xo + rr * w;
            float *restrict ds = dxo + rr * w;
            const float k0 = k[di * 3], k1 = k[di * 3 + 1], k2 = k[di * 3 + 2];
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f;
            for (int64_t c = 0; c < w; c++) {
                ds[c] += k1 * da[c];
                a1 += da[c] * xs[c];
            }
            for (int64_t c = 1; c < w; c++) {
                ds[c - 1] += k0 * da[c];
                a0 += da[c] * xs[c - 1];
            }
            for (int64_t c = 0; c < w - 1; c++) {
                ds[c + 1] += k2 * da[c];
                a2 += da[c] * xs[c + 1];
            }
            dk[di * 3] += a0, dk[di * 3 + 1] += a1, dk[di * 3 + 2] += a2;
        }
    }
    for (int t = 0; t < 9; t++) d_kernel[t] = dk[t];
}

/* One channel: dx += the gradient through its row means (dp, h), column means (dp + h, w) and window means (dw, 9,
   already divided by h * w). */
static void means_part(const float *dp, const float *dw, float *restrict dxo, int64_t h, int64_t w) {
    const float *restrict cols = dp + h;
    for (int64_t r = 0; r < h; r++) {
        float u[3];
        for (int dj = 0; dj < 3; dj++) {
            u[dj] = 0.0f;
            for (int di = 0; di < 3; di++)
                if (tap_reads(di, r, h)) u[dj] += dw[di * 3 + dj];
        }
        const float row = dp[r] / (float)w + u[0] + u[1] + u[2];
        float *restrict dr = dxo + r * w;
        for (int64_t c = 0; c < w; c++) dr[c] += row + cols[c] / (float)h;
        dr[0] -= u[2];     /* tap 2 never reads column 0 */
        dr[w - 1] -= u[0]; /* tap 0 never reads the last column */
    }
}

static void group_backward(const Layer *L, const float *gg, const float *xg, const Saved *sv, float *dxg,
                           const Grads *gr, const Scratch *sc) {
    const int64_t cg = L->cg, h = L->h, w = L->w, hw = h * w, hpw = h + w;
    const double sum_d = map_grad(gg, xg, sv->map, sc->att, sc->att_deriv, sc->d_att, cg, hw);
    const float mean_d = (float)(sum_d / (double)hw);
    *gr->sum_d = (float)sum_d;
    /* GroupNorm: q, then the softmax backward of d_s2 = gamma * hw * q + bias * sum_d. */
    float weighted = 0.0f;
    for (int64_t o = 0; o < cg; o++) {
        const float *gh = sv->gates + o * hpw;
        const double dot = gated_dot(xg + o * hw, gh, gh + h, sv->mean[o], sc->d_att, sc->row, h, w);
        const float q = sv->rstd[o] * (float)(dot / (double)hw);
        gr->q[o] = q;
        gr->d_logits[o] = L->gamma[o] * (float)hw * q + L->bias[o] * (float)sum_d;
        weighted += sv->s2[o] * gr->d_logits[o];
    }
    for (int64_t o = 0; o < cg; o++) {
        gr->d_logits[o] = sv->s2[o] * (gr->d_logits[o] - weighted);
        sc->alpha[o] = L->gamma[o] * sv->s2[o] * sv->rstd[o];
        sc->slope[o] = -sc->alpha[o] * sv->rstd[o] * gr->q[o];
    }
    for (int64_t j = 0; j < cg * 9; j++) { /* d_logits @ w3 / (h * w): each window pixel's share of its mean's grad */
        float sum = 0.0f;
        for (int64_t o = 0; o < cg; o++) sum += gr->d_logits[o] * L->w3[o * cg * 9 + j];
        sc->d_windows[j] = sum / (float)hw;
    }
    for (int64_t o = 0; o < cg; o++) {
        const float *gh = sv->gates + o * hpw;
        float *dgh = gr->d_gates + o * hpw;
        /* sum_p dy * y = alpha * sum_p (d_att - mean_d - rstd^2 mean(u d_att) u) (u + mean), u = y - mean, is
           alpha * hw * mean(u d_att) * (1 - var * rstd^2) = alpha * hw * q * eps * rstd. */
        const double sum_dy_y = (double)sc->alpha[o] * (double)hw * gr->q[o] * L->eps * sv->rstd[o];
        direct_part(gg + o * hw, xg + o * hw, sc->att, sc->d_att, gh, gh + h, sv->gate_deriv + o * hpw, sc->alpha[o],
                    mean_d, sc->slope[o], sv->mean[o], sum_dy_y, sc->row, dxg + o * hw, dgh, dgh + h, h, w);
        conv_part(xg + o * hw, sc->d_att, L->kernel + o * 9, dxg + o * hw, gr->d_kernel + o * 9, h, w);
    }
    /* The 1x1 conv mixes channels: d_pooled = w1^T d_gates, then the means' part of every channel. */
    for (int64_t i = 0; i < cg; i++) {
        float *restrict dp = sc->d_pooled + i * hpw;
        for (int64_t t = 0; t < hpw; t++) dp[t] = 0.0f;
        for (int64_t o = 0; o < cg; o++) {
            const float wt = L->w1[o * cg + i], *restrict dg = gr->d_gates + o * hpw;
            for (int64_t t = 0; t < hpw; t++) dp[t] += wt * dg[t];
        }
        means_part(dp, sc->d_windows + i * 9, dxg + i * hw, h, w);
    }
}

/* Returns 0, or -1 if memory for the scratch buffers is missing. Saved: as filled by ema_forward_f32. */
int ema_backward_f32(const float *grad, const float *x, const float *w1, const float *b1, const float *w3,
                     const float *b3, const float *gamma, const float *beta, int64_t groups, int64_t cg, int64_t h,
                     int64_t w, float eps, int threads, float *map, float *gates, float *pooled, float *windows, float *s2,
                     float *mean, float *rstd, float *gate_deriv, float *dx, float *d_kernel, float *d_gates, float *d_logits, float *q,
                     float *sum_d) {
    Layer L = {w1, b1, w3, b3, gamma, beta, groups, cg, h, w, eps, NULL, NULL, NULL};
    const int64_t hw = h * w, hpw = h + w;
    int failed = 0;
    if (layer_init(&L)) return -1;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        Scratch sc = {floats(hw), floats(hw), floats(hw), floats(cg), floats(cg), floats(cg * 9), floats(cg * hpw),
                      floats(w)};
        failed = !sc.d_att || !sc.att || !sc.att_deriv || !sc.alpha || !sc.slope || !sc.d_windows || !sc.d_pooled ||
                 !sc.row;
#pragma omp for schedule(static)
        for (int64_t n = 0; n < groups; n++) {
            if (failed) continue;
            const Saved sv = {map + n * hw, gates + n * cg * hpw, pooled + n * cg * hpw, windows + n * cg * 9,
                              s2 + n * cg,  mean + n * cg,        rstd + n * cg,         gate_deriv + n * cg * hpw};
            const Grads gr = {d_kernel + n * cg * 9, d_gates + n * cg * hpw, d_logits + n * cg, q + n * cg, sum_d + n};
            group_backward(&L, grad + n * cg * hw, x + n * cg * hw, &sv, dx + n * cg * hw, &gr, &sc);
        }
        free_floats(sc.d_att), free_floats(sc.att), free_floats(sc.att_deriv), free_floats(sc.alpha);
        free_floats(sc.slope), free_floats(sc.d_windows), free_floats(sc.d_pooled), free_floats(sc.row);
    }
    layer_free(&L);
    return failed ? -1 : 0;
}
