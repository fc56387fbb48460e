"""Packaged dataset YAMLs whose root is chosen at run time: ``coco-local.yaml`` and ``visdrone-local.yaml``.

Ultralytics' own ``coco.yaml`` and ``VisDrone.yaml`` download their data on first use. These never download: they
describe data prepared with ``ultralytics-ema prepare coco`` / ``ultralytics-ema prepare visdrone`` (or Ultralytics'
download, which has the same layout). Two keys are read here and removed before Ultralytics sees the YAML:

- ``root_env``: environment variable with the dataset root; if unset, the root is ``path`` under Ultralytics'
  ``datasets_dir``, as for stock YAMLs. ``ultralytics-ema train --data-dir DIR`` sets this variable.
- ``prepare``: the command that prepares the data, shown when the root has no validation images.

:func:`resolve` is called when a bare name like ``data=coco-local.yaml`` resolves (see
:mod:`ultralytics_ema.plugin.patches`).
"""

from __future__ import annotations

import os
from pathlib import Path


def resolve(yaml_file: str | Path) -> Path:
    """Return a YAML Ultralytics can use: ``yaml_file`` itself, or a copy with the chosen root as ``path``.

    Args:
        yaml_file (str | Path): A packaged dataset YAML.

    Returns:
        (Path): The YAML to load; copies with a resolved root are written to Ultralytics' user config folder.

    Raises:
        FileNotFoundError: If the root has no validation images; the message says where it looked and the command
            that prepares the dataset.
    """
    from ultralytics.utils import DATASETS_DIR, USER_CONFIG_DIR, YAML

    from ultralytics_ema.data.files import write_data_yaml

    yaml_file = Path(yaml_file)
    data = YAML.load(yaml_file)
    env, prepare = data.pop("root_env", None), data.pop("prepare", "")
    if env is None:
        return yaml_file
    root = Path(os.environ.get(env) or DATASETS_DIR / data["path"]).expanduser().resolve()
    val = root / data["val"]
    if not val.is_dir():
        raise FileNotFoundError(
            f"{yaml_file.name}: no dataset at {root} (looked for {val}); prepare it with: "
            f"{prepare.format(root=root)} (or set {env} to a prepared dataset folder)"
        )
    data["path"] = str(root)
    out = USER_CONFIG_DIR / "ultralytics-ema" / yaml_file.name
    out.parent.mkdir(parents=True, exist_ok=True)
    write_data_yaml(out, data, header=f"# {yaml_file.name} with root {root} (${env}); written by ultralytics-ema\n")
    return out
