"""``ultralytics-ema prepare visdrone`` and ultralytics_ema.data.visdrone on a tiny hand-made VisDrone2019-DET
download: the row rules, the layout, re-runs that mirror the source, an output folder inside the source."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BIN, assert_out_refused, run, snapshot, write_image

from ultralytics_ema.data.visdrone import NAMES, convert_annotation, prepare_visdrone

# Train image a.jpg is 40 x 30: one row per rule.
A_ROWS = [f"{c},1,4,6,1,{c},0,0" for c in range(1, 11)]  # categories 1..10: kept as classes 0..9
A_ROWS[1] += ","  # trailing comma
A_ROWS += [
    "5,5,10,10,0,0,0,0",  # ignored region (category 0, score 0)
    "5,5,10,10,1,11,0,0",  # others
    "5,5,10,10,0,4,0,0",  # score 0
    "30,20,20,20,1,4,0,0",  # crosses the bottom-right border: clipped to 30..40 x 20..30
    "-10,-5,20,10,1,5,1,2",  # crosses the top-left border: clipped to 0..10 x 0..5
    "",  # blank line: not counted
    "50,0,10,10,1,4,0,0",  # fully outside: zero area after clipping
    "5,5,0,10,1,4,0,0",  # zero width
    "1,2,3",  # too few fields
    "a,b,c,d,1,1,0,0",  # non-numeric
    "5,5,-3,4,1,4,0,0",  # negative width
    "5,5,3,4,1,12,0,0",  # unknown category
    "1,2,3,4,1,1,0,0,0",  # too many fields
]
A_LABELS = [f"{c - 1} {(c + 2) / 40:.6f} {4 / 30:.6f} 0.100000 0.200000" for c in range(1, 11)] + [
    "3 0.875000 0.833333 0.250000 0.333333",
    "4 0.125000 0.083333 0.250000 0.166667",
]
EXPECTED_DROPPED = {"ignored-region": 2, "others": 1, "score-0": 1, "zero-area": 2, "malformed": 5}
EXPECTED_SUMMARY = [
    "  images:      5 (train 3, val 1, test 1), 1 without annotation file (background)",
    "  label files: 4",
    "  boxes kept:  15",
    "  dropped:     11 (ignored-region 2, others 1, score-0 1, zero-area 2, malformed 5)",
    "  malformed:   VisDrone2019-DET-train/annotations/a.txt line 19, 20, 21, 22, 23",
    "  WARNING: 1 annotation files without an image skipped",
]


def _annotation(path: Path, rows: list[str], newline: str = "\n") -> None:
    """Write an annotation file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(newline.join(rows).encode() + newline.encode())


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A VisDrone download with the three official split folders."""
    src = tmp_path / "src"
    train = src / "VisDrone2019-DET-train"
    write_image(train / "images" / "a.jpg", 40, 30)
    _annotation(train / "annotations" / "a.txt", A_ROWS)
    write_image(train / "images" / "b.jpg", 40, 30)
    _annotation(train / "annotations" / "b.txt", ["0,0,40,30,0,0,0,0"])  # only an ignored region: empty label file
    write_image(train / "images" / "c.jpg", 40, 30)  # no annotation file: background image
    _annotation(train / "annotations" / "orphan.txt", ["1,1,2,2,1,1,0,0"])  # no image
    val = src / "VisDrone2019-DET-val"
    write_image(val / "images" / "v.jpg", 60, 40)
    _annotation(val / "annotations" / "v.txt", ["0,0,60,40,1,10,0,0", "10,10,6,4,1,3,0,0"], newline="\r\n")
    test = src / "VisDrone2019-DET-test-dev"
    write_image(test / "images" / "t.jpg", 40, 30)
    _annotation(test / "annotations" / "t.txt", ["10,10,20,10,1,6,0,0,"])
    return src


def _command(*args: str) -> subprocess.CompletedProcess:
    """Run the installed command as a user would."""
    return run([str(BIN / "ultralytics-ema"), "prepare", "visdrone", *args], timeout=300)


def test_convert_annotation_rules() -> None:
    conv = convert_annotation("\n".join(A_ROWS) + "\n", 40, 30)
    assert conv.labels == A_LABELS
    assert dict(conv.dropped) == {**EXPECTED_DROPPED, "ignored-region": 1}
    assert conv.malformed == [19, 20, 21, 22, 23]  # 1-based line numbers
    assert convert_annotation("", 40, 30) == ([], {}, [])


def test_convert_annotation_edge_rows() -> None:
    conv = convert_annotation("1,1,2,2,1,4.5,0,0\n1,1,2,2,1,nan,0,0\n1,1,2,2,1,4,x,0\n1,1,2,2,1,4,0,0,,\n", 40, 30)
    assert conv.labels == [] and dict(conv.dropped) == {"malformed": 4}
    assert convert_annotation(" 0, 0, 40, 30, 1, 4.0, 0, 0 ,", 40, 30).labels == [
        "3 0.500000 0.500000 1.000000 1.000000"
    ]


def test_layout_labels_and_summary(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = prepare_visdrone(source, out)
    labels = out / "labels"
    assert (labels / "train" / "a.txt").read_text() == "".join(f"{row}\n" for row in A_LABELS)
    assert (labels / "train" / "b.txt").read_bytes() == b""  # annotation file, no box kept: explicit empty file
    assert not (labels / "train" / "c.txt").exists()  # no annotation file: background image
    assert not (labels / "train" / "orphan.txt").exists()
    assert (labels / "val" / "v.txt").read_text() == (
        "9 0.500000 0.500000 1.000000 1.000000\n2 0.216667 0.300000 0.100000 0.100000\n"
    )
    assert (labels / "test" / "t.txt").read_text() == "5 0.500000 0.500000 0.500000 0.333333\n"  # test-dev -> test
    for split, names in {"train": ["a.jpg", "b.jpg", "c.jpg"], "val": ["v.jpg"], "test": ["t.jpg"]}.items():
        assert sorted(p.name for p in (out / "images" / split).iterdir()) == names
    src_a = source / "VisDrone2019-DET-train" / "images" / "a.jpg"
    assert (out / "images" / "train" / "a.jpg").read_bytes() == src_a.read_bytes()
    assert not list(out.rglob("*.tmp"))

    assert summary.images == {"train": 3, "val": 1, "test": 1}
    assert (summary.background, summary.label_files, summary.boxes, summary.orphans) == (1, 4, 15, 1)
    assert dict(summary.dropped) == EXPECTED_DROPPED
    assert sum(summary.placed.values()) == 5 and summary.placed["unchanged"] == 0
    text = str(summary)
    for line in EXPECTED_SUMMARY:
        assert line in text.splitlines()


def test_yaml(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_visdrone(source, out)
    data = yaml.safe_load((out / "visdrone.yaml").read_text())
    assert data["path"] == str(out.resolve()) and Path(data["path"]).is_absolute()
    assert (data["train"], data["val"], data["test"]) == ("images/train", "images/val", "images/test")
    for split in "train", "val", "test":
        assert (Path(data["path"]) / data[split]).is_dir()
    assert data["nc"] == 10 == len(data["names"])
    assert data["names"] == dict(enumerate(NAMES))
    assert data["names"][0] == "pedestrian" and data["names"][9] == "motor"


def test_yaml_lists_only_present_splits(source: Path, tmp_path: Path) -> None:
    shutil.rmtree(source / "VisDrone2019-DET-test-dev")
    out = tmp_path / "out"
    summary = prepare_visdrone(source, out)
    data = yaml.safe_load((out / "visdrone.yaml").read_text())
    assert "test" not in data and data["val"] == "images/val"
    assert summary.images == {"train": 3, "val": 1}


def test_rerun_is_byte_identical(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_visdrone(source, out)
    first = snapshot(out)
    stale = out / "labels" / "train" / ".a.txt.12345.tmp"  # what an interrupted run would leave
    stale.write_text("half")
    summary = prepare_visdrone(source, out)
    assert not stale.exists()
    assert snapshot(out) == first
    assert summary.placed["unchanged"] == 5 and summary.boxes == 15


def test_copy_mode(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = prepare_visdrone(source, out, copy=True)
    assert summary.placed["copied"] == 5
    src_a = source / "VisDrone2019-DET-train" / "images" / "a.jpg"
    assert not os.path.samefile(src_a, out / "images" / "train" / "a.jpg")


def test_cli_run_prints_summary(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _command("--source", str(source), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    start = lines.index(f"VisDrone2019-DET -> YOLO: {out.resolve()}")
    for line in EXPECTED_SUMMARY:
        assert line in lines[start:]
    assert f"  data YAML:   {out.resolve() / 'visdrone.yaml'}" in lines[start:]
    assert (out / "labels" / "train" / "a.txt").is_file()


@pytest.mark.parametrize("case", ["missing", "empty", "no-annotations"])
def test_cli_bad_source(tmp_path: Path, case: str) -> None:
    src = tmp_path / "src"
    if case != "missing":
        src.mkdir()
    if case == "no-annotations":
        (src / "VisDrone2019-DET-val" / "images").mkdir(parents=True)
    result = _command("--source", str(src), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("ultralytics-ema prepare visdrone: error: ")
    assert str(src.resolve()) in message
    if case == "no-annotations":
        assert "has no annotations/ folder" in message
    else:
        assert "VisDrone2019-DET-train/, VisDrone2019-DET-val/, VisDrone2019-DET-test-dev/" in message
    assert not (tmp_path / "out").exists()


def test_cli_help() -> None:
    result = _command("--help")
    assert result.returncode == 0
    for word in "--source", "--out", "--copy", "ignored-region", "others", "score-0", "zero-area", "malformed":
        assert word in result.stdout


def test_unreadable_image_and_many_malformed_rows(source: Path, tmp_path: Path) -> None:
    val = source / "VisDrone2019-DET-val"
    (val / "images" / "broken.jpg").write_bytes(b"not an image")
    _annotation(val / "annotations" / "broken.txt", ["1,1,2,2,1,1,0,0"])
    _annotation(val / "annotations" / "v.txt", ["x"] * 7)
    summary = prepare_visdrone(source, tmp_path / "out")
    assert summary.unreadable == ["VisDrone2019-DET-val/images/broken.jpg"]
    assert not (tmp_path / "out" / "images" / "val" / "broken.jpg").exists()
    assert not (tmp_path / "out" / "labels" / "val" / "broken.txt").exists()
    assert summary.dropped["malformed"] == 12 and len(summary.malformed_rows) == 5
    assert (tmp_path / "out" / "labels" / "val" / "v.txt").read_bytes() == b""
    text = str(summary)
    assert "a.txt line 19, 20, 21, 22, 23 and 7 more" in text
    assert "WARNING: 1 unreadable images skipped: VisDrone2019-DET-val/images/broken.jpg" in text


def test_rerun_mirrors_a_changed_source(source: Path, tmp_path: Path) -> None:
    """An annotation file and an image gone from the source leave the output; the summary counts the disk."""
    out = tmp_path / "out"
    prepare_visdrone(source, out)
    (out / "labels" / "train.cache").write_text("stale")  # Ultralytics' label cache of the split
    train = source / "VisDrone2019-DET-train"
    (train / "annotations" / "a.txt").unlink()  # a.jpg becomes a background image: its old boxes must go
    (train / "images" / "b.jpg").unlink()
    (train / "annotations" / "b.txt").unlink()
    summary = prepare_visdrone(source, out)
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["a.jpg", "c.jpg"]
    assert list((out / "labels" / "train").iterdir()) == []
    assert not (out / "labels" / "train.cache").exists()
    on_disk = {s: len(list((out / "images" / s).iterdir())) for s in ("train", "val", "test")}
    assert summary.images == on_disk == {"train": 2, "val": 1, "test": 1}
    labels = sum(len(list((out / "labels" / s).iterdir())) for s in ("train", "val", "test"))
    assert summary.label_files == labels == 2 and summary.removed == 3
    assert "  removed:     3 files of an earlier run that are no longer in the source" in str(summary).splitlines()


@pytest.mark.parametrize("where", ["VisDrone2019-DET-val/images/yolo", "VisDrone2019-DET-train"])
def test_out_inside_the_source_is_refused(source: Path, where: str) -> None:
    assert_out_refused("visdrone", source, where)
