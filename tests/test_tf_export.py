"""onnxq.tf_export: Keras / SavedModel -> ONNX (NHWC kept, dynamic batch), parity, one-line errors, and onnxq downstream.

Skipped when the tf extra (tensorflow-cpu, tf2onnx) is not installed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytestmark = pytest.mark.tf
pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

import onnxq  # noqa: E402
from onnxq import tf_export  # noqa: E402
from onnxq.cli import main  # noqa: E402
from onnxq.errors import CheckFailed, InputError  # noqa: E402
from onnxq.profiles import load_profile  # noqa: E402
from onnxq.tf_export import export_keras, load_keras, require_tf  # noqa: E402

tf, _tf2onnx = require_tf()
import keras  # noqa: E402


def _cnn():
    """Input 28x28x1 -> Conv2D(8, 3, relu) -> MaxPool -> Flatten -> Dense 10 (NHWC, seeded weights)."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])


def _images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 28, 28, 1), dtype=np.float32)


def _ort(path: Path, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture(scope="module")
def cnn():
    return _cnn()


@pytest.fixture(scope="module")
def exported(cnn, tmp_path_factory):
    out = tmp_path_factory.mktemp("tfx") / "cnn.onnx"
    return export_keras(cnn, out, profile="cpu-x86-vnni")


def test_cnn_export_keeps_nhwc_dynamic_batch_and_matches_tf(cnn, exported, record_property):
    res = exported
    prof = load_profile("cpu-x86-vnni")
    m = onnx.load(str(res.path))
    assert res.opset == prof.opset == next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    assert res.input_names == ["input"] and res.output_names == ["output_0"]
    assert res.input_shapes == {"input": ["batch", 28, 28, 1]}, "NHWC as the Keras model, batch axis dynamic"
    assert res.output_shapes == {"output_0": ["batch", 10]}
    p = res.parity["output_0"]
    record_property("parity_max_abs", p["max_abs"])
    record_property("parity_cosine", p["cosine"])
    assert p["ok"] and p["max_abs"] < 1e-4 and p["cosine"] > 0.99999 and p["batches"] == [1, 2]
    assert res.exporter.startswith("tf2onnx.convert.from_function")
    doc = json.loads(res.manifest.read_text())
    assert doc["kind"] == "export" and doc["versions"]["tensorflow"] == tf.__version__ and doc["input"]["kind"] == "keras"
    assert doc["result"]["parity"]["output_0"]["max_abs"] == p["max_abs"]
    # batch 5 was never seen at export time
    x = _images(5)
    got = _ort(res.path, {"input": x})[0]
    np.testing.assert_allclose(got, cnn(x, training=False).numpy(), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("mode", ["static", "dynamic", "fp16"])
def test_quantize_round_trip_and_check(exported, tmp_path, mode, capsys):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=_images(96, seed=2))
    out = tmp_path / f"cnn.{mode}.onnx"
    res = onnxq.quantize(exported.path, mode=mode, calibration=calib, profile="cpu-x86-vnni", output=out, progress=False)
    assert out.exists() and res.fidelity["output_0"]["cosine"] > 0.99, res.fidelity
    x = _images(4, seed=3)
    assert _ort(out, {"input": x})[0].shape == (4, 10)
    if mode == "static":
        assert main(["check", str(out), "--profile", "cpu-x86-vnni"]) == 0
        assert "OK:" in capsys.readouterr().out


def test_savedmodel_and_keras_file_give_the_same_model(cnn, exported, tmp_path):
    sm = tmp_path / "sm"
    cnn.export(str(sm), verbose=False)
    res = export_keras(sm, tmp_path / "sm.onnx")
    assert res.input_shapes == {"input": ["batch", 28, 28, 1]} and res.output_names == ["output_0"]
    assert res.parity["output_0"]["ok"] and res.parity["output_0"]["max_abs"] < 1e-4
    assert "serving_default" in res.notes[0]
    kf = tmp_path / "cnn.keras"
    cnn.save(kf)
    res_k = export_keras(kf, tmp_path / "k.onnx", input_shape=(3, 28, 28, 1))
    assert res_k.parity["output_0"]["batches"] == [3, 6]
    x = _images(2, seed=4)
    ref = _ort(exported.path, {"input": x})[0]
    for r in (res, res_k):
        np.testing.assert_allclose(_ort(r.path, {"input": x})[0], ref, atol=1e-5)
    assert load_keras(sm).kind == "saved_model"


def test_names_multi_output_static_batch_and_unknown_dims(tmp_path):
    i = keras.Input((6, 6, 3), name="image")
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(i))
    two = keras.Model(i, {"logits": keras.layers.Dense(3)(h), "embed": keras.layers.Dense(2)(h)})
    res = export_keras(two, tmp_path / "two.onnx", opset=13)
    assert res.opset == 13 and res.input_names == ["image"] and sorted(res.output_names) == ["embed", "logits"]
    assert all(p["ok"] for p in res.parity.values())
    res = export_keras(two, tmp_path / "s.onnx", input_shape=(2, 6, 6, 3), dynamic_batch=False, input_names=["x"],
                       output_names=["a", "b"])
    assert res.input_shapes == {"x": [2, 6, 6, 3]} and res.parity["a"]["batches"] == [2]
    # unknown spatial dims: input_shape is required and fixes them
    j = keras.Input((None, None, 3))
    var = keras.Model(j, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(j))))
    with pytest.raises(InputError, match=r"shape \?x\?x\?x3 .*give input_shape"):
        export_keras(var, tmp_path / "v.onnx")
    res = export_keras(var, tmp_path / "v.onnx", input_shape=(1, 16, 16, 3))
    assert res.input_shapes == {"input": ["batch", 16, 16, 3]}


def test_mismatch_raises_checkfailed_and_writes_nothing(cnn, tmp_path, monkeypatch):
    real = tf_export._convert

    def wrong(*a, **k):  # a converter that gets one weight wrong
        m = real(*a, **k)
        w = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        arr = onnx.numpy_helper.to_array(w) * 1.5
        w.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), w.name))
        return m

    monkeypatch.setattr(tf_export, "_convert", wrong)
    with pytest.raises(CheckFailed, match=r"differs from TensorFlow .*output_0: max-abs .*cosine") as ei:
        export_keras(cnn, tmp_path / "bad.onnx")
    assert "\n" not in str(ei.value) and list(tmp_path.iterdir()) == []


class _NoSig(tf.Module):
    def __init__(self):
        self.v = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def __call__(self, x):
        return x * self.v


def _bad_sources(tmp: Path) -> dict:
    (tmp / "model.keras").write_text("not a model\n")
    (tmp / "model.h5").write_text("not a model\n")
    tf.saved_model.save(_NoSig(), str(tmp / "nosig"), signatures={})
    (tmp / "emptydir").mkdir()
    return {
        "text": (tmp / "model.keras", r"model.keras is not a Keras model .*zip"),
        "h5": (tmp / "model.h5", r"model.h5 is not a Keras model .*HDF5"),
        "nosig": (tmp / "nosig", r"has no 'serving_default' signature .*re-export it with model.export\(dir\)"),
        "missing": (tmp / "missing.keras", r"missing.keras does not exist"),
        "dir": (tmp / "emptydir", r"directory without saved_model.pb"),
        "object": (42, r"expected a keras.Model.*got int"),
    }


@pytest.mark.parametrize("case", ["text", "h5", "nosig", "missing", "dir", "object"])
def test_bad_sources_are_one_line_input_errors(tmp_path, case):
    src, match = _bad_sources(tmp_path)[case]
    out = tmp_path / "out" / "never.onnx"
    with pytest.raises(InputError, match=match) as ei:
        export_keras(src, out)
    assert "\n" not in str(ei.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"opset": 99}, r"opset 99 is out of range .* between 7 and 18"),
        ({"input_names": ["a", "b"]}, "2 input name"),
        ({"output_names": ["a", "a"]}, "2 output name"),
        ({"input_shape": (1, 28, 28, 3)}, r"does not fit input .input. of shape \?x28x28x1"),
        ({"input_shape": (1, "x")}, "not a tuple of integers"),
    ],
)
def test_bad_arguments_are_input_errors(cnn, tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match) as ei:
        export_keras(cnn, tmp_path / "x.onnx", **kwargs)
    assert "\n" not in str(ei.value) and list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="should end in .onnx"):
        export_keras(cnn, tmp_path / "x.pb")


def test_without_the_tf_extra_one_line_hint_and_nothing_written(cnn, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` raises ImportError
    with pytest.raises(InputError, match=r'pip install "onnxq\[tf\]"') as ei:
        export_keras(cnn, tmp_path / "x.onnx")
    assert "\n" not in str(ei.value) and list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    def missing():
        raise InputError(f"this needs TensorFlow and tf2onnx, which are not installed: {tf_export.TF_INSTALL_HINT}")

    monkeypatch.setattr(tf_export, "require_tf", missing)
    for call in (lambda: export_keras(cnn, tmp_path / "y.onnx"), lambda: load_keras(tmp_path / "m.keras")):
        with pytest.raises(InputError, match=r"onnxq\[tf\]") as ei:
            call()
        assert "\n" not in str(ei.value)
    assert list(tmp_path.iterdir()) == []


# ---- CLI (`onnxq export model.keras`): active once onnxq/commands/export.py dispatches Keras sources ----------------


def _cli_wired() -> bool:
    from onnxq.commands import export as export_cmd

    return hasattr(export_cmd, "run_tf")


cli = pytest.mark.skipif(not _cli_wired(), reason="onnxq export does not dispatch Keras/SavedModel sources yet")


@cli
def test_cli_keras_file_and_savedmodel(cnn, tmp_path, capsys):
    cnn.save(tmp_path / "m.keras")
    cnn.export(str(tmp_path / "sm"), verbose=False)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "m.keras"), "-o", str(tmp_path / "a.onnx")]) == 0
    assert "max-abs vs TensorFlow" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "sm"), "--input-shape", "2x28x28x1", "--opset", "13", "-o", str(tmp_path / "b.onnx"),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["opset"] == 13 and res["input_shapes"] == {"input": ["batch", 28, 28, 1]} and res["parity"]["output_0"]["batches"] == [2, 4]


@cli
def test_cli_keras_bad_inputs_exit_2_and_write_nothing(cnn, tmp_path, capsys):
    (tmp_path / "model.keras").write_text("not a model\n")
    cnn.save(tmp_path / "ok.keras")
    out = tmp_path / "never.onnx"
    for argv, match in ((["model.keras"], "is not a Keras model"), ([str(tmp_path)], "without saved_model.pb"),
                        (["ok.keras", "--checkpoint", "x.pt"], "--checkpoint is for PyTorch")):
        argv = [str(tmp_path / argv[0]) if argv[0].endswith(".keras") else argv[0], *argv[1:]]
        assert main(["export", *argv, "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("onnxq: error: ") and match in err[-1], err
    assert not out.exists() and not (tmp_path / "never.onnxq.json").exists()
