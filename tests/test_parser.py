"""Model parser: shipped YAMLs at every scale, user YAMLs, the layer registry, bad rows.

This file also runs against the oldest supported Ultralytics (tests/test_compat.py), so it only uses what every
supported release has.
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
from copy import deepcopy
from pathlib import Path

import pytest
import torch
import yaml
from conftest import stock_yaml, with_row
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
        ("[-1, 1, EMA, [8, 2, 1]]", "EMA rows take [], [factor], [c2] or [c2, factor], not 3 arguments"),
        ("[-1, 1, EMA, [8, 2]]", "in [c2, factor], c2=8 scales to 8 but must scale to 32 (c2=32 does)"),
        ("[-1, 1, EMA, [32, 3]]", "in [c2, factor], factor=3 must be a positive divisor of 32"),
        ("[-1, 1, EMA, [48]]", "valid factors for 32 channels: 1, 2, 4, 8, 16, 32"),
        ("[-1, 1, EMA, [0]]", "factor=0 must be a positive divisor of 32"),
        ("[-1, 1, EMA, [True]]", "c2=True is not a channel count; as the factor (channel groups), factor=True"),
    ],
)
def test_bad_ema_rows(row: str, message: str, tmp_path: Path):
    """Every error raised while parsing an EMA row names the YAML file and the row."""
    cfg = tmp_path / "bad-row.yaml"
    cfg.write_text(f"nc: 3\nbackbone:\n  - [-1, 1, Conv, [32, 3, 2]]\n  - {row}\nhead:\n  - [[1], 1, Detect, [nc]]\n")
    with pytest.raises(ValueError) as info:
        build(str(cfg))
    assert str(info.value).startswith(f"{cfg} row 1 {row}: ")
    assert message in str(info.value)


# The table of issue 12: stock YAMLs with one EMA row inserted -> (channels, factor) of the built layer. A YAML is
# (stock file, row the EMA follows, scale or how it is scaled without `scales:`).
YOLOV8_P3, YOLOV8_P5, YOLOV5_P4, RTDETR_PROJ = (
    ("yolov8.yaml", 15),
    ("yolov8.yaml", 8),
    ("yolov5.yaml", 6),
    ("rtdetr-l.yaml", 10),
)
TABLE = [
    (YOLOV8_P3, "n", [256], (64, 32)),
    (YOLOV8_P3, "s", [256], (128, 32)),
    (YOLOV8_P3, "l", [256], (256, 32)),
    (YOLOV8_P3, "x", [256], (320, 32)),
    (YOLOV8_P3, "n", [256, 8], (64, 8)),
    (YOLOV8_P3, "l", [256, 8], (256, 8)),
    (YOLOV8_P3, "n", [8], (64, 8)),
    (YOLOV8_P3, "n", [], (64, 32)),
    (YOLOV8_P5, "n", [1024], (256, 32)),
    (YOLOV8_P5, "m", [1024], (576, 32)),
    (YOLOV8_P5, "l", [1024], (512, 32)),
    (YOLOV5_P4, "s", [512], (256, 32)),
    (YOLOV5_P4, "l", [512], (512, 32)),
    (RTDETR_PROJ, "", [256], (256, 32)),
    (YOLOV8_P3, "width_multiple 0.25", [256], (64, 32)),
    (YOLOV8_P3, "unscaled", [256], (256, 32)),
]


def ema_yaml(folder: Path, where: tuple[str, int], scale: str, args: list) -> Path:
    """Write the stock YAML ``where[0]`` with ``[-1, 1, EMA, args]`` after row ``where[1]``, at ``scale``."""
    name, after = where
    d = with_row(stock_yaml(name), after, [-1, 1, "EMA", args])
    stem = name.removesuffix(".yaml")
    if scale in ("width_multiple 0.25", "unscaled"):  # YAMLs without scales: (as older YOLOv5/v8 YAMLs were written)
        del d["scales"]
        if scale != "unscaled":
            d.update(depth_multiple=0.33, width_multiple=0.25)
        scale = ""
    cfg = folder / f"{stem}{scale}-ema-{'-'.join(map(str, args)) or 'default'}.yaml"  # e.g. yolov8n-ema-256.yaml
    cfg.write_text(yaml.safe_dump(d, sort_keys=False))
    return cfg


def built_emas(cfg: Path) -> list[tuple[int, int]]:
    """(channels, factor) of the EMA layers that Ultralytics' parser builds from ``cfg``."""
    layers, _ = tasks.parse_model(yaml_model_load(str(cfg)), ch=3, verbose=False)
    return [(m.gn.num_channels * m.groups, m.groups) for m in layers.modules() if isinstance(m, EMA)]


@pytest.mark.parametrize(
    "where, scale, args, expected", TABLE, ids=[f"{w[0][:-5]}-{s or 'l'}-row{w[1] + 1}-{a}" for w, s, a, _ in TABLE]
)
def test_official_and_fork_rows_build_as_the_fork_builds(
    where: tuple, scale: str, args: list, expected: tuple, tmp_path: Path, log: list[str]
):
    assert built_emas(ema_yaml(tmp_path, where, scale, args)) == [expected]
    assert not [line for line in log if "ultralytics-ema" in line]  # no reading in doubt, nothing to warn about


def test_row_that_fits_no_reading(tmp_path: Path):
    cfg = ema_yaml(tmp_path, YOLOV8_P3, "n", [48])
    with pytest.raises(ValueError) as info:
        built_emas(cfg)
    assert str(info.value) == (
        f"{cfg} row 16 [-1, 1, EMA, [48]]: the input (layer 15) has 64 channels at scale n (width 0.25, "
        "max_channels 1024), and 48 fits neither reading of a single EMA argument: as c2 (nominal output channels, "
        "the official code's convention), c2=48 scales to 16 but must scale to 64 (c2=256 does); as the factor "
        "(channel groups), factor=48 must be a positive divisor of 64; valid factors for 64 channels: 1, 2, 4, 8, "
        "16, 32, 64"
    )


@pytest.mark.parametrize(
    "scale, args, message",
    [
        ("n", [1024, 8], "in [c2, factor], c2=1024 scales to 256 but must scale to 64 (c2=256 does), as the input"),
        ("l", [1024], "c2=1024 scales to 512 but must scale to 256 (c2=256 does)"),  # 1024 is no divisor of 256
        (
            "unscaled",
            [128, 8],
            "c2=128 scales to 128 but must scale to 256 (c2=256 does), as the input (layer 15) "
            "has 256 channels at width 1 (no scaling)",
        ),
    ],
)
def test_c2_that_scales_to_other_channels(scale: str, args: list, message: str, tmp_path: Path):
    cfg = ema_yaml(tmp_path, YOLOV8_P3, scale, args)
    with pytest.raises(ValueError, match=r"^" + re.escape(f"{cfg} row 16 [-1, 1, EMA, {args}]: ")) as info:
        built_emas(cfg)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "scale, args, expected, warning",
    [
        # both readings fit: c2 wins (the factor reading would leave one channel per group)
        ("l", [256], (256, 32), None),
        ("unscaled", [256], (256, 32), None),
        # only the factor reading fits, with one channel per group, or above 32: built, with a warning
        ("n", [64], (64, 64), "factor 64 leaves one channel per group, as the input (layer 15) has 64 channels"),
        (
            "l",
            [128],
            (256, 128),
            "[128] is read as the factor, 128 groups of 2 channels, as the input (layer 15) "
            "has 256 channels at scale l (width 1, max_channels 512); read as c2 (nominal output channels, the "
            "official code's convention) it would scale to 128, not 256",
        ),
        ("n", [256, 64], (64, 64), "factor 64 leaves one channel per group"),
    ],
)
def test_readings_in_doubt(
    scale: str, args: list, expected: tuple, warning: str | None, tmp_path: Path, log: list[str]
):
    cfg = ema_yaml(tmp_path, YOLOV8_P3, scale, args)
    assert built_emas(cfg) == [expected]
    warned = [line for line in log if "ultralytics-ema" in line]
    if warning is None:
        assert warned == []
    else:
        assert len(warned) == 1 and warned[0].startswith(f"WARNING ultralytics-ema: {cfg} row 16 ")
        assert warning in warned[0]


def test_c2_reading_needs_a_factor_when_32_groups_do_not_fit():
    d = yaml.safe_load(USER_YAML.replace("[-1, 1, Conv, [32, 3, 2]]", "[-1, 1, Conv, [48, 3, 2]]"))
    d["backbone"][2] = [-1, 1, "EMA", [48]]  # scales to the input's 48 channels, so it is c2; 32 does not divide 48
    with pytest.raises(ValueError) as info:
        build(deepcopy(d))
    assert str(info.value) == (
        "model YAML row 2 [-1, 1, EMA, [48]]: [48] is c2 (it scales to the input's channels: the input (layer 1) has "
        "48 channels at width 1 (no scaling)), but the default factor 32 does not divide 48: write [48, factor]; "
        "valid factors for 48 channels: 1, 2, 3, 4, 6, 8, 12, 16, 24, 48"
    )
    d["backbone"][2] = [-1, 1, "EMA", [48, 16]]
    layer = build(d).model[2]
    assert (layer.gn.num_channels * layer.groups, layer.groups) == (48, 16)


def test_yaml_dict_without_file_names_the_row():
    d = yaml.safe_load(USER_YAML.replace("[1, 1, EMA, [8]]", "[1, 1, EMA, [5]]"))
    with pytest.raises(ValueError, match=r"^model YAML row 4 \[1, 1, EMA, \[5\]\]: the input \(layer 1\) has 32 "):
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


PARSER_WITHOUT_WIDTH = """
def parse_model(d, ch, verbose=True):
    max_channels = float("inf")
    ch = [ch]
    for i, (f, n, m, args) in enumerate(d["backbone"] + d["head"]):
        if m == "Conv":
            c2 = args[0]
        elif m == "Concat":
            c2 = sum(ch[x] for x in f)
        else:
            c2 = ch[f]
        ch.append(c2)
"""


def test_parser_without_the_scaling_locals_changes_nothing(tmp_path: Path):
    """The branch reads parse_model's locals d, width and max_channels: a parser without one is not patched."""
    from ultralytics_ema.plugin.patches import UnsupportedUltralyticsError, patch_tasks

    (tmp_path / "parser_without_width.py").write_text(PARSER_WITHOUT_WIDTH)
    spec = importlib.util.spec_from_file_location("parser_without_width", tmp_path / "parser_without_width.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    copy = fresh_tasks()
    copy.parse_model = module.parse_model
    before = snapshot(copy)
    with pytest.raises(UnsupportedUltralyticsError, match=r"parse_model has no local 'width' before its layer loop"):
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
