"""Hardware profiles: typed, validated views of the TOML files in ``hw_profiles/``.

>>> from onnxq.profiles import load_profile
>>> p = load_profile("cpu-x86-vnni")
>>> p.quant.activation_type, p.quant.per_channel, p.runtime.providers
('uint8', True, ('CPUExecutionProvider',))
>>> p.quant.layout.float_outputs
('MatMul', 'Gemm')

Every table is read through one strict reader: an unknown key is refused naming the file, the key
and the allowed keys (with a "did you mean"), a bad value naming the allowed values. This module
imports neither onnxruntime nor torch; callers pass in the providers they found.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import platform
import re
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ProfileError
from .vocab import (
    ACTIVATION_TYPES, BIAS_CORRECTION, FORMATS, KNOWN_PROVIDERS, METHODS, MODES, OPT_LEVELS, WEIGHT_TYPES, percentile_problem,
    samples_problem,
)

__all__ = [
    "Profile", "QuantSpec", "LayoutSpec", "RuntimeSpec", "MatchSpec", "load_profile", "list_profiles",
    "auto_profile", "host_facts", "SCHEMA_VERSION", "PROVIDER_OPTIONS",
]

SCHEMA_VERSION = 2
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Provider options onnxq accepts in [runtime.provider_options.<provider>] (onnxruntime's documented
# names; a typo would otherwise be ignored or fail only on the GPU host). Providers not listed here
# take any scalar option.
PROVIDER_OPTIONS: dict[str, frozenset[str]] = {
    "CPUExecutionProvider": frozenset(),
    "CUDAExecutionProvider": frozenset({
        "device_id", "gpu_mem_limit", "arena_extend_strategy", "cudnn_conv_algo_search", "do_copy_in_default_stream",
        "cudnn_conv_use_max_workspace", "cudnn_conv1d_pad_to_nc1d", "enable_cuda_graph", "enable_skip_layer_norm_strict_mode",
        "prefer_nhwc", "use_tf32", "tunable_op_enable", "tunable_op_tuning_enable", "tunable_op_max_tuning_duration_ms",
        "use_ep_level_unified_stream", "gpu_external_alloc", "gpu_external_free", "gpu_external_empty_cache",
        "has_user_compute_stream", "user_compute_stream", "sdpa_kernel", "fuse_conv_bias",
    }),
    "TensorrtExecutionProvider": frozenset({
        "device_id", "has_user_compute_stream", "user_compute_stream", "trt_max_partition_iterations",
        "trt_min_subgraph_size", "trt_max_workspace_size", "trt_fp16_enable", "trt_bf16_enable", "trt_int8_enable",
        "trt_int8_calibration_table_name", "trt_int8_use_native_calibration_table", "trt_dla_enable", "trt_dla_core",
        "trt_dump_subgraphs", "trt_engine_cache_enable", "trt_engine_cache_path", "trt_engine_cache_prefix",
        "trt_engine_decryption_enable", "trt_engine_decryption_lib_path", "trt_force_sequential_engine_build",
        "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback", "trt_timing_cache_enable",
        "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log", "trt_build_heuristics_enable",
        "trt_sparsity_enable", "trt_builder_optimization_level", "trt_auxiliary_streams", "trt_tactic_sources",
        "trt_extra_plugin_lib_paths", "trt_profile_min_shapes", "trt_profile_max_shapes", "trt_profile_opt_shapes",
        "trt_cuda_graph_enable", "trt_dump_ep_context_model", "trt_ep_context_file_path", "trt_ep_context_embed_mode",
        "trt_weight_stripped_engine_enable", "trt_onnx_model_folder_path", "trt_engine_hw_compatible",
        "trt_op_types_to_exclude", "trt_load_user_initializer",
    }),
}


@dataclass(frozen=True)
class MatchSpec:
    """When ``--profile auto`` may pick this profile (every listed condition must hold)."""

    arch: tuple[str, ...] = ()
    cpu_flags_any: tuple[str, ...] = ()
    cpu_flags_all: tuple[str, ...] = ()
    providers_all: tuple[str, ...] = ()
    priority: int = 0


@dataclass(frozen=True)
class RuntimeSpec:
    providers: tuple[str, ...]
    provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    graph_optimization_level: str = "all"
    intra_op_threads: int = 0


@dataclass(frozen=True)
class LayoutSpec:
    """Where Q/DQ pairs go, in onnxq's words (``onnxq.ptq.ort_arguments`` alone translates them)."""

    float_outputs: tuple[str, ...] = ()  # op types whose outputs stay float (no requantization after them)
    weight_qdq_pair: bool = False  # float weights behind QuantizeLinear -> DequantizeLinear (TensorRT)
    dedicated_qdq_pair: bool = False  # each DequantizeLinear feeds exactly one consumer (TensorRT)
    keep_removable_activations: bool = False  # keep Q/DQ around Relu/Clip that onnxruntime would fold away


@dataclass(frozen=True)
class QuantSpec:
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
    layout: LayoutSpec = field(default_factory=LayoutSpec)
    bias_correction: str = "none"  # none | fast | full (onnxq.algorithms.bias_correction)
    smoothquant: str | float | None = None  # None: off; "auto": alpha searched; a number: that alpha
    cle: bool = False  # cross-layer equalization of Conv -> activation -> Conv pairs


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    source: str
    sha256: str
    opset: int
    runtime: RuntimeSpec
    quant: QuantSpec
    match: MatchSpec = field(default_factory=MatchSpec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _profile_dir() -> Path:
    return Path(str(resources.files("onnxq.hw_profiles")))


def _names() -> list[str]:
    return [p.stem for p in sorted(_profile_dir().glob("*.toml"))]


def list_profiles() -> list[Profile]:
    """Every profile shipped with onnxq, sorted by name."""
    return [_load_file(p, shipped=True) for p in sorted(_profile_dir().glob("*.toml"))]


def load_profile(name_or_path: str | os.PathLike | Profile) -> Profile:
    """Load a shipped profile by name, or a user's profile file by path (``*.toml``)."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text or "/" in text:
        path = Path(text)
        if not path.is_file():
            raise ProfileError(f"profile file {path} does not exist; give a path to a .toml file or one of: {', '.join(_names())}")
        return _load_file(path, shipped=False)
    path = _profile_dir() / f"{text}.toml"
    if not path.is_file():
        raise ProfileError(f"unknown profile {text!r}; choose one of: auto, {', '.join(_names())} (or a path to a .toml file)")
    return _load_file(path, shipped=True)


class _Table:
    """One TOML table: refuses unknown keys; each read names file, key, bad value and allowed values."""

    def __init__(self, path: Path, table: Any, prefix: str, keys: tuple[str, ...]):
        self.path, self.prefix = path, prefix
        if not isinstance(table, dict):
            where = prefix[:-1] if prefix else "the file"
            raise ProfileError(f"{path}: [{where}] must be a table of keys, got {table!r}")
        self.table = table
        for key in table:
            if key not in keys:
                close = difflib.get_close_matches(key, keys, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ProfileError(f"{path}: unknown key {prefix}{key}{hint}; allowed keys: {', '.join(keys)}")

    def fail(self, key: str, value: Any, allowed: str) -> ProfileError:
        return ProfileError(f"{self.path}: key {self.prefix}{key} = {value!r} is invalid; allowed: {allowed}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., allowed: tuple | None = None) -> Any:
        if key not in self.table:
            if default is ...:
                raise ProfileError(f"{self.path}: missing key {self.prefix}{key}")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(key, value, " or ".join(k.__name__ for k in kinds))
        if not isinstance(value, kinds):
            raise self.fail(key, value, " or ".join(k.__name__ for k in kinds))
        if allowed is not None and value not in allowed:
            raise self.fail(key, value, ", ".join(map(str, allowed)))
        return value

    def str_list(self, key: str, default: Any = ..., allowed: tuple | None = None, nonempty: bool = False) -> tuple[str, ...]:
        value = self.get(key, list, default)
        if not all(isinstance(v, str) for v in value):
            raise self.fail(key, value, "a list of strings")
        if nonempty and not value:
            raise self.fail(key, value, "a non-empty list" + (" of " + ", ".join(allowed) if allowed else ""))
        for v in value:
            if allowed is not None and v not in allowed:
                raise self.fail(key, v, ", ".join(allowed))
        return tuple(value)

    def sub(self, key: str, keys: tuple[str, ...], required: bool = False) -> "_Table":
        if required and key not in self.table:
            raise ProfileError(f"{self.path}: missing table [{self.prefix}{key}]")
        return _Table(self.path, self.table.get(key, {}), f"{self.prefix}{key}.", keys)


_TOP_KEYS = ("schema_version", "name", "description", "match", "export", "runtime", "quantization")
_MATCH_KEYS = ("arch", "cpu_flags_any", "cpu_flags_all", "providers_all", "priority")
_RUNTIME_KEYS = ("providers", "provider_options", "graph_optimization_level", "intra_op_threads")
_QUANT_KEYS = ("format", "activation_type", "activation_symmetric", "weight_type", "weight_symmetric", "per_channel",
               "reduce_range", "calibration_method", "percentile", "calibration_samples", "op_types", "exclude_op_types",
               "modes", "default_mode", "layout", "bias_correction", "smoothquant", "cle")
_LAYOUT_KEYS = ("float_outputs", "weight_qdq_pair", "dedicated_qdq_pair", "keep_removable_activations")


def _load_file(path: Path, *, shipped: bool) -> Profile:
    try:
        raw_bytes = path.read_bytes()
        data = tomllib.loads(raw_bytes.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ProfileError(f"{path}: cannot read profile: {e}") from e
    top = _Table(path, data, "", _TOP_KEYS)
    version = top.get("schema_version", int)
    if version == 1:
        raise ProfileError(
            f"{path}: schema_version 1 profiles (onnxq 0.1) are no longer read: set schema_version = 2 and replace "
            "[quantization.extra_options] by [quantization.layout] (float_outputs, weight_qdq_pair, dedicated_qdq_pair, "
            "keep_removable_activations); see the shipped profiles in onnxq/hw_profiles"
        )
    if version != SCHEMA_VERSION:
        raise top.fail("schema_version", version, str(SCHEMA_VERSION))
    name = top.get("name", str)
    if not _NAME.match(name):
        raise top.fail("name", name, "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (it names output folders)")
    if shipped and name != path.stem:
        raise top.fail("name", name, f"{path.stem!r} (a shipped profile is named after its file)")
    opset = top.sub("export", ("opset",)).get("opset", int, 17)
    if not 10 <= opset <= 23:
        raise ProfileError(f"{path}: key export.opset = {opset!r} is invalid; allowed: 10..23")
    quant = _read_quant(top.sub("quantization", _QUANT_KEYS, required=True))
    if quant.weight_type in ("int4", "uint4") and opset < 21:
        raise ProfileError(f"{path}: quantization.weight_type = {quant.weight_type!r} needs export.opset >= 21 (got {opset})")
    if quant.per_channel and opset < 13:
        raise ProfileError(
            f"{path}: quantization.per_channel = true needs export.opset >= 13 (got {opset}); onnxruntime would "
            "write a model it cannot load"
        )
    return Profile(
        name=name,
        description=top.get("description", str, ""),
        source=str(path),
        sha256=hashlib.sha256(raw_bytes).hexdigest(),
        opset=opset,
        runtime=_read_runtime(top.sub("runtime", _RUNTIME_KEYS, required=True)),
        quant=quant,
        match=_read_match(top.sub("match", _MATCH_KEYS)),
    )


def _read_match(m: _Table) -> MatchSpec:
    return MatchSpec(
        arch=m.str_list("arch", ()),
        cpu_flags_any=m.str_list("cpu_flags_any", ()),
        cpu_flags_all=m.str_list("cpu_flags_all", ()),
        providers_all=m.str_list("providers_all", (), KNOWN_PROVIDERS),
        priority=m.get("priority", int, 0),
    )


def _read_runtime(rt: _Table) -> RuntimeSpec:
    providers = rt.str_list("providers", allowed=KNOWN_PROVIDERS, nonempty=True)
    opts_table = rt.sub("provider_options", providers)
    options: dict[str, dict[str, Any]] = {}
    for prov, raw in opts_table.table.items():
        known = PROVIDER_OPTIONS.get(prov)
        keys = tuple(sorted(known)) if known is not None else tuple(raw) if isinstance(raw, dict) else ()
        sub = _Table(rt.path, raw, f"runtime.provider_options.{prov}.", keys)
        for key, value in sub.table.items():
            if not isinstance(value, (str, int, float, bool)):
                raise sub.fail(key, value, "a string, number or boolean")
        options[prov] = dict(sub.table)
    threads = rt.get("intra_op_threads", int, 0)
    if threads < 0:
        raise rt.fail("intra_op_threads", threads, "0 (onnxruntime's default) or a positive count")
    return RuntimeSpec(
        providers=providers,
        provider_options=options,
        graph_optimization_level=rt.get("graph_optimization_level", str, "all", OPT_LEVELS),
        intra_op_threads=threads,
    )


def _read_quant(q: _Table) -> QuantSpec:
    op_types_raw = q.get("op_types", (str, list), "auto")
    if isinstance(op_types_raw, str):
        if op_types_raw != "auto":
            raise q.fail("op_types", op_types_raw, '"auto" or a non-empty list of ONNX op types')
        op_types: str | tuple[str, ...] = "auto"
    else:
        op_types = q.str_list("op_types", nonempty=True)
    modes = q.str_list("modes", MODES, MODES, nonempty=True)
    percentile = q.get("percentile", (int, float), 99.999)
    if percentile_problem(percentile):
        raise q.fail("percentile", percentile, "a number in (50, 100]")
    samples = q.get("calibration_samples", int, 256)
    if samples_problem(samples):
        raise q.fail("calibration_samples", samples, "a positive integer")
    lay = q.sub("layout", _LAYOUT_KEYS)
    sq = q.get("smoothquant", (bool, str, int, float), False)
    if sq is True or (isinstance(sq, str) and sq != "auto") or (not isinstance(sq, (bool, str)) and not 0.0 < sq < 1.0):
        raise q.fail("smoothquant", sq, 'false, "auto" (alpha searched on held-out samples) or an alpha in (0, 1)')
    return QuantSpec(
        format=q.get("format", str, "qdq", FORMATS),
        activation_type=q.get("activation_type", str, "uint8", ACTIVATION_TYPES),
        activation_symmetric=q.get("activation_symmetric", bool, False),
        weight_type=q.get("weight_type", str, "int8", WEIGHT_TYPES),
        weight_symmetric=q.get("weight_symmetric", bool, True),
        per_channel=q.get("per_channel", bool, True),
        reduce_range=q.get("reduce_range", bool, False),
        calibration_method=q.get("calibration_method", str, "minmax", METHODS),
        percentile=float(percentile),
        calibration_samples=samples,
        op_types=op_types,
        exclude_op_types=q.str_list("exclude_op_types", ()),
        modes=modes,
        default_mode=q.get("default_mode", str, "static" if "static" in modes else modes[0], modes),
        layout=LayoutSpec(
            float_outputs=lay.str_list("float_outputs", ()),
            weight_qdq_pair=lay.get("weight_qdq_pair", bool, False),
            dedicated_qdq_pair=lay.get("dedicated_qdq_pair", bool, False),
            keep_removable_activations=lay.get("keep_removable_activations", bool, False),
        ),
        bias_correction=q.get("bias_correction", str, "none", BIAS_CORRECTION),
        smoothquant=None if sq is False else (sq if isinstance(sq, str) else float(sq)),
        cle=q.get("cle", bool, False),
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


def matches_host(profile: Profile, available_providers: list[str], host: dict[str, Any]) -> bool:
    """Whether this host can run ``profile``: its match table and every provider it lists."""
    m = profile.match
    flags = set(host.get("all_flags", []))
    if m.arch and host.get("arch") not in m.arch:
        return False
    if m.cpu_flags_any and not flags.intersection(m.cpu_flags_any):
        return False
    if m.cpu_flags_all and not set(m.cpu_flags_all).issubset(flags):
        return False
    return set(m.providers_all).issubset(available_providers) and all(p in available_providers for p in profile.runtime.providers)


def auto_profile(available_providers: list[str], host: dict[str, Any] | None = None) -> tuple[Profile, str]:
    """Pick the best shipped profile for this host; returns it and a sentence saying why."""
    host = host or host_facts()
    candidates = [p for p in list_profiles() if matches_host(p, available_providers, host)]
    if not candidates:
        raise ProfileError(
            f"--profile auto found no profile for this host (arch {host.get('arch')}, providers "
            f"{', '.join(available_providers)}); pass --profile NAME or a .toml file"
        )
    best = max(candidates, key=lambda p: (p.match.priority, p.name))
    why = f"auto-selected profile {best.name!r} for {host.get('cpu_model')} ({host.get('arch')}; providers: {', '.join(available_providers)})"
    return best, why
