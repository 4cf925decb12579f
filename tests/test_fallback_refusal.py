"""Issue 10, class 4: never lie about hardware. A CUDA/TensorRT profile on a host without that provider is
refused by every verb that measures, unless --allow-fallback, and then FALLBACK is recorded."""

import json

import numpy as np
import pytest

import tiny_models
from clitools import refused, run_cli
from onnxq.runtime import available_providers

pytestmark = pytest.mark.skipif("CUDAExecutionProvider" in available_providers(), reason="this host has CUDA")


@pytest.fixture
def case(tmp_path, capsys):
    m = tmp_path / "cnn.onnx"
    tiny_models.cnn(m)
    np.savez(tmp_path / "calib.npz", **tiny_models.cnn_data(64))
    np.savez(tmp_path / "eval.npz", **tiny_models.cnn_data(32), labels=np.arange(32) % 10)
    return tmp_path, m


@pytest.mark.parametrize("profile", ["cuda", "tensorrt"])
def test_every_measuring_verb_refuses_a_missing_provider(case, capsys, profile):
    d, m = case
    c, e = d / "calib.npz", d / "eval.npz"
    needs = "CUDAExecutionProvider" if profile == "cuda" else "TensorrtExecutionProvider"
    for argv in (["quantize", m, "--calib", c, "--mode", "static", "-o", d / "q.onnx"],
                 ["sensitivity", m, "--calib", c],
                 ["eval", m, "--data", e],
                 ["bench", m, "--runs", "2"],
                 ["compare", m, "--calib", c, "--eval", e, "-o", d / "cmp", "--runs", "2", "--variants", "dynamic"]):
        line = refused(capsys, [*argv, "--profile", profile, "-q"], needs, d)
        assert "--allow-fallback" in line


def test_qat_refuses_a_missing_provider_before_training(tmp_path, capsys):
    pytest.importorskip("torch")
    refused(capsys, ["qat", "examples/fashion_mnist/qat_task.py:TASK", "--profile", "cuda", "-o", tmp_path / "q.onnx", "-q"],
            "CUDAExecutionProvider", tmp_path)


def test_allow_fallback_quantizes_and_marks_fallback_everywhere(case, capsys):
    d, m = case
    code, out, err = run_cli(capsys, "quantize", m, "--calib", d / "calib.npz", "--profile", "cuda", "--mode", "static",
                             "--allow-fallback", "-o", d / "q.onnx", "--json", "-q")
    assert code == 0
    res = json.loads(out)
    assert res["recipe"]["mode"] == "static" and res["recipe"]["activation_type"] in ("int8", "uint8")  # never silently fp16
    assert res["validation"]["providers"]["fallback"] is True
    assert any(w.startswith("FALLBACK") for w in res["warnings"])
    manifest = json.loads((d / "q.onnxq.json").read_text())
    assert manifest["result"]["validation"]["providers"]["fallback"] is True
    code, out, _ = run_cli(capsys, "eval", d / "q.onnx", "--data", d / "eval.npz", "--profile", "cuda", "--allow-fallback",
                           "--json", "-q")
    assert code == 0 and json.loads(out)["providers"]["fallback"] is True
