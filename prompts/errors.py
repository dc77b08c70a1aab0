"""The prompts package's exception type."""


class PromptError(ValueError):
    """A template, a few-shot example file or the inputs to a prompt are unusable."""
