"""SmoothQuant for the MatMul/Gemm inputs a LayerNormalization produces (Xiao et al. 2023).

>>> from onnxq.algorithms.smoothquant import find_groups, smooth
>>> groups = find_groups(model, ("MatMul", "Gemm"), ())                     # doctest: +SKIP
>>> smooth(model, groups, absmax, alpha=0.8)                                 # doctest: +SKIP
{'groups': 12, 'folded': 0, 'muls_added': 12, 'alpha': 0.8}

Transformer activations carry a few outlier channels, and with one scale per tensor (what
onnxruntime's integer MatMul takes) they leave the other channels a handful of levels. Per input
channel ``j``, ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` moves that range into the weights:
``X W = (X / s)(s W)``, and the weights are quantized per output channel, where the extra range costs
little. The weights of every MatMul/Gemm reading ``X`` are scaled; ``1 / s`` is folded into the
LayerNormalization's scale and bias when its output feeds only those MatMuls (no op at run time).
In post-LN transformers (BERT, MiniLM) the LayerNorm output also feeds the residual Add, which must
see the unscaled tensor, and the next LayerNorm is not per-channel invariant: there one ``Mul`` by
``1 / s`` is put on the MatMul branch (one elementwise op on a hidden-size tensor; measured on
MiniLM: no slower than without it, see benchmarks/results). Attention-mask and Softmax paths are
untouched. Imports onnx and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .graph import attrs, const, consumers, set_const

__all__ = ["SmoothGroup", "find_groups", "smooth", "AbsMaxLastAxis", "ALPHAS"]

ALPHAS = (0.5, 0.65, 0.8, 0.9)  # the grid "auto" searches on held-out calibration samples


@dataclass
class SmoothGroup:
    tensor: str  # the LayerNormalization output
    producer: onnx.NodeProto
    matmuls: list[onnx.NodeProto]  # MatMul/Gemm reading it as input A with a constant weight
    others: list[onnx.NodeProto] = field(default_factory=list)  # every other consumer (the residual Add)

    @property
    def foldable(self) -> bool:
        return not self.others


class AbsMaxLastAxis:
    """Observer: max |x| per channel of the last axis over the calibration samples."""

    def __init__(self) -> None:
        self.value: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        a = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0).astype(np.float64)
        self.value = a if self.value is None else np.maximum(self.value, a)


def _weight_rows(node: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """The weight as [input channel, output channel] (Gemm with transB=1 stores it transposed)."""
    if node.op_type == "Gemm" and attrs(node).get("transB", 0):
        return w.T
    return w


def _const_weight(model: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray | None:
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    if node.op_type == "Gemm" and attrs(node).get("transA", 0):
        return None
    w = const(model, node.input[1])
    return w if w is not None and w.ndim == 2 and w.dtype == np.float32 else None


def find_groups(model: onnx.ModelProto, op_types: tuple[str, ...], excluded: tuple[str, ...]) -> list[SmoothGroup]:
    """LayerNormalization outputs read (as input A) by quantized MatMul/Gemm nodes with constant weights."""
    cons = consumers(model)
    out = []
    for node in model.graph.node:
        if node.op_type != "LayerNormalization" or len(node.input) < 2 or const(model, node.input[1]) is None:
            continue
        t = node.output[0]
        mms, others = [], []
        for u in cons.get(t, []):
            ok = u.op_type in op_types and u.name not in excluded and u.input[0] == t and _const_weight(model, u) is not None
            (mms if ok else others).append(u)
        if mms:
            out.append(SmoothGroup(t, node, mms, others))
    return out


def _factors(group: SmoothGroup, model: onnx.ModelProto, amax: np.ndarray, alpha: float) -> np.ndarray:
    w = np.concatenate([_weight_rows(u, _const_weight(model, u)) for u in group.matmuls], axis=1)
    wmax = np.abs(w).max(axis=1).astype(np.float64)
    a = np.maximum(amax, 1e-5)
    s = a**alpha / np.maximum(wmax, 1e-5) ** (1.0 - alpha)
    s = s / np.exp(np.mean(np.log(s)))  # geometric mean 1: keeps the overall magnitudes where they were
    return np.clip(s, 1e-4, 1e4)


def smooth(model: onnx.ModelProto, groups: list[SmoothGroup], absmax: dict[str, AbsMaxLastAxis], alpha: float) -> dict:
    """Apply SmoothQuant in place; returns what was done (groups, folded into LayerNorm, Mul nodes added)."""
    folded = added = 0
    for g in groups:
        obs = absmax.get(g.tensor)
        if obs is None or obs.value is None:
            continue
        s = _factors(g, model, obs.value, alpha)
        for u in g.matmuls:
            w = _const_weight(model, u).astype(np.float64)
            name = f"{u.input[1]}.onnxq_sq.{u.name}"
            transposed = u.op_type == "Gemm" and attrs(u).get("transB", 0)  # stored [out, in]
            set_const(model, name, (w * (s[None, :] if transposed else s[:, None])).astype(np.float32))
            u.input[1] = name
        if g.foldable:
            for k in (1, 2):
                if len(g.producer.input) > k and g.producer.input[k]:
                    name = f"{g.producer.input[k]}.onnxq_sq"
                    set_const(model, name, (const(model, g.producer.input[k]).astype(np.float64) / s).astype(np.float32))
                    g.producer.input[k] = name
            folded += 1
        else:
            factors, out = f"onnxq_sq_factors.{g.tensor}", f"onnxq_sq.{g.tensor}"
            set_const(model, factors, (1.0 / s).astype(np.float32))
            mul = onnx.helper.make_node("Mul", [g.tensor, factors], [out], name=f"onnxq_smoothquant.{g.producer.name}")
            idx = list(model.graph.node).index(g.producer) + 1
            model.graph.node.insert(idx, mul)
            for u in g.matmuls:
                u.input[0] = out
            added += 1
    return {"groups": len(groups), "folded": folded, "muls_added": added, "alpha": alpha}
