"""The example bank of the ``fewshot`` template: answered training questions and their retrieval keys.

A bank is a folder of three files:

* ``bank.json`` — what it holds: format version, ``source`` (dataset/split), the VQA model and captioner it
  was built with, ``top_k``, ``size``, the key names and widths, and how it was built.
* ``keys.safetensors`` — ``fused``: VLE's fused question+image representation (``pooler_output``) of every
  record, L2-normalised, float16 ``[size, 2 * hidden]``; optionally ``scores``: the VQA answer-score vector
  (L2-normalised, float16 ``[size, num_labels]``).
* ``records.jsonl`` — one JSON object per line, in key-row order: ``id`` (``source:question_id``), ``source``,
  ``question_id``, ``image_id``, ``image_hash`` (first 16 hex digits of the normalised image's SHA-256, as the
  pipeline computes it), ``question``, ``caption``, ``candidates`` (VLE's top-k ``[answer, score]``),
  ``answer`` (the most frequent human answer) and ``answers`` (the distinct human answers, most frequent first).

    >>> bank = ExampleBank.load("assets/models/easyvqa-example-bank")     # milliseconds
    >>> bank.example(0, top_k=5)["answer"]
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..errors import BadSettingError

FORMAT_VERSION = 1
META_FILE = "bank.json"
KEYS_FILE = "keys.safetensors"
RECORDS_FILE = "records.jsonl"
KEY_NAMES = ("fused", "scores")
IMAGE_HASH_CHARS = 16
BUILD_HINT = "build one with `python -m vqa_llm.example_bank build --dataset easy-vqa --out DIR`"


class ExampleBankError(BadSettingError):
    """An example bank folder is missing, incomplete or does not fit the VQA model in use."""


def short_image_hash(image_hash: str) -> str:
    """The prefix of an image's SHA-256 hex digest that bank records store."""
    return image_hash[:IMAGE_HASH_CHARS]


@dataclass
class ExampleBank:
    """Answered questions (``records``) with their retrieval ``keys`` (float16, one row per record).

    ``meta`` is the content of ``bank.json``; ``path`` the folder it was loaded from (``None`` when built in
    memory).
    """

    records: list[dict[str, Any]]
    keys: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        if "fused" not in self.keys:
            raise ExampleBankError("An example bank needs a 'fused' key tensor.")
        for name, tensor in self.keys.items():
            if tensor.ndim != 2 or tensor.shape[0] != len(self.records):
                raise ExampleBankError(f"Example bank key {name!r} has shape {tuple(tensor.shape)} for "
                                       f"{len(self.records)} records; rebuild the bank ({BUILD_HINT}).")
        self._by_image: dict[str, list[int]] = defaultdict(list)
        for index, record in enumerate(self.records):
            self._by_image[record.get("image_hash", "")].append(index)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def dim(self) -> int:
        """Width of the ``fused`` key (``2 * hidden`` of the VQA model the bank was built with)."""
        return int(self.keys["fused"].shape[1])

    @property
    def name(self) -> str:
        """How to refer to the bank in logs and records: its folder, else its source."""
        return str(self.path) if self.path is not None else str(self.meta.get("source", "in-memory bank"))

    def key(self, name: str = "fused") -> torch.Tensor:
        """The key tensor ``name`` (``fused`` or ``scores``); ExampleBankError when the bank has none."""
        if name not in self.keys:
            raise ExampleBankError(f"The example bank {self.name} has no {name!r} keys (it has "
                                   f"{', '.join(sorted(self.keys))}); rebuild it with that key.")
        return self.keys[name]

    def rows_of_image(self, image_hash: str) -> list[int]:
        """Indices of the records about the image with this SHA-256 (full digest or stored prefix)."""
        return list(self._by_image.get(short_image_hash(image_hash), ()))

    def example(self, index: int, top_k: int | None = None) -> dict[str, Any]:
        """Record ``index`` as a few-shot example for :func:`prompts.build_messages`: ``id``, ``caption``,
        ``question``, ``candidates`` (the first ``top_k``, as ``(answer, score)`` pairs) and ``answer``."""
        record = self.records[index]
        candidates = [(str(a), float(s)) for a, s in record["candidates"]]
        return {
            "id": record["id"],
            "caption": record.get("caption") or "",
            "question": record["question"],
            "candidates": candidates[:top_k] if top_k is not None else candidates,
            "answer": record["answer"],
        }

    # ------------------------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> Path:
        """Write the bank's three files into ``directory`` (created if missing); return the folder."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        keys = {name: tensor.to(torch.float16).contiguous() for name, tensor in self.keys.items()}
        # written like its sibling files (safetensors' save_file creates files readable by their owner only)
        (directory / KEYS_FILE).write_bytes(save(keys, metadata={"format": str(FORMAT_VERSION)}))
        with (directory / RECORDS_FILE).open("w", encoding="utf-8") as handle:
            for record in self.records:
                handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        meta = {**self.meta, "format": FORMAT_VERSION, "size": len(self.records),
                "keys": {name: int(tensor.shape[1]) for name, tensor in keys.items()}}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        self.meta, self.path = meta, directory
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "ExampleBank":
        """Read a bank folder written by :meth:`save`; ExampleBankError says what is wrong with it."""
        directory = Path(directory).expanduser()
        missing = [name for name in (META_FILE, KEYS_FILE, RECORDS_FILE) if not (directory / name).is_file()]
        if missing:
            what = "does not exist" if not directory.is_dir() else f"lacks {', '.join(missing)}"
            raise ExampleBankError(f"The example bank folder {directory} {what}: pass a folder made by the bank "
                                   f"builder, or {BUILD_HINT}.")
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
            keys = load_file(str(directory / KEYS_FILE))
            records = [json.loads(line) for line in
                       (directory / RECORDS_FILE).read_text(encoding="utf-8").splitlines() if line.strip()]
        except (json.JSONDecodeError, SafetensorError, UnicodeDecodeError) as exc:
            raise ExampleBankError(
                f"The example bank in {directory} is damaged ({exc}); rebuild it ({BUILD_HINT})."
            ) from None
        if meta.get("format") != FORMAT_VERSION:
            raise ExampleBankError(f"The example bank in {directory} has format {meta.get('format')!r}; this version "
                                   f"reads format {FORMAT_VERSION}. Rebuild it ({BUILD_HINT}).")
        return cls(records=records, keys=keys, meta=meta, path=directory)
