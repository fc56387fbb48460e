"""The EMA attention computed in few passes over memory, with a hand-written backward pass.

See :mod:`ultralytics_ema.nn.ema` for the layer and the paper. This file holds the arithmetic:

- :func:`ema_forward` is the forward pass. Gradient-free calls run it directly; traced ones (TorchScript, ONNX)
  record :func:`ultralytics_ema.nn.ema_traced.ema_forward_traced` instead.
- :class:`EMAFunction` runs the same forward pass and keeps what its backward pass needs. The backward pass is
  written out by hand: autograd would run about six times as many full-size operations, most of them reductions
  over broadcast dimensions. In float32 on CPU both passes run in the native kernels (:mod:`ultralytics_ema.nn.native`,
  the same steps in C); :func:`parameter_grads` assembles the parameter gradients for both.

Notation, per group ``n`` (``b * factor`` of them) with channels ``i, o`` (``c / factor``): ``x`` is the input;
``gates = sigmoid(conv1x1([row means | column means]))``; ``y = x * gate_h * gate_w``; ``x1 = GroupNorm(y)``;
``s1 = softmax(gn.bias)`` and ``s2 = softmax(spatial mean of conv3x3(x))``; the attention map is
``a = sum_o s1_o conv3x3(x)_o + sum_o s2_o x1_o`` and the output is ``x * sigmoid(a)``.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from ultralytics_ema.nn import native

__all__ = ["EMAFunction", "ema_forward", "parameter_grads"]

# From this many elements of the gated input on, its GroupNorm statistics come from two reductions (no normalised
# copy is written): at batch 8 and more that saves a full-size buffer; below, GroupNorm's kernel has fewer small ops.
# Calls that keep tensors for the backward pass always use the reductions: their shifted y (_gated_moments) keeps the
# backward pass's sums over y from cancelling (with GroupNorm's statistics of the unshifted y, the 1x1 conv's bias
# gradient was about 4x less exact than the float32 reference's on an AVX2 CPU).
STATS_MIN_NUMEL = 1 << 20

# aten.convolution_backward arguments after (grad_output, input, weight): no bias, stride 1, padding 1, no transpose.
_CONV = (None, [1, 1], [1, 1], [1, 1], False, [0, 0])


@functools.cache
def _constant(make, *args) -> torch.Tensor:
    """``make(*args)``, cached per arguments; a normal tensor even if first made in inference mode (autograd may save
    it later). Never used while tracing (a cached tensor would be recorded as a constant): traced calls run
    :func:`ultralytics_ema.nn.ema_traced.ema_forward_traced`, which builds its constants from the input's shape."""
    with torch.inference_mode(False) if hasattr(torch, "inference_mode") else contextlib.nullcontext():
        return make(*args)


def _taps(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(3, n)`` weights of the window means of a zero-padded 3x3 conv along one axis of length ``n``.

    Tap 0 reads the input shifted by -1, so it never reads the last entry; tap 2 never reads the first one. Rows are
    divided by ``n``: row 1 gives the plain mean.
    """
    i = torch.arange(n, device=device)
    return torch.stack([i < n - 1, i >= 0, i > 0]).to(dtype) / n


def _group_sum(groups: int, group_channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(groups, groups * group_channels)`` 0/1 matrix that adds up the channels of each group."""
    return torch.eye(groups, dtype=dtype, device=device).repeat_interleave(group_channels, 1)


def _mean_pair(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(h + w, 2)``: column 0 takes minus the mean of the first ``h`` entries, column 1 the mean of the rest."""
    pair = torch.zeros(h + w, 2, dtype=dtype, device=device)
    pair[:h, 0] = -1 / h
    pair[h:, 1] = 1 / w
    return pair


def _spare(t: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """``t``'s memory as a contiguous tensor of ``shape`` (same size), if ``t`` is dense; else None."""
    if t.is_contiguous():
        return t.view(shape)
    if t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).view(shape)
    return None


def _gated_moments(
    outer: torch.Tensor, gx: torch.Tensor, gates: torch.Tensor, pooled: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``y = x * gate_h * gate_w`` (into ``outer``, the gates' outer product) with its channel means and GN ``rstd``.

    ``y`` is stored shifted by minus an estimate of its channel means (the input's mean times the two gates' means):
    GroupNorm ignores per-channel shifts, and the variance from ``E[y^2] - E[y]^2`` then does not cancel
    catastrophically on near-constant channels. Two reductions replace GroupNorm's kernel and its full-size output.
    """
    h, w = gx.shape[2:]
    mean_pair = _constant(_mean_pair, h, w, gx.dtype, gx.device)
    neg_shift = torch.matmul(gates, mean_pair).prod(-1).mul_(pooled[..., h:].mean(2))
    y = torch.addcmul(neg_shift[..., None, None], outer, gx, out=outer)
    ys = y.flatten(2)
    mean = ys.sum(2).div_(h * w)
    var = torch.linalg.vector_norm(ys, dim=2).square_().div_(h * w).addcmul_(mean, mean, value=-1)
    return y, mean, var.add_(eps).clamp_(min=eps).rsqrt_()  # clamp: rounding may leave var slightly below 0


def ema_forward(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w3: torch.Tensor,
    b3: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    groups: int,
    eps: float,
    keep: bool = False,
) -> tuple[torch.Tensor, tuple]:
    """EMA attention of ``x`` ``(b, c, h, w)`` with the layer's parameters; returns ``(output, saved)``.

    ``saved`` holds the intermediate tensors of :meth:`EMAFunction.backward` if ``keep``, else it is empty.
    """
    b, _, h, w = x.shape
    cg = gamma.shape[0]
    c, bg, hw = groups * cg, b * groups, h * w
    gx = x.reshape(bg, cg, h, w).contiguous()
    w3 = w3.reshape(cg, cg * 9)  # any memory format: reshape, not view
    dtype, device = x.dtype, x.device
    tap_h, tap_w = _constant(_taps, h, dtype, device), _constant(_taps, w, dtype, device)

    # Window means down the columns (row 1: column means), row means, then the window means of the 3x3 conv's taps.
    cols = torch.matmul(tap_h, gx)  # (bg, cg, 3, w)
    pooled = torch.cat([(gx.reshape(-1, w) @ tap_w[1]).view(bg, cg, h), cols[:, :, 1]], 2)  # (bg, cg, h + w)
    gates = torch.baddbmm(
        b1.reshape(1, cg, 1).expand(bg, cg, 1), w1.reshape(1, cg, cg).expand(bg, cg, cg), pooled
    ).sigmoid_()
    windows = (cols.view(-1, w) @ tap_w.t()).view(bg, cg * 9)
    s2 = torch.addmm(b3, windows, w3.t()).softmax(1)  # softmax of the 3x3 conv output's spatial means
    s1 = beta.softmax(0)  # the GroupNorm output's spatial mean is exactly its bias

    # s1-weighted 3x3 conv: a depthwise conv on a channels_last copy (the fast layout on CPU), then a group sum.
    kernel = torch.mm(s1.expand(groups, cg), w3).view(c, 1, 3, 3)  # (s1 @ w3) for every group
    x_cl = x.contiguous(memory_format=torch.channels_last)
    conv = F.conv2d(x_cl, kernel, padding=1, groups=c)
    att = torch.matmul(_constant(_group_sum, groups, cg, dtype, device), conv.flatten(2)).view(bg, 1, hw)

    # s2-weighted GroupNorm of the gated input. The 3x3 conv bias adds s1 . b3 to the map: folded into the GN bias.
    # Full-size buffers that are done with hold later results: fewer fresh allocations (and page faults) per call.
    y = torch.mul(gates[..., :h, None], gates[..., None, h:], out=_spare(conv, gx.shape))
    del conv
    bias = beta + s1 @ b3
    if y.numel() < STATS_MIN_NUMEL and not keep:
        x1 = torch.group_norm(y.mul_(gx), cg, gamma, bias, eps)
        att = att.baddbmm_(s2.unsqueeze(1).to(att.dtype), x1.reshape(bg, cg, hw).to(att.dtype))
        del x1
    else:
        y, mean, rstd = _gated_moments(y, gx, gates, pooled, eps)
        # sum_o s2_o GN(y)_o = sum_o k_o y_o + const: the normalised copy of y is never written.
        k = (s2 * gamma).mul_(rstd)
        const = (s2 * bias).sub_(k * mean).sum(1)
        att = att.baddbmm_(k.unsqueeze(1), y.view(bg, cg, hw)).add_(const.view(bg, 1, 1))
    att = att.sigmoid_()
    if not keep:
        del y
    spare = _spare(x_cl, gx.shape) if not keep and x_cl.data_ptr() != x.data_ptr() else None
    out = torch.mul(gx, att.view(bg, 1, h, w), out=spare).view(b, c, h, w)
    saved = (gx, x_cl, y, mean, rstd, att, gates, pooled, windows, s1, s2, kernel, bias) if keep else ()
    return out, saved


def parameter_grads(
    w3: torch.Tensor,
    b3: torch.Tensor,
    s1: torch.Tensor,
    s2: torch.Tensor,
    pooled: torch.Tensor,
    windows: torch.Tensor,
    d_gates: torch.Tensor,
    d_logits: torch.Tensor,
    d_kernel: torch.Tensor,
    q: torch.Tensor,
    sum_d: torch.Tensor,
    hw: int,
) -> tuple[torch.Tensor, ...]:
    """Gradients of ``(w1, b1, w3, b3, gamma, beta)`` from the backward pass's per-group terms.

    Shapes: ``w3`` ``(cg, cg * 9)``; ``pooled`` and ``d_gates`` (the 1x1 conv output's gradient) ``(bg, cg, h + w)``;
    ``windows`` ``(bg, cg * 9)``; ``s2``, ``d_logits`` (the second softmax input's gradient) and ``q`` (mean of the
    map's gradient times the normalised y) ``(bg, cg)``; ``d_kernel`` (gradient of the s1-weighted kernels, summed
    over groups) ``(cg * 9,)``; ``sum_d`` (sum of the map's gradient) ``(bg, 1)``.
    """
    cg = s1.shape[0]
    total_d = sum_d.sum()
    d_s1 = w3 @ d_kernel + b3 * total_d
    d_w1 = (d_gates @ pooled.transpose(1, 2)).sum(0).view(cg, cg, 1, 1)
    d_b1 = d_gates.sum((0, 2))
    d_w3 = (torch.outer(s1, d_kernel) + d_logits.t() @ windows).view(cg, cg, 3, 3)
    d_b3 = d_logits.sum(0) + s1 * total_d
    d_gamma = (s2 * q).sum(0) * hw
    d_beta = (s2 * sum_d).sum(0) + s1 * (d_s1 - s1 @ d_s1)
    return d_w1, d_b1, d_w3, d_b3, d_gamma, d_beta


def _match_gate_sums(d_gates: torch.Tensor, gates: torch.Tensor, sum_dy_y: torch.Tensor, h: int) -> None:
    """Correct the gates' gradients ``(bg, cg, h + w)`` (before the sigmoid) in place along the gates, so that the
    row gates' and the column gates' gradient, each weighted by its gates, add up to ``sum_dy_y``, as they do exactly.

    Both weighted sums are sum_p dy * y (dy: the GroupNorm input's gradient), which the GroupNorm's invariance to
    scaling makes alpha * hw * q * eps * rstd, far below its terms: in float32 their rounding errors along the gates
    would dominate the 1x1 conv's bias gradient (the sum of the gates' gradients), up to ~10x the reference's error.
    """
    for part, g in ((d_gates[..., :h], gates[..., :h]), (d_gates[..., h:], gates[..., h:])):
        norm = g.square().sum(-1)
        shift = torch.where(norm > 0, (sum_dy_y - (g * part).sum(-1)) / norm, 0.0)  # all gates 0: nothing to fix
        part.addcmul_(g, shift.unsqueeze(-1))


class EMAFunction(torch.autograd.Function):
    """:func:`ema_forward` with a hand-written backward pass (first derivatives only).

    Float32 on CPU runs both passes in the native kernels (:mod:`ultralytics_ema.nn.native`) where they apply.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w3, b3, gamma, beta, groups: int, eps: float):
        """Run :func:`ema_forward` (or the native kernel) and keep what :meth:`backward` needs."""
        params = (w1, b1, w3, b3, gamma, beta)
        ctx.groups, ctx.eps, ctx.shape, ctx.native = groups, eps, x.shape, native.applies(x, params)
        if ctx.native:
            out, saved = native.ema_forward_native(x, *params, groups, eps, keep=True)
            ctx.save_for_backward(*params, *saved)
            return out
        out, saved = ema_forward(x, *params, groups, eps, keep=True)
        ctx.save_for_backward(w1, w3, b3, gamma, *saved)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        """Gradients of the input and of the six parameters."""
        if ctx.native:
            return EMAFunction._native_backward(ctx, grad)
        w1, w3, b3, gamma, gx, x_cl, y, mean, rstd, att, gates, pooled, windows, s1, s2, kernel, bias = (
            ctx.saved_tensors
        )
        b, c, h, w = ctx.shape
        g = ctx.groups
        bg, cg, hw = gx.shape[0], gx.shape[1], h * w
        w1, w3 = w1.reshape(cg, cg), w3.reshape(cg, cg * 9)
        xs, ys = gx.view(bg, cg, hw), y.view(bg, cg, hw)
        grad = grad.reshape(bg, cg, hw)

        # Output = x * att: the gradient of the map's logits, then the direct part of dx (reusing one buffer).
        buf = torch.mul(grad, xs)
        d_att = torch.bmm(gx.new_ones(1, 1, cg).expand(bg, 1, cg), buf).mul_(att)  # channel sum: bmm beats sum
        d_att.addcmul_(d_att, att, value=-1)  # (bg, 1, hw): times att * (1 - att)
        dx = torch.mul(grad, att, out=buf)
        del buf
        sum_d = d_att.sum(2)  # (bg, 1)

        # s1-weighted 3x3 conv, through the depthwise conv of the forward pass (input and per-channel kernel grads).
        d_cl = gx.new_empty(b, h, w, c)  # channels_last memory, reused below
        d_cl.view(b, hw, g, cg).copy_(d_att.view(b, g, hw, 1).transpose(1, 2))
        dx_conv, d_kernel, _ = torch.ops.aten.convolution_backward(
            d_cl.permute(0, 3, 1, 2), x_cl, kernel, *_CONV, c, [True, True, False]
        )
        dx.view(b, c, h, w).add_(dx_conv)
        spare = _spare(dx_conv, xs.shape)  # done with: holds dy below
        del dx_conv
        d_kernel = d_kernel.view(g, cg * 9).sum(0)  # gradient of s1 @ w3

        # s2-weighted GroupNorm: statistics of y, then dy = alpha * d_att + coef * y + const.
        mean, rstd = mean.view(bg, cg), rstd.view(bg, cg)
        mean_d = sum_d / hw
        dot = torch.bmm(ys, d_att.transpose(1, 2)).view(bg, cg)  # sum_p y * d_att
        q = rstd * (dot / hw - mean * mean_d)  # mean of d_att * normalised y
        d_s2 = gamma * hw * q + bias * sum_d
        d_logits = s2 * (d_s2 - (s2 * d_s2).sum(1, keepdim=True))  # softmax backward
        alpha = gamma * s2 * rstd
        dy = torch.baddbmm((alpha * (rstd * q * mean - mean_d)).unsqueeze(2), alpha.unsqueeze(2), d_att, out=spare)
        dy.addcmul_(ys, (-alpha * rstd * q).unsqueeze(2))

        # y = x * gate_h * gate_w. The outer product of the gates goes into d_cl's memory, free again.
        gate_h, gate_w = gates[..., :h], gates[..., h:]
        outer = torch.mul(gate_h[..., None], gate_w[..., None, :], out=d_cl.view(bg, cg, h, w))
        dx.view(bg, cg, h, w).addcmul_(dy.view(bg, cg, h, w), outer)
        del outer, d_cl
        dyx = dy.mul_(xs).view(bg * cg, h, w)
        d_gates = torch.cat(
            [(dyx @ gate_w.reshape(-1, w, 1)).view(bg, cg, h), (gate_h.reshape(-1, 1, h) @ dyx).view(bg, cg, w)], 2
        )
        del dyx, dy
        _match_gate_sums(d_gates, gates, alpha * q * (hw * ctx.eps) * rstd, h)
        d_gates.mul_(gates).mul_(1 - gates)  # sigmoid backward: gradient of the 1x1 conv's output
        d_pooled = torch.matmul(w1.t(), d_gates)  # (bg, cg, h + w)

        # Means feed the 1x1 conv (row and column means) and the conv3x3 softmax (window means): one rank-5 update.
        d_windows = (d_logits @ w3).view(bg * cg, 3, 3)
        tap_h, tap_w = _constant(_taps, h, gx.dtype, gx.device), _constant(_taps, w, gx.dtype, gx.device)
        left = torch.cat(
            [
                torch.matmul(tap_h.t(), d_windows),
                d_pooled[..., :h].reshape(-1, h, 1) / w,
                gx.new_ones(1, h, 1).expand(bg * cg, h, 1),
            ],
            2,
        )
        right = torch.cat(
            [
                tap_w.expand(bg * cg, 3, w),
                gx.new_ones(1, 1, w).expand(bg * cg, 1, w),
                d_pooled[..., h:].reshape(-1, 1, w) / h,
            ],
            1,
        )
        dx.view(bg * cg, h, w).baddbmm_(left, right)

        grads = parameter_grads(w3, b3, s1, s2, pooled, windows, d_gates, d_logits, d_kernel, q, sum_d, hw)
        return (dx.view(b, c, h, w), *grads, None, None)

    @staticmethod
    def _native_backward(ctx, grad):
        """:meth:`backward` by the native kernel, from what :func:`native.ema_forward_native` kept."""
        w1, b1, w3, b3, gamma, beta, *saved = ctx.saved_tensors
        dx, d_kernel, d_gates, d_logits, q, sum_d = native.ema_backward_native(
            grad, (w1, b1, w3, b3, gamma, beta), saved, ctx.groups, ctx.eps
        )
        pooled, windows, s2 = saved[3], saved[4], saved[5]
        s1 = beta.softmax(0)
        cg, hw = gamma.shape[0], ctx.shape[2] * ctx.shape[3]
        grads = parameter_grads(
            w3.reshape(cg, cg * 9),
            b3,
            s1,
            s2,
            pooled,
            windows,
            d_gates,
            d_logits,
            d_kernel.sum(0),
            q,
            sum_d.view(-1, 1),
            hw,
        )
        return (dx, *grads, None, None)
