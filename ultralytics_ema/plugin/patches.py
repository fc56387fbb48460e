"""Every place where ultralytics-ema changes Ultralytics, and why. Nothing on disk is edited.

``ultralytics.nn.tasks`` (patched by :func:`patch_tasks`):
    ``parse_model``
        Its layer loop gets one more branch, just before the final ``else: c2 = ch[f]``: a layer registered in
        :data:`ultralytics_ema.plugin.registry.LAYERS` takes its constructor arguments and output channels from its
        channel rule (for EMA: input channels of its ``from`` layer, after width scaling). The branch also passes
        the parser's locals ``d`` (the YAML dict: file name, scale, the row as written), ``width`` and
        ``max_channels``, so that a rule can name the file and row in its errors and width-scale a ``c2`` argument
        as a ``Conv`` row's is scaled. It is inserted into the function's syntax tree, found by structure (the
        ``for i, (f, n, m, args)`` loop and its ``if m ...`` chain), not by line numbers, and the recompiled code
        replaces ``parse_model.__code__`` in one assignment, so every reference to the function sees it. A parser of
        another shape raises :class:`UnsupportedUltralyticsError` before anything is changed.
    module namespace
        Registered layer names (``EMA``) are added, because ``parse_model`` looks YAML module names up in its globals.
    ``BaseModel.load``
        Wrapped by :func:`ultralytics_ema.plugin.transfer.load`. Where the model or the checkpoint holds a registered
        layer, checkpoint layers are matched to the model's layers by type sequence before Ultralytics copies tensors
        by name, so inserted EMA rows do not shift pretrained weights off their layers (``pretrained=yolo11n.pt``,
        ``YOLO(...).load(...)``), and the transfer is logged. Every other load runs Ultralytics' own code unchanged,
        and the plugin logs nothing.
    ``check_yaml``
        Wrapped so that bare names of the packaged model YAMLs (``yolo11n-ema.yaml``, ``yolo26s-seg-ema.yaml``, ...)
        resolve to ``ultralytics_ema/cfg/models/{11,26,v8}``, as stock names resolve to Ultralytics' own cfg folder.
    ``torch.serialization`` allow-list
        Registered layers (and EMA's fork path ``ultralytics.nn.attention.EMA_attention.EMA``) are added with
        ``torch.serialization.add_safe_globals``, so checkpoints load with ``ULTRALYTICS_SAFE_LOAD=1``.
``ultralytics.data.utils`` (patched by :func:`patch_data_utils`):
    ``check_file``
        Wrapped so that bare names of the packaged dataset YAMLs (``ema-demo.yaml``, ``coco-local.yaml``,
        ``visdrone-local.yaml``) resolve to ``ultralytics_ema/cfg/datasets``; the ``-local`` ones get their root from
        an environment variable or ``datasets_dir`` and fail with a clear message when the data is missing; the demo
        ones (``ema-demo.yaml``, ``ema-demo-seg.yaml``, ...) are generated offline into ``datasets_dir`` first, with
        one log line (:mod:`ultralytics_ema.plugin.local`). A packaged YAML given by its full path is resolved alike.
    ``check_cls_dataset``
        Wrapped (also where ``ultralytics.engine.trainer``/``validator``/``exporter`` imported it by name) so that
        ``data=ema-demo-cls`` resolves to the demo classification folder under ``datasets_dir``, generated offline on
        first use, as Ultralytics' own named classification sets resolve there.

:mod:`ultralytics_ema.plugin.autoload` decides when these run. Each is idempotent and thread-safe.
"""

from __future__ import annotations

import ast
import functools
import inspect
import sys
import threading
from pathlib import Path
from types import CodeType, ModuleType
from typing import Callable

from ultralytics_ema import CFG_DIR
from ultralytics_ema.plugin.registry import LAYERS, LayerEntry

SUPPORTED_ULTRALYTICS = ">=8.3.0,<8.5"  # keep in sync with pyproject.toml (a test checks)
# Other import paths a pickled layer may name: the fork recipe's, and this package's before its nn/ folder.
FORK_PATHS = {
    "EMA": ("ultralytics.nn.attention.EMA_attention.EMA", "ultralytics.nn.attention.EMA", "ultralytics_ema.ema.EMA")
}

# Modules that import ``check_cls_dataset`` by name from ``ultralytics.data.utils``.
CLS_DATASET_USERS = ("ultralytics.engine.trainer", "ultralytics.engine.validator", "ultralytics.engine.exporter")
_MARK = "__ultralytics_ema_patched__"
_LOCK = threading.RLock()
# parse_model's locals the branch reads besides the loop's: the YAML dict and the width scaling in force (the same
# names from 8.3.0 to 8.4; _parse_model_code checks that they are there).
_LOCALS = ("d", "width", "max_channels")
_BRANCH = """
if m in _ultralytics_ema_layers:
    c2, args = _ultralytics_ema_layers.layer_args(m, i, f, ch, args, d, width, max_channels)
"""


class UnsupportedUltralyticsError(RuntimeError):
    """The installed Ultralytics cannot be patched; nothing was changed."""


def apply() -> None:
    """Register the layers with Ultralytics now (imports it); raise if that is impossible.

    Raises:
        UnsupportedUltralyticsError: If the installed Ultralytics is outside :data:`SUPPORTED_ULTRALYTICS` or its
            model parser does not have the expected structure.
    """
    import ultralytics.data.utils
    import ultralytics.nn.tasks

    patch_tasks(ultralytics.nn.tasks)
    patch_data_utils(ultralytics.data.utils)


def patch_tasks(tasks: ModuleType) -> None:
    """Patch ``ultralytics.nn.tasks``: parser branch, layer names, aligned ``load``, packaged YAMLs, safe loading."""
    with _LOCK:
        if getattr(tasks, _MARK, False):
            return
        _check_version()
        code = _parse_model_code(tasks.parse_model)  # raises before anything is changed
        for entry in LAYERS:
            _check_name_free(tasks, entry, force=False)
        tasks._ultralytics_ema_layers = LAYERS
        LAYERS.subscribe(functools.partial(_expose, tasks))
        tasks.parse_model.__code__ = code
        tasks.BaseModel.load = _aligned_load(tasks.BaseModel.load)
        tasks.check_yaml = _packaged_first(tasks.check_yaml, CFG_DIR / "models")
        setattr(tasks, _MARK, True)


def patch_data_utils(data_utils: ModuleType) -> None:
    """Patch ``ultralytics.data.utils``: packaged dataset YAMLs and the demo classification folder resolve."""
    with _LOCK:
        if getattr(data_utils, _MARK, False):
            return
        _check_version()
        from ultralytics_ema.plugin.local import resolve

        data_utils.check_file = _packaged_first(data_utils.check_file, CFG_DIR / "datasets", resolve)
        original = data_utils.check_cls_dataset
        data_utils.check_cls_dataset = _demo_folder_first(original)
        for name in CLS_DATASET_USERS:  # they import it by name; rebind where imported before this patch
            module = sys.modules.get(name)
            if module is not None and getattr(module, "check_cls_dataset", None) is original:
                module.check_cls_dataset = data_utils.check_cls_dataset
        setattr(data_utils, _MARK, True)


def _check_version() -> None:
    """Raise :class:`UnsupportedUltralyticsError` outside :data:`SUPPORTED_ULTRALYTICS`."""
    import ultralytics
    from ultralytics.utils.checks import check_version

    if not check_version(ultralytics.__version__, SUPPORTED_ULTRALYTICS):
        raise UnsupportedUltralyticsError(
            f"ultralytics=={ultralytics.__version__} is not supported; ultralytics-ema supports "
            f"ultralytics{SUPPORTED_ULTRALYTICS} (pip install 'ultralytics{SUPPORTED_ULTRALYTICS}')"
        )


def _parse_model_code(parse_model: Callable) -> CodeType:
    """Return the code of ``parse_model`` with the registered-layer branch added before its final ``else``."""
    import ultralytics

    def unsupported(reason: str) -> UnsupportedUltralyticsError:
        return UnsupportedUltralyticsError(
            f"cannot add EMA to ultralytics=={ultralytics.__version__} (supported: ultralytics"
            f"{SUPPORTED_ULTRALYTICS}): parse_model {reason}"
        )

    try:
        tree = ast.parse(inspect.getsource(parse_model))
    except (OSError, TypeError, SyntaxError) as e:
        raise unsupported(f"source is unavailable ({e})") from None
    layer_loops = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.For)
        and [n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)] == ["i", "f", "n", "m", "args"]
    ]
    if len(layer_loops) != 1:
        raise unsupported("has no single 'for i, (f, n, m, args) in ...' layer loop")
    chains = [node for node in layer_loops[0].body if isinstance(node, ast.If)]
    for chain in chains:
        last = chain
        while len(last.orelse) == 1 and isinstance(last.orelse[0], ast.If):
            last = last.orelse[0]
        if last is not chain and ast.unparse(last.orelse) == "c2 = ch[f]":
            break
    else:
        raise unsupported("has no 'if m ... elif ... else: c2 = ch[f]' chain in its layer loop")
    function = tree.body[0]
    assigned = {n.id for n in ast.walk(function) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    missing = [name for name in _LOCALS if name not in assigned | {a.arg for a in function.args.args}]
    if missing:
        raise unsupported(f"has no local {', '.join(map(repr, missing))} before its layer loop")
    branch = ast.parse(_BRANCH).body[0]
    for node in ast.walk(branch):
        ast.copy_location(node, last.orelse[0])
    branch.orelse = last.orelse
    last.orelse = [branch]
    ast.increment_lineno(tree, parse_model.__code__.co_firstlineno - 1)
    module_code = compile(tree, parse_model.__code__.co_filename, "exec", dont_inherit=True)
    code = next(c for c in module_code.co_consts if isinstance(c, CodeType) and c.co_name == parse_model.__name__)
    if code.co_freevars != parse_model.__code__.co_freevars:
        raise unsupported("is a closure")
    return code


def _check_name_free(tasks: ModuleType, entry: LayerEntry, force: bool) -> None:
    """Raise if ``entry.name`` is taken in ``tasks`` by something other than a registered layer."""
    taken = tasks.__dict__.get(entry.name)
    if taken is not None and taken is not entry.cls and taken not in LAYERS and not force:
        where = f"{getattr(taken, '__module__', '?')}.{getattr(taken, '__qualname__', entry.name)}"
        raise ValueError(
            f"layer name {entry.name!r} is already taken in ultralytics.nn.tasks by {where}; "
            f"register {entry.cls.__qualname__} under another name or use force=True"
        )


def _expose(tasks: ModuleType, entry: LayerEntry, force: bool) -> None:
    """Make a registered layer visible to ``parse_model`` and to restricted (weights-only) checkpoint loading."""
    _check_name_free(tasks, entry, force)
    setattr(tasks, entry.name, entry.cls)
    import torch

    if hasattr(torch.serialization, "add_safe_globals"):
        aliases = [(entry.cls, path) for path in FORK_PATHS.get(entry.name, ())]
        torch.serialization.add_safe_globals([entry.cls, *aliases])


def _aligned_load(load: Callable) -> Callable:
    """Wrap ``BaseModel.load`` so that checkpoint layers are aligned to the model's first where EMA is involved."""
    from ultralytics_ema.plugin import transfer

    @functools.wraps(load)
    def aligned_load(self, weights, verbose=True):
        return transfer.load(load, self, weights, verbose)

    return aligned_load


def _demo_folder_first(check: Callable) -> Callable:
    """Wrap ``check_cls_dataset`` so that the name of a demo classification dataset (``ema-demo-cls``) resolves to its
    folder under ``datasets_dir``, generated offline on first use, as Ultralytics' own named sets resolve there."""
    if getattr(check, _MARK, False):
        return check

    @functools.wraps(check)
    def check_cls_dataset_demo_first(dataset, *args, **kwargs):
        from ultralytics_ema.plugin.local import demo_folder

        return check(demo_folder(dataset) or dataset, *args, **kwargs)

    setattr(check_cls_dataset_demo_first, _MARK, True)
    return check_cls_dataset_demo_first


def _packaged_first(check: Callable, folder: Path, resolve: Callable | None = None) -> Callable:
    """Wrap an Ultralytics file check so that a bare file name packaged under ``folder`` resolves there.

    ``folder`` is searched with its subfolders (``cfg/models/26/yolo26-seg-ema.yaml`` answers ``yolo26-seg-ema.yaml``),
    as Ultralytics searches its own ``cfg`` tree. With ``resolve``, the packaged file is passed through it, also when it
    is given by its full path.
    """
    if getattr(check, _MARK, False):
        return check

    @functools.wraps(check)
    def check_packaged_first(file, *args, **kwargs):
        name = str(file)
        if name and Path(name).name == name and not Path(name).exists():
            found = _find_packaged(folder, name)
            if found is not None:
                return str(resolve(found) if resolve else found)
        elif resolve and name.endswith((".yaml", ".yml")) and Path(name).resolve().parent == folder.resolve():
            return str(resolve(Path(name)))
        return check(file, *args, **kwargs)

    setattr(check_packaged_first, _MARK, True)
    return check_packaged_first


def _find_packaged(folder: Path, name: str) -> Path | None:
    """The file called ``name`` in ``folder`` or its subfolders, if any (packaged names are unique; a test checks)."""
    if any(c in name for c in "*?["):  # not a file name
        return None
    return next((p for p in sorted(folder.rglob(name)) if p.is_file()), None)


def packaged(kind: str) -> list[Path]:
    """Return the packaged YAML files of ``kind`` ('models' or 'datasets'), subfolders included, sorted by path.

    Examples:
        >>> [p.relative_to(CFG_DIR / "models").as_posix() for p in packaged("models")][:2]
        ['11/yolo11-cls-ema.yaml', '11/yolo11-ema-backbone.yaml']
    """
    return sorted((CFG_DIR / kind).rglob("*.yaml"))


__all__ = ["CFG_DIR", "SUPPORTED_ULTRALYTICS", "UnsupportedUltralyticsError", "apply", "packaged"]
