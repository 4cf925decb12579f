"""`onnxq compare` on the Fashion-MNIST example: FP32, every PTQ variant and QAT, side by side.

    python examples/fashion_mnist/run_compare.py            # a few minutes on 2 CPU cores
    python examples/fashion_mnist/run_compare.py --epochs 2 # more QAT epochs

1. writes the calibration set (the first 288 training images in file order, the images the QAT
   task's own PTQ baseline uses) and the evaluation set (all 10,000 test images + ``labels``) to
   ``examples/fashion_mnist/out/`` (git-ignored), keyed by the model's input name ``input``;
2. runs ``onnxq compare --task examples.fashion_mnist.qat_task:TASK`` with no MODEL: the FP32
   model compared is the task's export of the trained checkpoint QAT fine-tunes from
   (``out/fashion_cnn.pt``; trained first, 6 epochs, when it is missing, and that is timed too);
3. prints the wall time and the load average (the machine may be shared).

Threads: 1 onnxruntime intra-op thread for latency (10 warm-up + 200 interleaved runs per variant
and batch, as in ``benchmarks/results/qat.md``) and 1 torch thread for training (``OMP_NUM_THREADS``,
``--torch-threads``). On this shared 2-core machine, with a load average of 3.5, a training step of
the CNN took 41-60 ms with one torch thread and 181-230 ms with two: two threads contend with the
other jobs. Any other ``onnxq compare`` option given here is passed on (``--threads 2``...).

The report (``report.md``, ``report.json``, ``pareto.png``) lands in ``examples/fashion_mnist/compare/``;
the models compare builds go to ``compare/<profile>/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CALIB_SAMPLES = 288  # the profile's 256 calibration samples + onnxq's 32 held-out ones


def _load(split: str):
    sys.path.insert(0, str(HERE))
    from data import load_fashion_mnist

    return load_fashion_mnist(split)


def write_data(out: Path, input_name: str = "input") -> tuple[Path, Path]:
    """out/compare.calib.npz and out/compare.eval.npz (written via a temp file, then renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    x_train, _ = _load("train")
    x_test, y_test = _load("test")
    paths = (out / "compare.calib.npz", out / "compare.eval.npz")
    for path, arrays in zip(paths, ({input_name: x_train[:CALIB_SAMPLES]}, {input_name: x_test, "labels": y_test})):
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    return paths


def run_compare(task: str, report_dir: Path, out: Path, *, checkpoint: Path, profile: str = "cpu-x86-vnni",
                extra: list[str] | None = None, torch_threads: int | None = None) -> int:
    """Write the data, run `onnxq compare` (no MODEL: the task exports FP32), print wall time and load."""
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    cached = checkpoint.exists()
    print(f"[run_compare] FP32 checkpoint {checkpoint.relative_to(ROOT)}: "
          + ("cached (delete it to include FP32 training in the time)" if cached else "missing, the task trains it first"),
          file=sys.stderr)
    calib, evald = write_data(out)
    rel = lambda p: str(Path(p).resolve().relative_to(ROOT))  # noqa: E731 - short, relative paths in the report
    cmd = [sys.executable, "-m", "onnxq", "compare", "--task", task, "--calib", rel(calib), "--eval", rel(evald),
           "--profile", profile, "-o", rel(report_dir), "--warmup", "10", "--runs", "200", "--threads", "1", *(extra or [])]
    print("[run_compare] " + " ".join(cmd[1:]), file=sys.stderr)
    env = dict(os.environ)
    threads = str(torch_threads) if torch_threads else env.get("OMP_NUM_THREADS", "1")
    env["OMP_NUM_THREADS"] = threads  # torch's intra-op threads for training (see the module docstring)
    print(f"[run_compare] torch threads {threads} (OMP_NUM_THREADS)", file=sys.stderr)
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    print(f"\n[run_compare] exit {rc}; wall time {wall:.0f} s ({wall / 60:.1f} min) on {os.cpu_count()} cores, "
          f"FP32 checkpoint {'cached' if cached else 'trained in this run'}, torch threads {threads}; load average (1/5/15 min) "
          f"{'/'.join(f'{x:.1f}' for x in load0)} at start, {'/'.join(f'{x:.1f}' for x in load1)} at the end")
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, help="QAT epochs (default: the task's)")
    ap.add_argument("--profile", default="cpu-x86-vnni")
    ap.add_argument("--torch-threads", type=int, help="torch threads for training (default: $OMP_NUM_THREADS, else 1)")
    ap.add_argument("-o", "--output", default=str(HERE / "compare"), help="report folder (default: examples/fashion_mnist/compare)")
    args, extra = ap.parse_known_args(argv)
    extra = (["--epochs", str(args.epochs)] if args.epochs is not None else []) + extra
    return run_compare("examples.fashion_mnist.qat_task:TASK", Path(args.output), HERE / "out",
                       checkpoint=HERE / "out" / "fashion_cnn.pt", profile=args.profile, extra=extra,
                       torch_threads=args.torch_threads)


if __name__ == "__main__":
    raise SystemExit(main())
