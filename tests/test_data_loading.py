"""Calibration / evaluation / bench data: streamed from shards with bounded memory, and every bad file one line.

Bad inputs go through the CLI verb that exposes them (quantize --calib, eval --data, bench --data): exit 2,
exactly one stderr line, no traceback, nothing written. Streaming: a shard directory gives the same quantized
model as one .npz, the held-out samples are the last ones, and a 2048-sample directory is never materialised.
"""

import gc
import io
import os
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tiny_models
import onnxq
import onnxq.calibration as C
from onnxq.calibration import CalibrationSet, InputSpec, collect_ranges
from onnxq.cli import main
from onnxq.errors import InputError

HUGE_ROWS = 1_224_979_098_645  # x 1x8x8 float32 = 285 TiB


# ---------------------------------------------------------------------------------------------
# helpers


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def write_bomb(path: Path, key: str = "input", nbytes: int = 800_000_000) -> Path:
    """An .npz of ~0.8 MB whose member inflates to 0.8 GB of zeros (written in pieces: nothing large in memory)."""
    rows = nbytes // 256
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf, zf.open(f"{key}.npy", "w", force_zip64=True) as f:
        f.write(npy_header((rows, 1, 8, 8)))
        zeros, left = bytes(1 << 20), rows * 256
        while left > 0:
            f.write(zeros[: min(left, len(zeros))])
            left -= len(zeros)
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    p = write_bomb(tmp_path_factory.mktemp("bomb") / "bomb.npz")
    assert p.stat().st_size < 1_000_000  # 0.8 MB on disk, 0.8 GB inflated
    return p


def good(n=16):
    return tiny_models.cnn_data(n)["input"]


def make_bad(kind: str, d: Path, bomb: Path | None, labels: bool = True) -> Path:
    """A bad data file of kind ``kind`` for the tiny CNN (input 'input', Nx1x8x8 float32); ``labels`` adds eval labels."""
    x = good()

    def lab(n=16):
        return {"labels": np.arange(n) % 10} if labels else {}

    if kind == "truncated_npz":
        np.savez(d / "full.npz", input=x, **lab())
        blob = (d / "full.npz").read_bytes()
        (d / "full.npz").unlink()
        (d / "bad.npz").write_bytes(blob[: len(blob) // 2])
        return d / "bad.npz"
    if kind == "truncated_npy":
        np.save(d / "full.npy", x)
        blob = (d / "full.npy").read_bytes()
        (d / "full.npy").unlink()
        (d / "bad.npy").write_bytes(blob[:3000])
        return d / "bad.npy"
    if kind == "huge_header_npy":
        (d / "bad.npy").write_bytes(npy_header((HUGE_ROWS, 1, 8, 8)) + bytes(1024))
        return d / "bad.npy"
    if kind == "huge_header_npz":
        with zipfile.ZipFile(d / "bad.npz", "w") as zf:
            zf.writestr("input.npy", npy_header((HUGE_ROWS, 1, 8, 8)) + bytes(1024))
            zf.writestr("labels.npy", npy_header((16,), "<i8") + np.zeros(16, np.int64).tobytes())
        return d / "bad.npz"
    if kind == "zip_bomb":
        return bomb
    if kind == "f64_overflow":
        y = x.astype(np.float64)
        y[0, 0, 2, 2] = 1e300
        y[1, 0, 0, 0] = -1e39
        np.savez(d / "bad.npz", input=y, **lab())
        return d / "bad.npz"
    if kind == "object_npy":
        np.save(d / "bad.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        return d / "bad.npy"
    if kind == "object_npz":
        np.savez(d / "bad.npz", input=x, labels=np.array([None] * 16, dtype=object))
        return d / "bad.npz"
    if kind == "wrong_shape_npz":
        np.savez(d / "bad.npz", input=x[:, :, :7], **lab())
        return d / "bad.npz"
    if kind == "corrupt_member":
        np.savez(d / "bad.npz", input=good(64), **lab(64))
        blob = bytearray((d / "bad.npz").read_bytes())
        for i in range(2000, 2400):
            blob[i] ^= 0x5A
        (d / "bad.npz").write_bytes(bytes(blob))
        return d / "bad.npz"
    raise AssertionError(kind)


def assert_one_line_error(code, out, err, *needles):
    assert code == 2, (code, err)
    assert err.count("\n") == 1 and err.startswith("onnxq: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


def listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.fixture
def cnn(tmp_path):
    path = tmp_path / "cnn.onnx"
    tiny_models.cnn(path)
    return path


# ---------------------------------------------------------------------------------------------
# Bad inputs through the CLI: exit 2, one line, nothing written

CALIB_CASES = [
    ("truncated_npz", ["cannot read calibration file", "bad.npz", "truncated"]),
    ("truncated_npy", ["bad.npy", "16x1x8x8 float32", "truncated"]),
    ("huge_header_npy", ["bad.npy", f"{HUGE_ROWS}x1x8x8 float32 array (285.2 TiB)", "the file is 1.1 KiB"]),
    ("zip_bomb", ["bomb.npz", "inflates from", "to 762.9 MiB", "zip bomb"]),
    ("f64_overflow", ["'input'", "bad.npz", "value(s) exceed float32's range", "first at index (0, 0, 2, 2)"]),
    ("object_npy", ["bad.npy", "Python objects", "allow_pickle=False"]),
    ("wrong_shape_npz", ["bad.npz", "dimension 2 must be 8"]),
    ("corrupt_member", ["bad.npz", "Bad CRC-32"]),
]


@pytest.mark.parametrize("kind, needles", CALIB_CASES, ids=[c[0] for c in CALIB_CASES])
def test_quantize_refuses_bad_calibration_file(cnn, tmp_path, capsys, bomb, kind, needles):
    bad = make_bad(kind, tmp_path, bomb, labels=False)
    before = listing(tmp_path)
    out_model = tmp_path / "out.onnx"
    code, out, err = run_cli(capsys, "quantize", cnn, "--calib", bad, "--profile", "cpu-x86-vnni", "-q", "-o", out_model)
    assert_one_line_error(code, out, err, *needles)
    assert listing(tmp_path) == before and not out_model.exists()


def test_quantize_refuses_negative_calib_random(cnn, tmp_path, capsys):
    before = listing(tmp_path)
    for n in ("-5", "0"):
        code, out, err = run_cli(capsys, "quantize", cnn, "--calib-random", n, "--profile", "cpu-x86-vnni", "-q")
        assert_one_line_error(code, out, err, "--calib-random takes a positive number", f"got {n}")
    assert listing(tmp_path) == before
    with pytest.raises(InputError, match="positive sample count"):
        CalibrationSet.random(tiny_models.cnn(), -5)


def _shard_dir(d: Path, n_shards=5, rows=16, bad_at=None, bad="shape"):
    d.mkdir()
    x = good(n_shards * rows)
    for i in range(n_shards):
        part = x[i * rows: (i + 1) * rows].copy()
        if i == bad_at and bad == "shape":
            part = part[:, :, :7]
        if i == bad_at and bad == "nan":
            part[3, 0, 1, 2] = np.nan
        np.save(d / f"shard_{i}.npy", part)
    return d


class _ReadSpy:
    """Records (file, rows) of every chunk read from .npy shards and .npz members."""

    def __init__(self, monkeypatch):
        self.reads: list[tuple[str, int]] = []
        for cls in (C._NpyFile, C._NpzMember):
            orig = cls.chunks

            def spy(obj, start, stop, max_rows, _orig=orig):
                for chunk in _orig(obj, start, stop, max_rows):
                    self.reads.append((Path(obj.where).name, len(chunk)))
                    yield chunk

            monkeypatch.setattr(cls, "chunks", spy)

    def rows(self, name=None):
        return sum(n for f, n in self.reads if name is None or f == name)


def test_wrong_shape_shard_in_the_middle_is_named_before_any_work(cnn, tmp_path, capsys, monkeypatch):
    shards = _shard_dir(tmp_path / "shards", bad_at=2)
    spy = _ReadSpy(monkeypatch)
    code, out, err = run_cli(capsys, "quantize", cnn, "--calib", shards, "--profile", "cpu-x86-vnni", "-q",
                             "-o", tmp_path / "out.onnx")
    assert_one_line_error(code, out, err, "shard_2.npy", "has shape (16, 1, 7, 8)", "dimension 2 must be 8")
    assert spy.reads == []  # header-only validation: no sample was read before the error
    assert not (tmp_path / "out.onnx").exists()


def test_nan_in_a_middle_shard_names_the_file_and_index(cnn, tmp_path, capsys):
    shards = _shard_dir(tmp_path / "shards", bad_at=3, bad="nan")
    s = CalibrationSet.from_source(shards, tiny_models.cnn())  # headers are fine: values are checked when read
    with pytest.raises(InputError, match=r"shard_3.npy contains 1 NaN"):
        s.check_values()
    code, out, err = run_cli(capsys, "quantize", cnn, "--calib", shards, "--profile", "cpu-x86-vnni", "-q",
                             "-o", tmp_path / "out.onnx")
    assert_one_line_error(code, out, err, "shard_3.npy", "1 NaN value(s) (first at index (3, 0, 1, 2))")
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "out.onnxq.json").exists()


DIR_CASES = ["empty_dir", "only_other_files", "mixed_keys", "npy_for_multi_input"]


@pytest.mark.parametrize("kind", DIR_CASES)
def test_bad_shard_directories(tmp_path, capsys, kind):
    model = tmp_path / "m.onnx"
    d = tmp_path / "data"
    d.mkdir()
    if kind == "npy_for_multi_input":
        tiny_models.attention(model)
        data = tiny_models.attention_data(8)
        np.savez(d / "a.npz", **data)
        np.save(d / "b.npy", data["x"])
        needles = ["b.npy", "single-input model", "['x', 'mask']"]
    else:
        tiny_models.cnn(model)
        if kind == "empty_dir":
            needles = ["holds no .npz or .npy files"]
        elif kind == "only_other_files":
            (d / "README.txt").write_text("samples")
            (d / "x.csv").write_text("1,2")
            needles = ["holds no .npz or .npy files", "README.txt", "x.csv"]
        else:
            np.savez(d / "a.npz", input=good())
            np.savez(d / "b.npz", image=good())
            needles = ["b.npz", "missing ['input'], unexpected ['image']", "the first shard, a.npz, holds ['input']"]
    before = listing(tmp_path)
    code, out, err = run_cli(capsys, "quantize", model, "--calib", d, "--profile", "cpu-x86-vnni", "-q", "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, out, err, *needles)
    assert listing(tmp_path) == before


def test_other_files_in_a_shard_directory_are_ignored_and_named(tmp_path):
    d = _shard_dir(tmp_path / "shards", n_shards=2)
    (d / "README.md").write_text("how these were made")
    s = CalibrationSet.from_source(d, tiny_models.cnn())
    assert s.count == 32 and any("README.md" in n and "ignored" in n for n in s.notes)


EVAL_CASES = [
    ("truncated_npz", ["cannot read evaluation file", "bad.npz", "truncated"]),
    ("huge_header_npz", ["bad.npz", "array 'input'", f"{HUGE_ROWS}x1x8x8 float32 array (285.2 TiB)", "1.1 KiB"]),
    ("zip_bomb", ["bomb.npz", "inflates from", "zip bomb"]),
    ("f64_overflow", ["evaluation input 'input'", "2 value(s) exceed float32's range", "first at index (0, 0, 2, 2)"]),
    ("object_npz", ["bad.npz", "array 'labels'", "Python objects"]),
    ("wrong_shape_npz", ["bad.npz", "dimension 2 must be 8"]),
    ("corrupt_member", ["bad.npz", "Bad CRC-32"]),
]


@pytest.mark.parametrize("kind, needles", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_eval_refuses_bad_data(cnn, tmp_path, capsys, bomb, kind, needles):
    bad = make_bad(kind, tmp_path, bomb)
    before = listing(tmp_path)
    code, out, err = run_cli(capsys, "eval", cnn, "--data", bad, "--profile", "cpu-x86-vnni", "-q", "-o", tmp_path / "r.json")
    assert_one_line_error(code, out, err, *needles)
    assert listing(tmp_path) == before


def test_eval_wrong_shape_is_refused_from_the_header(tmp_path, monkeypatch):
    from onnxq.evaldata import load_eval_data

    bad = make_bad("wrong_shape_npz", tmp_path, None)
    spy = _ReadSpy(monkeypatch)
    specs = [InputSpec("input", np.float32, ("N", 1, 8, 8))]
    with pytest.raises(InputError, match="dimension 2 must be 8"):
        load_eval_data(bad, specs)
    assert spy.reads == []


def test_eval_refuses_data_over_its_memory_cap(cnn, tmp_path, capsys, monkeypatch):
    import onnxq.evaldata as E

    np.savez(tmp_path / "e.npz", input=good(64), labels=np.arange(64) % 10)
    monkeypatch.setattr(E, "EVAL_MAX_BYTES", 8 << 10)
    code, out, err = run_cli(capsys, "eval", cnn, "--data", tmp_path / "e.npz", "--profile", "cpu-x86-vnni", "-q")
    assert_one_line_error(code, out, err, "needs 16.5 KiB in memory (64 samples)", "evaluate a subset")


def test_eval_reads_good_compressed_data(cnn, tmp_path, capsys):
    x, y = good(40), np.arange(40) % 10
    np.savez_compressed(tmp_path / "e.npz", input=x, labels=y, notes=np.array([1.0]))  # notes: never read
    from onnxq.evaldata import load_eval_data

    specs = [InputSpec("input", np.float32, ("N", 1, 8, 8))]
    data = load_eval_data(tmp_path / "e.npz", specs, allow_extra=True)
    np.testing.assert_array_equal(data.inputs["input"], x)
    np.testing.assert_array_equal(data.labels, y)


BENCH_CASES = [
    ("truncated_npz", ["cannot read bench file", "bad.npz"]),
    ("huge_header_npy", ["bad.npy", "285.2 TiB", "the file is 1.1 KiB"]),
    ("zip_bomb", ["bomb.npz", "zip bomb"]),
    ("f64_overflow", ["bench input 'input'", "value(s) exceed float32's range"]),
    ("object_npy", ["bad.npy", "Python objects"]),
    ("wrong_shape_npz", ["bench input 'input'", "dimension 2 must be 8"]),
]


@pytest.mark.parametrize("kind, needles", BENCH_CASES, ids=[c[0] for c in BENCH_CASES])
def test_bench_refuses_bad_data(cnn, tmp_path, capsys, bomb, kind, needles):
    bad = make_bad(kind, tmp_path, bomb)
    before = listing(tmp_path)
    code, out, err = run_cli(capsys, "bench", cnn, "--data", bad, "--profile", "cpu-x86-vnni", "-q", "--runs", "2",
                             "--warmup", "1", "-o", tmp_path / "r.json")
    assert_one_line_error(code, out, err, *needles)
    assert listing(tmp_path) == before


def test_bench_accepts_npy_for_single_input_models_and_refuses_it_for_others(cnn, tmp_path, capsys):
    np.save(tmp_path / "x.npy", good(4).astype(np.float64))  # float64: cast like calibration data, with a note
    code, out, err = run_cli(capsys, "bench", cnn, "--data", tmp_path / "x.npy", "--profile", "cpu-x86-vnni", "-q",
                             "--runs", "2", "--warmup", "1", "--batch", "1,8", "-o", tmp_path / "r.json")
    assert code == 0, err
    assert "cast float64 -> float32" in err and (tmp_path / "r.json").exists()
    attn = tmp_path / "attn.onnx"
    tiny_models.attention(attn)
    np.save(tmp_path / "a.npy", tiny_models.attention_data(4)["x"])
    code, out, err = run_cli(capsys, "bench", attn, "--data", tmp_path / "a.npy", "--profile", "cpu-x86-vnni", "-q")
    assert_one_line_error(code, out, err, "a.npy", "single-input model")


def test_bench_reads_only_the_rows_its_largest_batch_uses(cnn, tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "x.npy", good(512))
    spy = _ReadSpy(monkeypatch)
    code, out, err = run_cli(capsys, "bench", cnn, "--data", tmp_path / "x.npy", "--profile", "cpu-x86-vnni", "-q",
                             "--runs", "2", "--warmup", "1", "--batch", "1,8")
    assert code == 0, err
    assert spy.rows() == 8


def test_unit_checks_of_values_and_headers(tmp_path):
    spec32 = InputSpec("ids", np.int32, ("N", 4))
    with pytest.raises(InputError, match=r"1 value\(s\) are outside int32's range"):
        C.check_input_array(np.array([[1, 2, 3, 2**40]], np.int64), spec32, "mem", [])
    spec = InputSpec("x", np.float32, ("N", 4))
    with pytest.raises(InputError, match="holds Python objects"):
        C.check_input_array(np.array([[None] * 4], dtype=object), spec, "mem", [])
    inf_ok = C.check_input_array(np.array([[0.0, np.inf, 1.0, 2.0]]), spec, "mem", notes := [])
    assert inf_ok.dtype == np.float32 and any("+-inf" in n for n in notes)
    # symbolic dims must still agree between shards (and items): batches join them
    ids = [InputSpec("ids", np.int64, ("N", "S"))]
    (tmp_path / "seq").mkdir()
    np.save(tmp_path / "seq" / "a.npy", np.zeros((4, 8), np.int64))
    np.save(tmp_path / "seq" / "b.npy", np.zeros((4, 16), np.int64))
    with pytest.raises(InputError, match=r"b.npy have shape 16 but those from .*a.npy have 8"):
        CalibrationSet.from_source(tmp_path / "seq", ids)
    with pytest.raises(InputError, match=r"\(item 1\) have shape 9"):
        CalibrationSet.from_source(iter([{"ids": np.zeros((2, 8), np.int64)}, {"ids": np.zeros((2, 9), np.int64)}]), ids)
    # a .npy header that is not one
    (tmp_path / "junk.npy").write_bytes(b"not an array at all")
    with pytest.raises(InputError, match="not a readable .npy array"):
        C.open_npy(tmp_path / "junk.npy")


# ---------------------------------------------------------------------------------------------
# Streaming


def test_shard_directory_quantizes_byte_identically_to_one_npz(tmp_path):
    model = tmp_path / "cnn.onnx"
    tiny_models.cnn(model)
    x = good(300)
    np.savez(tmp_path / "one.npz", input=x)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(0, 300, 64):  # natural order: part_2 before part_10 would matter with more shards
        np.save(shards / f"part_{i // 64}.npy", x[i: i + 64])
    r1 = onnxq.quantize(model, mode="static", calibration=tmp_path / "one.npz", profile="cpu-x86-vnni",
                        output=tmp_path / "a.onnx", progress=False)
    r2 = onnxq.quantize(model, mode="static", calibration=shards, profile="cpu-x86-vnni", output=tmp_path / "b.onnx",
                        progress=False)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert r1.calibration["sha256"] == r2.calibration["sha256"]
    assert r1.calibration["samples_used"] == r2.calibration["samples_used"] == 256 and r2.calibration["held_out"] == 32


def test_shards_npz_memmap_and_iterable_give_the_same_samples_and_ranges(tmp_path):
    model = onnx.shape_inference.infer_shapes(tiny_models.cnn())
    x = good(100)
    d = tmp_path / "mixed"
    d.mkdir()
    np.savez_compressed(d / "s1.npz", input=x[:30])  # deflated member, inflated in chunks
    np.save(d / "s2.npy", np.asfortranarray(x[30:60]))  # Fortran order
    np.savez(d / "s10.npz", input=x[61:])  # natural order: s10 after s2
    np.save(d / "s3.npy", x[60])  # one sample without its batch axis
    ref = CalibrationSet.from_source({"input": x}, model)
    mm = np.lib.format.open_memmap(tmp_path / "mm.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    mm.flush()
    sources = {
        "dir": CalibrationSet.from_source(d, model),
        "memmap mapping": CalibrationSet.from_source({"input": np.load(tmp_path / "mm.npy", mmap_mode="r")}, model),
        "generator": CalibrationSet.from_source(({"input": x[i: i + 7]} for i in range(0, 100, 7)), model),
    }
    want = collect_ranges(model, ref, method="minmax", percentile=99.99, op_types=(), progress=False).ranges
    for name, s in sources.items():
        assert s.count == 100 and s.sha256() == ref.sha256(), name
        np.testing.assert_array_equal(s.to_arrays()["input"], x, err_msg=name)
        assert [b["input"].shape[0] for b in s.batches(16)] == [16] * 6 + [4], name
        got = collect_ranges(model, s, method="minmax", percentile=99.99, op_types=(), progress=False).ranges
        assert got == want, name


def test_fixed_batch_model_gets_full_batches_across_shard_boundaries(tmp_path):
    d = _shard_dir(tmp_path / "shards", n_shards=3, rows=5)
    s = CalibrationSet.from_source(d, tiny_models.cnn(batch=4))
    batches = [b["input"] for b in s.batches()]
    assert [len(b) for b in batches] == [4, 4, 4] and s.num_batches() == 3
    np.testing.assert_array_equal(np.concatenate(batches), good(15)[:12])


def test_split_keeps_its_semantics_and_holds_out_the_last_samples(tmp_path, monkeypatch):
    d = _shard_dir(tmp_path / "shards", n_shards=10, rows=30)  # 300 samples
    x = good(300)
    s = CalibrationSet.from_source(d, tiny_models.cnn())
    cal, hold = s.split(32, 256)  # enough data: all but the last 32, which are held out
    assert (cal.count, hold.count) == (268, 32) and hold.origin.endswith("(held out)")
    np.testing.assert_array_equal(hold.to_arrays()["input"], x[-32:])
    np.testing.assert_array_equal(cal.to_arrays()["input"], x[:268])
    small = CalibrationSet.from_source(d, tiny_models.cnn(), limit=100)
    assert [p.count for p in small.split(32, 256)] == [80, 20]  # less data: at most a fifth held out
    assert [p.count for p in small.split(32)] == [80, 20]
    one = CalibrationSet.from_source(d, tiny_models.cnn(), limit=1)
    assert one.split(32, 256) == (one, one) and s.split(0) == (s, s)
    limited = CalibrationSet.from_source(s, tiny_models.cnn(), limit=40)  # a set passed again takes the limit
    assert limited.count == 40 and limited.sha256() == CalibrationSet.from_source({"input": x[:40]}, tiny_models.cnn()).sha256()


def _wide_model():
    """Relu over a 3x32x32 input (12 KiB per sample): big enough samples for the memory checks."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 32, 32])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "wide", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture
def wide_shards(tmp_path):
    """2048 samples in 32 shards of 64 (24 MiB of data)."""
    d = tmp_path / "wide"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(32):
        np.save(d / f"shard_{i:03d}.npy", rng.standard_normal((64, 3, 32, 32), dtype=np.float32))
    return d


def test_2048_sample_directory_is_not_materialised(wide_shards, monkeypatch):
    model = _wide_model()
    spy = _ReadSpy(monkeypatch)
    s = CalibrationSet.from_source(wide_shards, model)
    assert s.count == 2048 and spy.reads == []  # headers only
    cal, hold = s.split(32, 2016)
    assert spy.reads == []  # a split reads nothing
    held = list(hold.batches(16))
    assert [len(b["x"]) for b in held] == [16, 16]
    assert spy.rows() == spy.rows("shard_031.npy") == 32  # the held-out samples come from the last shard alone
    batches = cal.batches(16)
    for _ in range(3):
        next(batches)
    batches.close()
    assert spy.rows() - 32 == 48 == spy.rows("shard_000.npy")  # 3 batches: 48 rows read, all from the first shard


def test_sha_and_a_full_pass_allocate_a_chunk_not_the_set(wide_shards):
    s = CalibrationSet.from_source(wide_shards, _wide_model())
    total = 2048 * 3 * 32 * 32 * 4
    tracemalloc.start()
    try:
        digest = s.sha256()
        seen = sum(len(b["x"]) for b in s.batches(16))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == 2048 and len(digest) == 64
    assert peak < total / 8, (peak, total)  # numpy buffers are traced: one shard's chunk, not 24 MiB


def test_a_large_generator_is_spilled_to_temp_shards_and_cleaned_up(monkeypatch):
    monkeypatch.setattr(C, "SPILL_BYTES", 3000)
    monkeypatch.setattr(C, "SPILL_SHARD_BYTES", 2000)
    model = tiny_models.cnn()
    x = good(100)
    s = CalibrationSet.from_source(({"input": x[i: i + 7]} for i in range(0, 100, 7)), model)
    spill = s._segments[0][0].arrays["input"]._keepalive.path
    assert os.path.isdir(spill) and len(list(Path(spill).glob("*.npy"))) > 1
    assert s.sha256() == CalibrationSet.from_source({"input": x}, model).sha256()
    cal, hold = s.split(10, 90)
    np.testing.assert_array_equal(hold.to_arrays()["input"], x[90:])
    del s, cal, hold
    gc.collect()
    assert not os.path.exists(spill)


def test_a_generator_is_read_only_up_to_the_limit():
    pulled = []

    def gen():
        for i in range(1000):
            pulled.append(i)
            yield {"input": good(4)}

    s = CalibrationSet.from_source(gen(), tiny_models.cnn(), limit=10)
    assert s.count == 10 and len(pulled) == 3
