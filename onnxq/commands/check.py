"""onnxq check MODEL --profile P"""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    from ..cli import add_common

    p = sub.add_parser(
        "check",
        help="verify a QDQ model against a hardware profile's constraints (exit 1 on any violation)",
        description="Lists every violation of the profile's QDQ rules (types, zero points, per-channel axis, Q/DQ pairs).",
        epilog="example: onnxq check model.int8.onnx --profile tensorrt",
    )
    p.add_argument("model", help="quantized .onnx model")
    p.add_argument("--profile", default="auto", help="profile name, .toml path, or auto (default)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..check import RULES, check_model
    from ..modelio import load_model
    from ..ptq import resolve_profile

    prof, why = resolve_profile(args.profile)
    model = load_model(args.model)
    violations = check_model(model, prof)
    if args.json:
        print(json.dumps({"model": args.model, "profile": prof.name, "ok": not violations,
                          "violations": [v.to_dict() for v in violations]}, indent=2))
    else:
        if violations:
            print(tabulate([[v.rule, v.node, v.detail] for v in violations], headers=["rule", "node", "detail"], tablefmt="github"))
            print(f"\n{len(violations)} violation(s) of profile {prof.name!r} ({why})")
        else:
            print(f"OK: {args.model} satisfies profile {prof.name!r}: " + "; ".join(RULES[r] for r in ("qdq-format", "activation-type", "weight-type")))
    return 1 if violations else 0
