"""The one error type for bad input: the CLI prints it on one line and exits with code 2."""


class InputError(Exception):
    """Bad input named by its message (config, data, run directory, flags)."""
