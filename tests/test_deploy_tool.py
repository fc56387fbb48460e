"""``ultralytics-ema deploy``: the deploy matrix, run end to end on the tiny checkpoint (TorchScript
only; the full matrix, with the heavy runtimes in their own environments, is the documented slow run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import BIN, assert_ok, run

from ultralytics_ema.tools.deploy import pythons


def deploy(*args: str, cwd: Path) -> str:
    """Run the installed command in a fresh process; return its output."""
    return assert_ok(run([str(BIN / "ultralytics-ema"), "deploy", *args], cwd=cwd))


def test_help(tmp_path: Path):
    out = deploy("--help", cwd=tmp_path)
    assert "--stock" in out and "--python" in out and "--formats" in out
    # python -m of the module is the same command
    assert assert_ok(run([sys.executable, "-m", "ultralytics_ema.tools.deploy", "--help"], cwd=tmp_path)) == out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--formats", "onnx,tflite2"], "--formats: unknown format(s) tflite2"),
        (["--python", "onnx"], "--python 'onnx': expected FORMAT[,FORMAT...]=PATH_TO_PYTHON"),
        (["--stock", "missing.pt"], "--stock missing.pt: no such file"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path, trained: Path):
    best = str(trained / "weights" / "best.pt")
    done = run([str(BIN / "ultralytics-ema"), "deploy", "--stock", best, "--ema", best, *args], cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"ultralytics-ema deploy: error: {message}"), line
    assert not (tmp_path / "runs").exists()  # nothing written


def test_matrix_torchscript(trained: Path, tiny_data: Path, tmp_path: Path):
    # The same checkpoint as "stock" and "EMA": one format (each row is two benchmark runs); the rest is the slow run.
    best = trained / "weights" / "best.pt"
    table = tmp_path / "matrix.md"
    args = ["--stock", str(best), "--ema", str(best), "--data", str(tiny_data), "--imgsz", "64"]
    args += ["--formats", "torchscript"]
    deploy(*args, "--repeats", "3", "--project", str(tmp_path / "deploy"), "--output", str(table), cwd=tmp_path)
    lines = table.read_text().splitlines()
    assert lines[0].split("|")[3].strip() == "stock mAP50-95(B)"  # the column names the task's metric
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    assert list(rows) == ["PyTorch", "TorchScript"]
    stock_ok, stock_map, ema_ok, ema_map, ratio = rows["TorchScript"]
    assert stock_ok == ema_ok == "✅", rows
    assert abs(float(ema_map) - float(rows["PyTorch"][3])) <= 0.01 and stock_map == ema_map  # the same checkpoint
    assert float(ratio.split()[0]) > 0  # a latency ratio (its value is the slow run's business, not a test's)


def test_python_option_parsing():
    assert pythons(["saved_model,pb=/tf/python", "paddle=/pd/python"]) == {
        "saved_model": "/tf/python",
        "pb": "/tf/python",
        "paddle": "/pd/python",
    }
    with pytest.raises(ValueError, match="FORMAT"):
        pythons(["saved_model"])
