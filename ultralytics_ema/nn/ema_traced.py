"""The EMA forward pass as recorded for export: TorchScript, ONNX, ``torch.export`` and the converters built on them.

See :mod:`ultralytics_ema.nn.ema` for the layer and the paper. :func:`ema_forward_traced` computes the same function as
:func:`ultralytics_ema.nn.ema_function.ema_forward` (and the reference) in a graph of plain ops that every converter
Ultralytics uses knows (ONNX Runtime, OpenVINO, NCNN via PNNX, MNN, onnx2tf for TensorFlow/TFLite, x2paddle, CoreML,
LiteRT and ExecuTorch via ``torch.export``):

- the batch stays the leading axis of every tensor (the official layer folds it into ``b * factor``, which converters
  that drop the batch axis, such as PNNX for NCNN, cannot follow), so exports keep a dynamic batch;
- the per-group 1x1 and 3x3 convs of the pooled maps are grouped ``Conv`` ops with the weights repeated per group, on
  ``(b, c, h, 1)``, ``(b, c, 1, w)`` and ``(b, c, 3, 3)`` maps;
- the GroupNorm (one channel per group) is an instance norm whose affine depends on the weights only: in ONNX one
  ``InstanceNormalization`` with constant scale and bias, elsewhere centred mean and variance reductions with the
  affine folded into the second softmax's weights (x2paddle maps normalisation ops only with parameter affines); the
  s2-weighted sum over each group's channels is one batched ``MatMul``;
- the first softmax depends on the weights only, so the s1-weighted 3x3 conv is one depthwise ``Conv`` and a grouped
  1x1 ``Conv`` of ones that adds up each group's channels; its bias goes into the norm's bias (s2 sums to one);
- convs get no bias argument (biases are added), as x2paddle takes a conv bias only as a constant;
- the s2 logits (the spatial means of the 3x3 conv) come from the 3x3 "window means" (the mean over the pixels each
  tap reads): two ``MatMul`` ops with ``(3, n)`` tap matrices built from the input's shape (constants in a static
  export); the column means are their middle row.

Costs measured in ONNX Runtime on CPU, single thread, at YOLO11n's three EMA shapes: in ONNX the gates' outer product
is a ``MatMul`` with inner size 1 (a third of a broadcasting ``Mul``), then one same-shape ``Mul`` gates the input;
``InstanceNormalization`` costs less than the statistics from reductions (``ReduceSumSquare`` is slow) and, unlike
``E[y^2] - E[y]^2``, loses no precision on near-constant channels.

It has no in-place or ``out=`` ops, no data-dependent Python control flow and no cached constants, so it traces,
scripts through ``torch.jit.trace``, exports with ``torch.export`` (symbolic shapes) and differentiates with autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ultralytics_ema.nn.ema_function import _taps

__all__ = ["ema_forward_traced"]


class _InstanceNormONNX(torch.autograd.Function):
    """Instance norm with a per-channel scale and shift computed from the weights only, recorded as one ONNX
    ``InstanceNormalization`` (the exporter folds scale and shift into constants).

    ONNX export of ``torch.instance_norm`` gives the same node, but warns that an op "set to train=True" is exported
    in eval mode (instance norm always uses the input's statistics, so nothing is wrong); this records it directly.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
        """Normalise each channel of ``x`` over its spatial positions, then scale and shift it."""
        return _instance_norm(x, eps) * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    @staticmethod
    def symbolic(g, x, scale, shift, eps: float):
        """The ONNX node (torch.onnx's hook for autograd Functions)."""
        return g.op("InstanceNormalization", x, scale, shift, epsilon_f=eps)


def _instance_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Instance norm without affine, in plain reductions (centred, so as exact as the op): the TorchScript-based
    converters differ in what they accept for ``instance_norm`` (x2paddle maps it only with parameter tensors as its
    affine), every one of them maps means, products and ``rsqrt``."""
    d = x - x.mean((2, 3), keepdim=True)
    return d * torch.rsqrt((d * d).mean((2, 3), keepdim=True) + eps)


def ema_forward_traced(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w3: torch.Tensor,
    b3: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    groups: int,
    eps: float,
) -> torch.Tensor:
    """EMA attention of ``x`` ``(b, c, h, w)`` with the layer's parameters, in export-friendly ops.

    Examples:
        >>> from ultralytics_ema import EMA
        >>> m = EMA(64, factor=8)
        >>> x = torch.randn(1, 64, 12, 10)
        >>> p = [t for t in (m.conv1x1, m.conv3x3, m.gn) for t in (t.weight, t.bias)]
        >>> torch.allclose(ema_forward_traced(x, *p, 8, m.gn.eps), m(x), atol=1e-6)
        True
    """
    b, c, h, w = x.shape
    cg = gamma.shape[0]

    # Window means down the columns ((b, c, 3, w); row 1: the column means), then the 3x3 window means (b, c, 3, 3).
    cols = torch.matmul(_taps(h, x.dtype, x.device), x)
    windows = torch.matmul(cols, _taps(w, x.dtype, x.device).t())

    # Gates of rows and columns: the shared 1x1 conv as a grouped conv (weights repeated per group), then sigmoid.
    # Biases are added, not passed to the convs: some converters (x2paddle) take a conv bias only as a constant.
    w1g, b1g = w1.repeat(groups, 1, 1, 1), b1.repeat(groups).reshape(1, c, 1, 1)
    gate_h = torch.sigmoid(F.conv2d(x.mean(3, keepdim=True), w1g, groups=groups) + b1g)  # (b, c, h, 1)
    gate_w = torch.sigmoid(F.conv2d(cols[:, :, 1:2], w1g, groups=groups) + b1g)  # (b, c, 1, w)

    # s2: softmax over each group's channels of the 3x3 conv's spatial means (a grouped conv of the window means).
    logits = F.conv2d(windows, w3.repeat(groups, 1, 1, 1), groups=groups) + b3.repeat(groups).reshape(1, c, 1, 1)
    s2 = torch.softmax(logits.reshape(b, groups, 1, cg), 3)  # (b, groups, 1, cg)

    # s1 = softmax of the GroupNorm bias (the spatial mean of its output), a constant of the weights: the s1-weighted
    # 3x3 conv is a depthwise conv, then a sum over each group's channels (a grouped 1x1 conv of ones).
    s1 = torch.softmax(beta, 0)
    kernel = (s1.reshape(cg, 1, 1, 1) * w3).sum(0).reshape(cg, 1, 3, 3).repeat(groups, 1, 1, 1)
    ones = torch.ones(groups, cg, 1, 1, dtype=x.dtype, device=x.device)
    att = F.conv2d(F.conv2d(x, kernel, padding=1, groups=c), ones, groups=groups).reshape(b, groups, 1, h * w)

    # The GroupNorm of the gated input (one channel per group: an instance norm), weighted by s2 per group. The 3x3
    # conv's bias adds s1 . b3 to the map: as s2 sums to one, it is part of the norm's bias. In ONNX the layer's
    # affine is InstanceNormalization's (constant) scale and bias; elsewhere it is folded into the s2 weights.
    shift = beta + (s1 * b3).sum(0)
    if torch.onnx.is_in_onnx_export():
        gated = x * torch.matmul(
            gate_h, gate_w
        )  # the gates' outer product as a matmul with inner size 1 (faster in ORT)
        norm = _InstanceNormONNX.apply(gated, gamma.repeat(groups), shift.repeat(groups), eps)
        att = att + torch.matmul(s2, norm.reshape(b, groups, cg, h * w))
    else:  # LiteRT's converter maps a batched matmul only to rank-3 outputs: broadcasts where it would get rank 4
        norm = _instance_norm(x * (gate_h * gate_w), eps).reshape(b, groups, cg, h * w)
        att = att + torch.matmul(s2 * gamma, norm) + (s2 * shift).sum(3, keepdim=True)
    return (x.reshape(b, groups, cg, h * w) * torch.sigmoid(att)).reshape(b, c, h, w)
