"""Datasets by short name and their training presets, shared by ``scripts/train.py``, ``val.py`` and ``compare.py``.

======== ========================= ====================================================================
name     data YAML                 preset (any ``key=value`` on the command line wins)
======== ========================= ====================================================================
demo     ``ema-demo.yaml``         ``epochs=30 imgsz=128 batch=16``: minutes on a CPU
coco     ``coco-local.yaml``       ``epochs=300 imgsz=640``: the EMA paper's COCO setting (YOLOv5s)
visdrone ``visdrone-local.yaml``   ``epochs=300 imgsz=640``: the paper trained at 640 px; 1024 is common
======== ========================= ====================================================================

COCO and VisDrone need a GPU in practice (300 epochs of COCO take days even on one) and disk space: about 20 GB for
COCO 2017 images and 2 GB for VisDrone2019-DET, plus the same again if the preparation scripts copy instead of
hard-linking.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

# The scripts import this module, and with it ``ultralytics_ema``, which registers EMA even with the startup hook off.
DATASETS: dict[str, dict[str, Any]] = {
    "demo": {"yaml": "ema-demo.yaml", "preset": {"epochs": 30, "imgsz": 128, "batch": 16}},
    "coco": {"yaml": "coco-local.yaml", "preset": {"epochs": 300, "imgsz": 640}},
    "visdrone": {"yaml": "visdrone-local.yaml", "preset": {"epochs": 300, "imgsz": 640}},
}


def root_env(name: str) -> str | None:
    """Environment variable that holds the root of dataset ``name`` (the packaged YAML's ``root_env``), if any."""
    import yaml

    from ultralytics_ema import CFG_DIR

    return yaml.safe_load((CFG_DIR / "datasets" / DATASETS[name]["yaml"]).read_text()).get("root_env")


def data_and_preset(data: str, data_dir: str | Path | None = None) -> tuple[str, dict[str, Any]]:
    """Map ``--data`` to what Ultralytics takes, and return the dataset's preset.

    Args:
        data (str): ``demo``, ``coco``, ``visdrone`` or a data YAML path.
        data_dir (str | Path, optional): Root of a prepared COCO/VisDrone; sets the dataset's environment variable.

    Returns:
        (tuple[str, dict]): The ``data=`` value for Ultralytics and the preset arguments (empty for a path).

    Raises:
        ValueError: If ``data_dir`` is given for a dataset without a selectable root.
    """
    entry = DATASETS.get(data)
    if entry is None:
        if data_dir is not None:
            raise ValueError(f"--data-dir applies to {', '.join(k for k in DATASETS if root_env(k))} only")
        return data, {}
    if data_dir is not None:
        env = root_env(data)
        if env is None:
            raise ValueError(f"--data-dir does not apply to --data {data}")
        os.environ[env] = str(Path(data_dir).expanduser().resolve())
    return entry["yaml"], dict(entry["preset"])


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse Ultralytics-style ``key=value`` arguments (values typed as the ``yolo`` CLI types them).

    Args:
        pairs (list[str]): E.g. ``["epochs=3", "device=cpu"]``.

    Returns:
        (dict[str, Any]): E.g. ``{"epochs": 3, "device": "cpu"}``.

    Raises:
        ValueError: For an item without ``=`` or with an empty value.
    """
    from ultralytics.cfg import parse_key_value_pair

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"expected key=value, got {pair!r}")
        try:
            key, value = parse_key_value_pair(pair)
        except AssertionError as e:
            raise ValueError(f"{pair!r}: {e}") from None
        out[key] = value
    return out


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--data``, ``--data-dir`` and the trailing ``key=value`` arguments shared by the scripts."""
    parser.add_argument(
        "--data",
        default="demo",
        help="demo, coco, visdrone or a data YAML path (default: demo, generated offline on first use)",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="root of a prepared COCO or VisDrone (default: $ULTRALYTICS_EMA_COCO / $ULTRALYTICS_EMA_VISDRONE, "
        "else <datasets_dir>/coco or <datasets_dir>/VisDrone)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="any Ultralytics argument, passed through")


def resolve_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Return ``data``, the dataset's preset and the overrides; exit with a one-line error on bad input.

    The dataset is checked (and the demo generated) here, so a missing dataset stops before any model is built.
    """
    try:
        data, preset = data_and_preset(args.data, args.data_dir)
        overrides = parse_overrides(args.overrides)
    except ValueError as e:
        parser.error(str(e))
    for key in ("data", "model"):
        if key in overrides:
            parser.error(f"pass {key} as --{key}, not {key}={overrides[key]}")
    from ultralytics.data.utils import check_det_dataset

    try:
        check_det_dataset(data)
    except Exception as e:  # missing file, missing images, bad YAML: Ultralytics raises several types
        parser.exit(2, f"{parser.prog}: error: --data {args.data}: {str(e).strip().splitlines()[0]}\n")
    return data, preset, overrides
