"""``tfrs-cosine export``: a complete run directory -> ``models/NAME/<version>/``.

    tfrs-cosine export RUN_DIR --model-base-path models/NAME [--version N]
        [--index scann|brute-force] [--k 100] [--min-recall 0.95] [--top-dimensions 5]
        [--exclude-seen | --no-exclude-seen] [--max-seen 1000] [--items FILE]

Registered by ``training.cli`` through ``register(subparsers)``. The flags' defaults are
``ExportOptions()``'s. The options, the run directory and the target are checked before
TensorFlow loads, so bad input answers at once. Bad input raises ``ExportError``, which
the CLI prints on one line with exit code 2.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from export.contract import SIGNATURE_NAMES
from export.options import INDEX_KINDS, ExportOptions

DEFAULTS = ExportOptions()
# ExportOptions fields set by a flag of the same name (dashes for underscores).
FLAGS = ("version", "index", "k", "min_recall", "top_dimensions", "exclude_seen", "max_seen",
         "items")


def options_from(args: argparse.Namespace) -> ExportOptions:
    """The ``ExportOptions`` the parsed flags ask for (``ExportError`` when they are bad)."""
    return replace(DEFAULTS, **{name: getattr(args, name) for name in FLAGS})


def _progress(line: str) -> None:
    print(line, flush=True)  # a line per phase, as it happens, also through a pipe


def _export(args: argparse.Namespace) -> int:
    from export import source
    from export.card import summary
    from export.verify import read_card
    from export.versions import resolve_version

    options = options_from(args)
    checked = source.check_run(args.run_dir)
    options.check_model(checked.feature_model)
    if options.items is not None and not Path(options.items).exists():
        from export.errors import ExportError

        raise ExportError(f"--items: item table not found: {options.items}")
    options.check_catalog(checked.num_items)
    resolve_version(args.model_base_path, options.version)

    from export.savedmodel import export_savedmodel  # TensorFlow loads here
    from training.interrupts import signals_raise

    # SIGTERM (a scheduler's stop) unwinds like Ctrl-C: the staging folder is removed on
    # the way out and the CLI exits 143.
    with signals_raise():
        path = export_savedmodel(args.run_dir, args.model_base_path, options, log=_progress)
    print(f"exported {path}")
    print(summary(read_card(path)))
    return 0


def register(subparsers) -> None:
    """Adds the ``export`` subcommand to ``tfrs-cosine``."""
    p = subparsers.add_parser(
        "export",
        help="export a trained run as a versioned SavedModel with a top-K index",
        description="Writes MODEL_BASE_PATH/<version>/ atomically (TF Serving's layout): "
        f"a SavedModel with the signatures {', '.join(SIGNATURE_NAMES)}, "
        "verified in a fresh process before it is published.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a complete run directory")
    p.add_argument(
        "--model-base-path", required=True, type=Path, metavar="PATH",
        help="the model's base path, e.g. models/NAME (version folders go inside)",
    )
    p.add_argument(
        "--version", type=int, default=DEFAULTS.version,
        help="version number (default: one more than the highest existing version)",
    )
    p.add_argument(
        "--index", choices=INDEX_KINDS, default=DEFAULTS.index,
        help="scann (needs the ScaNN ops) or brute-force (stock TF ops only); "
        "default %(default)s",
    )
    p.add_argument(
        "--k", type=int, default=DEFAULTS.k, help="items per query (default %(default)s)"
    )
    p.add_argument(
        "--min-recall", type=float, default=DEFAULTS.min_recall,
        help="least recall@K of the ScaNN index against exact search (default %(default)s)",
    )
    p.add_argument(
        "--top-dimensions", type=int, default=DEFAULTS.top_dimensions,
        help="dimensions per explanation, capped at the embedding width (default %(default)s)",
    )
    p.add_argument(
        "--exclude-seen", action=argparse.BooleanOptionalAction, default=DEFAULTS.exclude_seen,
        help="never return a user's training items (recommend: nor the request's history); "
        "default on for feature models; id-only runs store no training items",
    )
    p.add_argument(
        "--max-seen", type=int, default=DEFAULTS.max_seen,
        help="training items stored per user for --exclude-seen, the most recent "
        "(default %(default)s)",
    )
    p.add_argument(
        "--items", metavar="FILE", default=DEFAULTS.items,
        help="an item table (data.item_features' format): index every item in it, new ones "
        "embedded by the item tower from their features (feature models)",
    )
    p.set_defaults(func=_export)
