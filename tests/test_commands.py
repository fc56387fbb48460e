"""The installed ``ultralytics-ema`` command: help, one-line errors with exit status 2, train, val, compare,
benchmark, pass-through of ``key=value``, missing datasets; and the demo is learnable."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import BIN, ROOT, assert_ok, cli, run, yolo

EXIT_STATUS = "exit status: 0 done; 2 bad input (one line on stderr); 1 the work failed"


def command(*args: str, **kwargs):
    """Run the installed ``ultralytics-ema`` in a fresh process."""
    return run([str(BIN / "ultralytics-ema"), *args], **kwargs)


@pytest.mark.parametrize(
    "name, words",
    [
        ("", ["prepare", "train", "val", "compare", "benchmark", "deploy", EXIT_STATUS]),
        ("prepare", ["coco", "visdrone"]),
        ("train", ["--model", "--data-dir", "epochs=300 imgsz=640", "key=value", "pretrained=yolo11s.pt"]),
        ("val", ["--model PT", "--data", "key=value", "required"]),
        ("compare", ["--models", "--latency-runs", "comparison.md", "yolo11n-ema-backbone.yaml"]),
        ("benchmark", ["--quick", "--only", "--threads"]),
        ("deploy", ["--stock", "--ema", "--formats", "--python", "yolo benchmark"]),
        ("prepare visdrone", ["--source", "--out", "--copy", "zero-area", "A re-run mirrors"]),
        ("prepare coco", ["--source", "--out", "--copy", "convert_coco", "duplicate image", "zero-area"]),
    ],
)
def test_help(name: str, words: list[str]):
    out = assert_ok(command(*name.split(), "--help"))
    assert out.startswith(f"usage: ultralytics-ema {name}".rstrip() + " ") and all(w in out for w in words), out
    assert EXIT_STATUS in out or name == "prepare"


def test_module_entry_point_and_version():
    from ultralytics_ema import __version__

    assert assert_ok(run([sys.executable, "-m", "ultralytics_ema", "--version"])) == f"ultralytics-ema {__version__}\n"
    assert assert_ok(command()).startswith("usage: ultralytics-ema ")  # no command: the help, exit status 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["nonsense"], "ultralytics-ema: error: argument COMMAND: invalid choice: 'nonsense'"),
        (["train", "--bogus"], "ultralytics-ema train: error: unrecognized arguments: --bogus"),
        (["train", "epochs"], "ultralytics-ema train: error: expected key=value, got 'epochs'"),
        (["train", "foo=1"], "ultralytics-ema train: error: 'foo' is not an Ultralytics argument"),
        (["train", "epochs=abc"], "ultralytics-ema train: error: 'epochs=abc' is of invalid type str."),
        (["val", "data=coco"], "ultralytics-ema val: error: the following arguments are required: --model"),
        (["val", "--model", "nope.pt"], "ultralytics-ema val: error: --model nope.pt: no such file"),
        (["train", "--model", "nope.yaml"], "ultralytics-ema train: error: --model nope.yaml: 'nope.yaml' does not"),
        (["compare", "--models", "yolo11n.yaml", "no.yaml"], "ultralytics-ema compare: error: --models no.yaml: "),
        (["compare", "--latency-runs", "0"], "ultralytics-ema compare: error: --latency-runs must be at least 1"),
        (["benchmark", "--threads", "0"], "ultralytics-ema benchmark: error: --threads must be at least 1"),
        (["prepare", "coco"], "ultralytics-ema prepare coco: error: the following arguments are required: --source"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*args)
    assert code == 2 and "error" not in out, out + err  # stdout: Ultralytics' own (its settings file, first time)
    (line,) = err.splitlines()
    assert line.startswith(message), line


@pytest.mark.parametrize(
    "args, message",
    [
        (["nonsense"], "ultralytics-ema: error: argument COMMAND: invalid choice: 'nonsense'"),
        (["train", "epochs=abc"], "ultralytics-ema train: error: 'epochs=abc' is of invalid type str."),
        (["val", "--model", "nope.pt"], "ultralytics-ema val: error: --model nope.pt: no such file"),
    ],
)
def test_bad_input_of_the_installed_command(args: list[str], message: str, tmp_path: Path):
    done = command(*args, cwd=tmp_path)
    assert done.returncode == 2 and "error" not in done.stdout, done.stdout + done.stderr  # stdout: Ultralytics' own
    (line,) = done.stderr.splitlines()
    assert line.startswith(message), line


def test_every_command_named_in_messages_exists():
    """Package, dataset YAMLs and README tell users to run 'ultralytics-ema ...': each names a real subcommand."""
    known = {
        "prepare coco",
        "prepare visdrone",
        "train",
        "val",
        "compare",
        "benchmark",
        "deploy",
    }  # test_help runs each
    files = [*(ROOT / "ultralytics_ema").rglob("*.py"), *(ROOT / "cfg").rglob("*.yaml"), ROOT / "README.md"]
    named = set()
    for f in files:
        text = f.read_text()
        # scripts/ holds only the repository's YAML generator, for contributors; users are never told to run it
        assert not set(re.findall(r"scripts/[\w./-]*\w", text)) - {"scripts/make_model_yamls.py"}, f"{f} names scripts/"
        # a command: at a line start, in code quotes or after "with: " (prose like "ultralytics-ema changes" is not)
        named |= set(re.findall(r"(?:^|[`'\"]|\s{2}|: )ultralytics-ema ((?:prepare )?[a-z]+)\b", text, re.MULTILINE))
    named -= {"prepare"}  # "ultralytics-ema prepare coco|visdrone", "ultralytics-ema prepare" alone
    assert named and named <= known, named - known


def test_train_passthrough_and_pretrained(tmp_path: Path, tiny_data: Path):
    stock = tmp_path / "yolo11n.pt"
    assert_ok(run([sys.executable, "-c", f"from ultralytics import YOLO; YOLO('yolo11n.yaml').save({str(stock)!r})"]))
    out = assert_ok(
        command(
            "train",
            "--data",
            str(tiny_data),
            f"pretrained={stock}",
            "epochs=1",
            "imgsz=64",
            "batch=8",
            "workers=0",
            "plots=False",
            f"project={tmp_path}",
            "name=run",
            "lr0=0.005",
            cwd=tmp_path,
        )
    )
    assert (
        "ultralytics-ema: transferred 493/499 checkpoint tensors; 6 do not fit: 6 class outputs (class count 80 vs 3)"
        in out
    )
    assert f"Results saved to {tmp_path / 'run'}" in out
    args = yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())
    assert (args["model"], args["epochs"], args["imgsz"], args["batch"], args["lr0"]) == (
        "yolo11n-ema.yaml",
        1,
        64,
        8,
        0.005,
    )
    assert args["pretrained"] == str(stock)


def test_bare_train_uses_demo_and_ema_model(tmp_path: Path):
    """No --data, no --model: YOLO11n-EMA on the demo dataset (generated into datasets_dir), preset overridable."""
    env = {"YOLO_CONFIG_DIR": str(tmp_path / "config")}
    assert_ok(yolo("settings", f"datasets_dir={tmp_path / 'datasets'}", env=env, cwd=tmp_path))
    out = assert_ok(
        command("train", "epochs=1", "imgsz=64", "workers=0", "plots=False", "name=bare", env=env, cwd=tmp_path)
    )
    save_dir = Path(next(x for x in out.splitlines() if x.startswith("Results saved to ")).split(" to ", 1)[1])
    args = yaml.safe_load((save_dir / "args.yaml").read_text())
    assert (args["model"], args["data"], args["epochs"], args["imgsz"], args["batch"]) == (
        "yolo11n-ema.yaml",
        "ema-demo.yaml",
        1,
        64,
        16,  # batch from the demo preset
    )
    assert len(list((tmp_path / "datasets" / "ema-demo" / "images" / "train").glob("*.png"))) == 160


def test_val_command(trained: Path, tiny_data: Path, tmp_path: Path):
    best = trained / "weights" / "best.pt"
    args = ("--model", str(best), "--data", str(tiny_data), "imgsz=64", "plots=False", f"project={tmp_path}", "name=v")
    out = assert_ok(command("val", *args, cwd=tmp_path))
    line = next(x for x in out.splitlines() if x.startswith("mAP50 "))
    assert float(line.split()[1]) >= 0 and float(line.split()[3]) >= 0
    assert line.endswith(f"results in {tmp_path / 'v'}")  # project= passed through (not the settings' runs_dir)


@pytest.mark.parametrize(
    "data, env, prepare",
    [
        ("coco", "ULTRALYTICS_EMA_COCO", "coco"),
        ("visdrone", "ULTRALYTICS_EMA_VISDRONE", "visdrone"),
    ],
)
def test_missing_dataset_message(tmp_path: Path, data: str, env: str, prepare: str):
    root = tmp_path / "nowhere"
    done = command("train", "--data", data, env={env: str(root)}, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"ultralytics-ema train: error: --data {data}: ")
    assert f"no dataset at {root} (looked for {root}/images/val" in line
    assert f"prepare it with: ultralytics-ema prepare {prepare} --source " in line and f"--out {root}" in line
    done = command("train", "--data", data, "--data-dir", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert done.returncode == 2 and f"no dataset at {tmp_path / 'elsewhere'}" in done.stderr
    done = yolo("train", "model=yolo11n-ema.yaml", f"data={data}-local.yaml", env={env: str(root)}, cwd=tmp_path)
    assert done.returncode != 0 and f"no dataset at {root}" in done.stdout + done.stderr


def test_prepared_dataset_found_by_root(tmp_path: Path, tiny_data: Path):
    """A prepared folder (layout of 'ultralytics-ema prepare visdrone') is found by its root, no YAML editing."""
    root = tmp_path / "VisDrone"
    for split in ("train", "val"):
        for kind in ("images", "labels"):
            (root / kind / split).mkdir(parents=True)
            for f in sorted((tiny_data.parent / kind / split).iterdir())[:4]:
                (root / kind / split / f.name).write_bytes(f.read_bytes())
    code = (
        "from ultralytics.data.utils import check_det_dataset\n"
        "d = check_det_dataset('visdrone-local.yaml')\n"
        "print('RESULT', d['nc'], d['path'], d['names'][9])"
    )
    out = assert_ok(run([sys.executable, "-c", code], env={"ULTRALYTICS_EMA_VISDRONE": str(root)}))
    assert f"RESULT 10 {root} motor" in out


def test_compare_writes_table_and_plot(tmp_path: Path, tiny_data: Path):
    out = assert_ok(
        command(
            "compare",
            "--data",
            str(tiny_data),
            "--models",
            "yolo11n.yaml",
            "yolo11n-ema.yaml",
            "epochs=1",
            "imgsz=64",
            "batch=16",
            "workers=0",
            "name=cmp",
            "--latency-runs",
            "3",
            cwd=tmp_path,
        )
    )
    run_dir = tmp_path / "runs" / "compare" / "cmp"  # the default project, relative to the working directory
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == [
        "yolo11n",
        "yolo11n-ema",
        "yolo11n-ema-val",
        "yolo11n-val",
    ]
    table = (run_dir / "comparison.md").read_text()
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| yolo11n")]
    assert [r[0].strip() for r in rows] == ["yolo11n", "yolo11n-ema"]
    params = [int(r[1].replace(",", "")) for r in rows]
    # EMA adds gn (2cg), conv1x1 (cg*cg + cg) and conv3x3 (9cg*cg + cg) with cg = 64/32, 128/32, 256/32
    assert params[1] - params[0] == sum(10 * cg * cg + 4 * cg for cg in (2, 4, 8)) == 896
    from ultralytics.nn.tasks import DetectionModel

    assert params[0] == sum(p.numel() for p in DetectionModel("yolo11n.yaml", nc=3, verbose=False).parameters())
    assert all(float(r[3]) > 0 for r in rows)  # latency measured
    assert (run_dir / "comparison.png").stat().st_size > 1000
    assert table in out


def test_demo_is_learnable(tmp_path: Path):
    """A few epochs on a small demo subset give mAP50 clearly above zero (measured 0.27 here; threshold 0.1)."""
    from ultralytics_ema.data.demo import make_demo_dataset

    data = make_demo_dataset(tmp_path / "demo", n_train=96, n_val=24, imgsz=96)
    assert_ok(
        command(
            "train",
            "--data",
            str(data),
            "epochs=15",
            "imgsz=96",
            "batch=8",
            "warmup_epochs=1",
            "workers=0",
            "plots=False",
            f"project={tmp_path}",
            "name=learn",
            cwd=tmp_path,
        )
    )
    rows = list(csv.DictReader((tmp_path / "learn" / "results.csv").open()))
    assert len(rows) == 15
    assert float(rows[-1]["metrics/mAP50(B)"]) > 0.1


def test_benchmark_quick_tables():
    # The numbers are the machine's; the test checks the tables: every row measured, ratios and targets filled in.
    out = assert_ok(command("benchmark", "--quick"))
    kernels = "native CPU kernels" if "kernels unavailable" not in out else "PyTorch ops (no native CPU kernels)"
    assert f"- EMA layer, float32 on CPU: {kernels}" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| (")]
    assert len(rows) == 12  # 3 YOLO11n shapes x batch 1, 8 x fwd, fwd+bwd
    for cells in rows:
        ref, fast, ops = float(cells[3]), float(cells[4]), float(cells[8])
        assert ref > 0 and fast > 0 and ops > 0
        for shown, ratio in ((cells[5], ref / fast), (cells[9], ref / ops)):  # ratios of the printed (rounded) times
            assert shown.strip().endswith("x") and float(shown.strip()[:-1]) == pytest.approx(ratio, rel=0.02, abs=0.01)
    assert sum("met" in cells[7] for cells in rows) == 4  # the four module targets, each judged
    for metric in ("parameters", "training step", "GFLOPs", "PyTorch latency", "ONNX Runtime"):
        assert any(line.startswith(f"| {metric}") for line in out.splitlines()), metric
    assert "| PyTorch latency, EMA layers in PyTorch ops |" in out and "Total time:" in out
    targets = {c[0].strip(): c[4].strip() for c in (line.split("|")[1:-1] for line in out.splitlines()) if len(c) == 7}
    assert targets["PyTorch latency, batch 1, imgsz 640 (ms)"].startswith("≤1.03: ")
    assert targets["training step, batch 2, imgsz 320 (ms)"].startswith("≤1.05: ")
    assert [t for k, t in targets.items() if k.startswith("ONNX Runtime")] == [""]  # reported without a target
