/*
 * EMA attention, forward pass on CPU (see ema_cpu.h). Per group: row and column sums (one pass) give the 1x1 conv's
 * gates and the window means that set the second softmax; one pass writes y = x * gate_h * gate_w (scratch memory)
 * and its mean, one its variance; one pass adds the s1-weighted 3x3 conv and the s2-weighted GroupNorm of y into the
 * attention map; one pass writes x * sigmoid(map). For training it also keeps what the backward pass reads.
 */
#include "ema_cpu.h"

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

__attribute__((noinline)) void ema_gated_row(const float *x, float g, const float *gw, float *y, int64_t w) {
    for (int64_t c = 0; c < w; c++) y[c] = x[c] * (g * gw[c]);
}

/* y = x * gate_h * gate_w of one channel into y (h * w), with its mean and reciprocal standard deviation (two
   passes: no cancellation). */
static void gated_stats(const float *xo, const float *gh, const float *gw, int64_t h, int64_t w, float eps,
                        float *restrict y, float *mean_out, float *rstd_out) {
    const int64_t hw = h * w;
    double sum = 0.0, squares = 0.0;
    for (int64_t r = 0; r < h; r++) {
        ema_gated_row(xo + r * w, gh[r], gw, y + r * w, w);
        float part = 0.0f;
        for (int64_t c = 0; c < w; c++) part += y[r * w + c];
        sum += part;
    }
    const float mean = (float)(sum / (double)hw);
    for (int64_t r = 0; r < h; r++) {
        float part = 0.0f;
        for (int64_t c = 0; c < w; c++) part += (y[r * w + c] - mean) * (y[r * w + c] - mean);
        squares += part;
    }
    *mean_out = mean;
    *rstd_out = (float)(1.0 / sqrt(squares / (double)hw + (double)eps)); /* double: no approximate rsqrt */
}

/* att += the zero-padded 3x3 conv of one channel xi with kernel k (9 taps) plus scale * (y - mean), the channel's
   GroupNorm term (y - mean first: exact where y is near-constant and rstd large). zeros: w zeros (the padding). */
static void add_channel(float *restrict att, const float *restrict xi, const float *restrict y, const float *k,
                        float scale, float mean, const float *restrict zeros, int64_t h, int64_t w) {
    const float k00 = k[0], k01 = k[1], k02 = k[2], k10 = k[3], k11 = k[4], k12 = k[5], k20 = k[6], k21 = k[7],
                k22 = k[8];
    for (int64_t r = 0; r < h; r++) {
        float *restrict ar = att + r * w;
        const float *restrict yr = y + r * w, *restrict x1 = xi + r * w;
        const float *restrict x0 = r > 0 ? x1 - w : zeros, *restrict x2 = r < h - 1 ? x1 + w : zeros;
        for (int64_t c = 0; c < w; c++) ar[c] += scale * (yr[c] - mean) + k01 * x0[c] + k11 * x1[c] + k21 * x2[c];
        for (int64_t c = 1; c < w; c++) ar[c] += k00 * x0[c - 1] + k10 * x1[c - 1] + k20 * x2[c - 1];
        for (int64_t c = 0; c < w - 1; c++) ar[c] += k02 * x0[c + 1] + k12 * x1[c + 1] + k22 * x2[c + 1];
    }
}

/* The layer for one group: cg channels of one image at xg, written to og. sv holds this group's slices of the kept
   results (or of one thread's scratch memory in inference, with map and gate_deriv NULL); att, y: scratch memory for
   h * w and cg * h * w values; zeros: w zeros. */
static void group_forward(const Layer *L, const float *restrict xg, float *restrict og, const Saved *sv,
                          float *restrict att, float *restrict y, const float *restrict zeros) {
    const int64_t cg = L->cg, h = L->h, w = L->w, hw = h * w, hpw = h + w;
    float *restrict gates = sv->gates, *restrict s2 = sv->s2;
    pool(xg, sv->pooled, sv->windows, cg, h, w);
    /* gates = sigmoid(conv1x1(pooled)); s2 = softmax of the 3x3 conv output's spatial means. */
    for (int64_t o = 0; o < cg; o++) {
        float *restrict go = gates + o * hpw, s = L->b3[o];
        for (int64_t t = 0; t < hpw; t++) go[t] = L->b1[o];
        for (int64_t i = 0; i < cg; i++) {
            const float wt = L->w1[o * cg + i], *restrict pi = sv->pooled + i * hpw;
            for (int64_t t = 0; t < hpw; t++) go[t] += wt * pi[t];
        }
        sigmoid_inplace(go, sv->gate_deriv ? sv->gate_deriv + o * hpw : NULL, hpw);
        for (int64_t j = 0; j < cg * 9; j++) s += L->w3[o * cg * 9 + j] * sv->windows[j];
        s2[o] = s;
    }
    softmax(s2, cg);
    /* sum_o s2_o GroupNorm(y)_o = sum_o s2_o gamma_o rstd_o (y_o - mean_o) + sum_o s2_o bias_o. */
    float constant = 0.0f;
    for (int64_t o = 0; o < cg; o++) {
        gated_stats(xg + o * hw, gates + o * hpw, gates + o * hpw + h, h, w, L->eps, y + o * hw, sv->mean + o,
                    sv->rstd + o);
        constant += s2[o] * L->bias[o];
    }
    for (int64_t p = 0; p < hw; p++) att[p] = constant;
    for (int64_t i = 0; i < cg; i++) {
        const float scale = s2[i] * L->gamma[i] * sv->rstd[i];
        add_channel(att, xg + i * hw, y + i * hw, L->kernel + i * 9, scale, sv->mean[i], zeros, h, w);
    }
    if (sv->map) memcpy(sv->map, att, sizeof(float) * (size_t)hw);
    sigmoid_inplace(att, NULL, hw);
    for (int64_t i = 0; i < cg; i++) {
        const float *restrict xi = xg + i * hw;
        float *restrict oi = og + i * hw;
        for (int64_t p = 0; p < hw; p++) oi[p] = xi[p] * att[p];
    }
}

/* Slices of group n of the kept results (all pointers NULL: none kept). */
static Saved slice(const Saved *all, int64_t n, int64_t cg, int64_t h, int64_t w) {
    const Saved s = {all->map + n * h * w,   all->gates + n * cg * (h + w), all->pooled + n * cg * (h + w),
                     all->windows + n * cg * 9, all->s2 + n * cg,          all->mean + n * cg,
                     all->rstd + n * cg,       all->gate_deriv + n * cg * (h + w)};
    return s;
}

/* Returns 0, or -1 if memory for the scratch buffers is missing. map ... gate_deriv: the Saved arrays to fill (for the
   backward pass), or all NULL. */
int ema_forward_f32(const float *x, float *out, const float *w1, const float *b1, const float *w3, const float *b3,
                    const float *gamma, const float *beta, int64_t groups, int64_t cg, int64_t h, int64_t w,
                    float eps, int threads, float *map, float *gates, float *pooled, float *windows, float *s2,
                    float *mean, float *rstd, float *gate_deriv) {
    Layer L = {w1, b1, w3, b3, gamma, beta, groups, cg, h, w, eps, NULL, NULL, NULL};
    const Saved keep = {map, gates, pooled, windows, s2, mean, rstd, gate_deriv};
    const int64_t hw = h * w, hpw = h + w;
    int failed = 0;
    if (layer_init(&L)) return -1;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        Saved scratch = {0};
        float *att = floats(hw), *y = floats(cg * hw), *zeros = floats(w);
        failed = !att || !y || !zeros;
        if (zeros) memset(zeros, 0, sizeof(float) * (size_t)w);
        if (!keep.map) { /* inference: one thread's scratch memory, reused for each of its groups */
            scratch = (Saved){NULL, floats(cg * hpw), floats(cg * hpw), floats(cg * 9), floats(cg), floats(cg),
                              floats(cg), NULL};
            failed = failed || !scratch.gates || !scratch.pooled || !scratch.windows || !scratch.s2 || !scratch.mean ||
                     !scratch.rstd;
        }
#pragma omp for schedule(static)
        for (int64_t n = 0; n < groups; n++) {
            if (failed) continue;
            const Saved sv = keep.map ? slice(&keep, n, cg, h, w) : scratch;
            group_forward(&L, x + n * cg * hw, out + n * cg * hw, &sv, att, y, zeros);
        }
        free_floats(att), free_floats(y), free_floats(zeros), free_floats(scratch.gates), free_floats(scratch.pooled);
        free_floats(scratch.windows), free_floats(scratch.s2), free_floats(scratch.mean), free_floats(scratch.rstd);
    }
    layer_free(&L);
    return failed ? -1 : 0;
}
