"""PTQ: the onnxruntime test triad (op counts, quantized dtypes, loose numerics) on tiny graphs."""

from collections import Counter
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.check import check_model
from onnxq.profiles import load_profile


def ops(path):
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def inits(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def optimized_ops(path, tmp_path):
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def test_static_cnn_is_qdq_int8_and_fuses_into_integer_kernels(cnn_model, tmp_path):
    model, calib = cnn_model
    res = onnxq.quantize(model, mode="static", calibration=calib, profile="cpu-x86-vnni", progress=False)
    assert res.output == model.with_name("cnn.int8.onnx") and res.output.exists()
    c = ops(res.output)
    assert c["Conv"] == 2 and c["Gemm"] == 1 and c["QuantizeLinear"] >= 5 and c["DequantizeLinear"] >= 10
    assert c["Relu"] == 0  # removed: uint8 asymmetric clamps at zero
    weights = inits(res.output)
    assert weights["w1_quantized"].dtype == np.int8 and weights["w1_scale"].shape == (8,)  # per-channel
    assert weights["input_zero_point"].dtype == np.uint8
    fused = optimized_ops(res.output, tmp_path)
    assert fused["QLinearConv"] == 2 and fused["Conv"] == 0
    f = res.fidelity["logits"]
    assert f["cosine"] > 0.999 and f["sqnr_db"] > 25 and f["top1_agreement"] >= 0.95
    assert check_model(onnx.load(str(res.output)), load_profile("cpu-x86-vnni")) == []
    manifest = json.loads(res.manifest.read_text())
    assert manifest["profile"]["name"] == "cpu-x86-vnni" and len(manifest["profile"]["sha256"]) == 64
    assert manifest["result"]["calibration"]["sha256"] and manifest["versions"]["onnxruntime"] == ort.__version__
    assert res.manifest.name == "cnn.int8.onnxq.json"


def test_tensorrt_profile_writes_symmetric_zero_points_and_weight_pairs(cnn_model):
    model, calib = cnn_model
    res = onnxq.quantize(model, mode="static", calibration=calib, profile="tensorrt", progress=False, output=model.with_name("trt.onnx"),
                         allow_fallback=True)
    m = onnx.load(str(res.output))
    zps = [numpy_helper.to_array(t) for t in m.graph.initializer if t.name.endswith("zero_point")]
    act_zps = [z for z in zps if z.dtype == np.int8]
    assert act_zps and all(np.all(z == 0) for z in act_zps)
    assert check_model(m, load_profile("tensorrt")) == []
    # on this CPU-only host the profile's provider is missing: validation says so loudly
    assert res.validation["providers"]["fallback"] is True
    assert any("FALLBACK" in w for w in res.warnings)


def test_dynamic_mlp_uses_integer_matmul_and_conv_warning(mlp_model, cnn_model):
    model, calib = mlp_model
    res = onnxq.quantize(model, mode="dynamic", calibration=calib, profile="cpu-x86-vnni", progress=False)
    c = ops(res.output)
    assert c["DynamicQuantizeLinear"] >= 1 and c["MatMulInteger"] == 2 and c["MatMul"] == 0
    assert res.fidelity["y"]["cosine"] > 0.995
    assert not any("Conv" in w for w in res.warnings)
    cnn, ccalib = cnn_model
    res2 = onnxq.quantize(cnn, mode="dynamic", calibration=ccalib, profile="cpu-x86-vnni", progress=False)
    assert any("SLOWER than FP32" in w and "--mode static" in w for w in res2.warnings)


def test_fp16_keeps_float32_io(cnn_model):
    model, calib = cnn_model
    res = onnxq.quantize(model, mode="fp16", calibration=calib, profile="cpu-x86-vnni", progress=False)
    m = onnx.load(str(res.output))
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(t.data_type == TensorProto.FLOAT16 for t in m.graph.initializer)
    assert res.output.name == "cnn.fp16.onnx" and res.fidelity["logits"]["cosine"] > 0.9999
    assert res.size_after < 0.7 * res.size_before


def _golden_model(path):
    """y = x @ W with W = [[0.5, -0.25], [0.125, -0.0625]]: one MatMul."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    w = numpy_helper.from_array(np.array([[0.5, -0.25], [0.125, -0.0625]], np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g", [x], [y], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save_model(m, str(path))


def test_golden_scales_and_zero_points_worked_out_by_hand(tmp_path):
    """uint8 asymmetric activations and int8 symmetric weights, by hand.

    x calibrated on [-1, 3]: scale = (3 - -1) / 255 = 0.015686275, zero point = round(1 / scale) = round(63.75) = 64.
    W per-tensor, |W|max = 0.5: scale = 0.5 / 127 = 0.003937008, zero point 0,
    W_q = round(W / scale) = [[127, -64], [32, -16]]  (-0.25/0.003937 = -63.5 rounds half to even: -64).
    """
    path = tmp_path / "g.onnx"
    _golden_model(path)
    xs = np.array([[-1.0, 3.0], [0.5, 2.0], [0.0, -0.5], [1.0, 1.0]] * 8, np.float32)
    res = onnxq.quantize(path, mode="static", calibration={"x": xs}, profile="cpu-x86-vnni", method="minmax",
                         per_channel=False, op_types=["MatMul"], progress=False)
    t = inits(res.output)
    assert t["x_zero_point"].dtype == np.uint8 and int(t["x_zero_point"]) == 64
    assert float(t["x_scale"]) == pytest.approx(4 / 255, rel=1e-6)
    assert float(t["W_scale"]) == pytest.approx(0.5 / 127, rel=1e-6)
    assert t["W_zero_point"].dtype == np.int8 and int(t["W_zero_point"]) == 0
    np.testing.assert_array_equal(t["W_quantized"], np.array([[127, -64], [32, -16]], np.int8))


def test_golden_int8_symmetric_activation(tmp_path):
    """tensorrt profile: int8 symmetric activations: scale = max|x| * 2 / 254 = 3 / 127, zero point 0."""
    path = tmp_path / "g.onnx"
    _golden_model(path)
    xs = np.array([[-1.0, 3.0], [0.5, 2.0]] * 8, np.float32)
    res = onnxq.quantize(path, mode="static", calibration={"x": xs}, profile="tensorrt", method="minmax", allow_fallback=True,
                         op_types=["MatMul"], progress=False)
    t = inits(res.output)
    assert t["x_zero_point"].dtype == np.int8 and int(t["x_zero_point"]) == 0
    assert float(t["x_scale"]) == pytest.approx(3 / 127, rel=1e-6)


def test_entropy_and_percentile_really_differ_from_minmax(tmp_path):
    """Heavy-tailed data with rare outliers: entropy/percentile clip, minmax does not."""
    path = tmp_path / "g.onnx"
    _golden_model(path)
    rng = np.random.default_rng(0)
    xs = rng.laplace(0, 0.5, (512, 2)).astype(np.float32)
    xs[0, 0] = 40.0  # one outlier
    scales = {}
    for m in ("minmax", "entropy", "percentile"):
        res = onnxq.quantize(path, mode="static", calibration={"x": xs}, profile="cpu-x86-vnni", method=m,
                             op_types=["MatMul"], per_channel=False, progress=False, output=tmp_path / f"{m}.onnx",
                             percentile=99.0)
        scales[m] = float(inits(res.output)["x_scale"])
        assert res.calibration["method"] == m
    assert scales["minmax"] > 40 / 255 * 0.99
    assert scales["entropy"] < scales["minmax"] / 3
    assert scales["percentile"] < scales["minmax"] / 3


def test_attention_mask_with_inf_keeps_mask_tensors_float_under_every_method(attn_model):
    model, calib = attn_model
    for m in ("minmax", "entropy", "percentile"):
        res = onnxq.quantize(model, mode="static", calibration=calib, profile="cpu-x86-vnni", method=m,
                             op_types=["MatMul", "Add", "Mul", "Softmax"], progress=False, output=model.with_name(f"a_{m}.onnx"))
        assert "mask" in res.float_tensors and "sm" in res.float_tensors
        assert any("kept" in w and "float" in w for w in res.warnings)
        assert np.isfinite(res.fidelity["y"]["cosine"]) and res.fidelity["y"]["cosine"] > 0.95


def test_huge_finite_mask_is_kept_float_too(tmp_path):
    import tiny_models

    path = tmp_path / "attn.onnx"
    tiny_models.attention(path)
    data = tiny_models.attention_data(32, mask_value=float(np.finfo(np.float32).min))
    res = onnxq.quantize(path, mode="static", calibration=data, profile="cpu-x86-vnni",
                         op_types=["MatMul", "Add", "Softmax"], progress=False)
    assert "sm" in res.float_tensors and "huge" in res.float_tensors["sm"]
    assert res.fidelity["y"]["cosine"] > 0.95


def test_transformer_auto_restricts_to_matmul(attn_model):
    model, calib = attn_model
    res = onnxq.quantize(model, mode="static", calibration=calib, profile="cpu-x86-vnni", progress=False)
    assert res.op_types == ["MatMul", "Gemm", "Gather"]
    c = ops(res.output)
    assert c["Softmax"] == 1
    softmax_in = [n for n in onnx.load(str(res.output)).graph.node if n.op_type == "Softmax"][0].input[0]
    producers = {o: n.op_type for n in onnx.load(str(res.output)).graph.node for o in n.output}
    assert producers[softmax_in] == "Add"  # the masked scores stay float


def test_int4_weights_run_but_are_only_smaller(cnn_model):
    model, calib = cnn_model
    res = onnxq.quantize(model, mode="static", calibration=calib, profile="cpu-x86-vnni", weight_type="int4",
                         progress=False, output=model.with_name("int4.onnx"))
    m = onnx.load(str(res.output))
    assert any(t.data_type == TensorProto.INT4 for t in m.graph.initializer)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 21
    assert res.fidelity["logits"]["cosine"] > 0.97


def test_no_temp_files_left_in_working_directory(cnn_model, tmp_path, monkeypatch):
    """onnxruntime's symbolic shape inference writes temp files into the cwd: onnxq runs it in its temp dir."""
    model, calib = cnn_model
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    res = onnxq.quantize(model, mode="static", calibration=calib, profile="cpu-x86-vnni", progress=False)
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in model.parent.iterdir() if p.name.startswith(".")) == []  # no .tmp left
    assert res.preprocess.startswith("symbolic")


def test_dynamic_quantizes_gemm_layers_too(tmp_path):
    """Before: onnxq passed only the op types in the graph, so the MatMul onnxruntime makes of a Gemm stayed float."""
    import onnxruntime.quantization as oq

    import tiny_models

    model = tmp_path / "cnn.onnx"
    onnx.save_model(tiny_models.cnn(), str(model))
    res = onnxq.quantize(model, mode="dynamic", calib_random=8, profile="cpu-x86-vnni", op_types=["Gemm"], progress=False)
    assert res.quantized_nodes >= 1 and not any("quantized NO node" in w for w in res.warnings)
    assert "MatMul" in res.recipe.op_types
    auto = onnxq.quantize(model, mode="dynamic", calib_random=8, profile="cpu-x86-vnni", output=tmp_path / "a.onnx", progress=False)
    plain = tmp_path / "plain.onnx"
    oq.quantize_dynamic(str(model), str(plain))
    assert auto.size_after <= plain.stat().st_size + 1024  # as small as onnxruntime's own defaults (+ metadata, per-channel scales)


def test_calib_samples_is_exact_or_says_why(cnn_model, tmp_path):
    model, calib = cnn_model  # 96 samples
    r = onnxq.quantize(model, mode="static", calibration=str(calib), profile="cpu-x86-vnni", calibration_samples=40,
                       output=tmp_path / "a.onnx", progress=False)
    assert r.calibration["samples_used"] == 40 and r.calibration["held_out"] == 32
    assert any("only 40 calibration samples" in w for w in r.warnings)
    r = onnxq.quantize(model, mode="static", calibration=str(calib), profile="cpu-x86-vnni", calibration_samples=90,
                       output=tmp_path / "b.onnx", progress=False)
    assert r.calibration["samples_used"] == 77 and r.calibration["held_out"] == 19
    assert any("90 calibration samples asked for, 96 in the data: 77 used" in w for w in r.warnings)


def test_shared_calibration_runs_one_pass_per_estimator_and_changes_nothing(tmp_path, monkeypatch):
    """compare's per-tensor and per-channel variants of one estimator calibrate the same activations: with a
    RangeMemo the second reuses the first's pass (not run again) and writes exactly the model it writes alone."""
    import tiny_models
    from onnxq import calibration
    from onnxq.ptq import RangeMemo

    src = tmp_path / "cnn.onnx"
    tiny_models.cnn(src)
    calib = {"input": tiny_models.cnn_data(64)["input"]}
    kw = dict(calibration=calib, profile="cpu-x86-vnni", progress=False, bias_correction="none", cle=False, smoothquant=False)
    onnxq.quantize(src, method="entropy", per_channel=True, output=tmp_path / "alone.onnx", **kw)
    passes = []
    real = calibration.collect_ranges
    monkeypatch.setattr("onnxq.ptq.collect_ranges", lambda *a, **k: passes.append(k["method"]) or real(*a, **k))
    memo = RangeMemo()

    def raw(path):
        return {k: v.tobytes() for k, v in inits(path).items()}

    pt = onnxq.quantize(src, method="entropy", per_channel=False, output=tmp_path / "pt.onnx", shared_calibration=memo, **kw)
    pc = onnxq.quantize(src, method="entropy", per_channel=True, output=tmp_path / "pc.onnx", shared_calibration=memo, **kw)
    mm = onnxq.quantize(src, method="minmax", per_channel=True, output=tmp_path / "mm.onnx", shared_calibration=memo, **kw)
    assert passes == ["entropy", "minmax"] and memo.hits == 1  # another estimator is another pass
    assert [r.calibration["shared_pass"] for r in (pt, pc, mm)] == [False, True, False]
    assert raw(tmp_path / "pc.onnx") == raw(tmp_path / "alone.onnx")
    assert ops(tmp_path / "pc.onnx") == ops(tmp_path / "alone.onnx") and raw(tmp_path / "pt.onnx") != raw(tmp_path / "pc.onnx")


@pytest.mark.parametrize("build", ["cnn", "mlp"])  # Conv + Gemm; MatMul + Add
def test_fast_bias_correction_from_the_layers_alone_equals_the_whole_model(tmp_path, monkeypatch, build):
    """Fast bias correction reads each weight as onnxruntime quantizes it. It quantizes the layers by themselves (a
    few at a time for a big model) instead of writing the whole model: the same corrections, byte for byte, as
    from the whole model's QDQ graph, and with one layer per writer call."""
    import tiny_models
    from onnxq import ptq

    src = tmp_path / f"{build}.onnx"
    getattr(tiny_models, build)(src)
    data = tiny_models.cnn_data(64) if build == "cnn" else {"x": np.random.default_rng(2).standard_normal((64, 64)).astype(np.float32)}
    kw = dict(calibration=data, profile="cpu-x86-vnni", progress=False, bias_correction="fast", smoothquant=False, cle=False)

    def raw(path):
        return {k: v.tobytes() for k, v in inits(path).items()}

    chunked = onnxq.quantize(src, output=tmp_path / "chunked.onnx", **kw)
    monkeypatch.setattr(ptq, "BC_CHUNK_BYTES", 1)
    one = onnxq.quantize(src, output=tmp_path / "one.onnx", **kw)
    monkeypatch.setattr(ptq, "_layers_alone", lambda model, layers: model)  # the whole model, as before
    monkeypatch.setattr(ptq, "_by_weight_bytes", lambda model, layers, limit: iter([layers]))
    whole = onnxq.quantize(src, output=tmp_path / "whole.onnx", **kw)
    fast = whole.calibration["algorithms"]["bias_correction"]["fast"]
    assert fast["corrected"] > 0 and fast["max_shift"] > 0
    for r in (chunked, one):
        assert r.calibration["algorithms"]["bias_correction"]["fast"] == fast
    assert raw(tmp_path / "chunked.onnx") == raw(tmp_path / "whole.onnx") == raw(tmp_path / "one.onnx")


def test_excluded_node_stays_float_after_onnxruntime_optimizes(tmp_path):
    """A node the user keeps in float must run in float. onnxruntime's WeightBiasQuantization re-quantizes a float
    Conv fed by a per-tensor DequantizeLinear; onnxq's guard gives it its own per-channel one. The guard's rewrite
    adds one DQ and drops the bypassed one, so it was once never saved (node count unchanged): MobileNetV2's 17
    excluded depthwise convs ran as QLinearConv (KL 0.178; guarded 0.073)."""
    import tiny_models

    src = tmp_path / "cnn.onnx"
    tiny_models.cnn(src)
    calib = {"input": tiny_models.cnn_data(64)["input"]}
    out = tmp_path / "o.onnx"
    onnxq.quantize(src, calibration=calib, profile="cpu-x86-vnni", progress=False, output=out, exclude_nodes=["conv2"])
    written = onnx.load(str(out))
    conv2 = next(n for n in written.graph.node if n.name == "conv2")
    assert conv2.input[0] == "onnxq_float_guard.conv2.input"
    assert not [n for n in written.graph.node if n.op_type == "DequantizeLinear" and not any(o in {i for m in written.graph.node for i in m.input} for o in n.output)]
    opt = optimized_ops(out, tmp_path)
    assert opt["Conv"] == 1 and opt["QLinearConv"] == 1  # conv1 fused, conv2 float
