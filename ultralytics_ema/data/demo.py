"""The demo datasets ``ema-demo*``: small synthetic data for every Ultralytics task, generated offline, the same on
every machine.

Each image shows filled shapes of class-tinted colours on a noisy textured background with thin clutter lines. The
pixels and labels follow from a seed only (NumPy's PCG64 and OpenCV drawing), so a run on the demo data needs no
download and gives the same dataset everywhere:

============== ========= ==================================================================================
name           task      what is labelled
============== ========= ==================================================================================
ema-demo       detect    circles, squares, triangles (boxes; shapes may overlap)
ema-demo-seg   segment   circles, squares, triangles, rotated, not overlapping (polygons)
ema-demo-pose  pose      squares and triangles tilted up to 25 degrees, 4 keypoints: the corners top-left,
                         top-right, bottom-right, bottom-left (a triangle's two top corners are its apex)
ema-demo-obb   obb       ellipses, rectangles, triangles, elongated and rotated (oriented boxes)
ema-demo-cls   classify  one circle, square or triangle per image (a folder per class)
ema-demo-sem   semantic  circles, squares, triangles and background (a PNG mask of class ids per image)
ema-demo-depth depth     shapes in front of a receding background seen through haze (16-bit PNG depth maps,
                         millimetres): farther is hazier, nearer shapes are larger
============== ========= ==================================================================================

``data=ema-demo-seg.yaml`` (packaged in ``ultralytics_ema/cfg/datasets``) and ``data=ema-demo-cls`` point at
``<Ultralytics datasets_dir>/<name>`` and generate the data there on first use (see
:mod:`ultralytics_ema.plugin.local`).

Examples:
    >>> from ultralytics_ema.data.demo import make_demo_dataset
    >>> data_yaml = make_demo_dataset("datasets/ema-demo", n_train=16, n_val=8)
    >>> pose_yaml = make_demo_dataset("datasets/ema-demo-pose", task="pose", n_train=16, n_val=8, imgsz=64)
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

NAMES = ("circle", "square", "triangle")
_TINTS = ((60, 60, 230), (60, 200, 60), (230, 120, 40))  # BGR base colour per class
_SUB = 16  # OpenCV drawing with 4 fractional bits: polygon vertices at 1/16 px


@dataclass(frozen=True)
class Demo:
    """One packaged demo dataset: its task, class names and default size."""

    name: str
    task: str
    names: tuple[str, ...]
    n_train: int = 160
    n_val: int = 40
    imgsz: int = 128


DEMOS = {
    d.name: d
    for d in (
        Demo("ema-demo", "detect", NAMES),
        Demo("ema-demo-seg", "segment", NAMES),
        Demo("ema-demo-pose", "pose", ("square", "triangle")),
        Demo("ema-demo-obb", "obb", ("ellipse", "rectangle", "triangle")),
        Demo("ema-demo-cls", "classify", NAMES, n_train=240, n_val=60, imgsz=64),
        Demo("ema-demo-sem", "semantic", ("background", *NAMES)),
        Demo("ema-demo-depth", "depth", ("depth",)),
    )
}
TASK_DEMOS = {d.task: d for d in DEMOS.values()}
POSE_KEYPOINTS = ("top-left", "top-right", "bottom-right", "bottom-left")
POSE_FLIP_IDX = (1, 0, 3, 2)  # a horizontal flip swaps left and right corners
DEPTH_SCALE = 1000  # depth PNG value per metre


def make_demo_dataset(
    path: str | Path,
    n_train: int | None = None,
    n_val: int | None = None,
    imgsz: int | None = None,
    seed: int = 0,
    task: str = "detect",
) -> Path:
    """Write the demo dataset of ``task`` to ``path`` unless it is already there.

    The dataset is built in a temporary sibling folder and moved into place in one rename, so ``path`` is either
    complete or absent, also when generation is interrupted or runs in two processes at once.

    Args:
        path (str | Path): Dataset root to create.
        n_train (int, optional): Training images (default: the task's demo, 160; 240 for classify).
        n_val (int, optional): Validation images (default 40; 60 for classify).
        imgsz (int, optional): Image side in pixels (default 128; 64 for classify).
        seed (int): Seed; the same arguments give byte-identical files.
        task (str): ``detect``, ``segment``, ``pose``, ``obb``, ``classify``, ``semantic`` or ``depth``.

    Returns:
        (Path): The dataset's ``data.yaml`` (with an absolute ``path:``); for ``classify``, the dataset folder (with
            ``train/<class>/`` and ``val/<class>/``), which is what Ultralytics takes as ``data=``.

    Raises:
        ValueError: For an unknown task or sizes too small to draw.
    """
    if task not in TASK_DEMOS:
        raise ValueError(f"demo dataset task must be one of {', '.join(TASK_DEMOS)}, got {task!r}")
    demo = TASK_DEMOS[task]
    n_train, n_val = n_train or demo.n_train, n_val or demo.n_val
    imgsz = imgsz or demo.imgsz
    path = Path(path).resolve()
    done = _marker(path, task)
    if done.exists():
        return path if task == "classify" else done
    if min(n_train, n_val) < 1 or imgsz < 32:
        raise ValueError(f"demo dataset needs n_train, n_val >= 1 and imgsz >= 32, got {n_train}, {n_val}, {imgsz}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        rng = np.random.default_rng(seed)
        write = _WRITERS[task]
        for split, n in (("train", n_train), ("val", n_val)):
            for i in range(n):
                write(rng, imgsz, tmp, split, f"{split}_{i:04d}", i)
        if task != "classify":
            summary = f"seed {seed}, {n_train} train / {n_val} val images, {imgsz} px"
            (tmp / "data.yaml").write_text(_data_yaml(demo, path, summary))
        try:
            os.replace(tmp, path)  # atomic; fails if another process finished first
        except OSError:
            if not done.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path if task == "classify" else done


def present(path: str | Path, task: str = "detect") -> bool:
    """Whether a complete demo dataset of ``task`` is at ``path``."""
    return _marker(Path(path), task).exists()


def _marker(path: Path, task: str) -> Path:
    """The file or folder whose presence says the dataset at ``path`` is complete (it is moved in place last)."""
    return path / "train" if task == "classify" else path / "data.yaml"


def _data_yaml(demo: Demo, path: Path, summary: str) -> str:
    """The ``data.yaml`` of a generated dataset."""
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(demo.names))
    extra = {
        "pose": f"kpt_shape: [{len(POSE_KEYPOINTS)}, 3]\nflip_idx: {list(POSE_FLIP_IDX)}\n",
        "semantic": "masks_dir: masks\n",
        "depth": f"depth_scale: {DEPTH_SCALE}\n",
    }.get(demo.task, "")
    return (
        f"# ultralytics-ema {demo.name} dataset ({summary})\n"
        f"path: {path}\ntrain: images/train\nval: images/val\n{extra}names:\n{names}"
    )


def _save(image: np.ndarray, tmp: Path, folder: str, split: str, stem: str) -> None:
    """Write ``image`` as ``tmp/folder/split/stem.png``."""
    out = tmp / folder / split
    out.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out / f"{stem}.png"), image)


def _save_labels(lines: list[str], tmp: Path, split: str, stem: str) -> None:
    """Write YOLO label lines as ``tmp/labels/split/stem.txt``."""
    out = tmp / "labels" / split
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.txt").write_text("".join(lines))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A noisy plain background with 0-5 thin clutter lines that are not objects."""
    base = rng.integers(70, 180, 3)
    image = (base + rng.normal(0, 12, (size, size, 3))).clip(0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 6))):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(image, tuple(map(int, p1)), tuple(map(int, p2)), tuple(map(int, rng.integers(0, 256, 3))), 1)
    return image


def _tint(rng: np.random.Generator, cls: int) -> tuple[int, ...]:
    """The colour of a shape of class ``cls``: its class tint with +-40 jitter per channel."""
    return tuple(int(v) for v in np.clip(np.array(_TINTS[cls % len(_TINTS)]) + rng.integers(-40, 41, 3), 0, 255))


# Detection (ema-demo): kept exactly as first released, so its images and labels stay byte-identical.
def _write_detect(rng: np.random.Generator, size: int, tmp: Path, split: str, stem: str, index: int) -> None:
    """One detection image: 1-4 shapes that may overlap, with their boxes."""
    image = _background(rng, size)
    labels = []
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(len(NAMES)))
        side = int(rng.integers(size // 6, size // 2.5))
        x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
        color = _tint(rng, cls)
        x1, y1 = x0 + side - 1, y0 + side - 1
        if NAMES[cls] == "circle":
            cv2.circle(image, (x0 + side // 2, y0 + side // 2), side // 2, color, -1, cv2.LINE_AA)
            x1, y1 = x0 + 2 * (side // 2), y0 + 2 * (side // 2)
        elif NAMES[cls] == "square":
            cv2.rectangle(image, (x0, y0), (x1, y1), color, -1)
        else:
            points = np.array([[x0 + side // 2, y0], [x0, y1], [x1, y1]], np.int32)
            cv2.fillPoly(image, [points], color, cv2.LINE_AA)
        xc, yc, w, h = (x0 + x1 + 1) / 2 / size, (y0 + y1 + 1) / 2 / size, (x1 - x0 + 1) / size, (y1 - y0 + 1) / size
        labels.append(f"{cls} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}\n")
    _save(image, tmp, "images", split, stem)
    _save_labels(labels, tmp, split, stem)


@dataclass
class _Shape:
    """A drawn shape: class, outline (pixels, clockwise on screen), centre, width and height, angle (radians)."""

    cls: int
    outline: np.ndarray
    center: np.ndarray
    width: float
    height: float
    angle: float

    def corners(self) -> np.ndarray:
        """The shape's own rectangle (its oriented box), corners top-left, top-right, bottom-right, bottom-left."""
        w, h = self.width / 2, self.height / 2
        return _place(np.array([[-w, -h], [w, -h], [w, h], [-w, h]]), self.center, self.angle)


def _place(points: np.ndarray, center: np.ndarray, angle: float) -> np.ndarray:
    """Rotate ``points`` (centred at 0) by ``angle`` and move them to ``center``."""
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]]) + center


def _outline(kind: str, width: float, height: float) -> np.ndarray:
    """Outline of a shape of ``kind`` centred at 0 (a circle or ellipse as a 32-gon; a triangle's apex on top)."""
    w, h = width / 2, height / 2
    if kind in ("circle", "ellipse"):
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        return np.stack([w * np.cos(t), h * np.sin(t)], 1)
    if kind == "triangle":
        return np.array([[0, -h], [w, h], [-w, h]])
    return np.array([[-w, -h], [w, -h], [w, h], [-w, h]])


def _scatter(
    rng: np.random.Generator, size: int, names: tuple[str, ...], count: int, tilt: float, aspect: tuple[float, float]
) -> list[_Shape]:
    """Up to ``count`` shapes of random class, size and angle (up to ``tilt`` radians), inside the image, apart.

    A shape that does not fit after 30 tries is left out. ``aspect`` bounds height / width of the non-circles.
    """
    shapes: list[_Shape] = []
    for _ in range(count):
        cls = int(rng.integers(len(names)))
        kind = names[cls]
        width = float(rng.uniform(size / 7, size / 3))
        height = width if kind in ("circle", "square") else width * float(rng.uniform(*aspect))
        angle = float(rng.uniform(-tilt, tilt))
        outline = _outline(kind, width, height)
        radius = math.hypot(width, height) / 2
        for _ in range(30):
            center = rng.uniform(radius, size - radius, 2) if size > 2 * radius else np.full(2, size / 2)
            if all(np.hypot(*(center - s.center)) > radius + math.hypot(s.width, s.height) / 2 + 2 for s in shapes):
                shapes.append(_Shape(cls, _place(outline, center, angle), center, width, height, angle))
                break
    return shapes


def _fill(image: np.ndarray, points: np.ndarray, color: tuple | int, antialias: bool = True) -> None:
    """Fill the polygon ``points`` (float pixels) into ``image``."""
    poly = np.round(points * _SUB).astype(np.int32)
    cv2.fillPoly(image, [poly], color, cv2.LINE_AA if antialias else cv2.LINE_8, shift=4)


def _norm(points: np.ndarray, size: int) -> str:
    """Points as normalised ``x y`` pairs, clipped to the image."""
    return " ".join(f"{v:.6f}" for v in np.clip(points / size, 0, 1).ravel())


def _draw(
    rng: np.random.Generator, size: int, names: tuple[str, ...], tilt: float, aspect: tuple[float, float] = (1.0, 1.0)
) -> tuple[np.ndarray, list[_Shape]]:
    """Background plus 1-4 non-overlapping shapes; return the image and the shapes."""
    image = _background(rng, size)
    shapes = _scatter(rng, size, names, int(rng.integers(1, 5)), tilt, aspect)
    for s in shapes:
        _fill(image, s.outline, _tint(rng, s.cls))
    return image, shapes


def _write_segment(rng: np.random.Generator, size: int, tmp: Path, split: str, stem: str, index: int) -> None:
    """One instance-segmentation image: shapes at any angle, each labelled with its outline polygon."""
    image, shapes = _draw(rng, size, NAMES, math.pi)
    _save(image, tmp, "images", split, stem)
    _save_labels([f"{s.cls} {_norm(s.outline, size)}\n" for s in shapes], tmp, split, stem)


def _write_pose(rng: np.random.Generator, size: int, tmp: Path, split: str, stem: str, index: int) -> None:
    """One pose image: squares and triangles tilted up to 25 degrees, keypoints at their corners."""
    image, shapes = _draw(rng, size, DEMOS["ema-demo-pose"].names, math.radians(25))
    labels = []
    for s in shapes:
        kpts = s.outline if len(s.outline) == 4 else s.outline[[0, 0, 1, 2]]  # triangle: apex is both top corners
        lo, hi = s.outline.min(0).clip(0, size), s.outline.max(0).clip(0, size)
        box = np.concatenate([(lo + hi) / 2, hi - lo]) / size
        points = " ".join(f"{x:.6f} {y:.6f} 2" for x, y in np.clip(kpts / size, 0, 1))
        labels.append(f"{s.cls} {' '.join(f'{v:.6f}' for v in box)} {points}\n")
    _save(image, tmp, "images", split, stem)
    _save_labels(labels, tmp, split, stem)


def _write_obb(rng: np.random.Generator, size: int, tmp: Path, split: str, stem: str, index: int) -> None:
    """One OBB image: elongated ellipses, rectangles and triangles at any angle, with their oriented boxes."""
    image, shapes = _draw(rng, size, DEMOS["ema-demo-obb"].names, math.pi / 2, aspect=(0.35, 0.6))
    _save(image, tmp, "images", split, stem)
    _save_labels([f"{s.cls} {_norm(s.corners(), size)}\n" for s in shapes], tmp, split, stem)


def _write_classify(rng: np.random.Generator, size: int, tmp: Path, split: str, stem: str, index: int) -> None:
    """One classification image: one shape, classes in turn, in the folder of its class."""
    cls = index % len(NAMES)
    image = _background(rng, size)
    width = float(rng.uniform(size * 0.35, size * 0.7))
    center = size / 2 + rng.uniform(-0.12, 0.12, 2) * size
    outline = _place(_outline(NAMES[cls], width, width), center, float(rng.uniform(-math.pi, math.pi)))
    _fill(image, outline, _tint(rng, cls))
    _save(image, tmp, split, NAMES[cls], stem)


def _write_semantic(rng: np.random.Generator, size: int, tmp: Path, split: str, stem: str, index: int) -> None:
    """One semantic-segmentation image and its mask of class ids (0 background, 1 circle, 2 square, 3 triangle)."""
    image, shapes = _draw(rng, size, NAMES, math.pi)
    mask = np.zeros((size, size), np.uint8)
    for s in shapes:
        _fill(mask, s.outline, s.cls + 1, antialias=False)
    _save(image, tmp, "images", split, stem)
    _save(mask, tmp, "masks", split, stem)


def _write_depth(rng: np.random.Generator, size: int, tmp: Path, split: str, stem: str, index: int) -> None:
    """One depth image: a background receding from 2 m (bottom) to 8 m (top), 1-4 shapes at 1.5-5 m, in haze.

    Colours fade towards the haze colour with distance (``exp(-d / 4 m)``), and a shape's size is inversely
    proportional to its distance, so both tell depth.
    """
    y = np.linspace(8.0, 2.0, size, dtype=np.float32)[:, None].repeat(size, 1)
    depth = y + rng.normal(0, 0.05, (size, size)).astype(np.float32)
    texture = (rng.integers(70, 180, 3) + rng.normal(0, 12, (size, size, 3))).clip(0, 255).astype(np.float32)
    haze = np.array([200, 200, 205], np.float32)
    image = texture.copy()
    shapes = []
    for _ in range(int(rng.integers(1, 5))):
        cls, d = int(rng.integers(len(NAMES))), float(rng.uniform(1.5, 5.0))
        width = size * 0.45 / d
        center = rng.uniform(width, size - width, 2)
        shapes.append((d, cls, _place(_outline(NAMES[cls], width, width), center, float(rng.uniform(-1, 1)))))
    for d, cls, outline in sorted(shapes, key=lambda s: -s[0]):  # far to near: nearer shapes occlude farther ones
        mask = np.zeros((size, size), np.uint8)
        _fill(mask, outline, 1, antialias=False)
        image[mask > 0] = np.array(_tint(rng, cls), np.float32)
        depth[mask > 0] = d
    fade = np.exp(-depth / 4.0)[..., None]
    image = (image * fade + haze * (1 - fade)).clip(0, 255).astype(np.uint8)
    _save(image, tmp, "images", split, stem)
    _save(np.round(depth * DEPTH_SCALE).astype(np.uint16), tmp, "depth", split, stem)


_WRITERS: dict[str, Callable] = {
    "detect": _write_detect,
    "segment": _write_segment,
    "pose": _write_pose,
    "obb": _write_obb,
    "classify": _write_classify,
    "semantic": _write_semantic,
    "depth": _write_depth,
}
