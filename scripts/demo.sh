#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded synthetic default.
# train -> evaluate -> (export, serve, query: added as those stages land)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUN=runs/demo

echo "== 1/2 train: cosine head + layer norm on the synthetic default (training/configs/synthetic.toml)"
rm -rf "$RUN"
$BIN/tfrs-cosine train --config training/configs/synthetic.toml --run-dir "$RUN"

echo "== 2/2 evaluate: exact top-K over the full catalog, training items excluded"
$BIN/tfrs-cosine evaluate "$RUN" --split test
