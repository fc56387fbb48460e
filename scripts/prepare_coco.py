#!/usr/bin/env python
"""Convert the official COCO 2017 download to the Ultralytics YOLO layout, with a ready data YAML.

Run from the repository root after ``pip install -e .``; ``--help`` documents every option. The work is done by
:func:`ultralytics_ema.data.prepare_coco`, which uses Ultralytics' ``convert_coco`` for the labels.

Examples:
    python scripts/prepare_coco.py --source downloads/coco --out datasets/coco
    yolo train model=yolo11n-ema.yaml data=datasets/coco/coco.yaml
"""

from __future__ import annotations

import argparse
import sys

from ultralytics_ema.data import DatasetSourceError, prepare_coco

DESCRIPTION = """\
Convert the official COCO 2017 layout to the Ultralytics YOLO layout.

--source holds annotations/instances_train2017.json and/or annotations/instances_val2017.json, and the
image folders train2017/ and val2017/ next to annotations/. Each split with both becomes, in --out:

  OUT/images/{train2017,val2017}/   the images (hard links where possible, else copies)
  OUT/labels/{train2017,val2017}/   YOLO box labels from ultralytics.data.converter.convert_coco
  OUT/coco.yaml                     data YAML: path (absolute OUT), train/val, the 80 class names
"""

EPILOG = """\
labels: written by Ultralytics' convert_coco (boxes only, COCO's 91 category ids mapped to the 80 classes,
crowd annotations and empty boxes skipped). An image with no annotation gets no label file (a background
image); one with only crowd annotations gets an empty one. A split with a JSON but no image folder is
skipped and reported. Every file is written under a temporary name and renamed into place, so an
interrupted run leaves no half-written file, and re-running gives byte-identical results. A summary with
the counts is printed at the end. Converting train2017 loads its 450 MB JSON: expect several GB of memory.

exit status: 0 done, 2 bad arguments or no usable --source.

example:
  python scripts/prepare_coco.py --source downloads/coco --out datasets/coco
  yolo train model=yolo11n-ema.yaml data=datasets/coco/coco.yaml
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="prepare_coco.py",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--source", required=True, metavar="DIR", help="folder holding annotations/, train2017/ and/or val2017/"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--copy", action="store_true", help="copy the images instead of hard-linking them")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the conversion and print its summary.

    Args:
        argv (list[str] | None): Arguments; ``sys.argv[1:]`` when None.

    Returns:
        (int): Exit status (0 on success; a bad ``--source`` exits with 2 through ``parser.exit``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary = prepare_coco(args.source, args.out, copy=args.copy)
    except DatasetSourceError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")  # one line, no usage text
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
