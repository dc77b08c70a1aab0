"""The evaluator's own error type."""

from __future__ import annotations

from ..errors import VQALLMError


class EvaluationError(VQALLMError, ValueError):
    """A run cannot start or continue (unscorable data, an output folder from another run, a corrupt
    predictions file); the message says what to do."""
