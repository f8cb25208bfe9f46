"""The model card: ``assets.extra/model_card.json`` of every export, and its terminal summary.

It records what the export serves (head, temperature, K, m, d, the signatures of
``export.contract``), how its index was built and measured, where it came from (run,
dataset, config, metrics) and how it was verified. ``export.contract.sizes_from_card``
reads the fixed dimensions back from it; ``export.verify.read_card`` reads it.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from export import contract
from export.options import ExportOptions

FORMAT = "tfrs-cosine export 1"


def describe_model(model) -> dict[str, Any]:
    """The card's ``model`` fields of an in-memory ``TwoTowerModel`` (tower layout, head)."""
    return {
        "head": model.head.kind,
        "learn_temperature": bool(model.head.learn_temperature),
        "layer_norm": bool(model.user_tower.layer_norm),
        "embedding_dim": int(model.user_tower.embedding_dim),
        "user_tower_layers": list(model.user_tower.hidden_layers),
        "item_tower_layers": list(model.item_tower.hidden_layers),
    }


def model_card(
    tables,
    options: ExportOptions,
    index_card: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The card of an export of ``tables`` (``EmbeddingTables``) made with ``options``.

    ``extra`` adds fields (its ``model`` entry is merged into the card's ``model``).
    """
    sizes = options.sizes(tables.dim)
    model = {"head": tables.head, "temperature": tables.temperature, "output_dim": sizes["d"]}
    model.update(extra.get("model", {}))
    card = {
        "format": FORMAT,
        "exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": model,
        "k": sizes["K"],
        "top_dimensions": sizes["m"],
        "num_items": len(tables.items),
        "num_users": len(tables.users),
        "index": index_card,
        "signatures": list(contract.SIGNATURE_NAMES),
        "scores": "cosine similarity (without temperature)"
        if tables.head == "cosine"
        else "dot product (without temperature)",
        "cosine_is_training_objective": tables.head == "cosine",
        "versions": {
            "tensorflow": _package_version("tensorflow"),
            "tensorflow_recommenders": _package_version("tensorflow-recommenders"),
            "scann": _package_version("scann"),
            "python": sys.version.split()[0],
        },
    }
    for key, value in extra.items():
        if key != "model":
            card[key] = value
    return card


def write_card(export_dir: Path, card: dict[str, Any]) -> None:
    path = Path(export_dir) / contract.MODEL_CARD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=2, default=_json_default) + "\n")


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def summary(card: dict[str, Any]) -> str:
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
    if card.get("dataset"):
        lines.append(f"data: {card['dataset'].get('description', '?')}")
    if "verification" in card:
        lines.append(f"verified in a fresh process: {card['verification']['checks']} checks passed")
    lines.append(f"size: {card['size_bytes'] / 1e6:.1f} MB; exported in {card['export_seconds']:.1f}s")
    return "\n".join(lines)


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to the model card")
