#!/usr/bin/env bash
# Trainer benchmark: peak memory per rank and time per iteration at a fixed
# sequence length for CP = 1, 2, 4, 8 with each algorithm, and CP = 2 against
# CP = 1 with full activation recomputation, as tokens/s per core.
#
#   bench/train_bench.sh [BINARY]     (env: S=8192 L=4 C=256 H=4 ITERS=3 CPS="1 2 4 8")
#
# One thread per rank.  Ranks beyond the 2 cores of this machine share cores,
# so time per iteration above CP = 2 measures oversubscription; memory per
# rank stays meaningful.  The last logged iteration (after warm-up) is used.
set -uo pipefail
BIN=${1:-build/cpattn}
S=${S:-8192}
L=${L:-4}
C=${C:-256}
H=${H:-4}
ITERS=${ITERS:-3}
CPS=${CPS:-"1 2 4 8"}
CORES=$(nproc)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1

run() { # P args...
  local P=$1
  shift
  timeout 3000 mpiexec -n "$P" --oversubscribe "$BIN" train --num-layers "$L" --hidden-size "$C" \
    --num-attention-heads "$H" --seq-length "$S" --micro-batch-size 1 --train-iters "$ITERS" \
    --log-interval 1 --eval-interval 0 --eval-iters 1 --threads 1 --context-parallel-size "$P" "$@" 2>&1
}

row() { # label P output
  local label=$1 P=$2 out=$3
  local line
  line=$(grep -E "^ iteration" <<<"$out" | tail -n 1)
  if [ -z "$line" ]; then
    printf "%-42s %3s | failed: %s\n" "$label" "$P" "$(grep -m1 'cpattn train:' <<<"$out")"
    return
  fi
  local ms tps mem used
  ms=$(sed -E 's/.*\| ([0-9.]+) ms\/iter.*/\1/' <<<"$line")
  tps=$(sed -E 's/.*\| ([0-9.]+) tokens\/s.*/\1/' <<<"$line")
  mem=$(sed -E 's/.*peak mem ([0-9.]+) MiB.*/\1/' <<<"$line")
  used=$((P < CORES ? P : CORES))
  printf "%-42s %3s | %10s %10s %12s | %8s\n" "$label" "$P" "$ms" "$tps" \
    "$(awk -v t="$tps" -v c="$used" 'BEGIN { printf "%.0f", t / c }')" "$mem"
}

printf "S=%s, %s layers, hidden %s, %s heads, micro batch 1, %s iterations (last one reported)\n" \
  "$S" "$L" "$C" "$H" "$ITERS"
printf "%-42s %3s | %10s %10s %12s | %8s\n" "configuration" "CP" "ms/iter" "tokens/s" \
  "tok/s/core" "mem_MiB"
for P in $CPS; do
  if [ "$P" -eq 1 ]; then
    row "no CP" 1 "$(run 1)"
    row "no CP, --recompute-granularity full" 1 "$(run 1 --recompute-granularity full)"
    continue
  fi
  row "megatron_cp_algo (ring, overlap)" "$P" "$(run "$P" --context-parallel-algo megatron_cp_algo --use-cp-send-recv-overlap)"
  [ "$P" -ge 4 ] && row "megatron_cp_algo W=2 (double ring)" "$P" \
    "$(run "$P" --context-parallel-algo megatron_cp_algo --cp-window-size 2 --use-cp-send-recv-overlap)"
  [ $((H % P)) -eq 0 ] && row "ulysses_cp_algo" "$P" "$(run "$P" --context-parallel-algo ulysses_cp_algo)"
  [ "$P" -ge 4 ] && row "hybrid_cp_algo U=2" "$P" \
    "$(run "$P" --context-parallel-algo hybrid_cp_algo --ulysses-degree-in-cp 2 --use-cp-send-recv-overlap)"
done
