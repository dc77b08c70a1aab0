"""Shape scenes in the VCR layout: multiple-choice questions that need grounding, generated here (no download).

    python -m training.vcr_scenes --seed 0 --count 2000 --out runs/vcr-scenes --split train
    python -m training.vcr_scenes --seed 1 --count 500 --out runs/vcr-scenes            # val.jsonl

Writes ``OUT/SPLIT.jsonl`` and, under ``OUT/images/SPLIT/``, the image (PNG) and box metadata (JSON) each record
names, exactly as :func:`vle.vcr_data.load_vcr` reads VCR (``--annotations OUT/SPLIT.jsonl --images OUT/images``).
The same seed gives the same files, byte for byte.

Each image shows 2-4 shapes in easy-VQA's colours and kinds on a light background, their boxes apart. The
``objects`` are the shape kinds (``circle``, ``rectangle``, ``triangle``); texts refer to shapes by index, as VCR
does. Each item asks one question of one of these kinds (:data:`KINDS`), each needing the objects found and told
apart, and most a relation between them:

    color      What color is [n]?                          It is red.
    left_of    Which shape is left of [m]?                 [k].  /  No shape is left of [m].
    above      Which shape is above [m]?                   (the same, vertically)
    bigger     Which shape is bigger than [m]?             (by area, only when one is clearly bigger, or none is)
    same_color Do [n] and [m] have the same color?         Yes, both are red.  /  No, [n] is red and [m] is blue.
    count      How many other shapes have [n]'s color?     None. / One. / Two. / Three.

Four answers, one right; four rationales, one right: it states the visual fact that makes the answer right (the
colours, or the two shapes' positions or sizes). The wrong rationales state facts that are false for this image,
or true but beside the question.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from training.shape_scenes import COLOR_RGB, SHAPES

KINDS = ("color", "left_of", "above", "bigger", "same_color", "count")
IMAGE_SIZE = 192
#: shapes are drawn in boxes of these sides (pixels), at least GAP apart
MIN_SIDE, MAX_SIDE, GAP = 28, 64, 8
#: "bigger" only when the area differs by this factor at least, so the relation is plain to see
BIGGER_FACTOR = 1.5
COUNT_WORDS = ("None", "One", "Two", "Three")

Token = Any  # a word, or a list of object indices


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 (inclusive of x1/y1, exclusive of x2/y2)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


# ------------------------------------------------------------------------------------------- scenes
def place_shapes(rng: random.Random, count: int) -> list[Shape]:
    """``count`` shapes of random kind, colour and size whose boxes keep :data:`GAP` pixels apart."""
    shapes: list[Shape] = []
    while len(shapes) < count:
        width, height = rng.randint(MIN_SIDE, MAX_SIDE), rng.randint(MIN_SIDE, MAX_SIDE)
        x, y = rng.randint(2, IMAGE_SIZE - width - 2), rng.randint(2, IMAGE_SIZE - height - 2)
        box = (x, y, x + width, y + height)
        if all(_apart(box, other.box) for other in shapes):
            shapes.append(Shape(rng.choice(SHAPES), rng.choice(list(COLOR_RGB)), box))
    return shapes


def _apart(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]


def draw(shapes: Sequence[Shape], background: tuple[int, int, int]) -> Image.Image:
    """The scene: each shape filling its box (a circle or ellipse, a rectangle, a triangle pointing up)."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    pen = ImageDraw.Draw(image)
    for shape in shapes:
        x1, y1, x2, y2 = shape.box
        fill = COLOR_RGB[shape.color]
        if shape.kind == "circle":
            pen.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
        elif shape.kind == "rectangle":
            pen.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
        else:
            pen.polygon([((x1 + x2) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=fill)
    return image


# ----------------------------------------------------------------------------------------- questions
@dataclass
class Question:
    """A question with its right answer and rationale and the wrong ones to choose from."""

    question: list[Token]
    right: list[Token]
    wrong: list[list[Token]]
    because: list[Token]
    not_because: list[list[Token]]


def _colors_sentence(shapes: Sequence[Shape], indices: Sequence[int], color_of: Any) -> list[Token]:
    """``[0] is red , [2] is blue .`` for ``indices``, each shape's colour given by ``color_of(index)``."""
    tokens: list[Token] = []
    for position, i in enumerate(indices):
        tokens += ([","] if position else []) + [[i], "is", color_of(i)]
    return tokens + ["."]


def _relation(shapes: Sequence[Shape], kind: str, a: int, b: int) -> bool:
    """Whether shape ``a`` is left of / above / bigger than shape ``b`` (boxes apart on that axis)."""
    first, second = shapes[a].box, shapes[b].box
    if kind == "left_of":
        return first[2] <= second[0]
    if kind == "above":
        return first[3] <= second[1]
    return shapes[a].area >= BIGGER_FACTOR * shapes[b].area


RELATION_WORDS = {"left_of": ["left", "of"], "above": ["above"], "bigger": ["bigger", "than"]}


def ask(rng: random.Random, shapes: Sequence[Shape], kind: str) -> Question | None:
    """A question of ``kind`` about ``shapes``, or ``None`` when this scene cannot have one with a clear answer."""
    indices = list(range(len(shapes)))
    colors = [s.color for s in shapes]

    def fake_color(*not_these: str) -> str:
        return rng.choice([c for c in COLOR_RGB if c not in not_these])

    def kind_fact(i: int) -> list[Token]:  # true, and beside any question about colours or positions
        return [[i], "is", "a", shapes[i].kind]

    if kind == "color":
        n = rng.choice(indices)
        m = rng.choice([i for i in indices if i != n])
        wrong_colors = rng.sample([c for c in COLOR_RGB if c != colors[n]], 3)
        return Question(["What", "color", "is", [n], "?"], ["It", "is", colors[n], "."],
                        [["It", "is", c, "."] for c in wrong_colors],
                        [[n], "is", "filled", "with", colors[n], "."],
                        [[[n], "is", "filled", "with", wrong_colors[0], "."], [*kind_fact(n), "."],
                         [[m], "is", "filled", "with", fake_color(colors[m]), "."]])
    if kind in RELATION_WORDS:
        m = rng.choice(indices)
        holders = [i for i in indices if i != m and _relation(shapes, kind, i, m)]
        if len(holders) > 1:
            return None  # only questions with one right answer
        words = RELATION_WORDS[kind]
        others = [i for i in indices if i != m]
        none = ["No", "shape", "is", *words, [m], "."]
        right = [[holders[0]], "."] if holders else none
        options = [[[i], "."] for i in others] + [none, [[m], "itself", "."], ["Both", [m], "and", [others[0]], "."]]
        wrong = [option for option in options if option != right]
        rng.shuffle(wrong)
        if holders:
            because = [[holders[0]], "is", *words, [m], "."]
        else:
            because = ["No", "other", "shape", "is", *words, [m], "."]
        k = rng.choice([i for i in others if i not in holders] or others)
        false_fact = [[k], "is", *words, [m], "."] if k not in holders else [[k], "is", "not", *words, [m], "."]
        return Question(["Which", "shape", "is", *words, [m], "?"], right, wrong[:3], because,
                        [false_fact, [*kind_fact(m), "."], [[m], "is", *words, "itself", "."]])
    if kind == "same_color":
        n, m = rng.sample(indices, 2)
        cn, cm = colors[n], colors[m]
        fake = fake_color(cn, cm)
        if cn == cm:
            right = ["Yes", ",", "both", "are", cn, "."]
            wrong = [["Yes", ",", "both", "are", fake, "."], ["No", ",", [n], "is", cn, "and", [m], "is", fake, "."],
                     ["No", ",", [n], "is", fake, "and", [m], "is", cm, "."]]
        else:
            right = ["No", ",", [n], "is", cn, "and", [m], "is", cm, "."]
            wrong = [["Yes", ",", "both", "are", cn, "."], ["Yes", ",", "both", "are", cm, "."],
                     ["No", ",", [n], "is", cm, "and", [m], "is", cn, "."]]
        return Question(["Do", [n], "and", [m], "have", "the", "same", "color", "?"], right, wrong,
                        [[n], "is", cn, "and", [m], "is", cm, "."],
                        [[[n], "is", fake, "and", [m], "is", cm, "."],
                         [*kind_fact(n), "and", *kind_fact(m), "."],
                         [[n], "is", cn, "and", [m], "is", fake, "."]])
    n = rng.choice(indices)
    sharing = [i for i in indices if i != n and colors[i] == colors[n]]
    right = [COUNT_WORDS[len(sharing)], "."]
    fake = fake_color(colors[n])
    return Question(["How", "many", "other", "shapes", "have", "the", "color", "of", [n], "?"], right,
                    [[word, "."] for word in COUNT_WORDS if word != right[0]],
                    _colors_sentence(shapes, indices, lambda i: colors[i]),
                    [_colors_sentence(shapes, indices, lambda i: fake if colors[i] == colors[n] else colors[i]),
                     [*kind_fact(n), "."], ["There", "are", str(len(shapes)), "shapes", "."]])


def item(rng: random.Random, number: int, split: str) -> tuple[dict[str, Any], Image.Image, dict[str, Any]]:
    """One VCR record with its image and metadata (the kind of question cycles through :data:`KINDS`)."""
    while True:
        shapes = place_shapes(rng, rng.randint(2, 4))
        question = ask(rng, shapes, KINDS[number % len(KINDS)])
        if question is not None:
            break
    answers = [question.right, *question.wrong[:3]]
    rationales = [question.because, *question.not_because[:3]]
    answer_order, rationale_order = list(range(4)), list(range(4))
    rng.shuffle(answer_order)
    rng.shuffle(rationale_order)
    name = f"{split}/{number:05d}"
    record = {
        "annot_id": f"{split}-{number}", "objects": [s.kind for s in shapes],
        "img_fn": f"{name}.png", "metadata_fn": f"{name}.json", "question": question.question,
        "answer_choices": [answers[i] for i in answer_order], "answer_label": answer_order.index(0),
        "rationale_choices": [rationales[i] for i in rationale_order], "rationale_label": rationale_order.index(0),
        "question_kind": KINDS[number % len(KINDS)],
    }
    background = tuple(rng.randint(225, 255) for _ in range(3))
    metadata = {"boxes": [[*s.box, 1.0] for s in shapes], "width": IMAGE_SIZE, "height": IMAGE_SIZE,
                "names": [s.kind for s in shapes], "colors": [s.color for s in shapes]}
    return record, draw(shapes, background), metadata


def write_scenes(out: str | Path, seed: int, count: int, split: str = "val") -> Path:
    """Write ``count`` items of ``split`` under ``out`` (see the module docstring); the annotation file's path."""
    out = Path(out)
    annotations = out / f"{split}.jsonl"
    if annotations.exists():
        raise FileExistsError(f"{annotations} exists: choose another --out or --split, or delete it first.")
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"vcr-scenes {seed}")
    lines = []
    for number in range(count):
        record, image, metadata = item(rng, number, split)
        image.save(out / "images" / record["img_fn"], format="PNG", optimize=False)
        (out / "images" / record["metadata_fn"]).write_text(json.dumps(metadata) + "\n")
        lines.append(json.dumps(record))
    annotations.write_text("\n".join(lines) + "\n")
    return annotations


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.vcr_scenes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True, help="the same seed gives the same files")
    parser.add_argument("--count", type=int, required=True, help="number of items (one question per image)")
    parser.add_argument("--out", required=True, help="folder for SPLIT.jsonl and images/")
    parser.add_argument("--split", default="val", help="file name of the annotations (default: val)")
    args = parser.parse_args(argv)
    if args.count < 1 or not args.split.replace("_", "").replace("-", "").isalnum():
        parser.error("--count must be at least 1 and --split a plain name such as train or val")
    try:
        path = write_scenes(args.out, args.seed, args.count, args.split)
    except (FileExistsError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.count} items: {path} (images and metadata under {Path(args.out) / 'images'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
