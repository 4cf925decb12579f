"""Typed compare records and the verdict rules over them. Standard library only (``onnxq report`` uses it).

>>> from onnxq.verdict import VariantResult, ProfileResult, verdict
>>> fp32 = VariantResult("fp32", "FP32", "fp32", quality=0.90, speedup={32: 1.0}, size_bytes=4000)
>>> pc = VariantResult("static-pc-percentile", "static per-channel (percentile)", "ptq", quality=0.899,
...                    speedup={32: 2.4}, size_bytes=1100)
>>> verdict(ProfileResult("cpu-x86-vnni", primary_batch=32, variants=[fp32, pc]), budget=0.5)["recommended"]
'static-pc-percentile'

A :class:`VariantResult` holds one variant of one profile as numbers (latency per batch as
:class:`onnxq.results.LatencyStats`, speed-up per batch as floats, quality in 0..1), and writes the
JSON shape of ``onnxq.results/1`` (batches as string keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .results import LatencyStats, num

__all__ = ["VariantResult", "ProfileResult", "Budget", "verdict", "MEASURABLY_FASTER", "NOT_SLOWER", "POINT_METRICS", "LABELLED", "metric_value", "METRIC_HELP", "DEFAULT_BUDGETS"]

# A variant must beat FP32 by this factor to be recommended over it (10%, the band within which
# the verdict also calls two latencies "the same": run-to-run noise on a shared CPU is of that order).
MEASURABLY_FASTER = 1.1
NOT_SLOWER = 0.9  # below this, a variant is named "slower than FP32"


@dataclass
class VariantResult:
    """One variant of one profile: what was built, how good it is, how fast, or why it failed."""

    name: str
    label: str
    kind: str  # fp32 | ptq | fp16 | qat
    mode: str | None = None
    method: str | None = None
    per_channel: bool | None = None
    status: str = "ok"  # ok | failed
    stage: str | None = None  # build | evaluate, when failed
    error: str | None = None
    path: str | None = None
    size_bytes: int | None = None
    weight_type: str | None = None
    quant: dict[str, Any] | None = None  # what quantize reported: warnings, node counts, op types, manifest
    qat: dict[str, Any] | None = None  # facts the QAT task returned
    metrics: dict[str, Any] | None = None
    quality: float | None = None  # the compare metric, 0..1, higher is better
    eval_providers: dict[str, Any] | None = None
    latency_providers: dict[str, Any] | None = None
    latency: dict[int, LatencyStats] = field(default_factory=dict)
    speedup: dict[int, float] = field(default_factory=dict)
    latency_note: str | None = None
    cached: bool = False  # reused from the output folder's cache (built in an earlier run)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def fail(self, stage: str, error: str) -> None:
        self.status, self.stage, self.error = "failed", stage, error

    def median_ms(self, batch: int) -> float | None:
        st = self.latency.get(batch)
        return st.median_ms if st is not None else None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["latency"] = {str(b): st.to_dict() for b, st in self.latency.items()}
        d["speedup"] = {str(b): s for b, s in self.speedup.items()}
        return {k: v for k, v in d.items() if v is not None and v != {} and not (k == "cached" and v is False)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VariantResult":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known and k not in ("latency", "speedup", "quality")}
        kw["quality"] = num(d.get("quality"))
        kw["latency"] = {int(b): LatencyStats.from_dict(st) for b, st in (d.get("latency") or {}).items()}
        kw["speedup"] = {int(b): float(s) for b, s in (d.get("speedup") or {}).items() if num(s) is not None}
        return cls(**kw)


@dataclass
class ProfileResult:
    """One profile of a compare run: its variants and the verdict over them."""

    profile: str
    profile_sha256: str = ""
    providers_requested: list[str] = field(default_factory=list)
    providers_missing: list[str] = field(default_factory=list)
    primary_batch: int = 1
    latency_note: str | None = None
    notes: list[str] = field(default_factory=list)
    variants: list[VariantResult] = field(default_factory=list)
    verdict: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["variants"] = [v.to_dict() for v in self.variants]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProfileResult":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known and k != "variants"}
        kw["variants"] = [VariantResult.from_dict(v) for v in d.get("variants") or []]
        return cls(**kw)


METRIC_HELP = {
    "top1": "top-1 accuracy (labels)", "top5": "top-5 accuracy (labels)", "agreement": "top-1 agreement with FP32",
    "kl": "mean KL(softmax FP32 || softmax variant)", "cosine": "mean per-sample cosine to FP32", "sqnr": "SQNR vs FP32 (dB)",
}


def metric_value(metrics: dict[str, Any], metric: str) -> float:
    """The value of ``metric`` for the judged output of an eval/compare metrics record (stdlib; re-derivable)."""
    from .errors import InputError
    from .vocab import is_embedding_name

    main = metrics["output"]
    if metric in ("top1", "top5"):
        acc = metrics.get("accuracy")
        if not acc:
            raise InputError(f"--metric {metric} needs labels in the evaluation data (set the key with --labels)")
        if metric not in acc:
            raise InputError(f"--metric top5 needs more than 5 classes; output {main!r} has fewer")
        return float(acc[metric])
    if metric in ("agreement", "kl") and is_embedding_name(main):
        raise InputError(f"--metric {metric} compares class probabilities, and output {main!r} is an embedding: "
                         "use --metric cosine (or sqnr), or name a logits output with --output-name")
    fid = (metrics.get("fidelity") or {}).get(main)
    if fid is None:
        raise InputError(f"--metric {metric} compares against a reference model: pass --ref FP32.onnx")
    key = {"agreement": "top1_agreement", "kl": "kl_mean", "cosine": "cosine_mean", "sqnr": "sqnr_db", "mse": "mse"}.get(metric)
    if key is None:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRIC_HELP)} (or mse)")
    if key not in fid:
        if metric in ("agreement", "kl"):
            raise InputError(f"--metric {metric} needs (N, classes) scores; output {main!r} is not one: use --metric cosine "
                             "(or name the logits output with --output-name)")
        key = "cosine" if metric == "cosine" else key
    v = num(fid.get(key))
    if v is None:
        raise InputError(f"the metrics record has no {key!r} for output {main!r}")
    return v


def _signed(x: float, digits: int = 1) -> str:
    """'+1.2' / '-0.3', and '+0.0' rather than '-0.0' for a value that rounds to zero."""
    return f"{round(x, digits) + 0.0:+.{digits}f}"


# Defaults for the verdict's budget, by metric (see benchmarks/results/budgets.md for how KL and cosine were chosen).
DEFAULT_BUDGETS = {"top1": 0.5, "top5": 0.5, "agreement": 1.0, "kl": 0.005, "cosine": 0.995, "sqnr": 20.0}
POINT_METRICS = ("top1", "top5", "agreement")  # accuracies: the budget is points (x100) lost against FP32
LOWER_IS_BETTER = ("kl",)
LABELLED = ("top1", "top5")  # need labels; QAT can only train against these


@dataclass(frozen=True)
class Budget:
    """How close to FP32 a variant must stay: points of an accuracy, or a bound on KL / cosine / SQNR."""

    metric: str
    value: float

    @property
    def points(self) -> bool:
        return self.metric in POINT_METRICS

    def key(self, q: float) -> float:
        """Higher is better, whatever the metric."""
        return -q if self.metric in LOWER_IS_BETTER else q

    def within(self, fp32_q: float, q: float) -> bool:
        if self.points:
            return 100.0 * (fp32_q - q) <= self.value + 1e-9
        if self.metric in LOWER_IS_BETTER:
            return q <= self.value + 1e-12
        return q >= self.value - 1e-12

    def text(self) -> str:
        if self.points:
            return f"{self.value:g} points"
        return {"kl": f"KL <= {self.value:g}", "cosine": f"cosine >= {self.value:g}", "sqnr": f"SQNR >= {self.value:g} dB"}.get(
            self.metric, f"{self.metric} {self.value:g}")

    def within_phrase(self) -> str:
        """'within 0.5 points of FP32' / 'within the budget (KL <= 0.05)'."""
        return f"within {self.value:g} points of FP32" if self.points else f"within the budget ({self.text()})"

    def show(self, q: float) -> str:
        """A variant's value in words: '0.012 KL', 'cosine 0.9961'."""
        return {"kl": f"KL {q:.4f}", "cosine": f"cosine {q:.4f}", "sqnr": f"SQNR {q:.1f} dB"}.get(self.metric, f"{100 * q:.2f}")


class _Facts:
    """Derived numbers for one verdict: points, losses, speed-ups at the verdict's batch."""

    def __init__(self, fp32: VariantResult, batch: int, budget: Budget):
        self.fp32, self.batch, self.b = fp32, batch, budget

    def pts(self, v: VariantResult) -> float:
        return 100.0 * float(v.quality)

    def loss(self, v: VariantResult) -> float:
        """Points below FP32 (accuracy metrics only)."""
        return self.pts(self.fp32) - self.pts(v)

    def within(self, v: VariantResult) -> bool:
        return self.b.within(float(self.fp32.quality), float(v.quality))

    def rank(self, v: VariantResult) -> float:
        return self.b.key(float(v.quality))

    def spd(self, v: VariantResult) -> float | None:
        return v.speedup.get(self.batch)

    def med(self, v: VariantResult) -> float | None:
        return v.median_ms(self.batch)

    def vs_fp32(self, v: VariantResult) -> str:
        """'+0.3 points' for accuracies, the metric's own value otherwise."""
        return f"{_signed(-self.loss(v))} points" if self.b.points else self.b.show(float(v.quality))


def _no_labels_next(f: _Facts, ptq: list[VariantResult]) -> str:
    """The next PTQ step: float fallback, and the algorithms only where no measured variant used them already."""
    corrected = any((((v.quant or {}).get("recipe") or {}).get("algorithms") or {}).get("bias_correction", "none") != "none"
                    for v in ptq)
    also = [] if corrected else ["a bias-corrected static variant (--bias-correction fast)"]
    return (f"QAT needs labels (or a distillation setup) that this evaluation data does not have; next PTQ step: keep the "
            f"most sensitive nodes in float (onnxq quantize --target {f.b.metric if f.b.metric in ('kl', 'cosine', 'sqnr') else 'top1'}="
            f"{f.b.value:g})" + "".join(f", or {a}" for a in also))


def _ptq_sentence(f: _Facts, ptq: list[VariantResult], qat: VariantResult | None, control: VariantResult | None,
                  facts: dict) -> str:
    """Rule 2: is PTQ enough, and if not, does QAT recover the loss (and is that quantization or training)?"""
    if not ptq:
        if qat is not None:
            return f"No PTQ variant succeeded; QAT is {f.vs_fp32(qat)} vs FP32."
        return "No quantized variant succeeded."
    best = max(ptq, key=lambda v: (round(f.rank(v), 9), f.spd(v) or 0.0))
    facts["best_ptq"] = best.name
    if f.b.points:
        facts["ptq_loss_points"] = f.loss(best)
    at = f" at {f.spd(best):.1f}x speed" if f.spd(best) is not None else ""
    if f.within(best):
        if f.b.points:
            lost = f.loss(best)
            closeness = f"within {lost:.1f} points of FP32" if lost >= 0.05 else (
                f"{-lost:.1f} points above FP32" if lost <= -0.05 else "on par with FP32")
        else:
            closeness = f"within the budget ({f.b.show(float(best.quality))}; {f.b.text()})"
        tail = ": QAT not needed" + (f" (QAT: {f.vs_fp32(qat)} vs FP32)" if qat is not None else "")
        return f"PTQ {best.label} is {closeness}{at}{tail}."
    if not f.b.points:
        miss = f"The best PTQ variant ({best.label}) misses the budget: {f.b.show(float(best.quality))} ({f.b.text()}). "
        if qat is None:
            return miss + _no_labels_next(f, ptq) + "."
        return miss + f"QAT: {f.vs_fp32(qat)}" + (" (within the budget)." if f.within(qat) else " (outside it too).")
    lost = f.loss(best)
    if qat is None:
        if f.b.metric not in LABELLED:
            return f"The best PTQ variant ({best.label}) loses {lost:.1f} points against FP32 (budget {f.b.value:g}): " + _no_labels_next(f, ptq) + "."
        return (f"The best PTQ variant ({best.label}) loses {lost:.1f} points against FP32 (budget {f.b.value:g}): try QAT "
                "(--task), or keep the most sensitive nodes in float (onnxq quantize --target ...).")
    lq = f.loss(qat)
    rec = lost - lq
    facts.update(qat_loss_points=lq, qat_recovered_points=rec)
    if rec <= 0:
        return f"QAT does not help: it is {lq:.1f} points below FP32, PTQ {best.label} {lost:.1f} points."
    mq, mp = f.med(qat), f.med(best)
    lat = ""
    if mq is not None and mp is not None and mp > 0:
        ratio = mq / mp
        lat = " at the same latency" if abs(ratio - 1) <= 0.10 else f" at {ratio:.2f}x the latency of PTQ"
    s = f"QAT recovers {min(rec, lost):.1f} of {lost:.1f} points lost by PTQ{lat}"
    s += ": use QAT rather than PTQ." if lq <= f.b.value else f"; it is still {lq:.1f} points below FP32."
    return s


def _control_sentence(f: _Facts, qat: VariantResult | None, control: VariantResult | None, facts: dict) -> str | None:
    """QAT against an FP32 control fine-tuned with the same steps: training gain vs quantization gap."""
    if qat is None or control is None or not f.b.points:
        return None
    gain = -f.loss(control)  # the control's points above the original FP32
    gap = f.pts(control) - f.pts(qat)  # QAT's points below its own control
    facts.update(training_gain_points=gain, qat_quantization_gap_points=gap)
    where = (f"QAT's quantization gap is {gap:.1f} points (QAT below its control)" if gap >= 0.05 else
             f"QAT is {-gap:.1f} points above its control (no quantization gap)" if gap <= -0.05 else
             "QAT matches its control (no quantization gap)")
    s = (f"Against its FP32 control (fine-tuned for the same steps): {where}; the training itself moved FP32 by "
         f"{_signed(gain)} points")
    if gain > 0.05 and -f.loss(qat) > 0:
        s += f", so QAT's {_signed(-f.loss(qat))} points over the original FP32 are training, not quantization"
    return s + "."


def _unless_size(f: _Facts, within: list[VariantResult]) -> str:
    """When FP32 is kept for speed but a quantized variant within budget is much smaller, say so."""
    fs = f.fp32.size_bytes
    small = [v for v in within if v.kind != "fp32" and v.size_bytes and fs and v.size_bytes < 0.9 * fs]
    if not small:
        return ""
    # the smallest that is not slower than FP32 (>= 0.9x, the "Slower than FP32" line's bar); else the fastest
    not_slow = [v for v in small if (f.spd(v) or 0.0) >= NOT_SLOWER]
    v = min(not_slow, key=lambda v: v.size_bytes) if not_slow else max(small, key=lambda v: (f.spd(v) or 0.0, -v.size_bytes))
    at = f" and {f.spd(v):.2f}x its speed" if f.spd(v) is not None else ""
    where = f"within {f.b.value:g} points" if f.b.points else "within the budget"
    return f", unless size matters: {v.label} is {where} at {v.size_bytes / fs:.2f}x its size{at}"


def _speed_sentences(f: _Facts, ok: list[VariantResult], within: list[VariantResult]) -> tuple[str, list[str]]:
    """Rule 3 with latency: the fastest variant within budget, if measurably faster than FP32."""
    b = f.batch
    fastest = max((v for v in within if f.spd(v) is not None), key=lambda v: f.spd(v) or 0.0)
    if fastest.kind != "fp32" and (f.spd(fastest) or 0.0) < MEASURABLY_FASTER:
        # within the noise band of a shared machine: recommending it would rest on noise
        out = [f"No variant {f.b.within_phrase()} is measurably faster than FP32 at batch {b} "
               f"(fastest: {fastest.label}, {f.spd(fastest):.2f}x; {MEASURABLY_FASTER:g}x needed): keep FP32{_unless_size(f, within)}."]
        recommended = f.fp32.name
    elif fastest.kind == "fp32":
        out = [f"No variant {f.b.within_phrase()} is faster than FP32 at batch {b}: keep FP32{_unless_size(f, within)}."]
        recommended = fastest.name
    else:
        where = f"within {f.b.value:g} points" if f.b.points else f"within the budget ({f.b.text()})"
        out = [f"Fastest {where}: {fastest.label}, {f.spd(fastest):.1f}x FP32 at batch {b} ({f.vs_fp32(fastest)})."]
        recommended = fastest.name
    slow = [v for v in ok if v.kind != "fp32" and f.spd(v) is not None and f.spd(v) < NOT_SLOWER]
    if slow:
        out.append("Slower than FP32: " + ", ".join(f"{v.label} ({f.spd(v):.2f}x)" for v in slow) + ".")
    return recommended, out


def verdict(prof: ProfileResult, *, budget: float = 0.5, batch: int | None = None, metric: str = "top1") -> dict[str, Any]:
    """Plain-words verdict for one profile's variants.

    ``budget``: for accuracies (``top1``, ``top5``, ``agreement``) the points (quality x 100) a variant
    may lose against FP32; for ``kl`` an upper bound, for ``cosine`` / ``sqnr`` a lower bound. Rules:

    1. FP32 failed -> no verdict.
    2. Best PTQ (best quality, then fastest) within budget -> "... within X points of FP32 at S x
       speed: QAT not needed". Else with QAT: "QAT recovers R of L points lost by PTQ at the same
       latency" (latencies within 10%) or "at K x the latency of PTQ"; without QAT: "try QAT" when
       there are labels, and when there are none: QAT needs labels or distillation, and the next PTQ
       step to try. With an FP32 control (fine-tuned for QAT's steps): the training gain and QAT's
       quantization gap are stated apart.
    3. Fastest variant within budget (latency measured) is the recommendation if it is measurably
       faster than FP32 (>= 1.1x, the same 10% band as "same latency"), else FP32, naming for
       when size matters the smallest variant within budget under 0.9x FP32's size that is not
       slower than FP32 (>= 0.9x; else the fastest of them); without latency, the smallest
       variant within budget. Quantized variants slower than 0.9x FP32 are named.
    4. Failed variants and unmeasured latency are stated.
    """
    b = int(batch if batch is not None else prof.primary_batch)
    ok = [v for v in prof.variants if v.ok and v.quality is not None]
    fp32 = next((v for v in ok if v.kind == "fp32"), None)
    failed = [v for v in prof.variants if not v.ok]
    if fp32 is None:
        why = next((v.error or "" for v in prof.variants if v.kind == "fp32"), "not built")
        return {"text": f"No verdict: the FP32 reference failed ({why}).", "recommended": None, "sentences": []}
    spec = Budget(metric, float(budget))
    f = _Facts(fp32, b, spec)
    facts: dict[str, Any] = {"budget": {"metric": metric, "value": budget, "text": spec.text()}, "batch": str(b)}
    if spec.points:
        facts["budget_points"] = budget
    ptq = [v for v in ok if v.kind == "ptq"]
    qat = next((v for v in ok if v.kind == "qat"), None)
    control = next((v for v in ok if v.kind == "fp32-control"), None)
    sentences = [_ptq_sentence(f, ptq, qat, control, facts)]
    extra = _control_sentence(f, qat, control, facts)
    if extra:
        sentences.append(extra)
    within = [v for v in ok if v.kind != "fp32-control" and f.within(v)]
    if f.spd(fp32) is not None:
        recommended, more = _speed_sentences(f, [v for v in ok if v.kind != "fp32-control"], within)
        sentences += more
    else:
        quantized = [v for v in within if v.kind != "fp32"]
        pick = min(quantized, key=lambda v: v.size_bytes or 0) if quantized else fp32
        recommended = pick.name
        sentences.append(f"Latency {prof.latency_note or 'not measured'}; by accuracy and size alone: {pick.label}.")
    if failed:
        sentences.append("Failed: " + "; ".join(f"{v.name} ({v.error or '?'})" for v in failed) + ".")
    facts["recommended"] = recommended
    return {"text": " ".join(sentences), "recommended": recommended, "sentences": sentences, "facts": facts}
