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

Executors: ``serial`` (default) runs everything here; ``ray`` (:mod:`onnxq.ray_executor`, the only
module that imports ray) runs the same ``_build`` / ``_evaluate`` per variant and ``_time`` per profile
(one interleaved task) as Ray tasks placed by each profile's custom resource.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ._fs import size_with_data
from .errors import InputError, OnnxqError, ProviderError, first_line
from .verdict import ProfileResult, VariantResult, verdict
from .vocab import COMPARE_METRICS, WEIGHT_TYPES

__all__ = ["Variant", "VARIANTS", "plan_variants", "compare", "verdict", "METRICS"]

METRICS = COMPARE_METRICS


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # fp32 | ptq | fp16 | qat | fp32-control
    mode: str | None = None  # the ptq mode, or None
    method: str | None = None
    per_channel: bool | None = None
    options: tuple[tuple[str, Any], ...] = ()  # further onnxq.quantize keywords (algorithms)
    label_text: str = ""

    @property
    def label(self) -> str:
        """Plain words for verdicts: 'static per-channel (percentile)'."""
        if self.label_text:
            return self.label_text
        if self.kind == "ptq" and self.mode == "static":
            return f"static {'per-channel' if self.per_channel else 'per-tensor'} ({self.method})"
        return {"fp32": "FP32", "fp16": "fp16", "qat": "QAT", "fp32-control": "FP32 control", "ptq": self.mode or self.name}[self.kind]


_PLAIN = (("bias_correction", "none"), ("cle", False), ("smoothquant", False))  # the calibration method alone

VARIANTS: tuple[Variant, ...] = (
    Variant("fp32", "fp32"),
    Variant("dynamic", "ptq", "dynamic"),
    *(
        Variant(f"static-{'pc' if pc else 'pt'}-{m}", "ptq", "static", m, pc, _PLAIN)
        for pc in (False, True)
        for m in ("minmax", "entropy", "percentile")
    ),
    # the profile's own static recipe (CPU profiles: per-sample ranges, CLE, fast bias correction, SmoothQuant)
    Variant("static-default", "ptq", "static", label_text="static, the profile's recipe"),
    # the data-free fix for per-tensor weight targets (DFQ): equalized weights and bias correction
    Variant("static-pt-cle-bc", "ptq", "static", "mean_minmax", False, (("bias_correction", "fast"), ("cle", True)),
            label_text="static per-tensor (CLE + bias correction)"),
    Variant("fp16", "fp16", "fp16"),
    Variant("qat", "qat"),
    Variant("qat-control", "fp32-control", label_text="FP32 control (fine-tuned like QAT)"),
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
        if v.kind in ("qat", "fp32-control") and not with_qat:
            continue
        if v.mode and v.mode not in profile.quant.modes:
            continue
        if v.kind not in ("fp32", "qat", "fp32-control") and patterns and not any(fnmatch.fnmatch(v.name, p) for p in patterns):
            continue
        out.append(v)
    return out


def _drop_inapplicable(plans: dict[str, list[Variant]], model: Path, patterns: Sequence[str] | None, say) -> dict[str, list[Variant]]:
    """Leave out the CLE variant on a model without Conv (CLE equalizes Conv pairs: it could only fail), unless
    ``--variants`` names it exactly."""
    from .modelio import load_model

    if patterns and "static-pt-cle-bc" in patterns:  # named exactly: tried, and fails saying why
        return plans
    graph = load_model(model, load_external=False).graph
    if any(n.op_type in ("Conv", "ConvTranspose") for n in graph.node):
        return plans
    if any(v.name == "static-pt-cle-bc" for vs in plans.values() for v in vs):
        say("variant static-pt-cle-bc left out: the model has no Conv for cross-layer equalization")
    return {p: [v for v in vs if v.name != "static-pt-cle-bc"] for p, vs in plans.items()}


class _VariantFailed(Exception):
    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def _err(e: BaseException) -> str:
    if isinstance(e, OnnxqError):
        return str(e)
    text = first_line(e)
    return text if text == type(e).__name__ else f"{type(e).__name__}: {text}"


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None)))


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not progress, leave=False)


@dataclass
class _Run:
    """What every profile of one compare run shares: the model, its data and the measurement settings."""

    model: Path
    calib: str
    edata: Any
    specs: list
    metric: str
    outdir: Path
    batches: list[int]
    primary: int
    warmup: int
    runs: int
    threads: int | None
    budget: float
    allow_fallback: bool
    progress: bool
    task: str | None = None
    epochs: int | None = None
    weight_type: str | None = None
    qat_done: dict[str, dict[str, Any]] = field(default_factory=dict)
    output_name: str | None = None
    cache_base: dict[str, Any] = field(default_factory=dict)  # what every variant's cache key includes
    fresh: bool = False
    shared_calibration: Any = None  # ptq.RangeMemo: pt and pc variants of one estimator share their calibration pass


def _qat(task: str, prof: Any, out_path: Path, calib: Any, epochs: int | None) -> dict[str, Any]:
    try:
        from .qat import run_task
    except ImportError as e:
        raise _VariantFailed("build", f"QAT variant failed: onnxq.qat is not available ({_err(e)})") from e
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        info = run_task(task, prof, str(out_path), calibration=calib, epochs=epochs, allow_fallback=True)
    except Exception as e:  # any failure of the user's task is this variant's failure only
        raise _VariantFailed("build", f"QAT variant failed: {_err(e)}") from e
    if not isinstance(info, dict) or not info.get("model_path"):
        raise _VariantFailed("build", "QAT variant failed: onnxq.qat.run_task returned no 'model_path'")
    if not Path(info["model_path"]).is_file():
        raise _VariantFailed("build", f"QAT variant failed: run_task reported {info['model_path']}, which does not exist")
    return info


# ---------------------------------------------------------------------------------------------
# Checks before anything is written


def _check_args(batches, runs, warmup, threads, budget, metric, outdir: Path, calib, eval_data, weight_type) -> list[int]:
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise InputError(f"--batch sizes must be positive integers, got {list(batches)}")
    if runs < 1 or warmup < 0:
        raise InputError(f"--runs must be >= 1 and --warmup >= 0, got {runs} and {warmup}")
    if threads is not None and threads < 0:
        raise InputError(f"--threads must be 0 (onnxruntime's default) or a positive count, got {threads}")
    if budget is not None and (budget < 0 or budget != budget):
        raise InputError(f"--budget must be >= 0 (points of accuracy, or the bound on KL / cosine / SQNR), got {budget}")
    if metric is not None and metric not in METRICS:
        raise InputError(f"unknown --metric {metric!r}; choose one of: {', '.join(METRICS)}")
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"output {outdir} exists and is not a directory; pass a directory with -o")
    if calib is None or eval_data is None:
        raise InputError("compare needs --calib CALIB.npz and --eval EVAL.npz")
    if weight_type is not None and weight_type not in WEIGHT_TYPES:
        raise InputError(f"unknown --weight-type {weight_type!r}; choose one of: {', '.join(WEIGHT_TYPES)}")
    return batches


def _resolve_profiles(profiles: Sequence[Any], allow_fallback: bool, say, here: bool = True) -> tuple[list[Any], dict[str, list[str]]]:
    """The profiles and the providers each lacks on this machine; with ``here`` (the work runs on this machine),
    none of them runnable is refused."""
    from .runtime import available_providers, required_providers, resolve_profile

    profs = []
    for p in profiles or ("auto",):
        prof, why = resolve_profile(p)
        if prof.name not in [q.name for q in profs]:
            profs.append(prof)
            say(why)
    avail = available_providers()
    missing = {p.name: [x for x in required_providers(p) if x not in avail] for p in profs}
    if here and all(missing[p.name] for p in profs) and not allow_fallback:
        need = "; ".join(f"{n} needs {', '.join(m)}" for n, m in missing.items())
        raise ProviderError(
            f"no requested profile can run on this machine ({need}; available: {', '.join(avail)}): run compare where "
            "those providers exist and merge with `onnxq report`, add a profile this machine has, or pass --allow-fallback"
        )
    return profs, missing


def _fp32_from_task(task: str | None, prof: Any, outdir: Path, calib: Any, epochs: int | None, qat_done: dict) -> Path:
    """No MODEL given: the task exports the FP32 network (and trains QAT for the first profile)."""
    if task is None:
        raise InputError("give the FP32 MODEL (.onnx), or --task module:object to export one")
    try:
        info = _qat(task, prof, outdir / prof.name / "qat.onnx", str(calib), epochs)
    except _VariantFailed as e:
        raise InputError(f"no MODEL given and the task failed, so there is no FP32 model to compare: {e}") from e
    if not info.get("fp32_model_path"):
        raise InputError("no MODEL given and onnxq.qat.run_task returned no 'fp32_model_path'; pass the FP32 MODEL")
    qat_done[prof.name] = info
    return Path(info["fp32_model_path"])


def _check_outdir(outdir: Path, model: Path, fresh: bool) -> None:
    """An OUTDIR holding another model's compare is not overwritten by accident."""
    import json

    from ._fs import file_sha256

    old = outdir / "report.json"
    if fresh or not old.is_file():
        return
    try:
        prev = json.loads(old.read_text(encoding="utf-8"))["model"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a compare report we can read: the per-variant records decide
    if prev != file_sha256(model):
        raise InputError(f"{outdir} holds a compare of another model (sha256 {prev[:12]}, this one "
                         f"{file_sha256(model)[:12]}); give another -o, or pass --fresh to rebuild everything there")


def _cache_base(run: _Run, calib: Any, eval_data: Any, labels_key) -> dict[str, Any]:
    from ._fs import file_sha256

    def sha(p: Any) -> str:
        return file_sha256(p) if Path(str(p)).is_file() else str(p)

    return {"model": sha(run.model), "calib": sha(calib), "eval": sha(eval_data), "labels": labels_key,
            "batches": run.batches, "runs": run.runs, "warmup": run.warmup, "threads": run.threads,
            "output": run.output_name, "metric": run.metric}  # a variant's stored quality is in this metric


def _check_data(model: Path, calib: Any, eval_data: Any, labels_key, metric, batches, threads, prof, say, output_name=None):
    """Load and check the data against FP32 (labels, metric, output); returns
    (specs, edata, metric, batches, primary, (output, why))."""
    from .bench import fixed_batch
    from .calibration import CalibrationSet, model_inputs
    from .evaldata import eval_metrics, headline, load_eval_data, run_model
    from .vocab import is_embedding_name
    from .evaluate import is_classifier_output
    from .modelio import load_model
    from .runtime import make_session

    fp32_model = load_model(model)
    specs = model_inputs(fp32_model)
    CalibrationSet.from_source(str(calib), fp32_model, limit=1)  # raises on wrong keys, shapes, dtypes, NaN
    edata = load_eval_data(eval_data, specs, labels_key=labels_key)
    primary = max(batches)
    fb = fixed_batch(specs)
    if fb is not None:
        dropped = [b for b in batches if b != fb]
        batches, primary = [fb], fb
        if dropped:
            say(f"the model has a fixed batch size of {fb}: latency measured at batch {fb} only (not {dropped})")
    # Pre-flight: FP32 on the first profile's (or any available) providers checks labels and metric.
    pre_sess, _ = make_session(model, prof, allow_fallback=True, threads=threads)
    pre_out = run_model(pre_sess, edata, primary)
    pre_metrics = eval_metrics(pre_out, edata, ref=pre_out, output_name=output_name)  # raises on out-of-range labels
    main = pre_out[pre_metrics["output"]]
    if metric is None:
        scores = is_classifier_output(main) and not is_embedding_name(pre_metrics["output"])
        metric = "top1" if edata.labels is not None else ("kl" if scores else "cosine")
    headline(pre_metrics, metric)  # raises when the metric cannot be computed
    say(f"judging output {pre_metrics['output']!r} ({pre_metrics['output_reason']}) by {metric}")
    return specs, edata, metric, batches, primary, (pre_metrics["output"], pre_metrics["output_reason"])


# ---------------------------------------------------------------------------------------------
# One profile: build, evaluate, time


def _qat_info(prof: Any, run: _Run) -> dict[str, Any]:
    """The QAT task's result for this profile (run once, shared by the qat and qat-control variants)."""
    if prof.name not in run.qat_done:
        run.qat_done[prof.name] = _qat(run.task, prof, run.outdir / prof.name / "qat.onnx", run.calib, run.epochs)
    return run.qat_done[prof.name]


def _record(v: Variant, run: _Run) -> VariantResult:
    """The empty record of one variant: its name, label and (for PTQ with --weight-type) weight type."""
    rec = VariantResult(v.name, v.label, v.kind, mode=v.mode, method=v.method, per_channel=v.per_channel)
    wtype = run.weight_type if v.mode in ("static", "dynamic") else None
    if wtype:
        rec.label, rec.weight_type = f"{v.label}, {wtype} weights", wtype
    return rec


def _build(v: Variant, prof: Any, run: _Run) -> VariantResult:
    from .ptq import quantize

    rec = _record(v, run)
    wtype = rec.weight_type
    try:
        if v.kind == "fp32":
            rec.path = str(run.model)
        elif v.kind in ("qat", "fp32-control"):
            info = _qat_info(prof, run)
            key = "model_path" if v.kind == "qat" else "fp32_control_model_path"
            if not info.get(key):
                raise _VariantFailed("build", f"the QAT task reported no {key!r} (onnxq.qat.run_task trains the FP32 control)")
            rec.path = str(info[key])
            # scalars, and the scalar entries of small dicts (accuracy side by side, sizes, steps)
            rec.qat = {k: (val if _scalar(val) else {x: y for x, y in val.items() if _scalar(y)})
                       for k, val in info.items() if _scalar(val) or isinstance(val, dict)}
        else:
            res = quantize(run.model, mode=v.mode, profile=prof, calibration=run.calib, method=v.method,
                           per_channel=v.per_channel, weight_type=wtype, output=run.outdir / prof.name / f"{v.name}.onnx", allow_fallback=True,
                           progress=False, shared_calibration=run.shared_calibration, **dict(v.options))
            rec.path = str(res.output)
            rec.quant = {"warnings": res.warnings, "quantized_nodes": res.quantized_nodes, "float_nodes": res.float_nodes,
                         "op_types": res.op_types, "manifest": str(res.manifest),
                         "recipe": {k: res.recipe.to_dict()[k] for k in ("weight_type", "per_channel", "algorithms")},
                         "algorithms": res.calibration.get("algorithms")}
            rec.method = res.recipe.calibration.method if res.recipe.calibration else v.method
            rec.per_channel = res.recipe.per_channel
        rec.size_bytes = size_with_data(rec.path)
    except _VariantFailed as e:
        rec.fail(e.stage, str(e))
    except Exception as e:  # one variant's failure is recorded; the others carry on
        rec.fail("build", _err(e))
    return rec


def _evaluate(recs: list[VariantResult], prof: Any, run: _Run, ref_out: Any = None) -> Any:
    """Score each record in order (FP32 first, or ``ref_out``: FP32's outputs from elsewhere); returns FP32's outputs."""
    from .evaldata import eval_metrics, headline, run_model
    from .runtime import make_session

    bar = _bar(len(recs), f"{prof.name}: evaluate", run.progress)
    for rec in recs:  # fp32 comes first
        if rec.ok:
            try:
                sess, info = make_session(rec.path, prof, allow_fallback=True, threads=run.threads)
                rec.eval_providers = {"active": info.active, "fallback": info.fallback, "note": info.note}
                out = run_model(sess, run.edata, run.primary)
                if rec.kind == "fp32":
                    ref_out = out
                rec.metrics = eval_metrics(out, run.edata, ref=ref_out, output_name=run.output_name)
                computable = ref_out is not None or run.metric in ("top1", "top5")
                rec.quality = headline(rec.metrics, run.metric) if computable else None
                del sess
            except Exception as e:  # recorded per variant
                rec.fail("evaluate", _err(e))
        bar.update()
    bar.close()
    return ref_out


SLOW_PROBE = 2.0  # a variant over this many times FP32's probe latency is not timed at full rounds
PROBE_RUNS = 3


def _open_for_timing(recs: list[VariantResult], prof: Any, run: _Run) -> list[tuple[VariantResult, Any]]:
    from .runtime import make_session

    opened = []
    for rec in recs:
        if not rec.ok:
            continue
        try:
            # no spinning: with many sessions open, idle pool threads spinning steal the cores the timed one needs
            sess, info = make_session(rec.path, prof, allow_fallback=run.allow_fallback, threads=run.threads, spinning=False)
            rec.latency_providers = {"active": info.active, "fallback": info.fallback, "note": info.note}
            opened.append((rec, sess))
        except Exception as e:  # e.g. the provider did not activate for this model
            rec.latency_note = f"not measured: {_err(e)}"
    return opened


def _probe(runnable: list, feeds: dict, run: _Run, b: int) -> list:
    """A short interleaved probe; variants clearly slower than FP32 keep the probe's numbers and leave the full rounds."""
    import numpy as np

    from .bench import measure_interleaved
    from .results import LatencyStats

    times = measure_interleaved([(lambda s=s: s.run(None, feeds)) for _, s in runnable], warmup=1, runs=PROBE_RUNS)
    meds = {rec.name: float(np.median(t)) for (rec, _), t in zip(runnable, times)}
    base = next((meds[r.name] for r, _ in runnable if r.kind == "fp32"), None)
    keep = []
    for (rec, sess), t in zip(runnable, times):
        if base and rec.kind != "fp32" and meds[rec.name] > SLOW_PROBE * base:
            rec.latency[b] = LatencyStats.from_times(t, batch=b, warmup=1)
            rec.latency_note = (f"probe only at batch {b}: {base / meds[rec.name]:.2f}x FP32 over {PROBE_RUNS} runs (more than "
                                f"{SLOW_PROBE:g}x slower, so not timed at full rounds)")
        else:
            keep.append((rec, sess))
    return keep


def _time(recs: list[VariantResult], prof: Any, run: _Run) -> None:
    """Latency of every variant at every batch, interleaved; speed-ups against FP32 (earlier numbers are dropped)."""
    from .bench import make_feeds, measure_interleaved
    from .results import LatencyStats

    for r in recs:  # all are timed again together, so every latency comes from one interleaved run
        r.latency, r.speedup, r.latency_note = {}, {}, None
    opened = _open_for_timing(recs, prof, run)
    bar = _bar(len(run.batches) * run.runs, f"{prof.name}: latency", run.progress)
    for b in run.batches:
        feeds = make_feeds(run.specs, b, data=run.edata.inputs)
        runnable = []
        for rec, sess in opened:  # a trial run isolates a variant that cannot run at this batch
            try:
                sess.run(None, feeds)
                runnable.append((rec, sess))
            except Exception as e:  # recorded for this variant; the others are timed
                rec.latency_note = f"not measured at batch {b}: {_err(e)}"
        runnable = _probe(runnable, feeds, run, b) if len(runnable) > 1 else runnable
        if not runnable:
            continue
        fns = [(lambda s=s: s.run(None, feeds)) for _, s in runnable]
        times = measure_interleaved(fns, warmup=run.warmup, runs=run.runs, on_round=bar.update)
        for (rec, _), t in zip(runnable, times):
            rec.latency[b] = LatencyStats.from_times(t, batch=b, warmup=run.warmup)
    bar.close()
    fp = next((r for r in recs if r.kind == "fp32"), None)
    for rec in recs:
        for b, st in rec.latency.items():
            base = fp.median_ms(b) if fp is not None else None
            if base and st.median_ms > 0:
                rec.speedup[b] = base / st.median_ms


def _low_bit_note(recs: list[VariantResult], prof: Any) -> str | None:
    low = [r.name for r in recs if r.ok and (r.weight_type or (r.qat or {}).get("weight_type")) in ("int4", "uint4")]
    if low and "CPUExecutionProvider" in prof.runtime.providers:  # DESIGN.md section 5: say so in every report
        return (f"4-bit weights ({', '.join(low)}): onnxruntime's CPU provider does not fuse them "
                "(DequantizeLinear feeds a float Conv/Gemm), so they buy size, not speed")
    return None


def _cache_key(v: Variant, prof: Any, run: _Run) -> str:
    """What a variant's record depends on: model, profile, variant, data, settings and onnxq's version."""
    import hashlib
    import json

    from . import __version__

    doc = dict(run.cache_base, profile=prof.sha256, variant=[v.name, v.kind, v.mode, v.method, v.per_channel, list(v.options)],
               weight_type=run.weight_type if v.mode in ("static", "dynamic") else None, onnxq=__version__)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _cached(v: Variant, prof: Any, run: _Run) -> VariantResult | None:
    """The record an earlier run left for this exact variant, if its model file is still the one it measured."""
    import json

    from ._fs import file_sha256

    path = run.outdir / prof.name / f"{v.name}.result.json"
    if run.fresh or not path.is_file() or v.kind in ("qat", "fp32-control"):
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        rec = VariantResult.from_dict(doc["record"])
        if doc.get("key") != _cache_key(v, prof, run) or not rec.ok or not rec.path or file_sha256(rec.path) != doc.get("sha256"):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # an unreadable or stale record is rebuilt, never trusted
    rec.cached = True
    return rec


def _store(v: Variant, prof: Any, run: _Run, rec: VariantResult) -> None:
    from ._fs import file_sha256
    from .results import atomic_write, dumps

    if rec.ok and rec.path and v.kind not in ("qat", "fp32-control"):
        doc = {"key": _cache_key(v, prof, run), "sha256": file_sha256(rec.path), "record": rec.to_dict()}
        atomic_write(run.outdir / prof.name / f"{v.name}.result.json", dumps(doc))


def _profile_result(prof: Any, missing: list[str], run: _Run, where: str = "on this machine") -> ProfileResult:
    """An empty profile result; with providers missing ``where`` the variants ran, the notes saying what that means."""
    result = ProfileResult(prof.name, prof.sha256, list(prof.runtime.providers), list(missing), run.primary)
    if missing:
        result.notes.append(
            f"{', '.join(missing)} missing {where}: accuracy measured on the available providers (marked FALLBACK)"
            + ("; latency measured on them too (FALLBACK)" if run.allow_fallback else "; latency not measured"))
        if not run.allow_fallback:
            result.latency_note = (f"not measured: provider {', '.join(missing)} missing (measure where it is installed and "
                                   "merge with onnxq report, or pass --allow-fallback)")
    return result


def _finish_profile(result: ProfileResult, plan: list[Variant], prof: Any, run: _Run) -> ProfileResult:
    """Built, scored and timed: the notes, the cache records and the verdict."""
    note = _low_bit_note(result.variants, prof)
    if note:
        result.notes.append(note)
    fresh = [r for r in result.variants if not r.cached]
    cached = len(result.variants) - len(fresh)
    if cached:
        result.notes.append(f"{cached} of {len(result.variants)} variants reused from this folder's cache"
                            + (" (built, scored and timed in an earlier run with the same model, data and settings)" if not fresh
                               else " (built and scored earlier; all timed again in this run)"))
    for v, r in zip(plan, result.variants):
        if not r.cached:
            _store(v, prof, run, r)
    result.verdict = verdict(result, budget=run.budget, batch=run.primary, metric=run.metric)
    return result


def _run_profile(prof: Any, plan: list[Variant], missing: list[str], run: _Run) -> ProfileResult:
    """One profile in this process (``--executor serial``): build, evaluate, time, decide."""
    result = _profile_result(prof, missing, run)
    bar = _bar(len(plan), f"{prof.name}: build", run.progress)
    for v in plan:
        result.variants.append(_cached(v, prof, run) or _build(v, prof, run))
        bar.update()
    bar.close()
    fresh = [r for r in result.variants if not r.cached]
    if fresh:
        _evaluate(result.variants, prof, run)  # FP32 first: every variant is scored against this run's FP32 outputs
    if fresh and result.latency_note is None:  # any new variant: all are timed again together
        _time(result.variants, prof, run)
    return _finish_profile(result, plan, prof, run)


# ---------------------------------------------------------------------------------------------
# The run


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
    budget: float | None = None,
    metric: str | None = None,
    allow_fallback: bool = False,
    weight_type: str | None = None,
    output_name: str | None = None,
    fresh: bool = False,
    executor: str = "serial",
    ray_address: str | None = None,
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

    ``metric`` defaults to top-1 accuracy with labels, else KL for (N, classes) outputs, else cosine;
    ``budget`` to that metric's :data:`onnxq.verdict.DEFAULT_BUDGETS` entry. ``output_name`` picks the
    output judged (default: see :func:`onnxq.evaldata.choose_output`). Each variant's record is cached
    in OUTDIR (keyed by model, profile, variant, data and settings): a rerun builds only what changed;
    ``fresh`` ignores the cache. OUTDIR holding a compare of another model is refused.

    ``executor``: ``"serial"`` (this process) or ``"ray"`` (every variant as Ray work, placed by the
    profile's resource; latency still one interleaved task per profile; see :mod:`onnxq.ray_executor`) on
    the cluster at ``ray_address`` (HOST:PORT), or on a local instance started for the run.
    """
    say = log or (lambda msg: None)
    outdir = Path(outdir)
    batches = _check_args(batches, runs, warmup, threads, budget, metric, outdir, calib, eval_data, weight_type)
    ex = _executor(executor, ray_address)
    profs, missing = _resolve_profiles(profiles, allow_fallback, say, here=ex is None or ex.local)
    plans = {p.name: plan_variants(p, variants, with_qat=task is not None) for p in profs}
    if ex is not None:
        ex.start(profs, missing, allow_fallback, say)  # refuses a profile no node can run, before any work
    try:
        qat_done: dict[str, dict[str, Any]] = {}
        model = Path(model) if model is not None else _fp32_from_task(task, profs[0], outdir, calib, epochs, qat_done)
        plans = _drop_inapplicable(plans, model, variants, say)
        planned = {(outdir / p / f"{v.name}.onnx").resolve() for p, vs in plans.items() for v in vs}
        if model.resolve() in planned:
            raise InputError(f"the input model {model} lies where compare writes a variant; choose another -o directory")
        _check_outdir(outdir, model, fresh)
        specs, edata, metric, batches, primary, chosen = _check_data(model, calib, eval_data, labels_key, metric, batches, threads,
                                                                     profs[0], say, output_name)
        if budget is None:
            from .verdict import DEFAULT_BUDGETS

            budget = DEFAULT_BUDGETS[metric]
        run = _Run(model, str(calib), edata, specs, metric, outdir, batches, primary, warmup, runs, threads, budget,
                   allow_fallback, progress, task, epochs, weight_type, qat_done, output_name=chosen[0], fresh=fresh)
        run.cache_base = _cache_base(run, calib, eval_data, labels_key)
        from .ptq import RangeMemo

        run.shared_calibration = RangeMemo()
        doc = _document(run, calib, eval_data, variants)
        doc["data"].update(output=chosen[0], output_reason=chosen[1])
        if ex is None:
            for prof in profs:
                doc["profiles"].append(_run_profile(prof, plans[prof.name], missing[prof.name], run).to_dict())
        else:
            doc["profiles"] += ex.run(profs, plans, run)
            doc["executor"] = ex.describe()
        _write_outputs(doc, outdir)
        return doc
    finally:
        if ex is not None:
            ex.close()


EXECUTORS = ("serial", "ray")


def _executor(executor: str, ray_address: str | None):
    """None for ``serial`` (which never imports ray); else the Ray executor, ray importable and the address answering."""
    if executor not in EXECUTORS:
        raise InputError(f"unknown --executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    if executor == "serial":
        if ray_address is not None:
            raise InputError("--ray-address needs --executor ray; add it, or drop --ray-address")
        return None
    from .ray_executor import RayExecutor

    return RayExecutor(ray_address)


def _document(run: _Run, calib: Any, eval_data: Any, variants: Sequence[str] | None) -> dict[str, Any]:
    import numpy as np

    from ._fs import file_sha256
    from .bench import host_ceiling, host_info
    from .results import new_document

    settings = {
        "batches": run.batches, "primary_batch": run.primary, "warmup": run.warmup, "runs": run.runs,
        "threads": run.threads,
        "threads_label": run.threads if run.threads else "profile default (0 = onnxruntime's: one per physical core)",
        "budget_points": run.budget, "budget": _budget_doc(run), "budget_reason": _budget_reason(run),
        "allow_fallback": run.allow_fallback, "timing": "interleaved; intra-op pool threads do not spin between runs; "
        f"variants over {SLOW_PROBE:g}x FP32's latency in a {PROBE_RUNS}-run probe keep the probe's numbers",
        "variants_filter": list(variants) if variants else None, "task": run.task, "epochs": run.epochs,
        "weight_type": run.weight_type, "interleaved": True,
    }
    return new_document(
        "compare",
        host=dict(host_info(), ceiling=host_ceiling()),
        model={"path": str(run.model), "sha256": file_sha256(run.model), "size_bytes": size_with_data(run.model),
               "inputs": [{"name": s.name, "dtype": np.dtype(s.dtype).name, "shape": list(s.shape)} for s in run.specs]},
        data={"calib": str(calib), "eval": str(eval_data), "eval_samples": run.edata.count,
              "labels_key": run.edata.labels_key, "metric": run.metric, "metric_label": METRICS[run.metric],
              "notes": run.edata.notes},
        settings=settings,
        profiles=[],
    )


def _budget_doc(run: _Run) -> dict[str, Any]:
    from .verdict import Budget

    b = Budget(run.metric, float(run.budget))
    return {"metric": run.metric, "value": run.budget, "text": b.text()}


def _budget_reason(run: _Run) -> str:
    from .verdict import DEFAULT_BUDGETS

    if run.budget != DEFAULT_BUDGETS.get(run.metric):
        return "--budget"
    return {"top1": "default: half a point of accuracy", "top5": "default: half a point of accuracy",
            "agreement": "default: one point of top-1 agreement",
            "kl": "default for unlabelled classifier outputs, chosen by measurement: benchmarks/results/budgets.md",
            "cosine": "default for embeddings, chosen by measurement: benchmarks/results/budgets.md",
            "sqnr": "default"}.get(run.metric, "")


def _plot_series(doc: dict[str, Any]) -> dict[str, list[tuple[str, float, float]]]:
    series: dict[str, list[tuple[str, float, float]]] = {}
    b = str(doc["settings"]["primary_batch"])
    for prof in doc["profiles"]:
        pts = []
        for v in prof["variants"]:
            med = ((v.get("latency") or {}).get(b) or {}).get("median_ms")
            if v["status"] == "ok" and v.get("quality") is not None and med:
                q = float(v["quality"])
                pts.append((v["name"], float(med), 100.0 * q if doc["data"]["metric"] in ("top1", "top5", "agreement") else q))
        if pts:
            series[prof["profile"]] = pts
    return series


def _write_outputs(doc: dict[str, Any], outdir: Path) -> None:
    from .report import compare_markdown, write_pareto_plot
    from .results import atomic_write, write_results

    series = _plot_series(doc)
    b = str(doc["settings"]["primary_batch"])
    doc["plot"], doc["plot_note"] = None, None
    if not series:
        doc["plot_note"] = "plot skipped: no latency was measured"
    else:
        try:
            write_pareto_plot(series, outdir / "pareto.png", xlabel=f"median latency at batch {b} (ms)",
                              ylabel=doc["data"]["metric_label"] + (" (x100)" if doc["data"]["metric"] in ("top1", "top5", "agreement") else ""),
                              title="quality vs latency per profile")
            doc["plot"] = "pareto.png"
        except ImportError:
            doc["plot_note"] = "plot skipped: matplotlib is not installed (pip install 'onnxq[plot]')"
    doc["outputs"] = {"report_json": str(outdir / "report.json"), "report_md": str(outdir / "report.md"),
                      "plot": str(outdir / "pareto.png") if doc["plot"] else None}
    atomic_write(outdir / "report.md", compare_markdown(doc) + "\n")
    write_results(doc, outdir / "report.json")
