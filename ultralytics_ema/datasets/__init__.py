"""Dataset preparation: the official VisDrone2019-DET and COCO 2017 downloads in the Ultralytics YOLO layout.

- :func:`prepare_visdrone` (:mod:`ultralytics_ema.datasets.visdrone`): VisDrone2019-DET split folders to
  ``images/{train,val,test}``, ``labels/{train,val,test}`` and ``visdrone.yaml``.
- :func:`prepare_coco` (:mod:`ultralytics_ema.datasets.coco`): COCO 2017 (``annotations/instances_*2017.json``,
  ``train2017/``, ``val2017/``) to ``images/{train2017,val2017}``, ``labels/{train2017,val2017}`` and ``coco.yaml``,
  with the labels written by Ultralytics' own ``convert_coco``.

Both write every file to a temporary name in its final folder and then rename it into place, so an interrupted run
leaves no half-written label or image, and both are safe to re-run: the result is byte-identical. Images are
hard-linked where the file system allows it, else copied; an image already in place is left alone.

The helpers here are shared by both converters. This module and its submodules import only the standard library at
import time; Pillow and Ultralytics (which imports torch) load when a conversion runs.

Examples:
    >>> from ultralytics_ema.datasets import prepare_visdrone
    >>> summary = prepare_visdrone("downloads/VisDrone", "datasets/VisDrone")
    >>> print(summary)
"""

from __future__ import annotations

import filecmp
import importlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

# Public names of the submodules, imported on first access (PEP 562) so that importing the package stays light.
_LAZY = {
    "prepare_visdrone": "ultralytics_ema.datasets.visdrone",
    "VisDroneSummary": "ultralytics_ema.datasets.visdrone",
    "prepare_coco": "ultralytics_ema.datasets.coco",
    "CocoSummary": "ultralytics_ema.datasets.coco",
}
__all__ = [
    "DatasetSourceError",
    "atomic_write_text",
    "place_file",
    "remove_stale_temps",
    "write_data_yaml",
    *_LAZY,
]

_TEMP_RE = re.compile(r"^\..+\.\d+\.tmp$")  # the names _temp_name() makes: .<name>.<pid>.tmp


class DatasetSourceError(ValueError):
    """The source folder is missing or does not hold the expected dataset; the message is one line."""


def __getattr__(name: str) -> Any:
    """Import the converters lazily (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ultralytics_ema.datasets' has no attribute {name!r}")


def __dir__() -> list[str]:
    """List public names, lazy ones included."""
    return sorted(set(globals()) | set(_LAZY))


def _temp_name(path: Path) -> Path:
    """Return the temporary name used while writing ``path``: hidden, same folder, ending in ``.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temps(folder: str | Path) -> int:
    """Delete temporary files an interrupted run left in ``folder`` (``.<name>.<pid>.tmp``).

    Args:
        folder (str | Path): Folder to clean; nothing happens if it does not exist.

    Returns:
        (int): Number of files deleted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.iterdir():
        if _TEMP_RE.match(p.name) and p.is_file():
            p.unlink()
            n += 1
    return n


def atomic_write_text(path: str | Path, text: str) -> bool:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically, unless the file already holds exactly that.

    The text goes to a temporary file in the same folder, which then replaces ``path`` (``os.replace``), so readers
    never see a half-written file.

    Args:
        path (str | Path): File to write; its folder must exist.
        text (str): Content.

    Returns:
        (bool): True if the file was written, False if it already had this content.
    """
    path = Path(path)
    data = text.encode("utf-8")
    try:
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass
    tmp = _temp_name(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True


def place_file(src: str | Path, dst: str | Path, copy: bool = False) -> str:
    """Put ``src`` at ``dst``: hard-link it where possible, else copy it, via a temporary name and ``os.replace``.

    A ``dst`` that already is ``src`` (the same hard-linked file) or has the same content is left alone.

    Args:
        src (str | Path): Existing file.
        dst (str | Path): Target path; its folder must exist.
        copy (bool): Always copy, never hard-link (the copy is then independent of the source).

    Returns:
        (str): ``"linked"``, ``"copied"`` or ``"unchanged"``.
    """
    src, dst = Path(src), Path(dst)
    if dst.is_file():
        if os.path.samefile(src, dst):
            if not copy:
                return "unchanged"
        elif filecmp.cmp(src, dst, shallow=True):  # same size and mtime, or else same bytes
            return "unchanged"
    tmp = _temp_name(dst)
    if tmp.exists():
        tmp.unlink()
    how = "copied"
    try:
        if not copy:
            try:
                os.link(src, tmp)
                how = "linked"
            except OSError:  # other file system, no hard-link support, no permission
                pass
        if how == "copied":
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return how


def write_data_yaml(path: str | Path, data: dict, header: str = "") -> bool:
    """Write a data YAML with Ultralytics' ``YAML.save``, atomically and only if its content changes.

    Args:
        path (str | Path): YAML file to write.
        data (dict): Content (key order is kept).
        header (str): Comment lines written before the content.

    Returns:
        (bool): True if the file was written, False if it already had this content.
    """
    from ultralytics.utils import YAML

    path = Path(path)
    tmp = _temp_name(path)
    try:
        YAML.save(tmp, data, header=header)
        if path.is_file() and filecmp.cmp(tmp, path, shallow=False):
            return False
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True
