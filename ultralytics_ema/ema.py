"""EMA: Efficient Multi-Scale Attention with cross-spatial learning.

Paper: "Efficient Multi-Scale Attention Module with Cross-Spatial Learning", D. Ouyang, S. He, G. Zhang, M. Luo,
H. Guo, J. Zhan, Z. Huang, ICASSP 2023, https://arxiv.org/abs/2305.13563
Official code: https://github.com/YOLOonMe/EMA-attention-module

Not to be confused with Ultralytics' ``ModelEMA`` (the exponential moving average of weights used during training):
this is an attention layer, named ``EMA`` in model YAMLs as in the paper.

The layer splits the channels into ``factor`` groups and, per group, mixes a coordinate-attention branch (1x1 conv on
row/column means, then GroupNorm) and a 3x3 conv branch through "cross-spatial" softmax weights. Parameters
(``gn``, ``conv1x1``, ``conv3x3``) have the names and shapes of the official code, so its weights load unchanged. The
forward pass computes the same function as :mod:`ultralytics_ema.reference` with fewer passes over memory and no
full 3x3 conv output:

- the GroupNorm has one channel per group, so the spatial mean of its output is exactly its bias: the first softmax
  depends on the weights only. As softmax weights sum to one, the constant that the 3x3 conv bias adds to the
  attention map is folded into the GroupNorm bias;
- the softmax-weighted channel sum of the 3x3 conv output is one 3x3 kernel per input channel: a depthwise conv on a
  channels_last copy of the input (the fast layout for depthwise convs on CPU), then one matmul that adds up the
  channels of each group;
- the spatial mean of the zero-padded 3x3 conv output, which feeds the second softmax, follows from the input's total,
  first/last row and column sums and corner pixels (inclusion-exclusion), so the conv output is never computed;
- the GroupNorm output enters through one batched matmul, added in place to the conv part of the attention map.

Only means, indexing with constant indices, plain convs and matmuls are used (no adaptive pooling, no branching on
tensor values), so the layer traces and exports to ONNX with dynamic batch and image size.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EMA"]

# Submodules of the official class that hold no parameters; checkpoints pickled with it carry them.
_PARAMETERLESS = ("softmax", "agp", "pool_h", "pool_w")

# Window sums of a zero-padded 3x3 conv from 9 input features. Tap (u, v) reads the input shifted by (u - 1, v - 1):
# tap row 0 never reads the last row, tap row 2 never the first row (likewise for columns), and inclusion-exclusion
# adds back the corner pixel excluded twice. Rows: features in the order the forward pass builds them; columns: taps
# in row-major order (u * 3 + v).
_WINDOW = torch.tensor(
    [
        [-1.0, -1, -1, 0, 0, 0, 0, 0, 0],  # sum of the last row
        [1, 0, 0, 0, 0, 0, 0, 0, 0],  # x[-1, -1]
        [0, 0, 1, 0, 0, 0, 0, 0, 0],  # x[-1, 0]
        [0, 0, 0, 0, 0, 0, -1, -1, -1],  # sum of the first row
        [0, 0, 0, 0, 0, 0, 1, 0, 0],  # x[0, -1]
        [0, 0, 0, 0, 0, 0, 0, 0, 1],  # x[0, 0]
        [1, 1, 1, 1, 1, 1, 1, 1, 1],  # total
        [-1, 0, 0, -1, 0, 0, -1, 0, 0],  # sum of the last column
        [0, 0, -1, 0, 0, -1, 0, 0, -1],  # sum of the first column
    ]
).t()  # (taps, features)


def valid_factors(channels: int) -> list[int]:
    """Return the group counts that divide ``channels``."""
    return [d for d in range(1, channels + 1) if channels % d == 0]


def _group_sum_matrix(groups: int, group_channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Return the constant ``(groups, groups * group_channels)`` 0/1 matrix that adds up the channels of each group."""
    if torch.jit.is_tracing():  # a cached tensor would be recorded differently from a new one: build it every time
        return torch.eye(groups, dtype=dtype, device=device).repeat_interleave(group_channels, 1)
    return _group_sum_matrix_cached(groups, group_channels, dtype, device)


@functools.cache
def _group_sum_matrix_cached(
    groups: int, group_channels: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """:func:`_group_sum_matrix`, made once per shape, dtype and device."""
    # A normal tensor even if first made in inference mode (torch >= 1.9), since autograd may save it later.
    with torch.inference_mode(False) if hasattr(torch, "inference_mode") else contextlib.nullcontext():
        return torch.eye(groups, dtype=dtype, device=device).repeat_interleave(group_channels, 1)


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
        b, _, h, w = x.shape
        g, cg = self.groups, self.gn.num_channels  # Python ints (constants when traced), unlike sizes read from x
        c, bg = g * cg, b * g
        gx = x.reshape(bg, cg, h, w)
        w3, b3, beta = self.conv3x3.weight, self.conv3x3.bias, self.gn.bias  # any memory format: reshape, not view
        s1 = beta.softmax(0)  # first softmax: the GroupNorm output's spatial mean is exactly its bias

        # Coordinate branch: shared 1x1 conv on row and column means, per-channel sigmoid gates.
        row_mean, col_mean = gx.mean(3), gx.mean(2)  # (bg, cg, h), (bg, cg, w)
        gates = torch.baddbmm(
            self.conv1x1.bias.reshape(1, cg, 1).expand(bg, cg, 1),
            self.conv1x1.weight.reshape(1, cg, cg).expand(bg, cg, cg),
            torch.cat([row_mean, col_mean], 2),
        ).sigmoid()

        # Second softmax: spatial means of conv3x3(gx) from window features (see _WINDOW).
        edges = torch.cat([gx[:, :, [-1, 0]], col_mean[:, :, None] * h], 2)  # last row, first row, column sums
        feats = torch.cat([edges.sum(3, keepdim=True), edges[..., [-1, 0]]], 3).flatten(1)  # (bg, cg * 9)
        window = (w3.reshape(cg * cg, 9) @ _WINDOW.to(w3)).view(cg, cg * 9).t()  # features -> conv3x3 sums
        s2 = torch.addmm(b3, feats / (h * w), window).softmax(1)  # (bg, cg)

        # Attention map. First-softmax-weighted conv3x3: a depthwise conv, then a matmul that sums each group.
        # Temporaries are passed on, not kept, so that their memory is reused early.
        kernel = (s1 @ w3.reshape(cg, cg * 9)).view(cg, 1, 3, 3).repeat(g, 1, 1, 1)  # (c, 1, 3, 3)
        weights = torch.matmul(
            _group_sum_matrix(g, cg, x.dtype, x.device),
            F.conv2d(x.contiguous(memory_format=torch.channels_last), kernel, padding=1, groups=c).flatten(2),
        ).reshape(bg, 1, h * w)
        # Plus the second-softmax-weighted GroupNorm of the gated input (bias: + the constant from conv3x3.bias).
        y = (gates[..., :h, None] * gates[..., None, h:]).mul_(gx)  # outer product of the gates, times the input
        x1 = torch.group_norm(y, cg, self.gn.weight, beta + s1 @ b3, self.gn.eps).reshape(bg, cg, h * w)
        del y
        weights = weights.baddbmm_(s2.unsqueeze(1).to(weights.dtype), x1.to(weights.dtype))
        del x1
        return (gx * weights.sigmoid_().view(bg, 1, h, w)).view(b, c, h, w)
