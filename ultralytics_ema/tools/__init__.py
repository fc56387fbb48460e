"""Tools behind the ``ultralytics-ema`` command that are neither datasets nor Ultralytics patches: the
baseline-vs-EMA comparison (:mod:`~ultralytics_ema.tools.compare`) and the CPU benchmark
(:mod:`~ultralytics_ema.tools.benchmark`). Each module imports torch and Ultralytics only when its work runs.
"""
