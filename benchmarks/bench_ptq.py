#!/usr/bin/env python
"""PTQ benchmark: latency of FP32 vs static INT8 (onnxq, profile cpu-x86-vnni) vs dynamic INT8,
Fashion-MNIST accuracy, and the cost of quantizing (onnxq vs onnxruntime's quantize_static).

    python benchmarks/bench_ptq.py                      # everything (~8-10 min on 2 cores)
    python benchmarks/bench_ptq.py --sections latency   # latency, accuracy, cost (comma list)

Latency: one process, one onnxruntime session per variant (CPU provider, intra_op_num_threads=1,
graph optimisation "all"); the variants run interleaved (FP32, static, dynamic, FP32, ... with the
order rotated every round), so drift and neighbours' load hit every variant alike.
Cost: every quantization runs in its own child process, which reads its own VmHWM.
Writes benchmarks/results/ptq.json (raw numbers) and ptq.md (tables).
"""

from __future__ import annotations

import dataclasses
import argparse
import collections
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models as M  # noqa: E402
from onnxq.results import to_jsonable  # noqa: E402  strict JSON: inf/NaN as strings, as onnxq's results files

RESULTS = Path(__file__).resolve().parent / "results"
# the static variant that differs from the profile in MatMul/Gemm output quantization (see _models.py)
ALT, ALT_DESC = "static_alt", ""
CAL = 256  # calibration samples (the profile default); +32 held out for onnxq's own fidelity check


# ---------------------------------------------------------------------------------------------
# helpers


def cpu_info() -> dict:
    info = {"machine": platform.machine(), "python": platform.python_version(), "cores": os.cpu_count()}
    try:
        txt = Path("/proc/cpuinfo").read_text()
        for line in txt.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = set(next(ln for ln in txt.splitlines() if ln.startswith("flags")).split(":", 1)[1].split())
        info["int8_flags"] = sorted(f for f in flags if f in {"avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "avx512f", "avx2"})
    except (OSError, StopIteration):
        pass
    import onnx
    import onnxruntime
    import torch

    from choose_defaults import git_state

    info["onnxq_checkout"] = git_state()
    info.update(onnxruntime=onnxruntime.__version__, onnx=onnx.__version__, torch=torch.__version__, numpy=np.__version__)
    return info


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def session(path, threads: int = 1, optimized: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def optimized_ops(path: Path) -> dict[str, int]:
    """Op counts of the graph onnxruntime actually runs (after its optimisations and fusions)."""
    import onnx

    opt = M.cache_dir() / "optimized" / (Path(path).stem + ".opt.onnx")
    opt.parent.mkdir(exist_ok=True)
    session(path, optimized=str(opt))
    return dict(collections.Counter(n.op_type for n in onnx.load(str(opt)).graph.node).most_common())


def fused_summary(ops: dict[str, int]) -> str:
    q = sum(v for k, v in ops.items() if k.startswith("QLinear") or k in ("QGemm", "QAttention"))
    integer = sum(v for k, v in ops.items() if k in ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"))
    float_compute = sum(v for k, v in ops.items() if k in ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul"))
    qdq = ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0)
    return f"{q} QLinear*/QGemm, {integer} *Integer, {float_compute} float Conv/Gemm/MatMul, {qdq} Q/DQ left"


def fmt(x, nd=2):
    return "—" if x is None else f"{x:.{nd}f}"


# ---------------------------------------------------------------------------------------------
# models for latency


def latency_models() -> list[dict]:
    fx, _ = M.fashion_mnist("train")
    rng = np.random.default_rng(0)
    sel = rng.choice(len(fx), CAL + 64, replace=False)
    return [
        dict(name="mobilenet_v2_96", family="conv", path=M.mobilenet_v2_onnx(96),
             data=lambda: {"input": M.photo_crops_cached(CAL + 64, 96, "imagenet", seed=2)},
             note="MobileNetV2 (torchvision layout), random init + BN re-estimated, 3x96x96"),
        dict(name="resnet18_96", family="conv", path=M.resnet18_onnx(96),
             data=lambda: {"input": M.photo_crops_cached(CAL + 64, 96, "imagenet", seed=2)},
             note="ResNet-18 (torchvision layout), random init + BN re-estimated, 3x96x96"),
        dict(name="fashion_cnn", family="conv", path=M.fashion_cnn_onnx(),
             data=lambda: {"input": fx[sel]}, note="4-conv CNN (16-64 channels) trained here on Fashion-MNIST, 1x28x28"),
        dict(name="fashion_cnn_wide", family="conv", path=M.fashion_cnn_wide_onnx(),
             data=lambda: {"input": fx[sel]}, note="5-conv CNN (32-128 channels), random init + BN re-estimated, 1x28x28"),
        dict(name="mlp_784x2048x3", family="linear", path=M.mlp_onnx(),
             data=lambda: {"input": fx[sel].reshape(len(sel), -1)}, note="MLP 784-2048-2048-2048-10, random init"),
        dict(name="tiny_transformer", family="linear", path=M.tiny_transformer_onnx(),
             data=lambda: {"input": rng.standard_normal((CAL + 64, 64, 256)).astype(np.float32)},
             note="4-layer pre-LN encoder d=256 ff=1024, 64 tokens, random init"),
    ]


def quantize_variants(spec: dict) -> dict[str, dict]:
    import onnxq

    data = spec["data"]()
    calib = M.cache_dir() / f"calib_{spec['name']}.npz"
    np.savez(calib, **{k: v[: CAL + 32] for k, v in data.items()})
    spec["bench_inputs"] = {k: v[-32:] for k, v in data.items()}  # not used for calibration
    out = {"fp32": {"path": spec["path"]}}
    import dataclasses

    prof = onnxq.load_profile("cpu-x86-vnni")
    alt_label, _, alt_extra = M.output_quant_variant(prof)
    alt = dataclasses.replace(prof, quant=dataclasses.replace(
        prof.quant, layout=dataclasses.replace(prof.quant.layout, **alt_extra)))
    variants = [("static", "static", prof), ("dynamic", "dynamic", prof)]
    if spec["family"] == "linear":  # float vs quantized MatMul/Gemm outputs matters for MatMul/Gemm models
        variants.append((alt_label, "static", alt))
    for label, mode, pr in variants:
        q = M.cache_dir() / f"{spec['name']}.{label}.onnx"
        t0 = time.perf_counter()
        r = onnxq.quantize(spec["path"], mode=mode, profile=pr, calibration=str(calib), output=str(q), progress=False)
        out[label] = {"path": q, "quantize_s": time.perf_counter() - t0, "fidelity": r.fidelity, "op_types": r.op_types,
                     "warnings": r.warnings, "size_mb": r.size_after / 2**20,
                      "quantized_nodes": r.quantized_nodes}
    out["fp32"]["size_mb"] = Path(spec["path"]).stat().st_size / 2**20
    return out


def time_interleaved(sessions: dict, inputs: dict, budget_s: float, min_rounds: int = 7, max_rounds: int = 400) -> dict:
    names = list(sessions)
    for _ in range(2):  # warm-up
        for n in names:
            sessions[n].run(None, inputs)
    t = {}
    for n in names:
        t0 = time.perf_counter()
        sessions[n].run(None, inputs)
        t[n] = time.perf_counter() - t0
    rounds = int(min(max_rounds, max(min_rounds, budget_s / max(sum(t.values()), 1e-6))))
    samples = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            sessions[n].run(None, inputs)
            samples[n].append(time.perf_counter() - t0)
    res = {}
    for n, s in samples.items():
        s = np.array(s) * 1000
        res[n] = {"median_ms": float(np.median(s)), "p10_ms": float(np.percentile(s, 10)), "p90_ms": float(np.percentile(s, 90)),
                  "min_ms": float(s.min()), "runs": len(s)}
    return res


def section_latency(args) -> dict:
    out = {"models": {}}
    for spec in latency_models():
        if args.models and spec["name"] not in args.models:
            continue
        M.log(f"latency: quantizing {spec['name']} (static + dynamic via onnxq)")
        variants = quantize_variants(spec)
        graphs = {v: optimized_ops(d["path"]) for v, d in variants.items()}
        sess = {v: session(d["path"]) for v, d in variants.items()}
        entry = {"note": spec["note"], "family": spec["family"], "batches": {}, "optimized_ops": graphs,
                 "fused": {v: fused_summary(g) for v, g in graphs.items()},
                 "size_mb": {v: d["size_mb"] for v, d in variants.items()},
                 "fidelity": {v: d.get("fidelity") for v, d in variants.items() if v != "fp32"},
                 "quantize_s": {v: d.get("quantize_s") for v, d in variants.items() if v != "fp32"},
                 "quantized_nodes": {v: d.get("quantized_nodes") for v, d in variants.items() if v != "fp32"},
                 "op_types": {v: d.get("op_types") for v, d in variants.items() if v != "fp32"},
                 "warnings": {v: d.get("warnings") for v, d in variants.items() if v != "fp32"}}
        for b in (1, 32):
            inputs = {k: v[:b] for k, v in spec["bench_inputs"].items()}
            la = loadavg()
            t = time_interleaved(sess, inputs, args.budget)
            fp = t["fp32"]["median_ms"]
            for v in t:
                t[v]["speedup_vs_fp32"] = fp / t[v]["median_ms"]
            t["loadavg_before"] = la
            entry["batches"][str(b)] = t
            M.log(f"  {spec['name']} batch {b}: " + ", ".join(f"{v} {t[v]['median_ms']:.2f} ms ({t[v]['speedup_vs_fp32']:.2f}x)" for v in sess)
                  + f"  [{t['fp32']['runs']} rounds, load {la[0]}]")
        out["models"][spec["name"]] = entry
        del sess
    return out


def section_accuracy(args) -> dict:
    import onnxq

    M.log("accuracy: Fashion-MNIST test set, FP32 vs static INT8 vs dynamic INT8")
    fp = M.fashion_cnn_onnx()
    xt, yt = M.fashion_mnist("test")
    xtr, _ = M.fashion_mnist("train")
    sel = np.random.default_rng(1).choice(len(xtr), CAL + 32, replace=False)
    calib = M.cache_dir() / "calib_fashion_train.npz"
    np.savez(calib, input=xtr[sel])
    res = {"calibration": f"{CAL} random Fashion-MNIST training images (+32 held out by onnxq)", "test_samples": int(len(xt))}
    paths = {"fp32": fp}
    for mode in ("static", "dynamic"):
        q = M.cache_dir() / f"fashion_cnn.acc.{mode}.onnx"
        onnxq.quantize(fp, mode=mode, profile="cpu-x86-vnni", calibration=str(calib), output=str(q), progress=False)
        paths[mode] = q
    logits = {}
    for v, p in paths.items():
        s = session(p, threads=2)
        logits[v] = np.concatenate([s.run(None, {"input": xt[i: i + 500]})[0] for i in range(0, len(xt), 500)])
        res[v] = {"accuracy_pct": 100.0 * float(np.mean(logits[v].argmax(1) == yt))}
        if v != "fp32":
            res[v]["agreement_pct"] = 100.0 * float(np.mean(logits[v].argmax(1) == logits["fp32"].argmax(1)))
            res[v]["delta_points"] = res[v]["accuracy_pct"] - res["fp32"]["accuracy_pct"]
    M.log("  " + ", ".join(f"{v} {res[v]['accuracy_pct']:.2f}%" for v in paths))
    return res


# ---------------------------------------------------------------------------------------------
# cost of quantizing


def cost_data(name: str, n: int) -> tuple[Path, Path]:
    """(model, calibration npz with n + 32 samples) for the cost runs."""
    if name == "fashion_cnn":
        x, _ = M.fashion_mnist("train")
        path = M.cache_dir() / f"cost_fashion_{n}.npz"
        if not path.exists():
            np.savez(path, input=x[np.random.default_rng(2).choice(len(x), n + 32, replace=False)])
        return M.fashion_cnn_onnx(), path
    path = M.cache_dir() / f"cost_mobilenet_{n}.npz"
    if not path.exists():
        np.savez(path, input=M.photo_crops_cached(2048 + 32, 96, "imagenet", seed=3)[: n + 32])
    return M.mobilenet_v2_onnx(96), path


def job(kind: str, model: str, method: str, n: int, preprocess: bool = False, tag: str = "") -> dict:
    mpath, calib = cost_data(model, n)
    out = M.cache_dir() / "cost" / f"{model}.{kind}.{method}.{n}{'.pre' if preprocess else ''}{tag}.onnx"
    out.parent.mkdir(exist_ok=True)
    spec = dict(kind=kind, model=str(mpath), output=str(out), calib=str(calib), samples=n, method=method,
                per_channel=True, preprocess=preprocess)
    r = M.run_job(spec)
    r.update(kind=kind, model=model, method=method, samples=n, preprocess=preprocess)
    status = f"{r['wall_s']:.1f}s, peak {r['peak_rss_mb']:.0f} MB" if r.get("ok") else "FAILED " + r.get("error", "")
    M.log(f"  {kind:5s} {model} {method} n={n}{' +preprocess' if preprocess else ''}: {status}")
    return r


def section_cost(args) -> dict:
    M.log("cost: wall time and peak RSS (VmHWM in the child), onnxq vs onnxruntime quantize_static")
    res = {"time": [], "growth": []}
    # 1. same settings, same samples; each pair twice, alternating, best-of-2 against others' load
    pairs = [("minmax", "MinMax"), ("entropy", "Entropy"), ("percentile", "Percentile")]
    for model in ("fashion_cnn", "mobilenet_v2_96"):
        for oname, rname in pairs:
            runs = {"onnxq": [], "ort": [], "ort+pre": []}
            for _ in range(args.repeats):
                runs["onnxq"].append(job("onnxq", model, oname, CAL))
                runs["ort"].append(job("ort", model, rname, CAL))
                if oname == "minmax":
                    runs["ort+pre"].append(job("ort", model, rname, CAL, preprocess=True))
            row = {"model": model, "method": oname, "samples": CAL}
            for k, rs in runs.items():
                ok = [r for r in rs if r.get("ok")]
                if not rs:
                    continue
                best = min(ok, key=lambda r: r["wall_s"]) if ok else {}
                row[k] = {"wall_s": best.get("wall_s"), "phases_s": best.get("phases_s"),
                          "peak_rss_mb": max(r["peak_rss_mb"] for r in ok) if ok else None,
                          "all_wall_s": [r.get("wall_s") for r in rs], "error": None if ok else rs[0].get("error")}
            if row["onnxq"]["wall_s"] and row["ort"]["wall_s"]:
                row["time_ratio_onnxq_vs_ort"] = row["onnxq"]["wall_s"] / row["ort"]["wall_s"]
            if row.get("ort+pre") and row["ort+pre"]["wall_s"]:
                row["time_ratio_onnxq_vs_ort_pre"] = row["onnxq"]["wall_s"] / row["ort+pre"]["wall_s"]
            res["time"].append(row)
    # 2. memory growth with the number of calibration samples
    growth_plan = [("fashion_cnn", "onnxq", m, 2048) for m in ("minmax", "entropy", "percentile")]
    growth_plan += [("fashion_cnn", "ort", m, 2048) for m in ("MinMax", "Entropy", "Percentile")]
    growth_plan += [("mobilenet_v2_96", "onnxq", "percentile", 2048)]
    # quantize_static keeps every activation: ~5 MB per 96x96 MobileNetV2 sample, so 2048 samples would need
    # >10 GB (x2 for the histograms); measured at 512 and reported per sample.
    growth_plan += [("mobilenet_v2_96", "ort", "MinMax", 512), ("mobilenet_v2_96", "ort", "Percentile", 512)]
    for model, kind, method, big in growth_plan:
        a, b = job(kind, model, method, 128), job(kind, model, method, big)
        row = {"model": model, "kind": kind, "method": method, "small": 128, "big": big, "at_small": a, "at_big": b}
        mpath, calib = cost_data(model, 128)
        with np.load(calib) as z:
            row["input_kb_per_sample"] = sum(z[k][0].nbytes for k in z.files) / 1024
        if a.get("ok") and b.get("ok"):
            row["rss_growth"] = b["peak_rss_mb"] / a["peak_rss_mb"]
            row["mb_per_extra_sample"] = (b["peak_rss_mb"] - a["peak_rss_mb"]) / (big - 128)
            row["time_growth"] = b["wall_s"] / a["wall_s"]
        res["growth"].append(row)
    return res


# ---------------------------------------------------------------------------------------------
# report


def write_markdown(res: dict, path: Path) -> None:
    L = ["# PTQ benchmark (generated by benchmarks/bench_ptq.py)", ""]
    env = res["env"]
    L += [f"- CPU: {env.get('cpu')} ({env.get('cores')} cores; int8 flags: {', '.join(env.get('int8_flags', []))})",
          f"- onnxq {env.get('onnxq_checkout')}",
          f"- onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, torch {env['torch']}, numpy {env['numpy']}, Python {env['python']}",
          f"- load average at start {res['loadavg_start']}, at end {res.get('loadavg_end')} "
          "(the machine is shared: other processes ran during the measurement; variants are interleaved so they share the noise)",
          f"- wall time of this run: {res.get('total_s', 0):.0f} s", ""]
    lat = res.get("latency")
    if lat:
        L += ["## Latency: FP32 vs static INT8 (onnxq, cpu-x86-vnni) vs dynamic INT8", "",
              "onnxruntime CPU provider, 1 intra-op thread, graph optimisation \"all\"; median of interleaved runs "
              "(p10-p90 in brackets). Speed-up = FP32 median / variant median.", "",
              f"`{ALT}`: {ALT_DESC}; measured on the MatMul/Gemm models only. Profile extra options under test: "
              f"{res.get('profile_layout')}.", "",
              f"| model | batch | FP32 ms | static INT8 ms | dynamic INT8 ms | {ALT} ms | static speed-up | "
              f"dynamic speed-up | {ALT} speed-up | rounds |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for name, e in lat["models"].items():
            for b, t in e["batches"].items():
                def cell(v, t=t):
                    return f"{t[v]['median_ms']:.2f} [{t[v]['p10_ms']:.2f}-{t[v]['p90_ms']:.2f}]" if v in t else "—"

                def sp(v, t=t):
                    return f"{t[v]['speedup_vs_fp32']:.2f}x" if v in t else "—"

                L.append(f"| {name} | {b} | {cell('fp32')} | {cell('static')} | {cell('dynamic')} | {cell(ALT)} | "
                         f"**{sp('static')}** | {sp('dynamic')} | {sp(ALT)} | {t['fp32']['runs']} |")
        L += ["", "Models, sizes and what onnxruntime actually runs (op counts of the optimised graph):", "",
              "| model | what | size FP32 / static / dynamic (MB) | static graph after ORT optimisation | dynamic graph | static fidelity (onnxq check: cosine / top-1 agr.) |",
              "|---|---|---|---|---|---|"]
        for name, e in lat["models"].items():
            s = e["size_mb"]
            fid = e["fidelity"]["static"] or {}
            f0 = next(iter(fid.values()), {})
            prop = ""
            if ALT in e["fused"]:
                fp = next(iter((e["fidelity"].get(ALT) or {}).values()), {})
                prop = f"<br>{ALT}: {e['fused'][ALT]}; cosine {fmt(fp.get('cosine'), 4)}"
            L.append(f"| {name} | {e['note']} | {s['fp32']:.1f} / {s['static']:.1f} / {s['dynamic']:.1f} | {e['fused']['static']}{prop} | "
                     f"{e['fused']['dynamic']} | {fmt(f0.get('cosine'), 4)} / {fmt(f0.get('top1_agreement'), 3)} |")
        L.append("")
    acc = res.get("accuracy")
    if acc:
        L += ["## Fashion-MNIST accuracy (10,000 test images, CNN trained here for 2 epochs)", "",
              f"Calibration: {acc['calibration']}.", "",
              "| variant | accuracy % | Δ vs FP32 (points) | top-1 agreement with FP32 % |", "|---|---|---|---|"]
        for v in ("fp32", "static", "dynamic"):
            a = acc[v]
            L.append(f"| {v} | {a['accuracy_pct']:.2f} | {fmt(a.get('delta_points'))} | {fmt(a.get('agreement_pct'))} |")
        L.append("")
    cost = res.get("cost")
    if cost:
        L += ["## Cost of quantizing: onnxq.quantize vs onnxruntime.quantization.quantize_static", "",
              f"Same model, same {CAL} calibration samples, per-channel int8 weights, uint8 activations, QDQ; each run in its own "
              "child process, peak = VmHWM read inside it (imports included, ~80 MB). Wall = best of the repeats. "
              "onnxq's wall includes its pre-processing (shape inference + graph optimisation) and its fidelity check "
              "on 32 held-out samples; `ort` is quantize_static on the raw model, `ort+pre` runs quant_pre_process first.", "",
              "| model | method | onnxq s | ort s | ort+pre s | onnxq / ort | onnxq / ort+pre | onnxq peak MB | ort peak MB |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in cost["time"]:
            o, q, p = r["onnxq"], r["ort"], r.get("ort+pre") or {}
            L.append(f"| {r['model']} | {r['method']} | {fmt(o['wall_s'])} | {fmt(q['wall_s']) if q['wall_s'] else 'failed: ' + str(q['error'])} | "
                     f"{fmt(p.get('wall_s'))} | {fmt(r.get('time_ratio_onnxq_vs_ort'))} | {fmt(r.get('time_ratio_onnxq_vs_ort_pre'))} | "
                     f"{fmt(o['peak_rss_mb'], 0)} | {fmt(q['peak_rss_mb'], 0)} |")
        L += ["", "Where onnxq's time goes (seconds, from the runs above):", "",
              "| model | method | preprocess | calibrate | write QDQ | validate | other (load, checks, manifest) | total |",
              "|---|---|---|---|---|---|---|---|"]
        for r in cost["time"]:
            ph = r["onnxq"].get("phases_s") or {}
            if ph:
                tot = r["onnxq"]["wall_s"]
                other = tot - sum(ph.values())
                L.append(f"| {r['model']} | {r['method']} | " + " | ".join(fmt(ph.get(k)) for k in ("preprocess", "calibrate", "write_qdq", "validate"))
                         + f" | {other:.2f} | {tot:.2f} |")
        L += ["", "### Peak memory vs number of calibration samples", "",
              "| model | tool | method | samples | peak MB (small) | peak MB (big) | growth | KB per extra sample | "
              "input KB per sample | wall s small / big |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in cost["growth"]:
            a, b = r["at_small"], r["at_big"]
            if a.get("ok") and b.get("ok"):
                L.append(f"| {r['model']} | {r['kind']} | {r['method']} | {r['small']} → {r['big']} | {a['peak_rss_mb']:.0f} | {b['peak_rss_mb']:.0f} | "
                         f"**{r['rss_growth']:.2f}x** | {1024 * r['mb_per_extra_sample']:.1f} | {r['input_kb_per_sample']:.1f} | "
                         f"{a['wall_s']:.1f} / {b['wall_s']:.1f} |")
            else:
                L.append(f"| {r['model']} | {r['kind']} | {r['method']} | {r['small']} → {r['big']} | "
                         f"{fmt(a.get('peak_rss_mb'), 0)} | failed: {b.get('error') or a.get('error')} | | | | |")
        L.append("")
    if res.get("findings"):
        L += ["## Findings", ""] + [f"- {f}" for f in res["findings"]] + [""]
    path.write_text("\n".join(L))


def findings(res: dict) -> list[str]:
    out = []
    lat = res.get("latency", {}).get("models", {})
    for name, e in lat.items():
        s32 = e["batches"].get("32", {}).get("static", {}).get("speedup_vs_fp32")
        if s32 is None:
            continue
        if e["family"] == "conv":
            verdict = "meets" if s32 >= 2.0 else ("is at (within 3% of)" if s32 >= 1.94 else "MISSES")
            out.append(f"{name}: static INT8 {s32:.2f}x FP32 at batch 32 ({verdict} the 2x target); optimised graph: {e['fused']['static']}.")
        d32 = e["batches"]["32"]["dynamic"]["speedup_vs_fp32"]
        p32 = e["batches"]["32"].get(ALT, {}).get("speedup_vs_fp32")
        if e.get("quantized_nodes", {}).get("dynamic") == 0:
            out.append(f"{name}: onnxq --mode dynamic quantized NOTHING (0 quantized nodes, size unchanged, no warning): "
                       f"onnxruntime's dynamic quantizer has no Gemm handler (IntegerOpsRegistry lacks Gemm), and "
                       f"torch exports nn.Linear on 2-D inputs as Gemm. The 'dynamic' column is FP32.")
        out.append(f"{name}: dynamic INT8 {d32:.2f}x FP32 at batch 32, static {s32:.2f}x"
                   + (f", {ALT} ({ALT_DESC}) {p32:.2f}x" if p32 else "") + ".")
    acc = res.get("accuracy")
    if acc:
        d = acc["static"]["delta_points"]
        out.append(f"Fashion-MNIST: static INT8 {acc['static']['accuracy_pct']:.2f}% vs FP32 {acc['fp32']['accuracy_pct']:.2f}% "
                   f"({d:+.2f} points; target within 0.5: {'met' if abs(d) <= 0.5 else 'MISSED'}).")
    cost = res.get("cost")
    if cost:
        for r in cost["time"]:
            if r.get("time_ratio_onnxq_vs_ort") is not None:
                out.append(f"quantize time {r['model']} {r['method']}: onnxq/ort = {r['time_ratio_onnxq_vs_ort']:.2f}"
                           + (f", onnxq/(ort+pre) = {r['time_ratio_onnxq_vs_ort_pre']:.2f}" if r.get("time_ratio_onnxq_vs_ort_pre") else "")
                           + " (target <= 1.15)")
        for r in cost["growth"]:
            if r.get("rss_growth") is not None:
                per = 1024 * r["mb_per_extra_sample"]
                out.append(f"peak RSS {r['kind']} {r['method']} {r['model']} {r['small']}->{r['big']} samples: x{r['rss_growth']:.2f}"
                           + (" (target < 1.3)" if r["kind"] == "onnxq" else "")
                           + f"; {per:.1f} KB per extra sample vs {r['input_kb_per_sample']:.1f} KB of input per sample")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="latency,accuracy,cost", help="comma list of: latency, accuracy, cost")
    ap.add_argument("--models", default="", help="latency models to run (comma list; default all)")
    ap.add_argument("--budget", type=float, default=10.0, help="seconds of timed runs per (model, batch) group")
    ap.add_argument("--repeats", type=int, default=2, help="repeats of each cost job (best wall time kept)")
    ap.add_argument("--out", default=str(RESULTS / "ptq"), help="output path without suffix (.json and .md written)")
    args = ap.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    global ALT, ALT_DESC
    import onnxq

    prof = onnxq.load_profile("cpu-x86-vnni")
    ALT, ALT_DESC, _ = M.output_quant_variant(prof)
    t0 = time.time()
    res = {"env": cpu_info(), "profile_layout": dataclasses.asdict(prof.quant.layout), "profile_sha256": prof.sha256, "loadavg_start": loadavg(), "sections": sections, "settings": vars(args) | {"calibration_samples": CAL}}
    if "latency" in sections:
        res["latency"] = section_latency(args)
    if "accuracy" in sections:
        res["accuracy"] = section_accuracy(args)
    if "cost" in sections:
        res["cost"] = section_cost(args)
    res["loadavg_end"] = loadavg()
    res["total_s"] = time.time() - t0
    res["findings"] = findings(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(to_jsonable(res), indent=1, allow_nan=False, default=str))
    write_markdown(res, out.with_suffix(".md"))
    for f in res["findings"]:
        print("  * " + f)
    M.log(f"wrote {out.with_suffix('.md')} and .json ({res['total_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
