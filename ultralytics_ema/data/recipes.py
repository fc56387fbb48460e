"""Datasets by short name and their training presets, for ``ultralytics-ema train``, ``val`` and ``compare``.

======== ========================= ====================================================================
name     data YAML                 preset (any ``key=value`` on the command line wins)
======== ========================= ====================================================================
demo     ``ema-demo.yaml``         ``epochs=30 imgsz=128 batch=16``: minutes on a CPU
coco     ``coco-local.yaml``       ``epochs=300 imgsz=640``: the EMA paper's COCO setting (YOLOv5s)
visdrone ``visdrone-local.yaml``   ``epochs=300 imgsz=640``: the paper trained at 640 px; 1024 is common
======== ========================= ====================================================================

COCO and VisDrone need a GPU in practice (300 epochs of COCO take days even on one) and disk space: about 20 GB for
COCO 2017 images and 2 GB for VisDrone2019-DET, plus the same again if ``ultralytics-ema prepare`` copies instead of
hard-linking.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Importing this module imports ``ultralytics_ema``, which registers EMA even with the startup hook off.
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
