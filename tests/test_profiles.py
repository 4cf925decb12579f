import pytest

from onnxq.errors import InputError, ProfileError
from onnxq.plan import GraphFacts, Overrides, QuantizerCaps, resolve
from onnxq.profiles import auto_profile, list_profiles, load_profile

FACTS = GraphFacts(op_types=frozenset({"Conv", "Relu", "Gemm"}), opset=17, node_names=frozenset({"conv1", "fc"}))
CAPS = QuantizerCaps(static_ops=frozenset({"Conv", "Relu", "Gemm", "MatMul"}), dynamic_ops=frozenset({"Conv", "MatMul"}))


def make_plan(profile, mode=None, **kw):
    return resolve(profile, FACTS, CAPS, Overrides(mode=mode, **kw))

NAMES = ["cpu-arm64", "cpu-x86-avx2", "cpu-x86-vnni", "cuda", "tensorrt"]


def test_every_shipped_profile_loads_and_plans_each_allowed_mode():
    profiles = list_profiles()
    assert [p.name for p in profiles] == NAMES
    for p in profiles:
        assert len(p.sha256) == 64
        for mode in p.quant.modes:
            plan = make_plan(p, mode)
            assert plan.mode == mode and plan.profile == p.name
            assert plan.opset >= 13  # per-channel QDQ needs 13


def test_tensorrt_profile_is_symmetric_int8_with_weight_pairs():
    p = load_profile("tensorrt")
    assert (p.quant.activation_type, p.quant.activation_symmetric) == ("int8", True)
    assert p.quant.per_channel and not p.quant.layout.weight_qdq_pair and p.quant.layout.dedicated_qdq_pair
    with pytest.raises(InputError, match="does not allow mode 'dynamic'"):
        make_plan(p, "dynamic")


def test_avx2_profile_reduces_range_and_cuda_defaults_to_fp16():
    assert load_profile("cpu-x86-avx2").quant.reduce_range is True
    assert load_profile("cpu-x86-vnni").quant.reduce_range is False
    assert make_plan(load_profile("cuda")).mode == "fp16"


def test_overrides_win_over_profile_defaults():
    p = load_profile("cpu-x86-vnni")
    plan = make_plan(p, "static", method="entropy", per_channel=False, op_types=("Conv",), calibration_samples=7)
    assert (plan.calibration.method, plan.per_channel, plan.op_types, plan.calibration.samples) == ("entropy", False, ("Conv",), 7)
    assert p.quant.per_channel is True  # the profile is not mutated


def test_unknown_profile_names_the_choices():
    with pytest.raises(ProfileError, match="unknown profile 'gpu9000'.*cpu-x86-vnni"):
        load_profile("gpu9000")


@pytest.mark.parametrize(
    "patch, match",
    [
        (('activation_type = "uint8"', 'activation_type = "uint7"'), r"quantization\.activation_type = 'uint7' is invalid; allowed: uint8, int8"),
        (('per_channel = true', 'per_channel = "yes"'), r"quantization\.per_channel = 'yes' is invalid; allowed: bool"),
        (('opset = 17', 'opset = 11'), r"per_channel = true needs export\.opset >= 13"),
        (('providers = ["CPUExecutionProvider"]', 'providers = ["FooExecutionProvider"]'), r"runtime\.providers = 'FooExecutionProvider' is invalid"),
        (('schema_version = 2', 'schema_version = 9'), r"schema_version = 9 is invalid; allowed: 2"),
        (('schema_version = 2', 'schema_version = 1'), r"schema_version 1 profiles .* are no longer read.*\[quantization\.layout\]"),
        (('cpu_flags_any = ', 'cpu_flag_any = '), r"unknown key match\.cpu_flag_any \(did you mean 'cpu_flags_any'\?\); allowed keys: arch, "),
        (('per_channel = true', 'per_channel = true\nper_chanel = false'), r"unknown key quantization\.per_chanel \(did you mean 'per_channel'\?\)"),
        (('intra_op_threads = 0', 'intra_op_threads = 0\nthreads = 2'), r"unknown key runtime\.threads"),
        (('float_outputs = ', 'float_output = '), r"unknown key quantization\.layout\.float_output \(did you mean 'float_outputs'\?\)"),
        (('modes = ["static", "dynamic", "fp16"]', 'modes = []'), r"quantization\.modes = \[\] is invalid; allowed: a non-empty list"),
        (('name = "cpu-x86-vnni"', 'name = "../../escaped"'), r"key name = '\.\./\.\./escaped' is invalid; allowed: 1-64 letters"),
        (('[quantization.layout]', '[quantization.layout.extra]'), r"quantization\.layout\.extra = \{\} is invalid|unknown key quantization\.layout\.extra"),
        (('[runtime]', '[runtime.provider_options.CPUExecutionProvider]\narena = 1\n[runtime]'), r"unknown key runtime\.provider_options\.CPUExecutionProvider\.arena"),
        (('calibration_method = "mean_minmax"', 'calibration_method = "kl"'), r"calibration_method = 'kl' is invalid; allowed: minmax, entropy, percentile, mean_minmax, mean_percentile"),
    ],
)
def test_invalid_user_profile_names_file_key_value_and_allowed(tmp_path, patch, match):
    text = load_profile("cpu-x86-vnni").source
    src = open(text).read()
    assert patch[0] in src
    bad = tmp_path / "mine.toml"
    bad.write_text(src.replace(patch[0], patch[1], 1))
    with pytest.raises(ProfileError, match=match) as e:
        load_profile(str(bad))
    assert str(bad) in str(e.value)


def test_user_profile_file_loads_by_path(tmp_path):
    src = open(load_profile("cpu-x86-vnni").source).read().replace('name = "cpu-x86-vnni"', 'name = "my-box"')
    f = tmp_path / "my-box.toml"
    f.write_text(src)
    assert load_profile(str(f)).name == "my-box"


def test_auto_profile_picks_by_cpu_flags_and_providers():
    vnni_host = {"arch": "x86_64", "all_flags": ["avx2", "avx512_vnni"], "cpu_model": "x"}
    avx2_host = {"arch": "x86_64", "all_flags": ["avx2"], "cpu_model": "x"}
    arm_host = {"arch": "aarch64", "all_flags": ["asimddp"], "cpu_model": "x"}
    cpu = ["CPUExecutionProvider"]
    assert auto_profile(cpu, vnni_host)[0].name == "cpu-x86-vnni"
    assert auto_profile(cpu, avx2_host)[0].name == "cpu-x86-avx2"
    assert auto_profile(cpu, arm_host)[0].name == "cpu-arm64"
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert auto_profile(gpu, vnni_host)[0].name == "tensorrt"
    assert auto_profile(["CUDAExecutionProvider", "CPUExecutionProvider"], vnni_host)[0].name == "cuda"
    with pytest.raises(ProfileError, match="found no profile"):
        auto_profile(cpu, {"arch": "riscv64", "all_flags": [], "cpu_model": "x"})


def test_auto_op_types_restrict_transformers_to_matmul():
    p = load_profile("cpu-x86-vnni")
    transformer = GraphFacts(op_types=frozenset({"MatMul", "Softmax", "Add"}), opset=17)
    r = resolve(p, transformer, CAPS, Overrides(mode="static"))
    assert r.op_types == ("MatMul", "Gemm", "Gather") and "transformer" in r.op_types_reason
    r = make_plan(p, "static")  # a CNN: every op type onnxruntime can quantize
    assert r.op_types == tuple(sorted(CAPS.static_ops)) and "every op type" in r.op_types_reason


def test_shipped_profile_must_be_named_after_its_file(tmp_path, monkeypatch):
    import onnxq.profiles as prof

    src = open(load_profile("cpu-x86-vnni").source).read().replace('name = "cpu-x86-vnni"', 'name = "other"')
    (tmp_path / "cpu-x86-vnni.toml").write_text(src)
    monkeypatch.setattr(prof, "_profile_dir", lambda: tmp_path)
    with pytest.raises(ProfileError, match=r"key name = 'other' is invalid; allowed: 'cpu-x86-vnni'"):
        load_profile("cpu-x86-vnni")


def test_misspelt_match_key_no_longer_lets_vnni_win_auto_on_an_avx2_host(tmp_path):
    """Before: `cpu_flag_any` loaded silently, the VNNI profile then matched every x86 host and won auto."""
    src = open(load_profile("cpu-x86-vnni").source).read().replace("cpu_flags_any", "cpu_flag_any")
    f = tmp_path / "typo.toml"
    f.write_text(src.replace('name = "cpu-x86-vnni"', 'name = "typo"'))
    with pytest.raises(ProfileError, match="cpu_flag_any"):
        load_profile(str(f))
