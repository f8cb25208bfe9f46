"""Prometheus metrics, named as TF Serving names them where it has the same metric.

Enabled by ``--monitoring_config_file`` (TF Serving's MonitoringConfig text proto with
``prometheus_config { enable: true path: "..." }``) and served on the REST port at
``/monitoring/prometheus/metrics`` (or the configured path), in the text format of
``prometheus_client``.

TF Serving's exporter turns ``/tensorflow/serving/request_count`` into
``:tensorflow:serving:request_count`` and writes counters without a ``_total`` suffix;
``prometheus_client``'s Counter would append one, so counters are written by a collector
of this module as untyped samples under the exact TF Serving name (queries written for
TF Serving keep working); histograms are ``prometheus_client.Histogram``.

================================================================  ==================================
metric                                                            labels
================================================================  ==================================
``:tensorflow:serving:request_count`` (counter)                   model_name, status
``:tensorflow:serving:request_latency`` (histogram, us)           model_name, API, entrypoint
``:tfrs_cosine:serving:request_count`` (counter)                  model_name, signature_name, API,
                                                                  entrypoint, status
``:tensorflow:serving:batching_session:input_batch_size``         (none)
``:tensorflow:serving:batching_session:processed_batch_size``     (none)
``:tensorflow:serving:batching_session:padding_size``             execution_batch_size
``:tensorflow:serving:batching_session:queuing_latency`` (us)     thread_pool_name
``:tensorflow:cc:saved_model:load_attempt_count`` (counter)       model_path, status
``:tfrs_cosine:serving:model_version_transition_count`` (counter) model_name, state
``:tfrs_cosine:serving:model_version_state`` (gauge)              model_name, version
``:tfrs_cosine:serving:file_system_poll_count`` (counter)         (none)
================================================================  ==================================

Memory grows with the label combinations (models x signatures x statuses), not with
traffic; recording one request costs a lock and two dict updates.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import prometheus_client
from google.protobuf import text_format
from prometheus_client.core import GaugeMetricFamily, UnknownMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from serving.errors import ServingError
from serving.versions import AVAILABLE, END, STATE_NAMES, VersionState
from serving.wire import build_messages

DEFAULT_PATH = "/monitoring/prometheus/metrics"
_PROTO = build_messages(
    "tfrs_cosine/monitoring_config.proto",
    "tfrs_cosine.config",
    {
        "PrometheusConfig": [("enable", 1, "bool", ""), ("path", 2, "string", "")],
        "MonitoringConfig": [("prometheus_config", 1, "PrometheusConfig", "")],
    },
)
MonitoringConfigProto = _PROTO["MonitoringConfig"]

prometheus_client.disable_created_metrics()


def _exponential(scale: float, growth: float, count: int) -> list[float]:
    return [scale * growth**i for i in range(count)]


def read_monitoring_config(text: str, source: str) -> str | None:
    """The metrics path a MonitoringConfig text enables, or None when disabled."""
    proto = MonitoringConfigProto()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as error:
        raise ServingError(f"{source} is not a MonitoringConfig text proto: {error}") from None
    prometheus = proto.prometheus_config
    if not prometheus.enable:
        return None
    path = prometheus.path or DEFAULT_PATH
    if not path.startswith("/") or path.startswith("/v1/"):
        raise ServingError(f"{source}: prometheus_config.path {path!r} must start with / and not /v1/")
    return path


class _Counters(Collector):
    """Counters under exact TF Serving names (untyped samples, no ``_total``)."""

    def __init__(self, names: dict[str, tuple[str, tuple[str, ...]]]):
        self._names = names  # name -> (help, label names)
        self._values: dict[str, dict[tuple[str, ...], float]] = {n: {} for n in names}
        self._lock = threading.Lock()

    def inc(self, name: str, labels: tuple[str, ...], amount: float = 1.0) -> None:
        with self._lock:
            cells = self._values[name]
            cells[labels] = cells.get(labels, 0.0) + amount

    def value(self, name: str, labels: tuple[str, ...]) -> float:
        with self._lock:
            return self._values[name].get(labels, 0.0)

    def collect(self) -> Iterable[UnknownMetricFamily]:
        with self._lock:
            snapshot = {name: dict(cells) for name, cells in self._values.items()}
        for name, (documentation, labels) in self._names.items():
            family = UnknownMetricFamily(name, documentation, labels=list(labels))
            for values, count in sorted(snapshot[name].items()):
                family.add_metric(list(values), count)
            yield family


class _VersionStates(Collector):
    def __init__(self):
        self._states: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def set(self, model: str, version: int, state: int) -> None:
        with self._lock:
            self._states[(model, str(version))] = state

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            ":tfrs_cosine:serving:model_version_state",
            "State of each model version (ModelVersionStatus.State: 10 START, 20 LOADING, "
            "30 AVAILABLE, 40 UNLOADING, 50 END)",
            labels=["model_name", "version"],
        )
        with self._lock:
            for labels, state in sorted(self._states.items()):
                family.add_metric(list(labels), state)
        yield family


class _PollCount(Collector):
    def __init__(self, core):
        self._core = core

    def collect(self) -> Iterable[UnknownMetricFamily]:
        family = UnknownMetricFamily(
            ":tfrs_cosine:serving:file_system_poll_count",
            "Completed polls of the model base paths (a stalled poller stops counting).",
        )
        family.add_metric([], self._core.polls)
        yield family


REQUEST_COUNT = ":tensorflow:serving:request_count"
SIGNATURE_REQUEST_COUNT = ":tfrs_cosine:serving:request_count"
LOAD_ATTEMPT_COUNT = ":tensorflow:cc:saved_model:load_attempt_count"
TRANSITION_COUNT = ":tfrs_cosine:serving:model_version_transition_count"


class ServerMetrics:
    """The server's metrics in one registry; ``exposition()`` renders the scrape page."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=False)
        self.counters = _Counters({
            REQUEST_COUNT: ("The total number of requests.", ("model_name", "status")),
            SIGNATURE_REQUEST_COUNT: (
                "The total number of requests by signature.",
                ("model_name", "signature_name", "API", "entrypoint", "status"),
            ),
            LOAD_ATTEMPT_COUNT: (
                "The number of times a SavedModel was attempted to be loaded.",
                ("model_path", "status"),
            ),
            TRANSITION_COUNT: (
                "Model version state transitions (load and unload events).",
                ("model_name", "state"),
            ),
        })
        self.registry.register(self.counters)
        self._states = _VersionStates()
        self.registry.register(self._states)
        self.request_latency = prometheus_client.Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"],
            buckets=_exponential(10, 1.8, 33), registry=self.registry,
        )
        sizes = _exponential(1, 2, 14)
        self.input_batch_size = prometheus_client.Histogram(
            ":tensorflow:serving:batching_session:input_batch_size",
            "Tracks the batch size distribution on the inputs.", buckets=sizes,
            registry=self.registry,
        )
        self.processed_batch_size = prometheus_client.Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Tracks the batch size distribution on processing.", buckets=sizes,
            registry=self.registry,
        )
        self.padding_size = prometheus_client.Histogram(
            ":tensorflow:serving:batching_session:padding_size",
            "Tracks the padding size distribution on batches.", ["execution_batch_size"],
            buckets=[0, *sizes], registry=self.registry,
        )
        self.queuing_latency = prometheus_client.Histogram(
            ":tensorflow:serving:batching_session:queuing_latency",
            "Distribution of wall time spent (in microseconds) in queuing",
            ["thread_pool_name"], buckets=_exponential(100, 1.2, 52), registry=self.registry,
        )
        self.thread_pool_name = "batch_threads"

    def request(
        self, model: str, signature: str, api: str, entrypoint: str, status: str, seconds: float
    ) -> None:
        """One answered request (``status`` is the gRPC code name, e.g. ``"OK"``)."""
        self.counters.inc(REQUEST_COUNT, (model, status))
        self.counters.inc(SIGNATURE_REQUEST_COUNT, (model, signature, api, entrypoint, status))
        self.request_latency.labels(model, api, entrypoint).observe(seconds * 1e6)

    def batch(self, input_sizes: list[int], processed: int, padding: int, queued: list[float]) -> None:
        """One batch run by the scheduler (``serving.batching.BatchObserver``)."""
        for size in input_sizes:
            self.input_batch_size.observe(size)
        self.processed_batch_size.observe(processed)
        self.padding_size.labels(str(processed)).observe(padding)
        cell = self.queuing_latency.labels(self.thread_pool_name)
        for seconds in queued:
            cell.observe(seconds * 1e6)

    def version_state(self, model: str, version: int, state: VersionState) -> None:
        """A version's state transition (``serving.versions.OnChange``)."""
        self._states.set(model, version, state.state)
        self.counters.inc(TRANSITION_COUNT, (model, STATE_NAMES.get(state.state, str(state.state))))

    def load_attempt(self, path: Path, ok: bool) -> None:
        self.counters.inc(LOAD_ATTEMPT_COUNT, (str(path), "success" if ok else "fail"))

    def watch(self, core) -> None:
        """Follows a ServerCore's version transitions (state gauge, events, load attempts)."""
        base_paths = {name: model.config.base_path for name, model in core.models.items()}

        def listener(model: str, version: int, state: VersionState) -> None:
            self.version_state(model, version, state)
            path = Path(base_paths.get(model, ".")) / str(version)
            if state.state == AVAILABLE:
                self.load_attempt(path, True)
            elif state.state == END and state.error_code:
                self.load_attempt(path, False)

        core.add_listener(listener)
        self.registry.register(_PollCount(core))

    def exposition(self) -> tuple[bytes, str]:
        """The scrape page and its content type."""
        return prometheus_client.generate_latest(self.registry), prometheus_client.CONTENT_TYPE_LATEST
