"""Issue 10, class 3: a model, its external data and its manifest are committed as one unit.

A child ``onnxq quantize`` is killed (SIGKILL) or interrupted (SIGINT, SIGTERM) at the instant it renames
the model, and at the instant it renames the manifest; whatever is then under the final names is a whole
model, and a manifest beside it is either the model's own or recognisably stale (hash mismatch, read as
no manifest).
"""

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

import tiny_models
from onnxq.manifest import manifest_path, read_manifest

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    kill_at, signum = int(sys.argv[1]), int(sys.argv[2])
    out = Path(sys.argv[3]).resolve()
    targets = {out, out.with_name(out.name[:-5] + ".onnxq.json")}
    real, seen = os.replace, [0]
    def replace(src, dst, *a, **k):
        if Path(dst).resolve() in targets:
            seen[0] += 1
            if seen[0] == kill_at:
                os.kill(os.getpid(), signum)
        return real(src, dst, *a, **k)
    os.replace = replace
    from onnxq.cli import main
    sys.exit(main(sys.argv[4:]))
""")


@pytest.fixture
def previous_run(tmp_path):
    """A model quantized once (minmax), so a second run (percentile) has something to replace."""
    m = tmp_path / "cnn.onnx"
    tiny_models.cnn(m)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **tiny_models.cnn_data(96))
    out = tmp_path / "cnn.int8.onnx"
    assert _quantize(m, calib, out, "minmax").returncode == 0
    return m, calib, out, out.read_bytes(), manifest_path(out).read_bytes()


def _quantize(m, calib, out, method, kill_at=0, signum=0, env=None):
    """``method`` minmax: the first run; percentile: a second run that writes other bytes (per-tensor weights too)."""
    argv = ["quantize", str(m), "--calib", str(calib), "--profile", "cpu-x86-vnni", "--method", method,
            "--bias-correction", "none", "-q", "-o", str(out)] + (["--no-per-channel"] if method == "percentile" else [])
    return subprocess.run([sys.executable, "-c", CHILD, str(kill_at), str(signum), str(out), *argv],
                          capture_output=True, text=True, timeout=300, env=env)


def _whole(path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return model


def test_sigkill_at_the_model_rename_keeps_the_previous_unit(previous_run):
    m, calib, out, old_model, old_manifest = previous_run
    p = _quantize(m, calib, out, "percentile", kill_at=1, signum=signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL
    assert out.read_bytes() == old_model and manifest_path(out).read_bytes() == old_manifest
    assert read_manifest(out)["recipe"]["calibration"]["method"] == "minmax"


def test_sigkill_between_the_renames_leaves_a_whole_model_whose_stale_manifest_is_not_trusted(previous_run):
    m, calib, out, old_model, old_manifest = previous_run
    p = _quantize(m, calib, out, "percentile", kill_at=2, signum=signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL
    assert out.read_bytes() != old_model and _whole(out)  # the new model, complete
    assert manifest_path(out).read_bytes() == old_manifest  # the old manifest is still there...
    assert read_manifest(out) is None  # ...and readers see its hash does not match: the model is unmanifested


def test_sigkill_on_a_first_run_leaves_nothing_or_a_whole_model(tmp_path):
    m = tmp_path / "cnn.onnx"
    tiny_models.cnn(m)
    np.savez(tmp_path / "calib.npz", **tiny_models.cnn_data(96))
    out = tmp_path / "new" / "cnn.int8.onnx"
    assert _quantize(m, tmp_path / "calib.npz", out, "minmax", 1, signal.SIGKILL).returncode == -signal.SIGKILL
    assert not out.exists() and not manifest_path(out).exists()
    assert _quantize(m, tmp_path / "calib.npz", out, "minmax", 2, signal.SIGKILL).returncode == -signal.SIGKILL
    assert _whole(out) and not manifest_path(out).exists() and read_manifest(out) is None


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
@pytest.mark.parametrize("kill_at", [1, 2])
def test_a_signal_during_the_renames_waits_for_the_unit_and_says_what_was_written(previous_run, signum, code, word, kill_at):
    m, calib, out, old_model, _ = previous_run
    p = _quantize(m, calib, out, "percentile", kill_at=kill_at, signum=signum)
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == code, p.stderr
    assert len(err) == 1 and err[0].startswith(f"onnxq: {word}") and "after writing 2 complete file(s)" in err[0], err
    assert str(out) in err[0] and str(manifest_path(out)) in err[0]
    doc = read_manifest(out)  # both renamed: the manifest is the new model's own
    assert doc is not None and doc["recipe"]["calibration"]["method"] == "percentile" and out.read_bytes() != old_model
    assert not [f for f in out.parent.iterdir() if f.name.endswith(".tmp")]


def test_external_data_is_part_of_the_unit(tmp_path, monkeypatch):
    """Outputs over protobuf's limit get their weights in a side file, committed with the model: a replaced
    model's data file is never overwritten in place (a new name while the old one is in use), and removed after."""
    import onnxq
    import onnxq.plan as plan

    monkeypatch.setattr(plan, "EXTERNAL_DATA_ABOVE", 1000)  # this tiny model counts as "over the limit"
    m = tmp_path / "cnn.onnx"
    tiny_models.cnn(m)
    calib = {"input": tiny_models.cnn_data(64)["input"]}
    out = tmp_path / "o.onnx"
    first = onnxq.quantize(m, calibration=calib, profile="cpu-x86-vnni", progress=False, output=out)
    assert first.recipe.external_data and (tmp_path / "o.onnx.data").is_file()
    doc = json.loads(manifest_path(out).read_text())
    assert [d["file"] for d in doc["output"]["external_data"]] == ["o.onnx.data"]
    onnxq.quantize(m, calibration=calib, profile="cpu-x86-vnni", progress=False, output=out, method="minmax")
    doc = json.loads(manifest_path(out).read_text())
    (entry,) = doc["output"]["external_data"]
    assert entry["file"] != "o.onnx.data" and not (tmp_path / "o.onnx.data").exists()  # old data removed after the commit
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(["cnn.onnx", "o.onnx", "o.onnxq.json", entry["file"]])
    assert read_manifest(out) is not None and _whole(out)
