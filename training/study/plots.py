"""Figures of the cosine-faithfulness study (matplotlib, Agg; small palette PNGs).

* ``plot_heatmaps``: item-item cosine matrices (the paper's Figure 1 style);
* ``plot_training_curves``: per-epoch cluster AUC and validation Recall@10 per variant;
* ``plot_front``: cluster AUC against validation Recall@10 for every grid setting, with
  each variant's front, and the picks over seeds against test Recall@10;
* ``plot_genres``: MovieLens genre AUC, precision@10 and the random-``D`` Jaccard.

Every function reads the figures.json structures, so a figure shows exactly the numbers
the report prints.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from training.study.tuning import front

COLOURS = {"dot": "#1f77b4", "dot_ln": "#17becf", "cosine": "#d62728", "cosine_ln": "#ff7f0e"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, palette=None) -> None:
    """PNG through a 256-colour palette: ``palette`` (a list of RGB triples in [0, 1]) or
    an adaptive one; a fraction of the RGBA size."""
    from PIL import Image  # matplotlib's own image dependency

    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        rgb = image.convert("RGB")
        if palette is None:
            quantized = rgb.quantize(colors=128, dither=Image.Dither.NONE)
        else:
            fixed = Image.new("P", (1, 1))
            fixed.putpalette([round(255 * c) for colour in palette for c in colour])
            quantized = rgb.quantize(palette=fixed, dither=Image.Dither.NONE)
        quantized.save(path, format="PNG", optimize=True)


def heatmap_order(clusters: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Items sorted by cluster and, within a cluster, by descending popularity."""
    return np.lexsort((-np.asarray(popularity), np.asarray(clusters)))


def plot_heatmaps(path: Path, panels: list[tuple[str, np.ndarray]], order: np.ndarray,
                  columns: int, title: str) -> None:
    """One ``(p, p)`` matrix per panel, rows and columns in ``order``, on one shared
    colour scale [-1, 1] (the style of the paper's Figure 1)."""
    plt = _pyplot()
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.1 * columns, 3.3 * rows + 0.6),
                             squeeze=False, layout="constrained")
    image = None
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (name, matrix) in zip(axes.ravel(), panels, strict=False):
        image = ax.imshow(matrix[np.ix_(order, order)], cmap="RdBu_r", vmin=-1.0, vmax=1.0,
                          interpolation="antialiased")
        ax.set_title(name, fontsize=9)
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.5, label="item-item cosine similarity")
    fig.suptitle(title, fontsize=11)
    # The colour map plus greys for text keeps every shade of the colour bar.
    colours = [plt.get_cmap("RdBu_r")(i / 223)[:3] for i in range(224)]
    colours += [(g / 31,) * 3 for g in range(32)]
    _save(fig, path, colours)


def plot_training_curves(path: Path, variants: dict[str, dict]) -> None:
    """Per variant (columns): cluster AUC (top) and validation Recall@10 (bottom) after
    each epoch; grey: every grid setting (seed 0); colour: the validation pick (solid, one
    line per seed) and the highest-AUC setting near the best recall (dashed)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    keys = list(variants)
    fig, axes = plt.subplots(2, len(keys), figsize=(3.4 * len(keys), 6.2), squeeze=False,
                             sharey="row", layout="constrained")
    for column, key in enumerate(keys):
        v = variants[key]
        for row, metric in enumerate(("auc", "validation_recall@10")):
            ax = axes[row, column]
            for trial in v["grid"]:
                epochs = [e["epoch"] for e in trial["per_epoch"]]
                ax.plot(epochs, [e[metric] for e in trial["per_epoch"]], color="0.8", lw=0.8)
            for which, style in (("balanced", "--"), ("chosen", "-")):
                for trial in v["seed_runs"][which]:
                    epochs = [e["epoch"] for e in trial["per_epoch"]]
                    ax.plot(epochs, [e[metric] for e in trial["per_epoch"]], style,
                            color=COLOURS.get(key, "k"), lw=1.6, marker="o", ms=3,
                            label=f"{which}: {trial['label']}" if trial["seed"] == 0 else None)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(v["label"].replace("two-tower ", ""), fontsize=10)
                ax.axhline(0.98, color="k", lw=0.6, ls=":")
                ax.legend(fontsize=6.5, loc="lower left")
        axes[0, 0].set_ylabel("cluster AUC (item-item cosine)")
        axes[1, 0].set_ylabel("validation Recall@10")
    fig.suptitle("Per-epoch curves (grey: every grid setting, seed 0; colour: the picks, "
                 "every seed)", fontsize=11)
    _save(fig, path)


def plot_front(path: Path, variants: dict[str, dict], targets: dict) -> None:
    """Left: every grid setting's (validation Recall@10, cluster AUC) at its best epoch,
    each variant's Pareto front, picks marked. Right: the picks over seeds, test
    Recall@10 against AUC (mean +- sd), with the targets."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), layout="constrained")
    for key, v in variants.items():
        colour = COLOURS.get(key, "k")
        points = [(t["at_best_epoch"]["validation_recall@10"], t["at_best_epoch"]["auc"])
                  for t in v["grid"]]
        remedy = [bool(t["remedy"]) for t in v["grid"]]
        xs, ys = np.array(points).T
        left.scatter(xs[~np.array(remedy)], ys[~np.array(remedy)], s=18, color=colour,
                     alpha=0.6, label=v["label"].replace("two-tower ", ""))
        if any(remedy):
            left.scatter(xs[np.array(remedy)], ys[np.array(remedy)], s=40, color=colour,
                         marker="x", label=f"{v['label'].replace('two-tower ', '')}: remedies")
        kept = front(points)
        left.plot(xs[kept], ys[kept], color=colour, lw=1.2)
        labels = [t["label"] for t in v["grid"]]
        for which, marker in (("chosen", "*"), ("balanced", "D")):
            i = labels.index(v[which])
            left.scatter([xs[i]], [ys[i]], s=160 if marker == "*" else 60, marker=marker,
                         facecolor="none", edgecolor=colour, lw=1.5)
        for which, marker in (("chosen", "*"), ("balanced", "D")):
            s = v["seeds"][which]
            right.errorbar(s["test_recall@10"]["mean"], s["auc"]["mean"],
                           xerr=s["test_recall@10"]["sd"], yerr=s["auc"]["sd"], fmt=marker,
                           color=colour, ms=12 if marker == "*" else 7, capsize=3,
                           label=f"{v['label'].replace('two-tower ', '')}, {which}: "
                                 f"{s['setting']}")
    left.set_xlabel("validation Recall@10 (best epoch, seed 0)")
    left.set_ylabel("cluster AUC of the item-item cosine")
    left.set_title("Every grid setting; lines: each variant's front; star: validation pick; "
                   "diamond: highest AUC within 5% of the best recall", fontsize=8)
    left.legend(fontsize=7)
    for ax in (left, right):
        ax.axhline(targets.get("auc_target", 0.98), color="k", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
    if targets.get("dot_test_recall@10"):
        right.axvline(targets["dot_test_recall@10"]["mean"], color=COLOURS["dot"], lw=0.8,
                      ls=":")
    right.set_xlabel("test Recall@10 (mean ± sd over seeds)")
    right.set_ylabel("cluster AUC (mean ± sd over seeds)")
    right.set_title("The picks over seeds; dotted: AUC target and the dot pick's test recall",
                    fontsize=8)
    right.legend(fontsize=6.5)
    _save(fig, path)


def _short(key: str, model: dict) -> str:
    """A bar label: the benchmark row, or the pick and its setting."""
    label = model["label"]
    if key in ("dot", "cosine"):
        return f"{key}: {label.split(':')[0]}"
    return f"{key}: {label.split(': ', 1)[-1]}"


def plot_genres(path: Path, genres: dict) -> None:
    """MovieLens: genre AUC and precision@10 per model (trained: mean +- sd over seeds),
    and the per-item Jaccard of top-10 cosine neighbours under random ``D``."""
    plt = _pyplot()
    grid = genres.get("grid")
    fig, axes = plt.subplots(1, 4 if grid else 3, figsize=(20 if grid else 15, 4.6),
                             layout="constrained")
    names, colours, values = [], [], {"genre_auc": [], "precision@10": []}
    errors = {"genre_auc": [], "precision@10": []}
    for key, m in genres["models"].items():
        names.append(_short(key, m))
        colours.append(COLOURS["dot" if m.get("head", key) == "dot" else "cosine_ln"])
        for metric in values:
            values[metric].append(m["summary"][metric]["mean"])
            errors[metric].append(m["summary"][metric]["sd"])
    for r in genres["references"].values():
        if "genre_auc" in r:
            names.append(r["label"])
            colours.append("0.5")
            for metric in values:
                values[metric].append(r[metric])
                errors[metric].append(0.0)
    y = np.arange(len(names))
    for ax, metric, title in ((axes[0], "genre_auc", "genre AUC (pairs sharing a genre)"),
                              (axes[1], "precision@10", "precision@10 of cosine neighbours")):
        ax.barh(y, values[metric], xerr=errors[metric], color=colours, capsize=3)
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        lo = min(values[metric]) - 0.05
        ax.set_xlim(max(0.0, lo), min(1.0, max(values[metric]) + 0.08))
        ax.grid(axis="x", alpha=0.3)
        for i, (v, e) in enumerate(zip(values[metric], errors[metric], strict=True)):
            ax.text(v + e, i, f"  {v:.3f}", va="center", fontsize=7)
    axes[0].axvline(0.5, color="k", lw=0.6, ls=":")
    axes[1].axvline(genres["pairs_sharing_a_genre"], color="k", lw=0.6, ls=":")
    bins = np.linspace(0, 1, 21)
    for key, m in genres["models"].items():
        if key not in ("dot", "cosine"):  # the benchmark's rows; the picks are in the table
            continue
        run = m["runs"][0]["rescaling"]
        loss = (f"loss change {run['loss_change_min']:+.1e}..{run['loss_change_max']:+.1e}")
        axes[2].hist(run["per_item_jaccard@10"], bins=bins, alpha=0.6,
                     color=COLOURS["dot" if m.get("head", key) == "dot" else "cosine_ln"],
                     label=f"{key}: mean {run['mean_jaccard@10']:.2f}; score change "
                           f"{run['max_score_change']:.0e}; {loss}")
    axes[2].set_xlabel("Jaccard@10 of cosine neighbours, before / after D")
    axes[2].set_ylabel("items")
    axes[2].set_title(f"Random diagonal D ({genres['rescalings']['draws']} draws, seed 0 "
                      "models)", fontsize=10)
    axes[2].set_ylim(0, axes[2].get_ylim()[1] * 1.35)  # room for the legend
    axes[2].legend(fontsize=6.5, loc="upper right")
    if grid:
        ax = axes[3]
        for head in ("dot", "cosine"):
            points = [r for r in grid["settings"] if r["head"] == head]
            if not points:
                continue
            ax.scatter([r["at_best_epoch"]["validation_recall@10"] for r in points],
                       [r["at_best_epoch"]["genre_auc"] for r in points], s=22,
                       color=COLOURS["dot" if head == "dot" else "cosine_ln"], label=head)
        for picks in grid["picks"].values():
            r = grid["settings"][picks["chosen"]]["at_best_epoch"]
            ax.scatter([r["validation_recall@10"]], [r["genre_auc"]], s=90, facecolors="none",
                       edgecolors="k", linewidths=1.0)
        ax.set_xlabel("validation Recall@10 (tuning split)")
        ax.set_ylabel("genre AUC at the best epoch")
        ax.set_title("Grid per head (circled: validation picks)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{genres['data'].split(';')[0]}: {genres['items_evaluated']} items "
                 f"(>= {genres['min_train_count']} training interactions, a genre)",
                 fontsize=10)
    _save(fig, path)

