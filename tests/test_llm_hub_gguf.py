"""A Hub profile's LLM on the CPU through llama.cpp: its CPU GGUF (``llm_cpu_gguf``, ``"REPO:FILE"``) resolved from
the Hugging Face cache (here a fake one holding tiny random Qwen2 GGUFs, offline), loaded, reported by name; the
fallback to transformers under ``auto`` and the error under ``llama.cpp``; split models; the Hub checks."""

import huggingface_hub
import pytest

from fake_hub import add_hub_file, fake_hub_cache
from llm import LLMError, TransformersChatLLM
from llm.hub_gguf import HubGGUF
from llm.llamacpp_backend import LlamaCppChatLLM
from llm.runtime import choose_runtime, load_local_llm
from tiny_gguf import write_tiny_gguf
from tiny_models import build_tiny_chat_lm, single_thread_fixture
from vqa_llm.cpu_gguf import cpu_gguf_runs
from vqa_llm.errors import ModelUnavailableError
from vqa_llm.hub_access import check_profile_hub, gguf_cached
from vqa_llm.loading import chosen_llm_runtime, load_chat_llm
from vqa_llm.profiles import BASE, resolve_profile

one_thread = single_thread_fixture()

CHAT = [{"role": "user", "content": "the colour of the thing?"}]
BASE_GGUF = HubGGUF.parse(BASE.llm_cpu_gguf)
SPLIT_REPO = "Org/Tiny-Instruct-GGUF"


def _unreachable(environ):
    return False, "test: no answer"


@pytest.fixture(scope="module")
def qwen_gguf(tmp_path_factory):
    """A tiny random Qwen2 GGUF (F32 matrices: the same replies whichever file layout holds them)."""
    return write_tiny_gguf(tmp_path_factory.mktemp("qwen") / "tiny.gguf", seed=3, scale=0.5, quantized=False,
                           architecture="qwen2")


@pytest.fixture(scope="module")
def qwen_parts(tmp_path_factory):
    """The same model as ``qwen_gguf`` in two parts (tiny-00001-of-00002.gguf, tiny-00002-of-00002.gguf)."""
    first = write_tiny_gguf(tmp_path_factory.mktemp("split") / "tiny.gguf", seed=3, scale=0.5, quantized=False,
                            architecture="qwen2", split_max_tensors=13)
    parts = sorted(first.parent.glob("tiny-*-of-*.gguf"))
    assert [p.name for p in parts] == ["tiny-00001-of-00002.gguf", "tiny-00002-of-00002.gguf"]
    return parts


@pytest.fixture(scope="module")
def expected_reply(qwen_gguf):
    return LlamaCppChatLLM.from_gguf(qwen_gguf, n_threads=1).generate(CHAT, max_new_tokens=12)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty offline Hub cache that both huggingface_hub (read at import) and the profiles' checks use."""
    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    return root


def _environ(root) -> dict[str, str]:
    return {"HF_HUB_CACHE": str(root), "HF_HUB_OFFLINE": "1"}


def test_hub_gguf_names_parse_and_list_every_part_of_a_split_model():
    single = HubGGUF.parse(" Qwen/Qwen2.5-1.5B-Instruct-GGUF:qwen2.5-1.5b-instruct-q4_k_m.gguf ")
    assert single.parts == ("qwen2.5-1.5b-instruct-q4_k_m.gguf",)
    assert single.model_id == "Qwen/Qwen2.5-1.5B-Instruct-GGUF/qwen2.5-1.5b-instruct-q4_k_m.gguf"
    split = HubGGUF.parse("Qwen/Qwen2.5-7B-Instruct-GGUF:qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf")
    assert split.parts == ("qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf",
                           "qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf")
    assert split.model_id == "Qwen/Qwen2.5-7B-Instruct-GGUF/qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf"
    assert HubGGUF.parse("o/r:q4/m-00001-of-00003.gguf").parts[2] == "q4/m-00003-of-00003.gguf"
    for bad in ("Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen.gguf", "a/b/c:x.gguf", "o/r:x.bin", "o/r:../x.gguf", ""):
        with pytest.raises(LLMError, match="write REPO:FILE, e.g. Qwen/"):
            HubGGUF.parse(bad)


def test_auto_picks_llamacpp_for_a_cpu_gguf_on_the_cpu_only():
    spec = BASE.llm_cpu_gguf
    assert choose_runtime("auto", BASE.llm, cpu_gguf=spec) == ("llama.cpp", f"auto: the LLM's CPU GGUF {spec} on "
                                                                            "the CPU")
    # 4-bit is bitsandbytes on CUDA: on the CPU the GGUF is that model quantised, so it still runs
    assert choose_runtime("auto", BASE.llm, quantization="4bit", cpu_gguf=spec)[0] == "llama.cpp"
    assert choose_runtime("auto", BASE.llm, device="cuda:0", quantization="4bit", cpu_gguf=spec)[0] == "transformers"
    assert choose_runtime("transformers", BASE.llm, cpu_gguf=spec) == ("transformers", "requested")
    assert choose_runtime("auto", BASE.llm) == ("transformers", "auto: the LLM is not a local GGUF file")
    with pytest.raises(LLMError, match="the device is cuda"):
        choose_runtime("llama.cpp", BASE.llm, device="cuda", cpu_gguf=spec)


def test_the_base_profile_runs_its_cached_gguf_with_llamacpp_and_names_it(hub_cache, qwen_gguf, expected_reply,
                                                                            caplog):
    add_hub_file(hub_cache, BASE_GGUF.repo, BASE_GGUF.filename, qwen_gguf)
    profile, _ = resolve_profile("base", {"device": "cpu"}, _environ(hub_cache))
    assert profile.local_files_only and cpu_gguf_runs(profile) and chosen_llm_runtime(profile) == "llama.cpp"
    with caplog.at_level("INFO", logger="llm.runtime"):
        llm = load_chat_llm(profile, "cpu")
    assert isinstance(llm, LlamaCppChatLLM) and llm.llama.metadata["general.architecture"] == "qwen2"
    assert llm.model_id == BASE_GGUF.model_id == profile.cpu_gguf_llm_id  # what the app and the evaluator record
    assert f"llama.cpp (auto: the LLM's CPU GGUF {BASE.llm_cpu_gguf} on the CPU): {BASE_GGUF.model_id}" in caplog.text
    assert llm.generate(CHAT, max_new_tokens=12) == expected_reply  # the cached file is what ran
    assert "".join(llm.stream(CHAT, max_new_tokens=12)) == expected_reply
    # --device auto resolves as the loaders resolve it: the CPU here (no CUDA in the tests)
    assert cpu_gguf_runs(resolve_profile("base", {"device": "auto"}, _environ(hub_cache))[0])
    # on a GPU, or with transformers asked for, the GGUF is not what runs
    assert not cpu_gguf_runs(resolve_profile("base", {"device": "cuda"}, _environ(hub_cache))[0])
    assert not cpu_gguf_runs(resolve_profile("base", {"device": "cpu", "llm_runtime": "transformers"},
                                             _environ(hub_cache))[0])


def test_without_the_gguf_auto_falls_back_to_transformers_and_llamacpp_says_why(hub_cache, tmp_path, caplog):
    folder = build_tiny_chat_lm(tmp_path / "chat")
    profile, _ = resolve_profile("base", {"llm": folder, "llm_cpu_gguf": BASE.llm_cpu_gguf, "device": "cpu"},
                                 _environ(hub_cache))
    assert profile.llm_cpu_gguf == BASE.llm_cpu_gguf and cpu_gguf_runs(profile)
    assert chosen_llm_runtime(profile) == "transformers"  # offline and not cached: the evaluator records that
    with caplog.at_level("WARNING", logger="llm.runtime"):
        llm = load_chat_llm(profile, "cpu")
    assert isinstance(llm, TransformersChatLLM) and llm.model_id == folder  # the original LLM
    assert "llama.cpp could not load the LLM" in caplog.text and BASE_GGUF.filename in caplog.text
    with pytest.raises(LLMError, match=f"Could not get {BASE_GGUF.filename} from the Hub repo {BASE_GGUF.repo}: "
                                       "it is not in the local Hugging Face cache"):
        load_local_llm(folder, runtime="llama.cpp", cpu_gguf=BASE.llm_cpu_gguf, local_files_only=True)
    explicit, _ = resolve_profile("base", {"llm_runtime": "llama.cpp", "device": "cpu"}, _environ(hub_cache))
    with pytest.raises(ModelUnavailableError, match="(?s)Could not get .*--no-llm"):
        load_chat_llm(explicit, "cpu")


def test_a_split_gguf_is_fetched_whole_into_one_folder_and_loaded_from_its_first_part(hub_cache, qwen_parts,
                                                                                        expected_reply):
    spec = f"{SPLIT_REPO}:tiny-00002-of-00002.gguf"  # naming any part fetches them all
    add_hub_file(hub_cache, SPLIT_REPO, qwen_parts[0].name, qwen_parts[0])
    assert not gguf_cached(spec, _environ(hub_cache))
    with pytest.raises(LLMError, match="Could not get tiny-00002-of-00002.gguf"):
        load_local_llm("Org/Tiny-Instruct", runtime="llama.cpp", cpu_gguf=spec, local_files_only=True)
    add_hub_file(hub_cache, SPLIT_REPO, qwen_parts[1].name, qwen_parts[1])
    assert gguf_cached(spec, _environ(hub_cache))
    llm = load_local_llm("Org/Tiny-Instruct", runtime="auto", cpu_gguf=spec, local_files_only=True)
    assert isinstance(llm, LlamaCppChatLLM) and llm.model_id == f"{SPLIT_REPO}/tiny-00001-of-00002.gguf"
    assert llm.generate(CHAT, max_new_tokens=12) == expected_reply  # both parts' weights were read


def test_parts_in_different_snapshot_folders_are_refused(tmp_path, monkeypatch):
    def download(repo, filename, local_files_only=False):
        return str(tmp_path / ("a" if "00001" in filename else "b") / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(LLMError, match="different snapshot folders.*download it again"):
        HubGGUF.parse("o/r:m-00001-of-00002.gguf").fetch()


def test_auto_counts_the_base_llm_as_cached_by_its_transformers_model_or_on_a_cpu_its_gguf(tmp_path, qwen_gguf):
    cache = fake_hub_cache(tmp_path / "hub", [BASE.vqa_model, BASE.captioner])
    env = _environ(cache)
    profile, reason = resolve_profile("auto", {}, env, cuda_available=False)
    assert profile.name == "bundled" and BASE.llm in reason
    add_hub_file(cache, BASE_GGUF.repo, BASE_GGUF.filename, qwen_gguf)
    assert resolve_profile("auto", {}, env, cuda_available=False)[0].name == "base"
    assert resolve_profile("auto", {}, env, cuda_available=True)[0].name == "bundled"  # a GPU runs transformers


def test_the_hub_check_accepts_the_cached_gguf_or_the_cached_llm(tmp_path, qwen_gguf):
    cache = fake_hub_cache(tmp_path / "hub", [BASE.vqa_model, BASE.captioner])
    env = {"HF_HUB_CACHE": str(cache)}  # online, but the Hub does not answer
    with pytest.raises(ModelUnavailableError, match=f"not in the local cache: {BASE.llm}\\."):
        check_profile_hub(BASE, environ=env, probe=_unreachable, cpu_gguf=True)
    llamacpp = resolve_profile("base", {"llm_runtime": "llama.cpp"}, env)[0]
    with pytest.raises(ModelUnavailableError, match=f"not in the local cache: {BASE_GGUF.repo}\\."):
        check_profile_hub(llamacpp, environ=env, probe=_unreachable, cpu_gguf=True)
    add_hub_file(cache, BASE_GGUF.repo, BASE_GGUF.filename, qwen_gguf)
    profile, note = check_profile_hub(BASE, environ=env, probe=_unreachable, cpu_gguf=True)
    assert profile.local_files_only and BASE_GGUF.repo in note
    with pytest.raises(ModelUnavailableError, match=BASE.llm):  # on a GPU the transformers model is needed
        check_profile_hub(BASE, environ=env, probe=_unreachable, cpu_gguf=False)
    fake_hub_cache(cache, [BASE.llm])
    assert check_profile_hub(BASE, environ=env, probe=_unreachable, cpu_gguf=False)[0].local_files_only
