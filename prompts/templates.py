"""Finding and reading the prompt template files in ``prompts/templates/``.

A template ``NAME`` is the pair ``NAME.system.txt`` + ``NAME.user.txt`` (``string.Template`` syntax,
placeholders ``$caption``, ``$question``, ``$candidates``). ``templates.json`` says which reply
*kind* a template asks for: ``short`` ("Answer: ..." + "Explanation: ...") or ``long`` (one sentence);
templates missing from it are ``short``.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import PromptError

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
REPLY_KINDS = ("short", "long")
PLACEHOLDERS = ("caption", "question", "candidates")


@dataclass(frozen=True)
class PromptTemplate:
    """One template: its name, reply kind, and the system and user message texts."""

    name: str
    kind: str
    system: string.Template
    user: string.Template


def available_templates(directory: str | Path | None = None) -> list[str]:
    """Names of the templates that have both a system and a user file, sorted."""
    root = Path(directory) if directory is not None else TEMPLATE_DIR
    names = {p.name[: -len(".system.txt")] for p in root.glob("*.system.txt")}
    return sorted(n for n in names if (root / f"{n}.user.txt").is_file())


def _manifest(root: Path) -> dict:
    path = root / "templates.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PromptError(f"{path} is not valid JSON ({exc}); fix or delete it.") from exc


@lru_cache(maxsize=32)
def _load(name: str, root: Path) -> PromptTemplate:
    if name not in available_templates(root):
        raise PromptError(
            f"Unknown prompt template {name!r}; available: {', '.join(available_templates(root)) or 'none'}. "
            f"Add {name}.system.txt and {name}.user.txt to {root} to create it."
        )
    kind = _manifest(root).get(name, {}).get("kind", "short")
    if kind not in REPLY_KINDS:
        raise PromptError(f"Template {name!r} has kind {kind!r} in templates.json; use one of {REPLY_KINDS}.")
    system = string.Template((root / f"{name}.system.txt").read_text(encoding="utf-8").strip())
    user = string.Template((root / f"{name}.user.txt").read_text(encoding="utf-8").strip())
    for part, tmpl in (("system", system), ("user", user)):
        if not tmpl.is_valid():
            raise PromptError(f"{root / f'{name}.{part}.txt'} has a stray '$'; write '$$' for a literal dollar sign.")
        unknown = set(tmpl.get_identifiers()) - set(PLACEHOLDERS)
        if unknown:
            raise PromptError(
                f"{root / f'{name}.{part}.txt'} uses unknown placeholder(s) {sorted(unknown)}; "
                f"allowed: {', '.join('$' + p for p in PLACEHOLDERS)}."
            )
    if "question" not in user.get_identifiers():
        raise PromptError(f"{root / f'{name}.user.txt'} must contain $question.")
    return PromptTemplate(name=name, kind=kind, system=system, user=user)


def load_template(name: str, directory: str | Path | None = None) -> PromptTemplate:
    """Read (and cache) template ``name``; raise PromptError if it is missing or malformed."""
    return _load(name, Path(directory).resolve() if directory is not None else TEMPLATE_DIR)


def template_kind(name: str, directory: str | Path | None = None) -> str:
    """Reply kind of template ``name``: ``"short"`` or ``"long"`` (``"short"``/``"long"`` themselves work too)."""
    if name in REPLY_KINDS and name not in available_templates(directory):
        return name
    return load_template(name, directory).kind
