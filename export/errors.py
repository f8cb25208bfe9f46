"""The export's error type: bad input, failed recall or verification, one-line message."""

from tfrs_cosine.errors import TfrsCosineError


class ExportError(TfrsCosineError):
    """An export that cannot be made: the message names the problem on one line.

    Raised before anything is written, or after everything written was removed: a failed
    export never leaves a version folder behind and never touches existing versions.
    """
