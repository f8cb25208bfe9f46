"""The export API: a run, a model or embedding tables -> ``models/NAME/<version>/``.

* ``export_savedmodel(run_dir, base, options)``: a complete run directory;
* ``export_model(model, users, items, base, options)``: an in-memory ``TwoTowerModel``;
* ``export_tables(tables, base, options)``: precomputed tower outputs.

Each writes a SavedModel TF Serving loads, with the signatures of ``export.contract``,
a top-K index (``export.index``) and a model card (``export.card``). The steps, each in
its own module: check the options and the target (``export.options``,
``export.versions``), compute the tables (``export.tables``), build and measure the
index, build the graph (``export.signatures``), save it in a staging folder, verify it
in a fresh process (``export.reference``, ``export.verify``), rename it into place.
A failure or an interrupt leaves no version folder and never touches existing ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from export import card as card_lib
from export import source
from export.index import prepare_indexes
from export.options import ExportOptions
from export.reference import run_verification
from export.signatures import build_module
from export.tables import EmbeddingTables
from export.versions import Staging, resolve_version
from tfrs_cosine import TwoTowerModel
from tfrs_cosine.heads import ScoringHead

Log = Callable[[str], None]
DEFAULT_OPTIONS = ExportOptions()


def export_tables(
    tables: EmbeddingTables,
    model_base_path: str | Path,
    options: ExportOptions = DEFAULT_OPTIONS,
    *,
    card: dict[str, Any] | None = None,
    head_layer: ScoringHead | None = None,
    log: Log = print,
) -> Path:
    """Exports precomputed tower outputs to ``model_base_path/<version>/``; returns that path.

    Args:
      tables: the tower outputs and vocabularies.
      model_base_path: TF Serving's model base path; created when missing.
      options: what to export (``ExportOptions``).
      card: extra model-card fields (the run's config, data and metrics).
      head_layer: the in-memory model's head for the verification reference (default: a
        head rebuilt from ``tables``).
      log: receives one line per phase.

    Raises:
      ExportError: bad options, an existing version, a base path that is a file, recall
        below ``options.min_recall`` or a failed verification; nothing is written then.
    """
    started = time.perf_counter()
    options.check_catalog(len(tables.items))
    base = Path(model_base_path)
    version = resolve_version(base, options.version)
    rng = np.random.default_rng(options.seed)
    log(
        f"export: {tables.head} head, {len(tables.users):,} users, {len(tables.items):,} items, "
        f"dim {tables.dim}, index {options.index}, K={options.k} -> {base / str(version)}"
    )
    indexes = prepare_indexes(tables, options, rng, log)
    with Staging(base, version, log) as staging:
        log(f"export: writing the SavedModel to {staging.path}")
        module, signatures = build_module(tables, indexes, options, staging.scratch)
        save_options = tf.saved_model.SaveOptions(
            namespace_whitelist=["Scann"] if options.index == "scann" else None
        )
        tf.saved_model.save(module, str(staging.saved_model), signatures=signatures, options=save_options)
        del module, signatures

        model_card = card_lib.model_card(tables, options, indexes.card, card or {})
        card_lib.write_card(staging.saved_model, model_card)
        if options.verify:
            model_card["verification"] = run_verification(
                tables, head_layer or tables.head_layer(), options, rng, indexes,
                staging.saved_model, staging.scratch, log,
            )
        model_card["export_seconds"] = round(time.perf_counter() - started, 2)
        model_card["size_bytes"] = card_lib.directory_bytes(staging.saved_model)
        card_lib.write_card(staging.saved_model, model_card)
        target = staging.publish()
    log(f"export: wrote {target} in {time.perf_counter() - started:.1f}s")
    return target


def export_model(
    model: TwoTowerModel,
    users: Sequence[str],
    items: Sequence[str],
    model_base_path: str | Path,
    options: ExportOptions = DEFAULT_OPTIONS,
    *,
    card: dict[str, Any] | None = None,
    log: Log = print,
) -> Path:
    """Exports an in-memory ``TwoTowerModel`` over its vocabularies; see ``export_tables``.

    The towers are run once over every id (and the out-of-vocabulary row); the export
    serves those outputs, so it answers exactly as the model does for id features.
    """
    options.check_catalog(len(items))
    resolve_version(Path(model_base_path), options.version)  # before the towers run
    tables = EmbeddingTables.from_model(model, users, items)
    card = dict(card or {})
    card["model"] = {**card_lib.describe_model(model), **card.get("model", {})}
    return export_tables(
        tables, model_base_path, options, card=card, head_layer=model.head, log=log
    )


def export_savedmodel(
    run_dir: str | Path,
    model_base_path: str | Path,
    options: ExportOptions = DEFAULT_OPTIONS,
    *,
    log: Log = print,
) -> Path:
    """Exports a complete run directory (``tfrs-cosine train``) as a new model version.

    Returns ``model_base_path/<version>``. Raises ``ExportError`` (nothing written) for a
    missing, unfinished or unreadable run, bad options, an existing version, a base path
    that is a file, recall below ``min_recall`` or a failed verification.
    """
    checked = source.check_run(run_dir)
    # Cheap checks first: nothing is loaded for a bad K, version or base path.
    options.check_catalog(checked.num_items)
    resolve_version(Path(model_base_path), options.version)
    log(f"export: loading {run_dir}")
    run = source.load_run(run_dir)
    return export_model(
        run.model, run.users, run.items, model_base_path, options,
        card=source.card_fields(run), log=log,
    )
