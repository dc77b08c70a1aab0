"""VCR annotation -> VLE multiple-choice text inputs, with object tags, as the original VLE pipelines built them.

A VCR annotation writes text as token lists in which an object reference is a list of indices into
``objects`` (``["Does", [0], "live", "here", "?"]``). Each reference becomes a name (people get gender-neutral
names in turn, other objects their class name; several objects are joined with "and"), and every word piece of
it is tagged with the object's index. The question is joined with each answer (Q->A), or question + right
answer with each rationale (QA->R), separated by ``[SEP]`` and truncated to 80 tokens with the original's rules.

:func:`object_token_types` then numbers the objects of one choice 2, 3, ... (0 = text, 1 = image patches): the
numbers go to the text pieces that name an object and to the object's extra image token (the mean of the
patches under its box), so the model can align them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .errors import VLEInputError

#: names given to the ``person`` objects of an annotation, in order (the VCR convention VLE was trained with)
GENDER_NEUTRAL_NAMES = (
    "Casey", "Riley", "Jessie", "Jackie", "Avery", "Jaime", "Peyton", "Kerry", "Jody", "Kendall",
    "Payton", "Skyler", "Frankie", "Pat", "Quinn",
)
#: tag of a word piece that names no object
NO_OBJECT = -1
#: text length (with [CLS]/[SEP]) the VLE VCR models were fine-tuned with
MAX_TEXT_LEN = 80
#: first token type id used for objects (0 = text, 1 = image)
FIRST_OBJECT_TOKEN_TYPE = 2


class TaggedPiece(NamedTuple):
    """One word piece of a VCR text: the piece, its vocabulary id, and the object index it names (or -1)."""

    piece: str
    id: int
    tag: int


def object_names(objects: Sequence[str]) -> list[str]:
    """Display names of an annotation's objects: people get :data:`GENDER_NEUTRAL_NAMES` in turn."""
    names, people = [], 0
    for obj in objects:
        if obj == "person":
            names.append(GENDER_NEUTRAL_NAMES[people % len(GENDER_NEUTRAL_NAMES)])
            people += 1
        else:
            names.append(str(obj))
    return names


def tag_tokens(tokens: Sequence[Any], names: Sequence[str], tokenizer: Any) -> list[TaggedPiece]:
    """Tokenize a VCR token list into word pieces tagged with the object each one names."""
    words: list[tuple[str, int]] = []
    and_piece = tokenizer.tokenize(" and")[0]
    for position, token in enumerate(tokens):
        lead = "" if position == 0 else " "
        if isinstance(token, (list, tuple)):
            for k, obj in enumerate(token):
                if not isinstance(obj, int) or not 0 <= obj < len(names):
                    raise VLEInputError(
                        f"Object reference {obj!r} does not index the annotation's {len(names)} objects: fix the "
                        "annotation's question/answer/rationale token lists."
                    )
                if k > 0:
                    words.append((and_piece, NO_OBJECT))
                words.extend((piece, obj) for piece in tokenizer.tokenize((lead if k == 0 else " ") + names[obj]))
        else:
            token = str(token)
            if any(unicodedata.category(char) == "Co" for char in token):
                continue  # private-use characters: skipped, as in VLE's VCR data
            words.extend((piece, NO_OBJECT) for piece in tokenizer.tokenize(lead + token))
    ids = tokenizer.convert_tokens_to_ids([piece for piece, _ in words])
    return [TaggedPiece(piece, token_id, tag) for (piece, tag), token_id in zip(words, ids)]


def _sep(tokenizer: Any) -> TaggedPiece:
    return TaggedPiece(tokenizer.sep_token, tokenizer.sep_token_id, NO_OBJECT)


def _field(annotation: Mapping[str, Any], key: str) -> Any:
    if key not in annotation:
        raise VLEInputError(f"The VCR annotation has no {key!r}: pass a VCR-format annotation dict.")
    return annotation[key]


def q2a_texts(annotation: Mapping[str, Any], tokenizer: Any, max_len: int = MAX_TEXT_LEN) -> list[list[TaggedPiece]]:
    """One tagged text per answer choice: ``question [SEP] answer`` (without [CLS]/final [SEP])."""
    names = object_names(_field(annotation, "objects"))
    question = tag_tokens(_field(annotation, "question"), names, tokenizer)
    answers = [tag_tokens(answer, names, tokenizer) for answer in _choices(annotation, "answer_choices")]
    for answer in answers:  # the question is shortened in place, so later choices see the shortened one
        while len(question) + len(answer) > max_len - 3:
            (question if len(question) > len(answer) else answer).pop()
    return [question + [_sep(tokenizer)] + answer for answer in answers]


def qa2r_texts(annotation: Mapping[str, Any], tokenizer: Any, max_len: int = MAX_TEXT_LEN) -> list[list[TaggedPiece]]:
    """One tagged text per rationale choice: ``question [SEP] right answer [SEP] rationale``."""
    names = object_names(_field(annotation, "objects"))
    answers = _choices(annotation, "answer_choices")
    label = annotation.get("answer_label")
    if not isinstance(label, int) or not 0 <= label < len(answers):
        raise VLEInputError(
            "QA->R needs the annotation's 'answer_label' (index of the right answer in 'answer_choices')."
        )
    question = tag_tokens(_field(annotation, "question"), names, tokenizer)
    answer = tag_tokens(answers[label], names, tokenizer)
    rationales = [tag_tokens(r, names, tokenizer) for r in _choices(annotation, "rationale_choices")]
    for rationale in rationales:  # question and answer are shortened in place, as in the original
        while len(question) + len(answer) + len(rationale) > max_len - 4:
            if len(rationale) > len(question) + len(answer):
                rationale.pop()
            elif len(question) > 1:
                question.pop()
            else:
                answer.pop()
    sep = _sep(tokenizer)
    return [question + [sep] + answer + [sep] + rationale for rationale in rationales]


def _choices(annotation: Mapping[str, Any], key: str) -> list[Any]:
    choices = _field(annotation, key)
    if not isinstance(choices, (list, tuple)) or not choices:
        raise VLEInputError(f"The VCR annotation's {key!r} must be a non-empty list of token lists.")
    return list(choices)


def encode_tagged(text: Sequence[TaggedPiece], tokenizer: Any, max_len: int = MAX_TEXT_LEN) -> dict[str, list[int]]:
    """``[CLS] text [SEP]`` padded to ``max_len``: input_ids, attention_mask and token_type_ids (all zeros).

    Equal to what the original obtained by re-tokenizing the joined pieces with ``padding="max_length"``.
    """
    ids = [tokenizer.cls_token_id] + [piece.id for piece in text][: max_len - 2] + [tokenizer.sep_token_id]
    padding = max_len - len(ids)
    return {
        "input_ids": ids + [tokenizer.pad_token_id] * padding,
        "attention_mask": [1] * len(ids) + [0] * padding,
        "token_type_ids": [0] * max_len,
    }


def object_token_types(text: Sequence[TaggedPiece]) -> tuple[list[int], list[int], list[int]]:
    """Number the objects named in one choice's text.

    Returns ``(object indices, their token types, text token types)``: the objects in the order VLE's VCR code
    visits them, their token types (2, 3, ...), and one token type per position of ``[CLS] text [SEP]``
    (0 for plain text, the object's type for pieces naming it).
    """
    # The original collected the tags in a Python set and numbered them in the set's iteration order; a set
    # of small ints iterates in a fixed order, reproduced here so each object gets the type it was trained with.
    tags = {piece.tag for piece in text if piece.tag != NO_OBJECT}
    object_ids = list(tags)
    types = {tag: FIRST_OBJECT_TOKEN_TYPE + i for i, tag in enumerate(object_ids)}
    text_types = [0] + [types.get(piece.tag, 0) for piece in text] + [0]
    return object_ids, [types[tag] for tag in object_ids], text_types
