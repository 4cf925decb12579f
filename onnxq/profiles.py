"""Hardware profiles: typed, validated views of the TOML files in ``hw_profiles/``.

>>> from onnxq.profiles import load_profile
>>> p = load_profile("cpu-x86-vnni")
>>> p.quant.activation_type, p.quant.per_channel, p.runtime.providers
('uint8', True, ('CPUExecutionProvider',))

This module imports neither onnxruntime nor torch; callers pass in the providers they found.
"""

from __future__ import annotations

import hashlib
import os
import platform
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ProfileError

__all__ = [
    "Profile",
    "QuantDefaults",
    "RuntimeSpec",
    "load_profile",
    "list_profiles",
    "auto_profile",
    "host_facts",
    "KNOWN_PROVIDERS",
]

SCHEMA_VERSION = 1
KNOWN_PROVIDERS = (
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "OpenVINOExecutionProvider",
    "DnnlExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "CoreMLExecutionProvider",
    "QNNExecutionProvider",
    "DmlExecutionProvider",
    "XnnpackExecutionProvider",
)
QTYPES = ("uint8", "int8", "int4", "uint4")
METHODS = ("minmax", "entropy", "percentile")
MODES = ("static", "dynamic", "fp16")
OPT_LEVELS = ("disable", "basic", "extended", "all")
FORMATS = ("qdq",)


@dataclass(frozen=True)
class RuntimeSpec:
    providers: tuple[str, ...]
    provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    graph_optimization_level: str = "all"
    intra_op_threads: int = 0


@dataclass(frozen=True)
class QuantDefaults:
    format: str = "qdq"
    activation_type: str = "uint8"
    activation_symmetric: bool = False
    weight_type: str = "int8"
    weight_symmetric: bool = True
    per_channel: bool = True
    reduce_range: bool = False
    calibration_method: str = "minmax"
    percentile: float = 99.999
    calibration_samples: int = 256
    op_types: str | tuple[str, ...] = "auto"
    exclude_op_types: tuple[str, ...] = ()
    modes: tuple[str, ...] = MODES
    default_mode: str = "static"
    extra_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    source: str
    sha256: str
    opset: int
    runtime: RuntimeSpec
    quant: QuantDefaults
    match: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _profile_dir() -> Path:
    return Path(str(resources.files("onnxq.hw_profiles")))


def list_profiles() -> list[Profile]:
    """Every profile shipped with onnxq, sorted by name."""
    return [_load_file(p) for p in sorted(_profile_dir().glob("*.toml"))]


def load_profile(name_or_path: str | os.PathLike | Profile) -> Profile:
    """Load a shipped profile by name, or a user's profile file by path (``*.toml``)."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise ProfileError(f"profile file {path} does not exist; give a path to a .toml file or one of: {', '.join(_names())}")
        return _load_file(path)
    path = _profile_dir() / f"{text}.toml"
    if not path.is_file():
        raise ProfileError(f"unknown profile {text!r}; choose one of: auto, {', '.join(_names())} (or a path to a .toml file)")
    return _load_file(path)


def _names() -> list[str]:
    return [p.stem for p in sorted(_profile_dir().glob("*.toml"))]


class _Reader:
    """Reads keys from one TOML table, naming file, key, bad value and allowed values on error."""

    def __init__(self, path: Path, table: dict[str, Any], prefix: str):
        self.path, self.table, self.prefix = path, table, prefix

    def fail(self, key: str, value: Any, allowed: str) -> ProfileError:
        return ProfileError(f"{self.path}: key {self.prefix}{key} = {value!r} is invalid; allowed: {allowed}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., allowed: tuple | None = None) -> Any:
        if key not in self.table:
            if default is ...:
                raise ProfileError(f"{self.path}: missing key {self.prefix}{key}")
            return default
        value = self.table[key]
        if isinstance(value, bool) and kind in (int, float):
            raise self.fail(key, value, kind.__name__)
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(key, value, names)
        if allowed is not None and value not in allowed:
            raise self.fail(key, value, ", ".join(map(str, allowed)))
        return value

    def str_list(self, key: str, default: Any = ..., allowed: tuple | None = None) -> tuple[str, ...]:
        value = self.get(key, list, default)
        if not all(isinstance(v, str) for v in value):
            raise self.fail(key, value, "a list of strings")
        if allowed is not None:
            for v in value:
                if v not in allowed:
                    raise self.fail(key, v, ", ".join(allowed))
        return tuple(value)


def _load_file(path: Path) -> Profile:
    try:
        raw_bytes = path.read_bytes()
        data = tomllib.loads(raw_bytes.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ProfileError(f"{path}: cannot read profile: {e}") from e
    top = _Reader(path, data, "")
    version = top.get("schema_version", int)
    if version != SCHEMA_VERSION:
        raise top.fail("schema_version", version, str(SCHEMA_VERSION))
    known = {"schema_version", "name", "description", "match", "export", "runtime", "quantization"}
    for key in data:
        if key not in known:
            raise top.fail(key, data[key], "keys " + ", ".join(sorted(known)))
    name = top.get("name", str)
    description = top.get("description", str, "")

    export = _Reader(path, top.get("export", dict, {}), "export.")
    opset = export.get("opset", int, 17)
    if not 10 <= opset <= 23:
        raise export.fail("opset", opset, "10..23")

    rt = _Reader(path, top.get("runtime", dict), "runtime.")
    providers = rt.str_list("providers", allowed=KNOWN_PROVIDERS)
    if not providers:
        raise rt.fail("providers", [], "a non-empty list of " + ", ".join(KNOWN_PROVIDERS))
    prov_opts = rt.get("provider_options", dict, {})
    for prov, opts in prov_opts.items():
        if prov not in providers:
            raise rt.fail(f"provider_options.{prov}", opts, "options only for listed providers: " + ", ".join(providers))
        if not isinstance(opts, dict):
            raise rt.fail(f"provider_options.{prov}", opts, "a table of options")
    runtime = RuntimeSpec(
        providers=providers,
        provider_options={k: dict(v) for k, v in prov_opts.items()},
        graph_optimization_level=rt.get("graph_optimization_level", str, "all", OPT_LEVELS),
        intra_op_threads=rt.get("intra_op_threads", int, 0),
    )
    if runtime.intra_op_threads < 0:
        raise rt.fail("intra_op_threads", runtime.intra_op_threads, "0 (default) or a positive count")

    q = _Reader(path, top.get("quantization", dict), "quantization.")
    op_types_raw = q.get("op_types", (str, list), "auto")
    if isinstance(op_types_raw, str):
        if op_types_raw != "auto":
            raise q.fail("op_types", op_types_raw, '"auto" or a list of ONNX op types')
        op_types: str | tuple[str, ...] = "auto"
    else:
        op_types = q.str_list("op_types")
    modes = q.str_list("modes", MODES, MODES)
    quant = QuantDefaults(
        format=q.get("format", str, "qdq", FORMATS),
        activation_type=q.get("activation_type", str, "uint8", ("uint8", "int8")),
        activation_symmetric=q.get("activation_symmetric", bool, False),
        weight_type=q.get("weight_type", str, "int8", QTYPES),
        weight_symmetric=q.get("weight_symmetric", bool, True),
        per_channel=q.get("per_channel", bool, True),
        reduce_range=q.get("reduce_range", bool, False),
        calibration_method=q.get("calibration_method", str, "minmax", METHODS),
        percentile=float(q.get("percentile", (int, float), 99.999)),
        calibration_samples=q.get("calibration_samples", int, 256),
        op_types=op_types,
        exclude_op_types=q.str_list("exclude_op_types", ()),
        modes=modes,
        default_mode=q.get("default_mode", str, modes[0] if "static" not in modes else "static", modes),
        extra_options=dict(q.get("extra_options", dict, {})),
    )
    if not 50.0 < quant.percentile <= 100.0:
        raise q.fail("percentile", quant.percentile, "a number in (50, 100]")
    if quant.calibration_samples < 1:
        raise q.fail("calibration_samples", quant.calibration_samples, "a positive integer")
    if quant.weight_type in ("int4", "uint4") and opset < 21:
        raise ProfileError(f"{path}: quantization.weight_type = {quant.weight_type!r} needs export.opset >= 21 (got {opset})")
    if quant.per_channel and opset < 13:
        raise ProfileError(
            f"{path}: quantization.per_channel = true needs export.opset >= 13 (got {opset}); onnxruntime would "
            "write a model it cannot load"
        )
    match = top.get("match", dict, {})
    return Profile(
        name=name,
        description=description,
        source=str(path),
        sha256=hashlib.sha256(raw_bytes).hexdigest(),
        opset=opset,
        runtime=runtime,
        quant=quant,
        match=dict(match),
    )


def host_facts() -> dict[str, Any]:
    """CPU model, architecture, int8-relevant ISA flags and core count of this host."""
    arch = platform.machine().lower()
    flags: set[str] = set()
    model = platform.processor() or arch
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("flags", "features") and not flags:
                    flags = set(value.split())
                elif key in ("model name", "cpu model") and model in (arch, ""):
                    model = value.strip()
    except OSError:
        pass
    relevant = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "avx512_bf16", "asimddp", "i8mm"]
    return {
        "arch": arch,
        "cpu_model": model,
        "isa_flags": {f: (f in flags) for f in relevant},
        "all_flags": sorted(flags),
        "cores": os.cpu_count(),
    }


def _matches(profile: Profile, available_providers: list[str], host: dict[str, Any]) -> bool:
    m = profile.match
    flags = set(host.get("all_flags", []))
    if m.get("arch") and host.get("arch") not in m["arch"]:
        return False
    if m.get("cpu_flags_any") and not flags.intersection(m["cpu_flags_any"]):
        return False
    if m.get("cpu_flags_all") and not set(m["cpu_flags_all"]).issubset(flags):
        return False
    return set(m.get("providers_all", [])).issubset(available_providers) and all(
        p in available_providers for p in profile.runtime.providers
    )


def auto_profile(available_providers: list[str], host: dict[str, Any] | None = None) -> tuple[Profile, str]:
    """Pick the best shipped profile for this host; returns it and a sentence saying why."""
    host = host or host_facts()
    candidates = [p for p in list_profiles() if _matches(p, available_providers, host)]
    if not candidates:
        raise ProfileError(
            f"--profile auto found no profile for this host (arch {host.get('arch')}, providers "
            f"{', '.join(available_providers)}); pass --profile NAME or a .toml file"
        )
    best = max(candidates, key=lambda p: (int(p.match.get("priority", 0)), p.name))
    why = f"auto-selected profile {best.name!r} for {host.get('cpu_model')} ({host.get('arch')}; providers: {', '.join(available_providers)})"
    return best, why
