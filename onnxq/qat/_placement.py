"""Matching onnxruntime's QDQ placement: which tensors, which shared ranges, what stays float.

>>> from onnxq.qat._placement import place                                     # doctest: +SKIP
>>> qmodel, layout, recipe, warns, probes_of, weight_owner = place(P, probe_tensor, probes, gm, recipe, ranges, tmp, layers)  # doctest: +SKIP

onnxruntime's quantizer decides; this module reads its decision back and mirrors its range rules
(``adjust_tensor_ranges``: a quantized Relu/Clip hands its output range to its input; Softmax outputs
get [0, 1]), and keeps in float (with a warning naming the layer) any region whose quantized tensors
or weights the PyTorch model cannot observe.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx

from ..errors import CheckFailed
from ..plan import Recipe
from ..ptq import write_qdq

__all__ = ["place", "range_rules", "average_pool_windows", "producer_bounds", "MAX_EXCLUSION_ROUNDS"]

MAX_EXCLUSION_ROUNDS = 6


def producer_bounds(model: onnx.ModelProto, tensor: str) -> tuple[float | None, float | None]:
    from ._onnx import _constants

    for n in model.graph.node:
        if tensor in n.output:
            if n.op_type == "Relu":
                return 0.0, None
            if n.op_type == "Clip":
                c = _constants(model)
                lo = c.get(n.input[1]) if len(n.input) > 1 and n.input[1] else None
                hi = c.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
                return (float(lo) if lo is not None else None, float(hi) if hi is not None else None)
    return None, None


def range_rules(P: onnx.ModelProto, recipe: Recipe) -> tuple[dict[str, str], set[str]]:
    """onnxruntime's ``adjust_tensor_ranges``: ({Relu/Clip input: its output}, Softmax outputs fixed to [0, 1]).

    A quantized Relu/Clip whose input has no other consumer hands its output's range to its input,
    and a quantized Softmax's output range is [0, 1] whatever calibration saw.
    """
    quantized_ops = set(recipe.op_types)
    skip = set(recipe.excluded_nodes)
    consumers: dict[str, int] = defaultdict(int)
    for n in P.graph.node:
        for i in n.input:
            consumers[i] += 1
    links: dict[str, str] = {}
    softmax: set[str] = set()
    for n in P.graph.node:
        if n.op_type not in quantized_ops or n.name in skip:
            continue
        if n.op_type in ("Relu", "Clip") and consumers[n.input[0]] == 1:
            links[n.input[0]] = n.output[0]
        elif n.op_type == "Softmax":
            softmax.add(n.output[0])
    return links, softmax


def average_pool_windows(P: onnx.ModelProto) -> dict[str, int]:
    """{AveragePool output: window size} for pools whose every window has that size (no padding, floor mode)."""
    out = {}
    for n in P.graph.node:
        if n.op_type != "AveragePool":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        pads = attrs.get("pads", [])
        if any(pads) or attrs.get("ceil_mode", 0) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
            continue
        out[n.output[0]] = int(np.prod(attrs.get("kernel_shape", [1])))
    return out


def _describe(gm, path: str | None, fallback: str) -> str:
    if path:
        try:
            return f"{path} ({type(gm.get_submodule(path)).__name__})"
        except AttributeError:
            pass
    return fallback


def place(P, probe_tensor, probes, gm, recipe: Recipe, ranges, tmp, qat_layers):
    """Run onnxruntime's QDQ quantizer; exclude regions the QAT model cannot mirror until none is left.

    A tensor onnxruntime quantizes that no probe observes (inside a multi-node layer), a quantized
    weight that is not a Conv2d/Linear parameter, or a non-scalar constant operand sends the nodes
    computing it (its "region": the nodes between probes) into the recipe's float nodes, with a warning.
    Returns (QDQ model, layout, final recipe, warnings, {tensor: probe indices}, weight-node owner lookup).
    """
    from ._onnx import read_layout, regions

    warnings_out: list[str] = []
    probes_of: dict[str, list[int]] = defaultdict(list)
    for idx, t in probe_tensor.items():
        probes_of[t].append(idx)
    reg = regions(P, set(probes_of))
    node_regions: dict[str, list[str]] = defaultdict(list)
    for t, nodes in reg.items():
        for n in nodes:
            node_regions[n].append(t)
    producer = {o: n for n in P.graph.node for o in n.output}
    consumers: dict[str, list[str]] = defaultdict(list)
    for n in P.graph.node:
        for i in n.input:
            consumers[i].append(n.name)

    def region_owner(t: str) -> str:
        p = probes[probes_of[t][0]]
        return _describe(gm, p.module_path, p.owner)

    def weight_owner(node: str) -> str | None:
        for t in node_regions.get(node, []):
            for idx in probes_of[t]:
                path = probes[idx].module_path
                if path in qat_layers:
                    return path
        return None

    qpath = tmp / "placement.onnx"
    for _round in range(MAX_EXCLUSION_ROUNDS):
        excl = set(recipe.excluded_nodes)
        write_qdq(P, ranges, recipe, qpath, tmp)
        qmodel = onnx.load(str(qpath))
        layout = read_layout(qmodel, P)
        new_excl: set[str] = set()
        for t in sorted(layout.tensors):
            if t in probes_of:
                continue
            node = producer.get(t)
            owners = node_regions.get(node.name, []) if node is not None else []
            if owners:
                for o in owners:
                    if reg[o] - set(excl):
                        new_excl |= reg[o]
                        warnings_out.append(
                            f"kept in float: {region_owner(o)}: onnxruntime quantizes tensor {t!r} inside it, which the "
                            "QAT model cannot observe"
                        )
            else:
                new_excl |= set(consumers.get(t, [])) | ({node.name} if node is not None else set())
                warnings_out.append(f"kept in float: the nodes around tensor {t!r} (not observable from PyTorch)")
        for node, info in layout.weights.items():
            if weight_owner(node) is None and node not in excl:
                new_excl.add(node)
                owners = node_regions.get(node, [])
                what = region_owner(owners[0]) if owners else node
                warnings_out.append(f"kept in float: {what}: its weights are not a Conv2d/Linear parameter QAT can fake-quantize")
        for node, size in layout.constants.items():
            if size > 1 and node not in excl:
                new_excl.add(node)
                owners = node_regions.get(node, [])
                what = region_owner(owners[0]) if owners else node
                warnings_out.append(f"kept in float: {what}: it combines a constant tensor of {size} values that QAT does not fake-quantize")
        new_excl -= excl
        if not new_excl:
            return qmodel, layout, recipe, warnings_out, probes_of, weight_owner
        recipe = recipe.keep_in_float([(n, "QAT cannot mirror onnxruntime's placement here") for n in sorted(new_excl)])
    raise CheckFailed(
        f"could not match onnxruntime's Q/DQ placement after {MAX_EXCLUSION_ROUNDS} rounds of keeping nodes in float; "
        "please report this model"
    )
