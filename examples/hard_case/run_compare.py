"""`onnxq compare` on the hard case: a depthwise-separable CNN whose weights get one scale per tensor.

    python examples/hard_case/run_compare.py          # per-tensor int8 weights -> examples/hard_case/compare/
    python examples/hard_case/run_compare.py --int4   # int4 weights            -> examples/hard_case/compare-int4/

Same steps as ``examples/fashion_mnist/run_compare.py`` (same data files, written to
``examples/hard_case/out/``, git-ignored; no MODEL: the FP32 model compared is the task's export of
``out/dscnn.pt``, the checkpoint QAT fine-tunes from, trained first when it is missing), with the
variants restricted to the weight scheme the task is about, so that PTQ and QAT are compared
under the same constraint:

- default: ``TASK`` (int8 weights, ONE scale per weight tensor, as on accelerators and toolchains
  without per-channel support) against the static per-tensor PTQ variants (``static-pt-*``). On
  this CPU per-channel weights are free and PTQ per-channel keeps the accuracy; run with
  ``--variants '*'`` to see that in the same table;
- ``--int4``: ``INT4_TASK`` (4-bit weights, per channel) against static per-channel PTQ with
  4-bit weights (``--weight-type int4``, ``static-pc-*``). onnxruntime's CPU provider does not fuse
  int4 weights (DequantizeLinear feeds a float Conv): int4 buys size here, not speed.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _fashion_runner():
    """examples/fashion_mnist/run_compare.py, loaded by path (data files, the compare call, timing)."""
    spec = importlib.util.spec_from_file_location("onnxq_example_fashion_run_compare", HERE.parent / "fashion_mnist" / "run_compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--int4", action="store_true", help="INT4_TASK vs int4 PTQ, into compare-int4/")
    ap.add_argument("--epochs", type=int, help="QAT epochs (default: the task's)")
    ap.add_argument("--profile", default="cpu-x86-vnni")
    ap.add_argument("--torch-threads", type=int, help="torch threads for training (default: $OMP_NUM_THREADS, else 1)")
    ap.add_argument("--variants", help="compare's --variants (default: static-pt-* / static-pc-* with --int4)")
    ap.add_argument("-o", "--output", help="report folder (default: examples/hard_case/compare or compare-int4)")
    args, extra = ap.parse_known_args(argv)
    if args.int4:
        task, variants, out = "examples.hard_case.qat_task:INT4_TASK", "static-pc-*", HERE / "compare-int4"
        extra = ["--weight-type", "int4", *extra]
    else:
        task, variants, out = "examples.hard_case.qat_task:TASK", "static-pt-*", HERE / "compare"
    extra = ["--variants", args.variants or variants, *(["--epochs", str(args.epochs)] if args.epochs is not None else []), *extra]
    return _fashion_runner().run_compare(task, Path(args.output) if args.output else out, HERE / "out",
                                         checkpoint=HERE / "out" / "dscnn.pt", profile=args.profile, extra=extra,
                                         torch_threads=args.torch_threads)


if __name__ == "__main__":
    raise SystemExit(main())
