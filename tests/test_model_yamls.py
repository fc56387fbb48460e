"""The packaged model YAMLs of every task and family (cfg/models/{11,26,v8}): generated, resolvable by bare name, and
at every scale the stock model plus EMA layers of the expected channels, with the summaries they state."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import script_module

import ultralytics_ema
from ultralytics_ema import CFG_DIR, EMA
from ultralytics_ema.plugin.patches import packaged

ultralytics_ema.apply()

import ultralytics  # noqa: E402
from ultralytics.nn.tasks import guess_model_task, parse_model, yaml_model_load  # noqa: E402

generator = script_module("make_model_yamls")

STOCK = Path(ultralytics.__file__).parent / "cfg" / "models"
VARIANTS = {v.name: v for v in generator.VARIANTS}
TASK = {"": "detect", "seg": "segment", "pose": "pose", "obb": "obb", "cls": "classify", "sem": "semantic"}
TASK["depth"] = "depth"
EMA_TENSORS = (".gn.", ".conv1x1.", ".conv3x3.")


def build(d: dict) -> torch.nn.Sequential:
    """The layers of a model YAML dict, on the meta device (shapes and counts only, no memory, no init cost)."""
    with torch.device("meta"):
        return parse_model(copy.deepcopy(d), ch=3, verbose=False)[0]


def expected_channels(stock: dict, after: tuple[int, ...], scale: str) -> list[int]:
    """Channels EMA should get after each of the stock rows ``after`` (default: the rows the head reads), from the
    stock YAML alone: the row's first argument, capped at max_channels, times the width, rounded up to 8."""
    rows = stock["backbone"] + stock["head"]
    if not after:
        f = rows[-1][0]
        after = tuple(len(rows) - 1 + x if x < 0 else x for x in (f if isinstance(f, list) else [f]))
    _, width, max_channels = stock["scales"][scale]
    return [math.ceil(min(rows[i][3][0], max_channels) * width / 8) * 8 for i in sorted(after)]


def test_committed_yamls_are_the_generators_output():
    """cfg/models holds exactly what scripts/make_model_yamls.py writes (the committed summaries kept)."""
    assert generator.main(["--check"]) == 0
    committed = {p.relative_to(CFG_DIR / "models").as_posix() for p in packaged("models")}
    assert committed == {v.path.relative_to(generator.OUT_DIR).as_posix() for v in VARIANTS.values()}
    assert len({Path(p).name for p in committed}) == len(committed)  # bare names are unique across folders


def test_generator_output_changes_with_the_stock_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The check compares against the installed stock YAML: a changed stock row shows up in the output."""
    variant = VARIANTS["yolo26-seg-ema.yaml"]
    (tmp_path / "26").mkdir()
    text = (STOCK / variant.stock).read_text()
    (tmp_path / variant.stock).write_text(text.replace("[-1, 2, C3k2, [512, True]] # 13", "[-1, 3, C3k2, [512, True]]"))
    summaries = generator.committed_summaries(variant.path)
    assert generator.render(variant, summaries) == variant.path.read_text()
    monkeypatch.setattr(generator, "stock_dir", lambda: tmp_path)
    changed = generator.render(variant, summaries)
    assert "[-1, 3, C3k2, [512, True]] # 13\n" in changed and changed != variant.path.read_text()


@pytest.mark.parametrize("scale", "nslmx")
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_yaml_every_scale(name: str, scale: str):
    variant = VARIANTS[name]
    stock = yaml.safe_load((STOCK / variant.stock).read_text())
    stock["scale"] = scale
    bare = generator.scaled(name, scale)
    d = yaml_model_load(bare)  # resolved by bare name, from its family's folder
    assert d["scale"] == scale and Path(d["yaml_file"]).name == bare
    task = TASK[re.sub(r"^yolov?\d+-?|-?ema(-backbone)?\.yaml$", "", name)]
    assert guess_model_task(d) == guess_model_task(stock) == task

    ours, theirs = build(d), build(stock)
    emas = [m for m in ours if isinstance(m, EMA)]
    assert [m.gn.num_channels * m.groups for m in emas] == expected_channels(stock, variant.after, scale)
    assert all(m.groups == generator.FACTOR for m in emas)
    # Every stock tensor has a same-shaped twin, in order; the only other tensors are EMA's own.
    sd = ours.state_dict()
    rest = [(k.split(".", 1)[1], v.shape) for k, v in sd.items() if not any(s in k for s in EMA_TENSORS)]
    assert rest == [(k.split(".", 1)[1], v.shape) for k, v in theirs.state_dict().items()]
    assert len(sd) - len(rest) == 6 * len(emas)
    # The summary the YAML states for this scale (GFLOPs: tests/test_tasks.py, on real tensors).
    summary = generator.committed_summaries(variant.path)[scale]
    layers = sum(1 for m in ours.modules() if not m._modules)
    params = sum(p.numel() for p in ours.parameters())
    grads = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    numbers = [int(x.replace(",", "")) for x in re.findall(r"([\d,]+) (?:layers|parameters|gradients)", summary)]
    assert numbers == [layers, params, grads]


def test_bare_names_search_the_family_folders():
    """Bare-name lookup searches subfolders; a name that is not packaged falls through to Ultralytics."""
    from ultralytics.nn.tasks import check_yaml

    assert Path(check_yaml("yolov8-pose-ema.yaml")) == CFG_DIR / "models" / "v8" / "yolov8-pose-ema.yaml"
    assert Path(check_yaml("yolo26-pose.yaml")).parent.parent == STOCK  # stock names resolve as before
    with pytest.raises(FileNotFoundError, match=r"yolo26-nope-ema\.yaml"):
        check_yaml("yolo26-nope-ema.yaml")


def test_summary_gflops():
    """The summaries' GFLOPs are Ultralytics' own count, at imgsz 640 (checked on the default model: thop is slow)."""
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    model = YOLO("yolo26n-ema.yaml").model
    summary = generator.committed_summaries(VARIANTS["yolo26-ema.yaml"].path)["n"]
    assert summary.endswith(f", {get_flops(model, 640):.1f} GFLOPs")
