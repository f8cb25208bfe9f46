"""``tfrs-cosine serve``: a TF Serving-compatible model server (start, stop, main).

For machines without ``tensorflow_model_server`` or without a ScaNN-linked build. It
speaks TF Serving's protocol, so the same clients run against either server. The pieces,
one job each:

==========================  ==============================================================
``serving.options``         flags and the config files they name
``serving.versions``        which versions are on disk, loaded, served (hot reload)
``serving.servable``        one loaded version: SignatureDefs and concrete functions
``serving.batching``        dynamic batching (``--enable_batching``)
``serving.core``            the request logic shared by gRPC and REST
``serving.grpc_services``   PredictionService, ModelService, grpc.health.v1.Health
``serving.rest``            the REST API (waitress)
``serving.metrics``         Prometheus metrics (``--monitoring_config_file``)
``serving.tensors``         TensorProto <-> numpy (shared with the clients)
``serving.json_codec``      REST JSON <-> numpy
==========================  ==============================================================

As TF Serving, the server loads every model before it opens its ports. It is one process:
several processes sharing the ports (SO_REUSEPORT) were built and measured, and did not
raise throughput on this project's 2-core machines (BENCHMARKS.md), so they are not offered.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from concurrent import futures

import grpc

from serving.core import ServerCore
from serving.errors import ServingError
from serving.grpc_services import Handler, ModelHealth, add_services
from serving.options import ServerOptions, batching_parameters, metrics_path, model_configs

log = logging.getLogger("tfrs_cosine.serving")


def access_logger(method: str, path: str, status: str, model: str, signature: str,
                  version: str, ms: float) -> None:
    """One line per request (``--access_log``)."""
    log.info(
        "%s %s model=%s signature=%s version=%s -> %s %.2f ms",
        method, path, model, signature, version, status, ms,
    )


def configure_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """Sizes TensorFlow's thread pools (``--tensorflow_intra_op_parallelism`` and
    ``--tensorflow_inter_op_parallelism``; 0 keeps TensorFlow's default). Must run before
    TensorFlow executes anything in this process; ServingError otherwise."""
    if not intra_op and not inter_op:
        return
    import tensorflow as tf

    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as error:
        raise ServingError(f"cannot size TensorFlow's thread pools: {error}") from None


def start_grpc_server(
    handler: Handler, model_health: ModelHealth, address: str, max_threads: int,
    max_request_bytes: int,
) -> grpc.Server:
    """The three gRPC services on ``address``, started; ServingError if it cannot bind."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ],
    )
    add_services(server, handler, model_health)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as error:
        raise ServingError(f"cannot bind the gRPC port {address}: {error}") from None
    if not bound:
        raise ServingError(f"cannot bind the gRPC port {address}")
    server.start()
    return server


def rest_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket for waitress."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ServingError(f"cannot bind the REST port {host}:{port}: {error}") from None
    sock.listen(1024)
    return sock


class ModelServer:
    """The gRPC and REST front ends on one ServerCore, with clean start and stop."""

    def __init__(self, options: ServerOptions):
        options.check()
        self.options = options
        configure_tensorflow_threads(options.tensorflow_intra_op_parallelism,
                                     options.tensorflow_inter_op_parallelism)
        self.metrics_path = metrics_path(options)
        self.metrics = None
        if self.metrics_path:
            from serving.metrics import ServerMetrics

            self.metrics = ServerMetrics()
        configs = model_configs(options)
        self.core = ServerCore(
            configs,
            poll_seconds=options.file_system_poll_wait_seconds,
            max_batch_size=options.max_batch_size,
            batching=batching_parameters(options),
            warm_up=options.warm_up,
            batch_observer=self.metrics.batch if self.metrics else None,
        )
        if self.metrics is not None:
            self.metrics.watch(self.core)
        # With batching every request in flight holds a worker thread while its batch
        # forms: enough threads to fill every batch thread's batch, else batches stay
        # small and requests queue in front of the thread pool instead.
        batching = self.core.batcher.params if self.core.batcher is not None else None
        in_flight = min(256, batching.max_batch_size * batching.num_batch_threads) if batching else 0
        self.grpc_threads = max(options.grpc_max_threads, in_flight)
        self.rest_threads = max(options.rest_api_num_threads, in_flight)
        self.health = ModelHealth(self.core)
        self._grpc: grpc.Server | None = None
        self._http = None
        self._http_thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Loads the models, then opens the ports (as TF Serving does)."""
        options = self.options
        self.core.load_initial()
        access = access_logger if options.access_log else None
        handler = Handler(self.core, self.metrics, access)
        address = f"{options.host}:{options.port}"
        self._grpc = start_grpc_server(
            handler, self.health, address, self.grpc_threads,
            options.max_request_bytes,
        )
        log.info("Running gRPC ModelServer at %s ...", address)
        if options.rest_api_port:
            try:
                self._start_rest(access)
            except ServingError:
                self._grpc.stop(0)
                raise
        self.core.start_polling()

    def _start_rest(self, access) -> None:
        import waitress

        from serving.rest import JsonErrorChannel, RestApp

        options = self.options
        sock = rest_socket(options.host, options.rest_api_port)
        app = RestApp(self.core, self.metrics, self.metrics_path, access)
        self._http = waitress.create_server(
            app,
            sockets=[sock],
            threads=self.rest_threads,
            # waitress refuses a larger body before reading it; JsonErrorChannel words
            # that 413 as a JSON error.
            max_request_body_size=options.max_request_bytes,
            ident="tfrs-cosine",
            clear_untrusted_proxy_headers=True,
        )
        self._http.channel_class = JsonErrorChannel
        self._http_thread = threading.Thread(target=self._http.run, name="rest", daemon=True)
        self._http_thread.start()
        log.info("Exporting HTTP/REST API at:%s:%d ...", options.host, options.rest_api_port)
        if self.metrics_path:
            log.info("Prometheus metrics at %s", self.metrics_path)

    def stop(self, grace: float = 5.0) -> None:
        """Stops accepting, lets running requests finish (up to ``grace`` s), unloads."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("shutting down: finishing in-flight requests (up to %.0f s)", grace)
        self.health.shutdown()
        stopped = self._grpc.stop(grace) if self._grpc is not None else None
        if self._http is not None:
            self._http.close()  # the listening socket: no new connections
            self._http.task_dispatcher.shutdown(cancel_pending=False, timeout=grace)
            for channel in list(self._http._map.values()):
                channel.close()
            if self._http_thread is not None:
                self._http_thread.join(timeout=grace)
        if stopped is not None:
            stopped.wait(grace)
        self.core.stop()
        for model in self.core.models.values():
            model.unload_all()
        log.info("server stopped")

    def serve_forever(self) -> None:
        """start(), then block until SIGTERM or SIGINT, then stop(). Main thread only."""
        received = threading.Event()

        def on_signal(signum, _frame):
            log.info("received %s", signal.Signals(signum).name)
            received.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not received.wait(0.5):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def configure_logging() -> None:
    """One timestamped line per event on stderr (load, swap, failure, requests)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s.%(msecs)03d %(levelname).1s serve] %(message)s", "%H:%M:%S")
    )
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    logging.getLogger("waitress").setLevel(logging.ERROR)


def serve(options: ServerOptions) -> int:
    """Runs the server until SIGTERM/SIGINT; 0 on a clean stop."""
    configure_logging()
    ModelServer(options).serve_forever()
    return 0
