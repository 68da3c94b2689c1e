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
# (every rank holds only its own rows); plan_MiB = the plan's memory per rank
# and model_MiB = the MiB a rank sends per fwd+bwd by the schedule, both from
# `cpattn algos`, which lists every configuration of the library's table
# valid at P (so a new algorithm is benchmarked with no edit here).  With P > cores (2 here)
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
      if ($8 > mem1) mem1 = $8 }
    /^forward  median/ { f = $3 }
    /^backward median/ { b = $3 }
    /^imbalance/ { imf = $(NF-2); imb = $NF }
    /^peak RSS/ { mem = $3 }
    END { if (imf == "") { imf = "-"; imb = "-" }
          if (mem1 > 0) mem = mem1
          printf "%s %s %s %s %s %s %s %s\n", f, b, wf + 0, wb + 0, sent + 0, imf, imb, mem }'
}

# One configuration's columns: algorithm, U, W from its flags.
flag_of() { # FLAG words... -> the value after FLAG, or "-"
  local f=$1; shift
  while [ $# -gt 0 ]; do [ "$1" = "$f" ] && { echo "$2"; return; }; shift; done
  echo -
}

printf "%-8s %-18s %2s %2s %2s %6s %2s | %9s %9s %7s | %8s %8s %8s | %9s %9s | %7s | %8s %9s\n" \
  "mask" "algorithm" "P" "U" "W" "S" "G" "fwd_ms" "bwd_ms" "ideal%" "fwait_ms" "bwait_ms" \
  "sent_MiB" "imb_f" "imb_b" "mem_MiB" "plan_MiB" "model_MiB"
for S in $SEQS; do
  for G in $GS; do
    read -r f1 b1 _ _ _ _ _ m1 <<<"$(run 1 --seq-length "$S" --num-query-groups "$G" | summarise)"
    t1=$(awk -v f="$f1" -v b="$b1" 'BEGIN { print f + b }')
    printf "%-8s %-18s %2s %2s %2s %6s %2s | %9s %9s %7s | %8s %8s %8s | %9s %9s | %7s | %8s %9s\n" \
      "$MASK" "single rank" 1 - - "$S" "$G" "$f1" "$b1" 100 - - - - - "$m1" - -
    for P in $PS; do
      # Every configuration of every algorithm the library's table holds,
      # valid at P for this shape, with the plan's memory and volume.
      while read -r -u 3 _ algo rest; do
        read -r -a words <<<"$(sed 's/ *plan_MiB.*//' <<<"$rest")"
        plan=$(awk '{ for (i = 1; i < NF; ++i) if ($i == "plan_MiB") print $(i + 1) }' <<<"$rest")
        model=$(awk '{ for (i = 1; i < NF; ++i) { if ($i == "fwd_sent_MiB") f = $(i + 1);
                       if ($i == "bwd_sent_MiB") b = $(i + 1) } } END { printf "%.1f", f + b }' <<<"$rest")
        U=$(flag_of --ulysses-degree-in-cp "${words[@]}")
        W=$(flag_of --cp-window-size "${words[@]}")
        out=$(run "$P" --seq-length "$S" --num-query-groups "$G" --context-parallel-size "$P" \
          --context-parallel-algo "$algo" "${words[@]}")
        if ! grep -q "^forward  median" <<<"$out"; then
          printf "%-8s %-18s %2s %2s %2s %6s %2s | skipped: %s\n" "$MASK" "$algo" "$P" "$U" "$W" \
            "$S" "$G" "$(grep -m1 'cpattn attn:' <<<"$out")"
          continue
        fi
        read -r f b wf wb sent imf imb mem <<<"$(summarise <<<"$out")"
        ideal=$(awk -v t1="$t1" -v f="$f" -v b="$b" -v p="$P" 'BEGIN { printf "%.0f", 100 * t1 / (p * (f + b)) }')
        printf "%-8s %-18s %2s %2s %2s %6s %2s | %9s %9s %7s | %8s %8s %8s | %9s %9s | %7s | %8s %9s\n" \
          "$MASK" "$algo" "$P" "$U" "$W" "$S" "$G" "$f" "$b" "$ideal" "$wf" "$wb" "$sent" \
          "$imf" "$imb" "$mem" "$plan" "$model"
      done 3< <("$BIN" algos --context-parallel-size "$P" --seq-length "$S" --num-attention-heads "$H" \
                 --num-query-groups "$G" --kv-channels "$D" --attention-mask-type "$MASK")
    done
  done
done
