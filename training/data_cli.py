"""The ``tfrs-cosine data`` command group, shared by the modules that add to it."""

from __future__ import annotations

import argparse


def data_commands(subparsers) -> argparse._SubParsersAction:
    """The subcommands of ``data`` (created on first use): ``fetch``, ``write-shards``."""
    data = subparsers.choices.get("data") or subparsers.add_parser(
        "data", help="fetch, write and inspect datasets"
    )
    actions = [a for a in data._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0] if actions else data.add_subparsers(dest="data_command", required=True)
