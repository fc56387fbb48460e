"""Packaged datasets whose root is chosen at run time: the ``-local`` YAMLs and the generated demo data.

The demo datasets (``ema-demo.yaml``, ``ema-demo-seg.yaml``, ... and the classification folder ``ema-demo-cls``) live
under Ultralytics' ``datasets_dir``. :func:`resolve` and :func:`demo_folder` generate them there on first use, offline,
and say so in one log line, before Ultralytics looks for the images (so it never reports them missing or "downloads"
them).

``coco-local.yaml`` and ``visdrone-local.yaml``:

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
    if yaml_file.stem in _demos():
        _generate(yaml_file.stem, DATASETS_DIR / data["path"])
        return yaml_file
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


def demo_folder(name: str) -> Path | None:
    """Folder of the demo classification dataset called ``name`` (e.g. ``ema-demo-cls``), generated if missing.

    Returns:
        (Path | None): ``<datasets_dir>/<name>``, or None if ``name`` is no demo classification dataset (or a path that
            exists), which Ultralytics then resolves as usual.
    """
    from ultralytics.utils import DATASETS_DIR

    demo = _demos().get(str(name))
    if demo is None or demo.task != "classify" or Path(name).exists():
        return None
    return _generate(demo.name, DATASETS_DIR / demo.name)


def _demos() -> dict:
    """The demo datasets by name."""
    from ultralytics_ema.data.demo import DEMOS

    return DEMOS


def _generate(name: str, root: Path) -> Path:
    """Generate demo dataset ``name`` into ``root`` unless it is there; log one line when it is generated."""
    from ultralytics.utils import LOGGER

    from ultralytics_ema.data.demo import make_demo_dataset, present

    demo = _demos()[name]
    root = Path(root).expanduser().resolve()
    if not present(root, demo.task):
        LOGGER.info(
            f"ultralytics-ema: generating the {name} dataset offline into {root} ({demo.n_train} train / {demo.n_val} "
            f"val synthetic {demo.imgsz} px images, no download)"
        )
    return make_demo_dataset(root, task=demo.task)
