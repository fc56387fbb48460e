"""Datasets: the offline demo data, COCO 2017 and VisDrone2019-DET preparation, and the training presets.

- :func:`make_demo_dataset` (:mod:`ultralytics_ema.data.demo`): the synthetic ``ema-demo*`` datasets, one per task,
  generated offline.
- :func:`prepare_visdrone` (:mod:`ultralytics_ema.data.visdrone`): VisDrone2019-DET split folders to
  ``images/{train,val,test}``, ``labels/{train,val,test}`` and ``visdrone.yaml``.
- :func:`prepare_coco` (:mod:`ultralytics_ema.data.coco`): COCO 2017 (``annotations/instances_*2017.json``,
  ``train2017/``, ``val2017/``) to ``images/{train2017,val2017}``, ``labels/{train2017,val2017}`` and ``coco.yaml``,
  with the JSONs checked first and the labels written by Ultralytics' own ``convert_coco``.
- :mod:`ultralytics_ema.data.recipes`: datasets by short name (``demo``, ``coco``, ``visdrone``) and their presets.

``ultralytics-ema prepare coco|visdrone`` (:mod:`ultralytics_ema.cli`) runs the converters. Both write every file
through :mod:`ultralytics_ema.data.files` (temporary name, then rename), so an interrupted run leaves no half-written
label or image; both refuse an output folder inside the source, and both are safe to re-run: the result is
byte-identical, and after the source changed the output's split folders mirror it. Images are hard-linked where the
file system allows it, else copied; an image already in place is left alone.

This package imports only the standard library at import time; NumPy, OpenCV, Pillow and Ultralytics (which imports
torch) load when a generator or a conversion runs.

Examples:
    >>> from ultralytics_ema.data import prepare_visdrone
    >>> summary = prepare_visdrone("downloads/VisDrone", "datasets/VisDrone")
    >>> print(summary)
"""

from __future__ import annotations

import importlib
from typing import Any

from ultralytics_ema.data.files import (
    DatasetSourceError,
    atomic_write_text,
    check_output_folder,
    mirror_folder,
    mirror_split,
    place_file,
    remove_stale_temps,
    write_data_yaml,
)

# Public names of the submodules, imported on first access (PEP 562) so that importing the package stays light.
_LAZY = {
    "make_demo_dataset": "ultralytics_ema.data.demo",
    "prepare_visdrone": "ultralytics_ema.data.visdrone",
    "VisDroneSummary": "ultralytics_ema.data.visdrone",
    "prepare_coco": "ultralytics_ema.data.coco",
    "CocoSummary": "ultralytics_ema.data.coco",
    "CocoAnnotationError": "ultralytics_ema.data.coco",
}
__all__ = [
    "DatasetSourceError",
    "atomic_write_text",
    "check_output_folder",
    "mirror_folder",
    "mirror_split",
    "place_file",
    "remove_stale_temps",
    "write_data_yaml",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """Import the generators and converters lazily (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ultralytics_ema.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    """List public names, lazy ones included."""
    return sorted(set(globals()) | set(_LAZY))
