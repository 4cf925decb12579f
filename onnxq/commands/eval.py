"""onnxq eval MODEL --data FILE.npz [--labels KEY] [--metric top1|top5|cosine|mse] [--ref FP32.onnx]"""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    from ..cli import add_common
    from ..vocab import EVAL_METRICS

    p = sub.add_parser(
        "eval",
        help="task accuracy (with labels) and fidelity against a reference model",
        description=(
            "Run MODEL on evaluation data (.npz: one array per model input, samples on axis 0, plus integer class "
            "labels under --labels, default 'labels' when present). Reports top-1/top-5 accuracy when labels are "
            "given and, with --ref, fidelity against the reference: cosine, SQNR, max-abs, MSE, top-1 agreement."
        ),
        epilog="example: onnxq eval model.int8.onnx --data eval.npz --ref model.onnx --metric top1",
    )
    p.add_argument("model", help=".onnx model to evaluate")
    p.add_argument("--data", required=True, metavar="FILE.npz", help="inputs keyed by input name, plus labels")
    p.add_argument("--labels", metavar="KEY", help="key of the class labels in the .npz (default: 'labels' if present)")
    p.add_argument("--ref", metavar="FP32.onnx", help="reference model for fidelity (usually the FP32 original)")
    p.add_argument("--metric", choices=EVAL_METRICS, help="headline metric (default: top1 with labels, else cosine)")
    p.add_argument("--output-name", metavar="NAME", help="output holding the class scores (default: the first output)")
    p.add_argument("--profile", default="auto", help="profile name, path to a .toml, or auto (default)")
    p.add_argument("--allow-fallback", action="store_true", help="run even if a requested provider is not active (marked FALLBACK)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="samples per run (default: 32; fixed-batch models use theirs)")
    p.add_argument("-o", "--output", metavar="RESULT.json", help="also write the result JSON here")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import note
    from ..bench import host_info, session_inputs
    from ..errors import InputError
    from ..evaldata import eval_metrics, headline, load_eval_data, run_model
    from ..runtime import resolve_profile
    from ..report import eval_table
    from ..results import dumps, new_document, write_results
    from ..runtime import make_session

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.output:
        from .._fs import check_output, external_files

        models = [m for m in (args.model, args.ref) if m]
        check_output(args.output, inputs=[*models, args.data, *(f for m in models for f in external_files(m))])
    prof, why = resolve_profile(args.profile)
    if not args.quiet and not args.json:
        note(f"onnxq: {why}")
    sess, info = make_session(args.model, prof, allow_fallback=args.allow_fallback)
    specs = session_inputs(sess)
    data = load_eval_data(args.data, specs, labels_key=args.labels)
    ref_out = None
    if args.ref:
        ref_sess, _ = make_session(args.ref, prof, allow_fallback=args.allow_fallback)
        ref_specs = session_inputs(ref_sess)
        if sorted((s.name, s.dtype) for s in ref_specs) != sorted((s.name, s.dtype) for s in specs):
            raise InputError(
                f"--ref {args.ref} takes inputs {[s.name for s in ref_specs]} but {args.model} takes "
                f"{[s.name for s in specs]}; pass the reference model this one was made from"
            )
        ref_out = run_model(ref_sess, data, args.batch_size)
    out = run_model(sess, data, args.batch_size)
    metrics = eval_metrics(out, data, ref=ref_out, output_name=args.output_name)
    metric = args.metric or ("top1" if data.labels is not None else ("cosine" if ref_out is not None else None))
    if metric is None:
        raise InputError(
            f"nothing to measure: {args.data} has no labels (key 'labels' or --labels KEY) and no --ref model was given"
        )
    value = headline(metrics, metric)
    doc = new_document(
        "eval",
        host=host_info(),
        model={"path": args.model, "ref": args.ref},
        data={"path": args.data, "samples": data.count, "labels_key": data.labels_key, "notes": data.notes},
        profile=prof.name,
        providers={"requested": info.requested, "active": info.active, "fallback": info.fallback, "note": info.note},
        metrics=metrics,
        headline={"metric": metric, "value": value},
    )
    if args.output:
        write_results(doc, args.output)
    if args.json:
        sys.stdout.write(dumps(doc))
    else:
        for n in data.notes:
            print(f"onnxq: note: {n}", file=sys.stderr)
        if info.fallback:
            print(f"onnxq: warning: {info.note}", file=sys.stderr)
        print(eval_table(doc))
    return 0
