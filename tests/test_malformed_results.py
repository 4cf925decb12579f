"""Issue 10, class 10: hand-edited, truncated or hostile result files and manifests are one line, exit 2."""

import copy
import json

import numpy as np
import pytest

import tiny_models
from clitools import refused, run_cli
from onnxq.compare import compare
from onnxq.errors import InputError
from onnxq.manifest import manifest_path, read_manifest


@pytest.fixture(scope="module")
def compare_doc(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    tiny_models.cnn(d / "m.onnx")
    np.savez(d / "c.npz", **tiny_models.cnn_data(48))
    np.savez(d / "e.npz", **tiny_models.cnn_data(32), labels=np.arange(32) % 10)
    return compare(d / "m.onnx", calib=d / "c.npz", eval_data=d / "e.npz", outdir=d / "out", profiles=["cpu-x86-vnni"],
                   variants=["static-pc-minmax", "dynamic"], batches=[1], warmup=0, runs=2, threads=1)


MUTATIONS = {
    "profiles is a string": lambda d: d.__setitem__("profiles", "x"),
    "variants is a string": lambda d: d["profiles"][0].__setitem__("variants", "abc"),
    "a variant is a number": lambda d: d["profiles"][0]["variants"].__setitem__(0, 5),
    "latency is a string": lambda d: d["profiles"][0]["variants"][1].__setitem__("latency", "fast"),
    "settings is a list": lambda d: d.__setitem__("settings", [1]),
    "data is null": lambda d: d.__setitem__("data", None),
    "host is a string": lambda d: d.__setitem__("host", "h"),
    "verdict is a number": lambda d: d["profiles"][0].__setitem__("verdict", 3),
    "metrics hold a list": lambda d: d["profiles"][0]["variants"][1].__setitem__("metrics", [1, 2]),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
@pytest.mark.parametrize("extra", [[], ["--metric", "kl"], ["--budget", "0.1"], ["-o", "OUT"]])
def test_hand_edited_compare_results(tmp_path, capsys, compare_doc, name, extra):
    doc = copy.deepcopy(compare_doc)
    MUTATIONS[name](doc)
    f = tmp_path / "r.json"
    f.write_text(json.dumps(doc))
    argv = ["report", f, *[tmp_path / "o.md" if a == "OUT" else a for a in extra]]
    code, out, err = run_cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    # either the renderer copes with the odd value, or one line names the file; never a traceback
    assert (code == 2 and len(lines) == 1 and str(f) in lines[0]) or (code == 0 and not any("error" in x for x in lines)), err


def test_hostile_json(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    refused(capsys, ["report", deep], "nests its JSON deeper", tmp_path)
    refused(capsys, ["report", tmp_path / "none.json"], "does not exist", tmp_path)
    (tmp_path / "nan.json").write_text('{"schema": "onnxq.results/1", "kind": "bench", "rows": NaN}')
    refused(capsys, ["report", tmp_path / "nan.json"], "lacks key(s) settings", tmp_path)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    refused(capsys, ["report", tmp_path / "bin.json"], "is not readable JSON", tmp_path)
    (tmp_path / "other.json").write_text('{"schema": "onnxq.results/9", "kind": "bench"}')
    refused(capsys, ["report", tmp_path / "other.json"], "uses result schema 'onnxq.results/9'", tmp_path)


def test_manifest_beside_a_model_that_is_garbage_or_stale(tmp_path, capsys):
    tiny_models.cnn(tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **tiny_models.cnn_data(48))
    q = tmp_path / "q.onnx"
    assert run_cli(capsys, "quantize", tmp_path / "m.onnx", "--calib", tmp_path / "c.npz", "--profile", "cpu-x86-vnni", "-q",
                   "-o", q)[0] == 0
    assert read_manifest(q)["kind"] == "quantize"
    manifest_path(q).write_text("[" * 100_000)
    with pytest.raises(InputError, match="unreadable"):
        read_manifest(q)
    # check answers from the model itself (its metadata), so a broken sidecar cannot change or break it
    assert run_cli(capsys, "check", q, "--profile", "cpu-x86-vnni")[0] == 0
    manifest_path(q).write_text(json.dumps({"schema": "onnxq.manifest/2", "output": {"sha256": "0" * 64}}))
    assert read_manifest(q) is None  # another file's manifest: treated as none


def test_bench_runs_zero_is_one_line_before_any_progress_bar(tmp_path, capsys):
    tiny_models.cnn(tmp_path / "m.onnx")
    refused(capsys, ["bench", tmp_path / "m.onnx", "--runs", "0", "--profile", "cpu-x86-vnni"], "--runs must be at least 1", tmp_path)
    refused(capsys, ["bench", tmp_path / "m.onnx", "--warmup", "-1", "--profile", "cpu-x86-vnni"], "--warmup at least 0", tmp_path)
