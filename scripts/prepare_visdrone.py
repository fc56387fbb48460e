#!/usr/bin/env python
"""Convert the official VisDrone2019-DET download to the Ultralytics YOLO layout, with a ready data YAML.

Run from the repository root after ``pip install -e .``; ``--help`` documents every option and rule. The work is done
by :func:`ultralytics_ema.data.prepare_visdrone`.

Examples:
    python scripts/prepare_visdrone.py --source downloads/VisDrone --out datasets/VisDrone
    yolo train model=yolo11n-ema.yaml data=datasets/VisDrone/visdrone.yaml
"""

from __future__ import annotations

import argparse
import sys

from ultralytics_ema.data import DatasetSourceError, prepare_visdrone

DESCRIPTION = """\
Convert the official VisDrone2019-DET split folders to the Ultralytics YOLO layout.

--source holds one or more of the unzipped folders VisDrone2019-DET-train, VisDrone2019-DET-val and
VisDrone2019-DET-test-dev, each with images/*.jpg and annotations/*.txt (rows x,y,w,h,score,category,truncation,
occlusion). They become the splits train, val and test in --out:

  OUT/images/{train,val,test}/   the images (hard links where possible, else copies)
  OUT/labels/{train,val,test}/   YOLO labels "cls xc yc w h", normalised, 6 decimals
  OUT/visdrone.yaml              data YAML: path (absolute OUT), the splits present, the 10 class names
"""

EPILOG = """\
rules for each annotation row (a dropped row counts under the first reason that applies):
  malformed       not 8 fields (one trailing comma allowed), non-numeric, negative w/h, category not 0-11
  ignored-region  category 0
  others          category 11 (Ultralytics' own VisDrone script wrongly writes it as class 10)
  score-0         score 0 (ignored in the ground truth)
  zero-area       no area left after clipping the box to the image (size read from the image header)
  kept            categories 1-10 become classes 0-9: pedestrian, people, bicycle, car, van, truck,
                  tricycle, awning-tricycle, bus, motor

An image with an annotation file gets a label file (empty if no row is kept); an image without one gets
none and is a background image. Every file is written under a temporary name and renamed into place, so
an interrupted run leaves no half-written file, and re-running gives byte-identical results. A summary
with the counts is printed at the end.

exit status: 0 done, 2 bad arguments or no usable --source.

example:
  python scripts/prepare_visdrone.py --source downloads/VisDrone --out datasets/VisDrone
  yolo train model=yolo11n-ema.yaml data=datasets/VisDrone/visdrone.yaml
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="prepare_visdrone.py",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--source", required=True, metavar="DIR", help="folder holding the unzipped VisDrone2019-DET-* split folders"
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
        summary = prepare_visdrone(args.source, args.out, copy=args.copy)
    except DatasetSourceError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")  # one line, no usage text
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
