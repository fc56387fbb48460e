"""The layer under torch.compile, torch.export and torch.jit.script, as a PyTorch layer: whole graphs, no warnings,
the reference's results (the layer records :func:`~ultralytics_ema.nn.ema_traced.ema_forward_traced` there, in plain
PyTorch ops; the native kernels and the hand-written backward pass run only in eager mode).

The default run compiles with the ``aot_eager`` backend (Dynamo's graph capture and AOTAutograd's forward and backward
graphs, as with Inductor, without Inductor's code generation, which takes minutes on 2 cores). Inductor itself, the
whole YOLO11n-EMA model against stock YOLO11n and ``yolo train/predict compile=True`` run with ``-m slow``.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import TINY_TRAIN, assert_ok, python, result, yolo
from test_ema import assert_as_exact_as_float32, make_pair
from torch.export import Dim

from ultralytics_ema.nn import native

SHAPES = [(2, 64, 12, 10), (3, 64, 7, 9), (1, 64, 1, 1), (1, 64, 1, 5)]  # the first is the compiled/exported shape


def compiled_results(compiled, layer: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor | None) -> dict:
    """Output (with ``grad_out``: also input and parameter gradients) of ``compiled``, a compiled ``layer``."""
    if grad_out is None:
        with torch.no_grad():
            return {"out": compiled(x)}
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    y = compiled(x)
    (y * grad_out).sum().backward()
    return {"out": y.detach(), "x.grad": x.grad, **{f"{n}.grad": p.grad for n, p in layer.named_parameters()}}


def check_compiled(backend: str, train: bool, dynamic: bool, monkeypatch) -> None:
    """Compile the layer with ``fullgraph=True`` (a graph break is an error), run it on SHAPES (static: the first
    twice, so a recompile would show) and compare with the reference; the kernels must not run, nothing may warn."""
    calls = []
    monkeypatch.setattr(native, "ema_forward_native", lambda *a, **k: calls.append(a) or None)
    torch._dynamo.reset()
    layer, ref = make_pair(64, 8, "random")
    layer.train(train)
    ref64 = copy.deepcopy(ref).double()
    compiled = torch.compile(layer, backend=backend, fullgraph=True, dynamic=dynamic)
    torch.manual_seed(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for shape in SHAPES if dynamic else SHAPES[:1] * 2:
            x = torch.randn(shape)
            grad_out = torch.randn(shape) if train else None
            got = compiled_results(compiled, layer, x, grad_out)
            assert_as_exact_as_float32(got, ref, ref64, x, grad_out)
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    assert calls == []


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_compile_fullgraph(train: bool, dynamic: bool, monkeypatch):
    check_compiled("aot_eager", train, dynamic, monkeypatch)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
def test_export(strict: bool, dynamic: bool):
    # Ultralytics' ExecuTorch and CoreML exports call torch.export.export (non-strict, the default).
    layer, ref = make_pair(64, 8, "random")
    layer.eval()
    dims = {"x": {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")}} if dynamic else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        program = torch.export.export(layer, (torch.randn(SHAPES[0]),), strict=strict, dynamic_shapes=dims)
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    # the layer's plain-ops graph: standard aten ops (and shape arithmetic), no opaque custom op
    assert "aten.conv2d.default" in ops and all(op.startswith(("aten.", "<built-in function")) for op in ops), ops
    exported = program.module()
    for shape in SHAPES if dynamic else SHAPES[:1]:
        x = torch.randn(shape)
        with torch.no_grad():
            assert_as_exact_as_float32({"out": exported(x)}, ref, copy.deepcopy(ref).double(), x)
    if not dynamic:
        with pytest.raises(Exception, match=r"(?i)shape|size|guard"):  # a static program checks its input's shape
            exported(torch.randn(SHAPES[1]))


def test_jit_script():
    # TorchScript cannot compile the layer's Python dispatch: scripting takes its traced graph, for any input size.
    layer, ref = make_pair(64, 8, "random")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script", category=FutureWarning)  # deprecation
        scripted = torch.jit.script(layer)
        model = torch.jit.script(torch.nn.Sequential(torch.nn.Identity(), layer))
    for shape in SHAPES:
        x = torch.randn(shape)
        with torch.no_grad():
            assert_as_exact_as_float32({"out": scripted(x)}, ref, copy.deepcopy(ref).double(), x)
            assert torch.equal(model(x), scripted(x))


# Slow: Inductor (the default backend) and the whole model. `python -m pytest -m slow tests/test_compile.py`.


@pytest.mark.slow
@pytest.mark.parametrize(("train", "dynamic"), [(False, False), (True, False), (False, True)])
def test_compile_inductor(train: bool, dynamic: bool, monkeypatch):
    check_compiled("inductor", train, dynamic, monkeypatch)


# First call of torch.compile on a model in a fresh process (Inductor's on-disk cache in its own empty folder): prints
# the seconds it took and the largest difference to the eager model, relative to the output's largest value.
COMPILE_TIME = """
import time
import torch
from ultralytics import YOLO
model = YOLO("{name}.yaml").model.eval()
x = torch.zeros(1, 3, 640, 640)
with torch.no_grad():
    want = model(x)[0]
    compiled = torch.compile(model)
    start = time.perf_counter()
    got = compiled(x)[0]
    seconds = time.perf_counter() - start
print("RESULT", seconds, ((got - want).abs().max() / want.abs().max()).item())
"""


@pytest.mark.slow
def test_whole_model_compile_time(tmp_path, capsys):
    # YOLO11n-EMA is stock YOLO11n with three EMA layers: compiling it may take at most 1.5x as long.
    seconds = {}
    for name in ("yolo11n", "yolo11n-ema"):
        env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / name)}
        out = assert_ok(python(COMPILE_TIME.format(name=name), env=env, timeout=3600))
        elapsed, diff = map(float, result(out))
        assert diff <= 1e-4, (name, diff)
        seconds[name] = elapsed
    with capsys.disabled():
        print(f"\ntorch.compile, first call at imgsz 640 (cold caches): {seconds}")
    assert seconds["yolo11n-ema"] <= 1.5 * seconds["yolo11n"], seconds


COMPILED = "compile complete in"  # Ultralytics' line once torch.compile wrapped the model (it warns if it cannot)


@pytest.mark.slow
def test_yolo_train_and_predict_compile(tiny_data, tmp_path):
    # On 2 CPU cores Inductor compiles the training step for about 10 minutes and the predictor for about 3.
    out = assert_ok(
        yolo("train", "model=yolo11n-ema.yaml", f"data={tiny_data}", *TINY_TRAIN, "compile=True", f"project={tmp_path}")
    )
    assert COMPILED in out and "continuing uncompiled" not in out, out[-3000:]
    weights = next(tmp_path.rglob("best.pt"))
    images = tiny_data.parent / "images" / "val"
    args = (f"model={weights}", f"source={images}", "imgsz=64", "compile=True", f"project={tmp_path}")
    out = assert_ok(yolo("predict", *args, cwd=tmp_path))
    assert COMPILED in out and "continuing uncompiled" not in out and "8/8" in out, out[-3000:]
