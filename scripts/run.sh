#!/usr/bin/env bash
# The README's main command: install what is missing, build, and run the main
# job.  For now the main job is a single-process attention forward+backward at
# a realistic shape, checked against the double-precision reference, with its
# speed.  Extra arguments are passed to `cpattn attn`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" >/dev/null
exec build/cpattn attn --seq-length 4096 --num-attention-heads 8 --num-query-groups 2 \
  --kv-channels 128 --attention-mask-type causal --check --iters 3 "$@"
