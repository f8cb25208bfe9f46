"""Errors of the training layer: the CLI prints them on one line (exit 2, or the
error's ``exit_code``)."""

from tfrs_cosine.errors import TfrsCosineError


class InputError(TfrsCosineError):
    """Bad input named by its message (config, data, run directory, flags)."""


class ClusterError(TfrsCosineError):
    """A task of the training cluster is unreachable or was lost (exit code 1: the
    input was fine, the run failed; relaunch the cluster to resume it)."""

    exit_code = 1
