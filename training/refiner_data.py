"""Training data of the LLM refiner: the evidence the pipeline gives the LLM, and the reply it should write.

Evidence is produced by the project's own pipeline (``VQALLMPipeline`` without its LLM): the captioner's
caption and the VQA model's top-k ``(answer, score)`` candidates for each question, cached on disk
(``evidence-<key>.jsonl``, keyed by the models' weight files, the questions and ``top_k``) so that epochs and
later runs reuse it. Several VQA models may give evidence (e.g. the bundled VLE and a weaker one), so the
refiner sees candidates that are right and wrong the way real ones are.

Targets follow the template's reply kind: ``short`` → ``Answer: <true answer>`` + ``Explanation: <one
sentence citing the evidence used>``; ``long`` → one sentence that answers the question and contains the
answer. On easy-VQA (whose images hold one shape of one colour) the sentences are written from the image's
true colour and shape and say what the evidence shows; on other data they are generic but true.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from prompts import build_messages, template_kind
from vle.vqa_data import EASY_VQA_COLORS, EASY_VQA_SHAPES, VQAExample

logger = logging.getLogger(__name__)

_NEGATED = re.compile(r"\b(?:not|no)\b")


@dataclass
class Evidence:
    """One question with what the pipeline gives the LLM about it (``source``: the VQA model's name)."""

    question_id: int | str
    image: str
    question: str
    answers: list[str]
    question_type: str
    caption: str
    candidates: list[tuple[str, float]]
    source: str

    @property
    def truth(self) -> str:
        """The most frequent human answer (the first of the most frequent on ties)."""
        return Counter(self.answers).most_common(1)[0][0]


# ------------------------------------------------------------------------------------------- evidence
def _weights_signature(model_dir: str) -> str:
    """Names, sizes and modification times of a model folder's weight files (the evidence cache key)."""
    folder = Path(model_dir)
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if folder.is_dir() else []
    return ";".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files) or str(model_dir)


def evidence_key(examples: Sequence[VQAExample], vqa_model: str, captioner: str, top_k: int) -> str:
    """A short hash naming one evidence set: models (by weight files), questions and ``top_k``."""
    digest = hashlib.sha256()
    for part in (_weights_signature(vqa_model), _weights_signature(captioner), str(top_k)):
        digest.update(part.encode())
    for example in examples:
        digest.update(f"{example.question_id}\t{example.image_path}\t{example.question}\n".encode())
    return digest.hexdigest()[:16]


def collect_evidence(examples: Sequence[VQAExample], vqa_model: str, captioner: str, cache_dir: str | Path,
                     top_k: int = 5, batch_size: int = 64) -> list[Evidence]:
    """Caption + top-k candidates of ``vqa_model`` for each example, from the cache or by running the pipeline."""
    cache = Path(cache_dir) / f"evidence-{evidence_key(examples, vqa_model, captioner, top_k)}.jsonl"
    if cache.is_file():
        rows = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(rows) == len(examples):
            logger.info("Evidence of %s: %d questions from the cache %s", vqa_model, len(rows), cache)
            return [Evidence(**{**row, "candidates": [tuple(c) for c in row["candidates"]]}) for row in rows]
    from vqa_llm.loading import load_captioner, load_vqa_model
    from vqa_llm.pipeline import VQALLMPipeline

    model, processor = load_vqa_model(vqa_model, "cpu", local_files_only=True)
    pipeline = VQALLMPipeline(model, processor, load_captioner(captioner, "cpu", local_files_only=True))
    results = pipeline.run_batch([e.image_path for e in examples], [e.question for e in examples], top_k=top_k,
                                 use_llm=False, batch_size=batch_size)
    source = Path(vqa_model).name
    evidence = [
        Evidence(e.question_id, e.image_path, e.question, list(e.answers), e.question_type, r.caption,
                 [(str(a), round(float(s), 4)) for a, s in r.candidates], source)
        for e, r in zip(examples, results)
    ]
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".part")
    partial.write_text("".join(json.dumps(asdict(ev)) + "\n" for ev in evidence), encoding="utf-8")
    partial.replace(cache)
    return evidence


# ------------------------------------------------------------------------------------ easy-VQA world
def named_attribute(question: str) -> str | None:
    """The colour or shape word a yes/no question asks about ("is there not a red shape?" → "red")."""
    words = re.findall(r"[a-z]+", question.lower())
    for word in words:
        if word in EASY_VQA_COLORS or word in EASY_VQA_SHAPES:
            return word
    return None


def answer_from_attributes(question: str, question_type: str, color: str, shape: str) -> str | None:
    """What an image of one ``color`` ``shape`` answers to an easy-VQA question (``None``: cannot tell)."""
    if question_type == "shape":
        return shape
    if question_type == "color":
        return color
    asked = named_attribute(question)
    if asked is None:
        return None
    present = asked in (color, shape)
    negated = bool(_NEGATED.search(question.lower()))
    return "yes" if present != negated else "no"


def caption_attributes(caption: str) -> tuple[str | None, str | None]:
    """The colour and shape a caption names (``None`` for each it does not name exactly once)."""
    words = re.findall(r"[a-z]+", caption.lower())
    colors = {w for w in words if w in EASY_VQA_COLORS}
    shapes = {w for w in words if w in EASY_VQA_SHAPES}
    return (next(iter(colors)) if len(colors) == 1 else None, next(iter(shapes)) if len(shapes) == 1 else None)


# ---------------------------------------------------------------------------------------- targets
def _quoted(caption: str) -> str:
    return f'"{caption.strip().rstrip(".")}"' if caption.strip() else "(no caption)"


def _article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def explanation(ev: Evidence, answer: str, caption_answer: str | None) -> str:
    """One true sentence saying which evidence supports ``answer`` (the caption, the top candidate, both)."""
    top = ev.candidates[0][0] if ev.candidates else None
    caption = _quoted(ev.caption)
    if caption_answer == answer and top == answer:
        return f"The caption {caption} and the top candidate agree."
    if caption_answer == answer:
        if top:
            return f"The caption {caption} contradicts the top candidate \"{top}\"."
        return f"The caption {caption} says so."
    if top == answer:
        if caption_answer is not None:
            return f"The top candidate \"{top}\" is more reliable here than the caption {caption}."
        return f"\"{top}\" is the top candidate of the VQA model."
    return f"\"{answer}\" is among the VQA model's candidates."


def easy_vqa_sentence(ev: Evidence, answer: str, color: str, shape: str, rng: random.Random) -> str:
    """A fluent sentence answering an easy-VQA question about an image of one ``color`` ``shape``."""
    if ev.question_type == "shape":
        asked_color = next((c for c in EASY_VQA_COLORS if re.search(rf"\b{c}\b", ev.question)), None)
        subject = f"The {asked_color} shape" if asked_color else rng.choice(("The shape", "The shape in the image"))
        return f"{subject} is {_article(shape)}."
    if ev.question_type == "color":
        asked_shape = next((s for s in EASY_VQA_SHAPES if re.search(rf"\b{s}\b", ev.question)), None)
        return f"The {asked_shape or 'shape'} is {color}."
    asked = named_attribute(ev.question) or shape
    negated = bool(_NEGATED.search(ev.question.lower()))
    thing = f"{asked} shape" if asked in EASY_VQA_COLORS else asked
    if answer == "yes" and not negated:
        return f"Yes, there is {_article(color)} {shape} in the image."
    if answer == "yes":
        return f"Yes, there is no {thing}; the image shows {_article(color)} {shape}."
    if negated:
        return f"No, there is {_article(color)} {shape} in the image."
    return f"No, the image shows {_article(color)} {shape}."


def generic_sentence(ev: Evidence, answer: str) -> str:
    """A true sentence that contains ``answer`` for data without known image contents."""
    if answer in ("yes", "no"):
        return "Yes, that is right." if answer == "yes" else "No, that is not the case."
    if ev.question.lower().startswith("how many"):
        return f"There are {answer}."
    return f"The answer is {answer}."


def target_reply(ev: Evidence, kind: str, attributes: dict[str, str] | None, rng: random.Random) -> str | None:
    """The reply the refiner should give for ``ev`` in a template of ``kind`` (``None``: leave the example out,
    because no evidence supports the true answer, so learning it would teach the model to guess)."""
    answer = ev.truth
    color, shape = (attributes or {}).get("color"), (attributes or {}).get("shape")
    cap_color, cap_shape = caption_attributes(ev.caption)
    caption_answer = (answer_from_attributes(ev.question, ev.question_type, cap_color, cap_shape)
                      if cap_color and cap_shape else None)
    top = ev.candidates[0][0] if ev.candidates else None
    if color and shape:  # easy-VQA: yes and no are always among the candidates; only the caption or the top-1 count
        supported = caption_answer == answer or top == answer
    else:
        supported = (any(c == answer for c, _ in ev.candidates)
                     or re.search(rf"\b{re.escape(answer)}\b", ev.caption.lower()))
    if not supported:
        return None
    if kind == "long":
        return easy_vqa_sentence(ev, answer, color, shape, rng) if color and shape else generic_sentence(ev, answer)
    return f"Answer: {answer}\nExplanation: {explanation(ev, answer, caption_answer)}"


def build_examples(evidence: Sequence[Evidence], templates: Sequence[str], template_dir: str | Path | None,
                   attributes: dict[str, dict[str, str]] | None = None, seed: int = 0) -> list[dict]:
    """Chat examples ``{"messages", "reply", "template", ...}``, one per evidence row, the template dealt in turn.

    ``attributes`` maps image paths to their true ``color``/``shape`` (easy-VQA); rows whose true answer no
    evidence supports are left out (counted in the log).
    """
    rng = random.Random(seed)
    examples, dropped = [], 0
    for i, ev in enumerate(evidence):
        template = templates[i % len(templates)]
        reply = target_reply(ev, template_kind(template, template_dir), (attributes or {}).get(ev.image), rng)
        if reply is None:
            dropped += 1
            continue
        messages = build_messages(template, ev.caption, ev.question, ev.candidates, directory=template_dir)
        examples.append({"messages": messages, "reply": reply, "template": template, "source": ev.source,
                         "question_id": ev.question_id, "image": ev.image, "vqa_top1_correct": bool(ev.candidates)
                         and ev.candidates[0][0] == ev.truth})
    if dropped:
        logger.info("Left out %d of %d questions: no evidence supports their true answer.", dropped, len(evidence))
    return examples
