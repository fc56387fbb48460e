"""CPU benchmark of the EMA layer and of YOLO11n-EMA; prints markdown tables.

(a) Module level: :class:`ultralytics_ema.EMA` against :class:`ultralytics_ema.ReferenceEMA` (the step-by-step math
    of the official code) with the same weights, on the feature maps that the EMA layers of YOLO11n and YOLO11s see at
    imgsz 640, batch 1 and 8, forward (no_grad) and forward + backward. Each repeat runs the reference, the layer and
    the layer with its native CPU kernels switched off (PyTorch ops) back to back, in alternating order, in one
    process; the tables give medians.
(b) Model level: YOLO11n against YOLO11n-EMA (EMA on the three neck outputs, factor 32, built from the plugin's
    ``yolo11n-ema.yaml``): parameters, GFLOPs (torch's FLOP counter, fused model, imgsz 640), PyTorch latency (imgsz
    640, batch 1, fused, eval, no_grad), ONNX Runtime latency (exported by Ultralytics' exporter as ``yolo export
    format=onnx`` does, run with ONNX Runtime's default session options as Ultralytics' ONNX backend does, five timed
    runs per turn) and the time of one training step (forward, loss, backward; batch 8 at imgsz 640). The models take
    turns; PyTorch rows are repeated with the native kernels switched off.

Rows with a speed target say whether the measured ratio meets it. Timings on a shared or
throttled machine are noisy: compare runs taken on the same machine, and prefer several runs to one.

``ultralytics-ema benchmark`` (:mod:`ultralytics_ema.cli`) runs :func:`benchmark`.

Examples:
    ultralytics-ema benchmark            # full run, several times the quick run
    ultralytics-ema benchmark --quick    # fewer shapes and repeats, smaller training step: minutes on 2 cores
    ultralytics-ema benchmark --only module --threads 1
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

os.environ["YOLO_OFFLINE"] = "1"  # before Ultralytics is imported: no network access
os.environ.setdefault("YOLO_VERBOSE", "False")

import torch

import ultralytics_ema
from ultralytics_ema.nn import native
from ultralytics_ema.nn.ema import EMA
from ultralytics_ema.nn.reference import ReferenceEMA

# Feature maps (channels, height, width) of the EMA layers of YOLO11n and YOLO11s-EMA at imgsz 640 (P3, P4, P5).
SHAPES = {"n": [(64, 80, 80), (128, 40, 40), (256, 20, 20)], "s": [(128, 80, 80), (256, 40, 40), (512, 20, 20)]}
# Speed-up targets (reference ms / fast ms), by (channels, height, width, batch, pass).
MODULE_TARGETS = {
    (64, 80, 80, 8, "fwd"): 4.0,
    (64, 80, 80, 1, "fwd"): 2.0,
    (256, 20, 20, 1, "fwd"): 2.0,
    (64, 80, 80, 8, "fwd+bwd"): 2.5,
}
# Table columns of the two benchmarks.
MODULE_COLUMNS = [
    "shape (c, h, w)",
    "batch",
    "pass",
    "reference ms",
    "fast ms",
    "speed-up",
    "repeats",
    "target",
    "PyTorch ops ms",
    "speed-up",
]
MODEL_COLUMNS = ["metric", "YOLO11n", "YOLO11n-EMA", "ratio", "target", "YOLO11n-EMA, reference layers", "ratio"]
# Ratio targets (YOLO11n-EMA / YOLO11n) of the PyTorch model. The ONNX Runtime row runs the exported graph instead of
# the layer's native kernels and is reported without a target.
MODEL_TARGETS = {"PyTorch latency": 1.03, "training step": 1.05}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def take_turns(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2, block: int = 1
) -> dict[str, list[float]]:
    """Run each function ``warmup`` times, then take ``repeats`` turns (order alternating); seconds per call.

    With ``block > 1`` a turn is one untimed call, then ``block`` timed calls of the same function: for runtimes whose
    idle worker threads keep spinning for a while after a call (ONNX Runtime's default), which would slow down the
    first call of the next function. A progress bar on stderr shows the turns and is cleared afterwards, so stdout
    keeps only the tables.
    """
    from ultralytics.utils import TQDM

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for i in TQDM(range(repeats), desc="timing", unit="turn", file=sys.stderr, leave=False):
        for name in order if i % 2 == 0 else order[::-1]:
            if block > 1:
                fns[name]()
            for _ in range(block):
                start = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - start)
    return times


def repeats_for(fns: dict[str, Callable[[], object]], budget: float, low: int, high: int) -> int:
    """Repeats that fit ``budget`` seconds (at least ``low``, at most ``high``), from one timed call of each."""
    start = time.perf_counter()
    for fn in fns.values():
        fn()
    per_round = max(time.perf_counter() - start, 1e-6)
    return max(low, min(high, int(budget / per_round)))


def verdict(ratio: float, target: float | None, higher_is_better: bool) -> str:
    """Markdown cell: the target and whether ``ratio`` meets it."""
    if target is None:
        return ""
    met = ratio >= target if higher_is_better else ratio <= target
    return f"{'≥' if higher_is_better else '≤'}{target:g}: {'met' if met else 'NOT met'}"


@contextlib.contextmanager
def native_switch(use_native: bool) -> Iterator[None]:
    """Switch the native kernels on or off (``ULTRALYTICS_EMA_NATIVE``) for the duration of a call."""
    switch = os.environ.get("ULTRALYTICS_EMA_NATIVE")
    os.environ["ULTRALYTICS_EMA_NATIVE"] = "1" if use_native else "0"
    try:
        yield
    finally:
        if switch is None:
            del os.environ["ULTRALYTICS_EMA_NATIVE"]
        else:
            os.environ["ULTRALYTICS_EMA_NATIVE"] = switch


def layer_call(
    m: torch.nn.Module, x: torch.Tensor, kind: str, grad_out: torch.Tensor, use_native: bool = True
) -> Callable[[], object]:
    """A call of layer ``m``: forward under no_grad (``kind`` 'fwd'), or forward + backward of ``grad_out``; with
    ``use_native`` False, with the native kernels switched off for the call."""
    xg = x.clone().requires_grad_(True)

    def call() -> object:
        with native_switch(use_native):
            if kind == "fwd":
                with torch.no_grad():
                    return m(x)
            m.zero_grad(set_to_none=True)
            xg.grad = None
            m(xg).backward(grad_out)

    return call


def module_rows(quick: bool) -> list[str]:
    """Markdown rows of the module-level table."""
    shapes = SHAPES["n"] if quick else SHAPES["n"] + SHAPES["s"]
    budget, low, high = (0.5, 5, 40) if quick else (4.0, 9, 300)
    rows = []
    for c, h, w in shapes:
        for batch in (1, 8):
            torch.manual_seed(0)
            fast = EMA(c, 32)
            ref = ReferenceEMA(c, 32)
            ref.load_state_dict(fast.state_dict())
            x = torch.randn(batch, c, h, w)
            grad_out = torch.randn_like(x)
            for kind in ("fwd", "fwd+bwd"):
                fns = {
                    "ref": layer_call(ref, x, kind, grad_out),
                    "fast": layer_call(fast, x, kind, grad_out),
                    "ops": layer_call(fast, x, kind, grad_out, use_native=False),  # the native kernels' share
                }
                times = take_turns(fns, repeats_for(fns, budget, low, high))
                t = medians_ms(times)
                ratio = t["ref"] / t["fast"]
                target = verdict(ratio, MODULE_TARGETS.get((c, h, w, batch, kind)), higher_is_better=True)
                ops = f"{t['ops']:.3f} | {t['ref'] / t['ops']:.2f}x"
                rows.append(
                    f"| ({c}, {h}, {w}) | {batch} | {kind} | {t['ref']:.3f} | {t['fast']:.3f} | {ratio:.2f}x "
                    f"| {len(times['ref'])} | {target} | {ops} |"
                )
                print(rows[-1], flush=True)
    return rows


def detection_models() -> dict[str, torch.nn.Module]:
    """YOLO11n and YOLO11n-EMA detection models (random weights), the latter from the plugin's YAML."""
    from ultralytics import YOLO

    ultralytics_ema.apply()
    models = {"YOLO11n": YOLO("yolo11n.yaml").model, "YOLO11n-EMA": YOLO("yolo11n-ema.yaml").model}
    n_ema = sum(isinstance(m, EMA) for m in models["YOLO11n-EMA"].modules())
    assert n_ema == 3, f"yolo11n-ema.yaml built {n_ema} EMA layers, expected 3"
    models["YOLO11n-EMA, reference layers"] = with_reference_layers(models["YOLO11n-EMA"])
    return models


def gflops(model: torch.nn.Module, imgsz: int) -> float:
    """GFLOPs of one forward pass at batch 1 (torch's FLOP counter: 2 per multiply-add of convs and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    # Under a dispatch mode such as this counter, the EMA layers run as torch ops (their FLOPs are counted).
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, imgsz, imgsz))
    return counter.get_total_flops() / 1e9


def with_reference_layers(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose EMA layers are ReferenceEMA layers with the same weights (the official layout)."""
    import copy

    model = copy.deepcopy(model)
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is EMA:
                ref = ReferenceEMA(child.gn.num_channels * child.groups, factor=child.groups)
                ref.load_state_dict(child.state_dict())
                for attr in ("i", "f", "type", "np"):  # Ultralytics' bookkeeping attributes
                    if hasattr(child, attr):
                        setattr(ref, attr, getattr(child, attr))
                setattr(parent, name, ref)
    return model


def export_onnx(model: torch.nn.Module, folder: Path, name: str, imgsz: int) -> Path:
    """Export a detection model to ``folder/name.onnx`` with Ultralytics' exporter, as ``yolo export format=onnx`` does
    (batch 1, static shape, its default opset; simplified with onnxslim where that is installed)."""
    import importlib.util

    from ultralytics.engine.exporter import Exporter

    model.pt_path = str(folder / f"{name}.pt")  # the exporter (which exports a copy) names its output after this path
    simplify = importlib.util.find_spec("onnxslim") is not None
    args = {"format": "onnx", "imgsz": imgsz, "batch": 1, "simplify": simplify, "device": "cpu", "verbose": False}
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        return Path(Exporter(overrides=args)(model=model))


def medians_ms(times: dict[str, list[float]]) -> dict[str, float]:
    """Median of each list of seconds, in milliseconds."""
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def model_rows(quick: bool) -> list[str]:
    """Markdown rows of the model-level table."""
    from ultralytics.cfg import get_cfg

    imgsz = 640
    infer_repeats, train_repeats = (8, 2) if quick else (40, 10)
    train_batch, train_imgsz = (2, 320) if quick else (8, 640)
    models = detection_models()
    names = list(models)
    rows = []

    def add(metric: str, values: dict[str, float], fmt: str, target: float | None = None) -> None:
        base, fast, ref = (values[k] for k in names)
        judged = verdict(fast / base, target, higher_is_better=False)
        cells = [f"{base:{fmt}}", f"{fast:{fmt}}", f"{fast / base:.4f}", judged, f"{ref:{fmt}}", f"{ref / base:.4f}"]
        rows.append(f"| {metric} | {' | '.join(cells)} |")
        print(rows[-1], flush=True)

    def add_timed(
        metric: str,
        ops_metric: str,
        call: Callable[..., Callable[[], object]],
        repeats: int,
        warmup: int,
        fmt: str,
        target: float,
    ) -> None:
        """Time ``call(model)`` of each model, and of YOLO11n-EMA with its native kernels off; add both rows."""
        fns = {k: call(m) for k, m in models.items()}
        fns["ops"] = call(models["YOLO11n-EMA"], use_native=False)
        times = medians_ms(take_turns(fns, repeats, warmup=warmup))
        add(metric, times, fmt, target)
        add(ops_metric, {**times, "YOLO11n-EMA": times["ops"]}, fmt)

    add("parameters", {k: float(sum(p.numel() for p in m.parameters())) for k, m in models.items()}, ",.0f")

    # Training step: forward, loss and backward on a fixed synthetic batch (4 boxes per image), BatchNorm in train mode.
    g = torch.Generator().manual_seed(0)
    n_boxes = 4 * train_batch
    batch = {
        "img": torch.rand(train_batch, 3, train_imgsz, train_imgsz, generator=g),
        "batch_idx": torch.arange(train_batch).repeat_interleave(4).float(),
        "cls": torch.randint(0, 80, (n_boxes, 1), generator=g).float(),
        "bboxes": torch.rand(n_boxes, 4, generator=g) * 0.4 + 0.3,
    }

    def train_step(model: torch.nn.Module, use_native: bool = True) -> Callable[[], object]:
        def fn() -> object:
            with native_switch(use_native):
                model.zero_grad(set_to_none=True)
                loss, _ = model.loss(batch)
                loss.sum().backward()

        return fn

    for model in models.values():
        model.args = get_cfg()
        model.train()
    metric = f"training step, batch {train_batch}, imgsz {train_imgsz} (ms)"
    target = MODEL_TARGETS["training step"]
    add_timed(metric, f"{metric}, EMA layers in PyTorch ops", train_step, train_repeats, 1, ".1f", target)

    for model in models.values():
        model.zero_grad(set_to_none=True)
        model.eval()
        model.fuse()  # prints a summary when YOLO_VERBOSE is on
    add(f"GFLOPs, imgsz {imgsz} (fused)", {k: gflops(m, imgsz) for k, m in models.items()}, ".3f")

    x = torch.randn(1, 3, imgsz, imgsz)

    def infer(model: torch.nn.Module, use_native: bool = True) -> Callable[[], object]:
        def fn() -> object:
            with native_switch(use_native), torch.no_grad():
                return model(x)

        return fn

    metric = f"PyTorch latency, batch 1, imgsz {imgsz} (ms)"
    target = MODEL_TARGETS["PyTorch latency"]
    add_timed(metric, "PyTorch latency, EMA layers in PyTorch ops", infer, infer_repeats, 3, ".2f", target)

    try:
        import onnxruntime as ort
    except ImportError:
        rows.append(
            "| ONNX Runtime latency | onnxruntime is not installed (pip install 'ultralytics-ema[export]') | | | | | |"
        )
        print(rows[-1], flush=True)  # like every other row, printed as it comes
        return rows
    with tempfile.TemporaryDirectory() as tmp:
        # ONNX Runtime's default session options, as Ultralytics' ONNX backend uses them.
        paths = {k: export_onnx(m, Path(tmp), f"model{i}", imgsz) for i, (k, m) in enumerate(models.items())}
        sessions = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for k, p in paths.items()}
        feed = {"images": x.numpy()}
        fns = {k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}
        times = take_turns(fns, infer_repeats // 2, 3, block=5)
    add(f"ONNX Runtime {ort.__version__} latency, batch 1, imgsz {imgsz} (ms)", medians_ms(times), ".2f")
    return rows


def benchmark(quick: bool = False, only: str | None = None, threads: int | None = None) -> None:
    """Run the benchmarks and print their markdown tables (rows appear as they are measured).

    Args:
        quick (bool): YOLO11n shapes only, fewer repeats, a smaller training step.
        only (str | None): ``'module'`` or ``'model'`` to run one of the two benchmarks.
        threads (int | None): torch intra-op threads (default: torch's default).
    """
    if threads:
        torch.set_num_threads(threads)

    import ultralytics

    print("# EMA benchmark\n")
    print(f"- torch {torch.__version__}, {torch.get_num_threads()} threads; ultralytics {ultralytics.__version__}")
    print(f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores); Python {platform.python_version()}")
    kernel = "native CPU kernels" if native.enabled() and native.library() else "PyTorch ops (no native CPU kernels)"
    print(f"- EMA layer, float32 on CPU: {kernel}")
    print(f"- mode: {'quick' if quick else 'full'}; medians of interleaved repeats\n", flush=True)
    start = time.perf_counter()

    sections = {
        "module": ("EMA vs ReferenceEMA (factor 32, same weights, float32)", MODULE_COLUMNS, module_rows),
        "model": (
            "YOLO11n vs YOLO11n-EMA (and the same model with the reference EMA layers, for comparison)",
            MODEL_COLUMNS,
            model_rows,
        ),
    }
    for name, (title, columns, rows) in sections.items():
        if only in (None, name):
            print(f"## {title}\n")
            print(f"| {' | '.join(columns)} |")
            print("|---" * len(columns) + "|", flush=True)
            rows(quick)  # prints each row as it is measured
            print()
    print(f"Total time: {time.perf_counter() - start:.0f} s")
