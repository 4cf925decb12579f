"""Text tables and reports from result dicts. Imports neither onnxruntime nor torch."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

__all__ = ["quant_summary_table", "human_size"]


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == float("inf"):
            return "inf"
        return f"{v:.{digits}f}"
    return str(v)


def quant_summary_table(res: dict[str, Any]) -> str:
    """The table `onnxq quantize` prints: sizes, ops, fidelity per output, wall time."""
    plan = res["plan"]
    settings = [
        ["mode", res["mode"]],
        ["profile", plan["profile"]],
        ["output", res["output"]],
    ]
    if res["mode"] == "static":
        settings += [
            ["activations / weights", f"{plan['activation_type']}{' sym' if plan['activation_symmetric'] else ' asym'} / "
             f"{plan['weight_type']} {'per-channel' if plan['per_channel'] else 'per-tensor'}"],
            ["calibration", f"{plan['method']} on {res['calibration'].get('samples_used')} samples ({res['calibration'].get('source')})"],
            ["preprocess", res.get("preprocess", "")],
        ]
    elif res["mode"] == "dynamic":
        settings.append(["weights", f"{plan['weight_type']} {'per-channel' if plan['per_channel'] else 'per-tensor'}"])
    settings += [
        ["op types", (", ".join(res["op_types"]) or "all quantizable") + f"  ({res['op_types_reason']})"],
        ["size", f"{human_size(res['size_before'])} -> {human_size(res['size_after'])} ({res['size_after'] / max(res['size_before'], 1):.2f}x)"],
        ["nodes quantized / float", f"{res['quantized_nodes']} / {res['float_nodes']}"],
        ["validated on", ", ".join(res["validation"]["providers"]["active"]) + (" (FALLBACK)" if res["validation"]["providers"]["fallback"] else "")
         + f", {res['validation']['samples']} held-out samples"],
        ["wall time", f"{res['wall_s']:.2f} s"],
    ]
    out = tabulate(settings, tablefmt="simple", disable_numparse=True)
    rows = []
    for name, f in res["fidelity"].items():
        rows.append([name, _fmt(f["cosine"], 5), _fmt(f["sqnr_db"], 1), _fmt(f["max_abs"], 4), _fmt(f.get("top1_agreement"), 4)])
    out += "\n\n" + tabulate(rows, headers=["output", "cosine", "SQNR dB", "max-abs", "top-1 agree"], tablefmt="github")
    return out
