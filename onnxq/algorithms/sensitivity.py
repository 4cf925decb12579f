"""Per-node sensitivity and the accuracy-targeted float fallback.

>>> from onnxq.algorithms.sensitivity import candidates, with_float_nodes, fallback
>>> names = candidates(qdq_model)                                               # doctest: +SKIP
>>> table, kept, reached = fallback(qdq_model, float_model, names, score, meets)  # doctest: +SKIP

Only weight-bearing nodes (Conv, ConvTranspose, Gemm, MatMul with a constant weight) are candidates:
keeping any other node in float between two quantized neighbours changes nothing at run time,
because onnxruntime fuses DequantizeLinear -> op -> QuantizeLinear into the integer op anyway.

A node "kept in float" reads its float weight and bias; its input stays the dequantized int8 tensor
(the producer's output is shared; a graph input only its float-kept nodes read stays float) and its
output is requantized for the consumer, exactly what onnxruntime's quantizer writes for a node in
``nodes_to_exclude``. One more step makes that true at
run time: onnxruntime's WeightBiasQuantization pass re-quantizes a float Conv/ConvTranspose/Gemm
whose input comes from a per-tensor DequantizeLinear (per-tensor int8 weights: worse than before).
:func:`guard_float_nodes` gives such a node its own DequantizeLinear with the same scale and zero
point written per channel, which the pass does not match (same values, no extra work).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from .graph import const, node_by_name, producers, set_const

__all__ = ["candidates", "with_float_nodes", "guard_float_nodes", "fallback", "SensitivityRow", "WEIGHT_OPS"]

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_GUARDED = ("Conv", "ConvTranspose", "Gemm")
PATIENCE = 4  # stop adding float nodes after this many in a row did not improve the best score  # what onnxruntime's WeightBiasQuantization re-quantizes


@dataclass
class SensitivityRow:
    node: str
    op_type: str
    score: float  # the metric with only this node in float
    gain: float  # how much closer to FP32 that is than with every node quantized (positive: better)

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "score": self.score, "gain": self.gain}


def candidates(qmodel: onnx.ModelProto) -> list[str]:
    """Weight nodes whose weight onnxruntime quantized (read through a DequantizeLinear), in graph order."""
    prod = producers(qmodel)
    out = []
    for n in qmodel.graph.node:
        if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.name:
            dq = prod.get(n.input[1])
            if dq is not None and dq.op_type == "DequantizeLinear":
                src = prod.get(dq.input[0])
                if const(qmodel, dq.input[0]) is not None or (src is not None and src.op_type == "QuantizeLinear"):
                    out.append(n.name)
    return out


def with_float_nodes(qmodel: onnx.ModelProto, float_model: onnx.ModelProto, names: set[str] | list[str]) -> onnx.ModelProto:
    """A copy of the QDQ model in which the named nodes read the float model's weight and bias again."""
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    fnodes = node_by_name(float_model)
    _float_graph_inputs(m, names)
    for node in m.graph.node:
        if node.name not in names or node.name not in fnodes:
            continue
        src = fnodes[node.name]
        for k in (1, 2):
            if len(src.input) > k and src.input[k] and len(node.input) > k:
                value = const(float_model, src.input[k])
                if value is not None:
                    name = f"{src.input[k]}.onnxq_float.{node.name}"
                    set_const(m, name, value)
                    node.input[k] = name
    _drop_dead(m)
    guard_float_nodes(m, names)
    return m


def _float_graph_inputs(m: onnx.ModelProto, names: set[str] | list[str]) -> None:
    """A kept node reading a quantized *graph input* reads the float input itself, when no quantized node shares
    that quantization (what onnxruntime writes: an input nobody quantized consumes stays float)."""
    prod = producers(m)
    inputs = {i.name for i in m.graph.input}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in m.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for node in m.graph.node:
        if node.name not in names or not node.input:
            continue
        dq = prod.get(node.input[0])
        q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in inputs:
            continue
        users = [u for d in readers.get(q.output[0], []) for u in readers.get(d.output[0], [])]
        if all(u.name in names for u in users):
            node.input[0] = q.input[0]


def guard_float_nodes(qmodel: onnx.ModelProto, names: set[str] | list[str]) -> int:
    """Give each named float Conv/ConvTranspose/Gemm fed by a per-tensor DequantizeLinear its own per-channel one
    (same scale and zero point per channel) so onnxruntime's optimizer leaves it in float (in place); returns how
    many nodes it guarded."""
    prod = producers(qmodel)
    shapes = {vi.name: vi for vi in list(qmodel.graph.value_info) + list(qmodel.graph.input)}
    added = []
    for node in qmodel.graph.node:
        if node.name not in names or node.op_type not in _GUARDED:
            continue
        dq = prod.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 2:
            continue
        scale = const(qmodel, dq.input[1])
        if scale is None or scale.size != 1:
            continue
        channels = _channels(node, shapes.get(node.input[0]), qmodel)
        if not channels:
            continue
        zp = const(qmodel, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.uint8)
        base = f"onnxq_float_guard.{node.name}"
        set_const(qmodel, base + ".scale", np.full(channels, float(scale.reshape(-1)[0]), dtype=scale.dtype))
        set_const(qmodel, base + ".zero_point", np.full(channels, zp.reshape(-1)[0], dtype=zp.dtype))
        out = base + ".input"
        added.append(onnx.helper.make_node("DequantizeLinear", [dq.input[0], base + ".scale", base + ".zero_point"], [out],
                                           name=base, axis=1))
        node.input[0] = out
    if added:
        order = list(qmodel.graph.node)
        for g in added:  # each right before its consumer keeps the graph sorted
            consumer = next(n for n in order if g.output[0] in n.input)
            order.insert(order.index(consumer), g)
        del qmodel.graph.node[:]
        qmodel.graph.node.extend(order)
        _drop_dead(qmodel)
    return len(added)


def _channels(node: onnx.NodeProto, vi: onnx.ValueInfoProto | None, model: onnx.ModelProto) -> int | None:
    """Axis-1 size of the node's input (from shape info, else from its weight)."""
    if vi is not None and vi.type.tensor_type.shape.dim and len(vi.type.tensor_type.shape.dim) > 1:
        d = vi.type.tensor_type.shape.dim[1]
        if d.HasField("dim_value") and d.dim_value > 0:
            return int(d.dim_value)
    w = const(model, node.input[1])
    if w is None:
        return None
    if node.op_type == "Conv":
        return int(w.shape[1] * next((a.i for a in node.attribute if a.name == "group"), 1))
    if node.op_type == "ConvTranspose":
        return int(w.shape[0])
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return int(w.shape[1] if trans_b else w.shape[0])


def _drop_dead(model: onnx.ModelProto) -> None:
    """Remove nodes and initializers whose outputs nothing reads (the bypassed weight DequantizeLinear)."""
    graph_out = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | graph_out
        dead = [n for n in model.graph.node if n.output and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input} | graph_out
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def fallback(qmodel: onnx.ModelProto, float_model: onnx.ModelProto, names: list[str],
             score: Callable[[onnx.ModelProto], float], meets: Callable[[float], bool], *, higher_is_better: bool = True,
             progress: Callable[[], None] | None = None) -> tuple[list[SensitivityRow], list[str], list[float]]:
    """Sensitivity of every candidate, then keep the most sensitive in float, fewest first, until ``meets`` holds.

    Returns (table sorted most sensitive first, nodes kept in float, the score after each addition).
    """
    base = score(qmodel)
    sign = 1.0 if higher_is_better else -1.0
    op = {n.name: n.op_type for n in qmodel.graph.node}
    table = []
    for name in names:
        s = score(with_float_nodes(qmodel, float_model, {name}))
        table.append(SensitivityRow(name, op.get(name, "?"), s, sign * (s - base)))
        if progress:
            progress()
    table.sort(key=lambda r: -r.gain)
    kept: list[str] = []
    trail: list[float] = []
    if meets(base):
        return table, kept, trail
    best, best_at, stale = base, 0, 0
    for row in table:
        if row.gain <= 0 or stale >= PATIENCE:
            break  # keeping the rest in float does not help (any more)
        kept.append(row.node)
        s = score(with_float_nodes(qmodel, float_model, set(kept)))
        trail.append(s)
        if meets(s):
            return table, kept, trail
        if sign * (s - best) > 0:
            best, best_at, stale = s, len(kept), 0
        else:
            stale += 1
    return table, kept[:best_at], trail  # the target was not met: the fewest nodes giving the best score
