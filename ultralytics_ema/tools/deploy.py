"""Deploy matrix: a stock and an EMA checkpoint through every CPU export format, end to end with ``yolo benchmark``.

For each format, Ultralytics' own benchmark (``ultralytics.utils.benchmarks.benchmark``, what ``yolo benchmark`` runs)
exports each checkpoint, predicts with the export and validates it on the dataset; then both exports are timed side by
side in the format's runtime (interleaved repeats). Every step runs in a fresh process of the Python that has the
format's runtime (``--python``), so runtimes that cannot share one environment (TensorFlow, PaddlePaddle, ExecuTorch,
CoreML's numpy pin) each get their own. The result is a markdown table: per format, export status and the task's metric
(Ultralytics' benchmark's: mAP50-95 of boxes, masks, keypoints, ..., top-1 accuracy) of the stock and the EMA model, and
the EMA/stock latency ratio; a format passes when its export validates and its metric is within ``--tol`` of the same
model's PyTorch row (with NMS in the model for the ``nms`` rows). CoreML cannot run on Linux: its row checks the
converted spec.

Runs offline (``YOLO_OFFLINE=1``; Ultralytics' auto-install is off). Two things the exporters would fetch are made
locally: onnx2tf's calibration sample (SavedModel, GraphDef) is written into the working folder, and MNN's converter,
which runs ``pip install`` of its telemetry SDK when that is missing, finds a ``pip`` on PATH that refuses.

Examples:
    ultralytics-ema deploy --stock yolo11n.pt --ema yolo11n-ema.pt --data ema-demo.yaml --imgsz 128
    ultralytics-ema deploy ... --formats all \\
        --python saved_model,pb=.venvs/tf/bin/python --python paddle=.venvs/paddle/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# (row label, Ultralytics format, export arguments). PyTorch first: the reference mAP of each model.
ROWS = [
    ("PyTorch", "-", {}),
    ("PyTorch nms", "-", {"nms": True}),  # the reference of the rows with NMS in the graph
    ("TorchScript", "torchscript", {}),
    ("ONNX", "onnx", {}),
    ("ONNX dynamic", "onnx", {"dynamic": True}),
    ("ONNX simplify=False", "onnx", {"simplify": False}),
    ("ONNX nms", "onnx", {"nms": True}),
    ("OpenVINO", "openvino", {}),
    ("OpenVINO INT8", "openvino", {"int8": True}),
    ("MNN", "mnn", {}),
    ("NCNN", "ncnn", {}),
    ("TF SavedModel", "saved_model", {}),
    ("TF GraphDef", "pb", {}),
    ("LiteRT", "litert", {}),
    ("PaddlePaddle", "paddle", {}),
    ("ExecuTorch", "executorch", {}),
    ("CoreML", "coreml", {}),
]
FAST = ["torchscript", "onnx", "openvino", "mnn", "ncnn"]  # the formats the test suite also checks
CALIBRATION = "calibration_image_sample_data_20x128x128x3_float32.npy"  # onnx2tf's sample, else downloaded

# Runs in the format's Python: Ultralytics' benchmark of one format; prints its row and the export's path.
BENCH = """
import json, sys, time
import ultralytics_ema  # registers EMA where the startup hook is not installed (a runtime's own venv)
from pathlib import Path
from ultralytics.engine.exporter import export_formats
from ultralytics.utils.benchmarks import benchmark
weights, data, imgsz, fmt, kwargs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
folder, start = Path(weights).parent, time.time()
df = benchmark(model=weights, data=data, imgsz=imgsz, format=fmt, device="cpu", **kwargs)
suffix = dict(zip(export_formats()["Argument"], export_formats()["Suffix"]))[fmt]
made = [p for p in folder.iterdir() if p.name.endswith(suffix) and p.stat().st_mtime >= start - 1 and fmt != "-"]
path = str(max(made, key=lambda p: p.stat().st_mtime)) if made else weights
print("DEPLOY " + json.dumps({"row": [str(v) for v in df.row(0)], "columns": df.columns, "path": path}))
"""

# Runs in the format's Python: a plain export (for --latency-only), as ``yolo export`` does; prints its path.
EXPORT = """
import json, sys
import ultralytics_ema
from ultralytics import YOLO
weights, imgsz, fmt, kwargs, data = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
from ultralytics.engine.exporter import export_formats
if "data" in dict(zip(export_formats()["Argument"], export_formats()["Arguments"]))[fmt]:
    kwargs["data"] = data  # INT8 calibration
print("DEPLOY " + json.dumps({"path": str(YOLO(weights).export(format=fmt, imgsz=imgsz, **kwargs))}))
"""

# Runs in the format's Python: both exports through AutoBackend, timed in interleaved turns; prints the medians.
LATENCY = """
import json, statistics, sys, time
import torch
import ultralytics_ema
from ultralytics.nn.autobackend import AutoBackend
paths, imgsz, repeats = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
models = [AutoBackend(p, device=torch.device("cpu")) for p in paths]
x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
for m in models:
    for _ in range(10):  # TorchScript's profiling executor re-optimizes during the first calls
        m(x)
times = [[], []]
for i in range(repeats):
    for k in ((0, 1) if i % 2 == 0 else (1, 0)):
        models[k](x)
        for _ in range(3):
            t = time.perf_counter(); models[k](x); times[k].append(time.perf_counter() - t)
print("DEPLOY " + json.dumps([statistics.median(t) * 1e3 for t in times]))
"""

# Runs in CoreML's Python: the converted spec (CoreML models cannot run on Linux).
COREML_SPEC = """
import json, sys
import coremltools as ct
spec = ct.models.MLModel(sys.argv[1], skip_model_load=True).get_spec()
blocks = [b for f in spec.mlProgram.functions.values() for b in f.block_specializations.values()]
ops = [op.type for b in blocks for op in b.operations]
shapes = {o.name: list(o.type.multiArrayType.shape) for o in spec.description.output}
print("DEPLOY " + json.dumps({"ops": len(ops), "outputs": shapes}))
"""


def environment(folder: Path) -> dict[str, str]:
    """Environment of the runs: offline, no auto-install, and a ``pip`` on PATH that refuses (see module docstring)."""
    shim = folder / ".no-pip"
    shim.mkdir(parents=True, exist_ok=True)
    for name in ("pip", "pip3"):
        script = shim / name
        script.write_text("#!/bin/sh\necho 'ultralytics-ema deploy: pip is disabled during exports' >&2\nexit 1\n")
        script.chmod(0o755)
    return {
        **os.environ,
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "False",
        "MPLBACKEND": "Agg",
        "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def run(python: str, code: str, args: list[str], cwd: Path, env: dict, log: Path, timeout: int) -> tuple:
    """Run ``code`` in ``python`` with ``args``; append its output to ``log``; return (JSON of its DEPLOY line or None,
    its output)."""
    try:
        p = subprocess.run(
            [python, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        out = p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = f"{e.stdout or ''}{e.stderr or ''}\nError: timed out after {timeout} s"
    except OSError as e:  # e.g. no such interpreter
        out = f"Error: {python}: {e}"
    with log.open("a") as f:
        f.write(f"\n$ {python} -c <{' '.join(args)[:300]}>\n{out}\n")
    lines = [line[7:] for line in out.splitlines() if line.startswith("DEPLOY ")]
    return (json.loads(lines[-1]) if lines else None), out


def failure(out: str) -> str:
    """The last error line of a run's output (Ultralytics' benchmark logs one per failed format), for a table cell."""
    errors = [line for line in out.splitlines() if "Benchmark failure" in line or "Error" in line]
    return (errors[-1].split("Benchmark failure for ", 1)[-1] if errors else "no result")[:120].replace("|", "/")


def pythons(specs: list[str]) -> dict[str, str]:
    """``FORMAT[,FORMAT...]=PYTHON`` options as a format -> interpreter map."""
    table = {}
    for spec in specs:
        formats, sep, python = spec.partition("=")
        if not sep or not python:
            raise ValueError(f"--python {spec!r}: expected FORMAT[,FORMAT...]=PATH_TO_PYTHON")
        table.update(dict.fromkeys(formats.split(","), os.path.abspath(python)))  # runs use other working folders
    return table


def header(metric: str) -> list[str]:
    """The matrix table's header (printed at once), its metric columns named by the task's metric."""
    table = [
        f"| format | stock | stock {metric} | EMA | EMA {metric} | EMA/stock latency |",
        "|---|---|---:|---|---:|---:|",
    ]
    print("\n".join(table), flush=True)
    return table


def matrix(rows: list, models: dict, python: dict, args: argparse.Namespace, env: dict, log: Path) -> list[str]:
    """Benchmark each row's format for both models, time the two exports; return the markdown table's lines."""
    table, reference = [], {}
    for label, fmt, kwargs in rows:
        exe = python.get(fmt, sys.executable)
        cells, paths = [], []
        for name, weights in models.items():
            bench_args = [str(weights), args.data, str(args.imgsz), fmt, json.dumps(kwargs)]
            got, out = run(exe, BENCH, bench_args, weights.parent, env, log, args.timeout)
            if got and not table:  # the header names the task's metric: mAP50-95(B), mAP50-95(M), ..., top1_acc
                table = header(got["columns"][4].removeprefix("metrics/"))
            status, metric = ("no result", None) if got is None else (got["row"][2], got["row"][4])
            mAP = float(metric) if metric not in (None, "-", "None") else None
            key = (name, bool(kwargs.get("nms")))  # rows with NMS in the graph compare with PyTorch with NMS
            if fmt == "-" and mAP is not None:
                reference[key] = mAP
            if mAP is None:
                detail = "exported (no CoreML runtime on Linux)" if fmt == "coreml" else failure(out)
                cells += [f"{status} {detail}", "-"]
            else:
                off = abs(mAP - reference.get(key, mAP))
                cells += ["✅" if off <= args.tol else f"⚠️ differs by {off:.3f}", f"{mAP:.4f}"]
            paths.append(got["path"] if got else None)
        for i, path in enumerate(paths if fmt == "coreml" else []):
            spec, _ = run(exe, COREML_SPEC, [path], log.parent, env, log, 600) if path else (None, "")
            if spec:
                cells[2 * i] = f"❎ converted: {spec['ops']} ops, outputs {spec['outputs']}"
        ratio = "-"
        if fmt not in ("-", "coreml") and all(paths) and "-" not in (cells[1], cells[3]):
            ms = timed(exe, paths, args, env, log)
            ratio = f"{ms[1] / ms[0]:.3f} ({ms[0]:.1f} / {ms[1]:.1f} ms)" if ms else "-"
        table = table or header("mAP50-95")  # no run gave a result: no metric name to read
        table.append(f"| {label} | {' | '.join(cells)} | {ratio} |")
        print(table[-1], flush=True)
    return table


def timed(exe: str, paths: list[str], args: argparse.Namespace, env: dict, log: Path) -> list[float] | None:
    """Median ms per image of the two exports, in interleaved turns in the format's runtime."""
    return run(exe, LATENCY, [json.dumps(paths), str(args.imgsz), str(args.repeats)], log.parent, env, log, 1800)[0]


def latencies(rows: list, models: dict, python: dict, args: argparse.Namespace, env: dict, log: Path) -> list[str]:
    """Export both models per row (no validation) and time them; return the markdown table's lines."""
    table = ["| format | YOLO stock ms | EMA ms | EMA/stock |", "|---|---:|---:|---:|"]
    print("\n".join(table), flush=True)
    for label, fmt, kwargs in rows:
        if fmt in ("-", "coreml"):
            continue
        exe = python.get(fmt, sys.executable)
        paths = [run(exe, EXPORT, [str(w), str(args.imgsz), fmt, json.dumps(kwargs), args.data], w.parent, env, log,
                     args.timeout)[0] for w in models.values()]  # fmt: skip
        ms = timed(exe, [p["path"] for p in paths], args, env, log) if all(paths) else None
        cells = [f"{ms[0]:.2f}", f"{ms[1]:.2f}", f"{ms[1] / ms[0]:.3f}"] if ms else ["export failed", "-", "-"]
        table.append(f"| {label} | {' | '.join(cells)} |")
        print(table[-1], flush=True)
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the deploy matrix (``ultralytics-ema deploy``)."""
    parser.add_argument("--stock", required=True, help="stock checkpoint (e.g. a trained yolo11n best.pt)")
    parser.add_argument("--ema", required=True, help="EMA checkpoint (e.g. a trained yolo11n-ema best.pt)")
    parser.add_argument("--data", default="ema-demo.yaml", help="dataset YAML for validation and INT8 calibration")
    parser.add_argument("--imgsz", type=int, default=128, help="image size of exports, validation and timing")
    parser.add_argument("--formats", default="fast", help=f"'fast' ({','.join(FAST)}), 'all', or a comma list")
    parser.add_argument("--python", action="append", default=[], help="FORMAT[,FORMAT...]=PYTHON (repeatable)")
    parser.add_argument("--project", default="runs/deploy", help="working folder (exports, logs)")
    parser.add_argument("--repeats", type=int, default=20, help="interleaved timing turns per format")
    parser.add_argument("--latency-only", action="store_true", help="export and time only (no benchmark/validation)")
    parser.add_argument("--tol", type=float, default=0.01, help="allowed mAP50-95 difference to PyTorch")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per export/validation run")
    parser.add_argument("--output", help="also write the table to this markdown file")


def deploy(args: argparse.Namespace) -> list[str]:
    """Run the matrix (or the timing only) for ``args`` (see :func:`add_arguments`); return the markdown table.

    Raises:
        ValueError: For an unknown format, a malformed ``--python`` or a checkpoint that does not exist (one line).
    """
    wanted = {"fast": FAST, "all": [r[1] for r in ROWS if r[1] != "-"]}.get(args.formats, args.formats.split(","))
    unknown = set(wanted) - {r[1] for r in ROWS}
    if unknown:
        raise ValueError(f"--formats: unknown format(s) {', '.join(sorted(unknown))}")
    for flag, weights in (("--stock", args.stock), ("--ema", args.ema)):
        if not Path(weights).is_file():
            raise ValueError(f"{flag} {weights}: no such file (a trained checkpoint such as .../weights/best.pt)")
    python = pythons(args.python)
    rows = [r for r in ROWS if r[1] in wanted]
    nms = any(r[2].get("nms") for r in rows)
    rows = [r for r in ROWS if r[1] == "-" and (nms or not r[2].get("nms"))] + rows  # the references of the others
    project = Path(args.project).resolve()
    env, log = environment(project), project / "deploy.log"
    models = {}
    for name, weights in (("stock", args.stock), ("ema", args.ema)):
        folder = project / name
        folder.mkdir(parents=True, exist_ok=True)
        models[name] = folder / f"{name}.pt"
        shutil.copy(weights, models[name])
        if not (folder / CALIBRATION).exists():  # onnx2tf's sample; used by its INT8 path only
            import numpy as np

            np.save(folder / CALIBRATION, np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    table = (latencies if args.latency_only else matrix)(rows, models, python, args, env, log)
    if args.output:
        Path(args.output).write_text("\n".join(table) + "\n")
    print(f"\nLogs: {log}")
    return table


def main(argv: list[str] | None = None) -> int:
    """``python -m ultralytics_ema.tools.deploy``: the same as ``ultralytics-ema deploy``."""
    from ultralytics_ema.cli import main as cli

    return cli(["deploy", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
