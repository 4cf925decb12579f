"""Helpers for the bad-input tests: run the CLI in-process and check the promise for a refused run.

The promise (README, DESIGN.md): one line on stderr saying what is wrong and how to fix it, exit 2,
no traceback, and the folder the run touches left exactly as it was (no output, no temp file, no
empty folder, no input changed).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from onnxq.cli import main


def snapshot(*folders: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under ``folders``."""
    out: dict[str, bytes | None] = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            out[str(p)] = None if p.is_dir() else p.read_bytes()
    return out


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors (one line, exit 2, as in a real process)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, argv, match: str, *folders: Path, code: int = 2) -> str:
    """Run ``onnxq ARGV``; assert it is refused with one line containing ``match`` and ``folders`` unchanged."""
    before = snapshot(*folders)
    rc, _out, err = run_cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == code, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("onnxq: error: "), err
    assert match in lines[0], lines[0]
    assert "Traceback" not in err
    after = snapshot(*folders)
    assert after == before, {k for k in set(before) | set(after) if before.get(k, 0) != after.get(k, 0)}
    return lines[0]


@contextlib.contextmanager
def small_filesystem(size: str, *, read_only: bool = False):
    """A real tmpfs of ``size`` (read-only if asked) where this process may mount one (root with CAP_SYS_ADMIN);
    yields None where it may not, and the caller falls back to a simulated OSError."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    d = Path(tempfile.mkdtemp(prefix="onnxq-fs-"))
    opts = f"size={size}" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        d.rmdir()
        yield None
        return
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)
        d.rmdir()


def failing_mkstemp(monkeypatch, err: int, under: Path) -> None:
    """Simulate a filesystem that refuses new files under ``under`` (read-only: EROFS, full: ENOSPC)."""
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **kw):
        if dir is not None and Path(dir).resolve().is_relative_to(under.resolve()):
            raise OSError(err, os.strerror(err), str(Path(dir) / "x.tmp"))
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


ENOSPC, EROFS = errno.ENOSPC, errno.EROFS
