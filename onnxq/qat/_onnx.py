"""The ONNX side of QAT: marker export, stripping markers, and reading onnxruntime's QDQ placement.

>>> from onnxq.qat._onnx import strip_markers, read_layout     # doctest: +SKIP
>>> float_graph, probe_tensor = strip_markers(marked, n_probes=12)  # doctest: +SKIP

Every probe exports as QuantizeLinear -> DequantizeLinear with scale ``index + 1``: after export,
onnxq knows which ONNX tensor each probe observed, removes the pairs, and is left with exactly the
float graph an FP32 export gives. onnxruntime's QDQ quantizer then decides the placement, and
:func:`read_layout` reads it back: which tensors carry a Q/DQ pair, which share parameters, and how
each weight was quantized.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InputError, first_line

__all__ = ["marker_export", "strip_markers", "regions", "read_layout", "Layout"]

_GRAPH_OUTPUT_SUFFIX = "_QuantizeLinear_Input"  # onnxruntime's name for a quantized graph output's float input
WEIGHT_OPS = {"Conv": 1, "Gemm": 1, "MatMul": 1}


def marker_export(module, example_inputs: tuple, input_names: list[str], output_names: list[str], opset: int) -> onnx.ModelProto:
    """TorchScript export (``dynamo=False``) with every probe as a marker and float weights."""
    import torch

    from ._fakequant import ActQuant, WeightQuant

    probes = [m for m in module.modules() if isinstance(m, ActQuant)]
    wqs = [m for m in module.modules() if isinstance(m, WeightQuant)]
    saved = ([p.mode for p in probes], [w.enabled for w in wqs], module.training)
    for p in probes:
        p.mode = "marker"
    for w in wqs:
        w.enabled = False
    module.eval()
    f = io.BytesIO()
    dynamic_axes = {n: {0: "batch"} for n in list(input_names) + list(output_names)}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, tuple(example_inputs), f, dynamo=False, opset_version=opset, input_names=list(input_names),
                output_names=list(output_names), dynamic_axes=dynamic_axes, do_constant_folding=True,
            )
    except Exception as e:
        raise InputError(f"torch.onnx.export (TorchScript, opset {opset}) failed on the QAT model: {type(e).__name__}: {first_line(e)}") from e
    finally:
        for p, mode in zip(probes, saved[0]):
            p.mode = mode
        for w, on in zip(wqs, saved[1]):
            w.enabled = on
        module.train(saved[2])
    return onnx.load_from_string(f.getvalue())


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    vals = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    vals[n.output[0]] = numpy_helper.to_array(a.t)
    return vals


def strip_markers(model: onnx.ModelProto, n_probes: int) -> tuple[onnx.ModelProto, dict[int, str]]:
    """Remove the probes' Q/DQ pairs; returns the float graph and {probe index: tensor name}."""
    consts = _constants(model)
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)
    alias: dict[str, str] = {}
    probe_tensor: dict[int, str] = {}
    drop: set[int] = set()
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or len(n.input) < 2:
            continue
        scale = consts.get(n.input[1])
        if scale is None or scale.size != 1:
            continue
        k = float(scale.reshape(-1)[0])
        if not (k.is_integer() and 1 <= k <= n_probes):
            continue
        dqs = consumers.get(n.output[0], [])
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
            continue
        root = alias.get(n.input[0], n.input[0])
        probe_tensor[int(k) - 1] = root
        alias[dqs[0].output[0]] = root
        drop.add(id(n))
        drop.add(id(dqs[0]))
    graph = model.graph
    outputs = {o.name for o in graph.output}
    inputs = {i.name for i in graph.input}
    # a marker right before a graph output: the root tensor takes the output's name
    rename: dict[str, str] = {}
    extra_nodes = []
    for out in outputs:
        if out in alias:
            root = alias[out]
            if root in inputs or root in outputs or root in rename:
                extra_nodes.append(onnx.helper.make_node("Identity", [root], [out], name=f"onnxq_identity_{out}"))
            else:
                rename[root] = out
    kept = [n for n in graph.node if id(n) not in drop]
    for n in kept:
        for i, name in enumerate(n.input):
            name = alias.get(name, name)
            n.input[i] = rename.get(name, name)
        for i, name in enumerate(n.output):
            n.output[i] = rename.get(name, name)
    kept.extend(extra_nodes)
    probe_tensor = {k: rename.get(v, v) for k, v in probe_tensor.items()}
    used = {i for n in kept for i in n.input} | outputs
    kept = [n for n in kept if not (n.op_type == "Constant" and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(kept)
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.value_info[:]
    domains = {n.domain for n in kept}
    keep_ops = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in domains]
    del model.opset_import[:]
    model.opset_import.extend(keep_ops)
    return onnx.shape_inference.infer_shapes(model), probe_tensor


def regions(model: onnx.ModelProto, boundary: set[str]) -> dict[str, set[str]]:
    """For each boundary tensor, the names of the nodes computing it from other boundary tensors."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    result: dict[str, set[str]] = {}
    for t in boundary:
        seen: set[str] = set()
        stack = [t]
        while stack:
            name = stack.pop()
            node = producer.get(name)
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            for i in node.input:
                if i and i not in boundary and i not in inits and i not in inputs:
                    stack.append(i)
        result[t] = seen
    return result


@dataclass
class WeightInfo:
    node: str
    op_type: str
    initializer: str
    qtype: str
    per_channel: bool
    axis: int | None


@dataclass
class Layout:
    """Where onnxruntime put Q/DQ: activation tensors (grouped by shared scale) and weights."""

    groups: list[list[str]]  # tensors sharing one scale, provider first
    weights: dict[str, WeightInfo]  # node name -> weight quantization
    scales: dict[str, tuple[float, int]] = field(default_factory=dict)  # tensor -> (scale, zero point)
    constants: dict[str, int] = field(default_factory=dict)  # node -> size of its largest quantized constant operand

    @property
    def tensors(self) -> set[str]:
        return {t for g in self.groups for t in g}

    def signature(self) -> tuple:
        return (tuple(tuple(g) for g in self.groups), tuple(sorted((k, w.per_channel, w.qtype) for k, w in self.weights.items())))


_QTYPE = {
    onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT4: "int4",
    onnx.TensorProto.UINT4: "uint4", onnx.TensorProto.INT32: "int32",
}


def read_layout(qmodel: onnx.ModelProto, float_model: onnx.ModelProto) -> Layout:
    """Read the QDQ placement onnxruntime wrote for ``float_model``."""
    inits = {i.name: i for i in qmodel.graph.initializer}
    consts = _constants(qmodel)
    float_tensors = {o for n in float_model.graph.node for o in n.output} | {i.name for i in float_model.graph.input}
    order = {i.name: -1 for i in float_model.graph.input}
    for k, n in enumerate(float_model.graph.node):
        for o in n.output:
            order[o] = k
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    for n in qmodel.graph.node:
        for i in n.input:
            consumers[i].append(n)
    by_scale: dict[str, list[str]] = defaultdict(list)
    scales: dict[str, tuple[float, int]] = {}
    weights: dict[str, WeightInfo] = {}
    constants: dict[str, int] = {}
    for n in qmodel.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            t = n.input[0]
            if t not in float_tensors and t.endswith(_GRAPH_OUTPUT_SUFFIX):
                t = t[: -len(_GRAPH_OUTPUT_SUFFIX)]
            if t not in by_scale[n.input[1]]:
                by_scale[n.input[1]].append(t)
            s = consts.get(n.input[1])
            z = consts.get(n.input[2]) if len(n.input) > 2 else None
            if s is not None:
                scales[t] = (float(np.asarray(s).reshape(-1)[0]), int(np.asarray(z).reshape(-1)[0]) if z is not None else 0)
        elif n.op_type == "DequantizeLinear":
            src = n.input[0]
            q = producer.get(src)
            if src in inits:
                init_name, dtype = src, inits[src].data_type
            elif q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inits:
                init_name = q.input[0]
                zp = inits.get(q.input[2]) if len(q.input) > 2 else None
                dtype = zp.data_type if zp is not None else onnx.TensorProto.UINT8
            else:
                continue
            qtype = _QTYPE.get(dtype, str(dtype))
            if qtype == "int32":
                continue  # a bias
            scale = consts.get(n.input[1])
            per_channel = scale is not None and scale.ndim == 1 and scale.size > 1
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1 if per_channel else None)
            for c in consumers.get(n.output[0], []):
                if c.op_type in WEIGHT_OPS and len(c.input) > WEIGHT_OPS[c.op_type] and c.input[WEIGHT_OPS[c.op_type]] == n.output[0]:
                    weights[c.name] = WeightInfo(c.name, c.op_type, init_name, qtype, per_channel, axis if per_channel else None)
                else:  # a constant operand of Add/Mul/...: exact when it is a scalar
                    size = int(np.prod(inits[init_name].dims)) if init_name in inits else 1
                    constants[c.name] = max(constants.get(c.name, 0), size)
    groups = [sorted(ts, key=lambda t: order.get(t, 1 << 30)) for ts in by_scale.values()]
    # merge groups that name the same tensor twice (dedicated Q/DQ pairs keep one scale name)
    groups.sort(key=lambda g: order.get(g[0], 1 << 30))
    return Layout(groups=groups, weights=weights, scales=scales, constants=constants)
