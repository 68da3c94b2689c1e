#!/usr/bin/env bash
# Context-parallel attention benchmark: every algorithm on the same shapes,
# one rank per core and one thread per rank, against a single-rank run of the
# same problem measured in the same session.
#
#   bench/cp_bench.sh [BINARY]          (env: SEQS="8192 32768" PS="2 4 8" GS="8 2"
#                                        ITERS=3 MASK=causal D=128 H=8)
#
# Columns: fwd/bwd = median ms per call on the slowest rank; ideal% = T(1 rank)
# / (P x T(P)) as ring-flash-attention reports it; wait = median ms blocked in
# MPI (exposed communication: ring waits, or the whole all-to-all for
# Ulysses); sent = MiB sent per rank per fwd+bwd; imb = max/mean per-rank
# compute time (fwd, bwd); mem = peak RSS per rank, the largest over ranks
# 1..P-1 (rank 0 also holds the gathered global tensors the tool digests).  With P > cores (2 here)
# ranks share cores, so ideal% above P = 2 measures oversubscription, not the
# algorithm; exposed communication and bytes stay meaningful.
set -uo pipefail
BIN=${1:-build/cpattn}
SEQS=${SEQS:-"8192 32768"}
PS=${PS:-"2 4 8"}
GS=${GS:-"8 2"}
ITERS=${ITERS:-3}
MASK=${MASK:-causal}
D=${D:-128}
H=${H:-8}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1

run() { # P args... -> prints the tool's output
  local P=$1
  shift
  timeout 3000 mpiexec -n "$P" --oversubscribe "$BIN" attn --iters "$ITERS" --warmup 1 --threads 1 \
    --num-attention-heads "$H" --kv-channels "$D" --attention-mask-type "$MASK" "$@" 2>&1
}

# fwd bwd fwd_wait bwd_wait sent imb_f imb_b mem (slowest rank / max over ranks)
summarise() {
  awk '
    /^ *[0-9]+ +[0-9.]+ +[0-9.-]+ +[0-9.]+ +[0-9.-]+ +[0-9.]+ +[0-9.-]+ +[0-9.]+$/ {
      if ($4 > wf) wf = $4; if ($5 > wb) wb = $5; s = $6 + $7; if (s > sent) sent = s
      if ($1 > 0 && $8 > mem1) mem1 = $8 }
    /^forward  median/ { f = $3 }
    /^backward median/ { b = $3 }
    /^imbalance/ { imf = $(NF-2); imb = $NF }
    /^peak RSS/ { mem = $3 }
    END { if (imf == "") { imf = "-"; imb = "-" }
          if (mem1 > 0) mem = mem1
          printf "%s %s %s %s %s %s %s %s\n", f, b, wf + 0, wb + 0, sent + 0, imf, imb, mem }'
}

printf "%-8s %-18s %2s %2s %2s %6s %2s | %9s %9s %7s | %8s %8s %8s | %9s %9s | %7s\n" \
  "mask" "algorithm" "P" "U" "W" "S" "G" "fwd_ms" "bwd_ms" "ideal%" "fwait_ms" "bwait_ms" \
  "sent_MiB" "imb_f" "imb_b" "mem_MiB"
for S in $SEQS; do
  for G in $GS; do
    read -r f1 b1 _ _ _ _ _ m1 <<<"$(run 1 --seq-length "$S" --num-query-groups "$G" | summarise)"
    t1=$(awk -v f="$f1" -v b="$b1" 'BEGIN { print f + b }')
    printf "%-8s %-18s %2s %2s %2s %6s %2s | %9s %9s %7s | %8s %8s %8s | %9s %9s | %7s\n" \
      "$MASK" "single rank" 1 - - "$S" "$G" "$f1" "$b1" 100 - - - - - "$m1"
    for P in $PS; do
      configs=("megatron_cp_algo 1 1" "ulysses_cp_algo 1 1")
      [ "$P" -ge 4 ] && configs+=("megatron_cp_algo 1 2" "hybrid_cp_algo 2 1")
      [ "$P" -ge 8 ] && configs+=("megatron_cp_algo 1 4" "hybrid_cp_algo 2 2" "hybrid_cp_algo 4 1")
      for cfg in "${configs[@]}"; do
        read -r algo U W <<<"$cfg"
        extra=()
        [ "$algo" = hybrid_cp_algo ] && extra+=(--ulysses-degree-in-cp "$U")
        [ "$algo" != ulysses_cp_algo ] && extra+=(--cp-window-size "$W" --use-cp-send-recv-overlap)
        out=$(run "$P" --seq-length "$S" --num-query-groups "$G" --context-parallel-size "$P" \
          --context-parallel-algo "$algo" "${extra[@]}")
        if ! grep -q "^forward  median" <<<"$out"; then
          printf "%-8s %-18s %2s %2s %2s %6s %2s | skipped: %s\n" "$MASK" "$algo" "$P" "$U" "$W" \
            "$S" "$G" "$(grep -m1 'cpattn attn:' <<<"$out")"
          continue
        fi
        read -r f b wf wb sent imf imb mem <<<"$(summarise <<<"$out")"
        ideal=$(awk -v t1="$t1" -v f="$f" -v b="$b" -v p="$P" 'BEGIN { printf "%.0f", 100 * t1 / (p * (f + b)) }')
        printf "%-8s %-18s %2s %2s %2s %6s %2s | %9s %9s %7s | %8s %8s %8s | %9s %9s | %7s\n" \
          "$MASK" "$algo" "$P" "$U" "$W" "$S" "$G" "$f" "$b" "$ideal" "$wf" "$wb" "$sent" \
          "$imf" "$imb" "$mem"
      done
    done
  done
done
