"""Prompt templates (plain text files in ``prompts/templates``), the chat-message builder and the answer parser.

>>> from prompts import build_messages, parse_answer
>>> messages = build_messages("short", "a red ball on grass", "what colour is the ball?",
...                           [("red", 0.91), ("orange", 0.05)])
>>> parse_answer("Answer: red\\nExplanation: the caption says so.", [("red", 0.91)]).answer
'red'
"""

from .builder import build_messages
from .errors import PromptError
from .examples import load_examples
from .fitting import build_fitted_messages
from .parser import ParsedAnswer, parse_answer
from .templates import available_templates, template_kind

__all__ = [
    "ParsedAnswer",
    "PromptError",
    "available_templates",
    "build_fitted_messages",
    "build_messages",
    "load_examples",
    "parse_answer",
    "template_kind",
]
