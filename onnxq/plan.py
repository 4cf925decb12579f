"""QuantPlan: the frozen, validated settings of one quantization run.

>>> from onnxq.profiles import load_profile
>>> from onnxq.plan import make_plan
>>> plan = make_plan(load_profile("cpu-x86-vnni"), "static", method="entropy", per_channel=False)
>>> plan.method, plan.per_channel, plan.activation_type
('entropy', False, 'uint8')

Profile defaults first, then explicit overrides (``None`` means "use the profile's value").
Imports neither onnxruntime nor torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import InputError
from .profiles import METHODS, MODES, Profile

__all__ = ["QuantPlan", "make_plan", "TRANSFORMER_OPS", "resolve_op_types"]

# Op types whose presence marks a transformer-like graph (attention, layer norm).
TRANSFORMER_OPS = frozenset({"Softmax", "LayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization"})
# What "auto" quantizes on such graphs: static QDQ of all ops collapsed MiniLM fidelity (DESIGN 5).
TRANSFORMER_STATIC_OPS = ("MatMul", "Gemm")
DYNAMIC_OPS = ("MatMul", "Gemm", "Conv", "Attention", "LSTM", "GRU")


@dataclass(frozen=True)
class QuantPlan:
    mode: str
    profile: str
    profile_sha256: str
    opset: int
    activation_type: str
    activation_symmetric: bool
    weight_type: str
    weight_symmetric: bool
    per_channel: bool
    reduce_range: bool
    method: str
    percentile: float
    calibration_samples: int
    op_types: str | tuple[str, ...]
    exclude_op_types: tuple[str, ...]
    exclude_nodes: tuple[str, ...]
    extra_options: tuple[tuple[str, Any], ...]
    keep_io_types: bool = True
    num_bins: int = 2048

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra_options"] = dict(self.extra_options)
        return d

    def with_op_types(self, op_types: tuple[str, ...]) -> "QuantPlan":
        return replace(self, op_types=tuple(op_types))


def make_plan(
    profile: Profile,
    mode: str | None = None,
    *,
    method: str | None = None,
    per_channel: bool | None = None,
    op_types: list[str] | tuple[str, ...] | None = None,
    exclude_op_types: list[str] | tuple[str, ...] | None = None,
    exclude_nodes: list[str] | tuple[str, ...] | None = None,
    calibration_samples: int | None = None,
    percentile: float | None = None,
    weight_type: str | None = None,
    reduce_range: bool | None = None,
    keep_io_types: bool = True,
) -> QuantPlan:
    """Merge a profile's defaults with explicit overrides into a validated plan."""
    q = profile.quant
    mode = mode or q.default_mode
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    if mode not in q.modes:
        raise InputError(
            f"profile {profile.name!r} does not allow mode {mode!r} (allowed: {', '.join(q.modes)}); pick another "
            "--mode or --profile"
        )
    method = method or q.calibration_method
    if method not in METHODS:
        raise InputError(f"unknown calibration method {method!r}; choose one of: {', '.join(METHODS)}")
    samples = q.calibration_samples if calibration_samples is None else calibration_samples
    if samples < 1:
        raise InputError(f"--calib-samples must be a positive integer, got {samples}")
    pct = q.percentile if percentile is None else percentile
    if not 50.0 < pct <= 100.0:
        raise InputError(f"percentile must be in (50, 100], got {pct}")
    wtype = weight_type or q.weight_type
    opset = profile.opset
    if wtype in ("int4", "uint4"):
        opset = max(opset, 21)
    resolved_ops: str | tuple[str, ...] = q.op_types if op_types is None else tuple(op_types)
    if resolved_ops != "auto" and not resolved_ops:
        raise InputError("--op-types is empty; name at least one ONNX op type (e.g. Conv,MatMul) or leave it out")
    return QuantPlan(
        mode=mode,
        profile=profile.name,
        profile_sha256=profile.sha256,
        opset=opset,
        activation_type=q.activation_type,
        activation_symmetric=q.activation_symmetric,
        weight_type=wtype,
        weight_symmetric=q.weight_symmetric,
        per_channel=q.per_channel if per_channel is None else per_channel,
        reduce_range=q.reduce_range if reduce_range is None else reduce_range,
        method=method,
        percentile=pct,
        calibration_samples=samples,
        op_types=resolved_ops,
        exclude_op_types=tuple(q.exclude_op_types if exclude_op_types is None else exclude_op_types),
        exclude_nodes=tuple(exclude_nodes or ()),
        extra_options=tuple(sorted(q.extra_options.items())),
        keep_io_types=keep_io_types,
    )


def resolve_op_types(plan: QuantPlan, graph_op_types: set[str]) -> tuple[tuple[str, ...], str]:
    """Turn ``op_types="auto"`` into a concrete list for this graph; returns (op_types, reason).

    An empty tuple means "every op type onnxruntime can quantize".
    """
    if plan.op_types != "auto":
        ops = tuple(o for o in plan.op_types if o not in plan.exclude_op_types)
        return ops, "op types given explicitly"
    if plan.mode == "dynamic":
        ops = tuple(o for o in DYNAMIC_OPS if o in graph_op_types and o not in plan.exclude_op_types)
        return ops, "dynamic mode quantizes weight-bearing ops (MatMul/Gemm/Conv/...)"
    if graph_op_types & TRANSFORMER_OPS:
        ops = tuple(o for o in TRANSFORMER_STATIC_OPS if o not in plan.exclude_op_types)
        return ops, (
            "transformer-like graph (found " + ", ".join(sorted(graph_op_types & TRANSFORMER_OPS)) + "): static "
            "quantization restricted to MatMul/Gemm, since all-op static QDQ collapses embedding fidelity"
        )
    return (), "every op type onnxruntime can quantize" + (
        " except " + ", ".join(plan.exclude_op_types) if plan.exclude_op_types else ""
    )
