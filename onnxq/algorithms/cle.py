"""Cross-layer equalization (CLE) of Conv -> activation -> Conv pairs, and the bias absorption that goes with it.

>>> from onnxq.algorithms.cle import find_pairs, equalize
>>> pairs = find_pairs(model)                                            # doctest: +SKIP
>>> report = equalize(model, pairs, stats, mode="activations")            # doctest: +SKIP

For a pair ``y = conv2(act(conv1(x)))`` with a positively homogeneous activation, scaling output
channel ``i`` of conv1 (weights and bias) by ``1 / s_i`` and input channel ``i`` of conv2 by ``s_i``
leaves the float network unchanged (Nagel et al. 2019, "Data-Free Quantization"). The scales are
picked so quantization loses less:

- ``mode="weights"`` (per-tensor weight targets): DFQ's ``s_i = sqrt(r1_i / r2_i)``, so conv1's
  output channels and conv2's input channels get equal ranges (``r`` = max |w| of the channel);
  repeated over the chain until it settles.
- ``mode="activations"`` (per-channel weight targets, where weight ranges per output channel cost
  nothing): the activation between the two convs is quantized with ONE scale per tensor (that is
  what onnxruntime's CPU provider fuses), so each channel is scaled up to the tensor's largest
  range; applied where conv2 is depthwise, whose per-channel weights absorb ``s_i`` without loss.

``Relu`` and no activation are exact for any scale. ``Clip(0, c)`` (ReLU6) is not positively
homogeneous, so a channel is only scaled where the calibration data shows the clip cannot bind:
scaled up (``s_i < 1``) at most until its largest pre-activation, times ``margin``, reaches ``c``;
never scaled down (``s_i > 1``) unless that pre-activation stays below ``c / margin``. The float
model is then unchanged on the calibration data (tested to 1e-5) and beyond it until a channel
exceeds ``margin`` times its calibration maximum.

Bias absorption (DFQ section 4.1): where a channel's pre-activation never falls below ``b_i > 0``
(nor, for Clip, rises above ``c``), ``b_i`` moves from conv1's bias into conv2's, shrinking the
activation's range; only into 1x1 convs without padding, where it is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .graph import attrs, const, consumers, set_const

__all__ = ["Pair", "find_pairs", "equalize", "ChannelRange", "CLE_MODES"]

CLE_MODES = ("weights", "activations")
MARGIN = 1.5
MIN_SCALE = 1e-3


@dataclass
class Pair:
    conv1: onnx.NodeProto
    act: onnx.NodeProto | None  # Relu / Clip, or None
    conv2: onnx.NodeProto
    bound: float  # the activation's upper clip (inf for Relu / none)
    signed: bool  # no activation: the tensor is signed

    @property
    def tensor(self) -> str:
        """conv1's output: the pre-activation whose channel ranges decide the scales."""
        return self.conv1.output[0]

    @property
    def depthwise(self) -> bool:
        a = attrs(self.conv2)
        return a.get("group", 1) > 1 and _cin(self.conv2, self.conv2_weight_shape) == a.get("group", 1)

    conv2_weight_shape: tuple = field(default=(), repr=False)


class ChannelRange:
    """Observer: per-channel (axis 1) min and max of a tensor over the calibration samples."""

    def __init__(self) -> None:
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        axes = tuple(i for i in range(x.ndim) if i != 1)
        lo, hi = x.min(axis=axes).astype(np.float64), x.max(axis=axes).astype(np.float64)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)


def _cin(conv: onnx.NodeProto, wshape: tuple) -> int:
    return int(wshape[1] * attrs(conv).get("group", 1))


def _bound(model: onnx.ModelProto, node: onnx.NodeProto) -> float | None:
    """The upper bound of a Relu (inf) or Clip(0, c) (c); None for anything else."""
    if node.op_type == "Relu":
        return float("inf")
    if node.op_type != "Clip":
        return None
    a = attrs(node)
    lo = const(model, node.input[1]) if len(node.input) > 1 and node.input[1] else a.get("min")
    hi = const(model, node.input[2]) if len(node.input) > 2 and node.input[2] else a.get("max")
    if lo is None or float(np.asarray(lo)) != 0.0:
        return None
    return float(np.asarray(hi)) if hi is not None else float("inf")


def _plain_conv(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    w = const(model, node.input[1])
    return w is not None and w.dtype == np.float32 and w.ndim >= 3


def find_pairs(model: onnx.ModelProto, excluded: tuple[str, ...] = ()) -> list[Pair]:
    """Conv -> (Relu | Clip(0, c) | nothing) -> Conv chains with a single consumer at each step, in graph order."""
    cons = consumers(model)
    outputs = {o.name for o in model.graph.output}
    pairs = []
    for node in model.graph.node:
        if not _plain_conv(model, node) or node.name in excluded or node.output[0] in outputs:
            continue
        users = cons.get(node.output[0], [])
        if len(users) != 1:
            continue
        act, bound = None, float("inf")
        nxt = users[0]
        if nxt.op_type in ("Relu", "Clip"):
            bound = _bound(model, nxt)
            if bound is None or nxt.output[0] in outputs:
                continue
            act = nxt
            after = cons.get(nxt.output[0], [])
            if len(after) != 1:
                continue
            nxt = after[0]
        if not _plain_conv(model, nxt) or nxt.name in excluded or nxt.input[0] != (act or node).output[0]:
            continue
        w2 = const(model, nxt.input[1])
        if _cin(nxt, w2.shape) != const(model, node.input[1]).shape[0]:
            continue
        pairs.append(Pair(node, act, nxt, bound, act is None, conv2_weight_shape=tuple(w2.shape)))
    return pairs


def _input_channel_view(conv: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """conv's weight regrouped as [input channel, everything that multiplies it] (a copy)."""
    g = attrs(conv).get("group", 1)
    cout, cin_g = w.shape[0], w.shape[1]
    cout_g = cout // g
    per = w.reshape(g, cout_g, cin_g, -1)  # group, out-in-group, in-in-group, kernel
    return per.transpose(0, 2, 1, 3).reshape(g * cin_g, -1)


def _scale_input_channels(conv: onnx.NodeProto, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    g = attrs(conv).get("group", 1)
    cout, cin_g = w.shape[0], w.shape[1]
    per = w.reshape(g, cout // g, cin_g, -1) * s.reshape(g, 1, cin_g, 1)
    return per.reshape(w.shape)


def _allowed(s: np.ndarray, pre_max: np.ndarray, bound: float, margin: float) -> np.ndarray:
    """Clamp scales so a Clip(0, bound) between the convs stays exact on the data (see the module docstring)."""
    if not np.isfinite(bound):
        return s
    top = pre_max * margin
    s = np.where(top >= bound, 1.0, s)  # the clip binds on this channel: leave it
    s = np.where(s < 1.0, np.maximum(s, top / bound), s)  # scaling up: only until the clip is reached
    return s


def _pair_scales(p: Pair, w1: np.ndarray, w2: np.ndarray, st: ChannelRange, mode: str, margin: float) -> np.ndarray:
    pre_max = np.maximum(st.hi, 0.0)
    if mode == "weights":
        r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1)
        r2 = np.abs(_input_channel_view(p.conv2, w2)).max(axis=1)
        ok = (r1 > 0) & (r2 > 0)
        s = np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)
    else:
        if p.signed:
            a = np.maximum(np.abs(st.lo), np.abs(st.hi))
        else:
            a = np.minimum(pre_max, p.bound)
        top = p.bound if np.isfinite(p.bound) else a.max()
        s = np.where(a > 0, a / max(top, 1e-30), 1.0)
    dead = (pre_max <= 0) & ~p.signed
    s = np.where(dead, 1.0, np.maximum(s, MIN_SCALE))
    return s if p.signed else _allowed(s, pre_max, p.bound, margin)


def equalize(model: onnx.ModelProto, pairs: list[Pair], stats: dict[str, ChannelRange], *, mode: str,
             margin: float = MARGIN, rounds: int = 4) -> dict:
    """Equalize the pairs in place; returns what changed (pairs touched, the largest scale change)."""
    touched, spread = set(), 0.0
    todo = [p for p in pairs if mode == "weights" or p.depthwise]
    for _ in range(rounds if mode == "weights" else 1):
        for p in todo:
            st = stats.get(p.tensor)
            if st is None or st.hi is None:
                continue
            w1 = const(model, p.conv1.input[1]).astype(np.float64)
            w2 = const(model, p.conv2.input[1]).astype(np.float64)
            s = _pair_scales(p, w1, w2, st, mode, margin)
            if np.allclose(s, 1.0, rtol=1e-6, atol=0):
                continue
            shape = (-1,) + (1,) * (w1.ndim - 1)
            set_const(model, p.conv1.input[1], (w1 / s.reshape(shape)).astype(np.float32))
            if len(p.conv1.input) > 2 and p.conv1.input[2]:
                b1 = const(model, p.conv1.input[2]).astype(np.float64)
                set_const(model, p.conv1.input[2], (b1 / s).astype(np.float32))
            set_const(model, p.conv2.input[1], _scale_input_channels(p.conv2, w2, s).astype(np.float32))
            st.lo, st.hi = st.lo / s, st.hi / s  # the pre-activation channel ranges move with the scales
            touched.add(p.conv1.name)
            spread = max(spread, float(np.max(np.abs(np.log(s)))))
    return {"mode": mode, "pairs": len(todo), "equalized": len(touched), "largest_scale_change": float(np.exp(spread))}


def absorb_biases(model: onnx.ModelProto, pairs: list[Pair], stats: dict[str, ChannelRange]) -> dict:
    """Move each channel's never-crossed lower bound from conv1's bias into a 1x1, unpadded conv2 (exact on the data)."""
    moved = 0
    for p in pairs:
        st = stats.get(p.tensor)
        a2 = attrs(p.conv2)
        w2 = const(model, p.conv2.input[1])
        if st is None or st.lo is None or p.signed or len(p.conv1.input) < 3 or not p.conv1.input[2]:
            continue
        if tuple(w2.shape[2:]) != (1,) * (w2.ndim - 2) or any(a2.get("pads", [])) or a2.get("group", 1) != 1:
            continue
        b1 = const(model, p.conv1.input[2]).astype(np.float64)
        c = np.clip(st.lo, 0.0, None)  # the pre-activation never falls below c: the activation is linear there
        if np.isfinite(p.bound):
            c = np.where(st.hi <= p.bound, c, 0.0)  # the upper clip would move: not exact
        if not np.any(c > 0):
            continue
        set_const(model, p.conv1.input[2], (b1 - c).astype(np.float32))
        b2 = const(model, p.conv2.input[2]).astype(np.float64) if len(p.conv2.input) > 2 and p.conv2.input[2] else np.zeros(w2.shape[0])
        b2 = b2 + w2.reshape(w2.shape[0], -1).astype(np.float64) @ c
        name = p.conv2.input[2] if len(p.conv2.input) > 2 and p.conv2.input[2] else f"{p.conv2.name}.onnxq_bias"
        while len(p.conv2.input) < 3:
            p.conv2.input.append("")
        p.conv2.input[2] = name
        set_const(model, name, b2.astype(np.float32))
        st.lo, st.hi = st.lo - c, st.hi - c
        moved += 1
    return {"pairs_absorbed": moved}
