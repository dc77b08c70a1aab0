"""The VQA+LLM pipeline with tiny random VLE/BLIP models and fake or tiny LLMs.

Covers: streaming order, the per-image cache (counted captioner / vision-encoder calls), LLM failures
(raising, hanging past the timeout, dying mid-stream) that keep the VQA work, input validation, the batched
API, loading from a profile (missing and corrupt model folders) and the JSON form of results.
"""

import json
import shutil
import threading
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from PIL import Image

from captioner import BlipCaptioner
from llm import ChatLLM, LLMConnectionError, TransformersChatLLM
from tiny_models import build_tiny_blip, build_tiny_chat_lm
from tiny_vle import DEFAULT_LABELS, build_tiny_vle_vqa
from vle import VLEForVQA
from vle.processing_vle import VLEProcessor
from vqa_llm.cache import ImageCache
from vqa_llm.errors import BadImageError, BadQuestionError, BadSettingError, ModelUnavailableError
from vqa_llm.inputs import MAX_QUESTION_CHARS
from vqa_llm.metrics import normalize_answer
from vqa_llm.pipeline import VQALLMPipeline
from vqa_llm.profiles import resolve_profile
from vqa_llm.result import STAGES

QUESTION = "Which shape is green?"


# ------------------------------------------------------------------------------------------- fakes
class ScriptedLLM(ChatLLM):
    """Replies with fixed chunks; records every call."""

    model_id = "scripted-llm"

    def __init__(self, chunks=("Answer: ", "blue", "\nExplanation: ", "the caption says so.")):
        self.chunks = list(chunks)
        self.calls = []

    def _generate(self, messages, opts):
        self.calls.append(("generate", messages, asdict(opts)))
        return "".join(self.chunks)

    def _stream(self, messages, opts):
        self.calls.append(("stream", messages, asdict(opts)))
        yield from self.chunks

    def _generate_batch(self, batch, opts):
        self.calls.append(("generate_batch", list(batch), asdict(opts)))
        return ["".join(self.chunks) for _ in batch]


class RefusingLLM(ScriptedLLM):
    """Like an HTTP backend whose server is down."""

    def _stream(self, messages, opts):
        raise LLMConnectionError("connection refused by http://127.0.0.1:9")

    def _generate_batch(self, batch, opts):
        raise LLMConnectionError("connection refused by http://127.0.0.1:9")


class HangingLLM(ScriptedLLM):
    """Ignores its timeout and hangs until released (a stuck server)."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def _stream(self, messages, opts):
        yield "Answer: "
        self.release.wait(30)
        yield "blue"

    def _generate_batch(self, batch, opts):
        self.release.wait(30)
        return ["Answer: blue"] * len(batch)


class DyingLLM(ScriptedLLM):
    """Streams one chunk, then the backend crashes."""

    def _stream(self, messages, opts):
        yield "Answer: gre"
        raise RuntimeError("CUDA error: device-side assert triggered")


class PickyBatchLLM(ScriptedLLM):
    """Fails any batch containing a chat that mentions 'boom'; answers the others."""

    def _generate_batch(self, batch, opts):
        self.calls.append(("generate_batch", list(batch), asdict(opts)))
        if any("boom" in m[-1]["content"] for m in batch):
            raise ValueError("tokenizer exploded on this chat")
        return ["Answer: red"] * len(batch)


class Counter:
    """Wraps a callable; counts calls and the number of images passed in."""

    def __init__(self, fn):
        self.fn, self.calls, self.items = fn, 0, 0

    def __call__(self, batch, *args, **kwargs):
        self.calls += 1
        self.items += len(batch)
        return self.fn(batch, *args, **kwargs)


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "vqa": build_tiny_vle_vqa(root / "vle"),
        "captioner": build_tiny_blip(root / "blip"),
        "llm": build_tiny_chat_lm(root / "chat", max_position_embeddings=2048),
    }


@pytest.fixture(scope="module")
def parts(model_dirs):
    return (VLEForVQA.from_pretrained(model_dirs["vqa"]), VLEProcessor.from_pretrained(model_dirs["vqa"]),
            BlipCaptioner.from_pretrained(model_dirs["captioner"], device="cpu", num_beams=1, max_new_tokens=6))


def make_pipe(parts, llm=None, counting=True, **kwargs):
    model, processor, captioner = parts
    pipe = VQALLMPipeline(model, processor, captioner, llm, **kwargs)
    if counting:
        pipe.captioner = _CountingCaptioner(captioner)
        pipe.vqa_model = _CountingModel(model)
    return pipe


class _CountingCaptioner:
    def __init__(self, inner):
        self.inner, self.model_id = inner, inner.model_id
        self.caption = Counter(inner.caption)


class _CountingModel(torch.nn.Module):
    """Delegates to a VLEForVQA and counts ``encode_image`` calls (the shared model stays untouched)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.encode_image = Counter(inner.encode_image)

    def forward(self, **kwargs):
        return self.inner(**kwargs)


def image(colour=(0, 160, 0), size=(40, 30)):
    return Image.new("RGB", size, colour)


# ------------------------------------------------------------------------------------------- tests
def test_stream_yields_vqa_first_then_llm_chunks_then_done(parts):
    llm = ScriptedLLM()
    pipe = make_pipe(parts, llm)
    seen = []
    for update in pipe.stream(image(), QUESTION, top_k=3, max_new_tokens=12):
        # snapshot what the consumer could see at that moment
        seen.append((update.stage, update.chunk, update.text, list(update.result.candidates),
                     update.result.caption, update.result.llm_answer))
    stages = [s[0] for s in seen]
    assert stages == ["vqa", "llm", "llm", "llm", "llm", "done"]
    vqa = seen[0]
    assert len(vqa[3]) == 3 and all(isinstance(a, str) and 0 <= s <= 1 for a, s in vqa[3])
    assert vqa[4] == pipe.captioner.inner.caption([image()])[0]  # the real caption, before any LLM text
    assert vqa[5] is None
    chunks = [s[1] for s in seen if s[0] == "llm"]
    assert chunks == llm.chunks and seen[-2][2] == "".join(chunks)
    result = pipe.run(image(), QUESTION, top_k=3)
    assert result.llm_reply == "".join(llm.chunks)
    assert (result.llm_answer, result.llm_explanation) == ("blue", "the caption says so.")
    assert result.llm_used and not result.llm_fallback and result.error is None
    assert result.changed == (normalize_answer("blue") != normalize_answer(result.vqa_answer))
    # the exact messages given to the LLM are kept, with the question, caption and candidates in them
    kind, messages, opts = llm.calls[0]
    assert kind == "stream" and messages == result.messages and opts["max_new_tokens"] == 12
    assert opts["timeout"] == 60.0  # the pipeline's default LLM timeout reaches the backend
    assert QUESTION in messages[-1]["content"] and result.candidates[0][0] in messages[-1]["content"]


def test_candidates_are_the_models_top_k_in_order(parts):
    model, processor, _ = parts
    pipe = make_pipe(parts, counting=False)
    result = pipe.run(image(), QUESTION, top_k=len(DEFAULT_LABELS), use_llm=False)
    enc = processor(text=[QUESTION], images=[image()], return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)[0]
    expected = [DEFAULT_LABELS[i] for i in probs.argsort(descending=True).tolist()]
    assert [a for a, _ in result.candidates] == expected
    assert [s for _, s in result.candidates] == pytest.approx(sorted(probs.tolist(), reverse=True), abs=1e-5)
    assert sum(s for _, s in result.candidates) == pytest.approx(1.0, abs=1e-5)


def test_second_question_on_the_same_image_skips_caption_and_vision_encoder(parts, tmp_path):
    pipe = make_pipe(parts, ScriptedLLM())
    first = pipe.run(image(), QUESTION)
    assert not first.cache_hit and pipe.captioner.caption.calls == 1 and pipe.vqa_model.encode_image.calls == 1
    # the same pixels from another source (a PNG file) hash the same
    path = tmp_path / "same.png"
    image().save(path)
    second = pipe.run(str(path), "Is there a red circle?")
    assert second.cache_hit and second.image_hash == first.image_hash
    assert pipe.captioner.caption.calls == 1 and pipe.vqa_model.encode_image.calls == 1
    assert second.caption == first.caption
    assert second.timings["caption"] == 0.0 and second.timings["vision_encode"] == 0.0
    assert second.timings["vqa_fusion"] > 0.0 and set(second.timings) == set(STAGES)
    assert pipe.cache.stats().hits == 1 and pipe.cache.stats().misses == 1
    # the cached encoding answers exactly like a fresh one
    fresh = make_pipe(parts, counting=False, cache=ImageCache(max_entries=0))
    again = fresh.run(image(), "Is there a red circle?", use_llm=False)
    assert [a for a, _ in again.candidates] == [a for a, _ in second.candidates]
    assert [s for _, s in again.candidates] == pytest.approx([s for _, s in second.candidates], abs=1e-6)
    # another image is a miss
    pipe.run(image((200, 0, 0)), QUESTION)
    assert pipe.captioner.caption.calls == 2 and pipe.vqa_model.encode_image.calls == 2


def test_caption_free_run_then_full_run_computes_only_the_caption(parts):
    pipe = make_pipe(parts)
    bare = pipe.run(image(), QUESTION, use_llm=False, describe_image=False)
    assert bare.caption == "" and pipe.captioner.caption.calls == 0
    full = pipe.run(image(), QUESTION, use_llm=False)
    assert full.caption and pipe.captioner.caption.calls == 1 and pipe.vqa_model.encode_image.calls == 1
    assert not full.cache_hit


@pytest.mark.parametrize("llm_cls, expected", [
    (RefusingLLM, "could not be reached"),
    (DyingLLM, "RuntimeError: CUDA error"),
])
def test_llm_failure_keeps_caption_and_candidates(parts, llm_cls, expected):
    pipe = make_pipe(parts, llm_cls())
    updates = list(pipe.stream(image(), QUESTION, top_k=4))
    assert updates[0].stage == "vqa" and updates[-1].stage == "done"
    result = updates[-1].result
    assert result.caption and len(result.candidates) == 4
    assert expected in result.error and "VQA answer is shown instead" in result.error
    assert result.llm_answer == result.vqa_answer == result.answer
    assert result.llm_fallback and not result.changed and result.llm_used
    if llm_cls is DyingLLM:
        assert result.llm_reply == "Answer: gre"  # what streamed before the crash is kept


def test_llm_hanging_past_the_timeout_is_abandoned(parts):
    llm = HangingLLM()
    pipe = make_pipe(parts, llm, llm_timeout=0.3)
    try:
        result = pipe.run(image(), QUESTION)
        assert "did not answer within 0.3 s" in result.error
        assert result.candidates and result.caption and result.answer == result.vqa_answer
        assert result.llm_reply == "Answer: "
        batch = pipe.run_batch([image()], [QUESTION, "Is it red?"])
        assert all("did not answer" in r.error and r.candidates for r in batch)
    finally:
        llm.release.set()


def test_without_llm_the_answer_is_the_vqa_top1(parts):
    llm = ScriptedLLM()
    pipe = make_pipe(parts, llm)
    result = pipe.run(image(), QUESTION, use_llm=False)
    assert llm.calls == [] and result.messages == [] and result.llm_answer is None and not result.llm_used
    assert result.answer == result.vqa_answer and result.error is None
    assert [u.stage for u in pipe.stream(image(), QUESTION, use_llm=False)] == ["vqa", "done"]
    # a pipeline built without an LLM behaves the same when asked to use one
    assert make_pipe(parts, None).run(image(), QUESTION).llm_answer is None


def test_input_validation(parts):
    pipe = make_pipe(parts, ScriptedLLM())
    with pytest.raises(BadQuestionError, match="empty"):
        pipe.run(image(), " \t\n ")
    with pytest.raises(BadQuestionError, match=f"limit is {MAX_QUESTION_CHARS}"):
        pipe.run(image(), "why " * 200)
    with pytest.raises(BadImageError, match="not an image"):
        pipe.run(b"this is not a picture", QUESTION)
    with pytest.raises(BadImageError, match="No image"):
        pipe.run(None, QUESTION)
    with pytest.raises(BadSettingError, match="long, short"):
        pipe.run(image(), QUESTION, template="poem")
    with pytest.raises(BadSettingError, match="max_new_tokens"):
        pipe.run(image(), QUESTION, max_new_tokens=0)
    with pytest.raises(BadSettingError, match="Unknown LLM option"):
        pipe.run(image(), QUESTION, beams=3)
    result = pipe.run(image(), "Which\x00 shape\x07 is 绿色 🟩?\nreally", top_k=0)
    assert result.question == "Which shape is 绿色 🟩? really"
    assert result.top_k == 1 and len(result.candidates) == 1
    assert any("control character" in n for n in result.notes) and any("clamped to 1" in n for n in result.notes)
    assert "绿色 🟩" in result.messages[-1]["content"]
    result = pipe.run(image(), QUESTION, top_k=10_000)
    assert result.top_k == len(DEFAULT_LABELS) == len(result.candidates)


def test_run_batch_batches_distinct_images_and_matches_single_runs(parts):
    llm = ScriptedLLM()
    pipe = make_pipe(parts, llm)
    red, green = image((200, 0, 0)), image()
    questions = [QUESTION, "Is there a red circle?", "What colour is the shape?"]
    results = pipe.run_batch([red, green, red], questions, top_k=3)
    assert pipe.captioner.caption.calls == 1 and pipe.captioner.caption.items == 2
    assert pipe.vqa_model.encode_image.calls == 1 and pipe.vqa_model.encode_image.items == 2
    assert [c[0] for c in llm.calls] == ["generate_batch"] and len(llm.calls[0][1]) == 3
    assert [r.question for r in results] == questions and all(r.llm_answer == "blue" for r in results)
    assert results[0].image_hash == results[2].image_hash != results[1].image_hash
    single = make_pipe(parts, counting=False).run(green, questions[1], top_k=3, use_llm=False)
    assert [a for a, _ in results[1].candidates] == [a for a, _ in single.candidates]
    assert [s for _, s in results[1].candidates] == pytest.approx([s for _, s in single.candidates], abs=1e-5)
    assert results[1].caption == single.caption
    # all cached now: a second batch computes nothing image-side and reports the hits
    again = pipe.run_batch([green], ["Is it green?", "Is it a circle?"], use_llm=False, batch_size=1)
    assert all(r.cache_hit for r in again) and pipe.vqa_model.encode_image.calls == 1
    with pytest.raises(BadSettingError, match="2 images for 3 questions"):
        pipe.run_batch([red, green], questions)


def test_run_batch_retries_one_by_one_when_a_batch_fails(parts):
    llm = PickyBatchLLM()
    pipe = make_pipe(parts, llm)
    results = pipe.run_batch([image()], ["Is it red?", "boom?", "Is it green?"])
    assert [r.error is None for r in results] == [True, False, True]
    assert "tokenizer exploded" in results[1].error and results[1].answer == results[1].vqa_answer
    assert results[0].llm_answer == "red"
    assert [len(c[1]) for c in llm.calls] == [3, 1, 1, 1]


def test_real_tiny_llm_end_to_end_and_json(parts, model_dirs):
    chat = TransformersChatLLM.from_pretrained(model_dirs["llm"], device="cpu")
    pipe = make_pipe(parts, chat, counting=False)
    updates = list(pipe.stream(image(), QUESTION, max_new_tokens=6))
    result = updates[-1].result
    assert result.error is None and result.llm_used and result.models["llm"] == chat.model_id
    assert "".join(u.chunk for u in updates if u.stage == "llm") == result.llm_reply
    assert result.llm_reply == chat.generate(result.messages, max_new_tokens=6)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["candidates"][0] == [result.candidates[0][0], pytest.approx(result.candidates[0][1])]
    assert set(data["timings"]) == set(STAGES) and data["timings"]["total"] >= data["timings"]["llm"] > 0
    assert data["answer"] == result.answer and data["messages"] == result.messages
    assert {"question", "caption", "template", "llm_reply", "llm_answer", "llm_explanation", "llm_fallback",
            "changed", "error", "cache_hit", "models", "image_hash", "notes"} <= set(data)


def test_from_profile_loads_each_model_and_reports_missing_or_corrupt_folders(model_dirs, tmp_path):
    profile, _ = resolve_profile("bundled", {"vqa_model": model_dirs["vqa"], "captioner": model_dirs["captioner"],
                                             "llm": model_dirs["llm"], "device": "cpu"}, {})
    pipe = VQALLMPipeline.from_profile(profile)
    assert pipe.model_ids == {"vqa": model_dirs["vqa"], "captioner": model_dirs["captioner"],
                              "llm": model_dirs["llm"]}
    assert isinstance(pipe.llm, TransformersChatLLM) and pipe.run(image(), QUESTION, max_new_tokens=2).llm_used
    no_llm = VQALLMPipeline.from_profile(profile, use_llm=False)
    assert no_llm.llm is None and no_llm.model_ids["llm"] is None

    missing = tmp_path / "nowhere"
    with pytest.raises(ModelUnavailableError, match=f"No VQA model folder at {missing}"):
        VQALLMPipeline.from_profile(resolve_profile("bundled", {"vqa_model": str(missing)}, {})[0])
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    with pytest.raises(ModelUnavailableError, match="has no config.json"):
        VQALLMPipeline.from_profile(resolve_profile("bundled", {"vqa_model": str(corrupt)}, {})[0])
    for name in ("config.json", "spm.model", "preprocessor_config.json", "tokenizer_config.json"):
        shutil.copy(Path(model_dirs["vqa"]) / name, corrupt / name)
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage, not safetensors")
    damaged = f"The VQA model weights file {corrupt}/model.safetensors is damaged"
    with pytest.raises(ModelUnavailableError, match=damaged):
        VQALLMPipeline.from_profile(resolve_profile("bundled", {"vqa_model": str(corrupt)}, {})[0])
    with pytest.raises(ModelUnavailableError, match="--no-llm"):
        VQALLMPipeline.from_profile(resolve_profile("bundled", {
            "vqa_model": model_dirs["vqa"], "captioner": model_dirs["captioner"], "llm": str(missing)}, {})[0])


def test_caption_method_runs_only_the_captioner_and_fills_the_cache(parts):
    pipe = make_pipe(parts)
    text = pipe.caption(image())
    assert text and pipe.captioner.caption.calls == 1 and pipe.vqa_model.encode_image.calls == 0
    result = pipe.run(image(), QUESTION, use_llm=False)
    assert result.caption == text and pipe.captioner.caption.calls == 1 and pipe.vqa_model.encode_image.calls == 1
    assert pipe.caption(image()) == text and pipe.captioner.caption.calls == 1
    with pytest.raises(BadImageError):
        pipe.caption(b"\x89PNG broken")
    assert VQALLMPipeline(parts[0], parts[1], None).caption(image()) == ""


def test_long_template_sentence_is_shown_and_its_short_answer_is_compared_and_scored(parts):
    from vle.vqa_data import VQAExample
    from vqa_llm.evaluation.records import record_from_result

    candidates = make_pipe(parts).run(image(), QUESTION, top_k=3, use_llm=False).candidates
    top, second = candidates[0][0], candidates[1][0]
    example = VQAExample(question_id=1, image_id="1", image_path="x.png", question=QUESTION, answers=[top] * 10,
                         answer_type="other", question_type="shape")
    for reply, short, changed, accuracy in ((f"The green one is {top}.", top, False, 1.0),
                                            (f"It looks like {second} to me.", second, True, 0.0)):
        result = make_pipe(parts, ScriptedLLM((reply,))).run(image(), QUESTION, top_k=3, template="long")
        assert result.llm_answer == reply and result.answer == reply  # the UI shows the sentence
        assert result.llm_short_answer == short and result.scored_answer == short
        assert result.changed is changed
        record = record_from_result(example, result, use_llm=True)
        assert record["llm_reply"] == reply and record["llm_answer"] == short
        assert record["llm_accuracy"] == accuracy
    # short templates have no separate short answer
    result = make_pipe(parts, ScriptedLLM()).run(image(), QUESTION, top_k=3)
    assert result.llm_short_answer is None and result.scored_answer == result.llm_answer == "blue"


def test_an_llm_with_its_own_templates_is_prompted_and_parsed_with_them(parts, tmp_path):
    from prompts import build_messages
    from prompts.templates import TEMPLATE_DIR

    own = tmp_path / "own"
    shutil.copytree(TEMPLATE_DIR, own)
    (own / "short.system.txt").write_text("You are the refiner. Reply 'Answer: <answer>'.\n")
    llm = ScriptedLLM(("Answer: ", "B"))
    llm.template_dir = own
    for run in (lambda p: p.run(image(), QUESTION, top_k=3), lambda p: p.run_batch([image()], [QUESTION], top_k=3)[0]):
        result = run(make_pipe(parts, llm))
        expected = build_messages("short", result.caption, QUESTION, result.candidates, directory=own)
        assert result.messages == expected and "You are the refiner" in result.messages[0]["content"]
        assert result.llm_answer == result.candidates[1][0] and not result.llm_fallback  # letter B
    plain = make_pipe(parts, ScriptedLLM()).run(image(), QUESTION, top_k=3, template="long")
    assert "You are the refiner" not in plain.messages[0]["content"]


def test_a_reply_that_echoes_the_prompt_falls_back_with_a_note(parts):
    echo = ScriptedLLM(("Candidates:\nA. red (0.50)\nB. blue (0.30)",))
    for run in (lambda p: p.run(image(), QUESTION, top_k=3), lambda p: p.run_batch([image()], [QUESTION], top_k=3)[0]):
        result = run(make_pipe(parts, echo))
        assert result.llm_fallback and result.llm_answer == result.vqa_answer and not result.changed
        assert any("was not used" in note for note in result.notes) and result.error is None
