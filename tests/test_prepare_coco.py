"""scripts/prepare_coco.py and ultralytics_ema.data.coco on a tiny hand-made COCO 2017 download."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from ultralytics_ema.data.coco import prepare_coco

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "prepare_coco.py"

TRAIN = {
    "images": [
        {"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 48},
        {"id": 2, "file_name": "000000000002.jpg", "width": 64, "height": 48},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [16, 12, 32, 24], "iscrowd": 0},  # person -> 0
        {"id": 2, "image_id": 1, "category_id": 90, "bbox": [0, 0, 16, 12], "iscrowd": 0},  # toothbrush 90 -> 79
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0, 0, 64, 48], "iscrowd": 1},  # crowd: skipped
        {"id": 4, "image_id": 2, "category_id": 13, "bbox": [8, 8, 16, 16], "iscrowd": 0},  # stop sign 13 -> 11
    ],
    "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 13, "name": "stop sign"}],
}
VAL = {
    "images": [
        {"id": 10, "file_name": "000000000010.jpg", "width": 32, "height": 32},
        {"id": 11, "file_name": "000000000011.jpg", "width": 32, "height": 32},
        {"id": 12, "file_name": "000000000012.jpg", "width": 32, "height": 32},
    ],
    "annotations": [
        {"id": 5, "image_id": 10, "category_id": 3, "bbox": [0, 0, 32, 32], "iscrowd": 1},  # only crowd: empty file
        {"id": 6, "image_id": 11, "category_id": 90, "bbox": [8, 8, 16, 8], "iscrowd": 0},
    ],  # image 12: no annotation at all, background
    "categories": [{"id": 3, "name": "car"}, {"id": 90, "name": "toothbrush"}],
}


def _image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), 127, np.uint8))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A COCO 2017 download: both instances JSONs, a captions JSON (must be left alone), both image folders."""
    src = tmp_path / "coco"
    (src / "annotations").mkdir(parents=True)
    for split, data in ("train2017", TRAIN), ("val2017", VAL):
        (src / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
        for im in data["images"]:
            _image(src / split / im["file_name"], im["width"], im["height"])
    # convert_coco would try (and fail) to convert this too if it saw it: it has no boxes
    (src / "annotations" / "captions_train2017.json").write_text(
        json.dumps({"images": TRAIN["images"], "annotations": [{"id": 1, "image_id": 1, "caption": "a"}]})
    )
    _image(src / "train2017" / "000000000003.jpg", 64, 48)  # not in the JSON: background
    return src


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLO_OFFLINE", "1")


def _script(*args: str) -> subprocess.CompletedProcess:
    """Run the script as a user would, from the repository root."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_labels_images_yaml_and_rerun(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = prepare_coco(source, out)
    labels = out / "labels"
    assert (labels / "train2017" / "000000000001.txt").read_text() == "0 0.5 0.5 0.5 0.5\n79 0.125 0.125 0.25 0.25\n"
    assert (labels / "train2017" / "000000000002.txt").read_text() == "11 0.25 0.333333 0.25 0.333333\n"
    assert not (labels / "train2017" / "000000000003.txt").exists()
    assert (labels / "val2017" / "000000000010.txt").read_text() == ""  # crowd only
    assert (labels / "val2017" / "000000000011.txt").read_text() == "79 0.5 0.375 0.5 0.25\n"
    assert not (labels / "val2017" / "000000000012.txt").exists()
    assert sorted(p.name for p in (labels).iterdir()) == ["train2017", "val2017"]  # nothing from captions_*.json
    for split, n in ("train2017", 3), ("val2017", 3):
        assert len(list((out / "images" / split).glob("*.jpg"))) == n
    assert sorted(p.name for p in out.iterdir()) == ["coco.yaml", "images", "labels"]  # no temporary folder left

    data = yaml.safe_load((out / "coco.yaml").read_text())
    assert data["path"] == str(out.resolve())
    assert (data["train"], data["val"]) == ("images/train2017", "images/val2017")
    assert (Path(data["path"]) / data["train"]).is_dir() and (Path(data["path"]) / data["val"]).is_dir()
    assert data["nc"] == 80 == len(data["names"])
    assert (data["names"][0], data["names"][11], data["names"][79]) == ("person", "stop sign", "toothbrush")

    train, val = summary.splits["train2017"], summary.splits["val2017"]
    assert (train.images, train.background, train.label_files, train.boxes) == (3, 1, 2, 3)
    assert (val.images, val.background, val.label_files, val.boxes) == (3, 1, 2, 1)
    assert summary.placed["linked"] + summary.placed["copied"] == 6
    text = str(summary)
    assert "  train2017: 3 images (1 background), 2 label files, 3 boxes" in text.splitlines()
    assert "  val2017: 3 images (1 background), 2 label files, 1 boxes" in text.splitlines()

    first = _snapshot(out)
    again = prepare_coco(source, out)  # convert_coco appends to label files: a re-run must not duplicate rows
    assert _snapshot(out) == first
    assert again.placed["unchanged"] == 6


def test_split_without_images_is_skipped(source: Path, tmp_path: Path) -> None:
    shutil.rmtree(source / "train2017")
    out = tmp_path / "out"
    summary = prepare_coco(source, out)
    assert list(summary.splits) == ["val2017"] and summary.skipped == ["train2017"]
    data = yaml.safe_load((out / "coco.yaml").read_text())
    assert "train" not in data and data["val"] == "images/val2017"
    assert "skipped train2017" in str(summary)


def test_cli_run_prints_summary(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _script("--source", str(source), "--out", str(out), "--copy")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    start = lines.index(f"COCO 2017 -> YOLO: {out.resolve()}")
    assert "  image files: 0 hard-linked, 6 copied, 0 already in place" in lines[start:]
    assert f"  data YAML: {out.resolve() / 'coco.yaml'}" in lines[start:]


@pytest.mark.parametrize("case", ["missing", "no-annotations", "no-images"])
def test_cli_bad_source(source: Path, tmp_path: Path, case: str) -> None:
    if case == "missing":
        shutil.rmtree(source)
    elif case == "no-annotations":
        shutil.rmtree(source / "annotations")
    else:
        shutil.rmtree(source / "train2017")
        shutil.rmtree(source / "val2017")
    result = _script("--source", str(source), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("prepare_coco.py: error: ")
    expected = {
        "missing": "COCO source folder not found",
        "no-annotations": "looked for instances_train2017.json, instances_val2017.json",
        "no-images": "looked for train2017/, val2017/",
    }[case]
    assert expected in message
    assert not (tmp_path / "out").exists()


def test_cli_help() -> None:
    result = _script("--help")
    assert result.returncode == 0
    for word in "--source", "--out", "--copy", "instances_train2017.json", "convert_coco", "coco.yaml":
        assert word in result.stdout
