"""Loading models with clear errors, their facts for the recipe, and writing them atomically (temp file + rename)."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import onnx

from .errors import InputError, first_line
from .plan import GraphFacts

__all__ = ["load_model", "save_model", "default_output", "graph_facts", "model_opset", "toposort", "stamp_recipe",
           "recorded_weight_type"]

RECIPE_KEY = "onnxq.recipe"  # metadata_props entry: the recipe that wrote the model (JSON)

PROTOBUF_LIMIT = 2**31 - 1


# op domains onnxruntime implements; a node of another domain needs a custom-op library onnxq cannot load
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc",
                           "ai.onnx.training", "ai.onnx.preview.training", "com.microsoft.experimental"})


def load_model(path: str | os.PathLike, *, load_external: bool = True, checker: bool = True) -> onnx.ModelProto:
    """Load an ONNX model; a missing, non-ONNX, truncated or invalid file raises InputError.

    External data is checked before it is read: each location must be a relative path inside the
    model's folder, name an existing file, and hold the bytes the tensor claims. ``load_external=False``
    checks it and leaves the tensors referring to the files (for models too big to hold twice).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"model file {path} does not exist; check the path")
    if not path.is_file():
        raise InputError(f"model path {path} is not a file")
    if path.stat().st_size == 0:
        raise InputError(f"model file {path} is empty; re-export the model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning or others on garbage
        raise InputError(f"{path} is not a readable ONNX model ({type(e).__name__}: {first_line(e)[:120]}); is the file "
                         "truncated or of another format?") from e
    if not model.graph.node and not model.graph.output:
        raise InputError(f"{path} parsed but holds no graph; it is not an ONNX model (or it is corrupt)")
    check_opsets(model, path)
    external = check_external_data(model, path)
    if external and load_external:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as e:  # OSError, ValueError, onnx's ValidationError
            raise InputError(f"{path}: its external weight data cannot be read ({first_line(e)}); keep the data file(s) "
                             f"{', '.join(external)} beside the model") from e
    if not checker:
        return model
    try:  # in memory when it fits protobuf's limit and holds its data; else from the file (reads the data itself)
        in_memory = (load_external or not external) and model_bytes(model) < PROTOBUF_LIMIT
        onnx.checker.check_model(model if in_memory else str(path))
    except onnx.checker.ValidationError as e:
        raise InputError(f"{path} is not a valid ONNX model: {first_line(e)}") from e
    return model


def preflight(path: str | os.PathLike) -> None:
    """The checks :func:`load_model` makes before reading weights (file, protobuf, opset, domains, external data):
    run before onnxruntime opens a model, so its problems get onnxq's one-line messages."""
    load_model(path, load_external=False, checker=False)


def check_opsets(model: onnx.ModelProto, path: Path) -> None:
    """An opset newer than this onnx knows, or an op domain onnxruntime does not implement: refused by name."""
    newest = onnx.defs.onnx_opset_version()
    have = model_opset(model)
    if have > newest:
        raise InputError(f"{path} declares ai.onnx opset {have}, newer than this onnx/onnxruntime support (up to {newest}); "
                         f"re-export it with opset {newest} or lower")
    local = {f.domain for f in model.functions}
    for node in model.graph.node:
        if node.domain not in KNOWN_DOMAINS and node.domain not in local:
            raise InputError(f"{path}: node {node.name or node.op_type!r} is {node.domain}:{node.op_type}, a custom-domain op "
                             "onnxruntime does not implement; export the model with standard ONNX ops (or run it where "
                             "its custom-op library is registered; onnxq cannot load one)")


def check_external_data(model: onnx.ModelProto, path: Path) -> list[str]:
    """The external-data files ``model`` (loaded from ``path``) names, each checked; refuses a bad location."""
    base = path.parent.resolve()
    files: dict[str, int] = {}
    for t in _tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        where = f"{path}: tensor {t.name!r} keeps its data in {loc!r}"
        if not loc or Path(loc).is_absolute() or ".." in Path(loc).parts:
            raise InputError(f"{where}, which is not a file name inside the model's folder; onnxq reads external data "
                             "only beside the model (re-save it with a relative location)")
        target = (base / loc).resolve()
        if base not in target.parents:
            raise InputError(f"{where}, which resolves outside the model's folder ({target}); re-save it beside the model")
        if loc not in files:
            if not target.is_file():
                raise InputError(f"{where}, which does not exist; keep the data file beside the model "
                                 "(a model and its external data move together)")
            files[loc] = target.stat().st_size
        try:
            end = int(info.get("offset", 0)) + int(info["length"]) if "length" in info else None
        except ValueError:
            raise InputError(f"{where} at an unreadable offset/length; the model is corrupt") from None
        if end is not None and end > files[loc]:
            raise InputError(f"{where}, bytes up to {end}, but that file holds {files[loc]}; it is truncated or belongs "
                             "to another export")
    return list(files)


def _tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Whether ``model`` must be written with its weights in external data (protobuf cannot serialise 2 GiB)."""
    from . import plan

    return model_bytes(model) >= plan.EXTERNAL_DATA_ABOVE


def model_bytes(model: onnx.ModelProto) -> int:
    """The model's size with its weights: the protobuf plus the external bytes its tensors refer to. (protobuf's
    ``ByteSize`` itself fails past 2 GiB: then the tensors' bytes are summed.)"""
    ext = 0
    for t in _tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            ext += int(info.get("length", 0) or 0)
    try:
        return model.ByteSize() + ext
    except Exception:  # google.protobuf.message.EncodeError: over 2 GiB in memory
        return ext + sum(len(t.raw_data) + 4 * len(t.float_data) + 8 * len(t.int64_data) + 4 * len(t.int32_data)
                         + 8 * len(t.double_data) for t in _tensors(model) if t.data_location != onnx.TensorProto.EXTERNAL)


EXTERNAL_MIN_BYTES = 1024  # tensors this big or bigger go to the data file (onnx's own default threshold)


def _copy_fields(src: Any, dst: Any, skip: frozenset[str] = frozenset()) -> None:
    """Copy ``src``'s set fields into ``dst`` except those named in ``skip`` (one level; sub-messages whole)."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _write_external(model: onnx.ModelProto, path: Path, data: Path) -> None:
    """Write ``model`` with every tensor of at least :data:`EXTERNAL_MIN_BYTES` (initializers and node attributes,
    the main graph's) in ``data``, leaving ``model`` untouched.

    onnx's ``save_model(save_as_external_data=True)`` clears each tensor's bytes and a caller must load them back;
    protobuf's arena never frees the cleared bytes, so every such write grew the model by its whole weight size
    (measured: 0.5 GiB model, three writes, 2.05 GiB). Here the data file is written tensor by tensor and the protobuf
    file from a skeleton copy that never holds the weights."""
    offset = 0

    def externalize(src: onnx.TensorProto, dst: onnx.TensorProto, f) -> None:
        nonlocal offset
        big = src.data_location != onnx.TensorProto.EXTERNAL and src.HasField("raw_data") and \
            len(src.raw_data) >= EXTERNAL_MIN_BYTES
        if not big:
            dst.CopyFrom(src)
            return
        _copy_fields(src, dst, frozenset({"raw_data", "external_data", "data_location"}))
        raw = src.raw_data  # one tensor's bytes at a time
        f.write(raw)
        for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = dst.external_data.add()
            entry.key, entry.value = key, value
        dst.data_location = onnx.TensorProto.EXTERNAL
        offset += len(raw)

    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, frozenset({"graph"}))
    _copy_fields(model.graph, skeleton.graph, frozenset({"initializer", "node"}))
    with open(data, "wb") as f:  # truncates a stale file (onnx's own writer would append to it)
        for t in model.graph.initializer:
            externalize(t, skeleton.graph.initializer.add(), f)
        for node in model.graph.node:
            copy = skeleton.graph.node.add()
            _copy_fields(node, copy, frozenset({"attribute"}))
            for a in node.attribute:
                ca = copy.attribute.add()
                _copy_fields(a, ca, frozenset({"t"}))
                if a.HasField("t"):
                    externalize(a.t, ca.t, f)
    onnx.save_model(skeleton, str(path))


def write_model(model: onnx.ModelProto, path: str | os.PathLike, *, external: bool | None = None) -> Path:
    """Write ``model`` (weights loaded) to ``path``; with ``external`` (default: when it needs it) its weights go to
    ``PATH.data`` beside it, as onnxruntime's quantizer writes them. Not atomic: for temp files and unit members."""
    path = Path(path)
    if external is None:
        external = needs_external_data(model)
    if external:
        _write_external(model, path, path.with_name(path.name + ".data"))
    else:
        onnx.save_model(model, str(path))
    return path


class ModelUnit:
    """A model, its external data and its manifest, committed together (see :func:`model_unit`)."""

    def __init__(self, unit, final: Path):
        self._unit = unit
        self.final = final
        self.model: Path = unit.temps[0]  # write the model here (its external data beside it, any name)
        self.manifest: Path = unit.temps[1]  # and the manifest text here (or leave it unwritten)
        self.data: list[dict] = []  # the external-data files as committed: name, bytes, sha256
        self._sealed = False

    def write_manifest(self, doc: dict) -> None:
        """The manifest text (strict JSON) for this unit; hash the model at :attr:`model` after :meth:`seal`."""
        from .manifest import dumps

        self.manifest.write_text(dumps(doc), encoding="utf-8")

    def seal(self) -> list[dict]:
        """Point the model's external data at the final names and add those files to the unit. Call it once the
        model is complete and before hashing it for the manifest; returns :attr:`data`."""
        if self._sealed:
            return self.data
        self._sealed = True
        model = onnx.load(str(self.model), load_external_data=False)
        locs: dict[str, str] = {}
        for t in _tensors(model):
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            for e in t.external_data:
                if e.key == "location":
                    if e.value not in locs:
                        locs[e.value] = _data_name(self.final, len(locs), set(locs.values()))
                    e.value = locs[e.value]
        if not locs:
            return self.data
        onnx.save_model(model, str(self.model))  # the protobuf only: the tensors stay references
        from ._fs import file_sha256

        for old, new in locs.items():
            src = self.model.parent / old
            self._unit.include(src, self.final.parent / new)
            self.data.append({"file": new, "bytes": src.stat().st_size, "sha256": file_sha256(src)})
        return self.data


def _data_name(final: Path, i: int, taken: set[str]) -> str:
    """``NAME.onnx.data``; another name while that file exists (the model being replaced may still read it)."""
    import secrets

    name = final.name + (".data" if i == 0 else f".{i}.data")
    while (final.parent / name).exists() or name in taken:
        name = f"{final.name}.{secrets.token_hex(4)}.data"
    return name


@contextlib.contextmanager
def model_unit(final: str | os.PathLike) -> Iterator[ModelUnit]:
    """Write a model, its external data and its manifest as one unit: temp names in the destination folder,
    renamed together (data first, the manifest last) only when the block succeeds; external data the replaced
    model used is removed afterwards. A SIGKILL between the renames leaves at worst a model beside the
    previous run's manifest, whose hash then does not match: readers treat that model as unmanifested.
    """
    from ._fs import atomic_files, external_files
    from .manifest import manifest_path

    final = Path(final)
    old_data = external_files(final) if final.is_file() else []
    with atomic_files(final, manifest_path(final)) as unit:
        mu = ModelUnit(unit, final)
        yield mu
        mu.seal()
        unmanifested = mu.manifest.stat().st_size == 0
        if unmanifested:
            mu.manifest.unlink()  # mkstemp's empty file: this model has no manifest
    if unmanifested and manifest_path(final).is_file():
        manifest_path(final).unlink()  # the replaced model's manifest must not stay beside this one
    kept = {final.parent / d["file"] for d in mu.data}
    for p in old_data:
        if p not in kept and p.is_file():
            p.unlink()


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write a model atomically (no manifest); models near protobuf's 2 GB limit get external data beside them."""
    with model_unit(path) as mu:
        write_model(model, mu.model)
    return Path(path)


def default_output(model_path: str | os.PathLike, mode: str) -> Path:
    """``NAME.onnx`` -> ``NAME.int8.onnx`` (static/dynamic) or ``NAME.fp16.onnx``."""
    p = Path(model_path)
    stem = p.name[:-5] if p.name.endswith(".onnx") else p.name
    tag = {"static": "int8", "dynamic": "int8-dynamic", "fp16": "fp16"}.get(mode, mode)
    return p.with_name(f"{stem}.{tag}.onnx")


def model_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (ai.onnx) opset."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def graph_facts(model: onnx.ModelProto) -> GraphFacts:
    """What :func:`onnxq.plan.resolve` needs to know about ``model``."""
    counts = Counter(n.op_type for n in model.graph.node)
    return GraphFacts(
        op_types=frozenset(counts),
        opset=model_opset(model),
        node_names=frozenset(n.name for n in model.graph.node if n.name),
        op_counts=tuple(sorted(counts.items())),
        model_bytes=model_bytes(model),
    )


def toposort(graph: onnx.GraphProto) -> None:
    """Sort nodes topologically in place (some converters append producers after consumers)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or an outer-scope input: keep the remaining order
            ordered.extend(rest)
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def stamp_recipe(path: str | os.PathLike, recipe_dict: dict) -> None:
    """Record what onnxq wrote in the model's own metadata (``onnxq.recipe``: mode, types, opset, float nodes)."""
    import json

    from . import __version__

    model = onnx.load(str(path), load_external_data=False)  # the graph; external weights stay where they are
    keep = {k: recipe_dict.get(k) for k in ("mode", "profile", "opset", "activation_type", "weight_type", "per_channel")}
    keep["float_nodes"] = [f["node"] for f in recipe_dict.get("float_nodes", [])]
    keep["onnxq"] = __version__
    props = [p for p in model.metadata_props if p.key != RECIPE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=RECIPE_KEY, value=json.dumps(keep, sort_keys=True))
    onnx.save_model(model, str(path))


def recorded_weight_type(model: onnx.ModelProto) -> str | None:
    """The weight type onnxq recorded in the model's metadata, or None (not written by onnxq)."""
    import json

    for p in model.metadata_props:
        if p.key == RECIPE_KEY:
            try:
                wt = json.loads(p.value).get("weight_type")
            except (ValueError, AttributeError):
                return None
            return wt if isinstance(wt, str) else None
    return None
