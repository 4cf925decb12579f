"""onnxq report RESULT.json [RESULT.json ...] [-o REPORT.md] [--json]

Imports neither onnxruntime, onnx, numpy nor torch: it only reads result files.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path


def register(sub) -> None:
    from ..cli import add_common
    from ..vocab import COMPARE_METRICS

    p = sub.add_parser(
        "report",
        help="merge result files from several machines into one cross-hardware report (re-runs nothing)",
        description=(
            "Read result JSON files written by onnxq compare (OUTDIR/report.json), bench -o or eval -o, possibly on "
            "different machines, and print one cross-hardware table; -o writes a Markdown report (and a "
            "REPORT.pareto.png beside it when matplotlib is installed). Needs neither onnxruntime nor torch."
        ),
        epilog="example: onnxq report cpu/report.json gpu/report.json -o cross.md",
    )
    p.add_argument("results", nargs="+", metavar="RESULT.json", help="onnxq result files (schema onnxq.results/1)")
    p.add_argument("-o", "--output", metavar="REPORT.md", help="write the Markdown report here")
    p.add_argument("--no-plot", action="store_true", help="do not write the accuracy-vs-latency plot beside -o")
    p.add_argument("--metric", choices=list(COMPARE_METRICS),
                   help="re-derive every compare verdict with this metric (from the metrics the files hold; nothing re-runs)")
    p.add_argument("--budget", type=float, metavar="B", help="re-derive every compare verdict with this budget (see onnxq compare --budget)")
    add_common(p)
    p.set_defaults(func=run)


@contextlib.contextmanager
def _malformed(origin: str, doc: dict):
    """A result file whose keys are there but whose values have the wrong shape or type: one line naming it."""
    from ..errors import InputError, OnnxqError

    try:
        yield
    except OnnxqError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as e:
        raise InputError(f"{origin}: malformed {doc.get('kind')} result ({type(e).__name__}: {str(e)[:120]}); the file is "
                         "truncated or hand-edited: re-run the measurement that wrote it") from e


def _plot_series(sources):
    series = {}
    for origin, doc in sources:
        if doc["kind"] != "compare":
            continue
        b = str(doc["settings"]["primary_batch"])
        machine = (doc.get("host") or {}).get("hostname") or "?"
        scale = 100.0 if doc["data"].get("metric") in ("top1", "top5", "agreement") else 1.0
        for prof in doc["profiles"]:
            pts = []
            for v in prof["variants"]:
                med = ((v.get("latency") or {}).get(b) or {}).get("median_ms")
                if v.get("status") == "ok" and isinstance(v.get("quality"), (int, float)) and isinstance(med, (int, float)) and med > 0:
                    pts.append((v["name"], float(med), scale * float(v["quality"])))
            if pts:  # one series per result file and profile: two runs on one host stay two series
                key, k = f"{machine}/{prof['profile']} ({Path(origin).parent.name or Path(origin).name})", 2
                while key in series:
                    key, k = f"{machine}/{prof['profile']} ({Path(origin).name} #{k})", k + 1
                series[key] = pts
    return series


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..report import cross_markdown, write_pareto_plot
    from ..results import atomic_write, dumps, flatten_sources, load_results, new_document

    if args.output:
        from .._fs import check_output

        out = Path(args.output)
        check_output(out, inputs=args.results)
        check_output(out.with_name((out.name[:-3] if out.name.endswith(".md") else out.name) + ".pareto.png"),
                     inputs=args.results, what="plot")
    loaded = [(str(p), load_results(p)) for p in args.results]  # every file checked before any output
    sources = flatten_sources(loaded)
    for origin, doc in sources:
        with _malformed(origin, doc):
            if doc["kind"] == "compare" and (args.metric or args.budget is not None):
                from ..report import rederive_verdicts

                rederive_verdicts(doc, metric=args.metric, budget=args.budget)
            cross_markdown([(origin, doc)])  # each file rendered alone first: a hand-edited one is named
            _plot_series([(origin, doc)])
    plot = plot_note = None
    if args.output and not args.no_plot:
        series = _plot_series(sources)
        out = Path(args.output)
        png = out.with_name((out.name[:-3] if out.name.endswith(".md") else out.name) + ".pareto.png")
        if not series:
            plot_note = "plot skipped: no compare result with measured latency"
        else:
            try:
                write_pareto_plot(series, png, xlabel="median latency at each run's largest batch (ms)",
                                  ylabel="quality metric (x100)", title="accuracy vs latency per machine and profile")
                plot = png.name
            except ImportError:
                plot_note = "plot skipped: matplotlib is not installed (pip install 'onnxq[plot]')"
    text = cross_markdown(sources, plot=plot, plot_note=plot_note)
    if args.output:
        atomic_write(args.output, text + "\n")
    if args.json:
        doc = new_document("report", host={}, sources=[{"file": o, "doc": d} for o, d in sources])
        sys.stdout.write(dumps(doc))
    elif not args.output:
        print(text)
    else:
        print(f"wrote {args.output}" + (f" and {plot}" if plot else f" ({plot_note})" if plot_note else ""))
    return 0
