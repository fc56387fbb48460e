"""The native CPU kernels: which calls use them, their results against the reference, and their build (cache, the
switch, fallbacks when the compiler is missing or fails, nothing half-written, no process-wide float mode changes).

Outputs and gradients of the kernels on every case of ``test_ema.py`` are covered there (its ``path`` fixture); here
are the inputs and conditions specific to the kernels. Build tests run in fresh processes with their own caches.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_ok, python, result
from test_ema import assert_as_exact_as_float32, make_pair, max_abs_diff, run_with_grads
from torch.utils.flop_counter import FlopCounterMode

from ultralytics_ema.nn import native

COMPILING = "compiling the EMA CPU kernels once, cached in"
needs_kernel = pytest.mark.skipif(
    shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler: the native kernel cannot build"
)

# Runs two EMA layers three times each without gradients and once with, prints whether the kernels loaded and the
# largest difference to the reference (outputs and input gradients), then whether float32 subnormals survive (a
# -ffast-math link would flush them).
SCRIPT = """
import torch
from ultralytics_ema.nn import native
from ultralytics_ema.nn.ema import EMA
from ultralytics_ema.nn.reference import ReferenceEMA
torch.manual_seed(0)
diff = 0.0
for c in (64, 32):
    fast, ref = EMA(c, 8), ReferenceEMA(c, 8)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, c, 9, 7)
    with torch.no_grad():
        for _ in range(3):
            diff = max(diff, (fast(x) - ref(x)).abs().max().item())
    grads = [torch.autograd.grad(m(x.requires_grad_()).square().sum(), x)[0] for m in (fast, ref)]
    diff = max(diff, (grads[0] - grads[1]).abs().max().item())
print("RESULT", native.library() is not None, diff, (torch.tensor([1e-40]) * 1).item() != 0)
"""


@contextlib.contextmanager
def num_threads(threads: int):
    """Run the block with ``threads`` torch threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def spy(monkeypatch, name: str = "ema_forward_native") -> list:
    """Record the calls of a native kernel's wrapper (callers look it up on the module at each call)."""
    calls = []
    real = getattr(native, name)

    def record(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(native, name, record)
    return calls


def cached(folder: Path) -> list[str]:
    """The files in a kernel cache folder, but its lock file."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".ema_cpu.lock") if folder.exists() else []


@needs_kernel
def test_builds_here_and_caches_one_library():
    assert native.library() is not None
    library, record = cached(native.cache_dir())
    assert library.startswith("ema_cpu-") and record == f"{library}.sha256"
    data = (native.cache_dir() / library).read_bytes()
    assert (native.cache_dir() / record).read_text().split() == [hashlib.sha256(data).hexdigest(), str(len(data))]


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("shape", "factor"),
    [((1, 64, 80, 80), 32), ((2, 128, 40, 40), 32), ((1, 256, 20, 20), 32), ((3, 96, 33, 17), 4), ((1, 8, 2, 1), 8)],
)
def test_matches_reference(shape: tuple, factor: int, threads: int, monkeypatch):
    calls = spy(monkeypatch)
    fast, ref = make_pair(shape[1], factor, "random")
    x = torch.randn(shape) * 3 + 1
    with num_threads(threads), torch.no_grad():
        got = fast(x)
    assert calls == [x.shape]
    assert got.shape == x.shape and got.is_contiguous()
    assert_as_exact_as_float32({"out": got}, ref, copy.deepcopy(ref).double(), x)


@needs_kernel
def test_same_result_for_any_thread_count_and_layout():
    # Each group is computed by one thread from its own data: results do not depend on the thread count or layout.
    fast, _ = make_pair(64, 32, "random")
    x = torch.randn(2, 64, 12, 10)
    outs = []
    for threads, layout in [(1, torch.contiguous_format), (2, torch.contiguous_format), (2, torch.channels_last)]:
        with num_threads(threads), torch.no_grad():
            outs.append(fast(x.contiguous(memory_format=layout)))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@needs_kernel
def test_strided_input_and_large_offset_channels(monkeypatch):
    calls = spy(monkeypatch)
    fast, ref = make_pair(32, 4, "random")
    x = (torch.randn(2, 32, 16, 22) * 1e-2 + 50)[..., ::2]  # non-contiguous, near-constant channels
    before = x.clone()
    with torch.no_grad():
        got = fast(x)
    assert len(calls) == 1 and torch.equal(x, before)
    assert_as_exact_as_float32({"out": got}, ref, copy.deepcopy(ref).double(), x)


@needs_kernel
@pytest.mark.parametrize("case", ["bfloat16", "float64", "switched off", "flop counter", "tracing"])
def test_calls_that_run_torch_ops(case: str, monkeypatch):
    calls = spy(monkeypatch)
    fast, ref = make_pair(32, 4, "random")
    x = torch.randn(1, 32, 6, 5)
    if case in ("bfloat16", "float64"):
        dtype = getattr(torch, case)
        with torch.no_grad():
            assert fast.to(dtype)(x.to(dtype)).dtype == dtype
    elif case == "switched off":
        for value in ("0", "false", "off"):
            monkeypatch.setenv("ULTRALYTICS_EMA_NATIVE", value)
            with torch.no_grad():
                assert max_abs_diff(fast(x), ref(x)) <= 1e-5
            fast(x.requires_grad_()).sum().backward()
        monkeypatch.delenv("ULTRALYTICS_EMA_NATIVE")
    elif case == "flop counter":  # FLOP counters see the layer's torch ops
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fast(x)
        assert counter.get_total_flops() > 0
    else:
        with torch.no_grad():
            traced = torch.jit.trace(fast, x, check_trace=False)  # the check would run it eagerly
            assert max_abs_diff(traced(x), ref(x)) <= 1e-5
    assert calls == []
    with torch.no_grad():  # the same layer, in an ordinary inference call, does use the kernel
        fast.float()(x.detach())
    assert len(calls) == 1


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("shape", "factor"), [((2, 64, 80, 80), 32), ((1, 256, 20, 20), 32), ((3, 96, 33, 17), 4)])
def test_gradients_match_reference(shape: tuple, factor: int, threads: int, monkeypatch):
    forward, backward = spy(monkeypatch), spy(monkeypatch, "ema_backward_native")
    fast, ref = make_pair(shape[1], factor, "random")
    x, grad_out = torch.randn(shape), torch.randn(shape)
    with num_threads(threads):
        got = run_with_grads(fast, x, grad_out)
    assert len(forward) == 1 and len(backward) == 1
    assert_as_exact_as_float32(got, ref, copy.deepcopy(ref).double(), x, grad_out)


@needs_kernel
def test_gradients_same_for_any_thread_count():
    fast, _ = make_pair(64, 32, "random")
    x, grad_out = torch.randn(2, 64, 12, 10), torch.randn(2, 64, 12, 10)
    runs = []
    for threads in (1, 2):
        with num_threads(threads):
            runs.append(run_with_grads(fast, x, grad_out))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@needs_kernel
def test_build_once_then_reuse(tmp_path: Path):
    env = {"ULTRALYTICS_EMA_CACHE": str(tmp_path / "cache")}
    first = assert_ok(python(SCRIPT, env=env))
    loaded, diff, subnormals = result(first)
    assert loaded == "True" and float(diff) <= 1e-5 and subnormals == "True"
    (compiling,) = [line for line in first.splitlines() if COMPILING in line]
    assert str(tmp_path / "cache") in compiling and "WARNING" not in first
    files = cached(tmp_path / "cache")
    mtime = (tmp_path / "cache" / files[0]).stat().st_mtime_ns
    second = assert_ok(python(SCRIPT, env=env))
    assert result(second)[0] == "True" and "EMA attention layer" not in second  # loaded from the cache, silently
    assert cached(tmp_path / "cache") == files and (tmp_path / "cache" / files[0]).stat().st_mtime_ns == mtime


def test_switched_off_builds_nothing(tmp_path: Path):
    env = {"ULTRALYTICS_EMA_CACHE": str(tmp_path / "cache"), "ULTRALYTICS_EMA_NATIVE": "0"}
    out = assert_ok(python(SCRIPT.replace("native.library() is not None", "native.enabled()"), env=env))
    assert result(out)[0] == "False" and float(result(out)[1]) <= 1e-5
    assert not (tmp_path / "cache").exists() and "native CPU kernels" not in out


def fake_compiler(folder: Path, body: str) -> Path:
    """A shell script that acts as the C compiler."""
    path = folder / "fake-cc"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@needs_kernel
def test_processes_building_at_once(tmp_path: Path):
    # Each process compiles into its own temporary files and renames the result into place: all load a whole file.
    env = {**os.environ, "ULTRALYTICS_EMA_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert all(result(out)[0] == "True" and float(result(out)[1]) <= 1e-5 for out in outs)
    assert sum(out.count(COMPILING) for out in outs) == 1  # they took turns: one compiled, the others loaded
    assert len(cached(tmp_path / "cache")) == 2  # one library and its record, no temporary files left


@needs_kernel
@pytest.mark.parametrize("fallback", ["temporary folder", "none"])
def test_unusable_cache_folder(fallback: str, tmp_path: Path):
    # The cache folder cannot be created (a file is in the way): the kernels go to the per-user temporary folder; if
    # that is unusable too (a file in the way again), PyTorch ops run. Either way one warning names the cache folder.
    (tmp_path / "file").write_text("")
    (tmp_path / "tmp").mkdir()
    folder = tmp_path / "tmp" / f"ultralytics_ema-{os.getuid()}"
    if fallback == "none":
        folder.write_text("")
    env = {"ULTRALYTICS_EMA_CACHE": str(tmp_path / "file" / "cache"), "TMPDIR": str(tmp_path / "tmp")}
    out = assert_ok(python(SCRIPT, env=env))
    assert result(out)[0] == str(fallback != "none") and float(result(out)[1]) <= 1e-5
    (warning,) = [line for line in out.splitlines() if "WARNING" in line and "EMA attention layer" in line]
    assert str(tmp_path / "file") in warning and str(folder) in warning
    if fallback != "none":
        assert len(cached(folder)) == 2 and stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.parametrize("compiler", ["missing", "fails", "writes half a file"])
def test_without_a_working_compiler(compiler: str, tmp_path: Path):
    if compiler == "missing":
        cc = tmp_path / "no-such-cc"
    else:  # answers --version, then fails every compile; the second one leaves a partial output file behind
        partial = 'for a; do [ "$prev" = -o ] && echo partial > "$a"; prev=$a; done; ' if "half" in compiler else ""
        cc = fake_compiler(tmp_path, f'[ "$1" = --version ] && echo fake 1.0 && exit 0\n{partial}echo boom >&2; exit 1')
    env = {"ULTRALYTICS_EMA_CACHE": str(tmp_path / "cache"), "CC": str(cc)}
    out = assert_ok(python(SCRIPT, env=env))
    assert result(out)[0] == "False" and float(result(out)[1]) <= 1e-5  # PyTorch ops, same results
    warnings = [line for line in out.splitlines() if "native CPU kernels unavailable" in line]
    assert len(warnings) == 1, out  # once per process, not per call
    assert ("boom" in warnings[0]) == (compiler != "missing") and "EMA attention layer" in warnings[0]
    assert not cached(tmp_path / "cache")  # no library, record or temporary file


@needs_kernel
def test_falls_back_to_a_build_without_openmp(tmp_path: Path):
    real = shutil.which(os.environ.get("CC") or "cc")
    cc = fake_compiler(tmp_path, f'for a; do [ "$a" = -fopenmp ] && exit 1; done; exec "{real}" "$@"')
    env = {"ULTRALYTICS_EMA_CACHE": str(tmp_path / "cache"), "CC": str(cc)}
    out = assert_ok(python(SCRIPT, env=env))
    assert result(out)[0] == "True" and float(result(out)[1]) <= 1e-5 and result(out)[2] == "True"
    assert len(cached(tmp_path / "cache")) == 2
