"""The versioned result-JSON schema shared by ``bench``, ``eval``, ``compare`` and ``report``.

>>> from onnxq.results import new_document, load_results, write_results
>>> doc = new_document("bench", host={"hostname": "box"}, rows=[])
>>> doc["schema"], doc["kind"]
('onnxq.results/1', 'bench')
>>> write_results(doc, "bench.json"); load_results("bench.json")["kind"]      # doctest: +SKIP
'bench'

Standard library only (no numpy, onnx, onnxruntime or torch), so ``onnxq report`` runs on a
machine that has none of them.

Schema ``onnxq.results/1`` (every document):

- ``schema``: ``"onnxq.results/1"``; readers refuse any other value (exit 2).
- ``kind``: ``"bench"``, ``"eval"``, ``"compare"`` or ``"report"`` (a merge of the others; it
  embeds its sources, so a report can be merged again).
- ``created`` (ISO-8601 UTC), ``onnxq`` (version), ``host`` (see :func:`onnxq.bench.host_info`).
- Numbers are JSON numbers; non-finite floats are written as the strings ``"inf"``, ``"-inf"``
  and ``"nan"`` (plain JSON has no such numbers) and read back by :func:`num`.
- Latencies are in milliseconds (``*_ms``), sizes in bytes (``*_bytes``), throughput in samples/s.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ._fs import atomic_path
from .errors import InputError

__all__ = [
    "SCHEMA",
    "KINDS",
    "new_document",
    "load_results",
    "write_results",
    "to_jsonable",
    "num",
    "atomic_target",
    "atomic_write",
    "LatencyStats",
]

SCHEMA = "onnxq.results/1"
KINDS = ("bench", "eval", "compare", "report")
# Keys each kind must carry (beyond schema/kind/host); checked when a file is read.
_REQUIRED = {
    "bench": ("rows", "settings"),
    "eval": ("model", "metrics"),
    "compare": ("model", "profiles", "settings"),
    "report": ("sources",),
}


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one model at one batch size, in milliseconds; throughput in samples/s."""

    batch: int
    runs: int
    warmup: int
    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float  # samples per second at the median latency

    @classmethod
    def from_times(cls, times_ms: Sequence[float], *, batch: int, warmup: int = 0) -> "LatencyStats":
        """Summarise per-run times (ms). Percentiles interpolate linearly (numpy's default)."""
        import numpy as np

        t = np.asarray(times_ms, dtype=np.float64)
        if t.size == 0:
            raise ValueError("no timed runs to summarise")
        med = float(np.median(t))
        return cls(
            batch=int(batch),
            runs=int(t.size),
            warmup=int(warmup),
            median_ms=med,
            mean_ms=float(t.mean()),
            std_ms=float(t.std(ddof=1)) if t.size > 1 else 0.0,
            min_ms=float(t.min()),
            max_ms=float(t.max()),
            p90_ms=float(np.percentile(t, 90)),
            p99_ms=float(np.percentile(t, 99)),
            throughput=float(batch * 1000.0 / med) if med > 0 else float("inf"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyStats":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})



def new_document(kind: str, **fields: Any) -> dict[str, Any]:
    """A result document of ``kind`` with the schema header filled in; ``fields`` follow it."""
    from . import __version__

    if kind not in KINDS:
        raise ValueError(f"unknown result kind {kind!r}; one of {KINDS}")
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "onnxq": __version__,
    }
    doc.update(fields)
    return doc


def num(v: Any) -> float | None:
    """A number from a result file: JSON numbers, ``"inf"``/``"-inf"``/``"nan"`` strings, or None."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return None


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays become numbers/lists, paths strings, inf a string."""
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy scalar or array, without importing numpy
        return to_jsonable(obj.tolist())
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(to_jsonable(doc), indent=2, allow_nan=False) + "\n"


atomic_target = atomic_path  # the one atomic-write helper, under the name results callers use


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write text or bytes to ``path`` via a temp file and a rename: never a half-written file."""
    with atomic_target(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)


def write_results(doc: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a result document atomically (the JSON is fully serialised before the file exists)."""
    text = dumps(doc)
    return atomic_write(path, text)


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check one result file; any problem raises InputError (exit 2) naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"result file {path} does not exist; pass a .json written by onnxq bench/eval/compare --json or -o")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not readable JSON ({type(e).__name__}: {e}); pass a file written by onnxq") from e
    except RecursionError as e:
        raise InputError(f"{path} nests its JSON deeper than any onnxq result does; pass a file written by onnxq") from e
    return check_document(doc, str(path))


def check_document(doc: Any, origin: str) -> dict[str, Any]:
    """Validate the header and the keys of one kind; returns the document unchanged."""
    if not isinstance(doc, dict) or "schema" not in doc:
        raise InputError(f"{origin} is not an onnxq result file (no 'schema' key); pass a file written by onnxq bench/eval/compare")
    schema = doc["schema"]
    if schema != SCHEMA:
        raise InputError(
            f"{origin} uses result schema {schema!r}, but this onnxq reads {SCHEMA!r} only; re-run the measurement "
            "with this onnxq version or use the onnxq version that wrote it"
        )
    kind = doc.get("kind")
    if kind not in KINDS:
        raise InputError(f"{origin}: unknown result kind {kind!r}; expected one of {', '.join(KINDS)}")
    missing = [k for k in _REQUIRED[kind] if k not in doc]
    if missing:
        raise InputError(f"{origin}: {kind} result lacks key(s) {', '.join(missing)}; the file is truncated or hand-edited")
    if kind == "report":
        if not isinstance(doc["sources"], list):
            raise InputError(f"{origin}: 'sources' must be a list of result documents")
        for i, src in enumerate(doc["sources"]):
            inner = src.get("doc") if isinstance(src, dict) else None
            check_document(inner, f"{origin} (source {i})")
    return doc


def flatten_sources(docs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Expand ``report`` documents into the results they embed, keeping (origin, document) pairs."""
    out: list[tuple[str, dict[str, Any]]] = []
    for origin, doc in docs:
        if doc.get("kind") == "report":
            out.extend(flatten_sources([(s.get("file", origin), s["doc"]) for s in doc["sources"]]))
        else:
            out.append((origin, doc))
    return out
