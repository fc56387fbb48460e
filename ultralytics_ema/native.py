"""The native CPU kernel for EMA inference: ``kernels/ema_cpu.c``, compiled on first use and called through ctypes.

In float32 inference on CPU (no autograd, not tracing or compiling), :meth:`ultralytics_ema.ema.EMA.forward` runs
the whole layer as one C function that works through the input one channel group at a time, so a group's data stays
in cache between its passes. It computes the same function as :func:`ultralytics_ema.ema_function.ema_forward`.

Build: the first such call compiles the source with the C compiler in ``$CC`` (else ``cc``), optimised for this CPU,
with OpenMP where the compiler has it (it shares the OpenMP runtime PyTorch loaded and uses
``torch.get_num_threads()`` threads). The library is cached in ``$ULTRALYTICS_EMA_CACHE`` (default
``~/.cache/ultralytics_ema``) under a name derived from the source, the compiler, its flags and the CPU's features;
it is written to a temporary name and renamed, so concurrent processes never load a half-written file.

Switch: ``ULTRALYTICS_EMA_NATIVE=0`` turns the kernel off (PyTorch ops run instead). Without a working compiler
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

__all__ = ["applies", "ema_forward_native", "library"]

SOURCE = Path(__file__).with_name("kernels") / "ema_cpu.c"
# -ffast-math lets the compiler vectorise expf and the reductions. It is given to the compile step only: linked with it,
# GCC adds start-up code that makes the whole process flush subnormal floats to zero.
BASE_FLAGS = ["-O3", "-ffast-math", "-fPIC"]
# Tried in order until one compiles: this CPU's instruction set and OpenMP, then without either.
OPTIONAL_FLAGS = (["-march=native", "-fopenmp"], ["-march=native"], [])
_ARGTYPES = [ctypes.c_void_p] * 8 + [ctypes.c_int64] * 4 + [ctypes.c_float, ctypes.c_int]
_state: dict = {}  # "function": the loaded C function, or None once a build has failed in this process


def enabled() -> bool:
    """Whether the native kernel may be used: ``ULTRALYTICS_EMA_NATIVE`` is not ``0``/``false``/``off``."""
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
    """Compile and link :data:`SOURCE` into ``target`` via temporary files in its folder; return an error or None."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    obj = Path(f"{tmp}.o")
    link_flags = [f for f in flags if f == "-fopenmp"]
    try:
        error = _run([compiler, *BASE_FLAGS, *flags, "-c", str(SOURCE), "-o", str(obj)])
        error = error or _run([compiler, "-shared", *link_flags, str(obj), "-o", tmp, "-lm"])
        if error is None:
            os.replace(tmp, target)
        return error
    finally:
        Path(tmp).unlink(missing_ok=True)
        obj.unlink(missing_ok=True)


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
    source, cpu = SOURCE.read_text(), _cpu_features()
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
            _log("info", f"compiled the native CPU kernel in {time.perf_counter() - start:.1f} s: {target}")
            return target
        errors.append(error)
    raise RuntimeError(errors[0])


def _log(level: str, message: str) -> None:
    """Log through Ultralytics' logger, naming the layer (not Ultralytics' ModelEMA)."""
    from ultralytics.utils import LOGGER

    getattr(LOGGER, level)(f"EMA attention layer: {message}")


def library():
    """The kernel's C function, built and loaded on first call; None if that failed (logged once per process)."""
    if "function" not in _state:
        try:
            function = ctypes.CDLL(str(_build())).ema_forward_f32
            function.argtypes, function.restype = _ARGTYPES, ctypes.c_int
            _state["function"] = function
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _state["function"] = None
            _log(
                "warning",
                f"native CPU kernel unavailable ({e}); using PyTorch ops (ULTRALYTICS_EMA_NATIVE=0: no attempt)",
            )
    return _state["function"]


def _intercepted() -> bool:
    """Whether torch.compile / torch.export traces this call (data pointers are not real then) or a Python dispatch
    mode (FLOP counters, fake tensors) watches the ops: the call must run as torch ops."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling():
        return True
    dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return bool(dispatch_modes is not None and dispatch_modes())


def applies(x: torch.Tensor, params: tuple[torch.Tensor, ...]) -> bool:
    """Whether the native kernel computes this call (the layer checked autograd): float32 CPU tensors, enabled, not
    traced, compiled or watched by a dispatch mode, and the kernel builds."""
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
) -> torch.Tensor:
    """EMA attention of ``x`` ``(b, c, h, w)`` by the native kernel (call only where :func:`applies`)."""
    b, c, h, w = x.shape
    x = x.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    params = [p.detach().contiguous() for p in (w1, b1, w3, b3, gamma, beta)]
    status = library()(
        x.data_ptr(),
        out.data_ptr(),
        *(p.data_ptr() for p in params),
        b * groups,
        c // groups,
        h,
        w,
        eps,
        torch.get_num_threads(),
    )
    if status:
        raise MemoryError(f"EMA attention layer: native CPU kernel could not allocate its buffers for {tuple(x.shape)}")
    return out
