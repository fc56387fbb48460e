"""The graph the EMA layer records for export (``ultralytics_ema.nn.ema_traced``): exact, plain ops, dynamic batch.

Converters choke on constructs that ONNX Runtime accepts: ``InstanceNormalization`` whose scale and bias are computed
from the input (NCNN via PNNX, x2paddle, CoreML), matmuls of 1-D tensors (CoreML), reshapes that fold the batch into
another axis (PNNX drops the batch axis), ``data_ptr()`` under ``torch.export`` (LiteRT, ExecuTorch). These tests pin
the graph's shape of things; tests/test_export.py runs the exports themselves.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from ultralytics_ema.nn.ema import EMA
from ultralytics_ema.nn.ema_traced import ema_forward_traced
from ultralytics_ema.nn.reference import ReferenceEMA

# (batch, channels, height, width), factor: YOLO11n's three EMA inputs at imgsz 640 (batch 1 and 2), odd and
# non-square maps, 1x1, 1xw and hx1 maps, 1 to 16 channels per group.
CASES = [
    ((1, 64, 80, 80), 32),
    ((2, 128, 40, 40), 32),
    ((1, 256, 20, 20), 32),
    ((2, 64, 7, 13), 8),
    ((3, 32, 1, 1), 4),
    ((2, 32, 1, 9), 16),
    ((3, 16, 5, 1), 2),
    ((1, 32, 9, 6), 1),
]


def make_pair(channels: int, factor: int, seed: int = 0) -> tuple[EMA, ReferenceEMA]:
    """An EMA (parameters ~ N(0, 0.5^2), so no weight is at its trivial initial value) and a float64 reference."""
    torch.manual_seed(seed)
    fast = EMA(channels, factor).eval()
    with torch.no_grad():
        for p in fast.parameters():
            p.normal_(0.0, 0.5)
    ref = ReferenceEMA(channels, factor).double()
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def params(m: EMA) -> list[torch.Tensor]:
    """The layer's parameters in ``ema_forward_traced``'s order."""
    return [t for t in (m.conv1x1, m.conv3x3, m.gn) for t in (t.weight, t.bias)]


@pytest.mark.parametrize(("shape", "factor"), CASES, ids=[f"{'x'.join(map(str, s))}-f{f}" for s, f in CASES])
def test_traced_graph_matches_float64_reference(shape: tuple, factor: int):
    fast, ref = make_pair(shape[1], factor)
    x = torch.randn(shape) * 0.7 + 0.3  # post-activation features are mostly positive
    with torch.no_grad():
        got = ema_forward_traced(x, *params(fast), factor, fast.gn.eps)
        want = ref(x.double())
    assert (got.double() - want).abs().max().item() <= 1e-5


def test_traced_graph_near_constant_channels():
    # Mean 10, spread 1e-2: instance norm keeps the variance that E[y^2] - E[y]^2 in float32 would lose.
    fast, ref = make_pair(64, 16)
    x = torch.randn(2, 64, 16, 16) * 1e-2 + 10.0
    with torch.no_grad():
        got = ema_forward_traced(x, *params(fast), 16, fast.gn.eps)
        want = ref(x.double())
    assert (got.double() - want).abs().max().item() <= 1e-5 * want.abs().max().item()


@pytest.fixture(scope="module")
def onnx_graph(tmp_path_factory: pytest.TempPathFactory):
    """The layer exported to ONNX with dynamic batch and image size: (path, onnx model)."""
    onnx = pytest.importorskip("onnx")
    fast, _ = make_pair(64, 32)
    path = tmp_path_factory.mktemp("graph") / "ema.onnx"
    kwargs = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
    axes = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            fast, (torch.randn(2, 64, 16, 16),), str(path), input_names=["x"], output_names=["y"],
            dynamic_axes={"x": axes, "y": axes}, opset_version=17, **kwargs,
        )  # fmt: skip
    return path, onnx.load(str(path))


def test_onnx_instance_norm_affine_is_constant(onnx_graph):
    _, model = onnx_graph
    from_input = {i.name for i in model.graph.input}  # values computed from the input (nodes are in topological order)
    for node in model.graph.node:
        if from_input & set(node.input):
            from_input |= set(node.output)
    norms = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    assert len(norms) == 1
    assert not from_input & set(norms[0].input[1:]), "scale and bias must not depend on the input (converters)"


def test_onnx_graph_plain_ops(onnx_graph):
    import onnx

    _, model = onnx_graph
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*inferred.graph.value_info, *inferred.graph.input)}
    ranks |= {t.name: len(t.dims) for t in model.graph.initializer}
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"GlobalAveragePool", "AveragePool", "If", "Loop", "ReduceL2", "ReduceSumSquare", "Einsum"}, ops
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            assert all(ranks.get(i, 2) >= 2 for i in node.input), f"{node.name}: 1-D operand"


@pytest.mark.parametrize("shape", [(1, 64, 20, 12), (4, 64, 7, 9), (3, 64, 1, 1)])
def test_onnx_dynamic_batch(onnx_graph, shape: tuple):
    ort = pytest.importorskip("onnxruntime")
    path, _ = onnx_graph
    _, ref = make_pair(64, 32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(shape)
    (y,) = session.run(None, {"x": x.numpy()})
    assert y.shape == shape
    with torch.no_grad():
        assert (torch.from_numpy(y).double() - ref(x.double())).abs().max().item() <= 1e-5


def test_torch_export_dynamic_batch():
    # torch.export (behind Ultralytics' LiteRT and ExecuTorch exports) traces the same graph with symbolic sizes.
    fast, ref = make_pair(64, 32)
    program = torch.export.export(fast, (torch.randn(2, 64, 16, 12),), dynamic_shapes=({0: torch.export.Dim("b")},))
    for shape in [(1, 64, 16, 12), (5, 64, 16, 12)]:
        x = torch.randn(shape)
        with torch.no_grad():
            assert (program.module()(x).double() - ref(x.double())).abs().max().item() <= 1e-5
