"""Files: the output guard, atomic writes of one file or a unit of files, hashes and sizes (standard library; onnx only to list a model's external-data files).

Every file onnxq writes goes through :func:`atomic_files` (or :func:`atomic_path` for one file): each
is written under a temp name in its destination folder and renamed into place only when the whole
block succeeded, the last file of a unit last (a model's manifest after the model, so a reader that
finds a manifest whose hash does not match the model treats the model as unmanifested). SIGINT and
SIGTERM are held off while a unit's renames run, folders the write created are removed again when it
fails, and :data:`WRITTEN` lists what this process committed so an interrupt can say so truthfully.

:func:`check_output` is the one output guard every verb calls: an output may not resolve (after
symlinks and hard links) to any input of the run, may not be a directory or lie under a file, and a
generated name must stay inside its output folder (:func:`child`). :func:`os_error_line` turns an
``OSError`` into the one line the CLI prints.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

from .errors import InputError

__all__ = ["atomic_path", "atomic_files", "check_output", "child", "os_error_line", "require_space", "file_sha256",
           "size_with_data", "external_files", "staged_folder", "WRITTEN", "made_parents", "remove_made"]

WRITTEN: list[Path] = []  # final paths committed by this process, in order (for the interrupt message)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------
# The output guard


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # symlinks and hard links too
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _expand(inputs: Iterable[str | os.PathLike | None]) -> list[Path]:
    """Inputs as paths; a folder counts with the data files in it (a calibration shard directory)."""
    out: list[Path] = []
    for i in inputs:
        if i is None or not isinstance(i, (str, os.PathLike)):
            continue
        p = Path(i)
        out.append(p)
        if p.is_dir():
            with contextlib.suppress(OSError):
                out.extend(q for q in p.iterdir() if q.is_file())
    return out


def check_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (), what: str = "output",
                 folder: bool = False) -> Path:
    """Refuse an output that is an input, an existing directory (a file is wanted) or a path under a file.

    ``folder``: the output is a directory (compare's OUTDIR, demo's folder); it may exist, but may not be
    an input nor hold one that onnxq would write over (checked by the caller for the names it writes).
    """
    p = Path(path)
    for inp in _expand(inputs):
        if _same(p, inp):
            raise InputError(f"{what} {p} is an input of this run ({inp}); onnxq never overwrites an input: choose another path")
    if p.is_dir() and not folder:
        raise InputError(f"{what} {p} is a directory; give a file path (e.g. {p / 'result'}{p.suffix or ''})")
    if p.exists() and folder and not p.is_dir():
        raise InputError(f"{what} {p} is a file; give a directory")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{what} {p}: {parent} is a file, not a directory; choose another path")
            break
    return p


def child(root: str | os.PathLike, name: str, what: str = "generated name") -> Path:
    """``root / name``, refusing a name that would leave ``root`` (``..``, an absolute path, a separator)."""
    root = Path(root)
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or Path(name).is_absolute():
        raise InputError(f"{what} {name!r} cannot name a folder inside {root}; use letters, digits, '.', '_' and '-'")
    out = root / name
    if root.resolve() not in out.resolve().parents:
        raise InputError(f"{what} {name!r} would write outside {root}; choose another name")
    return out


# ---------------------------------------------------------------------------------------------
# Atomic writes


def made_parents(path: Path) -> list[Path]:
    """Create ``path``'s missing parent folders; returns those it created (deepest last)."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    missing.reverse()
    for d in missing:
        d.mkdir()
    return missing


def remove_made(dirs: list[Path]) -> None:
    """Remove folders :func:`made_parents` created, deepest first, where they are still empty."""
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block ends (then are delivered): renames of one unit are not split."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in sigs}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


class Unit:
    """The temp files of one atomic write: ``temps[i]`` becomes ``finals[i]``; :meth:`include` adds a file
    written elsewhere in the same folder (e.g. a model's external data) to be renamed before the others."""

    def __init__(self, finals: list[Path]):
        self.finals = finals
        self.temps: list[Path] = []
        self.extra: list[tuple[Path, Path]] = []

    def __iter__(self):
        return iter(self.temps)

    def include(self, tmp: Path, final: Path) -> None:
        self.extra.append((Path(tmp), Path(final)))

    def pairs(self) -> list[tuple[Path, Path]]:
        return self.extra + list(zip(self.temps, self.finals))


@contextlib.contextmanager
def atomic_files(*finals: str | os.PathLike) -> Iterator[Unit]:
    """Temp paths beside each of ``finals`` (iterate the yielded :class:`Unit`); all are renamed into place,
    in order, only if the block succeeds.

    A temp path the block leaves absent is not renamed (an optional member of the unit). On any failure
    every temp file, anything written beside it under its name (``TEMP.data``), and folders created for
    them are removed.
    """
    unit = Unit([Path(f) for f in finals])
    made: list[Path] = []
    ok = False
    try:
        for final in unit.finals:
            made += made_parents(final)
            fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name[:200]}.", suffix=".tmp")
            os.close(fd)
            unit.temps.append(Path(tmp))
        yield unit
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; give the usual permissions
        pairs = [(t, f) for t, f in unit.pairs() if t.exists()]
        for tmp, _ in pairs:
            os.chmod(tmp, mode)
        with _signals_held():
            for tmp, final in pairs:
                os.replace(tmp, final)
                WRITTEN.append(final)
        ok = True
    finally:
        for tmp, _ in unit.pairs():
            with contextlib.suppress(OSError):
                for p in [tmp, *tmp.parent.glob(glob_escape(tmp.name) + "*")]:
                    if p.is_file():
                        p.unlink()
        if not ok:
            remove_made(made)


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """A hidden temp folder inside ``folder``: a run writing several models writes them there, and they move into
    ``folder`` together only when the whole run succeeded (models before their ``.onnxq.json`` manifests, whose
    text names the final paths). On failure nothing of the run is left, folders it created included."""
    folder = Path(folder)
    made = made_parents(folder / "x")
    stage = Path(tempfile.mkdtemp(dir=folder, prefix=".onnxq-stage."))
    start = len(WRITTEN)
    ok = False
    try:
        yield stage
        names = sorted((p.name for p in stage.iterdir() if p.is_file()), key=lambda n: (n.endswith(".onnxq.json"), n))
        for n in names:
            if n.endswith(".json"):
                f = stage / n
                f.write_text(f.read_text(encoding="utf-8").replace(str(stage), str(folder)), encoding="utf-8")
        del WRITTEN[start:]  # those were the staged names
        with _signals_held():
            for n in names:
                os.replace(stage / n, folder / n)
                WRITTEN.append(folder / n)
        ok = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not ok:
            remove_made(made)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``final``; it is renamed onto ``final`` only if the block succeeds."""
    del suffix  # kept for callers of the 0.1 signature
    with atomic_files(final) as unit:
        yield unit.temps[0]


# ---------------------------------------------------------------------------------------------
# Space and OS errors


def require_space(folder: str | os.PathLike, need: int, what: str, fix: str) -> None:
    """Refuse to start when ``folder``'s filesystem has less than ``need`` bytes free."""
    d = Path(folder)
    while not d.exists() and d != d.parent:
        d = d.parent
    try:
        free = shutil.disk_usage(d).free
    except OSError:
        return
    if free < need:
        raise InputError(f"{what} {d} has {free / 2**20:.1f} MiB free, about {need / 2**20:.1f} MiB are needed; {fix}")


_FIX = {
    errno.EACCES: "check its permissions or write elsewhere (-o)",
    errno.EPERM: "check its permissions or write elsewhere (-o)",
    errno.EROFS: "that filesystem is read-only: write elsewhere (-o)",
    errno.ENOSPC: "the disk is full: free space, or write elsewhere (-o; TMPDIR for temporary files)",
    errno.EDQUOT: "the disk quota is used up: free space or write elsewhere (-o)",
    errno.ENAMETOOLONG: "use a shorter file name",
    errno.EISDIR: "that is a directory: give a file path",
    errno.ENOTDIR: "a parent of that path is a file, not a directory: choose another path",
    errno.ENOENT: "check that the path exists",
    errno.EEXIST: "remove it or choose another path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
}


def os_error_line(e: OSError) -> str:
    """One line for an OSError: the path(s), the errno's meaning and the fix."""
    where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None) or "a file"
    name = errno.errorcode.get(e.errno or 0, "")
    why = e.strerror or str(e) or type(e).__name__
    fix = _FIX.get(e.errno or 0, "check the path and the filesystem")
    return f"cannot use {where}: {why}{f' ({name})' if name else ''}; {fix}"


# ---------------------------------------------------------------------------------------------
# Hashes and sizes


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def size_with_data(path: str | os.PathLike) -> int:
    """Bytes of a model file plus the external-data files it names."""
    path = Path(path)
    return path.stat().st_size + sum(p.stat().st_size for p in external_files(path) if p.is_file())


def external_files(path: str | os.PathLike) -> list[Path]:
    """The external-data files a model names (read from its protobuf without loading them; onnx imported here only)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a readable model: it names no files
        return []
    names: list[str] = []
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and loc not in names:
                names.append(loc)
    return [path.parent / n for n in names]
