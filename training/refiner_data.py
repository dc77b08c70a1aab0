"""Training data of the LLM refiner: the evidence the pipeline gives the LLM, and the reply it should write.

Evidence is produced by the project's own pipeline (``VQALLMPipeline`` without its LLM): the captioner's
caption and the VQA model's top-k ``(answer, score)`` candidates for each question, cached on disk
(``evidence-<key>.jsonl``, keyed by the models' weight files, the questions and ``top_k``) so that epochs and
later runs reuse it. Several VQA models may give evidence (e.g. the bundled VLE and a weaker one), so the
refiner sees candidates that are right and wrong the way real ones are.

Targets follow the template's reply kind. On easy-VQA (whose images hold one shape of one colour) both work the
answer out from the evidence before giving it (:func:`reasoning`): ``short`` → ``Explanation: <that sentence>`` +
``Answer: <true answer>``; ``long`` → that sentence, then the answer as a person would write it ("No, there is
no gray shape in the image.", :func:`reasoned_sentence`). Few-shot chats put solved examples from an example bank
before the question and get the same replies (:func:`solved_examples`). Elsewhere ``short`` gives ``Answer:``
first and an explanation citing the evidence used, and ``long`` a generic but true sentence that contains the
answer.

What the refiner must learn is when to trust which evidence. On easy-VQA the caption alone decides every
question ("a green circle" answers "is there not a black shape?"), so where the caption and the top candidate
disagree, the data teaches: keep a top candidate the VQA model is sure of (shown as 1.00), else follow the
caption. :func:`add_caption_noise` swaps a colour or shape word in a share of the captions next to a sure top
candidate (the bundled BLIP names almost every *training* image right, because it was trained on them, but errs
on a few percent of new ones), and :func:`select_chats` keeps every chat whose caption and top candidate disagree
and a share of those where they agree, for sure and unsure candidates apart if asked. Balanced so (the bundle
recipe), neither the score nor copying or flipping the top candidate predicts a disagreement's answer; with
fewer disagreements SmolLM2-135M learned to copy the top candidate, with unbalanced ones to flip yes/no answers
(docs/results.md#llm-refiner).
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

from llm.gguf_cache import file_sha256
from prompts import build_messages, template_kind
from prompts.render import shown_score
from vle.vqa_data import EASY_VQA_COLORS, EASY_VQA_SHAPES, VQAExample

logger = logging.getLogger(__name__)

_NEGATED = re.compile(r"\b(?:not|no)\b")
SURE_SHOWN = shown_score(1.0)  # how the prompt shows a sure top candidate's score: "1.00"


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
    def top_score_shown(self) -> str | None:
        """The top candidate's score as the prompt shows it (:func:`prompts.render.shown_score`)."""
        return shown_score(self.candidates[0][1]) if self.candidates else None

    @property
    def top_is_sure(self) -> bool:
        """Whether the top candidate's score reads "1.00" in the prompt (:data:`SURE_SHOWN`; from about 0.995)."""
        return self.top_score_shown == SURE_SHOWN

    @property
    def truth(self) -> str:
        """The most frequent human answer (the first of the most frequent on ties)."""
        return Counter(self.answers).most_common(1)[0][0]


# ------------------------------------------------------------------------------------------- evidence
def _weights_signature(model_dir: str) -> str:
    """The content hashes of a model folder's weight files (the evidence cache key); a Hub id stands for itself.

    Contents, not sizes and times: two checkpoints of one architecture have equal sizes, and a fresh clone gives
    every file the same modification time.
    """
    folder = Path(model_dir)
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if folder.is_dir() else []
    return ";".join(f"{file.name}:{file_sha256(file)}" for file in files) or str(model_dir)


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


def add_caption_noise(evidence: Sequence[Evidence], share: float, seed: int = 0) -> list[Evidence]:
    """A copy of ``evidence`` where about ``share`` of the captions next to a sure top candidate (score
    shown as 1.00) name a wrong colour or a wrong shape.

    Only captions that name exactly one easy-VQA colour and shape change; which ones, and how, depends on
    ``seed`` and the question id alone (so the noise is the same whatever the order or the cache).
    """
    noisy = []
    for ev in evidence:
        rng = random.Random(f"{seed}:{ev.question_id}")
        color, shape = caption_attributes(ev.caption)
        if share <= 0 or not ev.top_is_sure or color is None or shape is None or rng.random() >= share:
            noisy.append(ev)
            continue
        if rng.random() < 0.5:
            old, new = color, rng.choice([c for c in EASY_VQA_COLORS if c != color])
        else:
            old, new = shape, rng.choice([s for s in sorted(EASY_VQA_SHAPES) if s != shape])
        caption = re.sub(rf"\b{old}\b", new, ev.caption, count=1)
        noisy.append(Evidence(**{**asdict(ev), "caption": caption, "candidates": list(ev.candidates)}))
    return noisy


def caption_answer(ev: Evidence) -> str | None:
    """What the caption answers to the question on easy-VQA (``None``: it names no single colour and shape)."""
    color, shape = caption_attributes(ev.caption)
    return answer_from_attributes(ev.question, ev.question_type, color, shape) if color and shape else None


# ---------------------------------------------------------------------------------------- targets
def _quoted(caption: str) -> str:
    return f'"{caption.strip().rstrip(".")}"' if caption.strip() else "(no caption)"


def _article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def explanation(ev: Evidence, answer: str, from_caption: str | None) -> str:
    """One true sentence saying which evidence supports ``answer`` (the caption, the top candidate, both)."""
    top = ev.candidates[0][0] if ev.candidates else None
    caption = _quoted(ev.caption)
    if from_caption == answer and top == answer:
        return f"The caption {caption} and the top candidate agree."
    if from_caption == answer:
        if top:
            return f"The caption {caption} contradicts the top candidate \"{top}\"."
        return f"The caption {caption} says so."
    if top == answer:
        if from_caption is not None:
            return f"The top candidate \"{top}\" is more reliable here than the caption {caption}."
        return f"\"{top}\" is the top candidate of the VQA model."
    return f"\"{answer}\" is among the VQA model's candidates."


def reasoning(ev: Evidence, answer: str) -> str | None:
    """One true sentence that works ``answer`` out from the evidence step by step, for a reply that gives it
    *before* the answer line (easy-VQA; ``None`` where the steps do not lead to ``answer``).

    The sentence first copies the top candidate's score as the prompt shows it, then decides right beside it: a
    sure one ("1.00") is kept; below that, it restates what the caption names, quotes the question's claim,
    negation included, and judges it ('names green and circle, so "no gray shape" is true'). A small LLM decides
    well on adjacent words, inside the weighted first line; the answer line then only maps true/false to yes/no.
    (Without the copied score, SmolLM2-135M followed the caption even beside a sure candidate: 6 of 1,863 sure
    top candidates kept on the 2,000-question sample, docs/results.md#llm-refiner.)
    """
    if not ev.candidates:
        return None
    top = ev.candidates[0][0]
    shown = f'The top candidate "{top}" scores {ev.top_score_shown}'
    if ev.top_is_sure:
        return f"{shown}, so the VQA model is sure." if top == answer else None
    color, shape = caption_attributes(ev.caption)
    if color is None or shape is None or caption_answer(ev) != answer:
        return None
    caption = f"{shown}, below {SURE_SHOWN}; the caption {_quoted(ev.caption)}"
    if ev.question_type == "color":
        return f"{caption} names the colour {color}."
    if ev.question_type == "shape":
        return f"{caption} names the shape {shape}."
    asked = named_attribute(ev.question)
    thing = f"{asked} shape" if asked in EASY_VQA_COLORS else asked
    claim = f"no {thing}" if _NEGATED.search(ev.question.lower()) else _article(thing)
    verdict = "true" if answer == "yes" else "false"
    return f"{caption} names {color} and {shape}, so \"{claim}\" is {verdict}."


def answer_sentence(question: str, question_type: str, answer: str) -> str | None:
    """How a person answers an easy-VQA question in one sentence, from the question and its answer alone ("No,
    there is no gray shape in the image.", "The red shape is a circle."); ``None`` for a question it cannot read.

    Nothing but the answer and the question's own words: the sentence cannot state a fact the evidence did not
    decide (a wrong caption's shape, say).
    """
    asked = named_attribute(question)
    if question_type == "color":
        thing = asked if asked in EASY_VQA_SHAPES else "shape"
        return f"The {thing} is {answer}."
    if question_type == "shape":
        thing = f"{asked} shape" if asked in EASY_VQA_COLORS else "shape"
        return f"The {thing} is {_article(answer)}."
    if answer not in ("yes", "no") or asked is None:
        return None
    thing = f"{asked} shape" if asked in EASY_VQA_COLORS else asked
    present = (answer == "yes") != bool(_NEGATED.search(question.lower()))
    return f"{answer.capitalize()}, there is {_article(thing) if present else 'no ' + thing} in the image."


def reasoned_sentence(ev: Evidence, answer: str) -> str | None:
    """The ``long`` reply on easy-VQA: the :func:`reasoning` sentence, then the answer as a person would write it
    (:func:`answer_sentence`), which the app shows as the answer and the parser reads
    (:func:`prompts.parser.split_long_reply`); ``None`` where the reasoning does not lead to ``answer``.

    The decision comes first, in the reasoning, as in ``short``: a sentence that gives yes or no first (the first
    refiner's "Yes, there is a red circle in the image.") decides before it has read the score and the caption,
    and SmolLM2-135M then turned right, unsure "no" answers into "yes" (docs/results.md#llm-refiner).
    """
    steps = reasoning(ev, answer)
    sentence = answer_sentence(ev.question, ev.question_type, answer)
    if steps is None or sentence is None:
        return None
    return f"{steps} {sentence}"


def generic_sentence(ev: Evidence, answer: str) -> str:
    """A true sentence that contains ``answer`` for data without known image contents."""
    if answer in ("yes", "no"):
        return "Yes, that is right." if answer == "yes" else "No, that is not the case."
    if ev.question.lower().startswith("how many"):
        return f"There are {answer}."
    return f"The answer is {answer}."


def target_reply(ev: Evidence, kind: str, attributes: dict[str, str] | None) -> str | None:
    """The reply the refiner should give for ``ev`` in a template of ``kind`` (``None``: leave the example out,
    because no evidence supports the true answer, so learning it would teach the model to guess, or, for ``long``
    on easy-VQA, because the reasoning does not lead to it, so the sentence would have to answer first)."""
    answer = ev.truth
    color, shape = (attributes or {}).get("color"), (attributes or {}).get("shape")
    from_caption = caption_answer(ev)
    top = ev.candidates[0][0] if ev.candidates else None
    if color and shape:  # easy-VQA: yes and no are always among the candidates; only the caption or the top-1 count
        supported = from_caption == answer or top == answer
    else:
        supported = (any(c == answer for c, _ in ev.candidates)
                     or re.search(rf"\b{re.escape(answer)}\b", ev.caption.lower()))
    if not supported:
        return None
    if kind == "long":
        return reasoned_sentence(ev, answer) if color and shape else generic_sentence(ev, answer)
    steps = reasoning(ev, answer) if color and shape else None
    if steps is not None:  # the explanation first: the answer then follows from the sentence just written
        return f"Explanation: {steps}\nAnswer: {answer}"
    return f"Answer: {answer}\nExplanation: {explanation(ev, answer, from_caption)}"


def is_unsure_negated(ev: Evidence) -> bool:
    """A yes/no question with a negation ("is there not …", "is no … present") beside a top candidate the prompt
    shows below 1.00: the chats whose reasoning quotes the claim, negation included."""
    return (ev.truth in ("yes", "no") and bool(ev.candidates) and not ev.top_is_sure
            and bool(_NEGATED.search(ev.question.lower())))


def solved_examples(ev: Evidence, bank: Sequence[dict], count: int, seed: int = 0) -> list[dict]:
    """``count`` solved examples for a few-shot chat about ``ev``, from ``bank`` (few-shot example dicts with
    ``image_id`` and ``question_type``), most alike first, as the app's nearest-neighbour choice gives them.

    The app ranks bank entries by the VQA model's fused image-and-question representation; on easy-VQA that is
    close to "same caption and same question wording first", which is what this ranks by (then the same caption,
    then the same wording, then the same question type), with a shuffle seeded by the question id inside each
    rank. Entries about the question's own image are never chosen, as in the app.
    """
    rng = random.Random(f"{seed}:{ev.question_id}")
    image = Path(ev.image).stem
    ranked: list[tuple[int, float, dict]] = []
    for example in bank:
        if example["image_id"] == image or example["question_type"] != ev.question_type:
            continue
        same_caption, same_question = example["caption"] == ev.caption, example["question"] == ev.question
        ranked.append((-(2 * same_caption + same_question), rng.random(), example))
    ranked.sort(key=lambda item: item[:2])
    return [example for _, _, example in ranked[:count]]


def build_examples(evidence: Sequence[Evidence], templates: Sequence[str], template_dir: str | Path | None,
                   attributes: dict[str, dict[str, str]] | None = None, bank: Sequence[dict] | None = None,
                   fewshot: Sequence[str] = (), n_examples: int = 8, seed: int = 0,
                   fewshot_negated: bool = False) -> list[dict]:
    """Chat examples ``{"messages", "reply", "template", ...}``, one per evidence row, the template dealt in turn.

    ``attributes`` maps image paths to their true ``color``/``shape`` (easy-VQA); rows whose true answer no
    evidence supports are left out (counted in the log). Chats of the templates named in ``fewshot`` start with
    1 to ``n_examples`` solved examples from ``bank`` (:func:`solved_examples`; how many is drawn per chat from
    ``seed`` and the question id), as the app's few-shot prompts do, and
    get the reply of their template's kind all the same: the examples inform, the evidence decides.

    ``fewshot_negated``: a negated yes/no question ("is there not a gray shape?") beside an unsure top candidate
    also gets a few-shot chat (of the first template in ``fewshot``), beside the chat of its dealt template. Its
    reply quotes the claim with its negation ("no gray shape") after up to ``n_examples`` solved examples of other
    images; dealt one chat in five, such chats were too few for that, and the adapter then dropped the negation
    in few-shot prompts (docs/results.md#llm-refiner).
    """
    wanted = sorted(set(fewshot) & set(templates))
    if wanted and not bank:
        raise ValueError(f"Few-shot chats ({', '.join(wanted)}) need a bank of solved examples.")
    examples, dropped = [], 0
    for i, ev in enumerate(evidence):
        dealt = templates[i % len(templates)]
        chat_templates = [dealt]
        if fewshot_negated and wanted and dealt not in fewshot and is_unsure_negated(ev):
            chat_templates.append(wanted[0])
        for template in chat_templates:
            reply = target_reply(ev, template_kind(template, template_dir), (attributes or {}).get(ev.image))
            if reply is None:
                dropped += template == dealt
                continue
            solved = None
            if template in fewshot:  # 1 to n_examples of them, so the adapter sees prompts of every length
                count = random.Random(f"{seed}:count:{ev.question_id}").randint(min(1, n_examples), n_examples)
                solved = solved_examples(ev, bank or (), count, seed)
            messages = build_messages(template, ev.caption, ev.question, ev.candidates, examples=solved,
                                      directory=template_dir)
            top = ev.candidates[0][0] if ev.candidates else None
            from_caption = caption_answer(ev)
            examples.append({"messages": messages, "reply": reply, "template": template, "source": ev.source,
                             "question_id": ev.question_id, "image": ev.image, "vqa_top1_correct": top == ev.truth,
                             "conflict": from_caption is not None and from_caption != top,
                             "top1_sure": ev.top_is_sure})
    if dropped:
        logger.info("Left out %d of %d questions: no evidence supports their true answer.", dropped, len(evidence))
    return examples


def select_chats(chats: Sequence[dict], easy_share: float | None, seed: int = 0,
                 per_confidence: bool = False) -> list[dict]:
    """Every chat whose caption and top candidate disagree, plus chats where they agree so that those make up
    ``easy_share`` of the result (``None``: keep all chats), in the original order.

    ``per_confidence`` applies the share to chats with a sure top candidate and to the others apart. With
    ``easy_share`` 0.5 and caption noise beside sure candidates, neither the shown score nor copying or flipping the
    top candidate then predicts a disagreement's answer; only reading the caption and the score together does.
    """
    if easy_share is None:
        return list(chats)
    groups = ([[i for i, c in enumerate(chats) if c["top1_sure"] == sure] for sure in (True, False)]
              if per_confidence else [list(range(len(chats)))])
    rng = random.Random(seed)
    keep: set[int] = set()
    for group in groups:
        hard = [i for i in group if chats[i]["conflict"]]
        easy = [i for i in group if not chats[i]["conflict"]]
        wanted = len(easy) if easy_share >= 1 else round(len(hard) * easy_share / (1 - easy_share))
        rng.shuffle(easy)
        keep |= set(hard) | set(easy[:wanted])
    return [c for i, c in enumerate(chats) if i in keep]
