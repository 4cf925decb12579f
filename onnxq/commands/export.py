"""onnxq export module:factory --input-shape 1x3x224x224 -o model.onnx"""

from __future__ import annotations

import argparse
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
    import importlib.util

    from ..errors import InputError
    from ..results import dumps

    if importlib.util.find_spec("torch") is None:
        from ..torch_export import TORCH_INSTALL_HINT

        raise InputError(f"onnxq export needs PyTorch, which is not installed: {TORCH_INSTALL_HINT}")
    from ..runtime import resolve_profile
    from ..torch_export import build_model, export, load_checkpoint, random_inputs

    out = Path(args.output)
    model = build_model(args.factory)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    inputs = random_inputs(args.input_shapes, args.seed)
    prof, why = resolve_profile(args.profile)
    if not args.quiet and not args.json:
        print(f"onnxq: {why}", file=sys.stderr)
    res = export(
        model, inputs, out, profile=prof, opset=args.opset, dynamic_batch=not args.static_batch,
        input_names=args.input_names, output_names=args.output_names, atol=args.atol, rtol=args.rtol,
    )
    if args.json:
        sys.stdout.write(dumps(res.to_dict()))
    else:
        print(export_table(res.to_dict()))
    return 0


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
