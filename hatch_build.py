"""Hatchling build hook: ship the startup hook ``ultralytics_ema_autoload.pth`` in regular and editable wheels.

Python runs ``import`` lines of ``*.pth`` files in site-packages at interpreter startup. Ours installs
``ultralytics_ema``'s import hook (stdlib only, no torch) so EMA is registered in every process that imports
Ultralytics' model code, ``yolo`` CLI and DDP workers included. It is skipped when ``ULTRALYTICS_EMA_AUTOLOAD=0`` and
never stops the interpreter from starting: any failure is reported in one line on stderr.
"""

import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PTH_NAME = "ultralytics_ema_autoload.pth"  # sorts after hatchling's editable "_ultralytics_ema.pth"
PTH_CODE = (  # one line; `sys._ultralytics_ema_startup` makes it run once where site-packages is listed twice
    "import os, sys; "
    'os.environ.get("ULTRALYTICS_EMA_AUTOLOAD", "1").strip().lower() in ("0", "false", "no", "off") '
    'or hasattr(sys, "_ultralytics_ema_startup") or exec('
    '"sys._ultralytics_ema_startup = True\\ntry:\\n import ultralytics_ema\\n'
    "except Exception as e:\\n"
    " sys.stderr.write(f'ultralytics-ema: startup hook skipped ({type(e).__name__}: {e})\\\\n')\")\n"
)


class CustomBuildHook(BuildHookInterface):
    """Add the ``.pth`` startup hook at the root of the wheel."""

    def initialize(self, version: str, build_data: dict) -> None:
        """Write the ``.pth`` file to a temporary folder and force-include it at the wheel root."""
        self._tmp = tempfile.TemporaryDirectory()
        pth = Path(self._tmp.name) / PTH_NAME
        pth.write_text(PTH_CODE)
        key = "force_include_editable" if version == "editable" else "force_include"
        build_data[key][str(pth)] = PTH_NAME

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        """Remove the temporary folder."""
        self._tmp.cleanup()
