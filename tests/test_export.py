"""Exports of an EMA checkpoint with the ``yolo`` CLI: ONNX (dynamic and static) checked in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_ok, yolo

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def best(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained checkpoint in its own folder (exports are written beside it)."""
    path = tmp_path_factory.mktemp("export") / "best.pt"
    path.write_bytes((trained / "weights" / "best.pt").read_bytes())
    return path


def torch_outputs(weights: Path, x: np.ndarray) -> np.ndarray:
    """Raw detection output of the PyTorch checkpoint (fused, eval), as the exported graph computes it."""
    import torch
    from ultralytics import YOLO

    model = YOLO(weights).model.float().fuse().eval()
    with torch.no_grad():
        return model(torch.from_numpy(x))[0].numpy()


def onnx_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """Output of the ONNX file in ONNX Runtime (CPU)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_onnx_dynamic_matches_pytorch(best: Path):
    assert_ok(yolo("export", f"model={best}", "format=onnx", "dynamic=True", "imgsz=64", cwd=best.parent))
    onnx = best.with_suffix(".onnx")
    rng = np.random.default_rng(0)
    for shape in [(1, 3, 64, 64), (3, 3, 96, 160)]:  # two batch sizes and two input shapes, one non-square
        x = rng.random(shape, dtype=np.float32)
        a, b = onnx_outputs(onnx, x), torch_outputs(best, x)
        assert a.shape == b.shape == (shape[0], 4 + 3, sum((shape[2] // s) * (shape[3] // s) for s in (8, 16, 32)))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    onnx.unlink()


def test_onnx_static_matches_pytorch(best: Path):
    assert_ok(yolo("export", f"model={best}", "format=onnx", "imgsz=64", cwd=best.parent))
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(onnx_outputs(best.with_suffix(".onnx"), x), torch_outputs(best, x), rtol=1e-4, atol=1e-3)
