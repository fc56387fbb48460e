"""The demo dataset ``ema-demo``: small synthetic detection data generated offline, the same on every machine.

Each image shows one to four filled shapes (circle, square, triangle) of class-tinted colours on a noisy
textured background. The pixels and labels follow from a seed only (NumPy's PCG64 and OpenCV drawing), so a
run on the demo data needs no download and gives the same dataset everywhere.

``data=ema-demo.yaml`` (packaged in ``ultralytics_ema/cfg/datasets``) points at ``<Ultralytics datasets_dir>/ema-demo``
and generates it there on first use, through the YAML's ``download`` script as Ultralytics runs it.

Examples:
    >>> from ultralytics_ema.data.demo import make_demo_dataset
    >>> data_yaml = make_demo_dataset("datasets/ema-demo", n_train=16, n_val=8)
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np

NAMES = ("circle", "square", "triangle")
_TINTS = ((60, 60, 230), (60, 200, 60), (230, 120, 40))  # BGR base colour per class


def make_demo_dataset(path: str | Path, n_train: int = 160, n_val: int = 40, imgsz: int = 128, seed: int = 0) -> Path:
    """Write the demo dataset to ``path`` (``images/``, ``labels/``, ``data.yaml``) unless it is already there.

    The dataset is built in a temporary sibling folder and moved into place in one rename, so ``path`` is either
    complete or absent, also when generation is interrupted or runs in two processes at once.

    Args:
        path (str | Path): Dataset root to create.
        n_train (int): Training images.
        n_val (int): Validation images.
        imgsz (int): Image side in pixels.
        seed (int): Seed; the same arguments give byte-identical files.

    Returns:
        (Path): The dataset's ``data.yaml``, with an absolute ``path:``.
    """
    path = Path(path).resolve()
    data_yaml = path / "data.yaml"
    if data_yaml.is_file():
        return data_yaml
    if min(n_train, n_val) < 1 or imgsz < 32:
        raise ValueError(f"demo dataset needs n_train, n_val >= 1 and imgsz >= 32, got {n_train}, {n_val}, {imgsz}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        rng = np.random.default_rng(seed)
        for split, n in (("train", n_train), ("val", n_val)):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for i in range(n):
                image, labels = _draw_image(rng, imgsz)
                stem = f"{split}_{i:04d}"
                cv2.imwrite(str(tmp / "images" / split / f"{stem}.png"), image)
                (tmp / "labels" / split / f"{stem}.txt").write_text("".join(labels))
        names = "".join(f"  {i}: {name}\n" for i, name in enumerate(NAMES))
        (tmp / "data.yaml").write_text(
            f"# ultralytics-ema demo dataset (seed {seed}, {n_train} train / {n_val} val images, {imgsz} px)\n"
            f"path: {path}\ntrain: images/train\nval: images/val\nnames:\n{names}"
        )
        try:
            os.replace(tmp, path)  # atomic; fails if another process finished first
        except OSError:
            if not data_yaml.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return data_yaml


def _draw_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[str]]:
    """Draw one image and return it with its YOLO label lines."""
    base = rng.integers(70, 180, 3)
    image = (base + rng.normal(0, 12, (size, size, 3))).clip(0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 6))):  # background clutter: thin lines that are not objects
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(image, tuple(map(int, p1)), tuple(map(int, p2)), tuple(map(int, rng.integers(0, 256, 3))), 1)
    labels = []
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(len(NAMES)))
        side = int(rng.integers(size // 6, size // 2.5))
        x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
        color = tuple(int(v) for v in np.clip(np.array(_TINTS[cls]) + rng.integers(-40, 41, 3), 0, 255))
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
    return image, labels
