"""onnxq profiles [show NAME]"""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    from ..cli import add_common

    p = sub.add_parser(
        "profiles",
        help="list hardware profiles and whether their providers are available here; `show NAME` prints one",
        description="Hardware profiles are TOML files (shipped in onnxq/hw_profiles, or your own via --profile path.toml).",
        epilog="examples: onnxq profiles | onnxq profiles show tensorrt | onnxq profiles show auto",
    )
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("name", nargs="?", help="profile name, .toml path, or auto (with show)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..errors import InputError
    from ..profiles import auto_profile, host_facts, list_profiles, load_profile, matches_host
    from ..runtime import available_providers, required_providers

    avail = available_providers()
    if args.action == "show":
        if not args.name:
            raise InputError("`onnxq profiles show` needs a NAME (see `onnxq profiles`)")
        if args.name == "auto":
            prof, why = auto_profile(avail)
        else:
            prof, why = load_profile(args.name), "loaded"
        d = prof.to_dict()
        d["providers_available_here"] = all(p in avail for p in required_providers(prof))
        d["fits_this_host"] = matches_host(prof, avail, host_facts())
        if args.json:
            print(json.dumps(d, indent=2))
        else:
            print(f"# {prof.name} ({why})\n# source: {prof.source}\n# sha256: {prof.sha256}")
            print(json.dumps({k: v for k, v in d.items() if k not in ("source", "sha256")}, indent=2))
        return 0
    rows = []
    try:
        auto, _ = auto_profile(avail)
        auto_name = auto.name
    except Exception:  # no profile matches this host: every row says so
        auto_name = None
    host = host_facts()
    for prof in list_profiles():
        missing = [p for p in required_providers(prof) if p not in avail]
        fits = matches_host(prof, avail, host)
        why = "yes" if fits else (f"no: {', '.join(missing)} missing" if missing else
                                  f"no: this host ({host.get('arch')}) is not what it targets")
        rows.append({"name": prof.name, "available": fits, "why": why, "auto": prof.name == auto_name,
                     "providers": list(prof.runtime.providers), "description": prof.description})
    if args.json:
        print(json.dumps({"host": {k: v for k, v in host.items() if k != "all_flags"}, "providers": avail, "profiles": rows}, indent=2))
    else:
        print(tabulate([[r["name"] + (" (auto)" if r["auto"] else ""), r["why"],
                         ", ".join(r["providers"]), r["description"]] for r in rows],
                       headers=["profile", "available here", "providers", "description"], tablefmt="simple"))
    return 0
