"""Quantize an ONNX model with OpenVINO NNCF (ONNX backend): a peer for onnxq's benchmarks.

Run it with the NNCF venv's python, never onnxq's (NNCF is not a dependency of onnxq):

    python -m venv /work/venvs/nncf
    /work/venvs/nncf/bin/pip install "nncf==3.4.*" onnx "onnxruntime==1.32.*" numpy
    /work/venvs/nncf/bin/python benchmarks/peers/nncf_quantize.py \
        --model IN.onnx --calib CALIB.npz --out OUT.onnx --preset default [--subset-size N]

CALIB.npz holds one array per model input (named as the input), samples on axis 0. Each sample
becomes one dataset item of batch size 1 (``nncf.Dataset`` over a list of per-sample dicts), so
NNCF's MEAN_MINMAX activation ranges are the mean of per-sample minima/maxima, as NNCF intends.
A model whose batch dimension is fixed to B > 1 gets items of B samples and batchwise_statistics=True
(per-sample statistics inside each batch); see NOTES below.

Presets:
  default         nncf.quantize defaults: preset PERFORMANCE (symmetric), fast bias correction
  full_bc         fast_bias_correction=False (full BiasCorrection; NNCF then uses 20% of the subset for it)
  transformer     model_type=TRANSFORMER with SmoothQuant switched OFF (smooth_quant_alphas all -1);
                  preset defaults to MIXED for transformers
  transformer_sq  model_type=TRANSFORMER with SmoothQuant ON (matmul alpha --sq-alpha, default 0.95,
                  NNCF 3.4's own default; convolution -1); this is what nncf.quantize(model_type=TRANSFORMER)
                  does without advanced parameters

Prints one JSON line: {"ok", "wall_s" (nncf.quantize only), "load_s", "save_s", "options", ...}.
The output is written to OUT.onnx.tmp-<pid> next to OUT and renamed into place.

NOTES (NNCF 3.4 source, nncf/quantization/...):
- subset_size counts dataset *items* (inference calls), not samples; this script takes samples and
  converts. nncf.quantize's own default is 300; ours is the number of calibration samples.
- batchwise_statistics=None is switched on only if the data source has a ``batch_size`` attribute
  (a torch DataLoader); a list of batch-8 dicts would silently give the mean of per-*batch* extremes
  (wider ranges than batch 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

os.environ.setdefault("NNCF_CI", "1")  # NNCF 3.4: the only effect is a stub instead of openvino-telemetry

import numpy as np  # noqa: E402
import onnx  # noqa: E402

PRESETS = ("default", "full_bc", "transformer", "transformer_sq")


def model_inputs(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return {i.name: i for i in model.graph.input if i.name not in inits}


def fixed_batch(vi: onnx.ValueInfoProto) -> int | None:
    """The input's dim 0 if it is a fixed integer, else None."""
    dims = vi.type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
        return int(dims[0].dim_value)
    return None


def load_calib(path: str, inputs: dict[str, onnx.ValueInfoProto]) -> dict[str, np.ndarray]:
    data = np.load(path)
    missing = [n for n in inputs if n not in data.files]
    if missing:
        raise SystemExit(f"{path}: no array for model input(s) {missing}; arrays: {data.files}")
    arrays = {}
    for name, vi in inputs.items():
        a = data[name]
        want = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        arrays[name] = a.astype(want, copy=False)
    counts = {a.shape[0] for a in arrays.values()}
    if len(counts) != 1:
        raise SystemExit(f"{path}: inputs have different sample counts {sorted(counts)}")
    return arrays


def build_items(arrays: dict[str, np.ndarray], batch: int, n: int) -> list[dict[str, np.ndarray]]:
    """Items of `batch` consecutive samples (a trailing partial batch is dropped when batch > 1)."""
    stop = n if batch == 1 else (n // batch) * batch
    return [{k: np.ascontiguousarray(v[i: i + batch]) for k, v in arrays.items()} for i in range(0, stop, batch)]


def quantize_kwargs(nncf, preset: str, sq_alpha: float, batchwise: bool | None, qpreset: str | None = None,
                    per_tensor_activations: bool = False) -> tuple[dict, dict]:
    """(nncf.quantize keyword arguments, JSON-able description of them)."""
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, AdvancedSmoothQuantParameters,
                                                       QuantizationParameters)

    kw: dict = {}
    # preset is left to NNCF (None): PERFORMANCE, or MIXED when model_type is TRANSFORMER
    desc: dict = {"preset": "PERFORMANCE (nncf default)", "fast_bias_correction": True, "model_type": None}
    adv = AdvancedQuantizationParameters()
    if preset == "full_bc":
        kw["fast_bias_correction"] = False
        desc["fast_bias_correction"] = False
    elif preset in ("transformer", "transformer_sq"):
        kw["model_type"] = nncf.ModelType.TRANSFORMER
        desc["model_type"] = "TRANSFORMER"
        desc["preset"] = "MIXED (nncf default for TRANSFORMER)"
        if preset == "transformer":
            adv.smooth_quant_alphas = AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)
        else:
            adv.smooth_quant_alphas = AdvancedSmoothQuantParameters(convolution=-1, matmul=sq_alpha)
        desc["smooth_quant_alphas"] = {"convolution": adv.smooth_quant_alphas.convolution,
                                       "matmul": adv.smooth_quant_alphas.matmul}
    if qpreset:  # override of nncf.QuantizationPreset (not one of the four named presets)
        kw["preset"] = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}[qpreset]
        desc["preset"] = qpreset.upper()
    if per_tensor_activations:
        adv.activations_quantization_params = QuantizationParameters(per_channel=False)
    desc["per_tensor_activations"] = per_tensor_activations
    if batchwise is not None:
        adv.batchwise_statistics = batchwise
    desc["batchwise_statistics"] = adv.batchwise_statistics
    kw["advanced_parameters"] = adv
    return kw, desc


def save_atomic(model: onnx.ModelProto, out: str) -> None:
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        if model.ByteSize() >= 2**31 - 1:
            raise SystemExit("quantized model exceeds 2 GiB; external-data output is not supported here")
        onnx.save(model, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--calib", required=True, help=".npz with one array per model input, samples on axis 0")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", choices=PRESETS, default="default")
    p.add_argument("--subset-size", type=int, default=None, help="calibration samples to use (default: all)")
    p.add_argument("--sq-alpha", type=float, default=0.95, help="SmoothQuant MatMul alpha for transformer_sq")
    p.add_argument("--batch-size", type=int, default=None,
                   help="samples per dataset item (default 1, or the model's fixed batch dimension)")
    p.add_argument("--qpreset", choices=("performance", "mixed"), default=None,
                   help="override nncf.QuantizationPreset (MIXED = asymmetric uint8 activations)")
    p.add_argument("--per-tensor-activations", action="store_true",
                   help="activations_quantization_params=QuantizationParameters(per_channel=False); NNCF otherwise "
                        "quantizes depthwise-conv inputs per channel, which ORT's QLinearConv cannot take")
    p.add_argument("--verbose", action="store_true", help="keep NNCF's progress bars and INFO logs")
    a = p.parse_args(argv)

    import nncf
    import onnxruntime

    if not a.verbose:
        import logging

        nncf.set_log_level(logging.WARNING)
    t0 = time.perf_counter()
    model = onnx.load(a.model)
    inputs = model_inputs(model)
    arrays = load_calib(a.calib, inputs)
    n_avail = next(iter(arrays.values())).shape[0]
    n = min(a.subset_size or n_avail, n_avail)
    fixed = {fixed_batch(vi) for vi in inputs.values()} - {None}
    if len(fixed) > 1:
        raise SystemExit(f"inputs have different fixed batch sizes {sorted(fixed)}")
    batch = a.batch_size or (fixed.pop() if fixed else 1)
    items = build_items(arrays, batch, n)
    load_s = time.perf_counter() - t0

    kw, desc = quantize_kwargs(nncf, a.preset, a.sq_alpha, True if batch > 1 else None, a.qpreset,
                              a.per_tensor_activations)
    # NNCF's rich progress bars write to stdout: send fd 1 to stderr meanwhile, so stdout is the JSON line only
    sys.stdout.flush()
    saved_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            qmodel = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), **kw)
            wall_s = time.perf_counter() - t0
    finally:
        sys.stdout.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
    caught = sorted({f"{x.category.__name__}: {str(x.message).splitlines()[0][:200]}" for x in w})

    t0 = time.perf_counter()
    save_atomic(qmodel, a.out)
    save_s = time.perf_counter() - t0

    ops: dict[str, int] = {}
    for node in qmodel.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    print(json.dumps({
        "ok": True, "tool": "nncf", "preset": a.preset, "wall_s": round(wall_s, 3), "load_s": round(load_s, 3),
        "save_s": round(save_s, 3), "model": a.model, "out": a.out, "calib": a.calib,
        "samples": len(items) * batch, "batch_size": batch, "subset_size_items": len(items),
        "options": desc, "warnings": caught,
        "quantize_linear": ops.get("QuantizeLinear", 0), "dequantize_linear": ops.get("DequantizeLinear", 0),
        "versions": {"nncf": nncf.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0]},
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
