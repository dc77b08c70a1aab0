"""Exception types of the VQA+LLM orchestration; each message tells the user what to do. The ones
``training`` shares (:class:`VQALLMError`, :class:`BadSettingError`, :class:`ModelUnavailableError`) live in
:mod:`project_base.errors`.

The UI and the CLI show ``str(error)`` of any :class:`VQALLMError` as it is, without a traceback.
"""

from __future__ import annotations

from project_base.errors import BadSettingError, ModelUnavailableError, VQALLMError

__all__ = ["BadImageError", "BadQuestionError", "BadSettingError", "LLMFailure", "ModelUnavailableError",
           "VQALLMError", "user_error_types"]

class BadImageError(VQALLMError, ValueError):
    """The image cannot be read or is unsafe to decode; the message says which and how to fix it."""


class BadQuestionError(VQALLMError, ValueError):
    """The question is empty, too long or otherwise unusable."""


class LLMFailure(VQALLMError, RuntimeError):
    """The LLM backend failed or timed out (``timed_out``). The pipeline records it in the result instead."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


def user_error_types() -> tuple[type[Exception], ...]:
    """The exception types whose message is meant for the user as it is: this package's and the vle package's
    (its task pipelines raise those for bad inputs)."""
    from vle.errors import VLEError

    return VQALLMError, VLEError
