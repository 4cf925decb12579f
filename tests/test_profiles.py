import pytest

from onnxq.errors import InputError, ProfileError
from onnxq.plan import make_plan, resolve_op_types
from onnxq.profiles import auto_profile, list_profiles, load_profile

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
    assert p.quant.per_channel and p.quant.extra_options["AddQDQPairToWeight"] is True
    with pytest.raises(InputError, match="does not allow mode 'dynamic'"):
        make_plan(p, "dynamic")


def test_avx2_profile_reduces_range_and_cuda_defaults_to_fp16():
    assert load_profile("cpu-x86-avx2").quant.reduce_range is True
    assert load_profile("cpu-x86-vnni").quant.reduce_range is False
    assert make_plan(load_profile("cuda")).mode == "fp16"


def test_overrides_win_over_profile_defaults():
    p = load_profile("cpu-x86-vnni")
    plan = make_plan(p, "static", method="entropy", per_channel=False, op_types=["Conv"], calibration_samples=7)
    assert (plan.method, plan.per_channel, plan.op_types, plan.calibration_samples) == ("entropy", False, ("Conv",), 7)
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
        (('schema_version = 1', 'schema_version = 9'), r"schema_version = 9 is invalid; allowed: 1"),
        (('calibration_method = "percentile"', 'calibration_method = "kl"'), r"calibration_method = 'kl' is invalid; allowed: minmax, entropy, percentile"),
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
    ops, why = resolve_op_types(make_plan(p, "static"), {"MatMul", "Softmax", "Add"})
    assert ops == ("MatMul", "Gemm") and "transformer" in why
    ops, _ = resolve_op_types(make_plan(p, "static"), {"Conv", "Relu"})
    assert ops == ()
    ops, _ = resolve_op_types(make_plan(p, "dynamic"), {"Conv", "MatMul"})
    assert set(ops) == {"Conv", "MatMul"}
