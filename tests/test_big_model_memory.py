"""Issue 9: a big model (weights in external data) is never held more often than it must be.

The >2 GB run itself is a benchmark (benchmarks/bench_big_model.py); here the mechanisms it relies on are
checked on small models: the external-data writer leaves the model whole and does not grow it, the graph-only
pre-processing and the in-place shape refresh of dynamic quantization write the same models as the paths they
replace.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tiny_models
from onnxq.modelio import write_model


def _rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _weighty(n_tensors: int = 4, mib: int = 16) -> onnx.ModelProto:
    """A chain of Adds on big constants, one of them a Constant node (an attribute tensor)."""
    rng = np.random.default_rng(0)
    side = int(np.sqrt(mib * 2**20 / 4))
    inits, nodes, src = [], [], "x"
    for i in range(n_tensors):
        arr = rng.standard_normal((side, side), dtype=np.float32)
        if i == 0:
            nodes.append(helper.make_node("Constant", [], [f"c{i}"], value=numpy_helper.from_array(arr, f"c{i}")))
        else:
            inits.append(numpy_helper.from_array(arr, f"c{i}"))
        nodes.append(helper.make_node("Add", [src, f"c{i}"], [f"a{i}"], name=f"add{i}"))
        src = f"a{i}"
    inits.append(numpy_helper.from_array(np.arange(4, dtype=np.float32), "small"))  # under 1 KiB: stays inline
    nodes.append(helper.make_node("Identity", [src], ["y"]))
    g = helper.make_graph(nodes, "weighty", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [side, side])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [side, side])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _bytes(model: onnx.ModelProto) -> dict[str, bytes]:
    out = {t.name: t.raw_data for t in model.graph.initializer}
    out.update({n.output[0]: n.attribute[0].t.raw_data for n in model.graph.node if n.op_type == "Constant"})
    return out


def test_external_writer_leaves_the_model_whole_and_writes_it_exactly(tmp_path):
    m = _weighty()
    before = _bytes(m)
    path = write_model(m, tmp_path / "w.onnx", external=True)
    assert _bytes(m) == before  # nothing cleared in the caller's model
    assert all(t.data_location == TensorProto.DEFAULT for t in m.graph.initializer)
    graph = onnx.load(str(path), load_external_data=False)
    where = {t.name: t.data_location for t in graph.graph.initializer}
    assert where["small"] == TensorProto.DEFAULT and where["c1"] == TensorProto.EXTERNAL
    assert graph.graph.node[0].attribute[0].t.data_location == TensorProto.EXTERNAL  # the Constant's tensor too
    assert path.stat().st_size < 10_000 and (tmp_path / "w.onnx.data").stat().st_size == 4 * 16 * 2**20
    onnx.checker.check_model(str(path))
    assert _bytes(onnx.load(str(path))) == before
    side = m.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    x = np.ones((side, side), np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    write_model(m, path, external=True)  # a second write replaces the data file, never appends to it
    assert (tmp_path / "w.onnx.data").stat().st_size == 4 * 16 * 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_repeated_external_writes_do_not_grow_the_model(tmp_path):
    """onnx's writer clears each tensor and the caller loads it back: protobuf's arena kept every cleared copy
    (a 0.5 GiB model was 2.05 GiB after three writes). 64 MiB written five times must stay near 64 MiB."""
    m = _weighty()
    write_model(m, tmp_path / "w0.onnx", external=True)
    start = _rss_mib()
    for i in range(5):
        write_model(m, tmp_path / f"w{i}.onnx", external=True)
    assert _rss_mib() - start < 32, "each write grew the model"


def _gemm_mlp(path):
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((96, 64)).astype(np.float32) / 8, "w1"),
             numpy_helper.from_array(np.zeros(96, np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((10, 96)).astype(np.float32) / 10, "w2"),
             numpy_helper.from_array(np.zeros(10, np.float32), "b2")]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)]
    g = helper.make_graph(nodes, "gemm_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save_model(m, str(path))


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_dynamic_in_place_shape_refresh_writes_what_onnxruntime_writes(tmp_path, monkeypatch):
    """A Gemm model through dynamic mode, once as a small model (onnxruntime's own copy-and-reload) and once
    counted as big (onnxq's in-place refresh): the same quantized graph and bit-identical outputs."""
    import onnxq
    import onnxq.plan as plan

    src = tmp_path / "gemm.onnx"
    _gemm_mlp(src)
    x = np.random.default_rng(4).standard_normal((16, 64)).astype(np.float32)
    small = onnxq.quantize(src, mode="dynamic", profile="cpu-x86-vnni", output=tmp_path / "small.onnx", progress=False)
    monkeypatch.setattr(plan, "EXTERNAL_DATA_ABOVE", 1000)
    big = onnxq.quantize(src, mode="dynamic", profile="cpu-x86-vnni", output=tmp_path / "big.onnx", progress=False)
    assert not small.recipe.external_data and big.recipe.external_data
    assert big.ops_after == small.ops_after and {"MatMulInteger", "DynamicQuantizeMatMul"} & set(big.ops_after)
    assert big.quantized_nodes == small.quantized_nodes
    np.testing.assert_array_equal(_run(tmp_path / "big.onnx", x), _run(tmp_path / "small.onnx", x))
    from onnxruntime.quantization import onnx_quantizer
    from onnxruntime.quantization.quant_utils import save_and_reload_model_with_shape_infer

    assert onnx_quantizer.save_and_reload_model_with_shape_infer is save_and_reload_model_with_shape_infer  # restored


def test_graph_only_preprocessing_matches_onnxruntime_preprocessing(tmp_path, monkeypatch):
    """Static mode on a big model pre-processes the graph alone (optimised by onnxruntime from the file, shapes
    inferred without the weights): same quantized graph and outputs as quant_pre_process on the whole model."""
    import onnxq
    import onnxq.plan as plan

    src = tmp_path / "cnn.onnx"
    tiny_models.cnn(src)
    calib = {"input": tiny_models.cnn_data(64)["input"]}
    kw = dict(calibration=calib, profile="cpu-x86-vnni", progress=False, bias_correction="none")
    small = onnxq.quantize(src, output=tmp_path / "small.onnx", **kw)
    monkeypatch.setattr(plan, "EXTERNAL_DATA_ABOVE", 1000)
    big = onnxq.quantize(src, output=tmp_path / "big.onnx", **kw)
    assert big.recipe.external_data and big.preprocess == small.preprocess == "symbolic shape inference + optimization"
    assert big.ops_after == small.ops_after and big.quantized_nodes == small.quantized_nodes > 0
    x = tiny_models.cnn_data(8, seed=9)["input"]
    sb = ort.InferenceSession(str(tmp_path / "big.onnx"), providers=["CPUExecutionProvider"])
    ss = ort.InferenceSession(str(tmp_path / "small.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sb.run(None, {"input": x})[0], ss.run(None, {"input": x})[0], atol=1e-5)
