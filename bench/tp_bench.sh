#!/usr/bin/env bash
# Tensor-parallel benchmark: every split of one world size W into TP x CP
# (DP = 1; W = 8: TP8 CP1, TP4 CP2, TP2 CP4, TP1 CP8), each with and
# without --sequence-parallel where TP > 1, training a small GPT with ring
# attention (megatron_cp_algo, causal, zigzag) at one sequence length S.
#
#   WORLD=8 SEQ=16384 bench/tp_bench.sh [BINARY]
#       (env: WORLD=8 SEQ=16384 L=2 C=256 H=8 G=8 F=512 V=256 ITERS=3 TIMEOUT=900)
#
# Prints a markdown table from the last logged iteration of each run: time
# per iteration, peak memory per rank (the largest over ranks), and rank 0's
# MiB sent per iteration as `cpattn train` counts them (TP: the TP
# collectives at ring volume, all-reduce 2(p-1)/p of the payload,
# all-gather and reduce-scatter (p-1)/p; CP: the ring attention's sends as
# its plan counts them; grads: the replicas' gradient all-reduce), each
# beside a closed-form formula with the ratio measured / formula:
#   TP, N = S/CP rows, f = (p-1)/p, p = TP, 4-byte floats, 8-byte doubles:
#     no SP: (4L+2) all-reduces of N x C floats (fwd 2 per layer + embedding,
#            bwd 2 per layer + LM head), (4L+2)*N*C*4*2f, plus the
#            vocabulary-parallel cross-entropy's all-reduces of N + 2N
#            doubles, 3N*8*2f;
#     SP:    all-gathers / reduce-scatters of N x C floats, fwd 4L+2, bwd
#            6L+2 (the norm outputs are gathered again for the weight
#            gradients), (10L+4)*N*C*4*f, the same cross-entropy, and the
#            norm weights' gradient all-reduce (2L+1)*C*4*2f;
#   CP: the ring's schedule (src/cp/ring.c cpa_ring_volume): P - 1 K/V
#       blocks forward; backward the first fetch of my own block, P - 1 K/V
#       blocks and P - 1 dK/dV accumulators, (3P - 2) blocks of
#       2*(S/P)*g*D*4 bytes per layer, g = KV heads per rank (G/TP, or 1
#       when replicated), D = C/H, times L.  (docs/ALGORITHMS.md's
#       ~6*S*g*D*4 per layer is the large-P limit of the same count.)
#   grads: 2(R-1)/R*4*params, R = CP x DP, params = the count the log
#       prints (rank 0's TP shard).
# One thread per rank, so with W above the cores of this machine (2 here)
# ranks share cores: ms/iter then measures oversubscription, not the split;
# bytes and memory per rank stay exact.  Each run is bounded by TIMEOUT
# seconds; the script exits non-zero if any run fails.
set -uo pipefail
BIN=${1:-build/cpattn}
WORLD=${WORLD:-8}
SEQ=${SEQ:-16384}
L=${L:-2}
C=${C:-256}
H=${H:-8}
G=${G:-8}
F=${F:-512}
V=${V:-256}
ITERS=${ITERS:-3}
TIMEOUT=${TIMEOUT:-900}
CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) # nproc obeys OMP_NUM_THREADS
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1

run() { # TP CP args...
  local TP=$1 CP=$2
  shift 2
  timeout "$TIMEOUT" mpiexec -n "$WORLD" --oversubscribe "$BIN" train --num-layers "$L" \
    --hidden-size "$C" --num-attention-heads "$H" --group-query-attention --num-query-groups "$G" \
    --ffn-hidden-size "$F" --vocab-size "$V" --seq-length "$SEQ" --micro-batch-size 1 \
    --context-parallel-algo megatron_cp_algo --train-iters "$ITERS" --log-interval 1 \
    --eval-interval 0 --eval-iters 1 --threads 1 --tensor-model-parallel-size "$TP" \
    --context-parallel-size "$CP" "$@" 2>&1
}

# Formulas in MiB: TP CP SP(0|1) -> "tp cp"
formulas() {
  awk -v tp="$1" -v cp="$2" -v sp="$3" -v S="$SEQ" -v L="$L" -v C="$C" -v H="$H" -v G="$G" 'BEGIN {
    N = S / cp; f = (tp - 1) / tp; mib = 1048576
    ce = 3 * N * 8 * 2 * f
    if (sp) t = (10 * L + 4) * N * C * 4 * f + ce + (2 * L + 1) * C * 4 * 2 * f
    else    t = (4 * L + 2) * N * C * 4 * 2 * f + ce
    g = G >= tp ? G / tp : 1 # KV heads per rank (replicated when G < TP)
    c = cp > 1 ? (3 * cp - 2) * 2 * (S / cp) * g * (C / H) * 4 * L : 0
    printf "%.3f %.3f\n", t / mib, c / mib }'
}

cell() { # measured formula -> "formula (ratio)"
  awk -v m="$1" -v f="$2" 'BEGIN { if (f > 0) printf "%.3f (%.3f)", f, m / f; else printf "%.3f (-)", f }'
}

printf "W=%s ranks (TP x CP, DP = 1), S=%s, %s layers, hidden %s, %s heads, %s KV groups, ffn %s, " \
  "$WORLD" "$SEQ" "$L" "$C" "$H" "$G" "$F"
printf "vocab %s, micro batch 1, megatron_cp_algo (causal), %s iterations (last one reported); " \
  "$V" "$ITERS"
printf "ms/iter is oversubscribed when W > %s cores.  Formula cells: formula (measured / formula).\n\n" "$CORES"
printf "| split | SP | ms/iter (oversubscribed) | peak MiB/rank | TP MiB measured | TP formula | "
printf "CP MiB measured | CP formula | grads MiB (measured / formula) | params/rank |\n"
printf "|---|---|---|---|---|---|---|---|---|---|\n"
fail=0
for ((TP = WORLD; TP >= 1; --TP)); do
  [ $((WORLD % TP)) -eq 0 ] || continue
  CP=$((WORLD / TP))
  for SP in 0 1; do
    [ "$SP" -eq 1 ] && [ "$TP" -eq 1 ] && continue
    args=()
    [ "$SP" -eq 1 ] && args=(--sequence-parallel)
    out=$(run "$TP" "$CP" "${args[@]}")
    rc=$?
    line=$(grep -E "^ iteration" <<<"$out" | tail -n 1)
    spl=$([ "$SP" -eq 1 ] && echo yes || echo no)
    if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
      printf "| TP%s CP%s | %s | failed (rc %s): %s |\n" "$TP" "$CP" "$spl" "$rc" \
        "$(grep -m1 -E 'cpattn train:|error|abort' <<<"$out" | tr '|' '/')"
      fail=1
      continue
    fi
    params=$(sed -nE 's/^# model: ([0-9]+) parameters.*/\1/p' <<<"$out" | head -n 1)
    ms=$(sed -E 's/.*\| ([0-9.]+) ms\/iter.*/\1/' <<<"$line")
    mem=$(sed -E 's/.*peak mem ([0-9.]+) MiB.*/\1/' <<<"$line")
    read -r mtp mcp mgr <<<"$(sed -E 's/.*MiB\/iter per rank: TP ([0-9.]+) CP ([0-9.]+) grads ([0-9.]+).*/\1 \2 \3/' <<<"$line")"
    read -r ftp fcp <<<"$(formulas "$TP" "$CP" "$SP")"
    fgr=$(awk -v r="$CP" -v n="$params" 'BEGIN { printf "%.3f", 2 * (r - 1) / r * 4 * n / 1048576 }')
    printf "| TP%s CP%s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s |\n" "$TP" "$CP" "$spl" \
      "$ms" "$mem" "$mtp" "$(cell "$mtp" "$ftp")" "$mcp" "$(cell "$mcp" "$fcp")" "$mgr" "$fgr" "$params"
  done
done
exit "$fail"
