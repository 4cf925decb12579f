"""Fashion-MNIST end to end: train (or reuse) -> onnxq.export -> static and dynamic INT8 -> accuracy.

    python examples/fashion_mnist/run_example.py            # ~1-2 min on 2 idle CPU cores, mostly training
    python examples/fashion_mnist/run_example.py --retrain  # ignore a saved checkpoint

Everything generated goes to ``examples/fashion_mnist/out/`` (git-ignored); the table printed at
the end is also written to ``examples/fashion_mnist/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from data import load_fashion_mnist  # noqa: E402


def run_accuracy(model_path: Path, x: np.ndarray, y: np.ndarray, profile, batch_size: int = 500) -> dict:
    """Top-1 accuracy and logits of an ONNX model on (x, y), on the profile's providers."""
    from onnxq.evaluate import accuracy
    from onnxq.runtime import make_session

    sess, info = make_session(model_path, profile, allow_fallback=True)
    name = sess.get_inputs()[0].name
    t0 = time.perf_counter()
    logits = np.concatenate([sess.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)])
    wall = time.perf_counter() - t0
    return {"accuracy": accuracy(logits, y), "logits": logits, "eval_s": wall, "providers": info.active}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(HERE / "out"), help="generated files (default: examples/fashion_mnist/out)")
    ap.add_argument("--epochs", type=int, default=6, help="training epochs when no checkpoint exists (default 6)")
    ap.add_argument("--retrain", action="store_true", help="train even if out/fashion_cnn.pt exists")
    ap.add_argument("--calib-samples", type=int, default=512, help="training images used for calibration (default 512)")
    ap.add_argument("--profile", default="auto", help="onnxq hardware profile (default: auto)")
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"), help="where to write the results table ('' to skip)")
    args = ap.parse_args(argv)

    import torch
    from model import make_model
    from tabulate import tabulate
    from train import CHECKPOINT, INFO, train

    import onnxq
    from onnxq.evaluate import fidelity
    from onnxq.runtime import resolve_profile
    from onnxq.report import human_size

    t_start = time.perf_counter()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile, why = resolve_profile(args.profile)
    print(f"onnxq: {why}", file=sys.stderr)

    # 1. train, or reuse the checkpoint
    ckpt = out / CHECKPOINT
    if ckpt.exists() and not args.retrain:
        model = make_model()
        model.load_state_dict(torch.load(ckpt, weights_only=True, map_location="cpu"))
        train_note = f"reused the checkpoint {ckpt.name} (delete it or pass --retrain to train again)"
        if (out / INFO).exists():
            info = json.loads((out / INFO).read_text())
            train_note = (f"checkpoint from an earlier run: {info['epochs']} epochs in {info['train_s']:.0f} s "
                          f"(1-min load average {info.get('load_avg_1min', float('nan')):.1f} on {os.cpu_count()} cores)")
        print(f"[1/4] {train_note}", file=sys.stderr)
    else:
        print(f"[1/4] training {args.epochs} epochs on 60k images (CPU)...", file=sys.stderr)
        model, info = train(args.epochs, out)
        train_note = (f"trained {args.epochs} epochs in {info['train_s']:.0f} s "
                      f"(1-min load average {info['load_avg_1min']:.1f} on {os.cpu_count()} cores)")
    model.eval()

    # 2. export (TorchScript exporter, dynamic batch, parity-checked against PyTorch)
    fp32 = out / "fashion_cnn.onnx"
    exp = onnxq.export(model, torch.randn(1, 1, 28, 28), fp32, profile=profile)
    print(f"[2/4] exported {fp32} (opset {exp.opset}; parity max-abs {exp.parity['output']['max_abs']:.2g})", file=sys.stderr)

    # 3. data files: calibration from the TRAIN split, evaluation on the full TEST split
    x_train, _ = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    pick = np.random.default_rng(0).choice(len(x_train), size=args.calib_samples, replace=False)
    calib = out / "calib.npz"
    np.savez(calib, **{exp.input_names[0]: x_train[pick]})
    np.savez(out / "eval.npz", **{exp.input_names[0]: x_test, "labels": y_test})

    # 4. quantize, static and dynamic, with the same calibration set (dynamic uses it for fidelity only)
    print("[3/4] quantizing (static QDQ, dynamic)...", file=sys.stderr)
    results = {"static": onnxq.quantize(fp32, mode="static", profile=profile, calibration=calib, progress=False),
               "dynamic": onnxq.quantize(fp32, mode="dynamic", profile=profile, calibration=calib, progress=False)}

    print("[4/4] evaluating on the 10,000 test images...", file=sys.stderr)
    ref = run_accuracy(fp32, x_test, y_test, profile)
    rows = [["FP32", f"{100 * ref['accuracy']:.2f}", "-", "-", "1.000000", human_size(fp32.stat().st_size), f"{ref['eval_s']:.2f}"]]
    summary = {"fp32": ref["accuracy"]}
    for mode, res in results.items():
        r = run_accuracy(res.output, x_test, y_test, profile)
        f = fidelity(ref["logits"], r["logits"])
        summary[mode] = r["accuracy"]
        rows.append([
            f"INT8 {mode}", f"{100 * r['accuracy']:.2f}", f"{100 * (r['accuracy'] - ref['accuracy']):+.2f}",
            f"{f['top1_agreement']:.4f}", f"{f['cosine']:.6f}", human_size(res.size_after), f"{r['eval_s']:.2f}",
        ])
    headers = ["model", "test acc %", "delta pts", "top-1 agree", "cosine (logits)", "size", "10k eval s"]
    table = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    total = time.perf_counter() - t_start
    print(table)
    print(f"\nprofile {profile.name}; {train_note}; calibration {args.calib_samples} train images; total wall time {total:.0f} s")

    if args.results:
        import onnx
        import onnxruntime

        static = results["static"]
        md = [
            "# Fashion-MNIST example: measured results",
            "",
            "Written by `python examples/fashion_mnist/run_example.py` (numbers below are measured, not edited).",
            "",
            table,
            "",
            (
                f"- date {date.today().isoformat()}; host {platform.processor() or platform.machine()}, "
                f"{_cpu_model()}; onnxq {onnxq.__version__}, torch {torch.__version__}, onnx {onnx.__version__}, "
                f"onnxruntime {onnxruntime.__version__}"
            ),
            (
                f"- profile `{profile.name}`; model: 3x Conv-BN-ReLU + linear, {sum(p.numel() for p in model.parameters())} "
                f"parameters; {train_note}"
            ),
            f"- export: opset {exp.opset}, dynamic batch, parity vs PyTorch max-abs {exp.parity['output']['max_abs']:.2g}",
            (
                f"- calibration: {args.calib_samples} training images, method {static.recipe.calibration.method}; "
                f"static quantized nodes {static.quantized_nodes} / float {static.float_nodes}"
            ),
            "- accuracy on all 10,000 test images; 'top-1 agree' and 'cosine' compare each INT8 model with FP32",
            (
                "- '10k eval s' is the wall time of one pass over the test set at batch 500 on a shared 2-core machine: "
                "indicative only (use `onnxq bench` for latency). Dynamic quantization turns Conv into ConvInteger, "
                "which is slow on CPU; static QDQ is the mode for CNNs."
            ),
            f"- total wall time of this run: {total:.0f} s (1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
            "",
        ]
        Path(args.results).write_text("\n".join(md))
        print(f"wrote {args.results}", file=sys.stderr)
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())
