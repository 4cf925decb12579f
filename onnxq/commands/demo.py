"""onnxq demo [-o OUTDIR]: quantize the shipped Fashion-MNIST CNN and compare accuracy (no torch needed)"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

MODEL, CALIB, EVAL = "fashion_cnn.onnx", "calib.npz", "eval.npz"
DEFAULT_OUT = "onnxq-demo"


def register(sub) -> None:
    from ..cli import add_common
    from ..vocab import MODES

    p = sub.add_parser(
        "demo",
        help="quantize a small shipped CNN (Fashion-MNIST) and show what INT8 costs in accuracy",
        description=(
            "Copy the shipped FP32 Fashion-MNIST CNN and its calibration data to OUTDIR, quantize it with the profile's "
            "settings, and print the quantization summary and FP32 vs quantized accuracy on 1000 shipped test images. "
            "Needs onnxruntime, not torch."
        ),
        epilog="example: onnxq demo -o /tmp/demo --profile cpu-x86-avx2",
    )
    p.add_argument("--profile", default="auto", help="profile name, path to a .toml, or auto (default)")
    p.add_argument("--mode", choices=MODES, default="static", help="quantization mode (default: static)")
    p.add_argument("-o", "--output", metavar="OUTDIR", default=DEFAULT_OUT, help=f"folder for the models and manifest (default: ./{DEFAULT_OUT})")
    add_common(p)
    p.set_defaults(func=run)


def asset(name: str):
    """A context manager yielding a real file path for a shipped demo asset."""
    from importlib import resources

    from ..errors import InputError

    res = resources.files("onnxq.demo") / name
    if not res.is_file():
        raise InputError(f"demo asset {name} is missing from the installed onnxq package; reinstall onnxq, or regenerate it with python scripts/make_demo.py")
    return resources.as_file(res)


def load_eval() -> tuple[Any, Any]:
    """The shipped evaluation set: float32 (N, 1, 28, 28) normalised images and int64 labels."""
    import numpy as np

    from ..errors import InputError

    from ..calibration import open_npz

    with asset(EVAL) as path:
        arrays = open_npz(path, role="demo asset")  # headers checked (size, zip bombs, no objects) before reading
        try:
            z = {k: arrays[k].read_all() for k in ("images", "labels", "mean", "std")}
        except KeyError as e:
            raise InputError(f"demo asset {EVAL} lacks key {e}; regenerate it with python scripts/make_demo.py") from e
        images, labels = z["images"], z["labels"].astype(np.int64)
        mean, std = float(z["mean"]), float(z["std"])
    if images.dtype == np.uint8:
        images = ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
    if images.ndim == 3:
        images = images[:, None]
    return images, labels


def demo(outdir: str | Path = DEFAULT_OUT, *, profile: Any = "auto", mode: str = "static", progress: bool = True) -> dict[str, Any]:
    """Run the demo; returns ``{"outdir", "quantize": QuantResult dict, "accuracy": {...}}``.

    >>> from onnxq.commands.demo import demo
    >>> r = demo("/tmp/onnxq-demo")                                  # doctest: +SKIP
    >>> r["accuracy"]["fp32"], r["accuracy"]["quantized"]            # doctest: +SKIP
    (0.88, 0.881)
    """
    import numpy as np

    from ..errors import InputError
    from ..evaluate import accuracy, fidelity
    from .._fs import atomic_path
    from ..ptq import quantize
    from ..runtime import make_session, resolve_profile

    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder; give a folder with -o")
    out.mkdir(parents=True, exist_ok=True)
    prof, why = resolve_profile(profile)
    for name in (MODEL, CALIB):
        with asset(name) as src, atomic_path(out / name) as tmp:
            shutil.copyfile(src, tmp)
    fp32 = out / MODEL
    res = quantize(fp32, mode=mode, profile=prof, calibration=out / CALIB, progress=progress)

    x, y = load_eval()
    logits = {}
    active: list[str] = []
    fallback = False
    for key, path in (("fp32", fp32), ("quantized", res.output)):
        sess, info = make_session(path, prof, allow_fallback=True)
        inp = sess.get_inputs()[0].name
        logits[key] = np.concatenate([sess.run(None, {inp: x[i : i + 250]})[0] for i in range(0, len(x), 250)])
        active, fallback = info.active, info.fallback
    acc = {k: accuracy(v, y) for k, v in logits.items()}
    fid = fidelity(logits["fp32"], logits["quantized"])
    return {
        "outdir": str(out),
        "profile": prof.name,
        "profile_reason": why,
        "quantize": res.to_dict(),
        "accuracy": {
            "samples": len(y),
            "fp32": acc["fp32"],
            "quantized": acc["quantized"],
            "delta_points": 100.0 * (acc["quantized"] - acc["fp32"]),
            "top1_agreement": fid.get("top1_agreement"),
            "cosine": fid["cosine"],
            "providers": active,
            "fallback": fallback,
        },
    }


def run(args: argparse.Namespace) -> int:
    from ..cli import note
    from tabulate import tabulate

    from ..runtime import resolve_profile
    from ..report import human_size, quant_summary_table

    prof, why = resolve_profile(args.profile)
    if not args.quiet and not args.json:
        note(f"onnxq: {why}")
    r = demo(args.output, profile=prof, mode=args.mode, progress=not args.quiet and not args.json)
    if args.json:
        print(json.dumps(r, default=str, indent=2))
        return 0
    q, a = r["quantize"], r["accuracy"]
    for w in q["warnings"]:
        print(f"onnxq: warning: {w}", file=sys.stderr)
    label = {"static": "INT8 static", "dynamic": "INT8 dynamic", "fp16": "FP16"}[q["mode"]]
    rows = [
        ["FP32", f"{100 * a['fp32']:.1f}", "-", human_size(q["size_before"])],
        [label, f"{100 * a['quantized']:.1f}", f"{a['delta_points']:+.1f}", human_size(q["size_after"])],
    ]
    print(quant_summary_table(q))
    if a["fallback"]:
        print(f"onnxq: warning: profile {r['profile']} asks for providers this machine lacks; accuracy ran on {', '.join(a['providers'])}", file=sys.stderr)
    print()
    print(tabulate(rows, headers=["model", f"accuracy % ({a['samples']} test images)", "delta pts", "size"], tablefmt="github", disable_numparse=True))
    print(f"\nfiles in {r['outdir']}/; try another setting, e.g.:\n"
          f"  onnxq quantize {Path(r['outdir']) / MODEL} --calib {Path(r['outdir']) / CALIB} --mode static --method minmax --no-per-channel")
    return 0
