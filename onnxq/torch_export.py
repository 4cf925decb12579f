"""PyTorch -> FP32 ONNX, with the batch axis dynamic and a parity check against PyTorch.

>>> import torch, onnxq
>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 26 * 26, 10))
>>> res = onnxq.export(net, torch.randn(1, 1, 28, 28), "net.onnx")      # doctest: +SKIP
>>> res.opset, res.parity["output"]["max_abs"] < 1e-4                    # doctest: +SKIP
(17, True)

The TorchScript exporter is used on purpose (``dynamo=False``): in torch 2.13 the new default
exporter raised opset 17 to 18 without a word, fixed the batch size and wrote a side ``.onnx.data``
file even for small models (DESIGN.md section 5). The written model is checked with
``onnx.checker`` and run in onnxruntime (CPU) at the example's batch size and at twice it; outputs
that differ from PyTorch beyond ``atol + rtol * |torch|`` raise :class:`CheckFailed` and nothing is
written. This module and ``qat`` are the only ones that import torch, and only inside functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import __version__
from .errors import CheckFailed, InputError, first_line
from .manifest import manifest_path, new_manifest
from .modelio import model_unit, needs_external_data, write_model

__all__ = ["TORCH_INSTALL_HINT", "ExportResult", "export", "require_torch", "build_model", "load_checkpoint", "random_inputs"]

TORCH_INSTALL_HINT = "pip install torch==2.13.0 (or pip install 'onnxq[torch]'); a plain 'pip install torch' pulls a multi-GB CUDA build"
EXPORTER = "torch.onnx.export (TorchScript, dynamo=False)"


@dataclass
class ExportResult:
    """What :func:`export` wrote and measured (also written as ``NAME.onnxq.json`` beside the model)."""

    path: Path
    opset: int
    input_names: list[str]
    output_names: list[str]
    input_shapes: dict[str, list[int | str]]
    output_shapes: dict[str, list[int | str]]
    parity: dict[str, dict[str, Any]]
    exporter: str
    dynamic_batch: bool
    profile: str
    atol: float
    rtol: float
    size: int
    wall_s: float
    manifest: Path | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def written(cls, onnx_model: onnx.ModelProto, unit: Any, data: list[dict], **fields: Any) -> "ExportResult":
        """The result for ``onnx_model`` as written into a sealed model unit: shapes read from its graph, size
        including its external data; ``fields`` give the rest (``wall_s`` is set by the caller)."""
        return cls(input_shapes={vi.name: _dims(vi) for vi in onnx_model.graph.input if vi.name in fields["input_names"]},
                   output_shapes={vi.name: _dims(vi) for vi in onnx_model.graph.output},
                   size=unit.model.stat().st_size + sum(d["bytes"] for d in data), wall_s=0.0, **fields)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        d["manifest"] = str(self.manifest) if self.manifest else None
        return d


def require_torch():
    """Import torch, or raise InputError with the one-line install hint."""
    try:
        import torch
    except ImportError as e:
        raise InputError(f"this needs PyTorch, which is not installed: {TORCH_INSTALL_HINT}") from e
    return torch


# ---------------------------------------------------------------------------------------------
# Export


def _as_tuple(example_inputs: Any, torch) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise InputError(
        f"example_inputs must be a torch.Tensor or a tuple of tensors (one per forward() argument), got {type(example_inputs).__name__}"
    )


def _flatten_outputs(out: Any, torch) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
        return list(out)
    raise InputError(
        f"the model returns {type(out).__name__}; onnxq export supports a tensor or a tuple/list of tensors: wrap the model "
        "so forward() returns those"
    )


def _shape_text(t) -> str:
    return "x".join(str(d) for d in t.shape)


def _run_torch(model, inputs: tuple, torch) -> list[np.ndarray]:
    with torch.no_grad():
        try:
            out = model(*inputs)
        except Exception as e:
            shapes = ", ".join(_shape_text(t) for t in inputs)
            raise InputError(
                f"the model failed on example inputs of shape {shapes}: {type(e).__name__}: {first_line(e)}; "
                "give the shape(s) forward() expects (batch first)"
            ) from e
    return [t.detach().cpu().numpy() for t in _flatten_outputs(out, torch)]


def _default_names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


def _check_names(kind: str, names: list[str] | None, n: int, default: list[str]) -> list[str]:
    if names is None:
        return default
    names = list(names)
    if len(names) != n:
        raise InputError(f"{len(names)} {kind} name(s) given ({', '.join(names)}) but the model has {n} {kind}(s); give exactly {n}")
    if len(set(names)) != n:
        raise InputError(f"{kind} names must be distinct, got {names}")
    return names


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else int(d.dim_value) for d in vi.type.tensor_type.shape.dim]


def _parity(ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    r = np.asarray(ref, dtype=np.float64)
    g = np.asarray(got, dtype=np.float64)
    if r.shape != g.shape:
        return {"max_abs": float("inf"), "cosine": 0.0, "ok": False, "why": f"shape {list(g.shape)} vs PyTorch {list(r.shape)}"}
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


def _ort_outputs(model_bytes: bytes, feeds: dict[str, np.ndarray], profile) -> list[np.ndarray]:
    from .runtime import cpu_profile, make_session

    sess, _ = make_session(model_bytes, cpu_profile(profile), allow_fallback=True)
    return sess.run(None, feeds)


def export(
    model: Any,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    profile: Any = "auto",
    opset: int | None = None,
    dynamic_batch: bool = True,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    manifest: bool = True,
) -> ExportResult:
    """Export an ``nn.Module`` to FP32 ONNX for a hardware profile and prove it matches PyTorch.

    >>> res = export(net, torch.randn(1, 3, 224, 224), "net.onnx", profile="cpu-x86-vnni")  # doctest: +SKIP
    >>> res.parity                                                                          # doctest: +SKIP
    {'output': {'max_abs': 2.1e-06, 'cosine': 1.0, 'ok': True, 'batches': [1, 2]}}

    The model is put in ``eval()`` for the export and returned to its previous mode afterwards.
    ``opset`` defaults to the profile's ``[export] opset``. With ``dynamic_batch`` (the default)
    axis 0 of every input and output is named ``batch``, and the check also runs the model at
    twice the example's batch. Raises :class:`InputError` for unusable arguments and
    :class:`CheckFailed` when onnxruntime's outputs differ beyond ``atol + rtol * |torch|``; in
    both cases no file is written.
    """
    torch = require_torch()
    from .runtime import resolve_profile

    t0 = time.perf_counter()
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}; build the module first (call the factory)")
    inputs = _as_tuple(example_inputs, torch)
    prof, _why = resolve_profile(profile)
    opset = int(opset) if opset is not None else prof.opset
    if not 7 <= opset <= 23:
        raise InputError(f"opset {opset} is out of range; choose an opset between 7 and 23 (the profile's is {prof.opset})")
    path = Path(path)
    if path.is_dir():
        raise InputError(f"output {path} is a directory; give a file name like {path / 'model.onnx'}")
    if path.suffix != ".onnx":
        raise InputError(f"output {path} should end in .onnx")

    was_training = model.training
    model.eval()
    try:
        ref1 = _run_torch(model, inputs, torch)
        in_names = _check_names("input", input_names, len(inputs), _default_names("input", len(inputs)))
        out_names = _check_names("output", output_names, len(ref1), _default_names("output", len(ref1)))
        if dynamic_batch:
            doubled = tuple(torch.cat([t, t], 0) if t.dim() else t for t in inputs)
            ref2 = _run_torch(model, doubled, torch)
            dynamic_axes = {n: {0: "batch"} for n, t in zip(in_names, inputs) if t.dim()}
            dynamic_axes.update({n: {0: "batch"} for n, r in zip(out_names, ref1) if r.ndim})
        else:
            doubled, ref2, dynamic_axes = None, None, None
        with tempfile.TemporaryDirectory(prefix="onnxq.export.") as tmpd:
            raw = Path(tmpd) / "model.onnx"
            _torch_export(model, inputs, raw, opset, in_names, out_names, dynamic_axes, torch)
            onnx_model = onnx.load(str(raw))  # external data (models > 2 GB) is read from tmpd here
    finally:
        model.train(was_training)

    got_opset = next((o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset:
        raise CheckFailed(f"asked the exporter for opset {opset} but it wrote opset {got_opset}; nothing was written")
    try:
        onnx.checker.check_model(onnx_model)
    except onnx.checker.ValidationError as e:
        raise CheckFailed(f"the exported model fails onnx.checker: {first_line(e)}; nothing was written") from e
    model_bytes = None if needs_external_data(onnx_model) else onnx_model.SerializeToString()

    parity = _check_parity(model_bytes, onnx_model, path, inputs, ref1, doubled, ref2, in_names, out_names, prof, atol, rtol)
    with model_unit(path) as unit:  # model, external data and manifest: all or nothing
        write_model(onnx_model, unit.model)
        data = unit.seal()
        res = ExportResult.written(onnx_model, unit, data, path=path, opset=opset, input_names=in_names, output_names=out_names,
                                   parity=parity, exporter=EXPORTER, dynamic_batch=dynamic_batch, profile=prof.name,
                                   atol=atol, rtol=rtol)
        if model_bytes is None:
            res.notes.append("model over 2 GB: parity ran from a temporary file and weights went to a side .data file")
        res.wall_s = time.perf_counter() - t0
        if manifest:
            res.manifest = manifest_path(path)
            unit.write_manifest(_manifest(res, prof, torch, unit.model, data))
    return res


def _torch_export(model, inputs, out: Path, opset, in_names, out_names, dynamic_axes, torch) -> None:
    # The legacy exporter warns that it is deprecated on every call, and its C++ side may print
    # shape-inference chatter: neither helps the user, so both are silenced. Real failures raise.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, inputs, str(out), dynamo=False, opset_version=opset, input_names=in_names,
                output_names=out_names, dynamic_axes=dynamic_axes, do_constant_folding=True,
            )
        except Exception as e:
            raise InputError(
                f"torch.onnx.export (TorchScript, opset {opset}) failed: {type(e).__name__}: {first_line(e)}; "
                "a different --opset may support the op, or rewrite that part of the model"
            ) from e


def _check_parity(model_bytes, onnx_model, path, inputs, ref1, doubled, ref2, in_names, out_names, prof, atol, rtol):
    """onnxruntime CPU vs PyTorch at batch N (and 2N); CheckFailed names every failing output."""
    with tempfile.TemporaryDirectory(prefix="onnxq.parity.") as tmpd:
        src = model_bytes
        if src is None:  # > 2 GB: onnxruntime loads it from a file with its external data
            big = Path(tmpd) / "model.onnx"
            write_model(onnx_model, big)
            src = str(big)
        runs = [(inputs, ref1)] + ([(doubled, ref2)] if doubled is not None else [])
        parity: dict[str, dict[str, Any]] = {n: {"max_abs": 0.0, "cosine": 1.0, "ok": True, "batches": []} for n in out_names}
        for feed_tensors, ref in runs:
            feeds = {n: t.detach().cpu().numpy() for n, t in zip(in_names, feed_tensors)}
            batch = int(feed_tensors[0].shape[0]) if feed_tensors[0].dim() else 1
            try:
                got = _ort_outputs(src, feeds, prof)
            except Exception as e:
                if feed_tensors is doubled:
                    raise CheckFailed(
                        f"the exported model does not run at batch {batch} ({first_line(e)}); the model likely hard-codes its "
                        "batch size (e.g. x.view(1, -1): use x.flatten(1)), or export with dynamic_batch=False "
                        "(--static-batch); nothing was written"
                    ) from e
                raise CheckFailed(f"onnxruntime cannot run the exported model: {first_line(e)}; nothing was written") from e
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
        parts = [
            f"{n}: max-abs {p['max_abs']:.3g}, cosine {p['cosine']:.6f}" + (f" ({p['why']})" if "why" in p else "")
            for n, p in bad.items()
        ]
        raise CheckFailed(
            f"onnxruntime output differs from PyTorch beyond atol {atol:g} + rtol {rtol:g}: {'; '.join(parts)}; "
            "nothing was written (an op may export with different semantics: try another --opset, or loosen --atol/--rtol if the gap is expected)"
        )
    return parity


def _manifest(res: ExportResult, prof, torch, written: Path, data: list) -> dict[str, Any]:
    from .runtime import ort_info

    return new_manifest(
        "export", res.path, written=written, data=data,
        versions={"onnxq": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": ort_info()["version"], "numpy": np.__version__},
        profile={"name": prof.name, "sha256": prof.sha256, "source": prof.source},
        result=res.to_dict(),
    )


# ---------------------------------------------------------------------------------------------
# `onnxq export MODULE:FACTORY`: the model, its checkpoint and random example inputs


def random_inputs(shapes, seed: int = 0) -> tuple:
    """Seeded ``torch.randn`` example inputs of the given shapes (batch first)."""
    torch = require_torch()
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*s, generator=gen) for s in shapes)


def build_model(spec: str):
    """Resolve MODULE:FACTORY to an nn.Module (calling the factory with no arguments)."""
    torch = require_torch()
    from .usercode import load_object

    obj = load_object(spec)
    if isinstance(obj, torch.nn.Module):
        return obj
    if not callable(obj):
        raise InputError(f"{spec} is a {type(obj).__name__}, not a factory function or an nn.Module")
    try:
        model = obj()
    except Exception as e:
        raise InputError(f"calling {spec}() failed: {type(e).__name__}: {first_line(e)}; the factory must build the model with no arguments") from e
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_checkpoint(model, path: str | os.PathLike) -> None:
    """Load a state_dict (or {'state_dict': ...} / {'model': ...}) strictly, with one-line errors."""
    torch = require_torch()

    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint {p} does not exist; check the path")
    try:
        obj = torch.load(p, weights_only=True, map_location="cpu")
    except Exception as e:
        raise InputError(f"cannot read checkpoint {p} with torch.load(weights_only=True): {first_line(e)[:200]}") from e
    if isinstance(obj, dict) and not _is_state_dict(obj):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise InputError(f"checkpoint {p} holds a {type(obj).__name__}, not a state_dict; save it with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    if own and not any(k in own for k in obj) and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}  # saved from DataParallel/DDP
    missing = [k for k in own if k not in obj]
    unexpected = [k for k in obj if k not in own]
    mismatched = [f"{k} {list(obj[k].shape)} vs {list(own[k].shape)}" for k in own if k in obj and tuple(obj[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                parts.append(f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})")
        raise InputError(f"checkpoint {p} does not fit the model: {'; '.join(parts)}; is it from another model or factory?")
    model.load_state_dict(obj, strict=True)


def _is_state_dict(obj: dict) -> bool:
    import torch

    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
