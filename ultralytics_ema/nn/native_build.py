"""Build, cache and load of the native CPU kernels (``kernels/*.c``), for :mod:`ultralytics_ema.nn.native`.

:func:`load` returns the kernels as a ``ctypes.CDLL`` or raises :class:`BuildError` saying why they are unavailable.
It never lets a damaged file or a stuck compiler take the process down:

- **Cache.** The library is cached in :func:`cache_dir` under a name derived from the sources, the compiler and its
  version, the flags and the CPU's features. Beside it, ``<name>.sha256`` records its SHA-256 and size. A library is
  loaded only once it matches its record (a truncated file would kill the process with SIGBUS when mapped); one
  that does not, or does not load (another architecture), is rebuilt once, with one warning.
- **Publishing.** The compiler writes to temporary names in the cache folder; the library and its record are flushed
  to disk (fsync) and renamed into place (record first), so no process ever sees half a file, also after a power
  cut. Processes that build at once take turns on a lock file (``.ema_cpu.lock``): one compiles, the others load.
- **Fallback folder.** If the cache folder cannot be created or written, the kernels go to a per-user temporary
  folder (``<tmp>/ultralytics_ema-<uid>``, mode 0700, used only if this user owns it), with one warning; if that
  fails too, :func:`load` raises and the layer runs PyTorch ops.
- **Bounded compile.** All compiler runs together may take :func:`compile_timeout` seconds (default 30,
  ``$ULTRALYTICS_EMA_COMPILE_TIMEOUT``); a compiler still running then is killed with its whole process group.
  One line is logged while it compiles.

Compiler: ``$CC`` (else ``cc``), GCC or Clang flags, optimised for this CPU (``-march=native``), with OpenMP where the
compiler has it (it shares the OpenMP runtime that PyTorch loaded); flag sets are tried in order until one compiles.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["BuildError", "cache_dir", "compile_timeout", "fallback_dir", "load"]

KERNELS = Path(__file__).with_name("kernels")
SOURCES = (KERNELS / "ema_forward.c", KERNELS / "ema_backward.c")
HEADERS = (KERNELS / "ema_cpu.h",)
# -ffast-math lets the compiler reorder sums, so that reductions vectorise; -fno-finite-math-only keeps infinities
# and NaN meaningful and divisions and square roots exact (with -ffinite-math-only, GCC divides by approximate
# reciprocals: sigmoid's 1 / (1 + inf) became NaN). Given to the compile step only: linked with -ffast-math, GCC adds
# start-up code that makes the whole process flush subnormal floats to zero. No fused multiply-adds: they would round
# y * d differently in two places where the kernels rely on equal roundings (1x1 maps).
BASE_FLAGS = ["-O3", "-ffast-math", "-fno-finite-math-only", "-ffp-contract=off", "-fPIC"]
# Tried in order until one compiles: this CPU's instruction set and OpenMP, then without either.
OPTIONAL_FLAGS = (["-march=native", "-fopenmp"], ["-march=native"], [])
# C signatures: tensors (pointers), then groups, channels per group, height, width, eps, threads.
_POINTER, _SIZES = ctypes.c_void_p, [ctypes.c_int64] * 4
ARGTYPES = {
    "ema_forward_f32": [_POINTER] * 8 + _SIZES + [ctypes.c_float, ctypes.c_int] + [_POINTER] * 8,
    "ema_backward_f32": [_POINTER] * 8 + _SIZES + [ctypes.c_float, ctypes.c_int] + [_POINTER] * 14,
}
DEFAULT_TIMEOUT = 30.0
LOCK_NAME = ".ema_cpu.lock"
# A child of Ultralytics' logger: printed by its handler, in its format, at its verbosity (YOLO_VERBOSE).
LOGGER = logging.getLogger("ultralytics").getChild("ema_layer")


class BuildError(RuntimeError):
    """The kernels are unavailable in this process (no compiler, compile failed or timed out, no usable folder)."""


def log(level: str, message: str) -> None:
    """Log ``message`` naming the layer (not Ultralytics' ModelEMA) through Ultralytics' logger, which importing
    ``ultralytics.utils`` sets up if nothing has yet (the layer alone does not import Ultralytics)."""
    if not LOGGER.parent.handlers:
        with contextlib.suppress(ImportError):
            import ultralytics.utils  # noqa: F401
    getattr(LOGGER, level)(f"EMA attention layer: {message}")


def cache_dir() -> Path:
    """``$ULTRALYTICS_EMA_CACHE``, else ``$XDG_CACHE_HOME/ultralytics_ema`` (default ``~/.cache/ultralytics_ema``)."""
    if os.environ.get("ULTRALYTICS_EMA_CACHE"):
        return Path(os.environ["ULTRALYTICS_EMA_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "ultralytics_ema"


def fallback_dir() -> Path:
    """The per-user temporary folder used when :func:`cache_dir` is unusable: ``<tmp>/ultralytics_ema-<uid>``."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"ultralytics_ema-{user}"


def compile_timeout() -> float:
    """Seconds that all compiler runs of one build may take together: ``$ULTRALYTICS_EMA_COMPILE_TIMEOUT``, else 30."""
    try:
        value = float(os.environ.get("ULTRALYTICS_EMA_COMPILE_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT
    return value if value > 0 else DEFAULT_TIMEOUT


def _cpu_features() -> str:
    """What sets the instruction set ``-march=native`` compiles for: CPU flags on Linux, else the processor name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _kill(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and every process of its group (the compiler driver's cc1, as, ld)."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)  # its own session and group: start_new_session=True
        else:
            proc.kill()
    except OSError:
        pass
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _run(command: list[str], deadline: float) -> tuple[str, str | None]:
    """Run a compiler command until ``deadline`` (``time.monotonic()``); return ``(output, error)``, error None on
    success. Output goes to a file, not a pipe: a child that outlives a killed compiler cannot block the read."""
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as e:
            return "", f"{command[0]}: {e}"
        try:
            code = proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            _kill(proc)
            return (
                "",
                f"{command[0]} did not finish within {compile_timeout():g} s (killed; ULTRALYTICS_EMA_COMPILE_TIMEOUT)",
            )
        output.seek(0)
        text = output.read().decode(errors="replace")
    lines = text.strip().splitlines()
    return text, f"{command[0]} exited with {code}: {lines[0] if lines else 'no output'}" if code else None


def _record(library: Path) -> Path:
    """The file beside ``library`` that records its SHA-256 and size."""
    return library.with_name(library.name + ".sha256")


def _digest(data: bytes) -> str:
    """``"<sha256> <size>"``: the record of a library's bytes."""
    return f"{hashlib.sha256(data).hexdigest()} {len(data)}"


def _verify(library: Path) -> str | None:
    """Why ``library`` must not be loaded (no record, other size, other hash), or None if it matches its record."""
    try:
        recorded = _record(library).read_text().strip()
        size = library.stat().st_size
        if recorded.rpartition(" ")[2] != str(size):
            return f"{size} bytes, {recorded.rpartition(' ')[2]} recorded"
        if _digest(library.read_bytes()) != recorded:
            return "its SHA-256 differs from the recorded one"
    except (OSError, UnicodeDecodeError) as e:
        return f"no readable size and hash record ({e.strerror if isinstance(e, OSError) else e})"
    return None


def _open(library: Path) -> tuple[ctypes.CDLL | None, str | None]:
    """``(kernels, None)`` if ``library`` matches its record and loads, else ``(None, why not)``."""
    problem = _verify(library)
    if problem:
        return None, problem
    try:
        lib = ctypes.CDLL(str(library))
        for name, argtypes in ARGTYPES.items():
            getattr(lib, name).argtypes, getattr(lib, name).restype = argtypes, ctypes.c_int
    except (OSError, AttributeError) as e:
        return None, f"it does not load: {e}"
    return lib, None


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries (the renames) to disk where the platform allows it."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(built: Path, target: Path) -> None:
    """Move the freshly linked ``built`` to ``target``: flushed, recorded, renamed (record first)."""
    _fsync_file(built)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".sha256", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_digest(built.read_bytes()) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, _record(target))
    finally:
        Path(tmp).unlink(missing_ok=True)
    os.replace(built, target)
    _fsync_folder(target.parent)


def _compile(compiler: str, flags: list[str], target: Path, deadline: float) -> str | None:
    """Compile and link :data:`SOURCES` into ``target`` via temporary files in its folder; return an error or None."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    objects = [Path(f"{tmp}.{i}.o") for i in range(len(SOURCES))]
    link_flags = [f for f in flags if f == "-fopenmp"]
    try:
        for source, obj in zip(SOURCES, objects):
            error = _run([compiler, *BASE_FLAGS, *flags, "-c", str(source), "-o", str(obj)], deadline)[1]
            if error:
                return error
        error = _run([compiler, "-shared", *link_flags, *map(str, objects), "-o", tmp, "-lm"], deadline)[1]
        if error is None:
            _publish(Path(tmp), target)
        return error
    finally:
        for path in (Path(tmp), *objects):
            path.unlink(missing_ok=True)


def _foreign(folder: Path) -> str | None:
    """Why ``folder`` (in a shared temporary folder) is not this user's alone, or None: nobody else may have put a
    library there."""
    if not hasattr(os, "getuid"):
        return None
    try:
        info = os.lstat(folder)
    except OSError as e:
        return f"{e.strerror or e} ({folder})"
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        return f"{folder} is not a folder of this user's alone"
    return None


def _usable(folder: Path, private: bool) -> str | None:
    """Why the kernels cannot be written to ``folder`` (created if missing), or None. ``private``: it must also be
    this user's alone (see :func:`_foreign`)."""
    try:
        folder.mkdir(parents=True, exist_ok=True, **({"mode": 0o700} if private else {}))
        foreign = _foreign(folder) if private else None
        if foreign:
            return foreign
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"{e.strerror or e} ({e.filename or folder})"
    return None


@contextlib.contextmanager
def _turn(folder: Path, deadline: float) -> Iterator[None]:
    """Hold ``folder``'s build lock (processes that build at once take turns), waiting at most until ``deadline``.
    Where locks are unavailable (no fcntl, a file system without them) the block runs unlocked: the renames keep
    every file whole, at worst two processes compile."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield
        return
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BuildError(f"another process has been compiling the kernels in {folder} too long") from None
                time.sleep(0.05)
            except OSError:
                break
        yield
    finally:
        os.close(fd)  # releases the lock


def _library_names(compiler: str, version: str) -> list[tuple[list[str], str]]:
    """The flag sets and their library file names (the same in every folder), in the order they are tried."""
    suffix = ".dll" if sys.platform == "win32" else ".so"
    source, cpu = "".join(p.read_text() for p in (*HEADERS, *SOURCES)), _cpu_features()
    names = []
    for flags in OPTIONAL_FLAGS:
        key = "\n".join([source, compiler, version, " ".join(BASE_FLAGS + flags), cpu])
        names.append((flags, f"ema_cpu-{hashlib.sha256(key.encode()).hexdigest()[:16]}{suffix}"))
    return names


def load() -> ctypes.CDLL:
    """The kernels for this source, compiler and CPU: loaded from the cache if a verified library is there, else
    compiled (once; a damaged library is rebuilt with one warning). Raises :class:`BuildError` if unavailable."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise BuildError(f"no C compiler {compiler!r} on PATH (set CC to one)")
    deadline = time.monotonic() + compile_timeout()
    version, error = _run([compiler, "--version"], deadline)
    if error:
        raise BuildError(error)
    names = _library_names(compiler, version)
    folders = [cache_dir(), fallback_dir()]  # the second only if this user's alone
    damaged = {}
    for i, folder in enumerate(folders):
        if i and _foreign(folder):
            continue
        for _, name in names:
            target = folder / name
            if target.exists():
                lib, problem = _open(target)
                if lib is not None:
                    return lib
                damaged.setdefault(folder, f"{target}: {problem}")
    reasons = []
    for i, folder in enumerate(folders):
        reason = _usable(folder, private=i > 0)
        if reason is None:
            break
        reasons.append(reason)
    else:
        raise BuildError(f"no folder to compile them into: {'; '.join(reasons)}")
    if reasons:
        log("warning", f"cannot write to the kernels' cache folder ({reasons[0]}); using {folder}")
    if folder in damaged:
        log("warning", f"rebuilding the cached kernels, which must not be loaded ({damaged[folder]})")
    targets = [(flags, folder / name) for flags, name in names]
    with _turn(folder, deadline):
        for _, target in targets:  # built by another process while this one waited for its turn
            lib = _open(target)[0] if target.exists() else None
            if lib is not None:
                return lib
        log("info", f"compiling the EMA CPU kernels once, cached in {folder} (at most {compile_timeout():g} s)")
        errors = []
        for flags, target in targets:
            error = _compile(compiler, flags, target, deadline)
            if error is None:
                lib, problem = _open(target)
                if lib is None:
                    raise BuildError(f"the library just built, {target}, {problem}")
                return lib
            errors.append(error)
            if time.monotonic() >= deadline:
                break
    raise BuildError(errors[0])
