"""onnxq check MODEL --profile P"""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    from ..cli import add_common
    from ..vocab import WEIGHT_TYPES

    p = sub.add_parser(
        "check",
        help="verify a QDQ model against a hardware profile's constraints (exit 1 on any violation)",
        description="Lists every violation of the profile's QDQ rules (types, zero points, per-channel axis, Q/DQ pairs).",
        epilog="example: onnxq check model.int8.onnx --profile tensorrt",
    )
    p.add_argument("model", help="quantized .onnx model")
    p.add_argument("--profile", default="auto", help="profile name, .toml path, or auto (default)")
    p.add_argument("--weight-type", choices=WEIGHT_TYPES,
                   help="expected weight type (default: the one onnxq recorded in the model's metadata, else the profile's)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..check import RULES, check_model, summarize
    from ..modelio import load_model, recorded_weight_type
    from ..runtime import resolve_profile

    prof, why = resolve_profile(args.profile)
    model = load_model(args.model)
    # the weight type onnxq wrote into the model itself (not the sidecar manifest): same answer with or without it
    weight_type = args.weight_type or recorded_weight_type(model)
    violations = check_model(model, prof, weight_type=weight_type)
    groups = summarize(violations, prof)
    if args.json:
        print(json.dumps({"model": args.model, "profile": prof.name, "ok": not violations, "weight_type": weight_type,
                          "rules": groups, "violations": [v.to_dict() for v in violations]}, indent=2))
    elif violations:
        rows = [[g["rule"], g["count"], g["examples"][0][:90], g["fix"]] for g in groups]
        print(tabulate(rows, headers=["rule", "nodes", "first example", "fix"], tablefmt="github"))
        print(f"\n{len(violations)} violation(s) of profile {prof.name!r} in {len(groups)} rule(s)")
    else:
        print(f"OK: {args.model} satisfies profile {prof.name!r} ({why}): "
              + "; ".join(RULES[r] for r in ("qdq-format", "activation-type", "weight-type")))
    return 1 if violations else 0
