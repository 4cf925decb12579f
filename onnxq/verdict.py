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

__all__ = ["VariantResult", "ProfileResult", "verdict", "MEASURABLY_FASTER", "NOT_SLOWER"]

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
        return {k: v for k, v in d.items() if v is not None and v != {}}

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


def _signed(x: float, digits: int = 1) -> str:
    """'+1.2' / '-0.3', and '+0.0' rather than '-0.0' for a value that rounds to zero."""
    return f"{round(x, digits) + 0.0:+.{digits}f}"


class _Facts:
    """Derived numbers for one verdict: points, losses, speed-ups at the verdict's batch."""

    def __init__(self, fp32: VariantResult, batch: int):
        self.fp32, self.batch = fp32, batch

    def pts(self, v: VariantResult) -> float:
        return 100.0 * float(v.quality)

    def loss(self, v: VariantResult) -> float:
        return self.pts(self.fp32) - self.pts(v)

    def spd(self, v: VariantResult) -> float | None:
        return v.speedup.get(self.batch)

    def med(self, v: VariantResult) -> float | None:
        return v.median_ms(self.batch)


def _ptq_sentence(f: _Facts, ptq: list[VariantResult], qat: VariantResult | None, budget: float, facts: dict) -> str:
    """Rule 2: is PTQ enough, and if not, does QAT recover the loss?"""
    if not ptq:
        if qat is not None:
            return f"No PTQ variant succeeded; QAT is {f.loss(qat):.1f} points below FP32."
        return "No quantized variant succeeded."
    best = max(ptq, key=lambda v: (round(f.pts(v), 9), f.spd(v) or 0.0))
    lost = f.loss(best)
    facts.update(best_ptq=best.name, ptq_loss_points=lost)
    if lost <= budget:
        at = f" at {f.spd(best):.1f}x speed" if f.spd(best) is not None else ""
        closeness = f"within {lost:.1f} points of FP32" if lost >= 0.05 else (
            f"{-lost:.1f} points above FP32" if lost <= -0.05 else "on par with FP32")
        tail = ": QAT not needed" + (f" (QAT: {_signed(-f.loss(qat))} points vs FP32)" if qat is not None else "")
        return f"PTQ {best.label} is {closeness}{at}{tail}."
    if qat is None:
        return (f"The best PTQ variant ({best.label}) loses {lost:.1f} points against FP32 (budget {budget:g}): try QAT "
                "(--task), or keep the most sensitive layers in float (--exclude-op-types / --exclude-nodes).")
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
    return s + (": use QAT rather than PTQ." if lq <= budget else f"; it is still {lq:.1f} points below FP32.")


def _unless_size(f: _Facts, within: list[VariantResult], budget: float) -> str:
    """When FP32 is kept for speed but a quantized variant within budget is much smaller, say so."""
    fs = f.fp32.size_bytes
    small = [v for v in within if v.kind != "fp32" and v.size_bytes and fs and v.size_bytes < 0.9 * fs]
    if not small:
        return ""
    # the smallest that is not slower than FP32 (>= 0.9x, the "Slower than FP32" line's bar); else the fastest
    not_slow = [v for v in small if (f.spd(v) or 0.0) >= NOT_SLOWER]
    v = min(not_slow, key=lambda v: v.size_bytes) if not_slow else max(small, key=lambda v: (f.spd(v) or 0.0, -v.size_bytes))
    at = f" and {f.spd(v):.2f}x its speed" if f.spd(v) is not None else ""
    return f", unless size matters: {v.label} is within {budget:g} points at {v.size_bytes / fs:.2f}x its size{at}"


def _speed_sentences(f: _Facts, ok: list[VariantResult], within: list[VariantResult], budget: float) -> tuple[str, list[str]]:
    """Rule 3 with latency: the fastest variant within budget, if measurably faster than FP32."""
    b = f.batch
    fastest = max((v for v in within if f.spd(v) is not None), key=lambda v: f.spd(v) or 0.0)
    if fastest.kind != "fp32" and (f.spd(fastest) or 0.0) < MEASURABLY_FASTER:
        # within the noise band of a shared machine: recommending it would rest on noise
        out = [f"No variant within {budget:g} points of FP32 is measurably faster than FP32 at batch {b} "
               f"(fastest: {fastest.label}, {f.spd(fastest):.2f}x; {MEASURABLY_FASTER:g}x needed): keep FP32{_unless_size(f, within, budget)}."]
        recommended = f.fp32.name
    elif fastest.kind == "fp32":
        out = [f"No variant within {budget:g} points of FP32 is faster than FP32 at batch {b}: keep FP32{_unless_size(f, within, budget)}."]
        recommended = fastest.name
    else:
        out = [f"Fastest within {budget:g} points: {fastest.label}, {f.spd(fastest):.1f}x FP32 at batch {b} "
               f"({_signed(-f.loss(fastest))} points)."]
        recommended = fastest.name
    slow = [v for v in ok if v.kind != "fp32" and f.spd(v) is not None and f.spd(v) < NOT_SLOWER]
    if slow:
        out.append("Slower than FP32: " + ", ".join(f"{v.label} ({f.spd(v):.2f}x)" for v in slow) + ".")
    return recommended, out


def verdict(prof: ProfileResult, *, budget: float = 0.5, batch: int | None = None) -> dict[str, Any]:
    """Plain-words verdict for one profile's variants.

    ``budget``: accuracy points (quality x 100) a variant may lose against FP32. Rules, in order:

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
    b = int(batch if batch is not None else prof.primary_batch)
    ok = [v for v in prof.variants if v.ok and v.quality is not None]
    fp32 = next((v for v in ok if v.kind == "fp32"), None)
    failed = [v for v in prof.variants if not v.ok]
    if fp32 is None:
        why = next((v.error or "" for v in prof.variants if v.kind == "fp32"), "not built")
        return {"text": f"No verdict: the FP32 reference failed ({why}).", "recommended": None, "sentences": []}
    f = _Facts(fp32, b)
    facts: dict[str, Any] = {"budget_points": budget, "batch": str(b)}
    ptq = [v for v in ok if v.kind == "ptq"]
    qat = next((v for v in ok if v.kind == "qat"), None)
    sentences = [_ptq_sentence(f, ptq, qat, budget, facts)]
    within = [v for v in ok if f.loss(v) <= budget]
    if f.spd(fp32) is not None:
        recommended, more = _speed_sentences(f, ok, within, budget)
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

