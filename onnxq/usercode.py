"""Loading the user's code named ``module:object`` or ``path/to/file.py:object``, without shadowing installed modules.

>>> from onnxq.usercode import load_object
>>> load_object("collections:OrderedDict")
<class 'collections.OrderedDict'>

What is imported, and from where (``onnxq export`` and ``onnxq qat`` name their model factory or
task this way):

- ``path/to/file.py:object`` loads exactly that file, under a private module name. Its folder is
  *appended* to ``sys.path`` so the file can import its neighbours (``from data import ...``), but
  an installed module of the same name always wins: a stray ``tabulate.py`` beside it is never run
  in place of the real library.
- ``package.module:object`` imports an installed module first; only when none is installed is it
  looked up in the working directory (appended to ``sys.path`` for that, never put first).

``object`` may be dotted (``module:Class.factory``). Standard library only.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from .errors import InputError, first_line

__all__ = ["load_object"]


def _append_path(folder: str) -> None:
    if folder not in sys.path:
        sys.path.append(folder)  # searched after the installed packages: never shadows them


def load_object(spec: str) -> Any:
    """Resolve ``module:object`` or ``path/to/file.py:object`` (see the module docstring)."""
    text = str(spec).strip()
    module_part, sep, attr = text.rpartition(":")
    if not sep or not module_part or not attr:
        raise InputError(f"{text!r} is not of the form module:object or path/to/file.py:object "
                         "(e.g. examples/fashion_mnist/model.py:make_model)")
    is_file = module_part.endswith(".py") or os.sep in module_part or "/" in module_part
    mod = _import_file(Path(module_part), text) if is_file else _import_module(module_part)
    obj: Any = mod
    walked = []
    for part in attr.split("."):
        walked.append(part)
        if not hasattr(obj, part):
            where = module_part if len(walked) == 1 else f"{module_part}:{'.'.join(walked[:-1])}"
            public = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
            hint = f"; callables there: {', '.join(public[:8])}{', ...' if len(public) > 8 else ''}" if public else ""
            raise InputError(f"{where} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    return obj


def _import_module(name: str):
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        _append_path(os.getcwd())  # not installed: the working directory is the only other place to look
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise InputError(f"cannot import module {name!r} ({e}): it is neither installed nor in the working directory "
                             f"{os.getcwd()}; check the name, or give a file: path/to/file.py:object") from e
        raise InputError(f"module {name!r} failed to import because it needs {e.name!r}, which is not installed") from e
    except Exception as e:  # the user's module raised while importing
        raise InputError(f"module {name!r} raised while importing: {type(e).__name__}: {first_line(e)}") from e


def _import_file(path: Path, spec_text: str):
    if path.suffix != ".py":
        raise InputError(f"{path} in {spec_text!r} is not a .py file; use path/to/file.py:object or module.name:object")
    if not path.is_file():
        raise InputError(f"file {path} (from {spec_text!r}) does not exist; check the path")
    path = path.resolve()
    _append_path(str(path.parent))  # so the file can import its neighbours (e.g. data.py beside model.py)
    mod_name = f"onnxq_user_{path.stem}_{abs(hash(str(path))) & 0xFFFFFF:06x}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    ispec = importlib.util.spec_from_file_location(mod_name, path)
    if ispec is None or ispec.loader is None:
        raise InputError(f"cannot load {path} as a Python module")
    mod = importlib.util.module_from_spec(ispec)
    sys.modules[mod_name] = mod
    try:
        ispec.loader.exec_module(mod)
    except Exception as e:
        del sys.modules[mod_name]
        if isinstance(e, ModuleNotFoundError):
            raise InputError(f"{path} failed to import because it needs {e.name!r}, which is not installed") from e
        raise InputError(f"{path} raised while importing: {type(e).__name__}: {first_line(e)}") from e
    return mod
