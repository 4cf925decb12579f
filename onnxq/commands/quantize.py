"""onnxq quantize MODEL --mode static|dynamic|fp16"""

from __future__ import annotations

import argparse
import sys


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(sub) -> None:
    from ..cli import add_common
    from ..vocab import BIAS_CORRECTION, METHODS, MODES, TARGET_METRICS, WEIGHT_TYPES

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
    p.add_argument("--method", choices=METHODS, help="range estimator (default: profile's): minmax/entropy/percentile over "
                   "the whole stream, or mean_minmax/mean_percentile of each sample's own statistics")
    p.add_argument("--percentile", type=float, help="percentile for --method percentile / mean_percentile (default: profile's)")
    pc = p.add_mutually_exclusive_group()
    pc.add_argument("--per-channel", dest="per_channel", action="store_true", default=None, help="per-channel weight scales")
    pc.add_argument("--no-per-channel", dest="per_channel", action="store_false", help="per-tensor weight scales")
    p.add_argument("--weight-type", choices=WEIGHT_TYPES, help="weight type (int4 needs opset 21; size, not CPU speed)")
    p.add_argument("--op-types", type=_csv, metavar="A,B", help="quantize only these op types (default: profile's; auto restricts transformers to MatMul,Gemm)")
    p.add_argument("--exclude-op-types", type=_csv, metavar="A,B", help="keep these op types in float")
    p.add_argument("--exclude-nodes", type=_csv, metavar="N1,N2", help="keep these node names in float")
    add_algorithm_flags(p, BIAS_CORRECTION)
    p.add_argument("--target", metavar="METRIC=VALUE",
                   help="keep the most sensitive nodes in float until METRIC reaches VALUE on the held-out samples ("
                   + ", ".join(TARGET_METRICS) + "; e.g. cosine=0.995); exit 1, best model written, when it cannot")
    p.add_argument("--output-name", metavar="NAME", help="model output --target scores (default: the first)")
    p.add_argument("--allow-fallback", action="store_true",
                   help="quantize for a profile whose providers this host lacks, validating on what is available (marked FALLBACK)")
    p.add_argument("-o", "--output", help="output path (default: beside the input; never an input of the run)")
    add_common(p)
    p.set_defaults(func=run)


def _alpha(text: str):
    if text in ("auto", "off"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give auto, off or an alpha in (0, 1), got {text!r}") from None


def add_algorithm_flags(p, bias_choices) -> None:
    """--bias-correction, --smoothquant, --cle/--no-cle (static mode; default: the profile's)."""
    p.add_argument("--bias-correction", choices=bias_choices, help="shift biases by the mean error quantization causes "
                   "(fast: per layer; full: measured on the quantized model); default: the profile's")
    p.add_argument("--smoothquant", type=_alpha, metavar="auto|ALPHA|off",
                   help="smooth MatMul/Gemm inputs produced by LayerNorm (auto: alpha searched on held-out samples)")
    cle = p.add_mutually_exclusive_group()
    cle.add_argument("--cle", dest="cle", action="store_true", default=None, help="cross-layer equalization of Conv pairs")
    cle.add_argument("--no-cle", dest="cle", action="store_false", help="no cross-layer equalization")


def algorithm_kwargs(args) -> dict:
    sq = getattr(args, "smoothquant", None)
    return {"bias_correction": args.bias_correction, "cle": args.cle,
            "smoothquant": False if sq == "off" else sq}


def run(args: argparse.Namespace) -> int:
    from ..cli import note
    from ..errors import InputError
    from ..ptq import quantize
    from ..runtime import resolve_profile
    from ..report import quant_summary_table
    from ..results import dumps

    if args.calib_random is not None and args.calib_random < 1:
        raise InputError(f"--calib-random takes a positive number of random samples (e.g. 64), got {args.calib_random}")
    if args.calib and args.calib_random:
        raise InputError("give either --calib or --calib-random, not both")
    prof, why = resolve_profile(args.profile)
    if not args.quiet:
        note(f"onnxq: {why}")
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
        target=args.target,
        output_name=args.output_name,
        allow_fallback=args.allow_fallback,
        progress=not args.quiet and not args.json,
        **algorithm_kwargs(args),
        **({"percentile": args.percentile} if args.percentile is not None else {}),
    )
    if args.json:
        sys.stdout.write(dumps(res.to_dict()))
    else:
        for w in res.warnings:
            print(f"onnxq: warning: {w}", file=sys.stderr)
        print(quant_summary_table(res.to_dict()))
    target = res.calibration.get("algorithms", {}).get("target")
    if target and target.get("reached") is False:
        print(f"onnxq: target {target['metric']}={target['value']:g} NOT reached on {target['samples']} held-out samples: best "
              f"{target['score']:.5f} with {len(target['float_nodes'])} node(s) in float; that model was written", file=sys.stderr)
        return 1
    return 0
