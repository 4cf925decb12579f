"""QDQ conformance: does a quantized model satisfy a hardware profile's constraints?

>>> from onnxq.check import check_model
>>> violations = check_model(onnx.load("net.int8.onnx"), load_profile("tensorrt"))   # doctest: +SKIP
>>> [v.rule for v in violations]                                                      # doctest: +SKIP
['zero-point-zero']

Rules come from the profile's data (activation/weight types, symmetry, per-channel, its Q/DQ
layout flags), not from per-profile code. Imports only onnx and numpy.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .profiles import Profile

__all__ = ["Violation", "check_model", "RULES", "summarize", "fix_for"]

_NP_NAME = {np.dtype(np.uint8): "uint8", np.dtype(np.int8): "int8", np.dtype(np.int16): "int16", np.dtype(np.uint16): "uint16"}
_INT4 = {onnx.TensorProto.INT4: "int4", onnx.TensorProto.UINT4: "uint4"}
# weight input index and the output-channel axis onnxruntime uses for per-channel weights
WEIGHT_INPUT = {"Conv": (1, 0), "ConvTranspose": (1, 1), "Gemm": (1, None), "MatMul": (1, -1)}

RULES = {
    "has-qdq": "the model holds QuantizeLinear/DequantizeLinear nodes",
    "qdq-format": "QDQ format: no QOperator (QLinear*/ConvInteger/MatMulInteger) nodes",
    "activation-type": "activation zero points have the profile's activation type",
    "weight-type": "weight zero points have the profile's weight type",
    "zero-point-zero": "symmetric quantization: every zero point is 0 (int8) / 128 (uint8)",
    "per-channel-axis": "per-channel weight scales along the output-channel axis",
    "weight-qdq-pair": "weights are float initializers behind a QuantizeLinear -> DequantizeLinear pair",
    "dedicated-qdq-pair": "each DequantizeLinear output feeds exactly one consumer",
    "dynamic-model": "static QDQ, not dynamic quantization (DynamicQuantizeLinear computes ranges at run time)",
}


@dataclass(frozen=True)
class Violation:
    rule: str
    node: str
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.detail}"


def _zp_type(model_inits: dict[str, onnx.TensorProto], node: onnx.NodeProto) -> tuple[str | None, np.ndarray | None]:
    if len(node.input) < 3 or not node.input[2]:
        return ("uint8", np.zeros(1, np.uint8))  # ONNX default zero point: uint8 0
    t = model_inits.get(node.input[2])
    if t is None:
        return None, None
    if t.data_type in _INT4:
        return _INT4[t.data_type], numpy_helper.to_array(t).astype(np.int32)
    arr = numpy_helper.to_array(t)
    return _NP_NAME.get(arr.dtype, str(arr.dtype)), arr


def check_model(model: onnx.ModelProto, profile: Profile, *, weight_type: str | None = None) -> list[Violation]:
    """Every violation of the profile's QDQ constraints, one per offending node and rule.

    ``weight_type`` overrides the profile's (a model quantized with ``--weight-type int4``).
    """
    q = profile.quant
    weight_qtype = weight_type or q.weight_type
    layout = q.layout
    inits = {t.name: t for t in model.graph.initializer}
    # Constant nodes can carry zero points too (exporters write them so)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            inits.setdefault(n.output[0], n.attribute[0].t)
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)
    producers = {o: n for n in model.graph.node for o in n.output}
    out: list[Violation] = []
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    dynamic = [n for n in model.graph.node if n.op_type in ("DynamicQuantizeLinear", "DynamicQuantizeMatMul")]
    if dynamic:
        return [Violation("dynamic-model", "<model>", f"{len(dynamic)} DynamicQuantizeLinear node(s): a dynamically quantized "
                          f"model; profile {profile.name} expects static QDQ")]
    if not qs and not dqs:
        return [Violation("has-qdq", "<model>", "no QuantizeLinear/DequantizeLinear nodes: is this the FP32 model?")]
    for n in model.graph.node:
        if n.op_type.startswith("QLinear") or n.op_type in ("ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeLinear"):
            out.append(Violation("qdq-format", n.name or n.op_type, f"{n.op_type} is a QOperator/dynamic node; profile {profile.name} expects QDQ"))

    def is_weight_dq(dq: onnx.NodeProto) -> bool:
        """A constant feeding the weight slot of Conv/Gemm/MatMul (other constants quantize as activations)."""
        src = dq.input[0]
        prod = producers.get(src)
        constant = src in inits or (prod is not None and prod.op_type == "QuantizeLinear" and prod.input[0] in inits)
        if not constant:
            return False
        return any(
            u.op_type in WEIGHT_INPUT and dq.output[0] in u.input and list(u.input).index(dq.output[0]) == WEIGHT_INPUT[u.op_type][0]
            for u in consumers.get(dq.output[0], [])
        )

    sym_zero = {"int8": 0, "uint8": 128, "int4": 0, "uint4": 8, "int16": 0, "uint16": 32768}
    for dq in dqs:
        name = dq.name or dq.output[0]
        zp_type, zp = _zp_type(inits, dq)
        weight = is_weight_dq(dq)
        if zp_type == "int32":
            continue  # a bias: onnxruntime always stores it as int32 with scale = s_input * s_weight
        want = weight_qtype if weight else q.activation_type
        paired = not weight and dq.input[0] in producers and producers[dq.input[0]].op_type == "QuantizeLinear"
        if paired:
            zp_type = None  # its QuantizeLinear partner is checked below
        if zp_type is not None and zp_type != want:
            rule = "weight-type" if weight else "activation-type"
            out.append(Violation(rule, name, f"zero point type {zp_type}, profile wants {want}"))
        symmetric = q.weight_symmetric if weight else q.activation_symmetric
        if symmetric and zp is not None and zp_type in sym_zero and np.any(zp != sym_zero[zp_type]):
            out.append(Violation("zero-point-zero", name, f"zero point {np.unique(zp)[:4].tolist()} where symmetric {zp_type} needs {sym_zero[zp_type]}"))
        if weight:
            users = consumers.get(dq.output[0], [])
            scale = inits.get(dq.input[1])
            scale_len = int(np.prod(scale.dims)) if scale is not None and scale.dims else 1
            for user in users:
                spec = WEIGHT_INPUT.get(user.op_type)
                if spec is None or list(user.input).index(dq.output[0]) != spec[0]:
                    continue
                if q.per_channel and scale_len > 1:
                    axis_attr = next((a.i for a in dq.attribute if a.name == "axis"), 1)
                    wt = inits.get(dq.input[0]) or (inits.get(producers[dq.input[0]].input[0]) if dq.input[0] in producers else None)
                    rank = len(wt.dims) if wt is not None else 0
                    expected = spec[1]
                    if user.op_type == "Gemm":
                        trans_b = next((a.i for a in user.attribute if a.name == "transB"), 0)
                        expected = 0 if trans_b else 1
                    if expected is not None and rank:
                        if (axis_attr % rank) != (expected % rank):
                            out.append(Violation("per-channel-axis", name, f"axis {axis_attr} on {user.op_type} weight, expected {expected % rank}"))
            if layout.weight_qdq_pair and dq.input[0] in inits:
                out.append(Violation("weight-qdq-pair", name, "weight stored pre-quantized; profile wants float weight -> QuantizeLinear -> DequantizeLinear"))
        if layout.dedicated_qdq_pair:
            n_users = len(consumers.get(dq.output[0], []))
            if n_users > 1:
                out.append(Violation("dedicated-qdq-pair", name, f"output feeds {n_users} consumers"))
    for qn in qs:
        zp_type, zp = _zp_type(inits, qn)
        if qn.input[0] in inits:
            continue  # weight Q: its DQ partner was checked
        if zp_type is not None and zp_type != q.activation_type:
            out.append(Violation("activation-type", qn.name or qn.output[0], f"zero point type {zp_type}, profile wants {q.activation_type}"))
        if q.activation_symmetric and zp is not None and zp_type in sym_zero and np.any(zp != sym_zero[zp_type]):
            out.append(Violation("zero-point-zero", qn.name or qn.output[0], f"zero point {np.unique(zp)[:4].tolist()} where symmetric {zp_type} needs {sym_zero[zp_type]}"))
    return out


def fix_for(rule: str, profile: Profile) -> str:
    """What to do about a rule's violations, in one sentence."""
    if rule == "has-qdq":
        return f"quantize it first: onnxq quantize MODEL --mode static --profile {profile.name}"
    if rule in ("dynamic-model", "qdq-format"):
        return f"re-quantize the FP32 model with --mode static --profile {profile.name}"
    if rule == "weight-type":
        return f"re-quantize with --profile {profile.name} (or pass --weight-type if this type was intended)"
    return f"re-quantize with --profile {profile.name}, whose settings produce this layout"


def summarize(violations: list[Violation], profile: Profile) -> list[dict]:
    """Violations grouped by rule: count, a few example nodes, what the rule means and the fix."""
    groups: dict[str, list[Violation]] = defaultdict(list)
    for v in violations:
        groups[v.rule].append(v)
    return [{"rule": r, "count": len(vs), "meaning": RULES.get(r, ""), "examples": [f"{v.node}: {v.detail}" for v in vs[:2]],
             "fix": fix_for(r, profile)} for r, vs in groups.items()]
