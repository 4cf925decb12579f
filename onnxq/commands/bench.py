"""onnxq bench MODEL [MODEL ...] --profile P [--batch 1,32] [--threads N] [--warmup W] [--runs R]"""

from __future__ import annotations

import argparse
import sys


def _ints(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,32, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return vals


def register(sub) -> None:
    from ..cli import add_common

    p = sub.add_parser(
        "bench",
        help="latency of one or more models on a profile's providers (interleaved, with host facts)",
        description=(
            "Measure median/p90/p99 latency and throughput of ONNX models on the profile's execution providers. "
            "Several models run interleaved in one process (A B, B A, ...) so a noisy machine does not bias the "
            "speedups, which are relative to the first model. The providers onnxruntime actually activated are "
            "checked: a fallback is refused unless --allow-fallback, and then marked in every row."
        ),
        epilog="example: onnxq bench model.onnx model.int8.onnx --profile cpu-x86-vnni --batch 1,32 --threads 1",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help=".onnx models taking the same inputs; the first is the baseline")
    p.add_argument("--profile", default="auto", help="profile name, path to a .toml, or auto (default)")
    p.add_argument("--batch", type=_ints, default=[1], metavar="B1,B2", help="batch sizes (default: 1)")
    p.add_argument("--threads", type=int, metavar="N", help="intra-op threads (default: the profile's; 0 = onnxruntime's default)")
    p.add_argument("--warmup", type=int, default=10, metavar="W", help="warm-up runs per model and batch (default: 10)")
    p.add_argument("--runs", type=int, default=100, metavar="R", help="timed runs per model and batch (default: 100)")
    p.add_argument("--allow-fallback", action="store_true", help="measure even if a requested provider is not active (rows marked FALLBACK)")
    p.add_argument("--data", metavar="PATH", help="real inputs: .npz keyed by input name, .npy (single-input models) or a "
                   "directory of them (default: seeded random data)")
    p.add_argument("-o", "--output", metavar="RESULT.json", help="also write the result JSON here (for onnxq report)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import bench
    from ..report import bench_table, host_summary
    from ..results import dumps, write_results

    if args.output:
        from .._fs import check_output, external_files

        check_output(args.output, inputs=[*args.models, args.data, *(f for m in args.models for f in external_files(m))])
    if args.runs < 1 or args.warmup < 0:
        from ..errors import InputError

        raise InputError(f"--runs must be at least 1 and --warmup at least 0, got --runs {args.runs} --warmup {args.warmup}")
    data = None
    if args.data:
        # the calibration reader: headers checked against the first model (shape, dtype, size, zip bombs), then only
        # the rows the largest batch uses read (tiled when fewer), values checked (NaN, float64 beyond float32)
        from ..calibration import CalibrationSet, model_inputs
        from ..cli import note
        from ..modelio import load_model

        specs = model_inputs(load_model(args.models[0], load_external=False))
        samples = CalibrationSet.from_source(args.data, specs, limit=max(args.batch), role="bench", allow_extra=True)
        data = samples.to_arrays()
        for n in samples.notes:
            note(f"onnxq: note: --data {n}")
    res = bench(
        args.models, args.profile, batches=args.batch, threads=args.threads, warmup=args.warmup, runs=args.runs,
        allow_fallback=args.allow_fallback, data=data, progress=not (args.quiet or args.json),
    )
    doc = res.to_dict()
    if args.output:
        write_results(doc, args.output)
    if args.json:
        sys.stdout.write(dumps(doc))
        return 0
    s = doc["settings"]
    print(host_summary(doc["host"]))
    print(f"profile {s['profile']}; intra-op threads {s['intra_op_threads'] or 'onnxruntime default'}; "
          f"{s['warmup']} warm-up + {s['runs']} timed runs, interleaved; inputs: {s['inputs']}")
    for note in doc["notes"]:
        print(f"onnxq: warning: {note}", file=sys.stderr)
    print(bench_table(doc))
    from ..bench import host_ceiling

    c = host_ceiling()
    best = max((r["speedup"] or 0.0) for r in doc["rows"]) if doc["rows"] else 0.0
    print(f"host ceiling: a large int8 GEMM ({c['gemm']}, 1 thread) runs {c['int8_vs_fp32_gemm']:.2f}x FP32 here; "
          f"best speed-up above: {best:.2f}x")
    if doc.get("peak_rss_mb"):
        print(f"peak memory (VmHWM of this process, all models together): {doc['peak_rss_mb']:.0f} MiB")
    return 0
