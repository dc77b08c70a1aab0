"""The captioner package's exception type."""


class CaptionerError(RuntimeError):
    """A captioning model could not be loaded, trained or run; the message says what to do."""
