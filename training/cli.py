"""The ``tfrs-cosine`` command line.

Subcommands of this package (``train``, ``evaluate``, ``runs``, ``data``, ``study``) are
registered here. Those of the higher layers (``export``, ``serve``, ``query``,
``serving-config``) register themselves through the ``tfrs_cosine.commands`` entry-point
group (pyproject.toml), so ``training`` never imports ``export`` or ``serving``.

Every ``register(subparsers)`` only adds arguments; the work, and TensorFlow with it,
is imported inside the handler. Arguments and the config are therefore checked before
TensorFlow loads: ``--help`` and a bad config answer in well under a second.

Bad input raises a ``tfrs_cosine.errors.TfrsCosineError``: the CLI prints
``tfrs-cosine: error: <one line>`` to stderr and exits 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

from tfrs_cosine.errors import TfrsCosineError
from training.errors import InputError
from training.resume import RESUMABLE_KEYS, check_resume

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "synthetic.toml"
ENTRY_POINT_GROUP = "tfrs_cosine.commands"
# Present only where an NVIDIA kernel driver is loaded, i.e. where TF could use a GPU.
_NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")


def quiet_tensorflow(verbose: bool = False) -> None:
    """Sets TensorFlow's C++ log level before TensorFlow is imported.

    Without an NVIDIA driver TensorFlow cannot use a GPU, yet its CUDA probe logs an
    ERROR line (``failed call to cuInit``) on every run: level 3 hides it there. Where a
    driver exists, level 2 keeps real CUDA errors visible. ``--verbose`` shows
    everything; a value the user set is kept.
    """
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if _NVIDIA_DRIVER.exists() else "3")


def _train(args: argparse.Namespace) -> int:
    from training import rundir
    from training.config import load_config

    if args.resume:
        rundir.read_info(Path(args.run_dir))  # names a missing or foreign directory
        holder = rundir.live_holder(args.run_dir)  # fast answer; train() takes the lock
        if holder is not None:
            raise InputError(f"run directory in use by {holder}: {args.run_dir}")
        config = load_config(args.config or Path(args.run_dir) / rundir.CONFIG, args.set)
        check_resume(args.run_dir, config)  # refuses a changed run before TensorFlow loads
    else:
        config = load_config(args.config or DEFAULT_CONFIG, args.set)
        rundir.check_new(args.run_dir)

    from training.train import format_metrics, train  # TensorFlow loads here

    run_dir = train(config, args.run_dir, resume=args.resume)
    metrics = rundir.load_metrics(run_dir)
    print(format_metrics(metrics, config.evaluation.ks))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training import rundir

    if args.split not in ("train", "validation", "test"):
        raise InputError(f"unknown split {args.split!r}; valid: train, validation, test")
    rundir.read_info(args.run_dir)

    from training.modeling import load_run  # TensorFlow loads here
    from training.train import evaluate_split, format_metrics, prepare

    run = load_run(args.run_dir)
    data, split = prepare(run.config)
    if len(split.get(args.split)) == 0:
        raise InputError(f"split {args.split!r} of {args.run_dir} is empty")
    metrics = evaluate_split(run.config, run.model, data, split, args.split)
    stored = rundir.load_metrics(run.path)
    stored[args.split] = metrics
    rundir.write_json(run.path / rundir.METRICS, stored)
    print(format_metrics({args.split: metrics}, run.config.evaluation.ks))
    return 0


def _runs(args: argparse.Namespace) -> int:
    from training.runs import describe_runs, format_runs

    runs = describe_runs(args.paths)
    if args.json:
        import json

        print(json.dumps([run.as_dict() for run in runs], indent=2))
    else:
        print(format_runs(runs))
    return 0


def _register_training(commands) -> None:
    p = commands.add_parser("train", help="train a model into a run directory")
    p.add_argument("--config", type=Path, help=f"TOML config (default: {DEFAULT_CONFIG.name})")
    p.add_argument("--run-dir", required=True, type=Path, help="where the run is written")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set model.head=dot (repeatable)",
    )
    p.add_argument(
        "--resume", action="store_true",
        help="continue from the last checkpoint; only " + ", ".join(RESUMABLE_KEYS)
        + " may differ from the run's config.toml",
    )
    p.set_defaults(func=_train)

    p = commands.add_parser("evaluate", help="exact full-catalog evaluation of a run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", default="test", help="train, validation or test (default: test)")
    p.set_defaults(func=_evaluate)

    p = commands.add_parser(
        "runs", help="list run directories: status, live or dead, epochs, best metric, head",
        description="Each PATH is a run directory or a directory of runs. A `running` run "
                    "whose process is gone is shown as `interrupted (process gone)`. "
                    "Reads run.json and config.toml only (no TensorFlow).",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--json", action="store_true", help="one JSON object per run")
    p.set_defaults(func=_runs)


def _plugins():
    """``register`` functions of this package's and the higher layers' subcommands."""
    from training.movielens import register as register_fetch
    from training.shards import register as register_write_shards
    from training.study.cli import register as register_study

    yield register_fetch
    yield register_write_shards
    yield register_study
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        yield entry.load()


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``tfrs-cosine: error: ...``, exit 2), like every
    other bad input; ``--help`` shows the usage."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]
        where = f"{command}: " if command else ""
        self.exit(2, f"tfrs-cosine: error: {where}{' '.join(message.split())} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tfrs-cosine",
        description="Two-tower retrieval with a dot or cosine head: train, evaluate, export, serve.",
    )
    parser.add_argument(
        "--verbose", action="store_true",
        help="show TensorFlow's own log lines (hidden by default)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_training(commands)
    for register in _plugins():
        register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_tensorflow(args.verbose)
    try:
        return int(args.func(args) or 0)
    except TfrsCosineError as error:
        message = " ".join(str(error).split())
        print(f"tfrs-cosine: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # SIGINT, or SIGTERM during training
        print(f"tfrs-cosine: {interrupt or 'interrupted'}", file=sys.stderr)
        return getattr(interrupt, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
