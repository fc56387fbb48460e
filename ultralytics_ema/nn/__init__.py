"""The EMA layer and how it is computed; this subpackage knows nothing of Ultralytics.

- :mod:`~ultralytics_ema.nn.ema`: :class:`EMA`, the layer, which picks one of the compute paths below per call;
- :mod:`~ultralytics_ema.nn.ema_function`: the forward pass in PyTorch ops and the hand-written backward pass;
- :mod:`~ultralytics_ema.nn.ema_traced`: the same function in the ops that exported graphs record;
- :mod:`~ultralytics_ema.nn.native`: build, cache and call of the C kernels in ``kernels/`` (float32 on CPU);
- :mod:`~ultralytics_ema.nn.reference`: the paper's equations step by step, for verification and benchmarks.
"""
