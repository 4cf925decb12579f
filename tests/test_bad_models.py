"""Issue 10, class 8: bad models get one line naming the problem, before onnxruntime prints anything."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

import tiny_models
from clitools import refused, run_cli

P = ["--profile", "cpu-x86-vnni"]


@pytest.fixture
def d(tmp_path):
    np.savez(tmp_path / "calib.npz", **tiny_models.cnn_data(48))
    np.savez(tmp_path / "eval.npz", **tiny_models.cnn_data(16))
    return tmp_path


def _external(d, name, edit=None):
    path = d / f"{name}.onnx"
    onnx.save_model(tiny_models.cnn(), str(path), save_as_external_data=True, location=f"{name}.onnx.data", size_threshold=0)
    if edit:
        m = onnx.load(str(path), load_external_data=False)
        for t in m.graph.initializer:
            for e in t.external_data:
                edit(e)
        onnx.save_model(m, str(path))
    return path


def _every_verb(d, path):
    return [["quantize", path, "--calib", d / "calib.npz", *P, "-q", "-o", d / "out.onnx"],
            ["eval", path, "--data", d / "eval.npz", "--ref", path, *P, "-q"],
            ["bench", path, "--runs", "2", *P, "-q"],
            ["check", path, *P]]


def test_external_data_missing_moved_or_escaping(d, capsys):
    missing = _external(d, "missing")
    (d / "missing.onnx.data").unlink()
    moved = _external(d, "moved")
    (d / "moved.onnx.data").rename(d / "elsewhere.data")
    up = _external(d, "up", lambda e: e.key == "location" and setattr(e, "value", "../../etc/passwd"))
    absolute = _external(d, "abs", lambda e: e.key == "location" and setattr(e, "value", "/etc/passwd"))
    cases = [(missing, "which does not exist"), (moved, "which does not exist"), (up, "not a file name inside the model's folder"),
             (absolute, "not a file name inside the model's folder")]
    for path, why in cases:
        for argv in _every_verb(d, path):
            refused(capsys, argv, why, d)


def test_truncated_external_data(d, capsys):
    path = _external(d, "cut")
    data = d / "cut.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    for argv in _every_verb(d, path):
        refused(capsys, argv, "it is truncated or belongs to another export", d)


def test_external_data_model_runs_in_every_verb(d, capsys):
    path = _external(d, "ok")
    assert run_cli(capsys, "quantize", path, "--calib", d / "calib.npz", *P, "-q", "-o", d / "q.onnx")[0] == 0
    assert run_cli(capsys, "eval", d / "q.onnx", "--data", d / "eval.npz", "--ref", path, *P, "-q")[0] == 0
    assert run_cli(capsys, "bench", path, d / "q.onnx", "--runs", "2", *P, "-q")[0] == 0
    assert run_cli(capsys, "check", d / "q.onnx", *P)[0] == 0


def test_custom_domain_and_future_opset(d, capsys):
    m = tiny_models.cnn()
    m.graph.node[1].domain = "com.acme"
    m.opset_import.append(helper.make_opsetid("com.acme", 1))
    onnx.save(m, str(d / "custom.onnx"))
    m = tiny_models.cnn()
    m.opset_import[0].version = 30
    onnx.save(m, str(d / "op30.onnx"))
    for argv in _every_verb(d, d / "custom.onnx")[:3]:
        refused(capsys, argv, "com.acme:Relu, a custom-domain op", d)
    for argv in _every_verb(d, d / "op30.onnx"):
        refused(capsys, argv, "declares ai.onnx opset 30", d)


def test_onnxruntime_prints_nothing_of_its_own(d):
    """In a real process (onnxruntime's C++ log and Python logging both reach stderr): exactly one line."""
    m = tiny_models.cnn()
    m.opset_import[0].version = 30
    onnx.save(m, str(d / "op30.onnx"))
    p = subprocess.run([sys.executable, "-m", "onnxq", "quantize", str(d / "op30.onnx"), "--calib", str(d / "calib.npz"), *P],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_already_quantized_model_is_refused_in_every_mode(d, capsys):
    tiny_models.cnn(d / "m.onnx")
    assert run_cli(capsys, "quantize", d / "m.onnx", "--calib", d / "calib.npz", *P, "-q", "-o", d / "q.onnx")[0] == 0
    for mode in ("static", "dynamic", "fp16"):
        refused(capsys, ["quantize", d / "q.onnx", "--mode", mode, "--calib", d / "calib.npz", *P, "-q", "-o", d / "qq.onnx"],
                "is already quantized", d)


def test_not_a_model(d, capsys):
    (d / "text.onnx").write_text("not a model\n" * 10)
    (d / "empty.onnx").write_bytes(b"")
    full = tiny_models.cnn().SerializeToString()
    (d / "half.onnx").write_bytes(full[: len(full) // 2])
    for name, why in [("text.onnx", "not"), ("empty.onnx", "is empty"), ("half.onnx", "not"), ("gone.onnx", "does not exist")]:
        for argv in _every_verb(d, d / name):
            refused(capsys, argv, why, d)
