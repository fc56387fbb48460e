"""The EMA forward pass as traced for TorchScript and ONNX export.

See :mod:`ultralytics_ema.nn.ema` for the layer and the paper. :func:`ema_forward_traced` computes the same function as
:func:`ultralytics_ema.nn.ema_function.ema_forward` (and the reference) with the same shortcuts, but in the ops that
graph runtimes run best rather than those that suit PyTorch's eager CPU kernels. Measured in ONNX Runtime on CPU:

- the windows along rows (column 1: the row means) come from one 2-D ``MatMul``; the gates of the rows are computed
  for all three columns, and the gates' outer product takes column 1 with a 0/1 vector, so no strided ``Gather``
  copies the row means out;
- the 3x3 window means never exist: the taps along columns are folded into the conv weights (a constant of the
  weights and the image height), so one ``Gemm`` gives the s2 logits from the windows along rows;
- the GroupNorm (one channel per group) is one ``InstanceNormalization`` whose scale and bias are the per-sample
  ``s2 * gamma`` and ``s2 * beta`` (plus the s1-weighted conv bias): the s2-weighted channel sum is then a
  ``ReduceSum``. ONNX Runtime's ``InstanceNormalization`` runs in one thread, so it does as little else as possible;
- the s1-weighted 3x3 conv is a depthwise ``Conv`` and a ``ReduceSum`` over each group's channels.

It has no in-place or ``out=`` ops and no cached constants: the tap matrices are built from the input's shape, so
the graph keeps dynamic batch and image sizes. Autograd differentiates it like any traced graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ultralytics_ema.nn.ema_function import _taps

__all__ = ["ema_forward_traced"]


class _InstanceNormONNX(torch.autograd.Function):
    """``torch.instance_norm`` with per-channel scale and bias, recorded as one ONNX ``InstanceNormalization``.

    ONNX export of ``torch.instance_norm`` gives the same node, but warns that an op "set to train=True" is exported
    in eval mode (instance norm always uses the input's statistics, so nothing is wrong); this records it directly.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
        """Normalise each channel of ``x`` over its spatial positions, then scale and shift it."""
        return torch.instance_norm(x, scale, shift, None, None, True, 0.0, eps, False)

    @staticmethod
    def symbolic(g, x, scale, shift, eps: float):
        """The ONNX node (torch.onnx's hook for autograd Functions)."""
        return g.op("InstanceNormalization", x, scale, shift, epsilon_f=eps)


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
    bg = b * groups
    gx = x.reshape(bg, cg, h, w)
    w1, b1 = w1.reshape(cg, cg), b1.reshape(cg, 1)

    # Window means along rows, (row, tap) flattened; gates of all three taps of each row, and of the column means.
    rows = torch.matmul(gx.reshape(-1, w), _taps(w, x.dtype, x.device).t()).reshape(bg, cg, h * 3)
    gate_h = torch.sigmoid(torch.matmul(w1, rows) + b1).reshape(bg, cg, h, 3)
    gate_w = torch.sigmoid(torch.matmul(w1, gx.mean(2)) + b1).unsqueeze(2)
    middle = torch.eye(3, dtype=x.dtype, device=x.device)[:, 1:2]  # (3, 1): picks tap 1, the row mean
    y = gx * torch.matmul(gate_h, middle * gate_w)

    # s2 logits: the conv weights with the taps along columns folded in, applied to the windows along rows.
    w3_rows = torch.matmul(w3.transpose(2, 3), _taps(h, x.dtype, x.device)).transpose(2, 3).reshape(cg, -1)
    s2 = torch.softmax(torch.addmm(b3, rows.reshape(bg, -1), w3_rows.t()), 1)
    s1 = beta.softmax(0)

    # s1-weighted 3x3 conv (depthwise, then a group sum) plus the s2-weighted GroupNorm of the gated input.
    kernel = (s1 @ w3.reshape(cg, -1)).reshape(cg, 1, 3, 3).repeat(groups, 1, 1, 1)
    att = F.conv2d(x, kernel, padding=1, groups=c).reshape(bg, cg, h * w).sum(1, keepdim=True)
    scale, shift = (s2 * gamma).reshape(-1), (s2 * (beta + s1 @ b3)).reshape(-1)
    if torch.onnx.is_in_onnx_export():
        norm = _InstanceNormONNX.apply(y.reshape(1, -1, h, w), scale, shift, eps)
    else:  # torch.instance_norm, not F.instance_norm: the latter rejects a 1x1 map (whose result, the shift, is fine)
        norm = torch.instance_norm(y.reshape(1, -1, h, w), scale, shift, None, None, True, 0.0, eps, False)
    att = att + norm.reshape(bg, cg, h * w).sum(1, keepdim=True)
    return (gx * torch.sigmoid(att).reshape(bg, 1, h, w)).reshape(b, c, h, w)
