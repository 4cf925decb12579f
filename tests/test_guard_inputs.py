"""Issue 10, classes 1-2: no verb writes over an input of its run, and generated names stay inside -o."""

import json
import os

import numpy as np
import pytest

import tiny_models
from clitools import refused, run_cli
from onnxq._fs import check_output, child
from onnxq.errors import InputError

P = ["--profile", "cpu-x86-vnni"]


@pytest.fixture
def case(tmp_path, capsys):
    m = tmp_path / "cnn.onnx"
    tiny_models.cnn(m)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **tiny_models.cnn_data(96))
    ev = tmp_path / "eval.npz"
    np.savez(ev, **tiny_models.cnn_data(32), labels=np.arange(32) % 10)
    q = tmp_path / "cnn.int8.onnx"
    assert run_cli(capsys, "quantize", m, "--calib", calib, *P, "-q", "-o", q)[0] == 0
    bench = tmp_path / "bench.json"
    assert run_cli(capsys, "bench", m, "--runs", "2", "--warmup", "0", "-q", "-o", bench, *P)[0] == 0
    return tmp_path, m, calib, ev, q, bench


def test_every_verb_refuses_an_output_that_is_one_of_its_inputs(case, capsys):
    d, m, calib, ev, q, bench = case
    never = "is an input of this run"
    refused(capsys, ["quantize", m, "--calib", calib, *P, "-q", "-o", calib], never, d)
    refused(capsys, ["quantize", m, "--calib", calib, *P, "-q", "-o", m], never, d)
    refused(capsys, ["eval", q, "--data", ev, "--ref", m, *P, "-q", "-o", ev], never, d)
    refused(capsys, ["eval", q, "--data", ev, "--ref", m, *P, "-q", "-o", m], never, d)
    refused(capsys, ["eval", q, "--data", ev, *P, "-q", "-o", q], never, d)
    refused(capsys, ["bench", m, q, "--runs", "2", *P, "-q", "-o", q], never, d)
    refused(capsys, ["bench", m, "--data", ev, "--runs", "2", *P, "-q", "-o", ev], never, d)
    refused(capsys, ["report", bench, "-o", bench], never, d)


def test_symlinks_and_hard_links_to_an_input_are_the_input(case, capsys):
    d, m, calib, *_ = case
    os.symlink(m, d / "link.onnx")
    os.link(calib, d / "hard.npz")
    refused(capsys, ["quantize", m, "--calib", calib, *P, "-q", "-o", d / "link.onnx"], "is an input of this run", d)
    refused(capsys, ["quantize", m, "--calib", calib, *P, "-q", "-o", d / "hard.npz"], "is an input of this run", d)


def test_quantize_output_over_a_calibration_shard_or_external_data_is_refused(tmp_path, capsys):
    import onnx

    m = tmp_path / "ext.onnx"
    onnx.save_model(tiny_models.cnn(), str(m), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "a.npy", tiny_models.cnn_data(40)["input"])
    refused(capsys, ["quantize", m, "--calib", shards, *P, "-q", "-o", shards / "a.npy"], "is an input of this run", tmp_path)
    refused(capsys, ["quantize", m, "--calib", shards, *P, "-q", "-o", tmp_path / "ext.onnx.data"], "is an input of this run",
            tmp_path)


def test_export_refuses_writing_over_its_factory_file_or_checkpoint(tmp_path, capsys):
    pytest.importorskip("torch")
    src = tmp_path / "net.py"
    src.write_text("import torch\n\ndef make():\n    return torch.nn.Linear(4, 2)\n")
    ck = tmp_path / "net.pt"
    import torch

    torch.save(torch.nn.Linear(4, 2).state_dict(), ck)
    refused(capsys, ["export", f"{src}:make", "--input-shape", "1x4", "-o", src], "is an input of this run", tmp_path)
    refused(capsys, ["export", f"{src}:make", "--input-shape", "1x4", "--checkpoint", ck, "-o", ck], "is an input of this run",
            tmp_path)


def test_report_refuses_a_plot_path_that_is_an_input(case, capsys):
    d, *_rest, bench = case
    # a report -o x.md writes x.pareto.png beside it; that file may not be one of the inputs either
    (d / "x.pareto.png").write_text(json.dumps(json.loads(bench.read_text())))
    refused(capsys, ["report", bench, d / "x.pareto.png", "-o", d / "x.md"], "is an input of this run", d)


def test_generated_names_stay_inside_the_output_folder(tmp_path):
    assert child(tmp_path, "cpu-x86-vnni") == tmp_path / "cpu-x86-vnni"
    for bad in ("../../escaped", "/abs/path", "a/b", "..", ".", ""):
        with pytest.raises(InputError):
            child(tmp_path, bad)


def test_a_profile_named_like_a_path_is_refused_before_compare_writes(tmp_path, capsys):
    from onnxq.profiles import _profile_dir

    text = (_profile_dir() / "cpu-x86-vnni.toml").read_text().replace('name = "cpu-x86-vnni"', 'name = "../../escaped"')
    prof = tmp_path / "evil.toml"
    prof.write_text(text)
    m = tmp_path / "m.onnx"
    tiny_models.cnn(m)
    np.savez(tmp_path / "c.npz", **tiny_models.cnn_data(48))
    refused(capsys, ["compare", m, "--calib", tmp_path / "c.npz", "--eval", tmp_path / "c.npz", "--profile", prof, "-q",
                     "-o", tmp_path / "out"], "key name = '../../escaped' is invalid", tmp_path)
    assert not (tmp_path.parent / "escaped").exists()


def test_check_output_refuses_directories_and_paths_under_files(tmp_path):
    (tmp_path / "d.onnx").mkdir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a directory"):
        check_output(tmp_path / "d.onnx")
    with pytest.raises(InputError, match="is a file, not a directory"):
        check_output(tmp_path / "f" / "out.onnx")
