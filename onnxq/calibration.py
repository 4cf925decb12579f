"""Calibration data: loading, checking against the model, and streaming range collection.

>>> from onnxq.calibration import CalibrationSet
>>> calib = CalibrationSet.from_source("calib_shards/", model)      # doctest: +SKIP
>>> calib.count, calib.split(32, 256)[1].count                      # doctest: +SKIP
(2048, 32)
>>> report = collect_ranges(model, calib, method="percentile", percentile=99.999, op_types=("Conv",))  # doctest: +SKIP

Data streams from disk: a :class:`CalibrationSet` is a checked sequence of shards (a ``.npy`` file
read through a memory map opened per chunk, an ``.npz`` member read in chunks, an in-memory array),
and only a batch of samples is alive at a time. Every shard's header (keys, shape, dtype, and its
size against the file) is checked when the set is built, before any work; values (NaN, float64 that
overflows float32) are checked as each batch is read, naming the file.

Memory stays bounded in range collection too: one batch of intermediate outputs is alive at a time,
and entropy / percentile use fixed-size histograms of |x| whose range doubles (merging bin pairs
exactly) when a larger value arrives. onnxruntime's own Histogram calibrators keep every activation
in memory.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import math
import os
import re
import shutil
import tempfile
import weakref
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from .errors import InputError, first_line

__all__ = ["CalibrationSet", "InputSpec", "model_inputs", "collect_ranges", "RangeReport", "HUGE", "check_input_array",
           "check_input_layout", "open_npy", "open_npz", "read_npy_header", "human_bytes"]

# Range estimators that average one statistic per calibration batch (see _Collector).
PER_BATCH_METHODS = ("mean_minmax", "mean_percentile")
MIN_GROUP = 4096  # values one per-batch statistic is read from at least (small tensors pool consecutive batches)
# Activations whose magnitude reaches this are treated like +-inf (additive attention masks that
# use finfo.min): quantizing them would crush every other value of the tensor to zero.
HUGE = 1e6

# Bounded reading (see CalibrationSet and open_npz).
READ_BYTES = 16 << 20  # bytes read from one file or member at a time (sha256, to_arrays, evaluation data)
MAX_INFLATE = 100  # an .npz member inflating more than this ratio ...
BOMB_BYTES = 64 << 20  # ... to more than this many bytes is refused as a likely zip bomb
SPILL_BYTES = 64 << 20  # an iterable source larger than this is spilled to temp .npy shards instead of RAM
SPILL_SHARD_BYTES = 16 << 20  # bytes per spilled shard

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
# Lossless, unsurprising conversions done silently (and recorded); values that do not fit are refused.
_SAFE_CASTS = {(np.float64, np.float32), (np.int32, np.int64), (np.int64, np.int32)}
# Errors zipfile / zlib / numpy's header parser raise on corrupt, truncated or exotic files.
_READ_ERRORS = (OSError, EOFError, ValueError, SyntaxError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError)


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


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Bounded reading of .npy files and .npz members: headers first, then rows in chunks


@dataclass(frozen=True)
class ArrayHeader:
    """What a .npy header claims: shape, dtype, order, and where the data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int  # data start, in the file or the zip member

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: a forged header cannot overflow

    def describe(self) -> str:
        return f"a {_fmt_shape(self.shape) or 'scalar'} {self.dtype} array ({human_bytes(self.nbytes)})"


def read_npy_header(fp: Any, where: str) -> ArrayHeader:
    """Parse a .npy header from ``fp`` (positioned at its start); objects and structured dtypes are refused."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise InputError(f"{where} uses .npy format version {version[0]}.{version[1]}, which only stores structured arrays; "
                             "save plain numeric arrays with np.save / np.savez")
        offset = fp.tell()
    except InputError:
        raise
    except _READ_ERRORS as e:
        raise InputError(f"{where} is not a readable .npy array ({first_line(e)}); write it again with np.save / np.savez") from e
    dtype = np.dtype(dtype)
    if any(int(d) < 0 for d in shape):
        raise InputError(f"{where} has a header with a negative dimension {tuple(shape)}: the file is corrupt; write it again")
    if dtype.hasobject:
        raise InputError(f"{where} holds Python objects (dtype {dtype}); onnxq never unpickles data (allow_pickle=False): "
                         "save numeric arrays")
    if dtype.names is not None or dtype.subdtype is not None:
        raise InputError(f"{where} has a structured dtype {dtype}; save one plain numeric array per input")
    return ArrayHeader(tuple(int(d) for d in shape), dtype, bool(fortran), int(offset))


def _check_claim(h: ArrayHeader, available: int, where: str, size_text: str) -> None:
    if h.nbytes > available:
        raise InputError(f"{where}: its header claims {h.describe()} but {size_text} ({human_bytes(max(available, 0))} after the "
                         "header): the file is truncated or corrupt; write it again (np.save / np.savez)")


def _read_exact(f: Any, buf: memoryview, where: str) -> None:
    """Fill ``buf`` from ``f`` in pieces of READ_BYTES (zipfile's read(n) builds an n-byte string first)."""
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got: got + READ_BYTES])
        if not n:
            raise InputError(f"{where} ends early: {got} of {len(buf)} bytes read; the file is truncated, write it again")
        got += n


class _Stored:
    """One array, read by rows: ``chunks(start, stop, n)`` yields rows [start, stop) in pieces of at most n rows."""

    where: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def chunks(self, start: int, stop: int, max_rows: int) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def read_all(self) -> np.ndarray:
        """The whole array (the caller checked that it fits in memory)."""
        out = np.empty(self.shape, self.dtype)
        step = max(1, READ_BYTES // max(self.row_bytes, 1))
        for i, chunk in zip(range(0, self.rows, step), self.chunks(0, self.rows, step)):
            out[i: i + len(chunk)] = chunk
        return out


def _spans(start: int, stop: int, max_rows: int) -> Iterator[tuple[int, int]]:
    for i in range(start, stop, max_rows):
        yield i, min(i + max_rows, stop)


class _InMemory(_Stored):
    def __init__(self, arr: np.ndarray, where: str):
        self.arr, self.where, self.shape, self.dtype = arr, where, tuple(arr.shape), arr.dtype

    def chunks(self, start, stop, max_rows):
        for i, j in _spans(start, stop, max_rows):
            yield self.arr[i:j]


class _NpyFile(_Stored):
    """A .npy file, memory-mapped per chunk and copied out: a map kept open for a whole pass would count every
    page it touched in the process's resident memory (VmHWM counts file-backed pages)."""

    def __init__(self, path: Path, h: ArrayHeader, shape: tuple[int, ...], keepalive: Any = None):
        self.path, self.h, self.where, self.shape, self.dtype = path, h, str(path), shape, h.dtype
        self._keepalive = keepalive  # a spill directory, deleted when the last shard reading it goes

    def chunks(self, start, stop, max_rows):
        if stop <= start or math.prod(self.shape) == 0:
            yield from (np.empty((j - i, *self.shape[1:]), self.dtype) for i, j in _spans(start, stop, max_rows))
            return
        for i, j in _spans(start, stop, max_rows):
            try:
                mm = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.h.offset, shape=self.shape,
                               order="F" if self.h.fortran else "C")
            except _READ_ERRORS as e:
                raise InputError(f"cannot read {self.where}: {first_line(e)}") from e
            out = np.array(mm[i:j], order="C")
            del mm
            yield out


class _NpzMember(_Stored):
    """A member of an .npz, read in chunks through zipfile (deflated members are inflated as they are read)."""

    FORTRAN_MAX = 256 << 20  # a Fortran-order member has no contiguous rows: it is read whole, up to this size

    def __init__(self, path: Path, info: zipfile.ZipInfo, key: str, h: ArrayHeader, label: str):
        self.path, self.info, self.key, self.h, self.label = path, info, key, h, label
        self.where, self.shape, self.dtype = str(path), h.shape, h.dtype

    def chunks(self, start, stop, max_rows):
        if stop <= start:
            return
        if self.h.fortran:
            if self.h.nbytes > self.FORTRAN_MAX:
                raise InputError(f"{self.label} is stored in Fortran order ({human_bytes(self.h.nbytes)}), which onnxq can only read "
                                 "whole; save it with np.savez(..., x=np.ascontiguousarray(x))")
            whole = self.read_all()
            for i, j in _spans(start, stop, max_rows):
                yield whole[i:j]
            return
        with self._open() as f:
            f.seek(self.h.offset + start * self.row_bytes)
            for i, j in _spans(start, stop, max_rows):
                out = np.empty((j - i, *self.shape[1:]), self.dtype)
                self._fill(f, out)
                yield out

    def read_all(self) -> np.ndarray:
        buf = np.empty(self.h.nbytes, np.uint8)
        with self._open() as f:
            f.seek(self.h.offset)
            self._fill(f, buf)
        return buf.view(self.dtype).reshape(self.shape, order="F" if self.h.fortran else "C")

    def _fill(self, f: Any, out: np.ndarray) -> None:
        if out.nbytes:
            try:
                _read_exact(f, memoryview(out.reshape(-1).view(np.uint8)), self.label)
            except InputError:
                raise
            except _READ_ERRORS as e:
                raise InputError(f"cannot read {self.label}: {first_line(e)}; the file is corrupt or truncated, write it again") from e

    @contextlib.contextmanager
    def _open(self) -> Iterator[Any]:
        try:
            zf = zipfile.ZipFile(self.path)
            f = zf.open(self.info)
        except _READ_ERRORS as e:
            raise InputError(f"cannot read {self.label}: {first_line(e)}; the file is corrupt or truncated, write it again") from e
        try:
            yield f
        finally:
            f.close()
            zf.close()


def open_npy(path: Path, *, role: str = "") -> _NpyFile:
    """A .npy file checked against its size (header only; nothing read beyond it)."""
    where = f"{role} file {path}" if role else str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fp:
            h = read_npy_header(fp, where)
    except InputError:
        raise
    except OSError as e:
        raise InputError(f"cannot read {role + ' file ' if role else ''}{path}: {first_line(e)}") from e
    _check_claim(h, size - h.offset, where, f"the file is {human_bytes(size)}")
    return _NpyFile(path, h, h.shape)


def open_npz(path: Path, *, keys: Iterable[str] | None = None, role: str = "") -> dict[str, _NpzMember | None]:
    """The arrays of an .npz by key, headers checked (against each member's size, and against zip bombs); nothing
    else is read. ``keys`` limits the members whose headers are read (the others map to None)."""
    try:
        zf = zipfile.ZipFile(path)
    except _READ_ERRORS as e:
        raise InputError(f"cannot read {role + ' file ' if role else ''}{path}: {first_line(e)} (an .npz is a zip archive; "
                         "is it truncated?)") from e
    wanted = set(keys) if keys is not None else None
    out: dict[str, _NpzMember | None] = {}
    with zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if wanted is not None and key not in wanted:
                out[key] = None  # present, not opened
                continue
            where = f"{role + ' file ' if role else ''}{path}, array {key!r}"
            if info.file_size > BOMB_BYTES and info.file_size > MAX_INFLATE * max(info.compress_size, 1):
                raise InputError(
                    f"{where} inflates from {human_bytes(info.compress_size)} to {human_bytes(info.file_size)} "
                    f"({info.file_size // max(info.compress_size, 1)}x): refusing a likely zip bomb; if the data is real, "
                    "save it uncompressed (np.savez) or as a directory of .npy shards"
                )
            try:
                with zf.open(info) as f:
                    h = read_npy_header(f, where)
            except InputError:
                raise
            except _READ_ERRORS as e:
                raise InputError(f"cannot read {where}: {first_line(e)}; the file is corrupt or truncated, write it again") from e
            _check_claim(h, info.file_size - h.offset, where, f"the archive says the member is {human_bytes(info.file_size)}")
            out[key] = _NpzMember(path, info, key, h, where)
    return out


# ---------------------------------------------------------------------------------------------
# Checks against the model


def check_input_layout(shape: tuple[int, ...], dtype: np.dtype, spec: InputSpec, origin: str, notes: list[str], *, role: str,
                       single_sample_ok: bool) -> tuple[tuple[int, ...], type]:
    """(shape with the samples axis, dtype to read as) for an array of ``shape``/``dtype``; refuses what cannot feed ``spec``."""
    rank = len(spec.shape)
    if single_sample_ok and len(shape) == rank - 1:
        shape = (1, *shape)  # a single sample without its batch axis
    if len(shape) != rank:
        raise InputError(
            f"{role} input {spec.name!r} from {origin} has shape {tuple(shape)} (rank {len(shape)}); the model expects "
            f"rank {rank} ({_fmt_shape(spec.shape)})" + (f", or rank {rank - 1} for a single sample" if single_sample_ok else " with samples on the first axis")
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape)):
        if axis == 0:
            continue
        if isinstance(want, int) and want != got:
            raise InputError(
                f"{role} input {spec.name!r} from {origin} has shape {tuple(shape)}; dimension {axis} must be {want} "
                f"(model input shape {_fmt_shape(spec.shape)})"
            )
    if dtype.type != spec.dtype:
        if (dtype.type, spec.dtype) in _SAFE_CASTS:
            notes.append(f"{spec.name}: cast {dtype.name} -> {np.dtype(spec.dtype).name}")
        else:
            raise InputError(
                f"{role} input {spec.name!r} from {origin} has dtype {dtype}; the model expects "
                f"{np.dtype(spec.dtype).name}: convert it with .astype(np.{np.dtype(spec.dtype).name})"
            )
    return tuple(shape), spec.dtype


def _cast_checked(arr: np.ndarray, spec: InputSpec, origin: str, role: str, row_offset: int = 0) -> np.ndarray:
    """``arr`` as ``spec.dtype``; values that do not fit the narrower type are refused (a cast would make them inf or wrap)."""
    target = np.dtype(spec.dtype)
    if arr.dtype == target:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and np.issubdtype(target, np.floating) and target.itemsize < arr.dtype.itemsize:
        big = np.abs(arr) > np.finfo(target).max  # NaN and inf compare False / are kept: they are legitimate or reported apart
        big &= np.isfinite(arr)
        if big.any():
            raise InputError(
                f"{role} input {spec.name!r} from {origin}: {int(big.sum())} value(s) exceed {target.name}'s range "
                f"(|x| up to {float(np.max(np.abs(arr[big]))):.3g}, max {float(np.finfo(target).max):.3g}; first at index "
                f"{_first_index(big, row_offset)}) and would become inf when cast from {arr.dtype.name}; rescale or clip them"
            )
    elif np.issubdtype(arr.dtype, np.integer) and np.issubdtype(target, np.integer) and arr.size:
        info = np.iinfo(target)
        out = (arr < info.min) | (arr > info.max)
        if out.any():
            raise InputError(f"{role} input {spec.name!r} from {origin}: {int(out.sum())} value(s) are outside {target.name}'s "
                             f"range {info.min}..{info.max} (first at index {_first_index(out, row_offset)}); the model takes {target.name}")
    return arr.astype(target)


def _first_index(mask: np.ndarray, row_offset: int) -> tuple[int, ...]:
    """Index of the first True in ``mask`` (a chunk whose first row is row ``row_offset`` of its file)."""
    first = [int(i) for i in np.argwhere(mask)[0]]
    if first:
        first[0] += row_offset
    return tuple(first)


def check_input_array(value: Any, spec: InputSpec, origin: str, notes: list[str], *, role: str = "calibration",
                      single_sample_ok: bool = True, row_offset: int = 0) -> np.ndarray:
    """Check one input's samples against the model (rank, fixed dims, dtype, NaN, values that do not fit the
    model's type); cast when lossless. ``row_offset`` is the first row's index in ``origin`` (for messages)."""
    try:
        arr = np.asarray(value)
    except Exception as e:
        raise InputError(f"{role} input {spec.name!r} from {origin} is not an array: {first_line(e)}") from e
    if arr.dtype.hasobject:
        raise InputError(f"{role} input {spec.name!r} from {origin} holds Python objects (dtype object); pass numeric arrays")
    shape, _ = check_input_layout(tuple(arr.shape), arr.dtype, spec, origin, notes, role=role, single_sample_ok=single_sample_ok)
    arr = arr.reshape(shape)
    arr = _cast_checked(arr, spec, origin, role, row_offset)
    if np.issubdtype(arr.dtype, np.floating):
        bad = np.isnan(arr)
        if bad.any():
            raise InputError(
                f"{role} input {spec.name!r} from {origin} contains {int(bad.sum())} NaN value(s) "
                f"(first at index {_first_index(bad, row_offset)}); clean or drop those samples"
            )
        if np.isinf(arr).any():
            # +-inf is legitimate in additive attention masks: allowed, kept in float downstream.
            notes.append(f"{spec.name}: contains +-inf (treated as a mask; tensors carrying it stay in float)")
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------------------------------
# The calibration set: checked shards, read lazily


@dataclass
class _Shard:
    """One unit of storage: an array per model input, all holding ``rows`` samples."""

    where: str
    arrays: dict[str, _Stored]
    rows: int
    checked: bool = False  # values were checked when the shard was made (in-memory and spilled data)


class _SpillDir:
    """A temp directory of spilled shards, removed when no shard reads it any more (or at exit)."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="onnxq.calib."))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)


class CalibrationSet:
    """A checked, re-iterable sequence of samples, read from its shards a batch at a time.

    Sources: ``.npz`` keyed by input name (leading axis = samples), ``.npy`` for single-input models,
    a directory of such files (shards, read in natural name order: ``s2`` before ``s10``), a mapping
    ``{input_name: array}``, or any iterable of such mappings (batched or single samples).

    Nothing is loaded whole: ``.npy`` shards are memory-mapped per chunk, ``.npz`` members read in
    chunks, and the set only holds (shard, first row, last row) segments, so :meth:`split` and a limit
    cost nothing. Every header is checked against the model when the set is made; values as they are read.

    A Python iterable (a generator, a DataLoader) can be read only once, so it is consumed when the set
    is made (up to ``limit`` samples): up to ``SPILL_BYTES`` (64 MiB) it stays in memory, beyond that it
    is written to a temp directory of ``.npy`` shards (deleted with the set) and streamed like a shard
    directory. A DataLoader over a large image set is the usual Python source, and materialising it would
    cost the RAM this class exists to save; a temp-disk write of the same bytes is cheap, and small sets
    (tests, small models) never touch the disk.
    """

    def __init__(self, shards: Sequence[_Shard], specs: list[InputSpec], origin: str, notes: list[str], *,
                 role: str = "calibration", segments: Sequence[tuple[_Shard, int, int]] | None = None):
        self.specs = list(specs)
        self.origin = origin
        self._notes = notes  # shared by the parts of a split: notes found while reading reach all of them
        self.role = role
        self._segments = list(segments) if segments is not None else [(s, 0, s.rows) for s in shards if s.rows]
        self.count = sum(b - a for _, a, b in self._segments)

    @property
    def notes(self) -> list[str]:
        return sorted(set(self._notes))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_source(cls, source: Any, model: onnx.ModelProto | Sequence[InputSpec], *, limit: int | None = None,
                    role: str = "calibration", allow_extra: bool = False) -> "CalibrationSet":
        """The samples of ``source`` checked against ``model`` (a ModelProto or its InputSpecs); at most ``limit``.

        ``allow_extra`` ignores keys that are not model inputs (e.g. labels) instead of refusing them.
        """
        specs = model_inputs(model) if isinstance(model, onnx.ModelProto) else list(model)
        if limit is not None and limit < 1:
            raise InputError(f"the number of {role} samples to read must be positive, got {limit}")
        if isinstance(source, CalibrationSet):
            return source if limit is None or source.count <= limit else source._slice(0, limit, source.origin)
        notes: list[str] = []
        if isinstance(source, (str, os.PathLike)):
            shards, origin = _read_path(Path(source), specs, notes, role=role, allow_extra=allow_extra), str(source)
        elif isinstance(source, Mapping):
            origin = "in-memory mapping"
            shards = [_memory_shard(source, specs, origin, notes, role=role, allow_extra=allow_extra, index=None)]
        elif isinstance(source, Iterable):
            origin = "in-memory iterable"
            shards = _read_iterable(iter(source), specs, origin, notes, limit, role=role, allow_extra=allow_extra)
        else:
            raise InputError(f"{role} data must be a path (.npz/.npy/directory) or an iterable of {{input_name: array}}, got {type(source).__name__}")
        _same_sample_shape(shards, specs, role)
        out = cls(shards, specs, origin, notes, role=role)
        if out.count == 0:
            raise InputError(f"{role} data from {origin} is empty; provide at least one sample per input")
        return out if limit is None or out.count <= limit else out._slice(0, limit, origin)

    @classmethod
    def random(cls, model: onnx.ModelProto, count: int, seed: int = 0) -> "CalibrationSet":
        """Random normal data: NOT representative; only for smoke tests (``--calib-random``). Held in memory."""
        if int(count) < 1:
            raise InputError(f"random calibration needs a positive sample count, got {count}")
        specs = model_inputs(model)
        rng = np.random.default_rng(seed)
        arrays = {}
        for s in specs:
            dims = [d if isinstance(d, int) else 1 for d in s.shape[1:]]
            if np.issubdtype(s.dtype, np.floating):
                arrays[s.name] = rng.standard_normal((count, *dims)).astype(s.dtype)
            else:
                arrays[s.name] = rng.integers(0, 2, size=(count, *dims)).astype(s.dtype)
        origin = f"random normal x{count} (NOT representative)"
        shard = _Shard(origin, {k: _InMemory(v, origin) for k, v in arrays.items()}, count, checked=True)
        return cls([shard], specs, origin, ["random data: ranges are not representative"])

    def _slice(self, start: int, stop: int, origin: str) -> "CalibrationSet":
        """Samples [start, stop) as a set sharing this one's shards (nothing is read)."""
        segs, pos = [], 0
        for shard, a, b in self._segments:
            lo, hi = max(a, a + start - pos), min(b, a + stop - pos)
            if lo < hi:
                segs.append((shard, lo, hi))
            pos += b - a
        return CalibrationSet([], self.specs, origin, self._notes, role=self.role, segments=segs)

    # -- use ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.count

    @property
    def files(self) -> list[str]:
        """Where the samples come from, one entry per shard segment (file path, or an in-memory label)."""
        return list(dict.fromkeys(s.where for s, _, _ in self._segments))

    def split(self, holdout: int, wanted: int | None = None) -> tuple["CalibrationSet", "CalibrationSet"]:
        """(calibration part, held-out part). With one sample both parts are that sample.

        With ``wanted``, the data holding ``wanted + holdout`` samples or more gives exactly ``wanted``
        calibration samples and ``holdout`` held out; less data holds out at most a fifth.
        The held-out part is the last samples; neither part is read here.
        """
        if self.count < 2 or holdout <= 0:
            return self, self
        if wanted is None or self.count < wanted + holdout:
            holdout = min(holdout, max(1, self.count // 5))
        cut = self.count - holdout
        return self._slice(0, cut, self.origin), self._slice(cut, self.count, self.origin + " (held out)")

    def batch_size(self, preferred: int = 16) -> int:
        """``preferred``, unless the model fixes its batch size."""
        fixed = [s.batch_fixed for s in self.specs if s.batch_fixed is not None]
        return fixed[0] if fixed else preferred

    def _chunks(self, max_rows: int, names: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Checked pieces of at most ``max_rows`` samples, in order; a piece never spans two shards."""
        by_name = {s.name: s for s in self.specs}
        names = list(names) if names is not None else [s.name for s in self.specs]
        for shard, start, stop in self._segments:
            gens = [shard.arrays[n].chunks(start, stop, max_rows) for n in names]
            pos = start
            for parts in zip(*gens):
                if shard.checked:
                    out = dict(zip(names, parts))
                else:
                    out = {n: check_input_array(p, by_name[n], shard.arrays[n].where, self._notes, role=self.role,
                                                single_sample_ok=False, row_offset=pos) for n, p in zip(names, parts)}
                pos += len(parts[0])
                yield out

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``batch_size`` samples (the model's fixed batch size if it has one; then no short last batch)."""
        bs = batch_size or self.batch_size()
        fixed = any(s.batch_fixed is not None for s in self.specs)
        pending: list[dict[str, np.ndarray]] = []
        have = 0
        for chunk in self._chunks(bs):
            rows = len(next(iter(chunk.values())))
            at = 0
            while at < rows:
                take = min(bs - have, rows - at)
                pending.append({k: v[at: at + take] for k, v in chunk.items()} if (at, take) != (0, rows) else chunk)
                have += take
                at += take
                if have == bs:
                    yield _join(pending)
                    pending, have = [], 0
        if have and not fixed:  # a fixed batch dimension cannot take a short last batch
            yield _join(pending)

    def num_batches(self, batch_size: int | None = None) -> int:
        bs = batch_size or self.batch_size()
        fixed = any(s.batch_fixed is not None for s in self.specs)
        return self.count // bs if fixed else -(-self.count // bs)

    def to_arrays(self, limit: int | None = None) -> dict[str, np.ndarray]:
        """The first ``limit`` samples (all by default) as one array per input: this materialises them in memory."""
        part = self if limit is None or limit >= self.count else self._slice(0, max(int(limit), 0), self.origin)
        out = {}
        for s in self.specs:
            first = next((sh.arrays[s.name] for sh, _, _ in part._segments), None)
            dims = first.shape[1:] if first is not None else tuple(d if isinstance(d, int) else 0 for d in s.shape[1:])
            out[s.name] = np.empty((part.count, *dims), s.dtype)  # filled in place: one copy of the samples, not two
        at = 0
        for chunk in part._chunks(part._read_rows()):
            n = len(next(iter(chunk.values())))
            for k, v in chunk.items():
                out[k][at: at + n] = v
            at += n
        return out

    def _read_rows(self, names: Sequence[str] | None = None) -> int:
        """Rows per read for whole-set passes: about READ_BYTES per input."""
        widths = [a.row_bytes for sh, _, _ in self._segments for n, a in sh.arrays.items() if names is None or n in names]
        return max(1, READ_BYTES // max(max(widths, default=1), 1))

    def check_values(self) -> None:
        """Read every sample once, a chunk at a time, so a bad value (NaN, float64 beyond float32) fails now."""
        for _ in self._chunks(self._read_rows()):
            pass

    def sha256(self) -> str:
        """A digest of the samples (per input: name, dtype, shape, bytes), read a chunk at a time."""
        h = hashlib.sha256()
        for s in sorted(self.specs, key=lambda s: s.name):
            first = next((sh.arrays[s.name] for sh, _, _ in self._segments), None)
            shape = (self.count, *(first.shape[1:] if first is not None else ()))
            h.update(s.name.encode())
            h.update(str(np.dtype(s.dtype)).encode() + str(shape).encode())
            for chunk in self._chunks(self._read_rows([s.name]), [s.name]):
                h.update(np.ascontiguousarray(chunk[s.name]).tobytes())
        return h.hexdigest()


def _join(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(pieces) == 1:
        return pieces[0]
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


def _match_keys(keys: Iterable[str], specs: list[InputSpec], origin: str, role: str, allow_extra: bool,
                others: str = "") -> None:
    names = [s.name for s in specs]
    keys = list(keys)
    missing = [n for n in names if n not in keys]
    extra = [] if allow_extra else [k for k in keys if k not in names]
    if missing or extra:
        raise InputError(
            f"{role} data from {origin} does not match the model inputs: missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}; the model expects {names}" + others
        )


def _rows_of(shapes: dict[str, tuple[int, ...]], origin: str, role: str) -> int:
    rows = {n: s[0] for n, s in shapes.items()}
    if len(set(rows.values())) > 1:
        raise InputError(f"{role} data {origin}: inputs hold different sample counts ({', '.join(f'{n}: {r}' for n, r in rows.items())}); "
                         "every input needs one entry per sample")
    return next(iter(rows.values()), 0)


def _same_sample_shape(shards: Sequence[_Shard], specs: list[InputSpec], role: str) -> None:
    """Every shard's samples must have one shape per input (symbolic dims too): batches join them."""
    for s in specs:
        first = None
        for sh in shards:
            if not sh.rows:
                continue
            dims = sh.arrays[s.name].shape[1:]
            if first is None:
                first = (sh.where, dims)
            elif dims != first[1]:
                raise InputError(
                    f"{role} input {s.name!r}: samples from {sh.where} have shape {_fmt_shape(dims)} but those from {first[0]} "
                    f"have {_fmt_shape(first[1])}; every sample of one input needs the same shape (pad to one length)"
                )


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _read_path(path: Path, specs: list[InputSpec], notes: list[str], *, role: str = "calibration",
               allow_extra: bool = False) -> list[_Shard]:
    """Header-checked shards of a file or a directory of files (nothing beyond the headers is read)."""
    if not path.exists():
        raise InputError(f"{role} data {path} does not exist; pass a .npz, .npy or a directory of them")
    if not path.is_dir():
        return [_read_file(path, specs, notes, role=role, allow_extra=allow_extra)]
    try:
        entries = sorted(path.iterdir(), key=_natural)
    except OSError as e:
        raise InputError(f"cannot list {role} directory {path}: {first_line(e)}") from e
    files = [p for p in entries if p.is_file() and p.suffix.lower() in (".npz", ".npy")]
    ignored = [p.name for p in entries if p not in files]
    if not files:
        raise InputError(f"{role} directory {path} holds no .npz or .npy files" +
                         (f" (found {', '.join(ignored[:5])}{', ...' if len(ignored) > 5 else ''})" if ignored else "") +
                         "; write one array per input per shard with np.save / np.savez")
    if ignored:
        notes.append(f"ignored what is not a .npy/.npz file in {path} ({len(ignored)}): "
                     f"{', '.join(ignored[:5])}{', ...' if len(ignored) > 5 else ''}")
    shards, first_keys = [], None
    for f in files:
        others = f" (the first shard, {files[0].name}, holds {first_keys})" if first_keys is not None else ""
        shard = _read_file(f, specs, notes, role=role, allow_extra=allow_extra, others=others)
        if first_keys is None and f.suffix.lower() == ".npz":
            first_keys = sorted(shard.arrays)
        shards.append(shard)
    return shards


def _read_file(path: Path, specs: list[InputSpec], notes: list[str], *, role: str = "calibration",
               allow_extra: bool = False, others: str = "") -> _Shard:
    """One shard: its headers checked against the model and against the file's size."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if len(specs) != 1:
            raise InputError(
                f"{path}: a .npy file can only feed a single-input model; this model has inputs "
                f"{[s.name for s in specs]}: use a .npz keyed by input name"
            )
        arr = open_npy(path, role=role)
        shape, _ = check_input_layout(arr.shape, arr.dtype, specs[0], str(path), notes, role=role, single_sample_ok=True)
        stored = _NpyFile(path, arr.h, shape)
        return _Shard(str(path), {specs[0].name: stored}, shape[0])
    if suffix != ".npz":
        raise InputError(f"{role} file {path} must be .npz (keyed by input name) or .npy (single input)")
    members = open_npz(path, keys=[s.name for s in specs], role=role)
    _match_keys(members, specs, str(path), role, allow_extra, others)
    arrays: dict[str, _Stored] = {}
    for s in specs:
        m = members[s.name]  # opened: _match_keys saw every input's key
        m.shape, _ = check_input_layout(m.shape, m.dtype, s, str(path), notes, role=role, single_sample_ok=True)
        arrays[s.name] = m
    return _Shard(str(path), arrays, _rows_of({n: a.shape for n, a in arrays.items()}, str(path), role))


def _memory_shard(item: Mapping, specs: list[InputSpec], origin: str, notes: list[str], *, role: str, allow_extra: bool,
                  index: int | None) -> _Shard:
    """An in-memory item, checked now (memory maps are checked as they are read instead)."""
    where = origin if index is None else f"{origin} (item {index})"
    _match_keys(item, specs, where, role, allow_extra)
    arrays: dict[str, _Stored] = {}
    lazy = False
    for s in specs:
        v = item[s.name]
        if isinstance(v, np.memmap):
            shape, _ = check_input_layout(tuple(v.shape), v.dtype, s, where, notes, role=role, single_sample_ok=True)
            arrays[s.name] = _InMemory(v.reshape(shape), where)
            lazy = True
        else:
            arrays[s.name] = _InMemory(check_input_array(v, s, where, notes, role=role), where)
    rows = _rows_of({n: a.shape for n, a in arrays.items()}, where, role)
    if lazy:
        return _Shard(where, arrays, rows)
    return _Shard(where, arrays, rows, checked=True)


def _read_iterable(items: Iterator[Any], specs: list[InputSpec], origin: str, notes: list[str], limit: int | None, *,
                   role: str, allow_extra: bool) -> list[_Shard]:
    """Consume an iterable (up to ``limit`` samples): kept in memory up to SPILL_BYTES, spilled to temp .npy shards beyond."""
    pending: list[_Shard] = []
    pending_bytes = total_bytes = total = 0
    spill: _SpillDir | None = None
    shards: list[_Shard] = []

    def flush() -> None:
        nonlocal pending, pending_bytes
        if not pending:
            return
        arrays = {}
        for s in specs:
            arr = np.concatenate([p.arrays[s.name].arr for p in pending])
            f = spill.path / f"shard{len(shards):05d}.{_safe_name(s.name)}.npy"
            np.save(f, arr, allow_pickle=False)
            arrays[s.name] = _NpyFile(f, open_npy(f).h, arr.shape, keepalive=spill)
        rows = pending_rows()
        shards.append(_Shard(f"{origin} (spilled to {spill.path})", arrays, rows, checked=True))
        pending, pending_bytes = [], 0

    def pending_rows() -> int:
        return sum(p.rows for p in pending)

    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InputError(f"{role} item {i} from {origin} is a {type(item).__name__}, expected a dict {{input_name: array}}")
        shard = _memory_shard(item, specs, origin, notes, role=role, allow_extra=allow_extra, index=i)
        _same_sample_shape(([pending[0]] if pending else shards[:1]) + [shard], specs, role)
        if limit is not None and total + shard.rows > limit:
            keep = limit - total
            shard = _Shard(shard.where, {k: _InMemory(a.arr[:keep], a.where) for k, a in shard.arrays.items()}, keep, shard.checked)
        if not shard.checked:  # a memory map inside an iterable: read it now, the iterable is gone afterwards
            shard = _Shard(shard.where, {k: _InMemory(check_input_array(a.arr, next(s for s in specs if s.name == k), a.where,
                                                                        notes, role=role), a.where)
                                         for k, a in shard.arrays.items()}, shard.rows, checked=True)
        size = sum(a.arr.nbytes for a in shard.arrays.values())
        pending.append(shard)
        pending_bytes += size
        total_bytes += size
        total += shard.rows
        if spill is None and total_bytes > SPILL_BYTES:
            spill = _SpillDir()
        if spill is not None and pending_bytes >= SPILL_SHARD_BYTES:
            flush()
        if limit is not None and total >= limit:
            break
    if spill is not None:
        flush()
        return shards
    if not pending:
        return []
    where = origin
    arrays = {s.name: _InMemory(np.concatenate([p.arrays[s.name].arr for p in pending]) if len(pending) > 1
                                else pending[0].arrays[s.name].arr, where) for s in specs}
    return [_Shard(where, arrays, pending_rows(), checked=True)]


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "input"


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
    shared: bool = False  # taken from an identical earlier pass (ptq.RangeMemo), not measured again


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


@contextlib.contextmanager
def _with_outputs(model: onnx.ModelProto, names: list[str]) -> Iterator[onnx.ModelProto]:
    """``model`` also outputting ``names`` (float outputs of unknown shape where no value_info says more) while the
    block runs; the outputs are removed after. In place: a copy would hold every weight twice."""
    existing = {o.name for o in model.graph.output}
    vis = {vi.name: vi for vi in itertools.chain(model.graph.value_info, model.graph.input, model.graph.output)}
    inputs = {i.name for i in model.graph.input}
    n0 = len(model.graph.output)
    for n in names:
        if n in existing or n in inputs:
            continue
        extra = onnx.ValueInfoProto()
        extra.CopyFrom(vis[n]) if n in vis else extra.CopyFrom(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
        model.graph.output.append(extra)
        existing.add(n)
    try:
        yield model
    finally:
        del model.graph.output[n0:]


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

    with _with_outputs(model, names) as aug:
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
        del sess
        gc.collect()  # the session (a copy of every weight) goes now, not at some later collection


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
