#!/usr/bin/env python
"""Validate a trained YOLO11 / YOLO11-EMA checkpoint with Ultralytics on a dataset given by short name or path.

Everything after the options is passed to ``YOLO(model).val()`` unchanged, as ``key=value``.

Examples:
    python scripts/val.py --model runs/detect/train/weights/best.pt
    python scripts/val.py --data coco --data-dir /data/coco --model best.pt batch=32 device=0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ultralytics_ema.data.recipes import add_data_arguments, resolve_arguments


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="val.py",
        description=__doc__.split("\n\n")[0],
        epilog="The dataset's preset imgsz is used unless imgsz=... is given (demo 128, coco/visdrone 640).",
    )
    parser.add_argument("--model", required=True, help="trained checkpoint (.pt)")
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    if not Path(args.model).is_file():
        parser.error(f"--model {args.model}: no such file")
    data, preset, overrides = resolve_arguments(parser, args)
    kwargs = {"imgsz": preset["imgsz"], **overrides} if "imgsz" in preset else overrides

    from ultralytics import YOLO

    metrics = YOLO(args.model).val(data=data, **kwargs)
    print(f"mAP50 {metrics.box.map50:.4f}  mAP50-95 {metrics.box.map:.4f}  results in {metrics.save_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
