"""Fake-quantization modules that compute exactly what onnxruntime's QDQ quantizer will write.

>>> import torch
>>> from onnxq.qat._fakequant import ActQuant, qparams
>>> s, z = qparams(torch.tensor(-1.0), torch.tensor(3.0), 0, 255, symmetric=False)
>>> round(float(s), 6), int(z)
(0.015686, 64)

Scale and zero point mirror ``onnxruntime.quantization.quant_utils.compute_scale_zp`` (range widened
to include 0, float64 arithmetic, numpy's round-half-to-even, scale stored as float32), and weights
mirror ``quantize_data`` (symmetric, ``round(w / scale)`` in float32, clipped to the type's range), so
the PyTorch model and the QDQ ONNX model agree to the last rounding step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["ActQuant", "WeightQuant", "QConv2d", "QLinear", "qparams", "QRANGES", "NonFiniteError"]

# (runtime clamp range, range used to compute the scale) per type, as onnxruntime uses them:
# the scale of symmetric int8 comes from [-127, 127] while QuantizeLinear still saturates at -128.
QRANGES = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "int4": (-8, 7),
    "uint4": (0, 15),
}
_SYMMETRIC_SCALE_RANGE = {"int8": (-127, 127)}  # onnxruntime's ONNX_INT_TYPE_SYMMETRIC_RANGE
_REDUCED_RANGE = {"uint8": (0, 127), "int8": (-64, 64), "uint4": (0, 7), "int4": (-4, 3)}
_TINY = float(torch.finfo(torch.float32).tiny)


class NonFiniteError(InputError):
    """Training produced NaN/inf in a quantized tensor."""


def scale_range(qtype: str, symmetric: bool, reduce_range: bool = False) -> tuple[int, int]:
    """The (qmin, qmax) onnxruntime's ``get_qmin_qmax_for_qType`` returns for these settings."""
    if reduce_range:
        return _REDUCED_RANGE[qtype]
    if symmetric and qtype in _SYMMETRIC_SCALE_RANGE:
        return _SYMMETRIC_SCALE_RANGE[qtype]
    return QRANGES[qtype]


def qparams(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int, *, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32, zero point int32) from a range, as onnxruntime's ``compute_scale_zp``.

    Works elementwise (per-channel weights) and without gradients; see :func:`_qparams_ste` for the
    differentiable version used by learnable ranges.
    """
    rmin = torch.clamp(lo.detach().to(torch.float32), max=0.0).double()
    rmax = torch.clamp(hi.detach().to(torch.float32), min=0.0).double()
    if symmetric:
        absmax = torch.maximum(rmin.abs(), rmax.abs())
        rmin, rmax = -absmax, absmax
    scale64 = (rmax - rmin) / float(qmax - qmin)
    tiny = scale64 < _TINY
    safe = torch.where(tiny, torch.ones_like(scale64), scale64)
    if symmetric:
        zp = torch.round(torch.full_like(scale64, (qmin + qmax) / 2.0))  # torch.round: half to even, as numpy
    else:
        zp = torch.round(qmin - rmin / safe)
    zp = torch.where(tiny, torch.zeros_like(zp), zp).clamp(qmin, qmax)
    scale = torch.where(tiny, torch.ones_like(scale64), scale64).to(torch.float32)
    return scale, zp.to(torch.int32)


class _FakeQuant(torch.autograd.Function):
    """``(clamp(round(x / scale) + zp) - zp) * scale`` with a straight-through gradient inside the range.

    Divides by the scale as onnxruntime's QuantizeLinear does (``torch.fake_quantize_*`` multiplies
    by its reciprocal, which rounds exact ties, e.g. after average pooling, the other way).
    """

    @staticmethod
    def forward(ctx, x, scale, zp, qmin: int, qmax: int, snap: int = 0):
        v = x / scale
        if snap:
            # An average of `snap` values on this very grid: its ties (k + 1/2) are exact in integer arithmetic.
            # onnxruntime's QLinearAveragePool (the NHWC kernel used after integer convolutions) rounds the
            # average of the stored integers half to even, i.e. after adding the zero point.
            q = torch.round(torch.round(v * snap) / snap + zp)
        else:
            q = torch.round(v) + zp
        keep = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(keep)
        return (torch.clamp(q, qmin, qmax) - zp) * scale

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad * keep, None, None, None, None, None


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int, snap: int = 0) -> torch.Tensor:
    return _FakeQuant.apply(x, scale.to(x.dtype), zp.to(x.dtype), qmin, qmax, snap)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class ActQuant(nn.Module):
    """Fake-quantizes one activation tensor as onnxruntime will (per-tensor scale and zero point).

    >>> q = ActQuant(0).eval(); q.configure("uint8", symmetric=False, lo=-1.0, hi=3.0)
    >>> [round(v, 4) for v in q(torch.tensor([0.5, 9.0])).tolist()]    # 9.0 saturates at q = 255
    [0.502, 2.9961]

    Modes: ``"off"`` (identity), ``"quant"`` (fake quantization) and ``"marker"`` (used only while
    exporting: a QuantizeLinear whose scale is ``index + 1`` tells onnxq which ONNX tensor this is).
    In training, the owner of a range updates it by EMA of each batch's min/max (or learns it, with
    ``learnable=True``) until ``freeze_after`` steps, then freezes it. Modules that share a range
    (a pooling output uses its input's parameters in onnxruntime) point at the owner via ``source``.
    """

    def __init__(self, index: int, owner: str = "", module_path: str | None = None):
        super().__init__()
        self.index = int(index)
        self.owner = owner  # what produces the tensor: a module path or an fx node name
        self.module_path = module_path  # the module whose output (or internal product) this is
        self.mode = "off"
        self.qtype = "uint8"
        self.symmetric = False
        self.qmin, self.qmax = QRANGES["uint8"]
        self.sqmin, self.sqmax = QRANGES["uint8"]
        self.tensor = ""  # ONNX tensor name, for messages and export
        self.learnable = False
        self.freeze_after: int | None = None
        self.averaging = 0.01
        self.bounds: tuple[float | None, float | None] = (None, None)
        self.snap = 0  # window size of an average pool sharing its input's scale (exact ties, as QLinearAveragePool)
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))
        self.lo_p: nn.Parameter | None = None
        self.hi_p: nn.Parameter | None = None
        object.__setattr__(self, "_source", None)

    # -- configuration --------------------------------------------------------------------------
    def configure(self, qtype: str, *, symmetric: bool, lo: float, hi: float, learnable: bool = False,
                  freeze_after: int | None = None, averaging: float = 0.01, tensor: str = "",
                  bounds: tuple[float | None, float | None] = (None, None)) -> None:
        self.mode = "quant"
        self.qtype = qtype
        self.symmetric = bool(symmetric)
        self.qmin, self.qmax = QRANGES[qtype]
        self.sqmin, self.sqmax = scale_range(qtype, symmetric)
        self.tensor = tensor
        self.freeze_after = freeze_after
        self.averaging = float(averaging)
        self.bounds = bounds
        self.lo.fill_(float(lo))
        self.hi.fill_(float(hi))
        self.learnable = bool(learnable)
        if learnable:
            self.lo_p = nn.Parameter(self.lo.clone())
            self.hi_p = nn.Parameter(self.hi.clone())

    def share(self, source: "ActQuant") -> None:
        """Use ``source``'s range (never observed here): onnxruntime shares one scale between them."""
        self.mode = "quant"
        self.qtype, self.symmetric = source.qtype, source.symmetric
        self.qmin, self.qmax, self.sqmin, self.sqmax = source.qmin, source.qmax, source.sqmin, source.sqmax
        object.__setattr__(self, "_source", source)

    @property
    def source(self) -> "ActQuant | None":
        return self._source

    @property
    def frozen(self) -> bool:
        return self.freeze_after is not None and int(self.steps) >= self.freeze_after

    def range(self) -> tuple[float, float]:
        """The current (lo, hi) this module quantizes with (the owner's, when shared)."""
        q = self._source or self
        if q.learnable and q.lo_p is not None:
            lo, hi = q._bounded(q.lo_p.detach(), q.hi_p.detach())
            return float(lo), float(hi)
        return float(q.lo), float(q.hi)

    def current_scale(self) -> torch.Tensor:
        """The float32 scale in use now (the owner's, when shared), without gradient."""
        q = self._source or self
        if q.learnable and q.lo_p is not None:
            lo, hi = q._bounded(q.lo_p.detach(), q.hi_p.detach())
        else:
            lo, hi = q.lo, q.hi
        return qparams(lo, hi, self.sqmin, self.sqmax, symmetric=self.symmetric)[0]

    def scale_zero_point(self) -> tuple[float, int]:
        lo, hi = self.range()
        s, z = qparams(torch.tensor(lo), torch.tensor(hi), self.sqmin, self.sqmax, symmetric=self.symmetric)
        return float(s), int(z)

    def _bounded(self, lo, hi):
        blo, bhi = self.bounds
        if blo is not None:
            lo = torch.clamp(lo, min=blo)
        if bhi is not None:
            hi = torch.clamp(hi, max=bhi)
        return lo, hi

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "marker":
            return torch.fake_quantize_per_tensor_affine(x, float(self.index + 1), 0, 0, 255)
        q = self._source or self
        if q is self and self.training:
            self._observe(x)
        if q.learnable and q.lo_p is not None:
            return self._learnable_fq(x, q)
        lo, hi = (q.lo, q.hi)
        scale, zp = qparams(lo, hi, self.sqmin, self.sqmax, symmetric=self.symmetric)
        if self.snap:
            return fake_quant(x, scale, zp, self.qmin, self.qmax, self.snap)
        # torch's fused kernel (one pass, ~2x faster to train) multiplies by 1/scale where onnxruntime divides:
        # they can differ only when x / scale lies within one float ulp of a rounding tie.
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, self.qmin, self.qmax)

    def _observe(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            mn, mx = torch.aminmax(x.detach())
            if not (math.isfinite(float(mn)) and math.isfinite(float(mx))):
                raise NonFiniteError(
                    f"non-finite values (NaN/inf) in tensor {self.tensor or self.owner!r} at QAT step {int(self.steps)}: "
                    "training diverged; lower the learning rate or check the data; nothing was exported"
                )
            if self.frozen:
                return
            self.steps += 1
            if self.learnable:
                return
            a = self.averaging
            lo, hi = self._bounded(self.lo + a * (mn.float() - self.lo), self.hi + a * (mx.float() - self.hi))
            self.lo.copy_(lo)
            self.hi.copy_(hi)

    def _learnable_fq(self, x: torch.Tensor, q: "ActQuant") -> torch.Tensor:
        if q.frozen:
            q.lo_p.requires_grad_(False)
            q.hi_p.requires_grad_(False)
        # LSQ-style gradient scaling keeps range updates on the weights' scale
        g = 1.0 / math.sqrt(max(1, x[0].numel()) * max(1, self.qmax))
        lo = q.lo_p * g + (q.lo_p * (1 - g)).detach()
        hi = q.hi_p * g + (q.hi_p * (1 - g)).detach()
        lo, hi = q._bounded(lo, hi)
        rmin, rmax = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        if self.symmetric:
            a = torch.maximum(-rmin, rmax)
            rmin, rmax = -a, a
        scale = torch.clamp((rmax - rmin) / float(self.sqmax - self.sqmin), min=_TINY)
        if self.symmetric:
            zp = torch.round(torch.tensor((self.sqmin + self.sqmax) / 2.0))
        else:
            zp = torch.clamp(_round_ste(self.sqmin - rmin / scale), self.sqmin, self.sqmax)
        qx = torch.clamp(_round_ste(x / scale) + zp, self.qmin, self.qmax)
        with torch.no_grad():
            q.lo.copy_(lo.detach())
            q.hi.copy_(hi.detach())
        return (qx - zp) * scale

    def extra_repr(self) -> str:
        if self.mode != "quant":
            return f"index={self.index}, mode={self.mode}"
        if self._source is not None:
            return f"index={self.index}, shares={self._source.index} ({self._source.tensor})"
        lo, hi = self.range()
        return f"index={self.index}, {self.qtype}{' sym' if self.symmetric else ''}, range=({lo:.4g}, {hi:.4g}), tensor={self.tensor!r}"


class WeightQuant(nn.Module):
    """Symmetric weight fake quantization, per output channel (axis 0) or per tensor.

    ``round(w / scale)`` in float32 with ``scale = 2 * max|w| / (qmax - qmin)`` from onnxruntime's
    range for the type (int8: [-127, 127]; int4: [-8, 7]); gradients pass straight through.
    """

    def __init__(self):
        super().__init__()
        self.enabled = False
        self.qtype = "int8"
        self.per_channel = True
        self.reduce_range = False
        self.qmin, self.qmax = QRANGES["int8"]
        self.sqmin, self.sqmax = scale_range("int8", True)
        self.last_scale: torch.Tensor | None = None

    def configure(self, qtype: str, *, per_channel: bool, reduce_range: bool = False) -> None:
        self.enabled = True
        self.qtype, self.per_channel, self.reduce_range = qtype, bool(per_channel), bool(reduce_range)
        self.qmin, self.qmax = QRANGES[qtype]
        self.sqmin, self.sqmax = scale_range(qtype, True, reduce_range)

    def scale_zero_point(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            if self.per_channel:
                flat = w.detach().reshape(w.shape[0], -1)
                lo, hi = flat.min(1).values, flat.max(1).values
            else:
                lo, hi = w.detach().min(), w.detach().max()
            return qparams(lo, hi, self.sqmin, self.sqmax, symmetric=True)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        scale, zp = self.scale_zero_point(w)
        self.last_scale = scale
        if self.per_channel:
            shape = (-1,) + (1,) * (w.dim() - 1)
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        zpf = zp.to(w.dtype)
        q = torch.clamp(torch.round(w.detach() / scale) + zpf, self.qmin, self.qmax)
        w_hat = (q - zpf) * scale
        return w + (w_hat - w).detach()

    def extra_repr(self) -> str:
        if not self.enabled:
            return "off (float weights)"
        return f"{self.qtype} symmetric {'per-channel' if self.per_channel else 'per-tensor'}{' reduce_range' if self.reduce_range else ''}"


def _quant_bias(layer: nn.Module, bias: torch.Tensor | None) -> torch.Tensor | None:
    """int32 bias with scale input_scale * weight_scale, as onnxruntime writes Conv/Gemm biases."""
    src = layer.__dict__.get("_bias_input")
    if bias is None or src is None or not layer.wq.enabled or src.mode != "quant":
        return bias
    with torch.no_grad():
        bscale = (src.current_scale() * layer.wq.last_scale).to(torch.float32)
        safe = torch.where(bscale == 0, torch.ones_like(bscale), bscale)
        q = torch.clamp(torch.round(bias.detach().double() / safe.double()), -(2**31), 2**31 - 1)
        b_hat = (q.to(torch.float32) * safe).to(bias.dtype)
    return bias + (b_hat - bias).detach()


def _adopt(cls, module: nn.Module) -> nn.Module:
    """An instance of ``cls`` sharing ``module``'s parameters, buffers and state, with a WeightQuant."""
    q = cls.__new__(cls)
    nn.Module.__init__(q)
    q.__dict__.update({k: v for k, v in module.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")})
    q._parameters = module._parameters
    q._buffers = module._buffers
    q._modules = dict(module._modules)
    q.wq = WeightQuant()
    return q


class QConv2d(nn.Conv2d):
    """``nn.Conv2d`` (any groups, BatchNorm already folded in) with fake-quantized weights and bias.

    The bias is rounded to int32 with scale ``input_scale * weight_scale`` when the input's
    quantizer is known (``_bias_input``), as onnxruntime stores Conv/Gemm biases.
    """

    @classmethod
    def from_float(cls, conv: nn.Conv2d) -> "QConv2d":
        return _adopt(cls, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.wq(self.weight)
        return self._conv_forward(x, w, _quant_bias(self, self.bias))


class QLinear(nn.Linear):
    """``nn.Linear`` with fake-quantized weights.

    On inputs of rank > 2 the exporter writes MatMul -> Add(bias), and onnxruntime quantizes the
    MatMul output: ``mm_quant`` fake-quantizes that tensor between the product and the bias.
    """

    @classmethod
    def from_float(cls, lin: nn.Linear, mm_quant: ActQuant) -> "QLinear":
        q = _adopt(cls, lin)
        q.mm_quant = mm_quant
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.wq(self.weight)
        if x.dim() <= 2 or self.bias is None:
            return F.linear(x, w, _quant_bias(self, self.bias))
        return self.mm_quant(torch.matmul(x, w.t())) + self.bias
