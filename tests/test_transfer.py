"""Fine-tuning: every tensor of a stock checkpoint reaches its layer in the EMA model, for every task and family;
the log line counts what Ultralytics' own "Transferred X/Y" line counts and names the true reason for misfits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, assert_ok, yolo

import ultralytics_ema
from ultralytics_ema import EMA
from ultralytics_ema.plugin.transfer import _shape_reason, align_layers

ultralytics_ema.apply()

from ultralytics import YOLO  # noqa: E402

SHIPPED = ["yolo11-ema-backbone.yaml", "yolo11-ema.yaml"]  # every other task and family: tests/test_tasks.py
ALL = "ultralytics-ema: transferred all {n} checkpoint tensors; {ema} new EMA attention tensors start fresh"
STOCK = ["yolo11n", "yolo11s", "yolo11n-cls"]  # "pretrained" checkpoints made here from Ultralytics' YAMLs


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stock "pretrained" checkpoints made here: Ultralytics' YAMLs built with random weights and saved."""
    folder = tmp_path_factory.mktemp("stock")
    out = {}
    for name in STOCK:
        torch.manual_seed(1)
        out[name] = folder / f"{name}.pt"
        YOLO(f"{name}.yaml").save(out[name])
    return out


def counts(log: list[str]) -> tuple[int, int, str]:
    """Ultralytics' ``Transferred X/Y`` numbers and the plugin's one line."""
    (ours,) = [x for x in log if "ultralytics-ema: " in x]
    (line,) = [s for s in log if s.startswith("Transferred ")]
    x, y = re.fullmatch(r"Transferred (\d+)/(\d+) items from pretrained weights", line).groups()
    return int(x), int(y), ours


def assert_aligned_copy(src: torch.nn.Module, dst: torch.nn.Module) -> int:
    """Every layer of ``src`` has a place in ``dst`` and every tensor arrived unchanged; return the tensor count."""
    mapping = align_layers(dst.model, src.model)
    assert sorted(mapping) == list(range(len(src.model)))  # every stock layer has a place
    n = 0
    for i, j in mapping.items():
        a_sd, b_sd = src.model[i].state_dict(), dst.model[j].state_dict()
        assert list(a_sd) == list(b_sd), f"layer {i}->{j}"
        for k, a in a_sd.items():
            assert torch.equal(a, b_sd[k]), f"layer {i}->{j} {k}"
            n += 1
    assert n == len(src.state_dict())
    return n


@pytest.mark.parametrize("scale", ["n", "s"])
@pytest.mark.parametrize("name", SHIPPED)
def test_full_transfer_of_stock_weights(name: str, scale: str, stock: dict[str, Path], log: list[str]):
    src = YOLO(stock[f"yolo11{scale}"]).model
    model = YOLO(name.replace("yolo11", f"yolo11{scale}"))
    own = (".gn.", ".conv1x1.", ".conv3x3.")
    fresh_ema = {k: v.clone() for k, v in model.model.state_dict().items() if any(s in k for s in own)}
    model.load(stock[f"yolo11{scale}"])
    n_src = assert_aligned_copy(src, model.model)
    emas = [j for j, m in enumerate(model.model.model) if isinstance(m, EMA)]
    for k, v in fresh_ema.items():  # EMA's own tensors keep their initialisation
        assert torch.equal(model.model.state_dict()[k], v)
    x, y, ours = counts(log)
    assert ours == ALL.format(n=n_src, ema=6 * len(emas))
    assert (x, y) == (n_src, n_src + 6 * len(emas))


def test_stock_ultralytics_would_shift_layers(stock: dict[str, Path]):
    """Without alignment, names shift after the first EMA row: most of the network would not load."""
    src = YOLO(stock["yolo11n"]).model.state_dict()
    dst = YOLO("yolo11n-ema-backbone.yaml").model.state_dict()
    same = [k for k, v in src.items() if k in dst and dst[k].shape == v.shape]
    assert len(same) < len(src) // 2


@pytest.mark.parametrize(
    "model_name, ckpt, kwargs, expected",
    [
        # another scale: the first conv is filled channel-wise by Ultralytics (counted, as it counts it)
        (
            "yolo11n-ema.yaml",
            "yolo11s",
            {},
            (119, 517, "380 of another width (scale s vs n) [Conv 0, Conv 1, C3k2 2, Conv 3, ...]"),
        ),
        ("yolo11n-ema.yaml", "yolo11n", {"nc": 3}, (493, 517, "6 class outputs (class count 80 vs 3) [Detect 23]")),
        ("yolo11n-ema.yaml", "yolo11n", {"nc": 1}, (493, 517, "6 class outputs (class count 80 vs 1) [Detect 23]")),
        (
            "yolo11n-ema.yaml",
            "yolo11n-cls",
            {},
            (228, 517, "8 in checkpoint layers this model lacks (task classify vs detect) [Classify 10]"),
        ),
    ],
)
def test_misfits_are_counted_and_explained(model_name, ckpt, kwargs, expected, stock, log):
    model = YOLO(model_name)
    if kwargs:
        model.model = type(model.model)(model.model.yaml, verbose=False, **kwargs)
    model.load(stock[ckpt])
    x, y, ours = counts(log)
    total = len(torch.load(stock[ckpt], weights_only=False)["model"].state_dict())
    assert (x, y) == expected[:2]
    assert ours.startswith(
        f"WARNING ultralytics-ema: transferred {x}/{total} checkpoint tensors; {total - x} do not fit: "
    )
    assert f"do not fit: {expected[2]};" in ours and "18 new EMA attention tensors start fresh" in ours


def test_grayscale_model_counts_the_first_conv_fill(stock: dict[str, Path], log: list[str]):
    """A 1-channel model: Ultralytics fills the first conv from the RGB filters; that counts as transferred."""
    model = YOLO("yolo11n-ema.yaml")
    model.model = type(model.model)(model.model.yaml, ch=1, verbose=False)
    model.load(stock["yolo11n"])
    src = YOLO(stock["yolo11n"]).model.state_dict()["model.0.conv.weight"]
    assert torch.equal(model.model.state_dict()["model.0.conv.weight"], src.sum(1, keepdim=True))
    x, y, ours = counts(log)
    assert (x, y) == (499, 517)
    assert ours == ALL.format(n=499, ema=18)


def test_class_remap_by_name_is_counted(stock: dict[str, Path], log: list[str], tmp_path: Path):
    named = YOLO("yolo11n.yaml")
    named.model.names = {i: f"class{i}" for i in range(80)}
    named.save(tmp_path / "named.pt")
    model = YOLO("yolo11n-ema.yaml")
    model.model = type(model.model)(model.model.yaml, nc=3, verbose=False)
    model.model.names = {0: "class5", 1: "class2", 2: "something else"}
    model.load(tmp_path / "named.pt")
    assert "Remapped 2/3 cls head rows from pretrained weights by class name" in log
    x, y, ours = counts(log)
    assert (x, y) == (499, 517)
    assert ours == ALL.format(n=499, ema=18)


def test_stock_model_from_ema_checkpoint(log: list[str], tmp_path: Path):
    """The plugin engages when only the checkpoint holds EMA: stock layers get their weights, EMA's are reported."""
    YOLO("yolo11n-ema.yaml").save(tmp_path / "ema.pt")
    model = YOLO("yolo11n.yaml")
    model.load(tmp_path / "ema.pt")
    x, y, ours = counts(log)
    assert (x, y) == (499, 499)
    assert ours == (
        "WARNING ultralytics-ema: transferred 499/517 checkpoint tensors; 18 do not fit: "
        "18 in checkpoint layers this model lacks [EMA 17, EMA 21, EMA 25]"
    )


def test_other_task_head_reports_its_new_tensors(stock: dict[str, Path], log: list[str], tmp_path: Path):
    """A detect checkpoint into a segment EMA model: Detect's tensors reach Segment (its subclass), as without EMA."""
    model = YOLO("yolo11n-seg-ema.yaml")
    model.load(stock["yolo11n"])
    x, y, ours = counts(log)
    assert (x, y) == (499, 579)
    assert ours == (
        "ultralytics-ema: transferred all 499 checkpoint tensors; 18 new EMA attention tensors start fresh; "
        "62 model tensors have no checkpoint counterpart [Segment 26]"
    )


def test_shape_reasons():
    """The reasons of a misfit, also the input channels of a first conv Ultralytics does not fill (before 8.4)."""
    conv = "model.0.conv.weight"
    assert _shape_reason(conv, torch.Size([16, 3, 3, 3]), torch.Size([16, 1, 3, 3]), (80, 80), ("n", "n")) == (
        "of the first conv (input channels 3 vs 1)"
    )
    head = "model.23.cv3.0.2.weight"
    assert _shape_reason(head, torch.Size([80, 64, 1, 1]), torch.Size([3, 64, 1, 1]), (80, 3), ("n", "n")) == (
        "class outputs (class count 80 vs 3)"
    )
    assert _shape_reason(head, torch.Size([80, 128, 1, 1]), torch.Size([3, 64, 1, 1]), (80, 3), ("s", "n")) == (
        "of another width (scale s vs n)"
    )
    assert _shape_reason(head, torch.Size([4]), torch.Size([5]), (80, 80), (None, "n")) == "of another shape"


def test_align_layers_matches_subclass_heads_in_gaps():
    from ultralytics.nn.modules import Conv, Detect, Segment

    src = torch.nn.Sequential(Conv(3, 8), Conv(8, 8), Detect(80, ch=(8,)))
    dst = torch.nn.Sequential(Conv(3, 8), Conv(8, 8), EMA(8, 4), Segment(80, 32, 16, ch=(8,)))
    assert align_layers(dst, src) == {0: 0, 1: 1, 2: 3}


def test_train_cli_pretrained(stock: dict[str, Path], tiny_data: Path, tmp_path: Path):
    out = assert_ok(
        yolo(
            "train",
            "model=yolo11n-ema.yaml",
            f"pretrained={stock['yolo11n']}",
            f"data={tiny_data}",
            *TINY_TRAIN,
            "val=False",
            f"project={tmp_path}",
            "name=ft",
            cwd=tmp_path,
        )
    )
    assert "Transferred 493/517 items from pretrained weights" in out
    assert (
        "ultralytics-ema: transferred 493/499 checkpoint tensors; 6 do not fit: 6 class outputs (class count 80 vs 3)"
        in out
    )
