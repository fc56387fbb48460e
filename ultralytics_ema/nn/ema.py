"""EMA: Efficient Multi-Scale Attention with cross-spatial learning.

Paper: "Efficient Multi-Scale Attention Module with Cross-Spatial Learning", D. Ouyang, S. He, G. Zhang, M. Luo,
H. Guo, J. Zhan, Z. Huang, ICASSP 2023, https://arxiv.org/abs/2305.13563
Official code: https://github.com/YOLOonMe/EMA-attention-module

Not to be confused with Ultralytics' ``ModelEMA`` (the exponential moving average of weights used during training):
this is an attention layer, named ``EMA`` in model YAMLs as in the paper.

The layer splits the channels into ``factor`` groups and, per group, mixes a coordinate-attention branch (1x1 conv on
row/column means, then GroupNorm) and a 3x3 conv branch through "cross-spatial" softmax weights. Parameters
(``gn``, ``conv1x1``, ``conv3x3``) have the names and shapes of the official code, so its weights load unchanged. The
forward pass computes the same function as :mod:`ultralytics_ema.nn.reference` with fewer passes over memory and no
full 3x3 conv output (the arithmetic is in :mod:`ultralytics_ema.nn.ema_function`):

- the GroupNorm has one channel per group, so the spatial mean of its output is exactly its bias: the first softmax
  depends on the weights only. As softmax weights sum to one, the constant that the 3x3 conv bias adds to the
  attention map is folded into the GroupNorm bias;
- the softmax-weighted channel sum of the 3x3 conv output is one 3x3 kernel per input channel: a depthwise conv on a
  channels_last copy of the input (the fast layout for depthwise convs on CPU), then one matmul that adds up the
  channels of each group;
- the spatial mean of the zero-padded 3x3 conv output, which feeds the second softmax, is a linear function of the
  input's "window means" (the mean over the pixels each tap reads). One matmul of a ``(3, h)`` tap matrix with the
  columns gives the column means and the windows down the columns, a small second one with a ``(w, 3)`` matrix
  the 3x3 window means;
- the GroupNorm output enters through one batched matmul, added in place to the conv part of the attention map. In
  training and on large inputs (batch 8 at imgsz 640) the GroupNorm is not run at all: its statistics come from two
  reductions and its affine part is folded into the matmul's weights, so no normalised copy of the input is written;
- training uses a hand-written backward pass (:class:`~ultralytics_ema.nn.ema_function.EMAFunction`) with about a sixth
  of the full-size operations autograd would run; it is exact to float rounding like the forward pass;
- tracing (TorchScript, ONNX export), torch.compile and torch.export record the same function in the ops that graph
  runtimes run best (:mod:`ultralytics_ema.nn.ema_traced`); ``torch.jit.script`` compiles that traced graph;
- in float32 on CPU, the forward pass and the backward pass each run as one C function, compiled on first use
  (:mod:`ultralytics_ema.nn.native`; ``ULTRALYTICS_EMA_NATIVE=0`` switches them off): they work through the input one
  channel group at a time, with the group's data in cache (the PyTorch ops above each pass over the whole input).
  Without a C compiler the PyTorch ops run.

Only means, matmuls, plain convs and elementwise ops are used (no adaptive pooling, no branching on tensor values), so
the layer traces and exports to ONNX with dynamic batch and image size.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ultralytics_ema.nn import native
from ultralytics_ema.nn.ema_function import EMAFunction, ema_forward
from ultralytics_ema.nn.ema_traced import ema_forward_traced

__all__ = ["DEFAULT_FACTOR", "EMA", "factor_error", "valid_factors"]

# Submodules of the official class that hold no parameters; checkpoints pickled with it carry them.
_PARAMETERLESS = ("softmax", "agp", "pool_h", "pool_w")


def valid_factors(channels: int) -> list[int]:
    """Return the group counts that divide ``channels``."""
    return [d for d in range(1, channels + 1) if channels % d == 0]


def _graph_capture() -> bool:
    """Whether the call is being recorded as a graph: TorchScript tracing, ``torch.compile`` or ``torch.export``
    (strict or not).

    Graph capture runs on fake or symbolic tensors (no data pointers, no native kernels), so it records
    :func:`~ultralytics_ema.nn.ema_traced.ema_forward_traced`, which is plain ops (no cached constants, no ``out=``).
    """
    if torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling() or getattr(compiler, "is_exporting", lambda: False)()
    dynamo = getattr(torch, "_dynamo", None)  # torch 2.0
    return bool(dynamo is not None and hasattr(dynamo, "is_compiling") and dynamo.is_compiling())


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``torch.is_autocast_enabled`` takes it from torch 2.4 on)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # older torch, or a device type without autocast
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return device_type == "cuda" and torch.is_autocast_enabled()


class _DefaultFactor(int):
    """The int 32 as EMA's default factor: equal to 32, but told apart from a ``factor=32`` that was passed."""


DEFAULT_FACTOR: int = _DefaultFactor(32)  # the official default group count


def factor_error(channels: int, factor: object) -> str | None:
    """Why ``factor`` cannot split ``channels`` into groups (``None`` if it can)."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1 or channels % factor:
        valid = ", ".join(map(str, valid_factors(channels)))
        return f"factor must be a positive divisor of channels; valid factors for {channels} channels: {valid}"
    return None


class _Traced(nn.Module):
    """Holds the traced graph of an :class:`EMA` for ``torch.jit.script`` (which compiles modules, not graphs)."""

    def __init__(self, traced: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.traced = traced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.traced(x)


class EMA(nn.Module):
    """Efficient Multi-Scale Attention; output shape and channels equal the input's.

    The signature is the official class's, ``EMA(channels, c2=None, factor=32)``, so code written against it runs:

    - ``EMA(256)``, ``EMA(256, factor=16)``, ``EMA(256, 256, 16)``, ``EMA(channels=256, c2=256, factor=16)``;
    - ``c2`` (the nominal output channels of the official code, which it does not use) must equal ``channels`` or be
      ``None``: the layer keeps its input's channels;
    - two positional arguments ``EMA(channels, n)``: ``n`` is ``c2`` when it equals ``channels`` (the official
      reading, factor 32), otherwise the factor (the reading of this package's earlier ``EMA(channels, factor)``), so
      ``EMA(64, 8)`` has 8 groups and ``EMA(64, 64)`` has 32.

    Args:
        channels (int): Input (and output) channels.
        c2 (int | None): Output channels as the official class takes them: ``channels`` or ``None``.
        factor (int): Number of channel groups; must divide ``channels``. Defaults to 32 as in the official code.

    Examples:
        >>> m = EMA(64, factor=8)
        >>> m(torch.randn(2, 64, 20, 20)).shape
        torch.Size([2, 64, 20, 20])
        >>> EMA(256, 256, 16).groups, EMA(64, 8).groups, EMA(64, 64).groups
        (16, 8, 32)
    """

    def __init__(self, channels: int, c2: int | None = None, factor: int = DEFAULT_FACTOR) -> None:
        """Create the layer; raise ValueError if ``c2`` is not ``channels`` or ``factor`` does not divide them."""
        super().__init__()
        hint = ""
        if c2 is not None and c2 != channels:
            if factor is not DEFAULT_FACTOR:
                raise ValueError(
                    f"EMA(channels={channels}, c2={c2!r}, factor={factor!r}): c2 must equal channels or be None "
                    "(EMA keeps its input's channels; c2 is there for the official signature)"
                )
            factor = c2  # EMA(channels, factor)
            hint = f"; a second argument other than channels is the factor (for c2 write EMA({channels}, {channels}))"
        error = factor_error(channels, factor)
        if error:
            raise ValueError(f"EMA(channels={channels}, factor={factor!r}): {error}{hint}")
        self.groups = int(factor)  # a plain int, also for DEFAULT_FACTOR: checkpoints pickle only builtins here
        cg = channels // factor
        self.gn = nn.GroupNorm(cg, cg)
        self.conv1x1 = nn.Conv2d(cg, cg, kernel_size=1)
        self.conv3x3 = nn.Conv2d(cg, cg, kernel_size=3, padding=1)

    def __setstate__(self, state: dict) -> None:
        """Unpickle, dropping the parameterless submodules of checkpoints saved with the official class."""
        super().__setstate__(state)
        for name in _PARAMETERLESS:
            self._modules.pop(name, None)

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles in place of the layer: its traced graph.

        The forward pass picks a compute path in Python, which TorchScript cannot compile; the traced graph records
        :func:`~ultralytics_ema.nn.ema_traced.ema_forward_traced`, which runs any batch and image size (as in
        ``yolo export format=torchscript``, which traces). Scripted models that contain the layer hold this graph.
        """
        weight = self.gn.weight
        example = torch.zeros(1, self.gn.num_channels * self.groups, 4, 4, dtype=weight.dtype, device=weight.device)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=FutureWarning)  # deprecation
            return _Traced(torch.jit.trace(self, example, check_trace=False))

    def extra_repr(self) -> str:
        """Show channels and factor in ``print(model)``."""
        return f"channels={self.gn.num_channels * self.groups}, factor={self.groups}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the attention to ``x`` of shape ``(b, c, h, w)``.

        With gradients, :class:`EMAFunction` (a hand-written backward pass) is used; without them (inference) the
        forward pass alone. Both run in the native CPU kernels (float32 on CPU, where they build), else as PyTorch
        ops. Tracing (TorchScript, ONNX export), ``torch.compile`` and ``torch.export`` record
        :func:`~ultralytics_ema.nn.ema_traced.ema_forward_traced`, the same function in export-friendly ops.
        """
        params = (self.conv1x1.weight, self.conv1x1.bias, self.conv3x3.weight, self.conv3x3.bias)
        params += (self.gn.weight, self.gn.bias)
        if _autocast_enabled(x.device.type):  # mixed precision: compute in float32, return the input's dtype
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x.float()).to(x.dtype)
        if _graph_capture():
            return ema_forward_traced(x, *params, self.groups, self.gn.eps)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params)):
            return EMAFunction.apply(x, *params, self.groups, self.gn.eps)
        if native.applies(x, params):
            return native.ema_forward_native(x, *params, self.groups, self.gn.eps)[0]
        return ema_forward(x, *params, self.groups, self.gn.eps)[0]
