"""The native CPU kernels of the EMA layer (``kernels/*.c``), compiled on first use and called through ctypes.

For float32 tensors on CPU (not while tracing or compiling), the layer's forward pass and
:class:`~ultralytics_ema.nn.ema_function.EMAFunction`'s backward pass each run as one C function that works through the
input one channel group at a time, so a group's data stays in cache between its passes. They compute the same
functions as :func:`~ultralytics_ema.nn.ema_function.ema_forward` and ``EMAFunction.backward``.

Build: the first such call compiles the sources with the C compiler in ``$CC`` (else ``cc``), optimised for this CPU,
with OpenMP where the compiler has it (it shares the OpenMP runtime PyTorch loaded and uses
``torch.get_num_threads()`` threads). The library is cached in ``$ULTRALYTICS_EMA_CACHE`` (default
``~/.cache/ultralytics_ema``) under a name derived from the source, the compiler, its flags and the CPU's features;
it is written to a temporary name and renamed, so concurrent processes never load a half-written file.

Switch: ``ULTRALYTICS_EMA_NATIVE=0`` turns the kernels off (PyTorch ops run instead). Without a working compiler
one warning is logged and PyTorch ops run.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

__all__ = ["applies", "ema_backward_native", "ema_forward_native", "library"]

KERNELS = Path(__file__).with_name("kernels")
SOURCES = (KERNELS / "ema_forward.c", KERNELS / "ema_backward.c")
HEADERS = (KERNELS / "ema_cpu.h",)
# -ffast-math lets the compiler vectorise expf and the reductions. It is given to the compile step only: linked with it,
# GCC adds start-up code that makes the whole process flush subnormal floats to zero. No fused multiply-adds: they
# would round y * d differently in two places where the kernels rely on equal roundings (1x1 maps).
BASE_FLAGS = ["-O3", "-ffast-math", "-ffp-contract=off", "-fPIC"]
# Tried in order until one compiles: this CPU's instruction set and OpenMP, then without either.
OPTIONAL_FLAGS = (["-march=native", "-fopenmp"], ["-march=native"], [])
# C signatures: tensors (pointers), then groups, channels per group, height, width, then eps (forward), threads.
_POINTER, _SIZES = ctypes.c_void_p, [ctypes.c_int64] * 4
_ARGTYPES = {
    "ema_forward_f32": [_POINTER] * 8 + _SIZES + [ctypes.c_float, ctypes.c_int] + [_POINTER] * 7,
    "ema_backward_f32": [_POINTER] * 8 + _SIZES + [ctypes.c_int] + [_POINTER] * 13,
}
_state: dict = {}  # "library": the loaded kernels, or None once a build has failed in this process


def enabled() -> bool:
    """Whether the native kernels may be used: ``ULTRALYTICS_EMA_NATIVE`` is not ``0``/``false``/``off``/``no``."""
    return os.environ.get("ULTRALYTICS_EMA_NATIVE", "1").strip().lower() not in {"0", "false", "off", "no"}


def cache_dir() -> Path:
    """``$ULTRALYTICS_EMA_CACHE``, else ``$XDG_CACHE_HOME/ultralytics_ema`` (default ``~/.cache/ultralytics_ema``)."""
    if os.environ.get("ULTRALYTICS_EMA_CACHE"):
        return Path(os.environ["ULTRALYTICS_EMA_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "ultralytics_ema"


def _cpu_features() -> str:
    """What sets the instruction set ``-march=native`` compiles for: CPU flags on Linux, else the processor name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _run(command: list[str]) -> str | None:
    """Run a compiler command; return its first error line, or None if it succeeded."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{command[0]}: {e}"
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return (
        f"{command[0]} exited with {proc.returncode}: {lines[0] if lines else 'no output'}" if proc.returncode else None
    )


def _compile(compiler: str, flags: list[str], target: Path) -> str | None:
    """Compile and link :data:`SOURCES` into ``target`` via temporary files in its folder; return an error or None."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    objects = [Path(f"{tmp}.{i}.o") for i in range(len(SOURCES))]
    link_flags = [f for f in flags if f == "-fopenmp"]
    try:
        for source, obj in zip(SOURCES, objects):
            error = _run([compiler, *BASE_FLAGS, *flags, "-c", str(source), "-o", str(obj)])
            if error:
                return error
        error = _run([compiler, "-shared", *link_flags, *map(str, objects), "-o", tmp, "-lm"])
        if error is None:
            os.replace(tmp, target)
        return error
    finally:
        for path in (Path(tmp), *objects):
            path.unlink(missing_ok=True)


def _build() -> Path:
    """Return the cached library for this source, compiler and CPU, compiling it first if needed."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler {compiler!r} on PATH (set CC to one)")
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    ).stdout
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".dll" if sys.platform == "win32" else ".so"
    source, cpu = "".join(p.read_text() for p in (*HEADERS, *SOURCES)), _cpu_features()
    targets = []
    for flags in OPTIONAL_FLAGS:
        key = "\n".join([source, compiler, version, " ".join(BASE_FLAGS + flags), cpu])
        targets.append(folder / f"ema_cpu-{hashlib.sha256(key.encode()).hexdigest()[:16]}{suffix}")
    for target in targets:
        if target.exists():
            return target
    errors = []
    for flags, target in zip(OPTIONAL_FLAGS, targets):
        start = time.perf_counter()
        error = _compile(compiler, flags, target)
        if error is None:
            _log("info", f"compiled the native CPU kernels in {time.perf_counter() - start:.1f} s: {target}")
            return target
        errors.append(error)
    raise RuntimeError(errors[0])


def _log(level: str, message: str) -> None:
    """Log through Ultralytics' logger, naming the layer (not Ultralytics' ModelEMA)."""
    from ultralytics.utils import LOGGER

    getattr(LOGGER, level)(f"EMA attention layer: {message}")


def library() -> ctypes.CDLL | None:
    """The kernels, built and loaded on first call; None if that failed (logged once per process)."""
    if "library" not in _state:
        try:
            lib = ctypes.CDLL(str(_build()))
            for name, argtypes in _ARGTYPES.items():
                getattr(lib, name).argtypes, getattr(lib, name).restype = argtypes, ctypes.c_int
            _state["library"] = lib
        except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
            _state["library"] = None
            _log(
                "warning",
                f"native CPU kernels unavailable ({e}); using PyTorch ops (ULTRALYTICS_EMA_NATIVE=0: no attempt)",
            )
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
    input, the sigmoid of the attention map, the gates, the row and column means, the window means, the second
    softmax, the GroupNorm mean and rstd); else it is empty.
    """
    b, c, h, w = x.shape
    bg, cg = b * groups, c // groups
    x = x.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    params = [p.detach().contiguous() for p in (w1, b1, w3, b3, gamma, beta)]
    kept = ()
    if keep:
        sizes = [(h * w,), (cg, h + w), (cg, h + w), (cg * 9,), (cg,), (cg,), (cg,)]
        kept = tuple(x.new_empty(bg, *size) for size in sizes)
    status = library().ema_forward_f32(
        *_pointers(x, out, *params), bg, cg, h, w, eps, torch.get_num_threads(), *(_pointers(*kept) or [None] * 7)
    )
    _check(status, "forward pass", tuple(x.shape))
    return out, (x, *kept) if keep else ()


def ema_backward_native(
    grad: torch.Tensor, params: tuple[torch.Tensor, ...], saved: tuple[torch.Tensor, ...], groups: int
) -> tuple[torch.Tensor, ...]:
    """Backward pass of :func:`ema_forward_native` for the output gradient ``grad``.

    Args:
        grad: Gradient of the output, ``(b, c, h, w)``.
        params: ``(w1, b1, w3, b3, gamma, beta)`` of the forward pass.
        saved: ``saved`` of the forward pass (``keep=True``).
        groups: The layer's factor.

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
        *_pointers(grad, x, *params), bg, cg, h, w, torch.get_num_threads(), *_pointers(*kept, dx, *outputs)
    )
    _check(status, "backward pass", tuple(x.shape))
    return (dx, *outputs)
