"""Exception types of the vle package: errors a user can cause, with a message that says what to do."""


class VLEError(Exception):
    """Base class of the vle package's own errors."""


class VLEInputError(VLEError, ValueError):
    """An input given to a VLE processor or pipeline (question, annotation, options) is unusable."""


class ImageLoadError(VLEInputError):
    """An image could not be read or is unsafe to decode (damaged file, not an image, far too large)."""
