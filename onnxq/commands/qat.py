"""onnxq qat TASK --profile P --epochs N -o out.onnx"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path


def register(sub) -> None:
    from ..cli import add_common
    from ..vocab import QAT_WEIGHT_TYPES

    p = sub.add_parser(
        "qat",
        help="quantization-aware training from a task spec; FP32 vs PTQ static vs QAT side by side",
        description=(
            "Fine-tune a trained FP32 network with fake quantization that matches onnxruntime's static QDQ placement "
            "for the profile, export the QDQ model, and compare its accuracy with FP32 and PTQ static of the same "
            "network. TASK names a small Python spec (model factory, train/eval data, loss, metric): module:object or "
            "path/to/file.py:object. Writes OUT, OUT_STEM.fp32.onnx and OUT_STEM.ptq.onnx, each with a manifest."
        ),
        epilog="example: onnxq qat examples/fashion_mnist/qat_task.py:TASK --profile cpu-x86-vnni --epochs 1 -o fm.qat.onnx",
    )
    p.add_argument("task", metavar="TASK", help="module:object or path/to/file.py:object naming the task spec")
    p.add_argument("--profile", default="auto", help="profile name, path to a .toml, or auto (default)")
    p.add_argument("--epochs", type=int, default=None, help="QAT epochs (default: the task's)")
    p.add_argument("--lr", type=float, default=None, help="QAT learning rate (default: the task's)")
    p.add_argument("--calib", metavar="PATH", help="calibration data (.npz keyed by input name, .npy, directory); default: the task's")
    p.add_argument("--weight-type", choices=QAT_WEIGHT_TYPES, help="weight type (int4: QDQ opset 21; size, not CPU speed)")
    pc = p.add_mutually_exclusive_group()
    pc.add_argument("--per-channel", dest="per_channel", action="store_true", default=None, help="per-channel weight scales")
    pc.add_argument("--no-per-channel", dest="per_channel", action="store_false", help="per-tensor weight scales")
    p.add_argument("--freeze-after", type=int, metavar="STEPS", help="freeze activation ranges after this many steps (default: half the steps)")
    p.add_argument("--ranges", choices=["ema", "learnable"], default="ema", help="how activation ranges follow training (default ema)")
    p.add_argument("--seed", type=int, default=0, help="torch seed (default 0)")
    p.add_argument("--allow-fallback", action="store_true",
                   help="train and measure for a profile whose providers this host lacks, on what is available (marked FALLBACK)")
    p.add_argument("-o", "--output", required=True, help="the QAT QDQ model to write (.onnx)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import note
    from ..errors import InputError

    if importlib.util.find_spec("torch") is None:
        raise InputError("onnxq qat needs PyTorch: pip install torch==2.13.0 (a plain 'pip install torch' pulls a multi-GB CUDA build)")
    from ..runtime import resolve_profile
    from ..qat.task import run_task

    prof, why = resolve_profile(args.profile)
    if not args.quiet:
        note(f"onnxq: {why}")
    res = run_task(
        args.task, prof, args.output, calibration=args.calib, epochs=args.epochs, lr=args.lr,
        weight_type=args.weight_type, per_channel=args.per_channel, freeze_after=args.freeze_after,
        ranges=args.ranges, seed=args.seed, progress=not args.quiet and not args.json, allow_fallback=args.allow_fallback,
    )
    if args.json:
        print(json.dumps(res, default=str, indent=2))
        return 0
    for w in res["warnings"]:
        print(f"onnxq: warning: {w}", file=sys.stderr)
    print(qat_table(res))
    return 0


def qat_table(res: dict) -> str:
    """FP32 / PTQ static / QAT side by side, then the QAT run's facts."""
    from tabulate import tabulate

    from ..report import human_size

    acc, sizes = res["accuracy"], res["sizes"]
    base = acc["fp32"]
    rows = []
    entries = [("fp32", "FP32", res["fp32_model_path"]), ("ptq_static", "PTQ static INT8", res["ptq_model_path"])]
    if res.get("fp32_control_model_path"):
        entries.append(("fp32_control", "FP32 control (fine-tuned like QAT)", res["fp32_control_model_path"]))
    entries.append(("qat", f"QAT {res['weight_type'].upper()}", res["model_path"]))
    for key, label, path in entries:
        delta = "" if key == "fp32" else f"{100 * (acc[key] - base):+.2f}"
        size = sizes.get(key) or (Path(path).stat().st_size if path and Path(path).is_file() else 0)
        rows.append([label, f"{100 * acc[key]:.2f}", delta, human_size(size), path])
    out = tabulate(rows, headers=["model", f"{res['metric']} %", "vs FP32 (pts)", "size", "file"], tablefmt="github", disable_numparse=True)
    ints = res["fused"].get("integer", {})
    floats = res["fused"].get("float_after_dq", {})
    facts = [
        ["profile", res["profile"]],
        ["QAT", f"{res['epochs']} epoch(s), {res['train']['steps']} steps, lr {res['lr']:g}, ranges frozen after {res['freeze_after']} steps"],
        ["eval samples", str(res["eval_samples"])],
        ["PyTorch fake-quant vs ONNX", f"top-1 agreement {100 * (res['agreement_torch_vs_onnx'] or 0):.2f}%, "
                                       f"SQNR {res['fidelity_torch_vs_onnx']['sqnr_db']:.1f} dB"],
        ["integer kernels (CPU)", ", ".join(f"{k} x{v}" for k, v in sorted(ints.items())) or "none"],
        ["float ops after DequantizeLinear", ", ".join(f"{k} x{v}" for k, v in sorted(floats.items())) or "none"],
    ]
    if res.get("step_time_ratio"):
        st = res["step_time_s"]
        facts.append(["train step time", f"QAT {1000 * st['qat']:.1f} ms vs FP32 {1000 * st['fp32']:.1f} ms ({res['step_time_ratio']:.2f}x)"])
    if res["weight_type"] == "int4":
        facts.append(["note", "int4 weights buy size, not CPU speed: onnxruntime runs DequantizeLinear -> float Conv/Gemm"])
    return out + "\n\n" + tabulate(facts, tablefmt="simple", disable_numparse=True)
