"""The layers that model YAMLs can name through this package, and how their channels are derived.

Ultralytics' model parser hard-codes, per layer class, how a YAML row's arguments become constructor arguments. The
patched parser (see :mod:`ultralytics_ema.plugin.patches`) asks :data:`LAYERS` for the classes registered here instead:
each entry maps a YAML name to a class and a *channel rule*. Another layer that keeps its input's channel count
is one line::

    LAYERS.register("SimAM", SimAM)

Names are unique: registering a taken name raises unless ``force=True``; the error says where the name was
registered first.
"""

from __future__ import annotations

import inspect
import sys
import threading
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ultralytics_ema.nn.ema import EMA

ChannelRule = Callable[[int, list], "tuple[int, list]"]
Listener = Callable[["LayerEntry", bool], None]


def same_channels(c1: int, args: list) -> tuple[int, list]:
    """Channel rule of a layer whose output has its input's channels: construct it as ``cls(c1, *args)``.

    Args:
        c1 (int): Channels of the layer's input, i.e. of its ``from`` layer after width scaling.
        args (list): The YAML row's arguments.

    Returns:
        (tuple[int, list]): Output channels and constructor arguments.
    """
    return c1, [c1, *args]


@dataclass(frozen=True)
class LayerEntry:
    """One registered layer."""

    name: str
    cls: type
    channels: ChannelRule
    origin: str  # "file:line" of the register() call

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
            channels (ChannelRule): Maps ``(input channels, YAML args)`` to ``(output channels, constructor args)``.
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
        entry = LayerEntry(name, cls, channels, f"{caller.f_code.co_filename}:{caller.f_lineno}")
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

    def layer_args(self, cls: type, index: int, f: int | list, ch: list, args: list) -> tuple[int, list]:
        """Output channels and constructor arguments of model row ``index`` (called by the patched parser).

        Args:
            cls (type): Registered layer class of the row.
            index (int): Row index in the model YAML (backbone + head).
            f (int | list): The row's ``from``.
            ch (list): Output channels of the rows parsed so far.
            args (list): The row's arguments.

        Returns:
            (tuple[int, list]): Output channels and constructor arguments.

        Raises:
            ValueError: If the row has several inputs or arguments the class does not accept.
        """
        entry = self._by_class[cls]
        row = f"model YAML row {index} [{f}, {entry.name}, {args}]"
        if not isinstance(f, int):
            raise ValueError(f"{row}: {entry.name} takes one input, so 'from' must be a single layer index")
        c2, cargs = entry.channels(ch[f], list(args))
        try:
            inspect.signature(cls).bind(*cargs)
        except TypeError as e:
            raise ValueError(f"{row}: arguments {cargs} do not fit {entry.name}{inspect.signature(cls)}: {e}") from None
        return c2, cargs


LAYERS = LayerRegistry("ultralytics_ema.LAYERS")
LAYERS.register("EMA", EMA)
