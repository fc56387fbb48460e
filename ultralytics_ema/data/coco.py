"""COCO 2017 (official layout) to the Ultralytics YOLO layout, with Ultralytics' own ``convert_coco`` for the labels.

Source: ``annotations/instances_train2017.json`` and/or ``annotations/instances_val2017.json``, and the image
folders ``train2017/`` and ``val2017/`` next to ``annotations/``.

Result in the output folder: ``images/{train2017,val2017}`` (hard links or copies), ``labels/{train2017,val2017}``
and ``coco.yaml``.

Every instances JSON is checked before anything is written (:func:`read_instances`): invalid JSON, a missing key, a
duplicate image, annotation or category id, two images with one file name, an annotation of an unknown image or
category, a category outside COCO's 80 detection classes, and image or box sizes that are negative or not numbers
raise :class:`CocoAnnotationError`, whose one-line message names the file and the record. Then each annotation is
kept or dropped, each dropped one counted under the first reason that applies:

1. ``crowd``: ``iscrowd`` 1 (COCO evaluates these as ignore regions);
2. ``zero-area``: the box, clipped to the image (the ``width`` x ``height`` of its images record), has no area left.

The kept boxes, clipped, go to Ultralytics' :func:`~ultralytics.data.converter.convert_coco` in a slim JSON of the
split (images and kept annotations only), which maps the 91 COCO category ids to the 80 classes, normalises the
boxes and drops repeated rows (counted as ``duplicate``). ``convert_coco`` converts every ``*.json`` in the folder it
is given, writes to a new numbered folder if its target exists and appends to label files; so each split is
converted alone in a fresh temporary folder inside the output folder, and the label files are renamed into place.
An image without annotations gets no label file (a background image to Ultralytics); one whose annotations are all
dropped gets an empty one.

A re-run mirrors the current source: images and labels that are no longer in it are removed from the split folders,
unchanged files are left alone, and Ultralytics' label cache of a changed split is deleted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ultralytics_ema.data.files import (
    DatasetSourceError,
    atomic_write_text,
    check_output_folder,
    mirror_split,
    place_file,
    remove_stale_temps,
    write_data_yaml,
)

__all__ = [
    "DROP_REASONS",
    "SPLITS",
    "YAML_NAME",
    "CocoAnnotationError",
    "CocoSummary",
    "Instances",
    "SplitCounts",
    "convert_split_labels",
    "find_splits",
    "prepare_coco",
    "read_instances",
]

SPLITS = ("train2017", "val2017")
"""Split names; each needs ``annotations/instances_<split>.json`` and an image folder ``<split>/``."""

DROP_REASONS = ("crowd", "zero-area", "duplicate")
"""Why an annotation is not written, in the order the summary lists them."""

YAML_NAME = "coco.yaml"
_TMP_PREFIX = ".coco-convert-"  # temporary conversion folders in the output folder


class CocoAnnotationError(DatasetSourceError):
    """An instances JSON that cannot be converted; the message is one line naming the file and the record."""


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


@dataclass
class Instances:
    """A checked instances JSON, reduced to what the labels need.

    Attributes:
        images (list[dict]): Image records (``id``, ``file_name``, ``width``, ``height``).
        kept (list[dict]): Annotations to write (``id``, ``image_id``, ``category_id``, ``bbox`` clipped to the image).
        annotated (set[str]): File names of the images with at least one annotation (kept or dropped).
        dropped (Counter): Annotations not written, by reason (keys from :data:`DROP_REASONS`).
    """

    images: list[dict] = field(default_factory=list)
    kept: list[dict] = field(default_factory=list)
    annotated: set[str] = field(default_factory=set)
    dropped: Counter = field(default_factory=Counter)


def _number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_instances(json_file: str | Path) -> Instances:
    """Read and check a COCO instances JSON; clip its boxes to their images and sort out what is not written.

    Args:
        json_file (str | Path): ``instances_<split>.json``.

    Returns:
        (Instances): The images and the annotations to write, with the drop counts.

    Raises:
        CocoAnnotationError: At the first problem (invalid JSON, a missing key, a duplicate id or file name, an unknown
            image id or category, a category outside COCO's 80 detection classes, a negative or non-numeric size);
            the message names the file and the record and says how many more problems the file has.
    """
    from ultralytics.data.converter import coco91_to_coco80_class

    json_file = Path(json_file)
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise CocoAnnotationError(f"{json_file}: not valid JSON: {e}") from None
    problems: list[str] = []
    top = data if isinstance(data, dict) else {}
    if not isinstance(data, dict):
        problems.append("the top level is not an object")
    for key in ("images", "annotations", "categories"):
        if isinstance(data, dict) and not isinstance(data.get(key), list):
            problems.append(f"missing key {key!r}" if key not in data else f"{key!r} is not a list")
    coco80 = coco91_to_coco80_class()
    out = Instances()

    def records(key: str, required: tuple[str, ...]):
        """Yield ``(where, record)`` of the list ``key`` whose required keys are present; note the others."""
        seen: dict[Any, int] = {}
        for n, record in enumerate(top.get(key) if isinstance(top.get(key), list) else []):
            where = f"{key}[{n}]" + (f" (id {record['id']})" if isinstance(record, dict) and "id" in record else "")
            if not isinstance(record, dict):
                problems.append(f"{where}: not an object")
                continue
            missing = [k for k in required if k not in record]
            if missing:
                problems.append(f"{where}: missing key {missing[0]!r}")
                continue
            if "id" in record:
                if not isinstance(record["id"], int) or isinstance(record["id"], bool):
                    problems.append(f"{where}: id {record['id']!r} is not an integer")
                    continue
                if record["id"] in seen:
                    problems.append(f"{where}: duplicate id (also {key}[{seen[record['id']]}])")
                    continue
                seen[record["id"]] = n
            yield where, record

    categories = {c["id"] for _, c in records("categories", ("id",))}
    images: dict[Any, dict] = {}
    names: dict[str, str] = {}
    rejected: set[int] = set()  # images with a problem: their annotations are not reported again
    for where, im in records("images", ("id", "file_name", "width", "height")):
        w, h, name = im["width"], im["height"], im["file_name"]
        problem = None
        if not (_number(w) and _number(h)) or w <= 0 or h <= 0:
            problem = f"image size {w} x {h} is not positive"
        elif not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            problem = f"file_name {name!r} is not a relative path"
        elif name in names:
            problem = f"file_name {name!r} also belongs to {names[name]}"
        if problem:
            problems.append(f"{where}: {problem}")
            rejected.add(im["id"])
        else:
            names[name] = where
            images[im["id"]] = im
            out.images.append({k: im[k] for k in ("id", "file_name", "width", "height")})
    for where, ann in records("annotations", ("image_id", "category_id", "bbox")):
        image_id, cat, box = ann["image_id"], ann["category_id"], ann["bbox"]
        im = images.get(image_id) if isinstance(image_id, int) else None
        if im is None and isinstance(image_id, int) and image_id in rejected:
            continue
        if im is None:
            problems.append(f"{where}: unknown image_id {image_id!r}")
        elif not isinstance(cat, int) or cat not in categories:
            problems.append(f"{where}: unknown category_id {cat!r} (not in 'categories')")
        elif not (1 <= cat <= len(coco80) and coco80[cat - 1] is not None):
            problems.append(f"{where}: category_id {cat!r} is not one of COCO's 80 detection classes")
        elif not (isinstance(box, list) and len(box) == 4 and all(map(_number, box))):
            problems.append(f"{where}: bbox {box!r} is not 4 numbers")
        elif box[2] < 0 or box[3] < 0:
            problems.append(f"{where}: bbox {box!r} has a negative size")
        else:
            out.annotated.add(im["file_name"])
            if ann.get("iscrowd", 0):
                out.dropped["crowd"] += 1
                continue
            x1, y1 = min(max(box[0], 0), im["width"]), min(max(box[1], 0), im["height"])
            x2, y2 = min(max(box[0] + box[2], 0), im["width"]), min(max(box[1] + box[3], 0), im["height"])
            if x2 <= x1 or y2 <= y1:
                out.dropped["zero-area"] += 1
                continue
            bbox = [x1, y1, x2 - x1, y2 - y1]
            out.kept.append({"id": len(out.kept), "image_id": ann["image_id"], "category_id": cat, "bbox": bbox})
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise CocoAnnotationError(f"{json_file}: {problems[0]}{more}")
    return out


class _DropRecord(logging.Filter):
    """Drop log records whose message starts with a given text."""

    def __init__(self, start: str):
        """Drop records starting with ``start``."""
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for a record to drop."""
        return not record.getMessage().startswith(self.start)


def convert_split_labels(
    split: str, instances: Instances, labels_out: str | Path, work_dir: str | Path
) -> tuple[dict[str, int], bool]:
    """Write the labels of one checked split with Ultralytics' ``convert_coco``; rename them into place.

    Args:
        split (str): Split name (``train2017``), the stem of the slim JSON handed to ``convert_coco``.
        instances (Instances): The split, checked and clipped by :func:`read_instances`.
        labels_out (str | Path): Folder that receives the label files (``labels/<split>``), created if needed.
        work_dir (str | Path): Folder for the temporary conversion folder; on the same file system as
            ``labels_out`` so that the label files can be renamed.

    Returns:
        (tuple[dict[str, int], bool]): Label path relative to ``labels_out`` (POSIX, without ``.txt``) -> number of
            boxes, for every image with annotations (an empty file for one whose annotations were all dropped); and
            whether any label file was written (the others already had their content).
    """
    from ultralytics.data.converter import convert_coco
    from ultralytics.utils import LOGGER

    labels_out = Path(labels_out)
    labels_out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=work_dir))
    quiet = _DropRecord("COCO data converted successfully")  # it names the temporary folder, which is deleted
    LOGGER.addFilter(quiet)
    try:
        ann_dir = tmp / "annotations"  # holds this split's JSON only: convert_coco converts every *.json it finds
        ann_dir.mkdir()
        slim = {"images": instances.images, "annotations": instances.kept, "categories": []}
        (ann_dir / f"instances_{split}.json").write_text(json.dumps(slim), encoding="utf-8")
        convert_coco(str(ann_dir), str(tmp / "converted"), use_segments=False, use_keypoints=False, cls91to80=True)
        converted = tmp / "converted" / "labels" / split
        counts, changed = {}, False
        for name in sorted(instances.annotated):
            rel = Path(name).with_suffix("")
            f = (converted / rel).with_suffix(".txt")
            data = f.read_bytes() if f.is_file() else b""
            counts[rel.as_posix()] = data.count(b"\n")
            dst = (labels_out / rel).with_suffix(".txt")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not (dst.is_file() and dst.read_bytes() == data):
                if f.is_file():
                    os.replace(f, dst)
                else:  # every annotation of the image dropped: an empty label file, not a background image
                    atomic_write_text(dst, "")
                changed = True
        return counts, changed
    finally:
        LOGGER.removeFilter(quiet)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class SplitCounts:
    """Counts for one COCO split, of the files on disk after the run.

    Attributes:
        images (int): Images in ``images/<split>``.
        background (int): Of those, images without a label file (no annotation at all).
        label_files (int): Label files in ``labels/<split>``.
        boxes (int): Boxes in those label files.
        missing_images (int): Images of the JSON that are not in the image folder (no label written).
        removed (int): Files of an earlier run removed because the source no longer has them.
    """

    images: int = 0
    background: int = 0
    label_files: int = 0
    boxes: int = 0
    missing_images: int = 0
    removed: int = 0


@dataclass
class CocoSummary:
    """What :func:`prepare_coco` did; ``str()`` gives the printed summary.

    Attributes:
        out (Path): Output folder.
        yaml_file (Path): The data YAML written.
        splits (dict[str, SplitCounts]): Counts per converted split.
        dropped (Counter): Annotations not written, by reason (see :data:`DROP_REASONS`), all splits.
        placed (Counter): Image files ``linked``, ``copied`` or ``unchanged`` (already in place).
        skipped (list[str]): Splits with an instances JSON but no image folder, not converted.
        kept (list[str]): Splits in the output from an earlier run that this source does not have (left alone).
    """

    out: Path
    yaml_file: Path
    splits: dict[str, SplitCounts] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)
    placed: Counter = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        """Return the multi-line summary."""
        lines = [f"COCO 2017 -> YOLO: {self.out}"]
        for split, c in self.splits.items():
            lines.append(
                f"  {split}: {c.images} images ({c.background} background), {c.label_files} label files, "
                f"{c.boxes} boxes"
            )
            if c.missing_images:
                lines.append(f"  WARNING: {split}: {c.missing_images} images of the JSON are not in {split}/")
            if c.removed:
                lines.append(f"  {split}: removed {c.removed} files that are no longer in the source")
        reasons = ", ".join(f"{r} {self.dropped[r]}" for r in DROP_REASONS)
        lines.append(f"  dropped annotations: {sum(self.dropped.values())} ({reasons})")
        lines.append(
            f"  image files: {self.placed['linked']} hard-linked, {self.placed['copied']} copied, "
            f"{self.placed['unchanged']} already in place"
        )
        lines.extend(f"  skipped {s}: annotations but no image folder {s}/" for s in self.skipped)
        lines.extend(f"  kept {s}: from an earlier run, not in this source" for s in self.kept)
        lines.append(f"  data YAML: {self.yaml_file}")
        if not {"train2017", "val2017"} <= {s for s in SPLITS if (self.out / "images" / s).is_dir()}:
            lines.append("  note: Ultralytics needs both a train and a val split to train; this output lacks one")
        return "\n".join(lines)


def prepare_coco(source: str | Path, out: str | Path, copy: bool = False) -> CocoSummary:
    """Convert the official COCO 2017 layout in ``source`` to the YOLO layout in ``out``.

    For each split (``train2017``, ``val2017``) with an instances JSON and an image folder: the images go to
    ``out/images/<split>`` (hard links or copies, via a temporary name), the labels to ``out/labels/<split>`` (from
    Ultralytics' ``convert_coco``, 80 classes, boxes clipped to the image). ``out/coco.yaml`` gets ``path:`` the
    absolute ``out``, the splits present in ``out`` and the 80 names of Ultralytics' ``coco.yaml``. Re-running gives
    the same bytes; after the source changed, the split folders mirror it.

    Args:
        source (str | Path): Folder holding ``annotations/instances_<split>.json`` and ``<split>/`` image folders.
        out (str | Path): Output folder (created if needed); not inside a source folder.
        copy (bool): Copy images instead of hard-linking them.

    Returns:
        (CocoSummary): Counts; ``print()`` it for the summary.

    Raises:
        DatasetSourceError: If ``source`` holds no usable split (see :func:`find_splits`) or ``out`` lies inside a
            source folder; :class:`CocoAnnotationError` for an instances JSON that cannot be converted. Nothing is
            written in these cases.
    """
    splits, skipped = find_splits(source)  # before importing Ultralytics (and torch): a bad source fails fast
    out = Path(out).expanduser().resolve()
    src = Path(source).expanduser().resolve()
    check_output_folder(out, [src / "annotations", *(src / s for s in SPLITS if (src / s).is_dir())])

    from ultralytics.data.utils import IMG_FORMATS
    from ultralytics.utils import LOGGER, ROOT, TQDM, YAML

    checked = {}
    for split, (json_file, _) in splits.items():  # every JSON is checked before anything is written
        LOGGER.info(f"COCO {split}: reading {json_file}")
        checked[split] = read_instances(json_file)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{_TMP_PREFIX}*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    summary = CocoSummary(out=out, yaml_file=out / YAML_NAME, skipped=skipped)
    for split, (_, img_dir) in splits.items():
        instances = checked.pop(split)
        img_out, lbl_out = out / "images" / split, out / "labels" / split
        counts = SplitCounts()
        images = sorted(p for p in img_dir.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS and p.is_file())
        present = {img.relative_to(img_dir).as_posix() for img in images}
        placed_ids = {im["id"] for im in instances.images if im["file_name"] in present}
        counts.missing_images = len(instances.images) - len(placed_ids)
        instances.annotated &= present  # no label for an image that is not there
        instances.kept = [a for a in instances.kept if a["image_id"] in placed_ids]
        label_boxes, changed = convert_split_labels(split, instances, lbl_out, work_dir=out)
        summary.dropped.update(instances.dropped)
        summary.dropped["duplicate"] += len(instances.kept) - sum(label_boxes.values())  # convert_coco dedupes rows
        del instances
        img_out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(img_out)
        for img in TQDM(images, desc=f"COCO {split} images", unit="img"):
            rel = img.relative_to(img_dir)  # COCO file names may hold subfolders; the official ones do not
            (img_out / rel).parent.mkdir(parents=True, exist_ok=True)
            how = place_file(img, img_out / rel, copy=copy)
            summary.placed[how] += 1
            changed |= how != "unchanged"
        counts.removed = mirror_split(out, split, present, {f"{r}.txt" for r in label_boxes}, changed)
        counts.images, counts.label_files = _count_files(img_out), _count_files(lbl_out)
        counts.boxes = sum(label_boxes.values())
        counts.background = sum(Path(p).with_suffix("").as_posix() not in label_boxes for p in present)
        summary.splits[split] = counts
    summary.kept = [s for s in SPLITS if s not in splits and (out / "images" / s).is_dir()]

    names = YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"]
    present_splits = [s for s in SPLITS if (out / "images" / s).is_dir()]
    keys = {"train2017": "train", "val2017": "val"}
    data = {"path": str(out), **{keys[s]: f"images/{s}" for s in present_splits}, "nc": len(names), "names": names}
    header = (
        "# COCO 2017 in the YOLO layout, written by ultralytics_ema.data.coco (ultralytics-ema prepare coco).\n"
        "# Labels by ultralytics.data.converter.convert_coco: boxes clipped to the image, 80 classes, crowd skipped.\n"
    )
    write_data_yaml(summary.yaml_file, data, header=header)
    return summary


def _count_files(folder: Path) -> int:
    """Files under ``folder`` (recursively)."""
    return sum(p.is_file() for p in folder.rglob("*")) if folder.is_dir() else 0
