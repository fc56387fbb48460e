"""COCO 2017 (official layout) to the Ultralytics YOLO layout, with Ultralytics' own ``convert_coco`` for the labels.

Source: ``annotations/instances_train2017.json`` and/or ``annotations/instances_val2017.json``, and the image
folders ``train2017/`` and ``val2017/`` next to ``annotations/``.

Result in the output folder: ``images/{train2017,val2017}`` (hard links or copies), ``labels/{train2017,val2017}``
and ``coco.yaml``. The labels come from :func:`ultralytics.data.converter.convert_coco` (boxes only, the 91 COCO
category ids mapped to the 80 classes, crowd annotations and empty boxes skipped). ``convert_coco`` converts every
``*.json`` in the folder it is given, writes to a new numbered folder if its target exists and appends to label
files; so each split's JSON is converted alone in a fresh temporary folder inside the output folder, and the label
files are then renamed into place one by one. An image with no annotation gets no label file (a background image
to Ultralytics); one with only crowd annotations gets an empty one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ultralytics_ema.data.files import (
    DatasetSourceError,
    place_file,
    remove_stale_temps,
    write_data_yaml,
)

__all__ = ["SPLITS", "YAML_NAME", "CocoSummary", "SplitCounts", "convert_split_labels", "find_splits", "prepare_coco"]

SPLITS = ("train2017", "val2017")
"""Split names; each needs ``annotations/instances_<split>.json`` and an image folder ``<split>/``."""

YAML_NAME = "coco.yaml"
_TMP_PREFIX = ".coco-convert-"  # temporary conversion folders in the output folder


def find_splits(source: str | Path) -> tuple[dict[str, tuple[Path, Path]], list[str]]:
    """Find the COCO 2017 splits in ``source`` that have both an instances JSON and an image folder.

    Args:
        source (str | Path): Folder holding ``annotations/`` and ``train2017/`` and/or ``val2017/``.

    Returns:
        (tuple[dict[str, tuple[Path, Path]], list[str]]): Split name -> (instances JSON, image folder) for the usable
            splits, and the names of the splits that have a JSON but no image folder.

    Raises:
        DatasetSourceError: If ``source`` is not a folder, has no instances JSON, or no JSON has its image folder.
    """
    source = Path(source).expanduser().resolve()
    jsons = ", ".join(f"instances_{s}.json" for s in SPLITS)
    if not source.is_dir():
        raise DatasetSourceError(f"COCO source folder not found: {source} (it should hold annotations/ with {jsons})")
    ann_dir = source / "annotations"
    found = {s: ann_dir / f"instances_{s}.json" for s in SPLITS if (ann_dir / f"instances_{s}.json").is_file()}
    if not found:
        raise DatasetSourceError(f"no COCO annotations in {ann_dir}: looked for {jsons}")
    usable = {s: (j, source / s) for s, j in found.items() if (source / s).is_dir()}
    if not usable:
        folders = ", ".join(f"{s}/" for s in found)
        raise DatasetSourceError(f"no COCO image folder in {source}: looked for {folders} (next to annotations/)")
    return usable, [s for s in found if s not in usable]


class _DropRecord(logging.Filter):
    """Drop log records whose message starts with a given text."""

    def __init__(self, start: str):
        """Drop records starting with ``start``."""
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for a record to drop."""
        return not record.getMessage().startswith(self.start)


def convert_split_labels(json_file: str | Path, labels_out: str | Path, work_dir: str | Path) -> dict[str, int]:
    """Convert one COCO instances JSON with Ultralytics' ``convert_coco`` and rename its label files into place.

    Args:
        json_file (str | Path): ``instances_<split>.json``.
        labels_out (str | Path): Folder that receives the label files (``labels/<split>``), created if needed.
        work_dir (str | Path): Folder for the temporary conversion folder; on the same file system as
            ``labels_out`` so that the label files can be renamed.

    Returns:
        (dict[str, int]): Label path relative to ``labels_out`` (POSIX, without ``.txt``) -> number of boxes.
    """
    from ultralytics.data.converter import convert_coco
    from ultralytics.utils import LOGGER

    json_file, labels_out = Path(json_file), Path(labels_out)
    labels_out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=work_dir))
    quiet = _DropRecord("COCO data converted successfully")  # it names the temporary folder, which is deleted
    LOGGER.addFilter(quiet)
    try:
        ann_dir = tmp / "annotations"  # holds this JSON only: convert_coco converts every *.json it finds
        ann_dir.mkdir()
        try:
            (ann_dir / json_file.name).symlink_to(json_file)
        except OSError:  # no symlinks (Windows without the privilege)
            shutil.copyfile(json_file, ann_dir / json_file.name)
        convert_coco(str(ann_dir), str(tmp / "converted"), use_segments=False, use_keypoints=False, cls91to80=True)
        split_dir = tmp / "converted" / "labels" / json_file.stem.replace("instances_", "")
        counts = {}
        for f in sorted(split_dir.rglob("*.txt")):
            rel = f.relative_to(split_dir)
            dst = labels_out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            data = f.read_bytes()
            counts[rel.with_suffix("").as_posix()] = data.count(b"\n")
            if not (dst.is_file() and dst.read_bytes() == data):
                os.replace(f, dst)
        return counts
    finally:
        LOGGER.removeFilter(quiet)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class SplitCounts:
    """Counts for one COCO split.

    Attributes:
        images (int): Images placed in ``images/<split>``.
        background (int): Images without a label file (no annotation at all).
        label_files (int): Label files written by ``convert_coco``.
        boxes (int): Boxes in those label files.
        labels_without_image (int): Label files whose image is not in the image folder.
    """

    images: int = 0
    background: int = 0
    label_files: int = 0
    boxes: int = 0
    labels_without_image: int = 0


@dataclass
class CocoSummary:
    """What :func:`prepare_coco` did; ``str()`` gives the printed summary.

    Attributes:
        out (Path): Output folder.
        yaml_file (Path): The data YAML written.
        splits (dict[str, SplitCounts]): Counts per converted split.
        placed (Counter): Image files ``linked``, ``copied`` or ``unchanged`` (already in place).
        skipped (list[str]): Splits with an instances JSON but no image folder, not converted.
    """

    out: Path
    yaml_file: Path
    splits: dict[str, SplitCounts] = field(default_factory=dict)
    placed: Counter = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        """Return the multi-line summary."""
        lines = [f"COCO 2017 -> YOLO: {self.out}"]
        for split, c in self.splits.items():
            lines.append(
                f"  {split}: {c.images} images ({c.background} background), {c.label_files} label files, "
                f"{c.boxes} boxes"
            )
            if c.labels_without_image:
                lines.append(f"  WARNING: {split}: {c.labels_without_image} label files have no image")
        lines.append(
            f"  image files: {self.placed['linked']} hard-linked, {self.placed['copied']} copied, "
            f"{self.placed['unchanged']} already in place"
        )
        lines.extend(f"  skipped {s}: annotations but no image folder {s}/" for s in self.skipped)
        lines.append(f"  data YAML: {self.yaml_file}")
        if not {"train2017", "val2017"} <= {s for s in SPLITS if (self.out / "images" / s).is_dir()}:
            lines.append("  note: Ultralytics needs both a train and a val split to train; this output lacks one")
        return "\n".join(lines)


def prepare_coco(source: str | Path, out: str | Path, copy: bool = False) -> CocoSummary:
    """Convert the official COCO 2017 layout in ``source`` to the YOLO layout in ``out``.

    For each split (``train2017``, ``val2017``) with an instances JSON and an image folder: the images go to
    ``out/images/<split>`` (hard links or copies, via a temporary name), the labels to ``out/labels/<split>`` (from
    Ultralytics' ``convert_coco``, 80 classes). ``out/coco.yaml`` gets ``path:`` the absolute ``out``, the splits
    present in ``out`` and the 80 names of Ultralytics' ``coco.yaml``. Re-running gives the same bytes.

    Args:
        source (str | Path): Folder holding ``annotations/instances_<split>.json`` and ``<split>/`` image folders.
        out (str | Path): Output folder (created if needed).
        copy (bool): Copy images instead of hard-linking them.

    Returns:
        (CocoSummary): Counts; ``print()`` it for the summary.

    Raises:
        DatasetSourceError: If ``source`` holds no usable split (see :func:`find_splits`).
    """
    splits, skipped = find_splits(source)  # before importing Ultralytics (and torch): a bad source fails fast

    from ultralytics.data.utils import IMG_FORMATS
    from ultralytics.utils import ROOT, TQDM, YAML

    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{_TMP_PREFIX}*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    summary = CocoSummary(out=out, yaml_file=out / YAML_NAME, skipped=skipped)
    for split, (json_file, img_dir) in splits.items():
        img_out, lbl_out = out / "images" / split, out / "labels" / split
        counts = SplitCounts()
        label_boxes = convert_split_labels(json_file, lbl_out, work_dir=out)
        counts.label_files, counts.boxes = len(label_boxes), sum(label_boxes.values())
        images = sorted(p for p in img_dir.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS and p.is_file())
        img_out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(img_out)
        for img in TQDM(images, desc=f"COCO {split} images", unit="img"):
            rel = img.relative_to(img_dir)  # COCO file names may hold subfolders; the official ones do not
            (img_out / rel).parent.mkdir(parents=True, exist_ok=True)
            summary.placed[place_file(img, img_out / rel, copy=copy)] += 1
            counts.images += 1
            if label_boxes.pop(rel.with_suffix("").as_posix(), None) is None:
                counts.background += 1
        counts.labels_without_image = len(label_boxes)
        summary.splits[split] = counts

    names = YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"]
    present = [s for s in SPLITS if (out / "images" / s).is_dir()]
    keys = {"train2017": "train", "val2017": "val"}
    data = {"path": str(out), **{keys[s]: f"images/{s}" for s in present}, "nc": len(names), "names": names}
    header = (
        "# COCO 2017 in the YOLO layout, written by ultralytics_ema.data.coco (prepare_coco.py).\n"
        "# Labels by ultralytics.data.converter.convert_coco: boxes, 80 classes, crowd annotations skipped.\n"
    )
    write_data_yaml(summary.yaml_file, data, header=header)
    return summary
