"""Loading models with clear errors, their facts for the recipe, and writing them atomically (temp file + rename)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import onnx

from ._fs import atomic_path
from .errors import InputError, first_line
from .plan import GraphFacts

__all__ = ["load_model", "save_model", "default_output", "graph_facts", "model_opset", "toposort", "stamp_recipe",
           "recorded_weight_type"]

RECIPE_KEY = "onnxq.recipe"  # metadata_props entry: the recipe that wrote the model (JSON)

PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: str | os.PathLike, *, load_external: bool = True) -> onnx.ModelProto:
    """Load an ONNX model; a missing, non-ONNX, truncated or invalid file raises InputError."""
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
    has_external = any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
    )
    if has_external and load_external:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as e:
            raise InputError(f"{path} refers to external weight data that cannot be read ({e}); keep the .data file beside the model") from e
    try:
        onnx.checker.check_model(model if model.ByteSize() < PROTOBUF_LIMIT else str(path))
    except onnx.checker.ValidationError as e:
        raise InputError(f"{path} is not a valid ONNX model: {first_line(e)}") from e
    return model


def needs_external_data(model: onnx.ModelProto) -> bool:
    return model.ByteSize() >= PROTOBUF_LIMIT - 64 * 2**20


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write a model atomically; models near protobuf's 2 GB limit get a side ``.data`` file."""
    path = Path(path)
    if needs_external_data(model):
        data_name = path.name + ".data"
        with atomic_path(path) as tmp:
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name)
        return path
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))
    return path


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

    model = onnx.load(str(path))
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
