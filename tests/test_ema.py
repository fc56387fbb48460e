"""The EMA layer: same function and gradients as the step-by-step reference, constructor errors, state_dict layout,
unpickling of official-layout checkpoints, bf16 autocast, TorchScript tracing and ONNX export with dynamic shapes.
Tests that take the ``path`` fixture run three ways: with the native CPU kernel for inference calls (the default where
it builds), and without it, in PyTorch ops, with both ways of computing the GroupNorm statistics (GroupNorm's own
kernel, used below ``ema_function.STATS_MIN_NUMEL`` elements without gradients, and two reductions, used above it and
in every call with gradients). Calls with gradients run the same hand-written backward pass in all three.

Tolerances: in float32, outputs, input gradients and parameter gradients are compared with :class:`ReferenceEMA` in
float64 and must be as close to it as the float32 reference is (``FACTOR``, ``PooledErrors``): a fixed tolerance
against the float32 reference held on one CPU and failed on another. Simple checks (layouts, pickling, tracing)
compare with the float32 reference to 1e-5. In float64 both implementations agree to 1e-10: the fast forward pass is
the same function, not an approximation. One degenerate case (1x1 maps, one channel per group) is compared with
float64; see its test.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch.overrides import TorchFunctionMode

from ultralytics_ema.nn import ema_function, native
from ultralytics_ema.nn.ema import EMA, valid_factors
from ultralytics_ema.nn.reference import ReferenceEMA

STATE_KEYS = ["gn.weight", "gn.bias", "conv1x1.weight", "conv1x1.bias", "conv3x3.weight", "conv3x3.bias"]

# (batch, channels, height, width), factor: batch 1, odd and non-square maps, 1x1 and 1xw / hx1 maps, 1 to 16
# channels per group (factors 1 to 32), the channel counts of YOLO11n's EMA layers.
CASES = [
    ((2, 64, 8, 8), 32),
    ((1, 64, 7, 13), 32),
    ((1, 64, 7, 13), 8),
    ((2, 64, 7, 13), 2),
    ((1, 32, 9, 6), 1),
    ((3, 32, 1, 1), 4),
    ((2, 32, 1, 9), 16),
    ((3, 16, 5, 1), 2),
    ((2, 48, 6, 5), 16),
    ((1, 128, 10, 10), 32),
    ((1, 256, 4, 6), 32),
    ((2, 512, 3, 3), 32),
]
IDS = [f"{'x'.join(map(str, shape))}-f{factor}" for shape, factor in CASES]


@pytest.fixture(params=["native", "groupnorm", "moments"])
def path(request, monkeypatch) -> str:
    """The native kernel, or PyTorch ops with GroupNorm's kernel (small inputs without gradients) or two reductions
    (large inputs, and every call with gradients)."""
    if request.param == "native":
        if native.library() is None:
            pytest.skip("the native CPU kernel does not build here (no C compiler)")
        monkeypatch.delenv("ULTRALYTICS_EMA_NATIVE", raising=False)
    else:
        monkeypatch.setenv("ULTRALYTICS_EMA_NATIVE", "0")
        monkeypatch.setattr(ema_function, "STATS_MIN_NUMEL", 1 << 62 if request.param == "groupnorm" else 0)
    return request.param


def make_pair(channels: int, factor: int, init: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """An EMA and a ReferenceEMA with the same weights: default init, or all parameters ~ N(0, 0.5^2)."""
    torch.manual_seed(seed)
    fast = EMA(channels, factor=factor)
    if init == "random":
        with torch.no_grad():
            for p in fast.parameters():
                p.normal_(0.0, 0.5)
    ref = ReferenceEMA(channels, factor=factor)
    ref.load_state_dict(fast.state_dict())
    return fast.to(dtype), ref.to(dtype)


def run_with_grads(module: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output, input gradient and parameter gradients of ``(module(x) * grad_out).sum()``."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    (y * grad_out).sum().backward()
    return {"out": y.detach(), "x.grad": x.grad, **{f"{n}.grad": p.grad for n, p in module.named_parameters()}}


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference."""
    return (a.double() - b.double()).abs().max().item()


# "As exact as the float32 reference": against float64 (with exact sigmoid slopes, see ExactSigmoid), the RMS error
# of every output and gradient is at most FACTOR times the float32 reference's, plus ULPS float32 ulps of the tensor's
# largest value (for tensors that both compute to within rounding of zero). The float32 reference's error is taken over
# several summation orders (float32_references): a parameter gradient is a sum over all pixels, whose rounding error is
# a random draw, and two draws differ by any factor (their ratio is Cauchy-distributed); the RMS over four orders is
# a stable yardstick. Measured on an AMD EPYC (AVX-512), the kernels' errors were 0.1-1.3 times it, pooled over inputs.
FACTOR, ULPS = 3.0, 4.0


class ExactSigmoid(torch.autograd.Function):
    """``torch.sigmoid`` whose backward pass computes sigmoid(x) * sigmoid(-x): autograd's sigmoid(x) * (1 -
    sigmoid(x)) is 0 once sigmoid(x) rounds to 1 (x > 37 in float64), where the kernels compute the true slope."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        """sigmoid(x), keeping x."""
        ctx.save_for_backward(x)
        return torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        """grad * sigmoid(x) * sigmoid(-x)."""
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x) * torch.sigmoid(-x)


class exact_sigmoid(TorchFunctionMode):
    """Run the block with :class:`ExactSigmoid` in place of every ``sigmoid`` that autograd records."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.sigmoid, torch.Tensor.sigmoid) and torch.is_grad_enabled():
            return ExactSigmoid.apply(*args)
        return func(*args, **(kwargs or {}))


def float64_results(ref64: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor | None) -> dict:
    """Output (and, with ``grad_out``, gradients) of the float64 reference with exact sigmoid slopes."""
    if grad_out is None:
        with torch.no_grad():
            return {"out": ref64(x.double())}
    with exact_sigmoid():
        return run_with_grads(ref64, x.double(), grad_out.double())


def float32_references(ref32: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor | None) -> list[dict]:
    """Results of the float32 reference with its sums in other orders: on ``x`` as given, in channels_last memory,
    with the channel groups and with the batch in reverse order (the same function; results put back in order)."""
    b, c, h, w = x.shape
    groups = ref32.groups
    orders = [
        lambda t: t,
        lambda t: t.contiguous(memory_format=torch.channels_last),
        lambda t: t.reshape(b, groups, c // groups, h, w).flip(1).reshape(b, c, h, w),
        lambda t: t.flip(0),
    ]
    runs = []
    for order in orders:
        if grad_out is None:
            with torch.no_grad():
                result = {"out": ref32(order(x))}
        else:
            result = run_with_grads(ref32, order(x), order(grad_out))
        runs.append({k: order(v) if k in ("out", "x.grad") else v for k, v in result.items()})
    return runs


class PooledErrors:
    """Squared errors against the float64 reference, summed over inputs: of the tested results, of the float32
    reference's (averaged over its orders), and the squares of ``ULPS`` float32 ulps of each tensor's largest value."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {}

    def add(self, got: dict, refs32: list[dict], ref64: dict) -> None:
        """Add one input's results; first check that each tensor of ``got`` is non-finite (NaN) exactly where the
        float64 reference is."""
        for name, want in ref64.items():
            finite = torch.isfinite(want)
            assert torch.equal(torch.isfinite(got[name]), finite), f"{name}: non-finite where the reference is not"
            assert torch.equal(torch.isnan(got[name]), torch.isnan(want)), f"{name}: NaN where the reference has none"
            if not finite.any():
                continue
            ulps = ULPS * torch.finfo(torch.float32).eps * want[finite].abs().max().item()
            sums = self.sums.setdefault(name, [0.0, 0.0, 0.0, 0])
            sums[0] += (got[name][finite].double() - want[finite]).square().sum().item()
            for ref in refs32:
                sums[1] += (ref[name][finite].double() - want[finite]).square().sum().item() / len(refs32)
            sums[2] += ulps**2 * finite.sum().item()
            sums[3] += finite.sum().item()

    def check(self) -> None:
        """Assert that the RMS error is at most ``FACTOR`` times the float32 reference's, plus the ulps."""
        for name, (*sums, count) in self.sums.items():
            got, ref32, ulps = ((total / count) ** 0.5 for total in sums)
            assert got <= FACTOR * ref32 + ulps, f"{name}: RMS error {got:.3g}, float32 reference's {ref32:.3g}"


def assert_as_exact_as_float32(
    got: dict, ref32: torch.nn.Module, ref64: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor | None = None
) -> None:
    """Assert that ``got`` (the output, and with ``grad_out`` the gradients, of ``(layer(x) * grad_out).sum()``) is
    as exact as the float32 reference (see ``FACTOR``)."""
    errors = PooledErrors()
    errors.add(got, float32_references(ref32, x, grad_out), float64_results(ref64, x, grad_out))
    errors.check()


@pytest.mark.parametrize("init", ["default", "random"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("shape", "factor"), CASES, ids=IDS)
def test_matches_reference_float32(shape: tuple, factor: int, train: bool, init: str, path: str):
    fast, ref = make_pair(shape[1], factor, init)
    _, ref64 = make_pair(shape[1], factor, init, dtype=torch.float64)
    for m in (fast, ref, ref64):
        m.train(train)
    torch.manual_seed(1)
    x, grad_out = torch.randn(shape), torch.randn(shape)
    got = run_with_grads(fast, x, grad_out)
    with torch.no_grad():
        got["out, no_grad"] = fast(x)
    assert got["out"].shape == x.shape
    refs32, want = float32_references(ref, x, grad_out), float64_results(ref64, x, grad_out)
    for results in (*refs32, want):
        results["out, no_grad"] = results["out"]
    errors = PooledErrors()
    errors.add(got, refs32, want)
    errors.check()


@pytest.mark.parametrize("init", ["default", "random"])
def test_single_value_groupnorm_float32(init: str):
    # 1x1 maps with one channel per group: GroupNorm normalises a single value, so the true gradients of gn.weight and
    # conv1x1 are 0, and float32 rounding around that 0 is amplified by 1/sqrt(eps) ~ 316 in both implementations
    # (the reference's own error reaches 2.3e-5 here). Compare both with float64 instead.
    shape, factor = (2, 32, 1, 1), 32
    fast, ref = make_pair(shape[1], factor, init)
    _, ref64 = make_pair(shape[1], factor, init, dtype=torch.float64)
    torch.manual_seed(1)
    x, grad_out = torch.randn(shape), torch.randn(shape)
    got, ref32 = run_with_grads(fast, x, grad_out), run_with_grads(ref, x, grad_out)
    want = run_with_grads(ref64, x.double(), grad_out.double())
    for name, value in want.items():
        assert max_abs_diff(got[name], value) <= 3e-5, name
        assert max_abs_diff(ref32[name], value) <= 3e-5, name
    assert max_abs_diff(got["out"], ref32["out"]) <= 1e-5


@pytest.mark.parametrize("init", ["default", "random"])
@pytest.mark.parametrize(("shape", "factor"), [*CASES, ((2, 32, 1, 1), 32)], ids=[*IDS, "2x32x1x1-f32"])
def test_matches_reference_float64(shape: tuple, factor: int, init: str, path: str):
    fast, ref = make_pair(shape[1], factor, init, dtype=torch.float64)
    torch.manual_seed(2)
    x, grad_out = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    got, want = run_with_grads(fast, x, grad_out), run_with_grads(ref, x, grad_out)
    for name, value in want.items():
        assert max_abs_diff(got[name], value) <= 1e-10 * max(1.0, value.abs().max().item()), name


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_any_input_layout(layout: str, path: str):
    fast, ref = make_pair(64, 8, "random")
    x = torch.randn(2, 64, 12, 10)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(2, 64, 10, 12).transpose(2, 3)
    with torch.no_grad():
        assert max_abs_diff(fast(x), ref(x)) <= 1e-5


def test_channels_last_weights(path: str):
    # Models converted with .to(memory_format=torch.channels_last) hold non-contiguous 4-D weights.
    fast, ref = make_pair(64, 8, "random")
    fast = fast.to(memory_format=torch.channels_last)
    assert not fast.conv3x3.weight.is_contiguous()
    x = torch.randn(2, 64, 10, 12).contiguous(memory_format=torch.channels_last)
    got, want = run_with_grads(fast, x, torch.ones_like(x)), run_with_grads(ref, x, torch.ones_like(x))
    for name, value in want.items():
        assert max_abs_diff(got[name], value) <= 1e-5 * max(1.0, value.abs().max().item()), name


def test_nonzero_mean_input(path: str):
    # Post-activation features are mostly positive: normalisation must not lose precision to a large mean.
    fast, ref = make_pair(64, 16, "random")
    x = torch.randn(2, 64, 16, 16) * 0.5 + 3.0
    with torch.no_grad():
        assert max_abs_diff(fast(x), ref(x)) <= 1e-5 * ref(x).abs().max().item()


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_near_constant_channels(path: str, grad: bool):
    # Mean 10, spread 1e-2: E[y^2] - E[y]^2 in float32 would lose the variance to cancellation without the shift.
    fast, ref32 = make_pair(64, 16, "random")
    _, ref64 = make_pair(64, 16, "random", dtype=torch.float64)
    torch.manual_seed(3)
    x = torch.randn(2, 64, 16, 16) * 1e-2 + 10.0
    grad_out = torch.randn_like(x)
    want = run_with_grads(ref64, x.double(), grad_out.double())
    with torch.set_grad_enabled(grad):
        got = run_with_grads(fast, x, grad_out) if grad else {"out": fast(x)}
        base = run_with_grads(ref32, x, grad_out) if grad else {"out": ref32(x)}
    for name, value in got.items():
        scale = want[name].abs().max().item()
        # Within a few times the reference's own float32 error.
        assert max_abs_diff(value, want[name]) <= 4 * max_abs_diff(base[name], want[name]) + 1e-6 * scale, name


def test_grad_after_inference_mode():
    # Constants made under inference_mode must still be usable when autograd saves them later.
    fast, ref = make_pair(32, 4, "random")
    x = torch.randn(1, 32, 6, 6)
    with torch.inference_mode():
        fast(x)
    got, want = run_with_grads(fast, x, torch.ones_like(x)), run_with_grads(ref, x, torch.ones_like(x))
    assert max_abs_diff(got["x.grad"], want["x.grad"]) <= 1e-5


@pytest.mark.parametrize(("channels", "factor"), [(64, 32), (64, 1), (64, 64), (48, 16), (30, 3), (7, 7)])
def test_output_shape(channels: int, factor: int):
    x = torch.randn(2, channels, 5, 9)
    assert EMA(channels, factor=factor)(x).shape == x.shape


@pytest.mark.parametrize(
    ("channels", "factor"),
    [(48, 32), (64, 0), (64, -4), (64, 3), (64, 2.0), (64, "8"), (64, None), (64, True), (10, 20)],
)
def test_bad_factor_raises(channels: int, factor):
    with pytest.raises(ValueError) as info:
        EMA(channels, factor=factor)  # EMA(channels, None) is the official EMA(channels, c2=None): factor 32
    message = str(info.value)
    assert f"channels={channels}" in message
    assert f"factor={factor!r}" in message
    assert f"valid factors for {channels} channels: {', '.join(map(str, valid_factors(channels)))}" in message


def test_bad_factor_message_example():
    with pytest.raises(ValueError, match=r"EMA\(channels=48, factor=32\).*valid factors for 48 channels: "):
        EMA(48, factor=32)
    assert valid_factors(48) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 48]


def test_default_factor_and_attributes():
    m = EMA(128)
    assert m.groups == 32
    assert isinstance(m.gn, torch.nn.GroupNorm)
    assert (m.gn.num_groups, m.gn.num_channels) == (4, 4)
    assert isinstance(m.conv1x1, torch.nn.Conv2d)
    assert isinstance(m.conv3x3, torch.nn.Conv2d)
    assert m.extra_repr() == "channels=128, factor=32"
    assert "EMA(\n  channels=128, factor=32" in repr(m)


@pytest.mark.parametrize(("channels", "factor"), [(64, 32), (256, 32), (96, 8)])
def test_state_dict_keys_and_shapes(channels: int, factor: int):
    cg = channels // factor
    sd = EMA(channels, factor=factor).state_dict()
    assert list(sd) == STATE_KEYS
    assert [tuple(v.shape) for v in sd.values()] == [(cg,), (cg,), (cg, cg, 1, 1), (cg,), (cg, cg, 3, 3), (cg,)]
    assert list(ReferenceEMA(channels, factor=factor).state_dict()) == STATE_KEYS
    assert not list(EMA(channels, factor=factor).buffers())


def test_unpickle_official_layout_drops_parameterless_modules():
    # A checkpoint pickled from the official class holds softmax/agp/pool_h/pool_w submodules; ReferenceEMA has them
    # too. Pickle one under the EMA class name, as a checkpoint that references EMA would hold it.
    _, official = make_pair(64, 8, "random")
    assert {"softmax", "agp", "pool_h", "pool_w"} <= set(official._modules)
    official.__class__ = EMA
    blob = pickle.dumps(official)
    official.__class__ = ReferenceEMA
    loaded = pickle.loads(blob)
    assert type(loaded) is EMA
    assert list(loaded._modules) == ["gn", "conv1x1", "conv3x3"]
    assert list(loaded.state_dict()) == STATE_KEYS
    x = torch.randn(2, 64, 9, 11)
    with torch.no_grad():
        assert max_abs_diff(loaded(x), official(x)) <= 1e-5


def test_torch_save_load_and_deepcopy():
    fast, ref = make_pair(64, 16, "random")
    buffer = io.BytesIO()
    torch.save(fast, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        assert max_abs_diff(loaded(x), ref(x)) <= 1e-5
        assert max_abs_diff(copy.deepcopy(fast)(x), ref(x)) <= 1e-5
        assert max_abs_diff(copy.deepcopy(ref)(x), ref(x)) == 0  # keeps the official pooling modules it runs


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_bf16_autocast(grad: bool, path: str):
    fast, _ = make_pair(64, 16, "random")
    x = torch.randn(2, 64, 20, 20)
    with torch.no_grad():
        y32 = fast(x)
    xb = x.clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        y = fast(xb)
    assert y.shape == x.shape
    assert y.dtype in (torch.float32, torch.bfloat16)
    assert torch.isfinite(y).all()
    # bf16 has an 8-bit mantissa: allow ~3% of the output's range.
    assert max_abs_diff(y.float(), y32) <= 0.03 * y32.abs().max().item()
    if grad:
        y.float().sum().backward()
        assert torch.isfinite(xb.grad).all()


def test_bf16_module(path: str):
    fast, _ = make_pair(64, 16, "random")
    x = torch.randn(2, 64, 12, 12)
    with torch.no_grad():
        y32 = fast(x)
        y16 = fast.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    assert max_abs_diff(y16.float(), y32) <= 0.03 * y32.abs().max().item()


@pytest.mark.parametrize("no_grad", [False, True], ids=["grad", "no_grad"])
def test_jit_trace(no_grad: bool):
    fast, ref = make_pair(64, 8, "random")
    fast.eval()
    with torch.set_grad_enabled(not no_grad):
        traced = torch.jit.trace(fast, torch.randn(2, 64, 12, 16))
    with torch.no_grad():
        for shape in [(2, 64, 12, 16), (1, 64, 9, 7), (3, 64, 1, 5)]:  # the traced shape, then others
            x = torch.randn(shape)
            assert max_abs_diff(traced(x), ref(x)) <= 1e-5, shape


def test_onnx_dynamic_shapes(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import onnx

    fast, ref = make_pair(64, 8, "random")
    fast.eval()
    path = tmp_path / "ema.onnx"
    kwargs = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
    axes = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            fast,
            (torch.randn(2, 64, 16, 16),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": axes, "y": axes},
            opset_version=17,
            **kwargs,
        )
    # No warning from the layer's own ops (torch's notices about the exporter itself are DeprecationWarnings).
    assert not [w for w in caught if not issubclass(w.category, DeprecationWarning)], [str(w.message) for w in caught]
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {"GlobalAveragePool", "AveragePool", "If", "Loop"}, ops
    assert "InstanceNormalization" in ops, ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 64, 20, 12), (3, 64, 7, 9), (2, 64, 1, 1), (1, 64, 1, 5)]:  # none is the export shape
        x = torch.randn(shape)
        (y,) = session.run(None, {"x": x.numpy()})
        assert y.shape == shape
        with torch.no_grad():
            assert max_abs_diff(torch.from_numpy(y), ref(x)) <= 1e-4, shape


def test_single_pixel_batch_of_one():
    # GroupNorm over one value per channel: nn.GroupNorm (so ReferenceEMA) rejects batch 1 with factor 1 on a 1x1 map;
    # EMA computes it, and matches the reference's result for the same sample inside a batch of two.
    fast, ref = make_pair(16, 1, "random")
    x = torch.randn(2, 16, 1, 1)
    with torch.no_grad():
        assert max_abs_diff(fast(x[:1]), ref(x)[:1]) <= 1e-5


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_hand_written_backward_only_with_grad(train: bool):
    fast, _ = make_pair(64, 8, "random")
    fast.train(train)
    x = torch.randn(2, 64, 6, 6, requires_grad=True)
    assert type(fast(x).grad_fn).__name__ == "EMAFunctionBackward"
    with torch.no_grad():
        assert fast(x).grad_fn is None


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_input_untouched_and_not_aliased(layout: str, grad: bool, path: str):
    # Spent full-size buffers hold later results: never the input's memory (channels_last input is its own copy).
    fast, ref = make_pair(64, 8, "random")
    x = torch.randn(2, 64, 9, 7)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    before = x.clone()
    with torch.set_grad_enabled(grad):
        y = fast(x)
    assert torch.equal(x, before)
    assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    with torch.no_grad():
        assert max_abs_diff(y, ref(x)) <= 1e-5


@pytest.mark.parametrize("frozen", ["input", "params"])
def test_grads_when_only_part_requires_them(frozen: str, path: str):
    # Fine-tuning with frozen layers: the input or the parameters may not require gradients.
    fast, ref = make_pair(32, 4, "random")
    torch.manual_seed(3)
    x, grad_out = torch.randn(2, 32, 7, 5), torch.randn(2, 32, 7, 5)
    for m in (fast, ref):
        m.requires_grad_(frozen != "params")
    xs = [x.clone().requires_grad_(frozen != "input") for _ in range(2)]
    (fast(xs[0]) * grad_out).sum().backward()
    (ref(xs[1]) * grad_out).sum().backward()
    if frozen == "input":
        assert xs[0].grad is None
        for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
            assert max_abs_diff(p.grad, q.grad) <= 1e-5 * max(1.0, q.grad.abs().max().item()), name
    else:
        assert all(p.grad is None for p in fast.parameters())
        assert max_abs_diff(xs[0].grad, xs[1].grad) <= 1e-5
