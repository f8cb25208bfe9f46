"""The ``tfrs-cosine`` command line.

This module is the composition root: the only place in ``training`` that reaches the
higher layers, through the ``register(subparsers)`` function each of ``export.cli``,
``serving.cli``, ``training.movielens`` and ``training.study`` provides. Heavy imports
happen inside the subcommand that needs them, so ``tfrs-cosine serve`` never loads
TensorFlow Recommenders.

Bad input prints ``tfrs-cosine: error: <one line>`` to stderr and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from training.errors import InputError

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "synthetic.toml"
# (module, attribute) of each package's error class and subcommand registration.
_PLUGINS = ("training.movielens", "training.study", "export.cli", "serving.cli")
_ERRORS = (("export.errors", "ExportError"), ("serving.errors", "ServingError"))


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [InputError]
    for module, name in _ERRORS:
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _train(args: argparse.Namespace) -> int:
    from training import rundir
    from training.config import load_config
    from training.train import format_metrics, train

    if args.resume:
        config_path = args.config or Path(args.run_dir) / rundir.CONFIG
        if not Path(config_path).is_file():
            rundir.read_info(Path(args.run_dir))  # names the real problem
    else:
        config_path = args.config or DEFAULT_CONFIG
    config = load_config(config_path, args.set)
    run_dir = train(config, args.run_dir, resume=args.resume)
    metrics = rundir.load_metrics(run_dir)
    print(format_metrics(metrics, config.evaluation.ks))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training import rundir
    from training.train import evaluate_split, format_metrics, prepare

    run = rundir.load_run(args.run_dir)
    if args.split not in ("train", "validation", "test"):
        raise InputError(f"unknown split {args.split!r}; valid: train, validation, test")
    data, split = prepare(run.config)
    if len(split.get(args.split)) == 0:
        raise InputError(f"split {args.split!r} of {args.run_dir} is empty")
    metrics = evaluate_split(run.config, run.model, data, split, args.split)
    stored = rundir.load_metrics(run.path)
    stored[args.split] = metrics
    rundir.write_json(run.path / rundir.METRICS, stored)
    print(format_metrics({args.split: metrics}, run.config.evaluation.ks))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfrs-cosine",
        description="Two-tower retrieval with a dot or cosine head: train, evaluate, export, serve.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a model into a run directory")
    p.add_argument("--config", type=Path, help=f"TOML config (default: {DEFAULT_CONFIG.name})")
    p.add_argument("--run-dir", required=True, type=Path, help="where the run is written")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set model.head=dot (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.set_defaults(func=_train)

    p = commands.add_parser("evaluate", help="exact full-catalog evaluation of a run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", default="test", help="train, validation or test (default: test)")
    p.set_defaults(func=_evaluate)

    for module in _PLUGINS:
        try:
            register = importlib.import_module(module).register
        except (ImportError, AttributeError):
            continue  # a package whose module is not installed in this build
        register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _user_errors() as error:
        message = " ".join(str(error).split())
        print(f"tfrs-cosine: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tfrs-cosine: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
