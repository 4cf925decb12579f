"""Post-training quantization (static QDQ, dynamic, fp16) through onnxruntime.quantization.

>>> import onnxq
>>> res = onnxq.quantize("model.onnx", mode="static", calibration="calib.npz")   # doctest: +SKIP
>>> res.output, res.fidelity["logits"]["cosine"]                                 # doctest: +SKIP

:func:`quantize` is a composition of small stages, each a function of the resolved
:class:`onnxq.plan.Recipe`; :mod:`onnxq.qat` calls the same stages:

1. :func:`prepare_graph`: opset conversion when the recipe needs it, pre-processing (shape inference
   and onnxruntime's graph optimisation, in a temp dir), node names;
2. :func:`calibrate`: onnxq's own streaming ranges (bounded memory, a real entropy search,
   non-finite tensors kept in float, see :mod:`onnxq.calibration`);
3. :func:`write_qdq` / :func:`write_dynamic` / :func:`write_fp16`: onnxruntime writes the model,
   static QDQ from onnxq's ranges through ``quantize_static``'s public ``calibration_cache_path``;
4. :func:`validate`: the written model against FP32 on held-out samples.

:func:`ort_arguments` is the one place that spells onnxruntime.quantization's argument and
``extra_options`` names.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import gc
import hashlib
import io
import logging
import os
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import onnx.version_converter

from . import __version__
from ._fs import check_output, external_files, file_sha256, require_space, size_with_data
from .calibration import CalibrationSet, RangeReport, collect_ranges
from .errors import InputError, first_line
from .evaluate import fidelity
from .manifest import manifest_path, new_manifest
from .modelio import (default_output, graph_facts, load_model, model_opset, model_unit, needs_external_data, stamp_recipe,
                      toposort, write_model)
from .plan import HOLDOUT, Overrides, QuantizerCaps, Recipe, parse_target, resolve
from .profiles import Profile
from .runtime import require_providers, resolve_profile

__all__ = [
    "quantize", "QuantResult", "ort_arguments", "quantizer_caps", "prepare_graph", "preprocess", "ensure_node_names",
    "calibrate", "RangeMemo", "float_nodes_for", "write_qdq", "write_dynamic", "write_fp16", "validate", "count_quantized",
]

log = logging.getLogger("onnxq")


@dataclass
class QuantResult:
    """What one quantization run produced and measured (also written into the manifest)."""

    output: Path
    manifest: Path
    recipe: Recipe
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

    @property
    def mode(self) -> str:
        return self.recipe.mode

    @property
    def op_types(self) -> list[str]:
        return list(self.recipe.op_types)

    @property
    def target(self) -> dict[str, Any] | None:
        """What ``--target`` did (metric, value, reached, score, float_nodes, sensitivity table), or None."""
        return (self.calibration.get("algorithms") or {}).get("target")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["output"], d["manifest"] = str(self.output), str(self.manifest)
        d["recipe"] = self.recipe.to_dict()
        d["mode"] = self.recipe.mode
        d["target"] = self.target
        return d


# ---------------------------------------------------------------------------------------------
# onnxruntime's vocabulary: the only place that spells it


@functools.lru_cache(maxsize=1)
def quantizer_caps() -> QuantizerCaps:
    """The op types onnxruntime's static (QDQ) and dynamic quantizers have handlers for."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    # the dynamic quantizer rewrites Gemm as MatMul before it quantizes (ONNXQuantizer.replace_gemm_with_matmul)
    return QuantizerCaps(static_ops=frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry),
                         dynamic_ops=frozenset(IntegerOpsRegistry) | {"Gemm"})


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8, "int4": QuantType.QInt4, "uint4": QuantType.QUInt4}[name]


def ort_arguments(recipe: Recipe, *, ranges_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """THE translation of a recipe into ``quantize_static`` / ``quantize_dynamic`` keyword arguments.

    Static: ``ranges_path`` (a ranges file written by :func:`write_qdq`) becomes the calibration cache,
    so onnxruntime calibrates nothing itself. Nothing else in onnxq spells these names.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat

    if recipe.mode not in ("static", "dynamic"):
        raise InputError(f"mode {recipe.mode!r} is not an onnxruntime.quantization mode")
    common = {
        "weight_type": _qtype(recipe.weight_type),
        "per_channel": recipe.per_channel,
        "reduce_range": recipe.reduce_range,
        "op_types_to_quantize": list(recipe.op_types),
        "nodes_to_exclude": list(recipe.excluded_nodes),
    }
    if recipe.mode == "static":
        lay = recipe.layout
        extra: dict[str, Any] = {
            "ActivationSymmetric": recipe.activation_symmetric,
            "WeightSymmetric": recipe.weight_symmetric,
            "ForceQuantizeNoInputCheck": False,  # no silent float fallback: ranges come from onnxq's calibration
        }
        if lay.float_outputs:
            extra["OpTypesToExcludeOutputQuantization"] = list(lay.float_outputs)
        if lay.dedicated_qdq_pair:
            extra["DedicatedQDQPair"] = True
        if lay.weight_qdq_pair:
            extra["AddQDQPairToWeight"] = True
        if lay.keep_removable_activations:
            extra["QDQKeepRemovableActivations"] = True
        args = {"quant_format": QuantFormat.QDQ, "activation_type": _qtype(recipe.activation_type), **common,
                "extra_options": extra, "calibration_data_reader": None, "calibrate_method": CalibrationMethod.MinMax}
        if ranges_path is not None:
            args["calibration_cache_path"] = str(ranges_path)
        if recipe.external_data:
            args["use_external_data_format"] = True
        return args
    return {**common, "extra_options": {"WeightSymmetric": recipe.weight_symmetric, "MatMulConstBOnly": True},
            **({"use_external_data_format": True} if recipe.external_data else {})}


# ---------------------------------------------------------------------------------------------
# Stages


@contextlib.contextmanager
def _collecting():
    """gc after the block: onnxruntime's quantization tools keep models in reference cycles, which Python frees only
    at a collection; with a 2 GB model that is 2 GB held until then."""
    try:
        yield
    finally:
        gc.collect()


@contextlib.contextmanager
def _quiet_onnxruntime():
    """onnxruntime.quantization logs hints and warnings on the root logger; the summary says what matters."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)  # its fallbacks log ERROR with tracebacks; onnxq reports the outcome in one line
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _to_opset(model: onnx.ModelProto, recipe: Recipe) -> onnx.ModelProto:
    """Convert to the recipe's opset when the model's is lower (4-bit QDQ needs 21, per-channel 13)."""
    have = model_opset(model)
    if recipe.opset <= have:
        return model
    try:
        return onnx.version_converter.convert_version(model, recipe.opset)
    except Exception as e:  # the converter raises several internal error types
        why = f"{recipe.weight_type} weights" if recipe.opset == 21 else "per-channel scales" if recipe.per_channel else "QDQ"
        raise InputError(f"{why} need opset {recipe.opset}, and converting this opset-{have} model failed: {first_line(e)}; "
                         f"re-export it with --opset {recipe.opset}") from e


def preprocess(model: onnx.ModelProto | Path, tmp: Path) -> tuple[onnx.ModelProto, str]:
    """Shape inference + graph optimisation; symbolic shape inference falls back gracefully. ``model`` may be
    the path of a model with external data (read by onnxruntime from there, never held twice here)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if isinstance(model, Path):
        try:
            return _preprocess_by_path(model.resolve(), tmp)
        except InputError as e:  # onnxruntime could not optimise it: its own pre-processing, then plain inference
            src, big, first = model.resolve(), True, f"graph-only pre-processing failed: {first_line(e)[:100]}"
    else:
        first = ""
        src = tmp / "input.onnx"
        big = needs_external_data(model)
        write_model(model, src, external=big)
    dst = tmp / "preprocessed.onnx"
    attempts = [("symbolic shape inference + optimization", {}),
                ("onnx shape inference + optimization", {"skip_symbolic_shape": True}),
                ("onnx shape inference only", {"skip_symbolic_shape": True, "skip_optimization": True})]
    errors: list[str] = [first] if first else []
    for label, kw in attempts:
        try:
            # chdir: symbolic shape inference writes temp files (~model size) into the working directory
            with contextlib.chdir(tmp), _quiet_onnxruntime(), _collecting():
                quant_pre_process(str(src), str(dst), save_as_external_data=big, all_tensors_to_one_file=True,
                                  external_data_location="preprocessed.onnx.data", **kw)
            return onnx.load(str(dst)), label + (f" ({'; '.join(errors)})" if errors else "")
        except Exception as e:  # each fallback is recorded with its cause; the last resort is plain shape inference
            errors.append(f"{label.split(' + ')[0]} failed: {type(e).__name__}: {first_line(e)[:100]}")
    if isinstance(model, Path):  # onnx's in-memory inference cannot take a model over 2 GB: the path variant can
        onnx.shape_inference.infer_shapes_path(str(model), str(dst))
        inferred = onnx.load(str(dst), load_external_data=False)
        onnx.external_data_helper.load_external_data_for_model(inferred, str(model.resolve().parent))  # its data stays beside the source
        return inferred, "plain onnx shape inference (" + "; ".join(errors) + ")"
    inferred = onnx.shape_inference.infer_shapes(model)
    return inferred, "plain onnx shape inference (" + "; ".join(errors) + ")"


def _preprocess_by_path(src: Path, tmp: Path) -> tuple[onnx.ModelProto, str]:
    """Pre-processing of a big model (external data) that never holds its weights twice: onnxruntime optimises it
    from its file into ``tmp``, then symbolic and onnx shape inference run on the graph alone (a tensor's bytes
    are read only where inference needs its values). quant_pre_process copies the whole model in memory for
    symbolic inference (measured: 3.1x the weights at its peak)."""
    from onnxruntime.quantization.quant_utils import add_pre_process_metadata
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from .runtime import optimize_to_file

    optimize_to_file(src, tmp / "optimized.onnx")
    label, errors = "symbolic shape inference + optimization", ""
    # chdir: the graph's tensors name their data file relative to the model; inference reads them from here
    with contextlib.chdir(tmp), _quiet_onnxruntime(), _collecting():
        graph = onnx.load("optimized.onnx", load_external_data=False)
        try:
            graph = SymbolicShapeInference.infer_shapes(graph, 2**31 - 1, False, False, 0)
        except Exception as e:  # its failures surface as many types; onnx's inference below still runs
            label, errors = "onnx shape inference + optimization", f" (symbolic shape inference failed: {type(e).__name__}: " \
                f"{first_line(e)[:100]})"
        add_pre_process_metadata(graph)
        onnx.save_model(graph, "graph.onnx")  # the graph only: its tensors still point at optimized.onnx.data
        del graph
        onnx.shape_inference.infer_shapes_path("graph.onnx", "preprocessed.onnx")
    return onnx.load(str(tmp / "preprocessed.onnx")), label + errors


def ensure_node_names(model: onnx.ModelProto) -> None:
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def prepare_graph(model: onnx.ModelProto | Path, recipe: Recipe, tmp: Path) -> tuple[onnx.ModelProto | Path, str]:
    """The graph the writer sees: at the recipe's opset; for static mode pre-processed, every node named.
    ``model`` may be the path of a big model that needs no opset conversion (see :func:`quantize`)."""
    if not isinstance(model, Path):
        model = _to_opset(model, recipe)
    if recipe.mode != "static":
        return model, ""
    pre, label = preprocess(model, tmp)
    ensure_node_names(pre)
    return pre, label


def calibrate(model: onnx.ModelProto, recipe: Recipe, calib: CalibrationSet, *, progress: bool = True,
              observers: dict[str, Any] | None = None, shared: RangeMemo | None = None) -> RangeReport:
    """A range for every activation the recipe's op types touch (onnxq's streaming calibration); ``observers``
    ({tensor: accumulator}) see the same pass. With ``shared``, a pass identical to one already made (same graph,
    samples and estimator) is not run again."""
    spec = recipe.calibration
    if spec is None:
        raise InputError(f"mode {recipe.mode!r} is not calibrated; only --mode static is")
    key = shared.key(model, recipe, calib) if shared is not None and not observers else None
    hit = shared.get(key) if key is not None else None
    if hit is not None:
        return hit
    report = collect_ranges(model, calib, method=spec.method, percentile=spec.percentile, op_types=recipe.op_types,
                            num_bins=spec.num_bins, progress=progress, batch_size=spec.batch_size, observers=observers)
    if key is not None:
        shared.put(key, report)
    return report


class RangeMemo:
    """Calibration results shared between quantize calls in one process (``onnxq compare`` builds per-tensor and
    per-channel variants of each estimator: the activations they calibrate are the same). Keyed by the
    pre-processed graph's bytes, the samples' digest and every setting the ranges depend on; a hit is a copy.
    Models staged with external data are never keyed (their graph cannot be serialised whole)."""

    def __init__(self) -> None:
        self._reports: dict[tuple, RangeReport] = {}
        self.hits = 0

    def key(self, model: onnx.ModelProto, recipe: Recipe, calib: CalibrationSet) -> tuple | None:
        if recipe.external_data:
            return None
        spec = recipe.calibration
        graph = hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
        return (graph, calib.sha256(), calib.count, spec.method, spec.percentile, spec.num_bins, spec.batch_size,
                tuple(recipe.op_types))

    def get(self, key: tuple) -> RangeReport | None:
        """A copy of the stored report, marked ``shared``; None on a miss."""
        if key not in self._reports:
            return None
        self.hits += 1
        return dataclasses.replace(copy.deepcopy(self._reports[key]), shared=True)

    def put(self, key: tuple, report: RangeReport) -> None:
        self._reports[key] = copy.deepcopy(report)


def float_nodes_for(model: onnx.ModelProto, report: RangeReport) -> list[tuple[str, str]]:
    """(node, why) for every node touching a tensor calibration found non-finite or huge."""
    out = []
    for i, node in enumerate(model.graph.node):
        hit = next((t for t in list(node.input) + list(node.output) if t in report.float_tensors), None)
        if hit is not None:
            if not node.name:
                node.name = f"onnxq_node_{i}"
            out.append((node.name, f"tensor {hit}: {report.float_tensors[hit]}"))
    return out


def stage_for_writer(model: onnx.ModelProto, recipe: Recipe, tmp: Path) -> Path:
    """The file onnxruntime's quantizer reads: ``model`` at the recipe's opset (pass it to :func:`write_qdq`, then
    drop the model: the writer holds a big model's weights alone)."""
    return write_model(_to_opset(model, recipe), tmp / "to_quantize.onnx", external=recipe.external_data)


def write_qdq(model: onnx.ModelProto | Path, ranges: dict[str, tuple[float, float]], recipe: Recipe, out_path: Path,
              tmp: Path) -> None:
    """Write a QDQ model with onnxruntime's quantizer, using ranges computed by onnxq; ``model`` may be the file
    :func:`stage_for_writer` wrote."""
    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    data = {k: TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
            for k, (lo, hi) in ranges.items()}
    cache = tmp / "ranges.json"
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
    src = model if isinstance(model, Path) else stage_for_writer(model, recipe, tmp)
    try:
        with _quiet_onnxruntime():
            quantize_static(str(src), str(out_path), **ort_arguments(recipe, ranges_path=cache))
    except KeyError as e:
        raise InputError(f"onnxruntime's quantizer needs a range for tensor {e} that calibration did not produce") from e
    finally:
        gc.collect()  # its quantizer holds the model in reference cycles: a big model's weights would linger
    if recipe.excluded_nodes:  # nodes kept in float must stay float at run time too (see algorithms.sensitivity)
        from .algorithms.sensitivity import guard_float_nodes

        written = onnx.load(str(out_path))
        if guard_float_nodes(written, set(recipe.excluded_nodes)):  # (the node count alone stays equal: one DQ in, one out)
            write_model(written, out_path, external=recipe.external_data)


def write_dynamic(model: onnx.ModelProto | Path, recipe: Recipe, out_path: Path, tmp: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    src = model if isinstance(model, Path) else write_model(model, tmp / "input.onnx", external=recipe.external_data)
    lean = _lean_reload() if recipe.external_data else contextlib.nullcontext()
    with _quiet_onnxruntime(), _collecting(), lean:  # onnxruntime logs a pre-processing hint on every call
        quantize_dynamic(str(src), str(out_path), **ort_arguments(recipe))


@contextlib.contextmanager
def _lean_reload():
    """onnxruntime's dynamic quantizer refreshes its shape information with ``save_and_reload_model_with_shape_infer``,
    which deep-copies the whole model, saves it and loads it back while the caller still holds the first copy:
    three copies of a big model's weights at once (measured: 3.1x the weights). The same refresh done in place:
    the graph is written through :func:`write_model` (which needs no copy), its shapes inferred from the file, and
    the inferred value_info and outputs put back into the caller's model."""
    from onnxruntime.quantization import onnx_quantizer
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    original = onnx_quantizer.save_and_reload_model_with_shape_infer  # AttributeError here if onnxruntime renames it

    def reload(model: onnx.ModelProto) -> onnx.ModelProto:
        with tempfile.TemporaryDirectory(prefix="onnxq.reload.") as d:
            src, dst = Path(d) / "model.onnx", Path(d) / "inferred.onnx"
            write_model(model, src, external=True)
            onnx.shape_inference.infer_shapes_path(str(src), str(dst))
            inferred = onnx.load(str(dst), load_external_data=False)  # the graph: its weights stay in the file
        for name in ("value_info", "output"):
            del getattr(model.graph, name)[:]
            getattr(model.graph, name).extend(getattr(inferred.graph, name))
        add_infer_metadata(model)
        return model

    onnx_quantizer.save_and_reload_model_with_shape_infer = reload
    try:
        yield
    finally:
        onnx_quantizer.save_and_reload_model_with_shape_infer = original


def write_fp16(model: onnx.ModelProto, recipe: Recipe, out_path: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(model, keep_io_types=recipe.keep_io_types, disable_shape_infer=False)
    toposort(half.graph)  # the converter appends its input Casts after their consumers
    write_model(half, out_path)


def count_quantized(model: onnx.ModelProto) -> tuple[int, int]:
    """(quantized compute nodes, float compute nodes), Q/DQ themselves not counted.

    A weight node (Conv, ConvTranspose, Gemm, MatMul with a constant weight) counts as quantized when its
    weight is dequantized int8/int4; any other node when every activation input it reads is dequantized
    (onnxruntime then fuses it into the integer op). A float op that merely follows a DequantizeLinear,
    like a node kept in float, is a float node.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name for t in model.graph.initializer} | {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    q, f = 0, 0
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast", "Constant"):
            continue
        if n.op_type.startswith(("QLinear", "MatMulInteger", "ConvInteger", "DynamicQuantize")) or n.op_type in ("QGemm", "QAttention"):
            q += 1
            continue

        def dequantized(t: str) -> bool:
            p = producers.get(t)
            return p is not None and p.op_type == "DequantizeLinear"

        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1 and (n.input[1] in inits or dequantized(n.input[1])):
            q += dequantized(n.input[1])
            f += not dequantized(n.input[1])
            continue
        acts = [i for i in n.input if i and i not in inits]
        if acts and all(dequantized(i) for i in acts):
            q += 1
        else:
            f += 1
    return q, f


def validate(path: Path, ref_model_path: Path, holdout: CalibrationSet, profile: Profile) -> tuple[dict, dict]:
    """Fidelity of the written model against FP32 on held-out samples, on the profile's providers."""
    from .runtime import make_session, run_batches

    try:
        sess, info = make_session(path, profile, allow_fallback=True)
    except Exception as e:
        raise InputError(f"the quantized model does not load in onnxruntime: {first_line(e)}") from e
    bs = holdout.batch_size()
    cand_outs = run_batches(sess, holdout.batches(bs))
    del sess  # one session at a time: a big model's FP32 weights are not held beside the quantized ones
    ref, _ = make_session(ref_model_path, profile, allow_fallback=True)
    ref_outs = run_batches(ref, holdout.batches(bs))
    fid = {o.name: fidelity(np.concatenate(r), np.concatenate(c).astype(np.float64))
           for o, r, c in zip(ref.get_outputs(), ref_outs, cand_outs)}
    validation = {"providers": info.to_dict(), "samples": int(holdout.count), "data": holdout.origin}
    return fid, validation


# ---------------------------------------------------------------------------------------------
# The composition


def _mode_warnings(recipe: Recipe, ops_before: dict[str, int], quantized: int) -> list[str]:
    out = []
    if recipe.mode == "dynamic":
        conv = ops_before.get("Conv", 0)
        mm = sum(ops_before.get(o, 0) for o in ("MatMul", "Gemm"))
        if conv > mm:
            out.append(
                f"the model is dominated by Conv ({conv} Conv vs {mm} MatMul/Gemm): dynamic quantization of "
                "convolutions (ConvInteger) is usually SLOWER than FP32 on CPU (measured ~8x slower on a "
                "MobileNetV2 here); use --mode static"
            )
        if quantized == 0:
            out.append(
                f"dynamic quantization quantized NO node: none of the op types {', '.join(recipe.op_types)} has a weight "
                "onnxruntime's dynamic quantizer could quantize here (it needs constant MatMul/Gemm/Conv weights); use --mode static"
            )
    return out


FEW_SAMPLES = 64  # fewer calibration samples than this get a warning
FULL_BC_SAMPLES = 64  # calibration samples each full bias-correction pass runs (NNCF's full correction uses a subset too)


def bias_correct(model: onnx.ModelProto, ranges: dict, recipe: Recipe, layers: list, means: dict, calib: CalibrationSet,
                 tmp: Path, *, progress: bool = False) -> dict[str, Any]:
    """Fast bias correction (then, for ``full``, measured passes on the QDQ model); changes ``model``'s biases in place."""
    from .algorithms import bias_correction as bc
    from .calibration import stream_tensors

    t0 = time.perf_counter()
    q0 = tmp / "bias_correction.onnx"
    base = bc.biases(model, layers)
    fast = []
    for chunk in _by_weight_bytes(model, layers, BC_CHUNK_BYTES):  # the layers' weights as onnxruntime quantizes them
        write_qdq(_layers_alone(model, chunk), ranges, recipe, q0, tmp)
        fast += bc.fast_corrections(model, chunk, onnx.load(str(q0)), means)
    applied = bc.apply_corrections(model, layers, fast, base)
    info: dict[str, Any] = {"method": recipe.algorithms.bias_correction, "layers": len(layers),
                            "fast": {"corrected": len(applied), "biases_added": sum(c.added_bias for c in applied),
                                     "max_shift": max((c.size for c in applied), default=0.0)}}
    if recipe.algorithms.bias_correction == "full":
        n = min(calib.count, FULL_BC_SAMPLES)
        # Relu/Clip kept as nodes, so the float tensor entering each input quantizer exists (same numerics)
        measuring = dataclasses.replace(recipe, layout=dataclasses.replace(recipe.layout, keep_removable_activations=True))
        passes = []
        for k in range(FULL_BC_PASSES):
            write_qdq(model, ranges, measuring, q0, tmp)
            qm = onnx.load(str(q0))
            pairs = bc.quantized_inputs(qm, layers)
            seen = {t: bc.MeanInput() for pair in pairs.values() for t in pair}
            for _, got in stream_tensors(qm, calib, list(seen), batch_size=8, limit=n, desc=f"bias correction {k + 1}",
                                         progress=progress):
                for t, v in got.items():
                    seen[t].add(v)
            done = bc.apply_corrections(model, layers, bc.measured_corrections(model, layers, qm, pairs, seen), base)
            passes.append({"corrected": len(done), "max_shift": max((c.size for c in done), default=0.0)})
        info["full"] = {"samples": n, "passes": passes}
    info["wall_s"] = time.perf_counter() - t0
    return info


FULL_BC_PASSES = 2
BC_CHUNK_BYTES = 256 * 2**20  # weights quantized per writer call in fast bias correction


def _by_weight_bytes(model: onnx.ModelProto, layers: list, limit: int) -> Iterator[list]:
    """``layers`` in graph order, in runs whose weights add up to at most ``limit`` bytes (one layer at least)."""
    size = {t.name: t.ByteSize() for t in model.graph.initializer}  # (len(t.raw_data) would copy every weight)
    run, total = [], 0
    for layer in layers:
        n = size.get(layer.weight, 0)
        if run and total + n > limit:
            yield run
            run, total = [], 0
        run.append(layer)
        total += n
    if run:
        yield run


def _layers_alone(model: onnx.ModelProto, layers: list) -> onnx.ModelProto:
    """The layers' nodes by themselves, each reading its activation as a graph input, with copies of their
    weights and biases: what fast bias correction needs quantized (onnxruntime quantizes a weight from its node
    alone). A big model's layers go through the writer a few at a time instead of all its weights at once."""
    inits = {t.name: t for t in model.graph.initializer}
    info = {v.name: v for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    nodes = [layer.node for layer in layers]
    made = {o for n in nodes for o in n.output}

    def value(name: str) -> onnx.ValueInfoProto:
        return info.get(name) or onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)

    needed = list(dict.fromkeys(i for n in nodes for i in n.input if i))
    graph = onnx.helper.make_graph(
        nodes, "layers", [value(i) for i in needed if i not in inits and i not in made],
        [value(o) for n in nodes for o in n.output], [inits[i] for i in needed if i in inits])
    alone = onnx.helper.make_model(graph, opset_imports=model.opset_import)
    alone.ir_version = model.ir_version
    return alone


def _holdout_score(path: Path, ref_path: Path, holdout: CalibrationSet, profile: Profile) -> float:
    """Mean per-sample cosine to FP32 over the outputs, on the held-out samples (what the searches maximise)."""
    fid, _ = validate(path, ref_path, holdout, profile)
    return float(np.mean([f.get("cosine_mean", f["cosine"]) for f in fid.values()]))


def equalize_graph(model: onnx.ModelProto, recipe: Recipe, calib: CalibrationSet, holdout: CalibrationSet, ref_path: Path,
                   profile: Profile, tmp: Path, *, progress: bool = False) -> dict[str, Any]:
    """Cross-layer equalization and SmoothQuant on the float graph (in place), from one statistics pass.

    SmoothQuant "auto" quantizes the graph once per alpha in ``smoothquant.ALPHAS`` and keeps the alpha
    whose output is closest to FP32 on the held-out samples.
    """
    from .algorithms import cle as cle_mod
    from .algorithms import smoothquant as sq
    from .algorithms.graph import drop_unused_initializers
    from .calibration import stream_tensors

    alg = recipe.algorithms
    pairs = cle_mod.find_pairs(model, recipe.excluded_nodes) if alg.cle else []
    groups = sq.find_groups(model, recipe.op_types, recipe.excluded_nodes) if alg.smoothquant is not None else []
    observers: dict[str, Any] = {p.tensor: cle_mod.ChannelRange() for p in pairs}
    observers.update({g.tensor: sq.AbsMaxLastAxis() for g in groups})
    info: dict[str, Any] = {}
    if not observers:
        return info
    for _, got in stream_tensors(model, calib, list(observers), batch_size=16, desc="equalization statistics", progress=progress):
        for t, v in got.items():
            observers[t].add(v)
    if pairs:
        mode = "activations" if recipe.per_channel else "weights"
        info["cle"] = cle_mod.equalize(model, pairs, observers, mode=mode)
        info["cle"].update(cle_mod.absorb_biases(model, pairs, observers))
    if groups:
        alpha = alg.smoothquant
        if alpha == "auto":
            scores = {}
            for a in sq.ALPHAS:
                trial = onnx.ModelProto()
                trial.CopyFrom(model)
                sq.smooth(trial, sq.find_groups(trial, recipe.op_types, recipe.excluded_nodes), observers, a)
                trial = onnx.shape_inference.infer_shapes(trial)
                out = tmp / f"smoothquant_{a}.onnx"
                write_qdq(trial, calibrate(trial, recipe, calib, progress=False).ranges, recipe, out, tmp)
                scores[a] = _holdout_score(out, ref_path, holdout, profile)
            alpha = max(scores, key=scores.get)
            info["smoothquant_search"] = {str(a): v for a, v in scores.items()}
        info["smoothquant"] = sq.smooth(model, groups, observers, float(alpha))
    drop_unused_initializers(model)
    model.CopyFrom(onnx.shape_inference.infer_shapes(model))  # types for the tensors the folds added
    return info


def target_scorer(ref_path: Path, holdout: CalibrationSet, profile: Profile, metric: str, output_name: str | None = None):
    """A function scoring a candidate model (ModelProto or path) against FP32 on ``holdout`` with ``metric``."""
    from .evaluate import is_classifier_output, target_score
    from .runtime import make_session, run_batches

    ref_sess, _ = make_session(ref_path, profile, allow_fallback=True)
    names = [o.name for o in ref_sess.get_outputs()]
    if output_name is not None and output_name not in names:
        raise InputError(f"the model has no output {output_name!r}; its outputs are {names}")
    idx = names.index(output_name) if output_name else 0
    bs = holdout.batch_size()
    ref = np.concatenate(run_batches(ref_sess, holdout.batches(bs))[idx])
    if metric in ("top1", "kl") and not is_classifier_output(ref):
        raise InputError(f"--target {metric} needs (N, classes) scores, and output {names[idx]!r} has shape "
                         f"{list(ref.shape)}: use --target cosine=... or sqnr=... (or pick the logits output)")

    def score(model: Any) -> float:
        sess, _ = make_session(model if isinstance(model, onnx.ModelProto) else str(model), profile, allow_fallback=True)
        return target_score(ref, np.concatenate(run_batches(sess, holdout.batches(bs))[idx]), metric)

    return score, names[idx]


def _latency_ratio(before: Path, after: Path, holdout: CalibrationSet, profile: Profile) -> float | None:
    """Median latency of ``after`` over ``before`` (interleaved, 20 runs, one held-out batch)."""
    from .bench import measure_interleaved
    from .runtime import make_session

    feed = next(iter(holdout.batches(holdout.batch_size(8))))
    sess = [make_session(str(p), profile, allow_fallback=True)[0] for p in (before, after)]
    times = measure_interleaved([lambda s=s: s.run(None, feed) for s in sess], warmup=3, runs=20)
    a, b = (float(np.median(t)) for t in times)
    return b / a if a > 0 else None


def _restore_biases(model: onnx.ModelProto, source: onnx.ModelProto, names: list[str]) -> None:
    """Nodes kept in float take ``source``'s bias (bias correction shifted them for quantized weights)."""
    from .algorithms.graph import const, node_by_name, set_const

    if source is model:
        return
    src = node_by_name(source)
    for node in model.graph.node:
        s = src.get(node.name)
        if node.name in names and s is not None and len(node.input) > 2 and node.input[2] and len(s.input) > 2 and s.input[2]:
            value = const(source, s.input[2])
            if value is not None:
                name = f"{s.input[2]}.onnxq_float.{node.name}"
                set_const(model, name, value)
                node.input[2] = name


def target_fallback(model: onnx.ModelProto, ranges: dict, recipe: Recipe, out_path: Path, holdout: CalibrationSet,
                    ref_path: Path, profile: Profile, tmp: Path, *, output_name: str | None = None,
                    progress: bool = False, float_model: onnx.ModelProto | None = None) -> tuple[Recipe, dict[str, Any]]:
    """``--target``: per-node sensitivity on the held-out samples, then the most sensitive nodes kept in float,
    fewest first, until the target holds; ``out_path`` is rewritten with them (the best model either way).

    ``float_model`` holds the float weights and biases a kept node reads (default ``model``): the graph before
    bias correction, whose shifts were made for quantized weights."""
    import shutil

    from tqdm import tqdm

    from .algorithms import sensitivity as sens

    target = recipe.target
    score, out_name = target_scorer(ref_path, holdout, profile, target.metric, output_name)
    qm = onnx.load(str(out_path))
    names = [n for n in sens.candidates(qm) if n not in set(recipe.excluded_nodes)]
    bar = tqdm(total=len(names), desc="sensitivity", unit="node", disable=not progress, leave=False)
    float_model = float_model if float_model is not None else model
    table, kept, trail = sens.fallback(qm, float_model, names, score, target.met, higher_is_better=target.higher_is_better,
                                       progress=bar.update)
    bar.close()
    base = score(qm)
    info: dict[str, Any] = {"metric": target.metric, "value": target.value, "output": out_name, "samples": holdout.count,
                            "score_all_quantized": base, "sensitivity": [r.to_dict() for r in table], "float_nodes": kept,
                            "trail": trail}
    if kept:
        before = tmp / "all_quantized.onnx"
        shutil.copyfile(out_path, before)
        recipe = recipe.keep_in_float([(n, f"--target {target.text()} (sensitivity rank {i + 1})") for i, n in enumerate(kept)])
        _restore_biases(model, float_model, kept)
        write_qdq(model, ranges, recipe, out_path, tmp)
        info["latency_vs_all_quantized"] = _latency_ratio(before, out_path, holdout, profile)
    final = score(out_path)
    info.update(score=final, reached=target.met(final) if target.value is not None else None)
    return recipe, info


def _static(model, recipe, calib, tmp, tmp_out, progress, calib_random, ref_path, profile, output_name=None, shared=None):
    """Stages 1-3 of static mode; returns (recipe with float nodes, holdout, report facts, warnings, preprocess label)."""
    from .algorithms import bias_correction as bc
    from .algorithms.graph import weight_layers

    spec = recipe.calibration
    calib_part, holdout = calib.split(spec.holdout, spec.samples)
    notes = []
    if calib_part.count != spec.samples:
        notes.append(f"{spec.samples} calibration samples asked for, {calib.count} in the data: {calib_part.count} used for "
                     f"calibration, {holdout.count} held out to measure fidelity")
    if calib_part.count < FEW_SAMPLES and not calib_random:
        notes.append(f"only {calib_part.count} calibration samples: ranges from so few are noisy; {FEW_SAMPLES} or more "
                     "(128-512 typical) give stable results")
    pre, label = prepare_graph(model, recipe, tmp)
    alg = recipe.algorithms
    algorithms: dict[str, Any] = equalize_graph(pre, recipe, calib_part, holdout, ref_path, profile, tmp, progress=progress)
    layers = weight_layers(pre, recipe.op_types, recipe.excluded_nodes) if alg.bias_correction != "none" else []
    early: list[str] = notes
    if layers and calib_part.count < bc.MIN_SAMPLES:
        if "bias_correction" in alg.asked:
            raise InputError(f"bias correction needs at least {bc.MIN_SAMPLES} calibration samples (besides the {holdout.count} "
                             f"held out), got {calib_part.count}; give more data or --bias-correction none")
        early.append(f"bias correction skipped: {calib_part.count} calibration samples (besides the {holdout.count} held out) "
                     f"are fewer than the {bc.MIN_SAMPLES} it needs")
        layers = []
    means = {l.node.input[0]: bc.MeanInput() for l in layers}
    report = calibrate(pre, recipe, calib_part, progress=progress, observers=means, shared=shared)
    kept = float_nodes_for(pre, report)
    warns = early
    if report.float_tensors:
        warns.append(f"kept {len(kept)} node(s) in float around {len(report.float_tensors)} tensor(s) with non-finite or huge "
                     "values: " + ", ".join(f"{k} ({v})" for k, v in list(report.float_tensors.items())[:3]))
    recipe = recipe.keep_in_float(kept)
    uncorrected = None
    if layers:
        if recipe.target is not None:
            uncorrected = onnx.ModelProto()
            uncorrected.CopyFrom(pre)  # float weights AND biases for nodes the fallback keeps in float
        layers = [l for l in layers if l.name not in set(recipe.excluded_nodes)]
        algorithms["bias_correction"] = bias_correct(pre, report.ranges, recipe, layers, means, calib_part, tmp, progress=progress)
    staged = stage_for_writer(pre, recipe, tmp)
    if recipe.target is None:  # the float graph is done with: onnxruntime alone holds the weights while it writes
        del pre, layers
    write_qdq(staged, report.ranges, recipe, tmp_out, tmp)
    if recipe.target is not None:
        recipe, algorithms["target"] = target_fallback(pre, report.ranges, recipe, tmp_out, holdout, ref_path, profile, tmp,
                                                       output_name=output_name, progress=progress, float_model=uncorrected)
    info = {"source": calib.origin, "sha256": calib.sha256(), "samples_used": report.samples,
            "held_out": holdout.count if holdout is not calib else 0, "method": recipe.calibration.method,
            "percentile": recipe.calibration.percentile if recipe.calibration.method in ("percentile", "mean_percentile") else None,
            "tensors": len(report.ranges), "not_representative": calib_random,
            "shared_pass": report.shared,
            "float_tensors": dict(report.float_tensors), "algorithms": algorithms}
    return recipe, holdout, info, warns, label


# ops only a quantized graph holds (QDQ, QOperator and integer kernels, 4-bit weight blocks)
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                           "MatMulInteger", "ConvInteger", "QGemm", "QLinearAdd", "QLinearMul", "QAttention",
                           "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits", "QLinearGlobalAveragePool",
                           "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool"})


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
    bias_correction: str | None = None,
    smoothquant: str | float | bool | None = None,
    cle: bool | None = None,
    target: str | None = None,
    output_name: str | None = None,
    allow_fallback: bool = False,
    progress: bool = True,
    shared_calibration: RangeMemo | None = None,
) -> QuantResult:
    """Quantize an FP32 ONNX model for a hardware profile and measure what it cost.

    >>> res = quantize("net.onnx", mode="static", calibration="calib.npz", profile="cpu-x86-vnni")  # doctest: +SKIP
    >>> res.size_after < res.size_before, res.recipe.weight_type                                     # doctest: +SKIP
    (True, 'int8')

    ``shared_calibration`` (a :class:`RangeMemo`) lets several calls in one process share identical calibration
    passes: the per-tensor and per-channel variants of one estimator calibrate the same activations.
    """
    t0 = time.perf_counter()
    model_path = Path(model_path)
    prof, _why = resolve_profile(profile)
    overrides = Overrides(
        mode=mode, method=method, percentile=percentile, calibration_samples=calibration_samples, per_channel=per_channel,
        weight_type=weight_type, op_types=tuple(op_types) if op_types is not None else None,
        exclude_op_types=tuple(exclude_op_types) if exclude_op_types is not None else None,
        exclude_nodes=tuple(exclude_nodes) if exclude_nodes is not None else None,
        bias_correction=bias_correction, smoothquant=smoothquant, cle=cle,
        target=parse_target(target) if isinstance(target, str) else target,
    )
    model = load_model(model_path, load_external=False)  # the graph (and its external data checked)
    facts = graph_facts(model)
    done = sorted(facts.op_types & QUANTIZED_OPS)
    if done:
        n = sum(c for op, c in facts.op_counts if op in QUANTIZED_OPS)
        raise InputError(f"{model_path} is already quantized ({n} node(s) of {', '.join(done)}); quantizing it again would "
                         "stack a second set of scales on the first: quantize its FP32 original instead")
    recipe = resolve(prof, facts, quantizer_caps(), overrides)
    out = Path(output) if output else default_output(model_path, recipe.mode)
    inputs = [model_path, *external_files(model_path), calibration if isinstance(calibration, (str, os.PathLike)) else None]
    check_output(out, inputs=inputs)
    check_output(manifest_path(out), inputs=inputs, what="manifest")
    require_providers(prof, allow_fallback, "validates the quantized model on them")
    need_tmp = 3 * facts.model_bytes + 16 * 2**20
    require_space(tempfile.gettempdir(), need_tmp, "the temporary folder", "set TMPDIR to a folder with more free space")
    require_space(out.parent, int(facts.model_bytes * (0.55 if recipe.mode == "fp16" else 0.3)) + 2**20, "the output folder",
                  "free space there or choose another -o")
    if recipe.mode == "static" and calibration is None and not calib_random:
        raise InputError(
            "--mode static needs calibration data: pass --calib FILE.npz (keyed by input name), a .npy or a directory; "
            "--calib-random N exists for smoke tests only (not representative)"
        )
    # Samples for calibration and for the fidelity check, loaded before any work so bad data fails fast.
    limit = (recipe.calibration.samples if recipe.calibration else prof.quant.calibration_samples) + HOLDOUT
    calib = None
    if calibration is not None:
        calib = CalibrationSet.from_source(calibration, model, limit=limit)
        calib.check_values()  # one bounded pass: a NaN in the last shard fails now, not after minutes of work
    elif calib_random:
        calib = CalibrationSet.random(model, int(calib_random))
    warns: list[str] = list(calib.notes) if calib is not None else []
    calib_info: dict[str, Any] = {}
    label = ""
    # a big model (weights near protobuf's 2 GB) that needs no opset conversion is never held in memory whole
    # here: onnxruntime reads it from its file (pre-processing, dynamic quantization, the FP32 reference)
    by_path = recipe.external_data and not (recipe.mode == "static" and recipe.needs_opset_conversion) and recipe.mode != "fp16"
    if not by_path:
        model = load_model(model_path)
    with tempfile.TemporaryDirectory(prefix="onnxq.") as tmpd, model_unit(out) as unit:
        tmp, tmp_out = Path(tmpd), unit.model
        source = model_path if by_path else model
        ref_path = model_path
        if recipe.mode == "static" and recipe.needs_opset_conversion:  # the reference is the graph at the output's opset
            source = _to_opset(model, recipe)
            ref_path = write_model(source, tmp / "reference.onnx", external=recipe.external_data)
        if recipe.mode == "static":
            recipe, holdout, calib_info, more, label = _static(
                source, recipe, calib, tmp, tmp_out, progress, bool(calib_random) and calibration is None, ref_path, prof,
                output_name, shared_calibration)
            warns += more
        else:
            if recipe.mode == "dynamic":
                write_dynamic(prepare_graph(source, recipe, tmp)[0], recipe, tmp_out, tmp)
            else:
                write_fp16(model, recipe, tmp_out)
            holdout = calib.split(HOLDOUT)[1] if calib is not None else None
        del source
        stamp_recipe(tmp_out, recipe.to_dict())
        qmodel = onnx.load(str(tmp_out), load_external_data=False)  # the graph; weights stay on disk
        try:
            onnx.checker.check_model(str(tmp_out) if recipe.external_data else onnx.load(str(tmp_out)))
        except onnx.checker.ValidationError as e:
            raise InputError(f"the quantized model failed onnx.checker: {first_line(e)}") from e
        if holdout is None:
            holdout = CalibrationSet.random(model, 8)
            warns.append("fidelity measured on 8 random samples (no --calib data given): not representative")
        fid, validation = validate(tmp_out, ref_path, holdout, prof)
        if validation["providers"]["fallback"]:
            warns.append(validation["providers"]["note"] + " (validation ran on the available provider)")
        ops_before = dict(Counter(n.op_type for n in model.graph.node))
        q, f = count_quantized(qmodel)
        warns += _mode_warnings(recipe, ops_before, q)
        data = unit.seal()
        result = QuantResult(
            output=out, manifest=manifest_path(out), recipe=recipe, size_before=size_with_data(model_path),
            size_after=tmp_out.stat().st_size + sum(d["bytes"] for d in data), ops_before=ops_before,
            ops_after=dict(Counter(n.op_type for n in qmodel.graph.node)), quantized_nodes=q, float_nodes=f, fidelity=fid,
            validation=validation, wall_s=time.perf_counter() - t0, warnings=warns,
            float_tensors=calib_info.pop("float_tensors", {}), calibration=calib_info, preprocess=label,
        )
        unit.write_manifest(build_manifest(result, prof, model_path, tmp_out, data))
    # model, its external data and its manifest are in place now (renamed together)
    return result


def sensitivity(model_path: str | os.PathLike, *, calibration: Any, metric: str = "cosine", profile: str | Profile = "auto",
                output_name: str | None = None, progress: bool = False, **options: Any) -> dict[str, Any]:
    """Per-node sensitivity only (``onnxq sensitivity``): quantize into a temp dir, measure, write nothing.

    Returns the target record of :attr:`QuantResult.target` (``sensitivity`` rows most sensitive first,
    ``score_all_quantized``) plus ``recipe``.
    """
    from .plan import TargetSpec

    if metric not in ("cosine", "top1", "sqnr", "kl"):
        raise InputError(f"unknown --metric {metric!r}; choose cosine, top1, sqnr or kl")
    with tempfile.TemporaryDirectory(prefix="onnxq.sens.") as d:
        res = quantize(model_path, mode="static", profile=profile, calibration=calibration, output=Path(d) / "m.onnx",
                       target=TargetSpec(metric, None), output_name=output_name, progress=progress, **options)
    out = dict(res.target)
    out["recipe"] = res.recipe.to_dict()
    return out


def build_manifest(result: QuantResult, prof: Profile, model_path: Path, written: Path, data: list | None = None) -> dict[str, Any]:
    from .runtime import ort_info

    body = result.to_dict()
    recipe = body.pop("recipe")
    return new_manifest(
        "quantize", result.output, written=written, data=data,
        versions={"onnxq": __version__, "onnx": onnx.__version__, "onnxruntime": ort_info()["version"], "numpy": np.__version__},
        input={"path": str(model_path), "sha256": file_sha256(model_path)},
        profile={"name": prof.name, "sha256": prof.sha256, "source": prof.source},
        recipe=recipe,
        result=body,
    )
