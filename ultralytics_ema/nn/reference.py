"""Plain EMA: the equations of the EMA paper written out step by step, for verification and benchmarks.

Paper: https://arxiv.org/abs/2305.13563; official code: https://github.com/YOLOonMe/EMA-attention-module

This is the layout of the official code (grouped tensors of shape ``(b * factor, c / factor, h, w)``, full 3x3 conv
output, GroupNorm output, two softmax-weighted matrix products). It is slow on CPU and its adaptive pooling with
``(None, 1)`` output sizes does not export to ONNX with dynamic shapes; use :class:`ultralytics_ema.EMA` in models.
It has the same parameters as :class:`ultralytics_ema.EMA`, so ``reference.load_state_dict(ema.state_dict())``
makes the two compute the same function.
"""

from __future__ import annotations

import torch
from torch import nn

from ultralytics_ema.nn.ema import DEFAULT_FACTOR, EMA


class ReferenceEMA(EMA):
    """EMA computed literally as in the paper's code; same constructor and parameters as :class:`EMA`.

    Examples:
        >>> fast, ref = EMA(64, factor=8), ReferenceEMA(64, factor=8)
        >>> ref.load_state_dict(fast.state_dict())
        <All keys matched successfully>
    """

    def __init__(self, channels: int, c2: int | None = None, factor: int = DEFAULT_FACTOR) -> None:
        """Create the layer (arguments as :class:`EMA` reads them) plus the official code's parameterless modules."""
        super().__init__(channels, c2, factor)
        self.softmax = nn.Softmax(-1)
        self.agp = nn.AdaptiveAvgPool2d((1, 1))
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))

    def __setstate__(self, state: dict) -> None:
        """Unpickle (or deep-copy) with the pooling and softmax modules, which :class:`EMA` drops."""
        nn.Module.__setstate__(self, state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the attention step by step."""
        b, c, h, w = x.shape
        g = self.groups
        group_x = x.reshape(b * g, -1, h, w)  # (b*g, c/g, h, w)
        x_h = self.pool_h(group_x)  # (b*g, c/g, h, 1)
        x_w = self.pool_w(group_x).permute(0, 1, 3, 2)  # (b*g, c/g, w, 1)
        hw = self.conv1x1(torch.cat([x_h, x_w], dim=2))
        x_h, x_w = torch.split(hw, [h, w], dim=2)
        x1 = self.gn(group_x * x_h.sigmoid() * x_w.permute(0, 1, 3, 2).sigmoid())
        x2 = self.conv3x3(group_x)
        x11 = self.softmax(self.agp(x1).reshape(b * g, -1, 1).permute(0, 2, 1))  # (b*g, 1, c/g)
        x12 = x2.reshape(b * g, c // g, -1)  # (b*g, c/g, h*w)
        x21 = self.softmax(self.agp(x2).reshape(b * g, -1, 1).permute(0, 2, 1))
        x22 = x1.reshape(b * g, c // g, -1)
        weights = (torch.matmul(x11, x12) + torch.matmul(x21, x22)).reshape(b * g, 1, h, w)
        return (group_x * weights.sigmoid()).reshape(b, c, h, w)
