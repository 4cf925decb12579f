"""Latency of ONNX models on a profile's providers, measured interleaved, as numbers.

>>> from onnxq.bench import bench
>>> res = bench(["model.onnx", "model.int8.onnx"], "cpu-x86-vnni", batches=[1, 32], threads=1)  # doctest: +SKIP
>>> row = res.rows[-1]; row.latency.median_ms, row.speedup                                      # doctest: +SKIP
(0.41, 2.3)

Several models are measured in one process, interleaved (round r runs model (r + k) % n for
k = 0..n-1: A B, B A, A B ...), so a machine that gets slower or faster during the run biases all
of them alike and the speedups stay honest. Warm-up runs are interleaved the same way; the
garbage collector is off while timing. Each timed run is one ``session.run`` with numpy inputs,
host-to-device copies included, as an application would see it.

Sessions come from :func:`onnxq.runtime.make_session`, which compares the requested providers with
``session.get_providers()``: a fallback is refused unless ``allow_fallback``, and then marked in
every row. Latencies are :class:`LatencyStats` (milliseconds, never preformatted strings).
"""

from __future__ import annotations

import gc
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ._fs import size_with_data
from .calibration import InputSpec
from .errors import InputError
from .profiles import Profile, host_facts
from .results import LatencyStats

__all__ = [
    "LatencyStats",
    "BenchRow",
    "BenchResult",
    "bench",
    "measure_interleaved",
    "host_info",
    "peak_rss_mb",
    "session_inputs",
    "make_feeds",
    "check_same_inputs",
    "host_ceiling",
]

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass
class BenchRow:
    """One model at one batch size."""

    label: str
    model: str
    batch: int
    latency: LatencyStats
    speedup: float | None  # median of the first model / this median, same batch
    providers_requested: list[str]
    providers_active: list[str]
    fallback: bool
    note: str = ""
    size_bytes: int = 0
    load_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency"] = self.latency.to_dict()
        return d


@dataclass
class BenchResult:
    rows: list[BenchRow]
    settings: dict[str, Any]
    host: dict[str, Any]
    peak_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fallback(self) -> bool:
        return any(r.fallback for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        from .results import new_document

        return new_document(
            "bench",
            host=self.host,
            settings=self.settings,
            fallback=self.fallback,
            peak_rss_mb=self.peak_rss_mb,
            notes=list(self.notes),
            rows=[r.to_dict() for r in self.rows],
        )


# ---------------------------------------------------------------------------------------------
# Host facts


def _physical_cores() -> int | None:
    try:
        seen = set()
        phys = core = None
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not line.strip():
                    if core is not None:
                        seen.add((phys, core))
                    phys = core = None
        if core is not None:
            seen.add((phys, core))
        return len(seen) or None
    except OSError:
        return None


def _gpus() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def host_info() -> dict[str, Any]:
    """What a latency number depends on: CPU, int8 ISA flags, cores, GPUs, onnxruntime build."""
    from . import runtime

    h = host_facts()
    h.pop("all_flags", None)
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    h.update(
        hostname=platform.node(),
        os=platform.platform(),
        python=platform.python_version(),
        numpy=np.__version__,
        physical_cores=_physical_cores(),
        usable_cpus=usable,
        gpus=_gpus(),
        onnxruntime=runtime.ort_info(),
    )
    return h


def host_ceiling(n: int = 1024, runs: int = 10, threads: int = 1) -> dict[str, Any]:
    """The int8/FP32 speed ratio of one large GEMM on this host (u8 x s8 MatMulInteger vs float MatMul): the
    best a fully int8 model can approach here, printed next to a model's speed-up."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .profiles import RuntimeSpec
    from .runtime import make_session

    rng = np.random.default_rng(0)

    def model(int8: bool):
        t = TensorProto.UINT8 if int8 else TensorProto.FLOAT
        a = helper.make_tensor_value_info("a", t, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.INT32 if int8 else TensorProto.FLOAT, [n, n])
        w = rng.integers(-127, 128, (n, n)).astype(np.int8) if int8 else rng.normal(0, 1, (n, n)).astype(np.float32)
        node = helper.make_node("MatMulInteger" if int8 else "MatMul", ["a", "w"], ["y"])
        m = helper.make_model(helper.make_graph([node], "g", [a], [y], [numpy_helper.from_array(w, "w")]),
                              opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m.SerializeToString()

    prof = Profile("host-ceiling", "", "", "", 17, RuntimeSpec(providers=("CPUExecutionProvider",)), None)  # type: ignore[arg-type]
    sf, _ = make_session(model(False), prof, threads=threads)
    si, _ = make_session(model(True), prof, threads=threads)
    fa = {"a": rng.normal(0, 1, (n, n)).astype(np.float32)}
    ia = {"a": rng.integers(0, 256, (n, n)).astype(np.uint8)}
    tf, ti = measure_interleaved([lambda: sf.run(None, fa), lambda: si.run(None, ia)], warmup=2, runs=runs)
    ratio = float(np.median(tf) / np.median(ti))
    del onnx
    return {"int8_vs_fp32_gemm": ratio, "gemm": f"{n}x{n}x{n}, u8 x s8 MatMulInteger vs float MatMul", "threads": threads}


def peak_rss_mb() -> float | None:
    """Peak resident memory of THIS process (VmHWM), in MiB; None where /proc is absent."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


# ---------------------------------------------------------------------------------------------
# Inputs


def session_inputs(sess: Any) -> list[InputSpec]:
    """The inputs of an onnxruntime session as InputSpecs (fixed dims int, symbolic str/None)."""
    specs = []
    for i in sess.get_inputs():
        if i.type not in _ORT_TYPES:
            raise InputError(f"input {i.name!r} has type {i.type}, which onnxq cannot generate data for; pass --data")
        shape = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else None) for d in (i.shape or []))
        specs.append(InputSpec(i.name, _ORT_TYPES[i.type], shape))
    return specs


def _fmt_spec(s: InputSpec) -> str:
    dims = ",".join(str(d) if isinstance(d, int) else (d or "?") for d in s.shape)
    return f"{s.name}:{np.dtype(s.dtype).name}[{dims}]"


def check_same_inputs(named_specs: Sequence[tuple[str, list[InputSpec]]]) -> None:
    """Raise InputError unless every model takes the same input names, dtypes, ranks and fixed dims."""
    first_label, first = named_specs[0]
    for label, specs in named_specs[1:]:
        ok = len(specs) == len(first)
        if ok:
            for a, b in zip(sorted(first, key=lambda s: s.name), sorted(specs, key=lambda s: s.name)):
                if a.name != b.name or a.dtype != b.dtype or len(a.shape) != len(b.shape):
                    ok = False
                    break
                for x, y in list(zip(a.shape, b.shape))[1:]:
                    if isinstance(x, int) and isinstance(y, int) and x != y:
                        ok = False
        if not ok:
            raise InputError(
                f"the models take different inputs: {first_label} has {', '.join(map(_fmt_spec, first))} but {label} has "
                f"{', '.join(map(_fmt_spec, specs))}; measure together only models with the same inputs (e.g. an FP32 model "
                "and its quantized variants)"
            )


def fixed_batch(specs: Sequence[InputSpec]) -> int | None:
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    return fixed.pop() if len(fixed) == 1 else (min(fixed) if fixed else None)


def make_feeds(
    specs: Sequence[InputSpec], batch: int, *, data: dict[str, np.ndarray] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Inputs for ``batch`` samples: rows of ``data`` (tiled when short), else seeded random values.

    Random floats are standard normal, integers 0/1; a symbolic non-batch dimension needs ``data``.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for s in specs:
        if data is not None:
            arr = np.asarray(data[s.name])
            reps = -(-batch // len(arr))
            feeds[s.name] = np.ascontiguousarray(np.concatenate([arr] * reps)[:batch] if reps > 1 else arr[:batch])
            continue
        dims = []
        for axis, d in enumerate(s.shape[1:], start=1):
            if not isinstance(d, int):
                raise InputError(
                    f"input {s.name!r} has a symbolic dimension {d or '?'!s} at axis {axis}; onnxq cannot guess its size: "
                    "pass --data FILE.npz with real samples keyed by input name"
                )
            dims.append(d)
        if np.issubdtype(s.dtype, np.floating):
            feeds[s.name] = rng.standard_normal((batch, *dims)).astype(s.dtype)
        else:
            feeds[s.name] = rng.integers(0, 2, size=(batch, *dims)).astype(s.dtype)
    return feeds


# ---------------------------------------------------------------------------------------------
# Measurement


def measure_interleaved(
    fns: Sequence[Callable[[], Any]], *, warmup: int, runs: int, on_round: Callable[[], None] | None = None
) -> list[list[float]]:
    """Call each function ``warmup`` + ``runs`` times, interleaved; returns per-function times (ms).

    Round r calls function (r + k) % n for k = 0..n-1, so each one goes first equally often.
    """
    if runs < 1:
        raise InputError(f"--runs must be at least 1, got {runs}")
    if warmup < 0:
        raise InputError(f"--warmup must be 0 or more, got {warmup}")
    n = len(fns)
    for w in range(warmup):
        for k in range(n):
            fns[(w + k) % n]()
    times: list[list[float]] = [[] for _ in fns]
    clock = time.perf_counter_ns
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(runs):
            for k in range(n):
                i = (r + k) % n
                t0 = clock()
                fns[i]()
                times[i].append((clock() - t0) / 1e6)
            if on_round:
                on_round()
    finally:
        if was_enabled:
            gc.enable()
    return times


def _labels(models: Sequence[str | os.PathLike]) -> list[str]:
    out: list[str] = []
    for m in models:
        base = Path(m).name
        label, k = base, 2
        while label in out:
            label, k = f"{base}#{k}", k + 1
        out.append(label)
    return out


def open_sessions(
    models: Sequence[str | os.PathLike], profile: Profile, *, threads: int | None, allow_fallback: bool
) -> list[tuple[Any, Any, float]]:
    """(session, SessionInfo, load seconds) per model; missing files and fallbacks raise first."""
    from .runtime import make_session

    for m in models:
        p = Path(m)
        if not p.is_file():
            raise InputError(f"model file {p} does not exist; check the path")
    out = []
    for m in models:
        t0 = time.perf_counter()
        sess, info = make_session(m, profile, allow_fallback=allow_fallback, threads=threads)
        out.append((sess, info, time.perf_counter() - t0))
    return out


def bench(
    models: Sequence[str | os.PathLike],
    profile: str | Profile = "auto",
    *,
    batches: Sequence[int] = (1,),
    threads: int | None = None,
    warmup: int = 10,
    runs: int = 100,
    allow_fallback: bool = False,
    data: dict[str, np.ndarray] | None = None,
    progress: bool = False,
    labels: Sequence[str] | None = None,
) -> BenchResult:
    """Measure models interleaved at each batch size on the profile's providers.

    >>> res = bench(["fp32.onnx", "int8.onnx"], "cpu-x86-vnni", batches=[1], threads=1, runs=50)  # doctest: +SKIP
    >>> [round(r.speedup, 2) for r in res.rows]                                                    # doctest: +SKIP
    [1.0, 2.1]
    """
    from .runtime import resolve_profile

    if not models:
        raise InputError("give at least one model to measure")
    batches = [int(b) for b in batches]
    if not batches or any(b < 1 for b in batches):
        raise InputError(f"--batch sizes must be positive integers, got {batches}")
    if threads is not None and threads < 0:
        raise InputError(f"--threads must be 0 (onnxruntime's default) or a positive count, got {threads}")
    prof, why = resolve_profile(profile)
    labels = list(labels) if labels else _labels(models)
    opened = open_sessions(models, prof, threads=threads, allow_fallback=allow_fallback)
    specs = [(labels[i], session_inputs(s)) for i, (s, _, _) in enumerate(opened)]
    check_same_inputs(specs)
    fb = fixed_batch([s for _, sp in specs for s in sp])
    if fb is not None and any(b != fb for b in batches):
        raise InputError(f"a model has a fixed batch size of {fb}; use --batch {fb} or export the model with a dynamic batch axis")
    if data is not None:
        missing = [s.name for s in specs[0][1] if s.name not in data]
        if missing:
            raise InputError(f"--data lacks input(s) {', '.join(missing)}; it must be keyed by input name ({', '.join(s.name for s in specs[0][1])})")
    rows: list[BenchRow] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(batches) * runs, desc="bench", unit="round", file=sys.stderr, leave=False)
    try:
        for b in batches:
            feeds = make_feeds(specs[0][1], b, data=data)
            fns = [(lambda s=s: s.run(None, feeds)) for s, _, _ in opened]
            times = measure_interleaved(fns, warmup=warmup, runs=runs, on_round=(bar.update if bar else None))
            base = None
            for i, ((sess, info, load_s), t) in enumerate(zip(opened, times)):
                st = LatencyStats.from_times(t, batch=b, warmup=warmup)
                if i == 0:
                    base = st.median_ms
                rows.append(
                    BenchRow(
                        label=labels[i], model=str(models[i]), batch=b, latency=st,
                        speedup=(base / st.median_ms) if base and st.median_ms > 0 else None,
                        providers_requested=list(info.requested), providers_active=list(info.active),
                        fallback=bool(info.fallback), note=info.note, size_bytes=size_with_data(models[i]), load_s=load_s,
                    )
                )
    finally:
        if bar:
            bar.close()
    threads_eff = opened[0][1].threads
    settings = {
        "profile": prof.name,
        "profile_sha256": prof.sha256,
        "profile_choice": why,
        "providers_requested": list(prof.runtime.providers),
        "graph_optimization_level": prof.runtime.graph_optimization_level,
        "intra_op_threads": threads_eff,
        "intra_op_threads_note": "0 = onnxruntime's default (one thread per physical core)" if not threads_eff else "",
        "inter_op_threads": 1 if threads_eff else 0,
        "batches": batches,
        "warmup": warmup,
        "runs": runs,
        "interleaved": True,
        "allow_fallback": allow_fallback,
        "inputs": "data" if data is not None else "random (seed 0)",
    }
    notes = []
    if any(r.fallback for r in rows):
        notes.append("FALLBACK: " + "; ".join(sorted({r.note for r in rows if r.fallback})))
    return BenchResult(rows=rows, settings=settings, host=host_info(), peak_rss_mb=peak_rss_mb(), notes=notes)
