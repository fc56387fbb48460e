"""Shared fixtures: an offline Ultralytics environment, one tiny dataset, subprocess helpers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Set before anything imports Ultralytics (it reads settings at import): no network, settings in a temp dir.
os.environ.update(
    YOLO_OFFLINE="1",
    YOLO_CONFIG_DIR=tempfile.mkdtemp(prefix="ultralytics-ema-tests-"),
    YOLO_VERBOSE="True",
    MPLBACKEND="Agg",
    ULTRALYTICS_EMA_CACHE=tempfile.mkdtemp(prefix="ultralytics-ema-kernel-"),  # the native kernel, built once
)
os.environ.pop("ULTRALYTICS_EMA_AUTOLOAD", None)
os.environ.pop("ULTRALYTICS_EMA_NATIVE", None)
os.environ.pop("ULTRALYTICS_SAFE_LOAD", None)
BIN = Path(sys.executable).parent
# One short training, as key=value arguments: 1 epoch at 64 px on the tiny dataset, no plots.
TINY_TRAIN = ("epochs=1", "imgsz=64", "batch=16", "workers=0", "plots=False")


def script_module(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` (not a package) as module ``name``, once."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


def run(
    args: list[str], cwd: Path | None = None, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run a command in a fresh process (as a user would), with the test environment plus ``env``; capture output."""
    return subprocess.run(
        args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def yolo(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run the ``yolo`` CLI of this environment in a subprocess."""
    return run([str(BIN / "yolo"), *args], **kwargs)


def python(code: str, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -c code`` in a subprocess."""
    return run([sys.executable, "-c", code], **kwargs)


def assert_ok(result: subprocess.CompletedProcess) -> str:
    """Assert exit code 0 and return stdout + stderr."""
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"exit {result.returncode}:\n{out[-4000:]}"
    return out


def result(out: str) -> list[str]:
    """Fields of the last ``RESULT ...`` line a subprocess printed (other lines are logs and warnings)."""
    lines = [line.split()[1:] for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line in:\n{out[-3000:]}"
    return lines[-1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one shared dataset: the demo generator at 64 px, 32 train / 8 val images. Returns its data YAML."""
    from ultralytics_ema.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("data") / "tiny", n_train=32, n_val=8, imgsz=64)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """Train YOLO11n-EMA for 1 epoch with the ``yolo`` CLI (no import line); return the run directory."""
    project = tmp_path_factory.mktemp("runs")
    out = assert_ok(
        yolo(
            "train",
            "model=yolo11n-ema.yaml",
            f"data={tiny_data}",
            *TINY_TRAIN,
            f"project={project}",
            "name=train",
            cwd=project,
        )
    )
    assert "ultralytics_ema.nn.ema.EMA" in out  # the model table lists the EMA layers
    return project / "train"


def stock_yaml(name: str) -> dict:
    """The stock model YAML ``name`` of the installed Ultralytics (found under its ``cfg/models``), as a dict."""
    import ultralytics
    import yaml

    return yaml.safe_load(next((Path(ultralytics.__file__).parent / "cfg" / "models").rglob(name)).read_text())


def with_row(d: dict, after: int, row: list) -> dict:
    """Model YAML dict ``d`` with ``row`` inserted after row ``after`` (``d`` is changed and returned).

    Later rows' ``from`` indices are renumbered so that they read the layers they read before, except that a reference
    to row ``after`` now reads the inserted row, as YAMLs that put a layer after another write it.
    """
    n_backbone = len(d["backbone"])
    rows = d["backbone"] + d["head"]

    def moved(j: int, f: int) -> int:  # row j's reference f, in the new numbering (j is the old index)
        target = j + f if f < 0 else f
        new = target if target < after else target + 1
        return new - (j + 1) if f < 0 else new

    for j in range(after + 1, len(rows)):
        f = rows[j][0]
        rows[j] = [[moved(j, x) for x in f] if isinstance(f, list) else moved(j, f), *rows[j][1:]]
    rows.insert(after + 1, row)
    cut = n_backbone + (after < n_backbone)
    d["backbone"], d["head"] = rows[:cut], rows[cut:]
    return d


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Lines the Ultralytics logger would print (info and warnings), instead of printing them."""
    from ultralytics.utils import LOGGER

    lines: list[str] = []
    monkeypatch.setattr(LOGGER, "info", lambda msg, *a, **k: lines.append(str(msg)))
    monkeypatch.setattr(LOGGER, "warning", lambda msg, *a, **k: lines.append(f"WARNING {msg}"))
    return lines


def write_image(path: Path, width: int, height: int) -> None:
    """Write a plain grey image of ``width`` x ``height`` (format from the suffix), creating its folder."""
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), 127, np.uint8))


def snapshot(folder: Path) -> dict[str, bytes]:
    """All files under ``folder`` (relative POSIX path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_out_refused(dataset: str, source: Path, where: str) -> None:
    """``ultralytics-ema prepare <dataset>`` with ``--out source/where`` (inside a source folder): refused in one
    line naming the folder, exit status 2, nothing written."""
    out = source / where
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    done = run([str(BIN / "ultralytics-ema"), "prepare", dataset, "--source", str(source), "--out", str(out)])
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line == (
        f"ultralytics-ema prepare {dataset}: error: output folder {out} is inside the source folder "
        f"{source / where.split('/')[0]}: its files would be read back as source files; choose an output folder "
        "outside the source"
    )
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before


def cli(*args: str) -> tuple[int, str, str]:
    """Run ``ultralytics-ema args...`` in this process: exit status, stdout, stderr. For the many one-line error cases;
    end-to-end runs use the installed command in a subprocess."""
    import contextlib
    import io

    from ultralytics_ema.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()
