"""Tools behind the ``ultralytics-ema`` command that are neither datasets nor Ultralytics patches: the
baseline-vs-EMA comparison (:mod:`~ultralytics_ema.tools.compare`), the CPU benchmark
(:mod:`~ultralytics_ema.tools.benchmark`) and the export matrix (:mod:`~ultralytics_ema.tools.deploy`). Each module
imports torch and Ultralytics only when its work runs.
"""
