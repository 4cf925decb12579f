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
                   help="expected weight type (default: the model's onnxq manifest if present, else the profile's)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..check import RULES, check_model
    from ..modelio import load_model
    from ..runtime import resolve_profile

    prof, why = resolve_profile(args.profile)
    model = load_model(args.model)
    weight_type = args.weight_type or _manifest_weight_type(args.model)
    violations = check_model(model, prof, weight_type=weight_type)
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


def _manifest_weight_type(model_path: str) -> str | None:
    """The weight type recorded in the model's own onnxq manifest (NAME.onnxq.json), if it has one."""
    from ..manifest import read_manifest, recorded_weight_type

    return recorded_weight_type(read_manifest(model_path))
