"""Regenerate the demo assets shipped in ``onnxq/demo/`` (used by ``onnxq demo``; no torch needed there).

    python scripts/make_demo.py            # ~1-3 min on 2 CPU cores; needs torch and dataset-fashion-mnist

Writes, each atomically:
  onnxq/demo/fashion_cnn.onnx  the Fashion-MNIST example CNN, trained a few epochs, exported at the
                               opset of profile cpu-x86-vnni with a dynamic batch axis
  onnxq/demo/calib.npz         CALIB training images, float32 normalised, keyed by the model input name
                               (so `onnxq quantize fashion_cnn.onnx --calib calib.npz` works as is)
  onnxq/demo/eval.npz          EVAL test images stored as uint8 ("images", N x 28 x 28) with "labels",
                               "mean" and "std": normalise as (images / 255 - mean) / std
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "fashion_mnist"))

from data import MEAN, STD, load_raw, normalise  # noqa: E402

DEMO = ROOT / "onnxq" / "demo"


def _savez(path: Path, **arrays) -> None:
    from onnxq.modelio import atomic_path

    # a file object, not a path: np.savez would append ".npz" to the temp name
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Regenerate onnxq/demo/* from the Fashion-MNIST example.")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--calib", type=int, default=128, help="calibration images (default 128)")
    ap.add_argument("--eval", type=int, default=1000, help="evaluation images (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(DEMO), help="destination folder (default onnxq/demo)")
    args = ap.parse_args(argv)

    import torch
    from train import train

    import onnxq

    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="onnxq.make_demo.") as tmp:
        model, info = train(args.epochs, tmp, seed=args.seed)
    print(f"trained: test accuracy {info['test_accuracy']:.4f} on 10k ({info['epochs']} epochs, {info['train_s']:.0f} s)")
    res = onnxq.export(model, torch.randn(1, 1, 28, 28), out / "fashion_cnn.onnx", profile="cpu-x86-vnni", manifest=False)
    name = res.input_names[0]

    rng = np.random.default_rng(args.seed)
    train_u8, _ = load_raw("train")
    test_u8, test_y = load_raw("test")
    calib_idx = np.sort(rng.choice(len(train_u8), size=args.calib, replace=False))
    eval_idx = np.sort(rng.choice(len(test_u8), size=args.eval, replace=False))
    _savez(out / "calib.npz", **{name: normalise(train_u8[calib_idx])})
    _savez(
        out / "eval.npz", images=test_u8[eval_idx], labels=test_y[eval_idx].astype(np.int64),
        mean=np.float32(MEAN), std=np.float32(STD),
    )
    total = 0
    for f in ("fashion_cnn.onnx", "calib.npz", "eval.npz"):
        size = (out / f).stat().st_size
        total += size
        print(f"wrote {out / f} ({size / 1024:.1f} KB)")
    print(f"total {total / 1024:.1f} KB; export opset {res.opset}, parity max-abs {res.parity[res.output_names[0]]['max_abs']:.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
