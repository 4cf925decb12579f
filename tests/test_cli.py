"""The CLI in-process and as a subprocess; every bad input: one line, exit 2, nothing written."""

import json
import subprocess
import sys

import numpy as np
import pytest

import tiny_models
from onnxq.cli import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def files(d):
    return sorted(p.name for p in d.iterdir())


def test_quantize_static_in_process_prints_table_and_json(cnn_model, capsys):
    model, calib = cnn_model
    code, out, err = run_cli(capsys, "quantize", model, "--calib", calib, "--profile", "cpu-x86-vnni", "-q")
    assert code == 0, err
    assert "cosine" in out and "SQNR dB" in out and "nodes quantized / float" in out
    code, out, err = run_cli(capsys, "quantize", model, "--calib", calib, "--profile", "cpu-x86-vnni", "--json",
                             "--method", "entropy", "--no-per-channel", "-o", model.with_name("e.onnx"))
    assert code == 0
    res = json.loads(out)
    assert res["recipe"]["calibration"]["method"] == "entropy" and res["recipe"]["per_channel"] is False
    assert res["fidelity"]["logits"]["cosine"] > 0.99


def test_subprocess_python_m_onnxq(cnn_model):
    model, calib = cnn_model
    r = subprocess.run([sys.executable, "-m", "onnxq", "quantize", str(model), "--calib", str(calib), "--profile",
                        "cpu-x86-vnni", "--json", "-q"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mode"] == "static"
    r = subprocess.run([sys.executable, "-m", "onnxq", "quantize", str(model) + ".nope", "-q"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr


def _bad_calib(tmp_path, kind):
    f = tmp_path / "bad.npz"
    good = tiny_models.cnn_data(16)["input"]
    if kind == "names":
        np.savez(f, image=good)
    elif kind == "shape":
        np.savez(f, input=good[:, :, :7, :])
    elif kind == "rank":
        np.savez(f, input=good[:, 0, 0, :])
    elif kind == "dtype":
        np.savez(f, input=(good * 10).astype(np.int64))
    elif kind == "nan":
        good[3, 0, 2, 2] = np.nan
        np.savez(f, input=good)
    elif kind == "empty":
        np.savez(f, input=good[:0])
    elif kind == "corrupt":
        f.write_bytes(b"PK\x03\x04 not really a zip")
    return f


@pytest.mark.parametrize(
    "kind, message",
    [
        ("names", "missing ['input'], unexpected ['image']"),
        ("shape", "dimension 2 must be 8"),
        ("rank", "the model expects rank 4"),
        ("dtype", "has dtype int64; the model expects float32"),
        ("nan", "contains 1 NaN value(s) (first at index (3, 0, 2, 2))"),
        ("empty", "is empty"),
        ("corrupt", "cannot read calibration file"),
    ],
)
def test_bad_calibration_data(cnn_model, tmp_path, capsys, kind, message):
    model, _ = cnn_model
    before = files(tmp_path)
    bad = _bad_calib(tmp_path, kind)
    code, out, err = run_cli(capsys, "quantize", model, "--calib", bad, "--profile", "cpu-x86-vnni", "-q")
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert files(tmp_path) == sorted(before + [bad.name])  # no output, no manifest, no temp file


def test_bad_models(tmp_path, capsys, cnn_model):
    _, calib = cnn_model
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    truncated = tmp_path / "trunc.onnx"
    full = tiny_models.cnn().SerializeToString()
    truncated.write_bytes(full[: len(full) // 2])
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for path, msg in [(tmp_path / "missing.onnx", "does not exist"), (text, "not"), (truncated, "not"), (empty, "is empty")]:
        before = files(tmp_path)
        code, _, err = run_cli(capsys, "quantize", path, "--calib", calib, "--profile", "cpu-x86-vnni", "-q")
        assert code == 2 and msg in err and err.count("\n") == 1, err
        assert files(tmp_path) == before


def test_static_without_calibration_and_random_escape_hatch(cnn_model, capsys):
    model, _ = cnn_model
    code, _, err = run_cli(capsys, "quantize", model, "--mode", "static", "--profile", "cpu-x86-vnni")
    assert code == 2 and "needs calibration data" in err and "--calib-random" in err
    assert not model.with_name("cnn.int8.onnx").exists()
    code, out, err = run_cli(capsys, "quantize", model, "--calib-random", "16", "--profile", "cpu-x86-vnni", "--json", "-q")
    assert code == 0
    assert json.loads(out)["calibration"]["not_representative"] is True


def test_unknown_profile_and_missing_provider(cnn_model, capsys, monkeypatch):
    model, calib = cnn_model
    code, _, err = run_cli(capsys, "quantize", model, "--calib", calib, "--profile", "nope")
    assert code == 2 and "unknown profile 'nope'" in err
    code, _, err = run_cli(capsys, "check", model, "--profile", "nope")
    assert code == 2


def test_never_overwrites_the_input(cnn_model, capsys):
    model, calib = cnn_model
    before = model.read_bytes()
    code, _, err = run_cli(capsys, "quantize", model, "--calib", calib, "--profile", "cpu-x86-vnni", "-o", model)
    assert code == 2 and "never overwrites" in err
    assert model.read_bytes() == before


def test_check_exit_codes(cnn_model, capsys):
    model, calib = cnn_model
    code, _, _ = run_cli(capsys, "quantize", model, "--calib", calib, "--profile", "cpu-x86-vnni", "-q")
    q = model.with_name("cnn.int8.onnx")
    assert run_cli(capsys, "check", q, "--profile", "cpu-x86-vnni")[0] == 0
    code, out, _ = run_cli(capsys, "check", q, "--profile", "tensorrt", "--json")
    res = json.loads(out)
    assert code == 1 and not res["ok"]
    rules = {v["rule"] for v in res["violations"]}
    assert {"activation-type", "zero-point-zero"} <= rules
    assert run_cli(capsys, "check", model, "--profile", "cpu-x86-vnni")[0] == 1  # FP32: no Q/DQ


def test_profiles_command(capsys):
    code, out, _ = run_cli(capsys, "profiles", "--json")
    d = json.loads(out)
    names = {p["name"]: p for p in d["profiles"]}
    assert names["cuda"]["available"] is False and names["cpu-x86-vnni"]["available"] is True
    assert names["cpu-arm64"]["available"] is False and "not what it targets" in names["cpu-arm64"]["why"]
    assert "isa_flags" in d["host"]
    code, out, _ = run_cli(capsys, "profiles", "show", "tensorrt", "--json")
    assert json.loads(out)["quant"]["activation_symmetric"] is True
    assert run_cli(capsys, "profiles", "show", "nope")[0] == 2


def test_check_reads_weight_type_from_the_model_with_or_without_manifest(cnn_model, capsys):
    model, calib = cnn_model
    out = model.with_name("int4.onnx")
    assert run_cli(capsys, "quantize", model, "--calib", calib, "--profile", "cpu-x86-vnni", "--weight-type", "int4", "-o", out, "-q")[0] == 0
    assert run_cli(capsys, "check", out, "--profile", "cpu-x86-vnni")[0] == 0  # the model's metadata says int4
    out.with_name("int4.onnxq.json").unlink()
    assert run_cli(capsys, "check", out, "--profile", "cpu-x86-vnni")[0] == 0  # the same answer without the manifest
    code, text, _ = run_cli(capsys, "check", out, "--profile", "cpu-x86-vnni", "--weight-type", "int8", "--json")
    res = json.loads(text)
    assert code == 1 and [g["rule"] for g in res["rules"]] == ["weight-type"] and res["rules"][0]["count"] >= 2
    assert "re-quantize with --profile cpu-x86-vnni" in res["rules"][0]["fix"]


def test_check_groups_rules_and_recognises_dynamic_models(cnn_model, capsys):
    model, calib = cnn_model
    d = model.with_name("dyn.onnx")
    assert run_cli(capsys, "quantize", model, "--mode", "dynamic", "--calib", calib, "--profile", "cpu-x86-vnni", "-o", d, "-q")[0] == 0
    code, out, _ = run_cli(capsys, "check", d, "--profile", "cpu-x86-vnni")
    assert code == 1 and "dynamic-model" in out and "--mode static --profile cpu-x86-vnni" in out
    q = model.with_name("s.onnx")
    run_cli(capsys, "quantize", model, "--calib", calib, "--profile", "cpu-x86-vnni", "-o", q, "-q")
    code, out, _ = run_cli(capsys, "check", q, "--profile", "tensorrt")
    assert code == 1 and "| zero-point-zero" in out and "re-quantize with --profile tensorrt" in out
    assert "where symmetric int8 needs 0" in out or "where symmetric uint8 needs 128" in out


def test_check_treats_non_weight_constants_as_activations(tmp_path, capsys):
    """y = (x * c) @ W with all ops quantized: c is quantized with the activation type, W with the weight type."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    inits = [numpy_helper.from_array(np.full((4,), 0.7, np.float32), "c"),
             numpy_helper.from_array(np.random.default_rng(0).normal(0, 1, (4, 3)).astype(np.float32), "W")]
    nodes = [helper.make_node("Mul", ["x", "c"], ["xc"], name="mul"), helper.make_node("MatMul", ["xc", "W"], ["y"], name="mm")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save_model(m, str(path))
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(1).normal(0, 1, (32, 4)).astype(np.float32))
    assert run_cli(capsys, "quantize", path, "--calib", tmp_path / "c.npz", "--profile", "cpu-x86-vnni",
                   "--op-types", "Mul,MatMul", "-q")[0] == 0
    q = onnx.load(str(path.with_name("m.int8.onnx")))
    assert any(n.op_type == "DequantizeLinear" and n.input[0].startswith("c") for n in q.graph.node)
    code, out, _ = run_cli(capsys, "check", path.with_name("m.int8.onnx"), "--profile", "cpu-x86-vnni", "--json")
    assert code == 0, out
