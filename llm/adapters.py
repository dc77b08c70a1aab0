"""LoRA adapters (``peft``) on a local chat LLM: checked, loaded on top of the base model and merged into its
weights (so generation costs what the base model costs), with the prompt templates the adapter was trained on.

An adapter folder is what ``peft``'s ``save_pretrained`` writes (``adapter_config.json`` +
``adapter_model.safetensors``), optionally with ``templates/`` holding the prompt templates of its training
(``NAME.system.txt`` + ``NAME.user.txt``): the pipeline then prompts the model exactly as it was trained.
"""

from __future__ import annotations

from pathlib import Path

from .errors import LLMError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
TEMPLATE_SUBDIR = "templates"


def check_adapter_dir(path: str | Path) -> Path:
    """``path`` as a Path when it is an adapter folder; LLMError naming what is missing otherwise."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise LLMError(f"No LLM adapter folder at {folder}: check the path, or pass --llm-adapter none.")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise LLMError(f"The LLM adapter folder {folder} has no {ADAPTER_CONFIG}: save it with peft's save_pretrained.")
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHTS):
        raise LLMError(f"The LLM adapter folder {folder} has no weights ({' or '.join(ADAPTER_WEIGHTS)}).")
    return folder


def apply_adapter(model, path: str | Path, merge: bool = True):
    """``model`` with the LoRA adapter at ``path`` loaded on top; merged into the weights unless ``merge`` is
    False (4/8-bit weights cannot take a merge, so quantised models keep the adapter as extra layers)."""
    from peft import PeftModel

    folder = check_adapter_dir(path)
    try:
        wrapped = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise LLMError(f"Could not load the LLM adapter {folder} onto this model: {exc}. An adapter only fits "
                       "the base model it was trained on (see its adapter_config.json).") from exc
    return wrapped.merge_and_unload() if merge else wrapped


def adapter_templates(path: str | Path) -> Path | None:
    """The adapter's own prompt-template folder, or ``None`` when it brings none."""
    folder = Path(path).expanduser() / TEMPLATE_SUBDIR
    return folder if folder.is_dir() and any(folder.glob("*.system.txt")) else None
