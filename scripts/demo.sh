#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded synthetic default.
# train -> evaluate -> export (ScaNN) -> serve (TF Serving protocol) -> query (gRPC client)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUN=runs/demo

fail() { echo "demo: error: $*" >&2; exit 2; }

# Two free ports on 127.0.0.1 (DEMO_GRPC_PORT / DEMO_REST_PORT choose them instead).
read -r FREE_GRPC FREE_REST < <($BIN/python - <<'EOF'
import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
EOF
)
GRPC_PORT=${DEMO_GRPC_PORT:-$FREE_GRPC}
REST_PORT=${DEMO_REST_PORT:-$FREE_REST}
for port in "$GRPC_PORT" "$REST_PORT"; do
  $BIN/python -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "$port" \
    2>/dev/null || fail "port $port on 127.0.0.1 is in use; set DEMO_GRPC_PORT/DEMO_REST_PORT to free ports"
done

echo "== 1/4 train: cosine head + layer norm on the synthetic default (training/configs/synthetic.toml)"
rm -rf "$RUN"
$BIN/tfrs-cosine train --config training/configs/synthetic.toml --run-dir "$RUN"

echo "== 2/4 evaluate: exact top-K over the full catalog, training items excluded"
$BIN/tfrs-cosine evaluate "$RUN" --split test

echo "== 3/4 export: ScaNN index, K=10 -> models/demo"
rm -rf models/demo
$BIN/tfrs-cosine export "$RUN" --model-base-path models/demo --index scann --k 10

echo "== 4/4 serve on 127.0.0.1:$GRPC_PORT (gRPC) and :$REST_PORT (REST), query through the gRPC client"
$BIN/tfrs-cosine serve --model_name demo --model_base_path models/demo \
  --port "$GRPC_PORT" --rest_api_port "$REST_PORT" &
SERVER=$!
stop_server() {
  if kill -0 "$SERVER" 2>/dev/null; then kill -TERM "$SERVER"; fi
  wait "$SERVER" 2>/dev/null || true
}
trap stop_server EXIT
TARGET=localhost:$GRPC_PORT
$BIN/tfrs-cosine query --target "$TARGET" --model demo --retries 12 status \
  || fail "the server on $TARGET did not come up"
for user in $(head -n 2 "$RUN/vocab/users.txt"); do
  $BIN/tfrs-cosine query --target "$TARGET" --model demo recommend "$user" --explain --top 5
done
$BIN/tfrs-cosine query --target "$TARGET" --model demo similar "$(head -n 1 "$RUN/vocab/items.txt")" --top 5
curl -s -d '{"instances": ["'"$(head -n 1 "$RUN/vocab/users.txt")"'"]}' \
  "localhost:$REST_PORT/v1/models/demo:predict" | head -c 300 || true
echo
