"""The user-error types that ``vqa_llm`` and ``training`` share; each message tells the user what to do.

The UI and the CLIs show ``str(error)`` of any :class:`VQALLMError` as it is, without a traceback.
"""

from __future__ import annotations


class VQALLMError(Exception):
    """Base class of every error the project's application and training code raises on purpose."""


class BadSettingError(VQALLMError, ValueError):
    """A setting is unknown or out of range: profile name, prompt template, generation option, batch shape,
    output folder."""


class ModelUnavailableError(VQALLMError, RuntimeError):
    """A model could not be loaded (missing folder or file, corrupt weights, no network for a Hub id)."""
