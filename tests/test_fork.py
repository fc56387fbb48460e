"""From a fork to the plugin: the official class's call, and fork checkpoints that train on (issue 12).

A fork checkpoint is made here as a fork makes it: the official EMA class (``EMA(channels, c2=None, factor=32)``,
``c2`` unused) importable as ``ultralytics.nn.attention.EMA_attention.EMA``, a parser branch that passes a row's
arguments after the input channels (``EMA(c1, *args)``, as forks edit ``tasks.py``), fork-style rows ``[256]`` and
``[512, 16]``, and a real training run that is cut off after its first epoch (its ``last.pt`` can resume) and whose
weights are finalised as a finished run's are. Fresh processes with only this package then reload, validate,
predict, train further, resume and fine-tune from them.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_TRAIN, assert_ok, result, run, stock_yaml, with_row, yolo

from ultralytics_ema import EMA, ReferenceEMA


@pytest.mark.parametrize(
    "call, groups",
    [
        ("EMA(256, 256, 16)", 16),  # the official class's positional call
        ("EMA(channels=256, c2=256, factor=16)", 16),
        ("EMA(256, c2=256)", 32),
        ("EMA(256, None, 8)", 8),
        ("EMA(256)", 32),
        ("EMA(256, factor=8)", 8),
        ("EMA(256, 8)", 8),  # two positional arguments, the second not the channels: the factor (as before)
        ("EMA(256, 256)", 32),  # ... equal to the channels: c2, as in the official class
        ("EMA(32, 32)", 32),
    ],
)
def test_official_call(call: str, groups: int):
    """Code written against the official class builds the same layer (the step-by-step one takes the same call)."""
    layer, ref = eval(call, {"EMA": EMA}), eval(call, {"EMA": ReferenceEMA})
    assert layer.groups == ref.groups == groups and type(layer.groups) is int
    torch.nn.init.normal_(layer.gn.bias)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, layer.gn.num_channels * groups, 5, 4)
    with torch.no_grad():
        assert (layer(x) - ref(x)).abs().max() < 1e-5


@pytest.mark.parametrize(
    "call, message",
    [
        ("EMA(256, 128, 16)", "EMA(channels=256, c2=128, factor=16): c2 must equal channels or be None"),
        ("EMA(256, 128, 32)", "EMA(channels=256, c2=128, factor=32): c2 must equal channels or be None"),
        ("EMA(256, c2=128, factor=8)", "c2 must equal channels or be None"),
        ("EMA(256, 256, 48)", "EMA(channels=256, factor=48): factor must be a positive divisor of channels"),
        (
            "EMA(256, 48)",
            "valid factors for 256 channels: 1, 2, 4, 8, 16, 32, 64, 128, 256; a second argument other "
            "than channels is the factor (for c2 write EMA(256, 256))",
        ),
    ],
)
def test_official_call_errors(call: str, message: str):
    with pytest.raises(ValueError) as info:
        eval(call, {"EMA": EMA})
    assert message in str(info.value)


# The fork: its EMA class and its parser branch, then a training run of 2 epochs cut off after the first.
FORK_RUN = """
import json, os, sys, types
import yaml
import ultralytics_ema
from ultralytics_ema import LAYERS
from ultralytics_ema.nn.reference import ReferenceEMA

pkg = types.ModuleType("ultralytics.nn.attention"); pkg.__path__ = []
mod = types.ModuleType("ultralytics.nn.attention.EMA_attention")

class EMA(ReferenceEMA):  # the official class: softmax, agp, pool_h, pool_w, gn, conv1x1, conv3x3; c2 is unused
    def __init__(self, channels, c2=None, factor=32):
        super().__init__(channels, factor=factor)

EMA.__module__ = mod.__name__
mod.EMA = EMA
sys.modules[pkg.__name__], sys.modules[mod.__name__] = pkg, mod
LAYERS.register("EMA", EMA, lambda c1, args: (c1, [c1, *args]), force=True)  # the fork's tasks.py: EMA(c1, *args)

from ultralytics import YOLO
from ultralytics.utils.torch_utils import strip_optimizer

def cut_off(trainer):
    if trainer.epoch == 0:  # last.pt of an interrupted run; fork.pt: the weights as a finished run leaves them
        strip_optimizer(trainer.last, str(trainer.wdir / "fork.pt"))
        emas = [[m.gn.num_channels * m.groups, m.groups] for m in trainer.model.modules() if isinstance(m, EMA)]
        print("RESULT", json.dumps(emas, separators=(",", ":")), flush=True)
        os._exit(0)

model = YOLO(sys.argv[1])
model.add_callback("on_model_save", cut_off)
model.train(**{k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in sys.argv[2:])})
"""

# A fresh process with only the plugin: reload, validate, predict, train one more epoch.
CONTINUE = """
import json, sys
from ultralytics import YOLO

fork_pt, data, project, image = sys.argv[1:5]
model = YOLO(fork_pt)
emas = [(type(m).__module__, m.gn.num_channels * m.groups, m.groups) for m in model.model.modules()
        if type(m).__name__ == "EMA"]
metrics = model.val(data=data, imgsz=64, batch=8, workers=0, plots=False, project=project, name="val")
boxes = model.predict(image, imgsz=64, conf=0.0, verbose=False)[0].boxes
model.train(data=data, epochs=1, imgsz=64, batch=16, workers=0, plots=False, project=project, name="further")
print("RESULT", json.dumps([emas, len(boxes), float(metrics.box.map50)], separators=(",", ":")), flush=True)
"""


def transferred(out: str) -> list[tuple[int, int]]:
    """The ``Transferred X/Y items`` counts Ultralytics logged."""
    return [(int(a), int(b)) for a, b in re.findall(r"Transferred (\d+)/(\d+) items", out)]


@pytest.fixture(scope="module")
def fork_run(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> dict:
    """A fork's interrupted run (``last.pt``, epoch 1 of 2) and its weights as a finished run leaves them."""
    folder = tmp_path_factory.mktemp("fork")
    d = with_row(stock_yaml("yolov8.yaml"), 15, [-1, 1, "EMA", [256]])  # after C2f [256] (P3): 64 channels at n
    d = with_row(d, 19, [-1, 1, "EMA", [512, 16]])  # after C2f [512] (P4): 128 channels at n, 16 groups
    cfg = folder / "yolov8n-ema-fork.yaml"
    cfg.write_text(yaml.safe_dump(d, sort_keys=False))
    script = folder / "fork_run.py"
    script.write_text(FORK_RUN)
    args = [f"data={tiny_data}", *TINY_TRAIN, "epochs=2", f"project={folder}", "name=run"]
    out = assert_ok(run([sys.executable, str(script), str(cfg), *args], cwd=folder))
    weights = folder / "run" / "weights"
    for name in ("last.pt", "fork.pt"):
        assert b"ultralytics.nn.attention.EMA_attention" in (weights / name).read_bytes()
    emas = json.loads(result(out)[0])
    assert emas == [[64, 32], [128, 16]]  # what the fork built: its class ignores c2
    return {"cfg": cfg, "emas": emas, "weights": weights, "folder": folder}


def test_fork_checkpoint_reloads_validates_predicts_and_trains_further(fork_run: dict, tiny_data: Path):
    image = next((tiny_data.parent / "images" / "val").glob("*.png"))
    project = fork_run["folder"] / "continue"
    args = [str(fork_run["weights"] / "fork.pt"), str(tiny_data), str(project), str(image)]
    out = assert_ok(run([sys.executable, "-c", CONTINUE, *args], cwd=fork_run["folder"]))
    emas, n_boxes, map50 = json.loads(result(out)[0])
    assert emas == [["ultralytics_ema.nn.ema", *e] for e in fork_run["emas"]]  # the fork's layers, as this package's
    assert n_boxes > 0 and 0 <= map50 <= 1
    (x, y), *more = transferred(out)  # YOLO("fork.pt").train(...): the fork-style rows rebuild the same model
    assert x == y > 300 and not more
    assert b"ultralytics_ema.nn.ema" in (project / "further" / "weights" / "last.pt").read_bytes()


def test_fork_run_resumes(fork_run: dict):
    last = fork_run["weights"] / "last.pt"
    out = assert_ok(yolo("train", "resume", f"model={last}", cwd=fork_run["folder"]))
    assert "Resuming training" in out and "from epoch 2 to 2 total epochs" in out
    (x, y), *more = transferred(out)
    assert x == y > 300 and not more
    epochs = (fork_run["weights"].parent / "results.csv").read_text().splitlines()[1:]
    assert [line.split(",")[0].strip() for line in epochs] == ["1", "2"]


def test_fork_weights_fine_tune(fork_run: dict, tiny_data: Path):
    project = fork_run["folder"] / "finetune"
    out = assert_ok(
        yolo(
            "train",
            f"model={fork_run['cfg']}",
            f"pretrained={fork_run['weights'] / 'fork.pt'}",
            f"data={tiny_data}",
            *TINY_TRAIN,
            f"project={project}",
            "name=train",
            cwd=fork_run["folder"],
        )
    )
    (x, y), *more = transferred(out)
    assert x == y > 300 and not more
    assert (project / "train" / "weights" / "best.pt").is_file()
