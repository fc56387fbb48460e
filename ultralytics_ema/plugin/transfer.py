"""Pretrained-weight transfer that survives inserted layers, and leaves every other load to Ultralytics.

Ultralytics copies checkpoint tensors by name (``model.<layer index>.<...>``) and shape. Inserting EMA rows into a
YAML shifts the index of every later layer, so a stock ``yolo11n.pt`` loaded into YOLO11n-EMA would fill only the
layers before the first EMA row, and the rest of the network would silently start from scratch.

:func:`load` is installed over ``BaseModel.load`` by :mod:`ultralytics_ema.plugin.patches`. It engages only when the
model or the checkpoint holds a registered layer (:data:`ultralytics_ema.LAYERS`); any other load is Ultralytics' own,
unchanged and without a word from this package. When it engages, it matches the checkpoint's layers to the model's by
their sequence of layer types (:func:`align_layers`), presents the checkpoint under the model's indices and lets
Ultralytics' own ``load`` do the copying (shape checks, first-conv channel fill, class-name remapping, Detect head
rebuild). It watches what that ``load`` copied and logs one line whose count is Ultralytics' own::

    Transferred 499/517 items from pretrained weights
    ultralytics-ema: transferred all 499 checkpoint tensors; 18 new EMA attention tensors start fresh

or, when checkpoint tensors do not reach a layer, a warning that says how many and why (class count, scale, input
channels, layers without a counterpart)::

    Transferred 493/517 items from pretrained weights
    WARNING ultralytics-ema: transferred 493/499 checkpoint tensors; 6 do not fit (6 class outputs: class count
    80 vs 3); 18 new EMA attention tensors start fresh

Every standard path goes through ``BaseModel.load``: ``yolo train ... pretrained=yolo11n.pt``,
``YOLO("yolo11n-ema.yaml").load("yolo11n.pt")`` and ``ultralytics-ema train ... pretrained=yolo11n.pt``.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Callable

import torch
from torch import nn

from ultralytics_ema.plugin.registry import LAYERS

FIRST_CONV = "model.0.conv.weight"  # the tensor Ultralytics' load fills channel-wise when input channels differ


def is_registered(module: nn.Module) -> bool:
    """Whether ``module`` is a registered layer: its class, or a class of a registered name (a fork's own ``EMA``)."""
    return type(module) in LAYERS or type(module).__name__ in LAYERS


def holds_registered_layer(module: nn.Module | None) -> bool:
    """Whether ``module`` contains a registered layer anywhere."""
    return isinstance(module, nn.Module) and any(is_registered(m) for m in module.modules())


def _family(cls: type) -> str:
    """The most general ``nn.Module`` subclass above ``cls`` (``Segment`` -> ``Detect``, ``C3k2`` -> ``C2f``)."""
    return [c for c in cls.__mro__ if isinstance(c, type) and issubclass(c, nn.Module) and c is not nn.Module][
        -1
    ].__name__


def align_layers(dst: nn.Sequential, src: nn.Sequential) -> dict[int, int]:
    """Match source layer indices to destination layer indices by the sequence of layer types.

    Layers of the same class are matched first (a longest-matching-blocks alignment, so rows inserted on either side
    are skipped); the stretches left between those matches are then matched by class family, so that a checkpoint's
    ``Detect`` head still meets a model's ``Segment`` head (a subclass), as it does in Ultralytics' by-name loading.

    Args:
        dst (nn.Sequential): Layers of the model being loaded into.
        src (nn.Sequential): Layers of the checkpoint's model.

    Returns:
        (dict[int, int]): ``{source index: destination index}``.

    Examples:
        >>> align_layers(nn.Sequential(nn.ReLU(), nn.Identity(), nn.Tanh()), nn.Sequential(nn.ReLU(), nn.Tanh()))
        {0: 0, 1: 2}
    """
    names = [[type(m).__name__ for m in layers] for layers in (src, dst)]
    families = [[_family(type(m)) for m in layers] for layers in (src, dst)]
    mapping: dict[int, int] = {}
    a0 = b0 = 0
    for a, b, size in SequenceMatcher(None, *names, autojunk=False).get_matching_blocks():  # ends with (len, len, 0)
        gap = SequenceMatcher(None, families[0][a0:a], families[1][b0:b], autojunk=False)
        mapping.update((a0 + x + k, b0 + y + k) for x, y, n in gap.get_matching_blocks() for k in range(n))
        mapping.update((a + k, b + k) for k in range(size))
        a0, b0 = a + size, b + size
    return dict(sorted(mapping.items()))


def load(original: Callable, model: nn.Module, weights: dict | nn.Module, verbose: bool = True) -> None:
    """Load ``weights`` into ``model``: Ultralytics' ``load`` as is, or after aligning layers where EMA is involved.

    Args:
        original (Callable): Ultralytics' ``BaseModel.load``.
        model (nn.Module): The Ultralytics model (``model.model`` is its layer sequence).
        weights (dict | nn.Module): Checkpoint dict (``ema`` or ``model`` entry) or model, as Ultralytics accepts.
        verbose (bool): Log the transfer (Ultralytics' line, and this package's when it engaged).
    """
    source = (weights.get("ema") or weights.get("model")) if isinstance(weights, dict) else weights
    layers, src_layers = getattr(model, "model", None), getattr(source, "model", None)
    if not (
        isinstance(layers, nn.Sequential)
        and isinstance(src_layers, nn.Sequential)
        and (holds_registered_layer(layers) or holds_registered_layer(src_layers))
    ):
        return original(model, weights, verbose)
    mapping = align_layers(layers, src_layers)
    view = source
    if any(a != b for a, b in mapping.items()) or len(mapping) != len(src_layers) or len(src_layers) != len(layers):
        view = _reindexed(source, mapping, len(layers))
    with _watch(model) as copied:
        original(model, view, verbose)
    if verbose:
        _log(Transfer.of(model, source, mapping, copied))
    return None


def _reindexed(source: nn.Module, mapping: dict[int, int], length: int) -> nn.Module:
    """A shallow copy of ``source`` whose layer ``i`` sits at ``mapping[i]``; unmatched places hold no tensors."""
    placed = {b: a for a, b in mapping.items()}
    view = copy.copy(source)
    view._modules = dict(source._modules)  # copy.copy shares the dict; replace the layer sequence in the copy only
    view.model = nn.Sequential(*(source.model[placed[j]] if j in placed else nn.Identity() for j in range(length)))
    return view


@contextlib.contextmanager
def _watch(model: nn.Module) -> Iterator[set[str]]:
    """Collect the names of the model tensors that Ultralytics' ``load`` fills from the checkpoint.

    These are what its "Transferred X/Y items" line counts: the tensors it passes to ``load_state_dict``, the class
    outputs ``_remap_cls_by_names`` fills row by row (it removes them from the checkpoint dict it is given), and the
    first conv when it is filled channel-wise (seen as a change of that tensor; Ultralytics before this fill did not
    have it).
    """
    copied: set[str] = set()
    load_state_dict, remap = model.load_state_dict, getattr(model, "_remap_cls_by_names", None)

    def capture_load(state_dict, *args, **kwargs):
        copied.update(state_dict)
        return load_state_dict(state_dict, *args, **kwargs)

    def capture_remap(csd, *args, **kwargs):
        before = set(csd)
        n = remap(csd, *args, **kwargs)
        copied.update(before - set(csd))
        return n

    first = model.state_dict().get(FIRST_CONV)
    first = None if first is None else first.detach().clone()
    model.load_state_dict = capture_load  # instance attributes shadow the methods for this call only
    if remap is not None:
        model._remap_cls_by_names = capture_remap
    try:
        yield copied
    finally:
        del model.load_state_dict
        if remap is not None:
            del model._remap_cls_by_names
    now = model.state_dict().get(FIRST_CONV)
    changed = first is not None and now is not None and (first.shape != now.shape or not torch.equal(first, now))
    if changed:
        copied.add(FIRST_CONV)


@dataclass
class Transfer:
    """What a load did, in checkpoint terms (for the log line).

    Attributes:
        total (int): Checkpoint tensors.
        transferred (int): Checkpoint tensors that reached a model tensor (Ultralytics' "Transferred" count).
        unfit (dict[str, Counter]): Checkpoint tensors that did not: reason -> tensors per checkpoint layer
            (``'Detect 23'``).
        fresh (dict[str, Counter]): Model tensors that nothing in the checkpoint corresponds to: registered layer name
            (``'EMA'``) or ``''`` for other layers -> tensors per model layer.
    """

    total: int
    transferred: int = 0
    unfit: dict[str, Counter] = field(default_factory=dict)
    fresh: dict[str, Counter] = field(default_factory=dict)

    @classmethod
    def of(cls, model: nn.Module, source: nn.Module, mapping: dict[int, int], copied: set[str]) -> Transfer:
        """Classify every checkpoint tensor and every model tensor after a load."""
        src_sd, sd = source.state_dict(), model.state_dict()
        nc, scales, tasks = (_nc(source), _nc(model)), _scales(source, model), (_task(source), _task(model))
        task = f" (task {tasks[0]} vs {tasks[1]})" if None not in tasks and tasks[0] != tasks[1] else ""
        transfer = cls(total=len(src_sd))
        reached: set[str] = set()  # model tensors with a checkpoint counterpart, fitting or not
        for key, value in src_sd.items():
            i, rest = _split(key)
            j = mapping.get(i)
            target = f"model.{j}.{rest}" if j is not None else None
            if target in copied:
                transfer.transferred += 1
                reached.add(target)
                continue
            if j is None:
                why = f"in checkpoint layers this model lacks{task}"
            elif target not in sd:
                why = f"without a counterpart in the matching model layer{task}"
            else:
                reached.add(target)
                why = _shape_reason(key, value.shape, sd[target].shape, nc, scales)
            transfer.unfit.setdefault(why, Counter())[_label(source, i)] += 1
        registered = {j for j, m in enumerate(model.model) if is_registered(m) and j not in mapping.values()}
        for key in sd:
            if key in reached:
                continue
            j, _ = _split(key)
            name = type(model.model[j]).__name__ if j in registered else ""
            transfer.fresh.setdefault(name, Counter())[_label(model, j)] += 1
        return transfer

    def line(self) -> tuple[bool, str]:
        """The log line, and whether it is a warning (some checkpoint tensors do not reach a layer)."""
        n_unfit = self.total - self.transferred
        head = f"transferred all {self.total}" if not n_unfit else f"transferred {self.transferred}/{self.total}"
        parts = [f"ultralytics-ema: {head} checkpoint tensors"]
        if n_unfit:
            reasons = ", ".join(f"{sum(c.values())} {why} [{_layers(c)}]" for why, c in self.unfit.items())
            parts.append(f"{n_unfit} do not fit: {reasons}")
        new = [
            f"{sum(c.values())} new {name}{' attention' if name == 'EMA' else ''} tensors"
            for name, c in self.fresh.items()
            if name
        ]
        if new:
            parts.append(f"{' and '.join(new)} start fresh")
        if "" in self.fresh:
            other = self.fresh[""]
            parts.append(f"{sum(other.values())} model tensors have no checkpoint counterpart [{_layers(other)}]")
        return bool(n_unfit), "; ".join(parts)


def _shape_reason(key: str, src: torch.Size, dst: torch.Size, nc: tuple, scales: tuple) -> str:
    """Why a checkpoint tensor of shape ``src`` does not fit the model tensor of shape ``dst`` of the same name."""
    if key == FIRST_CONV and len(src) == len(dst) == 4 and src[1] != dst[1]:
        return f"of the first conv (input channels {src[1]} vs {dst[1]})"
    if None not in nc and nc[0] != nc[1] and src[1:] == dst[1:] and (src[:1], dst[:1]) == ((nc[0],), (nc[1],)):
        return f"class outputs (class count {nc[0]} vs {nc[1]})"
    if None not in scales and scales[0] != scales[1]:
        return f"of another width (scale {scales[0]} vs {scales[1]})"
    return "of another shape"


def _label(model: nn.Module, index: int | None) -> str:
    """``'Detect 23'`` for layer 23 of ``model``; ``'other'`` for tensors outside the layer sequence."""
    return f"{type(model.model[index]).__name__} {index}" if index is not None else "other"


def _layers(counts: Counter, most: int = 4) -> str:
    """``'EMA 17, EMA 21, EMA 25'``: the first ``most`` layer labels, then ``'...'``."""
    labels = list(counts)
    return ", ".join(labels[:most]) + (", ..." if len(labels) > most else "")


def _split(key: str) -> tuple[int | None, str]:
    """``'model.12.cv1.conv.weight'`` -> ``(12, 'cv1.conv.weight')``; other names -> ``(None, key)``."""
    parts = key.split(".", 2)
    if len(parts) == 3 and parts[0] == "model" and parts[1].isdigit():
        return int(parts[1]), parts[2]
    return None, key


def _log(transfer: Transfer) -> None:
    """Log the transfer as Ultralytics logs (info, or a warning when tensors do not fit)."""
    from ultralytics.utils import LOGGER

    warn, text = transfer.line()
    (LOGGER.warning if warn else LOGGER.info)(text)


def _yaml(model: nn.Module) -> dict:
    """The model's YAML dict, or an empty one."""
    yaml = getattr(model, "yaml", None)
    return yaml if isinstance(yaml, dict) else {}


def _scales(source: nn.Module, model: nn.Module) -> tuple:
    """The ``scale`` of the checkpoint's and the model's YAML (``None`` where unknown)."""
    return _yaml(source).get("scale"), _yaml(model).get("scale")


def _nc(model: nn.Module) -> int | None:
    """Class count of an Ultralytics model, if it says."""
    nc = getattr(model, "nc", None)
    if nc is None:
        names = getattr(model, "names", None)
        nc = len(names) if isinstance(names, (dict, list)) else _yaml(model).get("nc")
    return nc


def _task(model: nn.Module) -> str | None:
    """Task of an Ultralytics model, if it says (``task`` attribute, ``args['task']``, else from its YAML's head)."""
    task = getattr(model, "task", None)
    if task is None and isinstance(getattr(model, "args", None), dict):
        task = model.args.get("task")
    if task is None and _yaml(model):
        from ultralytics.nn.tasks import guess_model_task

        task = guess_model_task(_yaml(model))  # from a dict: the head's name, None if unknown (never a warning)
    return task
