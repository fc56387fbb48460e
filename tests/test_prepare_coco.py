"""``ultralytics-ema prepare coco`` and ultralytics_ema.data.coco on a tiny hand-made COCO 2017 download: labels,
clipping, re-runs that mirror the source, an output folder inside the source, and malformed annotations."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BIN, assert_out_refused, cli, run, snapshot, write_image

from ultralytics_ema.data.coco import CocoAnnotationError, prepare_coco

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
        {"id": 7, "image_id": 2, "category_id": 1, "bbox": [48, -8, 32, 24]},  # crosses the top-right corner: clipped
        {"id": 8, "image_id": 2, "category_id": 1, "bbox": [70, 10, 5, 5]},  # outside the image: zero area
        {"id": 9, "image_id": 2, "category_id": 1, "bbox": [10, 10, 0, 5]},  # zero width
    ],
    "categories": [
        {"id": 1, "name": "person"},
        {"id": 3, "name": "car"},
        {"id": 13, "name": "stop sign"},
        {"id": 90, "name": "toothbrush"},
    ],
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


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A COCO 2017 download: both instances JSONs, a captions JSON (must be left alone), both image folders."""
    src = tmp_path / "coco"
    (src / "annotations").mkdir(parents=True)
    for split, data in ("train2017", TRAIN), ("val2017", VAL):
        (src / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
        for im in data["images"]:
            write_image(src / split / im["file_name"], im["width"], im["height"])
    # convert_coco would try (and fail) to convert this too if it saw it: it has no boxes
    (src / "annotations" / "captions_train2017.json").write_text(
        json.dumps({"images": TRAIN["images"], "annotations": [{"id": 1, "image_id": 1, "caption": "a"}]})
    )
    write_image(src / "train2017" / "000000000003.jpg", 64, 48)  # not in the JSON: background
    return src


def _command(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed command as a user would."""
    return run([str(BIN / "ultralytics-ema"), "prepare", "coco", *args], cwd=cwd, timeout=300)


def test_labels_images_yaml_and_rerun(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = prepare_coco(source, out)
    labels = out / "labels"
    assert (labels / "train2017" / "000000000001.txt").read_text() == "0 0.5 0.5 0.5 0.5\n79 0.125 0.125 0.25 0.25\n"
    assert (labels / "train2017" / "000000000002.txt").read_text() == (
        "11 0.25 0.333333 0.25 0.333333\n0 0.875 0.166667 0.25 0.333333\n"  # clipped to x 48..64, y 0..16
    )
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
    assert (train.images, train.background, train.label_files, train.boxes) == (3, 1, 2, 4)
    assert (val.images, val.background, val.label_files, val.boxes) == (3, 1, 2, 1)
    assert summary.placed["linked"] + summary.placed["copied"] == 6
    text = str(summary)
    assert "  train2017: 3 images (1 background), 2 label files, 4 boxes" in text.splitlines()
    assert dict(summary.dropped) == {"crowd": 2, "zero-area": 2, "duplicate": 0}
    assert "  dropped annotations: 4 (crowd 2, zero-area 2, duplicate 0)" in text.splitlines()
    assert "  val2017: 3 images (1 background), 2 label files, 1 boxes" in text.splitlines()

    first = snapshot(out)
    again = prepare_coco(source, out)  # convert_coco appends to label files: a re-run must not duplicate rows
    assert snapshot(out) == first
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
    result = _command("--source", str(source), "--out", str(out), "--copy")
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
    result = _command("--source", str(source), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("ultralytics-ema prepare coco: error: ")
    expected = {
        "missing": "COCO source folder not found",
        "no-annotations": "looked for instances_train2017.json, instances_val2017.json",
        "no-images": "looked for train2017/, val2017/",
    }[case]
    assert expected in message
    assert not (tmp_path / "out").exists()


def test_cli_help() -> None:
    result = _command("--help")
    assert result.returncode == 0
    for word in "--source", "--out", "--copy", "instances_train2017.json", "convert_coco", "coco.yaml":
        assert word in result.stdout


def _disk(out: Path, split: str) -> tuple[int, int, int]:
    """Images, label files and boxes of a split, counted on disk."""
    labels = list((out / "labels" / split).glob("*.txt"))
    boxes = sum(len(p.read_text().splitlines()) for p in labels)
    return len(list((out / "images" / split).iterdir())), len(labels), boxes


def test_rerun_mirrors_a_changed_source(source: Path, tmp_path: Path) -> None:
    """Deleted annotations, images and a whole JSON's image leave the output; the counts are the files on disk."""
    out = tmp_path / "out"
    prepare_coco(source, out)
    (out / "labels" / "val2017.cache").write_text("stale")  # Ultralytics' label cache of the split
    (out / "labels" / "train2017.cache").write_text("unchanged split")
    val = copy.deepcopy(VAL)
    val["annotations"] = [a for a in val["annotations"] if a["image_id"] != 11]  # 11's only box is gone
    (source / "annotations" / "instances_val2017.json").write_text(json.dumps(val))
    (source / "val2017" / "000000000012.jpg").unlink()  # an image is gone
    summary = prepare_coco(source, out)
    assert not (out / "labels" / "val2017" / "000000000011.txt").exists()  # no stale boxes
    assert not (out / "images" / "val2017" / "000000000012.jpg").exists()
    assert not (out / "labels" / "val2017.cache").exists() and (out / "labels" / "train2017.cache").exists()
    val_counts = summary.splits["val2017"]
    assert (val_counts.images, val_counts.label_files, val_counts.boxes) == _disk(out, "val2017") == (2, 1, 0)
    assert val_counts.removed == 2 and val_counts.missing_images == 1
    assert "  val2017: removed 2 files that are no longer in the source" in str(summary).splitlines()
    train = summary.splits["train2017"]
    assert (train.images, train.label_files, train.boxes) == _disk(out, "train2017") == (3, 2, 4)


def test_split_of_an_earlier_run_is_kept_and_reported(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_coco(source, out)
    (source / "annotations" / "instances_train2017.json").unlink()
    summary = prepare_coco(source, out)
    assert list(summary.splits) == ["val2017"] and summary.kept == ["train2017"]
    assert "  kept train2017: from an earlier run, not in this source" in str(summary).splitlines()
    assert yaml.safe_load((out / "coco.yaml").read_text())["train"] == "images/train2017"


@pytest.mark.parametrize("where", ["val2017", "val2017/yolo", "annotations/out"])
def test_out_inside_the_source_is_refused(source: Path, where: str) -> None:
    """Before the fix, --out inside val2017 read its own output back: 20 -> 23 -> 46 -> 69 val images."""
    assert_out_refused("coco", source, where)


def _broken(data: dict, case: str) -> str | dict:
    """``data`` with one fault; returns the JSON text or the changed dict."""
    data = copy.deepcopy(data)
    if case == "bad JSON":
        return json.dumps(data)[:-20]
    anns, images = data["annotations"], data["images"]
    if case == "missing key":
        del anns[1]["bbox"]
    elif case == "missing list":
        del data["categories"]
    elif case == "unknown image id":
        anns[0]["image_id"] = 99
    elif case == "unknown category":
        anns[0]["category_id"] = 2
    elif case == "category outside the 80":
        data["categories"].append({"id": 12, "name": "street sign"})  # one of the 11 ids COCO 2017 does not use
        anns[0]["category_id"] = 12
    elif case == "negative image size":
        images[1]["width"] = -64
    elif case == "negative box size":
        anns[0]["bbox"] = [16, 12, -32, 24]
    elif case == "box not numbers":
        anns[0]["bbox"] = [16, 12, "wide", 24]
    elif case == "duplicate image id":
        images[1]["id"] = 1  # before the fix: image 1's boxes went to image 2's file, image 1 had none
    elif case == "duplicate annotation id":
        anns[1]["id"] = anns[0]["id"]
    elif case == "duplicate file name":
        images[1]["file_name"] = images[0]["file_name"]
    return json.dumps(data)


FAULTS = {
    "bad JSON": "not valid JSON: ",
    "missing key": "annotations[1] (id 2): missing key 'bbox'",
    "missing list": "missing key 'categories'",
    "unknown image id": "annotations[0] (id 1): unknown image_id 99",
    "unknown category": "annotations[0] (id 1): unknown category_id 2 (not in 'categories')",
    "category outside the 80": "annotations[0] (id 1): category_id 12 is not one of COCO's 80 detection classes",
    "negative image size": "images[1] (id 2): image size -64 x 48 is not positive",
    "negative box size": "annotations[0] (id 1): bbox [16, 12, -32, 24] has a negative size",
    "box not numbers": "annotations[0] (id 1): bbox [16, 12, 'wide', 24] is not 4 numbers",
    "duplicate image id": "images[1] (id 1): duplicate id (also images[0])",
    "duplicate annotation id": "annotations[1] (id 1): duplicate id (also annotations[0])",
    "duplicate file name": "images[1] (id 2): file_name '000000000001.jpg' also belongs to images[0] (id 1)",
}


@pytest.mark.parametrize("case", list(FAULTS))
def test_malformed_annotations(source: Path, tmp_path: Path, case: str) -> None:
    """Each fault: CocoAnnotationError naming the file and record, and nothing written."""
    json_file = source / "annotations" / "instances_train2017.json"
    json_file.write_text(_broken(TRAIN, case))
    with pytest.raises(CocoAnnotationError) as e:
        prepare_coco(source, tmp_path / "out")
    assert str(e.value).startswith(f"{json_file}: {FAULTS[case]}") and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["bad JSON", "duplicate image id", "unknown category"])
def test_cli_malformed_annotations_one_line_exit_2(source: Path, tmp_path: Path, case: str) -> None:
    json_file = source / "annotations" / "instances_val2017.json"
    broken = copy.deepcopy(VAL)
    broken["images"][2]["id"] = 10 if case == "duplicate image id" else 12
    broken["annotations"][1]["category_id"] = 5 if case == "unknown category" else 90
    json_file.write_text(json.dumps(broken)[:-5] if case == "bad JSON" else json.dumps(broken))
    args = ("--source", str(source), "--out", str(tmp_path / "out"))
    if case == "bad JSON":  # the installed command, end to end
        done = _command(*args)
        code, err = done.returncode, done.stderr
    else:
        code, _, err = cli("prepare", "coco", *args)
    assert code == 2 and "Traceback" not in err
    (line,) = err.splitlines()
    expected = {
        "bad JSON": "not valid JSON: ",
        "duplicate image id": "images[2] (id 10): duplicate id (also images[0])",
        "unknown category": "annotations[1] (id 6): unknown category_id 5 (not in 'categories')",
    }[case]
    assert line.startswith(f"ultralytics-ema prepare coco: error: {json_file}: {expected}")
    assert not (tmp_path / "out").exists()


def test_several_faults_are_counted_in_the_one_line(source: Path, tmp_path: Path) -> None:
    data = copy.deepcopy(TRAIN)
    data["annotations"][0]["image_id"] = 99
    data["annotations"][1]["bbox"] = [0, 0, -1, 1]
    data["images"][1]["height"] = 0
    (source / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    with pytest.raises(CocoAnnotationError, match=r"\(and 2 more problems\)$"):
        prepare_coco(source, tmp_path / "out")
