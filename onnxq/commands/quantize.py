"""onnxq quantize MODEL --mode static|dynamic|fp16"""

from __future__ import annotations

import argparse
import sys


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(sub) -> None:
    from ..cli import add_common
    from ..vocab import METHODS, MODES, WEIGHT_TYPES

    p = sub.add_parser(
        "quantize",
        help="post-training quantization (static QDQ, dynamic, fp16) for a hardware profile",
        description=(
            "Quantize an FP32 ONNX model. Defaults come from the hardware profile; flags override them. "
            "Writes NAME.int8.onnx (static), NAME.int8-dynamic.onnx or NAME.fp16.onnx beside the input, plus "
            "a NAME...onnxq.json manifest, and prints size, op and fidelity numbers."
        ),
        epilog="example: onnxq quantize model.onnx --mode static --calib calib.npz --profile cpu-x86-vnni",
    )
    p.add_argument("model", help="FP32 .onnx model")
    p.add_argument("--mode", choices=MODES, default=None, help="default: the profile's default mode (static on CPU profiles)")
    p.add_argument("--profile", default="auto", help="profile name, path to a .toml, or auto (default): see `onnxq profiles`")
    p.add_argument("--calib", metavar="PATH", help=".npz keyed by input name, .npy (single input) or a directory of them")
    p.add_argument("--calib-samples", type=int, metavar="N", help="calibration samples to use (default: profile's)")
    p.add_argument("--calib-random", type=int, metavar="N", help="calibrate on N random samples: smoke tests only, NOT representative")
    p.add_argument("--method", choices=METHODS, help="calibration method (default: profile's)")
    p.add_argument("--percentile", type=float, help="percentile for --method percentile (default: profile's)")
    pc = p.add_mutually_exclusive_group()
    pc.add_argument("--per-channel", dest="per_channel", action="store_true", default=None, help="per-channel weight scales")
    pc.add_argument("--no-per-channel", dest="per_channel", action="store_false", help="per-tensor weight scales")
    p.add_argument("--weight-type", choices=WEIGHT_TYPES, help="weight type (int4 needs opset 21; size, not CPU speed)")
    p.add_argument("--op-types", type=_csv, metavar="A,B", help="quantize only these op types (default: profile's; auto restricts transformers to MatMul,Gemm)")
    p.add_argument("--exclude-op-types", type=_csv, metavar="A,B", help="keep these op types in float")
    p.add_argument("--exclude-nodes", type=_csv, metavar="N1,N2", help="keep these node names in float")
    p.add_argument("-o", "--output", help="output path (default: beside the input; never the input itself)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..ptq import quantize
    from ..runtime import resolve_profile
    from ..report import quant_summary_table
    from ..results import dumps

    if args.calib and args.calib_random:
        raise InputError("give either --calib or --calib-random, not both")
    prof, why = resolve_profile(args.profile)
    if not args.quiet:
        print(f"onnxq: {why}", file=sys.stderr)
    res = quantize(
        args.model,
        mode=args.mode,
        profile=prof,
        calibration=args.calib,
        calib_random=args.calib_random,
        output=args.output,
        method=args.method,
        per_channel=args.per_channel,
        op_types=args.op_types,
        exclude_op_types=args.exclude_op_types,
        exclude_nodes=args.exclude_nodes,
        calibration_samples=args.calib_samples,
        weight_type=args.weight_type,
        progress=not args.quiet and not args.json,
        **({"percentile": args.percentile} if args.percentile is not None else {}),
    )
    if args.json:
        sys.stdout.write(dumps(res.to_dict()))
    else:
        for w in res.warnings:
            print(f"onnxq: warning: {w}", file=sys.stderr)
        print(quant_summary_table(res.to_dict()))
    return 0
