"""VisDrone2019-DET (official unzipped split folders) to the Ultralytics YOLO layout.

Source: a folder holding one or more of ``VisDrone2019-DET-train``, ``VisDrone2019-DET-val`` and
``VisDrone2019-DET-test-dev``, each with ``images/*.jpg`` and ``annotations/*.txt``. An annotation row is
``x,y,w,h,score,category,truncation,occlusion`` (pixels, top-left corner; sometimes with a trailing comma).

Result in the output folder: ``images/{train,val,test}``, ``labels/{train,val,test}`` and ``visdrone.yaml``.

Rules for each row, checked in this order (each dropped row is counted under exactly one reason):

1. ``malformed``: not 8 fields, a non-numeric or non-finite field, a negative width or height, or a category that is
   not an integer from 0 to 11.
2. ``ignored-region``: category 0 (ignored regions).
3. ``others``: category 11 ("others"). Ultralytics' own VisDrone download script writes these as a class 10 that its
   10-name YAML does not have; here they are dropped.
4. ``score-0``: score 0 (the row is to be ignored in the ground truth).
5. ``zero-area``: the box, clipped to the image (size read from the image file header), has no area left.

Categories 1-10 become classes 0-9 (pedestrian ... motor), written as ``cls xc yc w h`` normalised to the image size
with 6 decimals. An image with an annotation file gets a label file, an empty one if no row survives; an image
without one gets none and is a background image to Ultralytics.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

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
    "NAMES",
    "SPLITS",
    "YAML_NAME",
    "Conversion",
    "VisDroneSummary",
    "convert_annotation",
    "find_splits",
    "prepare_visdrone",
]

SPLITS = {"VisDrone2019-DET-train": "train", "VisDrone2019-DET-val": "val", "VisDrone2019-DET-test-dev": "test"}
"""Official split folder name -> YOLO split name."""

NAMES = ("pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus", "motor")
"""Class names; VisDrone category ``i`` (1-10) is class ``i - 1``."""

DROP_REASONS = ("ignored-region", "others", "score-0", "zero-area", "malformed")
"""Why a row is not written, in the order the summary lists them."""

YAML_NAME = "visdrone.yaml"
_CATEGORIES = frozenset(range(12))  # 0 ignored region, 1-10 classes, 11 others; floats like 4.0 match, 4.5 does not
_N_FIELDS = 8
_MALFORMED_EXAMPLES = 5  # how many malformed rows the summary names


class Conversion(NamedTuple):
    """Result of :func:`convert_annotation`.

    Attributes:
        labels (list[str]): YOLO rows ``"cls xc yc w h"`` without line ends.
        dropped (Counter): Number of dropped rows by reason (keys from :data:`DROP_REASONS`).
        malformed (list[int]): 1-based line numbers of the malformed rows.
    """

    labels: list[str]
    dropped: Counter
    malformed: list[int]


def convert_annotation(text: str, width: int, height: int) -> Conversion:
    """Convert the text of one VisDrone annotation file to YOLO rows for an image of ``width`` x ``height`` pixels.

    Args:
        text (str): The annotation file's content.
        width (int): Image width in pixels.
        height (int): Image height in pixels.

    Returns:
        (Conversion): The rows kept and the drop counts; see the module docstring for the rules. Blank lines are
            neither kept nor counted.

    Examples:
        >>> convert_annotation("30,20,20,20,1,4,0,0,\\n0,0,5,5,0,0,0,0\\n", 40, 30).labels
        ['3 0.875000 0.833333 0.250000 0.333333']
    """
    labels: list[str] = []
    dropped: Counter = Counter()
    malformed: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        fields = line.split(",")
        if fields[-1].strip() == "":  # trailing comma
            fields.pop()
        try:
            if len(fields) != _N_FIELDS:
                raise ValueError
            x, y, w, h, score, category, _, _ = values = [float(f) for f in fields]
            if not all(map(math.isfinite, values)) or w < 0 or h < 0 or category not in _CATEGORIES:
                raise ValueError
        except ValueError:
            dropped["malformed"] += 1
            malformed.append(lineno)
            continue
        if category == 0:
            dropped["ignored-region"] += 1
            continue
        if category == 11:
            dropped["others"] += 1
            continue
        if score == 0:
            dropped["score-0"] += 1
            continue
        x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x2 <= x1 or y2 <= y1:
            dropped["zero-area"] += 1
            continue
        xc, yc, bw, bh = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height
        labels.append(f"{int(category) - 1} {xc:.6f} {yc:.6f} {bw:.6f} {bh:.6f}")
    return Conversion(labels, dropped, malformed)


def find_splits(source: str | Path) -> dict[str, Path]:
    """Find the official VisDrone2019-DET split folders in ``source``.

    Args:
        source (str | Path): Folder holding ``VisDrone2019-DET-train`` and/or ``-val``, ``-test-dev``.

    Returns:
        (dict[str, Path]): YOLO split name (``train``, ``val``, ``test``) -> split folder, for those present.

    Raises:
        DatasetSourceError: If ``source`` is not a folder, holds none of the split folders, or a split folder lacks
            ``images/`` or ``annotations/``.
    """
    source = Path(source).expanduser().resolve()
    wanted = ", ".join(f"{name}/" for name in SPLITS)
    if not source.is_dir():
        raise DatasetSourceError(f"VisDrone source folder not found: {source} (it should hold {wanted})")
    found = {split: source / name for name, split in SPLITS.items() if (source / name).is_dir()}
    if not found:
        raise DatasetSourceError(f"no VisDrone split folder in {source}: looked for {wanted}")
    for folder in found.values():
        for sub in "images", "annotations":
            if not (folder / sub).is_dir():
                raise DatasetSourceError(f"VisDrone split folder {folder} has no {sub}/ folder")
    return found


@dataclass
class VisDroneSummary:
    """What :func:`prepare_visdrone` did; ``str()`` gives the printed summary.

    Attributes:
        out (Path): Output folder.
        yaml_file (Path): The data YAML written.
        images (dict[str, int]): Images per split (``train``, ``val``, ``test``), in source order.
        background (int): Images without an annotation file (no label file written).
        label_files (int): Label files (one per image with an annotation file).
        boxes (int): Boxes written.
        dropped (Counter): Rows not written, by reason (see :data:`DROP_REASONS`).
        placed (Counter): Image files ``linked``, ``copied`` or ``unchanged`` (already in place).
        malformed_rows (list[str]): The first malformed rows, as ``path:line``.
        unreadable (list[str]): Images whose size could not be read; skipped with their annotation file.
        orphans (int): Annotation files without an image; skipped.
        removed (int): Files of an earlier run removed because the source no longer has them.
        kept (list[str]): Splits in the output from an earlier run that this source does not have (left alone).
    """

    out: Path
    yaml_file: Path
    images: dict[str, int] = field(default_factory=dict)
    background: int = 0
    label_files: int = 0
    boxes: int = 0
    dropped: Counter = field(default_factory=Counter)
    placed: Counter = field(default_factory=Counter)
    malformed_rows: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    orphans: int = 0
    removed: int = 0
    kept: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        """Return the multi-line summary."""
        n_images = sum(self.images.values())
        per_split = ", ".join(f"{split} {n}" for split, n in self.images.items())
        reasons = ", ".join(f"{r} {self.dropped[r]}" for r in DROP_REASONS)
        lines = [
            f"VisDrone2019-DET -> YOLO: {self.out}",
            f"  images:      {n_images} ({per_split}), {self.background} without annotation file (background)",
            f"  label files: {self.label_files}",
            f"  boxes kept:  {self.boxes}",
            f"  dropped:     {sum(self.dropped.values())} ({reasons})",
            f"  image files: {self.placed['linked']} hard-linked, {self.placed['copied']} copied, "
            f"{self.placed['unchanged']} already in place",
            f"  data YAML:   {self.yaml_file}",
        ]
        if self.malformed_rows:
            by_file: dict[str, list[str]] = {}
            for row in self.malformed_rows:
                name, lineno = row.rsplit(":", 1)
                by_file.setdefault(name, []).append(lineno)
            where = "; ".join(f"{name} line {', '.join(nums)}" for name, nums in by_file.items())
            more = self.dropped["malformed"] - len(self.malformed_rows)
            lines.append(f"  malformed:   {where}" + (f" and {more} more" if more else ""))
        if self.unreadable:
            lines.append(f"  WARNING: {len(self.unreadable)} unreadable images skipped: {', '.join(self.unreadable)}")
        if self.orphans:
            lines.append(f"  WARNING: {self.orphans} annotation files without an image skipped")
        if self.removed:
            lines.append(f"  removed:     {self.removed} files of an earlier run that are no longer in the source")
        lines.extend(f"  kept {s}: from an earlier run, not in this source" for s in self.kept)
        if not {"train", "val"} <= set(self.images):
            lines.append("  note: Ultralytics needs both a train and a val split to train; this output lacks one")
        return "\n".join(lines)


def _image_size(path: Path) -> tuple[int, int]:
    """Return ``(width, height)`` from the image file header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def prepare_visdrone(source: str | Path, out: str | Path, copy: bool = False) -> VisDroneSummary:
    """Convert the official VisDrone2019-DET split folders in ``source`` to the YOLO layout in ``out``.

    ``VisDrone2019-DET-train``, ``-val`` and ``-test-dev`` become the splits ``train``, ``val`` and ``test``:
    ``out/images/<split>`` (hard links or copies), ``out/labels/<split>`` and ``out/visdrone.yaml`` (``path:`` the
    absolute ``out``, the splits present in ``out``, the 10 class names). Every file is written under a temporary
    name and renamed into place; re-running gives the same bytes, and after the source changed the split folders
    mirror it (files it no longer has are removed). See the module docstring for the row rules.

    Args:
        source (str | Path): Folder holding one or more of the official split folders.
        out (str | Path): Output folder (created if needed); not inside a source split folder.
        copy (bool): Copy images instead of hard-linking them.

    Returns:
        (VisDroneSummary): Counts; ``print()`` it for the summary.

    Raises:
        DatasetSourceError: If ``source`` does not hold a usable split folder (see :func:`find_splits`) or ``out``
            lies inside one. Nothing is written in these cases.
    """
    splits = find_splits(source)  # before importing Ultralytics (and torch): a bad source fails fast
    check_output_folder(out, splits.values())

    from ultralytics.data.utils import IMG_FORMATS
    from ultralytics.utils import TQDM

    out = Path(out).expanduser().resolve()
    summary = VisDroneSummary(out=out, yaml_file=out / YAML_NAME)
    for split, folder in splits.items():
        img_out, lbl_out = out / "images" / split, out / "labels" / split
        for d in img_out, lbl_out:
            d.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(d)
        images = sorted(p for p in (folder / "images").iterdir() if p.suffix[1:].lower() in IMG_FORMATS and p.is_file())
        annotations = {p.stem: p for p in (folder / "annotations").glob("*.txt") if p.is_file()}
        summary.images[split] = 0
        placed, written, changed = set(), set(), False
        for img in TQDM(images, desc=f"VisDrone {split} ({folder.name})", unit="img"):
            ann = annotations.pop(img.stem, None)
            if ann is not None:
                try:
                    width, height = _image_size(img)
                except Exception:  # PIL raises UnidentifiedImageError, OSError, ValueError, ...
                    summary.unreadable.append(f"{folder.name}/images/{img.name}")
                    continue
                conv = convert_annotation(ann.read_text(encoding="utf-8-sig", errors="replace"), width, height)
                changed |= atomic_write_text(lbl_out / f"{img.stem}.txt", "".join(f"{row}\n" for row in conv.labels))
                written.add(f"{img.stem}.txt")
                summary.label_files += 1
                summary.boxes += len(conv.labels)
                summary.dropped.update(conv.dropped)
                room = _MALFORMED_EXAMPLES - len(summary.malformed_rows)
                rel = f"{folder.name}/annotations/{ann.name}"
                summary.malformed_rows.extend(f"{rel}:{n}" for n in conv.malformed[: max(room, 0)])
            else:
                summary.background += 1
            how = place_file(img, img_out / img.name, copy=copy)
            summary.placed[how] += 1
            summary.images[split] += 1
            placed.add(img.name)
            changed |= how != "unchanged"
        summary.orphans += len(annotations)
        summary.removed += mirror_split(out, split, placed, written, changed)
    summary.kept = [s for s in ("train", "val", "test") if s not in summary.images and (out / "images" / s).is_dir()]

    present = [s for s in ("train", "val", "test") if (out / "images" / s).is_dir()]
    data = {"path": str(out), **{s: f"images/{s}" for s in present}, "nc": len(NAMES), "names": dict(enumerate(NAMES))}
    header = (
        "# VisDrone2019-DET in the YOLO layout, written by ultralytics_ema.data.visdrone (ultralytics-ema prepare).\n"
        "# Categories 1-10 are classes 0-9; ignored regions (0), others (11) and score-0 rows are not labels.\n"
    )
    write_data_yaml(summary.yaml_file, data, header=header)
    return summary
