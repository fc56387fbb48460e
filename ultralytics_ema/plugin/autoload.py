"""When ultralytics-ema patches Ultralytics: an import hook, standard library only.

:func:`install` puts one finder at the front of ``sys.meta_path``. It does two things:

- after Python has executed ``ultralytics.nn.tasks`` or ``ultralytics.data.utils``, it runs the matching function of
  :mod:`ultralytics_ema.plugin.patches` on the new module. Modules imported before :func:`install` are patched by it
  directly. A patch that fails during an import leaves that module untouched and is logged once as an Ultralytics
  warning; ``ultralytics_ema.apply()`` raises the error instead.
- it serves ``ultralytics.nn.attention`` and ``ultralytics.nn.attention.EMA_attention`` (unless Ultralytics has
  modules of those names), both exposing :class:`ultralytics_ema.EMA`. The second is where the fork recipe this
  package replaces put the class, so checkpoints pickled with it load here.
- it serves the module paths of releases before the ``nn/``, ``plugin/``, ``data/`` layout (``ultralytics_ema.ema``,
  ``ultralytics_ema.reference``) as the modules that now hold those classes, so checkpoints pickled with them load.

``import ultralytics_ema`` calls :func:`install`, and the startup hook ``ultralytics_ema_autoload.pth`` does that
import in every Python process unless ``ULTRALYTICS_EMA_AUTOLOAD=0``. Nothing here imports torch or Ultralytics.
"""

from __future__ import annotations

import _thread
import importlib
import importlib.machinery
import sys
from types import ModuleType

PATCHED_MODULES = {"ultralytics.nn.tasks": "patch_tasks", "ultralytics.data.utils": "patch_data_utils"}
ALIAS_MODULES = ("ultralytics.nn.attention", "ultralytics.nn.attention.EMA_attention")
# Old module path -> current one, for classes that checkpoints pickle (EMA layers of models saved before the move).
MOVED_MODULES = {
    "ultralytics_ema.ema": "ultralytics_ema.nn.ema",
    "ultralytics_ema.reference": "ultralytics_ema.nn.reference",
}
_FAILED = False
_LOCK = _thread.RLock()  # _thread, not threading: this module runs at every interpreter startup


class _AliasLoader:
    """Loader of the alias modules: each exposes ``EMA``."""

    def create_module(self, spec):
        """Use the default module creation."""
        return None

    def exec_module(self, module: ModuleType) -> None:
        """Fill the module."""
        from ultralytics_ema.nn.ema import EMA

        module.EMA = EMA
        module.__all__ = ["EMA"]


class _MovedLoader:
    """Loader of an old module path: the module is the one at the new path (same objects, one copy)."""

    def __init__(self, target: str) -> None:
        """Serve ``target``."""
        self.target = target

    def create_module(self, spec):
        """Return the module at the new path."""
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module is already executed."""


class UltralyticsImportHook:
    """Meta path finder: patch Ultralytics modules right after they are executed; serve the alias modules."""

    ultralytics_ema_hook = True  # marks instances, also of this class loaded twice

    def find_spec(self, fullname: str, path, target=None):
        """Return a spec for the alias modules, or wrap the loader of a module to patch; otherwise ``None``."""
        if fullname in ALIAS_MODULES:
            if _find_elsewhere(fullname, path, target) is not None:
                return None
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(), is_package=fullname == ALIAS_MODULES[0])
        if fullname in MOVED_MODULES:
            return importlib.machinery.ModuleSpec(fullname, _MovedLoader(MOVED_MODULES[fullname]))
        if fullname not in PATCHED_MODULES:
            return None
        spec = _find_elsewhere(fullname, path, target)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            _patch(fullname, module, strict=False)

        spec.loader.exec_module = exec_and_patch  # this loader instance serves this spec only
        return spec


def _find_elsewhere(fullname: str, path, target):
    """Ask the other finders on ``sys.meta_path`` for the real spec."""
    for finder in list(sys.meta_path):
        find_spec = getattr(finder, "find_spec", None)
        if getattr(finder, "ultralytics_ema_hook", False) or find_spec is None:
            continue
        spec = find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


def _patch(name: str, module: ModuleType, strict: bool) -> None:
    """Run the patch for ``module``; unless ``strict``, log a failure once per process instead of raising."""
    global _FAILED
    try:
        patches = importlib.import_module("ultralytics_ema.plugin.patches")
        getattr(patches, PATCHED_MODULES[name])(module)
    except Exception as e:
        if strict:
            raise
        if not _FAILED:  # one cause (e.g. the version) fails every module: say it once
            _FAILED = True
            from ultralytics.utils import LOGGER

            LOGGER.warning(f"ultralytics-ema: EMA layers are not available: {e}")


def install() -> None:
    """Install the import hook (once) and patch the target modules that are already imported."""
    with _LOCK:
        if not any(getattr(f, "ultralytics_ema_hook", False) for f in sys.meta_path):
            sys.meta_path.insert(0, UltralyticsImportHook())
        for name in PATCHED_MODULES:
            module = sys.modules.get(name)
            initializing = getattr(getattr(module, "__spec__", None), "_initializing", False)
            if module is not None and not initializing:  # one still executing is past the hook's reach
                _patch(name, module, strict=True)
