import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402


@pytest.fixture
def cnn_model(tmp_path):
    path = tmp_path / "cnn.onnx"
    tiny_models.cnn(path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **tiny_models.cnn_data(96))
    return path, calib


@pytest.fixture
def mlp_model(tmp_path):
    path = tmp_path / "mlp.onnx"
    tiny_models.mlp(path)
    rng = np.random.default_rng(3)
    calib = tmp_path / "mlp_calib.npz"
    np.savez(calib, x=rng.normal(0, 1, (64, 64)).astype(np.float32))
    return path, calib


@pytest.fixture
def attn_model(tmp_path):
    path = tmp_path / "attn.onnx"
    tiny_models.attention(path)
    calib = tmp_path / "attn.npz"
    np.savez(calib, **tiny_models.attention_data(48))
    return path, calib
