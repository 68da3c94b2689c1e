#!/usr/bin/env bash
# The README's main command: install what is missing, build, and train a small
# GPT with context parallelism — 2 ranks, ring attention (megatron_cp_algo) with
# send/recv overlap — on the built-in copy task.  The "long-range loss" is the
# loss on the second half of each sequence, which copies the first half: it
# can only fall if attention works across the two ranks' shards.  A few
# minutes on 2 cores.  Extra arguments go to `cpattn train`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
exec mpiexec -n 2 --oversubscribe build/cpattn train \
  --context-parallel-size 2 --context-parallel-algo megatron_cp_algo --use-cp-send-recv-overlap \
  --num-layers 2 --hidden-size 128 --num-attention-heads 8 --group-query-attention \
  --num-query-groups 2 --seq-length 512 --micro-batch-size 4 --train-iters 300 \
  --lr 3e-3 --min-lr 1e-4 --lr-warmup-iters 30 --vocab-size 16 --log-interval 25 \
  --eval-interval 100 "$@"
