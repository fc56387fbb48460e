"""Pretrained-weight transfer that survives inserted layers.

Ultralytics copies checkpoint tensors by name (``model.<layer index>.<...>``) and shape. Inserting EMA rows into a
YAML shifts the index of every later layer, so a stock ``yolo11n.pt`` loaded into YOLO11n-EMA fills only the layers
before the first EMA row, and the rest of the network silently starts from scratch.

:func:`load` (installed over ``BaseModel.load`` by :mod:`ultralytics_ema.plugin.patches`) first matches the checkpoint's
layers to the model's by their sequence of layer types (a longest-matching-blocks alignment, so rows inserted on
either side are skipped), presents the checkpoint under the model's indices, and then lets Ultralytics' own ``load``
do the copying (shape checks, class-name remapping, Detect head rebuild). Afterwards it logs what was transferred:

    ultralytics-ema: transferred all 499 checkpoint tensors; 18 new EMA attention tensors start fresh

or, when the checkpoint is of another scale, task or class count, a warning that says how much and why.
Every standard path goes through ``BaseModel.load``: ``yolo train ... pretrained=yolo11n.pt``,
``YOLO("yolo11n-ema.yaml").load("yolo11n.pt")`` and ``scripts/train.py --pretrained``.
"""

from __future__ import annotations

import copy
from collections import Counter
from difflib import SequenceMatcher
from typing import Callable

from torch import nn

from ultralytics_ema.plugin.registry import LAYERS


def align_layers(dst: nn.Sequential, src: nn.Sequential) -> dict[int, int]:
    """Match source layer indices to destination layer indices by the sequence of layer types.

    Args:
        dst (nn.Sequential): Layers of the model being loaded into.
        src (nn.Sequential): Layers of the checkpoint's model.

    Returns:
        (dict[int, int]): ``{source index: destination index}`` for layers of the same type in matching runs.

    Examples:
        >>> align_layers(nn.Sequential(nn.ReLU(), nn.Identity(), nn.Tanh()), nn.Sequential(nn.ReLU(), nn.Tanh()))
        {0: 0, 1: 2}
    """
    names = [[type(m).__name__ for m in layers] for layers in (src, dst)]
    matcher = SequenceMatcher(None, *names, autojunk=False)
    return {a + k: b + k for a, b, size in matcher.get_matching_blocks() for k in range(size)}


def load(original: Callable, model: nn.Module, weights: dict | nn.Module, verbose: bool = True) -> None:
    """Load ``weights`` into ``model`` with Ultralytics' ``load`` after aligning layers; log what was transferred.

    Args:
        original (Callable): Ultralytics' ``BaseModel.load``.
        model (nn.Module): The Ultralytics model (``model.model`` is its layer sequence).
        weights (dict | nn.Module): Checkpoint dict (``ema`` or ``model`` entry) or model, as Ultralytics accepts.
        verbose (bool): Log the transfer.
    """
    source = (weights.get("ema") or weights.get("model")) if isinstance(weights, dict) else weights
    layers, src_layers = getattr(model, "model", None), getattr(source, "model", None)
    if not (isinstance(layers, nn.Sequential) and isinstance(src_layers, nn.Sequential)):
        return original(model, weights, verbose)
    mapping = align_layers(layers, src_layers)
    if any(a != b for a, b in mapping.items()) or len(src_layers) != len(layers):
        source = _reindexed(source, mapping, len(layers))
    original(model, source, verbose)
    if verbose:
        _report(model, source, src_layers, mapping)
    return None


def _reindexed(source: nn.Module, mapping: dict[int, int], length: int) -> nn.Module:
    """A shallow copy of ``source`` whose layer ``i`` sits at ``mapping[i]``; unmatched places hold no tensors."""
    placed = {b: a for a, b in mapping.items()}
    view = copy.copy(source)
    view._modules = dict(source._modules)  # copy.copy shares the dict; replace the layer sequence in the copy only
    view.model = nn.Sequential(*(source.model[placed[j]] if j in placed else nn.Identity() for j in range(length)))
    view.unmatched_layers = [i for i in range(len(source.model)) if i not in mapping]
    return view


def _report(model: nn.Module, source: nn.Module, src_layers: nn.Sequential, mapping: dict[int, int]) -> None:
    """Log one line: all tensors transferred (info) or how many were not and why (warning)."""
    from ultralytics.utils import LOGGER

    csd, sd = source.state_dict(), model.state_dict()
    moved = [k for k, v in csd.items() if k in sd and sd[k].shape == v.shape]
    total = sum(len(m.state_dict()) for m in src_layers)
    new = Counter(
        LAYERS[type(m).__name__].name
        for j, m in enumerate(model.model)
        if type(m) in LAYERS and j not in mapping.values()
        for _ in m.state_dict()
    )
    fresh = ", ".join(
        f"{n} new {name} attention tensors" if name == "EMA" else f"{n} new {name} tensors" for name, n in new.items()
    )
    fresh = f"; {fresh} start fresh" if fresh else ""
    if len(moved) == total:
        LOGGER.info(f"ultralytics-ema: transferred all {total} checkpoint tensors{fresh}")
        return
    reasons = []
    src_yaml, yaml = getattr(source, "yaml", {}) or {}, getattr(model, "yaml", {}) or {}
    for what, a, b in (
        ("task", _task(source), _task(model)),
        ("scale", src_yaml.get("scale"), yaml.get("scale")),
        ("class count", getattr(source, "nc", src_yaml.get("nc")), getattr(model, "nc", yaml.get("nc"))),
    ):
        if a is not None and b is not None and a != b:
            reasons.append(f"{what} {a} vs {b}")
    unmatched = getattr(source, "unmatched_layers", [])
    if unmatched:
        names = ", ".join(f"{type(src_layers[i]).__name__} {i}" for i in unmatched[:4])
        reasons.append(
            f"{len(unmatched)} checkpoint layers without a counterpart ({names}{', ...' if len(unmatched) > 4 else ''})"
        )
    why = "; ".join(reasons) or "architectures differ"
    LOGGER.warning(
        f"ultralytics-ema: transferred {len(moved)}/{total} checkpoint tensors ({why}); "
        f"the other {total - len(moved)} do not fit this model{fresh}"
    )


def _task(model: nn.Module) -> str | None:
    """Task of an Ultralytics model, if it says."""
    task = getattr(model, "task", None)
    if task is None and isinstance(getattr(model, "args", None), dict):
        task = model.args.get("task")
    return task
