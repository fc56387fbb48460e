"""End to end, as a user runs it: the ``yolo`` CLI and fresh interpreters, no import line anywhere."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import assert_ok, python, result, run, yolo

COUNT_EMA = "sum(type(m).__name__ == 'EMA' and type(m).__module__ == 'ultralytics_ema.nn.ema' for m in {}.modules())"


def test_train_outputs(trained: Path):
    assert (trained / "weights" / "best.pt").is_file() and (trained / "weights" / "last.pt").is_file()
    assert (trained / "results.csv").read_text().count("\n") == 2  # header + 1 epoch
    args = (trained / "args.yaml").read_text()
    assert "model: yolo11n-ema.yaml" in args


def test_val_predict_reload(trained: Path, tiny_data: Path, tmp_path: Path):
    best = trained / "weights" / "best.pt"
    out = assert_ok(
        yolo("val", f"model={best}", f"data={tiny_data}", "imgsz=64", "batch=8", "plots=False", cwd=tmp_path)
    )
    assert "all          8" in out  # 8 validation images
    source = tiny_data.parent / "images" / "val"
    assert_ok(
        yolo(
            "predict", f"model={best}", f"source={source}", "imgsz=64", f"project={tmp_path}", "name=pred", cwd=tmp_path
        )
    )
    assert len(list((tmp_path / "pred").glob("val_*.jpg"))) == 8  # annotated images
    code = (
        f"from ultralytics import YOLO; m = YOLO({str(best)!r}); print('RESULT', {COUNT_EMA.format('m.model')}, m.task)"
    )
    assert result(assert_ok(python(code))) == ["3", "detect"]


def test_reload_with_safe_load(trained: Path, tiny_data: Path, tmp_path: Path):
    best = trained / "weights" / "best.pt"
    env = {"ULTRALYTICS_SAFE_LOAD": "1"}
    code = (
        "from ultralytics.nn.tasks import SAFE_LOAD, load_checkpoint\n"
        f"model, _ = load_checkpoint({str(best)!r})\n"
        f"print('RESULT', SAFE_LOAD, {COUNT_EMA.format('model')})"
    )
    assert result(assert_ok(python(code, env=env))) == ["True", "3"]
    assert_ok(yolo("val", f"model={best}", f"data={tiny_data}", "imgsz=64", "plots=False", cwd=tmp_path, env=env))


def test_export_torchscript(trained: Path, tmp_path: Path, tiny_data: Path):
    best = tmp_path / "best.pt"
    best.write_bytes((trained / "weights" / "best.pt").read_bytes())
    assert_ok(yolo("export", f"model={best}", "format=torchscript", "imgsz=64", cwd=tmp_path))
    ts = tmp_path / "best.torchscript"
    assert ts.is_file()
    image = next((tiny_data.parent / "images" / "val").glob("*.png"))
    code = (
        "from ultralytics import YOLO\n"
        f"a = YOLO({str(ts)!r}, task='detect').predict({str(image)!r}, imgsz=64, conf=0.001, verbose=False)[0]\n"
        f"b = YOLO({str(best)!r}).predict({str(image)!r}, imgsz=64, conf=0.001, verbose=False)[0]\n"
        "diff = float((a.boxes.conf[:5] - b.boxes.conf[:5]).abs().max()) if len(a.boxes) else 0\n"
        "print('RESULT', len(a.boxes), len(b.boxes), diff)"
    )
    n_ts, n_pt, diff = result(assert_ok(python(code)))
    assert n_ts == n_pt and float(diff) < 1e-3


FORK = """
import sys, types, torch
import ultralytics_ema
from ultralytics import YOLO
from ultralytics_ema.nn.reference import ReferenceEMA

# The fork recipe's module, as it would be importable in the fork: ultralytics/nn/attention/EMA_attention.py
pkg = types.ModuleType("ultralytics.nn.attention"); pkg.__path__ = []
mod = types.ModuleType("ultralytics.nn.attention.EMA_attention")
class EMA(ReferenceEMA):  # the official layout: softmax, agp, pool_h, pool_w, gn, conv1x1, conv3x3, groups
    pass
EMA.__module__ = mod.__name__
mod.EMA = EMA
sys.modules[pkg.__name__], sys.modules[mod.__name__] = pkg, mod

yolo = YOLO("yolo11n-ema.yaml")
model = yolo.model.eval()
for m in model.modules():
    if type(m).__name__ == "EMA":
        m.__class__ = EMA
        m.softmax, m.agp = torch.nn.Softmax(-1), torch.nn.AdaptiveAvgPool2d((1, 1))
        m.pool_h, m.pool_w = torch.nn.AdaptiveAvgPool2d((None, 1)), torch.nn.AdaptiveAvgPool2d((1, None))
        torch.nn.init.normal_(m.gn.bias)
torch.manual_seed(0)
x = torch.rand(1, 3, 64, 64)
with torch.no_grad():
    torch.save(model(x)[0], sys.argv[2])
torch.save({"model": model, "train_args": {}}, sys.argv[1])
"""


def test_checkpoint_of_the_fork_recipe_loads(tmp_path: Path):
    script = tmp_path / "make_fork_ckpt.py"
    script.write_text(FORK)
    ckpt, expected = tmp_path / "fork.pt", tmp_path / "expected.pt"
    assert_ok(run([sys.executable, str(script), str(ckpt), str(expected)]))
    assert b"ultralytics.nn.attention.EMA_attention" in ckpt.read_bytes()
    code = (
        "import torch\n"
        "from ultralytics import YOLO\n"
        f"m = YOLO({str(ckpt)!r}).model.eval()\n"
        "emas = [x for x in m.modules() if type(x).__name__ == 'EMA']\n"
        "torch.manual_seed(0)\n"
        "with torch.no_grad():\n"
        f"    diff = (m(torch.rand(1, 3, 64, 64))[0] - torch.load({str(expected)!r})).abs().max()\n"
        "print('RESULT', len(emas), '+'.join(sorted(emas[0]._modules)), type(emas[0]).__module__, float(diff))"
    )
    for env in ({}, {"ULTRALYTICS_SAFE_LOAD": "1"}):
        n, modules, module, diff = result(assert_ok(python(code, env=env)))
        assert (n, modules, module) == ("3", "conv1x1+conv3x3+gn", "ultralytics_ema.nn.ema") and float(diff) < 1e-4


DDP_WORKER = """
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG_DICT

overrides = {overrides}
if __name__ == "__main__":
    trainer = DetectionTrainer(cfg=DEFAULT_CFG_DICT.copy(), overrides=overrides)
    trainer.train()
"""


def test_ddp_style_worker_rebuilds_from_yaml(tmp_path: Path, tiny_data: Path):
    """Ultralytics' DDP workers are fresh interpreters that rebuild the model from the YAML name, like this one."""
    overrides = dict(
        model="yolo11n-ema.yaml",
        data=str(tiny_data),
        epochs=1,
        imgsz=64,
        batch=16,
        workers=0,
        plots=False,
        val=False,
        project=str(tmp_path),
        name="ddp",
    )
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(overrides=repr(overrides)))
    out = assert_ok(run([sys.executable, str(script)], cwd=tmp_path))
    assert "ultralytics_ema.nn.ema.EMA" in out and (tmp_path / "ddp" / "weights" / "last.pt").is_file()


def test_demo_dataset_by_short_name(tmp_path: Path):
    """``data=ema-demo`` resolves to the packaged YAML and generates the data under datasets_dir on first use."""
    env = {"YOLO_CONFIG_DIR": str(tmp_path / "config")}
    assert_ok(yolo("settings", f"datasets_dir={tmp_path / 'datasets'}", env=env, cwd=tmp_path))
    code = (
        "from ultralytics.data.utils import check_det_dataset\n"
        "d = check_det_dataset('ema-demo')\n"
        "print('RESULT', d['nc'], d['val'])"
    )
    out = assert_ok(python(code, env=env, cwd=tmp_path))
    assert out.split()[-2:] == ["3", str(tmp_path / "datasets" / "ema-demo" / "images" / "val")]
    assert len(list((tmp_path / "datasets" / "ema-demo" / "images" / "train").glob("*.png"))) == 160


@pytest.mark.parametrize("name", ["yolo11n-ema.yaml", "yolo11x-ema-backbone.yaml"])
def test_cli_resolves_bare_model_names(name: str, tmp_path: Path):
    count = COUNT_EMA.format("m.model")
    code = f"from ultralytics import YOLO\nm = YOLO({name!r})\nprint('RESULT', {count}, m.model.yaml['scale'])"
    n, scale = result(assert_ok(python(code, cwd=tmp_path)))
    assert (n, scale) == ("3" if "backbone" not in name else "2", name[6])
