"""The committed offline models: they load with from_pretrained, score on easy-VQA, and run the whole pipeline."""

import random

import pytest
import torch

from training.bundle import BLIP_DIR_NAME, MODELS_DIR, VLE_DIR_NAME, caption_is_correct, evaluate_vle, image_attributes
from vle import VLEForVQA, VLEProcessor
from vle.vqa_data import load_easy_vqa

VLE_DIR = MODELS_DIR / VLE_DIR_NAME
BLIP_DIR = MODELS_DIR / BLIP_DIR_NAME


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _sample(items, n, seed=0):
    items = list(items)
    return random.Random(seed).sample(items, n)


def test_bundled_models_are_small_safetensors_and_documented():
    total = sum(f.stat().st_size for d in (VLE_DIR, BLIP_DIR) for f in d.rglob("*") if f.is_file())
    assert total < 30 * 2**20
    for directory in (VLE_DIR, BLIP_DIR):
        assert (directory / "model.safetensors").is_file() and not list(directory.glob("*.bin"))
        card = (directory / "README.md").read_text()
        assert "easy-VQA" in card and "Command" in card and "%" in card


def test_bundled_vle_loads_offline_and_scores_on_a_fixed_test_sample():
    model = VLEForVQA.from_pretrained(VLE_DIR, local_files_only=True)
    processor = VLEProcessor.from_pretrained(VLE_DIR, local_files_only=True)
    assert len(model.config.id2label) == 13
    assert processor.image_processor.crop_size["height"] == model.config.vision_config.image_size == 64
    sample_size = 500
    # evaluate_vle reads the first N questions; a seeded sample of the whole split is fairer, so shuffle ids.
    test = load_easy_vqa("test")
    chosen = set(e.question_id for e in _sample(test, sample_size))
    from training.vqa_finetune import VQATrainingSet, evaluate

    scores = evaluate(model.eval(), VQATrainingSet([e for e in test if e.question_id in chosen], processor,
                                                   {k: int(v) for k, v in model.config.label2id.items()}))
    assert scores["count"] == sample_size
    assert scores["vqa_score"] >= 0.93, scores
    assert set(scores["per_question_type"]) == {"shape", "color", "yes/no"}


def test_evaluate_vle_reports_per_kind_accuracy():
    result = evaluate_vle(VLE_DIR, limit=200)
    assert result["questions"] == 200 and 0.9 <= result["accuracy"] <= 1.0
    assert set(result["per_question_kind"]) <= {"shape", "color", "yes/no"}


def test_bundled_captioner_names_colour_and_shape():
    from captioner import BlipCaptioner
    from vle.image_io import load_image

    captioner = BlipCaptioner.from_pretrained(str(BLIP_DIR), local_files_only=True)
    attributes = {p: a for p, a in image_attributes(load_easy_vqa("test")).items() if "shape" in a and "color" in a}
    paths = _sample(sorted(attributes), 200)
    captions = captioner.caption([load_image(p) for p in paths], batch_size=50)
    correct = sum(caption_is_correct(c, attributes[p]) for c, p in zip(captions, paths))
    assert correct / len(paths) >= 0.95, list(zip(captions, paths))[:5]


def test_caption_check_is_strict():
    attrs = {"color": "red", "shape": "circle"}
    assert caption_is_correct("a red circle", attrs)
    assert not caption_is_correct("a blue circle", attrs)
    assert not caption_is_correct("a red circle and a red triangle", attrs)
    assert not caption_is_correct("a circle", attrs)


@pytest.mark.slow
def test_bundled_pipeline_answers_end_to_end_with_smollm2():
    from vqa_llm.pipeline import VQALLMPipeline
    from vqa_llm.profiles import resolve_profile

    profile, reason = resolve_profile("bundled", {}, {"HF_HUB_OFFLINE": "1"})
    assert profile.is_bundled and profile.llm_gguf_file and "SmolLM2" in profile.llm_gguf_file
    pipe = VQALLMPipeline.from_profile(profile)
    example = next(e for e in load_easy_vqa("test") if e.question_type == "color")
    torch.manual_seed(0)
    result = pipe.run(example.image_path, example.question, top_k=3, template="short", max_new_tokens=24)
    assert result.error is None
    assert result.candidates[0][0] == example.answers[0]  # VLE's top-1 is right on this easy question
    assert result.caption and example.answers[0] in result.caption
    assert result.llm_reply.strip() and result.llm_answer
    assert result.models["llm"].endswith(".gguf + smollm2-easyvqa-refiner")  # the refiner adapter by default


REFINER_DIR = MODELS_DIR / "smollm2-easyvqa-refiner"
WEAK_DIR = MODELS_DIR / "vle-easyvqa-weak"


def test_weak_vle_is_weaker_but_answers():
    result = evaluate_vle(WEAK_DIR, limit=400)
    assert 0.80 <= result["accuracy"] <= 0.96, result  # 90.35% on the full split (its model card)
    assert result["accuracy"] < evaluate_vle(VLE_DIR, limit=400)["accuracy"]
    card = (WEAK_DIR / "README.md").read_text()
    assert "Command" in card and "%" in card


def test_bundled_refiner_is_a_small_documented_adapter():
    files = [f for f in REFINER_DIR.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 10 * 10**6
    assert (REFINER_DIR / "adapter_model.safetensors").is_file()
    assert all((REFINER_DIR / "templates" / f"{name}.user.txt").is_file() for name in ("short", "long", "fewshot"))
    card = (REFINER_DIR / "README.md").read_text()
    assert "Command" in card and "%" in card


def test_bundled_refiner_keeps_the_format_on_real_test_images():
    """The bundled profile (VLE + BLIP + SmolLM2 with the refiner) on a few test questions of each kind: short
    replies are "Explanation: ...\nAnswer: ...", long replies one sentence that works the answer out, then the
    answer as a person would write it, few-shot replies the short ones after the solved examples; none falls back."""
    import re

    from vqa_llm.pipeline import VQALLMPipeline
    from vqa_llm.profiles import resolve_profile

    profile, _ = resolve_profile("bundled", {}, {"HF_HUB_OFFLINE": "1"})
    assert profile.llm_adapter and profile.llm_adapter.endswith("smollm2-easyvqa-refiner")
    pipe = VQALLMPipeline.from_profile(profile)
    test = load_easy_vqa("test")
    chosen = [e for kind in ("yes/no", "shape", "color")
              for e in _sample([t for t in test if t.question_type == kind], 2)]
    images, questions = [e.image_path for e in chosen], [e.question for e in chosen]
    for result in pipe.run_batch(images, questions, template="short", max_new_tokens=48):
        assert result.error is None and not result.llm_fallback, result.llm_reply
        # the refiner works the answer out in its explanation first, then gives the answer line
        assert re.fullmatch(r"Explanation: [^\n]+[.!?]\nAnswer: [^\n]+", result.llm_reply.strip()), result.llm_reply
        assert result.llm_reply.strip().endswith(f"Answer: {result.llm_answer}"), result.llm_reply
    for result in pipe.run_batch(images, questions, template="long", max_new_tokens=64):
        reply, sentence = result.llm_reply.strip(), result.llm_answer
        assert result.error is None and not result.llm_fallback, reply
        # the same reasoning first (shown as the explanation), then the answer as one natural sentence
        assert "\n" not in reply and result.llm_explanation.startswith('The top candidate "'), reply
        assert reply.endswith(sentence) and len(sentence.split()) >= 3 and sentence[-1] in ".!?", reply
        assert re.search(rf"\b{re.escape(result.llm_short_answer or '#')}\b", sentence.lower()), reply
        assert not re.search(r"candidate|score|caption|vqa", sentence, re.IGNORECASE), reply
    # few-shot prompts (solved examples of the committed bank first) get the same reasoning-first reply
    from vqa_llm.fewshot.locate import BUNDLED_BANK_DIR

    for result in pipe.run_batch(images[::2], questions[::2], template="fewshot", n_examples=8,
                                 example_bank=BUNDLED_BANK_DIR, max_new_tokens=48):
        assert result.error is None and not result.llm_fallback, result.llm_reply
        assert re.fullmatch(r"Explanation: The top candidate [^\n]+[.!?]\nAnswer: [^\n]+", result.llm_reply.strip()), \
            result.llm_reply


def test_committed_example_bank_is_small_and_keyed_by_the_bundled_vle():
    """The committed few-shot bank loads, stays within 5 MB, and its keys are the committed VLE's own: a bank
    left stale by a retrained VLE (or built with another model) fails here."""
    from vqa_llm.fewshot.bank import ExampleBank
    from vqa_llm.fewshot.locate import BUNDLED_BANK_DIR, example_bank_path
    from vqa_llm.pipeline import VQALLMPipeline
    from vqa_llm.profiles import resolve_profile

    assert sum(f.stat().st_size for f in BUNDLED_BANK_DIR.iterdir() if f.is_file()) <= 5 * 2**20
    bank = ExampleBank.load(BUNDLED_BANK_DIR)
    assert len(bank) == 4000 and bank.key("fused").shape == (4000, bank.dim)
    assert bank.meta["source"] == "easy-vqa/train"
    assert bank.meta["vqa_model"] == f"assets/models/{VLE_DIR_NAME}"  # repo-relative: no machine's paths
    profile, _ = resolve_profile("bundled", {}, {"HF_HUB_OFFLINE": "1"})
    assert example_bank_path(None, profile, environ={}) == BUNDLED_BANK_DIR

    train = {e.question_id: e for e in load_easy_vqa("train")}
    rows = _sample(range(len(bank)), 12)
    records = [bank.records[i] for i in rows]
    pipe = VQALLMPipeline.from_profile(profile, use_llm=False)
    encodings = pipe.encode_questions([train[r["question_id"]].image_path for r in records],
                                      [r["question"] for r in records], top_k=5)
    for row, record, encoding in zip(rows, records, encodings):
        assert record["answer"] == train[record["question_id"]].answers[0]
        assert encoding.caption == record["caption"]
        assert encoding.candidates[0][0] == record["candidates"][0][0]
        similarity = bank.key("fused").float() @ encoding.fused
        assert similarity[row] > 0.999, (record, float(similarity[row]))


def test_committed_files_name_no_folder_of_the_machine_that_built_them(tmp_path):
    from project_base.paths import REPO_ROOT, portable_path

    assert portable_path(VLE_DIR) == f"assets/models/{VLE_DIR_NAME}"
    assert portable_path("hfl/vle-base") == "hfl/vle-base" and portable_path(None) is None
    assert portable_path(tmp_path) == str(tmp_path)  # outside the repository: as given
    for path in (REPO_ROOT / "assets").rglob("*"):
        if path.suffix in {".json", ".jsonl", ".md"}:
            assert str(REPO_ROOT) not in path.read_text(encoding="utf-8"), path
