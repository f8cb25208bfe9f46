"""The study's outputs: ``figures.json``, ``report.md`` and the figures, written atomically.

Every number in ``report.md`` is read from the ``figures`` dict that is also written to
``figures.json``; the observations are computed from it, never typed in.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from training.study import metrics, plots
from training.study.tuning import GRID_NOTES, front

SCORE_TOLERANCE_TEXT = "1e-04"

TABLE_COLUMNS = (
    # (header, getter); every value is also in figures.json
    ("head", lambda r: r["head"]),
    ("AUC", lambda r: f"{r['cluster_recovery']['auc']:.3f}"),
    ("AP", lambda r: f"{r['cluster_recovery']['average_precision']:.3f}"),
    ("ARI", lambda r: f"{r['cluster_recovery']['ari']:.3f}"),
    ("cos within / cross", lambda r: f"{r['geometry']['within']:.2f} / {r['geometry']['cross']:.2f}"),
    ("uniformity", lambda r: f"{r['geometry']['uniformity']:.2f}"),
    ("AUC under random D", lambda r: f"{r['arbitrariness']['auc_min']:.3f}-"
                                     f"{r['arbitrariness']['auc_max']:.3f}"),
    ("mean abs dcos under D", lambda r: f"{r['arbitrariness']['mean_abs_cosine_change']:.3f}"),
    ("score change under D", lambda r: f"{r['arbitrariness']['max_score_change']:.1e}"),
    ("objective change under D", lambda r: f"{r['arbitrariness']['max_objective_change']:.1e}"),
    ("Recall@10", lambda r: f"{r['held_out']['test']['recall@10']:.4f}"),
    ("NDCG@10", lambda r: f"{r['held_out']['test']['ndcg@10']:.4f}"),
    ("Spearman(norm, pop)", lambda r: f"{r['popularity']['spearman_norm_vs_train_count']:.3f}"),
    ("explanation tau", lambda r: f"{r['explanation']['kendall_tau']:.3f}"),
    ("top-10 overlap", lambda r: f"{r['explanation']['top_10_overlap']:.3f}"),
)
OUTPUTS = ("report.md", "figures.json", "item_cosine_heatmaps.png", "random_rescalings.png",
           "training_curves.png", "auc_recall_front.png", "movielens_genres.png")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)`` beside ``path``, then renamed over it (never half-written)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_outputs(out: Path, figures: dict, models: list, data, diagonals,
                  phase: Callable[[str], None]) -> None:
    """Writes every file of ``OUTPUTS`` into ``out`` (``figures.json`` first, ``report.md``
    last)."""
    from training.study.probes import item_embeddings, jsonable

    out.mkdir(parents=True, exist_ok=True)
    # The numbers first, the report last: a report.md is only there with its figures.
    atomic_write(out / "figures.json", lambda p: p.write_text(
        json.dumps(jsonable(figures), indent=1, allow_nan=False) + "\n"))
    order = plots.heatmap_order(data.item_cluster, data.item_popularity)
    vectors = {m.key: item_embeddings(m.model) for m in models}
    rows = figures["models"]
    panels = [("ground truth (clusters)", metrics.block_matrix(data.item_cluster))]
    panels += [(f"{m.label}\nAUC {rows[m.key]['cluster_recovery']['auc']:.3f}",
                metrics.cosine_matrix(vectors[m.key])) for m in models]
    size = figures["data"]["description"]
    atomic_write(out / "item_cosine_heatmaps.png", lambda p: plots.plot_heatmaps(
        p, panels, order, columns=4,
        title=f"Item-item cosine similarity, items sorted by cluster then popularity; {size}"))

    shown = [m for m in models if m.key in ("eq1_I", "dot", "dot_ln")]
    panels = []
    pairs = metrics.PairLabels(data.item_cluster)
    for m in shown:
        base = vectors[m.key]
        panels.append((f"{m.label}\nAUC {rows[m.key]['cluster_recovery']['auc']:.3f}",
                       metrics.cosine_matrix(base)))
        for j, d in enumerate(diagonals[:3]):
            moved = metrics.cosine_matrix(base / d)
            panels.append((f"random D #{j + 1}\nAUC {pairs.auc(moved):.3f}", moved))
    atomic_write(out / "random_rescalings.png", lambda p: plots.plot_heatmaps(
        p, panels, order, columns=4,
        title="Same scores, different cosines: item embeddings B D^-1 under random diagonal D"))

    variants = figures["two_tower"]["variants"]
    atomic_write(out / "training_curves.png",
                 lambda p: plots.plot_training_curves(p, variants))
    atomic_write(out / "auc_recall_front.png",
                 lambda p: plots.plot_front(p, variants, figures["two_tower"]["targets"]))
    atomic_write(out / "movielens_genres.png", lambda p: plots.plot_genres(p, figures["genres"]))
    atomic_write(out / "report.md", lambda p: p.write_text(render_report(figures)))
    phase(f"wrote {', '.join(OUTPUTS)} to {out}")


# ----------------------------------------------------------------------------------------
# report.md


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _pm(summary: dict[str, float], digits: int = 3) -> str:
    return f"{summary['mean']:.{digits}f} ± {summary['sd']:.{digits}f}"


def _range(summary: dict[str, float], digits: int = 3) -> str:
    return f"{summary['min']:.{digits}f}-{summary['max']:.{digits}f}"


def _main_table(figures: dict) -> list[str]:
    headers = ["model", *(name for name, _ in TABLE_COLUMNS)]
    rows = [[r["label"], *(get(r) for _, get in TABLE_COLUMNS)]
            for r in figures["models"].values()]
    return _table(headers, rows)


def describe_grid(grid: list[dict]) -> str:
    """The grid of figures.json's settings in words, per variant."""
    parts = []
    for variant in dict.fromkeys(g["variant"] for g in grid):
        points = [g for g in grid if g["variant"] == variant]
        plain = [g for g in points if not (g["center"] or g["uniformity_weight"]
                                           or g["min_temperature"])]
        lrs = sorted({g["learning_rate"] for g in plain})
        fixed = sorted({g["temperature"] for g in plain if not g["learn_temperature"]})
        learned = sorted({g["temperature"] for g in plain if g["learn_temperature"]})
        text = (f"{variant}: lr {', '.join(f'{v:g}' for v in lrs)} x T "
                f"{', '.join(f'{v:g}' for v in fixed)}")
        if learned:
            text += f" and learned T from {', '.join(f'{v:g}' for v in learned)}"
        remedies = len(points) - len(plain)
        if remedies:
            text += f", plus {remedies} remedies (see *The cone*)"
        parts.append(text)
    return "; ".join(parts)


def _reduced_note(settings: dict) -> str:
    """Says so when the run used a grid smaller than the full one (``--grid``)."""
    name = settings.get("grid_name", "full")
    if name not in GRID_NOTES:
        return ""
    return (f" (`--grid {name}`: {GRID_NOTES[name]}, to fit the run in its time budget on "
            "this shared machine)")


def _what_each_head_gives(figures: dict) -> list[str]:
    """One row per variant: faithfulness, clusters and recall of its validation pick (and
    of the highest-AUC setting near the best recall) over seeds."""
    rows = []
    models = figures["models"]
    for key, v in figures["two_tower"]["variants"].items():
        for which in ("chosen", "balanced"):
            s = v["seeds"][which]
            if which == "balanced" and s["setting"] == v["seeds"]["chosen"]["setting"]:
                continue
            model = models.get(key if which == "chosen" else f"{key}_balanced", {})
            tau = model.get("explanation", {}).get("kendall_tau")
            rows.append([
                v["label"], "validation recall" if which == "chosen"
                else "highest AUC within 5% of the best validation recall",
                s["setting"], "n/a" if tau is None else f"{tau:.3f}",
                f"{_pm(s['auc'])} ({_range(s['auc'])})",
                f"{_pm(s['test_recall@10'], 4)} ({_range(s['test_recall@10'], 4)})",
                f"{s['within']['mean']:.2f} / {s['cross']['mean']:.2f}",
            ])
    return _table(["model", "picked by", "setting", "explanation tau (seed 0)",
                   "cluster AUC, mean ± sd (range)", "test Recall@10, mean ± sd (range)",
                   "cos within / cross"], rows)


def _target_lines(figures: dict) -> list[str]:
    t = figures["two_tower"]["targets"]
    if not t:
        return []
    seeds = figures["two_tower"]["seeds"]
    dot = t["dot_test_recall@10"]
    lines = [f"Target: a cosine-head setting chosen on validation reaches cluster AUC >= "
             f"{t['auc_target']:.2f} with test Recall@10 >= the dot head's, over seeds "
             f"{seeds}. The dot head's validation pick: test Recall@10 {_pm(dot, 4)}.", ""]
    shown = set()
    for entry in t["cosine"].values():
        if (entry["variant"], entry["setting"]) in shown:
            continue
        shown.add((entry["variant"], entry["setting"]))
        verdict = ("met" if entry["auc_met"] and entry["recall_met"] else
                   "NOT met (" + ", ".join(
                       x for x, ok in (("AUC", entry["auc_met"]), ("recall", entry["recall_met"]))
                       if not ok) + " short)")
        lines.append(f"- {entry['variant']}, {entry['selection']} ({entry['setting']}): AUC "
                     f"{_pm(entry['auc'])}, test Recall@10 {_pm(entry['test_recall@10'], 4)}: "
                     f"{verdict}.")
    pick = t.get("validation_choice")
    if pick:
        lines += ["", f"The cosine variant with the best validation recall is `{pick}`: target "
                      f"**{'met' if t['met'] else 'NOT met'}** for its validation pick."]
    return lines


def _remedy_lines(figures: dict) -> list[str]:
    rows = []
    for r in figures["two_tower"]["remedies"]:
        w, wo = r["with"], r["without"]
        rows.append([r["variant"], r["remedy"], r["setting"], r["base"],
                     f"{wo['auc']:.3f} -> {w['auc']:.3f}",
                     f"{wo['within']:.2f} / {wo['cross']:.2f} -> {w['within']:.2f} / "
                     f"{w['cross']:.2f}",
                     f"{wo['uniformity']:.2f} -> {w['uniformity']:.2f}",
                     f"{wo['validation_recall@10']:.4f} -> {w['validation_recall@10']:.4f}",
                     f"{wo['temperature']:.3f} -> {w['temperature']:.3f}",
                     f"{wo['lowest_temperature']:.3f} -> {w['lowest_temperature']:.3f}"])
    return _table(["variant", "remedy", "setting", "compared with", "AUC",
                   "cos within / cross", "uniformity", "validation Recall@10",
                   "T at best epoch", "lowest T of any epoch"], rows)


def _grid_lines(figures: dict) -> list[str]:
    rows = []
    for key, v in figures["two_tower"]["variants"].items():
        on_front = set(front([(t["at_best_epoch"]["validation_recall@10"],
                               t["at_best_epoch"]["auc"]) for t in v["grid"]]))
        for k, t in enumerate(v["grid"]):
            b = t["at_best_epoch"]
            mark = ("validation pick" if t["label"] == v["chosen"] else "") + (
                ", highest AUC near the best" if t["label"] == v["balanced"] else "") + (
                ", front" if k in on_front else "")
            rows.append([key, t["label"], mark.strip(", "), f"{t['best_epoch']} of {t['epochs_run']}",
                         f"{b['validation_recall@10']:.4f}", f"{b['auc']:.3f}",
                         f"{b['within']:.2f} / {b['cross']:.2f}", f"{b['uniformity']:.2f}",
                         f"{b['temperature']:.3f}", f"{t['seconds']:.0f}"])
    return _table(["variant", "setting", "picked as / on the front", "best epoch", "validation Recall@10", "AUC",
                   "cos within / cross", "uniformity", "T at best epoch", "s"], rows)


def _capped_lines(figures: dict) -> list[str]:
    """The settings still improving when the epoch cap stopped them."""
    cap = figures["two_tower"]["epochs_max"]
    capped = [f"{key} {t['label']} ({t['at_best_epoch']['validation_recall@10']:.4f})"
              for key, v in figures["two_tower"]["variants"].items() for t in v["grid"]
              if t["best_epoch"] == cap]
    if not capped:
        return [f"No setting was still improving at the cap of {cap} epochs.", ""]
    return [f"Still improving at the cap of {cap} epochs (best validation Recall@10 in the "
            f"last epoch), so these may be under-trained: {'; '.join(capped)}.", ""]


def _genre_lines(g: dict) -> list[str]:
    rows = []
    for key, m in g["models"].items():
        s = m["summary"]
        rows.append([f"{m['label']} ({m.get('head', key)})", f"{len(m['runs'])} seeds",
                     _pm(s["genre_auc"]), _pm(s["precision@10"]),
                     _pm(s["test.recall@10"], 4), _pm(s["test.top_100_categorical_accuracy"], 4)])
    for r in g["references"].values():
        rows.append([r["label"], "closed form",
                     f"{r['genre_auc']:.3f}" if "genre_auc" in r else "-",
                     f"{r['precision@10']:.3f}" if "precision@10" in r else "-",
                     f"{r['test']['recall@10']:.4f}",
                     f"{r['test']['top_100_categorical_accuracy']:.4f}"])
    lines = _table(["model", "runs", "genre AUC", "precision@10 (shares a genre)",
                    "test Recall@10", "test top-100 accuracy"], rows)
    arb = []
    for key, m in g["models"].items():
        s = m["summary"]
        runs = [r["rescaling"] for r in m["runs"]]
        arb.append([f"{m['label']} ({m.get('head', key)})", _pm(s["rescaling.mean_jaccard@10"]),
                    f"{min(r['min_jaccard@10'] for r in runs):.3f}-"
                    f"{max(r['max_jaccard@10'] for r in runs):.3f}",
                    f"{max(r['max_score_change'] for r in runs):.1e}",
                    f"{min(r['loss_change_min'] for r in runs):+.1e} to "
                    f"{max(r['loss_change_max'] for r in runs):+.1e}",
                    f"{min(r['genre_auc_min'] for r in runs):.3f}-"
                    f"{max(r['genre_auc_max'] for r in runs):.3f}",
                    " / ".join(f"{v:.3f}" for v in m["jaccard@10_across_seeds"])])
    lines += ["", *_table(["model", "Jaccard@10 under D (mean ± sd over seeds)",
                           "per-draw range", "score change under D", "loss change under D",
                           "genre AUC under D", "Jaccard@10 between seeds"], arb)]
    return lines


def _rerun_lines(figures: dict) -> list[str]:
    r = figures.get("genres_rerun")
    if not r:
        return []
    return [
        "",
        f"The MovieLens part was rerun on its own afterwards: `{r['command']}` "
        f"({r['started']}, {r['seconds']:.0f} s wall time, {r['cpu_seconds'] / 60:.1f} min of "
        f"CPU time, 1-minute load average {r['load_average_1min'][0]:.1f} at the start and "
        f"{r['load_average_1min'][1]:.1f} at the end); its section below is from that rerun.",
    ]


def _genre_grid_lines(g: dict) -> list[str]:
    grid = g.get("grid")
    if not grid:
        return []
    chosen = {i: f"{head} validation pick" for head, p in grid["picks"].items()
              for i in [p["chosen"]]}
    for head, p in grid["picks"].items():
        text = f"{head} highest genre AUC near the best recall"
        chosen[p["balanced"]] = (chosen[p["balanced"]] + ", " + text
                                 if p["balanced"] in chosen else text)
    rows = [[r["head"], r["label"], chosen.get(i, ""),
             f"{r['best_epoch']} of {r['epochs_run']}",
             f"{r['at_best_epoch']['validation_recall@10']:.4f}",
             f"{r['at_best_epoch']['genre_auc']:.3f}",
             f"{r['at_best_epoch']['temperature']:.3f}", f"{r['seconds']:.0f}"]
            for i, r in enumerate(grid["settings"])]
    return [
        f"Each head explored (`training.study.genre_grid`): trained on a random 90% of the "
        f"training part ({grid['tuning_rows']} rows, seed 43, as the benchmark tunes) with "
        f"early stopping on the other 10%'s Recall@10 (lr {grid['learning_rate']:g}, at most "
        f"{grid['max_epochs']} epochs, patience {grid['patience']}, seed {grid['seed']}); the "
        "genre AUC is the probe's at the best epoch. Per head the setting with the best "
        "validation Recall@10 is the pick; the one with the highest genre AUC among those "
        f"within {100 * (1 - grid['near_best']):.0f}% of that recall is reported beside it "
        "(it uses the genres).",
        "",
        *_table(["head", "setting", "picked as", "best epoch", "validation Recall@10",
                 "genre AUC", "T at best epoch", "s"], rows),
        "",
    ]


def _genre_verdicts(g: dict) -> list[str]:
    """cosine >= dot genre AUC for each pairing the run measured (benchmark rows, picks)."""
    models = g["models"]
    lines = []
    for dot_key, cos_key, what in (("dot", "cosine", "the benchmark's rows (3g, 3e)"),
                                   ("dot_chosen", "cosine_chosen", "the validation picks"),
                                   ("dot_balanced", "cosine_balanced",
                                    "the highest genre AUC near each head's best recall")):
        if "balanced" in dot_key and dot_key not in models and cos_key not in models:
            continue  # both heads' balanced picks are their validation picks
        dot_key = dot_key if dot_key in models else "dot_chosen"
        cos_key = cos_key if cos_key in models else "cosine_chosen"
        if dot_key not in models or cos_key not in models:
            continue
        d, c = models[dot_key]["summary"], models[cos_key]["summary"]
        met = c["genre_auc"]["mean"] >= d["genre_auc"]["mean"]
        lines.append(
            f"- Genre AUC, {what}: cosine {_pm(c['genre_auc'])} vs dot {_pm(d['genre_auc'])} "
            f"(cosine >= dot: **{'met' if met else 'NOT met'}**); test Recall@10 cosine "
            f"{_pm(c['test.recall@10'], 4)} vs dot {_pm(d['test.recall@10'], 4)}.")
    return lines


def _genre_observations(g: dict) -> list[str]:
    models = g["models"]
    if "dot" not in models or "cosine" not in models:
        return []
    dot, cos = models["dot"]["summary"], models["cosine"]["summary"]
    ease = g["references"].get("ease", {})
    lines = [
        f"- A random D leaves the dot model's scores unchanged (relative change at most "
        f"{dot['rescaling.max_score_change']['max']:.1e}) and its training loss unchanged "
        f"({dot['rescaling.loss_change_min']['min']:+.1e} to "
        f"{dot['rescaling.loss_change_max']['max']:+.1e}), yet only "
        f"{dot['rescaling.mean_jaccard@10']['mean']:.2f} of an item's top-10 cosine "
        "neighbours survive it on average (Jaccard): the dot model's item-item cosines "
        "are one arbitrary choice among equally good ones.",
        f"- The same D on the cosine model changes its training loss by "
        f"{cos['rescaling.loss_change_min']['min']:+.1e} to "
        f"{cos['rescaling.loss_change_max']['max']:+.1e} (relative) and its scores by up to "
        f"{cos['rescaling.max_score_change']['max']:.1e}: D is not a symmetry of its "
        "objective, so its neighbour lists are the ones training chose.",
        f"- Genre AUC: cosine {_pm(cos['genre_auc'])} vs dot {_pm(dot['genre_auc'])} "
        f"(target cosine >= dot: **{'met' if cos['genre_auc']['mean'] >= dot['genre_auc']['mean'] else 'NOT met'}**); "
        f"precision@10 cosine {_pm(cos['precision@10'])} vs dot {_pm(dot['precision@10'])}"
        + (f"; EASE's item-item matrix {ease['genre_auc']:.3f} / {ease['precision@10']:.3f}"
           if "genre_auc" in ease else "")
        + f"; a random neighbour shares a genre with probability {g['pairs_sharing_a_genre']:.3f}.",
        *_genre_verdicts(g)[1:],
    ]
    return lines


def render_report(figures: dict) -> str:
    """``report.md``: what each head gives, setup, tables, observations, figures."""
    s, d, cf = figures["settings"], figures["data"], figures["closed_form"]
    rows = figures["models"]
    tt = figures["two_tower"]
    eq1 = [r for r in rows.values() if r["family"] == "Eq. 1"]
    eq1_auc = [r["cluster_recovery"]["auc"] for r in eq1]
    eq1_score = max(r["arbitrariness"]["max_score_change"] for r in eq1)
    dots = [r for r in rows.values() if r["head"] == "dot"]
    cos = [r for r in rows.values() if r["head"] == "cosine"]
    g = figures["genres"]
    timing = figures["timing"]
    n_grid = sum(len(v["grid"]) for v in tt["variants"].values())
    lines = [
        "# Cosine-faithfulness study",
        "",
        "Reproduces Steck, Ekanadham & Kallus (2024), *Is Cosine-Similarity of Embeddings "
        "Really About Similarity?* (arXiv:2403.05440), Section 4, adds this project's "
        "two-tower heads, explored over a grid per head, and tests the paper's point on "
        "MovieLens 100K with genres as the ground truth. Generated by `training/study`; "
        "every number below is in `figures.json`.",
        "",
        f"Command: `{figures['command']}`  ",
        f"Run: {figures['started']}, {figures['seconds']:.0f} s ({figures['seconds'] / 60:.1f} "
        f"min) wall time on this {timing['cpus']}-core machine (synthetic part "
        f"{timing['synthetic']:.0f} s, MovieLens part {timing['genres']:.0f} s; figures "
        f"written after), {timing['cpu_seconds'] / 60:.1f} min of CPU time; 1-minute load "
        f"average {timing['load_average_1min'][0]:.1f} at the start and "
        f"{timing['load_average_1min'][1]:.1f} at the end (other jobs share the machine) "
        f"({', '.join(f'{k} {v}' for k, v in figures['versions'].items())}).",
        *_rerun_lines(figures),
        "",
        "## What each head gives (paper's simulation, validation picks over seeds)",
        "",
        *_what_each_head_gives(figures),
        "",
        *_target_lines(figures),
        "",
        "## Setup",
        "",
        f"- Data: `training.data.generate_synthetic` ({d['description']}): "
        f"{d['interactions']} interactions, {d['mean_items_per_user']:.1f} items per user; "
        f"cluster sizes {d['cluster_sizes']}. Random split (split seed {s['split_seed']}): "
        f"train {d['train']}, validation {d['validation']}, test {d['test']}.",
        f"- Closed-form models fitted on the training matrix X (rank {s['dim']}); "
        f"{cf['sigma_convention']}. Eq. 1 with lambda = {s['lambda1']:g} under D = I, "
        "dMat(g)^1/2, dMat(g)^-1/2 and dMat(sigma^-1/2) (g = 1/(1 + lambda/sigma^2)); Eq. 2 "
        f"with lambda = {s['lambda2']:g} and with lambda picked by validation Recall@10 from "
        f"{list(cf['eq2_lambda_grid'])} (picked {cf['eq2_lambda_tuned']:g}). Non-zero "
        "dimensions of Eq. 2: "
        + ", ".join(f"{v['nonzero_dims']} at lambda {k}" for k, v in cf["eq2_lambda_grid"].items())
        + f". Top singular values: {', '.join(f'{v:.1f}' for v in d['singular_values'][:8])}.",
        f"- Two-tower models (`training.train.fit`): id towers, dim {s['dim']}, "
        f"{s['optimizer']}, batch {s['batch_size']}, at most {tt['epochs_max']} epochs, early "
        f"stopping on validation Recall@10 (patience {tt['patience']}, best weights restored), "
        "in-batch softmax with logQ correction, accidental hits removed. Grid "
        f"(`training.study.tuning`, {n_grid} settings at seed {tt['seeds'][0]}): "
        f"{describe_grid(s['grid'])}{_reduced_note(s)}. After every epoch: validation "
        "Recall@10, cluster AUC and "
        "geometry of the item embeddings. Per variant the setting with the best validation "
        "Recall@10 is the pick (the row named after the variant below); the setting with "
        f"the highest AUC among those within {100 * (1 - tt['near_best']):.0f}% of that best "
        "recall is reported beside it (rows marked *highest AUC near the best recall*; this "
        f"choice uses the true clusters). Both are retrained with seeds {tt['seeds']}; the "
        "data and split stay fixed.",
        "- Served as `TwoTowerModel`s: the closed-form models with a dot head and X A, B as "
        "tower tables, so evaluation, explanation and re-scaling run through the same code.",
        f"- Metrics: AUC / AP of the item-item cosine for same- vs cross-cluster pairs; ARI "
        f"of k-means (C = {s['clusters']}, 10 restarts, seed {s['seed']}) on normalized item "
        "embeddings; anisotropy: mean cosine of same-cluster (within) and cross-cluster "
        "pairs, and uniformity log mean exp(-2 |z_i - z_j|^2) over unit-norm item pairs "
        "(Wang & Isola 2020; 0 for one point, about -4 when spread evenly). Random D: "
        f"{figures['rescalings']['draws']} draws, {figures['rescalings']['distribution']}; "
        "users u D, items i D^-1 (for trained towers: the last layer's weights re-scaled); "
        "score change = max |s_D - s| / max |s| over "
        f"{figures['explanation_users']['count']} users x catalog (asserted < "
        f"{SCORE_TOLERANCE_TEXT} for dot heads); objective change = relative change of the "
        "model's training objective (closed form, or the in-batch softmax loss on "
        f"{s['loss_batches']} fixed training batches). Recall@10 / NDCG@10 on the test "
        "split, training items excluded (`training.evaluation.evaluate_model`). Spearman "
        "between item embedding norm and training count. Explanation: for "
        f"{figures['explanation_users']['count']} users (seed "
        f"{figures['explanation_users']['seed']}), Kendall tau-b and top-10 overlap between "
        "the served ranking of the whole catalog (prepared query . prepared candidate) and "
        "the ranking by the `cosine` of `tfrs_cosine.explain`.",
        "",
        "## Results (seed 0 models)",
        "",
        *_main_table(figures),
        "",
        "## Observations (computed from the table)",
        "",
        f"- Eq. 1: the {len(eq1)} re-scalings give identical scores X A B^T (max relative "
        f"change under D {eq1_score:.1e}, objective change "
        f"{max(r['arbitrariness']['max_objective_change'] for r in eq1):.1e}) yet item-item "
        f"AUCs from {min(eq1_auc):.3f} to {max(eq1_auc):.3f}.",
        f"- Dot-scored models (closed form and two-tower): scores move at most "
        f"{max(r['arbitrariness']['max_score_change'] for r in dots):.1e} under random D while "
        "the mean item-item cosine moves by "
        f"{min(r['arbitrariness']['mean_abs_cosine_change'] for r in dots):.3f}-"
        f"{max(r['arbitrariness']['mean_abs_cosine_change'] for r in dots):.3f}; the "
        "explanation's cosine ranks the catalog with Kendall tau "
        f"{min(r['explanation']['kendall_tau'] for r in dots):.3f}-"
        f"{max(r['explanation']['kendall_tau'] for r in dots):.3f} against the served ranking.",
    ]
    eq2 = {k: r for k, r in rows.items() if r["family"] == "Eq. 2"}
    paper_eq2 = eq2.get("eq2_paper")
    if paper_eq2 is not None:
        text = (f"- Eq. 2 at lambda = {s['lambda2']:g}: only "
                f"{paper_eq2['settings']['nonzero_dims']} of {s['dim']} singular values of the "
                f"training matrix exceed lambda, so its item embeddings have that rank (AUC "
                f"{paper_eq2['cluster_recovery']['auc']:.3f}).")
        if "eq2_tuned" in eq2:
            t = eq2["eq2_tuned"]
            text += (f" At the validation-picked lambda = {t['settings']['lambda']:g} it keeps "
                     f"{t['settings']['nonzero_dims']} dimensions: AUC "
                     f"{t['cluster_recovery']['auc']:.3f}, Recall@10 "
                     f"{t['held_out']['test']['recall@10']:.4f}. A re-scaling D changes its "
                     f"objective (by {t['arbitrariness']['max_objective_change']:.1e} or more), "
                     "so its cosines are pinned down, as Section 2.3 says.")
        lines.append(text)
    if cos:
        lines.append(
            f"- Cosine heads: the explanation ranking equals the served one (tau "
            f"{min(r['explanation']['kendall_tau'] for r in cos):.4f}, largest inversion "
            f"{max(r['explanation']['max_inversion'] for r in cos):.1e}, float32 noise); a "
            "re-scaling D is not a symmetry of their objective (loss change "
            f"{min(r['arbitrariness']['max_objective_change'] for r in cos):.1e} or more).")
    lines += [
        "",
        "## Exploring each head",
        "",
        "![per-epoch curves](training_curves.png)",
        "",
        "![AUC-recall front](auc_recall_front.png)",
        "",
        *_capped_lines(figures),
        "<details><summary>every grid setting (seed 0, at its best epoch)</summary>",
        "",
        *_grid_lines(figures),
        "",
        "</details>",
        "",
        "## The cone",
        "",
        "Anisotropy of every model is in the results table (cos within / cross, "
        "uniformity). Remedies that are part of the trained model (so the served ranking "
        "and the explanation stay the same function): `model.center` (the towers subtract "
        "their moving mean output before the head normalizes), `model.uniformity_weight` "
        "(Wang & Isola's uniformity of the batch's user and item embeddings added to the "
        "loss), `model.min_temperature` (a floor for a learned temperature). The ones this "
        "run's grid tried, each against the same setting without it (seed 0, best epoch):",
        "",
        *_remedy_lines(figures),
        "",
        "## MovieLens 100K: genres as the ground truth",
        "",
        f"Data: {g['data']}. Protocol A of the MovieLens benchmark (the TFRS tutorial's "
        f"split): train {g['train']}, test {g['test']}. Items evaluated: "
        f"{g['items_evaluated']} of {g['items']} (at least {g['min_train_count']} training "
        "interactions and a known genre); a pair is positive when the two share at least "
        f"one of the {len(g['genres'])} genres ({g['pairs_sharing_a_genre']:.3f} of pairs "
        "do). Trained models: the benchmark's best dot and best cosine settings "
        "(BENCHMARKS.md rows 3g and 3e, their validation-picked epoch counts), and each "
        "head's picks from the grid below (at their best epoch counts), trained on the "
        "whole training part with seeds "
        f"{[r['seed'] for r in next(iter(g['models'].values()))['runs']]}; similarity = "
        "cosine of the item tower outputs (what the explanation reports). References: "
        "EASE (lambda picked on a random 10% of the training part), item-KNN cosine, "
        "PureSVD (rank picked the same way), each item-item matrix symmetrized, "
        "`training.baselines`. Random D: "
        f"{g['rescalings']['draws']} draws, log2 d_j ~ U(-{g['rescalings']['octaves']:g}, "
        f"{g['rescalings']['octaves']:g}) (seed {g['rescalings']['seed']}), applied to the "
        "towers' last layer as in the synthetic part; loss on "
        f"{g['rescalings']['loss_batches']} fixed training batches; scores over all "
        f"{g['rescalings']['users_scored']} users x catalog.",
        "",
        *_genre_grid_lines(g),
        *_genre_lines(g),
        "",
        *_genre_observations(g),
        "",
        "![MovieLens genres](movielens_genres.png)",
        "",
        "## Figures",
        "",
        "![item-item cosine heatmaps](item_cosine_heatmaps.png)",
        "",
        "![random re-scalings](random_rescalings.png)",
        "",
    ]
    return "\n".join(lines)



def refresh_genres(out: Path, figures: dict) -> None:
    """Writes ``figures.json``, ``movielens_genres.png`` and ``report.md`` after a rerun of
    the MovieLens part (the other figures do not change)."""
    from training.study.probes import jsonable

    atomic_write(out / "figures.json", lambda p: p.write_text(
        json.dumps(jsonable(figures), indent=1, allow_nan=False) + "\n"))
    atomic_write(out / "movielens_genres.png", lambda p: plots.plot_genres(p, figures["genres"]))
    atomic_write(out / "report.md", lambda p: p.write_text(render_report(figures)))


def rerender(out: Path) -> None:
    """Re-renders ``report.md`` and the figures drawn from numbers alone (not the heatmaps,
    which need the models) from ``out/figures.json``: a report change without a rerun."""
    figures = json.loads((out / "figures.json").read_text())
    variants = figures["two_tower"]["variants"]
    atomic_write(out / "training_curves.png", lambda p: plots.plot_training_curves(p, variants))
    atomic_write(out / "auc_recall_front.png",
                 lambda p: plots.plot_front(p, variants, figures["two_tower"]["targets"]))
    atomic_write(out / "movielens_genres.png", lambda p: plots.plot_genres(p, figures["genres"]))
    atomic_write(out / "report.md", lambda p: p.write_text(render_report(figures)))


if __name__ == "__main__":
    import sys

    rerender(Path(sys.argv[1]))
