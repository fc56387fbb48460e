"""ultralytics-ema: the EMA attention layer (Efficient Multi-Scale Attention, ICASSP 2023) for Ultralytics YOLO.

``import ultralytics_ema`` registers EMA with Ultralytics: right away if Ultralytics' model code is already imported,
otherwise the moment it is (see :mod:`ultralytics_ema.plugin.autoload`). The package also installs a startup hook
(``ultralytics_ema_autoload.pth``) that does this import in every Python process, so ``yolo train
model=yolo11n-ema.yaml`` needs no import line; set ``ULTRALYTICS_EMA_AUTOLOAD=0`` to switch the hook off.

This import is light (standard library only); torch and Ultralytics load when first used.

Examples:
    >>> import ultralytics_ema
    >>> from ultralytics import YOLO
    >>> model = YOLO("yolo11n-ema.yaml")
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ultralytics_ema.plugin.autoload import install as _install

__version__ = "0.1.0"
CFG_DIR = Path(__file__).resolve().parent / "cfg"  # packaged YAMLs: ultralytics_ema/cfg, a link to the top-level cfg/

# Public names, imported on first access so that `import ultralytics_ema` (run at startup) does not import torch.
_LAZY = {
    "EMA": "ultralytics_ema.nn.ema",
    "ReferenceEMA": "ultralytics_ema.nn.reference",
    "LAYERS": "ultralytics_ema.plugin.registry",
    "LayerRegistry": "ultralytics_ema.plugin.registry",
    "same_channels": "ultralytics_ema.plugin.registry",
    "apply": "ultralytics_ema.plugin.patches",
    "UnsupportedUltralyticsError": "ultralytics_ema.plugin.patches",
    "SUPPORTED_ULTRALYTICS": "ultralytics_ema.plugin.patches",
    "make_demo_dataset": "ultralytics_ema.data.demo",
}
__all__ = ["CFG_DIR", "__version__", *_LAZY]


def __getattr__(name: str) -> object:
    """Import public names lazily (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ultralytics_ema' has no attribute {name!r}")


def __dir__() -> list[str]:
    """List public names, lazy ones included."""
    return sorted(set(globals()) | set(_LAZY))


_install()
