#!/usr/bin/env python
"""Write the packaged EMA model YAMLs (``cfg/models/{11,26,v8}/``) from the installed Ultralytics' stock YAMLs.

Each packaged YAML is a stock YAML with EMA rows inserted: by default one after every layer whose output feeds the
head (P3/P4/P5 for Detect, Segment, Pose, OBB and Depth heads, P3/P4 for SemanticSegment, the last backbone stage for
Classify). Every EMA row reads the layer before it and replaces that layer's output for all later rows, so the
``from`` indices of later rows are renumbered; every row gets its ``# index`` comment, and each scale its measured
summary (layers, parameters, gradients, GFLOPs as ``YOLO(name).info()`` prints them at imgsz 640).

The committed YAMLs are this script's output; ``tests/test_model_yamls.py`` checks that they still are.

Examples:
    python scripts/make_model_yamls.py           # write every YAML, measuring the summaries (a few minutes on a CPU)
    python scripts/make_model_yamls.py --check   # exit 1 if a committed YAML is not what this script writes
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "cfg" / "models"
FACTOR = 32  # EMA's channel groups; divides the channels of every head input at every scale (tests check)
PAPER = "EMA attention (Efficient Multi-Scale Attention, https://arxiv.org/abs/2305.13563)"
# Modules whose 3rd argument is a stride; nn.Upsample's 2nd is a scale factor; all others keep their input's stride.
_STRIDED = {"Conv", "GhostConv", "DWConv"}


@dataclass(frozen=True)
class Variant:
    """One packaged YAML: the stock YAML it comes from and where EMA goes.

    Attributes:
        stock (str): Stock YAML, relative to Ultralytics' ``cfg/models`` (e.g. ``11/yolo11-seg.yaml``).
        name (str): Output file name, written into the same family folder under ``cfg/models``.
        after (tuple[int, ...]): Stock row indices that get an EMA row after them; empty: the head's inputs.
        header (str): Fixed header comment; empty: written from the template.
        commas (bool): Thousands separators in the summaries (as Ultralytics prints them).
    """

    stock: str
    name: str
    after: tuple[int, ...] = ()
    header: str = ""
    commas: bool = True

    @property
    def path(self) -> Path:
        """Output path under ``cfg/models``."""
        return OUT_DIR / Path(self.stock).parent / self.name


# The two YOLO11 detection YAMLs predate this script; their text is kept as it was (headers, summaries without commas).
_YOLO11_EMA_HEADER = """\
# ultralytics-ema: YOLO11 with EMA attention (Efficient Multi-Scale Attention, https://arxiv.org/abs/2305.13563)
# on the three neck outputs P3/P4/P5 that feed Detect. EMA rows take [factor] (channel groups, default 32); their
# channels come from the layer they follow, so every scale works. Stock YOLO11 layers keep their order; rows after
# the first EMA row have indices shifted by 1-3 against yolo11.yaml.
# 'model=yolo11n-ema.yaml' uses this file with scale 'n'.
"""
_YOLO11_EMA_BACKBONE_HEADER = """\
# ultralytics-ema: YOLO11 with EMA attention (Efficient Multi-Scale Attention, https://arxiv.org/abs/2305.13563)
# after the last two backbone C3k2 blocks (P4, P5) before SPPF, the placement the EMA paper used for YOLOv5s on COCO.
# EMA rows take [factor] (channel groups, default 32); their channels come from the layer they follow. Stock YOLO11
# layers keep their order; rows after the first EMA row have indices shifted by 1-2 against yolo11.yaml.
# 'model=yolo11n-ema-backbone.yaml' uses this file with scale 'n'.
"""
TASKS = ("", "-seg", "-pose", "-obb", "-cls")
VARIANTS = (
    Variant("11/yolo11.yaml", "yolo11-ema.yaml", header=_YOLO11_EMA_HEADER, commas=False),
    Variant("11/yolo11.yaml", "yolo11-ema-backbone.yaml", (6, 8), _YOLO11_EMA_BACKBONE_HEADER, commas=False),
    *(Variant(f"11/yolo11{t}.yaml", f"yolo11{t}-ema.yaml") for t in TASKS[1:]),
    *(Variant(f"26/yolo26{t}.yaml", f"yolo26{t}-ema.yaml") for t in (*TASKS, "-sem", "-depth")),
    *(Variant(f"v8/yolov8{t}.yaml", f"yolov8{t}-ema.yaml") for t in TASKS),
)


def stock_dir() -> Path:
    """Ultralytics' own ``cfg/models`` folder."""
    import ultralytics

    return Path(ultralytics.__file__).parent / "cfg" / "models"


def display(stem: str, scale: str = "") -> str:
    """Model name as Ultralytics writes it: ``yolo11-seg-ema`` -> ``YOLO11n-seg-EMA`` (scale ``n``)."""
    name = re.sub(r"^yolo(v?\d+)", lambda m: f"YOLO{m.group(1)}{scale}", stem)
    return "-".join("EMA" if part == "ema" else part for part in name.split("-"))


def head_inputs(rows: list[list]) -> list[int]:
    """Absolute indices of the rows the last row (the head) reads."""
    last = len(rows) - 1
    f = rows[-1][0]
    return [last + x if x < 0 else x for x in (f if isinstance(f, list) else [f])]


def strides(rows: list[list]) -> list[int]:
    """Output stride of every row, from the rows alone (no model is built)."""
    out: list[int] = []
    for i, (f, _, m, args) in enumerate(rows):
        first = f[0] if isinstance(f, list) else f
        s = out[i + first if first < 0 else first] if i else 1
        if m in _STRIDED:
            s *= args[2] if len(args) > 2 else 1
        elif m == "nn.Upsample":
            s //= args[1]
        out.append(s)
    return out


def render(variant: Variant, summaries: dict[str, str]) -> str:
    """Return the text of ``variant``'s YAML.

    Args:
        variant (Variant): What to write.
        summaries (dict[str, str]): ``scale -> 'summary: ...'`` comments for the ``scales:`` rows.

    Returns:
        (str): The YAML text.
    """
    text = (stock_dir() / variant.stock).read_text()
    d = yaml.safe_load(text)
    rows = d["backbone"] + d["head"]
    after = sorted(variant.after or head_inputs(rows[:-1] + rows[-1:]))
    new = {}  # stock index -> new index
    for i in range(len(rows)):
        new[i] = i + sum(j < i for j in after)
    ema_at = {i: new[i] + 1 for i in after}  # the EMA row that replaces row i's output

    stem, stock_stem = Path(variant.name).stem, Path(variant.stock).stem
    family = display(stock_stem)
    out, row, section = [], 0, None
    lines = text.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("# Parameters"))
    out.append(variant.header or _header(variant, rows, after, new))
    for line in lines[start:]:
        if line.startswith("scales:"):
            example = f"model compound scaling constants, i.e. 'model={scaled(stem, 'n')}.yaml' will call"
            line = f"scales: # {example} {variant.name} with scale 'n'"
            if len(line) > 120:
                line = f"scales: # {example} this file with scale 'n'"
        elif re.match(r"^  [nslmx]: \[", line):
            scale = line[2]
            line = line.split(" #")[0] + (f" # {summaries[scale]}" if summaries.get(scale) else "")
        elif line in ("backbone:", "head:"):
            section = line[:-1]
        elif re.match(r"^# YOLO\S+ ", line):
            part = line.split(" ", 2)[2]  # 'backbone', 'head', 'semantic segmentation head'
            which = "backbone" if "backbone" in part else "head"
            indices = range(len(d["backbone"])) if which == "backbone" else range(len(d["backbone"]), len(rows))
            if any(i in after for i in indices):
                suffix = ""
            else:
                shift = {new[i] - i for i in indices}
                suffix = f" (as {family})" if shift == {0} else f" (as {family}, indices +{shift.pop()})"
            line = f"# {display(stem, 'n')} {part}{suffix}"
        elif section and re.match(r"^\s*- \[", line):
            line, ema = _row(line, row, rows, new, ema_at)
            out.append(line)
            if ema:
                out.append(ema)
            row += 1
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def scaled(name: str, scale: str) -> str:
    """The bare name of ``name`` at ``scale``: ``yolo26-seg-ema.yaml`` -> ``yolo26s-seg-ema.yaml`` for ``s``."""
    return re.sub(r"^(yolov?\d+)", rf"\g<1>{scale}", name)


def _row(line: str, i: int, rows: list[list], new: dict[int, int], ema_at: dict[int, int]) -> tuple[str, str]:
    """Rewrite stock row ``i`` (its ``from`` and ``# index`` comment); return it and the EMA row after it, if any."""
    body, _, comment = line.partition(" # ")
    m = re.match(r"^(\s*- \[)(\[[^\]]*\]|-?\d+)(, .*)$", body)
    if not m:
        raise ValueError(f"row {i} not understood: {line!r}")
    indent = m.group(1)[: -len("- [")]
    f = rows[i][0]
    is_head = i == len(rows) - 1

    def ref(x: int) -> int:
        if x == -1:
            return -1
        target = i + x if x < 0 else x
        moved = ema_at.get(target, new[target])
        return moved - new[i] if x < 0 else moved

    refs = f if isinstance(f, list) else [f]
    new_f = [ref(x) for x in refs]
    from_text = f"[{', '.join(map(str, new_f))}]" if isinstance(f, list) else str(new_f[0])
    index = re.match(r"^(\d+)(.*)$", comment)
    rest = index.group(2) if index else (f" {comment}" if comment else "")
    label = ""
    if i in ema_at:  # the output label, e.g. ' (P3/8-small)', moves to the EMA row that now holds that output
        label_match = re.search(r"\s*\(.*\)$", rest)
        if label_match:
            label, rest = label_match.group(0), rest[: label_match.start()]
    if not is_head and any(x != -1 and (i + x if x < 0 else x) in ema_at for x in refs):
        rest += " (EMA output)"
    row = f"{m.group(1)}{from_text}{m.group(3)} # {new[i]}{rest}"
    ema = f"{indent}- [-1, 1, EMA, [{FACTOR}]] # {ema_at[i]}{label}" if i in ema_at else ""
    return row, ema


def _header(variant: Variant, rows: list[list], after: list[int], new: dict[int, int]) -> str:
    """The header comment of a generated YAML."""
    stock_stem, stem = Path(variant.stock).stem, Path(variant.name).stem
    head = rows[-1][2]
    s = strides(rows)
    maps = "/".join(f"P{s[i].bit_length() - 1}" for i in sorted(after, key=lambda i: s[i]))
    count = {1: "the feature map", 2: "the two feature maps", 3: "the three feature maps"}[len(after)]
    last = ", the last backbone stage" if len(after) == 1 else ""
    shift = max(new[i] - i for i in range(len(rows)))
    paragraph = (
        f"ultralytics-ema: {display(stock_stem)} with {PAPER} on {count} that feed{'s' if len(after) == 1 else ''}"
        f" {head} ({maps}{last}). EMA rows take [factor] (channel groups, default 32); their channels come from the"
        f" layer they follow, so every scale works. Stock {display(stock_stem)} layers keep their order; rows after the"
        f" first EMA row have indices shifted by {'1' if shift == 1 else f'1-{shift}'} against {stock_stem}.yaml."
    )
    lines = [
        *textwrap.wrap(paragraph, 118, break_on_hyphens=False, break_long_words=False),
        f"'model={scaled(stem, 'n')}.yaml' uses this file with scale 'n'.",
        f"Generated by scripts/make_model_yamls.py from Ultralytics' {stock_stem}.yaml: edit the script, not this"
        " file.",
    ]
    return "".join(f"# {line}\n" for line in lines)


def committed_summaries(path: Path) -> dict[str, str]:
    """The ``summary: ...`` comments of the ``scales:`` rows of a committed YAML."""
    if not path.is_file():
        return {}
    found = re.findall(r"^  ([nslmx]): \[.*?\] # (summary: .*)$", path.read_text(), re.M)
    return dict(found)


def measure(variant: Variant, scale: str) -> str:
    """Build ``variant`` at ``scale`` and return its summary as Ultralytics' ``model_info`` prints it (imgsz 640)."""
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import model_info

    model = YOLO(scaled(variant.name, scale)).model  # resolved by bare name
    n_l, n_p, n_g, flops = model_info(model, verbose=True, imgsz=640)
    sep = "," if variant.commas else ""
    return f"summary: {n_l:{sep}} layers, {n_p:{sep}} parameters, {n_g:{sep}} gradients, {flops:.1f} GFLOPs"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) every packaged model YAML; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, keeping the committed summaries; write nothing")
    parser.add_argument("names", nargs="*", help="only these output names (e.g. yolo26-seg-ema.yaml)")
    args = parser.parse_args(argv)

    variants = [v for v in VARIANTS if not args.names or v.name in args.names]
    stale = []
    for variant in variants:
        summaries = committed_summaries(variant.path)
        if args.check:
            if not variant.path.is_file() or variant.path.read_text() != render(variant, summaries):
                stale.append(variant.path.relative_to(ROOT).as_posix())
            continue
        import ultralytics_ema  # noqa: F401  (registers EMA also with the startup hook off)

        variant.path.parent.mkdir(parents=True, exist_ok=True)
        variant.path.write_text(render(variant, {}))  # the rows first: the summaries are measured on this file
        variant.path.write_text(render(variant, {s: measure(variant, s) for s in "nslmx"}))
        print(f"wrote {variant.path.relative_to(ROOT)}")
    if stale:
        print(f"not what scripts/make_model_yamls.py writes: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
