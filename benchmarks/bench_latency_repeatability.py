"""Is `onnxq bench` repeatable, and does it agree with a plain onnxruntime loop? (1 thread)

    python benchmarks/bench_latency_repeatability.py [--runs 300] [--warmup 30] [--rounds 3]

Writes benchmarks/results/latency_repeatability.md and .json. Two checks, per model and batch:

1. Repeatability: the same model given twice to ONE `bench` call (two sessions, interleaved);
   the ratio of the two medians must be within 5% of 1 (worst of --rounds calls).
2. Agreement: `bench` (one model) against a plain `session.run` timing loop with the same session
   options, in the same process. A machine that drifts over seconds would bias two long blocks, so
   each round alternates --blocks short blocks (bench call, plain loop, bench call, ...; each with a
   fresh session, since two sessions of one model can differ by a few percent) and compares
   the median of the bench block medians with that of the plain ones; the ratio must be within 10%
   of 1 (worst of --rounds rounds).

Exit 1 when a check fails. Models are built in code (tests/tiny_models.py), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import tiny_models as tm  # noqa: E402

from onnxq.bench import bench, host_info, make_feeds, session_inputs  # noqa: E402
from onnxq.profiles import load_profile  # noqa: E402
from onnxq.report import host_summary  # noqa: E402
from onnxq.results import atomic_write, dumps  # noqa: E402

PROFILE = "cpu-x86-vnni"
THREADS = 1
REPEAT_LIMIT = 0.05
AGREE_LIMIT = 0.10


def plain_session(path: Path) -> ort.InferenceSession:
    """A bare onnxruntime session with the options bench uses (1 thread, all optimisations)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def plain_loop(sess: ort.InferenceSession, batch: int, runs: int, warmup: int) -> float:
    """Median ms of a plain timing loop around session.run."""
    feeds = make_feeds(session_inputs(sess), batch)
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        sess.run(None, feeds)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=10, help="alternating bench/plain blocks per agreement round")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latency_repeatability"))
    args = ap.parse_args()
    prof = load_profile(PROFILE)
    tmp = Path(tempfile.mkdtemp(prefix="onnxq-bench-"))
    cases = [
        ("mlp 512-2048-10", tm.mlp(tmp / "mlp_big.onnx", d_in=512, hidden=2048, classes=10) and tmp / "mlp_big.onnx", 64),
        ("mlp 512-2048-10", tmp / "mlp_big.onnx", 1),
        ("tiny cnn 8x8", tm.cnn(tmp / "cnn.onnx") and tmp / "cnn.onnx", 32),
    ]
    repeat_rows, agree_rows = [], []
    for name, path, batch in cases:
        ratios = []
        for _ in range(args.rounds):
            res = bench([path, path], prof, batches=[batch], threads=THREADS, warmup=args.warmup, runs=args.runs)
            a, b = res.rows[0].latency.median_ms, res.rows[1].latency.median_ms
            ratios.append((a, b, b / a))
        worst = max(ratios, key=lambda r: abs(r[2] - 1))
        repeat_rows.append({"model": name, "batch": batch, "medians_ms": [[r[0], r[1]] for r in ratios],
                            "ratios": [r[2] for r in ratios], "worst_deviation": abs(worst[2] - 1),
                            "pass": abs(worst[2] - 1) <= REPEAT_LIMIT})
        rounds = []
        per_block = max(1, args.runs // args.blocks)
        for _ in range(args.rounds):
            bms, pms = [], []
            for _ in range(args.blocks):  # fresh sessions on both sides: session-to-session spread averages out
                res = bench([path], prof, batches=[batch], threads=THREADS, warmup=args.warmup, runs=per_block)
                bms.append(res.rows[0].latency.median_ms)
                pms.append(plain_loop(plain_session(path), batch, per_block, args.warmup))
            bm, pm = statistics.median(bms), statistics.median(pms)
            rounds.append((bm, pm, bm / pm))
        worst = max(rounds, key=lambda r: abs(r[2] - 1))
        agree_rows.append({"model": name, "batch": batch, "bench_ms": [r[0] for r in rounds], "plain_ms": [r[1] for r in rounds],
                           "ratios": [r[2] for r in rounds], "worst_deviation": abs(worst[2] - 1),
                           "pass": abs(worst[2] - 1) <= AGREE_LIMIT})
    host = host_info()
    doc = {"benchmark": "latency_repeatability", "profile": PROFILE, "threads": THREADS, "runs": args.runs, "blocks": args.blocks,
           "warmup": args.warmup, "rounds": args.rounds, "limits": {"repeat": REPEAT_LIMIT, "agree": AGREE_LIMIT},
           "host": host, "repeatability": repeat_rows, "agreement": agree_rows,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    lines = [
        "# Latency measurement repeatability (onnxq bench)",
        "",
        f"Written by `benchmarks/bench_latency_repeatability.py` on {doc['created']}; profile `{PROFILE}`, "
        f"{THREADS} intra-op thread, {args.warmup} warm-up + {args.runs} timed runs per measurement, {args.rounds} rounds; "
        f"agreement rounds alternate {args.blocks} bench / plain-loop blocks of {max(1, args.runs // args.blocks)} runs.",
        "",
        f"Host: {host_summary(host)}.",
        "",
        f"## 1. Same model twice in one `bench` call (limit: medians within {REPEAT_LIMIT:.0%})",
        "",
        "| model | batch | median A / median B per round (ms) | ratio B/A per round | worst deviation | pass |",
        "|---|---|---|---|---|---|",
    ]
    for r in repeat_rows:
        meds = "; ".join(f"{a:.4f} / {b:.4f}" for a, b in r["medians_ms"])
        lines.append(f"| {r['model']} | {r['batch']} | {meds} | {', '.join(f'{x:.3f}' for x in r['ratios'])} | "
                     f"{r['worst_deviation']:.1%} | {'yes' if r['pass'] else 'NO'} |")
    lines += [
        "",
        f"## 2. `bench` vs a plain onnxruntime loop in the same process (limit: within {AGREE_LIMIT:.0%})",
        "",
        "| model | batch | bench median ms per round | plain-loop median ms per round | ratio per round | worst deviation | pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in agree_rows:
        lines.append(f"| {r['model']} | {r['batch']} | {', '.join(f'{x:.4f}' for x in r['bench_ms'])} | "
                     f"{', '.join(f'{x:.4f}' for x in r['plain_ms'])} | {', '.join(f'{x:.3f}' for x in r['ratios'])} | "
                     f"{r['worst_deviation']:.1%} | {'yes' if r['pass'] else 'NO'} |")
    lines += ["", "Medians are over the timed runs of one call; each round is a fresh call (fresh sessions).", ""]
    atomic_write(args.out + ".md", "\n".join(lines))
    atomic_write(args.out + ".json", dumps(doc))
    print("\n".join(lines))
    ok = all(r["pass"] for r in repeat_rows + agree_rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
