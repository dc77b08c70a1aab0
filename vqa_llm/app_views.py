"""What the app's page shows, built from results: the header, the verdict mark, the Ask tab's values.

Functions of plain data to strings and dicts (no Gradio): model text is escaped wherever it lands in HTML or
Markdown, and no path of the server is named. The verdict's look is :data:`VERDICT_CSS` (classes, no inline
styles), which the page attaches to the verdict's ``gr.HTML``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from .profiles import Profile
from .sources import model_source, public_text
from .tasks import VLETasks, no_tasks_note

BUNDLED_NOTE = (
    "These are small offline models trained on easy-VQA-style images (one coloured shape, drawn on a plain "
    "background): ask about the shape or its colour, e.g. *What color is the triangle?* Photos get poor answers."
)
#: the verdict mark's look: one border colour per outcome
VERDICT_CSS = """
.vqa-verdict { padding: 6px 10px; border-radius: 6px; border: 2px solid #888; font-weight: 600; }
.vqa-verdict.failed { border-color: #d97706; }
.vqa-verdict.changed { border-color: #dc2626; }
.vqa-verdict.kept { border-color: #16a34a; }
.vqa-note { font-size: 0.85em; opacity: 0.8; }
"""


def candidates_label(candidates: Sequence[tuple[str, float]]) -> dict[str, float]:
    """VQA candidates as a ``gr.Label`` value (answer -> score)."""
    return {str(answer): float(score) for answer, score in candidates}


def format_messages(messages: Sequence[Mapping[str, str]]) -> str:
    """The chat messages as plain text, one ``[role]`` block each."""
    return "\n\n".join(f"[{m.get('role', '?')}]\n{m.get('content', '')}" for m in messages)


def final_answer_text(result: Any) -> str:
    """What the LLM answer box shows once the run is done."""
    if not result.llm_used:
        return ""
    text = result.llm_answer or ""
    if result.llm_explanation:
        text += f"\n\n{result.llm_explanation}"
    return text


def verdict_html(result: Any | None, llm_pending: bool = False) -> str:
    """A mark saying whether the LLM changed VLE's top-1 answer, and the result's notes (all model text
    escaped); its class (``pending``, ``failed``, ``off``, ``changed``, ``kept``) picks its colour."""
    def badge(text: str, outcome: str) -> str:
        return f'<div class="vqa-verdict {outcome}">{text}</div>'

    if result is None:
        return ""
    top1 = html.escape(result.vqa_answer)
    notes = "".join(f'<div class="vqa-note">Note: {html.escape(n)}</div>' for n in result.notes)
    if llm_pending:
        return badge(f"VLE says <code>{top1}</code>; waiting for the LLM ...", "pending") + notes
    if result.error:
        return badge(f"LLM failed, showing VLE's answer <code>{top1}</code>: {html.escape(result.error)}",
                     "failed") + notes
    if not result.llm_used:
        return badge(f"LLM off: VLE's answer is <code>{top1}</code>", "off") + notes
    llm = html.escape(result.scored_answer or "")  # long templates: the short answer of the sentence
    if result.changed:
        return badge(f"✎ LLM changed VLE's answer: <code>{top1}</code> → <code>{llm}</code>", "changed") + notes
    fallback = " (its reply named no usable answer)" if result.llm_fallback else ""
    return badge(f"✓ LLM kept VLE's answer <code>{top1}</code>{fallback}", "kept") + notes


def timings_dict(result: Any) -> dict[str, Any]:
    """Per-stage seconds (rounded) and whether the image came from the cache."""
    stages = {k: round(float(v), 3) for k, v in result.timings.items()}
    return {**stages, "cache_hit": bool(result.cache_hit)}


def relevance_grid(relevance: Any) -> dict[str, Any]:
    """Patch relevance (a ``[rows, cols]`` array) as the JSON the page and ``/pbc`` show (4 decimals)."""
    return {"rows": int(relevance.shape[0]), "cols": int(relevance.shape[1]), "max": round(float(relevance.max()), 4),
            "relevance": [[round(float(v), 4) for v in row] for row in relevance]}


def public_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result dict as the API returns it: models by name and origin, notes and error without server paths
    (a researcher's own records keep the full ids)."""
    return {**result, "models": {role: model_source(ident) for role, ident in result.get("models", {}).items()},
            "notes": [public_text(note) for note in result.get("notes", [])],
            "error": public_text(result["error"]) if result.get("error") else result.get("error")}


def md_plain(text: str) -> str:
    """Text safe inside Markdown (no HTML), quotes kept readable."""
    return html.escape(str(text), quote=False)


def _md_code(text: str) -> str:
    """Text as a Markdown code span (shown literally)."""
    return "`" + str(text).replace("`", "'") + "`"


def banner_markdown(profile: Profile, reason: str, models: Mapping[str, str | None], tasks: VLETasks) -> str:
    """The page header: profile, why it was chosen, the models in use by name and origin (no paths of this
    machine), and the bundled-model caveat."""
    shown = [f"{role}: {_md_code(model_source(ident))}" for role, ident in models.items() if ident]
    if tasks.source:
        shown.append(f"VLE pretraining: {_md_code(tasks.source)}")
    lines = [
        "# VLE VQA + LLM",
        f"**Profile:** {_md_code(profile.name)} — {md_plain(public_text(reason))}",
        "**Models:** " + " · ".join(shown),
    ]
    if profile.description:
        lines.append(md_plain(profile.description))
    if profile.is_bundled:
        lines.append(f"> {BUNDLED_NOTE}")
    return "\n\n".join(lines)



def tasks_note_markdown(tasks: VLETasks, profile: Profile) -> str:
    """The note shown in place of the matching, classification and relevance tabs when they are off."""
    return f"*{md_plain(tasks.note or no_tasks_note(profile))}*"
