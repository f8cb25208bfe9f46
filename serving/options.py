"""The ``tfrs-cosine serve`` options and the config files they name.

Flags are named as ``tensorflow_model_server``'s. The files are TF Serving's text
protos: ``--model_config_file`` (ModelServerConfig), ``--batching_parameters_file``
(BatchingParameters, ``serving.batching``) and ``--monitoring_config_file``
(MonitoringConfig, ``serving.metrics``). Every problem with them is a ``ServingError``
with one line naming the file and the problem (a binary or non-UTF-8 file included), so
the CLI exits 2 without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from serving.errors import ServingError
from serving.versions import ModelConfig

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024


@dataclass
class ServerOptions:
    """The ``tfrs-cosine serve`` flags."""

    port: int = 8500
    rest_api_port: int = 8501
    host: str = "127.0.0.1"
    model_name: str | None = None
    model_base_path: str | None = None
    model_config_file: str | None = None
    file_system_poll_wait_seconds: float = 1.0
    max_batch_size: int = 0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    grpc_max_threads: int = 16
    rest_api_num_threads: int = 16
    enable_batching: bool = False
    batching_parameters_file: str | None = None
    monitoring_config_file: str | None = None
    access_log: bool = False
    warm_up: bool = True
    # TensorFlow's thread pools (0: TensorFlow's default, one thread per core).
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0

    def check(self) -> None:
        """ServingError for a flag out of range (before anything is loaded)."""
        for flag in ("port", "rest_api_port"):
            value = getattr(self, flag)
            if not 0 <= value <= 65535:
                raise ServingError(f"--{flag} {value} is not a port number (0-65535)")
        if self.port == 0:
            raise ServingError("--port 0: the gRPC port is required")
        if self.port == self.rest_api_port:
            raise ServingError(f"--port and --rest_api_port are both {self.port}")
        if self.max_batch_size < 0:
            raise ServingError("--max_batch_size must be >= 0 (0 = no limit)")
        if self.max_request_bytes <= 0:
            raise ServingError("--max_request_bytes must be positive")
        if self.batching_parameters_file and not self.enable_batching:
            raise ServingError("--batching_parameters_file needs --enable_batching")
        if self.grpc_max_threads < 1 or self.rest_api_num_threads < 1:
            raise ServingError("--grpc_max_threads and --rest_api_num_threads must be >= 1")
        for flag in ("tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism"):
            if getattr(self, flag) < 0:
                raise ServingError(f"--{flag} must be >= 0 (0 = TensorFlow's default)")


def read_text_file(path: str | Path, flag: str) -> str:
    """A config file's text; ServingError if it is missing, binary or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise ServingError(f"{flag} {path} does not exist or is not a file")
    data = path.read_bytes()
    if b"\x00" in data:
        raise ServingError(f"{flag} {path} is a binary file, not a text proto")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ServingError(
            f"{flag} {path} is not UTF-8 text (byte {error.start}: {data[error.start]:#04x})"
        ) from None


def read_model_config_file(path: str | Path) -> list[ModelConfig]:
    """Parses a ``--model_config_file`` (ModelServerConfig text proto)."""
    from tensorflow_serving.config import model_server_config_pb2

    text = read_text_file(path, "--model_config_file")
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ServingError(f"model config file {path} is not a ModelServerConfig: {error}") from None
    if not config.HasField("model_config_list") or not config.model_config_list.config:
        raise ServingError(f"model config file {path} has no model_config_list entries")
    models = []
    for entry in config.model_config_list.config:
        if not entry.name or not entry.base_path:
            raise ServingError(f"model config file {path}: every model needs name and base_path")
        if entry.model_platform not in ("", "tensorflow"):
            raise ServingError(
                f"model {entry.name}: model_platform {entry.model_platform!r} is not supported "
                "(only tensorflow)"
            )
        policy = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        models.append(
            ModelConfig(
                name=entry.name,
                base_path=Path(entry.base_path),
                policy=policy,
                num_versions=max(1, entry.model_version_policy.latest.num_versions or 1),
                specific_versions=frozenset(entry.model_version_policy.specific.versions),
                version_labels=dict(entry.version_labels),
            )
        )
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ServingError(f"model config file {path} names a model twice")
    return models


def model_configs(options: ServerOptions) -> list[ModelConfig]:
    """The models to serve, from --model_config_file or --model_name/--model_base_path."""
    if options.model_config_file:
        if options.model_base_path:
            raise ServingError("give --model_config_file or --model_base_path, not both")
        return read_model_config_file(options.model_config_file)
    if not options.model_base_path:
        raise ServingError("--model_base_path (or --model_config_file) is required")
    base = Path(options.model_base_path).expanduser().resolve()
    if not base.is_dir():
        raise ServingError(f"--model_base_path {options.model_base_path} is not a directory")
    return [ModelConfig(name=options.model_name or "default", base_path=base)]


def batching_parameters(options: ServerOptions):
    """The BatchingParameters of --enable_batching (file or defaults), else None."""
    if not options.enable_batching:
        return None
    from serving.batching import BatchingParameters

    if options.batching_parameters_file:
        path = options.batching_parameters_file
        return BatchingParameters.from_text(read_text_file(path, "--batching_parameters_file"), str(path))
    return BatchingParameters()


def metrics_path(options: ServerOptions) -> str | None:
    """The Prometheus path --monitoring_config_file enables, else None."""
    if not options.monitoring_config_file:
        return None
    from serving.metrics import read_monitoring_config

    path = read_monitoring_config(
        read_text_file(options.monitoring_config_file, "--monitoring_config_file"),
        str(options.monitoring_config_file),
    )
    if path is not None and not options.rest_api_port:
        raise ServingError("--monitoring_config_file enables metrics on the REST port: set --rest_api_port")
    return path
