"""Exception types of the llm package."""


class LLMError(RuntimeError):
    """An LLM backend could not be loaded or could not answer; the message says what to do."""


class LLMTimeoutError(LLMError, TimeoutError):
    """Generation (or the HTTP request) took longer than the allowed ``timeout``."""


class LLMConnectionError(LLMError, ConnectionError):
    """An HTTP LLM endpoint could not be reached (connection refused, DNS failure, ...)."""


class PromptTooLongError(LLMError):
    """The prompt has more tokens than the model accepts; ``n_tokens`` and ``limit`` say by how much."""

    def __init__(self, message: str, n_tokens: int, limit: int):
        super().__init__(message)
        self.n_tokens = n_tokens
        self.limit = limit
