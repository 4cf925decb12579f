"""``prepare`` and ``export``: QAT whose ONNX output is exactly what onnxruntime's PTQ would place.

>>> import onnxq.qat as qat
>>> net = qat.prepare(model, profile="cpu-x86-vnni", example_inputs=(x,), calibration="calib.npz")  # doctest: +SKIP
>>> train(net)                                                   # your loop, a few epochs   # doctest: +SKIP
>>> res = qat.export(net, (x,), "net.qat.onnx")                                               # doctest: +SKIP

How the two sides are kept identical: ``prepare`` exports the BN-folded float graph, calibrates it
and lets onnxruntime's QDQ quantizer place Q/DQ (the PTQ static result); onnxq reads that placement
back and switches on exactly the PyTorch fake-quant probes that observe those tensors, with the
same scale/zero-point arithmetic. ``export`` exports the trained float graph again and hands the
learned ranges to the same quantizer as range overrides, so placement, fusion into integer kernels
and profile conformance are those of PTQ.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import onnx

from .. import __version__
from ..calibration import CalibrationSet
from ..errors import CheckFailed, InputError, first_line
from ..evaluate import fidelity
from ..manifest import manifest_path, new_manifest
from ..modelio import graph_facts, model_unit, write_model
from ..plan import HOLDOUT, Overrides, Recipe, resolve
from ..profiles import Profile
from ..ptq import calibrate, ensure_node_names, float_nodes_for, preprocess, quantizer_caps, write_qdq
from ..runtime import cpu_profile, make_session, resolve_profile
from ..vocab import QAT_WEIGHT_TYPES
from ._placement import average_pool_windows, place, producer_bounds, range_rules

__all__ = ["prepare", "export", "QATState", "QATExportResult", "is_prepared", "SUPPORTED_WEIGHT_TYPES"]

log = logging.getLogger("onnxq")
SUPPORTED_WEIGHT_TYPES = QAT_WEIGHT_TYPES
INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "QLinearAdd", "QLinearMul",
                   "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
                   "QLinearSoftmax", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "FusedMatMulInteger")
NORM_LAYERS = ("LayerNorm", "GroupNorm", "BatchNorm1d", "BatchNorm2d", "InstanceNorm1d", "InstanceNorm2d", "RMSNorm")


@dataclass
class QATState:
    """What ``prepare`` decided; kept on the prepared module as ``module.onnxq_qat``."""

    profile: Profile
    recipe: Recipe
    opset: int
    input_names: list[str]
    output_names: list[str]
    input_shapes: list[tuple[int, ...]]
    float_signature: list[tuple[str, str]]
    calib_ranges: dict[str, tuple[float, float]]
    layout_signature: tuple
    groups: list[list[str]]
    probe_tensor: dict[int, str]
    group_owner: dict[str, int]  # provider tensor -> probe index holding the range
    weights: dict[str, dict[str, Any]]  # module path -> weight scheme
    float_layers: dict[str, str]
    folded: list[str]
    warnings: list[str]
    calibration: dict[str, Any]
    holdout: dict[str, np.ndarray]
    initial_fidelity: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class QATExportResult:
    """What ``export`` wrote and measured (also the manifest's ``result``)."""

    output: Path
    manifest: Path | None
    fp32_output: Path | None
    profile: str
    recipe: dict[str, Any]
    quantized_tensors: int
    shared_groups: int
    weights: dict[str, dict[str, Any]]
    float_layers: dict[str, str]
    exclude_nodes: list[str]
    ops_after: dict[str, int]
    fused: dict[str, int]
    fidelity_vs_torch: dict[str, dict[str, Any]]
    ranges: dict[str, dict[str, Any]]
    size: int
    wall_s: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("output", "manifest", "fp32_output"):
            d[k] = str(d[k]) if d[k] is not None else None
        return d


def _torch():
    from ..torch_export import require_torch

    return require_torch()


def is_prepared(model: Any) -> bool:
    return isinstance(getattr(model, "onnxq_qat", None), QATState)


def _as_inputs(example_inputs: Any, torch) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise InputError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")
    for i, t in enumerate(example_inputs):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"example_inputs[{i}] is a {type(t).__name__}; pass torch tensors (one per forward() argument)")
        if t.dim() == 0:
            raise InputError(f"example_inputs[{i}] is a scalar; inputs need a batch axis (e.g. shape 1x1x28x28)")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InputError(f"example_inputs[{i}] contains NaN or inf; pass real samples")
    return tuple(t.detach().cpu() for t in example_inputs)


def _calibration_source(calibration: Any, input_names: list[str]) -> Any:
    """PTQ's formats, plus torch tensors and (x, y) batches from a DataLoader."""
    if calibration is None:
        raise InputError("prepare() needs calibration data to initialise the activation ranges: pass calibration= a .npz "
                         "keyed by input name, a .npy, a directory, or an iterable of batches (e.g. a DataLoader)")
    if isinstance(calibration, (str, os.PathLike, Mapping)) or isinstance(calibration, CalibrationSet):
        return calibration
    if not isinstance(calibration, Iterable):
        return calibration  # CalibrationSet.from_source names the problem

    def to_np(v):
        return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)

    def items():
        for item in calibration:
            if isinstance(item, Mapping):
                yield {k: to_np(v) for k, v in item.items()}
            elif isinstance(item, (tuple, list)):
                if len(item) < len(input_names):
                    raise InputError(f"a calibration batch holds {len(item)} item(s) but the model takes inputs {input_names}")
                yield {n: to_np(v) for n, v in zip(input_names, item)}
            else:
                yield {input_names[0]: to_np(item)}

    return items()


def _check_scheme(prof: Profile, weight_type: str | None) -> None:
    """What QAT can express (before any work): signed symmetric weights, 8-bit activations, QDQ."""
    q = prof.quant
    wtype = weight_type or q.weight_type
    if wtype not in SUPPORTED_WEIGHT_TYPES or not q.weight_symmetric:
        raise InputError(
            f"profile {prof.name!r} asks for {'symmetric' if q.weight_symmetric else 'asymmetric'} {wtype} weights, "
            f"which onnxq.qat cannot express: QAT supports signed symmetric weights ({', '.join(SUPPORTED_WEIGHT_TYPES)}); "
            "use another profile or weight_type='int8'"
        )
    if "static" not in q.modes:
        raise InputError(f"profile {prof.name!r} does not allow static quantization, which QAT's output is")


def _output_names(gm, inputs, given: list[str] | None, torch) -> list[str]:
    with torch.no_grad():
        out = gm(*inputs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise InputError("the model must return a tensor or a tuple of tensors for ONNX export")
    if given:
        if len(given) != len(outs):
            raise InputError(f"output_names has {len(given)} name(s) but the model returns {len(outs)} output(s)")
        return list(given)
    return ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]


def _float_graph(gm, probes, inputs, input_names, output_names, opset, tmp: Path):
    from ._onnx import marker_export, strip_markers

    marked = marker_export(gm, inputs, input_names, output_names, opset)
    stripped, probe_tensor = strip_markers(marked, len(probes))
    pre, label = preprocess(stripped, tmp)
    ensure_node_names(pre)
    tensors = {o for n in pre.graph.node for o in n.output} | {i.name for i in pre.graph.input}
    probe_tensor = {k: v for k, v in probe_tensor.items() if v in tensors}
    return pre, probe_tensor, label


def _signature(model: onnx.ModelProto) -> list[tuple[str, str]]:
    return [(n.name, n.op_type) for n in model.graph.node]


def prepare(
    model: Any,
    *,
    profile: str | Profile = "auto",
    example_inputs: Any,
    calibration: Any,
    weight_type: str | None = None,
    per_channel: bool | None = None,
    op_types: list[str] | None = None,
    exclude_op_types: list[str] | None = None,
    calibration_samples: int | None = None,
    ranges: str = "ema",
    freeze_after: int | None = 1000,
    averaging: float = 0.01,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    progress: bool = False,
):
    """Return a copy of ``model`` with fake quantization matching onnxruntime's PTQ for ``profile``.

    >>> net = prepare(model, profile="cpu-x86-vnni", example_inputs=(torch.randn(1, 1, 28, 28),),
    ...               calibration=train_loader, freeze_after=500)                       # doctest: +SKIP
    >>> net(x).shape                                                                       # doctest: +SKIP
    torch.Size([1, 10])

    BatchNorm is folded (eval statistics) into the preceding Conv2d/Linear; weights are fake-quantized
    symmetric per output channel (int8, or int4 with ``weight_type="int4"``; per tensor when the profile
    or ``per_channel=False`` says so), biases as int32 as onnxruntime stores them; activations as the
    profile says (uint8 asymmetric on x86 CPU, int8 symmetric with zero point 0 for TensorRT), on
    exactly the tensors onnxruntime's QDQ quantizer would quantize. Ranges start from a calibration
    pass over ``calibration`` (PTQ's formats, or a DataLoader of ``(x, y)`` batches); with
    ``ranges="ema"`` they follow an exponential moving average of batch min/max in training mode, with
    ``ranges="learnable"`` they are trained (LSQ-style), and either way freeze after ``freeze_after``
    steps (``None``: never). Layers QAT cannot mirror stay in float, each named in a warning.
    """
    torch = _torch()
    from ._trace import build_graph

    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if ranges not in ("ema", "learnable"):
        raise InputError(f"ranges must be 'ema' or 'learnable', got {ranges!r}")
    if freeze_after is not None and (not isinstance(freeze_after, int) or freeze_after < 0):
        raise InputError(f"freeze_after must be a non-negative step count or None, got {freeze_after!r}")
    if not 0.0 < averaging <= 1.0:
        raise InputError(f"averaging must be in (0, 1], got {averaging}")
    inputs = _as_inputs(example_inputs, torch)
    prof, _why = resolve_profile(profile)
    _check_scheme(prof, weight_type)
    overrides = Overrides(mode="static", weight_type=weight_type, per_channel=per_channel,
                          op_types=tuple(op_types) if op_types is not None else None,
                          exclude_op_types=tuple(exclude_op_types) if exclude_op_types is not None else None,
                          calibration_samples=calibration_samples)
    was_training = model.training
    traced = build_graph(model, inputs)
    gm, probes = traced.module, traced.probes
    in_names = list(input_names) if input_names else traced.input_names
    if len(in_names) != len(inputs):
        raise InputError(f"input_names has {len(in_names)} name(s) but example_inputs has {len(inputs)} tensor(s)")
    out_names = _output_names(gm, inputs, output_names, torch)
    opset = prof.opset
    warns: list[str] = []
    for path, kind in traced.float_layers.items():
        if kind not in NORM_LAYERS:  # norms stay float in PTQ too (or get named below if onnxruntime quantizes them)
            warns.append(f"kept in float: {path} ({kind}) is not a layer onnxq.qat fake-quantizes")
    with tempfile.TemporaryDirectory(prefix="onnxq.qat.") as tmpd:
        tmp = Path(tmpd)
        P, probe_tensor, pre_label = _float_graph(gm, probes, inputs, in_names, out_names, opset, tmp)
        recipe = resolve(prof, graph_facts(P), quantizer_caps(), overrides)
        calib_all = CalibrationSet.from_source(_calibration_source(calibration, in_names), P,
                                               limit=recipe.calibration.samples + HOLDOUT)
        calib, holdout = calib_all.split(HOLDOUT)
        report = calibrate(P, recipe, calib, progress=progress)
        if report.float_tensors:
            warns.append("kept in float around non-finite calibration tensors: " + ", ".join(list(report.float_tensors)[:3]))
        recipe = recipe.keep_in_float(float_nodes_for(P, report))
        qmodel, layout, recipe, place_warns, probes_of, weight_owner = place(
            P, probe_tensor, probes, gm, recipe, report.ranges, tmp, traced.qat_layers,
        )
        warns.extend(place_warns)
        _check_runs(qmodel, recipe, prof)
    # -- switch on the probes onnxruntime's placement asks for -------------------------------------
    for p in probes:
        p.mode = "off"
        object.__setattr__(p, "_source", None)
    links, softmax = range_rules(P, recipe)
    group_of = {t: g[0] for g in layout.groups for t in g}
    group_owner: dict[str, int] = {}

    def source_of(tensor: str) -> str:
        seen = set()
        while tensor in links and tensor not in seen:
            seen.add(tensor)
            tensor = links[tensor]
        return tensor

    for group in layout.groups:  # groups whose range is their own
        provider = group[0]
        src = source_of(provider)
        if src != provider and src in group_of:
            continue
        owner = probes[probes_of[provider][0]]
        lo, hi = report.ranges.get(src, (0.0, 0.0))
        fixed = provider in softmax or src != provider  # a range onnxruntime fixes, or one no probe can observe
        if provider in softmax:
            lo, hi = 0.0, 1.0
        owner.configure(
            recipe.activation_type, symmetric=recipe.activation_symmetric, lo=lo, hi=hi,
            learnable=ranges == "learnable" and not fixed, freeze_after=0 if fixed else freeze_after,
            averaging=averaging, tensor=provider, bounds=producer_bounds(P, provider),
        )
        group_owner[provider] = owner.index
    for group in layout.groups:  # Relu/Clip inputs take their output's range
        provider = group[0]
        if provider not in group_owner:
            group_owner[provider] = group_owner[group_of[source_of(provider)]]
    snaps = average_pool_windows(P)
    for group in layout.groups:
        owner = probes[group_owner[group[0]]]
        for t in group:
            for idx in probes_of.get(t, []):
                if probes[idx] is not owner:
                    probes[idx].share(owner)
                    probes[idx].tensor = t
                    if t != group[0] and t in snaps:
                        probes[idx].snap = snaps[t]
    weights: dict[str, dict[str, Any]] = {}
    owned = defaultdict(list)
    for node, info in layout.weights.items():
        path = weight_owner(node)
        if path is not None:
            owned[path].append(info)
    for path in traced.qat_layers:
        mod = gm.get_submodule(path)
        infos = owned.get(path, [])
        if not infos:
            mod.wq.enabled = False
            warns.append(f"kept in float: {path} ({traced.qat_layers[path]}): onnxruntime does not quantize it with this profile's op types")
            continue
        info = infos[0]
        if info.qtype != recipe.weight_type:
            raise CheckFailed(f"onnxruntime quantized {path} to {info.qtype}, expected {recipe.weight_type}")
        expected_axis = {"Conv": 0, "Gemm": 0, "MatMul": 1}.get(info.op_type)
        if info.per_channel and info.axis != expected_axis:
            raise CheckFailed(f"onnxruntime quantized {path} per channel along axis {info.axis}, not the output channel")
        mod.wq.configure(recipe.weight_type, per_channel=info.per_channel, reduce_range=recipe.reduce_range)
        node = next((n for n in P.graph.node if n.name == info.node), None)
        if node is not None and node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:
            for group in layout.groups:
                if node.input[0] in group:
                    object.__setattr__(mod, "_bias_input", probes[group_owner[group[0]]])
        weights[path] = {"layer": traced.qat_layers[path], "onnx_node": info.node, "type": info.qtype,
                         "per_channel": info.per_channel}
    state = QATState(
        profile=prof, recipe=recipe, opset=opset,
        input_names=in_names, output_names=out_names, input_shapes=traced.input_shapes,
        float_signature=_signature(P), calib_ranges=dict(report.ranges),
        layout_signature=layout.signature(), groups=layout.groups, probe_tensor=dict(probe_tensor),
        group_owner=group_owner, weights=weights, float_layers=dict(traced.float_layers), folded=traced.folded,
        warnings=_dedupe(warns),
        calibration={"source": calib.origin, "samples": report.samples, "method": recipe.calibration.method, "preprocess": pre_label,
                     "held_out": holdout.count if holdout is not calib else 0},
        holdout=holdout.to_arrays(64),
        options={"ranges": ranges, "freeze_after": freeze_after, "averaging": averaging},
    )
    gm.onnxq_qat = state
    gm.onnxq_probes = probes
    state.initial_fidelity = _torch_vs_ort(gm, qmodel, state, torch)
    for w in state.warnings:
        log.warning("%s", w)
    gm.train(was_training)
    return gm


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _check_runs(qmodel: onnx.ModelProto, recipe: Recipe, prof: Profile) -> None:
    """QAT refuses a model it could not deploy: onnxruntime's CPU provider must load it."""
    try:
        make_session(qmodel.SerializeToString(), cpu_profile(prof), allow_fallback=True)
    except InputError as e:
        cause = first_line(e.__cause__) if e.__cause__ is not None else str(e)
        raise InputError(
            f"onnxruntime cannot run this model with {recipe.weight_type} weights ({cause}); QAT refuses a model it "
            "could not deploy: use weight_type='int8'" if recipe.weight_type != "int8" else
            f"onnxruntime cannot run the quantized model: {cause}"
        ) from e


def _torch_outputs(gm, feeds: dict[str, np.ndarray], state: QATState, torch, batch: int = 64) -> list[np.ndarray]:
    was = gm.training
    gm.eval()
    n = len(next(iter(feeds.values())))
    outs: list[list[np.ndarray]] = []
    try:
        with torch.no_grad():
            for s in range(0, n, batch):
                args = [torch.from_numpy(np.ascontiguousarray(feeds[k][s : s + batch])) for k in state.input_names]
                out = gm(*args)
                out = list(out) if isinstance(out, (tuple, list)) else [out]
                if not outs:
                    outs = [[] for _ in out]
                for i, o in enumerate(out):
                    outs[i].append(o.detach().cpu().numpy())
    finally:
        gm.train(was)
    return [np.concatenate(o) for o in outs]


def _ort_outputs(model: str, feeds: dict[str, np.ndarray], prof: Profile, batch: int = 64) -> list[np.ndarray]:
    from ..runtime import run_batches

    sess, _ = make_session(model, cpu_profile(prof), allow_fallback=True)
    n = len(next(iter(feeds.values())))
    outs = run_batches(sess, ({k: v[s : s + batch] for k, v in feeds.items()} for s in range(0, n, batch)))
    return [np.concatenate(o) for o in outs]


def _torch_vs_ort(gm, qmodel, state: QATState, torch, feeds: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    feeds = feeds if feeds is not None else state.holdout
    if not feeds:
        return {}
    ref = _torch_outputs(gm, feeds, state, torch)
    got = _ort_outputs(qmodel if isinstance(qmodel, str) else qmodel.SerializeToString(), feeds, state.profile)
    return {name: fidelity(r, g) for name, r, g in zip(state.output_names, ref, got)}


def _fusion(path: Path, tmp: Path, prof: Profile) -> tuple[dict[str, int], dict[str, int]]:
    """(integer-kernel counts, float compute nodes fed by DequantizeLinear) in onnxruntime's optimized graph."""
    opt = tmp / "optimized.onnx"
    make_session(path, cpu_profile(prof), allow_fallback=True, optimized_model_path=str(opt))
    m = onnx.load(str(opt))
    producer = {o: n for n in m.graph.node for o in n.output}
    ints = Counter(n.op_type for n in m.graph.node if n.op_type in INTEGER_KERNELS)
    floats = Counter(
        n.op_type for n in m.graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul")
        and any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)
    )
    return dict(ints), dict(floats)


def export(
    model: Any,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    fp32_path: str | os.PathLike | None = None,
    validation: Any = None,
    manifest: bool = True,
) -> QATExportResult:
    """Write the QDQ ONNX model (batch axis dynamic) and its manifest for a ``prepare``-d model.

    >>> res = export(net, (torch.randn(1, 1, 28, 28),), "net.qat.onnx", fp32_path="net.qat-float.onnx")  # doctest: +SKIP
    >>> res.fused, res.fidelity_vs_torch["output"]["top1_agreement"]                                   # doctest: +SKIP
    ({'QLinearConv': 3, 'QGemm': 1}, 1.0)

    The trained float graph (BN folded) is exported again and onnxruntime's QDQ quantizer writes the
    model with the learned ranges as overrides, so Q/DQ placement equals PTQ static for the same
    profile. ``fp32_path`` also writes that float graph. ``validation`` (inputs in PTQ's formats)
    measures agreement with the PyTorch fake-quant model; by default the held-out calibration
    samples are used. Nothing is written unless every check passes.
    """
    torch = _torch()
    t0 = time.perf_counter()
    if not is_prepared(model):
        raise InputError("export() needs a model returned by onnxq.qat.prepare(); call prepare(model, profile=..., "
                         "example_inputs=..., calibration=...) first, train it, then export")
    state: QATState = model.onnxq_qat
    probes = model.onnxq_probes
    inputs = _as_inputs(example_inputs, torch)
    if len(inputs) != len(state.input_shapes):
        raise InputError(f"export() got {len(inputs)} example input(s); the model was prepared with {len(state.input_shapes)}")
    for i, (t, want) in enumerate(zip(inputs, state.input_shapes)):
        if t.dim() != len(want) or tuple(t.shape[1:]) != tuple(want[1:]):
            raise InputError(
                f"example_inputs[{i}] has shape {'x'.join(map(str, t.shape))}; prepare() saw "
                f"{'x'.join(map(str, want))} (only the batch axis may differ)"
            )
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    bad += [n for n, b in model.named_buffers() if b.is_floating_point() and not bool(torch.isfinite(b).all())]
    if bad:
        raise InputError(f"the model holds NaN/inf in {', '.join(bad[:3])}: training diverged (lower the learning rate); nothing was written")
    out = Path(path)
    if out.suffix != ".onnx" or out.is_dir():
        raise InputError(f"output {out} should be a file name ending in .onnx")
    fp32_out = Path(fp32_path) if fp32_path else None
    if fp32_out is not None and fp32_out.resolve() == out.resolve():
        raise InputError("fp32_path and path are the same file; choose two names")
    recipe = state.recipe
    with tempfile.TemporaryDirectory(prefix="onnxq.qat.") as tmpd:
        tmp = Path(tmpd)
        P, probe_tensor, _ = _float_graph(model, probes, inputs, state.input_names, state.output_names, state.opset, tmp)
        if _signature(P) != state.float_signature or probe_tensor != state.probe_tensor:
            raise CheckFailed(
                "the exported float graph differs from the one prepare() saw (the model's structure changed after "
                "prepare); prepare the model again"
            )
        ranges = dict(state.calib_ranges)
        learned: dict[str, dict[str, Any]] = {}
        for group in state.groups:
            owner = probes[state.group_owner[group[0]]]
            lo, hi = owner.range()
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise InputError(f"the learned range of tensor {group[0]!r} is not finite; training diverged; nothing was written")
            s, z = owner.scale_zero_point()
            for t in group:
                ranges[t] = (lo, hi)
            learned[group[0]] = {"lo": lo, "hi": hi, "scale": s, "zero_point": z, "shared_with": group[1:],
                                 "steps": int(owner.steps), "frozen": owner.frozen}
        with contextlib.ExitStack() as stack:  # the QAT model + manifest, and the FP32 graph: committed on leaving
            unit = stack.enter_context(model_unit(out))
            tmp_out = unit.model
            write_qdq(P, ranges, recipe, tmp_out, tmp)
            from ._onnx import read_layout

            qmodel = onnx.load(str(tmp_out))
            try:
                onnx.checker.check_model(qmodel)
            except onnx.checker.ValidationError as e:
                raise CheckFailed(f"the QAT model failed onnx.checker: {first_line(e)}; nothing was written") from e
            layout = read_layout(qmodel, P)
            if layout.signature() != state.layout_signature:
                raise CheckFailed("onnxruntime placed Q/DQ differently than at prepare(); nothing was written")
            for t, (s, z) in layout.scales.items():
                for group in state.groups:
                    if t in group:
                        want = learned[group[0]]
                        if not np.isclose(s, want["scale"], rtol=1e-6, atol=0) or z != want["zero_point"]:
                            raise CheckFailed(f"tensor {t!r}: onnxruntime wrote scale {s}/zero point {z}, PyTorch used "
                                              f"{want['scale']}/{want['zero_point']}; nothing was written")
            feeds = state.holdout
            if validation is not None:
                vset = CalibrationSet.from_source(_calibration_source(validation, state.input_names), P)
                feeds = vset.to_arrays()
            fid = _torch_vs_ort(model, str(tmp_out), state, torch, feeds)
            ints, floats = _fusion(tmp_out, tmp, state.profile)
            fp32_written = None
            if fp32_out is not None:
                fp32_unit = stack.enter_context(model_unit(fp32_out))  # entered last: renamed first
                fp32_written = write_model(P, fp32_unit.model)
            data = unit.seal()
            warns = list(state.warnings)
            if recipe.weight_type == "int4":
                warns.append("int4 weights buy size, not CPU speed: onnxruntime runs them as DequantizeLinear -> float Conv/Gemm")
            res = QATExportResult(
                output=out, manifest=manifest_path(out) if manifest else None, fp32_output=fp32_out, profile=state.profile.name,
                recipe=recipe.to_dict(), quantized_tensors=len(layout.tensors),
                shared_groups=sum(1 for g in layout.groups if len(g) > 1), weights=state.weights,
                float_layers=state.float_layers, exclude_nodes=list(recipe.excluded_nodes),
                ops_after=dict(Counter(n.op_type for n in qmodel.graph.node)), fused={"integer": ints, "float_after_dq": floats},
                fidelity_vs_torch=fid, ranges=learned, size=tmp_out.stat().st_size, wall_s=time.perf_counter() - t0,
                warnings=warns,
            )
            if manifest:
                unit.write_manifest(_manifest(res, state, torch, unit.model, data, fp32_written))
        # the files are in place now (renamed on leaving the ExitStack)
    return res


def _manifest(res: QATExportResult, state: QATState, torch, written: Path, data: list, fp32_written: Path | None) -> dict[str, Any]:
    from .._fs import file_sha256
    from ..runtime import ort_info

    prof = state.profile
    body = res.to_dict()
    recipe = body.pop("recipe")
    return new_manifest(
        "qat", res.output, written=written, data=data,
        versions={"onnxq": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": ort_info()["version"], "numpy": np.__version__},
        fp32={"path": str(res.fp32_output), "sha256": file_sha256(fp32_written)} if res.fp32_output else None,
        profile={"name": prof.name, "sha256": prof.sha256, "source": prof.source},
        recipe=recipe,
        qat={"calibration": state.calibration, "options": state.options, "folded_batchnorm": state.folded,
             "initial_fidelity_vs_onnxruntime": state.initial_fidelity},
        result=body,
    )
