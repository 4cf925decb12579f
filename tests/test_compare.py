"""onnxq compare (verdict rules on synthetic results, variants, end to end on a tiny MLP) and onnxq eval."""

from __future__ import annotations

import json
import re
import shutil
import sys
import types

import numpy as np
import onnxruntime
import pytest

import tiny_models as tm
from onnxq.cli import main
from onnxq.compare import VARIANTS, compare, plan_variants, verdict
from onnxq.errors import InputError
from onnxq.evaluate import accuracy
from onnxq.profiles import load_profile
from onnxq.results import LatencyStats, load_results
from onnxq.verdict import ProfileResult, VariantResult

FAST = ["--batch", "1,8", "--warmup", "1", "--runs", "3", "--threads", "1", "-q"]


# -- verdict rules on synthetic result dicts --------------------------------------------------


def _v(name, kind, quality, speed=None, med=None, status="ok", label=None, size=1000, error=None):
    d = {"name": name, "kind": kind, "label": label or name, "status": status, "quality": quality, "size_bytes": size}
    if speed is not None:
        d["speedup"] = {"32": speed}
        d["latency"] = {"32": LatencyStats.from_times([med if med is not None else 10.0 / speed], batch=32).to_dict()}
    if error:
        d["error"] = error
    return d


def _prof(*variants, note=None):
    return ProfileResult("p", primary_batch=32, variants=[VariantResult.from_dict(v) for v in variants], latency_note=note)


def test_verdict_ptq_within_budget_says_qat_not_needed():
    p = _prof(
        _v("fp32", "fp32", 0.900, 1.0),
        _v("dynamic", "ptq", 0.880, 1.3),
        _v("static-pc-percentile", "ptq", 0.898, 2.4, label="static per-channel (percentile)"),
    )
    v = verdict(p, budget=0.5)
    assert v["sentences"][0] == "PTQ static per-channel (percentile) is within 0.2 points of FP32 at 2.4x speed: QAT not needed."
    assert v["recommended"] == "static-pc-percentile"
    assert "Fastest within 0.5 points: static per-channel (percentile), 2.4x FP32 at batch 32" in v["text"]


def test_verdict_qat_recovers_points_at_same_latency():
    p = _prof(
        _v("fp32", "fp32", 0.900, 1.0, med=10.0),
        _v("static-pc-minmax", "ptq", 0.862, 2.5, med=4.0, label="static per-channel (minmax)"),
        _v("qat", "qat", 0.893, 2.44, med=4.1, label="QAT"),
    )
    v = verdict(p, budget=0.5)
    assert v["sentences"][0] == "QAT recovers 3.1 of 3.8 points lost by PTQ at the same latency; it is still 0.7 points below FP32."
    assert v["facts"]["qat_recovered_points"] == pytest.approx(3.1)
    assert "no variant within 0.5 points" in v["text"].lower() and v["recommended"] == "fp32"
    v2 = verdict(p, budget=1.0)
    assert v2["sentences"][0].endswith(": use QAT rather than PTQ.") and v2["recommended"] == "qat"


def test_verdict_qat_latency_ratio_and_no_help():
    p = _prof(_v("fp32", "fp32", 0.9, 1.0, med=10.0), _v("s", "ptq", 0.85, 2.0, med=5.0), _v("qat", "qat", 0.88, 1.0, med=10.0))
    assert "at 2.00x the latency of PTQ" in verdict(p)["sentences"][0]
    p = _prof(_v("fp32", "fp32", 0.9, 1.0), _v("s", "ptq", 0.85, 2.0), _v("qat", "qat", 0.84, 2.0))
    assert verdict(p)["sentences"][0] == "QAT does not help: it is 6.0 points below FP32, PTQ s 5.0 points."


def test_verdict_without_qat_suggests_it():
    p = _prof(_v("fp32", "fp32", 0.9, 1.0), _v("static-pt-minmax", "ptq", 0.86, 2.0, label="static per-tensor (minmax)"))
    v = verdict(p, budget=0.5)
    assert v["sentences"][0].startswith("The best PTQ variant (static per-tensor (minmax)) loses 4.0 points")
    assert "try QAT" in v["sentences"][0]


def test_verdict_names_slow_and_failed_variants():
    p = _prof(
        _v("fp32", "fp32", 0.9, 1.0),
        _v("dynamic", "ptq", 0.9, 0.3),
        _v("static-pc-entropy", "ptq", None, status="failed", error="InputError: boom"),
    )
    v = verdict(p, budget=0.5)
    assert "Slower than FP32: dynamic (0.30x)." in v["text"]
    assert "Failed: static-pc-entropy (InputError: boom)." in v["text"]
    assert "keep FP32" in v["text"] and v["recommended"] == "fp32"


def test_verdict_without_latency_uses_accuracy_and_size():
    p = _prof(
        _v("fp32", "fp32", 0.9, size=4000), _v("dynamic", "ptq", 0.899, size=1200), _v("static-pc-minmax", "ptq", 0.9, size=1100),
        note="not measured: provider CUDAExecutionProvider missing",
    )
    v = verdict(p)
    assert v["recommended"] == "static-pc-minmax"
    assert "Latency not measured: provider CUDAExecutionProvider missing" in v["text"]
    assert "at " not in v["sentences"][0].split("FP32")[1]  # no speed claimed


def test_verdict_fp32_failed():
    v = verdict(_prof(_v("fp32", "fp32", None, status="failed", error="bad"), _v("d", "ptq", 0.9, 1.0)))
    assert v["recommended"] is None and v["text"].startswith("No verdict")


def test_verdict_beats_fp32_wording():
    p = _prof(_v("fp32", "fp32", 0.90, 1.0), _v("s", "ptq", 0.91, 2.0))
    assert verdict(p)["sentences"][0] == "PTQ s is 1.0 points above FP32 at 2.0x speed: QAT not needed."


def test_verdict_recommends_nothing_within_the_noise_band():
    # 1.05x FP32 is within the run-to-run noise of a shared CPU: FP32 stays the recommendation
    p = _prof(_v("fp32", "fp32", 0.90, 1.0), _v("fp16", "fp16", 0.90, 1.05), _v("s", "ptq", 0.901, 0.88))
    v = verdict(p, budget=0.5)
    assert v["recommended"] == "fp32"
    assert "measurably faster than FP32 at batch 32 (fastest: fp16, 1.05x; 1.1x needed): keep FP32." in v["text"]
    # a quantized variant within budget that is much smaller is named for when size matters
    p = _prof(_v("fp32", "fp32", 0.90, 1.0, size=4000), _v("qat", "qat", 0.899, 0.31, size=1600, label="QAT"),
              _v("dynamic", "ptq", 0.90, 0.02, size=1500))
    assert "keep FP32, unless size matters: QAT is within 0.5 points at 0.40x its size and 0.31x its speed." in verdict(p)["text"]
    p = _prof(_v("fp32", "fp32", 0.90, 1.0, size=4000), _v("fp16", "fp16", 0.90, 1.02, size=2000),
              _v("s", "ptq", 0.90, 0.97, size=1400), _v("d", "ptq", 0.90, 0.14, size=1300))
    assert "unless size matters: s is within 0.5 points at 0.35x its size and 0.97x its speed." in verdict(p)["text"]
    assert "Slower than FP32: s (0.88x)." in v["text"]
    p = _prof(_v("fp32", "fp32", 0.90, 1.0), _v("s", "ptq", 0.90, 1.12))
    assert verdict(p)["recommended"] == "s"


# -- variants --------------------------------------------------------------------------------


def test_variant_registry_and_profile_modes():
    names = [v.name for v in VARIANTS]
    assert names[0] == "fp32" and "static-pc-percentile" in names and names[-2:] == ["qat", "qat-control"] and len(names) == 13
    assert {"static-default", "static-pt-cle-bc"} <= set(names)
    cpu = [v.name for v in plan_variants(load_profile("cpu-x86-vnni"))]
    assert cpu == names[:-2]
    assert [v.name for v in plan_variants(load_profile("cpu-x86-vnni"), with_qat=True)][-2:] == ["qat", "qat-control"]
    trt = [v.name for v in plan_variants(load_profile("tensorrt"), with_qat=True)]
    assert "dynamic" not in trt and "fp16" in trt and "qat" in trt
    sel = [v.name for v in plan_variants(load_profile("cpu-x86-vnni"), ["static-pc-*", "fp16"])]
    assert sel == ["fp32", "static-pc-minmax", "static-pc-entropy", "static-pc-percentile", "fp16"]
    with pytest.raises(InputError, match="matches no variant"):
        plan_variants(load_profile("cpu-x86-vnni"), ["static-xx"])
    with pytest.raises(InputError, match="--task"):
        plan_variants(load_profile("cpu-x86-vnni"), ["qat"])
    assert next(v for v in VARIANTS if v.name == "static-pt-entropy").label == "static per-tensor (entropy)"


# -- end to end on a tiny MLP ------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    model = d / "mlp.onnx"
    tm.mlp(model)
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (48, 64)).astype(np.float32)
    logits = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    labels = np.argmax(logits, 1)
    labels[:6] = (labels[:6] + 1) % 10  # FP32 accuracy 42/48
    np.savez(d / "eval.npz", x=x, labels=labels)
    np.savez(d / "calib.npz", x=rng.normal(0, 1, (40, 64)).astype(np.float32))
    return d, model


def _run(case, tmp_path, *extra):
    d, model = case
    out = tmp_path / "out"
    rc = main(["compare", str(model), "--calib", str(d / "calib.npz"), "--eval", str(d / "eval.npz"), "-o", str(out), *FAST, *extra])
    return rc, out


def test_compare_end_to_end(mlp_case, tmp_path, capsys):
    rc, out = _run(mlp_case, tmp_path, "--profile", "cpu-x86-vnni", "--variants", "dynamic,static-pc-minmax,fp16")
    assert rc == 0
    printed = capsys.readouterr().out
    assert "verdict:" in printed and "static-pc-minmax" in printed
    doc = load_results(out / "report.json")
    assert doc["kind"] == "compare" and doc["data"]["metric"] == "top1" and doc["data"]["eval_samples"] == 48
    (prof,) = doc["profiles"]
    by = {v["name"]: v for v in prof["variants"]}
    assert list(by) == ["fp32", "dynamic", "static-pc-minmax", "fp16"]
    assert by["fp32"]["quality"] == pytest.approx(42 / 48)
    assert by["fp32"]["metrics"]["accuracy"]["top1"] == pytest.approx(42 / 48)
    for v in by.values():
        assert v["status"] == "ok", v.get("error")
        assert set(v["latency"]) == {"1", "8"} and v["latency"]["8"]["runs"] == 3
        assert isinstance(v["latency"]["1"]["median_ms"], float)
        assert v["metrics"]["fidelity"]["y"]["cosine"] > 0.99
        assert v["size_bytes"] > 0 and v["latency_providers"]["active"] == ["CPUExecutionProvider"]
    assert by["fp32"]["speedup"]["8"] == 1.0
    assert by["static-pc-minmax"]["size_bytes"] < by["fp32"]["size_bytes"]
    assert (out / "cpu-x86-vnni" / "static-pc-minmax.onnx").is_file()
    # the independent check: accuracy of the written int8 model equals the reported one
    data = np.load(mlp_case[0] / "eval.npz")
    s = onnxruntime.InferenceSession(str(out / "cpu-x86-vnni" / "static-pc-minmax.onnx"), providers=["CPUExecutionProvider"])
    acc = accuracy(s.run(None, {"x": data["x"]})[0], data["labels"])
    assert by["static-pc-minmax"]["quality"] == pytest.approx(acc)
    assert prof["verdict"]["text"] and prof["verdict"]["recommended"] in by
    md = (out / "report.md").read_text()
    assert "## Profile `cpu-x86-vnni`" in md and "**Verdict:**" in md and "| static-pc-minmax" in md
    if doc["plot"]:
        assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG" and "![accuracy vs latency" in md
    else:
        assert "plot skipped" in md
    assert not [p for p in out.rglob("*.tmp")], "no temp files left"


def test_failing_variant_does_not_stop_the_others(mlp_case, tmp_path, monkeypatch):
    import onnxq.ptq

    real = onnxq.ptq.quantize

    def flaky(model, **kw):
        if kw.get("method") == "entropy":
            raise RuntimeError("simulated quantizer crash")
        return real(model, **kw)

    monkeypatch.setattr(onnxq.ptq, "quantize", flaky)
    d, model = mlp_case
    doc = compare(model, calib=d / "calib.npz", eval_data=d / "eval.npz", outdir=tmp_path / "o", profiles=["cpu-x86-vnni"],
                  variants=["static-pc-minmax", "static-pc-entropy"], batches=[2], warmup=0, runs=2, threads=1)
    by = {v["name"]: v for v in doc["profiles"][0]["variants"]}
    assert by["static-pc-entropy"]["status"] == "failed" and by["static-pc-entropy"]["stage"] == "build"
    assert by["static-pc-entropy"]["error"] == "RuntimeError: simulated quantizer crash"
    assert by["static-pc-minmax"]["status"] == "ok" and "2" in by["static-pc-minmax"]["latency"]
    assert "Failed: static-pc-entropy" in doc["profiles"][0]["verdict"]["text"]
    assert "FAILED" in (tmp_path / "o" / "report.md").read_text()


def test_qat_absent_is_a_failed_variant(mlp_case, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxq.qat", None)  # import fails as if the module did not exist
    rc, out = _run(mlp_case, tmp_path, "--profile", "cpu-x86-vnni", "--variants", "static-pc-minmax", "--task", "pkg:task")
    assert rc == 0
    by = {v["name"]: v for v in load_results(out / "report.json")["profiles"][0]["variants"]}
    assert by["qat"]["status"] == "failed" and by["qat"]["error"].startswith("QAT variant failed: onnxq.qat is not available")
    assert by["static-pc-minmax"]["status"] == "ok"


def test_qat_contract_with_a_fake_task(mlp_case, tmp_path, monkeypatch):
    calls = []
    d, model = mlp_case

    def run_task(spec, profile, out_path, calibration=None, epochs=None, allow_fallback=False):
        calls.append((spec, profile.name, out_path, calibration, epochs))
        shutil.copy(model, out_path)  # stands in for a QDQ export: same accuracy as FP32
        return {"model_path": out_path, "fp32_model_path": str(model), "epochs": 2}

    fake = types.ModuleType("onnxq.qat")
    fake.run_task = run_task
    monkeypatch.setitem(sys.modules, "onnxq.qat", fake)
    doc = compare(None, calib=d / "calib.npz", eval_data=d / "eval.npz", outdir=tmp_path / "o", profiles=["cpu-x86-vnni"],
                  variants=["static-pt-minmax"], batches=[2], warmup=0, runs=2, threads=1, task="pkg:task", epochs=2)
    assert calls == [("pkg:task", "cpu-x86-vnni", str(tmp_path / "o" / "cpu-x86-vnni" / "qat.onnx"), str(d / "calib.npz"), 2)]
    assert doc["model"]["path"] == str(model)  # FP32 taken from the task when MODEL is omitted
    by = {v["name"]: v for v in doc["profiles"][0]["variants"]}
    assert by["qat"]["status"] == "ok" and by["qat"]["quality"] == pytest.approx(by["fp32"]["quality"])
    assert by["qat"]["qat"]["epochs"] == 2


def test_weight_type_for_ptq_variants_and_report_lines(mlp_case, tmp_path, monkeypatch):
    import onnx

    d, model = mlp_case

    def run_task(spec, profile, out_path, calibration=None, epochs=None, allow_fallback=False):
        shutil.copy(model, out_path)
        return {"model_path": out_path, "fp32_model_path": str(model), "epochs": 1, "lr": 2e-4, "weight_type": "int4",
                "per_channel": True, "step_time_ratio": 1.2, "wall_s": 12.0, "train": {"steps": 7, "loss_per_epoch": [0.1]},
                "accuracy": {"fp32": 0.9, "qat": 0.89}, "qat_module": object()}

    fake = types.ModuleType("onnxq.qat")
    fake.run_task = run_task
    monkeypatch.setitem(sys.modules, "onnxq.qat", fake)
    out = tmp_path / "o"
    doc = compare(None, calib=d / "calib.npz", eval_data=d / "eval.npz", outdir=out, profiles=["cpu-x86-vnni"],
                  variants=["static-pc-minmax", "fp16"], batches=[2], warmup=0, runs=2, threads=1, task="pkg:task",
                  weight_type="int4")
    by = {v["name"]: v for v in doc["profiles"][0]["variants"]}
    assert by["static-pc-minmax"]["status"] == "ok", by["static-pc-minmax"].get("error")
    assert by["static-pc-minmax"]["label"] == "static per-channel (minmax), int4 weights"
    m = onnx.load(str(out / "cpu-x86-vnni" / "static-pc-minmax.onnx"))
    assert {i.data_type for i in m.graph.initializer} & {onnx.TensorProto.INT4}, "int4 weights written"
    assert "weight_type" not in by["fp16"] and doc["settings"]["weight_type"] == "int4"
    assert by["qat"]["qat"]["train"] == {"steps": 7} and by["qat"]["qat"]["accuracy"]["qat"] == 0.89
    assert "qat_module" not in by["qat"]["qat"]
    md = (out / "report.md").read_text()
    assert "- variants: only `static-pc-minmax, fp16` (`--variants`; FP32 and QAT always)" in md
    assert "- PTQ weights: int4 (`--weight-type`" in md
    assert "> 4-bit weights (static-pc-minmax, qat): onnxruntime's CPU provider does not fuse them" in md
    assert "- QAT task: `pkg:task` (exported by the task: the trained network QAT fine-tunes from)" in md
    assert "QAT: 1 epoch(s) (7 steps), lr 0.0002; int4 weights per-channel; training step 1.20x FP32's" in md
    with pytest.raises(InputError, match="--weight-type"):
        compare(model, calib=d / "calib.npz", eval_data=d / "eval.npz", outdir=tmp_path / "x", weight_type="int3")


def test_missing_provider_profile_latency_not_measured(mlp_case, tmp_path):
    rc, out = _run(mlp_case, tmp_path, "--profile", "cpu-x86-vnni", "--profile", "cuda", "--variants", "static-pc-minmax")
    assert rc == 0
    doc = load_results(out / "report.json")
    cpu, cuda = doc["profiles"]
    assert cpu["latency_note"] is None and all("latency" in v for v in cpu["variants"])
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert cuda["latency_note"].startswith("not measured: provider CUDAExecutionProvider missing")
        assert all("latency" not in v and v["eval_providers"]["fallback"] for v in cuda["variants"])
        assert "Latency not measured" in cuda["verdict"]["text"]


def test_allow_fallback_measures_and_marks(mlp_case, tmp_path, monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    d, model = mlp_case
    doc = compare(model, calib=d / "calib.npz", eval_data=d / "eval.npz", outdir=tmp_path / "o", profiles=["cuda"],
                  variants=["static-pc-minmax"], batches=[2], warmup=0, runs=2, threads=1, allow_fallback=True)
    (prof,) = doc["profiles"]
    assert prof["providers_missing"] == ["CUDAExecutionProvider"] and prof["latency_note"] is None
    for v in prof["variants"]:
        assert v["latency_providers"]["fallback"] and v["eval_providers"]["fallback"] and "2" in v["latency"]
    md = (tmp_path / "o" / "report.md").read_text()
    assert md.count("FALLBACK") >= 3


# -- bad input: exit 2 and nothing written ----------------------------------------------------


@pytest.mark.parametrize(
    "case",
    ["wrong_keys", "wrong_shape", "labels_range", "labels_count", "no_provider", "bad_metric", "missing_calib_key",
     "no_model", "bad_variant", "negative_threads"],
)
def test_compare_bad_input_exit_2_nothing_written(mlp_case, tmp_path, case, monkeypatch):
    d, model = mlp_case
    x = np.load(d / "eval.npz")["x"]
    labels = np.load(d / "eval.npz")["labels"]
    ev, cal = d / "eval.npz", d / "calib.npz"
    prof = ["--profile", "cpu-x86-vnni"]
    extra: list[str] = []
    if case == "wrong_keys":
        ev = tmp_path / "e.npz"
        np.savez(ev, input=x, labels=labels)
    elif case == "wrong_shape":
        ev = tmp_path / "e.npz"
        np.savez(ev, x=x[:, :32], labels=labels)
    elif case == "labels_range":
        ev = tmp_path / "e.npz"
        np.savez(ev, x=x, labels=labels + 10)
    elif case == "labels_count":
        ev = tmp_path / "e.npz"
        np.savez(ev, x=x, labels=labels[:5])
    elif case == "no_provider":
        prof = ["--profile", "cuda"]
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    elif case == "bad_metric":
        ev = tmp_path / "e.npz"
        np.savez(ev, x=x)
        extra = ["--metric", "top1"]
    elif case == "missing_calib_key":
        cal = tmp_path / "c.npz"
        np.savez(cal, input=x)
    elif case == "bad_variant":
        extra = ["--variants", "static-pc-nope"]
    elif case == "negative_threads":
        extra = ["--threads", "-1"]
    out = tmp_path / "out"
    margs = [] if case == "no_model" else [str(model)]
    rc = main(["compare", *margs, "--calib", str(cal), "--eval", str(ev), "-o", str(out), *prof, *FAST, *extra])
    assert rc == 2
    assert not out.exists()


# -- onnxq eval -----------------------------------------------------------------------------------


def test_eval_accuracy_and_fidelity(mlp_case, tmp_path, capsys):
    d, model = mlp_case
    q = tmp_path / "q.onnx"
    import onnxq

    onnxq.quantize(model, mode="dynamic", profile="cpu-x86-vnni", calibration=d / "calib.npz", output=q, progress=False)
    out = tmp_path / "ev.json"
    assert main(["eval", str(q), "--data", str(d / "eval.npz"), "--ref", str(model), "--profile", "cpu-x86-vnni",
                 "--json", "-q", "-o", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    data = np.load(d / "eval.npz")
    s = onnxruntime.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    logits = s.run(None, {"x": data["x"]})[0]
    assert doc["metrics"]["accuracy"]["top1"] == pytest.approx(accuracy(logits, data["labels"]))
    assert doc["metrics"]["accuracy"]["top5"] == pytest.approx(accuracy(logits, data["labels"], 5))
    f = doc["metrics"]["fidelity"]["y"]
    assert 0.99 < f["cosine"] <= 1.0 and f["mse"] >= 0 and 0 <= f["top1_agreement"] <= 1
    assert doc["headline"] == {"metric": "top1", "value": doc["metrics"]["accuracy"]["top1"]}
    assert load_results(out)["kind"] == "eval"
    assert main(["eval", str(q), "--data", str(d / "eval.npz"), "--ref", str(model), "--metric", "mse", "--profile", "cpu-x86-vnni", "-q"]) == 0
    assert "--metric mse" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["wrong_keys", "labels_range", "top1_without_labels", "nothing", "ref_inputs_differ", "float_labels"])
def test_eval_bad_input_exit_2(mlp_case, tmp_path, case):
    d, model = mlp_case
    x = np.load(d / "eval.npz")["x"]
    labels = np.load(d / "eval.npz")["labels"]
    ev = tmp_path / "e.npz"
    args = []
    if case == "wrong_keys":
        np.savez(ev, x=x, label=labels)  # misspelt labels key: an error, not a silent fidelity-only run
    elif case == "labels_range":
        np.savez(ev, x=x, labels=-labels - 1)
    elif case == "top1_without_labels":
        np.savez(ev, x=x)
        args = ["--metric", "top1", "--ref", str(model)]
    elif case == "nothing":
        np.savez(ev, x=x)
    elif case == "ref_inputs_differ":
        np.savez(ev, x=x, labels=labels)
        tm.cnn(tmp_path / "c.onnx")
        args = ["--ref", str(tmp_path / "c.onnx")]
    elif case == "float_labels":
        np.savez(ev, x=x, labels=labels + 0.5)
    out = tmp_path / "r.json"
    assert main(["eval", str(model), "--data", str(ev), "--profile", "cpu-x86-vnni", "-q", "-o", str(out), *args]) == 2
    assert not out.exists()


# -- quality without labels, the judged output, the cache, the QAT control -------------------------------------------


def test_verdict_without_labels_never_proposes_qat_without_saying_it_needs_labels():
    p = _prof(_v("fp32", "fp32", 0.0, 1.0), _v("static-pc-minmax", "ptq", 0.08, 2.0, label="static per-channel (minmax)"))
    v = verdict(p, budget=0.05, metric="kl")
    assert v["sentences"][0].startswith("The best PTQ variant (static per-channel (minmax)) misses the budget: KL 0.0800 (KL <= 0.05).")
    assert "QAT needs labels (or a distillation setup)" in v["text"] and "--target kl=0.05" in v["text"]
    assert v["recommended"] == "fp32"
    ok = _prof(_v("fp32", "fp32", 0.0, 1.0), _v("s", "ptq", 0.01, 2.0))
    v = verdict(ok, budget=0.05, metric="kl")
    assert v["sentences"][0] == "PTQ s is within the budget (KL 0.0100; KL <= 0.05) at 2.0x speed: QAT not needed."
    assert v["recommended"] == "s" and "Fastest within the budget (KL <= 0.05): s, 2.0x FP32" in v["text"]
    cos = _prof(_v("fp32", "fp32", 1.0, 1.0), _v("s", "ptq", 0.993, 1.8), _v("d", "ptq", 0.97, 2.5))
    v = verdict(cos, budget=0.99, metric="cosine")
    assert v["recommended"] == "s" and "cosine 0.9930" in v["text"]


def test_verdict_separates_training_gain_from_quantization_gap():
    p = _prof(_v("fp32", "fp32", 0.9241, 1.0), _v("s", "ptq", 0.9200, 2.0), _v("qat", "qat", 0.9463, 2.0, label="QAT"),
              _v("qat-control", "fp32-control", 0.9480, 1.0, label="FP32 control"))
    v = verdict(p, budget=0.5)
    assert v["sentences"][0].startswith("PTQ s is within 0.4 points of FP32")
    assert ("Against its FP32 control (fine-tuned for the same steps): QAT's quantization gap is 0.2 points (QAT below its "
            "control); the training itself moved FP32 by +2.4 points, so QAT's +2.2 points over the original FP32 are training, "
            "not quantization.") in v["text"]
    assert v["facts"]["training_gain_points"] == pytest.approx(2.39) and v["recommended"] != "qat-control"
    # QAT above its control (the Fashion example: 90.03 vs 89.94): said as such, not as a negative gap
    p = _prof(_v("fp32", "fp32", 0.9005, 1.0), _v("s", "ptq", 0.9013, 1.0), _v("qat", "qat", 0.9003, 1.0, label="QAT"),
              _v("qat-control", "fp32-control", 0.8994, 1.0, label="FP32 control"))
    v = verdict(p, budget=0.5)
    assert "QAT is 0.1 points above its control (no quantization gap); the training itself moved FP32 by -0.1 points." in v["text"]
    assert v["facts"]["qat_quantization_gap_points"] == pytest.approx(-0.09)


def test_compare_without_labels_judges_by_kl_and_names_the_output(mlp_case, tmp_path, capsys):
    d, model = mlp_case
    np.savez(tmp_path / "unlabelled.npz", x=np.load(d / "eval.npz")["x"])
    rc = main(["compare", str(model), "--calib", str(d / "calib.npz"), "--eval", str(tmp_path / "unlabelled.npz"),
               "-o", str(tmp_path / "o"), "--profile", "cpu-x86-vnni", "--variants", "static-pc-minmax", *FAST])
    assert rc == 0
    doc = load_results(tmp_path / "o" / "report.json")
    assert doc["data"]["metric"] == "kl" and doc["data"]["output"] == "y"
    assert doc["settings"]["budget"] == {"metric": "kl", "value": 0.005, "text": "KL <= 0.005"}
    by = {v["name"]: v for v in doc["profiles"][0]["variants"]}
    assert by["fp32"]["quality"] == 0.0 and by["static-pc-minmax"]["quality"] > 0.0
    assert "budget for the verdict: KL <= 0.005" in (tmp_path / "o" / "report.md").read_text()


def _as_embedding(src, dst):
    """The MLP with its (N, 10) output renamed 'sentence_embedding': the shape of logits, the name of an embedding."""
    import onnx

    m = onnx.load(str(src))
    old = m.graph.output[0].name
    for n in m.graph.node:
        n.output[:] = ["sentence_embedding" if o == old else o for o in n.output]
    m.graph.output[0].name = "sentence_embedding"
    onnx.save(m, str(dst))
    return dst


def test_an_embedding_is_judged_by_cosine_and_kl_on_it_is_refused(mlp_case, tmp_path, capsys):
    d, model = mlp_case
    emb = _as_embedding(model, tmp_path / "emb.onnx")
    np.savez(tmp_path / "unlabelled.npz", x=np.load(d / "eval.npz")["x"])
    args = ["compare", str(emb), "--calib", str(d / "calib.npz"), "--eval", str(tmp_path / "unlabelled.npz"),
            "--profile", "cpu-x86-vnni", "--variants", "static-pc-minmax", *FAST]
    assert main([*args, "-o", str(tmp_path / "o")]) == 0
    doc = load_results(tmp_path / "o" / "report.json")
    assert doc["data"]["output"] == "sentence_embedding" and doc["data"]["metric"] == "cosine"
    assert doc["settings"]["budget"]["text"] == "cosine >= 0.995"
    capsys.readouterr()
    for metric in ("kl", "agreement"):
        assert main([*args, "-o", str(tmp_path / metric), "--metric", metric]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--metric {metric} compares class probabilities, and output 'sentence_embedding' is an embedding" in err[0]
        assert not (tmp_path / metric).exists()
    # and report cannot re-derive a KL verdict on it either
    assert main(["report", str(tmp_path / "o" / "report.json"), "--metric", "kl", "--budget", "0.01"]) == 2
    assert "is an embedding" in capsys.readouterr().err


def test_a_rerun_with_another_metric_rescores_instead_of_reusing_the_old_numbers(mlp_case, tmp_path, capsys):
    args = ["--profile", "cpu-x86-vnni", "--variants", "static-pc-minmax"]
    for metric in (["--metric", "kl"], [], ["--metric", "cosine"]):  # kl, then top1 (labels), then cosine: never stale
        rc, out = _run(mlp_case, tmp_path, *args, *metric)
        assert rc == 0
        doc = load_results(out / "report.json")
        by = {v["name"]: v for v in doc["profiles"][0]["variants"]}
        want = {"kl": 0.0, "top1": 42 / 48, "cosine": 1.0}[doc["data"]["metric"]]
        assert by["fp32"]["quality"] == pytest.approx(want) and not by["fp32"].get("cached")


def test_cle_variant_is_left_out_on_a_model_without_conv(mlp_case, tmp_path, capsys):
    d, model = mlp_case
    kw = dict(calib=d / "calib.npz", eval_data=d / "eval.npz", profiles=["cpu-x86-vnni"], batches=[2], warmup=0, runs=2, threads=1)
    said = []
    doc = compare(model, variants=["static-pc-minmax", "static-pt-*"], outdir=tmp_path / "a", log=said.append, **kw)
    names = [v["name"] for v in doc["profiles"][0]["variants"]]
    assert "static-pt-cle-bc" not in names and "static-pt-minmax" in names
    assert any("static-pt-cle-bc left out: the model has no Conv" in m for m in said)
    named = compare(model, variants=["static-pt-cle-bc"], outdir=tmp_path / "b", **kw)  # asked for by name: tried, fails clearly
    (cle,) = [v for v in named["profiles"][0]["variants"] if v["name"] == "static-pt-cle-bc"]
    assert cle["status"] == "failed" and "has no Conv" in cle["error"]


@pytest.mark.parametrize("extra, match", [
    (["--output-name", "nope"], r"the model has no output 'nope'; its outputs are \['y'\]"),
    (["--metric", "top1", "--labels", "nolabels"], "nolabels"),
])
def test_compare_output_and_metric_bad_input(mlp_case, tmp_path, capsys, extra, match):
    rc, out = _run(mlp_case, tmp_path, "--profile", "cpu-x86-vnni", "--variants", "static-pc-minmax", *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and re.search(match, err[0]), err
    assert not out.exists()


def test_compare_reuses_its_cache_and_refuses_another_models_folder(mlp_case, tmp_path, capsys):
    d, model = mlp_case
    kw = dict(calib=d / "calib.npz", eval_data=d / "eval.npz", outdir=tmp_path / "o", profiles=["cpu-x86-vnni"],
              batches=[2], warmup=0, runs=2, threads=1)
    first = compare(model, variants=["static-pc-minmax", "dynamic"], **kw)
    again = compare(model, variants=["static-pc-minmax", "dynamic"], **kw)
    (p1,), (p2,) = first["profiles"], again["profiles"]
    assert all(v.get("cached") for v in p2["variants"]) and "3 of 3 variants reused" in " ".join(p2["notes"])
    assert [v["quality"] for v in p1["variants"]] == [v["quality"] for v in p2["variants"]]
    more = compare(model, variants=["static-pc-minmax", "dynamic", "fp16"], **kw)
    (p3,) = more["profiles"]
    assert [bool(v.get("cached")) for v in p3["variants"]] == [True, True, True, False]
    assert all("2" in v["latency"] for v in p3["variants"])  # everything timed again together
    other = tmp_path / "other.onnx"
    tm.mlp(other, seed=7)
    with pytest.raises(InputError, match="holds a compare of another model"):
        compare(other, variants=["dynamic"], **kw)
    assert compare(other, variants=["dynamic"], fresh=True, **kw)["profiles"][0]["variants"][1]["status"] == "ok"


def test_report_rederives_verdicts_with_another_budget_without_rerunning(mlp_case, tmp_path, capsys):
    import time

    d, model = mlp_case
    compare(model, calib=d / "calib.npz", eval_data=d / "eval.npz", outdir=tmp_path / "o", profiles=["cpu-x86-vnni"],
            variants=["static-pc-minmax", "dynamic"], batches=[2], warmup=0, runs=2, threads=1)
    t0 = time.perf_counter()
    assert main(["report", str(tmp_path / "o" / "report.json"), "--metric", "kl", "--budget", "0.5", "--json", "-q"]) == 0
    took = time.perf_counter() - t0
    doc = json.loads(capsys.readouterr().out)
    (prof,) = doc["sources"][0]["doc"]["profiles"]
    assert doc["sources"][0]["doc"]["data"]["metric"] == "kl" and prof["verdict"]["facts"]["budget"]["text"] == "KL <= 0.5"
    assert all(v["quality"] >= 0 for v in prof["variants"]) and took < 5
    assert main(["report", str(tmp_path / "o" / "report.json"), "--metric", "top5", "-q"]) == 0  # labels, 10 classes
    np.savez(tmp_path / "u.npz", x=np.load(d / "eval.npz")["x"])
    compare(model, calib=d / "calib.npz", eval_data=tmp_path / "u.npz", outdir=tmp_path / "u", profiles=["cpu-x86-vnni"],
            variants=["dynamic"], batches=[2], warmup=0, runs=2, threads=1)
    capsys.readouterr()
    assert main(["report", str(tmp_path / "u" / "report.json"), "--metric", "top1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot re-derive the verdict by top1" in err[0] and "needs labels" in err[0]
