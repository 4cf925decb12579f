"""Provider selection: refuse a silent fallback, or record it loudly when allowed."""

import numpy as np
import onnx
import pytest

import onnxq
import onnxq.runtime as runtime
import tiny_models
from onnxq.errors import ProviderError
from onnxq.profiles import load_profile


def test_cpu_profile_session_is_active_on_cpu(tmp_path):
    path = tmp_path / "m.onnx"
    tiny_models.mlp(path)
    sess, info = runtime.make_session(path, load_profile("cpu-x86-vnni"), threads=1)
    assert info.active == ["CPUExecutionProvider"] and not info.fallback and info.threads == 1


@pytest.mark.skipif("CUDAExecutionProvider" in runtime.available_providers(), reason="CUDA present")
def test_missing_provider_is_refused_unless_fallback_allowed(tmp_path):
    path = tmp_path / "m.onnx"
    tiny_models.mlp(path)
    with pytest.raises(ProviderError, match="needs CUDAExecutionProvider.*--allow-fallback"):
        runtime.make_session(path, load_profile("cuda"))
    _, info = runtime.make_session(path, load_profile("cuda"), allow_fallback=True)
    assert info.fallback and info.note.startswith("FALLBACK") and info.active == ["CPUExecutionProvider"]


def test_provider_listed_but_not_activated_is_caught(tmp_path, monkeypatch):
    """The provider is in the build list but the session does not activate it (driver missing)."""
    path = tmp_path / "m.onnx"
    tiny_models.mlp(path)
    monkeypatch.setattr(runtime, "available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])

    class FakeSession:
        def __init__(self, src, so, providers):
            self.requested = providers

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(runtime.ort, "InferenceSession", FakeSession)
    with pytest.raises(ProviderError, match="did not activate TensorrtExecutionProvider, CUDAExecutionProvider"):
        runtime.make_session(path, load_profile("tensorrt"))
    sess, info = runtime.make_session(path, load_profile("tensorrt"), allow_fallback=True)
    assert info.fallback
    names = [p[0] if isinstance(p, tuple) else p for p in sess.requested]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt_opts = dict(sess.requested[0][1])
    assert trt_opts["trt_int8_enable"] == "True"


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in runtime.available_providers(), reason="needs the CUDA execution provider")
def test_cuda_session_really_active(tmp_path):
    path = tmp_path / "m.onnx"
    tiny_models.mlp(path)
    _, info = runtime.make_session(path, load_profile("cuda"))
    assert info.active[0] == "CUDAExecutionProvider"


def test_external_data_model_quantizes(tmp_path):
    m = tiny_models.mlp()
    path = tmp_path / "ext.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").exists()
    calib = {"x": np.random.default_rng(0).normal(0, 1, (32, 64)).astype(np.float32)}
    res = onnxq.quantize(path, mode="static", calibration=calib, profile="cpu-x86-vnni", progress=False)
    assert res.fidelity["y"]["cosine"] > 0.99
