"""The llama.cpp runtime (``LlamaCppChatLLM``) against the transformers one on a tiny GGUF model written here, the
LoRA adapter conversion, the runtime choice (``--llm-runtime``, ``VQA_LLM_LLM_RUNTIME``) and the fallback."""

import json
import sys

import pytest
import torch

from llm import LLMError, LLMTimeoutError, PromptTooLongError, TransformersChatLLM, lora_gguf
from llm.llamacpp_backend import LlamaCppChatLLM
from llm.runtime import choose_runtime, load_local_llm, normalise_runtime
from tiny_gguf import write_tiny_gguf
from tiny_models import single_thread_fixture
from vqa_llm.errors import BadSettingError
from vqa_llm.loading import load_chat_llm
from vqa_llm.profiles import add_profile_arguments, overrides_from_args, resolve_profile

one_thread = single_thread_fixture()

CHATS = [
    [{"role": "system", "content": "You answer questions."}, {"role": "user", "content": "the colour?"}],
    [{"role": "user", "content": "then the shape is a circle"}],
    [{"role": "user", "content": "é ü ñ 0 1 2 — in the end"}],
]


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """F32 matrices: both runtimes then compute the same function up to float rounding (with Q4_1 weights
    llama.cpp also quantises the activations, and a random tiny model's near-tied logits flip)."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny_gguf") / "tiny.gguf", seed=3, scale=0.5, quantized=False)


@pytest.fixture(scope="module")
def reference(gguf_file) -> TransformersChatLLM:
    return TransformersChatLLM.from_pretrained(str(gguf_file), device="cpu")


@pytest.fixture(scope="module")
def fast(gguf_file) -> LlamaCppChatLLM:
    return LlamaCppChatLLM.from_gguf(gguf_file, n_threads=1)


@pytest.fixture(scope="module")
def adapter_dir(gguf_file, tmp_path_factory):
    """A random LoRA adapter (r=4 on every projection, B not zero) on the tiny model, saved by peft. Weights
    scaled by 0.5 in the model and 2 in the adapter keep the logits peaky (no near-ties that rounding flips)."""
    from peft import LoraConfig, get_peft_model

    base = TransformersChatLLM.from_pretrained(str(gguf_file), device="cpu").model
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.mul_(2.0)  # a delta large enough to change every greedy reply
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    return folder


def test_same_prompt_tokens_and_limits_as_transformers(reference, fast):
    for chat in CHATS:
        assert fast.prompt_text(chat) == reference.prompt_text(chat)
        ids = reference.tokenizer(reference.prompt_text(chat), add_special_tokens=False).input_ids
        assert fast.prompt_ids(chat) == ids and fast.count_tokens(chat) == reference.count_tokens(chat)
    assert set(reference.eos_token_ids) <= set(fast.eos_token_ids)
    assert fast.max_context == reference.max_context == 2048
    assert fast.prompt_limit(64) == reference.prompt_limit(64)


def test_greedy_replies_equal_transformers(reference, fast):
    replies = [fast.generate(chat, max_new_tokens=16) for chat in CHATS]
    assert replies == [reference.generate(chat, max_new_tokens=16) for chat in CHATS]
    assert len(set(replies)) > 1 and all(replies)


def test_stream_concatenates_to_generate_and_batch_to_singles(fast):
    chunks = list(fast.stream(CHATS[0], max_new_tokens=16))
    assert len(chunks) > 1 and all(isinstance(c, str) and c for c in chunks)
    assert "".join(chunks) == fast.generate(CHATS[0], max_new_tokens=16)
    singles = [fast.generate(chat, max_new_tokens=10) for chat in CHATS]
    assert fast.generate_batch(CHATS, max_new_tokens=10) == singles
    assert fast.generate_batch(CHATS, max_new_tokens=10, batch_size=2) == singles


def test_token_budget_timeout_too_long_and_abandoned_stream(fast, gguf_file):
    one = fast.generate(CHATS[1], max_new_tokens=1)
    assert len(fast.llama.tokenize(one.encode(), add_bos=False, special=False)) == 1
    with pytest.raises(LLMTimeoutError):
        fast.generate(CHATS[0], max_new_tokens=64, timeout=1e-9)
    with pytest.raises(LLMTimeoutError):
        fast.generate_batch(CHATS, max_new_tokens=64, timeout=1e-9)
    limited = LlamaCppChatLLM.from_gguf(gguf_file, n_threads=1, max_prompt_tokens=8)
    with pytest.raises(PromptTooLongError) as info:
        limited.stream(CHATS[0])  # raises when called, before any streaming
    assert info.value.limit == 8 and info.value.n_tokens > 8
    stream = fast.stream(CHATS[0], max_new_tokens=64)
    assert next(stream)
    stream.close()  # the consumer went away: the lock is released
    assert fast.generate(CHATS[0], max_new_tokens=4)


def test_sampling_runs(fast):
    assert isinstance(fast.generate(CHATS[0], max_new_tokens=8, temperature=0.9, top_p=0.8), str)


def test_lora_adapter_gives_the_merged_transformers_replies(gguf_file, adapter_dir, reference, fast, tmp_path,
                                                            monkeypatch):
    monkeypatch.setenv("VQA_LLM_CACHE", str(tmp_path / "cache"))
    merged = TransformersChatLLM.from_pretrained(str(gguf_file), device="cpu", adapter=adapter_dir)
    tuned = LlamaCppChatLLM.from_gguf(gguf_file, adapter=adapter_dir, n_threads=1, merge_adapter=False)
    replies = [tuned.generate(chat, max_new_tokens=16) for chat in CHATS]
    assert replies == [merged.generate(chat, max_new_tokens=16) for chat in CHATS]
    assert replies != [fast.generate(chat, max_new_tokens=16) for chat in CHATS]  # the adapter is applied
    assert tuned.model_id == merged.model_id == f"{gguf_file} + {adapter_dir.name}"
    files = list((tmp_path / "cache" / "lora-gguf").glob("*/adapter.gguf"))
    assert len(files) == 1  # converted once, cached
    LlamaCppChatLLM.from_gguf(gguf_file, adapter=adapter_dir, n_threads=1, merge_adapter=False)
    assert list((tmp_path / "cache" / "lora-gguf").glob("*/adapter.gguf")) == files


def test_the_adapter_folded_into_a_cached_copy_gives_the_same_replies(gguf_file, adapter_dir, reference, tmp_path,
                                                                      monkeypatch):
    """The default: the adapter merged into a copy of the weights (F32 here, so exact up to rounding) answers
    like transformers' merged model and like the adapter applied at run time; written once, per adapter."""
    monkeypatch.setenv("VQA_LLM_CACHE", str(tmp_path / "cache"))
    merged = TransformersChatLLM.from_pretrained(str(gguf_file), device="cpu", adapter=adapter_dir)
    folded = LlamaCppChatLLM.from_gguf(gguf_file, adapter=adapter_dir, n_threads=1)
    replies = [folded.generate(chat, max_new_tokens=16) for chat in CHATS]
    assert replies == [merged.generate(chat, max_new_tokens=16) for chat in CHATS]
    assert replies != [reference.generate(chat, max_new_tokens=16) for chat in CHATS]  # the adapter is in
    assert folded.model_id == f"{gguf_file} + {adapter_dir.name}" and folded.template_dir is None
    files = list((tmp_path / "cache" / "merged-gguf").glob("*/model.gguf"))
    assert len(files) == 1 and not (tmp_path / "cache" / "lora-gguf").exists()
    stamp = files[0].stat().st_mtime_ns
    LlamaCppChatLLM.from_gguf(gguf_file, adapter=adapter_dir, n_threads=1)
    assert files[0].stat().st_mtime_ns == stamp  # read from the cache, not written again


def test_a_quantised_base_is_merged_into_q8_0(adapter_dir, tmp_path, monkeypatch):
    """Q4_1 matrices (the bundled file's layout) come out as Q8_0 with the adapter in; the rest is copied."""
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    from llm import lora_merge

    base_file = write_tiny_gguf(tmp_path / "q41.gguf", seed=3, scale=0.5, quantized=True)
    shape = lora_gguf.BaseShape("llama", 4, 2)
    out = lora_merge.write_merged_gguf(base_file, adapter_dir, shape, tmp_path / "merged.gguf")
    before = {t.name: t for t in GGUFReader(str(base_file)).tensors}
    after = {t.name: t for t in GGUFReader(str(out)).tensors}
    assert before.keys() == after.keys()
    lora = lora_gguf.adapter_tensors(adapter_dir, shape)
    for name, tensor in after.items():
        if f"{name}.lora_a" in lora:
            assert tensor.tensor_type == GGMLQuantizationType.Q8_0
            expected = (dequantize(before[name].data, before[name].tensor_type)
                        + 2.0 * lora[f"{name}.lora_b"] @ lora[f"{name}.lora_a"])  # peft: alpha 8 / r 4
            got = dequantize(tensor.data, tensor.tensor_type)
            assert abs(got - expected).max() <= abs(expected).max() / 127  # one Q8_0 step at most
        else:
            assert tensor.tensor_type == before[name].tensor_type
            assert bytes(tensor.data) == bytes(before[name].data)
    monkeypatch.setenv("VQA_LLM_CACHE", "off")
    assert lora_merge.cached_merged_gguf(base_file, adapter_dir, shape) is None  # caching off: run-time LoRA


def test_a_retrained_adapter_gets_a_new_file_and_caching_off_leaves_nothing(gguf_file, adapter_dir, tmp_path,
                                                                             monkeypatch):
    import shutil

    from safetensors.torch import load_file, save_file

    shape = lora_gguf.BaseShape("llama", 4, 2)
    retrained = tmp_path / "retrained"
    shutil.copytree(adapter_dir, retrained)
    weights = load_file(str(retrained / "adapter_model.safetensors"))
    save_file({k: v * 0.5 for k, v in weights.items()}, str(retrained / "adapter_model.safetensors"))
    assert lora_gguf.adapter_key(adapter_dir, shape) != lora_gguf.adapter_key(retrained, shape)
    monkeypatch.setenv("VQA_LLM_CACHE", "off")
    monkeypatch.setattr(lora_gguf.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert LlamaCppChatLLM.from_gguf(gguf_file, adapter=retrained, n_threads=1).generate(CHATS[0], max_new_tokens=4)
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary adapter file is gone once loaded


def test_unsupported_adapter_falls_back_to_transformers_under_auto_only(gguf_file, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = TransformersChatLLM.from_pretrained(str(gguf_file), device="cpu").model
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM"))
    model.save_pretrained(tmp_path / "head")  # LoRA on the output head: peft loads it, the converter does not
    with pytest.raises(lora_gguf.UnsupportedAdapterError, match="lm_head"):
        LlamaCppChatLLM.from_gguf(gguf_file, adapter=tmp_path / "head")
    with pytest.raises(LLMError, match="lm_head"):
        load_local_llm(str(gguf_file), runtime="llama.cpp", adapter=tmp_path / "head")
    assert isinstance(load_local_llm(str(gguf_file), runtime="auto", adapter=tmp_path / "head"), TransformersChatLLM)
    config = json.loads((tmp_path / "head" / "adapter_config.json").read_text())
    with pytest.raises(lora_gguf.UnsupportedAdapterError, match="use_dora"):
        lora_gguf.check_config({**config, "use_dora": True})
    assert lora_gguf.check_config({**config, "r": 4, "lora_alpha": 8}) == 2.0
    assert lora_gguf.check_config({**config, "r": 4, "lora_alpha": 8, "use_rslora": True}) == 4.0


def test_runtime_choice():
    assert normalise_runtime(None) == "auto" and normalise_runtime("LlamaCpp") == "llama.cpp"
    with pytest.raises(LLMError, match="auto, transformers or llama.cpp"):
        normalise_runtime("vllm")


def test_auto_picks_llamacpp_for_a_local_gguf_on_the_cpu_only(gguf_file, tmp_path):
    assert choose_runtime("auto", str(gguf_file))[0] == "llama.cpp"
    assert choose_runtime("auto", str(gguf_file.parent), gguf_file.name)[0] == "llama.cpp"
    assert choose_runtime("auto", str(gguf_file), device="cuda:0")[0] == "transformers"
    assert choose_runtime("auto", str(gguf_file), quantization="4bit")[0] == "transformers"
    assert choose_runtime("auto", "Qwen/Qwen2.5-1.5B-Instruct") == (
        "transformers", "auto: the LLM is not a local GGUF file")
    assert choose_runtime("transformers", str(gguf_file)) == ("transformers", "requested")
    with pytest.raises(LLMError, match="not a local GGUF file.*--llm-runtime transformers"):
        choose_runtime("llama.cpp", str(tmp_path))
    assert isinstance(load_local_llm(str(gguf_file)), LlamaCppChatLLM)
    assert isinstance(load_local_llm(str(gguf_file), runtime="transformers"), TransformersChatLLM)


def test_without_llamacpp_auto_falls_back_and_llamacpp_says_how_to_install(gguf_file, monkeypatch, caplog):
    monkeypatch.setattr("llm.runtime.llamacpp_installed", lambda: False)
    assert choose_runtime("auto", str(gguf_file))[0] == "transformers"
    assert isinstance(load_local_llm(str(gguf_file)), TransformersChatLLM)
    with pytest.raises(LLMError, match="llama-cpp-python is not installed"):
        load_local_llm(str(gguf_file), runtime="llama.cpp")
    # installed but broken (its shared library does not load): auto still answers, through transformers
    monkeypatch.setattr("llm.runtime.llamacpp_installed", lambda: True)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with caplog.at_level("WARNING", logger="llm.runtime"):
        assert isinstance(load_local_llm(str(gguf_file)), TransformersChatLLM)
    assert "llama.cpp could not load the LLM" in caplog.text
    with pytest.raises(LLMError, match="llama-cpp-python is not installed"):
        load_local_llm(str(gguf_file), runtime="llama.cpp")


def test_profile_option_environment_and_cli(gguf_file, monkeypatch):
    import argparse

    assert resolve_profile("bundled", environ={})[0].llm_runtime == "auto"
    env = {"VQA_LLM_LLM_RUNTIME": "transformers"}
    assert resolve_profile("bundled", environ=env)[0].llm_runtime == "transformers"
    assert resolve_profile("bundled", {"llm_runtime": "llama.cpp"}, environ=env)[0].llm_runtime == "llama.cpp"
    with pytest.raises(BadSettingError, match="VQA_LLM_LLM_RUNTIME"):
        resolve_profile("bundled", environ={"VQA_LLM_LLM_RUNTIME": "onnx"})
    parser = add_profile_arguments(argparse.ArgumentParser())
    assert overrides_from_args(parser.parse_args(["--llm-runtime", "llama.cpp"]))["llm_runtime"] == "llama.cpp"
    assert "llm_runtime" not in overrides_from_args(parser.parse_args([]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--llm-runtime", "onnx"])
    for runtime, kind in (("auto", LlamaCppChatLLM), ("llama.cpp", LlamaCppChatLLM),
                          ("transformers", TransformersChatLLM)):
        profile, _ = resolve_profile("bundled", {"llm": str(gguf_file), "llm_runtime": runtime}, environ={})
        assert isinstance(load_chat_llm(profile, "cpu"), kind)


def test_bundled_smollm2_with_its_refiner_gets_the_same_prompt_tokens_and_answers():
    """The real bundled model: the same prompt token ids as transformers on refiner prompts (the template's own
    system prompt and SmolLM2's default one), and a reply in the refiner's format."""
    from llm import smollm2_gguf
    from prompts import build_messages, parse_answer
    from vqa_llm.profiles import BUNDLED_REFINER_DIR

    directory, filename = smollm2_gguf()
    reference = TransformersChatLLM.from_pretrained(directory, gguf_file=filename, device="cpu")
    fast = LlamaCppChatLLM.from_gguf(f"{directory}/{filename}", adapter=BUNDLED_REFINER_DIR)
    candidates = [("circle", 0.91), ("rectangle", 0.05), ("triangle", 0.02)]
    messages = build_messages("short", "a blue circle on a white background", "What shape is in the image?",
                              candidates, directory=BUNDLED_REFINER_DIR / "templates")
    for chat in (messages, messages[1:], [{"role": "user", "content": "Ünïcödé — 42 ≠ 43? 🙂"}]):
        assert fast.prompt_text(chat) == reference.prompt_text(chat)
        assert fast.prompt_ids(chat) == reference.tokenizer(reference.prompt_text(chat),
                                                            add_special_tokens=False).input_ids
    assert fast.eos_token_ids == reference.eos_token_ids
    reply = fast.generate(messages, max_new_tokens=48)
    # the refiner works the answer out first ("Explanation: ..."), then gives the answer line
    assert reply.startswith("Explanation: ") and reply.rstrip().endswith("\nAnswer: circle"), reply
    assert parse_answer(reply, candidates).answer == "circle"
