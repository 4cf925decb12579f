"""PTQ algorithms: range estimators, bias correction, CLE, SmoothQuant, the float fallback, and their bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
import onnxq.ptq as ptq
import tiny_models
from onnxq.algorithms import bias_correction as bc
from onnxq.algorithms import cle
from onnxq.algorithms import smoothquant as sq
from onnxq.algorithms.graph import const, weight_layers
from onnxq.calibration import CalibrationSet, collect_ranges
from onnxq.cli import main
from onnxq.errors import InputError
from onnxq.modelio import graph_facts
from onnxq.plan import Overrides, resolve
from onnxq.profiles import load_profile


def _model(nodes, inputs, outputs, inits, opset=17):
    m = helper.make_model(helper.make_graph(nodes, "t", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _run(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _relu_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [x], [y], [])


# -- range estimators: golden values worked out by hand ---------------------------------------------------------


def test_mean_minmax_averages_each_samples_own_min_and_max(monkeypatch):
    monkeypatch.setattr("onnxq.calibration.MIN_GROUP", 1)  # every sample is its own group
    m = _relu_model()
    x = np.array([[1, -2, 3, 0], [-1, 5, 2, 0], [0, 0, 1, 9]], np.float32)
    cal = CalibrationSet.from_source({"x": x}, m)
    r = collect_ranges(m, cal, method="mean_minmax", percentile=99.9, op_types=("Relu",), batch_size=1, progress=False)
    # y = relu(x): per-sample max 3, 5, 9 -> 17/3; per-sample min 0, 0, 0
    assert r.ranges["y"] == pytest.approx((0.0, 17.0 / 3.0))
    # the graph input keeps its whole range (the data is known exactly): min -2, max 9
    assert r.ranges["x"] == (-2.0, 9.0)
    g = collect_ranges(m, cal, method="minmax", percentile=99.9, op_types=("Relu",), batch_size=1, progress=False)
    assert g.ranges["y"] == (0.0, 9.0)


def test_small_tensors_pool_samples_into_groups(monkeypatch):
    monkeypatch.setattr("onnxq.calibration.MIN_GROUP", 8)  # 4 values per sample: groups of two samples
    m = _relu_model()
    x = np.array([[1, 0, 3, 0], [0, 5, 2, 0], [0, 0, 1, 9], [2, 2, 2, 2], [7, 0, 0, 0]], np.float32)
    cal = CalibrationSet.from_source({"x": x}, m)
    r = collect_ranges(m, cal, method="mean_minmax", percentile=99.9, op_types=("Relu",), batch_size=1, progress=False)
    # groups {1,2}: max 5; {3,4}: max 9; {5} (the last, partial): max 7 -> (5 + 9 + 7) / 3
    assert r.ranges["y"] == pytest.approx((0.0, 7.0))


def test_mean_percentile_averages_each_samples_percentiles(monkeypatch):
    monkeypatch.setattr("onnxq.calibration.MIN_GROUP", 1)
    m = _relu_model()
    x = np.stack([np.arange(4, dtype=np.float32), np.arange(4, dtype=np.float32) * 2 - 3])  # [0..3], [-3,-1,1,3]
    cal = CalibrationSet.from_source({"x": x}, m)
    r = collect_ranges(m, cal, method="mean_percentile", percentile=75.0, op_types=("Relu",), batch_size=1, progress=False)
    # y rows: [0,1,2,3] -> p75 2.25, p25 0.75; [0,0,1,3] -> p75 1.5, p25 0 ; lo clipped at 0 (ranges include zero)
    assert r.ranges["y"] == pytest.approx((0.0, (2.25 + 1.5) / 2))


def test_per_batch_estimators_use_one_sample_batches_by_default():
    r = resolve(load_profile("cpu-x86-vnni"), graph_facts(tiny_models.cnn()), ptq.quantizer_caps(), Overrides(method="mean_minmax"))
    assert r.calibration.batch_size == 1
    r = resolve(load_profile("cpu-x86-vnni"), graph_facts(tiny_models.cnn()), ptq.quantizer_caps(), Overrides(method="minmax"))
    assert r.calibration.batch_size == 16


# -- bias correction ----------------------------------------------------------------------------------------------


def _gemm_model(w, b):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[1]])
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    return _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")], [x], [y], inits)


def test_fast_bias_correction_shift_on_a_one_layer_model(tmp_path):
    """delta = E[x] @ (W - Wq), with Wq exactly as onnxruntime wrote it; the corrected bias removes the mean error."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (8, 4)).astype(np.float32)
    b = rng.normal(0, 0.1, 4).astype(np.float32)
    m = _gemm_model(w, b)
    x = (rng.normal(0, 1, (64, 8)) + 2.0).astype(np.float32)  # a non-zero mean input makes the shift visible
    recipe = resolve(load_profile("cpu-x86-vnni"), graph_facts(m), ptq.quantizer_caps(), Overrides(per_channel=False))
    cal = CalibrationSet.from_source({"x": x}, m)
    layers = weight_layers(m, recipe.op_types, ())
    means = {"x": bc.MeanInput()}
    ranges = ptq.calibrate(m, recipe, cal, progress=False, observers=means).ranges
    ptq.write_qdq(m, ranges, recipe, tmp_path / "q.onnx", tmp_path)
    q = onnx.load(str(tmp_path / "q.onnx"))
    from onnxq.algorithms.graph import dequantized_weight

    wq = dequantized_weight(q, "fc")
    assert wq.shape == w.shape and 0 < np.abs(wq - w).max() < 0.05
    (c,) = bc.fast_corrections(m, layers, q, means)
    want = x.mean(0).astype(np.float64) @ (w.astype(np.float64) - wq)
    np.testing.assert_allclose(c.delta, want, rtol=1e-4, atol=1e-6)
    bc.apply_corrections(m, layers, [c], bc.biases(m, layers))
    np.testing.assert_allclose(const(m, layers[0].bias), b + want, rtol=1e-5, atol=1e-6)
    # with the corrected bias, the quantized-weight layer's mean output equals FP32's
    y_fp = x @ w + b
    y_wq = x @ wq + const(m, layers[0].bias)
    assert np.abs((y_fp - y_wq).mean(0)).max() < 1e-4 < np.abs((y_fp - (x @ wq + b)).mean(0)).max()


def test_bias_correction_adds_a_missing_conv_bias_and_helps_end_to_end(tmp_path):
    rng = np.random.default_rng(1)
    xi = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    yo = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8, 8])
    w = rng.normal(0, 1, (6, 3, 3, 3)).astype(np.float32)
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], [xi], [yo],
               [numpy_helper.from_array(w, "w")])
    path = tmp_path / "c.onnx"
    onnx.save(m, str(path))
    data = (rng.normal(0, 1, (96, 3, 8, 8)) + 1.5).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=data)
    res = {bcm: onnxq.quantize(path, mode="static", profile="cpu-x86-vnni", calibration=str(tmp_path / "c.npz"),
                               per_channel=False, method="minmax", bias_correction=bcm, output=tmp_path / f"{bcm}.onnx",
                               progress=False) for bcm in ("none", "fast")}
    info = res["fast"].calibration["algorithms"]["bias_correction"]
    assert info["fast"]["corrected"] == 1 and info["fast"]["biases_added"] == 1
    conv = next(n for n in onnx.load(str(tmp_path / "fast.onnx")).graph.node if n.op_type == "Conv")
    assert len(conv.input) == 3 and conv.input[2]
    ref = _run(m, {"x": data[-32:]})[0]
    err = {k: abs(float((ref - _run(onnx.load(str(r.output)), {"x": data[-32:]})[0]).mean())) for k, r in res.items()}
    assert err["fast"] < err["none"] / 2
    assert json.loads(res["fast"].manifest.read_text())["recipe"]["algorithms"]["bias_correction"] == "fast"


def test_full_bias_correction_runs_its_passes(cnn_model, tmp_path):
    model, calib = cnn_model
    r = onnxq.quantize(model, mode="static", profile="cpu-x86-vnni", calibration=str(calib), bias_correction="full",
                       output=tmp_path / "f.onnx", progress=False)
    full = r.calibration["algorithms"]["bias_correction"]["full"]
    assert len(full["passes"]) == ptq.FULL_BC_PASSES and full["passes"][0]["corrected"] == 3
    assert r.fidelity["logits"]["cosine"] > 0.995


# -- cross-layer equalization ----------------------------------------------------------------------------------------


def _conv_pair(act: str, depthwise: bool, seed=0):
    rng = np.random.default_rng(seed)
    c = 8
    xi = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    yo = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, 8, 8])
    w1 = (rng.normal(0, 1, (c, 3, 3, 3)) * np.logspace(-1.5, 1, c)[:, None, None, None]).astype(np.float32)
    b1 = rng.normal(0.5, 0.3, c).astype(np.float32)
    w2 = rng.normal(0, 1, (c, 1 if depthwise else c, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.zeros(c, np.float32), "b2")]
    src = "h"
    if act == "relu":
        nodes.append(helper.make_node("Relu", ["h"], ["a"], name="act"))
        src = "a"
    elif act == "relu6":
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", ["h", "lo", "hi"], ["a"], name="act"))
        src = "a"
    nodes.append(helper.make_node("Conv", [src, "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1], group=c if depthwise else 1))
    return _model(nodes, [xi], [yo], inits)


@pytest.mark.parametrize("act, depthwise, mode", [("relu", True, "activations"), ("relu6", True, "activations"),
                                                   ("relu", False, "weights"), ("relu6", False, "weights"),
                                                   ("none", True, "activations")])
def test_cle_leaves_the_float_model_unchanged(act, depthwise, mode):
    m = _conv_pair(act, depthwise)
    x = np.random.default_rng(5).normal(0, 1, (16, 3, 8, 8)).astype(np.float32)
    before = _run(m, {"x": x})[0]
    pairs = cle.find_pairs(m)
    assert [(p.conv1.name, p.conv2.name) for p in pairs] == [("conv1", "conv2")]
    st = cle.ChannelRange()
    st.add(_run(_with_output(m, "h"), {"x": x})[-1])
    info = cle.equalize(m, pairs, {"h": st}, mode=mode)
    assert info["equalized"] == 1
    assert _rel(_run(m, {"x": x})[0], before) < 1e-5
    if mode == "weights" and act == "relu":  # DFQ: output ranges of conv1 == input ranges of conv2, channel by channel
        r1 = np.abs(const(m, "w1")).reshape(8, -1).max(1)
        r2 = np.abs(const(m, "w2")).transpose(1, 0, 2, 3).reshape(8, -1).max(1)
        np.testing.assert_allclose(r1, r2, rtol=1e-4)
    if mode == "activations" and act == "relu":  # every channel now reaches the tensor's largest range
        a = np.maximum(_run(_with_output(m, "h"), {"x": x})[-1], 0).max(axis=(0, 2, 3))
        np.testing.assert_allclose(a, a.max(), rtol=1e-4)


def _rel(a, b):
    """Largest difference relative to the output's scale (float32 rounding is ~1e-7 of it)."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def _with_output(m, name):
    c = onnx.ModelProto()
    c.CopyFrom(m)
    c.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return c


def test_cle_never_lets_relu6_bind_where_it_did_not():
    """A channel whose pre-activation reaches 6 is left alone; others are scaled up only to 6 / margin."""
    m = _conv_pair("relu6", True, seed=3)
    x = np.random.default_rng(2).normal(0, 1, (32, 3, 8, 8)).astype(np.float32) * 3
    h = _run(_with_output(m, "h"), {"x": x})[-1]
    st = cle.ChannelRange()
    st.add(h)
    saturated = st.hi * cle.MARGIN >= 6.0
    assert saturated.any() and not saturated.all()
    w1 = const(m, "w1").copy()
    cle.equalize(m, cle.find_pairs(m), {"h": st}, mode="activations")
    np.testing.assert_array_equal(const(m, "w1")[saturated], w1[saturated])
    # the others were scaled up exactly until their largest pre-activation, times the margin, reaches the clip
    np.testing.assert_allclose(st.hi[~saturated] * cle.MARGIN, 6.0, rtol=1e-5)


# -- SmoothQuant -----------------------------------------------------------------------------------------------------


def _ln_block(residual: bool, seed=0):
    rng = np.random.default_rng(seed)
    d, f = 16, 32
    xi = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, d])
    yo = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, f if not residual else d])
    gamma = (rng.uniform(0.5, 1.5, d) * np.where(np.arange(d) == 3, 30.0, 1.0)).astype(np.float32)  # one outlier channel
    inits = [numpy_helper.from_array(gamma, "g"), numpy_helper.from_array(rng.normal(0, 0.1, d).astype(np.float32), "be"),
             numpy_helper.from_array(rng.normal(0, 0.2, (d, f)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.2, (d, f)).astype(np.float32), "w2")]
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "be"], ["h"], name="ln", axis=-1),
             helper.make_node("MatMul", ["h", "w1"], ["a"], name="mm1"),
             helper.make_node("MatMul", ["h", "w2"], ["b"], name="mm2"),
             helper.make_node("Add", ["a", "b"], ["s"], name="sum")]
    if residual:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.2, (f, d)).astype(np.float32), "w3"))
        nodes += [helper.make_node("MatMul", ["s", "w3"], ["p"], name="mm3"), helper.make_node("Add", ["p", "h"], ["y"], name="res")]
    else:
        nodes.append(helper.make_node("Relu", ["s"], ["y"], name="out"))
    return _model(nodes, [xi], [yo], inits)


@pytest.mark.parametrize("residual", [False, True])
def test_smoothquant_leaves_the_float_model_unchanged(residual):
    m = _ln_block(residual)
    x = np.random.default_rng(1).normal(0, 1, (8, 4, 16)).astype(np.float32)
    before = _run(m, {"x": x})[0]
    groups = sq.find_groups(m, ("MatMul", "Gemm"), ())
    assert [(g.tensor, len(g.matmuls), g.foldable) for g in groups] == [("h", 2, not residual)]
    obs = sq.AbsMaxLastAxis()
    obs.add(_run(_with_output(m, "h"), {"x": x})[-1])
    info = sq.smooth(m, groups, {"h": obs}, alpha=0.8)
    assert (info["folded"], info["muls_added"]) == ((0, 1) if residual else (1, 0))
    assert _rel(_run(m, {"x": x})[0], before) < 1e-5
    if not residual:  # the outlier channel's range moved into the weights
        h = _run(_with_output(m, "h"), {"x": x})[-1]
        a = np.abs(h).reshape(-1, 16).max(0)
        assert a.max() / np.median(a) < obs.value.max() / np.median(obs.value) / 3


def test_smoothquant_improves_static_fidelity_end_to_end(tmp_path):
    m = _ln_block(True)
    path = tmp_path / "t.onnx"
    onnx.save(m, str(path))
    np.savez(tmp_path / "t.npz", x=np.random.default_rng(4).normal(0, 1, (96, 4, 16)).astype(np.float32))
    kw = dict(mode="static", profile="cpu-x86-vnni", calibration=str(tmp_path / "t.npz"), method="minmax", progress=False)
    plain = onnxq.quantize(path, smoothquant=False, output=tmp_path / "a.onnx", **kw)
    smooth = onnxq.quantize(path, smoothquant="auto", output=tmp_path / "b.onnx", **kw)
    assert smooth.fidelity["y"]["sqnr_db"] > plain.fidelity["y"]["sqnr_db"] + 1.0
    alg = smooth.calibration["algorithms"]
    assert alg["smoothquant"]["muls_added"] == 1 and set(alg["smoothquant_search"]) == {str(a) for a in sq.ALPHAS}


# -- float fallback and sensitivity ----------------------------------------------------------------------------------


def _sensitive_mlp(tmp_path):
    """Three Gemms; the middle one has one huge weight, so with per-tensor weights it alone loses its precision."""
    rng = np.random.default_rng(0)
    dims = [16, 32, 32, 10]
    ws = [rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32) for a, b in zip(dims, dims[1:])]
    ws[1][0, 0] = 80.0
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    inits, nodes, t = [], [], "x"
    for i, w in enumerate(ws):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(w.shape[1], np.float32), f"b{i}")]
        out = "y" if i == len(ws) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [t, f"w{i}", f"b{i}"], [out], name=f"fc{i}"))
        if out != "y":
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            t = f"r{i}"
    path = tmp_path / "mlp.onnx"
    onnx.save(_model(nodes, [x], [y], inits), str(path))
    np.savez(tmp_path / "mlp.npz", x=rng.normal(0, 1, (160, 16)).astype(np.float32))
    return path, tmp_path / "mlp.npz"


def test_target_keeps_the_sensitive_layer_in_float_and_it_stays_float_at_run_time(tmp_path):
    path, calib = _sensitive_mlp(tmp_path)
    kw = dict(mode="static", profile="cpu-x86-vnni", calibration=str(calib), per_channel=False, method="minmax",
              bias_correction="none", progress=False)
    plain = onnxq.quantize(path, output=tmp_path / "p.onnx", **kw)
    res = onnxq.quantize(path, output=tmp_path / "t.onnx", target="cosine=0.97", **kw)
    t = res.target
    assert t["sensitivity"][0]["node"] == "fc1" and t["sensitivity"][0]["gain"] > 0
    assert t["float_nodes"] == ["fc1"] and t["reached"] is True and t["score"] >= 0.97 > t["score_all_quantized"]
    assert res.recipe.excluded_nodes == ("fc1",)
    assert res.fidelity["y"]["cosine"] > plain.fidelity["y"]["cosine"]
    doc = json.loads(res.manifest.read_text())
    assert doc["recipe"]["target"] == {"metric": "cosine", "value": 0.97} and doc["recipe"]["float_nodes"][0]["node"] == "fc1"
    # onnxruntime runs fc1 as a float Gemm (WeightBiasQuantization would have re-quantized it per tensor)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(res.output), so, providers=["CPUExecutionProvider"])
    opt = {n.name: n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert opt.get("fc1") == "Gemm" and "QGemm" in opt.values()


def test_unreachable_target_writes_the_best_model_and_exits_1(tmp_path, capsys):
    path, calib = _sensitive_mlp(tmp_path)
    out = tmp_path / "u.onnx"
    code = main(["quantize", str(path), "--calib", str(calib), "--profile", "cpu-x86-vnni", "--target", "cosine=1.0",
                 "--no-per-channel", "-o", str(out), "-q", "--json"])
    assert code == 1 and out.exists()
    doc = json.loads(capsys.readouterr().out)
    assert doc["target"]["reached"] is False and doc["target"]["float_nodes"] and "fc1" in doc["target"]["float_nodes"]


def test_sensitivity_command_prints_the_table(tmp_path, capsys):
    path, calib = _sensitive_mlp(tmp_path)
    assert main(["sensitivity", str(path), "--calib", str(calib), "--profile", "cpu-x86-vnni", "--no-per-channel",
                 "--method", "minmax", "-q", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["node"] for r in doc["sensitivity"]][0] == "fc1" and len(doc["sensitivity"]) == 3
    assert list(tmp_path.glob("*.onnx")) == [path]  # nothing written


# -- bad input: one line, exit 2, nothing written ------------------------------------------------------------------


@pytest.mark.parametrize("args, match", [
    (["--target", "accuracy=0.9"], "unknown metric 'accuracy'"),
    (["--target", "cosine=1.5"], r"cannot be reached: cosine must be in \(0, 1\]"),
    (["--target", "kl"], "needs a value"),
    (["--smoothquant", "0.5"], "smooths the inputs of quantized MatMul/Gemm that a LayerNormalization produces, and this model has none"),
    (["--cle", "--mode", "dynamic"], "apply to --mode static only"),
    (["--target", "cosine=0.9", "--mode", "fp16", "--profile", "cuda"], "does not apply to --mode fp16"),
])
def test_algorithm_bad_input(cnn_model, tmp_path, capsys, args, match):
    model, calib = cnn_model
    out = tmp_path / "bad.onnx"
    argv = ["quantize", str(model), "--calib", str(calib), "-o", str(out), "-q"] + args
    if "--profile" not in args:
        argv += ["--profile", "cpu-x86-vnni"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err
    assert not out.exists() and not list(tmp_path.glob("bad*"))


def test_bias_correction_with_too_few_samples_and_kl_on_an_embedding(tmp_path, capsys):
    path, _ = _sensitive_mlp(tmp_path)
    np.savez(tmp_path / "few.npz", x=np.random.default_rng(0).normal(0, 1, (12, 16)).astype(np.float32))
    with pytest.raises(InputError, match="bias correction needs at least 16 calibration samples"):
        onnxq.quantize(path, mode="static", profile="cpu-x86-vnni", calibration=str(tmp_path / "few.npz"),
                       bias_correction="fast", output=tmp_path / "x.onnx", progress=False)
    m = _ln_block(True)
    onnx.save(m, str(tmp_path / "e.onnx"))
    np.savez(tmp_path / "e.npz", x=np.random.default_rng(4).normal(0, 1, (64, 4, 16)).astype(np.float32))
    with pytest.raises(InputError, match=r"--target kl needs \(N, classes\) scores, and output 'y' has shape"):
        onnxq.quantize(tmp_path / "e.onnx", mode="static", profile="cpu-x86-vnni", calibration=str(tmp_path / "e.npz"),
                       target="kl=0.01", output=tmp_path / "y.onnx", progress=False)
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()
