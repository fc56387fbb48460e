"""Baseline-vs-EMA comparison: train and validate several models with identical settings and seed, then report.

Each model is trained with ``YOLO(model).train()`` on the same data with the same arguments (Ultralytics' default
``seed=0`` and ``deterministic=True`` unless overridden), validated with its ``best.pt``, and timed on the CPU
(batch 1, fused, eval; the models take turns so that they share the machine's state). The run directory gets:

- ``comparison.md``: params, GFLOPs, CPU latency, mAP50, mAP50-95 and train time per model;
- ``comparison.png``: mAP50-95 against CPU latency;
- one Ultralytics run folder per model.

``ultralytics-ema compare`` (:mod:`ultralytics_ema.cli`) runs :func:`compare`.

Examples:
    >>> from ultralytics_ema.tools.compare import compare
    >>> run_dir = compare(["yolo11n.yaml", "yolo11n-ema.yaml"], "ema-demo.yaml", {"epochs": 30, "imgsz": 128})
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

DEFAULT_MODELS = ["yolo11n.yaml", "yolo11n-ema.yaml", "yolo11n-ema-backbone.yaml"]


def compare(models: list[str], data: str, kwargs: dict[str, Any], latency_runs: int = 30) -> Path:
    """Train, validate and time ``models`` on ``data`` with the same Ultralytics arguments; write the report.

    Args:
        models (list[str]): Model YAMLs (or checkpoints) to compare, each trained once.
        data (str): The ``data=`` value for Ultralytics.
        kwargs (dict[str, Any]): Ultralytics training arguments for every model; ``project`` (default
            ``runs/compare``) and ``name`` (default ``exp``, incremented) choose the run directory.
        latency_runs (int): Timed CPU forward passes per model.

    Returns:
        (Path): The run directory with ``comparison.md``, ``comparison.png`` and one run folder per model.
    """
    from ultralytics import YOLO
    from ultralytics.utils.files import increment_path
    from ultralytics.utils.torch_utils import get_flops

    kwargs = dict(kwargs)
    # absolute, so that Ultralytics puts each model's run inside it rather than under its runs_dir
    run_dir = increment_path(
        Path(kwargs.pop("project", "runs/compare")).resolve() / kwargs.pop("name", "exp"), mkdir=True
    )
    imgsz = kwargs.get("imgsz", 640)
    rows = []
    for model_name in models:
        stem = Path(model_name).stem
        model = YOLO(model_name)
        start = time.perf_counter()
        model.train(data=data, project=str(run_dir), name=stem, exist_ok=True, **kwargs)
        train_time = time.perf_counter() - start
        best = YOLO(model.trainer.best)  # the trained model: the dataset's class count
        params = sum(p.numel() for p in best.model.parameters())
        gflops = get_flops(best.model, imgsz)
        metrics = best.val(
            data=data, imgsz=imgsz, batch=kwargs.get("batch", 16), plots=False, project=str(run_dir), name=f"{stem}-val"
        )
        rows.append(
            {
                "model": stem,
                "weights": Path(model.trainer.best),
                "params": params,
                "gflops": gflops,
                "train_s": train_time,
                "map50": metrics.box.map50,
                "map": metrics.box.map,
            }
        )
    for row, latency in zip(rows, cpu_latencies([r["weights"] for r in rows], imgsz, latency_runs)):
        row["latency_ms"] = latency
    table = markdown_table(rows, data, imgsz)
    (run_dir / "comparison.md").write_text(table)
    plot(rows, run_dir / "comparison.png")
    print(f"\n{table}\nResults saved to {run_dir}")
    return run_dir


def cpu_latencies(weights: list[Path], imgsz: int, runs: int) -> list[float]:
    """Median CPU latency in ms of each checkpoint (batch 1, fused, eval), measured in turns."""
    import torch
    from ultralytics import YOLO
    from ultralytics.utils import TQDM

    models = [YOLO(w).model.float().fuse().eval().cpu() for w in weights]
    x = torch.rand(1, 3, imgsz, imgsz)
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for m in models:  # warm-up
            for _ in range(3):
                m(x)
        for _ in TQDM(range(runs), desc="CPU latency"):
            for m, t in zip(models, times):
                start = time.perf_counter()
                m(x)
                t.append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


def markdown_table(rows: list[dict], data: str, imgsz: int) -> str:
    """The comparison as a markdown table."""
    lines = [
        f"Comparison on {data} at imgsz {imgsz} (CPU latency: batch 1, fused, median)",
        "",
        "| model | params | GFLOPs | CPU latency (ms) | mAP50 | mAP50-95 | train time (s) |",
        "|-------|-------:|-------:|-----------------:|------:|---------:|---------------:|",
    ]
    lines += [
        f"| {r['model']} | {r['params']:,} | {r['gflops']:.2f} | {r['latency_ms']:.1f} | {r['map50']:.4f} | "
        f"{r['map']:.4f} | {r['train_s']:.0f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Plot mAP50-95 against CPU latency, one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=150)
    for r in rows:
        ax.scatter(r["latency_ms"], r["map"], s=40)
        ax.annotate(r["model"], (r["latency_ms"], r["map"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("CPU latency (ms, batch 1)")
    ax.set_ylabel("mAP50-95")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
