"""onnxq export module:factory --input-shape 1x3x224x224 -o model.onnx  |  onnxq export model.keras (or a SavedModel dir) -o model.onnx"""

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
        help="export a PyTorch or Keras/TensorFlow model to FP32 ONNX (dynamic batch) and check it against the framework",
        description=(
            "Build a torch.nn.Module from MODULE:FACTORY (a function called with no arguments, or a module instance), "
            "optionally load a state_dict, export it with the TorchScript exporter at the profile's opset with a dynamic "
            "batch axis, and check onnxruntime's outputs against PyTorch at batch N and 2N. Nothing is written when the "
            "check fails. Needs torch: pip install torch==2.13.0 (or pip install 'onnxq[torch]'). A .keras/.h5 file or a "
            "SavedModel directory is converted with tf2onnx instead (layout kept, NHWC stays NHWC) and checked against "
            "TensorFlow: pip install 'onnxq[tf]'."
        ),
        epilog="example: onnxq export examples/fashion_mnist/model.py:make_model --input-shape 1x1x28x28 "
        "--checkpoint fashion_cnn.pt -o fashion_cnn.onnx",
    )
    p.add_argument("factory", metavar="MODEL", help="PyTorch: module.name:make_model or path/to/file.py:make_model; "
                   "Keras/TensorFlow: model.keras, model.h5 or a SavedModel directory")
    p.add_argument("--input-shape", dest="input_shapes", type=_shape, action="append", metavar="DxDx...",
                   help="example input shape, batch first; repeat for each input (random normal inputs). Required for "
                   "PyTorch; for Keras only when the model leaves a non-batch dim unknown (e.g. 1x224x224x3)")
    p.add_argument("--framework", choices=["auto", "torch", "tf"], default="auto",
                   help="auto (default): a .keras/.h5 file or a directory is TensorFlow, MODULE:FACTORY PyTorch; tf makes a "
                        "MODULE:FACTORY that returns a keras.Model go through TensorFlow")
    p.add_argument("--checkpoint", metavar="FILE", help="state_dict to load (torch.save'd; a dict with 'state_dict' or 'model' also works)")
    p.add_argument("--profile", default="auto", help="profile whose [export] opset to use (default: auto)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the profile's)")
    p.add_argument("--input-names", type=_csv, metavar="A,B", help="graph input names (default: input, or input_0,input_1,...)")
    p.add_argument("--output-names", type=_csv, metavar="A,B", help="graph output names (default: output, or output_0,...)")
    p.add_argument("--static-batch", action="store_true", help="keep the example's batch size fixed (default: dynamic batch axis)")
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance, absolute (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-3, help="parity tolerance, relative to |reference output| (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random example inputs (default 0)")
    p.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically, with NAME.onnxq.json beside it)")
    add_common(p)
    p.set_defaults(func=run)


def is_tf_source(text: str) -> bool:
    """A Keras file or a directory (SavedModel) rather than MODULE:FACTORY."""
    p = Path(text)
    return p.suffix.lower() in (".keras", ".h5", ".hdf5") or p.is_dir()


def _guard(args: argparse.Namespace) -> None:
    """-o (and its manifest) may not be the source file, the factory's file or the checkpoint."""
    from .._fs import check_output
    from ..manifest import manifest_path

    src = args.factory.rsplit(":", 1)[0] if ":" in args.factory and not is_tf_source(args.factory) else args.factory
    inputs = [src, args.checkpoint]
    check_output(args.output, inputs=inputs)
    check_output(manifest_path(args.output), inputs=inputs, what="manifest")


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from ..cli import note
    from ..errors import InputError
    from ..results import dumps

    _guard(args)
    if args.framework == "tf" or (args.framework == "auto" and is_tf_source(args.factory)):
        return run_tf(args)
    if not args.input_shapes:
        raise InputError("--input-shape is required for a PyTorch MODULE:FACTORY (e.g. --input-shape 1x3x224x224)")
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
        note(f"onnxq: {why}")
    res = export(
        model, inputs, out, profile=prof, opset=args.opset, dynamic_batch=not args.static_batch,
        input_names=args.input_names, output_names=args.output_names, atol=args.atol, rtol=args.rtol,
    )
    if args.json:
        sys.stdout.write(dumps(res.to_dict()))
    else:
        print(export_table(res.to_dict()))
    return 0


def run_tf(args: argparse.Namespace) -> int:
    from ..cli import note
    from ..errors import InputError
    from ..results import dumps
    from ..runtime import resolve_profile
    from ..tf_export import export_keras

    if args.checkpoint:
        raise InputError("--checkpoint is for PyTorch factories; a .keras/.h5 file or SavedModel holds its own weights")
    shapes = args.input_shapes
    shape = None if not shapes else (shapes[0] if len(shapes) == 1 else shapes)
    source = args.factory
    if not is_tf_source(source):  # --framework tf with MODULE:FACTORY: the factory builds the keras.Model
        from ..usercode import load_object

        obj = load_object(source)
        source = obj() if callable(obj) and not hasattr(obj, "predict") else obj
    prof, why = resolve_profile(args.profile)
    if not args.quiet and not args.json:
        note(f"onnxq: {why}")
    res = export_keras(
        source, Path(args.output), input_shape=shape, profile=prof, opset=args.opset, dynamic_batch=not args.static_batch,
        input_names=args.input_names, output_names=args.output_names, atol=args.atol, rtol=args.rtol, seed=args.seed,
    )
    if args.json:
        sys.stdout.write(dumps(res.to_dict()))
    else:
        print(export_table(res.to_dict(), ref="TensorFlow"))
    return 0


def export_table(res: dict, ref: str = "torch") -> str:
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
        + tabulate(rows, headers=["output", f"max-abs vs {ref}", "cosine", "batches run", "parity"], tablefmt="github", disable_numparse=True)
    )
