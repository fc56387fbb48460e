"""Every touch point on Ultralytics: when the patches run (:mod:`~ultralytics_ema.plugin.autoload`, standard library
only, imported at interpreter startup), what they change (:mod:`~ultralytics_ema.plugin.patches`), the layers YAML
rows can name (:mod:`~ultralytics_ema.plugin.registry`), pretrained-weight alignment
(:mod:`~ultralytics_ema.plugin.transfer`) and the ``-local`` dataset YAMLs (:mod:`~ultralytics_ema.plugin.local`).
"""
