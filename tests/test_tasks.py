"""Every task and family: the demo data by name, full pretrained transfer from the stock checkpoint, and train -> val
-> predict -> export -> reload as a user runs them (the ``yolo`` CLI and fresh interpreters, no import line)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Callable

import pytest
import torch
from conftest import TINY_TRAIN, assert_ok, python, result, script_module, yolo

import ultralytics_ema
from ultralytics_ema import EMA
from ultralytics_ema.data.demo import DEMOS, make_demo_dataset

ultralytics_ema.apply()

from ultralytics import YOLO  # noqa: E402

generator = script_module("make_model_yamls")
VARIANTS = {v.name: v for v in generator.VARIANTS}
NEW = sorted(set(VARIANTS) - {"yolo11-ema.yaml", "yolo11-ema-backbone.yaml"})  # those two: tests/test_transfer.py
EMA_TENSORS = (".gn.", ".conv1x1.", ".conv3x3.")
COUNT_EMA = "sum(type(m).__name__ == 'EMA' and type(m).__module__ == 'ultralytics_ema.nn.ema' for m in {}.modules())"
# One model per task for the end-to-end run, each family at least once (the export matrix of all: test_export_matrix).
E2E = {
    "detect": "yolo26n-ema.yaml",
    "segment": "yolo11n-seg-ema.yaml",
    "pose": "yolo26n-pose-ema.yaml",
    "obb": "yolov8n-obb-ema.yaml",
    "classify": "yolo26n-cls-ema.yaml",
    "semantic": "yolo26n-sem-ema.yaml",
    "depth": "yolo26n-depth-ema.yaml",
}
METRIC = {
    "detect": "metrics/mAP50(B)",
    "segment": "metrics/mAP50(M)",
    "pose": "metrics/mAP50(P)",
    "obb": "metrics/mAP50(B)",
    "classify": "metrics/accuracy_top1",
    "semantic": "metrics/mIoU",
    "depth": "metrics/delta1",
}
OUTPUT = {"detect": "boxes", "segment": "boxes", "pose": "boxes", "obb": "obb", "classify": "probs"}
OUTPUT.update(semantic="semantic_mask", depth="depth")  # the Results attribute each task fills
SLOW = os.environ.get("ULTRALYTICS_EMA_SLOW", "").lower() in ("1", "true", "yes")


@pytest.mark.parametrize("name", NEW)
def test_full_transfer_from_stock(name: str, tmp_path: Path, log: list[str]):
    """``YOLO("yolo26n-seg-ema.yaml").load("yolo26n-seg.pt")``: every stock tensor on its layer, EMA's own fresh."""
    variant = VARIANTS[name]
    checkpoint = tmp_path / generator.scaled(Path(variant.stock).name, "n").replace(".yaml", ".pt")
    torch.manual_seed(1)
    YOLO(generator.scaled(Path(variant.stock).name, "n")).save(checkpoint)  # a "pretrained" stock checkpoint
    src = torch.load(checkpoint, weights_only=False)["model"].float()  # as saved (half precision), as loaded
    model = YOLO(generator.scaled(name, "n"))
    fresh = {k: v.clone() for k, v in model.model.state_dict().items() if any(s in k for s in EMA_TENSORS)}
    log.clear()
    model.load(checkpoint)
    dst = model.model
    places = [j for j, m in enumerate(dst.model) if not isinstance(m, EMA)]  # stock layer i sits at places[i]
    assert len(places) == len(src.model) and len(fresh) == 6 * (len(dst.model) - len(places))
    moved = 0
    for i, j in enumerate(places):
        a, b = src.model[i].state_dict(), dst.model[j].state_dict()
        assert list(a) == list(b), f"stock layer {i} -> {j}"
        for k in a:
            assert torch.equal(a[k], b[k]), f"stock layer {i} -> {j}: {k}"
            moved += 1
    assert moved == len(src.state_dict())
    sd = dst.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in fresh.items())  # EMA's own tensors keep their initialisation
    assert f"Transferred {moved}/{len(sd)} items from pretrained weights" in log  # Ultralytics' own count
    ours = f"ultralytics-ema: transferred all {moved} checkpoint tensors; {len(fresh)} new EMA attention tensors"
    assert f"{ours} start fresh" in log  # the plugin's line counts the same


def test_demo_data_by_name_generates_offline(tmp_path: Path):
    """``data=ema-demo-seg.yaml`` / ``data=ema-demo-cls`` generate into datasets_dir with one line, no download talk."""
    env = {"YOLO_CONFIG_DIR": str(tmp_path / "config")}
    assert_ok(yolo("settings", f"datasets_dir={tmp_path / 'datasets'}", env=env, cwd=tmp_path))
    yamls = [name for name, demo in DEMOS.items() if demo.task != "classify"]
    code = (
        "from ultralytics.data.utils import check_cls_dataset, check_det_dataset\n"
        "from ultralytics.engine.trainer import check_cls_dataset as trainer_check\n"
        f"for name in {yamls!r}:\n"
        "    d = check_det_dataset(name + '.yaml' if name.endswith('seg') else name)\n"  # with and without .yaml
        "    print('DATA', name, d['nc'], d.get('kpt_shape', '-'), d['val'])\n"
        "d = trainer_check('ema-demo-cls')\n"
        "print('DATA', 'ema-demo-cls', d['nc'], '-', d['val'])\n"
        "for name in ('ema-demo-pose.yaml', 'ema-demo-cls'):\n"  # second use: no line
        "    (check_cls_dataset if name.endswith('cls') else check_det_dataset)(name)\n"
    )
    out = assert_ok(python(code, env=env, cwd=tmp_path))
    datasets = tmp_path / "datasets"
    rows = [line.replace(", ", ",").split() for line in out.splitlines() if line.startswith("DATA ")]
    assert {r[1]: r[2:] for r in rows} == {
        name: [
            str(len(demo.names)),
            "[4,3]" if demo.task == "pose" else "-",
            str(datasets / name / ("val" if demo.task == "classify" else "images/val")),
        ]
        for name, demo in DEMOS.items()
    }
    for name, demo in DEMOS.items():
        line = (
            f"ultralytics-ema: generating the {name} dataset offline into {datasets / name} ({demo.n_train} train / "
            f"{demo.n_val} val synthetic {demo.imgsz} px images, no download)"
        )
        assert out.count(line) == 1, out
        pattern = "*/*.png" if demo.task == "classify" else "images/train/*.png"
        assert len(list((datasets / name / ("train" if demo.task == "classify" else "")).glob(pattern))) == demo.n_train
    assert "not found" not in out and "ownload" not in out.replace("no download", "")


# Code run in fresh interpreters: a comparable summary of one prediction, whatever the task.
SIGNATURE = """
import json, sys
import torch
from ultralytics import YOLO

def signature(r):
    if r.probs is not None:
        return [round(v, 4) for v in r.probs.data.tolist()]
    if r.semantic_mask is not None:
        return torch.bincount(r.semantic_mask.data.flatten().long(), minlength=8).tolist()
    if r.depth is not None:
        return [round(float(r.depth.data.mean()), 4), round(float(r.depth.data.std()), 4)]
    boxes = r.obb if r.obb is not None else r.boxes
    return sorted((round(v, 4) for v in boxes.conf.tolist()), reverse=True)[:3]
"""


def export_code(weights: Path, images: list[Path], task: str) -> str:
    """Reload ``weights``, predict, export TorchScript and dynamic ONNX; print ``RESULT <json>``."""
    return (
        SIGNATURE
        + f"""
from ultralytics.nn.tasks import SAFE_LOAD
images = {[str(p) for p in images]!r}
m = YOLO({str(weights)!r})
n_ema = {COUNT_EMA.format("m.model")}
preds = m.predict(images, imgsz=64, conf=0.01, verbose=False)
exports = [m.export(format="torchscript", imgsz=64), m.export(format="onnx", dynamic=True, imgsz=64, simplify=False)]
print("RESULT", json.dumps(dict(safe=SAFE_LOAD, task=m.task, ema=n_ema, exports=exports,
    outputs=[getattr(r, {OUTPUT[task]!r}) is not None for r in preds], pt=[signature(r) for r in preds])))
"""
    )


def plugin_off_code(jobs: list[tuple[str, list[str], list[str]]]) -> str:
    """For each (task, exports, images): predict with each export at imgsz 64, and with the ONNX file at imgsz 96 in
    a batch of two; print ``RESULT <json>``. Meant to run with the plugin's startup hook off."""
    return (
        SIGNATURE
        + f"""
assert "ultralytics_ema" not in sys.modules
out = []
for task, exports, images in {jobs!r}:
    found = [[signature(r) for r in YOLO(f, task=task).predict(images, imgsz=64, conf=0.01, verbose=False)]
             for f in exports]
    big = YOLO(exports[-1], task=task).predict(images[:2], imgsz=96, batch=2, conf=0.01, verbose=False)
    out.append(dict(found=found, big=[r.orig_shape == tuple(r.orig_img.shape[:2]) for r in big]))
print("RESULT", json.dumps(out), "ultralytics_ema" in sys.modules)
"""
    )


def run_exports_without_plugin(jobs: list[tuple[str, list[str], list[str]]], expected: list[list]) -> None:
    """Run :func:`plugin_off_code` in a fresh interpreter; each export predicts as the PyTorch model did."""
    out = result(assert_ok(python(plugin_off_code(jobs), env={"ULTRALYTICS_EMA_AUTOLOAD": "0"})))
    assert out[-1] == "False"  # the plugin never loaded
    for (task, *_), pt, got in zip(jobs, expected, json.loads(" ".join(out[:-1]))):
        assert got["big"] == [True, True], task  # dynamic ONNX: another image size, batch 2
        for found in got["found"]:  # TorchScript, then ONNX
            for a, b in zip(found, pt):  # a few pixels of a semantic mask may flip at class borders
                tolerance = 0.02 * sum(b) if task == "semantic" else 2e-3
                assert a == pytest.approx(b, rel=1e-2, abs=tolerance), (task, a, b)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict]:
    """Per task, once: a demo subset; ``yolo <task> train`` for 1 epoch with ``ULTRALYTICS_SAFE_LOAD=1`` (its final
    validation reloads best.pt by restricted unpickling); then in a fresh interpreter: reload, predict, export to
    TorchScript and dynamic ONNX."""
    done: dict[str, dict] = {}

    def get(task: str) -> dict:
        if task not in done:
            folder = tmp_path_factory.mktemp(task)
            sizes = {"n_train": 24, "n_val": 12} if task == "classify" else {"n_train": 16, "n_val": 8}
            data = make_demo_dataset(folder / "data", task=task, imgsz=64, **sizes)
            images = sorted((data if task == "classify" else data.parent / "images").glob("val/**/*.png"))[:4]
            args = (task, "train", f"model={E2E[task]}", f"data={data}", *TINY_TRAIN, f"project={folder}", "name=t")
            train = assert_ok(yolo(*args, env={"ULTRALYTICS_SAFE_LOAD": "1"}))
            best = folder / "t" / "weights" / "best.pt"
            out = assert_ok(python(export_code(best, images, task), cwd=folder))
            done[task] = dict(train=train, best=best, images=images, **json.loads(" ".join(result(out))))
        return done[task]

    return get


@pytest.mark.parametrize("task", list(E2E))
def test_task_train_val_predict_export(task: str, e2e: Callable[[str], dict]):
    run = e2e(task)
    best = run["best"]
    assert "ultralytics_ema.nn.ema.EMA" in run["train"]  # the model table lists the EMA layers
    assert f"Validating {best}..." in run["train"]  # best.pt reloaded (restricted) and validated
    with open(best.parents[1] / "results.csv") as f:
        row = next(csv.DictReader(f))
    value = float(row[METRIC[task]])
    assert math.isfinite(value) and 0 <= value <= 1
    yaml = YOLO(E2E[task]).model.yaml
    assert run["ema"] == len(generator.head_inputs(yaml["backbone"] + yaml["head"]))  # reloaded with its EMA layers
    assert run["safe"] is False and run["task"] == task
    assert run["outputs"] == [True] * 4  # the task's own result type for every predicted image
    assert [Path(p).suffix for p in run["exports"]] == [".torchscript", ".onnx"]


def test_exports_predict_as_pytorch_without_the_plugin(e2e: Callable[[str], dict]):
    """The TorchScript and dynamic ONNX files of every task predict as the checkpoint does, in a fresh interpreter
    without ultralytics-ema."""
    pytest.importorskip("onnxruntime")
    runs = [e2e(task) for task in E2E]
    jobs = [(task, run["exports"], [str(p) for p in run["images"]]) for task, run in zip(E2E, runs)]
    run_exports_without_plugin(jobs, [run["pt"] for run in runs])


@pytest.mark.skipif(not SLOW, reason="slow (~5 min): set ULTRALYTICS_EMA_SLOW=1 to export every family and task")
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_export_matrix(name: str, tmp_path: Path, tiny_data: Path):
    """Every packaged YAML at scale n: saved, reloaded with ``ULTRALYTICS_SAFE_LOAD=1``, exported to TorchScript and
    dynamic ONNX; the exports predict as PyTorch does in a fresh interpreter without the plugin."""
    weights = tmp_path / generator.scaled(name, "n").replace(".yaml", ".pt")
    model = YOLO(generator.scaled(name, "n"))
    model.save(weights)
    task, heads = model.task, sum(isinstance(m, EMA) for m in model.model.modules())
    images = sorted((tiny_data.parent / "images" / "val").glob("*.png"))[:2]
    code = export_code(weights, images, task)
    run = json.loads(" ".join(result(assert_ok(python(code, env={"ULTRALYTICS_SAFE_LOAD": "1"})))))
    assert run["safe"] is True and run["task"] == task and run["ema"] == heads
    assert run["outputs"] == [True, True]
    run_exports_without_plugin([(task, run["exports"], [str(p) for p in images])], [run["pt"]])
