#!/usr/bin/env bash
# Packed documents under context parallelism: the same S with one dense
# causal sequence and with documents of long-tailed (log-normal) lengths
# averaging S/8, through the ring with the zigzag split and with the
# document-aware assignment (--cp-load-balance documents), and a sliding
# window against the dense ring.
#
#   bench/doc_bench.sh [BINARY]     (env: S=32768 P=4 H=8 D=64 ITERS=1 SEED=7
#                                    NDOC=8 SIGMA=1 WINDOW=1024 PW=8)
#
# SIGMA is the log-normal's spread: 1 gives a long tail (one document holds
# most of the pairs: ~2.4x fewer than dense at seed 7), 0.3 nearly equal
# lengths (~7x fewer, near the 8x of equal documents).
#
# Prints each run's slowest-rank fwd/bwd medians, the compute imbalance and
# the visible-pair imbalance of both assignments (from the --iters table),
# the bytes sent per rank, and the speed-up of the documents over the dense
# run.  With P > cores the ranks share cores: times are oversubscribed, the
# ratios between runs of this script are what to read.
set -uo pipefail
BIN=${1:-build/cpattn}
S=${S:-32768} P=${P:-4} H=${H:-8} D=${D:-64} ITERS=${ITERS:-1} SEED=${SEED:-7}
WINDOW=${WINDOW:-1024} PW=${PW:-8}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1

# S/8 documents on average: NDOC = 8 lengths drawn log-normal (sigma 1, a long
# tail: a few long documents, many short ones), scaled to sum to S.
CU=$(awk -v S="$S" -v seed="$SEED" -v n="${NDOC:-8}" -v sigma="${SIGMA:-1}" 'BEGIN {
  srand(seed); total = 0
  for (i = 0; i < n; ++i) {
    z = sqrt(-2 * log(1 - rand())) * cos(6.283185307179586 * rand())
    w[i] = exp(sigma * z); total += w[i] }
  pos = 0; out = "0"
  for (i = 0; i < n; ++i) {
    len = (i == n - 1) ? S - pos : int(w[i] / total * S); if (len < 1) len = 1
    pos += len; out = out "," pos }
  print out }')
NDOCS=$(awk -F, '{ print NF - 1 }' <<<"$CU")

run() { # NP ARGS... -> the tool's output
  local np=$1
  shift
  timeout 3000 mpiexec -n "$np" --oversubscribe "$BIN" attn --context-parallel-size "$np" \
    --context-parallel-algo megatron_cp_algo --seq-length "$S" --num-attention-heads "$H" \
    --kv-channels "$D" --threads 1 --iters "$ITERS" --warmup 0 "$@" </dev/null 2>&1
}

figures() { # -> "fwd bwd imb_f imb_b iz id sent" from an --iters output
  awk '/^forward  median/ { f = $3 } /^backward median/ { b = $3 }
       /^imbalance \(max\/mean rank compute_s\)/ { cf = $(NF - 2); cb = $NF }
       /^imbalance \(max\/mean rank visible pairs\)/ { iz = $(NF - 2); id = $NF }
       /^ +[0-9]+ +[0-9.]+ +[0-9.-]+ / { s = $6 + $7; if (s > sent) sent = s }
       END { printf "%s %s %s %s %s %s %s\n", f, b, cf, cb, iz, id, sent }'
}

echo "S=$S P=$P H=$H D=$D: $NDOCS documents, log-normal lengths (sigma ${SIGMA:-1}) averaging S/$NDOCS (seed $SEED)"
awk -F, -v S="$S" '{ p = 0; for (i = 2; i <= NF; ++i) { l = $i - $(i - 1); p += l * (l + 1) / 2 }
  printf "cu_seqlens %s\nvisible causal pairs: %.4g of the dense %.4g (%.2fx fewer)\n", $0, p,
         S * (S + 1) / 2, S * (S + 1) / 2 / p }' <<<"$CU"
printf "%-34s | %10s %10s | %6s %6s | %8s %9s | %9s\n" "run" "fwd_ms" "bwd_ms" "imb_f" "imb_b" \
  "pairs_zz" "pairs_doc" "sent_MiB"
declare -A T
for spec in "dense causal, zigzag|" "documents, zigzag|--cu-seqlens $CU" \
            "documents, document-aware|--cu-seqlens $CU --cp-load-balance documents"; do
  name=${spec%%|*} args=${spec#*|}
  # shellcheck disable=SC2086
  read -r f b cf cb iz id sent <<<"$(run "$P" $args | figures)"
  T[$name]=$(awk -v f="$f" -v b="$b" 'BEGIN { print f + b }')
  printf "%-34s | %10s %10s | %6s %6s | %8s %9s | %9s\n" "$name" "$f" "$b" "$cf" "$cb" "$iz" "$id" "$sent"
done
for name in "documents, zigzag" "documents, document-aware"; do
  awk -v d="${T[dense causal, zigzag]}" -v x="${T[$name]}" -v n="$name" \
    'BEGIN { printf "fwd+bwd speed-up of %s over dense: %.2fx\n", n, d / x }'
done

echo
echo "sliding window $WINDOW at S=$S, P=$PW (ring):"
for spec in "dense ring|" "window $WINDOW|--sliding-window $WINDOW"; do
  name=${spec%%|*} args=${spec#*|}
  # shellcheck disable=SC2086
  read -r f b cf cb iz id sent <<<"$(run "$PW" $args | figures)"
  printf "%-34s | fwd %10s bwd %10s ms | sent %9s MiB per rank (fwd+bwd)\n" "$name" "$f" "$b" "$sent"
done
