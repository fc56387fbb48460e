"""The EMA forward pass as traced for TorchScript and ONNX export.

See :mod:`ultralytics_ema.ema` for the layer and the paper. :func:`ema_forward_traced` computes the same function as
:func:`ultralytics_ema.ema_function.ema_forward` (and the reference) with the same shortcuts, but in the ops that
graph runtimes run best rather than those that suit PyTorch's eager CPU kernels. Measured in ONNX Runtime on CPU:

- the row means and the windows along rows come from a 2-D ``MatMul``: a broadcast ``MatMul`` of a constant with a
  4-D tensor, the eager path's choice for the columns, is several times slower there;
- the gates' outer product is a batched ``MatMul`` of two vectors, not two broadcast ``Mul`` nodes;
- the GroupNorm (one channel per group) runs without its affine part, one ``InstanceNormalization`` between two
  reshapes; its scale and bias are folded into the small s2 weights. With them, ``F.group_norm`` would add a
  full-size ``Mul`` and ``Add``;
- the group sum of the depthwise conv is a ``ReduceSum``.

It has no in-place or ``out=`` ops and no cached constants: the tap matrices are built from the input's shape, so
the graph keeps dynamic batch and image sizes. Autograd differentiates it like any traced graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ultralytics_ema.ema_function import _taps

__all__ = ["ema_forward_traced"]


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
    w3 = w3.reshape(cg, cg * 9)
    tap_h, tap_w = _taps(h, x.dtype, x.device), _taps(w, x.dtype, x.device)

    # Window means along rows (column 1: row means), column means, then the 3x3 window means.
    rows = torch.matmul(gx.reshape(-1, w), tap_w.t()).reshape(bg, cg, h, 3)
    pooled = torch.cat([rows[..., 1], gx.mean(2)], 2)
    gates = torch.sigmoid(torch.matmul(w1.reshape(cg, cg), pooled) + b1.reshape(cg, 1))
    windows = torch.matmul(tap_h, rows).reshape(bg, cg * 9)
    s2 = torch.softmax(torch.addmm(b3, windows, w3.t()), 1)
    s1 = beta.softmax(0)

    # s1-weighted 3x3 conv (depthwise, then a group sum) plus the s2-weighted GroupNorm of the gated input.
    kernel = (s1 @ w3).reshape(cg, 1, 3, 3).repeat(groups, 1, 1, 1)
    att = F.conv2d(x, kernel, padding=1, groups=c).reshape(bg, cg, h * w).sum(1, keepdim=True)
    y = gx * torch.matmul(gates[..., :h, None], gates[..., None, h:])
    norm = torch.group_norm(y, cg, None, None, eps).reshape(bg, cg, h * w)  # no affine part: folded into s2 below
    const = (s2 * (beta + s1 @ b3)).sum(1).reshape(bg, 1, 1)
    att = att + torch.matmul((s2 * gamma).unsqueeze(1), norm) + const
    return (gx * torch.sigmoid(att).reshape(bg, 1, h, w)).reshape(b, c, h, w)
