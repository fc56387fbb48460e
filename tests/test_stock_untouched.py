"""Where EMA is not involved the plugin is invisible: stock checkpoints load bit for bit as without it, silently.

Each check runs in fresh interpreters, once with the startup hook on (the default) and once with it off
(``ULTRALYTICS_EMA_AUTOLOAD=0``, plain Ultralytics), and compares the loaded weights and the log.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import TINY_TRAIN, assert_ok, python, result, run, yolo

# (model YAML, checkpoint, model keyword arguments): another scale, task, family, a P6 head, grayscale input, one
# class (as single_cls trains), a classifier with its own class count, and the same architecture.
PAIRS = [
    ("yolo11n.yaml", "yolo11s", {}),
    ("yolo11n-seg.yaml", "yolo11n", {}),
    ("yolo26n.yaml", "yolo11n", {}),
    ("yolo26n-p6.yaml", "yolo26n", {}),
    ("yolo11n.yaml", "yolo11n", {"ch": 1}),
    ("yolo11n.yaml", "yolo11n", {"nc": 1}),
    ("yolo11n-cls.yaml", "yolo11n-cls", {"nc": 10}),
    ("yolo11n.yaml", "yolo11n", {}),
]
MAKE = """
import sys, torch
from ultralytics import YOLO
for name in sys.argv[1:]:
    torch.manual_seed(1)
    YOLO(f"{name}.yaml").save(f"{name}.pt")
"""
LOAD = """
import hashlib, json, sys, torch
from ultralytics import YOLO
for cfg, ckpt, kwargs in json.loads(sys.argv[1]):
    torch.manual_seed(0)
    model = YOLO(cfg).model
    if kwargs:
        model = type(model)(model.yaml, verbose=False, **kwargs)
    model.load(torch.load(f"{ckpt}.pt", weights_only=False))
    digest = hashlib.sha256()
    for k, v in model.state_dict().items():
        digest.update(k.encode() + v.detach().contiguous().numpy().tobytes())
    print("RESULT", cfg, ckpt, json.dumps(kwargs).replace(" ", ""), digest.hexdigest(), flush=True)
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stock checkpoints (random weights, saved by plain Ultralytics) in one folder."""
    folder = tmp_path_factory.mktemp("stock")
    names = sorted({ckpt for _, ckpt, _ in PAIRS})
    assert_ok(run([sys.executable, "-c", MAKE, *names], env={"ULTRALYTICS_EMA_AUTOLOAD": "0"}, cwd=folder))
    return folder


def load_all(folder: Path, autoload: str) -> tuple[list[str], list[str]]:
    """Load every pair in one fresh interpreter; return its RESULT lines and its Ultralytics log lines."""
    code = [sys.executable, "-c", LOAD, json.dumps(PAIRS)]
    out = assert_ok(run(code, env={"ULTRALYTICS_EMA_AUTOLOAD": autoload}, cwd=folder))
    return [x for x in out.splitlines() if x.startswith("RESULT ")], out.splitlines()


def test_stock_pairs_load_bit_identically_and_silently(checkpoints: Path):
    on, log_on = load_all(checkpoints, "1")
    off, log_off = load_all(checkpoints, "0")
    assert len(on) == len(PAIRS) and on == off  # the same weights, tensor for tensor, bit for bit
    transferred = [x for x in log_on if x.startswith("Transferred ")]
    assert transferred == [x for x in log_off if x.startswith("Transferred ")] and len(transferred) == len(PAIRS)
    assert "Transferred 147/962 items from pretrained weights" in transferred  # the P6 pair, stock behaviour
    assert [x for x in log_on if "ultralytics-ema:" in x] == []  # every plugin line starts so
    # the plugin was active in the first run: the same process builds EMA models
    check = "from ultralytics import YOLO; YOLO('yolo11n-ema.yaml'); print('RESULT ok')"
    assert result(assert_ok(python(check, cwd=checkpoints))) == ["ok"]


def test_stock_fine_tune_prints_no_plugin_line(checkpoints: Path, tiny_data: Path, tmp_path: Path):
    """A stock training with pretrained weights and one class (single_cls): Ultralytics' line only."""
    out = assert_ok(
        yolo(
            "train",
            "model=yolo11n.yaml",
            f"pretrained={checkpoints / 'yolo11n.pt'}",
            f"data={tiny_data}",
            "single_cls=True",
            *TINY_TRAIN,
            "val=False",
            f"project={tmp_path}",
            "name=stock",
            cwd=tmp_path,
        )
    )
    assert "Transferred 493/499 items from pretrained weights" in out
    assert "ultralytics-ema:" not in out
