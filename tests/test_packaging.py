"""The wheel ships the package (with the native kernel's C source), the YAMLs of cfg/ inside it, the startup hook at
its root and the ``ultralytics-ema`` command."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from conftest import ROOT, assert_ok, run


def test_wheel_contents(tmp_path: Path):
    assert_ok(
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(tmp_path),
                str(ROOT),
            ]
        )
    )
    (wheel,) = tmp_path.glob("ultralytics_ema-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    cfg = {f"ultralytics_ema/cfg/{p.relative_to(ROOT / 'cfg').as_posix()}" for p in (ROOT / "cfg").rglob("*.yaml")}
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ultralytics_ema").rglob("*.py") if "cfg" not in p.parts}
    assert {
        "ultralytics_ema/cfg/models/11/yolo11-ema.yaml",
        "ultralytics_ema/cfg/models/26/yolo26-seg-ema.yaml",
        "ultralytics_ema/cfg/datasets/ema-demo.yaml",
    } <= cfg
    assert cfg <= names and package <= names
    kernels = {f"ultralytics_ema/nn/kernels/{p.name}" for p in (ROOT / "ultralytics_ema" / "nn" / "kernels").iterdir()}
    assert len(kernels) == 3 and kernels <= names  # the native kernels' sources, compiled on first use
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "ultralytics-ema = ultralytics_ema.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    pth = zipfile.ZipFile(wheel).read("ultralytics_ema_autoload.pth").decode()
    assert pth.count("\n") == 1 and pth.startswith("import os, sys; ") and "ULTRALYTICS_EMA_AUTOLOAD" in pth


def test_installed_package_sees_cfg():
    from ultralytics_ema import CFG_DIR
    from ultralytics_ema.plugin.patches import packaged

    for kind in ("models", "datasets"):
        assert [p.relative_to(CFG_DIR / kind) for p in packaged(kind)] == sorted(
            p.relative_to(ROOT / "cfg" / kind) for p in (ROOT / "cfg" / kind).rglob("*.yaml")
        )
    assert {"11", "26", "v8"} <= {p.parent.name for p in packaged("models")}
    assert (CFG_DIR / "datasets" / "ema-demo.yaml").read_bytes() == (
        ROOT / "cfg" / "datasets" / "ema-demo.yaml"
    ).read_bytes()
