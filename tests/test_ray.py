"""onnxq compare --executor ray: same report as serial, node facts per row, a dying task, and the refusals before any work.

One simulated two-node cluster (ray.cluster_utils.Cluster, one CPU per node) serves the module; each compare
joins it by address (the probe and ray.init path) and leaves it again. One test starts onnxq's own local instance.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

ray = pytest.importorskip("ray")

import tiny_models as tm  # noqa: E402
from onnxq.cli import main  # noqa: E402
from onnxq.compare import compare  # noqa: E402
from onnxq.results import load_results  # noqa: E402

pytestmark = pytest.mark.ray

VNNI, AVX2, LOCK = "onnxq:profile:cpu-x86-vnni", "onnxq:profile:cpu-x86-avx2", "onnxq:timing"
FAST = dict(batches=[1, 8], warmup=1, runs=3, threads=1)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="oqr")  # short: Ray's socket paths live under it
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_TMPDIR", tmp)  # the cluster's session files and address file, not /tmp/ray
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {VNNI: 1, LOCK: 1}, "include_dashboard": False})
    c.add_node(num_cpus=1, resources={VNNI: 1, AVX2: 1, LOCK: 1})
    c.wait_for_nodes()
    yield c
    c.shutdown()
    mp.undo()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def mlp_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray")
    model = d / "mlp.onnx"
    tm.mlp(model)
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (48, 64)).astype(np.float32)
    labels = np.argmax(onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0], 1)
    labels[:6] = (labels[:6] + 1) % 10  # FP32 accuracy 42/48
    np.savez(d / "eval.npz", x=x, labels=labels)
    np.savez(d / "calib.npz", x=rng.normal(0, 1, (40, 64)).astype(np.float32))
    return d, model


def _kw(case, **extra):
    d, _ = case
    return dict(calib=d / "calib.npz", eval_data=d / "eval.npz", **FAST, **extra)


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _same_rows(serial: dict, other: dict) -> None:
    """Same profiles, variants, statuses, accuracies, metrics and sizes; the same model bytes written."""
    assert [p["profile"] for p in serial["profiles"]] == [p["profile"] for p in other["profiles"]]
    for ps, po in zip(serial["profiles"], other["profiles"]):
        assert [v["name"] for v in ps["variants"]] == [v["name"] for v in po["variants"]]
        for a, b in zip(ps["variants"], po["variants"]):
            assert (a["status"], a.get("stage"), a.get("quality"), a.get("size_bytes")) == \
                (b["status"], b.get("stage"), b.get("quality"), b.get("size_bytes")), a["name"]
            assert a.get("metrics") == b.get("metrics"), a["name"]  # same kernels on the same data: identical
            assert set(a.get("latency", {})) == set(b.get("latency", {})), a["name"]
            if a["kind"] != "fp32":
                assert _sha(a["path"]) == _sha(b["path"]), a["name"]


def _one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_ray_compare_equals_serial_and_says_which_node_ran_what(cluster, mlp_case, tmp_path):
    _, model = mlp_case
    kw = _kw(mlp_case, profiles=["cpu-x86-vnni", "cpu-x86-avx2"], variants=["dynamic", "static-pc-minmax", "fp16"])
    serial = compare(model, outdir=tmp_path / "serial", **kw)
    before = set(Path(tempfile.gettempdir()).glob("onnxq-ray-task-*"))
    doc = compare(model, outdir=tmp_path / "ray", executor="ray", ray_address=cluster.address, **kw)
    _same_rows(serial, doc)
    assert not ray.is_initialized(), "onnxq leaves the cluster it joined"
    nodes = {n["node_id"] for n in doc["executor"]["nodes"]}
    assert len(nodes) == 2 and doc["executor"]["cluster"] == cluster.address and "executor" not in serial
    for prof in doc["profiles"]:
        for v in prof["variants"]:
            assert v["status"] == "ok", v.get("error")
            assert v["ran_on"]["build"]["node_id"] in nodes and v["ran_on"]["latency"]["node_id"] in nodes
            assert {"node_id", "ip", "hostname"} <= set(v["ran_on"]["build"])
            assert v["latency_host"]["hostname"] == v["ran_on"]["latency"]["hostname"]
            assert "cpu_model" in v["latency_host"] and "int8_vs_fp32_gemm" in v["latency_host"]["ceiling"]
            assert v["latency"]["8"]["runs"] == 3
        # one timing task per profile: every variant of a profile timed on the same node
        assert len({v["ran_on"]["latency"]["node_id"] for v in prof["variants"]}) == 1
        (note,) = [n for n in prof["notes"] if n.startswith("Ray: ")]
        assert "built and scored on" in note and "all 4 timed together, interleaved, on" in note
        assert prof["verdict"]["text"]
    avx2 = doc["profiles"][1]["variants"]
    assert {v["ran_on"]["latency"]["node_id"] for v in avx2} <= {n["node_id"] for n in doc["executor"]["nodes"]
                                                                  if AVX2 in n["resources"]}
    # the files and paths are the driver's, as the serial run leaves them
    out = tmp_path / "ray"
    assert load_results(out / "report.json")["profiles"][0]["variants"][2]["path"] == str(out / "cpu-x86-vnni" / "static-pc-minmax.onnx")
    manifest = (out / "cpu-x86-vnni" / "static-pc-minmax.onnxq.json").read_text()
    assert str(out / "cpu-x86-vnni" / "static-pc-minmax.onnx") in manifest and "onnxq-ray-task-" not in manifest
    assert "Ray: fp32" in (out / "report.md").read_text()
    assert not list(out.rglob("*.tmp")) and set(Path(tempfile.gettempdir()).glob("onnxq-ray-task-*")) <= before


def test_ray_rerun_ships_cached_variants_and_times_all_again(cluster, mlp_case, tmp_path):
    _, model = mlp_case
    kw = _kw(mlp_case, profiles=["cpu-x86-vnni"], executor="ray", ray_address=cluster.address, outdir=tmp_path / "o")
    first = compare(model, variants=["dynamic"], **kw)
    more = compare(model, variants=["dynamic", "fp16"], **kw)
    (p1,), (p2,) = first["profiles"], more["profiles"]
    assert [bool(v.get("cached")) for v in p2["variants"]] == [True, True, False]
    assert [v["quality"] for v in p1["variants"]] == [v["quality"] for v in p2["variants"][:2]]
    assert all(v["status"] == "ok" and "8" in v["latency"] and "latency" in v["ran_on"] for v in p2["variants"])
    again = compare(model, variants=["dynamic", "fp16"], **kw)
    (p3,) = again["profiles"]
    assert all(v.get("cached") and "ran_on" not in v for v in p3["variants"]), "nothing new: no task runs"


def test_a_killed_worker_is_a_failed_variant_and_the_others_finish(cluster, mlp_case, tmp_path):
    pytest.importorskip("torch")  # onnxq.qat (which loads the task file) needs it
    crash = tmp_path / "crash_task.py"
    crash.write_text("import os\nimport signal\n\nos.kill(os.getpid(), signal.SIGKILL)  # the worker dies, as in an OOM kill\n")
    _, model = mlp_case
    doc = compare(model, outdir=tmp_path / "o", profiles=["cpu-x86-vnni"], variants=["static-pc-minmax"], task=f"{crash}:TASK",
                  executor="ray", ray_address=cluster.address, **_kw(mlp_case))
    by = {v["name"]: v for v in doc["profiles"][0]["variants"]}
    for name in ("qat", "qat-control"):
        assert by[name]["status"] == "failed" and by[name]["stage"] == "ray", by[name]
        assert "died" in by[name]["error"] and "WorkerCrashedError" in by[name]["error"]
    assert by["fp32"]["status"] == by["static-pc-minmax"]["status"] == "ok"
    assert "8" in by["static-pc-minmax"]["latency"] and by["static-pc-minmax"]["speedup"]["8"] > 0
    assert "Failed: " in doc["profiles"][0]["verdict"]["text"]


def test_qat_trained_on_the_driver_travels_to_the_nodes(cluster, mlp_case, tmp_path, monkeypatch):
    """No MODEL: the task runs here to export FP32 (and QAT for the first profile); those files are scored and timed on the nodes."""
    import types

    _, model = mlp_case

    def run_task(spec, profile, out_path, calibration=None, epochs=None, **kw):
        shutil.copy(model, out_path)  # stands in for a QDQ export: same accuracy as FP32
        return {"model_path": out_path, "fp32_model_path": str(model), "epochs": 1}

    fake = types.ModuleType("onnxq.qat")
    fake.run_task = run_task
    monkeypatch.setitem(sys.modules, "onnxq.qat", fake)  # this process only: the nodes never run the task
    doc = compare(None, outdir=tmp_path / "o", profiles=["cpu-x86-vnni"], variants=["dynamic"], task="pkg:task", executor="ray",
                  ray_address=cluster.address, **_kw(mlp_case))
    by = {v["name"]: v for v in doc["profiles"][0]["variants"]}
    assert by["qat"]["status"] == "ok" and by["qat"]["quality"] == by["fp32"]["quality"] == pytest.approx(42 / 48)
    assert by["qat"]["path"] == str(tmp_path / "o" / "cpu-x86-vnni" / "qat.onnx") and "8" in by["qat"]["latency"]
    assert by["qat"]["ran_on"]["build"]["node_id"] in {n["node_id"] for n in doc["executor"]["nodes"]}
    assert by["qat-control"]["status"] == "failed" and "fp32_control_model_path" in by["qat-control"]["error"]


def _cli(case, out, *extra) -> int:
    d, model = case
    return main(["compare", str(model), "--calib", str(d / "calib.npz"), "--eval", str(d / "eval.npz"), "-o", str(out),
                 "--batch", "1", "--runs", "2", "--warmup", "0", "-q", *extra])


def test_unreachable_address_is_one_line_exit_2_fast(mlp_case, tmp_path, capsys):
    t0 = time.perf_counter()
    assert _cli(mlp_case, tmp_path / "o", "--executor", "ray", "--ray-address", "127.0.0.1:1") == 2
    assert time.perf_counter() - t0 < 5
    assert re.search(r"no Ray cluster answers at 127\.0\.0\.1:1 .*ray start --head", _one_line(capsys))
    # something answers, but it is not Ray: refused in seconds (ray.init there would hang for minutes)
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        t0 = time.perf_counter()
        assert _cli(mlp_case, tmp_path / "o", "--executor", "ray", "--ray-address", f"127.0.0.1:{srv.server_port}") == 2
        assert time.perf_counter() - t0 < 10
    finally:
        srv.shutdown()
    assert "answers, but not as a Ray cluster" in _one_line(capsys)
    assert _cli(mlp_case, tmp_path / "o", "--executor", "ray", "--ray-address", "head-without-port") == 2
    assert "is not HOST:PORT" in _one_line(capsys)
    assert not (tmp_path / "o").exists()


def test_a_profile_no_node_can_run_is_refused_naming_its_resource(cluster, mlp_case, tmp_path, capsys):
    rc = _cli(mlp_case, tmp_path / "o", "--executor", "ray", "--ray-address", cluster.address,
              "--profile", "cpu-x86-vnni", "--profile", "cpu-arm64")
    assert rc == 2
    line = _one_line(capsys)
    assert "'cpu-arm64'" in line and "onnxq:profile:cpu-arm64" in line and "ray start --address" in line
    assert not (tmp_path / "o").exists() and not ray.is_initialized()


def test_without_ray_installed_says_how_to_install_it(mlp_case, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    assert _cli(mlp_case, tmp_path / "o", "--executor", "ray") == 2
    assert "pip install 'onnxq[ray]'" in _one_line(capsys)
    assert _cli(mlp_case, tmp_path / "o", "--ray-address", "127.0.0.1:6379") == 2
    assert "--ray-address needs --executor ray" in _one_line(capsys)
    assert not (tmp_path / "o").exists()


def test_serial_compare_never_imports_ray():
    code = ("import sys, onnxq.cli, onnxq.compare, onnxq.commands.compare\n"
            "onnxq.cli.build_parser()\n"
            "print('ray' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr


def test_local_instance_without_address(mlp_case, tmp_path, capsys, monkeypatch):
    """No --ray-address: onnxq starts Ray here with the resources of the profiles this host can run, then stops it."""
    import onnx

    d, _ = mlp_case
    ext = tmp_path / "ext" / "mlp.onnx"  # weights in an external-data file: it must travel with the model
    ext.parent.mkdir()
    onnx.save(onnx.load(str(mlp_case[1])), str(ext), save_as_external_data=True, location="mlp.onnx.data", size_threshold=0)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    made, real = [], tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    case = (d, ext)
    # a profile this host cannot run is refused before Ray starts, naming the resource it would need
    assert _cli(case, tmp_path / "x", "--executor", "ray", "--profile", "cpu-x86-vnni", "--profile", "cuda") == 2
    line = _one_line(capsys)
    assert "onnxq:profile:cuda" in line and "CUDAExecutionProvider" in line and not ray.is_initialized()
    assert _cli(case, tmp_path / "o", "--executor", "ray", "--profile", "cpu-x86-vnni", "--variants", "static-pc-minmax",
                "--json") == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["executor"]["cluster"] == "local instance started by onnxq" and not ray.is_initialized()
    (node,) = doc["executor"]["nodes"]
    assert node["resources"][VNNI] == 1 and node["resources"][LOCK] == 1 and "onnxq:profile:cuda" not in node["resources"]
    by = {v["name"]: v for v in doc["profiles"][0]["variants"]}
    assert by["fp32"]["status"] == by["static-pc-minmax"]["status"] == "ok", by
    assert by["fp32"]["quality"] == pytest.approx(42 / 48) and by["fp32"]["path"] == str(ext)
    assert by["static-pc-minmax"]["ran_on"]["latency"]["node_id"] == node["node_id"]
    assert made and not any(Path(m).exists() for m in made), "the local instance's temp folder is removed"
