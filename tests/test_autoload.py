"""Registration without an import line: the startup hook, its opt-out, and failures that must not break Python."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_ok, python, result

CHECK = "import ultralytics.nn.tasks as t; print('RESULT', 'EMA' in vars(t), hasattr(t, '_ultralytics_ema_layers'))"


def test_fresh_interpreter_is_registered_without_import_line():
    out = assert_ok(python(CHECK))
    assert out.split()[-2:] == ["True", "True"]


def test_alias_modules_of_the_fork_recipe():
    code = (
        "from ultralytics.nn.attention import EMA as A\n"
        "from ultralytics.nn.attention.EMA_attention import EMA as B\n"
        "import ultralytics_ema\n"
        "print('RESULT', A is B is ultralytics_ema.EMA)"
    )
    assert result(assert_ok(python(code)))[-1] == "True"


def test_startup_does_not_import_torch():
    code = "import sys; print('RESULT', 'ultralytics_ema' in sys.modules, 'torch' in sys.modules)"
    assert result(assert_ok(python(code))) == ["True", "False"]


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_opt_out_variable(value: str):
    code = "import sys; loaded = 'ultralytics_ema' in sys.modules; " + CHECK.replace("'RESULT',", "'RESULT', loaded,")
    assert result(assert_ok(python(code, env={"ULTRALYTICS_EMA_AUTOLOAD": value}))) == ["False", "False", "False"]
    # an explicit import still registers
    code = "import ultralytics_ema; " + CHECK
    assert result(assert_ok(python(code, env={"ULTRALYTICS_EMA_AUTOLOAD": value}))) == ["True", "True"]


@pytest.mark.parametrize(
    "package, init",
    [
        ("ultralytics", "raise ModuleNotFoundError(\"No module named 'ultralytics'\")\n"),  # missing
        ("ultralytics", "raise RuntimeError('broken install')\n"),  # broken
        ("ultralytics", "import this_module_does_not_exist\n"),  # broken dependency
    ],
)
def test_broken_ultralytics_never_breaks_startup(tmp_path: Path, package: str, init: str):
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text(init)
    done = python("pass", env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0 and done.stdout == done.stderr == ""
    done = python("print('ok')", env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0 and done.stdout == "ok\n"


def test_broken_plugin_warns_in_one_line(tmp_path: Path):
    (tmp_path / "ultralytics_ema").mkdir()
    (tmp_path / "ultralytics_ema" / "__init__.py").write_text("raise ImportError('simulated damage')\n")
    done = python("print('ok')", env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0 and done.stdout == "ok\n"
    assert done.stderr == "ultralytics-ema: startup hook skipped (ImportError: simulated damage)\n"


def test_unsupported_version_at_import_warns_once_and_leaves_ultralytics_working():
    code = (
        "import ultralytics\n"
        "ultralytics.__version__ = '9.0.0'\n"
        "import ultralytics.nn.tasks as t, ultralytics.data.utils\n"
        "print('RESULT', 'EMA' in vars(t), t.DetectionModel('yolo11n.yaml', verbose=False) is not None)\n"
        "import ultralytics_ema\n"
        "try:\n"
        "    ultralytics_ema.apply()\n"
        "except ultralytics_ema.UnsupportedUltralyticsError as e:\n"
        "    print('RESULT', 'apply:', e)\n"
    )
    out = assert_ok(python(code))
    warnings = [line for line in out.splitlines() if "ultralytics-ema: EMA layers are not available" in line]
    assert len(warnings) == 1
    assert "ultralytics==9.0.0 is not supported; ultralytics-ema supports ultralytics>=8.3.0,<8.5" in warnings[0]
    assert "False True\n" in out
    assert "apply: ultralytics==9.0.0 is not supported; ultralytics-ema supports ultralytics>=8.3.0,<8.5" in out


def test_import_is_idempotent():
    code = (
        "import sys, importlib, ultralytics_ema, ultralytics_ema.plugin.autoload as a\n"
        "a.install(); a.install(); importlib.reload(ultralytics_ema)\n"
        "print('RESULT', sum(getattr(f, 'ultralytics_ema_hook', False) for f in sys.meta_path))"
    )
    assert result(assert_ok(python(code)))[-1] == "1"


def test_checkpoints_of_the_flat_layout_load(tmp_path: Path):
    """Checkpoints pickled before the nn/ folder name ``ultralytics_ema.ema.EMA``: they load, also with safe loading."""
    ckpt = tmp_path / "flat.pt"
    code = (
        "import torch\n"
        "from ultralytics_ema.nn.ema import EMA\n"
        "EMA.__module__ = 'ultralytics_ema.ema'  # pickled under the old path, as releases before nn/ did\n"
        f"torch.save({{'layer': EMA(64, 8)}}, {str(ckpt)!r})\n"
    )
    assert_ok(python(code))
    assert b"ultralytics_ema.nn.ema" not in ckpt.read_bytes()
    load = (
        "import torch, ultralytics.nn.tasks  # as Ultralytics' loaders do: registers EMA's safe-load paths\n"
        "with torch.serialization.safe_globals([torch.nn.GroupNorm, torch.nn.Conv2d]):  # the layer's own parts\n"
        f"    layer = torch.load({str(ckpt)!r}, weights_only={{}})['layer']\n"
        "print('RESULT', type(layer).__module__, type(layer).__name__, layer.groups)"
    )
    for weights_only in (False, True):
        assert result(assert_ok(python(load.format(weights_only)))) == ["ultralytics_ema.nn.ema", "EMA", "8"]
