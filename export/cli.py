"""``tfrs-cosine export``: a complete run directory -> ``models/NAME/<version>/``.

    tfrs-cosine export RUN_DIR --model-base-path models/NAME [--version N]
        [--index scann|brute-force] [--k 100] [--min-recall 0.95] [--top-dimensions 5]

Registered by ``training.cli`` through ``register(subparsers)``; TensorFlow and the model
code load only when the subcommand runs. Bad input raises ``ExportError``, which the CLI
prints on one line with exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def summarize_card(card: dict[str, Any]) -> str:
    """A few lines of the model card for the terminal."""
    model, index = card["model"], card["index"]
    lines = [
        f"head: {model['head']} (temperature {model['temperature']:.4g}"
        + (", layer norm" if model.get("layer_norm") else "")
        + f"), embedding dim {model['output_dim']}",
        f"catalog: {card['num_items']:,} items, {card['num_users']:,} users; K={card['k']}",
        f"index: {index['type']}: {index['description']}",
        f"index recall@{card['k']}: {index['recall_at_k']:.4f} (users), "
        f"{index['similar_items_recall_at_k']:.4f} (similar items)",
        f"scores: {card['scores']}; cosine is the training objective: "
        f"{'yes' if card['cosine_is_training_objective'] else 'no (dot head)'}",
    ]
    if "dataset" in card and card["dataset"]:
        lines.append(f"data: {card['dataset'].get('description', '?')}")
    if "verification" in card:
        v = card["verification"]
        lines.append(f"verified in a fresh process: {v['checks']} checks passed")
    lines.append(f"size: {card['size_bytes'] / 1e6:.1f} MB; exported in {card['export_seconds']:.1f}s")
    return "\n".join(lines)


def _export(args: argparse.Namespace) -> int:
    from export.savedmodel import export_savedmodel, read_model_card

    path = export_savedmodel(
        args.run_dir,
        args.model_base_path,
        version=args.version,
        index=args.index,
        k=args.k,
        min_recall=args.min_recall,
        top_dimensions=args.top_dimensions,
    )
    print(f"exported {path}")
    print(summarize_card(read_model_card(path)))
    return 0


def register(subparsers) -> None:
    """Adds the ``export`` subcommand to ``tfrs-cosine``."""
    p = subparsers.add_parser(
        "export",
        help="export a trained run as a versioned SavedModel with a top-K index",
        description="Writes MODEL_BASE_PATH/<version>/ atomically (TF Serving's layout): "
        "a SavedModel with serving_default, explain, similar_items, embed_users and "
        "embed_items signatures, verified in a fresh process before it is published.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a complete run directory")
    p.add_argument(
        "--model-base-path", required=True, type=Path, metavar="PATH",
        help="the model's base path, e.g. models/NAME (version folders go inside)",
    )
    p.add_argument(
        "--version", type=int, default=None,
        help="version number (default: one more than the highest existing version)",
    )
    p.add_argument(
        "--index", choices=("scann", "brute-force"), default="scann",
        help="scann (needs the ScaNN ops) or brute-force (stock TF ops only); default scann",
    )
    p.add_argument("--k", type=int, default=100, help="items per query (default 100)")
    p.add_argument(
        "--min-recall", type=float, default=0.95,
        help="least recall@K of the ScaNN index against exact search (default 0.95)",
    )
    p.add_argument(
        "--top-dimensions", type=int, default=5,
        help="dimensions per explanation, capped at the embedding width (default 5)",
    )
    p.set_defaults(func=_export)
