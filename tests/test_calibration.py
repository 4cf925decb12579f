import subprocess
import sys

import numpy as np
import pytest

import tiny_models
from onnxq.calibration import CalibrationSet, _Collector, _entropy_threshold, collect_ranges
from onnxq.errors import InputError


def test_histogram_growth_merges_bins_exactly():
    rng = np.random.default_rng(0)
    data = rng.normal(0, 1, 100_000).astype(np.float32)
    data[-1] = 50.0  # forces range doubling late
    c = _Collector("percentile", 2048)
    for chunk in np.array_split(data, 37):
        c.add("t", chunk)
    st = c.stats["t"]
    assert st.pos.total + st.neg.total == data.size and st.count == data.size
    assert st.pos.top >= 50.0 and st.lo == pytest.approx(data.min()) and st.hi == 50.0
    # percentile from the streamed histogram matches numpy's to within one (merged) bin
    from onnxq.calibration import _percentile_threshold

    t = _percentile_threshold(st.pos.counts, st.pos.top, 99.0, st.count)
    # the positive tail above t holds ~1% of all values: numpy's 99th percentile of the data
    assert abs(t - np.percentile(data, 99.0)) <= 2 * st.pos.top / 2048


def test_entropy_threshold_clips_gaussian_tail_but_not_uniform():
    rng = np.random.default_rng(1)
    g = np.abs(rng.normal(0, 1, 200_000))
    g[0] = 20.0
    hist, _ = np.histogram(g, bins=2048, range=(0, 20.0))
    t = _entropy_threshold(hist, 20.0, 128)
    assert 2.0 < t < 8.0  # clipped far below the outlier, above ~2 sigma
    u = rng.uniform(0, 1, 200_000)
    hist, _ = np.histogram(u, bins=2048, range=(0, 1.0))
    assert _entropy_threshold(hist, 1.0, 128) > 0.9  # nothing to clip


def test_calibration_sources_npz_npy_directory_and_iterable(tmp_path):
    model = tiny_models.cnn()
    data = tiny_models.cnn_data(10)["input"]
    np.savez(tmp_path / "a.npz", input=data[:4])
    np.save(tmp_path / "b.npy", data[4:])
    assert CalibrationSet.from_source(tmp_path, model).count == 10
    assert CalibrationSet.from_source(tmp_path / "b.npy", model).count == 6
    single = [{"input": x} for x in data]  # samples without batch axis
    s = CalibrationSet.from_source(iter(single), model)
    assert s.count == 10 and s.to_arrays()["input"].shape == (10, 1, 8, 8)
    assert CalibrationSet.from_source(single, model, limit=3).count == 3
    f64 = CalibrationSet.from_source({"input": data.astype(np.float64)}, model)
    assert f64.to_arrays()["input"].dtype == np.float32 and any("cast float64" in n for n in f64.notes)


def test_npy_for_multi_input_model_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 16), np.float32))
    with pytest.raises(InputError, match="single-input model"):
        CalibrationSet.from_source(tmp_path / "x.npy", tiny_models.attention())


def test_fixed_batch_model_gets_full_batches_only(tmp_path):
    model = tiny_models.cnn(batch=4)
    s = CalibrationSet.from_source({"input": tiny_models.cnn_data(10)["input"]}, model)
    assert [len(b["input"]) for b in s.batches()] == [4, 4]


def test_collect_ranges_short_last_batch_all_methods():
    model = tiny_models.cnn()
    import onnx

    model = onnx.shape_inference.infer_shapes(model)
    s = CalibrationSet.from_source({"input": tiny_models.cnn_data(37)["input"]}, model)
    for method in ("minmax", "entropy", "percentile"):
        rep = collect_ranges(model, s, method=method, percentile=99.99, op_types=(), progress=False)
        assert rep.samples == 37 and {"input", "c1", "r1", "logits"} <= set(rep.ranges)
        lo, hi = rep.ranges["r1"]
        assert lo == 0.0 and hi > 0  # relu output


def test_calibration_memory_does_not_grow_with_samples(tmp_path):
    """Peak RSS of a calibration run with 16x more samples grows far less than 16x (streaming)."""
    script = tmp_path / "rss.py"
    script.write_text(
        "import sys, numpy as np, onnx\n"
        f"sys.path.insert(0, {str(tmp_path.parent)!r})\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "import tiny_models\n"
        "from onnxq.calibration import CalibrationSet, collect_ranges\n"
        "n = int(sys.argv[1])\n"
        "m = onnx.shape_inference.infer_shapes(tiny_models.cnn())\n"
        "s = CalibrationSet.random(m, n)\n"
        "base = [l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]\n"
        "collect_ranges(m, s, method='entropy', percentile=99.99, op_types=(), progress=False)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(int(hwm) - int(base))\n"
    )
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    small, big = (int(subprocess.run([sys.executable, str(script), str(n), tests_dir], capture_output=True, text=True,
                                     check=True).stdout) for n in (256, 4096))
    # data itself is 4096*64*4 B = 1 MB; onnxruntime's histogram calibrator would keep ~17 MB of activations
    assert big - small < 8 * 1024, (small, big)
