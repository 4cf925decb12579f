"""onnxruntime sessions on a profile's providers, never silently on a fallback.

>>> from onnxq.runtime import make_session
>>> sess, info = make_session("model.onnx", load_profile("cpu-x86-vnni"))   # doctest: +SKIP
>>> info.active, info.fallback                                                 # doctest: +SKIP
(['CPUExecutionProvider'], False)

onnxruntime runs on CPU without a word when a requested provider is missing; here the requested
list is compared with ``session.get_providers()`` and a difference is refused, or, when the caller
allows fallback, recorded in ``SessionInfo.fallback`` / ``.note`` for every result to carry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from .errors import InputError, ProviderError, first_line
from .profiles import Profile, RuntimeSpec, auto_profile, load_profile

__all__ = ["make_session", "require_providers", "SessionInfo", "available_providers", "required_providers", "resolve_profile", "ort_info", "cpu_profile",
           "run_batches", "compute_session"]

# onnxruntime's own C++ log (warnings about unused initializers, fallbacks it then reports as errors anyway)
# would print around onnxq's one-line messages; sessions onnxq creates also set log_severity_level = 3.
ort.set_default_logger_severity(3)

_OPT = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass
class SessionInfo:
    requested: list[str]
    active: list[str]
    fallback: bool
    note: str = ""
    threads: int = 0
    optimized_model: str | None = None
    provider_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def ort_info() -> dict[str, Any]:
    """onnxruntime's version, build providers and device, for result records."""
    return {"version": ort.__version__, "build_providers": available_providers(), "device": ort.get_device()}


def resolve_profile(profile: str | Profile | None) -> tuple[Profile, str]:
    """Load a profile by name/path, or pick one for this host with ``"auto"``; returns it and why."""
    if isinstance(profile, Profile):
        return profile, f"profile {profile.name!r}"
    if profile in (None, "auto"):
        return auto_profile(available_providers())
    p = load_profile(profile)
    return p, f"profile {p.name!r}"


def cpu_profile(profile: Profile) -> Profile:
    """``profile`` on onnxruntime's CPU provider alone, at full graph optimisation: for checks that are about
    the CPU kernels by design (export parity, QAT's deployability and fusion), never for a measurement."""
    return dataclasses.replace(profile, runtime=RuntimeSpec(providers=("CPUExecutionProvider",)))


def required_providers(profile: Profile) -> list[str]:
    """The providers the profile is about: all listed ones except a trailing CPU safety net."""
    provs = list(profile.runtime.providers)
    if len(provs) > 1 and provs[-1] == "CPUExecutionProvider":
        provs = provs[:-1]
    return provs


def require_providers(profile: Profile, allow_fallback: bool, doing: str) -> list[str]:
    """Refuse, before any work, a profile whose providers this onnxruntime lacks, unless ``allow_fallback``;
    returns the missing ones (to mark FALLBACK in every result)."""
    missing = [p for p in required_providers(profile) if p not in available_providers()]
    if missing and not allow_fallback:
        raise ProviderError(
            f"profile {profile.name!r} needs {', '.join(missing)}, which this onnxruntime build lacks (available: "
            f"{', '.join(available_providers())}); onnxq {doing}: install the matching onnxruntime package, pick "
            "another --profile, or pass --allow-fallback to run on what is available (marked FALLBACK)"
        )
    return missing


def make_session(
    model: Any,
    profile: Profile,
    *,
    allow_fallback: bool = False,
    threads: int | None = None,
    optimized_model_path: str | None = None,
    spinning: bool | None = None,
) -> tuple[ort.InferenceSession, SessionInfo]:
    """Create a session on the profile's providers; raise ProviderError on a silent fallback."""
    required = required_providers(profile)
    avail = available_providers()
    missing = [p for p in required if p not in avail]
    providers: list[Any] = []
    for p in profile.runtime.providers:
        if p in avail:
            opts = profile.runtime.provider_options.get(p)
            providers.append((p, {k: str(v) if isinstance(v, bool) else v for k, v in opts.items()}) if opts else p)
    if missing and not allow_fallback:
        raise ProviderError(
            f"profile {profile.name!r} needs {', '.join(missing)}, which this onnxruntime build lacks (available: "
            f"{', '.join(avail)}); install the matching onnxruntime package, pick another --profile, or pass "
            "--allow-fallback to measure on what is available (marked as fallback)"
        )
    if not providers:
        providers = ["CPUExecutionProvider"]
    so = ort.SessionOptions()
    so.graph_optimization_level = _OPT[profile.runtime.graph_optimization_level]
    n = profile.runtime.intra_op_threads if threads is None else threads
    if n:
        so.intra_op_num_threads = n
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if spinning is False:  # idle pool threads sleep instead of spinning (several sessions timed interleaved)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_model_path:
        so.optimized_model_filepath = optimized_model_path
    if isinstance(model, (str, os.PathLike)):
        from .modelio import preflight

        preflight(model)  # onnxq's one-line message for a bad file, opset, custom op or external data
    with _session_source(model) as src:
        try:
            sess = ort.InferenceSession(src, so, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise InputError(f"onnxruntime cannot load the model: {first_line(e)}") from e
    active = list(sess.get_providers())
    inactive = [p for p in required if p not in active]
    fallback = bool(inactive)
    note = ""
    if fallback:
        note = f"FALLBACK: requested {', '.join(required)} but active {', '.join(active)}"
        if not allow_fallback:
            raise ProviderError(
                f"profile {profile.name!r}: onnxruntime did not activate {', '.join(inactive)} (active: {', '.join(active)}); "
                "check drivers/libraries, or pass --allow-fallback to accept and record the fallback"
            )
    return sess, SessionInfo(
        requested=list(profile.runtime.providers),
        active=active,
        fallback=fallback,
        note=note,
        threads=n,
        optimized_model=optimized_model_path,
        provider_options={k: dict(v) for k, v in profile.runtime.provider_options.items()},
    )


def compute_session(model: Any):
    """A CPU session with graph optimisations off, for onnxq's own arithmetic (calibration statistics, bias
    correction, sensitivity): it runs the graph as written, Q/DQ included. Never used to measure latency."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_prepacking", "1")  # no packed second copy of every weight
    with _session_source(model) as src:
        try:
            return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise InputError(first_line(e)) from e


def optimize_to_file(src: Path, dst: Path) -> None:
    """onnxruntime's basic graph optimisations (constant folding, redundant-node removal) on the model at ``src``
    (read from its file, external data included), written to ``dst`` with every initializer of 1 KiB or more in
    ``DST.data``: the model is never held by Python, so a model over 2 GB costs one copy (the session's)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    so.optimized_model_filepath = str(dst)
    so.add_session_config_entry("session.disable_prepacking", "1")
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        sess = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise InputError(first_line(e)) from e
    del sess


@contextlib.contextmanager
def _session_source(model: Any):
    """What InferenceSession takes for ``model``: a path, bytes, or for a ModelProto its bytes, or a temporary
    file with external data when it is too big to serialise (onnxruntime has read it once the session exists)."""
    if not hasattr(model, "SerializeToString"):
        yield model if isinstance(model, bytes) else os.fspath(model)
        return
    from .modelio import needs_external_data, write_model

    if not needs_external_data(model):
        yield model.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="onnxq.session.") as d:
        yield str(write_model(model, Path(d) / "model.onnx", external=True))


def run_batches(sess: ort.InferenceSession, batches) -> list[list]:
    """Run every batch; returns per-output lists of arrays (concatenate to get the whole set)."""
    names = [o.name for o in sess.get_outputs()]
    outs: list[list] = [[] for _ in names]
    for b in batches:
        feed = {i.name: b[i.name] for i in sess.get_inputs()}
        for i, v in enumerate(sess.run(None, feed)):
            outs[i].append(v)
    return outs
