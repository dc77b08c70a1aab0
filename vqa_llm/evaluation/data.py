"""Which questions an evaluation run answers: the dataset and a fixed, seeded sample of it.

Sampling rule (:func:`sample_examples`): the dataset's questions are shuffled with
``random.Random(seed)`` and the first ``limit`` are kept, then put back in dataset order. The sample
therefore depends only on the dataset, ``limit`` and ``seed``: never on the batch size, the number of
processes or how often the run was interrupted. Samples of one seed are nested: the ``limit=100`` sample
is contained in the ``limit=1000`` one, so a run can be extended with a larger ``--limit`` and ``--resume``.

:func:`add_dataset_arguments` adds the flags that choose them (``--dataset`` ... ``--seed``) to the evaluator's
and the example-bank builder's parsers; :func:`examples_from_args` reads those flags back. The evaluator also offers
``--dataset vcr`` (:data:`VCR_DATASET`, read by :mod:`vqa_llm.evaluation.vcr` and sampled by the same rule).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from vle.vqa_data import VQAExample, load_easy_vqa, load_vqav2

from .errors import EvaluationError

#: the VQA datasets (the example-bank builder and the refiner's data take these)
VQA_DATASETS = ("easy-vqa", "vqav2")
#: visual commonsense reasoning files (evaluator only)
VCR_DATASET = "vcr"
#: every dataset the evaluator takes
DATASETS = (*VQA_DATASETS, VCR_DATASET)
T = TypeVar("T")


def load_dataset(
    dataset: str,
    *,
    split: str = "test",
    questions: str | Path | None = None,
    annotations: str | Path | None = None,
    images: str | Path | None = None,
    on_missing_image: Literal["error", "skip"] = "error",
) -> list[VQAExample]:
    """All questions of a dataset, in dataset order, each with its human answers.

    ``easy-vqa`` reads the installed package's ``split`` (``train`` or ``test``). ``vqav2`` reads
    VQAv2-format ``questions``/``annotations`` JSON files and the ``images`` folder (OK-VQA and
    A-OKVQA files in that format work too).

    Raises:
        EvaluationError: unknown dataset, missing vqav2 paths, or questions without human answers.
        vle.vqa_data.VQADataError: a file or folder is missing or malformed.
    """
    if dataset == "easy-vqa":
        examples = load_easy_vqa(split)  # type: ignore[arg-type]
    elif dataset == "vqav2":
        missing = [flag for flag, value in (("--questions", questions), ("--annotations", annotations),
                                            ("--images", images)) if not value]
        if missing:
            raise EvaluationError(f"--dataset vqav2 needs {', '.join(missing)}: pass the questions JSON, the "
                                  "annotations JSON (the answers to score against) and the images folder.")
        examples = load_vqav2(questions, annotations, images, on_missing_image=on_missing_image)
    else:
        raise EvaluationError(f"Unknown dataset {dataset!r}: use one of {', '.join(VQA_DATASETS)}.")
    if not examples:
        raise EvaluationError(f"The {dataset} data has no questions to evaluate (check the files, or the "
                              "images folder when missing images are skipped).")
    unscored = [example.question_id for example in examples if not example.answers]
    if unscored:
        raise EvaluationError(f"{len(unscored)} questions have no human answers (first: {unscored[0]}); "
                              "evaluation needs an annotated split (e.g. val), not test-dev/test.")
    return examples


def _question_id(example: Any) -> Any:
    return example.question_id


def sample_examples(examples: Sequence[T], limit: int | None, seed: int = 0, *,
                    key: Callable[[T], Any] = _question_id) -> list[T]:
    """The fixed sample of ``limit`` questions for ``seed``, in dataset order (all of them when ``limit``
    is None or not smaller than the dataset). See the module docstring for the rule. ``key``: a question's id
    (``question_id``; a VCR item's ``annot_id``).

    Raises:
        EvaluationError: ``limit`` is below 1, or two questions share an id.
    """
    ids = [key(example) for example in examples]
    if len(set(ids)) != len(ids):
        raise EvaluationError("The dataset has repeated question ids; each question needs its own id "
                              "(predictions are keyed by it).")
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit < 1:
        raise EvaluationError(f"--limit must be at least 1, got {limit}.")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[index] for index in sorted(order[:limit])]


def add_dataset_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, split: str,
                          datasets: Sequence[str] = VQA_DATASETS) -> None:
    """Add ``--dataset`` (one of ``datasets``), ``--split`` (default ``split``), the vqav2 (and vcr) paths,
    ``--limit`` and ``--seed`` to ``parser``."""
    vcr = VCR_DATASET in datasets
    parser.add_argument("--dataset", choices=datasets, default="easy-vqa", help="dataset (default: easy-vqa)")
    parser.add_argument("--split", default=split, help=f"easy-VQA split: train or test (default: {split})")
    parser.add_argument("--questions", help="vqav2: questions JSON (VQAv2 format; OK-VQA/A-OKVQA files too)")
    parser.add_argument("--annotations", help="vqav2: annotations JSON with the human answers"
                        + ("; vcr: the labelled annotations file (e.g. val.jsonl)" if vcr else ""))
    parser.add_argument("--images", help="vqav2: the images folder of that split (e.g. .../val2014, .../train2014)"
                        + ("; vcr: the folder that img_fn and metadata_fn are relative to" if vcr else ""))
    parser.add_argument("--skip-missing-images", action="store_true",
                        help="vqav2: leave out questions whose image is not in --images (default: stop)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use a fixed random sample of this many questions (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit sample (default: 0)")


def examples_from_args(args: argparse.Namespace) -> list[VQAExample]:
    """The sample that the :func:`add_dataset_arguments` flags in ``args`` choose (see :func:`sample_examples`)."""
    examples = load_dataset(args.dataset, split=args.split, questions=args.questions, annotations=args.annotations,
                            images=args.images, on_missing_image="skip" if args.skip_missing_images else "error")
    return sample_examples(examples, args.limit, args.seed)
