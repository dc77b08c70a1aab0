"""A GGUF file in a Hugging Face Hub repo, named ``"REPO:FILE"``, fetched into the local Hub cache for llama.cpp.

It is the CPU form of a Hub LLM: the Qwen team publishes Qwen2.5 in GGUF repos beside the transformers ones
(``Qwen/Qwen2.5-1.5B-Instruct-GGUF:qwen2.5-1.5b-instruct-q4_k_m.gguf``). A large model comes split in parts
(``qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf``, ``...-00002-of-00002.gguf``): naming any part fetches every
part into the same snapshot folder, and llama.cpp loads the model from the first one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import LLMError

#: the part names llama.cpp's gguf-split writes (and the Hub's GGUF repos use)
SPLIT_PART = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
EXAMPLE = "Qwen/Qwen2.5-1.5B-Instruct-GGUF:qwen2.5-1.5b-instruct-q4_k_m.gguf"


@dataclass(frozen=True)
class HubGGUF:
    """``filename`` (a ``.gguf`` file, or one part of a split model) in the Hub model repo ``repo``."""

    repo: str
    filename: str

    @classmethod
    def parse(cls, spec: str) -> HubGGUF:
        """``"REPO:FILE"`` as a HubGGUF; LLMError showing the form for anything else."""
        repo, sep, filename = str(spec or "").strip().partition(":")
        owner, slash, name = repo.partition("/")
        if (not sep or not slash or not owner or not name or "/" in name or not filename.lower().endswith(".gguf")
                or filename.startswith("/") or ".." in filename.split("/")):
            raise LLMError(f"Bad Hub GGUF {spec!r}: write REPO:FILE, e.g. {EXAMPLE}.")
        return cls(repo, filename)

    def __str__(self) -> str:
        return f"{self.repo}:{self.filename}"

    @property
    def model_id(self) -> str:
        """The name a loaded model reports: ``REPO/FILE``, as transformers names a repo's GGUF file."""
        return f"{self.repo}/{self.first_part}"

    @property
    def parts(self) -> tuple[str, ...]:
        """Every file of the model, first part first: ``(filename,)`` unless it is one part of a split model."""
        folder, _, name = self.filename.rpartition("/")
        match = SPLIT_PART.match(name)
        if match is None or int(match["count"]) < 1:
            return (self.filename,)
        prefix = f"{folder}/" if folder else ""
        count = int(match["count"])
        return tuple(f"{prefix}{match['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1))

    @property
    def first_part(self) -> str:
        """The file llama.cpp loads the model from."""
        return self.parts[0]

    def fetch(self, local_files_only: bool = False) -> Path:
        """The local path of the model's first part, every part in the same snapshot folder of the Hub cache:
        read from the cache when there, else downloaded (never with ``local_files_only``). LLMError saying why
        and what to do when a part cannot be had."""
        from huggingface_hub import hf_hub_download

        paths = []
        for name in self.parts:
            try:
                paths.append(Path(hf_hub_download(self.repo, name, local_files_only=local_files_only)))
            except Exception as exc:  # huggingface_hub raises many types: offline, no such repo/file, HTTP, disk
                where = ("it is not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE or "
                         "an unreachable Hub)" if local_files_only else "the download failed")
                raise LLMError(f"Could not get {name} from the Hub repo {self.repo}: {where} "
                               f"({type(exc).__name__}: {exc}). Check the name, or connect to the Hub once to "
                               "download it.") from exc
        if len({path.parent for path in paths}) != 1:
            raise LLMError(f"The parts of {self} lie in different snapshot folders of the Hugging Face cache "
                           f"({', '.join(str(path) for path in paths)}), so llama.cpp cannot load them together: "
                           f"delete that repo's folder from the cache and download it again.")
        return paths[0]
