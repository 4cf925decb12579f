"""onnxq export module:factory --input-shape 1x3x224x224 -o model.onnx"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 1x3x224x224") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: every dimension must be a positive integer (e.g. 1x3x224x224)")
    return dims


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(sub) -> None:
    from ..cli import add_common

    p = sub.add_parser(
        "export",
        help="export a PyTorch model to FP32 ONNX (dynamic batch) and check it against PyTorch",
        description=(
            "Build a torch.nn.Module from MODULE:FACTORY (a function called with no arguments, or a module instance), "
            "optionally load a state_dict, export it with the TorchScript exporter at the profile's opset with a dynamic "
            "batch axis, and check onnxruntime's outputs against PyTorch at batch N and 2N. Nothing is written when the "
            "check fails. Needs torch: pip install torch==2.13.0 (or pip install 'onnxq[torch]')."
        ),
        epilog="example: onnxq export examples/fashion_mnist/model.py:make_model --input-shape 1x1x28x28 "
        "--checkpoint fashion_cnn.pt -o fashion_cnn.onnx",
    )
    p.add_argument("factory", metavar="MODULE:FACTORY", help="module.name:make_model or path/to/file.py:make_model")
    p.add_argument("--input-shape", dest="input_shapes", type=_shape, action="append", required=True, metavar="DxDx...",
                   help="example input shape, batch first; repeat for each forward() argument (inputs are torch.randn)")
    p.add_argument("--checkpoint", metavar="FILE", help="state_dict to load (torch.save'd; a dict with 'state_dict' or 'model' also works)")
    p.add_argument("--profile", default="auto", help="profile whose [export] opset to use (default: auto)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the profile's)")
    p.add_argument("--input-names", type=_csv, metavar="A,B", help="graph input names (default: input, or input_0,input_1,...)")
    p.add_argument("--output-names", type=_csv, metavar="A,B", help="graph output names (default: output, or output_0,...)")
    p.add_argument("--static-batch", action="store_true", help="keep the example's batch size fixed (default: dynamic batch axis)")
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance, absolute (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-3, help="parity tolerance, relative to |torch output| (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random example inputs (default 0)")
    p.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically, with NAME.onnxq.json beside it)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..export import TORCH_INSTALL_HINT

    try:
        import torch
    except ImportError:
        raise InputError(f"onnxq export needs PyTorch, which is not installed: {TORCH_INSTALL_HINT}") from None
    from ..export import export
    from ..ptq import resolve_profile

    out = Path(args.output)
    model = build_model(args.factory, torch)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, torch)
    gen = torch.Generator().manual_seed(args.seed)
    inputs = tuple(torch.randn(*s, generator=gen) for s in args.input_shapes)
    prof, why = resolve_profile(args.profile)
    if not args.quiet and not args.json:
        print(f"onnxq: {why}", file=sys.stderr)
    res = export(
        model, inputs, out, profile=prof, opset=args.opset, dynamic_batch=not args.static_batch,
        input_names=args.input_names, output_names=args.output_names, atol=args.atol, rtol=args.rtol,
    )
    if args.json:
        print(json.dumps(res.to_dict(), default=str, indent=2))
    else:
        print(export_table(res.to_dict()))
    return 0


def build_model(spec: str, torch):
    """Resolve MODULE:FACTORY to an nn.Module (calling the factory with no arguments)."""
    from ..errors import InputError
    from ..export import load_factory

    obj = load_factory(spec)
    if isinstance(obj, torch.nn.Module):
        return obj
    if not callable(obj):
        raise InputError(f"{spec} is a {type(obj).__name__}, not a factory function or an nn.Module")
    try:
        model = obj()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(f"calling {spec}() failed: {type(e).__name__}: {first}; the factory must build the model with no arguments") from e
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_checkpoint(model, path: str, torch) -> None:
    """Load a state_dict (or {'state_dict': ...} / {'model': ...}) strictly, with one-line errors."""
    from ..errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint {p} does not exist; check the path")
    try:
        obj = torch.load(p, weights_only=True, map_location="cpu")
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"cannot read checkpoint {p} with torch.load(weights_only=True): {first[:200]}") from e
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
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def export_table(res: dict) -> str:
    from tabulate import tabulate

    from ..report import human_size

    shapes = lambda d: ", ".join(f"{k} {'x'.join(str(x) for x in v)}" for k, v in d.items())  # noqa: E731
    head = [
        ["output", res["path"]],
        ["exporter", f"{res['exporter']}, opset {res['opset']}"],
        ["profile", res["profile"]],
        ["inputs", shapes(res["input_shapes"])],
        ["outputs", shapes(res["output_shapes"])],
        ["size", human_size(res["size"])],
        ["wall time", f"{res['wall_s']:.2f} s"],
    ]
    rows = [
        [n, f"{p['max_abs']:.3g}", f"{p['cosine']:.6f}", ", ".join(str(b) for b in p["batches"]), "ok" if p["ok"] else "FAIL"]
        for n, p in res["parity"].items()
    ]
    return (
        tabulate(head, tablefmt="simple", disable_numparse=True)
        + "\n\n"
        + tabulate(rows, headers=["output", "max-abs vs torch", "cosine", "batches run", "parity"], tablefmt="github", disable_numparse=True)
    )
