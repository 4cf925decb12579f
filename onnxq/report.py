"""Text tables and reports from result dicts. Imports neither onnxruntime nor torch."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

__all__ = ["quant_summary_table", "human_size"]


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == float("inf"):
            return "inf"
        return f"{v:.{digits}f}"
    return str(v)


def _algorithm_summary(spec: dict[str, Any], done: dict[str, Any]) -> str:
    """One line: what CLE, SmoothQuant, bias correction and --target did."""
    parts = []
    if "cle" in done:
        c = done["cle"]
        parts.append(f"CLE ({c['mode']}): {c['equalized']} pair(s)" + (f", {c['pairs_absorbed']} bias absorbed" if c.get("pairs_absorbed") else ""))
    if "smoothquant" in done:
        q = done["smoothquant"]
        parts.append(f"SmoothQuant alpha {q['alpha']:g}: {q['groups']} input(s), {q['folded']} folded into LayerNorm, {q['muls_added']} Mul added")
    if "bias_correction" in done:
        b = done["bias_correction"]
        parts.append(f"bias correction ({b['method']}): {b['fast']['corrected']} layer(s)"
                     + (f", {b['fast']['biases_added']} bias(es) added" if b["fast"].get("biases_added") else ""))
    if "target" in done and done["target"].get("value") is not None:
        t = done["target"]
        parts.append(f"target {t['metric']}={t['value']:g}: {'reached' if t['reached'] else 'NOT reached'} "
                     f"({t['score_all_quantized']:.5f} -> {t['score']:.5f}, {len(t['float_nodes'])} node(s) in float"
                     + (f", {t['latency_vs_all_quantized']:.2f}x latency" if t.get("latency_vs_all_quantized") else "") + ")")
    for note in spec.get("notes") or []:
        parts.append(note)
    return "; ".join(parts)


def quant_summary_table(res: dict[str, Any]) -> str:
    """The table `onnxq quantize` prints: sizes, ops, fidelity per output, wall time."""
    r = res["recipe"]
    settings = [
        ["mode", r["mode"]],
        ["profile", r["profile"]],
        ["output", res["output"]],
    ]
    if r["mode"] == "static":
        cal = r["calibration"]
        settings += [
            ["activations / weights", f"{r['activation_type']}{' sym' if r['activation_symmetric'] else ' asym'} / "
             f"{r['weight_type']} {'per-channel' if r['per_channel'] else 'per-tensor'}"],
            ["calibration", f"{cal['method']} on {res['calibration'].get('samples_used')} samples ({res['calibration'].get('source')})"],
            ["preprocess", res.get("preprocess", "")],
        ]
        alg = _algorithm_summary(r.get("algorithms") or {}, (res.get("calibration") or {}).get("algorithms") or {})
        if alg:
            settings.append(["algorithms", alg])
    elif r["mode"] == "dynamic":
        settings.append(["weights", f"{r['weight_type']} {'per-channel' if r['per_channel'] else 'per-tensor'}"])
    if r["opset"] != r["source_opset"]:
        settings.append(["opset", f"{r['source_opset']} -> {r['opset']} (converted: the types above need it)"])
    ops_in_graph = [o for o in r["op_types"] if o in res["ops_before"]] or r["op_types"]
    settings += [
        ["op types", (", ".join(ops_in_graph) or "none") + f"  ({r['op_types_reason']})"],
        ["size", f"{human_size(res['size_before'])} -> {human_size(res['size_after'])} ({res['size_after'] / max(res['size_before'], 1):.2f}x)"],
        ["nodes quantized / float", f"{res['quantized_nodes']} / {res['float_nodes']}"],
        ["validated on", ", ".join(res["validation"]["providers"]["active"]) + (" (FALLBACK)" if res["validation"]["providers"]["fallback"] else "")
         + f", {res['validation']['samples']} held-out samples"],
        ["wall time", f"{res['wall_s']:.2f} s"],
    ]
    if r["float_nodes"]:
        names = [f["node"] for f in r["float_nodes"]]
        settings.insert(-4, ["kept in float", ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")])
    out = tabulate(settings, tablefmt="simple", disable_numparse=True)
    rows = []
    for name, f in res["fidelity"].items():
        rows.append([name, _fmt(f["cosine"], 5), _fmt(f["sqnr_db"], 1), _fmt(f["max_abs"], 4), _fmt(f.get("top1_agreement"), 4)])
    out += "\n\n" + tabulate(rows, headers=["output", "cosine", "SQNR dB", "max-abs", "top-1 agree"], tablefmt="github")
    return out


# ---------------------------------------------------------------------------------------------
# bench / eval / compare / cross-hardware reports (issue #4). Inputs are result documents
# (schema onnxq.results/1, see onnxq/results.py); only tabulate is needed, matplotlib optionally.

__all__ += [
    "host_summary",
    "bench_table",
    "eval_table",
    "compare_table",
    "compare_markdown",
    "qat_summary",
    "cross_markdown",
    "cross_table",
    "pareto_front",
    "write_pareto_plot",
]

_ISA_NAMES = {
    "avx2": "AVX2", "avx512f": "AVX512F", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
    "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16", "asimddp": "NEON-dotprod",
    "i8mm": "I8MM",
}


def _num(v: Any) -> float | None:
    from .results import num

    return num(v)


def _ms(v: Any) -> str:
    x = _num(v)
    if x is None:
        return "-"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3f}" if x >= 0.1 else f"{x:.4f}"


def _x(v: Any) -> str:
    x = _num(v)
    return "-" if x is None else f"{x:.2f}x"


def host_summary(host: dict[str, Any]) -> str:
    """One line: CPU, int8 ISA flags, cores, GPUs, onnxruntime version and build providers."""
    flags = [_ISA_NAMES.get(k, k) for k, v in (host.get("isa_flags") or {}).items() if v]
    ort_info = host.get("onnxruntime") or {}
    parts = [
        f"{host.get('cpu_model', '?')} ({host.get('arch', '?')})",
        f"{host.get('cores', '?')} logical cores" + (f" / {host['physical_cores']} physical" if host.get("physical_cores") else ""),
        "int8 ISA: " + (", ".join(flags) if flags else "none of AVX2/VNNI/AMX"),
    ]
    if host.get("gpus"):
        parts.append("GPU: " + "; ".join(host["gpus"]))
    if ort_info:
        parts.append(f"onnxruntime {ort_info.get('version', '?')} (build providers: {', '.join(ort_info.get('build_providers', []))})")
    if host.get("hostname"):
        parts.insert(0, f"host {host['hostname']}")
    return "; ".join(parts)


def bench_table(doc: dict[str, Any], tablefmt: str = "github") -> str:
    """Latency table of an ``onnxq bench`` result: median/p90/p99 ms, throughput, speedup."""
    rows = []
    for r in doc["rows"]:
        lat = r["latency"]
        prov = ", ".join(p.replace("ExecutionProvider", "") for p in r["providers_active"])
        rows.append([
            r["label"], r["batch"], _ms(lat["median_ms"]), _ms(lat["p90_ms"]), _ms(lat["p99_ms"]),
            f"{_num(lat['throughput']):.1f}", _x(r.get("speedup")), prov + (" FALLBACK" if r.get("fallback") else ""),
        ])
    headers = ["model", "batch", "median ms", "p90 ms", "p99 ms", "samples/s", "speedup", "providers"]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def eval_table(doc: dict[str, Any], tablefmt: str = "simple") -> str:
    """The metrics of an ``onnxq eval`` result."""
    m = doc["metrics"]
    rows = [["samples", m.get("samples")], ["output", m.get("output")]]
    for k, v in (m.get("accuracy") or {}).items():
        rows.append([f"accuracy {k}", f"{100 * v:.2f} %"])
    for out, f in (m.get("fidelity") or {}).items():
        rows.append([f"{out}: cosine / SQNR dB / max-abs / MSE",
                     f"{_fmt(_num(f['cosine']), 5)} / {_fmt(_num(f['sqnr_db']), 1)} / {_fmt(_num(f['max_abs']), 4)} / {_fmt(_num(f.get('mse')), 6)}"])
        if "top1_agreement" in f:
            rows.append([f"{out}: top-1 agreement", f"{100 * f['top1_agreement']:.2f} %"])
    if doc.get("headline"):
        h = doc["headline"]
        rows.append([f"--metric {h['metric']}", _fmt(_num(h["value"]), 5)])
    prov = doc.get("providers") or {}
    if prov:
        rows.append(["providers", ", ".join(prov.get("active", [])) + (" (FALLBACK)" if prov.get("fallback") else "")])
    return tabulate(rows, tablefmt=tablefmt, disable_numparse=True)


_METRIC_LABELS = {"top1": "top-1 %", "top5": "top-5 %", "agreement": "top-1 agree %", "cosine": "cosine", "kl": "KL",
                  "sqnr": "SQNR dB"}
_POINTS = ("top1", "top5", "agreement")


def quality_text(q: float | None, metric: str) -> str:
    if q is None:
        return "-"
    if metric in _POINTS:
        return f"{100 * q:.2f}"
    return {"kl": f"{q:.4f}", "cosine": f"{q:.5f}", "sqnr": f"{q:.1f}"}.get(metric, f"{q:.4f}")


def compare_table(prof: dict[str, Any], metric: str, batches: list[int], tablefmt: str = "github", error_width: int | None = 60) -> str:
    """One profile of an ``onnxq compare`` result: quality, delta vs FP32 (accuracy metrics), size, latency, speedup."""
    fp32 = next((v for v in prof["variants"] if v["name"] == "fp32"), None)
    ref = _num(fp32.get("quality")) if fp32 else None
    main_b = str(max(batches)) if batches else None
    points = metric in _POINTS
    rows = []
    for v in prof["variants"]:
        q = _num(v.get("quality"))
        delta = f"{round(100 * (q - ref), 2) + 0.0:+.2f}" if q is not None and ref is not None else "-"
        lat = v.get("latency") or {}
        note = v.get("error") or v.get("latency_note") or ("cached" if v.get("cached") else "")
        if (v.get("eval_providers") or {}).get("fallback") or (v.get("latency_providers") or {}).get("fallback"):
            note = ("FALLBACK " + note).strip()
        if error_width and len(note) > error_width:
            note = note[: error_width - 3] + "..."
        row = [v["name"], "ok" if v["status"] == "ok" else v["status"].upper(), quality_text(q, metric)]
        if points:
            row.append(delta)
        row.append(human_size(v["size_bytes"]) if v.get("size_bytes") else "-")
        row += [_ms((lat.get(str(b)) or {}).get("median_ms")) for b in batches]
        row += [_x((v.get("speedup") or {}).get(main_b)) if main_b else "-", note]
        rows.append(row)
    headers = ["variant", "status", _METRIC_LABELS.get(metric, metric)] + (["delta pts"] if points else []) + ["size"]
    headers += [f"ms @{b}" for b in batches] + [f"speedup @{main_b}", "note"]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def _budget_line(s: dict[str, Any], data: dict[str, Any]) -> str:
    b = s.get("budget") or {"metric": data.get("metric"), "text": f"{s.get('budget_points', 0.5):g} points"}
    why = s.get("budget_reason") or ""
    return f"- budget for the verdict: {b['text']}" + (f" of {data.get('metric_label')}" if b.get("metric") in _POINTS else "") + (
        f" ({why})" if why else "")


def compare_markdown(doc: dict[str, Any]) -> str:
    """``report.md`` of an ``onnxq compare`` run: setup, one table and verdict per profile, plot."""
    s = doc["settings"]
    data = doc.get("data") or {}
    lines = [
        "# onnxq compare report",
        "",
        f"- model: `{doc['model']['path']}` ({human_size(doc['model'].get('size_bytes', 0))}, sha256 {doc['model'].get('sha256', '')[:12]})",
        f"- evaluation: `{data.get('eval')}`, {data.get('eval_samples')} samples; metric: {data.get('metric_label', data.get('metric'))}",
        f"- calibration: `{data.get('calib')}`",
        f"- latency: batches {', '.join(map(str, s['batches']))}; {s['warmup']} warm-up + {s['runs']} timed runs per variant, "
        f"interleaved; intra-op threads {s.get('threads_label', s.get('threads'))}",
        _budget_line(s, data),
        *([f"- judged output: `{data['output']}` ({data.get('output_reason', '')})"] if data.get("output") else []),
        *_compare_setup_lines(doc),
        f"- {host_summary(doc['host'])}",
        *_ceiling_line(doc),
        f"- written {doc['created']} by onnxq {doc['onnxq']}",
        "",
    ]
    for prof in doc["profiles"]:
        lines += [f"## Profile `{prof['profile']}`", ""]
        lines += [f"**Verdict:** {prof['verdict']['text']}", ""]
        for note in prof.get("notes", []):
            lines.append(f"> {note}")
        if prof.get("notes"):
            lines.append("")
        lines += [compare_table(prof, data.get("metric", ""), s["batches"], tablefmt="github", error_width=None), ""]
        qat_line = qat_summary(prof)
        if qat_line:
            lines += [qat_line, ""]
        failed = [v for v in prof["variants"] if v["status"] != "ok"]
        if failed:
            lines += ["Failed variants:", ""]
            lines += [f"- `{v['name']}` ({v.get('stage', '?')}): {v.get('error', '')}" for v in failed]
            lines.append("")
    if doc.get("plot"):
        lines += ["## Accuracy vs latency", "", f"![accuracy vs latency (Pareto front joined)]({doc['plot']})", ""]
    elif doc.get("plot_note"):
        lines += ["## Accuracy vs latency", "", f"_{doc['plot_note']}_", ""]
    return "\n".join(lines)


def _ceiling_line(doc: dict[str, Any]) -> list[str]:
    """How close to this host's int8 limit the best variant got."""
    c = (doc.get("host") or {}).get("ceiling") or {}
    r = _num(c.get("int8_vs_fp32_gemm"))
    if r is None:
        return []
    b = str(doc["settings"]["primary_batch"])
    best = max((_num((v.get("speedup") or {}).get(b)) or 0.0 for p in doc["profiles"] for v in p["variants"]
                if v.get("kind") == "ptq" and v.get("status") == "ok"), default=0.0)
    return [f"- host ceiling: a large int8 GEMM ({c.get('gemm')}, {c.get('threads')} thread) runs {r:.2f}x FP32 on this host; "
            f"the fastest PTQ variant reached {best:.2f}x at batch {b} (convolutions, Q/DQ and float ops keep models below it)"]


def _compare_setup_lines(doc: dict[str, Any]) -> list[str]:
    """What was compared, where it differs from 'every variant the profile allows, its own weights'."""
    s = doc["settings"]
    out = []
    if s.get("variants_filter"):
        out.append("- variants: only `" + ", ".join(s["variants_filter"]) + "` (`--variants`; FP32"
                   + (" and QAT" if s.get("task") else "") + " always)")
    if s.get("weight_type"):
        out.append(f"- PTQ weights: {s['weight_type']} (`--weight-type`, instead of the profile's)")
    if s.get("task"):
        qats = [v.get("qat") or {} for p in doc.get("profiles", []) for v in p["variants"] if v["kind"] == "qat"]
        src = " (exported by the task: the trained network QAT fine-tunes from)" if any(
            q.get("fp32_model_path") == doc["model"]["path"] for q in qats) else ""
        out.append(f"- QAT task: `{s['task']}`{src}")
    return out


def qat_summary(prof: dict[str, Any]) -> str:
    """One sentence on how the QAT variant was trained (from the facts run_task returned)."""
    v = next((x for x in prof["variants"] if x["kind"] == "qat" and x.get("qat")), None)
    if v is None:
        return ""
    q = v["qat"]
    parts = []
    if q.get("epochs") is not None:
        steps = (q.get("train") or {}).get("steps") if isinstance(q.get("train"), dict) else None
        parts.append(f"{q['epochs']} epoch(s)" + (f" ({steps} steps)" if steps else "")
                     + (f", lr {q['lr']:g}" if _num(q.get("lr")) is not None else ""))
    if q.get("weight_type"):
        pc = q.get("per_channel")
        parts.append(f"{q['weight_type']} weights" + ("" if pc is None else (" per-channel" if pc else " per-tensor")))
    if _num(q.get("step_time_ratio")) is not None:
        parts.append(f"training step {_num(q['step_time_ratio']):.2f}x FP32's")
    if _num(q.get("wall_s")) is not None:
        parts.append(f"{_num(q['wall_s']):.0f} s for the task (FP32 export, its PTQ baseline, QAT training, checks)")
    agree = _num(q.get("agreement_torch_vs_onnx"))
    if agree is not None:
        parts.append(f"PyTorch fake-quant vs ONNX top-1 agreement {100 * agree:.2f}%")
    return ("QAT: " + "; ".join(parts) + ".") if parts else ""


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower latency AND higher quality), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def write_pareto_plot(series: dict[str, list[tuple[str, float, float]]], path: Any, *, xlabel: str, ylabel: str, title: str) -> None:
    """Scatter (latency ms, quality) per series with its Pareto front; PNG written atomically.

    Raises ImportError when matplotlib (the ``plot`` extra) is missing: callers note and skip.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .results import atomic_target

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    texts: list[Any] = []
    try:
        for name, pts in series.items():
            xs = [p[1] for p in pts]
            ys = [p[2] for p in pts]
            sc = ax.scatter(xs, ys, label=name, zorder=3)
            for lab, x, y in pts:
                texts.append(ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                                         arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5}))
            front = pareto_front([(x, y) for x, y in zip(xs, ys)])
            if len(front) > 1:
                ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color=sc.get_facecolor()[0], zorder=2)
        from matplotlib.ticker import FuncFormatter

        from matplotlib.ticker import LogLocator, MaxNLocator

        all_x = [p[1] for pts in series.values() for p in pts]
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        if all_x and min(all_x) > 0 and max(all_x) / min(all_x) > 10:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # labelled ticks inside each decade
        else:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))
        ax.margins(x=0.12, y=0.12)  # room for the point labels inside the axes
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        _spread_labels(fig, texts)
        with atomic_target(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)


def _spread_labels(fig: Any, texts: list[Any], gap: float = 1.0) -> None:
    """Move point labels down, top to bottom, until none overlaps another (variants with near-equal
    accuracy and latency otherwise print on top of each other); a thin line joins a moved label to its point."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    boxes = [(t, t.get_window_extent(renderer)) for t in texts]  # sizes; positions are recomputed below
    placed: list[tuple[float, float, float, float]] = []
    for t, box in sorted(boxes, key=lambda tb: -tb[1].y0):
        x0, y0, w, h = box.x0, box.y0, box.width, box.height
        moved = False
        for _ in range(len(texts) + 1):
            hit = next((b for b in placed if x0 < b[2] and b[0] < x0 + w and y0 < b[3] and b[1] < y0 + h), None)
            if hit is None:
                break
            y0 = hit[1] - gap - h
            moved = True
        placed.append((x0, y0, x0 + w, y0 + h))
        if moved:
            dx, dy = t.get_position()  # offset points
            t.set_position((dx, dy + (y0 - box.y0) / px_per_pt))
        else:
            t.arrow_patch.set_visible(False)


def rederive_verdicts(doc: dict[str, Any], *, metric: str | None = None, budget: float | None = None) -> None:
    """Recompute a compare document's qualities and verdicts for another metric / budget (in place; stdlib only).

    Every variant's metrics record holds accuracy (with labels) and fidelity (KL, cosine, SQNR, agreement),
    so nothing needs to run again; a metric the record cannot give is an InputError (exit 2).
    """
    from .errors import InputError
    from .verdict import DEFAULT_BUDGETS, ProfileResult, metric_value, verdict

    metric = metric or doc["data"]["metric"]
    if metric not in DEFAULT_BUDGETS:
        raise InputError(f"unknown --metric {metric!r}; choose one of {', '.join(DEFAULT_BUDGETS)}")
    budget = DEFAULT_BUDGETS[metric] if budget is None else budget
    if budget < 0:
        raise InputError(f"--budget must be >= 0, got {budget}")
    for prof in doc["profiles"]:
        for v in prof["variants"]:
            if v.get("status") == "ok" and isinstance(v.get("metrics"), dict):
                try:
                    v["quality"] = metric_value(v["metrics"], metric)
                except InputError as e:
                    raise InputError(f"cannot re-derive the verdict by {metric}: {e}") from e
        prof["verdict"] = verdict(ProfileResult.from_dict(prof), budget=budget, batch=int(prof.get("primary_batch") or 1),
                                  metric=metric)
    from .vocab import COMPARE_METRICS

    doc["data"].update(metric=metric, metric_label=COMPARE_METRICS.get(metric, metric))
    doc["settings"].update(budget_points=budget, budget={"metric": metric, "value": budget},
                           budget_reason="re-derived by onnxq report --metric/--budget")


def _machine(doc: dict[str, Any]) -> str:
    h = doc.get("host") or {}
    return str(h.get("hostname") or h.get("cpu_model") or "?")


def cross_table(sources: list[tuple[str, dict[str, Any]]], tablefmt: str = "github") -> str:
    """Variant rows x (machine/profile) columns of speedup and delta, over several compare results."""
    cols: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for _origin, doc in sources:
        if doc["kind"] != "compare":
            continue
        for prof in doc["profiles"]:
            name, k = f"{_machine(doc)}/{prof['profile']}", 2
            while name in [c[0] for c in cols]:
                name, k = f"{_machine(doc)}/{prof['profile']}#{k}", k + 1
            cols.append((name, doc, prof))
    if not cols:
        return ""
    names: list[str] = []
    for _, _, prof in cols:
        for v in prof["variants"]:
            if v["name"] not in names:
                names.append(v["name"])
    rows = []
    for name in names:
        row = [name]
        for _, doc, prof in cols:
            v = next((x for x in prof["variants"] if x["name"] == name), None)
            fp32 = next((x for x in prof["variants"] if x["name"] == "fp32"), None)
            if v is None:
                row.append("")
                continue
            if v["status"] != "ok":
                row.append("failed")
                continue
            b = str(doc["settings"]["primary_batch"])
            q, r = _num(v.get("quality")), _num(fp32.get("quality")) if fp32 else None
            d = f"{round(100 * (q - r), 2) + 0.0:+.2f} pts" if q is not None and r is not None else "- pts"
            spd = (v.get("speedup") or {}).get(b)
            fb = (v.get("latency_providers") or {}).get("fallback")
            row.append((f"{_x(spd)}, {d}" + (" FALLBACK" if fb else "")) if spd is not None else f"not timed, {d}")
        rows.append(row)
    headers = ["variant"] + [c[0] for c in cols]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def cross_markdown(sources: list[tuple[str, dict[str, Any]]], *, plot: str | None = None, plot_note: str | None = None) -> str:
    """One Markdown report over result files from several machines; nothing is re-run."""
    lines = ["# onnxq cross-hardware report", "", "## Machines and result files", ""]
    for origin, doc in sources:
        lines.append(f"- `{origin}` ({doc['kind']}, {doc.get('created', '?')}, onnxq {doc.get('onnxq', '?')}): {host_summary(doc.get('host') or {})}")
    lines.append("")
    compares = [(o, d) for o, d in sources if d["kind"] == "compare"]
    models = {d["model"].get("sha256") for _, d in compares}
    if len(models) > 1:
        lines += ["> WARNING: these compare results are for different models (sha256 "
                  + ", ".join(sorted(str(m)[:12] for m in models)) + "); rows are not comparable across them.", ""]
    metrics = {d["data"].get("metric") for _, d in compares}
    if len(metrics) > 1:
        lines += ["> WARNING: the compare results use different quality metrics (" + ", ".join(sorted(map(str, metrics))) + ").", ""]
    if compares:
        lines += ["## Speedup vs FP32 and quality delta, per machine and profile", "",
                  "Each cell: speedup at the run's largest batch, quality delta vs that run's FP32 in points.", "",
                  cross_table(sources), "", "## Verdicts", ""]
        for origin, doc in compares:
            for prof in doc["profiles"]:
                lines.append(f"- **{_machine(doc)} / {prof['profile']}**: {prof['verdict']['text']}")
        lines.append("")
        for origin, doc in compares:
            for prof in doc["profiles"]:
                lines += [f"### {_machine(doc)} / {prof['profile']} (`{origin}`)", "",
                          compare_table(prof, doc["data"].get("metric", ""), doc["settings"]["batches"], error_width=None), ""]
    benches = [(o, d) for o, d in sources if d["kind"] == "bench"]
    if benches:
        lines += ["## Latency (onnxq bench)", ""]
        rows = []
        for origin, doc in benches:
            for r in doc["rows"]:
                lat = r["latency"]
                rows.append([_machine(doc), doc["settings"].get("profile"), r["label"], r["batch"], _ms(lat["median_ms"]),
                             _ms(lat["p90_ms"]), f"{_num(lat['throughput']):.1f}", _x(r.get("speedup")),
                             ", ".join(p.replace("ExecutionProvider", "") for p in r["providers_active"]) + (" FALLBACK" if r.get("fallback") else "")])
        lines += [tabulate(rows, headers=["machine", "profile", "model", "batch", "median ms", "p90 ms", "samples/s", "speedup", "providers"],
                           tablefmt="github", disable_numparse=True), ""]
    evals = [(o, d) for o, d in sources if d["kind"] == "eval"]
    if evals:
        lines += ["## Evaluations (onnxq eval)", ""]
        rows = []
        for origin, doc in evals:
            h = doc.get("headline") or {}
            rows.append([_machine(doc), doc["model"].get("path"), h.get("metric", "-"), _fmt(_num(h.get("value")), 5),
                         ", ".join((doc.get("providers") or {}).get("active", []))])
        lines += [tabulate(rows, headers=["machine", "model", "metric", "value", "providers"], tablefmt="github", disable_numparse=True), ""]
    if plot:
        lines += ["## Accuracy vs latency", "", f"![accuracy vs latency]({plot})", ""]
    elif plot_note:
        lines += ["## Accuracy vs latency", "", f"_{plot_note}_", ""]
    return "\n".join(lines)
