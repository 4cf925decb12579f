"""Issue 10, class 11: a run that fails leaves nothing behind: no partial set of QAT files, no empty folders."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tiny_models
from clitools import refused, snapshot

NAN_TASK = '''
import numpy as np, torch
from sklearn.datasets import load_digits
from onnxq.qat.task import QATTask
import sys; sys.path.insert(0, {tests!r})
from test_qat import TinyCNN, _train

d = load_digits()
X = ((d.images / 16.0 - 0.3) / 0.4).astype(np.float32)[:, None]
Y = d.target.astype(np.int64)
CLEAN = X.copy()
X[700:800] = np.nan  # a corrupt stretch of the training data, after the samples calibration reads

def batches(lo, hi, bs=64):
    return [(torch.from_numpy(X[i:min(i + bs, hi)]), torch.from_numpy(Y[i:min(i + bs, hi)])) for i in range(lo, hi, bs)]

def model():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return _train(TinyCNN(), CLEAN[:600], Y[:600], steps=40)

TASK = QATTask(model=model, train_data=lambda: batches(0, 1400), eval_data=lambda: batches(1400, 1797), lr=1e-3, epochs=1)
'''


def test_qat_with_nan_in_its_training_data_leaves_no_file(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    task = tmp_path / "nan_task.py"
    task.write_text(textwrap.dedent(NAN_TASK.format(tests=str(Path(__file__).parent))))
    from onnxq.cli import main

    before = snapshot(tmp_path)
    code = main(["qat", f"{task}:TASK", "--profile", "cpu-x86-vnni", "--epochs", "1", "-o", str(tmp_path / "out" / "q.onnx"),
                 "-q", "--seed", "0"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "holds NaN/inf" in err, err
    assert snapshot(tmp_path) == before  # no q.fp32.onnx, q.ptq.onnx, manifests, staging folder or out/


def test_a_failing_quantize_removes_the_folders_it_made(tmp_path, capsys, monkeypatch):
    tiny_models.cnn(tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **tiny_models.cnn_data(48))
    import onnxq.ptq as ptq

    def broken(*a, **k):  # a failure deep inside the run, after the output unit was opened
        raise ptq.InputError("onnxruntime's quantizer failed (simulated)")

    monkeypatch.setattr(ptq, "write_qdq", broken)
    refused(capsys, ["quantize", tmp_path / "m.onnx", "--calib", tmp_path / "c.npz", "--profile", "cpu-x86-vnni", "-q",
                     "-o", tmp_path / "new" / "sub" / "out.onnx"], "simulated", tmp_path)
    assert not (tmp_path / "new").exists()


def test_qat_files_name_their_final_paths(tmp_path):
    """The staged QAT run moves into place with manifests that name where the files are now."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from test_qat import TASK_FILE

    from onnxq import qat

    task = tmp_path / "t.py"
    task.write_text(textwrap.dedent(TASK_FILE.format(tests=str(Path(__file__).parent))))
    res = qat.run_task(f"{task}:TASK", "cpu-x86-vnni", tmp_path / "r.qat.onnx", epochs=1, progress=False,
                       measure_step_time=False, control=False)
    for key in ("model_path", "fp32_model_path", "ptq_model_path"):
        p = Path(res[key])
        assert p.parent == tmp_path and p.is_file()
        doc = json.loads(p.with_name(p.name[:-5] + ".onnxq.json").read_text())
        assert doc["output"]["path"] == str(p) and ".onnxq-stage." not in json.dumps(doc)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnxq-stage.")]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".onnx") == ["r.qat.fp32.onnx", "r.qat.onnx", "r.qat.ptq.onnx"]
