"""The native CPU kernels of the EMA layer (``kernels/*.c``), compiled on first use and called through ctypes.

For float32 tensors on CPU (not while tracing, compiling or exporting), the layer's forward pass and
:class:`~ultralytics_ema.nn.ema_function.EMAFunction`'s backward pass each run as one C function that works through the
input one channel group at a time, so a group's data stays in cache between its passes. They compute the same
functions as :func:`~ultralytics_ema.nn.ema_function.ema_forward` and ``EMAFunction.backward``, and are as exact as
the float32 reference on every input (``tests/test_native_faults.py``).

Build: the first such call in a process builds or loads the kernels (:mod:`ultralytics_ema.nn.native_build`: a
verified cache in ``$ULTRALYTICS_EMA_CACHE``, default ``~/.cache/ultralytics_ema``, and a bounded compile); threads
that call at once wait for that one build. They use ``torch.get_num_threads()`` threads (OpenMP).

Switch: ``ULTRALYTICS_EMA_NATIVE=0`` turns the kernels off (PyTorch ops run instead). If they are unavailable (no
compiler, a failed or timed-out compile, no writable folder) one warning is logged and PyTorch ops run.
"""

from __future__ import annotations

import ctypes
import os
import threading

import torch

from ultralytics_ema.nn.native_build import cache_dir, load, log

__all__ = ["applies", "cache_dir", "ema_backward_native", "ema_forward_native", "enabled", "library"]

_state: dict = {}  # "library": the loaded kernels, or None once they were found unavailable in this process
_lock = threading.Lock()  # one build per process


def _new_lock() -> None:
    """A forked child starts with a free lock (its parent may have held it while forking)."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock)


def enabled() -> bool:
    """Whether the native kernels may be used: ``ULTRALYTICS_EMA_NATIVE`` is not ``0``/``false``/``off``/``no``."""
    return os.environ.get("ULTRALYTICS_EMA_NATIVE", "1").strip().lower() not in {"0", "false", "off", "no"}


def library() -> ctypes.CDLL | None:
    """The kernels, built or loaded by the first call of the process (the others wait for it); None if unavailable
    (logged once per process)."""
    if "library" not in _state:
        with _lock:
            if "library" not in _state:
                try:
                    _state["library"] = load()
                except Exception as e:  # BuildError, OSError, anything else: the layer must still run
                    _state["library"] = None
                    advice = "using PyTorch ops (ULTRALYTICS_EMA_NATIVE=0: no attempt)"
                    log("warning", f"native CPU kernels unavailable ({e}); {advice}")
    return _state["library"]


def _intercepted() -> bool:
    """Whether torch.compile / torch.export traces this call (data pointers are not real then) or a Python dispatch
    mode (FLOP counters, fake tensors) watches the ops: the call must run as torch ops."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling():
        return True
    dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return bool(dispatch_modes is not None and dispatch_modes())


def applies(x: torch.Tensor, params: tuple[torch.Tensor, ...]) -> bool:
    """Whether the native kernels compute this call: float32 CPU tensors, switched on, not traced, compiled or
    watched by a dispatch mode, and the kernels build (the caller picks the forward-only or the training path)."""
    return (
        type(x) is torch.Tensor
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.numel() > 0
        and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
        and enabled()
        and not torch.jit.is_tracing()
        and not _intercepted()
        and library() is not None
    )


def _pointers(*tensors: torch.Tensor) -> list[int]:
    """Data pointers of contiguous float32 tensors."""
    return [t.data_ptr() for t in tensors]


def _check(status: int, what: str, shape: tuple) -> None:
    """Raise MemoryError if a kernel could not allocate its scratch memory."""
    if status:
        raise MemoryError(f"EMA attention layer: native CPU {what} could not allocate its buffers for input {shape}")


def ema_forward_native(
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
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """EMA attention of ``x`` ``(b, c, h, w)`` by the native forward kernel (call only where :func:`applies`).

    Returns ``(output, saved)``: if ``keep``, ``saved`` is what :func:`ema_backward_native` reads (the contiguous
    input, the attention map's logits, the gates, the row and column means, the window means, the second softmax, the
    GroupNorm mean and rstd, the sigmoid's derivative at the gates' logits); else it is empty.
    """
    b, c, h, w = x.shape
    bg, cg = b * groups, c // groups
    x = x.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    params = [p.detach().contiguous() for p in (w1, b1, w3, b3, gamma, beta)]
    kept = ()
    if keep:
        sizes = [(h * w,), (cg, h + w), (cg, h + w), (cg * 9,), (cg,), (cg,), (cg,), (cg, h + w)]
        kept = tuple(x.new_empty(bg, *size) for size in sizes)
    status = library().ema_forward_f32(
        *_pointers(x, out, *params), bg, cg, h, w, eps, torch.get_num_threads(), *(_pointers(*kept) or [None] * 8)
    )
    _check(status, "forward pass", tuple(x.shape))
    return out, (x, *kept) if keep else ()


def ema_backward_native(
    grad: torch.Tensor, params: tuple[torch.Tensor, ...], saved: tuple[torch.Tensor, ...], groups: int, eps: float
) -> tuple[torch.Tensor, ...]:
    """Backward pass of :func:`ema_forward_native` for the output gradient ``grad``.

    Args:
        grad: Gradient of the output, ``(b, c, h, w)``.
        params: ``(w1, b1, w3, b3, gamma, beta)`` of the forward pass.
        saved: ``saved`` of the forward pass (``keep=True``).
        groups: The layer's factor.
        eps: The GroupNorm's epsilon.

    Returns:
        ``(dx, d_kernel, d_gates, d_logits, q, sum_d)``: the input gradient and, per group, the gradients of the
        s1-weighted kernels ``(bg, cg * 9)``, of the 1x1 conv's output ``(bg, cg, h + w)`` and of the second
        softmax's input ``(bg, cg)``, the GroupNorm term ``q`` ``(bg, cg)`` and the sum of the map's gradient ``(bg,)``.
    """
    x, *kept = saved
    b, c, h, w = x.shape
    bg, cg = b * groups, c // groups
    grad = grad.contiguous()
    dx = torch.empty_like(x)
    outputs = [x.new_empty(bg, *size) for size in [(cg * 9,), (cg, h + w), (cg,), (cg,), ()]]
    params = [p.detach().contiguous() for p in params]
    status = library().ema_backward_f32(
        *_pointers(grad, x, *params), bg, cg, h, w, eps, torch.get_num_threads(), *_pointers(*kept, dx, *outputs)
    )
    _check(status, "backward pass", tuple(x.shape))
    return (dx, *outputs)
