"""The ``ultralytics-ema`` command: dataset preparation, training and validation by short dataset name, the
baseline-vs-EMA comparison, the CPU benchmark and the deploy matrix (every export format). Installed with the package
(``[project.scripts]``); ``python -m ultralytics_ema`` is the same command.

Options of this package are ``--options``; everything of the form ``key=value`` goes to Ultralytics unchanged, typed
as the ``yolo`` command types it (``epochs=3 device=0 batch=32``). Long work shows Ultralytics' progress bars.

Exit status: 0 done; 2 bad input (arguments, a dataset that is missing or malformed, an output folder inside the
source), reported in one line on stderr; 1 the work itself failed (an error raised inside Ultralytics or PyTorch,
with its traceback).

Examples:
    ultralytics-ema prepare coco --source /downloads/coco2017 --out /data/coco
    ultralytics-ema train --data coco --data-dir /data/coco --model yolo11s-ema.yaml pretrained=yolo11s.pt device=0
    ultralytics-ema val --model runs/detect/train/weights/best.pt --data coco --data-dir /data/coco
    ultralytics-ema compare --data demo
    ultralytics-ema benchmark --quick
    ultralytics-ema deploy --stock yolo11n/best.pt --ema yolo11n-ema/best.pt --data ema-demo.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

BAD_INPUT = 2  # exit status for bad input, as argparse uses it

PRESETS = """\
presets of --data (a key=value argument overrides them):
  demo      epochs=30 imgsz=128 batch=16  (CPU, a few minutes; generated offline on first use)
  coco      epochs=300 imgsz=640          (the EMA paper's COCO setting; needs a GPU and ~20 GB of images)
  visdrone  epochs=300 imgsz=640          (the paper trained at 640 px, imgsz=1024 is common; GPU, ~2 GB)
  PATH.yaml no preset
COCO and VisDrone are prepared once with 'ultralytics-ema prepare coco|visdrone'; --data-dir names the folder.
"""

EXIT_STATUS = """\
exit status: 0 done; 2 bad input (one line on stderr); 1 the work failed (an error inside Ultralytics or PyTorch).
"""

PREPARE_COCO = """\
Convert the official COCO 2017 layout to the Ultralytics YOLO layout.

--source holds annotations/instances_train2017.json and/or annotations/instances_val2017.json, and the
image folders train2017/ and val2017/ next to annotations/. Each split with both becomes, in --out:

  OUT/images/{train2017,val2017}/   the images (hard links where possible, else copies)
  OUT/labels/{train2017,val2017}/   YOLO box labels written by ultralytics.data.converter.convert_coco
  OUT/coco.yaml                     data YAML: path (absolute OUT), train/val, the 80 class names
"""

PREPARE_COCO_RULES = """\
The instances JSONs are checked first: invalid JSON, a missing key, a duplicate image, annotation or category id,
two images with one file name, an annotation of an unknown image id or category, a category outside COCO's 80
detection classes, an image size or box size that is negative or not a number stop the run before anything is
written, with one line naming the file and the record (exit status 2).

rules for each annotation (a dropped one counts under the first reason that applies):
  crowd      iscrowd 1 (COCO evaluates these as ignore regions)
  zero-area  no area left after clipping the box to the image (width x height of the images record)
  kept       clipped to the image; the 91 COCO category ids become the 80 classes (Ultralytics' convert_coco)

An image without annotations gets no label file (a background image); one whose annotations are all dropped gets
an empty one. A split with a JSON but no image folder is skipped and reported. Converting train2017 loads its
450 MB JSON: expect several GB of memory.
"""

PREPARE_VISDRONE = """\
Convert the official VisDrone2019-DET split folders to the Ultralytics YOLO layout.

--source holds one or more of the unzipped folders VisDrone2019-DET-train, VisDrone2019-DET-val and
VisDrone2019-DET-test-dev, each with images/*.jpg and annotations/*.txt (rows x,y,w,h,score,category,truncation,
occlusion). They become the splits train, val and test in --out:

  OUT/images/{train,val,test}/   the images (hard links where possible, else copies)
  OUT/labels/{train,val,test}/   YOLO labels "cls xc yc w h", normalised, 6 decimals
  OUT/visdrone.yaml              data YAML: path (absolute OUT), the splits present, the 10 class names
"""

PREPARE_VISDRONE_RULES = """\
rules for each annotation row (a dropped row counts under the first reason that applies):
  malformed       not 8 fields (one trailing comma allowed), non-numeric, negative w/h, category not 0-11
  ignored-region  category 0
  others          category 11 (Ultralytics' own VisDrone script wrongly writes it as class 10)
  score-0         score 0 (ignored in the ground truth)
  zero-area       no area left after clipping the box to the image (size read from the image header)
  kept            categories 1-10 become classes 0-9: pedestrian, people, bicycle, car, van, truck,
                  tricycle, awning-tricycle, bus, motor

An image with an annotation file gets a label file (empty if no row is kept); an image without one gets
none and is a background image.
"""

PREPARE_COMMON = """\
--out must not lie inside a source folder (the images would be read back as source images). Every file is written
under a temporary name and renamed into place, so an interrupted run leaves no half-written file. A re-run mirrors
the current source: images and labels no longer in it are removed from the output's split folders (a split the
source does not have is left alone and reported), unchanged files are left alone, and the summary's counts are the
files on disk.
"""


class Parser(argparse.ArgumentParser):
    """``argparse`` parser whose errors are one line on stderr and exit status :data:`BAD_INPUT`."""

    def error(self, message: str) -> NoReturn:
        """Report bad input in one line and exit."""
        self.exit(BAD_INPUT, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def fail(self, message: object) -> NoReturn:
        """Report bad input found after parsing (a missing dataset, a malformed file) in one line and exit."""
        self.exit(BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> Parser:
    """Return the parser of ``ultralytics-ema`` and its subcommands."""
    from ultralytics_ema import __version__

    parser = Parser(
        prog="ultralytics-ema",
        description="EMA attention for Ultralytics YOLO: prepare data, train, validate, compare, benchmark, deploy.",
        epilog="key=value arguments go to Ultralytics unchanged; see 'ultralytics-ema COMMAND --help'.\n" + EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ultralytics-ema {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    prepare = _command(commands, "prepare", "convert a COCO or VisDrone download to the YOLO layout", None)
    datasets = prepare.add_subparsers(title="datasets", metavar="DATASET")
    for name, what, description, rules, source in (
        ("coco", "COCO 2017", PREPARE_COCO, PREPARE_COCO_RULES, "folder holding annotations/, train2017/, val2017/"),
        (
            "visdrone",
            "VisDrone2019-DET",
            PREPARE_VISDRONE,
            PREPARE_VISDRONE_RULES,
            "folder holding the unzipped VisDrone2019-DET-* split folders",
        ),
    ):
        example = f"ultralytics-ema prepare {name} --source /downloads/{name} --out /data/{name}"
        sub = _command(
            datasets,
            name,
            f"convert {what} to the YOLO layout",
            _prepare,
            description=description,
            epilog=f"{rules}\n{PREPARE_COMMON}\n{EXIT_STATUS}\nexample:\n  {example}\n"
            f"  ultralytics-ema train --data {name} --data-dir /data/{name}\n",
        )
        sub.add_argument("--source", required=True, metavar="DIR", help=source)
        sub.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
        sub.add_argument("--copy", action="store_true", help="copy the images instead of hard-linking them")
        sub.set_defaults(dataset=name)

    train = _command(
        commands,
        "train",
        "train on a dataset by short name, with its preset",
        _train,
        epilog=f"{PRESETS}\n{EXIT_STATUS}\nexamples:\n  ultralytics-ema train\n"
        "  ultralytics-ema train --data coco --data-dir /data/coco --model yolo11s-ema.yaml pretrained=yolo11s.pt "
        "device=0\n  ultralytics-ema train --data my-data.yaml pretrained=yolo11n.pt epochs=100\n",
    )
    train.add_argument("--model", default="yolo11n-ema.yaml", help="model YAML or .pt (default: yolo11n-ema.yaml)")
    _data_arguments(train)

    val = _command(
        commands,
        "val",
        "validate a trained checkpoint",
        _val,
        epilog="The dataset's preset imgsz is used unless imgsz=... is given (demo 128, coco/visdrone 640).\n"
        f"{EXIT_STATUS}\nexample:\n  ultralytics-ema val --model runs/detect/yolo11n-ema-demo/weights/best.pt\n",
    )
    val.add_argument("--model", required=True, metavar="PT", help="trained checkpoint (.pt), required")
    _data_arguments(val)

    from ultralytics_ema.tools.compare import DEFAULT_MODELS  # light: the tool imports Ultralytics when it runs

    compare = _command(
        commands,
        "compare",
        "baseline vs EMA: train, validate and time several models alike",
        _compare,
        description="Train and validate each model with identical arguments and seed, time it on the CPU (batch 1,\n"
        "fused, models in turns) and write comparison.md (params, GFLOPs, CPU latency, mAP50, mAP50-95, train time)\n"
        "and comparison.png (mAP50-95 against latency) into runs/compare/exp* (project=..., name=... choose it).",
        epilog=f"{PRESETS}key=value arguments go to every training.\n{EXIT_STATUS}\nexamples:\n"
        "  ultralytics-ema compare --data demo\n"
        "  ultralytics-ema compare --data coco --data-dir /data/coco --models yolo11s.yaml yolo11s-ema.yaml device=0\n",
    )
    compare.add_argument(
        "--models",
        nargs="+",
        default=DEFAULT_MODELS,
        metavar="MODEL",
        help=f"models to compare (default: {' '.join(DEFAULT_MODELS)})",
    )
    compare.add_argument(
        "--latency-runs", type=int, default=30, metavar="N", help="timed CPU forward passes per model (default: 30)"
    )
    _data_arguments(compare)

    benchmark = _command(
        commands,
        "benchmark",
        "CPU benchmark of the EMA layer and of YOLO11n-EMA",
        _benchmark,
        description="Measure, side by side in one process, the EMA layer against the step-by-step reference (same\n"
        "weights) and YOLO11n against YOLO11n-EMA (parameters, GFLOPs, PyTorch and ONNX Runtime latency, training\n"
        "step), each also with the native kernels off; print markdown tables with the speed targets.",
        epilog=f"{EXIT_STATUS}\nexamples:\n"
        "  ultralytics-ema benchmark             # all shapes and repeats: several times the quick run\n"
        "  ultralytics-ema benchmark --quick     # YOLO11n shapes, few repeats: minutes on 2 CPU cores\n",
    )
    benchmark.add_argument("--quick", action="store_true", help="YOLO11n shapes only, fewer repeats, smaller step")
    benchmark.add_argument("--only", choices=["module", "model"], help="run one of the two benchmarks")
    benchmark.add_argument("--threads", type=int, metavar="N", help="torch intra-op threads (default: torch's)")

    from ultralytics_ema.tools import deploy  # light: the tool runs Ultralytics in subprocesses

    deploy_command = _command(
        commands,
        "deploy",
        "export a stock and an EMA checkpoint to every CPU format, validate and time each",
        _deploy,
        description=deploy.__doc__.split("\n\nRuns offline")[0],
        epilog=f"{EXIT_STATUS}\nexamples:\n"
        "  ultralytics-ema deploy --stock yolo11n/best.pt --ema yolo11n-ema/best.pt --data ema-demo.yaml\n"
        "  ultralytics-ema deploy ... --formats all --python saved_model,pb=tf/bin/python \\\n"
        "      --python litert=litert/bin/python\n",
    )
    deploy.add_arguments(deploy_command)
    return parser


def _command(commands, name: str, summary: str, handler: Callable | None, **kwargs) -> Parser:
    """Add subcommand ``name`` that runs ``handler(args, parser)``."""
    kwargs.setdefault("description", summary[0].upper() + summary[1:] + ".")
    sub = commands.add_parser(name, help=summary, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    sub.set_defaults(handler=handler, parser=sub)
    return sub


def _data_arguments(parser: Parser) -> None:
    """``--data``, ``--data-dir`` and the trailing ``key=value`` arguments of train, val and compare."""
    parser.add_argument(
        "--data",
        default="demo",
        help="demo, coco, visdrone or a data YAML (default: demo, generated offline on first use)",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="root of a prepared COCO or VisDrone (default: $ULTRALYTICS_EMA_COCO / $ULTRALYTICS_EMA_VISDRONE, "
        "else <datasets_dir>/coco or <datasets_dir>/VisDrone)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="any Ultralytics argument, passed through")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse Ultralytics ``key=value`` arguments, typed and checked as the ``yolo`` command does.

    Args:
        pairs (list[str]): E.g. ``["epochs=3", "device=cpu"]``.

    Returns:
        (dict[str, Any]): E.g. ``{"epochs": 3, "device": "cpu"}``.

    Raises:
        ValueError: For an item without ``=``, an empty value, a key Ultralytics does not know or a value of the
            wrong type; the message is one line.
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT, check_cfg, parse_key_value_pair

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"expected key=value, got {pair!r}")
        try:
            key, value = parse_key_value_pair(pair)
        except AssertionError as e:
            raise ValueError(f"{pair!r}: {e}") from None
        if key not in DEFAULT_CFG_DICT:
            raise ValueError(f"{key!r} is not an Ultralytics argument ('yolo cfg' lists them)")
        out[key] = value
    try:
        check_cfg(dict(out))
    except (TypeError, ValueError) as e:
        raise ValueError(str(e).strip().splitlines()[0]) from None
    return out


def _dataset(args: argparse.Namespace) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``data=`` for Ultralytics, the dataset's preset and the overrides; bad input ends the command in one line.

    The dataset is checked (the demo generated) here, so a missing dataset stops before any model is built.
    """
    from ultralytics_ema.data.recipes import data_and_preset

    parser = args.parser
    try:
        data, preset = data_and_preset(args.data, args.data_dir)
        overrides = parse_overrides(args.overrides)
    except ValueError as e:
        parser.error(str(e))
    for key in ("data", "model"):
        if key in overrides:
            parser.error(f"pass {key} as --{key}, not {key}={overrides[key]}")
    from ultralytics.data.utils import check_cls_dataset, check_det_dataset

    models = getattr(args, "models", None) or [args.model]
    check = check_cls_dataset if all("-cls" in Path(str(m)).stem for m in models) else check_det_dataset
    try:
        check(data)
    except Exception as e:  # missing file, missing images, bad YAML: Ultralytics raises several types
        parser.fail(f"--data {args.data}: {str(e).strip().splitlines()[0]}")
    return data, preset, overrides


def _check_models(args: argparse.Namespace, flag: str, names: list[str]) -> None:
    """End the command in one line if a model YAML does not resolve (bare names of packaged and stock YAMLs do)."""
    from ultralytics.nn.tasks import yaml_model_load  # resolves scaled names; the plugin adds the packaged YAMLs

    for name in names:
        if Path(str(name)).suffix in (".yaml", ".yml"):
            try:
                yaml_model_load(name)
            except FileNotFoundError as e:
                args.parser.fail(f"{flag} {name}: {str(e).strip().splitlines()[0]}")


def _prepare(args: argparse.Namespace) -> int:
    """``ultralytics-ema prepare coco|visdrone``."""
    from ultralytics_ema.data import DatasetSourceError, prepare_coco, prepare_visdrone

    prepare = {"coco": prepare_coco, "visdrone": prepare_visdrone}[args.dataset]
    try:
        summary = prepare(args.source, args.out, copy=args.copy)
    except DatasetSourceError as e:
        args.parser.fail(e)
    print(summary)
    return 0


def _train(args: argparse.Namespace) -> int:
    """``ultralytics-ema train``."""
    _check_models(args, "--model", [args.model])
    data, preset, overrides = _dataset(args)
    from ultralytics import YOLO

    model = YOLO(args.model)
    model.train(data=data, **{**preset, **overrides})
    print(f"Results saved to {model.trainer.save_dir}")
    return 0


def _val(args: argparse.Namespace) -> int:
    """``ultralytics-ema val``."""
    if not Path(args.model).is_file():
        args.parser.fail(f"--model {args.model}: no such file (a trained checkpoint such as .../weights/best.pt)")
    data, preset, overrides = _dataset(args)
    kwargs = {"imgsz": preset["imgsz"], **overrides} if "imgsz" in preset else overrides
    from ultralytics import YOLO

    metrics = YOLO(args.model).val(data=data, **kwargs)
    print(f"mAP50 {metrics.box.map50:.4f}  mAP50-95 {metrics.box.map:.4f}  results in {metrics.save_dir}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """``ultralytics-ema compare``."""
    # --models takes several values, so it also swallows the key=value arguments that follow it: hand them back
    args.overrides = [m for m in args.models if "=" in m] + args.overrides
    args.models = [m for m in args.models if "=" not in m]
    if not args.models:
        args.parser.error("--models needs at least one model")
    if args.latency_runs < 1:
        args.parser.error("--latency-runs must be at least 1")
    if len(set(args.models)) != len(args.models):
        args.parser.error("--models lists a model twice")
    _check_models(args, "--models", args.models)
    data, preset, overrides = _dataset(args)
    from ultralytics_ema.tools.compare import compare

    compare(args.models, data, {**preset, **overrides}, args.latency_runs)
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    """``ultralytics-ema benchmark``."""
    if args.threads is not None and args.threads < 1:
        args.parser.error("--threads must be at least 1")
    from ultralytics_ema.tools.benchmark import benchmark

    benchmark(quick=args.quick, only=args.only, threads=args.threads)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    """``ultralytics-ema deploy``."""
    from ultralytics_ema.tools.deploy import deploy

    try:
        deploy(args)
    except ValueError as e:
        args.parser.fail(e)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``ultralytics-ema``; return the exit status.

    Args:
        argv (list[str] | None): Arguments; ``sys.argv[1:]`` when None.

    Returns:
        (int): 0 done; bad input exits with 2 (``SystemExit``) after one line on stderr.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the subcommand's parser, which names the subcommand
        (getattr(args, "parser", None) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    handler = getattr(args, "handler", None)
    if handler is None:  # no command, or 'prepare' without a dataset
        (getattr(args, "parser", None) or parser).print_help()
        return 0
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
