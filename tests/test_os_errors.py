"""Issue 10, class 6: an OSError while writing is one line (path, the errno's meaning, the fix), exit 2,
and nothing half-written. Real read-only / full filesystems (tmpfs) where this process may mount them;
a simulated OSError at the same call otherwise."""

import numpy as np
import pytest

import tiny_models
from clitools import ENOSPC, EROFS, failing_mkstemp, refused, run_cli, small_filesystem

P = ["--profile", "cpu-x86-vnni"]


@pytest.fixture
def case(tmp_path, capsys):
    m = tmp_path / "cnn.onnx"
    tiny_models.cnn(m)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **tiny_models.cnn_data(64))
    bench = tmp_path / "bench.json"
    assert run_cli(capsys, "bench", m, "--runs", "2", "--warmup", "0", "-q", "-o", bench, *P)[0] == 0
    return tmp_path, m, calib, bench


def _verbs(d, m, calib, bench, where):
    return [
        ["quantize", m, "--calib", calib, *P, "-q", "-o", where / "x.onnx"],
        ["bench", m, "--runs", "2", *P, "-q", "-o", where / "x.json"],
        ["eval", m, "--data", calib, "--ref", m, *P, "-q", "-o", where / "x.json"],
        ["report", bench, "-o", where / "x.md"],
        ["compare", m, "--calib", calib, "--eval", calib, *P, "-q", "-o", where / "cmp", "--runs", "2", "--warmup", "0",
         "--variants", "dynamic"],
        ["demo", "-o", where / "demo", "-q"],
    ]


def test_read_only_output_folder(case, capsys, monkeypatch):
    d, m, calib, bench = case
    with small_filesystem("64m", read_only=True) as ro:
        if ro is None:
            ro = d / "ro"
            ro.mkdir()
            failing_mkstemp(monkeypatch, EROFS, ro)
        for argv in _verbs(d, m, calib, bench, ro):
            line = refused(capsys, argv, "Read-only file system", d, ro)
            assert "write elsewhere (-o)" in line


def test_full_output_filesystem(case, capsys, monkeypatch):
    d, m, calib, bench = case
    with small_filesystem("16k") as full:
        if full is None:
            full = d / "full"
            full.mkdir()
            failing_mkstemp(monkeypatch, ENOSPC, full)
        else:
            (full / "filler").write_bytes(b"\0" * 12 * 1024)  # what is left cannot hold a model
        refused(capsys, ["quantize", m, "--calib", calib, *P, "-q", "-o", full / "x.onnx"], "free", d, full)


def test_full_disk_while_writing_the_manifest_leaves_no_model(case, capsys, monkeypatch):
    """The model is written, then the manifest write fails: the unit is not committed, the model is not left alone."""
    d, m, calib, _ = case
    import onnxq.modelio as modelio

    real = modelio.ModelUnit.write_manifest

    def full(self, doc):
        raise OSError(ENOSPC, "No space left on device", str(self.manifest))

    monkeypatch.setattr(modelio.ModelUnit, "write_manifest", full)
    line = refused(capsys, ["quantize", m, "--calib", calib, *P, "-q", "-o", d / "out" / "x.onnx"], "No space left on device", d)
    assert "the disk is full" in line and not (d / "out").exists()
    monkeypatch.setattr(modelio.ModelUnit, "write_manifest", real)


def test_full_temporary_folder(case, capsys, monkeypatch):
    d, m, calib, _ = case
    import tempfile

    with small_filesystem("1m") as full:
        if full is None:
            pytest.skip("cannot mount a small filesystem here (the space check itself is exercised above)")
        (full / "filler").write_bytes(b"\0" * 1000 * 1024)
        monkeypatch.setenv("TMPDIR", str(full))
        monkeypatch.setattr(tempfile, "tempdir", None)
        refused(capsys, ["quantize", m, "--calib", calib, *P, "-q", "-o", d / "x.onnx"], "set TMPDIR", d, full)


def test_bad_output_paths(case, capsys):
    d, m, calib, bench = case
    (d / "adir.onnx").mkdir()
    (d / "mdir.onnxq.json").mkdir()
    refused(capsys, ["quantize", m, "--calib", calib, *P, "-q", "-o", d / "adir.onnx"], "is a directory; give a file path", d)
    refused(capsys, ["quantize", m, "--calib", calib, *P, "-q", "-o", d / "mdir.onnx"], "manifest", d)
    refused(capsys, ["quantize", m, "--calib", calib, *P, "-q", "-o", calib / "x.onnx"], "is a file, not a directory", d)
    refused(capsys, ["bench", m, "--runs", "2", *P, "-q", "-o", bench / "x.json"], "is a file, not a directory", d)
    line = refused(capsys, ["quantize", m, "--calib", calib, *P, "-q", "-o", d / ("x" * 300 + ".onnx")], "File name too long", d)
    assert "use a shorter file name" in line
    refused(capsys, ["report", bench, "-o", d / ("y" * 300 + ".md")], "File name too long", d)
