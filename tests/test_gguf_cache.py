"""The GGUF cache: a local GGUF file is de-quantised once into a transformers folder keyed by its content, later
loads read that folder and give the same model, tokenizer and replies; damaged or unfinished folders are
rebuilt, a cache that cannot be written falls back to the GGUF file, and VQA_LLM_CACHE=off turns it off."""

import logging
import shutil
from pathlib import Path

import pytest
import torch

from llm import LLMError, TransformersChatLLM, gguf_cache
from llm.gguf_cache import MANIFEST, cache_root, cached_folder, file_sha256, is_complete, load_source
from tiny_gguf import write_tiny_gguf

MESSAGES = [{"role": "user", "content": "the cat in the hat"}]


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("VQA_LLM_CACHE", str(root))
    return root


def _folders(root: Path) -> list[Path]:
    return sorted((root / "gguf").iterdir()) if (root / "gguf").is_dir() else []


def _load(path: Path) -> TransformersChatLLM:
    return TransformersChatLLM.from_pretrained(str(path), device="cpu")


def _no_conversion(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_cache, "convert", refuse)


def test_cached_load_is_the_same_model_tokenizer_and_replies(gguf_path, cache, monkeypatch):
    monkeypatch.setenv("VQA_LLM_CACHE", "off")
    direct = _load(gguf_path)
    assert not cache.exists()
    monkeypatch.setenv("VQA_LLM_CACHE", str(cache))
    first = _load(gguf_path)
    (folder,) = _folders(cache)
    assert folder.name == file_sha256(gguf_path)[:16] and is_complete(folder, file_sha256(gguf_path))
    _no_conversion(monkeypatch)
    again = _load(gguf_path)
    for llm in (first, again):
        assert llm.model_id == direct.model_id == f"{gguf_path.parent}/{gguf_path.name}"
        assert llm.prompt_text(MESSAGES) == direct.prompt_text(MESSAGES)
        prompt = direct.prompt_text(MESSAGES)
        assert llm.tokenizer(prompt).input_ids == direct.tokenizer(prompt).input_ids
        assert llm.eos_token_ids == direct.eos_token_ids and llm.max_context == direct.max_context
        assert llm.tokenizer.pad_token_id == direct.tokenizer.pad_token_id
        pairs = zip(llm.model.state_dict().values(), direct.model.state_dict().values())
        assert all(torch.equal(a, b) for a, b in pairs)
        assert llm.generate(MESSAGES, max_new_tokens=6) == direct.generate(MESSAGES, max_new_tokens=6)


def test_key_follows_the_content_not_the_path(gguf_path, cache, tmp_path):
    copy = tmp_path / "elsewhere" / "renamed.gguf"
    copy.parent.mkdir()
    shutil.copy(gguf_path, copy)
    assert cached_folder(gguf_path.parent, gguf_path.name) == cached_folder(copy.parent, copy.name)
    write_tiny_gguf(copy, seed=1)  # replaced in place, same name and size
    assert copy.stat().st_size == gguf_path.stat().st_size
    other = cached_folder(copy.parent, copy.name)
    assert len(_folders(cache)) == 2 and other.name == file_sha256(copy)[:16]


@pytest.mark.parametrize("damage", ["truncated weights", "no manifest", "missing tokenizer", "other file's manifest"])
def test_damaged_or_unfinished_folders_are_rebuilt(gguf_path, cache, damage, caplog):
    folder = cached_folder(gguf_path.parent, gguf_path.name)
    if damage == "truncated weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "no manifest":  # what a conversion killed before its rename would look like
        (folder / MANIFEST).unlink()
    elif damage == "missing tokenizer":
        (folder / "tokenizer.json").unlink()
    else:
        text = (folder / MANIFEST).read_text()
        (folder / MANIFEST).write_text(text.replace(file_sha256(gguf_path), "0" * 64))
    assert not is_complete(folder, file_sha256(gguf_path))
    with caplog.at_level(logging.WARNING, logger="llm.gguf_cache"):
        rebuilt = cached_folder(gguf_path.parent, gguf_path.name)
    assert rebuilt == folder and is_complete(folder, file_sha256(gguf_path))
    assert "incomplete or damaged" in caplog.text
    assert [p.name for p in _folders(cache)] == [folder.name]  # no temporary or trash folders left behind
    assert _load(gguf_path).generate(MESSAGES, max_new_tokens=3) is not None


def test_a_folder_another_process_finished_first_is_used(gguf_path, cache):
    digest = file_sha256(gguf_path)
    folder = cached_folder(gguf_path.parent, gguf_path.name)
    before = (folder / "model.safetensors").stat().st_mtime_ns
    assert gguf_cache.convert(gguf_path, folder, digest) == folder  # its rename loses to the finished folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == before
    assert [p.name for p in _folders(cache)] == [folder.name]


def test_an_unwritable_cache_falls_back_to_the_gguf_file(gguf_path, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("VQA_LLM_CACHE", str(blocker))
    with caplog.at_level(logging.WARNING, logger="llm.gguf_cache"):
        llm = _load(gguf_path)
    assert "Could not write the GGUF cache" in caplog.text and "VQA_LLM_CACHE" in caplog.text
    assert llm.generate(MESSAGES, max_new_tokens=3) is not None


def test_cache_location_and_switch():
    assert cache_root({"VQA_LLM_CACHE": "/data/c"}) == Path("/data/c")
    assert cache_root({"XDG_CACHE_HOME": "/x"}) == Path("/x/vqa_llm")
    assert cache_root({}) == Path("~/.cache/vqa_llm").expanduser()
    for off in ("off", "0", "none", "OFF"):
        assert cache_root({"VQA_LLM_CACHE": off}) is None


def test_only_local_gguf_files_are_redirected(gguf_path, cache):
    kwargs = {"trust_remote_code": False, "local_files_only": True}
    assert load_source("some/folder", kwargs) == ("some/folder", kwargs)
    hub = {**kwargs, "gguf_file": "model.Q4_K_M.gguf"}
    assert load_source("org/repo-GGUF", hub) == ("org/repo-GGUF", hub)  # a Hub repository: transformers' own path
    source, rest = load_source(str(gguf_path.parent), {**kwargs, "gguf_file": gguf_path.name})
    assert Path(source).parent == cache / "gguf" and "gguf_file" not in rest and rest["local_files_only"]


def test_a_broken_gguf_file_is_reported_not_cached(tmp_path, cache):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(200))
    with pytest.raises(LLMError, match="Could not load the LLM"):
        _load(broken)
    assert _folders(cache) == []
