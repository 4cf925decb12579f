"""The manifest beside every model onnxq writes (``NAME.onnxq.json``): strict JSON, standard library only.

>>> from onnxq.manifest import manifest_path
>>> manifest_path("out/net.int8.onnx").name
'net.int8.onnxq.json'

Schema ``onnxq.manifest/2``: ``schema``, ``kind`` (``quantize``, ``export`` or ``qat``), ``created``,
``versions``, ``output`` (``path``, ``sha256`` of the model file, ``external_data``: each weight file beside
it with its ``bytes`` and ``sha256``), ``profile``, and per kind
``input``, ``recipe`` (the resolved :class:`onnxq.plan.Recipe`: types, opset, op types, nodes kept in
float) and ``result`` (what was measured). Non-finite numbers are written as the strings ``"inf"``,
``"-inf"`` and ``"nan"`` (JSON has no such numbers). :func:`read_manifest` also reads version 1
files, and treats a manifest whose ``output.sha256`` does not match the model file as absent: the
model was replaced without it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from ._fs import atomic_path, file_sha256
from .errors import InputError

__all__ = ["SCHEMA", "manifest_path", "new_manifest", "dumps", "write_manifest", "read_manifest", "recorded_weight_type"]

SCHEMA = "onnxq.manifest/2"
READABLE = ("onnxq.manifest/1", SCHEMA)
KINDS = ("quantize", "export", "qat")


def manifest_path(model_path: str | os.PathLike) -> Path:
    p = Path(model_path)
    stem = p.name[:-5] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.onnxq.json")


def new_manifest(kind: str, output: str | os.PathLike, *, written: str | os.PathLike | None = None,
                 data: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    """A manifest for the model at ``output``; its hash is read from ``written`` (the temp file) when given.
    ``data`` lists its external-data files (``file``, ``bytes``, ``sha256``), as :meth:`onnxq.modelio.ModelUnit.seal`
    returns them."""
    from . import __version__

    if kind not in KINDS:
        raise ValueError(f"unknown manifest kind {kind!r}; one of {KINDS}")
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "onnxq": __version__,
        "output": {"path": str(output), "sha256": file_sha256(written or output), "external_data": list(data or [])},
    }
    doc.update(fields)
    return doc


def dumps(doc: dict[str, Any]) -> str:
    """Strict JSON text (``allow_nan=False``: a stray inf/NaN raises instead of writing ``Infinity``)."""
    from .results import to_jsonable

    return json.dumps(to_jsonable(doc), indent=2, allow_nan=False) + "\n"


def write_manifest(doc: dict[str, Any], path: str | os.PathLike) -> Path:
    text = dumps(doc)  # serialised before the file exists
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def read_manifest(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of ``model_path``, or None when there is none or it belongs to another version of the file.

    An unreadable manifest (not JSON, not an onnxq manifest) raises :class:`InputError`.
    """
    path = manifest_path(model_path)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"manifest {path} is unreadable ({type(e).__name__}: {str(e)[:120]}); fix or delete it") from e
    if not isinstance(doc, dict) or doc.get("schema") not in READABLE:
        raise InputError(f"{path} is not an onnxq manifest (schema {doc.get('schema') if isinstance(doc, dict) else None!r}); "
                         "fix or delete it")
    out = doc.get("output")
    sha = out.get("sha256") if isinstance(out, dict) else None
    if not isinstance(sha, str) or sha != file_sha256(model_path):
        return None
    return doc


def recorded_weight_type(doc: dict[str, Any] | None) -> str | None:
    """The weight type a manifest (version 1 or 2) records, or None."""
    if not doc:
        return None
    if doc.get("schema") == "onnxq.manifest/1":
        plan = (doc.get("result") or {}).get("plan") if isinstance(doc.get("result"), dict) else None
    else:
        plan = doc.get("recipe")
    wt = plan.get("weight_type") if isinstance(plan, dict) else None
    return wt if isinstance(wt, str) else None
