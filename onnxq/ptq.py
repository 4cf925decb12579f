"""Post-training quantization (static QDQ, dynamic, fp16) through onnxruntime.quantization.

>>> import onnxq
>>> res = onnxq.quantize("model.onnx", mode="static", calibration="calib.npz")   # doctest: +SKIP
>>> res.output, res.fidelity["logits"]["cosine"]                                 # doctest: +SKIP

onnxq computes the calibration ranges itself (streaming, bounded memory, a real entropy search,
non-finite tensors kept in float) and hands them to ``quantize_static`` through its public
``calibration_cache_path``; onnxruntime's QDQ quantizer then places Q/DQ as it always does.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter

from . import __version__
from .calibration import CalibrationSet, RangeReport, collect_ranges
from .errors import InputError
from .evaluate import fidelity
from .modelio import needs_external_data, toposort, atomic_path, default_output, file_sha256, load_model, manifest_path, write_json
from .plan import QuantPlan, make_plan, resolve_op_types
from .profiles import Profile, load_profile

__all__ = [
    "quantize", "QuantResult", "ort_arguments", "quantize_with_ranges", "preprocess", "ensure_node_names",
    "float_tensor_exclusions", "calibration_op_types", "resolve_profile", "HOLDOUT",
]

log = logging.getLogger("onnxq")
HOLDOUT = 32


@dataclass
class QuantResult:
    """What one quantization run produced and measured (also written as the manifest)."""

    output: Path
    manifest: Path
    mode: str
    plan: dict[str, Any]
    op_types: list[str]
    op_types_reason: str
    size_before: int
    size_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    quantized_nodes: int
    float_nodes: int
    fidelity: dict[str, dict[str, Any]]
    validation: dict[str, Any]
    wall_s: float
    warnings: list[str] = field(default_factory=list)
    float_tensors: dict[str, str] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    preprocess: str = ""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["output"], d["manifest"] = str(self.output), str(self.manifest)
        return d


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8, "int4": QuantType.QInt4, "uint4": QuantType.QUInt4}[name]


def ort_arguments(plan: QuantPlan, op_types: tuple[str, ...], nodes_to_exclude: list[str]) -> dict[str, Any]:
    """THE translation of a plan into onnxruntime.quantization keyword arguments.

    Nothing else in onnxq spells onnxruntime's ``extra_options`` keys.
    """
    from onnxruntime.quantization import QuantFormat

    ops = list(op_types)
    if plan.mode == "static":
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        if not ops:
            ops = sorted(set(QDQRegistry) | set(QLinearOpsRegistry))
        ops = [o for o in ops if o not in plan.exclude_op_types]
        extra = {
            "ActivationSymmetric": plan.activation_symmetric,
            "WeightSymmetric": plan.weight_symmetric,
            # no silent float fallback of whole models: ranges come from onnxq's calibration
            "ForceQuantizeNoInputCheck": False,
        }
        extra.update(dict(plan.extra_options))
        return {
            "quant_format": QuantFormat.QDQ,
            "activation_type": _qtype(plan.activation_type),
            "weight_type": _qtype(plan.weight_type),
            "per_channel": plan.per_channel,
            "reduce_range": plan.reduce_range,
            "op_types_to_quantize": ops,
            "nodes_to_exclude": list(nodes_to_exclude) + list(plan.exclude_nodes),
            "extra_options": extra,
        }
    if plan.mode == "dynamic":
        if not ops:
            from onnxruntime.quantization.registry import IntegerOpsRegistry

            ops = sorted(IntegerOpsRegistry)
        ops = [o for o in ops if o not in plan.exclude_op_types]
        extra = {"WeightSymmetric": plan.weight_symmetric, "MatMulConstBOnly": True}
        extra.update({k: v for k, v in plan.extra_options if k in ("WeightSymmetric",)})
        wtype = plan.weight_type if plan.weight_type in ("int8", "uint8") else "int8"
        return {
            "weight_type": _qtype(wtype),
            "per_channel": plan.per_channel,
            "reduce_range": plan.reduce_range,
            "op_types_to_quantize": ops,
            "nodes_to_exclude": list(nodes_to_exclude) + list(plan.exclude_nodes),
            "extra_options": extra,
        }
    raise InputError(f"mode {plan.mode!r} is not an onnxruntime.quantization mode")


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node))


def preprocess(model: onnx.ModelProto, tmp: Path) -> tuple[onnx.ModelProto, str]:
    """Shape inference + graph optimisation; symbolic shape inference falls back gracefully."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = tmp / "input.onnx"
    onnx.save_model(model, str(src))
    dst = tmp / "preprocessed.onnx"
    quiet = logging.getLogger("onnxruntime")
    attempts = [("symbolic shape inference + optimization", {}), ("onnx shape inference + optimization (symbolic failed)", {"skip_symbolic_shape": True}), ("onnx shape inference only", {"skip_symbolic_shape": True, "skip_optimization": True})]
    errors = []
    for label, kw in attempts:
        try:
            # chdir: symbolic shape inference writes temp files (~model size) into the working directory
            with contextlib.chdir(tmp), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                level = quiet.level
                quiet.setLevel(logging.ERROR)
                try:
                    quant_pre_process(str(src), str(dst), **kw)
                finally:
                    quiet.setLevel(level)
            return onnx.load(str(dst)), label
        except Exception as e:  # each fallback is recorded; the last resort is plain shape inference
            errors.append(f"{label}: {type(e).__name__}")
    inferred = onnx.shape_inference.infer_shapes(model)
    return inferred, "onnx shape inference only (" + "; ".join(errors) + ")"


def float_tensor_exclusions(model: onnx.ModelProto, float_tensors: dict[str, str]) -> list[str]:
    names = []
    for i, node in enumerate(model.graph.node):
        if any(t in float_tensors for t in list(node.input) + list(node.output)):
            if not node.name:
                node.name = f"onnxq_node_{i}"
            names.append(node.name)
    return names


def ensure_node_names(model: onnx.ModelProto) -> None:
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def quantize_with_ranges(
    model: onnx.ModelProto,
    ranges: dict[str, tuple[float, float]],
    plan: QuantPlan,
    op_types: tuple[str, ...],
    nodes_to_exclude: list[str],
    out_path: Path,
    tmp: Path,
) -> None:
    """Write a QDQ model with onnxruntime's quantizer, using ranges computed elsewhere."""
    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    data = {
        k: TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
        for k, (lo, hi) in ranges.items()
    }
    cache = tmp / "ranges.json"
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
    model_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), plan.opset)
    if plan.opset > model_opset:
        # int4 weights need opset 21 for standard QDQ; below it onnxruntime writes com.microsoft Q/DQ ops
        from onnx import version_converter

        model = version_converter.convert_version(model, plan.opset)
    src = tmp / "to_quantize.onnx"
    onnx.save_model(model, str(src))
    kwargs = ort_arguments(plan, op_types, nodes_to_exclude)
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(src), str(out_path), calibration_data_reader=None, calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=str(cache), **kwargs,
        )
    except KeyError as e:
        raise InputError(f"onnxruntime's quantizer needs a range for tensor {e} that calibration did not produce") from e
    finally:
        quiet.setLevel(level)


def _count_quantized(model: onnx.ModelProto) -> tuple[int, int]:
    """(nodes computing on quantized inputs, float compute nodes) excluding Q/DQ themselves."""
    producers = {o: n for n in model.graph.node for o in n.output}
    q, f = 0, 0
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast"):
            continue
        if n.op_type.startswith(("QLinear", "MatMulInteger", "ConvInteger", "DynamicQuantize")) or n.op_type in ("QGemm", "QAttention"):
            q += 1
        elif any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input):
            q += 1
        else:
            f += 1
    return q, f


def _validate(path: Path, ref_model_path: Path, holdout: CalibrationSet, profile: Profile) -> tuple[dict, dict]:
    from .runtime import make_session, run_batches

    try:
        sess, info = make_session(path, profile, allow_fallback=True)
    except Exception as e:
        raise InputError(f"the quantized model does not load in onnxruntime: {e}") from e
    ref_profile_cpu = profile
    ref, _ = make_session(ref_model_path, ref_profile_cpu, allow_fallback=True)
    bs = holdout.batch_size()
    cand_outs = run_batches(sess, holdout.batches(bs))
    ref_outs = run_batches(ref, holdout.batches(bs))
    fid = {}
    for o, r, c in zip(ref.get_outputs(), ref_outs, cand_outs):
        fid[o.name] = fidelity(np.concatenate(r), np.concatenate(c).astype(np.float64))
    validation = {"providers": info.to_dict(), "samples": int(holdout.count), "data": holdout.origin}
    return fid, validation


def quantize(
    model_path: str | os.PathLike,
    *,
    mode: str | None = None,
    profile: str | Profile = "auto",
    calibration: Any = None,
    calib_random: int | None = None,
    output: str | os.PathLike | None = None,
    method: str | None = None,
    per_channel: bool | None = None,
    op_types: list[str] | None = None,
    exclude_op_types: list[str] | None = None,
    exclude_nodes: list[str] | None = None,
    calibration_samples: int | None = None,
    weight_type: str | None = None,
    percentile: float | None = None,
    ranges_override: dict[str, tuple[float, float]] | None = None,
    progress: bool = True,
) -> QuantResult:
    """Quantize an FP32 ONNX model for a hardware profile and measure what it cost.

    >>> res = quantize("net.onnx", mode="static", calibration="calib.npz", profile="cpu-x86-vnni")  # doctest: +SKIP
    >>> res.size_after < res.size_before                                                            # doctest: +SKIP
    True
    """
    t0 = time.perf_counter()
    model_path = Path(model_path)
    prof, _why = resolve_profile(profile)
    plan = make_plan(
        prof, mode, method=method, per_channel=per_channel, op_types=op_types, exclude_op_types=exclude_op_types,
        exclude_nodes=exclude_nodes, calibration_samples=calibration_samples, weight_type=weight_type,
        percentile=percentile,
    )
    out = Path(output) if output else default_output(model_path, plan.mode)
    if out.resolve() == model_path.resolve():
        raise InputError(f"output {out} is the input model; onnxq never overwrites its input: choose another -o")
    model = load_model(model_path)
    if needs_external_data(model):
        raise InputError(
            f"{model_path} is {model.ByteSize() / 2**30:.1f} GB, over protobuf's 2 GB limit; onnxq quantize cannot stage it yet: "
            "use onnxruntime.quantization with use_external_data_format=True, or quantize a smaller export"
        )
    if plan.mode == "static" and calibration is None and not calib_random:
        raise InputError(
            "--mode static needs calibration data: pass --calib FILE.npz (keyed by input name), a .npy or a directory; "
            "--calib-random N exists for smoke tests only (not representative)"
        )
    ops_before = _op_counts(model)
    model_opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if plan.mode == "static" and plan.opset > model_opset and plan.weight_type in ("int4", "uint4"):
        # 4-bit QDQ needs opset 21; convert instead of writing a model onnxruntime refuses
        try:
            model = onnx.version_converter.convert_version(model, plan.opset)
        except Exception as e:  # the converter raises several internal error types
            raise InputError(f"{plan.weight_type} weights need opset {plan.opset}, and converting this opset-{model_opset} model failed: {e}; re-export it with --opset {plan.opset}") from e
    graph_ops = set(ops_before)
    # Samples for calibration and for the fidelity check. Loaded before any work, so bad data
    # fails fast with nothing written.
    calib = None
    if calibration is not None:
        calib = CalibrationSet.from_source(calibration, model, limit=plan.calibration_samples + HOLDOUT)
    elif calib_random:
        calib = CalibrationSet.random(model, int(calib_random))
    resolved_ops, reason = resolve_op_types(plan, graph_ops)
    warns: list[str] = []
    if calib is not None and calib.notes:
        warns.extend(calib.notes)
    float_tensors: dict[str, str] = {}
    calib_info: dict[str, Any] = {}
    preprocess_label = ""
    with tempfile.TemporaryDirectory(prefix="onnxq.") as tmpd:
        tmp = Path(tmpd)
        ref_path = tmp / "reference.onnx"
        onnx.save_model(model, str(ref_path))
        with atomic_path(out) as tmp_out:
            if plan.mode == "static":
                calib_part, holdout = calib.split(HOLDOUT)
                pre, preprocess_label = preprocess(model, tmp)
                ensure_node_names(pre)
                report: RangeReport = collect_ranges(
                    pre, calib_part, method=plan.method, percentile=plan.percentile,
                    op_types=calibration_op_types(plan, resolved_ops), num_bins=plan.num_bins, progress=progress,
                )
                if ranges_override:
                    report.ranges.update({k: v for k, v in ranges_override.items() if k in report.ranges})
                float_tensors = report.float_tensors
                excl = float_tensor_exclusions(pre, float_tensors)
                if float_tensors:
                    warns.append(
                        f"kept {len(excl)} node(s) in float around {len(float_tensors)} tensor(s) with non-finite or huge "
                        f"values: " + ", ".join(f"{k} ({v})" for k, v in list(float_tensors.items())[:3])
                    )
                quantize_with_ranges(pre, report.ranges, plan, resolved_ops, excl, tmp_out, tmp)
                calib_info = {
                    "source": calib.origin,
                    "sha256": calib.sha256(),
                    "samples_used": report.samples,
                    "held_out": holdout.count if holdout is not calib else 0,
                    "method": plan.method,
                    "percentile": plan.percentile if plan.method == "percentile" else None,
                    "tensors": len(report.ranges),
                    "not_representative": bool(calib_random) and calibration is None,
                }
            elif plan.mode == "dynamic":
                from onnxruntime.quantization import quantize_dynamic

                conv = ops_before.get("Conv", 0)
                mm = sum(ops_before.get(o, 0) for o in ("MatMul", "Gemm"))
                if conv > mm:
                    warns.append(
                        f"the model is dominated by Conv ({conv} Conv vs {mm} MatMul/Gemm): dynamic quantization of "
                        "convolutions (ConvInteger) is usually SLOWER than FP32 on CPU (measured ~8x slower on a "
                        "MobileNetV2 here); use --mode static"
                    )
                src = tmp / "input.onnx"
                onnx.save_model(model, str(src))
                root = logging.getLogger()
                level = root.level
                root.setLevel(logging.ERROR)  # onnxruntime logs a pre-processing hint on every call
                try:
                    quantize_dynamic(str(src), str(tmp_out), **ort_arguments(plan, resolved_ops, []))
                finally:
                    root.setLevel(level)
                holdout = calib.split(HOLDOUT)[1] if calib is not None else None
            elif plan.mode == "fp16":
                from onnxruntime.transformers.float16 import convert_float_to_float16

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    half = convert_float_to_float16(model, keep_io_types=plan.keep_io_types, disable_shape_infer=False)
                toposort(half.graph)  # the converter appends its input Casts after their consumers
                onnx.save_model(half, str(tmp_out))
                holdout = calib.split(HOLDOUT)[1] if calib is not None else None
                reason = "fp16: every float tensor converted; float32 inputs/outputs kept" if plan.keep_io_types else "fp16"
            else:  # make_plan validated the mode
                raise InputError(f"unknown mode {plan.mode!r}")
            qmodel = onnx.load(str(tmp_out))
            try:
                onnx.checker.check_model(qmodel)
            except onnx.checker.ValidationError as e:
                raise InputError(f"the quantized model failed onnx.checker: {str(e).splitlines()[0]}") from e
            if holdout is None:
                holdout = CalibrationSet.random(model, 8)
                warns.append("fidelity measured on 8 random samples (no --calib data given): not representative")
            fid, validation = _validate(tmp_out, ref_path, holdout, prof)
            if validation["providers"]["fallback"]:
                warns.append(validation["providers"]["note"] + " (validation ran on the available provider)")
            q, f = _count_quantized(qmodel)
            if plan.mode == "dynamic" and q == 0:
                warns.append(
                    "dynamic quantization quantized NO node: onnxruntime's dynamic quantizer has no Gemm handler "
                    "(torch exports 2-D nn.Linear as Gemm); use --mode static, or export Linear layers as MatMul"
                )
            result = QuantResult(
                output=out,
                manifest=manifest_path(out),
                mode=plan.mode,
                plan=plan.to_dict(),
                op_types=list(resolved_ops),
                op_types_reason=reason,
                size_before=model_path.stat().st_size,
                size_after=tmp_out.stat().st_size,
                ops_before=ops_before,
                ops_after=_op_counts(qmodel),
                quantized_nodes=q,
                float_nodes=f,
                fidelity=fid,
                validation=validation,
                wall_s=0.0,
                warnings=warns,
                float_tensors=float_tensors,
                calibration=calib_info,
                preprocess=preprocess_label,
            )
            result.wall_s = time.perf_counter() - t0
            manifest = build_manifest(result, prof, model_path, tmp_out)
    # the model is in place now (atomic rename); the manifest follows it
    write_json(manifest, result.manifest)
    return result


def calibration_op_types(plan: QuantPlan, resolved: tuple[str, ...]) -> tuple[str, ...]:
    if resolved:
        return resolved
    if plan.exclude_op_types:
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        return tuple(sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - set(plan.exclude_op_types)))
    return ()


def resolve_profile(profile: str | Profile) -> tuple[Profile, str]:
    """Load a profile by name/path, or pick one for this host with ``"auto"``."""
    if isinstance(profile, Profile):
        return profile, f"profile {profile.name!r}"
    if profile in (None, "auto"):
        from .profiles import auto_profile
        from .runtime import available_providers

        return auto_profile(available_providers())
    p = load_profile(profile)
    return p, f"profile {p.name!r}"


def build_manifest(result: QuantResult, prof: Profile, model_path: Path, written: Path) -> dict[str, Any]:
    import onnxruntime

    return {
        "schema": "onnxq.manifest/1",
        "kind": "quantize",
        "versions": {"onnxq": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "input": {"path": str(model_path), "sha256": file_sha256(model_path)},
        "output": {"path": str(result.output), "sha256": file_sha256(written)},
        "profile": {"name": prof.name, "sha256": prof.sha256, "source": prof.source},
        "result": result.to_dict(),
    }
