"""Faults of the native CPU kernels as a user's machine meets them: extreme inputs, a damaged or unusable cache, a
hanging compiler, threads racing to build.

Exactness: on 14 kinds of extreme input the kernels' output (inference) and output and gradients (training), pooled
over 8 inputs each, must be as close to the float64 reference as the float32 reference is (test_ema.PooledErrors:
at most 3x its RMS error, plus 4 ulps), and non-finite only where the reference is. Build faults run in fresh
processes with their own caches: each must exit 0 with the reference's output and say what happened in one line.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_ok, python, result
from test_ema import PooledErrors, float32_references, float64_results, make_pair, run_with_grads
from test_native import COMPILING, fake_compiler, needs_kernel, spy

from ultralytics_ema.nn import native
from ultralytics_ema.nn.ema import EMA
from ultralytics_ema.nn.reference import ReferenceEMA

SEEDS = range(8)  # inputs per case: see test_ema.FACTOR


def near_constant(offset: float):
    """Channels of ``offset`` plus noise of 1e-2: GroupNorm divides by a tiny spread."""
    return lambda layer, x: x * 1e-2 + offset


def saturated_gates(logit: float):
    """conv1x1 bias ``logit``: every gate's logit is about ``logit`` (0 or 1 after the sigmoid from |logit| > 88)."""

    def prepare(layer, x):
        layer.conv1x1.weight.mul_(1e-3)
        layer.conv1x1.bias.fill_(logit).add_(torch.randn_like(layer.conv1x1.bias))
        return x

    return prepare


def saturated_map(logit: float):
    """GroupNorm bias ``logit``: the attention map's logits are about ``logit``."""

    def prepare(layer, x):
        layer.gn.bias.fill_(logit).add_(torch.randn_like(layer.gn.bias))
        return x

    return prepare


def scaled(factor: float):
    """The input times ``factor``."""
    return lambda layer, x: x * factor


def one_hot_softmax(layer, x):
    """Both softmaxes near one-hot: logits ~ N(0, 300^2), so most weights underflow to 0."""
    layer.conv3x3.bias.normal_(0.0, 300.0)
    layer.gn.bias.normal_(0.0, 300.0)
    return x


EXTREMES = {
    "x30": scaled(30.0),
    "x100": scaled(100.0),
    "x1e3": scaled(1e3),
    "x1e4": scaled(1e4),
    "near-constant+100": near_constant(100.0),
    "near-constant-1e4": near_constant(-1e4),
    "gates-89": saturated_gates(-89.0),
    "gates+89": saturated_gates(89.0),
    "gates-1e3": saturated_gates(-1e3),
    "map-89": saturated_map(-89.0),
    "map+1e3": saturated_map(1e3),
    "one-hot softmax": one_hot_softmax,
    "tiny": scaled(1e-30),
    "zeros": scaled(0.0),
}


def extreme_case(name: str, seed: int, shape: tuple = (2, 32, 12, 10), factor: int = 4) -> tuple[EMA, torch.Tensor]:
    """The layer (random weights ~ N(0, 0.5^2)) and the input of case ``name``."""
    fast, _ = make_pair(shape[1], factor, "random", seed=seed)
    torch.manual_seed(100 + seed)
    with torch.no_grad():
        x = EXTREMES[name](fast, torch.randn(shape))
    return fast, x


def references(layer: EMA) -> tuple[ReferenceEMA, ReferenceEMA]:
    """The float32 and float64 references with the weights of ``layer``."""
    ref = ReferenceEMA(layer.gn.num_channels * layer.groups, layer.groups)
    ref.load_state_dict(layer.state_dict())
    return ref, copy.deepcopy(ref).double()


@needs_kernel
@pytest.mark.parametrize("case", list(EXTREMES))
def test_extreme_inputs_match_float64(case: str, monkeypatch):
    forward, backward = spy(monkeypatch), spy(monkeypatch, "ema_backward_native")
    inference, training = PooledErrors(), PooledErrors()
    for seed in SEEDS:
        fast, x = extreme_case(case, seed)
        ref32, ref64 = references(fast)
        grad_out = torch.randn_like(x)
        want, refs32 = float64_results(ref64, x, grad_out), float32_references(ref32, x, grad_out)
        training.add(run_with_grads(fast, x, grad_out), refs32, want)
        with torch.no_grad():
            inference.add({"out": fast(x)}, refs32, {"out": want["out"]})
    assert len(forward) == 2 * len(SEEDS) and len(backward) == len(SEEDS)  # the kernels computed them, not PyTorch ops
    inference.check()
    training.check()


# First use of the layer in a fresh process: prints whether the kernels loaded, how long the first call took and its
# largest difference to the reference.
FIRST_CALL = """
import time
import torch
from ultralytics_ema.nn import native
from ultralytics_ema.nn.ema import EMA
from ultralytics_ema.nn.reference import ReferenceEMA
layer, ref = EMA(32, factor=4), ReferenceEMA(32, factor=4)
ref.load_state_dict(layer.state_dict())
x = torch.randn(2, 32, 9, 7)
start = time.monotonic()
with torch.no_grad():
    y = layer(x)
elapsed = time.monotonic() - start
with torch.no_grad():
    diff = (y - ref(x)).abs().max().item()
print("RESULT", native.library() is not None, elapsed, diff)
"""


def layer_warnings(out: str) -> list[str]:
    """The warnings the layer logged."""
    return [line for line in out.splitlines() if "WARNING" in line and "EMA attention layer" in line]


def session_library() -> Path:
    """The library this test session built (conftest's cache)."""
    assert native.library() is not None
    (library,) = [p for p in native.cache_dir().glob("ema_cpu-*") if p.suffix != ".sha256"]
    return library


def record_of(data: bytes) -> str:
    """What the record beside a library holds for these bytes."""
    return f"{hashlib.sha256(data).hexdigest()} {len(data)}\n"


def other_architecture(data: bytes) -> bytes:
    """The library with its ELF header naming another machine (x86-64 <-> AArch64)."""
    assert data[:4] == b"\x7fELF", "not an ELF library"
    machine = 183 if int.from_bytes(data[18:20], "little") == 62 else 62
    return data[:18] + machine.to_bytes(2, "little") + data[20:]


@needs_kernel
@pytest.mark.parametrize("damage", ["truncated", "garbage", "other architecture", "no record"])
def test_damaged_cached_library_is_rebuilt(damage: str, tmp_path: Path):
    # Before: a truncated library killed every process with SIGBUS (exit 135) when mapped, with no message.
    library = session_library()
    data = library.read_bytes()
    cache = tmp_path / "cache"
    cache.mkdir()
    target, record = cache / library.name, cache / f"{library.name}.sha256"
    if damage == "truncated":
        target.write_bytes(data[:20000])
    elif damage == "garbage":
        target.write_bytes(os.urandom(len(data)))
    elif damage == "other architecture":
        target.write_bytes(other_architecture(data))
    else:  # a whole library without its record (copied in by hand, say)
        target.write_bytes(data)
    if damage != "no record":  # the other architecture's record matches it: the loader, not the check, rejects it
        record.write_text(record_of(target.read_bytes() if damage == "other architecture" else data))
    out = assert_ok(python(FIRST_CALL, env={"ULTRALYTICS_EMA_CACHE": str(cache)}))
    loaded, _, diff = result(out)
    assert loaded == "True" and float(diff) <= 1e-5
    (warning,) = layer_warnings(out)
    assert "rebuilding the cached kernels" in warning and str(target) in warning
    assert out.count(COMPILING) == 1
    assert record.read_text() == record_of(target.read_bytes())  # rebuilt and recorded
    if damage == "truncated":  # the next process loads the rebuilt library silently
        again = assert_ok(python(FIRST_CALL, env={"ULTRALYTICS_EMA_CACHE": str(cache)}))
        assert result(again)[0] == "True" and "EMA attention layer" not in again


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="checks for leftover processes in /proc")
@pytest.mark.parametrize("hangs", ["--version", "compile"])
def test_hanging_compiler_is_killed_within_the_bound(hangs: str, tmp_path: Path):
    # Before: 61 s when --version hung, 900 s when the compiles hung (3 flag sets x 300 s), silently; the compiler's
    # own children survived the timeout.
    pids = tmp_path / "pids"
    hang = f"echo $$ >> {pids}; sleep 600 & echo $! >> {pids}; wait"  # the compiler and a child of it (cc1)
    version = '[ "$1" = --version ] && echo fake && exit 0\n' if hangs == "compile" else ""
    cc, bound = fake_compiler(tmp_path, version + hang), 2
    env = {"ULTRALYTICS_EMA_CACHE": str(tmp_path / "cache"), "CC": str(cc), "ULTRALYTICS_EMA_COMPILE_TIMEOUT": "2"}
    out = assert_ok(python(FIRST_CALL, env=env))
    loaded, elapsed, diff = result(out)
    assert loaded == "False" and float(diff) <= 1e-5  # PyTorch ops
    assert bound <= float(elapsed) < bound + 5, elapsed  # the first call waited for the bound, not longer
    (warning,) = layer_warnings(out)
    assert f"did not finish within {bound} s (killed" in warning
    assert (COMPILING in out) == (hangs == "compile")  # the line that says it compiles, before the wait
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 2 and not [pid for pid in started if alive(pid)]


@needs_kernel
def test_read_only_cache_folder(tmp_path: Path):
    # An existing folder nobody may write to: the kernels go to the per-user temporary folder, with one warning.
    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root writes through permissions: a folder of a file system nobody writes to
        folder = Path("/proc/self/fdinfo")
        if not folder.is_dir():
            pytest.skip("no read-only folder for root here")
    (tmp_path / "tmp").mkdir()
    env = {"ULTRALYTICS_EMA_CACHE": str(folder), "TMPDIR": str(tmp_path / "tmp")}
    out = assert_ok(python(FIRST_CALL, env=env))
    assert result(out)[0] == "True" and float(result(out)[2]) <= 1e-5
    fallback = tmp_path / "tmp" / f"ultralytics_ema-{os.getuid()}"
    (warning,) = layer_warnings(out)
    assert "cannot write to the kernels' cache folder" in warning and str(fallback) in warning
    (compiling,) = [line for line in out.splitlines() if COMPILING in line]
    assert str(fallback) in compiling


# Four threads call the layer at once on its first use; a compiler wrapper logs every run.
THREADS = """
import threading
import torch
from ultralytics_ema.nn import native
from ultralytics_ema.nn.ema import EMA
layer = EMA(32, factor=4)
x = torch.randn(2, 32, 9, 7)
start, outs = threading.Barrier(4), []

def first_call():
    start.wait()
    with torch.no_grad():
        outs.append(layer(x))

threads = [threading.Thread(target=first_call) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("RESULT", native.library() is not None, len(outs), all(torch.equal(outs[0], y) for y in outs))
"""


@needs_kernel
def test_threads_build_once(tmp_path: Path):
    runs = tmp_path / "runs"
    real = shutil.which(os.environ.get("CC") or "cc")
    cc = fake_compiler(tmp_path, f'echo "$*" >> {runs}\nexec "{real}" "$@"')
    out = assert_ok(python(THREADS, env={"ULTRALYTICS_EMA_CACHE": str(tmp_path / "cache"), "CC": str(cc)}))
    assert result(out) == ["True", "4", "True"]
    commands = runs.read_text().splitlines()
    assert len([c for c in commands if c == "--version"]) == 1  # one build: one version query,
    assert len([c for c in commands if " -c " in c]) == 2 and len([c for c in commands if "-shared" in c]) == 1
    assert out.count(COMPILING) == 1
