#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded synthetic default.
# train -> evaluate -> export (ScaNN) -> serve (TF Serving protocol) -> query (gRPC client)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUN=runs/demo

echo "== 1/4 train: cosine head + layer norm on the synthetic default (training/configs/synthetic.toml)"
rm -rf "$RUN"
$BIN/tfrs-cosine train --config training/configs/synthetic.toml --run-dir "$RUN"

echo "== 2/4 evaluate: exact top-K over the full catalog, training items excluded"
$BIN/tfrs-cosine evaluate "$RUN" --split test

echo "== 3/4 export: ScaNN index, K=10 -> models/demo"
rm -rf models/demo
$BIN/tfrs-cosine export "$RUN" --model-base-path models/demo --index scann --k 10

echo "== 4/4 serve (tfrs-cosine serve, TF Serving's gRPC/REST protocol) and query through the gRPC client"
$BIN/tfrs-cosine serve --model_name demo --model_base_path models/demo --port 8500 --rest_api_port 8501 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
$BIN/tfrs-cosine query --target localhost:8500 --model demo --retries 12 status
for user in $(head -n 2 "$RUN/vocab/users.txt"); do
  $BIN/tfrs-cosine query --target localhost:8500 --model demo recommend "$user" --explain --top 5
done
$BIN/tfrs-cosine query --target localhost:8500 --model demo similar "$(head -n 1 "$RUN/vocab/items.txt")" --top 5
kill -TERM $SERVER
wait $SERVER
trap - EXIT
