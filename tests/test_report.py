"""onnxq report: schema checks, cross-hardware merge, and running without onnxruntime/torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from onnxq.cli import main
from onnxq.errors import InputError
from onnxq.report import cross_markdown, pareto_front
from onnxq.results import SCHEMA, load_results, new_document, num, to_jsonable, write_results

REPO = Path(__file__).resolve().parents[1]


def _variant(name, kind, quality, speed, med):
    return {
        "name": name, "label": name, "kind": kind, "status": "ok", "quality": quality, "size_bytes": 1000,
        "latency": {"32": {"median_ms": med, "p90_ms": med * 1.1, "p99_ms": med * 1.2, "runs": 30}},
        "speedup": {"32": speed},
    }


def _compare_doc(hostname, profile, speed):
    prof = {
        "profile": profile, "primary_batch": 32, "latency_note": None, "notes": [],
        "variants": [
            _variant("fp32", "fp32", 0.90, 1.0, 10.0),
            _variant("static-pc-minmax", "ptq", 0.898, speed, 10.0 / speed),
            {"name": "static-pc-entropy", "label": "x", "kind": "ptq", "status": "failed", "stage": "build", "error": "boom"},
        ],
        "verdict": {"text": f"verdict for {hostname}", "recommended": "static-pc-minmax", "sentences": []},
    }
    return new_document(
        "compare",
        host={"hostname": hostname, "cpu_model": "CPU " + hostname, "arch": "x86_64", "cores": 2,
              "isa_flags": {"avx2": True, "avx512_vnni": hostname == "cpubox"}, "onnxruntime": {"version": "1.32.0", "build_providers": ["CPUExecutionProvider"]}},
        model={"path": "m.onnx", "sha256": "ab" * 32, "size_bytes": 4000},
        data={"metric": "top1", "metric_label": "top-1 accuracy", "eval": "e.npz", "calib": "c.npz", "eval_samples": 100},
        settings={"batches": [1, 32], "primary_batch": 32, "warmup": 5, "runs": 30, "budget_points": 0.5},
        profiles=[prof],
    )


def _bench_doc():
    lat = {"batch": 1, "runs": 10, "warmup": 2, "median_ms": 1.5, "mean_ms": 1.6, "std_ms": 0.1, "min_ms": 1.4,
           "max_ms": 2.0, "p90_ms": 1.8, "p99_ms": 1.9, "throughput": 666.7}
    row = {"label": "m.onnx", "model": "m.onnx", "batch": 1, "latency": lat, "speedup": 1.0,
           "providers_requested": ["CUDAExecutionProvider", "CPUExecutionProvider"], "providers_active": ["CPUExecutionProvider"],
           "fallback": True, "note": "FALLBACK: requested CUDAExecutionProvider but active CPUExecutionProvider"}
    return new_document("bench", host={"hostname": "gpubox"}, settings={"profile": "cuda"}, rows=[row], fallback=True)


@pytest.fixture()
def results(tmp_path):
    a = write_results(_compare_doc("cpubox", "cpu-x86-vnni", 2.4), tmp_path / "cpu.json")
    b = write_results(_compare_doc("gpubox", "cuda", 3.0), tmp_path / "gpu.json")
    c = write_results(_bench_doc(), tmp_path / "bench.json")
    return a, b, c


def test_json_helpers():
    assert to_jsonable({"a": float("inf"), "b": [float("-inf"), float("nan")], "c": (1, 2)}) == {"a": "inf", "b": ["-inf", "nan"], "c": [1, 2]}
    assert num("inf") == math.inf and num(2) == 2.0 and num(None) is None and num("x") is None and num(True) is None
    assert pareto_front([(1.0, 80.0), (2.0, 90.0), (3.0, 85.0), (0.5, 70.0), (2.0, 95.0)]) == [3, 0, 4]


def test_merge_cross_hardware(results, tmp_path, capsys):
    a, b, c = results
    out = tmp_path / "cross.md"
    assert main(["report", str(a), str(b), str(c), "-o", str(out), "-q"]) == 0
    md = out.read_text()
    assert "cpubox/cpu-x86-vnni" in md and "gpubox/cuda" in md
    assert "2.40x, -0.20 pts" in md and "3.00x, -0.20 pts" in md  # the cross-hardware table
    assert "verdict for cpubox" in md and "verdict for gpubox" in md
    assert "failed" in md and "FALLBACK" in md  # bench row marked
    assert "AVX512-VNNI" in md
    try:
        import matplotlib  # noqa: F401

        assert (tmp_path / "cross.pareto.png").read_bytes()[:4] == b"\x89PNG" and "cross.pareto.png" in md
    except ImportError:
        assert "plot skipped" in md
    assert not list(tmp_path.glob(".*.tmp"))


def test_json_output_can_be_merged_again(results, tmp_path, capsys):
    a, b, _ = results
    assert main(["report", str(a), str(b), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == SCHEMA and doc["kind"] == "report" and len(doc["sources"]) == 2
    merged = tmp_path / "merged.json"
    merged.write_text(json.dumps(doc))
    assert main(["report", str(merged), str(results[2])]) == 0
    text = capsys.readouterr().out
    assert "gpubox/cuda" in text and "Latency (onnxq bench)" in text


def test_different_models_warned(results, tmp_path):
    doc = _compare_doc("other", "cpu-x86-vnni", 2.0)
    doc["model"]["sha256"] = "cd" * 32
    md = cross_markdown([("a", load_results(results[0])), ("b", doc)])
    assert "WARNING: these compare results are for different models" in md


@pytest.mark.parametrize("case", ["schema", "no_schema", "not_json", "missing", "kind", "truncated"])
def test_bad_result_files_exit_2_nothing_written(results, tmp_path, case, capsys):
    bad = tmp_path / "bad.json"
    doc = _compare_doc("x", "cpu-x86-vnni", 2.0)
    if case == "schema":
        doc["schema"] = "onnxq.results/2"
        bad.write_text(json.dumps(doc))
    elif case == "no_schema":
        bad.write_text(json.dumps({"rows": []}))
    elif case == "not_json":
        bad.write_text("{not json")
    elif case == "kind":
        doc["kind"] = "mystery"
        bad.write_text(json.dumps(doc))
    elif case == "truncated":
        del doc["profiles"]
        bad.write_text(json.dumps(doc))
    out = tmp_path / "r.md"
    assert main(["report", str(results[0]), str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnxq: error: ") and err.count("\n") == 1
    if case == "schema":
        assert "'onnxq.results/2'" in err and "'onnxq.results/1'" in err
    assert not out.exists() and not (tmp_path / "r.pareto.png").exists()


def test_load_results_messages(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_results(tmp_path / "nope.json")


def _run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO, timeout=60)


def test_report_cli_runs_without_onnxruntime_or_torch(results, tmp_path):
    """`onnxq report` through the real CLI on a machine with neither onnxruntime nor torch."""
    a, b, c = results
    out = tmp_path / "noheavy.md"
    proc = _run_blocked(
        f"""
        import sys
        for name in ("onnxruntime", "torch"):
            sys.modules[name] = None  # any import of them now raises ImportError
        from onnxq.cli import main
        rc = main(["report", {str(a)!r}, {str(b)!r}, {str(c)!r}, "-o", {str(out)!r}])
        print("RC", rc)
        """
    )
    assert proc.returncode == 0 and "RC 0" in proc.stdout, proc.stdout + proc.stderr
    md = out.read_text()
    assert "gpubox/cuda" in md and "cpubox/cpu-x86-vnni" in md


def test_report_command_needs_no_numpy_or_onnx_either(results, tmp_path):
    """The report verb's own chain (commands/report -> report, results) is standard library + tabulate."""
    a, b, c = results
    out = tmp_path / "bare.md"
    proc = _run_blocked(
        f"""
        import argparse, sys
        for name in ("onnxruntime", "torch", "onnx", "numpy"):
            sys.modules[name] = None
        from onnxq.commands import report
        args = argparse.Namespace(results=[{str(a)!r}, {str(b)!r}, {str(c)!r}], output={str(out)!r}, no_plot=False, metric=None, budget=None,
                                  json=False, quiet=True, verbose=False)
        rc = report.run(args)
        print("RC", rc)
        """
    )
    assert proc.returncode == 0 and "RC 0" in proc.stdout, proc.stdout + proc.stderr
    assert "plot skipped: matplotlib is not installed" in out.read_text()  # matplotlib needs numpy
