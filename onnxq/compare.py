"""Build every variant a profile allows, measure accuracy, fidelity, size and latency, and decide.

>>> from onnxq.compare import compare
>>> doc = compare("model.onnx", calib="calib.npz", eval_data="eval.npz", profiles=["cpu-x86-vnni"],
...               outdir="out", variants=["fp32", "static-pc-*"])                     # doctest: +SKIP
>>> doc["profiles"][0]["verdict"]["text"]                                              # doctest: +SKIP
'PTQ static per-channel (percentile) is within 0.2 points of FP32 at 2.4x speed: QAT not needed.'

Variants (``VARIANTS``; ``--variants`` filters them with shell patterns; FP32 is always built, and
QAT whenever a task is given):
``fp32``, ``dynamic``, ``static-{pt,pc}-{minmax,entropy,percentile}`` (per-tensor / per-channel
weights x calibration method), ``fp16``, and ``qat`` when a task is given. A profile's
``quantization.modes`` says which modes it allows.

Output directory: ``OUTDIR/<profile>/<variant>.onnx`` (+ the manifest ptq writes beside each),
``OUTDIR/report.json`` (schema ``onnxq.results/1``, kind ``compare``), ``OUTDIR/report.md`` and
``OUTDIR/pareto.png`` (matplotlib extra; skipped with a note without it). Every file is written
atomically; data and profile problems are found before anything is written. A variant that fails
is recorded with its stage and error, and the others carry on.

Providers. Accuracy and fidelity are hardware-independent enough to measure anywhere, so they are
measured on the profile's providers when present and otherwise on what this onnxruntime has,
marked as fallback. Latency is only measured on the profile's own providers: a profile whose
providers are missing gets "not measured: provider X missing" (never a silent CPU number), unless
``allow_fallback``, which measures on what is available and marks every row FALLBACK. When no
requested profile can run here at all and fallback is not allowed, compare stops with exit 2
before writing anything.

Contract with ``onnxq.qat`` (the ``qat`` variant, used only with ``task``)::

    from onnxq.qat import run_task
    info = run_task(task_spec, profile, out_path, calibration=calib, epochs=epochs)

- ``task_spec``: the ``--task`` string (``"module:object"``), passed through unchanged;
- ``profile``: the :class:`onnxq.profiles.Profile` being compared;
- ``out_path``: ``str`` path where the QDQ ONNX model must be written (``OUTDIR/<profile>/qat.onnx``;
  its folder exists; write it atomically);
- ``calibration``: the ``--calib`` path (``str``) as given; ``epochs``: ``int`` or ``None`` (task default);
- returns a ``dict`` with at least ``model_path`` (the QDQ model written) and optionally
  ``fp32_model_path`` (the task's FP32 export; used as the reference when no MODEL is given) and
  any other JSON-serialisable facts (kept under the variant's ``qat`` key).
An ImportError (no ``onnxq.qat``, no torch) or any exception from ``run_task`` marks the variant
"QAT variant failed: <reason>"; the PTQ results are kept. ``run_task`` is called once per profile.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError, OnnxqError, ProviderError

__all__ = ["Variant", "VARIANTS", "plan_variants", "compare", "verdict", "METRICS"]

# A variant must beat FP32 by this factor to be recommended over it (10%, the band within which
# the verdict also calls two latencies "the same": run-to-run noise on a shared CPU is of that order).
MEASURABLY_FASTER = 1.1
NOT_SLOWER = 0.9  # below this, a variant is named "slower than FP32"

METRICS = {"top1": "top-1 accuracy", "top5": "top-5 accuracy", "agreement": "top-1 agreement with FP32", "cosine": "cosine similarity to FP32"}


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # fp32 | ptq | fp16 | qat
    mode: str | None = None  # the ptq mode, or None
    method: str | None = None
    per_channel: bool | None = None

    @property
    def label(self) -> str:
        """Plain words for verdicts: 'static per-channel (percentile)'."""
        if self.kind == "ptq" and self.mode == "static":
            return f"static {'per-channel' if self.per_channel else 'per-tensor'} ({self.method})"
        return {"fp32": "FP32", "fp16": "fp16", "qat": "QAT", "ptq": self.mode or self.name}[self.kind]


VARIANTS: tuple[Variant, ...] = (
    Variant("fp32", "fp32"),
    Variant("dynamic", "ptq", "dynamic"),
    *(
        Variant(f"static-{'pc' if pc else 'pt'}-{m}", "ptq", "static", m, pc)
        for pc in (False, True)
        for m in ("minmax", "entropy", "percentile")
    ),
    Variant("fp16", "fp16", "fp16"),
    Variant("qat", "qat"),
)


def plan_variants(profile: Any, patterns: Sequence[str] | None = None, *, with_qat: bool = False) -> list[Variant]:
    """The variants to build for ``profile``: allowed by its modes, selected by ``patterns``."""
    names = [v.name for v in VARIANTS]
    if patterns:
        for p in patterns:
            if not fnmatch.filter(names, p):
                raise InputError(f"--variants pattern {p!r} matches no variant; variants are: {', '.join(names)}")
        if any(fnmatch.filter(["qat"], p) and p != "*" for p in patterns) and not with_qat:
            raise InputError("--variants selects qat, which needs --task module:object")
    out = []
    for v in VARIANTS:
        if v.kind == "qat" and not with_qat:
            continue
        if v.mode and v.mode not in profile.quant.modes:
            continue
        if v.kind not in ("fp32", "qat") and patterns and not any(fnmatch.fnmatch(v.name, p) for p in patterns):
            continue
        out.append(v)
    return out


class _VariantFailed(Exception):
    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def _err(e: BaseException) -> str:
    if isinstance(e, OnnxqError):
        return str(e)
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _size(path: Path) -> int:
    side = path.with_name(path.name + ".data")
    return path.stat().st_size + (side.stat().st_size if side.is_file() else 0)


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None)))


def _signed(x: float, digits: int = 1) -> str:
    """'+1.2' / '-0.3', and '+0.0' rather than '-0.0' for a value that rounds to zero."""
    return f"{round(x, digits) + 0.0:+.{digits}f}"


# ---------------------------------------------------------------------------------------------
# The verdict: explicit rules over a profile's result dict (unit-tested on synthetic dicts).


def verdict(prof: dict[str, Any], *, budget: float = 0.5, batch: int | str | None = None) -> dict[str, Any]:
    """Plain-words verdict for one profile's variants.

    ``prof["variants"]``: dicts with ``name``, ``label``, ``kind`` (fp32/ptq/fp16/qat), ``status``
    ("ok"/"failed"), ``quality`` (0..1, higher is better), optional ``latency[str(batch)]["median_ms"]``,
    ``speedup[str(batch)]`` and ``size_bytes``. ``budget``: accuracy points (quality x 100) a
    variant may lose against FP32. Rules, in order:

    1. FP32 failed -> no verdict.
    2. Best PTQ (highest quality, then fastest) within budget -> "... within X points of FP32 at
       S x speed: QAT not needed". Else with QAT: "QAT recovers R of L points lost by PTQ at the
       same latency" (latencies within 10%) or "at K x the latency of PTQ"; without QAT: "try QAT".
    3. Fastest variant within budget (latency measured) is the recommendation if it is measurably
       faster than FP32 (>= 1.1x, the same 10% band as "same latency"), else FP32, naming for
       when size matters the smallest variant within budget under 0.9x FP32's size that is not
       slower than FP32 (>= 0.9x; else the fastest of them); without latency, the smallest
       variant within budget. Quantized variants slower than 0.9x FP32 are named.
    4. Failed variants and unmeasured latency are stated.
    """
    b = str(batch if batch is not None else prof.get("primary_batch", ""))
    variants = prof["variants"]
    ok = [v for v in variants if v.get("status") == "ok" and v.get("quality") is not None]
    fp32 = next((v for v in ok if v["kind"] == "fp32"), None)
    failed = [v for v in variants if v.get("status") != "ok"]
    sentences: list[str] = []
    if fp32 is None:
        why = next((v.get("error", "") for v in variants if v["kind"] == "fp32"), "not built")
        return {"text": f"No verdict: the FP32 reference failed ({why}).", "recommended": None, "sentences": []}

    def pts(v: dict[str, Any]) -> float:
        return 100.0 * float(v["quality"])

    def loss(v: dict[str, Any]) -> float:
        return pts(fp32) - pts(v)

    def spd(v: dict[str, Any]) -> float | None:
        s = (v.get("speedup") or {}).get(b)
        return float(s) if isinstance(s, (int, float)) else None

    def med(v: dict[str, Any]) -> float | None:
        m = ((v.get("latency") or {}).get(b) or {}).get("median_ms")
        return float(m) if isinstance(m, (int, float)) else None

    def label(v: dict[str, Any]) -> str:
        return v.get("label") or v["name"]

    timed = spd(fp32) is not None
    ptq = [v for v in ok if v["kind"] == "ptq"]
    qat = next((v for v in ok if v["kind"] == "qat"), None)
    facts: dict[str, Any] = {"budget_points": budget, "batch": b}
    if ptq:
        best = max(ptq, key=lambda v: (round(pts(v), 9), spd(v) or 0.0))
        lost = loss(best)
        facts.update(best_ptq=best["name"], ptq_loss_points=lost)
        at = f" at {spd(best):.1f}x speed" if spd(best) is not None else ""
        if lost <= budget:
            closeness = f"within {lost:.1f} points of FP32" if lost >= 0.05 else (
                f"{-lost:.1f} points above FP32" if lost <= -0.05 else "on par with FP32")
            tail = ": QAT not needed"
            if qat is not None:
                tail += f" (QAT: {_signed(-loss(qat))} points vs FP32)"
            sentences.append(f"PTQ {label(best)} is {closeness}{at}{tail}.")
        elif qat is not None:
            lq = loss(qat)
            rec = lost - lq
            facts.update(qat_loss_points=lq, qat_recovered_points=rec)
            if rec > 0:
                mq, mp = med(qat), med(best)
                if mq is not None and mp is not None and mp > 0:
                    ratio = mq / mp
                    lat = " at the same latency" if abs(ratio - 1) <= 0.10 else f" at {ratio:.2f}x the latency of PTQ"
                else:
                    lat = ""
                s = f"QAT recovers {min(rec, lost):.1f} of {lost:.1f} points lost by PTQ{lat}"
                s += ": use QAT rather than PTQ." if lq <= budget else f"; it is still {lq:.1f} points below FP32."
                sentences.append(s)
            else:
                sentences.append(
                    f"QAT does not help: it is {lq:.1f} points below FP32, PTQ {label(best)} {lost:.1f} points."
                )
        else:
            sentences.append(
                f"The best PTQ variant ({label(best)}) loses {lost:.1f} points against FP32 (budget {budget:g}): try QAT "
                "(--task), or keep the most sensitive layers in float (--exclude-op-types / --exclude-nodes)."
            )
    elif qat is not None:
        sentences.append(f"No PTQ variant succeeded; QAT is {loss(qat):.1f} points below FP32.")
    else:
        sentences.append("No quantized variant succeeded.")

    within = [v for v in ok if loss(v) <= budget]
    recommended: str | None

    def unless_size() -> str:
        """When FP32 is kept for speed but a quantized variant within budget is much smaller, say so."""
        fs = fp32.get("size_bytes")
        small = [v for v in within if v["kind"] != "fp32" and v.get("size_bytes") and fs and v["size_bytes"] < 0.9 * fs]
        if not small:
            return ""
        # the smallest that is not slower than FP32 (>= 0.9x, the "Slower than FP32" line's bar); else the fastest
        not_slow = [v for v in small if (spd(v) or 0.0) >= NOT_SLOWER]
        if not_slow:
            v = min(not_slow, key=lambda v: v["size_bytes"])
        else:
            v = max(small, key=lambda v: (spd(v) or 0.0, -v["size_bytes"]))
        at = f" and {spd(v):.2f}x its speed" if spd(v) is not None else ""
        return f", unless size matters: {label(v)} is within {budget:g} points at {v['size_bytes'] / fs:.2f}x its size{at}"
    if timed:
        timed_within = [v for v in within if spd(v) is not None]
        fastest = max(timed_within, key=lambda v: spd(v) or 0.0)
        if fastest["kind"] != "fp32" and (spd(fastest) or 0.0) < MEASURABLY_FASTER:
            # within the noise band of a shared machine: recommending it would rest on noise
            recommended = fp32["name"]
            sentences.append(
                f"No variant within {budget:g} points of FP32 is measurably faster than FP32 at batch {b} "
                f"(fastest: {label(fastest)}, {spd(fastest):.2f}x; {MEASURABLY_FASTER:g}x needed): keep FP32{unless_size()}."
            )
        elif fastest["kind"] == "fp32":
            recommended = fastest["name"]
            sentences.append(f"No variant within {budget:g} points of FP32 is faster than FP32 at batch {b}: keep FP32{unless_size()}.")
        else:
            recommended = fastest["name"]
            sentences.append(
                f"Fastest within {budget:g} points: {label(fastest)}, {spd(fastest):.1f}x FP32 at batch {b} "
                f"({_signed(-loss(fastest))} points)."
            )
        slow = [v for v in ok if v["kind"] != "fp32" and spd(v) is not None and spd(v) < NOT_SLOWER]
        if slow:
            sentences.append("Slower than FP32: " + ", ".join(f"{label(v)} ({spd(v):.2f}x)" for v in slow) + ".")
    else:
        quantized = [v for v in within if v["kind"] != "fp32"]
        pick = min(quantized, key=lambda v: v.get("size_bytes") or 0) if quantized else fp32
        recommended = pick["name"]
        note = prof.get("latency_note") or "not measured"
        sentences.append(f"Latency {note}; by accuracy and size alone: {label(pick)}.")
    if failed:
        sentences.append("Failed: " + "; ".join(f"{v['name']} ({v.get('error', '?')})" for v in failed) + ".")
    facts["recommended"] = recommended
    return {"text": " ".join(sentences), "recommended": recommended, "sentences": sentences, "facts": facts}


# ---------------------------------------------------------------------------------------------
# The run


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not progress, leave=False)


def _qat(task: str, prof: Any, out_path: Path, calib: Any, epochs: int | None) -> dict[str, Any]:
    try:
        from .qat import run_task
    except ImportError as e:
        raise _VariantFailed("build", f"QAT variant failed: onnxq.qat is not available ({_err(e)})") from e
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        info = run_task(task, prof, str(out_path), calibration=calib, epochs=epochs)
    except Exception as e:  # any failure of the user's task is this variant's failure only
        raise _VariantFailed("build", f"QAT variant failed: {_err(e)}") from e
    if not isinstance(info, dict) or not info.get("model_path"):
        raise _VariantFailed("build", "QAT variant failed: onnxq.qat.run_task returned no 'model_path'")
    if not Path(info["model_path"]).is_file():
        raise _VariantFailed("build", f"QAT variant failed: run_task reported {info['model_path']}, which does not exist")
    return info


def compare(
    model: str | os.PathLike | None,
    *,
    calib: str | os.PathLike,
    eval_data: str | os.PathLike,
    outdir: str | os.PathLike,
    profiles: Sequence[Any] = ("auto",),
    labels_key: str | None = None,
    task: str | None = None,
    epochs: int | None = None,
    variants: Sequence[str] | None = None,
    batches: Sequence[int] = (1, 32),
    warmup: int = 5,
    runs: int = 30,
    threads: int | None = None,
    budget: float = 0.5,
    metric: str | None = None,
    allow_fallback: bool = False,
    weight_type: str | None = None,
    progress: bool = False,
    log: Any = None,
) -> dict[str, Any]:
    """Run the comparison and write OUTDIR/report.{json,md} (+ pareto.png); returns the result document.

    >>> doc = compare("m.onnx", calib="c.npz", eval_data="e.npz", outdir="out", runs=10)   # doctest: +SKIP
    >>> [(v["name"], v["quality"]) for v in doc["profiles"][0]["variants"]][:2]             # doctest: +SKIP
    [('fp32', 0.91), ('dynamic', 0.905)]

    ``weight_type`` (e.g. ``"int4"``) overrides the profile's weight type for the PTQ variants
    (static and dynamic), so they can be set against a QAT task that trains with the same weights;
    the QAT task sets its own. Bad data, an unknown profile, or no runnable profile raise InputError /
    ProfileError / ProviderError before anything is written; a variant's own failure is recorded.
    """
    import numpy as np

    from .bench import fixed_batch, host_info
    from .calibration import CalibrationSet, model_inputs
    from .evaldata import eval_metrics, headline, load_eval_data, run_model
    from .evaluate import is_classifier_output
    from .modelio import file_sha256, load_model
    from .ptq import resolve_profile
    from .results import new_document
    from .runtime import available_providers, make_session, required_providers

    say = log or (lambda msg: None)
    outdir = Path(outdir)
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise InputError(f"--batch sizes must be positive integers, got {list(batches)}")
    if runs < 1 or warmup < 0:
        raise InputError(f"--runs must be >= 1 and --warmup >= 0, got {runs} and {warmup}")
    if threads is not None and threads < 0:
        raise InputError(f"--threads must be 0 (onnxruntime's default) or a positive count, got {threads}")
    if budget < 0:
        raise InputError(f"--budget is the accuracy loss allowed, in points; it must be >= 0, got {budget}")
    if metric is not None and metric not in METRICS:
        raise InputError(f"unknown --metric {metric!r}; choose one of: {', '.join(METRICS)}")
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"output {outdir} exists and is not a directory; pass a directory with -o")
    if calib is None or eval_data is None:
        raise InputError("compare needs --calib CALIB.npz and --eval EVAL.npz")
    from .profiles import QTYPES

    if weight_type is not None and weight_type not in QTYPES:
        raise InputError(f"unknown --weight-type {weight_type!r}; choose one of: {', '.join(QTYPES)}")

    # -- profiles and providers (before anything is written) ----------------------------------
    profs = []
    for p in profiles or ("auto",):
        prof, why = resolve_profile(p)
        if prof.name not in [q.name for q in profs]:
            profs.append(prof)
            say(why)
    avail = available_providers()
    missing = {p.name: [x for x in required_providers(p) if x not in avail] for p in profs}
    if all(missing[p.name] for p in profs) and not allow_fallback:
        need = "; ".join(f"{n} needs {', '.join(m)}" for n, m in missing.items())
        raise ProviderError(
            f"no requested profile can run on this machine ({need}; available: {', '.join(avail)}): run compare where "
            "those providers exist and merge with `onnxq report`, add a profile this machine has, or pass --allow-fallback"
        )
    plans = {p.name: plan_variants(p, variants, with_qat=task is not None) for p in profs}

    # -- the FP32 model -----------------------------------------------------------------------
    qat_done: dict[str, dict[str, Any]] = {}
    if model is None:
        if task is None:
            raise InputError("give the FP32 MODEL (.onnx), or --task module:object to export one")
        first = profs[0]
        out_q = outdir / first.name / "qat.onnx"
        try:
            info = _qat(task, first, out_q, str(calib), epochs)
        except _VariantFailed as e:
            raise InputError(f"no MODEL given and the task failed, so there is no FP32 model to compare: {e}") from e
        if not info.get("fp32_model_path"):
            raise InputError("no MODEL given and onnxq.qat.run_task returned no 'fp32_model_path'; pass the FP32 MODEL")
        qat_done[first.name] = info
        model = info["fp32_model_path"]
    model = Path(model)
    fp32_model = load_model(model)
    specs = model_inputs(fp32_model)
    planned_outputs = {(outdir / p / f"{v.name}.onnx").resolve() for p, vs in plans.items() for v in vs}
    if model.resolve() in planned_outputs:
        raise InputError(f"the input model {model} lies where compare writes a variant; choose another -o directory")

    # -- data, checked before anything is written -------------------------------------------
    CalibrationSet.from_source(str(calib), fp32_model, limit=1)  # raises on wrong keys, shapes, dtypes, NaN
    edata = load_eval_data(eval_data, specs, labels_key=labels_key)
    primary = max(batches)
    fb = fixed_batch(specs)
    if fb is not None:
        dropped = [b for b in batches if b != fb]
        batches = [fb]
        primary = fb
        if dropped:
            say(f"the model has a fixed batch size of {fb}: latency measured at batch {fb} only (not {dropped})")
    # Pre-flight: FP32 on the first profile's (or any available) providers checks labels and metric.
    pre_sess, _ = make_session(model, profs[0], allow_fallback=True, threads=threads)
    pre_out = run_model(pre_sess, edata, primary)
    pre_metrics = eval_metrics(pre_out, edata, ref=pre_out)  # raises on out-of-range labels
    main_out = pre_metrics["output"]
    if metric is None:
        metric = "top1" if edata.labels is not None else ("agreement" if is_classifier_output(pre_out[main_out]) else "cosine")
    headline(pre_metrics, metric)  # raises when the metric cannot be computed
    del pre_sess

    settings = {
        "batches": batches,
        "primary_batch": primary,
        "warmup": warmup,
        "runs": runs,
        "threads": threads,
        "threads_label": threads if threads else "profile default (0 = onnxruntime's: one per physical core)",
        "budget_points": budget,
        "allow_fallback": allow_fallback,
        "variants_filter": list(variants) if variants else None,
        "task": task,
        "epochs": epochs,
        "weight_type": weight_type,
        "interleaved": True,
    }
    doc = new_document(
        "compare",
        host=host_info(),
        model={"path": str(model), "sha256": file_sha256(model), "size_bytes": _size(model),
               "inputs": [{"name": s.name, "dtype": np.dtype(s.dtype).name, "shape": list(s.shape)} for s in specs]},
        data={"calib": str(calib), "eval": str(eval_data), "eval_samples": edata.count, "labels_key": edata.labels_key,
              "metric": metric, "metric_label": METRICS[metric], "notes": edata.notes},
        settings=settings,
        profiles=[],
    )

    for prof in profs:
        doc["profiles"].append(
            _run_profile(
                prof, plans[prof.name], model=model, calib=calib, edata=edata, metric=metric, outdir=outdir,
                task=task, epochs=epochs, qat_done=qat_done.get(prof.name), missing=missing[prof.name],
                batches=batches, primary=primary, warmup=warmup, runs=runs, threads=threads, budget=budget,
                allow_fallback=allow_fallback, progress=progress, specs=specs, weight_type=weight_type,
            )
        )
    _write_outputs(doc, outdir)
    return doc


def _run_profile(prof, plan, *, model, calib, edata, metric, outdir, task, epochs, qat_done, missing, batches, primary,
                 warmup, runs, threads, budget, allow_fallback, progress, specs, weight_type=None) -> dict[str, Any]:
    from .bench import LatencyStats, make_feeds, measure_interleaved
    from .evaldata import eval_metrics, headline, run_model
    from .ptq import quantize
    from .runtime import make_session

    pdir = outdir / prof.name
    recs: list[dict[str, Any]] = []
    notes: list[str] = []
    if missing:
        notes.append(
            f"{', '.join(missing)} missing on this machine: accuracy measured on the available providers (marked FALLBACK)"
            + ("; latency measured on them too (FALLBACK)" if allow_fallback else "; latency not measured")
        )
    # -- build ------------------------------------------------------------------------------
    bar = _bar(len(plan), f"{prof.name}: build", progress)
    for v in plan:
        rec: dict[str, Any] = {"name": v.name, "label": v.label, "kind": v.kind, "mode": v.mode, "method": v.method,
                               "per_channel": v.per_channel, "status": "ok"}
        wtype = weight_type if v.mode in ("static", "dynamic") else None
        if wtype:
            rec.update(label=f"{v.label}, {wtype} weights", weight_type=wtype)
        try:
            if v.kind == "fp32":
                rec["path"] = str(model)
            elif v.kind == "qat":
                info = qat_done or _qat(task, prof, pdir / "qat.onnx", str(calib), epochs)
                rec["path"] = str(info["model_path"])
                # scalars, and the scalar entries of small dicts (accuracy side by side, sizes, steps)
                rec["qat"] = {k: (val if _scalar(val) else {x: y for x, y in val.items() if _scalar(y)})
                              for k, val in info.items() if _scalar(val) or isinstance(val, dict)}
            else:
                res = quantize(model, mode=v.mode, profile=prof, calibration=str(calib), method=v.method,
                               per_channel=v.per_channel, weight_type=wtype, output=pdir / f"{v.name}.onnx", progress=False)
                rec["path"] = str(res.output)
                rec["quant"] = {"warnings": res.warnings, "quantized_nodes": res.quantized_nodes,
                                "float_nodes": res.float_nodes, "op_types": res.op_types, "manifest": str(res.manifest)}
            rec["size_bytes"] = _size(Path(rec["path"]))
        except _VariantFailed as e:
            rec.update(status="failed", stage=e.stage, error=str(e))
        except Exception as e:  # one variant's failure is recorded; the others carry on
            rec.update(status="failed", stage="build", error=_err(e))
        recs.append(rec)
        bar.update()
    bar.close()
    low_bit = [r["name"] for r in recs if r["status"] == "ok"
               and (r.get("weight_type") or (r.get("qat") or {}).get("weight_type")) in ("int4", "uint4")]
    if low_bit and "CPUExecutionProvider" in prof.runtime.providers:  # DESIGN.md section 5: say so in every report
        notes.append(f"4-bit weights ({', '.join(low_bit)}): onnxruntime's CPU provider does not fuse them "
                     "(DequantizeLinear feeds a float Conv/Gemm), so they buy size, not speed")
    # -- evaluate -----------------------------------------------------------------------------
    ref_out = None
    bar = _bar(len(recs), f"{prof.name}: evaluate", progress)
    for rec in recs:  # fp32 comes first
        if rec["status"] == "ok":
            try:
                sess, info = make_session(rec["path"], prof, allow_fallback=True, threads=threads)
                rec["eval_providers"] = {"active": info.active, "fallback": info.fallback, "note": info.note}
                out = run_model(sess, edata, primary)
                if rec["kind"] == "fp32":
                    ref_out = out
                m = eval_metrics(out, edata, ref=ref_out)
                rec["metrics"] = m
                rec["quality"] = headline(m, metric) if (ref_out is not None or metric in ("top1", "top5")) else None
                del sess
            except Exception as e:  # recorded per variant
                rec.update(status="failed", stage="evaluate", error=_err(e))
        bar.update()
    bar.close()
    # -- latency --------------------------------------------------------------------------------
    latency_note = None
    if missing and not allow_fallback:
        latency_note = (f"not measured: provider {', '.join(missing)} missing (measure where it is installed and merge "
                        "with onnxq report, or pass --allow-fallback)")
    else:
        opened = []
        for rec in recs:
            if rec["status"] != "ok":
                continue
            try:
                sess, info = make_session(rec["path"], prof, allow_fallback=allow_fallback, threads=threads)
                rec["latency_providers"] = {"active": info.active, "fallback": info.fallback, "note": info.note}
                opened.append((rec, sess))
            except Exception as e:  # e.g. the provider did not activate for this model
                rec["latency_note"] = f"not measured: {_err(e)}"
        bar = _bar(len(batches) * runs, f"{prof.name}: latency", progress)
        for b in batches:
            feeds = make_feeds(specs, b, data=edata.inputs)
            runnable = []
            for rec, sess in opened:  # a trial run isolates a variant that cannot run at this batch
                try:
                    sess.run(None, feeds)
                    runnable.append((rec, sess))
                except Exception as e:  # recorded for this variant; the others are timed
                    rec["latency_note"] = f"not measured at batch {b}: {_err(e)}"
            if not runnable:
                continue
            fns = [(lambda s=s: s.run(None, feeds)) for _, s in runnable]
            times = measure_interleaved(fns, warmup=warmup, runs=runs, on_round=bar.update)
            for (rec, _), t in zip(runnable, times):
                rec.setdefault("latency", {})[str(b)] = LatencyStats.from_times(t, batch=b, warmup=warmup).to_dict()
        bar.close()
        fp = next((r for r in recs if r["kind"] == "fp32"), None)
        for rec in recs:
            for b, st in (rec.get("latency") or {}).items():
                base = ((fp or {}).get("latency") or {}).get(b)
                if base and st["median_ms"] > 0:
                    rec.setdefault("speedup", {})[b] = base["median_ms"] / st["median_ms"]
        del opened
    result = {
        "profile": prof.name,
        "profile_sha256": prof.sha256,
        "providers_requested": list(prof.runtime.providers),
        "providers_missing": list(missing),
        "primary_batch": primary,
        "latency_note": latency_note,
        "notes": notes,
        "variants": recs,
    }
    result["verdict"] = verdict(result, budget=budget, batch=primary)
    return result


def _write_outputs(doc: dict[str, Any], outdir: Path) -> None:
    from .report import compare_markdown, write_pareto_plot
    from .results import atomic_write, write_results

    series: dict[str, list[tuple[str, float, float]]] = {}
    b = str(doc["settings"]["primary_batch"])
    for prof in doc["profiles"]:
        pts = []
        for v in prof["variants"]:
            med = ((v.get("latency") or {}).get(b) or {}).get("median_ms")
            if v["status"] == "ok" and v.get("quality") is not None and med:
                pts.append((v["name"], float(med), 100.0 * float(v["quality"])))
        if pts:
            series[prof["profile"]] = pts
    doc["plot"], doc["plot_note"] = None, None
    if not series:
        doc["plot_note"] = "plot skipped: no latency was measured"
    else:
        try:
            write_pareto_plot(series, outdir / "pareto.png", xlabel=f"median latency at batch {b} (ms)",
                              ylabel=doc["data"]["metric_label"] + " (x100)", title="accuracy vs latency per profile")
            doc["plot"] = "pareto.png"
        except ImportError:
            doc["plot_note"] = "plot skipped: matplotlib is not installed (pip install 'onnxq[plot]')"
    doc["outputs"] = {"report_json": str(outdir / "report.json"), "report_md": str(outdir / "report.md"),
                      "plot": str(outdir / "pareto.png") if doc["plot"] else None}
    atomic_write(outdir / "report.md", compare_markdown(doc) + "\n")
    write_results(doc, outdir / "report.json")
