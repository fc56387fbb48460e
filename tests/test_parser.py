"""Model parser: shipped YAMLs at every scale, user YAMLs, the layer registry, bad rows.

This file also runs against the oldest supported Ultralytics (tests/test_compat.py), so it only uses what every
supported release has.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import ultralytics_ema
from ultralytics_ema import CFG_DIR, EMA, LAYERS
from ultralytics_ema.plugin.patches import packaged

ultralytics_ema.apply()

import ultralytics  # noqa: E402
import ultralytics.nn.tasks as tasks  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, yaml_model_load  # noqa: E402

WIDTH = {"n": (0.25, 1024), "s": (0.50, 1024), "m": (1.00, 512), "l": (1.00, 512), "x": (1.50, 512)}
# The YOLO11 detection YAMLs, which every supported Ultralytics builds (tests/test_model_yamls.py checks the rest).
SHIPPED = ["yolo11-ema-backbone.yaml", "yolo11-ema.yaml"]
MODELS = {p.name: p for p in packaged("models")}


def expected_ema_channels(yaml_file: Path, scale: str) -> list[int]:
    """Channels each EMA row should get, from the YAML: the scaled output of the row it reads (independent math)."""
    d = yaml.safe_load(yaml_file.read_text())
    rows = d["backbone"] + d["head"]
    width, max_channels = WIDTH[scale]
    out = []
    for i, (f, _, m, _) in enumerate(rows):
        if m == "EMA":
            src = rows[i + f if f < 0 else f]
            out.append(int(-(-min(src[3][0], max_channels) * width // 8) * 8))  # make_divisible(.., 8)
    return out


def build(cfg: str | dict | Path, **kwargs) -> DetectionModel:
    """Build a detection model quietly."""
    return DetectionModel(cfg, verbose=False, **kwargs)


def test_shipped_yamls_are_packaged():
    assert {MODELS[name].relative_to(CFG_DIR / "models").as_posix() for name in SHIPPED} == {f"11/{n}" for n in SHIPPED}
    assert (CFG_DIR / "datasets" / "ema-demo.yaml").is_file()


@pytest.mark.parametrize("scale", list(WIDTH))
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_yaml_every_scale(name: str, scale: str):
    bare = name.replace("yolo11", f"yolo11{scale}")  # e.g. yolo11s-ema.yaml, resolved by bare name
    d = yaml_model_load(bare)
    assert d["scale"] == scale and Path(d["yaml_file"]).name == bare
    model = build(d)
    emas = [m for m in model.modules() if isinstance(m, EMA)]
    channels = expected_ema_channels(MODELS[name], scale)
    assert len(emas) == len(channels) >= 2
    assert [m.gn.num_channels * m.groups for m in emas] == channels
    assert all(m.groups == 32 for m in emas)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((i[0].shape, o.shape))) for m in emas]
    model.eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert [i[1] for i, _ in seen] == channels  # EMA input channels match the scaled from-layer
    assert all(i == o for i, o in seen)  # and EMA keeps the shape
    assert y[0].shape == (1, 84, 8 * 8 + 4 * 4 + 2 * 2)


@pytest.mark.parametrize("name", SHIPPED)
def test_ema_model_is_stock_plus_ema(name: str):
    """Every stock YOLO11n tensor has a same-shaped twin, in order; the only extra tensors are EMA's."""
    stock = build("yolo11n.yaml").state_dict()
    ours = build(name.replace("yolo11", "yolo11n")).state_dict()
    extra = [k for k in ours if ".gn." in k or ".conv1x1." in k or ".conv3x3." in k]
    rest = [(k.split(".", 2)[2], v.shape) for k, v in ours.items() if k not in extra]
    assert rest == [(k.split(".", 2)[2], v.shape) for k, v in stock.items()]
    assert len(extra) == 6 * len(expected_ema_channels(MODELS[name], "n"))


def test_stock_models_unchanged_by_patch():
    """The patched parser builds stock YAMLs exactly as the original parser does."""
    fresh = fresh_tasks()
    for cfg in ("yolo11n.yaml", "yolov8s.yaml"):
        d = yaml_model_load(cfg)
        torch.manual_seed(0)
        a = build(d).state_dict()
        torch.manual_seed(0)
        b = fresh.DetectionModel(yaml_model_load(cfg), verbose=False).state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


USER_YAML = """
nc: 3
backbone:
  - [-1, 1, Conv, [16, 3, 2]]  # 0
  - [-1, 1, Conv, [32, 3, 2]]  # 1
  - [-1, 1, EMA, []]           # 2 default factor 32
  - [-1, 1, Conv, [64, 3, 2]]  # 3
  - [1, 1, EMA, [8]]           # 4 reads layer 1 (32 channels)
head:
  - [[2, 4], 1, Concat, [1]]   # 5
  - [[2, 3], 1, Detect, [nc]]  # 6
"""


def test_user_yaml_from_any_path(tmp_path: Path):
    cfg = tmp_path / "sub dir" / "my-model.yaml"
    cfg.parent.mkdir()
    cfg.write_text(USER_YAML)
    model = build(str(cfg))
    emas = [m for m in model.model if isinstance(m, EMA)]
    assert [(m.gn.num_channels * m.groups, m.groups) for m in emas] == [(32, 32), (32, 8)]
    assert model.model[4].f == 1


@pytest.mark.parametrize(
    "row, message",
    [
        ("[[-1, 0], 1, EMA, []]", "EMA takes one input, so 'from' must be a single layer index"),
        ("[-1, 1, EMA, [8, 2]]", "do not fit EMA"),
        ("[-1, 1, EMA, [48]]", "valid factors for 32 channels: 1, 2, 4, 8, 16, 32"),
        ("[-1, 1, EMA, [0]]", "factor=0"),
    ],
)
def test_bad_ema_rows(row: str, message: str):
    d = yaml.safe_load(
        f"nc: 3\nbackbone:\n  - [-1, 1, Conv, [32, 3, 2]]\n  - {row}\nhead:\n  - [[1], 1, Detect, [nc]]\n"
    )
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        build(d)


class ChannelScale(nn.Module):
    """A same-channel layer: learnable per-channel scale."""

    def __init__(self, channels: int, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, channels, 1, 1), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_second_same_channel_layer_in_one_line():
    LAYERS.register("ChannelScale", ChannelScale)
    d = yaml.safe_load(USER_YAML.replace("[1, 1, EMA, [8]]", "[1, 1, ChannelScale, [0.5]]"))
    model = build(d)
    layer = model.model[4]
    assert isinstance(layer, ChannelScale) and layer.scale.shape == (1, 32, 1, 1)
    assert float(layer.scale.detach().mean()) == 0.5
    assert "ChannelScale" in LAYERS and tasks.ChannelScale is ChannelScale


def test_duplicate_registration_raises():
    with pytest.raises(
        ValueError, match=r"'EMA' is already registered: 'EMA' -> ultralytics_ema\.nn\.ema\.EMA .*registry\.py"
    ):
        LAYERS.register("EMA", ChannelScale)
    assert LAYERS["EMA"].cls is EMA and tasks.EMA is EMA
    LAYERS.register("EMA", EMA, force=True)  # forced replacement (here by the same class) is allowed
    assert LAYERS["EMA"].cls is EMA and tasks.EMA is EMA


def test_ultralytics_name_cannot_be_taken():
    with pytest.raises(
        ValueError, match=r"'Conv' is already taken in ultralytics\.nn\.tasks by ultralytics\.nn\.modules"
    ):
        LAYERS.register("Conv", ChannelScale)
    assert "Conv" not in LAYERS and tasks.Conv is not ChannelScale


def test_registry_rejects_non_modules():
    with pytest.raises(ValueError, match=r"must be a torch\.nn\.Module subclass"):
        LAYERS.register("NotALayer", int)
    with pytest.raises(ValueError, match="must be a Python identifier"):
        LAYERS.register("not a name", ChannelScale)


def fresh_tasks():
    """A separate, unpatched copy of ``ultralytics.nn.tasks`` (the import hook only watches the real name)."""
    spec = importlib.util.spec_from_file_location("ultralytics_tasks_copy", tasks.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snapshot(module) -> tuple:
    return module.parse_model.__code__, module.check_yaml, hasattr(module, "EMA"), vars(module).copy().keys()


def test_unsupported_version_changes_nothing(monkeypatch: pytest.MonkeyPatch):
    from ultralytics_ema.plugin.patches import UnsupportedUltralyticsError, patch_tasks

    copy = fresh_tasks()
    before = snapshot(copy)
    monkeypatch.setattr(ultralytics, "__version__", "9.1.0")
    with pytest.raises(UnsupportedUltralyticsError, match=r"ultralytics==9\.1\.0 is not supported; .*>=8\.3\.0,<8\.5"):
        patch_tasks(copy)
    assert snapshot(copy) == before


def test_unknown_parser_structure_changes_nothing():
    from ultralytics_ema.plugin.patches import UnsupportedUltralyticsError, patch_tasks

    copy = fresh_tasks()
    namespace = {}
    exec("def parse_model(d, ch, verbose=True):\n    return d\n", namespace)  # a parser without the layer loop
    copy.parse_model = namespace["parse_model"]
    before = snapshot(copy)
    with pytest.raises(
        UnsupportedUltralyticsError, match=r"supported: ultralytics>=8\.3\.0,<8\.5\): parse_model (has no|source)"
    ):
        patch_tasks(copy)
    assert snapshot(copy) == before


def test_patch_is_idempotent_and_thread_safe():
    from ultralytics_ema.plugin.patches import patch_tasks

    copy = fresh_tasks()
    errors = []

    def worker():
        try:
            patch_tasks(copy)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    code = copy.parse_model.__code__
    patch_tasks(copy)
    assert copy.parse_model.__code__ is code and copy.EMA is EMA
    assert code.co_filename == tasks.__file__  # tracebacks point at Ultralytics' file
    model = copy.DetectionModel(copy.yaml_model_load("yolo11n-ema.yaml"), verbose=False)
    assert sum(isinstance(m, EMA) for m in model.modules()) == 3


def test_ultralytics_version_is_supported_and_expected():
    """Runs on the newest release in this environment and on the oldest one via tests/test_compat.py."""
    from ultralytics.utils.checks import check_version

    from ultralytics_ema.plugin.patches import SUPPORTED_ULTRALYTICS

    assert check_version(ultralytics.__version__, SUPPORTED_ULTRALYTICS)
    expected = os.environ.get("ULTRALYTICS_EMA_EXPECT_VERSION")
    assert expected is None or ultralytics.__version__ == expected


def test_pyproject_declares_the_supported_range():
    import tomllib

    from ultralytics_ema.plugin.patches import SUPPORTED_ULTRALYTICS

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert f"ultralytics{SUPPORTED_ULTRALYTICS}" in pyproject["project"]["dependencies"]
