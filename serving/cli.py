"""``tfrs-cosine serve``, ``serving-config`` and ``query``: registered by ``training.cli``.

Flags of ``serve`` are named as ``tensorflow_model_server`` names them. Heavy modules
(TensorFlow, gRPC) are imported inside the subcommands.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from serving.errors import ServingError


def register(subparsers) -> None:
    """Adds the serving subcommands to the ``tfrs-cosine`` parser."""
    p = subparsers.add_parser(
        "serve",
        help="serve exports over TF Serving's gRPC and REST APIs",
        description=(
            "A TF Serving-compatible model server (gRPC PredictionService and ModelService, "
            "REST API) that also loads ScaNN exports. Flags are named as tensorflow_model_server's."
        ),
    )
    p.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    p.add_argument(
        "--rest_api_port", type=int, default=8501, help="REST port (default 8501; 0 disables)"
    )
    p.add_argument(
        "--host", default="127.0.0.1",
        help="interface to bind (default 127.0.0.1; 0.0.0.0 exposes the server to the network)",
    )
    p.add_argument("--model_name", default="default", help="name of the model (default: default)")
    p.add_argument("--model_base_path", help="folder holding the numbered version folders")
    p.add_argument("--model_config_file", help="ModelServerConfig text proto (several models)")
    p.add_argument(
        "--file_system_poll_wait_seconds", type=float, default=1.0,
        help="seconds between polls for new versions (default 1; 0 disables polling)",
    )
    p.add_argument(
        "--max_batch_size", type=int, default=0,
        help="reject requests whose batch (0th dim) is larger (INVALID_ARGUMENT); 0 = no limit",
    )
    p.add_argument(
        "--max_request_bytes", type=int, default=16 * 1024 * 1024,
        help="largest accepted request body or message (default 16 MiB)",
    )
    p.add_argument("--grpc_max_threads", type=int, default=16, help="gRPC worker threads")
    p.add_argument("--rest_api_num_threads", type=int, default=16, help="REST worker threads")
    p.add_argument(
        "--enable_batching", action="store_true",
        help="merge concurrent Predict calls on one model/version/signature into batches",
    )
    p.add_argument(
        "--batching_parameters_file",
        help="BatchingParameters text proto (TF Serving's format; serving-config writes one)",
    )
    p.add_argument(
        "--monitoring_config_file",
        help="MonitoringConfig text proto; prometheus_config enables /monitoring/prometheus/metrics",
    )
    p.add_argument(
        "--tensorflow_intra_op_parallelism", type=int, default=0,
        help="threads one TensorFlow op may use (default 0: one per core); 1 runs each op "
             "on the calling thread, which suits small models (BENCHMARKS.md)",
    )
    p.add_argument(
        "--tensorflow_inter_op_parallelism", type=int, default=0,
        help="threads running independent TensorFlow ops (default 0: one per core)",
    )
    p.add_argument(
        "--access_log", "--verbose", dest="access_log", action="store_true",
        help="log one line per request: model, signature, version, status, ms",
    )
    p.set_defaults(func=_serve)

    p = subparsers.add_parser(
        "serving-config",
        help="write models.config and batching.config for tensorflow_model_server",
    )
    p.add_argument("--model_base_path", required=True, help="the export: models/NAME")
    p.add_argument("--model_name", help="model name (default: the folder name)")
    p.add_argument("--output_dir", help="where to write (default: the model base path)")
    p.add_argument(
        "--container_base_path",
        help="base path as the server sees it, e.g. /models/NAME in Docker (default: absolute path)",
    )
    p.add_argument("--num_versions", type=int, default=1, help="latest versions served")
    p.add_argument("--max_batch_size", type=int, default=64)
    p.add_argument("--batch_timeout_micros", type=int, default=2000)
    p.add_argument("--num_batch_threads", type=int, default=2)
    p.add_argument("--max_enqueued_batches", type=int, default=100)
    p.add_argument(
        "--allowed_batch_sizes", default="",
        help="comma-separated batch sizes to pad up to; the last must be --max_batch_size",
    )
    p.add_argument("--pad_variable_length_inputs", action="store_true")
    p.set_defaults(func=_serving_config)

    p = subparsers.add_parser(
        "query",
        help="call a served model (gRPC or REST) and print a readable table",
        description="Works against tensorflow_model_server and tfrs-cosine serve alike.",
    )
    p.add_argument("--target", default="localhost:8500", help="host:port (default localhost:8500)")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--rest", action="store_true", help="use the REST API (target is host:8501)")
    p.add_argument("--version", type=int, help="pin a model version")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline per call, seconds")
    p.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE")
    queries = p.add_subparsers(dest="query", required=True, metavar="QUERY")
    q = queries.add_parser(
        "recommend", help="top-K items for a user (or, with --history/--feature/--exclude, "
        "for raw query features: a feature model's recommend signature)",
    )
    q.add_argument("user", nargs="?", default=None,
                   help="user id (with raw features it may be unknown or left out)")
    q.add_argument("--explain", action="store_true", help="add cosine, dot, norms, dimensions")
    q.add_argument("--top", type=int, help="show only the first N rows")
    q.add_argument("--history", metavar="I1,I2,...", help="recent item ids, oldest first")
    q.add_argument("--feature", action="append", default=[], metavar="NAME=VALUE",
                   help="a user or context feature (repeatable; a list feature's values "
                   "separated by commas)")
    q.add_argument("--exclude", metavar="I1,I2,...", help="item ids never to return")
    q = queries.add_parser("similar", help="most similar items (cosine) to an item")
    q.add_argument("item")
    q.add_argument("--top", type=int, help="show only the first N rows")
    queries.add_parser("status", help="versions and their states")
    queries.add_parser("metadata", help="signatures with dtypes and shapes")
    p.set_defaults(func=_query)


def _serve(args: argparse.Namespace) -> int:
    from serving.options import ServerOptions, batching_parameters, metrics_path, model_configs

    if not args.model_base_path and not args.model_config_file:
        raise ServingError("give --model_base_path (or --model_config_file)")
    if args.model_base_path and not os.path.isdir(args.model_base_path):
        raise ServingError(f"--model_base_path {args.model_base_path} is not a directory")
    options = ServerOptions(
        port=args.port,
        rest_api_port=args.rest_api_port,
        host=args.host,
        model_name=args.model_name,
        model_base_path=args.model_base_path,
        model_config_file=args.model_config_file,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        max_batch_size=args.max_batch_size,
        max_request_bytes=args.max_request_bytes,
        grpc_max_threads=args.grpc_max_threads,
        rest_api_num_threads=args.rest_api_num_threads,
        enable_batching=args.enable_batching,
        batching_parameters_file=args.batching_parameters_file,
        monitoring_config_file=args.monitoring_config_file,
        access_log=args.access_log,
        tensorflow_intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        tensorflow_inter_op_parallelism=args.tensorflow_inter_op_parallelism,
    )
    # Every flag and config file is checked here, before TensorFlow is imported: a bad
    # one answers in well under a second, with one line.
    options.check()
    model_configs(options)
    batching_parameters(options)
    metrics_path(options)
    from serving.server import serve

    code = serve(options)
    # Everything is stopped and flushed; skip TensorFlow's slow interpreter teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serving_config(args: argparse.Namespace) -> int:
    from serving.batching import BatchingParameters
    from serving.config import write_serving_configs

    try:
        allowed = tuple(int(v) for v in args.allowed_batch_sizes.split(",") if v.strip())
    except ValueError:
        raise ServingError(
            f"--allowed_batch_sizes {args.allowed_batch_sizes!r} is not a comma-separated list of integers"
        ) from None
    written = write_serving_configs(
        args.model_base_path,
        args.output_dir or args.model_base_path,
        model_name=args.model_name,
        container_base=args.container_base_path,
        num_versions=args.num_versions,
        batching=BatchingParameters(
            max_batch_size=args.max_batch_size,
            batch_timeout_micros=args.batch_timeout_micros,
            max_enqueued_batches=args.max_enqueued_batches,
            num_batch_threads=args.num_batch_threads,
            allowed_batch_sizes=allowed,
            pad_variable_length_inputs=args.pad_variable_length_inputs,
        ),
    )
    print(f"wrote {written['models.config']}")
    print(f"wrote {written['batching.config']}")
    if written["scann"]:
        print(
            "note: the latest version contains ScaNN ops; stock tensorflow_model_server cannot "
            "load it (use a brute-force export, google/tf-serving-scann, or tfrs-cosine serve)"
        )
    return 0


def _client(args: argparse.Namespace):
    if args.rest:
        from serving.client import RestRecommenderClient

        return RestRecommenderClient(
            args.target, args.model, timeout=args.timeout, retries=args.retries, version=args.version
        )
    from serving.client import RecommenderClient

    return RecommenderClient(
        args.target, args.model, timeout=args.timeout, retries=args.retries, version=args.version
    )


def _query(args: argparse.Namespace) -> int:
    if args.query == "recommend":
        raw = bool(args.history or args.feature or args.exclude)
        if raw and args.explain:
            raise ServingError("--explain explains a stored user; it cannot be combined with "
                               "--history, --feature or --exclude")
        if not raw and args.user is None:
            raise ServingError("query recommend needs a USER (or raw query features: "
                               "--history, --feature, --exclude)")
        features = _parse_features(args.feature)
        client = _client(args)
        if raw:
            print(recommend_for_table(client, args.user or "", features, _items(args.history),
                                      _items(args.exclude), top=args.top))
        else:
            print(recommend_table(client, args.user, explain=args.explain, top=args.top))
        return 0
    client = _client(args)
    if args.query == "similar":
        print(similar_table(client, args.item, top=args.top))
    elif args.query == "status":
        for entry in client.status():
            error = f"  {entry.error_code}: {entry.error_message}" if entry.error_message else ""
            print(f"version {entry.version}: {entry.state}{error}")
    else:
        for name, signature in sorted(client.metadata().items()):
            print(name)
            for kind, tensors in (("in ", signature.inputs), ("out", signature.outputs)):
                for key, spec in sorted(tensors.items()):
                    shape = "?" if spec.shape is None else ", ".join(
                        "?" if d < 0 else str(d) for d in spec.shape
                    )
                    print(f"  {kind} {key}: {spec.dtype} [{shape}]")
    return 0


def _table(headers: Sequence[str], rows: list[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in out)


FAITHFULNESS_WARNING = (
    "warning: this model was trained with the dot-product head, so cosine is NOT what it was "
    "trained to rank by; the cosine column is shown for comparison only and may disagree "
    "with the ranking (cosine_is_training_objective = false)."
)


def recommend_table(client, user: str, explain: bool = False, top: int | None = None) -> str:
    """The readable answer of ``query recommend``: rank, item, score (+ explanation)."""
    result = client.recommend([user])
    items = [str(i) for i in result["item_ids"][0]]
    scores = [float(s) for s in result["scores"][0]]
    if top is not None:
        items, scores = items[:top], scores[:top]
    version = f" version {result.model_version}" if result.model_version else ""
    lines = [f"user {user}: top {len(items)} items (model {client.model_name}{version})"]
    if not bool(result["known_user"][0]):
        lines.append(
            f"note: user {user} is not in the model's vocabulary; these are the recommendations "
            "for the out-of-vocabulary embedding"
        )
    if not explain:
        rows = [[str(r + 1), item, f"{s:.4f}"] for r, (item, s) in enumerate(zip(items, scores, strict=True))]
        lines.append(_table(["rank", "item", "score"], rows))
        return "\n".join(lines)
    why = client.explain(user, items)
    faithful = bool(why["cosine_is_training_objective"])
    user_norm = float(why["user_norm"])
    rows = []
    for r, item in enumerate(items):
        dims = " ".join(
            f"{int(d)}:{float(c):+.3f}"
            for d, c in zip(why["top_dimensions"][r], why["contributions"][r], strict=True)
        )
        rows.append([
            str(r + 1), item, f"{scores[r]:.4f}", f"{float(why['cosine'][r]):.4f}",
            f"{float(why['dot'][r]):.4f}", f"{float(why['item_norms'][r]):.3f}", dims,
        ])
    lines.append(f"user norm {user_norm:.3f}; cosine_is_training_objective = {str(faithful).lower()}")
    lines.append(
        _table(["rank", "item", "score", "cosine", "dot", "item norm", "top dimensions (dim:contribution)"], rows)
    )
    if not faithful:
        lines.append(FAITHFULNESS_WARNING)
    return "\n".join(lines)


def _items(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]


def _parse_features(pairs: Sequence[str]) -> dict[str, object]:
    """``NAME=VALUE`` flags -> {name: value}; a value with commas is a list. The client
    converts each to its input's dtype (and names a value that does not convert)."""
    out: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ServingError(f"--feature expects NAME=VALUE, got {pair!r}")
        if name.strip() in out:
            raise ServingError(f"--feature {name.strip()} is given twice")
        out[name.strip()] = _items(value) if "," in value else value.strip()
    return out


def recommend_for_table(client, user: str, features: dict, history: list[str],
                        exclude: list[str], top: int | None = None) -> str:
    """The readable answer of ``query recommend`` with raw query features."""
    result = client.recommend_for(user, features=features, history=history, exclude=exclude)
    items = [str(i) for i in result["item_ids"][0] if str(i)]
    scores = [float(s) for s in result["scores"][0]][: len(items)]
    if top is not None:
        items, scores = items[:top], scores[:top]
    version = f" version {result.model_version}" if result.model_version else ""
    who = f"user {user}" if user else "a new user"
    lines = [f"{who}: top {len(items)} items (model {client.model_name}{version}, "
             f"recommend on raw features)"]
    described = [f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in features.items()]
    lines.append(f"history: {', '.join(history) or '(none)'}; features: "
                 f"{' '.join(described) or '(none)'}; excluded: {', '.join(exclude) or '(none)'}")
    if user and not bool(result["known_user"][0]):
        lines.append(f"note: user {user} is not stored in the export; its features and "
                     "history are all the model sees")
    rows = [[str(r + 1), item, f"{s:.4f}"] for r, (item, s) in enumerate(zip(items, scores, strict=True))]
    lines.append(_table(["rank", "item", "score"], rows))
    return "\n".join(lines)


def similar_table(client, item: str, top: int | None = None) -> str:
    """The readable answer of ``query similar``: rank, item, cosine."""
    result = client.similar_items([item])
    items = [str(i) for i in result["item_ids"][0]]
    cosines = [float(c) for c in result["cosine"][0]]
    if top is not None:
        items, cosines = items[:top], cosines[:top]
    lines = [f"items most similar to {item} (cosine, model {client.model_name})"]
    if not bool(result["known_item"][0]):
        lines.append(f"note: item {item} is not in the model's vocabulary")
    rows = [[str(r + 1), i, f"{c:.4f}"] for r, (i, c) in enumerate(zip(items, cosines, strict=True))]
    lines.append(_table(["rank", "item", "cosine"], rows))
    return "\n".join(lines)
