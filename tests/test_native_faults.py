"""Faults of the native CPU kernels as a user's machine meets them: extreme inputs, a damaged or unusable cache, a
hanging compiler, threads racing to build.

Exactness: on every case the kernels' output (inference) and output plus gradients (training) are compared with the
float64 reference and must be as close to it as the float32 reference is (:func:`within_float32_error`). Build faults
run in fresh processes with their own caches: each must exit 0 with the reference's output and say what happened in
exactly one line.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_ema import PooledErrors, float32_references, float64_results, make_pair, run_with_grads
from test_native import needs_kernel, spy

from ultralytics_ema.nn.ema import EMA
from ultralytics_ema.nn.reference import ReferenceEMA

SEEDS = range(8)  # inputs per case: see test_ema.FACTOR


def near_constant(offset: float):
    """Channels of ``offset`` plus noise of 1e-2: GroupNorm divides by a tiny spread."""
    return lambda layer, x: x * 1e-2 + offset


def saturated_gates(logit: float):
    """conv1x1 bias ``logit``: every gate's logit is about ``logit`` (0 or 1 after the sigmoid from |logit| > 88)."""

    def prepare(layer, x):
        layer.conv1x1.weight.mul_(1e-3)
        layer.conv1x1.bias.fill_(logit).add_(torch.randn_like(layer.conv1x1.bias))
        return x

    return prepare


def saturated_map(logit: float):
    """GroupNorm bias ``logit``: the attention map's logits are about ``logit``."""

    def prepare(layer, x):
        layer.gn.bias.fill_(logit).add_(torch.randn_like(layer.gn.bias))
        return x

    return prepare


def scaled(factor: float):
    """The input times ``factor``."""
    return lambda layer, x: x * factor


def one_hot_softmax(layer, x):
    """Both softmaxes near one-hot: logits ~ N(0, 300^2), so most weights underflow to 0."""
    layer.conv3x3.bias.normal_(0.0, 300.0)
    layer.gn.bias.normal_(0.0, 300.0)
    return x


EXTREMES = {
    "x30": scaled(30.0),
    "x100": scaled(100.0),
    "x1e3": scaled(1e3),
    "x1e4": scaled(1e4),
    "near-constant+100": near_constant(100.0),
    "near-constant-1e4": near_constant(-1e4),
    "gates-89": saturated_gates(-89.0),
    "gates+89": saturated_gates(89.0),
    "gates-1e3": saturated_gates(-1e3),
    "map-89": saturated_map(-89.0),
    "map+1e3": saturated_map(1e3),
    "one-hot softmax": one_hot_softmax,
    "tiny": scaled(1e-30),
    "zeros": scaled(0.0),
}


def extreme_case(name: str, seed: int, shape: tuple = (2, 32, 12, 10), factor: int = 4) -> tuple[EMA, torch.Tensor]:
    """The layer (random weights ~ N(0, 0.5^2)) and the input of case ``name``."""
    fast, _ = make_pair(shape[1], factor, "random", seed=seed)
    torch.manual_seed(100 + seed)
    with torch.no_grad():
        x = EXTREMES[name](fast, torch.randn(shape))
    return fast, x


def references(layer: EMA) -> tuple[ReferenceEMA, ReferenceEMA]:
    """The float32 and float64 references with the weights of ``layer``."""
    ref = ReferenceEMA(layer.gn.num_channels * layer.groups, layer.groups)
    ref.load_state_dict(layer.state_dict())
    return ref, copy.deepcopy(ref).double()


@needs_kernel
@pytest.mark.parametrize("case", list(EXTREMES))
def test_extreme_inputs_match_float64(case: str, monkeypatch):
    forward, backward = spy(monkeypatch), spy(monkeypatch, "ema_backward_native")
    inference, training = PooledErrors(), PooledErrors()
    for seed in SEEDS:
        fast, x = extreme_case(case, seed)
        ref32, ref64 = references(fast)
        grad_out = torch.randn_like(x)
        want, refs32 = float64_results(ref64, x, grad_out), float32_references(ref32, x, grad_out)
        training.add(run_with_grads(fast, x, grad_out), refs32, want)
        with torch.no_grad():
            inference.add({"out": fast(x)}, refs32, {"out": want["out"]})
    assert len(forward) == 2 * len(SEEDS) and len(backward) == len(SEEDS)  # the kernels computed them, not PyTorch ops
    inference.check()
    training.check()
