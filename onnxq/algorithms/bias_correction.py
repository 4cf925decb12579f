"""Bias correction: shift each layer's float bias by the mean output error quantization causes.

>>> from onnxq.algorithms.bias_correction import fast_corrections, apply_corrections
>>> deltas = fast_corrections(float_model, layers, qdq_model, means)          # doctest: +SKIP
>>> apply_corrections(float_model, layers, deltas)                            # doctest: +SKIP

Quantizing a layer's weights (W -> Wq, as onnxruntime wrote them) shifts the mean of its output:
``E[f(x, W)] - E[f(x, Wq)]`` per output channel, which every later layer then sees as a systematic
error (Nagel et al. 2019, "Data-Free Quantization", section 4.2; NNCF's bias correction). Adding it
to the bias removes the shift; the layer is unchanged otherwise.

- **fast**: per layer with FP32 inputs. Conv, ConvTranspose, Gemm and MatMul are affine in their
  input, so ``E[f(x, W)] = f(E[x], W)``: the mean input (per position, over the calibration samples,
  collected in the same pass as the ranges) is run through the layer with W and with Wq.
- **full**: measured on the quantized network: the QDQ model (every layer's weights AND activations
  quantized, with the corrections so far) runs over calibration samples, and each layer removes the
  mean error its own input quantizer (rounding and clipping) and its own weights add, on the
  activations the quantized layers before it actually produce; ``passes`` rounds, each seeing the
  corrections before it. (Correcting every layer for its *total* error at once over-corrects: the
  upstream layers fix the same error, and on MobileNetV2 it diverged.)

A layer without a bias gets one (Conv, ConvTranspose, Gemm: no extra op at run time); a MatMul
counts only with a constant per-channel Add after it. Imports onnx and numpy (sessions through
:mod:`onnxq.runtime`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .graph import Layer, attrs, const, dequantized_weight, node_by_name, output_channel_axis, set_const

__all__ = ["MeanInput", "MeanPerChannel", "fast_corrections", "measured_corrections", "apply_corrections",
           "quantized_inputs", "biases", "Correction", "MIN_SAMPLES"]

MIN_SAMPLES = 16  # fewer calibration samples than this make the mean errors noise


class MeanInput:
    """Observer: the mean over calibration samples of one tensor (the shape of one sample)."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, x: np.ndarray) -> None:
        s = np.asarray(x, dtype=np.float64).sum(axis=0)
        self.total = s if self.total is None else self.total + s
        self.count += len(x)

    @property
    def mean(self) -> np.ndarray:
        return (self.total / max(self.count, 1)).astype(np.float32)


class MeanPerChannel:
    """Observer: the mean of one tensor over every axis but ``axis`` (a layer's output channels)."""

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        ax = self.axis % x.ndim
        s = x.sum(axis=tuple(i for i in range(x.ndim) if i != ax))
        self.total = s if self.total is None else self.total + s
        self.count += x.size // x.shape[ax]

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)


@dataclass
class Correction:
    layer: str
    delta: np.ndarray  # added to the layer's effective bias, per output channel
    added_bias: bool = False

    @property
    def size(self) -> float:
        return float(np.abs(self.delta).max()) if self.delta.size else 0.0


def _single_node_outputs(layer: Layer, x: np.ndarray, weights: list[np.ndarray], opset: int) -> list[np.ndarray]:
    """Run ``layer``'s op (its attributes, no bias) on ``x`` once per weight: [f(x, w) for w in weights]."""
    from ..runtime import compute_session

    node = layer.node
    nodes, inits = [], []
    for k, w in enumerate(weights):
        inits.append(onnx.numpy_helper.from_array(w.astype(np.float32), f"w{k}"))
        op_type = "MatMul" if node.op_type == "MatMul" else node.op_type
        n = onnx.helper.make_node(op_type, ["x", f"w{k}"], [f"y{k}"], name=f"n{k}")
        if node.op_type != "MatMul":
            n.attribute.extend(a for a in node.attribute if not (node.op_type == "Gemm" and a.name == "beta"))
        nodes.append(n)
    vi = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))
    outs = [onnx.helper.make_tensor_value_info(f"y{k}", onnx.TensorProto.FLOAT, None) for k in range(len(weights))]
    g = onnx.helper.make_graph(nodes, "bias_correction", [vi], outs, inits)
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", max(opset, 13))])
    m.ir_version = 8
    return compute_session(m).run(None, {"x": x.astype(np.float32)})


def _channel_mean(y: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    ax = output_channel_axis(node) % y.ndim
    return y.astype(np.float64).mean(axis=tuple(i for i in range(y.ndim) if i != ax))


def fast_corrections(model: onnx.ModelProto, layers: list[Layer], qmodel: onnx.ModelProto,
                     means: dict[str, MeanInput]) -> list[Correction]:
    """Per layer: f(E[x], W) - f(E[x], Wq), with Wq read from the QDQ model onnxruntime wrote."""
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=17)
    out = []
    for layer in layers:
        wq = dequantized_weight(qmodel, layer.name)
        obs = means.get(layer.node.input[0])
        if wq is None or obs is None or obs.count == 0:
            continue
        w = const(model, layer.weight)
        x = obs.mean[None]
        y_fp, y_q = _single_node_outputs(layer, x, [w, wq], opset)
        delta = _channel_mean(y_fp, layer.node) - _channel_mean(y_q, layer.node)
        out.append(Correction(layer.name, _effective(layer, delta)))
    return out


def quantized_inputs(qmodel: onnx.ModelProto, layers: list[Layer]) -> dict[str, tuple[str, str]]:
    """{layer name: (float tensor entering its input quantizer, the dequantized tensor the layer reads)} in a QDQ model."""
    from .graph import producers

    qnodes, prod = node_by_name(qmodel), producers(qmodel)
    out = {}
    for layer in layers:
        node = qnodes.get(layer.name)
        dq = prod.get(node.input[0]) if node is not None else None
        q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            out[layer.name] = (q.input[0], node.input[0])
    return out


def measured_corrections(model: onnx.ModelProto, layers: list[Layer], qmodel: onnx.ModelProto,
                         pairs: dict[str, tuple[str, str]], means: dict[str, MeanInput]) -> list[Correction]:
    """Per layer, on the quantized network's own activations: f(E[a], W) - f(E[DQ(Q(a))], Wq).

    ``a`` is the float tensor entering the layer's input quantizer in the QDQ model (the output of the
    already-quantized, already-corrected layers before it): each layer removes the mean error its own
    input quantizer and its own weights add, so the corrections compose instead of each layer
    re-correcting the errors upstream layers already fix.
    """
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=17)
    out = []
    for layer in layers:
        wq = dequantized_weight(qmodel, layer.name)
        names = pairs.get(layer.name)
        if wq is None or names is None or any(means.get(n) is None or not means[n].count for n in names):
            continue
        a, x = (means[n].mean[None] for n in names)
        if a.shape != x.shape:
            continue
        w = const(model, layer.weight)
        (y_fp,) = _single_node_outputs(layer, a, [w], opset)
        (y_q,) = _single_node_outputs(layer, x, [wq], opset)
        out.append(Correction(layer.name, _effective(layer, _channel_mean(y_fp, layer.node) - _channel_mean(y_q, layer.node))))
    return out


def _effective(layer: Layer, delta: np.ndarray) -> np.ndarray:
    """The change of the stored bias that shifts the output by ``delta`` (Gemm scales its bias by beta)."""
    if layer.node.op_type == "Gemm":
        beta = float(attrs(layer.node).get("beta", 1.0))
        return delta / beta if beta else np.zeros_like(delta)
    return delta


def biases(model: onnx.ModelProto, layers: list[Layer]) -> dict[str, np.ndarray | None]:
    """{layer name: its float bias now (None when it has none)}: the base the corrections are added to."""
    return {l.name: (const(model, l.bias).astype(np.float64) if l.bias else None) for l in layers}


def apply_corrections(model: onnx.ModelProto, layers: list[Layer], corrections: list[Correction],
                      base: dict[str, np.ndarray | None]) -> list[Correction]:
    """Set each corrected layer's bias to ``base + delta`` in ``model`` (in place); a missing bias is created.

    Corrections are measured without the bias (both sides share it), so they are added to the base
    (the uncorrected bias), never accumulated over passes.
    """
    by_name = {layer.name: layer for layer in layers}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    applied = []
    for c in corrections:
        layer = by_name.get(c.layer)
        if layer is None or not np.all(np.isfinite(c.delta)) or not np.any(c.delta):
            continue
        b0 = base.get(layer.name)
        new = (c.delta if b0 is None else b0 + c.delta.reshape(b0.shape)).astype(np.float32)
        if layer.bias is None:
            name = f"{layer.name}.onnxq_bias"
            while len(layer.node.input) < 3:
                layer.node.input.append("")
            layer.node.input[2] = name
            layer.bias = name
            c.added_bias = True
        elif uses.get(layer.bias, 0) > 1:  # shared with another node: give this one its own copy
            name = f"{layer.bias}.{layer.name}.onnxq_bc"
            layer.bias_node.input[list(layer.bias_node.input).index(layer.bias)] = name
            layer.bias = name
        set_const(model, layer.bias, new)
        applied.append(c)
    return applied
