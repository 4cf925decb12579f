"""`onnxq demo`: the shipped Fashion-MNIST CNN quantizes with little accuracy loss, without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import numpy as np
import onnx

from onnxq.cli import main
from onnxq.commands.demo import load_eval


def test_demo_assets_are_small_and_consistent():
    files = {n: resources.files("onnxq.demo") / n for n in ("fashion_cnn.onnx", "calib.npz", "eval.npz")}
    assert sum(f.stat().st_size if hasattr(f, "stat") else len(f.read_bytes()) for f in files.values()) < 2 * 2**20
    model = onnx.load_from_string(files["fashion_cnn.onnx"].read_bytes())
    name = model.graph.input[0].name
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "dynamic batch"
    with resources.as_file(files["calib.npz"]) as p, np.load(p) as z:
        assert z.files == [name] and z[name].dtype == np.float32 and z[name].shape[1:] == (1, 28, 28)
    x, y = load_eval()
    assert x.dtype == np.float32 and x.shape[1:] == (1, 28, 28) and len(x) == len(y) >= 500
    assert abs(float(x.mean())) < 0.2 and set(np.unique(y)) == set(range(10))


def test_demo_json(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (tmp_path / "fashion_cnn.int8.onnx").exists() and (tmp_path / "fashion_cnn.int8.onnxq.json").exists()
    assert r["quantize"]["mode"] == "static" and r["quantize"]["quantized_nodes"] > 0
    acc = r["accuracy"]
    assert acc["fp32"] > 0.8, "the shipped model is trained"
    assert abs(acc["quantized"] - acc["fp32"]) <= 0.01, acc


def test_demo_table_without_torch(tmp_path):
    # torch made unimportable: the demo must not need it
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from onnxq.cli import main\n"
        f"rc = main(['demo', '-o', {str(tmp_path)!r}, '-q'])\n"
        "assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "INT8 static" in proc.stdout and "accuracy %" in proc.stdout
