"""Small graph helpers the algorithms share: constants, weight layers and the weights onnxruntime wrote.

>>> from onnxq.algorithms.graph import weight_layers
>>> [l.node.name for l in weight_layers(model, ("Conv", "Gemm"), ())]     # doctest: +SKIP
['conv1', 'conv2', 'fc']

Imports onnx and numpy only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["Layer", "weight_layers", "const", "set_const", "producers", "consumers", "attrs", "dequantized_weight",
           "node_by_name", "output_channel_axis", "drop_unused_initializers"]


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            out[i].append(n)
    return out


def node_by_name(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node if n.name}


def const(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value of an initializer (or a Constant node's output), or None."""
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def set_const(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Replace (or add) initializer ``name`` with ``value`` (a Constant node of that name becomes an initializer)."""
    new = numpy_helper.from_array(np.ascontiguousarray(value), name)
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(new)
            return
    for n in list(model.graph.node):
        if n.op_type == "Constant" and n.output[0] == name:
            model.graph.node.remove(n)
    model.graph.initializer.append(new)


def output_channel_axis(node: onnx.NodeProto) -> int:
    """The axis of the layer's output that its bias runs along: 1 for Conv/ConvTranspose (NCHW), -1 otherwise."""
    return 1 if node.op_type in ("Conv", "ConvTranspose") else -1


@dataclass
class Layer:
    """A weight-bearing node: its weight initializer, and where its bias lives (or may be added)."""

    node: onnx.NodeProto
    weight: str
    bias: str | None  # the bias initializer (Conv/ConvTranspose/Gemm input 2, or the constant of MatMul's Add)
    bias_node: onnx.NodeProto  # the node holding the bias (the layer itself, or MatMul's Add)
    channels: int  # output channels (bias length)

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def output(self) -> str:
        """The tensor the bias is added to produce (MatMul+Add: the Add's output)."""
        return self.bias_node.output[0]


def _channels(node: onnx.NodeProto, w: np.ndarray) -> int | None:
    a = attrs(node)
    if node.op_type == "Conv":
        return int(w.shape[0])
    if node.op_type == "ConvTranspose":
        return int(w.shape[1] * a.get("group", 1))
    if node.op_type == "Gemm":
        return int(w.shape[0] if a.get("transB", 0) else w.shape[1])
    return int(w.shape[-1]) if w.ndim == 2 else None  # MatMul with a 2-D constant B


def weight_layers(model: onnx.ModelProto, op_types: tuple[str, ...], excluded: tuple[str, ...]) -> list[Layer]:
    """Conv / ConvTranspose / Gemm / MatMul(+Add) nodes with a float constant weight, in graph order."""
    cons = consumers(model)
    inits = {t.name for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or node.op_type not in op_types:
            continue
        if node.name in excluded or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = const(model, node.input[1])
        if w is None or w.dtype != np.float32 or node.input[0] in inits:
            continue
        if node.op_type == "Gemm" and attrs(node).get("transA", 0):
            continue
        ch = _channels(node, w)
        if ch is None:
            continue
        if node.op_type == "MatMul":
            users = cons.get(node.output[0], [])
            add = users[0] if len(users) == 1 and users[0].op_type == "Add" else None
            b = next((i for i in (add.input if add is not None else []) if i != node.output[0]), None)
            bias = const(model, b) if b is not None else None
            if add is None or bias is None or bias.size != ch or bias.dtype != np.float32:
                continue  # MatMul without a constant per-channel Add: no bias to correct
            out.append(Layer(node, node.input[1], b, add, ch))
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        out.append(Layer(node, node.input[1], bias, node, ch))
    return out


def dequantized_weight(qmodel: onnx.ModelProto, node_name: str) -> np.ndarray | None:
    """The weight of node ``node_name`` as onnxruntime quantized it in the QDQ model ``qmodel``: DQ(q), or None."""
    node = node_by_name(qmodel).get(node_name)
    if node is None or len(node.input) < 2:
        return None
    prod = producers(qmodel)
    dq = prod.get(node.input[1])
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = const(qmodel, dq.input[0])
    if q is None:  # a QuantizeLinear of a float weight (weight_qdq_pair): quantize it the same way
        qn = prod.get(dq.input[0])
        w = const(qmodel, qn.input[0]) if qn is not None and qn.op_type == "QuantizeLinear" else None
        if w is None:
            return None
        return _dequantize(_quantize(w, qmodel, qn), qmodel, dq)
    return _dequantize(q, qmodel, dq)


def _params(qmodel: onnx.ModelProto, node: onnx.NodeProto, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale = const(qmodel, node.input[1]).astype(np.float64)
    zp = const(qmodel, node.input[2]).astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros_like(scale)
    if scale.ndim == 1 and scale.size > 1:
        axis = attrs(node).get("axis", 1) % ndim
        shape = [1] * ndim
        shape[axis] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return scale, zp


def _dequantize(q: np.ndarray, qmodel: onnx.ModelProto, dq: onnx.NodeProto) -> np.ndarray:
    scale, zp = _params(qmodel, dq, q.ndim)
    return ((q.astype(np.float64) - zp) * scale).astype(np.float32)


def _quantize(w: np.ndarray, qmodel: onnx.ModelProto, qn: onnx.NodeProto) -> np.ndarray:
    scale, zp = _params(qmodel, qn, w.ndim)
    zp_t = const(qmodel, qn.input[2]) if len(qn.input) > 2 and qn.input[2] else np.zeros(1, np.uint8)
    info = np.iinfo(zp_t.dtype) if np.issubdtype(zp_t.dtype, np.integer) else np.iinfo(np.int8)
    return np.clip(np.round(w.astype(np.float64) / scale) + zp, info.min, info.max)


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Drop initializers no node reads any more (e.g. the originals an algorithm replaced with scaled copies)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
