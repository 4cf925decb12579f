"""The resolved recipe, the one translation into onnxruntime's arguments, the manifest, and the bugs they removed."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

import onnxq
import onnxq.ptq as ptq
import tiny_models
from onnxq.errors import InputError
from onnxq.manifest import manifest_path, read_manifest, recorded_weight_type
from onnxq.modelio import graph_facts
from onnxq.plan import GraphFacts, Overrides, QuantizerCaps, resolve
from onnxq.profiles import load_profile

CNN = GraphFacts(op_types=frozenset({"Conv", "Relu", "Gemm"}), opset=17, node_names=frozenset({"conv1", "fc"}))
CAPS = QuantizerCaps(static_ops=frozenset({"Conv", "Relu", "Gemm", "MatMul"}), dynamic_ops=frozenset({"Conv", "MatMul", "Gemm"}))


def _recipe(profile="cpu-x86-vnni", facts=CNN, **kw):
    return resolve(load_profile(profile), facts, CAPS, Overrides(**kw))


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# -- ort_arguments: recipe in, arguments out -------------------------------------------------------------------


@pytest.mark.parametrize(
    "profile, kw, expect",
    [
        ("cpu-x86-vnni", {}, {
            "quant_format": QuantFormat.QDQ, "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8,
            "per_channel": True, "reduce_range": False, "op_types_to_quantize": ["Conv", "Gemm", "MatMul", "Relu"],
            "nodes_to_exclude": [], "calibration_data_reader": None, "calibrate_method": CalibrationMethod.MinMax,
            "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True, "ForceQuantizeNoInputCheck": False,
                              "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}}),
        ("tensorrt", {"per_channel": False, "exclude_nodes": ("fc",)}, {
            "quant_format": QuantFormat.QDQ, "activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
            "per_channel": False, "reduce_range": False, "op_types_to_quantize": ["Conv", "Gemm", "MatMul", "Relu"],
            "nodes_to_exclude": ["fc"], "calibration_data_reader": None, "calibrate_method": CalibrationMethod.MinMax,
            "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True, "ForceQuantizeNoInputCheck": False,
                              "DedicatedQDQPair": True, "QDQKeepRemovableActivations": True}}),
        ("cpu-x86-avx2", {"mode": "dynamic", "weight_type": "uint8"}, {
            "weight_type": QuantType.QUInt8, "per_channel": True, "reduce_range": True,
            "op_types_to_quantize": ["Conv", "Gemm", "MatMul"], "nodes_to_exclude": [],
            "extra_options": {"WeightSymmetric": True, "MatMulConstBOnly": True}}),
        ("cpu-x86-vnni", {"weight_type": "int4", "op_types": ("Conv",)}, {
            "quant_format": QuantFormat.QDQ, "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt4,
            "per_channel": True, "reduce_range": False, "op_types_to_quantize": ["Conv"], "nodes_to_exclude": [],
            "calibration_data_reader": None, "calibrate_method": CalibrationMethod.MinMax,
            "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True, "ForceQuantizeNoInputCheck": False,
                              "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}}),
    ],
)
def test_ort_arguments_table(profile, kw, expect):
    assert ptq.ort_arguments(_recipe(profile, **kw)) == expect


def test_ort_arguments_spells_every_layout_flag():
    import dataclasses

    from onnxq.profiles import LayoutSpec

    prof = load_profile("tensorrt")
    prof = dataclasses.replace(prof, quant=dataclasses.replace(prof.quant, layout=LayoutSpec(("Conv",), True, True, True)))
    extra = ptq.ort_arguments(resolve(prof, CNN, CAPS, Overrides()))["extra_options"]
    assert {k: extra[k] for k in ("OpTypesToExcludeOutputQuantization", "AddQDQPairToWeight", "DedicatedQDQPair",
                                  "QDQKeepRemovableActivations")} == {"OpTypesToExcludeOutputQuantization": ["Conv"],
                                  "AddQDQPairToWeight": True, "DedicatedQDQPair": True, "QDQKeepRemovableActivations": True}


def test_ort_arguments_names_the_ranges_file_and_refuses_fp16(tmp_path):
    assert ptq.ort_arguments(_recipe(), ranges_path=tmp_path / "r.json")["calibration_cache_path"] == str(tmp_path / "r.json")
    with pytest.raises(InputError, match="not an onnxruntime.quantization mode"):
        ptq.ort_arguments(_recipe("cuda", mode="fp16"))


def test_quantize_static_is_called_with_the_recipe(cnn_model, tmp_path, monkeypatch):
    """quantize() hands onnxruntime exactly ort_arguments(recipe): the calibration cache onnxq wrote, nothing else."""
    import onnxruntime.quantization as oq

    model, calib = cnn_model
    seen = {}
    real = oq.quantize_static

    def spy(model_input, model_output, **kwargs):
        seen.update(kwargs)
        seen["cache"] = json.loads(open(kwargs["calibration_cache_path"]).read())
        return real(model_input, model_output, **kwargs)

    monkeypatch.setattr(oq, "quantize_static", spy)
    res = onnxq.quantize(model, mode="static", calibration=str(calib), profile="cpu-x86-vnni",
                         method="minmax", output=tmp_path / "q.onnx", progress=False)
    want = ptq.ort_arguments(res.recipe, ranges_path=seen["calibration_cache_path"])
    assert {k: v for k, v in seen.items() if k != "cache"} == want
    assert seen["calibrate_method"] == CalibrationMethod.MinMax and seen["calibration_data_reader"] is None
    assert "input" in seen["cache"]["data"]  # onnxq's own ranges, including the graph input's


# -- resolve: where each decision is made -------------------------------------------------------------------------


def test_recipe_records_types_as_written_and_the_opset():
    r = _recipe(weight_type="int4")
    assert (r.weight_type, r.opset, r.source_opset, r.needs_opset_conversion) == ("int4", 21, 17, True)
    old = GraphFacts(op_types=CNN.op_types, opset=11, node_names=CNN.node_names)
    assert _recipe(facts=old).opset == 13  # per-channel scales need opset 13
    assert _recipe(facts=old, per_channel=False).opset == 11
    r = _recipe("cuda", mode="fp16")
    assert (r.weight_type, r.activation_type, r.op_types, r.calibration) == ("float16", "float16", (), None)
    d = _recipe("cpu-x86-avx2", mode="dynamic").to_dict()
    assert (d["activation_type"], d["reduce_range"], d["calibration"]) == ("uint8", True, None)


def test_dynamic_int4_is_refused_before_anything_is_written(cnn_model, tmp_path):
    """Before: dynamic + int4 wrote INT8 weights at opset 17 while the manifest said int4 and opset 21."""
    model, calib = cnn_model
    out = tmp_path / "d.onnx"
    with pytest.raises(InputError, match=r"--mode dynamic writes int8 or uint8 weights .* use --mode static for int4"):
        onnxq.quantize(model, mode="dynamic", weight_type="int4", calibration=str(calib), output=out,
                       profile="cpu-x86-vnni", progress=False)
    assert not out.exists() and not manifest_path(out).exists()


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"op_types": ("Bogus",)}, r"--op-types Bogus: onnxruntime cannot quantize that op type in static mode; it can: Conv"),
        ({"op_types": ("MatMul",)}, r"--op-types MatMul matches no node of this model; its op types are Conv, Gemm, Relu"),
        ({"op_types": ()}, r"--op-types is empty"),
        ({"exclude_nodes": ("conv_1",)}, r"--exclude-nodes conv_1: no node of that name in this model \(did you mean conv1"),
        ({"mode": "fp16", "weight_type": "int8"}, r"--weight-type int8 has no meaning with --mode fp16"),
        ({"method": "kl"}, r"unknown calibration method 'kl'; choose one of: minmax, entropy, percentile"),
        ({"percentile": 20.0}, r"--percentile must be a number in \(50, 100\]"),
        ({"calibration_samples": 0}, r"--calib-samples must be a positive integer"),
        ({"mode": "dynamic"}, None),
    ],
)
def test_unsupported_combinations_name_what_is_supported(kw, match):
    if match is None:
        assert _recipe(**kw).mode == "dynamic"
        return
    with pytest.raises(InputError, match=match):
        _recipe(**kw)


def test_keep_in_float_returns_a_new_frozen_recipe():
    r = _recipe(exclude_nodes=("fc",))
    r2 = r.keep_in_float([("conv1", "tensor c1: 3 non-finite value(s)"), ("fc", "dup")])
    assert r.excluded_nodes == ("fc",) and r2.excluded_nodes == ("fc", "conv1")
    assert r2.to_dict()["float_nodes"][1] == {"node": "conv1", "why": "tensor c1: 3 non-finite value(s)"}
    with pytest.raises(AttributeError):
        r.mode = "dynamic"  # frozen


def test_graph_facts_of_a_model():
    f = graph_facts(tiny_models.cnn())
    assert f.opset == 17 and {"Conv", "Gemm"} <= f.op_types and "conv1" in f.node_names and dict(f.op_counts)["Conv"] == 2


# -- the manifest --------------------------------------------------------------------------------------------------


def _relu_model(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "r", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save_model(m, str(path))


def test_manifest_is_strict_json_when_fidelity_is_infinite(tmp_path):
    """Before: dynamic mode on a model it could not quantize wrote SQNR `Infinity` into the manifest."""
    model = tmp_path / "relu.onnx"
    _relu_model(model)
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32))
    res = onnxq.quantize(model, mode="dynamic", calibration=str(tmp_path / "c.npz"), profile="cpu-x86-vnni", progress=False)
    assert res.fidelity["y"]["sqnr_db"] == float("inf")
    doc = _strict(res.manifest.read_text())
    assert doc["schema"] == "onnxq.manifest/2" and doc["result"]["fidelity"]["y"]["sqnr_db"] == "inf"
    assert doc["recipe"]["mode"] == "dynamic" and doc["recipe"]["weight_type"] == "int8"
    assert read_manifest(res.output)["output"]["sha256"] == doc["output"]["sha256"]


def test_manifest_reader_accepts_version_1_and_ignores_a_stale_manifest(cnn_model, tmp_path):
    model, calib = cnn_model
    res = onnxq.quantize(model, mode="static", calibration=str(calib), profile="cpu-x86-vnni", weight_type="int4",
                         output=tmp_path / "q.onnx", progress=False)
    doc = read_manifest(res.output)
    assert recorded_weight_type(doc) == "int4"
    v1 = {"schema": "onnxq.manifest/1", "output": doc["output"], "result": {"plan": {"weight_type": "int4"}}}
    res.manifest.write_text(json.dumps(v1))
    assert recorded_weight_type(read_manifest(res.output)) == "int4"
    res.output.write_bytes(res.output.read_bytes() + b"\0")  # the model changed: its manifest no longer describes it
    assert read_manifest(res.output) is None
    res.manifest.write_text("{not json")
    with pytest.raises(InputError, match="manifest .* is unreadable"):
        read_manifest(res.output)


def test_export_and_quantize_manifests_share_the_schema(cnn_model, tmp_path):
    model, calib = cnn_model
    res = onnxq.quantize(model, mode="fp16", profile="cuda", output=tmp_path / "h.onnx", progress=False, calib_random=8,
                         allow_fallback=True)
    doc = _strict(res.manifest.read_text())
    assert doc["kind"] == "quantize" and doc["recipe"]["weight_type"] == "float16"


# -- pre-processing says why it fell back --------------------------------------------------------------------------


def test_preprocess_label_names_the_cause_of_a_fallback(tmp_path, monkeypatch):
    """Symbolic shape inference needs sympy (now a declared dependency); when it fails the label says why."""
    import importlib.abc

    class NoSympy(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "sympy":
                raise ImportError("No module named 'sympy' (blocked by the test)")

    for mod in [m for m in sys.modules if m.split(".")[0] == "sympy" or "symbolic_shape_infer" in m]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(sys, "meta_path", [NoSympy()] + sys.meta_path)
    _, label = ptq.preprocess(tiny_models.cnn(), tmp_path)
    assert label.startswith("onnx shape inference + optimization (symbolic shape inference failed: ") and "sympy" in label


def test_sympy_is_a_declared_dependency():
    from importlib.metadata import requires

    assert any(r.split(">")[0].split("=")[0].strip() == "sympy" for r in requires("onnxq"))
