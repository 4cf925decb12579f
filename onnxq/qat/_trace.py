"""From a user's ``nn.Module`` to a traced graph with folded BatchNorm and fake-quant probes.

>>> import torch
>>> from onnxq.qat._trace import build_graph
>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
>>> g = build_graph(net, (torch.randn(1, 1, 8, 8),))
>>> sorted(type(m).__name__ for m in g.module.modules() if type(m).__name__ in ("QConv2d", "BatchNorm2d"))
['QConv2d']

Steps: swap modules torch.fx cannot trace (``nn.MultiheadAttention``, ``nn.TransformerEncoder[Layer]``)
and ``nn.GELU`` / ``nn.Hardswish`` (so their Erf/Add/Mul and HardSigmoid/Mul internals, which
onnxruntime quantizes, get probes) for exact equivalents; trace with ``torch.fx``; fold eval-mode BatchNorm into the preceding Conv2d/Linear;
wrap Conv2d/Linear into weight-fake-quant modules; put an :class:`ActQuant` probe after every node
producing a float tensor. Which probes are switched on is decided later, from onnxruntime's own
QDQ placement on the exported graph.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..errors import InputError, first_line
from ._fakequant import ActQuant, QConv2d, QLinear

__all__ = ["build_graph", "TracedGraph", "PASS_THROUGH"]

# Leaf modules without weights that onnxruntime either quantizes through their inputs/outputs or
# leaves in float; any other leaf module with parameters is reported (and stays float).
PASS_THROUGH = (
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Unflatten,
    nn.Dropout, nn.Dropout2d, nn.Identity, nn.Softmax, nn.Upsample, nn.ZeroPad2d,
)


class GELU(nn.Module):
    """Exact GELU written as the ops the TorchScript exporter emits (Div, Erf, Add, Mul, Mul)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (torch.erf(x / 1.4142135623730951) + 1.0) * 0.5


class Hardswish(nn.Module):
    """``x * hardsigmoid(x)``: the HardSigmoid + Mul that onnxruntime's pre-processing inlines HardSwish into."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(x)


class MultiheadAttention(nn.Module):
    """Traceable ``nn.MultiheadAttention`` (same parameters, same math, returns ``(out, None)``)."""

    def __init__(self, m: nn.MultiheadAttention):
        super().__init__()
        e, h = m.embed_dim, m.num_heads
        self.embed_dim, self.num_heads, self.head_dim, self.batch_first = e, h, e // h, m.batch_first
        self.q_proj = nn.Linear(e, e, bias=m.in_proj_bias is not None)
        self.k_proj = nn.Linear(m.kdim, e, bias=m.in_proj_bias is not None)
        self.v_proj = nn.Linear(m.vdim, e, bias=m.in_proj_bias is not None)
        with torch.no_grad():
            if m._qkv_same_embed_dim:
                wq, wk, wv = m.in_proj_weight.chunk(3, 0)
            else:
                wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
            for lin, w in ((self.q_proj, wq), (self.k_proj, wk), (self.v_proj, wv)):
                lin.weight.copy_(w)
            if m.in_proj_bias is not None:
                for lin, b in zip((self.q_proj, self.k_proj, self.v_proj), m.in_proj_bias.chunk(3, 0)):
                    lin.bias.copy_(b)
        self.out_proj = nn.Linear(e, e, bias=m.out_proj.bias is not None)
        self.out_proj.load_state_dict(m.out_proj.state_dict())
        self.dropout = nn.Dropout(m.dropout)

    def _heads(self, x, b, t):
        return x.reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, tq, tk = query.size(0), query.size(1), key.size(1)
        q = self._heads(self.q_proj(query), b, tq)
        k = self._heads(self.k_proj(key), b, tk)
        v = self._heads(self.v_proj(value), b, tk)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        attn = self.dropout(torch.softmax(scores, dim=-1))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, tq, self.embed_dim)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


class TransformerEncoderLayer(nn.Module):
    """Traceable ``nn.TransformerEncoderLayer`` (post- or pre-norm, ReLU or GELU)."""

    def __init__(self, m: nn.TransformerEncoderLayer):
        super().__init__()
        self.self_attn = MultiheadAttention(m.self_attn)
        self.linear1, self.dropout, self.linear2 = m.linear1, m.dropout, m.linear2
        self.norm_first, self.norm1, self.norm2 = m.norm_first, m.norm1, m.norm2
        self.dropout1, self.dropout2 = m.dropout1, m.dropout2
        act = m.activation
        if act is F.relu or isinstance(act, nn.ReLU):
            self.activation = nn.ReLU()
        elif act is F.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
            self.activation = GELU()
        elif isinstance(act, nn.Module):
            self.activation = act
        else:
            raise InputError(f"TransformerEncoderLayer activation {act!r} is not supported by onnxq.qat; use 'relu' or 'gelu'")

    def _sa(self, x, mask, kpm):
        return self.dropout1(self.self_attn(x, x, x, key_padding_mask=kpm, attn_mask=mask)[0])

    def _ff(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa(self.norm1(x), src_mask, src_key_padding_mask)
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self._sa(x, src_mask, src_key_padding_mask))
        return self.norm2(x + self._ff(x))


class TransformerEncoder(nn.Module):
    """Traceable ``nn.TransformerEncoder`` (a plain loop over its layers)."""

    def __init__(self, m: nn.TransformerEncoder):
        super().__init__()
        self.layers = nn.ModuleList(_swap(layer) for layer in m.layers)
        self.norm = m.norm

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask)
        return self.norm(x) if self.norm is not None else x


def _swap(m: nn.Module) -> nn.Module:
    if isinstance(m, nn.TransformerEncoder):
        return TransformerEncoder(m)
    if isinstance(m, nn.TransformerEncoderLayer):
        return TransformerEncoderLayer(m)
    if isinstance(m, nn.MultiheadAttention):
        if m.bias_k is not None or m.add_zero_attn:
            return m  # stays a leaf: reported and kept in float
        return MultiheadAttention(m)
    if type(m) is nn.GELU and m.approximate == "none":
        return GELU()
    if type(m) is nn.Hardswish:
        return Hardswish()
    for name, child in list(m.named_children()):
        new = _swap(child)
        if new is not child:
            setattr(m, name, new)
    return m


@dataclass
class TracedGraph:
    module: fx.GraphModule
    probes: list[ActQuant]
    float_layers: dict[str, str] = field(default_factory=dict)  # module path -> type, kept in float
    folded: list[str] = field(default_factory=list)  # "conv <- bn"
    qat_layers: dict[str, str] = field(default_factory=dict)  # module path -> type
    input_names: list[str] = field(default_factory=list)
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)


def _fold_bn(gm: fx.GraphModule, folded: list[str]) -> None:
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        bn = modules[node.target]
        prev = node.args[0] if node.args else None
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        layer = modules.get(prev.target)
        ok = (isinstance(bn, nn.BatchNorm2d) and type(layer) is nn.Conv2d) or (
            isinstance(bn, nn.BatchNorm1d) and isinstance(layer, nn.Linear)
        )
        if not ok or bn.running_mean is None or bn.running_var is None:
            continue
        with torch.no_grad():
            inv = torch.rsqrt(bn.running_var + bn.eps)
            gamma = bn.weight if bn.affine else torch.ones_like(inv)
            beta = bn.bias if bn.affine else torch.zeros_like(inv)
            factor = gamma * inv
            layer.weight.mul_(factor.reshape(-1, *([1] * (layer.weight.dim() - 1))))
            bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
            new_bias = (bias - bn.running_mean) * factor + beta
            if layer.bias is None:
                layer.bias = nn.Parameter(new_bias.to(layer.weight.dtype))
            else:
                layer.bias.copy_(new_bias)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded.append(f"{prev.target} <- {node.target}")
    gm.graph.lint()
    gm.delete_all_unused_submodules()


def _set_module(gm: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    setattr(parent, name, new)


def _is_float_tensor(node: fx.Node) -> bool:
    tm = node.meta.get("tensor_meta")
    return isinstance(tm, TensorMetadata) and tm.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def build_graph(model: nn.Module, example_inputs: tuple) -> TracedGraph:
    """Copy ``model`` and turn it into a QAT-ready ``fx.GraphModule`` (all probes off)."""
    net = _swap(copy.deepcopy(model)).eval()
    try:
        gm = fx.symbolic_trace(net)
    except Exception as e:
        raise InputError(
            f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: {first_line(e)}; onnxq.qat needs a "
            "model without Python control flow on tensor values (move it out of forward, or mark that part with "
            "torch.fx.wrap)"
        ) from e
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    except Exception as e:
        shapes = ", ".join("x".join(map(str, t.shape)) for t in example_inputs)
        raise InputError(f"the model does not run on example_inputs of shape {shapes}: {type(e).__name__}: {first_line(e)}") from e
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    folded: list[str] = []
    _fold_bn(gm, folded)
    modules = dict(gm.named_modules())
    probes: list[ActQuant] = []
    float_layers: dict[str, str] = {}
    qat_layers: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = modules[node.target]
        if type(mod) is nn.Conv2d:
            _set_module(gm, node.target, QConv2d.from_float(mod))
            qat_layers[node.target] = "Conv2d" + (f" (groups={mod.groups})" if mod.groups > 1 else "")
        elif isinstance(mod, nn.Linear) and type(mod) in (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear):
            probe = ActQuant(len(probes), owner=f"{node.target} (MatMul before bias)", module_path=node.target)
            probes.append(probe)
            _set_module(gm, node.target, QLinear.from_float(mod, probe))
            qat_layers[node.target] = "Linear"
        elif any(True for _ in mod.parameters()):
            float_layers[node.target] = type(mod).__name__
    for node in list(gm.graph.nodes):
        if node.op not in ("placeholder", "call_module", "call_function", "call_method") or not _is_float_tensor(node):
            continue
        owner = node.target if node.op in ("placeholder", "call_module") else node.name
        probe = ActQuant(len(probes), owner=str(owner), module_path=node.target if node.op == "call_module" else None)
        probes.append(probe)
        name = f"_qat_act_{node.name}"
        gm.add_submodule(name, probe)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node,))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
    gm.graph.lint()
    gm.recompile()
    if not qat_layers:
        found = ", ".join(f"{k} ({v})" for k, v in float_layers.items()) or "no layers with weights"
        raise InputError(
            f"{type(model).__name__} has no Conv2d or Linear layer for QAT to quantize (found: {found}); "
            "onnxq.qat supports Conv2d (incl. depthwise/grouped), Linear and the Linear/MatMul blocks of transformer encoders"
        )
    return TracedGraph(
        module=gm, probes=probes, float_layers=float_layers, folded=folded, qat_layers=qat_layers,
        input_names=[str(p.target) for p in placeholders],
        input_shapes=[tuple(t.shape) for t in example_inputs],
    )
