"""onnxq bench: LatencyStats numbers, interleaving order, provider checks (faked), bad input.

Tests check numbers and behaviour, never timings.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

import tiny_models as tm
from onnxq.bench import LatencyStats, bench, host_info, make_feeds, measure_interleaved, peak_rss_mb
from onnxq.calibration import InputSpec
from onnxq.cli import main
from onnxq.errors import InputError, ProviderError
from onnxq.results import load_results

FAST = dict(warmup=1, runs=5, threads=1)


@pytest.fixture()
def models(tmp_path):
    a = tmp_path / "a.onnx"
    b = tmp_path / "b.onnx"
    tm.mlp(a, seed=0)
    tm.mlp(b, seed=1)
    return a, b


# -- LatencyStats ---------------------------------------------------------------------------


def test_latency_stats_numbers_worked_by_hand():
    st = LatencyStats.from_times([float(i) for i in range(1, 11)], batch=32, warmup=3)
    assert st.median_ms == 5.5
    assert st.mean_ms == 5.5
    assert st.min_ms == 1.0 and st.max_ms == 10.0
    assert st.p90_ms == pytest.approx(9.1)  # linear interpolation: 1 + 0.9 * 9
    assert st.p99_ms == pytest.approx(9.91)
    assert st.std_ms == pytest.approx(np.std(np.arange(1, 11), ddof=1))
    assert st.throughput == pytest.approx(32 * 1000 / 5.5)
    assert (st.runs, st.batch, st.warmup) == (10, 32, 3)
    d = st.to_dict()
    assert all(isinstance(v, (int, float)) for v in d.values()), "numbers, never preformatted strings"
    assert LatencyStats.from_dict(d) == st


def test_latency_stats_single_run_and_empty():
    st = LatencyStats.from_times([2.0], batch=1)
    assert st.std_ms == 0.0 and st.p99_ms == 2.0 and st.throughput == 500.0
    with pytest.raises(ValueError):
        LatencyStats.from_times([], batch=1)


def test_measure_interleaved_rotates_the_order():
    calls: list[int] = []
    fns = [lambda i=i: calls.append(i) for i in range(3)]
    times = measure_interleaved(fns, warmup=1, runs=3)
    assert calls == [0, 1, 2] + [0, 1, 2] + [1, 2, 0] + [2, 0, 1]
    assert [len(t) for t in times] == [3, 3, 3]
    assert all(x >= 0 for t in times for x in t)


def test_measure_interleaved_rejects_bad_counts():
    with pytest.raises(InputError, match="--runs"):
        measure_interleaved([lambda: None], warmup=0, runs=0)
    with pytest.raises(InputError, match="--warmup"):
        measure_interleaved([lambda: None], warmup=-1, runs=1)


# -- inputs ---------------------------------------------------------------------------------


def test_make_feeds_random_and_tiled_data():
    specs = [InputSpec("x", np.float32, ("N", 4)), InputSpec("ids", np.int64, ("N", 3))]
    f = make_feeds(specs, 5)
    assert f["x"].shape == (5, 4) and f["x"].dtype == np.float32
    assert f["ids"].shape == (5, 3) and f["ids"].dtype == np.int64
    data = {"x": np.arange(8, dtype=np.float32).reshape(2, 4), "ids": np.ones((2, 3), np.int64)}
    g = make_feeds(specs, 5, data=data)
    assert g["x"].shape == (5, 4)
    np.testing.assert_array_equal(g["x"][2], data["x"][0])  # tiled


def test_make_feeds_symbolic_dim_needs_data():
    with pytest.raises(InputError, match="--data"):
        make_feeds([InputSpec("x", np.float32, ("N", "seq", 16))], 2)


# -- bench ----------------------------------------------------------------------------------


def test_bench_rows_speedups_and_host_facts(models):
    a, b = models
    res = bench([a, b], "cpu-x86-vnni", batches=[1, 4], **FAST)
    assert [(r.label, r.batch) for r in res.rows] == [("a.onnx", 1), ("b.onnx", 1), ("a.onnx", 4), ("b.onnx", 4)]
    for r in res.rows:
        assert r.latency.runs == 5 and r.latency.warmup == 1
        assert r.latency.min_ms <= r.latency.median_ms <= r.latency.max_ms
        assert r.providers_active == ["CPUExecutionProvider"] and not r.fallback
        assert r.size_bytes == (a if r.label == "a.onnx" else b).stat().st_size
    first = [r for r in res.rows if r.label == "a.onnx"]
    assert all(r.speedup == 1.0 for r in first)
    second = res.rows[1]
    assert second.speedup == pytest.approx(res.rows[0].latency.median_ms / second.latency.median_ms)
    doc = res.to_dict()
    assert doc["schema"] == "onnxq.results/1" and doc["kind"] == "bench" and doc["fallback"] is False
    assert doc["settings"]["intra_op_threads"] == 1 and doc["settings"]["interleaved"] is True
    host = doc["host"]
    for key in ("avx2", "avx512_vnni", "avx_vnni", "amx_int8"):
        assert key in host["isa_flags"]
    assert host["onnxruntime"]["version"] == onnxruntime.__version__
    assert "CPUExecutionProvider" in host["onnxruntime"]["build_providers"]
    assert host["cores"] >= 1
    json.dumps(doc)  # plain JSON types only


def test_same_model_twice_gets_distinct_labels(models):
    a, _ = models
    res = bench([a, a], "cpu-x86-vnni", **FAST)
    assert [r.label for r in res.rows] == ["a.onnx", "a.onnx#2"]


def test_peak_rss_and_host_info():
    rss = peak_rss_mb()
    assert rss is None or rss > 1.0
    h = host_info()
    assert "all_flags" not in h and h["usable_cpus"] >= 1


def test_models_with_different_inputs_are_refused(tmp_path):
    tm.mlp(tmp_path / "m.onnx")
    tm.cnn(tmp_path / "c.onnx")
    with pytest.raises(InputError, match="different inputs"):
        bench([tmp_path / "m.onnx", tmp_path / "c.onnx"], "cpu-x86-vnni", **FAST)
    assert main(["bench", str(tmp_path / "m.onnx"), str(tmp_path / "c.onnx"), "--profile", "cpu-x86-vnni", "-q"]) == 2


def test_fixed_batch_model_refuses_other_batch(tmp_path):
    tm.cnn(tmp_path / "c1.onnx", batch=1)
    with pytest.raises(InputError, match="fixed batch size of 1"):
        bench([tmp_path / "c1.onnx"], "cpu-x86-vnni", batches=[4], **FAST)
    assert bench([tmp_path / "c1.onnx"], "cpu-x86-vnni", batches=[1], **FAST).rows[0].batch == 1


def test_symbolic_sequence_model_needs_data(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "seq", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "seq", 4])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save_model(m, str(tmp_path / "s.onnx"))
    with pytest.raises(InputError, match="symbolic dimension seq"):
        bench([tmp_path / "s.onnx"], "cpu-x86-vnni", **FAST)
    np.savez(tmp_path / "d.npz", x=np.ones((2, 6, 4), np.float32))
    rc = main(["bench", str(tmp_path / "s.onnx"), "--profile", "cpu-x86-vnni", "--data", str(tmp_path / "d.npz"),
               "--runs", "3", "--warmup", "0", "-q", "-o", str(tmp_path / "r.json")])
    assert rc == 0 and load_results(tmp_path / "r.json")["settings"]["inputs"] == "data"


def test_missing_model_file_exit_2(tmp_path):
    assert main(["bench", str(tmp_path / "nope.onnx"), "--profile", "cpu-x86-vnni", "-q"]) == 2


def test_cli_json_and_output_file(models, tmp_path, capsys):
    a, b = models
    out = tmp_path / "res" / "bench.json"
    rc = main(["bench", str(a), str(b), "--profile", "cpu-x86-vnni", "--batch", "1,2", "--threads", "1",
               "--warmup", "1", "--runs", "3", "--json", "-o", str(out)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "bench" and len(doc["rows"]) == 4
    assert load_results(out)["rows"][0]["latency"]["runs"] == 3


def test_cli_table(models, capsys):
    a, b = models
    assert main(["bench", str(a), str(b), "--profile", "cpu-x86-vnni", "--threads", "1", "--warmup", "0", "--runs", "3", "-q"]) == 0
    out = capsys.readouterr().out
    assert "median ms" in out and "a.onnx" in out and "1.00x" in out and "AVX2" in out


def test_cli_bad_batch_is_usage_error(models):
    with pytest.raises(SystemExit) as e:
        main(["bench", str(models[0]), "--batch", "0,x"])
    assert e.value.code == 2


# -- providers: fallback refused unless allowed (faked here; real ones below when present) ----


class _CpuOnlySession(onnxruntime.InferenceSession):
    """Accepts any provider request but runs, and reports, CPU only: a silent fallback."""

    def __init__(self, path, sess_options=None, providers=None, **kw):
        super().__init__(path, sess_options, providers=["CPUExecutionProvider"])


def test_missing_provider_is_refused(models, monkeypatch, tmp_path):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ProviderError, match="CUDAExecutionProvider"):
        bench([models[0]], "cuda", **FAST)
    out = tmp_path / "r.json"
    assert main(["bench", str(models[0]), "--profile", "cuda", "-q", "-o", str(out)]) == 2
    assert not out.exists(), "nothing written on a refused fallback"


def test_inactive_provider_is_refused_then_marked_when_allowed(models, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", _CpuOnlySession)
    with pytest.raises(ProviderError, match="did not activate CUDAExecutionProvider"):
        bench(list(models), "cuda", **FAST)
    res = bench(list(models), "cuda", allow_fallback=True, **FAST)
    assert all(r.fallback and r.providers_active == ["CPUExecutionProvider"] for r in res.rows)
    assert all("FALLBACK" in r.note for r in res.rows)
    doc = res.to_dict()
    assert doc["fallback"] is True and doc["notes"] and "FALLBACK" in doc["notes"][0]
    rc = main(["bench", str(models[0]), "--profile", "cuda", "--allow-fallback", "--runs", "2", "--warmup", "0", "-q"])
    assert rc == 0
    assert "FALLBACK" in capsys.readouterr().out


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in onnxruntime.get_available_providers(), reason="needs the CUDA execution provider")
def test_real_cuda_provider_is_active(models):
    res = bench([models[0]], "cuda", warmup=2, runs=5)
    assert res.rows[0].providers_active[0] == "CUDAExecutionProvider" and not res.rows[0].fallback


@pytest.mark.tensorrt
@pytest.mark.skipif("TensorrtExecutionProvider" not in onnxruntime.get_available_providers(), reason="needs the TensorRT execution provider")
def test_real_tensorrt_provider_is_active(models):
    res = bench([models[0]], "tensorrt", warmup=2, runs=5)
    assert res.rows[0].providers_active[0] == "TensorrtExecutionProvider" and not res.rows[0].fallback
