"""The recipe: ONE frozen, complete description of a quantization run; every later stage is a function of it.

>>> from onnxq.profiles import load_profile
>>> from onnxq.plan import GraphFacts, QuantizerCaps, Overrides, resolve
>>> facts = GraphFacts(op_types=frozenset({"Conv", "Relu", "Gemm"}), opset=17, node_names=frozenset({"conv1"}))
>>> caps = QuantizerCaps(static_ops=frozenset({"Conv", "Gemm", "Relu"}), dynamic_ops=frozenset({"Conv", "MatMul"}))
>>> r = resolve(load_profile("cpu-x86-vnni"), facts, caps, Overrides(method="minmax", per_channel=False))
>>> r.mode, r.calibration.method, r.per_channel, r.op_types, r.opset
('static', 'minmax', False, ('Conv', 'Gemm', 'Relu'), 17)

``resolve(profile, graph facts, quantizer capabilities, overrides)`` is where each decision is
made: the mode, the types as they will actually be written (an unsupported combination is an
:class:`InputError` naming what is supported), the opset the output will have (and whether the model
must be converted to reach it), the final op types and the reason for them, the nodes kept in
float, the calibration settings and the Q/DQ layout. Later stages only read it;
:meth:`Recipe.keep_in_float` returns a new recipe when calibration finds tensors that must stay
float. Profile defaults first, then explicit overrides (``None`` means "use the profile's value").
Imports neither onnxruntime nor torch (callers pass in what onnxruntime can quantize).
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import InputError
from .profiles import LayoutSpec, Profile
from .vocab import (
    TARGET_METRICS,
    BIAS_CORRECTION, DYNAMIC_WEIGHT_TYPES, FOUR_BIT, METHODS, MODES, WEIGHT_TYPES, percentile_problem, samples_problem,
)

__all__ = [
    "Recipe", "CalibrationSpec", "AlgorithmSpec", "TargetSpec", "parse_target", "GraphFacts", "QuantizerCaps", "Overrides", "resolve", "TRANSFORMER_OPS",
    "HOLDOUT",
]

# Op types whose presence marks a transformer-like graph (attention, layer norm).
TRANSFORMER_OPS = frozenset({"Softmax", "LayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization"})
# What "auto" quantizes statically on such graphs: static QDQ of all ops collapsed MiniLM fidelity (DESIGN 5);
# Gather quantizes the embedding tables (MiniLM 90 MB -> 23 MB; cosine 0.9959 -> 0.9955 with SmoothQuant).
TRANSFORMER_STATIC_OPS = ("MatMul", "Gemm", "Gather")
HOLDOUT = 32  # calibration samples held out to measure fidelity against FP32
# models whose protobuf reaches this many bytes are written with their weights in external data (protobuf
# cannot serialise 2 GiB; 64 MiB of headroom for what quantization adds)
EXTERNAL_DATA_ABOVE = 2**31 - 1 - 64 * 2**20
NUM_BINS = 2048  # histogram bins per sign for entropy / percentile


@dataclass(frozen=True)
class GraphFacts:
    """What the recipe needs to know about the model (see :func:`onnxq.modelio.graph_facts`)."""

    op_types: frozenset[str]
    opset: int
    node_names: frozenset[str] = frozenset()
    op_counts: tuple[tuple[str, int], ...] = ()
    model_bytes: int = 0  # the model with its weights (external data included)


@dataclass(frozen=True)
class QuantizerCaps:
    """Which op types onnxruntime's quantizer can handle (see :func:`onnxq.ptq.quantizer_caps`)."""

    static_ops: frozenset[str]
    dynamic_ops: frozenset[str]


@dataclass(frozen=True)
class Overrides:
    """Explicit choices of the caller; ``None`` keeps the profile's value."""

    mode: str | None = None
    method: str | None = None
    percentile: float | None = None
    calibration_samples: int | None = None
    per_channel: bool | None = None
    weight_type: str | None = None
    reduce_range: bool | None = None
    op_types: tuple[str, ...] | None = None
    exclude_op_types: tuple[str, ...] | None = None
    exclude_nodes: tuple[str, ...] | None = None
    keep_io_types: bool = True
    bias_correction: str | None = None
    smoothquant: str | float | bool | None = None  # False: off even if the profile has it
    cle: bool | None = None
    target: TargetSpec | None = None


@dataclass(frozen=True)
class CalibrationSpec:
    method: str
    percentile: float
    samples: int
    batch_size: int = 16  # samples per calibration batch (the per-batch estimators use 1: per-sample statistics)
    num_bins: int = NUM_BINS
    holdout: int = HOLDOUT


@dataclass(frozen=True)
class TargetSpec:
    """``--target METRIC=VALUE``: keep the most sensitive nodes in float until METRIC reaches VALUE (``value``
    None: only measure the per-node sensitivity, ``onnxq sensitivity``)."""

    metric: str
    value: float | None

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "kl"

    def met(self, score: float) -> bool:
        if self.value is None:
            return False
        return score >= self.value if self.higher_is_better else score <= self.value

    def text(self) -> str:
        return f"{self.metric}={self.value:g}" if self.value is not None else self.metric


def parse_target(text: str | None) -> TargetSpec | None:
    """``"cosine=0.995"`` -> TargetSpec; one-line InputError naming the metrics and the sensible values."""
    if text is None:
        return None
    metric, sep, raw = str(text).partition("=")
    metric = metric.strip().lower()
    if metric not in TARGET_METRICS:
        raise InputError(f"--target {text!r}: unknown metric {metric!r}; give METRIC=VALUE with METRIC one of "
                         + ", ".join(f"{k} ({v})" for k, v in TARGET_METRICS.items()))
    if not sep:
        raise InputError(f"--target {text!r} needs a value: e.g. {metric}={dict(cosine=0.995, top1=0.99, sqnr=30, kl=0.02)[metric]}")
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"--target {text!r}: {raw!r} is not a number") from None
    if metric == "top1" and 1.0 < value <= 100.0:
        value /= 100.0  # given in percent
    bad = {"cosine": not 0.0 < value <= 1.0, "top1": not 0.0 < value <= 1.0, "sqnr": not 0.0 < value < 200.0,
           "kl": not 0.0 <= value < 100.0}[metric]
    if bad or value != value:
        allowed = {"cosine": "in (0, 1]", "top1": "in (0, 1] (or a percentage)", "sqnr": "dB in (0, 200)", "kl": "in [0, 100)"}
        raise InputError(f"--target {text!r} cannot be reached: {metric} must be {allowed[metric]}")
    return TargetSpec(metric, value)


@dataclass(frozen=True)
class AlgorithmSpec:
    """The float-graph algorithms run before onnxruntime writes the QDQ model (see :mod:`onnxq.algorithms`)."""

    bias_correction: str = "none"  # none | fast | full
    smoothquant: str | float | None = None  # None: off; "auto": alpha searched; a float: that alpha
    cle: bool = False
    notes: tuple[str, ...] = ()  # why a requested algorithm does not apply to this graph
    asked: tuple[str, ...] = ()  # the ones the caller asked for explicitly (refused, not skipped, when they cannot run)


@dataclass(frozen=True)
class Recipe:
    """Everything a run writes, decided once (see the module docstring)."""

    mode: str
    profile: str
    profile_sha256: str
    opset: int  # the opset the output model has
    source_opset: int  # the input model's; the model is converted first when they differ
    activation_type: str  # as written: uint8/int8 (static), uint8 (dynamic: DynamicQuantizeLinear), float16 (fp16)
    activation_symmetric: bool
    weight_type: str  # as written: int8/uint8/int4/uint4, or float16
    weight_symmetric: bool
    per_channel: bool
    reduce_range: bool
    op_types: tuple[str, ...]  # the op types handed to onnxruntime's quantizer (empty for fp16)
    op_types_reason: str
    float_nodes: tuple[tuple[str, str], ...] = ()  # (node name, why) kept in float
    calibration: CalibrationSpec | None = None  # static mode only
    layout: LayoutSpec = field(default_factory=LayoutSpec)
    algorithms: AlgorithmSpec = field(default_factory=AlgorithmSpec)
    target: TargetSpec | None = None  # static only: the accuracy-targeted float fallback
    keep_io_types: bool = True  # fp16: float32 inputs/outputs kept
    external_data: bool = False  # staged and written with weights in external data (the model is near protobuf's 2 GB)

    @property
    def needs_opset_conversion(self) -> bool:
        return self.opset > self.source_opset

    @property
    def excluded_nodes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for n, _ in self.float_nodes))

    def keep_in_float(self, nodes: list[tuple[str, str]]) -> "Recipe":
        """A new recipe that also keeps ``nodes`` ((name, why) pairs) in float."""
        known = set(self.excluded_nodes)
        extra = tuple((n, why) for n, why in nodes if n not in known)
        return replace(self, float_nodes=self.float_nodes + extra) if extra else self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["float_nodes"] = [{"node": n, "why": w} for n, w in self.float_nodes]
        return d


def _check(value: Any, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise InputError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")


def _did_you_mean(name: str, known: frozenset[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _opset(mode: str, weight_type: str, per_channel: bool, source: int) -> int:
    """The opset the output needs: 21 for 4-bit QDQ, 13 for per-channel scales, 11 for any QDQ."""
    if mode == "fp16":
        return source
    need = 21 if weight_type in FOUR_BIT else (13 if per_channel else 11)
    return max(source, need)


def _types(profile: Profile, mode: str, o: Overrides) -> tuple[str, str]:
    """(activation type, weight type) as they will be written; unsupported combinations refused."""
    q = profile.quant
    if mode == "fp16":
        if o.weight_type is not None:
            raise InputError(f"--weight-type {o.weight_type} has no meaning with --mode fp16 (weights become float16)")
        return "float16", "float16"
    wtype = o.weight_type or q.weight_type
    _check(wtype, WEIGHT_TYPES, "weight type")
    if mode == "dynamic":
        if wtype not in DYNAMIC_WEIGHT_TYPES:
            raise InputError(
                f"--mode dynamic writes {' or '.join(DYNAMIC_WEIGHT_TYPES)} weights (onnxruntime's dynamic quantizer has no "
                f"{wtype} path); use --mode static for {wtype} weights (opset 21), or --weight-type int8"
            )
        return "uint8", wtype  # DynamicQuantizeLinear produces uint8 activations only
    return q.activation_type, wtype


def _op_types(profile: Profile, mode: str, facts: GraphFacts, caps: QuantizerCaps, o: Overrides) -> tuple[tuple[str, ...], str]:
    """The op types handed to onnxruntime, and why."""
    if mode == "fp16":
        return (), "fp16: every float tensor converted" + ("; float32 inputs/outputs kept" if o.keep_io_types else "")
    q = profile.quant
    exclude = tuple(q.exclude_op_types if o.exclude_op_types is None else o.exclude_op_types)
    can = caps.static_ops if mode == "static" else caps.dynamic_ops
    if o.op_types is not None:
        if not o.op_types:
            raise InputError("--op-types is empty; name at least one ONNX op type (e.g. Conv,MatMul) or leave it out")
        bad = [t for t in o.op_types if t not in can]
        if bad:
            raise InputError(
                f"--op-types {', '.join(bad)}: onnxruntime cannot quantize that op type in {mode} mode"
                f"{_did_you_mean(bad[0], can)}; it can: {', '.join(sorted(can))}"
            )
        if not set(o.op_types) & facts.op_types:
            raise InputError(f"--op-types {', '.join(o.op_types)} matches no node of this model; its op types are "
                             f"{', '.join(sorted(facts.op_types))}")
        ops = tuple(t for t in o.op_types if t not in exclude)
        if mode == "dynamic" and "Gemm" in ops and "MatMul" not in ops:
            ops += ("MatMul",)  # onnxruntime's dynamic quantizer rewrites Gemm as MatMul before it quantizes
        return ops, "op types given explicitly"
    if q.op_types != "auto":
        return tuple(t for t in q.op_types if t not in exclude), f"op types listed by profile {profile.name!r}"
    if mode == "dynamic":
        ops = tuple(sorted(caps.dynamic_ops - set(exclude)))
        return ops, "every op type onnxruntime's dynamic quantizer handles (Gemm becomes MatMul there)" + (
            " except " + ", ".join(exclude) if exclude else "")
    found = facts.op_types & TRANSFORMER_OPS
    if found:
        return tuple(t for t in TRANSFORMER_STATIC_OPS if t not in exclude), (
            "transformer-like graph (found " + ", ".join(sorted(found)) + "): static quantization restricted to "
            "MatMul/Gemm (and the embedding Gathers), since all-op static QDQ collapses embedding fidelity"
        )
    return tuple(sorted(caps.static_ops - set(exclude))), "every op type onnxruntime can quantize" + (
        " except " + ", ".join(exclude) if exclude else "")


def _exclusions(facts: GraphFacts, o: Overrides) -> tuple[tuple[str, str], ...]:
    names = tuple(o.exclude_nodes or ())
    missing = [n for n in names if n not in facts.node_names]
    if missing:
        raise InputError(
            f"--exclude-nodes {', '.join(missing)}: no node of that name in this model{_did_you_mean(missing[0], facts.node_names)}"
            " (node names are listed by e.g. onnx.load(path).graph.node; unnamed nodes cannot be excluded by name)"
        )
    return tuple((n, "--exclude-nodes") for n in dict.fromkeys(names))


def _calibration(profile: Profile, o: Overrides) -> CalibrationSpec:
    q = profile.quant
    method = o.method or q.calibration_method
    _check(method, METHODS, "calibration method")
    samples = q.calibration_samples if o.calibration_samples is None else o.calibration_samples
    if samples_problem(samples):
        raise InputError(f"--calib-samples must be a positive integer, got {samples}")
    pct = q.percentile if o.percentile is None else o.percentile
    if percentile_problem(pct):
        raise InputError(f"--percentile must be a number in (50, 100], got {pct}")
    batch = 1 if method.startswith("mean_") else 16
    return CalibrationSpec(method=method, percentile=float(pct), samples=int(samples), batch_size=batch)


def _algorithms(profile: Profile, facts: GraphFacts, o: Overrides, mode: str, ops: tuple[str, ...]) -> AlgorithmSpec:
    """Which algorithms run: the caller's choice, else the profile's; one the graph cannot use is refused
    when asked for explicitly and noted when it came from the profile."""
    q = profile.quant
    asked = {k for k, v in (("bias_correction", o.bias_correction), ("smoothquant", o.smoothquant), ("cle", o.cle))
             if v not in (None, False, "none")}
    if mode != "static":
        if asked:
            raise InputError(f"{', '.join(sorted(asked))} apply to --mode static only (they change the float graph before "
                             f"static quantization); drop them for --mode {mode}")
        return AlgorithmSpec()
    bc = o.bias_correction or q.bias_correction
    _check(bc, BIAS_CORRECTION, "bias correction")
    sq = q.smoothquant if o.smoothquant is None else (None if o.smoothquant is False else o.smoothquant)
    if isinstance(sq, str) and sq != "auto":
        raise InputError(f"--smoothquant {sq!r}: give auto (alpha searched on held-out samples) or an alpha in (0, 1)")
    if isinstance(sq, (int, float)) and not isinstance(sq, bool) and not 0.0 < float(sq) < 1.0:
        raise InputError(f"--smoothquant alpha must be in (0, 1), got {sq}")
    cle = q.cle if o.cle is None else bool(o.cle)
    notes = []
    if sq is not None and (not {"MatMul", "Gemm"} & set(ops) & facts.op_types or "LayerNormalization" not in facts.op_types):
        if "smoothquant" in asked:
            raise InputError("--smoothquant smooths the inputs of quantized MatMul/Gemm that a LayerNormalization produces, "
                             f"and this model has none (its op types: {', '.join(sorted(facts.op_types))}); drop --smoothquant")
        notes.append("smoothquant: no LayerNormalization feeding a quantized MatMul/Gemm in this graph")
        sq = None
    if cle and "Conv" not in facts.op_types:
        if "cle" in asked:
            raise InputError("--cle equalizes Conv -> activation -> Conv pairs, and this model has no Conv; drop --cle")
        notes.append("cle: no Conv in this graph")
        cle = False
    return AlgorithmSpec(bias_correction=bc, smoothquant=float(sq) if isinstance(sq, (int, float)) else sq, cle=cle,
                         notes=tuple(notes), asked=tuple(sorted(asked)))


def _target(o: Overrides, mode: str) -> TargetSpec | None:
    if o.target is not None and mode != "static":
        raise InputError(f"--target keeps sensitive nodes of a static INT8 model in float; it does not apply to --mode {mode}")
    return o.target


def resolve(profile: Profile, facts: GraphFacts, caps: QuantizerCaps, overrides: Overrides | None = None) -> Recipe:
    """Merge the profile's defaults, the caller's overrides and the model's facts into one recipe."""
    o = overrides or Overrides()
    q = profile.quant
    mode = o.mode or q.default_mode
    _check(mode, MODES, "mode")
    if mode not in q.modes:
        raise InputError(f"profile {profile.name!r} does not allow mode {mode!r} (allowed: {', '.join(q.modes)}); pick another "
                         "--mode or --profile")
    act, wtype = _types(profile, mode, o)
    per_channel = False if mode == "fp16" else (q.per_channel if o.per_channel is None else bool(o.per_channel))
    ops, reason = _op_types(profile, mode, facts, caps, o)
    return Recipe(
        mode=mode,
        profile=profile.name,
        profile_sha256=profile.sha256,
        opset=_opset(mode, wtype, per_channel, facts.opset),
        source_opset=facts.opset,
        activation_type=act,
        activation_symmetric=q.activation_symmetric if mode == "static" else False,
        weight_type=wtype,
        weight_symmetric=q.weight_symmetric if mode != "fp16" else False,
        per_channel=per_channel,
        reduce_range=(q.reduce_range if o.reduce_range is None else bool(o.reduce_range)) if mode != "fp16" else False,
        op_types=ops,
        op_types_reason=reason,
        float_nodes=_exclusions(facts, o),
        calibration=_calibration(profile, o) if mode == "static" else None,
        layout=q.layout if mode == "static" else LayoutSpec(),
        algorithms=_algorithms(profile, facts, o, mode, ops),
        target=_target(o, mode),
        keep_io_types=o.keep_io_types,
        external_data=facts.model_bytes >= EXTERNAL_DATA_ABOVE,
    )
