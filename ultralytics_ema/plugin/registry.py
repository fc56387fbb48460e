"""The layers that model YAMLs can name through this package, and how their channels are derived.

Ultralytics' model parser hard-codes, per layer class, how a YAML row's arguments become constructor arguments. The
patched parser (see :mod:`ultralytics_ema.plugin.patches`) asks :data:`LAYERS` for the classes registered here instead:
each entry maps a YAML name to a class and a *channel rule*. Another layer that keeps its input's channel count
is one line::

    LAYERS.register("SimAM", SimAM)

Names are unique: registering a taken name raises unless ``force=True``; the error says where the name was
registered first.

A channel rule is called as ``rule(c1, args)`` or, if it takes a third argument, ``rule(c1, args, row)`` with the
:class:`YamlRow` being parsed (its file, index and width scaling). Every error raised by a rule is re-raised with the
YAML file and row in front. EMA's rule, :func:`ema_channels`, reads both conventions of EMA rows in use: this
package's ``[factor]`` and the official code's (and forks') ``[c2, factor]``.
"""

from __future__ import annotations

import inspect
import math
import sys
import threading
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ultralytics_ema.nn.ema import DEFAULT_FACTOR, EMA, factor_error, valid_factors

ChannelRule = Callable[..., "tuple[int, list]"]  # (c1, args) or (c1, args, row: YamlRow) -> (c2, constructor args)
Listener = Callable[["LayerEntry", bool], None]


@dataclass(frozen=True)
class YamlRow:
    """The model YAML row being parsed and the width scaling in force: what a channel rule may need beyond its args.

    Attributes:
        index (int): Row index in the model YAML (backbone + head), as Ultralytics numbers layers.
        text (str): The row as written, e.g. ``[-1, 1, EMA, [256]]``.
        source (int): Index of the row's input layer.
        file (str | None): The model YAML file (``None`` for a model built from a dict).
        scale (str | None): The scale (``n``, ``s``, ...) of a YAML with ``scales:``.
        width (float): Width multiple.
        max_channels (float): Channel cap before width scaling (``inf`` without ``scales:``).
    """

    index: int
    text: str
    source: int
    file: str | None = None
    scale: str | None = None
    width: float = 1.0
    max_channels: float = math.inf

    def __str__(self) -> str:
        """Return e.g. ``yolov8n-ema.yaml row 16 [-1, 1, EMA, [256]]``."""
        return f"{self.file or 'model YAML'} row {self.index} {self.text}"

    @property
    def scaling(self) -> str:
        """The width scaling in words, e.g. ``scale n (width 0.25, max_channels 1024)``."""
        if self.scale:
            return f"scale {self.scale} (width {self.width:g}, max_channels {self.max_channels:g})"
        return f"width_multiple {self.width:g}" if self.width != 1 else "width 1 (no scaling)"

    def scaled(self, c2: int) -> int:
        """Channels of a ``Conv`` row whose first argument is ``c2``, scaled as Ultralytics' parser scales them."""
        from ultralytics.utils.ops import make_divisible

        return make_divisible(min(c2, self.max_channels) * self.width, 8)

    def nominal(self, channels: int) -> int | None:
        """A first argument that :meth:`scaled` maps to ``channels`` (``channels / width`` if it does), else None."""
        guess = round(min(channels / self.width, self.max_channels))
        candidates = [guess, *range(max(1, guess - 16), guess + 17)]
        return next((c for c in candidates if self.scaled(c) == channels), None)


def same_channels(c1: int, args: list) -> tuple[int, list]:
    """Channel rule of a layer whose output has its input's channels: construct it as ``cls(c1, *args)``.

    Args:
        c1 (int): Channels of the layer's input, i.e. of its ``from`` layer after width scaling.
        args (list): The YAML row's arguments.

    Returns:
        (tuple[int, list]): Output channels and constructor arguments.
    """
    return c1, [c1, *args]


def ema_channels(c1: int, args: list, row: YamlRow) -> tuple[int, list]:
    """Channel rule of EMA: the layer has its input's channels; the row's arguments give the factor (group count).

    Two conventions are in use, and both are read:

    - ``[]``: factor 32; ``[factor]``: e.g. ``[8]`` (this package's convention);
    - ``[c2]``, ``[c2, factor]``: ``c2`` is the nominal output channel count, as in a ``Conv`` row, which the official
      code's YAMLs and forks write (their parser width-scales it, then the layer ignores it). Here it must scale, as
      Ultralytics scales a ``Conv`` row's first argument (``make_divisible(min(c2, max_channels) * width, 8)``), to the
      input's channels: a ``c2`` that scales to anything else is an error, as the row does not say what it means.

    A single integer is ``c2`` when it scales to the input's channels (then 32 groups must fit them), otherwise the
    factor; when neither reading fits, the error says what each would need. A layer with one channel per group, and a
    single integer above 32 read as the factor, are built with a warning.

    Args:
        c1 (int): Channels of the input (after width scaling).
        args (list): The row's arguments.
        row (YamlRow): The row and the width scaling in force.

    Returns:
        (tuple[int, list]): ``c1`` and the constructor arguments ``[c1, c1, factor]`` (``EMA(channels, c2, factor)``).

    Raises:
        ValueError: If the arguments fit no reading.
    """
    where = f"the input (layer {row.source}) has {c1} channels at {row.scaling}"
    factors = f"valid factors for {c1} channels: {', '.join(map(str, valid_factors(c1)))}"
    if len(args) > 2:
        raise ValueError(f"EMA rows take [], [factor], [c2] or [c2, factor], not {len(args)} arguments")
    if len(args) == 2:
        c2, factor = args
        if not _scales_to(c2, c1, row):
            raise ValueError(
                f"in [c2, factor], {_c2_reading(c2, c1, row)}, as {where} and EMA keeps its input's channels "
                f"(or write [{factor!r}] for the factor alone)"
            )
        if factor_error(c1, factor):
            raise ValueError(f"in [c2, factor], factor={factor!r} must be a positive divisor of {c1}; {factors}")
    elif len(args) == 1:
        (n,) = args
        if _scales_to(n, c1, row):
            if factor_error(c1, DEFAULT_FACTOR):
                raise ValueError(
                    f"[{n}] is c2 (it scales to the input's channels: {where}), but the default factor 32 does not "
                    f"divide {c1}: write [{n}, factor]; {factors}"
                )
            factor = DEFAULT_FACTOR
        elif not factor_error(c1, n):
            factor = n
            if n > DEFAULT_FACTOR and c1 > n:
                _warn(
                    f"{row}: [{n}] is read as the factor, {n} groups of {c1 // n} channels, as {where}; read as "
                    f"c2 (nominal output channels, the official code's convention) it would scale to "
                    f"{row.scaled(n)}, not {c1}"
                )
        else:
            raise ValueError(
                f"{where}, and {n!r} fits neither reading of a single EMA argument: as c2 (nominal output channels, "
                f"the official code's convention), {_c2_reading(n, c1, row)}; as the factor (channel groups), "
                f"factor={n!r} must be a positive divisor of {c1}; {factors}"
            )
    else:
        factor = DEFAULT_FACTOR
        if factor_error(c1, factor):
            raise ValueError(f"{where}, and the default factor 32 does not divide {c1}: write [factor]; {factors}")
    if c1 == factor:
        _warn(
            f"{row}: factor {factor} leaves one channel per group, as {where}: each group's convolutions see one "
            "channel (the official default is 32 groups)"
        )
    return c1, [c1, c1, int(factor)]


def _is_int(x: object) -> bool:
    """Whether ``x`` is an int (and not a bool)."""
    return isinstance(x, int) and not isinstance(x, bool)


def _scales_to(c2: object, c1: int, row: YamlRow) -> bool:
    """Whether ``c2`` is a channel count that ``row``'s width scaling maps to ``c1``."""
    return _is_int(c2) and c2 > 0 and row.scaled(c2) == c1


def _c2_reading(c2: object, c1: int, row: YamlRow) -> str:
    """Why ``c2`` does not scale to ``c1``, and which c2 would."""
    if not (_is_int(c2) and c2 > 0):
        return f"c2={c2!r} is not a channel count"
    nominal = row.nominal(c1)
    would = f"c2={nominal} does" if nominal is not None else "no c2 does"
    return f"c2={c2} scales to {row.scaled(c2)} but must scale to {c1} ({would})"


def _warn(message: str) -> None:
    """Log a warning through Ultralytics' logger."""
    from ultralytics.utils import LOGGER

    LOGGER.warning(f"ultralytics-ema: {message}")


def _takes_row(rule: ChannelRule) -> bool:
    """Whether a channel rule takes the :class:`YamlRow` as a third argument."""
    try:
        inspect.signature(rule).bind(0, [], None)
    except (TypeError, ValueError):  # takes two arguments, or has no signature to inspect: call it with two
        return False
    return True


@dataclass(frozen=True)
class LayerEntry:
    """One registered layer."""

    name: str
    cls: type
    channels: ChannelRule
    origin: str  # "file:line" of the register() call
    takes_row: bool = False  # the rule is called as channels(c1, args, row)

    def __str__(self) -> str:
        """Return e.g. ``'EMA' -> ultralytics_ema.nn.ema.EMA (registered at .../registry.py:120)``."""
        return f"{self.name!r} -> {self.cls.__module__}.{self.cls.__qualname__} (registered at {self.origin})"


class LayerRegistry:
    """Name -> layer class + channel rule, for the YAML model parser.

    Args:
        name (str): Name used in error messages.

    Examples:
        >>> registry = LayerRegistry("demo")
        >>> registry.register("Identity", nn.Identity)
        <class 'torch.nn.modules.linear.Identity'>
        >>> registry.layer_args(nn.Identity, 5, -1, [3, 16], [])
        (16, [16])
    """

    def __init__(self, name: str) -> None:
        """Create an empty registry."""
        self.name = name
        self._by_name: dict[str, LayerEntry] = {}
        self._by_class: dict[type, LayerEntry] = {}
        self._listeners: list[Listener] = []
        self._lock = threading.RLock()

    def register(self, name: str, cls: type, channels: ChannelRule = same_channels, *, force: bool = False) -> type:
        """Register ``cls`` under ``name`` (the module name used in YAML rows).

        Args:
            name (str): YAML module name, a Python identifier.
            cls (type): The ``torch.nn.Module`` subclass.
            channels (ChannelRule): Maps ``(input channels, YAML args)`` to ``(output channels, constructor args)``;
                a rule with a third parameter also gets the :class:`YamlRow` (file, index, width scaling).
            force (bool): Replace an existing entry of the same name instead of raising.

        Returns:
            (type): ``cls``, so this also works as ``register(...)`` right after a class definition.

        Raises:
            ValueError: If the name is taken (and not ``force``), is not an identifier, or ``cls`` is no module class.
        """
        if not (isinstance(name, str) and name.isidentifier()):
            raise ValueError(f"{self.name}: layer name must be a Python identifier, got {name!r}")
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"{self.name}: {name!r} must be a torch.nn.Module subclass, got {cls!r}")
        caller = sys._getframe(1)
        entry = LayerEntry(name, cls, channels, f"{caller.f_code.co_filename}:{caller.f_lineno}", _takes_row(channels))
        with self._lock:
            old = self._by_name.get(name)
            if old is not None and not force:
                raise ValueError(f"{self.name}: layer name {name!r} is already registered: {old}; use force=True")
            for listener in self._listeners:
                listener(entry, force)
            if old is not None:
                del self._by_class[old.cls]
            self._by_name[name] = entry
            self._by_class[cls] = entry
        return cls

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(entry, force)`` for every entry now and for every later registration (it may raise)."""
        with self._lock:
            for entry in self._by_name.values():
                listener(entry, False)
            self._listeners.append(listener)

    def __contains__(self, item: object) -> bool:
        """Whether ``item`` (a class or a name) is registered."""
        return item in self._by_class or item in self._by_name

    def __iter__(self):
        """Iterate over the entries."""
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        """Number of entries."""
        return len(self._by_name)

    def __getitem__(self, name: str) -> LayerEntry:
        """Entry registered under ``name``."""
        return self._by_name[name]

    def layer_args(
        self,
        cls: type,
        index: int,
        f: int | list,
        ch: list,
        args: list,
        d: dict | None = None,
        width: float = 1.0,
        max_channels: float = math.inf,
    ) -> tuple[int, list]:
        """Output channels and constructor arguments of model row ``index`` (called by the patched parser).

        Args:
            cls (type): Registered layer class of the row.
            index (int): Row index in the model YAML (backbone + head).
            f (int | list): The row's ``from``.
            ch (list): Output channels of the rows parsed so far.
            args (list): The row's arguments.
            d (dict | None): The model YAML dict (for its file name, scale and the row as written).
            width (float): Width multiple in force.
            max_channels (float): Channel cap in force.

        Returns:
            (tuple[int, list]): Output channels and constructor arguments.

        Raises:
            ValueError: If the row has several inputs or arguments the class does not accept; the message starts with
                the YAML file and the row.
        """
        entry = self._by_class[cls]
        row = _yaml_row(entry.name, index, f, args, d or {}, width, max_channels)
        if not isinstance(f, int):
            raise ValueError(f"{row}: {entry.name} takes one input, so 'from' must be a single layer index")
        try:
            c2, cargs = entry.channels(ch[f], list(args), row) if entry.takes_row else entry.channels(ch[f], list(args))
        except ValueError as e:
            raise ValueError(f"{row}: {e}") from None
        try:
            inspect.signature(cls).bind(*cargs)
        except TypeError as e:
            raise ValueError(f"{row}: arguments {cargs} do not fit {entry.name}{inspect.signature(cls)}: {e}") from None
        return c2, cargs


def _yaml_row(name: str, index: int, f: int | list, args: list, d: dict, width: float, max_channels: float) -> YamlRow:
    """The :class:`YamlRow` of row ``index`` of the model YAML dict ``d``."""
    rows = list(d.get("backbone") or []) + list(d.get("head") or [])
    f0, n, m, a = rows[index] if index < len(rows) and len(rows[index]) == 4 else (f, 1, name, args)
    scales = d.get("scales")
    scale = d.get("scale") or (next(iter(scales)) if isinstance(scales, dict) and scales else None)
    file = d.get("yaml_file")
    return YamlRow(
        index=index,
        text=f"[{f0}, {n}, {m}, {a}]",
        source=index + f if isinstance(f, int) and f < 0 else f,
        file=str(file) if file else None,
        scale=scale if scales else None,
        width=width,
        max_channels=max_channels,
    )


LAYERS = LayerRegistry("ultralytics_ema.LAYERS")
LAYERS.register("EMA", EMA, ema_channels)
