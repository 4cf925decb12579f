"""onnxq sensitivity MODEL --calib C [--metric cosine|top1|sqnr|kl]"""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    from ..cli import add_common
    from ..vocab import BIAS_CORRECTION, METHODS, TARGET_METRICS
    from .quantize import add_algorithm_flags

    p = sub.add_parser(
        "sensitivity",
        help="per-node sensitivity of static INT8: how much closer to FP32 each weight node gets when kept in float",
        description=(
            "Quantize MODEL statically (the profile's recipe; nothing is written), then keep each Conv/ConvTranspose/Gemm/"
            "MatMul in float on its own and measure METRIC against FP32 on the held-out calibration samples. Prints the "
            "nodes most sensitive first: the order `onnxq quantize --target` keeps them in float."
        ),
        epilog="example: onnxq sensitivity model.onnx --calib calib.npz --metric cosine --json",
    )
    p.add_argument("model", help="FP32 .onnx model")
    p.add_argument("--calib", required=True, metavar="PATH", help=".npz keyed by input name, .npy or a directory of them")
    p.add_argument("--metric", choices=list(TARGET_METRICS), default="cosine", help="what to measure (default: cosine)")
    p.add_argument("--profile", default="auto", help="profile name, path to a .toml, or auto (default)")
    p.add_argument("--method", choices=METHODS, help="range estimator (default: profile's)")
    p.add_argument("--calib-samples", type=int, metavar="N", help="calibration samples to use (default: profile's)")
    p.add_argument("--output-name", metavar="NAME", help="model output to score (default: the first)")
    pc = p.add_mutually_exclusive_group()
    pc.add_argument("--per-channel", dest="per_channel", action="store_true", default=None, help="per-channel weight scales")
    pc.add_argument("--no-per-channel", dest="per_channel", action="store_false", help="per-tensor weight scales")
    p.add_argument("--top", type=int, default=20, metavar="K", help="rows to print (default 20; --json has all)")
    p.add_argument("--allow-fallback", action="store_true", help="measure on the available providers when the profile's are missing (marked FALLBACK)")
    add_algorithm_flags(p, BIAS_CORRECTION)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import note
    from tabulate import tabulate

    from ..ptq import sensitivity
    from ..results import dumps
    from ..runtime import resolve_profile
    from .quantize import algorithm_kwargs

    prof, why = resolve_profile(args.profile)
    if not args.quiet and not args.json:
        note(f"onnxq: {why}")
    res = sensitivity(args.model, calibration=args.calib, metric=args.metric, profile=prof, output_name=args.output_name,
                      method=args.method, calibration_samples=args.calib_samples, per_channel=args.per_channel, progress=not args.quiet and not args.json,
                      allow_fallback=args.allow_fallback, **algorithm_kwargs(args))
    if args.json:
        sys.stdout.write(dumps(res))
        return 0
    rows = [[i + 1, r["node"], r["op_type"], f"{r['score']:.5f}", f"{r['gain']:+.5f}"] for i, r in enumerate(res["sensitivity"][: args.top])]
    print(f"{args.metric} of output {res['output']!r} with every node quantized: {res['score_all_quantized']:.5f} "
          f"({res['samples']} held-out samples)")
    print(tabulate(rows, headers=["rank", "node", "op", f"{args.metric} with it in float", "gain"], tablefmt="github",
                   disable_numparse=True))
    return 0
