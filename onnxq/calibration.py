"""Calibration data: loading, checking against the model, and streaming range collection.

>>> from onnxq.calibration import CalibrationSet
>>> calib = CalibrationSet.from_source("calib.npz", model)        # doctest: +SKIP
>>> report = collect_ranges(model, calib, method="percentile", percentile=99.999, op_types=("Conv",))  # doctest: +SKIP

Memory stays bounded: one batch of intermediate outputs is alive at a time, and entropy /
percentile use fixed-size histograms of |x| whose range doubles (merging bin pairs exactly) when a
larger value arrives. onnxruntime's own Histogram calibrators keep every activation in memory.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import onnx

from .errors import InputError

__all__ = ["CalibrationSet", "InputSpec", "model_inputs", "collect_ranges", "RangeReport", "HUGE"]

# Range estimators that average one statistic per calibration batch (see _Collector).
PER_BATCH_METHODS = ("mean_minmax", "mean_percentile")
MIN_GROUP = 4096  # values one per-batch statistic is read from at least (small tensors pool consecutive batches)
# Activations whose magnitude reaches this are treated like +-inf (additive attention masks that
# use finfo.min): quantizing them would crush every other value of the tensor to zero.
HUGE = 1e6

_ONNX_TO_NP = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}
# Lossless, unsurprising conversions done silently (and recorded).
_SAFE_CASTS = {(np.float64, np.float32), (np.int32, np.int64), (np.int64, np.int32)}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: type
    shape: tuple[int | str | None, ...]  # int for fixed dims, str/None for symbolic ones

    @property
    def batch_fixed(self) -> int | None:
        return self.shape[0] if self.shape and isinstance(self.shape[0], int) else None


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        specs.append(InputSpec(vi.name, _ONNX_TO_NP.get(tt.elem_type, np.float32), tuple(dims)))
    return specs


def _fmt_shape(shape: tuple) -> str:
    return "x".join(str(d) if isinstance(d, int) else (d or "?") for d in shape)


class CalibrationSet:
    """A checked, re-iterable set of samples (one dict per sample, each array without batch axis).

    Sources: ``.npz`` keyed by input name (leading axis = samples), ``.npy`` for single-input models,
    a directory of such files, or any iterable of ``{input_name: array}`` (batched or single).
    """

    def __init__(self, arrays: dict[str, np.ndarray], specs: list[InputSpec], origin: str, notes: list[str]):
        self.arrays = arrays
        self.specs = specs
        self.origin = origin
        self.notes = notes
        self.count = len(next(iter(arrays.values()))) if arrays else 0

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_source(cls, source: Any, model: onnx.ModelProto, *, limit: int | None = None) -> "CalibrationSet":
        specs = model_inputs(model)
        if isinstance(source, CalibrationSet):
            return source
        if isinstance(source, (str, os.PathLike)):
            chunks, origin = _read_path(Path(source), specs), str(source)
        elif isinstance(source, Mapping):
            chunks, origin = [dict(source)], "in-memory mapping"
        elif isinstance(source, Iterable):
            chunks, origin = iter(source), "in-memory iterable"
        else:
            raise InputError(f"calibration data must be a path (.npz/.npy/directory) or an iterable of {{input_name: array}}, got {type(source).__name__}")
        return cls._build(chunks, specs, origin, limit)

    @classmethod
    def random(cls, model: onnx.ModelProto, count: int, seed: int = 0) -> "CalibrationSet":
        """Random normal data: NOT representative; only for smoke tests (``--calib-random``)."""
        specs = model_inputs(model)
        rng = np.random.default_rng(seed)
        arrays = {}
        for s in specs:
            dims = [d if isinstance(d, int) else 1 for d in s.shape[1:]]
            if np.issubdtype(s.dtype, np.floating):
                arrays[s.name] = rng.standard_normal((count, *dims)).astype(s.dtype)
            else:
                arrays[s.name] = rng.integers(0, 2, size=(count, *dims)).astype(s.dtype)
        return cls(arrays, specs, f"random normal x{count} (NOT representative)", ["random data: ranges are not representative"])

    @classmethod
    def _build(cls, chunks: Iterable[dict[str, Any]], specs: list[InputSpec], origin: str, limit: int | None) -> "CalibrationSet":
        names = [s.name for s in specs]
        collected: dict[str, list[np.ndarray]] = {n: [] for n in names}
        notes: list[str] = []
        total = 0
        for i, chunk in enumerate(chunks):
            if not isinstance(chunk, Mapping):
                raise InputError(f"calibration item {i} from {origin} is a {type(chunk).__name__}, expected a dict {{input_name: array}}")
            missing = [n for n in names if n not in chunk]
            extra = [k for k in chunk if k not in names]
            if missing or extra:
                raise InputError(
                    f"calibration data from {origin} does not match the model inputs: missing {missing or 'none'}, "
                    f"unexpected {extra or 'none'}; the model expects {names}"
                )
            rows = None
            for spec in specs:
                arr = check_input_array(chunk[spec.name], spec, origin, notes)
                if rows is None:
                    rows = len(arr)
                elif len(arr) != rows:
                    raise InputError(f"calibration item {i} from {origin}: inputs hold different sample counts ({rows} vs {len(arr)} for {spec.name!r})")
                collected[spec.name].append(arr)
            total += rows or 0
            if limit is not None and total >= limit:
                break
        if total == 0:
            raise InputError(f"calibration data from {origin} is empty; provide at least one sample per input")
        arrays = {n: np.concatenate(v, axis=0) for n, v in collected.items()}
        if limit is not None:
            arrays = {n: a[:limit] for n, a in arrays.items()}
        return cls(arrays, specs, origin, sorted(set(notes)))

    # -- use ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.count

    def split(self, holdout: int, wanted: int | None = None) -> tuple["CalibrationSet", "CalibrationSet"]:
        """(calibration part, held-out part). With one sample both parts are that sample.

        With ``wanted``, the data holding ``wanted + holdout`` samples or more gives exactly ``wanted``
        calibration samples and ``holdout`` held out; less data holds out at most a fifth.
        """
        if self.count < 2 or holdout <= 0:
            return self, self
        if wanted is None or self.count < wanted + holdout:
            holdout = min(holdout, max(1, self.count // 5))
        cut = self.count - holdout
        a = CalibrationSet({k: v[:cut] for k, v in self.arrays.items()}, self.specs, self.origin, self.notes)
        b = CalibrationSet({k: v[cut:] for k, v in self.arrays.items()}, self.specs, self.origin + " (held out)", self.notes)
        return a, b

    def batch_size(self, preferred: int = 16) -> int:
        """``preferred``, unless the model fixes its batch size."""
        fixed = [s.batch_fixed for s in self.specs if s.batch_fixed is not None]
        return fixed[0] if fixed else preferred

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        bs = batch_size or self.batch_size()
        fixed = any(s.batch_fixed is not None for s in self.specs)
        for start in range(0, self.count, bs):
            stop = start + bs
            if fixed and stop > self.count:
                break  # a fixed batch dimension cannot take a short last batch
            yield {k: v[start:stop] for k, v in self.arrays.items()}

    def num_batches(self, batch_size: int | None = None) -> int:
        bs = batch_size or self.batch_size()
        fixed = any(s.batch_fixed is not None for s in self.specs)
        return self.count // bs if fixed else -(-self.count // bs)

    def sha256(self) -> str:
        h = hashlib.sha256()
        for k in sorted(self.arrays):
            a = np.ascontiguousarray(self.arrays[k])
            h.update(k.encode())
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.tobytes())
        return h.hexdigest()


def _read_path(path: Path, specs: list[InputSpec]) -> Iterator[dict[str, Any]]:
    if not path.exists():
        raise InputError(f"calibration data {path} does not exist; pass a .npz, .npy or a directory of them")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy"))
        if not files:
            raise InputError(f"calibration directory {path} holds no .npz or .npy files")
        for f in files:
            yield from _read_file(f, specs)
    else:
        yield from _read_file(path, specs)


def _read_file(path: Path, specs: list[InputSpec]) -> Iterator[dict[str, Any]]:
    try:
        if path.suffix == ".npy":
            if len(specs) != 1:
                raise InputError(
                    f"{path}: a .npy file can only feed a single-input model; this model has inputs "
                    f"{[s.name for s in specs]}: use a .npz keyed by input name"
                )
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            yield {specs[0].name: arr}
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                yield {k: z[k] for k in z.files}
        else:
            raise InputError(f"calibration file {path} must be .npz (keyed by input name) or .npy (single input)")
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"cannot read calibration file {path}: {e}") from e


def check_input_array(value: Any, spec: InputSpec, origin: str, notes: list[str], *, role: str = "calibration",
                      single_sample_ok: bool = True) -> np.ndarray:
    """Check one input's samples against the model (rank, fixed dims, dtype, NaN); cast when lossless."""
    try:
        arr = np.asarray(value)
    except Exception as e:
        raise InputError(f"{role} input {spec.name!r} from {origin} is not an array: {e}") from e
    rank = len(spec.shape)
    if single_sample_ok and arr.ndim == rank - 1:
        arr = arr[None]  # a single sample without its batch axis
    if arr.ndim != rank:
        raise InputError(
            f"{role} input {spec.name!r} from {origin} has shape {arr.shape} (rank {arr.ndim}); the model expects "
            f"rank {rank} ({_fmt_shape(spec.shape)})" + (f", or rank {rank - 1} for a single sample" if single_sample_ok else " with samples on the first axis")
        )
    for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
        if axis == 0:
            continue
        if isinstance(want, int) and want != got:
            raise InputError(
                f"{role} input {spec.name!r} from {origin} has shape {arr.shape}; dimension {axis} must be {want} "
                f"(model input shape {_fmt_shape(spec.shape)})"
            )
    if arr.dtype != spec.dtype:
        if (arr.dtype.type, spec.dtype) in _SAFE_CASTS:
            notes.append(f"{spec.name}: cast {arr.dtype} -> {np.dtype(spec.dtype).name}")
            arr = arr.astype(spec.dtype)
        else:
            raise InputError(
                f"{role} input {spec.name!r} from {origin} has dtype {arr.dtype}; the model expects "
                f"{np.dtype(spec.dtype).name}: convert it with .astype(np.{np.dtype(spec.dtype).name})"
            )
    if np.issubdtype(arr.dtype, np.floating):
        bad = np.isnan(arr)
        if bad.any():
            raise InputError(
                f"{role} input {spec.name!r} from {origin} contains {int(bad.sum())} NaN value(s) "
                f"(first at index {tuple(int(i) for i in np.argwhere(bad)[0])}); clean or drop those samples"
            )
        if np.isinf(arr).any():
            # +-inf is legitimate in additive attention masks: allowed, kept in float downstream.
            notes.append(f"{spec.name}: contains +-inf (treated as a mask; tensors carrying it stay in float)")
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------------------------------
# Range collection


class _Hist:
    """Histogram of positive magnitudes on [0, top); top doubles (bins merge pairwise, exactly)."""

    def __init__(self, num_bins: int):
        self.nb = num_bins
        self.counts = np.zeros(num_bins, dtype=np.int64)
        self.top = 0.0

    def add(self, a: np.ndarray) -> None:
        if a.size == 0:
            return
        amax = float(a.max())
        if self.top == 0.0:
            self.top = amax if amax > 0 else 1e-12
        if amax > self.top:
            steps, top = 0, self.top
            while amax > top:
                top, steps = top * 2.0, steps + 1
            if (1 << steps) >= self.nb:
                total = self.counts.sum()
                self.counts[:] = 0
                self.counts[0] = total
            else:
                merged = self.counts.reshape(-1, 1 << steps).sum(axis=1)
                self.counts[:] = 0
                self.counts[: merged.size] = merged
            self.top = top
        idx = np.minimum((a * (self.nb / self.top)).astype(np.int64), self.nb - 1)
        self.counts += np.bincount(idx, minlength=self.nb)

    @property
    def total(self) -> int:
        return int(self.counts.sum())


@dataclass
class _TensorStats:
    lo: float = np.inf
    hi: float = -np.inf
    nonfinite: int = 0
    count: int = 0
    pos: _Hist | None = None  # x > 0
    neg: _Hist | None = None  # -x for x < 0 (exact zeros are kept out: they quantize exactly)
    sum_lo: float = 0.0  # per-batch estimators: sums of each group's statistic
    sum_hi: float = 0.0
    batches: int = 0
    pending: list = field(default_factory=list)  # values of the group being filled (small tensors only)
    pending_size: int = 0


@dataclass
class RangeReport:
    """What calibration found: a range per tensor, plus tensors it had to keep in float."""

    ranges: dict[str, tuple[float, float]]
    float_tensors: dict[str, str] = field(default_factory=dict)  # tensor -> why
    samples: int = 0
    method: str = "minmax"


class _Collector:
    """Streaming per-tensor statistics: min/max always; then by method

    - ``minmax``: the whole stream's min and max;
    - ``percentile`` / ``entropy``: one histogram per sign over the whole stream, then a tail cut or a
      KL search. Each sign gets its own histogram so an asymmetric tensor (a normalised image whose
      background sits at -0.8, a ReLU output with a spike of exact zeros) keeps both tails: folding
      into |x| made the KL search clip the image's whole foreground on the Fashion-MNIST demo;
    - ``mean_minmax`` / ``mean_percentile``: each calibration batch's own min and max (or its own
      ``100 - p`` / ``p`` percentiles), averaged over the batches (NNCF's default range estimator;
      with batches of one sample, per-sample statistics). Two running sums per tensor. A batch of a
      small tensor (under ``MIN_GROUP`` values: a classifier's 1280 features, a small CNN's late
      maps) is pooled with the next ones until the group holds that many: the extremes of a handful
      of values are noise, and averaging them clipped a tiny CNN's Gemm input to half its range.
    """

    def __init__(self, method: str, num_bins: int, percentile: float = 99.999, whole_range: frozenset[str] = frozenset()):
        self.method = method
        self.num_bins = num_bins
        self.percentile = percentile
        self.whole_range = whole_range  # tensors that keep the whole stream's min/max under the per-batch methods
        self.stats: dict[str, _TensorStats] = {}

    def add(self, name: str, x: np.ndarray) -> None:
        st = self.stats.setdefault(name, _TensorStats())
        if x.size == 0:
            return
        x = x.astype(np.float32, copy=False).ravel()
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            finite = np.isfinite(x)
            st.nonfinite += int(x.size - finite.sum())
            x = x[finite]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        st.lo, st.hi = min(st.lo, lo), max(st.hi, hi)
        st.count += x.size
        if self.method in PER_BATCH_METHODS:
            if x.size >= MIN_GROUP and not st.pending:
                self._group(st, x, lo, hi)
            else:
                st.pending.append(x.copy())
                st.pending_size += x.size
                if st.pending_size >= MIN_GROUP:
                    self._flush(st)
            return
        if self.method == "minmax":
            return
        if st.pos is None:
            st.pos, st.neg = _Hist(self.num_bins), _Hist(self.num_bins)
        if hi > 0:
            st.pos.add(x[x > 0] if lo <= 0 else x)
        if lo < 0:
            st.neg.add(-x[x < 0])

    def _group(self, st: _TensorStats, x: np.ndarray, lo: float, hi: float) -> None:
        if self.method == "mean_percentile":
            lo, hi = (float(v) for v in np.percentile(x, [100.0 - self.percentile, self.percentile]))
        st.sum_lo, st.sum_hi, st.batches = st.sum_lo + lo, st.sum_hi + hi, st.batches + 1

    def _flush(self, st: _TensorStats) -> None:
        g = np.concatenate(st.pending)
        st.pending, st.pending_size = [], 0
        self._group(st, g, float(g.min()), float(g.max()))

    def result(self, percentile: float, signed_levels: int, unsigned_levels: int) -> RangeReport:
        for st in self.stats.values():
            if st.pending:  # a last, partial group counts as well
                self._flush(st)
        ranges: dict[str, tuple[float, float]] = {}
        floats: dict[str, str] = {}
        for name, st in self.stats.items():
            if st.lo > st.hi:  # only non-finite values were seen
                floats[name] = "only non-finite values"
                ranges[name] = (0.0, 0.0)
                continue
            lo, hi = min(st.lo, 0.0), max(st.hi, 0.0)
            if st.nonfinite:
                floats[name] = f"{st.nonfinite} non-finite value(s) (e.g. an additive -inf mask)"
            elif max(abs(lo), abs(hi)) >= HUGE:
                floats[name] = f"huge values (|x| up to {max(abs(lo), abs(hi)):.3g}, e.g. a finfo.min mask)"
            if self.method in PER_BATCH_METHODS and st.batches and name not in floats and name not in self.whole_range:
                lo, hi = min(st.sum_lo / st.batches, 0.0), max(st.sum_hi / st.batches, 0.0)
            elif self.method != "minmax" and st.pos is not None and name not in floats:
                levels = unsigned_levels if st.lo >= 0 else signed_levels
                for side, h in (("hi", st.pos), ("lo", st.neg)):
                    if h.total == 0:
                        continue
                    if self.method == "percentile":
                        t = _percentile_threshold(h.counts, h.top, percentile, st.count)
                    else:
                        t = _entropy_threshold(h.counts, h.top, levels)
                    if side == "hi":
                        hi = min(hi, t)
                    else:
                        lo = max(lo, -t)
            ranges[name] = (float(lo), float(hi))
        return RangeReport(ranges, floats, method=self.method)


def _percentile_threshold(hist: np.ndarray, top: float, percentile: float, total: int | None = None) -> float:
    """Smallest t whose tail above t holds at most (100 - percentile)% of ``total`` values."""
    total = int(hist.sum()) if total is None else total
    allowed = (1.0 - percentile / 100.0) * total
    tail = np.cumsum(hist[::-1])[::-1]  # tail[i] = values in bins i..end
    over = np.nonzero(tail > allowed)[0]
    idx = int(over[-1]) if over.size else 0
    return (idx + 1) * top / hist.size


def _entropy_threshold(hist: np.ndarray, top: float, levels: int) -> float:
    """TensorRT-style KL-divergence threshold on a histogram of |x| (vectorised per candidate)."""
    hist = hist.astype(np.float64)
    nb = hist.size
    last = int(np.nonzero(hist)[0][-1]) + 1
    if last <= levels:
        return last * top / nb
    best_kl, best_i = np.inf, last
    step = max(1, (last - levels) // 256)
    for i in itertools.chain(range(levels, last, step), [last]):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        # merge the i bins into `levels` groups, then spread each group over its non-empty bins
        edges = (np.arange(levels) * i) // levels
        group_sum = np.add.reduceat(hist[:i], edges)
        nonzero = (hist[:i] != 0).astype(np.float64)
        group_nz = np.add.reduceat(nonzero, edges)
        group_of = np.repeat(np.arange(levels), np.diff(np.append(edges, i)))
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(nonzero > 0, group_sum[group_of] / np.maximum(group_nz[group_of], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        p /= ps
        q /= qs
        mask = p > 0
        # bins where p > 0 but q == 0 are smoothed, as in TensorRT's calibrator
        qm = np.maximum(q[mask], 1e-10)
        kl = float(np.sum(p[mask] * np.log(p[mask] / qm)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * top / nb


def calibration_tensors(model: onnx.ModelProto, op_types: tuple[str, ...]) -> list[str]:
    """The float activations onnxruntime would need ranges for (inputs/outputs of quantized ops)."""
    value_infos = {vi.name: vi for vi in itertools.chain(model.graph.value_info, model.graph.output, model.graph.input)}
    inits = {i.name for i in model.graph.initializer}
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    names: list[str] = []
    seen: set[str] = set()
    for node in model.graph.node:
        if op_types and node.op_type not in op_types:
            continue
        for t in itertools.chain(node.input, node.output):
            if not t or t in seen or t in inits or t not in value_infos:
                continue
            vi = value_infos[t]
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in float_types:
                seen.add(t)
                names.append(t)
    return names


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names`` (float outputs of unknown shape where no value_info says more)."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    existing = {o.name for o in aug.graph.output}
    vis = {vi.name: vi for vi in itertools.chain(model.graph.value_info, model.graph.input, model.graph.output)}
    inputs = {i.name for i in model.graph.input}
    for n in names:
        if n in existing or n in inputs:
            continue
        aug.graph.output.append(vis[n] if n in vis else onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    return aug


def stream_tensors(
    model: onnx.ModelProto,
    calib: CalibrationSet,
    names: list[str],
    *,
    batch_size: int = 16,
    limit: int | None = None,
    desc: str = "",
    progress: bool = False,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Run ``model`` over ``calib`` (optimisations off, CPU) and yield (samples in the batch, {name: value}) per batch.

    ``names`` may be graph inputs, outputs or intermediate tensors; one batch of them is alive at a time.
    ``limit`` stops after that many samples (whole batches).
    """
    from tqdm import tqdm

    from .runtime import compute_session

    aug = _with_outputs(model, names)
    try:
        sess = compute_session(aug)
    except InputError as e:
        raise InputError(f"onnxruntime cannot run the model for calibration: {e}") from e
    out_names = [o.name for o in sess.get_outputs()]
    wanted = set(names)
    bs = calib.batch_size(batch_size)
    total = calib.num_batches(bs) if limit is None else min(calib.num_batches(bs), -(-limit // bs))
    bar = tqdm(total=total, desc=desc, unit="batch", disable=not progress, leave=False)
    seen = 0
    try:
        for batch in calib.batches(bs):
            if limit is not None and seen >= limit:
                break
            outs = sess.run(None, batch)
            got = {n: v for n, v in zip(out_names, outs) if n in wanted}
            got.update({n: v for n, v in batch.items() if n in wanted})  # graph inputs are activations too
            rows = len(next(iter(batch.values())))
            seen += rows
            yield rows, got
            del outs, got
            bar.update(1)
    finally:
        bar.close()


def collect_ranges(
    model: onnx.ModelProto,
    calib: CalibrationSet,
    *,
    method: str,
    percentile: float,
    op_types: tuple[str, ...],
    num_bins: int = 2048,
    progress: bool = True,
    tensors: list[str] | None = None,
    batch_size: int = 16,
    observers: dict[str, Any] | None = None,
) -> RangeReport:
    """Run the model once over the calibration set and compute a range per activation tensor.

    ``observers`` ({tensor: object with ``add(array)``}) see the same pass: e.g. the means bias
    correction needs, without a second run over the data.
    """
    names = tensors if tensors is not None else calibration_tensors(model, op_types)
    observers = observers or {}
    ranged = set(names)
    # The model's inputs keep their whole range under the per-batch estimators: the data itself is known
    # exactly (an 8-bit image is already on a grid), and clipping it cost MobileNetV2 half its KL.
    col = _Collector(method, num_bins, percentile, frozenset(i.name for i in model.graph.input))
    seen = 0
    for rows, got in stream_tensors(model, calib, list(dict.fromkeys(list(names) + list(observers))), batch_size=batch_size,
                                    desc=f"calibrating ({method})", progress=progress):
        for name, value in got.items():
            if name in ranged:
                col.add(name, value)
            if name in observers:
                observers[name].add(value)
        seen += rows
    report = col.result(percentile, signed_levels=128, unsigned_levels=255)
    report.samples = seen
    report.method = method
    for n in names:  # tensors never produced (dead branches) still need a range
        report.ranges.setdefault(n, (0.0, 0.0))
    return report
