"""EMA: Efficient Multi-Scale Attention with cross-spatial learning.

Paper: "Efficient Multi-Scale Attention Module with Cross-Spatial Learning", D. Ouyang, S. He, G. Zhang, M. Luo,
H. Guo, J. Zhan, Z. Huang, ICASSP 2023, https://arxiv.org/abs/2305.13563
Official code: https://github.com/YOLOonMe/EMA-attention-module

Not to be confused with Ultralytics' ``ModelEMA`` (the exponential moving average of weights used during training):
this is an attention layer, named ``EMA`` in model YAMLs as in the paper.

The layer splits the channels into ``factor`` groups and, per group, mixes a coordinate-attention branch (1x1 conv on
row/column means, then GroupNorm) and a 3x3 conv branch through "cross-spatial" softmax weights. Parameters
(``gn``, ``conv1x1``, ``conv3x3``) have the names and shapes of the official code, so its weights load unchanged. The
forward pass computes the same function as :mod:`ultralytics_ema.reference` with fewer passes over memory:

- the GroupNorm has one channel per group, so the spatial mean of its output is exactly its bias, and the first
  softmax depends on the weights only;
- the softmax-weighted channel sum of the 3x3 conv output is a single 3x3 conv with one output per group, run as a
  grouped conv on the ``(b, c, h, w)`` layout;
- the spatial mean of the zero-padded 3x3 conv output follows from the input's total, first/last row and column
  sums and corner pixels, so the full conv output is never computed;
- the normalised branch enters only through per-channel statistics and one weighted channel sum.

Only means, slices and plain convs are used (no adaptive pooling), so the layer exports to ONNX with dynamic shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EMA"]

# Submodules of the official class that hold no parameters; checkpoints pickled with it carry them.
_PARAMETERLESS = ("softmax", "agp", "pool_h", "pool_w")


def valid_factors(channels: int) -> list[int]:
    """Return the group counts that divide ``channels``."""
    return [d for d in range(1, channels + 1) if channels % d == 0]


class EMA(nn.Module):
    """Efficient Multi-Scale Attention; output shape and channels equal the input's.

    Args:
        channels (int): Input (and output) channels.
        factor (int): Number of channel groups; must divide ``channels``. Defaults to 32 as in the official code.

    The official class also takes an unused ``c2`` between ``channels`` and ``factor``; it is not accepted here, so a
    model YAML row passes only ``[factor]`` (or ``[]``) and the input channels come from the layer's ``from`` input.

    Examples:
        >>> m = EMA(64, factor=8)
        >>> m(torch.randn(2, 64, 20, 20)).shape
        torch.Size([2, 64, 20, 20])
    """

    def __init__(self, channels: int, factor: int = 32) -> None:
        """Create the layer; raise ValueError if ``factor`` does not divide ``channels``."""
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1 or channels % factor:
            raise ValueError(
                f"EMA(channels={channels}, factor={factor!r}): factor must be a positive divisor of channels; "
                f"valid factors for {channels} channels: {', '.join(map(str, valid_factors(channels)))}"
            )
        self.groups = factor
        cg = channels // factor
        self.gn = nn.GroupNorm(cg, cg)
        self.conv1x1 = nn.Conv2d(cg, cg, kernel_size=1)
        self.conv3x3 = nn.Conv2d(cg, cg, kernel_size=3, padding=1)

    def __setstate__(self, state: dict) -> None:
        """Unpickle, dropping the parameterless submodules of checkpoints saved with the official class."""
        super().__setstate__(state)
        for name in _PARAMETERLESS:
            self._modules.pop(name, None)

    def extra_repr(self) -> str:
        """Show channels and factor in ``print(model)``."""
        return f"channels={self.gn.num_channels * self.groups}, factor={self.groups}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the attention to ``x`` of shape ``(b, c, h, w)``."""
        b, c, h, w = x.shape
        g = self.groups
        cg = c // g
        gx = x.reshape(b * g, cg, h, w)

        # Coordinate branch: shared 1x1 conv on row and column means, then per-channel sigmoid gates.
        row_mean, col_mean = gx.mean(3), gx.mean(2)  # (bg, cg, h), (bg, cg, w)
        gates = torch.cat([row_mean, col_mean], 2)
        gates = torch.baddbmm(
            self.conv1x1.bias.view(1, cg, 1).to(gates.dtype).expand(b * g, cg, 1),
            self.conv1x1.weight.view(1, cg, cg).to(gates.dtype).expand(b * g, cg, cg),
            gates,
        ).sigmoid()
        gate_h, gate_w = gates.split([h, w], 2)
        y = gx * gate_h.unsqueeze(3) * gate_w.unsqueeze(2)  # GroupNorm input, (bg, cg, h, w)

        # 3x3 branch statistics: spatial mean of conv3x3(gx) without computing it.
        w3, b3 = self.conv3x3.weight, self.conv3x3.bias
        conv3_mean = b3 + torch.einsum("kjuv,njuv->nk", w3.to(x.dtype), _window_sums(gx, row_mean, col_mean)) / (h * w)

        # Cross-spatial weights: softmax(mean x1) . x2 + softmax(mean x2) . x1, with x1 = GroupNorm(y), x2 = conv3x3.
        y = y.reshape(b * g, cg, h * w)
        mean = y.mean(2, keepdim=True)
        y = y - mean
        rstd = (y.square().mean(2) + self.gn.eps).rsqrt()  # two-pass variance, as GroupNorm
        s1 = self.gn.bias.softmax(0)  # mean of x1 per channel is exactly the GroupNorm bias
        s2 = conv3_mean.softmax(1)
        alpha = (s2 * self.gn.weight * rstd).unsqueeze(1)  # x1 = weight * rstd * y + bias, per (bg, cg)
        offset = (s2 * self.gn.bias).sum(1) + (s1 * b3).sum()  # (bg,)
        # sum_k s1_k conv3x3_k(gx) is one 3x3 kernel per group: a depthwise conv (fast on channels_last) + group sum.
        kernel = torch.einsum("k,kjuv->juv", s1, w3).repeat(g, 1, 1).unsqueeze(1)  # (c, 1, 3, 3)
        xcl = x.contiguous(memory_format=torch.channels_last)
        weights = F.conv2d(xcl, kernel.to(x.dtype), padding=1, groups=c).unflatten(1, (g, cg)).sum(2)
        weights = torch.baddbmm(weights.reshape(b * g, 1, h * w) + offset.view(-1, 1, 1), alpha.to(y.dtype), y)
        return (gx * weights.view(b * g, 1, h, w).sigmoid()).reshape(b, c, h, w)


def _window_sums(x: torch.Tensor, row_mean: torch.Tensor, col_mean: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` under each tap of a zero-padded 3x3 conv, shape ``(n, c, 3, 3)``, from border sums and corners.

    Tap ``(u, v)`` reads input rows shifted by ``u - 1``: tap row 0 never reads the last row, tap row 2 never the
    first; likewise for columns. Inclusion-exclusion adds back the one corner pixel excluded twice.
    """
    h, w = x.shape[-2:]
    total = row_mean.sum(2) * w
    zero = torch.zeros_like(total)
    rows = torch.stack([row_mean[..., -1] * w, zero, row_mean[..., 0] * w], -1)  # excluded row sum per tap row
    cols = torch.stack([col_mean[..., -1] * h, zero, col_mean[..., 0] * h], -1)  # excluded column sum per tap column
    corners = torch.stack(
        [
            torch.stack([x[..., -1, -1], zero, x[..., -1, 0]], -1),
            torch.stack([zero, zero, zero], -1),
            torch.stack([x[..., 0, -1], zero, x[..., 0, 0]], -1),
        ],
        -2,
    )
    return total[..., None, None] - rows.unsqueeze(-1) - cols.unsqueeze(-2) + corners
