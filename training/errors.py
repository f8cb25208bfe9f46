"""Bad input to training: the CLI prints it on one line and exits with code 2."""

from tfrs_cosine.errors import TfrsCosineError


class InputError(TfrsCosineError):
    """Bad input named by its message (config, data, run directory, flags)."""
