"""A GGUF file converted once: its de-quantised model and tokenizer saved as a transformers folder and loaded
from there at every later start.

transformers reads a GGUF file by de-quantising every tensor to fp32 and rebuilding the tokenizer from the
file's vocabulary and merges, at every load: ~15-20 s for the bundled 98 MB SmolLM2 file on 2 CPU cores. The
first load here saves the result with ``save_pretrained`` (``model.safetensors`` in fp32, config, generation
config, tokenizer with its chat template); later loads read that folder (memory-mapped safetensors), which
gives the same tensors, token ids and template. The cost is disk: fp32 weights take 4 bytes per parameter
(≈ 540 MB for SmolLM2-135M against the 98 MB GGUF).

Where: ``$VQA_LLM_CACHE/gguf/<key>/``; ``VQA_LLM_CACHE`` defaults to ``$XDG_CACHE_HOME/vqa_llm`` (else
``~/.cache/vqa_llm``); ``VQA_LLM_CACHE=off`` loads GGUF files directly every time.

Key: the first 16 hex digits of the SHA-256 of the file's content. Hashing reads the whole file (≈ 0.2-0.3 s for
98 MB), but it is right whatever happens to the file: a copy or a move keeps its cache, a file replaced in place
(same name, size, even mtime) gets a new one, and two files never share one. A key from path, size and mtime
would save those 0.3 s but serve stale weights after an in-place replacement that keeps the mtime (``cp -p``,
unpacking an archive), which is a silent wrong answer; a start that costs 0.3 s more is the better trade.

Safety: a folder counts only when its ``manifest.json`` (written last) names the full digest and every file it
lists is there with its recorded size, and the safetensors header reads. Anything else (an interrupted
conversion, a deleted or truncated file) is removed and converted again. A conversion writes into a temporary
folder next to the final one and renames it into place, so readers never see half a folder; when two processes
convert at once, the first rename wins and the other process uses its folder. A cache that cannot be written
(read-only home, full disk) logs a warning and falls back to loading the GGUF file directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "VQA_LLM_CACHE"
DISABLED = ("off", "0", "none", "false", "no")
MANIFEST = "manifest.json"
FORMAT = 1
KEY_DIGITS = 16
_STALE_TEMP_S = 6 * 3600  # temporary folders older than this belong to a conversion that died


class CacheWriteError(OSError):
    """The cache folder could not be written (as opposed to the GGUF file not being readable)."""


def cache_root(environ: Mapping[str, str] | None = None) -> Path | None:
    """The cache folder (``$VQA_LLM_CACHE``, else ``$XDG_CACHE_HOME/vqa_llm``, else ``~/.cache/vqa_llm``);
    ``None`` when ``VQA_LLM_CACHE`` turns caching off."""
    environ = os.environ if environ is None else environ
    value = environ.get(CACHE_ENV_VAR, "").strip()
    if value.lower() in DISABLED:
        return None
    if value:
        return Path(value).expanduser()
    return Path(environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "vqa_llm"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's content."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(folder: Path, digest: str) -> bool:
    """Whether ``folder`` holds a finished conversion of the GGUF file whose SHA-256 is ``digest``."""
    manifest = _manifest(folder)
    if manifest is None or manifest.get("format") != FORMAT or manifest.get("sha256") != digest:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return False
    for name, size in files.items():
        file = folder / name
        if not file.is_file() or file.stat().st_size != size:
            return False
    try:
        for file in folder.glob("*.safetensors"):
            with safe_open(str(file), framework="pt"):
                pass
    except (SafetensorError, OSError):
        return False
    return True


def _remove(folder: Path) -> None:
    """Delete ``folder``: renamed aside first (atomic), so nobody sees it half deleted under its own name."""
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        folder.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _clean_stale(parent: Path) -> None:
    now = time.time()
    for entry in parent.glob(".*-*"):
        try:
            if entry.is_dir() and now - entry.stat().st_mtime > _STALE_TEMP_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def _drop_gguf_mark(model: Any) -> None:
    """Forget that ``model`` came from a GGUF file. transformers marks it as quantised with ``gguf`` although
    its weights are plain de-quantised tensors, and then refuses ``save_pretrained``; the saved config would
    also send the next load looking for the GGUF file."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def convert(source: Path, target: Path, digest: str, **load_kwargs: Any) -> Path:
    """De-quantise the GGUF file ``source`` into the folder ``target`` (atomically); return ``target``.

    ``load_kwargs`` (``trust_remote_code``, ...) go to transformers. Errors reading the GGUF file propagate as
    transformers raises them; CacheWriteError when the cache cannot be written.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # fail before the slow part when the cache cannot even be created
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheWriteError(str(exc)) from exc
    started = time.perf_counter()
    logger.info("Converting %s once into %s (later starts load it from there) ...", source, target)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name, **load_kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32,
                                                 **load_kwargs)
    _drop_gguf_mark(model)
    try:
        _save(model, tokenizer, source, target, digest)
    except OSError as exc:
        raise CacheWriteError(str(exc)) from exc
    del model
    logger.info("Converted %s in %.1f s (%.0f MB on disk)", source.name, time.perf_counter() - started,
                sum(f.stat().st_size for f in target.iterdir()) / 1e6)
    return target


def _save(model: Any, tokenizer: Any, source: Path, target: Path, digest: str) -> None:
    """Write the converted model into a temporary folder beside ``target`` and rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(target.parent)
    temp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(temp)
        tokenizer.save_pretrained(temp)
        files = {f.name: f.stat().st_size for f in sorted(temp.iterdir()) if f.is_file()}
        manifest = {"format": FORMAT, "sha256": digest, "source": source.name, "source_size": source.stat().st_size,
                    "files": files}
        (temp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if target.exists() and not is_complete(target, digest):
            _remove(target)
        try:
            temp.rename(target)
        except OSError:
            if not is_complete(target, digest):  # not another process's finished folder: a real failure
                raise
            logger.info("Another process converted %s first; using its folder", source.name)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


def cached_folder(directory: str | Path, gguf_file: str, environ: Mapping[str, str] | None = None,
                  **load_kwargs: Any) -> Path | None:
    """The de-quantised folder of the local GGUF file ``directory/gguf_file``, converted on first use.

    ``None`` when there is nothing to cache or it cannot be: the file is not local (a Hub repository),
    caching is off (``VQA_LLM_CACHE=off``), or the cache cannot be written (logged); the caller then loads
    the GGUF file itself.
    """
    source = Path(directory).expanduser() / gguf_file
    root = cache_root(environ)
    if root is None or not source.is_file():
        return None
    digest = file_sha256(source)
    target = root / "gguf" / digest[:KEY_DIGITS]
    if is_complete(target, digest):
        return target
    if target.exists():
        logger.warning("The cached conversion %s of %s is incomplete or damaged; converting again", target,
                       source.name)
    try:
        return convert(source, target, digest, **load_kwargs)
    except CacheWriteError as exc:
        logger.warning("Could not write the GGUF cache %s (%s); loading %s directly (set %s to a writable "
                       "folder to start faster next time)", target, exc, source.name, CACHE_ENV_VAR)
        return None


def load_source(id_or_path: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What to pass to transformers' ``from_pretrained`` for ``id_or_path`` with ``kwargs``: for a local GGUF
    file (``kwargs["gguf_file"]``), its cached de-quantised folder without ``gguf_file``; otherwise both
    unchanged."""
    gguf_file = kwargs.get("gguf_file")
    if not gguf_file:
        return id_or_path, kwargs
    extra = {k: v for k, v in kwargs.items() if k not in ("gguf_file", "local_files_only")}
    folder = cached_folder(id_or_path, gguf_file, **extra)
    if folder is None:
        return id_or_path, kwargs
    return str(folder), {k: v for k, v in kwargs.items() if k != "gguf_file"}
