"""Keras / TensorFlow -> FP32 ONNX, with the batch axis dynamic and a parity check against TensorFlow.

>>> import keras, onnxq.tf_export as tfx
>>> net = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3), keras.layers.Flatten(), keras.layers.Dense(10)])
>>> res = tfx.export_keras(net, "net.onnx")                                # doctest: +SKIP
>>> res.opset, res.input_shapes, res.parity["output_0"]["max_abs"] < 1e-4  # doctest: +SKIP
(17, {'input': ['batch', 28, 28, 1]}, True)

The source is an in-memory ``keras.Model``, a ``.keras`` / ``.h5`` file, or a SavedModel directory
(``model.export(dir)``, ``tf.saved_model.save``) whose ``serving_default`` signature is converted.
Conversion goes through ``tf2onnx.convert.from_function`` on a ``tf.function`` wrapping the model:
``tf2onnx.convert.from_keras`` fails on Keras 3 Sequential models, and tf2onnx 1.17 has no Python
``from_saved_model``. The ONNX model's inputs and outputs keep the Keras model's layout exactly (NHWC
images stay NHWC), so calibration and evaluation data are fed as the Keras model takes them; inside,
tf2onnx runs convolutions in ONNX's NCHW through Transpose nodes it places and optimises away where it
can (for one channel a Reshape), and folds BatchNormalization into the convolutions. As for PyTorch (:mod:`onnxq.torch_export`), the written model is checked
with ``onnx.checker`` and run in onnxruntime (CPU) at batch N and 2N on seeded random inputs;
outputs that differ from TensorFlow beyond ``atol + rtol * |tf|`` raise :class:`CheckFailed` and
nothing is written. This module is the only one that imports tensorflow, keras and tf2onnx, and
only inside functions (``pip install "onnxq[tf]"``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from . import __version__
from .errors import CheckFailed, InputError, first_line
from .manifest import manifest_path, new_manifest
from .modelio import model_unit, needs_external_data, write_model
from .torch_export import ExportResult  # torch_export imports torch only inside its functions

__all__ = ["TF_INSTALL_HINT", "KerasSource", "export_keras", "load_keras", "require_tf"]

TF_INSTALL_HINT = 'pip install "onnxq[tf]" (tensorflow-cpu==2.21.*, tf2onnx==1.17.*)'
EXPORTER = "tf2onnx.convert.from_function"
SERVING = "serving_default"
# names Keras and tf.saved_model generate for unnamed inputs: replaced by input / input_0, input_1, ...
_GENERATED_INPUT = re.compile(r"^(keras_tensor|input_layer|inputs|args)(_\d+)?$")
_ONNX_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")


# ---------------------------------------------------------------------------------------------
# TensorFlow, quietly


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null for the block: TensorFlow's C++ side prints absl and oneDNN
    INFO lines at import that ``TF_CPP_MIN_LOG_LEVEL`` no longer silences (TF 2.21). Python exceptions
    still propagate and are reported normally once the descriptor is restored."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def require_tf():
    """Import tensorflow and tf2onnx, or raise InputError with the one-line install hint; returns ``(tf, tf2onnx)``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        if "tensorflow" in sys.modules:
            import tensorflow as tf
        else:
            with _quiet_stderr():
                import tensorflow as tf
        import tf2onnx
        import tf2onnx.convert  # noqa: F401
    except ImportError as e:
        raise InputError(f"this needs TensorFlow and tf2onnx, which are not installed: {TF_INSTALL_HINT}") from e
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return tf, tf2onnx


# ---------------------------------------------------------------------------------------------
# The source: a Keras model or a SavedModel signature, as one flat function


@dataclass
class KerasSource:
    """A model ready to convert: a flat function (list of tensors -> list of tensors) and its inputs.

    ``obj`` keeps the Keras model or the loaded SavedModel alive (a signature's variables belong to it).
    """

    kind: str  # "keras" or "saved_model"
    description: str
    obj: Any
    call: Callable[[list], Any]
    input_names: list[str]  # the model's own names (Keras input names, signature keys)
    input_shapes: list[tuple | None]  # with None for unknown dims; None when the model does not say
    input_dtypes: list[Any]  # tf.DType
    output_names: list[str] | None = None  # Keras output names / signature keys, when known before a run
    path: Path | None = None


def _keras():
    require_tf()
    import keras

    return keras


def load_keras(source: Any) -> KerasSource:
    """A ``.keras`` / ``.h5`` file, a SavedModel directory, a ``keras.Model`` or a loaded SavedModel, as a :class:`KerasSource`.

    A missing path, a file that is not a Keras model, or a SavedModel without a ``serving_default``
    signature raise :class:`InputError` with one line.
    """
    if isinstance(source, KerasSource):
        return source
    tf, _ = require_tf()
    keras = _keras()
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.exists():
            raise InputError(f"{p} does not exist; give a .keras or .h5 file or a SavedModel directory")
        if p.is_dir():
            if not (p / "saved_model.pb").is_file() and not (p / "saved_model.pbtxt").is_file():
                raise InputError(f"{p} is a directory without saved_model.pb; give a SavedModel directory (model.export(dir)) "
                                 "or a .keras or .h5 file")
            try:
                with _quiet_stderr():
                    loaded = tf.saved_model.load(str(p))
            except Exception as e:
                raise InputError(f"cannot load the SavedModel {p}: {type(e).__name__}: {first_line(e)[:200]}") from e
            return _from_saved_model(loaded, f"SavedModel {p}", p, tf)
        kind = p.suffix.lower()
        if kind not in (".keras", ".h5", ".hdf5"):
            raise InputError(f"{p}: expected a .keras or .h5 file or a SavedModel directory (one holding saved_model.pb)")
        # Keras' own message for a file of another format is "File not found": say what the file is not
        if kind == ".keras" and not zipfile.is_zipfile(p):
            raise InputError(f"{p} is not a Keras model (a .keras file is a zip archive; this is not one); save it with model.save('model.keras')")
        if kind != ".keras" and _read_head(p, 8) != b"\x89HDF\r\n\x1a\n":
            raise InputError(f"{p} is not a Keras model (an .h5 file is HDF5; this is not one); save it with model.save('model.keras')")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = keras.models.load_model(str(p), compile=False)
        except Exception as e:
            raise InputError(f"{p} is not a readable Keras model ({type(e).__name__}: {first_line(e)[:160]}); "
                             "save it with model.save('model.keras')") from e
        src = _from_keras(model, f"Keras model {p}", keras, tf)
        src.path = p
        return src
    if isinstance(source, keras.Model):
        return _from_keras(source, f"in-memory {type(source).__name__}", keras, tf)
    if hasattr(source, "signatures"):
        return _from_saved_model(source, f"loaded SavedModel ({type(source).__name__})", None, tf)
    raise InputError(f"expected a keras.Model, a .keras or .h5 file or a SavedModel directory, got {type(source).__name__}")


def _read_head(p: Path, n: int) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise InputError(f"cannot read {p}: {first_line(e)}") from e


def _from_keras(model, description: str, keras, tf) -> KerasSource:
    try:
        structure = model.input  # a tensor, a list or a dict of KerasTensors (Functional models)
    except (AttributeError, ValueError):
        try:  # Sequential: never called, but its inputs are known
            inputs = list(model.inputs or [])
        except (AttributeError, ValueError):  # a subclassed model that was never built on symbolic inputs
            inputs = []
        structure = (inputs[0] if len(inputs) == 1 else inputs) if inputs else None
    if structure is None:
        return KerasSource("keras", description, model, lambda args: model(args[0] if len(args) == 1 else list(args), training=False),
                           ["input"], [None], [tf.float32], _keras_output_names(model))
    flat = tf.nest.flatten(structure)
    if isinstance(structure, dict):
        names = sorted(structure)  # tf.nest.flatten order
    else:
        names = [getattr(t, "name", None) or f"input_{i}" for i, t in enumerate(flat)]
    shapes = [tuple(None if d is None else int(d) for d in t.shape) for t in flat]
    dtypes = [tf.as_dtype(getattr(t, "dtype", "float32")) for t in flat]

    def call(args: list):
        return model(tf.nest.pack_sequence_as(structure, list(args)), training=False)

    return KerasSource("keras", description, model, call, names, shapes, dtypes, _keras_output_names(model))


def _keras_output_names(model) -> list[str] | None:
    try:
        names = list(model.output_names or [])
    except (AttributeError, ValueError, TypeError):
        return None
    return names or None


def _from_saved_model(loaded, description: str, path: Path | None, tf) -> KerasSource:
    sigs = getattr(loaded, "signatures", None)
    if not sigs or SERVING not in sigs:
        have = ", ".join(sorted(sigs)) if sigs else "none"
        raise InputError(f"{description} has no {SERVING!r} signature (signatures: {have}); re-export it with model.export(dir)")
    sig = sigs[SERVING]
    args, kwargs = sig.structured_input_signature
    if args or not kwargs:
        raise InputError(f"{description}: the {SERVING!r} signature takes no named tensor inputs; re-export it with model.export(dir)")
    names = sorted(kwargs)
    specs = [kwargs[n] for n in names]
    outs = sig.structured_outputs
    out_names = sorted(outs) if isinstance(outs, dict) else None

    def call(flat_args: list):
        return sig(**dict(zip(names, flat_args)))

    return KerasSource("saved_model", description, loaded, call, names,
                       [None if s.shape.rank is None else tuple(s.shape.as_list()) for s in specs],
                       [s.dtype for s in specs], out_names, path)


# ---------------------------------------------------------------------------------------------
# Export


def _max_opset(tf2onnx) -> int:
    from tf2onnx import constants

    return max(constants.OPSET_TO_IR_VERSION)


def _default_names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


def _check_names(kind: str, names: Sequence[str] | None, n: int, default: list[str]) -> list[str]:
    if names is None:
        return default
    names = list(names)
    if len(names) != n:
        raise InputError(f"{len(names)} {kind} name(s) given ({', '.join(names)}) but the model has {n} {kind}(s); give exactly {n}")
    if len(set(names)) != n:
        raise InputError(f"{kind} names must be distinct, got {names}")
    bad = [x for x in names if not isinstance(x, str) or not x]
    if bad:
        raise InputError(f"{kind} names must be non-empty strings, got {bad}")
    return names


def _usable(names: list[str] | None, n: int) -> bool:
    return bool(names) and len(names) == n and len(set(names)) == n and all(isinstance(x, str) and _ONNX_NAME.match(x) for x in names)


def _resolve_shapes(src: KerasSource, input_shape: Any, names: list[str]) -> list[tuple[int, ...]]:
    """Concrete example shapes (batch first), one per input, from the model and ``input_shape``."""
    n = len(names)
    if input_shape is not None:
        try:
            given = list(input_shape)
        except TypeError:
            raise InputError(f"input_shape {input_shape!r} is not a shape like (1, 28, 28, 1) or a list of shapes") from None
        if given and not isinstance(given[0], (list, tuple)):
            given = [given]  # one shape, for a single-input model
        if len(given) != n:
            raise InputError(f"input_shape gives {len(given)} shape(s) but the model has {n} input(s) ({', '.join(names)}); "
                             "give one shape per input, batch first")
        shapes = []
        for name, want, got in zip(names, src.input_shapes, given):
            try:
                got = tuple(int(d) for d in got)
            except (TypeError, ValueError):
                raise InputError(f"input_shape {got!r} for input {name!r} is not a tuple of integers like (1, 28, 28, 1)") from None
            if not got or any(d <= 0 for d in got):
                raise InputError(f"input_shape {got} for input {name!r}: every dimension must be a positive integer, batch first")
            if want is not None and (len(want) != len(got) or any(w is not None and w != g for w, g in zip(want[1:], got[1:]))):
                model_shape = "x".join("?" if w is None else str(w) for w in want)
                raise InputError(f"input_shape {'x'.join(map(str, got))} does not fit input {name!r} of shape {model_shape} "
                                 "(? = any); give the batch first, then the model's own dims")
            shapes.append(got)
        if len({s[0] for s in shapes}) != 1:
            raise InputError(f"input_shape gives different batch sizes {[s[0] for s in shapes]}; give every input the same batch")
        return shapes
    shapes = []
    for name, want in zip(names, src.input_shapes):
        if want is None or not want or any(d is None for d in want[1:]):
            if want is None:
                raise InputError("the model does not declare its input shape (a subclassed model not built on keras.Input?); "
                                 "give input_shape, batch first (e.g. --input-shape 1x224x224x3)")
            model_shape = "x".join("?" if d is None else str(d) for d in want)
            raise InputError(f"input {name!r} has shape {model_shape} (? = unknown); give input_shape, batch first "
                             "(e.g. --input-shape 1x224x224x3)")
        shapes.append((1,) + tuple(int(d) for d in want[1:]))
    return shapes


def _random(shape: tuple[int, ...], dtype, rng: np.random.Generator) -> np.ndarray:
    np_dtype = np.dtype(dtype.as_numpy_dtype) if hasattr(dtype, "as_numpy_dtype") else np.dtype(dtype)
    if np_dtype.kind == "f":
        return rng.standard_normal(shape).astype(np_dtype)
    if np_dtype.kind in "iu":
        return rng.integers(0, 8, size=shape).astype(np_dtype)
    if np_dtype.kind == "b":
        return rng.random(shape) < 0.5
    raise InputError(f"inputs of type {np_dtype} are not supported by onnxq export (float, integer and bool inputs are)")


def _flatten(out: Any, tf) -> tuple[list, list[str] | None]:
    """Flat outputs in tf.nest order, and their dict keys when the model returns a dict."""
    keys = sorted(out) if isinstance(out, dict) else None
    flat = tf.nest.flatten(out)
    if not flat or not all(hasattr(t, "numpy") or isinstance(t, np.ndarray) for t in flat):
        raise InputError(f"the model returns {type(out).__name__}; onnxq export supports a tensor or a list/tuple/dict of tensors")
    return flat, keys


def _run_tf(fn, arrays: list[np.ndarray], tf) -> tuple[list[np.ndarray], list[str] | None]:
    try:
        out = fn(*[tf.constant(a) for a in arrays])
    except Exception as e:
        shapes = ", ".join("x".join(str(d) for d in a.shape) for a in arrays)
        raise InputError(f"the model failed on random inputs of shape {shapes}: {type(e).__name__}: {first_line(e)[:200]}; "
                         "give the shape(s) the model expects as input_shape (batch first)") from e
    flat, keys = _flatten(out, tf)
    return [np.asarray(t.numpy() if hasattr(t, "numpy") else t) for t in flat], keys


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a value everywhere in the graph, subgraphs included (they may read outer values)."""
    for node in graph.node:
        for i, x in enumerate(node.input):
            if x == old:
                node.input[i] = new
        for i, x in enumerate(node.output):
            if x == old:
                node.output[i] = new
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename(attr.g, old, new)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _rename(g, old, new)
    for coll in (graph.input, graph.output, graph.value_info):
        for vi in coll:
            if vi.name == old:
                vi.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {vi.name for vi in list(graph.input) + list(graph.output) + list(graph.value_info)}
    names.update(i.name for i in graph.initializer)
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def _set_names(model: onnx.ModelProto, want_in: list[str], want_out: list[str]) -> None:
    g = model.graph
    inits = {i.name for i in g.initializer}
    cur_in = [vi.name for vi in g.input if vi.name not in inits]
    cur_out = [vi.name for vi in g.output]
    if len(cur_in) != len(want_in) or len(cur_out) != len(want_out):
        raise CheckFailed(f"tf2onnx wrote {len(cur_in)} input(s) and {len(cur_out)} output(s) where the model has "
                          f"{len(want_in)} and {len(want_out)}; nothing was written")
    pairs = [(o, n) for o, n in zip(cur_in + cur_out, want_in + want_out) if o != n]
    # two passes through temporary names, so swapping or reusing names cannot collide
    taken = _all_names(g)
    clash = [n for _, n in pairs if n in taken and n not in cur_in + cur_out]
    if clash:
        raise InputError(f"name(s) {', '.join(clash)} are already used inside the converted graph; choose other input/output names")
    tmp = [(o, f"__onnxq_tmp_{i}__", n) for i, (o, n) in enumerate(pairs)]
    for o, t, _ in tmp:
        _rename(g, o, t)
    for _, t, n in tmp:
        _rename(g, t, n)


def _name_batch_axis(model: onnx.ModelProto, in_names: list[str], out_batches: dict[str, bool]) -> None:
    """Axis 0 is ``batch`` on every input, and on every output whose axis 0 followed the input batch at N and 2N."""
    for vi in model.graph.input:
        if vi.name in in_names and vi.type.tensor_type.shape.dim:
            d = vi.type.tensor_type.shape.dim[0]
            if d.dim_param or not d.dim_value:
                d.dim_param = "batch"
    for vi in model.graph.output:
        dims = vi.type.tensor_type.shape.dim
        if out_batches.get(vi.name) and dims and (dims[0].dim_param or not dims[0].dim_value):
            dims[0].dim_param = "batch"


def _parity(ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    r = np.asarray(ref, dtype=np.float64)
    g = np.asarray(got, dtype=np.float64)
    if r.shape != g.shape:
        return {"max_abs": float("inf"), "cosine": 0.0, "ok": False, "why": f"shape {list(g.shape)} vs TensorFlow {list(r.shape)}"}
    diff = np.abs(r - g)
    both_nan = np.isnan(r) & np.isnan(g)
    same_inf = np.isinf(r) & (r == g)
    diff = np.where(both_nan | same_inf, 0.0, diff)
    diff = np.where(np.isnan(diff), np.inf, diff)
    ok = bool(np.all(diff <= atol + rtol * np.abs(np.where(np.isfinite(r), r, 0.0))))
    rf, gf = r.ravel(), g.ravel()
    fin = np.isfinite(rf) & np.isfinite(gf)
    denom = float(np.linalg.norm(rf[fin]) * np.linalg.norm(gf[fin]))
    cosine = float(rf[fin] @ gf[fin] / denom) if denom > 0 else float(np.allclose(rf[fin], gf[fin]))
    return {"max_abs": float(diff.max()) if diff.size else 0.0, "cosine": cosine, "ok": ok}


def export_keras(
    model_or_path: Any,
    path: str | os.PathLike,
    *,
    input_shape: Any = None,
    profile: Any = "auto",
    opset: int | None = None,
    dynamic_batch: bool = True,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    seed: int = 0,
    manifest: bool = True,
) -> ExportResult:
    """Convert a Keras model or SavedModel to FP32 ONNX for a hardware profile and prove it matches TensorFlow.

    >>> res = export_keras("fashion.keras", "fashion.onnx", profile="cpu-x86-vnni")   # doctest: +SKIP
    >>> res.parity                                                                  # doctest: +SKIP
    {'output_0': {'max_abs': 5.4e-07, 'cosine': 1.0, 'ok': True, 'batches': [1, 2]}}

    ``model_or_path``: a ``keras.Model``, a ``.keras`` / ``.h5`` file, a SavedModel directory (its
    ``serving_default`` signature) or a :class:`KerasSource`. The layout is the model's own: an NHWC
    Keras CNN gives an ONNX model whose input is ``batch x H x W x C`` (NHWC kept, the user's data
    needs no transpose).
    ``input_shape`` (batch first, e.g. ``(1, 28, 28, 1)``; a list of shapes for several inputs) sets
    the batch N of the parity check and the dims the model leaves unknown; it is required when a
    non-batch dim is unknown. Non-batch dims are fixed in the ONNX model, as ``onnxq export`` does for
    PyTorch. ``opset`` defaults to the profile's ``[export] opset``. With ``dynamic_batch`` (the
    default) axis 0 of every input and output is named ``batch``. onnxruntime (CPU) and TensorFlow
    run seeded random inputs (``seed``) at batch N and 2N; max-abs and cosine are recorded per
    output. Inputs are named as the model names them (``input`` / ``input_0``... for Keras'
    generated names such as ``keras_tensor_3``), outputs by their Keras output names or signature
    keys (``output_0``... otherwise). Raises :class:`InputError` for unusable arguments and
    :class:`CheckFailed` when onnxruntime's outputs differ beyond ``atol + rtol * |tf|``; in both
    cases no file is written.
    """
    tf, tf2onnx = require_tf()
    from .runtime import resolve_profile

    t0 = time.perf_counter()
    path = Path(path)
    if path.is_dir():
        raise InputError(f"output {path} is a directory; give a file name like {path / 'model.onnx'}")
    if path.suffix != ".onnx":
        raise InputError(f"output {path} should end in .onnx")
    src_path = Path(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else None
    if src_path is not None and src_path.exists() and path.resolve() == src_path.resolve():
        raise InputError(f"output {path} is the input model; choose another -o")
    prof, _why = resolve_profile(profile)
    opset = int(opset) if opset is not None else prof.opset
    top = _max_opset(tf2onnx)
    if not 7 <= opset <= top:
        raise InputError(f"opset {opset} is out of range for tf2onnx {tf2onnx.__version__}; choose an opset between 7 and {top} "
                         f"(the profile's is {prof.opset})")
    src = load_keras(model_or_path)
    n_in = len(src.input_names)
    default_in = [n if not _GENERATED_INPUT.match(n) else None for n in src.input_names]
    default_in = default_in if all(default_in) and _usable(default_in, n_in) else _default_names("input", n_in)
    in_names = _check_names("input", input_names, n_in, default_in)
    shapes = _resolve_shapes(src, input_shape, in_names)
    batch = shapes[0][0]
    specs = [tf.TensorSpec([None if dynamic_batch else batch, *s[1:]], dt, name=n) for n, s, dt in zip(in_names, shapes, src.input_dtypes)]
    fn = tf.function(lambda *args: src.call(list(args)), input_signature=specs, autograph=False)

    rng = np.random.default_rng(seed)
    x1 = [_random(s, dt, rng) for s, dt in zip(shapes, src.input_dtypes)]
    runs = [x1]
    if dynamic_batch:
        runs.append([_random((2 * batch, *s[1:]), dt, rng) for s, dt in zip(shapes, src.input_dtypes)])
    refs = []
    keys = None
    for xs in runs:
        ref, keys = _run_tf(fn, xs, tf)
        refs.append(ref)
    n_out = len(refs[0])
    default_out = keys if _usable(keys, n_out) else (src.output_names if _usable(src.output_names, n_out) else None)
    if default_out is None or (n_out == 1 and default_out == ["output"]):
        default_out = [f"output_{i}" for i in range(n_out)]
    out_names = _check_names("output", output_names, n_out, list(default_out))

    onnx_model = _convert(fn, specs, opset, tf2onnx)
    got_opset = next((o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset:
        raise CheckFailed(f"asked tf2onnx for opset {opset} but it wrote opset {got_opset}; nothing was written")
    _set_names(onnx_model, in_names, out_names)
    # an output's axis 0 is the batch when it followed the inputs' batch at N and at 2N
    out_batches = {n: all(ref[i].ndim and ref[i].shape[0] == xs[0].shape[0] for ref, xs in zip(refs, runs)) for i, n in enumerate(out_names)}
    if dynamic_batch:
        _name_batch_axis(onnx_model, in_names, out_batches)
    onnx_model.producer_name, onnx_model.producer_version = "onnxq (tf2onnx)", f"{__version__} ({tf2onnx.__version__})"
    try:
        onnx.checker.check_model(onnx_model)
    except onnx.checker.ValidationError as e:
        raise CheckFailed(f"the converted model fails onnx.checker: {first_line(e)}; nothing was written") from e
    if needs_external_data(onnx_model):
        raise InputError("the converted model is over protobuf's 2 GB limit; onnxq export from TensorFlow supports smaller models only")
    model_bytes = onnx_model.SerializeToString()

    parity = _check_parity(model_bytes, runs, refs, in_names, out_names, prof, atol, rtol)
    with model_unit(path) as unit:  # model and manifest: both or neither
        write_model(onnx_model, unit.model)
        data = unit.seal()
        res = ExportResult.written(onnx_model, unit, data, path=path, opset=opset, input_names=in_names, output_names=out_names,
                                   parity=parity, exporter=f"{EXPORTER} (tf2onnx {tf2onnx.__version__})",
                                   dynamic_batch=dynamic_batch, profile=prof.name, atol=atol, rtol=rtol)
        res.notes.append(f"source: {src.description}" + (f", signature {SERVING!r}" if src.kind == "saved_model" else ""))
        res.notes.append("input and output layout kept as in the TensorFlow model (NHWC stays NHWC)")
        res.wall_s = time.perf_counter() - t0
        if manifest:
            res.manifest = manifest_path(path)
            unit.write_manifest(_manifest(res, prof, src, tf, tf2onnx, unit.model, data))
    return res


def _convert(fn, specs, opset: int, tf2onnx) -> onnx.ModelProto:
    log = logging.getLogger("tf2onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _quiet_stderr():
            warnings.simplefilter("ignore")
            model_proto, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=opset)
    except Exception as e:
        raise InputError(f"tf2onnx (opset {opset}) failed: {type(e).__name__}: {first_line(e)[:200]}; "
                         "a different opset may support the op, or rewrite that part of the model") from e
    finally:
        log.setLevel(level)
    return model_proto


def _check_parity(model_bytes: bytes, runs, refs, in_names, out_names, prof, atol, rtol) -> dict[str, dict[str, Any]]:
    """onnxruntime CPU vs TensorFlow at batch N (and 2N); CheckFailed names every failing output."""
    from .runtime import cpu_profile, make_session

    try:
        sess, _ = make_session(model_bytes, cpu_profile(prof), allow_fallback=True)
    except InputError as e:
        raise CheckFailed(f"{e}; nothing was written") from e
    parity: dict[str, dict[str, Any]] = {n: {"max_abs": 0.0, "cosine": 1.0, "ok": True, "batches": []} for n in out_names}
    for k, (xs, ref) in enumerate(zip(runs, refs)):
        batch = int(xs[0].shape[0]) if xs[0].ndim else 1
        try:
            got = sess.run(out_names, dict(zip(in_names, xs)))
        except Exception as e:
            if k:
                raise CheckFailed(f"the converted model does not run at batch {batch} ({first_line(e)}); the model likely "
                                  "hard-codes its batch size (e.g. a Reshape to a fixed first dim), or export with dynamic_batch=False "
                                  "(--static-batch); nothing was written") from e
            raise CheckFailed(f"onnxruntime cannot run the converted model: {first_line(e)}; nothing was written") from e
        for name, r, g in zip(out_names, ref, got):
            p = _parity(r, g, atol, rtol)
            entry = parity[name]
            entry["max_abs"] = max(entry["max_abs"], p["max_abs"])
            entry["cosine"] = min(entry["cosine"], p["cosine"])
            entry["ok"] = entry["ok"] and p["ok"]
            entry["batches"].append(batch)
            if "why" in p:
                entry["why"] = p["why"]
    bad = {n: p for n, p in parity.items() if not p["ok"]}
    if bad:
        parts = [f"{n}: max-abs {p['max_abs']:.3g}, cosine {p['cosine']:.6f}" + (f" ({p['why']})" if "why" in p else "")
                 for n, p in bad.items()]
        raise CheckFailed(
            f"onnxruntime output differs from TensorFlow beyond atol {atol:g} + rtol {rtol:g}: {'; '.join(parts)}; "
            "nothing was written (an op may convert with different semantics: try another --opset, or loosen --atol/--rtol "
            "if the gap is expected)"
        )
    return parity


def _manifest(res: ExportResult, prof, src: KerasSource, tf, tf2onnx, written: Path, data: list) -> dict[str, Any]:
    from .runtime import ort_info

    versions = {"onnxq": __version__, "tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__,
                "onnxruntime": ort_info()["version"], "numpy": np.__version__}
    with contextlib.suppress(ImportError, AttributeError):
        import keras

        versions["keras"] = keras.__version__
    return new_manifest(
        "export", res.path, written=written, data=data,
        versions=versions,
        profile={"name": prof.name, "sha256": prof.sha256, "source": prof.source},
        input={"kind": src.kind, "description": src.description, "path": str(src.path) if src.path else None},
        result=res.to_dict(),
    )
