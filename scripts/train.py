#!/usr/bin/env python
"""Train YOLO11 / YOLO11-EMA with Ultralytics: a thin wrapper for short dataset names, presets and fine-tuning.

``python scripts/train.py`` trains YOLO11n-EMA on the demo dataset. Everything after the options is passed to
``YOLO(model).train()`` unchanged, as ``key=value`` like the ``yolo`` CLI (``epochs=3 device=0 batch=32``).

Examples:
    python scripts/train.py
    python scripts/train.py --data coco --data-dir /data/coco --model yolo11s-ema.yaml --pretrained yolo11s.pt device=0
    python scripts/train.py --data visdrone --model yolo11x-ema.yaml imgsz=1024 batch=8 device=0,1
    python scripts/train.py --data my-data.yaml --pretrained yolo11n.pt epochs=100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ultralytics_ema.data.recipes import add_data_arguments, resolve_arguments

EPILOG = """\
presets (a key=value argument overrides them):
  demo      epochs=30 imgsz=128 batch=16  (CPU, a few minutes)
  coco      epochs=300 imgsz=640          (the EMA paper's COCO setting; needs a GPU and ~20 GB of images)
  visdrone  epochs=300 imgsz=640          (the paper trained at 640 px, imgsz=1024 is common; GPU, ~2 GB)
Prepare COCO / VisDrone first with scripts/prepare_coco.py / scripts/prepare_visdrone.py.

--pretrained loads a stock YOLO11 checkpoint of the same scale: every tensor reaches its layer, only EMA's own
parameters start fresh, and the log says how many tensors were transferred.
"""


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="yolo11n-ema.yaml", help="model YAML or .pt (default: yolo11n-ema.yaml)")
    parser.add_argument("--pretrained", metavar="PT", help="checkpoint to start from, e.g. a stock yolo11n.pt")
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    if args.pretrained and not Path(args.pretrained).is_file():
        parser.error(f"--pretrained {args.pretrained}: no such file")
    data, preset, overrides = resolve_arguments(parser, args)
    kwargs = {**preset, **overrides}
    if args.pretrained:
        kwargs["pretrained"] = args.pretrained

    from ultralytics import YOLO

    model = YOLO(args.model)
    model.train(data=data, **kwargs)
    print(f"Results saved to {model.trainer.save_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
