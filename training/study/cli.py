"""``tfrs-cosine study cosine-faithfulness``: the subcommand, without the study's imports.

The study (numpy, scipy, scikit-learn, TensorFlow) loads only when the subcommand runs,
so ``tfrs-cosine --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from training.errors import InputError


def register(subparsers) -> None:
    """Adds ``study cosine-faithfulness`` to the ``tfrs-cosine`` command line."""
    study = subparsers.add_parser("study", help="offline studies (cosine-faithfulness)")
    studies = study.add_subparsers(dest="study", required=True, metavar="STUDY")
    p = studies.add_parser(
        "cosine-faithfulness",
        help="reproduce Steck et al. (2024) Sec. 4 and measure this project's heads",
        description="Closed-form Eq. 1 / Eq. 2 models and the four two-tower variants "
                    "(each explored over a grid, 3 seeds for the picks) on the clustered "
                    "simulation, and genres as ground truth on MovieLens 100K; writes "
                    "report.md, figures.json and the figures.",
    )
    p.add_argument("--users", type=int, help="number of users (default 20000; --quick 1000)")
    p.add_argument("--items", type=int, help="number of items (default 1000; --quick 120)")
    p.add_argument("--clusters", type=int, help="number of item clusters (default 5)")
    p.add_argument("--dim", type=int, help="embedding dimension / rank (default 50; --quick 16)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="small data, 2 epochs, a few grid points, a synthetic stand-in for "
                        "MovieLens: about 30 s on 2 cores")
    p.add_argument("--genres", choices=["movielens", "synthetic"],
                   help="real-data part: MovieLens 100K from the local cache (default; "
                        "fetched if absent) or a synthetic stand-in (default with --quick)")
    p.add_argument("--grid", choices=["full", "reduced", "small"], default="full",
                   help="two-tower grid: full (35 settings, default), reduced (21: the "
                        "cosine heads at lr 0.01 only) or small (11), for a run with a "
                        "time budget; the report says which ran")
    p.add_argument("--lambda1", type=float,
                   help="Eq. 1 lambda (default 10000, scaled with the data size)")
    p.add_argument("--lambda2", type=float,
                   help="Eq. 2 lambda (default 100, scaled with the data size)")
    p.add_argument("--only", choices=["genres"],
                   help="rerun one part into a finished study in --out: genres (the "
                        "MovieLens part; the synthetic part's numbers stay)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(func=_cosine_faithfulness)


def _cosine_faithfulness(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} exists and is not a directory")
    from training.study.faithfulness import make_settings, rerun_genres, run_study

    settings = make_settings(args.users, args.items, args.clusters, args.dim, args.seed,
                             args.quick, args.lambda1, args.lambda2, args.grid)
    if args.genres is not None:
        settings = dataclasses.replace(settings, genres=args.genres)
    if args.only == "genres":
        rerun_genres(settings, args.out, log=lambda m: print(m, flush=True))
    else:
        run_study(settings, args.out, log=lambda m: print(m, flush=True))
    print(f"report: {args.out / 'report.md'}", file=sys.stderr)
    return 0
