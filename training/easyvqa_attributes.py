"""Shape and colour of each easy-VQA image, read from the questions asked about it and their answers (the data
set has no per-image labels). Used to caption the training images, to check the bundled models and to build the
refiner's evidence."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

from vle.vqa_data import EASY_VQA_COLORS, EASY_VQA_SHAPES, VQAExample

_NEGATION = re.compile(r"\b(not|no)\b")


def image_attributes(examples: Sequence[VQAExample]) -> dict[str, dict[str, str]]:
    """Shape and colour of each easy-VQA image (by image path), read from its questions and answers.

    "what shape/color" questions give them directly; a yes/no question naming a shape or colour gives it when
    the answer is yes to a plain question or no to a negated one.
    """
    found: dict[str, dict[str, str]] = defaultdict(dict)
    for example in examples:
        answer = example.answers[0]
        attributes = found[example.image_path]
        if example.question_type == "shape":
            attributes["shape"] = answer
        elif example.question_type == "color":
            attributes["color"] = answer
        else:
            present = (answer == "yes") != bool(_NEGATION.search(example.question))
            if not present:
                continue
            words = set(re.findall(r"[a-z]+", example.question))
            for shape in EASY_VQA_SHAPES & words:
                attributes["shape"] = shape
            for color in set(EASY_VQA_COLORS) & words:
                attributes["color"] = color
    return dict(found)
