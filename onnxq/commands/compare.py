"""onnxq compare MODEL --calib CALIB.npz --eval EVAL.npz [--task module:object] [--profile P ...] -o OUTDIR
[--executor serial|ray [--ray-address HOST:PORT]]"""

from __future__ import annotations

import argparse
import sys

from .bench import _ints


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(sub) -> None:
    from ..cli import add_common
    from ..verdict import DEFAULT_BUDGETS
    from ..vocab import COMPARE_METRICS, WEIGHT_TYPES

    def _g(metric: str) -> str:
        return f"{DEFAULT_BUDGETS[metric]:g}"

    p = sub.add_parser(
        "compare",
        help="build every PTQ variant (and QAT with --task) per profile; accuracy, size, latency and a verdict",
        description=(
            "Build FP32, dynamic, static per-tensor/per-channel x minmax/entropy/percentile, the profile's static recipe "
            "(static-default), per-tensor with CLE + bias correction, fp16 (and QAT plus its FP32 control with --task) "
            "for each profile, measure accuracy, fidelity, size and latency (interleaved, on the profile's providers), "
            "and write OUTDIR/report.md, OUTDIR/report.json and OUTDIR/pareto.png with a verdict per profile. A failed "
            "variant is reported with its error; the others carry on. Latency is never measured on a fallback "
            "provider unless --allow-fallback (then marked)."
        ),
        epilog=(
            "example: onnxq compare model.onnx --calib calib.npz --eval eval.npz --profile cpu-x86-vnni -o out/.  "
            "Variants: fp32, dynamic, static-pt-minmax, static-pt-entropy, static-pt-percentile, static-pc-minmax, "
            "static-pc-entropy, static-pc-percentile, static-default, static-pt-cle-bc, fp16, qat, qat-control"
        ),
    )
    p.add_argument("model", nargs="?", help="FP32 .onnx model (optional with --task when the task exports one)")
    p.add_argument("--calib", required=True, metavar="CALIB.npz", help="calibration data keyed by input name")
    p.add_argument("--eval", required=True, dest="eval_data", metavar="EVAL.npz", help="evaluation inputs keyed by input name, plus labels")
    p.add_argument("--labels", metavar="KEY", help="labels key in EVAL.npz (default: 'labels' if present)")
    p.add_argument("--task", metavar="MODULE:OBJECT", help="QAT task spec: adds the qat variant (see onnxq qat)")
    p.add_argument("--epochs", type=int, metavar="N", help="QAT epochs (default: the task's)")
    p.add_argument("--profile", action="append", metavar="P", help="profile name or .toml; repeat for several (default: auto)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="directory for variants and reports")
    p.add_argument("--variants", type=_csv, metavar="PATTERNS", help="comma-separated names or shell patterns, e.g. dynamic,static-pc-* (fp32 always)")
    p.add_argument("--batch", type=_ints, default=[1, 32], metavar="B1,B2", help="latency batch sizes (default: 1,32; the largest drives the verdict)")
    p.add_argument("--warmup", type=int, default=5, metavar="W", help="warm-up runs per variant and batch (default: 5)")
    p.add_argument("--runs", type=int, default=30, metavar="R", help="timed runs per variant and batch (default: 30)")
    p.add_argument("--threads", type=int, metavar="N", help="intra-op threads (default: the profile's)")
    p.add_argument("--budget", type=float, metavar="B",
                   help="how close to FP32 a variant must stay: accuracy points for top1/top5/agreement (default "
                        f"{_g('top1')}/{_g('top5')}/{_g('agreement')}), the largest KL for kl (default {_g('kl')}), the smallest "
                        f"cosine / SQNR dB for cosine / sqnr (default {_g('cosine')} / {_g('sqnr')}; chosen in benchmarks/results/budgets.md)")
    p.add_argument("--metric", choices=list(COMPARE_METRICS),
                   help="quality metric (default: top1 with labels, else kl for (N, classes) outputs, else cosine)")
    p.add_argument("--output-name", metavar="NAME", help="output to judge (default: an embedding/pooled/logits output before a hidden state)")
    p.add_argument("--fresh", action="store_true", help="ignore the variants cached in OUTDIR and rebuild everything")
    p.add_argument("--weight-type", choices=WEIGHT_TYPES,
                   help="weight type of the PTQ variants (default: the profile's), e.g. int4 to set PTQ against a QAT task "
                        "training int4 weights; int4 needs opset 21 and is not fused by the CPU provider")
    p.add_argument("--allow-fallback", action="store_true", help="measure latency on available providers when the profile's are missing (marked FALLBACK)")
    p.add_argument("--executor", choices=["serial", "ray"], default="serial",
                   help="serial (default): everything in this process. ray: each variant's build and evaluation is a Ray task "
                        "on a node advertising the resource onnxq:profile:<name>; each profile's latency is ONE task timing "
                        "FP32 and all its variants interleaved on one node while holding that node's onnxq:timing lock "
                        "(needs pip install 'onnxq[ray]')")
    p.add_argument("--ray-address", metavar="HOST:PORT",
                   help="with --executor ray: the GCS address of a running cluster (`ray start --head` prints it; run onnxq on "
                        "one of its nodes); without it onnxq starts a local Ray instance advertising the profiles this host "
                        "can run, and stops it afterwards")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..compare import compare
    from ..report import compare_table, qat_summary
    from ..results import dumps

    quiet = args.quiet or args.json

    def log(msg: str) -> None:
        if not quiet:
            print(f"onnxq: {msg}", file=sys.stderr)

    doc = compare(
        args.model, calib=args.calib, eval_data=args.eval_data, outdir=args.output, profiles=args.profile or ["auto"],
        labels_key=args.labels, task=args.task, epochs=args.epochs, variants=args.variants, batches=args.batch,
        warmup=args.warmup, runs=args.runs, threads=args.threads, budget=args.budget, metric=args.metric,
        allow_fallback=args.allow_fallback, weight_type=args.weight_type, output_name=args.output_name, fresh=args.fresh,
        executor=args.executor, ray_address=args.ray_address, progress=not quiet, log=log,
    )
    if args.json:
        sys.stdout.write(dumps(doc))
        return 0
    metric = doc["data"]["metric"]
    for prof in doc["profiles"]:
        print(f"\nprofile {prof['profile']}  ({doc['data']['metric_label']}, {doc['data']['eval_samples']} samples)")
        for note in prof.get("notes", []):
            print(f"  note: {note}")
        print(compare_table(prof, metric, doc["settings"]["batches"], tablefmt="simple"))
        if qat_summary(prof):
            print(qat_summary(prof))
        print(f"verdict: {prof['verdict']['text']}")
    print(f"\nwrote {doc['outputs']['report_md']}, {doc['outputs']['report_json']}"
          + (f", {doc['outputs']['plot']}" if doc["outputs"]["plot"] else f" ({doc['plot_note']})"))
    return 0
