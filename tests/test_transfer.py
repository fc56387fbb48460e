"""Fine-tuning: every tensor of a stock YOLO11 checkpoint reaches its layer in the EMA model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, assert_ok, yolo

import ultralytics_ema
from ultralytics_ema import CFG_DIR, EMA
from ultralytics_ema.plugin.transfer import align_layers

ultralytics_ema.apply()

from ultralytics import YOLO  # noqa: E402

SHIPPED = ["yolo11-ema-backbone.yaml", "yolo11-ema.yaml"]  # other tasks and families: tests/test_tasks.py


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stock "pretrained" checkpoints made here: yolo11{n,s}.yaml built with random weights and saved."""
    folder = tmp_path_factory.mktemp("stock")
    out = {}
    for scale in "ns":
        torch.manual_seed(1)
        model = YOLO(f"yolo11{scale}.yaml")
        out[scale] = folder / f"yolo11{scale}.pt"
        model.save(out[scale])
    return out


@pytest.mark.parametrize("scale", ["n", "s"])
@pytest.mark.parametrize("name", SHIPPED)
def test_full_transfer_of_stock_weights(name: str, scale: str, stock: dict[str, Path], log: list[str]):
    src = YOLO(stock[scale]).model
    model = YOLO(name.replace("yolo11", f"yolo11{scale}"))
    own = (".gn.", ".conv1x1.", ".conv3x3.")
    fresh_ema = {k: v.clone() for k, v in model.model.state_dict().items() if any(s in k for s in own)}
    model.load(stock[scale])
    dst = model.model
    mapping = align_layers(dst.model, src.model)
    assert sorted(mapping) == list(range(len(src.model)))  # every stock layer has a place
    n_src = 0
    for i, j in mapping.items():
        for (ka, a), (kb, b) in zip(src.model[i].state_dict().items(), dst.model[j].state_dict().items()):
            assert ka == kb and torch.equal(a, b), f"layer {i}->{j} {ka}"
            n_src += 1
    assert n_src == len(src.state_dict())
    emas = [j for j, m in enumerate(dst.model) if isinstance(m, EMA)]
    assert emas and not set(emas) & set(mapping.values())
    for k, v in fresh_ema.items():  # EMA's own tensors keep their initialisation
        assert torch.equal(dict(dst.state_dict())[k], v)
    expected = f"transferred all {n_src} checkpoint tensors; {6 * len(emas)} new EMA attention tensors start fresh"
    assert f"ultralytics-ema: {expected}" in log


def test_stock_ultralytics_would_shift_layers(stock: dict[str, Path]):
    """Without alignment, names shift after the first EMA row: most of the network would not load."""
    src = YOLO(stock["n"]).model.state_dict()
    dst = YOLO("yolo11n-ema-backbone.yaml").model.state_dict()
    same = [k for k, v in src.items() if k in dst and dst[k].shape == v.shape]
    assert len(same) < len(src) // 2


def test_other_scale_is_reported(stock: dict[str, Path], log: list[str]):
    YOLO("yolo11n-ema.yaml").load(stock["s"])
    (line,) = [x for x in log if x.startswith("WARNING ultralytics-ema")]
    assert "(scale s vs n)" in line and "transferred " in line and "18 new EMA attention tensors start fresh" in line


def test_other_class_count_is_reported(stock: dict[str, Path], log: list[str], tmp_path: Path):
    cfg = tmp_path / "yolo11n-ema-3cls.yaml"
    text = (
        (CFG_DIR / "models" / "11" / "yolo11-ema.yaml")
        .read_text()
        .replace("nc: 80 # number of classes", "nc: 3 # number of classes")
    )
    cfg.write_text(text)
    model = YOLO(cfg)
    assert model.model.yaml["nc"] == 3
    model.load(stock["n"])
    (line,) = [x for x in log if x.startswith("WARNING ultralytics-ema")]
    assert "class count 80 vs 3" in line


def test_train_cli_pretrained(stock: dict[str, Path], tiny_data: Path, tmp_path: Path):
    out = assert_ok(
        yolo(
            "train",
            "model=yolo11n-ema.yaml",
            f"pretrained={stock['n']}",
            f"data={tiny_data}",
            *TINY_TRAIN,
            "val=False",
            f"project={tmp_path}",
            "name=ft",
            cwd=tmp_path,
        )
    )
    assert "ultralytics-ema: transferred 493/499 checkpoint tensors (class count 80 vs 3)" in out
