"""Issue 10, class 9: typos in profiles and arguments are refused, naming what was typed and what exists.
(Every profile table's keys are covered key by key in test_profiles.py; here, through the CLI.)"""

import numpy as np
import pytest

import tiny_models
from clitools import refused
from onnxq.profiles import load_profile


@pytest.fixture
def d(tmp_path):
    tiny_models.cnn(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **tiny_models.cnn_data(48))
    return tmp_path


def _profile(d, old, new):
    src = open(load_profile("cpu-x86-vnni").source).read()
    assert old in src
    p = d / "mine.toml"
    p.write_text(src.replace(old, new, 1).replace('name = "cpu-x86-vnni"', 'name = "mine"'))
    return p


@pytest.mark.parametrize("old, new, match", [
    ("per_channel = true", "per_channel = true\nper_chanel = false", "did you mean 'per_channel'"),
    ("intra_op_threads = 0", "intra_op_threads = 0\nthreds = 2", "unknown key runtime.threds"),
    ('modes = ["static", "dynamic", "fp16"]', "modes = []", "a non-empty list"),
    ("[runtime]", "[runtime.provider_options.CPUExecutionProvider]\narena = 1\n[runtime]", "provider_options.CPUExecutionProvider.arena"),
    ("float_outputs = ", "float_output = ", "did you mean 'float_outputs'"),
    ("[quantization.layout]", "[quantization.layout]\nextra = 3", "unknown key quantization.layout.extra"),
])
def test_profile_typos_through_every_verb_that_reads_one(d, capsys, old, new, match):
    prof = _profile(d, old, new)
    with_profile = ["--profile", prof, "-q"]
    for argv in (["quantize", d / "m.onnx", "--calib", d / "calib.npz", "-o", d / "q.onnx", *with_profile],
                 ["check", d / "m.onnx", *with_profile], ["bench", d / "m.onnx", "--runs", "2", *with_profile],
                 ["profiles", "show", prof]):
        line = refused(capsys, argv, match, d)
        assert str(prof) in line


@pytest.mark.parametrize("flag, value, match", [
    ("--op-types", "Bogus", "--op-types Bogus: onnxruntime cannot quantize that op type"),
    ("--op-types", "Conv,Bogus", "--op-types Bogus"),
    ("--exclude-nodes", "no_such_node", "--exclude-nodes no_such_node: no node of that name"),
    ("--calib-samples", "0", "--calib-samples"),
    ("--percentile", "120", "percentile"),
])
def test_argument_typos_match_nothing_loudly(d, capsys, flag, value, match):
    refused(capsys, ["quantize", d / "m.onnx", "--calib", d / "calib.npz", "--profile", "cpu-x86-vnni", flag, value, "-q",
                     "-o", d / "q.onnx"], match, d)


def test_unknown_flags_and_choices_are_one_line(d, capsys):
    refused(capsys, ["quantize", d / "m.onnx", "--methd", "minmax"], "unrecognized arguments: --methd", d)
    refused(capsys, ["quantize", d / "m.onnx", "--method", "kl"], "invalid choice: 'kl'", d)
