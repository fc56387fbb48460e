"""Files written safely, shared by the dataset converters: atomic writes, hard links or copies, data YAMLs, an
output folder that stays out of the source and mirrors it.

Every file goes to a temporary name in its final folder (``.<name>.<pid>.tmp``) and is then renamed into place, so an
interrupted run leaves no half-written file; :func:`remove_stale_temps` clears what an interrupted run left.
:func:`check_output_folder` refuses an output folder inside a source folder (its files would be read back as source
files); :func:`mirror_folder` removes from an output split folder what the current source no longer has, and
:func:`mirror_split` does so for a split's image and label folders and drops Ultralytics' stale label cache.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "DatasetSourceError",
    "atomic_write_text",
    "check_output_folder",
    "mirror_folder",
    "mirror_split",
    "place_file",
    "remove_stale_temps",
    "write_data_yaml",
]

_TEMP_RE = re.compile(r"^\..+\.\d+\.tmp$")  # the names _temp_name() makes: .<name>.<pid>.tmp


class DatasetSourceError(ValueError):
    """The source folder is missing or does not hold the expected dataset; the message is one line."""


def check_output_folder(out: str | Path, sources: Iterable[str | Path], managed: Iterable[str] = ("images", "labels")):
    """Refuse an output folder that lies inside a source folder, or whose rewritten folders hold a source folder.

    Args:
        out (str | Path): The output folder.
        sources (Iterable[str | Path]): The folders a conversion reads (image and annotation folders).
        managed (Iterable[str]): Subfolders of ``out`` that a conversion rewrites (stale files are removed there).

    Raises:
        DatasetSourceError: With one line naming both folders.
    """
    out = Path(out).expanduser().resolve()
    for folder in sources:
        folder = Path(folder).expanduser().resolve()
        if out == folder or out.is_relative_to(folder):
            raise DatasetSourceError(
                f"output folder {out} is inside the source folder {folder}: its files would be read back as source "
                "files; choose an output folder outside the source"
            )
        for sub in managed:
            if folder.is_relative_to(out / sub):
                raise DatasetSourceError(
                    f"source folder {folder} is inside {out / sub}, which the conversion rewrites; choose another "
                    "output folder"
                )


def mirror_folder(folder: str | Path, keep: Iterable[str]) -> int:
    """Delete the files under ``folder`` that are not in ``keep``, then the folders left empty.

    Args:
        folder (str | Path): An output split folder (``images/val``, ``labels/val``); nothing happens if it is absent.
        keep (Iterable[str]): Paths relative to ``folder`` (POSIX) of the files that the current source produced.

    Returns:
        (int): Number of files deleted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    keep = set(keep)
    n = 0
    for p in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # deepest first
        if p.is_dir() and not p.is_symlink():
            if not any(p.iterdir()):
                p.rmdir()
        elif p.relative_to(folder).as_posix() not in keep:
            p.unlink()
            n += 1
    return n


def mirror_split(out: str | Path, split: str, images: Iterable[str], labels: Iterable[str], changed: bool) -> int:
    """Make a converted split mirror its source: ``out/images/<split>`` keeps only ``images`` and ``out/labels/<split>``
    only ``labels`` (see :func:`mirror_folder`); if the split changed, Ultralytics' label cache of it
    (``out/labels/<split>.cache``, which it would otherwise trust) is deleted.

    Args:
        out (str | Path): The output folder.
        split (str): The split's folder name (``val2017``, ``val``).
        images (Iterable[str]): Image paths relative to ``out/images/<split>`` (POSIX) that the source produced.
        labels (Iterable[str]): Label paths relative to ``out/labels/<split>`` (POSIX) that the source produced.
        changed (bool): Whether this run wrote or replaced a file of the split.

    Returns:
        (int): Number of files deleted from the two folders.
    """
    out = Path(out)
    removed = mirror_folder(out / "images" / split, images) + mirror_folder(out / "labels" / split, labels)
    if changed or removed:
        (out / "labels" / f"{split}.cache").unlink(missing_ok=True)
    return removed


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
