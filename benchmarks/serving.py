"""Serving: server-added latency, batching throughput, REST vs gRPC, client cost.

One run measures, on one export, against peers measured in the same run:

- (a) **server-added latency** at batch 1 with 1 client: gRPC p50 of ``tfrs-cosine serve``
  minus the p50 of the same signature called in this process
  (``tf.saved_model.load(...).signatures[name](**tensors)``, outputs to numpy), against
  the **transport floor**: the p50 of a gRPC server subprocess that answers every Predict
  with a fixed, real answer of the same size (no model). Target: added <= floor + 0.1 ms.
  A second in-process peer is the server's own model call (``serving.servable``'s
  ``Signature.call`` on numpy inputs, lean path): gRPC p50 minus it is what the server
  adds around its model call. The in-process, floor and gRPC rows are interleaved, twice.
- (b) **throughput** with 16 and 64 concurrent clients sending batch-1 requests, with
  ``--enable_batching`` against without. Target: at least 3x queries/second. The same
  comparison without the transport (``ServerCore.predict`` called by threads of this
  process) shows what batching does for the model side alone, and the no-model floor
  server under the same load shows the transport's ceiling: no server answers faster.
- (c) **REST** at batch 64 with 16 clients against gRPC at the same load. Target: REST
  p50 at most 2x gRPC's.
- (d) several server processes on one port: built, measured at commit 0fb2a17 with this
  script (rows "2 processes"), no gain on 2 shared cores, not shipped (BENCHMARKS.md).
- (e) what a client process pays: importing ``tensorflow_serving.apis.predict_pb2`` (all of
  TensorFlow) against ``serving.client`` (no TensorFlow), and one ``tfrs-cosine query``.

Clients: (a) and (c) are threads of this process with prebuilt requests (official stubs;
keep-alive ``http.client`` connections for REST); (b) runs ``grpc.aio`` clients
(N coroutines, each with one request in flight) in a separate process, so the load
generator does not share this process's interpreter lock with the in-process model.
Servers, clients and the in-process model share the machine's cores: ratios within the
run are what count.

Usage::

    .venv/bin/python -m benchmarks.serving [--model-base-path models/NAME] [--seconds 3]
        [--serve-flag=--tensorflow_intra_op_parallelism=1 ...] [--out benchmarks/results/serving.md]

Without ``--model-base-path`` it trains the synthetic default for 2 epochs and exports it
with ScaNN (K=10) into a temporary folder first (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench"
BATCHING = (
    "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 1000 }\n"
    "max_enqueued_batches { value: 1000 }\nnum_batch_threads { value: 2 }\n"
)


def log(message: str) -> None:
    print(f"[serving-bench] {message}", file=sys.stderr, flush=True)


def percentiles(latencies: list[float], elapsed: float) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "qps": len(ms) / elapsed, "n": len(ms)}


def measure_threads(call: Callable[[int], None], clients: int, seconds: float) -> dict[str, float]:
    """``call(i)`` in ``clients`` threads for ``seconds`` (after 3 warm-up calls each)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(index: int) -> None:
        try:
            for i in range(3):
                call(index * 1000 + i)
        except BaseException as error:
            errors.append(error)
        barrier.wait()
        out, i = latencies[index], 0
        try:
            while time.perf_counter() < stop_at[0]:
                t0 = time.perf_counter()
                call(index * 1000 + i)
                out.append(time.perf_counter() - t0)
                i += 1
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 3600
    barrier.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return percentiles([x for per in latencies for x in per], time.perf_counter() - began)


# ----------------------------------------------------------------------------- aio load


async def _aio_load(target: str, requests: list[bytes], clients: int, seconds: float) -> dict:
    from serving.wire import METHODS

    path = METHODS["Predict"][0]
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        latencies: list[float] = []
        for request in requests[:clients]:  # warm-up
            await call(request, timeout=60)
        stop_at = time.perf_counter() + seconds

        async def client(index: int) -> None:
            i = index
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await call(requests[i % len(requests)], timeout=60)
                latencies.append(time.perf_counter() - t0)
                i += clients

        began = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        return percentiles(latencies, time.perf_counter() - began)


def aio_load_main(argv: list[str]) -> int:
    """Child process: ``--aio-load TARGET REQUESTS_FILE CLIENTS SECONDS`` -> JSON on stdout."""
    target, requests_file, clients, seconds = argv
    blob = Path(requests_file).read_bytes()
    requests, offset = [], 0
    while offset < len(blob):
        size = int.from_bytes(blob[offset:offset + 4], "little")
        requests.append(blob[offset + 4:offset + 4 + size])
        offset += 4 + size
    result = asyncio.run(_aio_load(target, requests, int(clients), float(seconds)))
    print(json.dumps(result))
    return 0


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_aio(target: str, requests_file: Path, clients: int, seconds: float,
                server_pid: int | None = None) -> dict[str, float]:
    """The aio load on ``target``; with ``server_pid``, also the server's CPU milliseconds
    per answered request (``server_cpu_ms``)."""
    cpu_before = process_cpu_seconds(server_pid) if server_pid else 0.0
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.serving", "--aio-load", target, str(requests_file),
         str(clients), str(seconds)],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300,
    )
    if done.returncode != 0:
        raise SystemExit(f"load generator failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if server_pid:
        answered = result["qps"] * seconds
        result["server_cpu_ms"] = 1e3 * (process_cpu_seconds(server_pid) - cpu_before) / answered
    return result


# ----------------------------------------------------------------------------- floor server


def fixed_answer_main(argv: list[str]) -> int:
    """Child process: ``--fixed-answer PORT RESPONSE_FILE``: a gRPC server that answers every
    Predict with the same serialized response (the transport floor, no model)."""
    from concurrent import futures

    from serving.wire import PREDICTION_SERVICE

    port, response_file = argv
    answer = Path(response_file).read_bytes()
    handler = grpc.method_handlers_generic_handler(
        PREDICTION_SERVICE,
        {"Predict": grpc.unary_unary_rpc_method_handler(lambda request, context: answer)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
    return 0


# ----------------------------------------------------------------------------- main


def wall(command: list[str]) -> float:
    """Seconds a fresh process takes to run ``command`` to its end."""
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    return time.perf_counter() - started


def make_export(workdir: Path, k: int, overrides: list[str]) -> Path:
    run_dir, base = workdir / "run", workdir / "models" / MODEL
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    sets = [a for o in ["training.epochs=2", *overrides] for a in ("--set", o)]
    log(f"training the synthetic default ({' '.join(sets)})")
    subprocess.run([sys.executable, "-m", "training.cli", "train", "--run-dir", str(run_dir), *sets],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    log("exporting with ScaNN")
    subprocess.run([sys.executable, "-m", "training.cli", "export", str(run_dir), "--model-base-path",
                    str(base), "--index", "scann", "--k", str(k)],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    return base


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--aio-load"]:
        return aio_load_main(argv[1:])
    if argv[:1] == ["--fixed-answer"]:
        return fixed_answer_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base-path", type=Path, help="an export (models/NAME)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per configuration")
    parser.add_argument("--k", type=int, default=10, help="K when this script exports")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="training override when this script trains")
    parser.add_argument("--serve-flag", action="append", default=[], metavar="FLAG[=VALUE]",
                        help="a flag for every tfrs-cosine serve this script starts, e.g. "
                             "--serve-flag=--tensorflow_intra_op_parallelism=1")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving.md")
    args = parser.parse_args(argv)

    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from export.contract import SERVING_DEFAULT
    from serving.process import ServerProcess, free_port

    workdir = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    servers: list[ServerProcess] = []
    rows: dict[str, dict] = {}

    def start(name: str, *flags: str) -> ServerProcess:
        log(f"starting tfrs-cosine serve ({name})")
        srv = ServerProcess(["--model_name", MODEL, "--model_base_path", str(base),
                             "--file_system_poll_wait_seconds", "0", *args.serve_flag, *flags],
                            workdir / f"{name}.log")
        servers.append(srv)
        srv.wait_available(MODEL)
        return srv

    def record(key: str, result: dict) -> dict:
        rows[key] = result
        log(f"{key:44s} p50 {result['p50']:7.2f} ms  p99 {result['p99']:7.2f} ms  {result['qps']:8.0f} q/s")
        return result

    try:
        base = args.model_base_path or make_export(workdir, args.k, args.set)
        version_dir = base / str(max(int(p.name) for p in base.iterdir() if p.name.isdigit()))
        users = [u for u in (version_dir / "assets" / "users.txt").read_text().split("\n") if u][:1024]
        (user_key,) = SERVING_DEFAULT.input_names
        rng = np.random.default_rng(0)
        ones = [[users[int(i)]] for i in rng.integers(0, len(users), 256)]
        sixty_fours = [[users[int(i)] for i in rng.integers(0, len(users), 64)] for _ in range(16)]

        def request_of(ids: list[str]) -> predict_pb2.PredictRequest:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL
            request.model_spec.signature_name = SERVING_DEFAULT.name
            request.inputs[user_key].CopyFrom(tf.make_tensor_proto(np.array(ids, dtype=object)))
            return request

        requests_1 = [request_of(ids) for ids in ones]
        requests_64 = [request_of(ids) for ids in sixty_fours]
        bodies_64 = [json.dumps({"inputs": {user_key: ids}}).encode() for ids in sixty_fours]
        requests_file = workdir / "requests-b1.bin"
        requests_file.write_bytes(b"".join(
            len(data).to_bytes(4, "little") + data for data in (r.SerializeToString() for r in requests_1)
        ))

        # ---- in-process peer
        from export.scann_ops import register_scann_ops

        register_scann_ops()
        log(f"loading {version_dir} in-process")
        function = tf.saved_model.load(str(version_dir)).signatures[SERVING_DEFAULT.name]
        tensors_1 = [{user_key: tf.constant(ids)} for ids in ones]
        tensors_64 = [{user_key: tf.constant(ids)} for ids in sixty_fours]

        def in_process(tensors):
            def call(i: int) -> None:
                for value in function(**tensors[i % len(tensors)]).values():
                    value.numpy()
            return call

        from serving.servable import load_servable

        lean = load_servable(MODEL, int(version_dir.name), version_dir).signature(SERVING_DEFAULT.name)
        arrays_1 = [{user_key: np.array([u.encode() for u in ids], dtype=object)} for ids in ones]

        def in_process_lean(i: int) -> None:
            lean.call(arrays_1[i % len(arrays_1)])

        record("in-process b=64, 16 clients", measure_threads(in_process(tensors_64), 16, args.seconds))

        # ---- batching without a transport: ServerCore.predict called by threads of this process
        from serving.batching import BatchingParameters
        from serving.core import ServerCore
        from serving.versions import ModelConfig

        for batching in (None, BatchingParameters.from_text(BATCHING)):
            core = ServerCore([ModelConfig(MODEL, base)], poll_seconds=0, batching=batching)
            core.load_initial()
            for clients in (16, 64):
                record(f"core {'on' if batching else 'off'}: b=1, {clients} threads",
                       measure_threads(lambda i, core=core: core.predict(requests_1[i % 256]), clients, args.seconds))
            core.stop()

        # ---- (a) server-added latency and the transport floor
        plain = start("plain")
        channel = grpc.insecure_channel(plain.target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answer = workdir / "answer.bin"
        answer.write_bytes(stub.Predict(requests_1[0], timeout=60).SerializeToString())
        floor_port = free_port()
        floor = ServerProcess([], workdir / "floor.log", grpc_port=floor_port, rest_port=0, command=[
            sys.executable, "-m", "benchmarks.serving", "--fixed-answer", str(floor_port), str(answer)])
        servers.append(floor)
        floor_channel = grpc.insecure_channel(floor.target)
        grpc.channel_ready_future(floor_channel).result(timeout=60)
        floor_stub = prediction_service_pb2_grpc.PredictionServiceStub(floor_channel)

        def over(stub_, requests):
            return lambda i: stub_.Predict(requests[i % len(requests)], timeout=60)

        for rep in range(2):  # interleaved, twice: the machine's noise hits all alike
            record(f"in-process b=1, 1 client #{rep}", measure_threads(in_process(tensors_1), 1, args.seconds))
            record(f"in-process lean b=1, 1 client #{rep}", measure_threads(in_process_lean, 1, args.seconds))
            record(f"floor b=1, 1 client #{rep}", measure_threads(over(floor_stub, requests_1), 1, args.seconds))
            record(f"gRPC b=1, 1 client #{rep}", measure_threads(over(stub, requests_1), 1, args.seconds))

        # The transport's own ceiling for (b): no server answers batch-1 requests faster
        # than one that does no work at all.
        for clients in (16, 64):
            record(f"floor: gRPC b=1, {clients} clients",
                   measure_aio(floor.target, requests_file, clients, args.seconds,
                               floor.process.pid))

        # ---- (c) REST vs gRPC at batch 64, 16 clients
        local = threading.local()

        def rest(i: int) -> None:
            if not hasattr(local, "conn"):
                local.conn = http.client.HTTPConnection("127.0.0.1", plain.rest_port, timeout=60)
            local.conn.request("POST", f"/v1/models/{MODEL}:predict", body=bodies_64[i % len(bodies_64)],
                               headers={"Content-Type": "application/json"})
            response = local.conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(data[:300])
            json.loads(data)

        # ---- (e) what a client process pays: imports, and one `tfrs-cosine query`
        for name, code in (("import tensorflow_serving.apis.predict_pb2", "from tensorflow_serving.apis import predict_pb2"),
                           ("import serving.client", "import serving.client")):
            rows[name] = {"seconds": [wall([sys.executable, "-c", code]) for _ in range(3)]}
            log(f"{name:44s} {min(rows[name]['seconds']):.2f} s (best of 3 fresh processes)")
        query = [sys.executable, "-m", "training.cli", "query", "--target", plain.target, "--model", MODEL,
                 "recommend", users[0]]
        rows["tfrs-cosine query recommend"] = {"seconds": [wall(query) for _ in range(3)]}
        log(f"{'tfrs-cosine query recommend':44s} {min(rows['tfrs-cosine query recommend']['seconds']):.2f} s")

        record("gRPC b=64, 16 clients", measure_threads(over(stub, requests_64), 16, args.seconds))
        record("REST b=64, 16 clients", measure_threads(rest, 16, args.seconds))
        channel.close()

        # ---- (b) batching off vs on, (d) processes
        for clients in (16, 64):
            record(f"off: gRPC b=1, {clients} clients",
                   measure_aio(plain.target, requests_file, clients, args.seconds, plain.process.pid))
        plain.stop()
        # Batching off with fewer gRPC worker threads: on 2 cores, 16 threads mostly
        # contend for the interpreter lock.
        few = start("plain-4-threads", "--grpc_max_threads", "4")
        for clients in (16, 64):
            record(f"off, 4 gRPC threads: b=1, {clients} clients",
                   measure_aio(few.target, requests_file, clients, args.seconds, few.process.pid))
        few.stop()
        batching_file = workdir / "batching.config"
        batching_file.write_text(BATCHING)
        batched = start("batching", "--enable_batching", "--batching_parameters_file", str(batching_file))
        for clients in (16, 64):
            record(f"on: gRPC b=1, {clients} clients",
                   measure_aio(batched.target, requests_file, clients, args.seconds, batched.process.pid))
        batched.stop()
    finally:
        for srv in servers:
            srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    text = report(rows, args, argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


def describe_export(args) -> str:
    """The export measured: the default, or a given one from its model card."""
    if not args.model_base_path:
        return f"synthetic default (2,000 users, 300 items), 2 epochs, ScaNN, K={args.k}"
    base = args.model_base_path
    version = max(int(p.name) for p in base.iterdir() if p.name.isdigit())
    card = json.loads((base / str(version) / "assets.extra" / "model_card.json").read_text())
    return (f"{base} version {version}: {card['num_users']:,} users, {card['num_items']:,} items, "
            f"K={card['k']}, {card['index']['type']} index ({card['index']['description']})")


def report(rows: dict[str, dict], args, argv: list[str]) -> str:
    import tensorflow as tf

    def r(key: str) -> dict:
        return rows[key]

    def line(key: str, peer: str | None = None) -> str:
        row = r(key)
        ratio = f"{row['qps'] / r(peer)['qps']:.2f}x" if peer else ""
        cpu = f"{row['server_cpu_ms']:.3f}" if "server_cpu_ms" in row else ""
        return f"| {key} | {row['p50']:.2f} | {row['p99']:.2f} | {row['qps']:.0f} | {ratio} | {cpu} |"

    grpc_p50 = min(r(f"gRPC b=1, 1 client #{i}")["p50"] for i in range(2))
    floor_p50 = min(r(f"floor b=1, 1 client #{i}")["p50"] for i in range(2))
    local_p50 = min(r(f"in-process b=1, 1 client #{i}")["p50"] for i in range(2))
    lean_p50 = min(r(f"in-process lean b=1, 1 client #{i}")["p50"] for i in range(2))
    added = grpc_p50 - local_p50
    ok_a = added <= floor_p50 + 0.1
    speedups = {c: r(f"on: gRPC b=1, {c} clients")["qps"] / r(f"off: gRPC b=1, {c} clients")["qps"] for c in (16, 64)}
    ok_b = all(s >= 3 for s in speedups.values())
    rest_ratio = r("REST b=64, 16 clients")["p50"] / r("gRPC b=64, 16 clients")["p50"]
    ok_c = rest_ratio <= 2
    load = os.getloadavg()
    command = " ".join([".venv/bin/python -m benchmarks.serving", *argv])
    out = [
        "# Serving: server-added latency, batching, REST, client cost",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}. "
        f"Export: {describe_export(args)}, signature serving_default. {args.seconds:.0f} s per row.",
        "",
        "| row | p50 ms | p99 ms | queries/s | queries/s vs peer | server CPU ms per request |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    out += [line(k) for k in rows if k.startswith(("in-process", "floor", "gRPC b=1"))]
    for c in (16, 64):
        out += [line(f"core off: b=1, {c} threads"), line(f"core on: b=1, {c} threads", f"core off: b=1, {c} threads")]
    out += [line("gRPC b=64, 16 clients"), line("REST b=64, 16 clients", "gRPC b=64, 16 clients")]
    for c in (16, 64):
        out += [line(f"off: gRPC b=1, {c} clients"), line(f"on: gRPC b=1, {c} clients", f"off: gRPC b=1, {c} clients"),
                line(f"floor: gRPC b=1, {c} clients", f"off: gRPC b=1, {c} clients"),
                line(f"off, 4 gRPC threads: b=1, {c} clients", f"off: gRPC b=1, {c} clients")]
    out += [
        "",
        f"- (a) server-added latency, batch 1, 1 client: gRPC p50 {grpc_p50:.2f} ms - in-process "
        f"{local_p50:.2f} ms = {added:.2f} ms; transport floor (fixed answer, no model) p50 "
        f"{floor_p50:.2f} ms; target <= floor + 0.1 = {floor_p50 + 0.1:.2f} ms: "
        f"{'met' if ok_a else 'missed'} (lowest of two interleaved rows each). Against the "
        f"server's own model call in process (Signature.call, {lean_p50:.2f} ms) the server adds "
        f"{grpc_p50 - lean_p50:.2f} ms.",
        f"- (b) batching on vs off, batch-1 requests: {speedups[16]:.2f}x at 16 clients, "
        f"{speedups[64]:.2f}x at 64; target >= 3x: {'met' if ok_b else 'missed'}. Without the "
        "gRPC transport (ServerCore.predict in this process): "
        + ", ".join(f"{r(f'core on: b=1, {c} threads')['qps'] / r(f'core off: b=1, {c} threads')['qps']:.2f}x at {c}"
                    for c in (16, 64)) + ". The ceiling through this transport (the no-model "
        "floor server's throughput over batching off's): "
        + ", ".join(f"{r(f'floor: gRPC b=1, {c} clients')['qps'] / r(f'off: gRPC b=1, {c} clients')['qps']:.2f}x at {c}"
                    for c in (16, 64)) + ".",
        f"- (c) REST / gRPC p50 at batch 64, 16 clients: {rest_ratio:.2f}x; target <= 2x: "
        f"{'met' if ok_c else 'missed'}.",
        "- (e) a client process, best of 3 fresh processes: "
        + "; ".join(f"`{k}` {min(rows[k]['seconds']):.2f} s" for k in (
            "import tensorflow_serving.apis.predict_pb2", "import serving.client", "tfrs-cosine query recommend")),
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
