"""Exports of a trained EMA checkpoint with the ``yolo`` CLI, each run in its runtime and compared with PyTorch.

Every export runs in a fresh ``yolo export`` process, as a user runs it; the exported model is then loaded with
Ultralytics' ``AutoBackend`` (the way ``yolo predict`` and ``yolo val`` run it) and its raw detection output compared
with the PyTorch checkpoint's on the same input. Formats whose runtime is not installed are skipped (they come with
``pip install ultralytics-ema[deploy]``, part of the test extra). TensorFlow, LiteRT, PaddlePaddle, ExecuTorch and
CoreML need runtimes that conflict with this environment; ``ultralytics-ema deploy`` checks them.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_ok, yolo

from ultralytics_ema.tools.deploy import environment

IMGSZ = 64
# Raw outputs: 4 box coordinates in pixels (up to IMGSZ) and class scores in [0, 1].
RTOL, ATOL = 1e-4, 1e-3


@pytest.fixture(scope="module")
def best(trained: Path) -> Path:
    """The trained checkpoint (exports copy it into their own folders)."""
    return trained / "weights" / "best.pt"


def export(best: Path, tmp_path: Path, fmt: str, *args: str) -> Path:
    """``yolo export`` of a copy of ``best`` in ``tmp_path``; return the exported file or folder."""
    weights = tmp_path / "best.pt"
    shutil.copy(best, weights)
    # environment(): offline, and MNN's converter cannot pip-install its telemetry SDK into the interpreter on PATH.
    args = ("export", f"model={weights}", f"format={fmt}", f"imgsz={IMGSZ}", *args)
    out = assert_ok(yolo(*args, cwd=tmp_path, env=environment(tmp_path / "env")))
    from ultralytics.engine.exporter import export_formats

    suffix = dict(zip(export_formats()["Argument"], export_formats()["Suffix"]))[fmt]
    path = tmp_path / f"best{suffix}"
    assert path.exists(), f"no {path.name} next to the weights:\n{out[-2000:]}"
    return path


def torch_outputs(weights: Path, x: np.ndarray) -> np.ndarray:
    """Raw detection output of the PyTorch checkpoint (fused, eval), as the exported graph computes it."""
    import torch
    from ultralytics import YOLO

    model = YOLO(weights).model.float().fuse().eval()
    with torch.no_grad():
        return model(torch.from_numpy(x))[0].numpy()


def backend_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """Raw output of an exported model run by Ultralytics' AutoBackend on CPU.

    OpenVINO runs in float32 here: on CPUs with bf16 instructions (AVX512-BF16, AMX) its default inference precision
    is bf16, for stock models too, which would hide the graph's own precision behind bf16 rounding (~1e-3).
    """
    import torch
    from ultralytics.nn.autobackend import AutoBackend

    if path.name.endswith("_openvino_model"):
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(next(path.glob("*.xml"))), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
        )
        return compiled(x)[0]

    model = AutoBackend(str(path), device=torch.device("cpu"))
    y = model(torch.from_numpy(x))
    y = y[0] if isinstance(y, (list, tuple)) else y
    return y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)


def n_anchors(h: int, w: int) -> int:
    """Number of detection outputs (anchors) of a detection model at input size ``h x w``."""
    return sum((h // s) * (w // s) for s in (8, 16, 32))


def inputs(*shapes: tuple) -> list[np.ndarray]:
    """Reproducible random images."""
    rng = np.random.default_rng(0)
    return [rng.random(shape, dtype=np.float32) for shape in shapes]


def needs(module: str) -> None:
    """Skip unless ``module`` (a format's runtime or converter) is installed."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install ultralytics-ema[deploy])")


# format, extra export arguments, modules it needs. Batch 1 at the export size (NCNN and MNN models run one image).
# OpenVINO and ONNX without onnxslim run at several shapes below (dynamic exports).
FORMATS = [
    ("torchscript", (), ()),
    ("onnx", ("simplify=True",), ("onnx", "onnxruntime")),
    ("mnn", (), ("MNN",)),
    ("ncnn", (), ("ncnn", "pnnx")),
]


@pytest.mark.parametrize(("fmt", "args", "modules"), FORMATS, ids=[f[0] for f in FORMATS])
def test_export_matches_pytorch(best: Path, tmp_path: Path, fmt: str, args: tuple, modules: tuple):
    for module in modules:
        needs(module)
    path = export(best, tmp_path, fmt, *args)
    (x,) = inputs((1, 3, IMGSZ, IMGSZ))
    got, want = backend_outputs(path, x), torch_outputs(best, x)
    assert got.shape == want.shape == (1, 4 + 3, n_anchors(IMGSZ, IMGSZ))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


# Dynamic batch and image size: the export size, then another batch size and a non-square shape.
DYNAMIC = [
    ("onnx", ("simplify=False",), ("onnx", "onnxruntime")),
    ("openvino", (), ("openvino",)),
]


@pytest.mark.parametrize(("fmt", "args", "modules"), DYNAMIC, ids=[f[0] for f in DYNAMIC])
def test_dynamic_export_matches_pytorch(best: Path, tmp_path: Path, fmt: str, args: tuple, modules: tuple):
    for module in modules:
        needs(module)
    path = export(best, tmp_path, fmt, "dynamic=True", *args)
    for x in inputs((1, 3, IMGSZ, IMGSZ), (3, 3, 96, 160)):
        got, want = backend_outputs(path, x), torch_outputs(best, x)
        assert got.shape == want.shape == (x.shape[0], 4 + 3, n_anchors(*x.shape[2:]))
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_onnx_nms_matches_pytorch(best: Path, tiny_data: Path, tmp_path: Path):
    # NMS inside the graph: (batch, max_det, 6) rows of box, score, class; compared with the same NMS in PyTorch, on a
    # validation image of the dataset the checkpoint was trained on (random pixels give few boxes).
    needs("onnxruntime")
    import cv2
    import torch
    from ultralytics import YOLO
    from ultralytics.cfg import get_cfg
    from ultralytics.engine.exporter import NMSModel

    path = export(best, tmp_path, "onnx", "nms=True", "conf=0.001")
    image = cv2.imread(str(sorted((tiny_data.parent / "images" / "val").iterdir())[0]))
    x = np.ascontiguousarray(image[None, ..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32) / 255  # BGR HWC -> RGB CHW
    model = YOLO(best).model.float().fuse().eval()
    model.model[-1].xyxy = True  # as the exporter sets the head for NMS inside the graph
    args = get_cfg(overrides={"format": "onnx", "nms": True, "conf": 0.001, "imgsz": IMGSZ})
    with torch.no_grad():
        want = NMSModel(model, args)(torch.from_numpy(x)).numpy()
    got = backend_outputs(path, x)
    assert got.shape == want.shape and got.shape[-1] == 6
    kept = want[0, :, 4] > 0
    assert kept.any(), "no detection to compare"
    # A 1-epoch model scores many boxes alike (to 1e-7), so which of them survive NMS is down to rounding: compare all
    # scores, and the boxes of the leading rows whose scores are clearly apart from the next row's (the first row tied
    # with the next one is not: rounding decides which of the tied boxes comes first, and which anchor survives NMS).
    np.testing.assert_allclose(got[0, kept, 4], want[0, kept, 4], atol=1e-5)
    gaps = -np.diff(want[0, kept, 4])
    clear = int(np.argmin(gaps > 1e-5)) if (gaps <= 1e-5).any() else int(kept.sum())
    np.testing.assert_allclose(got[0, :clear], want[0, :clear], rtol=RTOL, atol=ATOL)
