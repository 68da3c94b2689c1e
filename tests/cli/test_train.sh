#!/usr/bin/env bash
# test_train.sh — the contract of `cpattn train` under mpiexec, checked from
# outside on tiny models (2 layers, hidden 32, 4 heads, S = 64):
#
#   1. Equivalence: the losses of the first 5 iterations at CP = 1 match those
#      at CP = 2 and 4 for every algorithm (ring, double ring W = 2, ring with
#      send/recv overlap, BNSD buffers, Ulysses, hybrid U = 2), for GQA, and
#      for data parallelism (DP = 2 x CP = 2 and DP = 2 x CP = 1 against one
#      rank accumulating the same global batch in micro-steps), and for tensor
#      parallelism with GQA (TP = 2; TP = 2 x CP = 2 ring with overlap and
#      Ulysses; TP = 2 x CP = 2 x DP = 2; TP = 4 with a padded vocabulary),
#      with --sequence-parallel (TP = 2, TP = 2 x CP = 2, TP = 2 x CP = 2 x
#      DP = 2 with recompute) and with KV heads replicated when G < TP (G = 1
#      on TP = 2, TP = 2 x CP = 2 Ulysses, TP = 4 with SP).
#   2. --recompute-granularity full gives the losses of the plain run (CP = 1
#      and CP = 2 ring).
#   3. Resume: 8 uninterrupted iterations (A) against 4 iterations stopped by
#      --exit-interval 4 with --save (B1) and a --load of that checkpoint
#      (B2): B2's iterations 5..8 print exactly A's losses, and B2's final
#      checkpoint is byte-identical to A's.  Checkpoints reshard: saved at
#      TP=2 x CP=2, resumed at TP=1 x CP=4, TP=2 x CP=1 x DP=2 and with
#      --sequence-parallel, iterations 5..8 match the uninterrupted run.
#   4. Errors: flag-rule violations exit 2 on every rank; a checkpoint of
#      another shape exits 2 naming hidden_size and both values; a corrupted
#      checkpoint, a missing --load folder and a missing --data-path file exit
#      1; a too-small --data-path file exits 2.  Each prints exactly one
#      "cpattn train:" line (rank 0) naming the cause, and no failed run
#      touches the good checkpoint its --save points at.
#   5. --data-path on a generated text file trains at CP = 2: the loss falls.
#   6. --help exits 0 and lists the flags with their defaults.
#   7. Megatron's data: `cpattn preprocess` writes PREFIX.bin/.idx from JSON
#      lines and text (round trip checked with od), and training on it with
#      --reset-position-ids --eod-mask-loss prints the CP=1 losses at CP=2
#      (ring, Ulysses); so does the packed copy task (--synthetic-documents)
#      at CP=2 and 4.  A bad .idx (version, pointers) or a truncated .bin
#      exits 2 on every rank naming the file and the field;
#      With --reset-attention-mask as well, CP=1 losses are printed by ring
#      (overlap), Ulysses and all-gather at CP=2 and by ring, double ring
#      and hybrid at CP=4.  --reset-attention-mask with the documents
#      balance, the reset flags without documents, a bad
#      --split and an empty valid split exit 2; a bad JSON line makes
#      preprocess exit 2 naming FILE:LINE and write nothing.
#
# usage: bash tests/cli/test_train.sh path/to/cpattn
# Prints one line per case and "N passed, N failed"; exits 1 if any failed.
# Every job runs under `timeout` as `mpiexec -n N --oversubscribe` with Open
# MPI's run-as-root variables and one OpenMP thread per rank; each rank's
# own exit code is recorded through a small bash wrapper (prun in lib.sh),
# so "exit 2 on every rank" is checked, not assumed.
# Needs bash, coreutils, awk, cmp, od, dd and Open MPI's mpiexec.  About a
# minute on two cores.

set -u
source "$(dirname "$0")/lib.sh"

BIN=${1:?usage: test_train.sh path/to/cpattn}
cli_setup cpattn-train "build it first"
mpi_setup

# The tiny model and a schedule that moves the weights in 5 steps (warm-up of
# one iteration, then a 1e-2 peak), logging every iteration, no evaluation
# until the end.
MODEL="--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 64"
SCHED="--lr 1e-2 --lr-warmup-iters 1 --log-interval 1 --eval-interval 0"
RING="--context-parallel-algo megatron_cp_algo"
ULY="--context-parallel-algo ulysses_cp_algo"
HYB="--context-parallel-algo hybrid_cp_algo"

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# losses [FILE] : the losses of the log lines, one a line, as printed
# (" iteration      3/     5 | loss 3.490935 | ...").
losses() {
    grep '^ iteration ' "${1:-$OUT}" | sed -n 's/.*| loss \([-+0-9.eEnaif]*\) |.*/\1/p'
}

# iter_numbers [FILE] : the iteration numbers of the log lines, one a line.
iter_numbers() {
    grep '^ iteration ' "${1:-$OUT}" | sed -n 's/^ iteration *\([0-9]*\)\/.*/\1/p'
}

# train_losses P N ARGS... : `cpattn train ARGS` on P ranks; on success (0 on
# every rank and exactly N log lines, so only rank 0 printed) sets $got to
# the N losses, space-separated, and returns 0; otherwise sets $why.
train_losses() {
    local np=$1 n=$2
    shift 2
    got=""
    prun "$np" train "$@"
    if [ "$rc" -ne 0 ]; then
        why="rank exit codes '$codes' (rc $rc, 124: timed out) (mpiexec -n $np cpattn train $*)"
        return 1
    fi
    got=$(losses | tr '\n' ' ' | sed 's/ $//')
    local count
    count=$(losses | wc -l)
    if [ "$count" -ne "$n" ]; then
        why="$count log lines, expected $n (only rank 0 prints) (mpiexec -n $np cpattn train $*)"
        return 1
    fi
    return 0
}

# close "A..." "B..." : the two lists of losses have the same length and
# agree elementwise within |a - b| <= 1e-4 * max(1, |a|).
#
# Why this tolerance: every configuration computes the same function of the
# same data in fp32.  The CP attention is exact up to rounding (~1e-6
# relative: the online softmax merges partial results in another order, and
# gradients are summed over ranks in another order), so the losses differ
# only by summation-order rounding.  Five AdamW steps amplify that little (a
# normalised step of at most lr = 1e-2 per weight), leaving differences
# orders of magnitude below 1e-4, while a wrong shard, mask or gradient
# moves the loss by 1e-3 or more within a step or two.
close() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        na = split(a, x, " "); nb = split(b, y, " ")
        if (na != nb || na == 0) exit 1
        for (i = 1; i <= na; ++i) {
            d = x[i] - y[i]; if (d < 0) d = -d
            m = x[i] < 0 ? -x[i] : x[i]; if (m < 1) m = 1
            if (!(d <= 1e-4 * m)) exit 1
        }
        exit 0
    }'
}

# same_losses NAME REF P ARGS... : a P-rank run prints 5 losses close to REF.
same_losses() {
    local name=$1 ref=$2 np=$3
    shift 3
    if ! train_losses "$np" 5 "$@"; then
        fail "$name" "$why"
    elif ! close "$ref" "$got"; then
        fail "$name" "losses '$got' differ from the reference '$ref' (tolerance 1e-4 relative)"
    elif [ "$ref" = "$got" ]; then
        pass "$name (identical to 6 decimals)"
    else
        pass "$name (within 1e-4: '$got' vs '$ref')"
    fi
}

# expect_fail NAME P CODE ARGS... -- WORD... : `cpattn train ARGS` on P
# ranks exits CODE on every rank within $USAGE_SECS, with exactly one
# "cpattn train:" line on stderr (rank 0's) containing every WORD.
expect_fail() {
    local name=$1 np=$2 code=$3
    shift 3
    local args=() words=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do args+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    words=("$@")
    expect_ranks "$name" "$np" "$code" train "${args[@]}" || return
    local msg w
    msg=$(grep '^cpattn train:' "$ERR")
    if [ "$secs" -gt "$USAGE_SECS" ]; then
        fail "$name" "took ${secs}s (more than ${USAGE_SECS}s: a rank waited)"
        return
    elif [ "$(grep -c '^cpattn train:' "$ERR")" -ne 1 ]; then
        fail "$name" "expected exactly one 'cpattn train:' line on stderr"
        return
    fi
    for w in "${words[@]}"; do
        if ! printf '%s\n' "$msg" | grep -Fq -- "$w"; then
            fail "$name" "message '$msg' does not contain '$w'"
            return
        fi
    done
    pass "$name"
}

# flip_byte FILE OFFSET : invert every bit of one byte, in place.
flip_byte() {
    local b
    b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
    printf "\\$(printf '%03o' $((b ^ 255)))" |
        dd of="$1" bs=1 seek="$2" count=1 conv=notrunc status=none
}

T0=$(date +%s)

# ---------------------------------------------------------------------------
# 6. --help
# ---------------------------------------------------------------------------

# Every flag the tests use starts a line; defaults may wrap to the next line,
# so they are looked for anywhere.
prun 1 train --help
missing=""
for f in --num-layers --hidden-size --num-attention-heads --group-query-attention \
    --num-query-groups --seq-length --micro-batch-size --global-batch-size --train-iters --lr \
    --lr-warmup-iters --log-interval --eval-interval --save --load --save-interval \
    --exit-interval --data-path --recompute-granularity --context-parallel-size \
    --context-parallel-algo --ulysses-degree-in-cp --cp-window-size --use-cp-send-recv-overlap \
    --megatron-cp-in-bnsd --split --eod-token --synthetic-documents --reset-position-ids \
    --reset-attention-mask --eod-mask-loss; do
    grep -Eq -- "^  $f( |\$)" "$OUT" || missing="$missing $f"
done
for d in "(default: 256)" "(default: 100)" "(default: 1e-3)" "(default: 10)" "(default: 1234)" \
    "(default: ulysses_cp_algo)" "(default: none)" "(default: causal)" "(default: off)"; do
    grep -Fq -- "$d" "$OUT" || missing="$missing $d"
done
if [ "$rc" -eq 0 ] && grep -q '^usage: cpattn train' "$OUT" && [ -z "$missing" ]; then
    pass "--help: exit 0, flags with defaults"
else fail "--help: exit 0, flags with defaults" "exit $rc, missing:$missing"; fi

prun 2 train --help
if [ "$rc" -eq 0 ] && [ "$(grep -c '^usage: cpattn train' "$OUT")" -eq 1 ]; then
    pass "--help on 2 ranks: printed once, exit 0 everywhere"
else fail "--help on 2 ranks: printed once, exit 0 everywhere" "exit $rc, codes '$codes'"; fi

# ---------------------------------------------------------------------------
# 1. Equivalence with CP = 1 (first 5 iterations, causal)
# ---------------------------------------------------------------------------

BASE="$MODEL $SCHED --train-iters 5"
if train_losses 1 5 $BASE; then
    REF=$got
    pass "reference CP=1: losses $REF"
else
    REF=""
    fail "reference CP=1" "$why"
fi

same_losses "ring CP=2 == CP=1" "$REF" 2 $BASE --context-parallel-size 2 $RING
same_losses "double ring CP=4 W=2 == CP=1" "$REF" 4 $BASE --context-parallel-size 4 $RING \
    --cp-window-size 2
same_losses "ring CP=2 send/recv overlap == CP=1" "$REF" 2 $BASE --context-parallel-size 2 $RING \
    --use-cp-send-recv-overlap
same_losses "ring CP=4 bnsd == CP=1" "$REF" 4 $BASE --context-parallel-size 4 $RING \
    --megatron-cp-in-bnsd
same_losses "ulysses CP=2 == CP=1" "$REF" 2 $BASE --context-parallel-size 2 $ULY
same_losses "ulysses CP=4 == CP=1" "$REF" 4 $BASE --context-parallel-size 4 $ULY
same_losses "hybrid CP=4 U=2 == CP=1" "$REF" 4 $BASE --context-parallel-size 4 $HYB \
    --ulysses-degree-in-cp 2

# Data parallel: the same global batch of 2 sequences, as 2 micro-steps on
# one rank or one micro-step on each of 2 replicas.
if train_losses 1 5 $BASE --global-batch-size 2 --micro-batch-size 1; then
    REF_GB2=$got
    pass "reference DP=1 GB=2 (2 accumulated micro-steps): losses $REF_GB2"
else
    REF_GB2=""
    fail "reference DP=1 GB=2" "$why"
fi
same_losses "DP=2 x CP=2 ring GB=2 == DP=1 GB=2" "$REF_GB2" 4 $BASE --context-parallel-size 2 \
    $RING --global-batch-size 2 --micro-batch-size 1
same_losses "DP=2 x CP=2 ulysses GB=2 == DP=1 GB=2" "$REF_GB2" 4 $BASE --context-parallel-size 2 \
    $ULY --global-batch-size 2 --micro-batch-size 1
same_losses "DP=2 x CP=1 GB=2 == DP=1 GB=2" "$REF_GB2" 2 $BASE --global-batch-size 2 \
    --micro-batch-size 1
if train_losses 1 5 $BASE --global-batch-size 4 --micro-batch-size 1; then
    same_losses "DP=2 x CP=2 GB=4 (2 micro-steps each) == DP=1 GB=4" "$got" 4 $BASE \
        --context-parallel-size 2 $RING --global-batch-size 4 --micro-batch-size 1
else fail "reference DP=1 GB=4" "$why"; fi

# GQA: 4 query heads sharing 2 key/value heads.
GQA="--group-query-attention --num-query-groups 2"
if train_losses 1 5 $BASE $GQA; then
    REF_GQA=$got
    if [ "$REF_GQA" != "$REF" ]; then pass "reference GQA CP=1 (differs from MHA)"
    else fail "reference GQA CP=1" "same losses as without GQA: the flag had no effect"; fi
else
    REF_GQA=""
    fail "reference GQA CP=1" "$why"
fi
same_losses "GQA G=2 ring CP=2 == CP=1" "$REF_GQA" 2 $BASE $GQA --context-parallel-size 2 $RING

# Tensor parallelism (GQA G=2, H=4): TP ranks split heads, FFN and vocabulary;
# the same global batch of 2 sequences everywhere.
TPB="$BASE $GQA --global-batch-size 2"
if train_losses 1 5 $TPB --micro-batch-size 2; then
    REF_TP=$got
    pass "reference TP=1 CP=1 GQA GB=2: losses $REF_TP"
else
    REF_TP=""
    fail "reference TP=1 CP=1 GQA GB=2" "$why"
fi
TP2="--tensor-model-parallel-size 2"
same_losses "TP=2 == TP=1" "$REF_TP" 2 $TPB --micro-batch-size 2 $TP2
same_losses "TP=2 x CP=2 ring overlap == TP=1" "$REF_TP" 4 $TPB --micro-batch-size 2 $TP2 \
    --context-parallel-size 2 $RING --use-cp-send-recv-overlap
same_losses "TP=2 x CP=2 ulysses == TP=1" "$REF_TP" 4 $TPB --micro-batch-size 2 $TP2 \
    --context-parallel-size 2 $ULY
same_losses "TP=2 x CP=2 x DP=2 ring == TP=1" "$REF_TP" 8 $TPB --micro-batch-size 1 $TP2 \
    --context-parallel-size 2 $RING
# TP=4 with a vocabulary of 37 rows (padded to 40: the last rank holds 7 and
# 3 rows of padding that the cross-entropy leaves out).
V37="--micro-batch-size 2 --num-query-groups 4 --vocab-size 37"
if train_losses 1 5 $TPB $V37; then
    same_losses "TP=4 (vocabulary 37 padded to 40) == TP=1" "$got" 4 $TPB $V37 \
        --tensor-model-parallel-size 4
else fail "reference TP=1 G=4 V=37" "$why"; fi
# Megatron's --sequence-parallel: norms and residuals on N/TP rows,
# all-gather / reduce-scatter instead of the all-reduce.
SP="--sequence-parallel"
same_losses "TP=2 --sequence-parallel == TP=1" "$REF_TP" 2 $TPB --micro-batch-size 2 $TP2 $SP
same_losses "TP=2 x CP=2 ring overlap --sequence-parallel == TP=1" "$REF_TP" 4 $TPB \
    --micro-batch-size 2 $TP2 $SP --context-parallel-size 2 $RING --use-cp-send-recv-overlap
same_losses "TP=2 x CP=2 x DP=2 --sequence-parallel recompute == TP=1" "$REF_TP" 8 $TPB \
    --micro-batch-size 1 $TP2 $SP --context-parallel-size 2 $RING --recompute-granularity full
# KV heads replicated when G < TP: G=1 on TP=2 and TP=4 (each rank one copy,
# its gradient summed over the copies), with Ulysses and with SP.
G1="--micro-batch-size 2 --num-query-groups 1"
if train_losses 1 5 $TPB $G1; then
    REF_G1=$got
    same_losses "G=1 < TP=2 (KV head replicated) == TP=1" "$REF_G1" 2 $TPB $G1 $TP2
    same_losses "G=1 < TP=2 x CP=2 ulysses == TP=1" "$REF_G1" 4 $TPB $G1 $TP2 \
        --context-parallel-size 2 $ULY
    same_losses "G=1 < TP=4 --sequence-parallel == TP=1" "$REF_G1" 4 $TPB $G1 \
        --tensor-model-parallel-size 4 $SP
else fail "reference TP=1 G=1" "$why"; fi
same_losses "GQA G=2 ulysses CP=2 == CP=1" "$REF_GQA" 2 $BASE $GQA --context-parallel-size 2 $ULY

# ---------------------------------------------------------------------------
# 2. Full recomputation: the same function, the same losses
# ---------------------------------------------------------------------------

same_losses "recompute full CP=1 == plain CP=1" "$REF" 1 $BASE --recompute-granularity full
if train_losses 2 5 $BASE --context-parallel-size 2 $RING; then
    same_losses "recompute full ring CP=2 == plain ring CP=2" "$got" 2 $BASE \
        --context-parallel-size 2 $RING --recompute-granularity full
else fail "plain ring CP=2 (for recompute)" "$why"; fi

# ---------------------------------------------------------------------------
# 3. Resume at CP = 2 (ring): 8 iterations == 4 + --load + 4, bit for bit
# ---------------------------------------------------------------------------

# The schedule (warm-up, cosine decay to --train-iters) must be the same in
# both runs, so the interrupted run keeps --train-iters 8 and stops through
# --exit-interval.
RES="$MODEL --lr 1e-2 --lr-warmup-iters 2 --log-interval 1 --eval-interval 0 --train-iters 8 \
--context-parallel-size 2 $RING"
prun 2 train $RES --save "$TMP/A" --save-interval 4
cp "$OUT" "$TMP/logA"
A_LOSSES=$(losses "$TMP/logA" | tr '\n' ' ')
if [ "$rc" -eq 0 ] && [ "$(iter_numbers "$TMP/logA" | tr '\n' ' ')" = "1 2 3 4 5 6 7 8 " ] &&
    [ "$(grep -c 'saved checkpoint at iteration 4 ' "$TMP/logA")" -eq 1 ] &&
    [ "$(grep -c 'saved checkpoint at iteration 8 ' "$TMP/logA")" -eq 1 ] &&
    [ -f "$TMP/A/checkpoint.bin" ]; then
    pass "run A: 8 iterations, checkpoints at 4 and 8 (each written once)"
else fail "run A: 8 iterations, checkpoints at 4 and 8 (each written once)" "exit $rc"; fi
# Honest units: the ceilings are printed, and MFU (model flops over the FMA
# peak, a hard ceiling) never exceeds 1 on any log line.
mfus=$(sed -n 's/.*| MFU \([0-9.]*\) (sgemm [0-9.]*) |.*/\1/p' "$TMP/logA")
if grep -q '^# ceilings, 1 thread(s): FMA peak (.*) [0-9.]* GFLOP/s; sgemm 2048x2048x2048' "$TMP/logA" &&
    [ "$(echo "$mfus" | wc -w)" -eq 8 ] && echo "$mfus" | awk '$1 < 0 || $1 > 1 { bad = 1 } END { exit bad }'; then
    pass "run A: ceilings printed, MFU on every line and within [0, 1]"
else fail "run A: ceilings printed, MFU on every line and within [0, 1]" "MFU values: $mfus"; fi

prun 2 train $RES --save "$TMP/B" --save-interval 4 --exit-interval 4
cp "$OUT" "$TMP/logB1"
if [ "$rc" -eq 0 ] && [ "$(iter_numbers "$TMP/logB1" | tr '\n' ' ')" = "1 2 3 4 " ] &&
    grep -q '^ exiting at iteration 4 (--exit-interval 4)' "$TMP/logB1" &&
    [ "$(grep -c 'saved checkpoint at iteration 4 ' "$TMP/logB1")" -eq 1 ] &&
    ! grep -q 'eval at' "$TMP/logB1" && [ -f "$TMP/B/checkpoint.bin" ]; then
    pass "run B1: --exit-interval 4 stops after iteration 4, saved once, no final eval"
else fail "run B1: --exit-interval 4 stops after iteration 4, saved once, no final eval" "exit $rc"; fi
B1_LOSSES=$(losses "$TMP/logB1" | tr '\n' ' ')
if [ -n "$B1_LOSSES" ] && [ "$B1_LOSSES" = "$(echo "$A_LOSSES" | cut -d' ' -f1-4) " ]; then
    pass "run B1: iterations 1..4 print A's losses"
else fail "run B1: iterations 1..4 print A's losses" "'$B1_LOSSES' vs A '$A_LOSSES'"; fi

prun 2 train $RES --load "$TMP/B" --save "$TMP/B" --save-interval 4
cp "$OUT" "$TMP/logB2"
B2_LOSSES=$(losses "$TMP/logB2" | tr '\n' ' ')
A_TAIL="$(echo "$A_LOSSES" | cut -d' ' -f5-8) "
if [ "$rc" -eq 0 ] && grep -q "^ resumed from $TMP/B at iteration 4$" "$TMP/logB2" &&
    [ "$(iter_numbers "$TMP/logB2" | tr '\n' ' ')" = "5 6 7 8 " ]; then
    pass "run B2: --load resumes at iteration 5"
else fail "run B2: --load resumes at iteration 5" "exit $rc"; fi
if [ -n "$B2_LOSSES" ] && [ "$B2_LOSSES" = "$A_TAIL" ]; then
    pass "run B2: iterations 5..8 print exactly A's losses (${B2_LOSSES% })"
else fail "run B2: iterations 5..8 print exactly A's losses" "B2 '$B2_LOSSES' vs A '$A_TAIL'"; fi
if [ -n "$(grep '^ eval at iteration 8' "$TMP/logA")" ] &&
    [ "$(grep '^ eval at iteration 8' "$TMP/logA")" = "$(grep '^ eval at iteration 8' "$TMP/logB2")" ]
then pass "run B2: final evaluation equals A's"
else fail "run B2: final evaluation equals A's" "eval lines differ"; fi
if cmp -s "$TMP/A/checkpoint.bin" "$TMP/B/checkpoint.bin"; then
    pass "run B2: final checkpoint byte-identical to A's (params and AdamW moments)"
else fail "run B2: final checkpoint byte-identical to A's (params and AdamW moments)" "cmp differs"; fi

# Checkpoints reshard: saved at TP=2 x CP=2 they hold the logical (TP = 1)
# tensors; resumed at TP=1 x CP=4 and at TP=2 x CP=1 x DP=2, iterations
# 5..8 print the uninterrupted TP=2 x CP=2 run's losses within the fp32
# tolerance of `close` (the weights move over exactly: test_gpt tp checks
# the shards' mapping bit for bit; only the reduction order differs).
RS="$MODEL $GQA --global-batch-size 2 --lr 1e-2 --lr-warmup-iters 2 --log-interval 1 \
--eval-interval 0 --train-iters 8"
TP2CP2="--micro-batch-size 2 --tensor-model-parallel-size 2 --context-parallel-size 2 $RING"
if train_losses 4 8 $RS $TP2CP2; then
    RS_ALL=$got
    RS_TAIL=$(echo "$RS_ALL" | cut -d' ' -f5-8)
    if train_losses 4 4 $RS $TP2CP2 --save "$TMP/R" --exit-interval 4 &&
        [ "$got" = "$(echo "$RS_ALL" | cut -d' ' -f1-4)" ] && [ -f "$TMP/R/checkpoint.bin" ]; then
        pass "reshard: TP=2 x CP=2 saves at iteration 4"
        resume_as() { # NAME P ARGS...
            local name=$1 np=$2
            shift 2
            if ! train_losses "$np" 4 $RS "$@" --load "$TMP/R"; then fail "$name" "$why"
            elif ! grep -q "^ resumed from $TMP/R at iteration 4$" "$OUT" ||
                [ "$(iter_numbers | tr '\n' ' ')" != "5 6 7 8 " ]; then
                fail "$name" "did not resume at iteration 5"
            elif ! close "$RS_TAIL" "$got"; then
                fail "$name" "losses '$got' vs the uninterrupted run's '$RS_TAIL'"
            else pass "$name: iterations 5..8 as the uninterrupted run ('$got')"; fi
        }
        resume_as "reshard: resume at TP=1 x CP=4" 4 --micro-batch-size 2 \
            --context-parallel-size 4 $RING
        resume_as "reshard: resume at TP=2 x CP=1 x DP=2" 4 --micro-batch-size 1 $TP2
        resume_as "reshard: resume at TP=2 x CP=2 --sequence-parallel" 4 $TP2CP2 --sequence-parallel
    else fail "reshard: TP=2 x CP=2 saves at iteration 4" "${why:-losses '$got' vs '$RS_ALL'}"; fi
else fail "reshard: uninterrupted TP=2 x CP=2 run" "$why"; fi

# ---------------------------------------------------------------------------
# 4. Errors: exit code on every rank, one clear message, nothing overwritten
# ---------------------------------------------------------------------------

SHORT="$MODEL --train-iters 2 --log-interval 1 --eval-interval 0"
expect_fail "GB not a multiple of micro x DP" 4 2 $SHORT --context-parallel-size 2 \
    --global-batch-size 3 -- "--global-batch-size 3" "data-parallel size 2"
expect_fail "hidden not divisible by heads" 2 2 $SHORT --context-parallel-size 2 \
    --hidden-size 30 -- "--hidden-size 30" "--num-attention-heads 4"
expect_fail "CP does not divide the world" 3 2 $SHORT --context-parallel-size 2 -- \
    "--context-parallel-size 2" "3 MPI ranks"
expect_fail "unknown algorithm" 2 2 $SHORT --context-parallel-size 2 \
    --context-parallel-algo ring_cp_algo -- "--context-parallel-algo ring_cp_algo"
expect_fail "causal ring S < 2P (S=7, P=4)" 4 2 $SHORT --context-parallel-size 4 $RING \
    --seq-length 7 -- "--seq-length 7"
expect_fail "ulysses H % P (H=2, P=4)" 4 2 $SHORT --context-parallel-size 4 $ULY \
    --num-attention-heads 2 -- "--num-attention-heads 2"
expect_fail "ulysses H % (TP*CP) (H=2, TP=2, CP=2)" 4 2 $SHORT --context-parallel-size 2 $ULY \
    --tensor-model-parallel-size 2 --num-attention-heads 2 --hidden-size 32 -- \
    "--num-attention-heads 2" "H % (TP*CP)"
expect_fail "TP x CP does not divide the world" 4 2 $SHORT --context-parallel-size 2 \
    --tensor-model-parallel-size 3 -- "--tensor-model-parallel-size 3" "TP x CP x DP"
expect_fail "G and TP divide neither way (G=6, TP=4)" 4 2 $SHORT --tensor-model-parallel-size 4 \
    --num-attention-heads 12 --hidden-size 48 --num-query-groups 6 -- "--num-query-groups 6" \
    "--tensor-model-parallel-size 4" "one must divide the other"
expect_fail "F % TP (F=30, TP=4)" 4 2 $SHORT --tensor-model-parallel-size 4 \
    --ffn-hidden-size 30 -- "--ffn-hidden-size 30" "--tensor-model-parallel-size 4"
expect_fail "hybrid without --ulysses-degree-in-cp" 4 2 $SHORT --context-parallel-size 4 $HYB \
    -- "--ulysses-degree-in-cp"

# A good checkpoint (A's, iteration 8, hidden 32) that failed runs --save to.
GOOD=$TMP/A
cp "$GOOD/checkpoint.bin" "$TMP/good.bin"
untouched() {
    if cmp -s "$GOOD/checkpoint.bin" "$TMP/good.bin" &&
        [ "$(ls -A "$GOOD")" = "checkpoint.bin" ]; then
        pass "$1: --save checkpoint untouched (cmp), no temporary left"
    else fail "$1: --save checkpoint untouched (cmp), no temporary left" "$(ls -A "$GOOD")"; fi
}

expect_fail "--load of another --hidden-size" 2 2 $SHORT --hidden-size 64 \
    --context-parallel-size 2 $RING --load "$GOOD" --save "$GOOD" -- \
    "--load $GOOD" "hidden_size=32" "hidden_size=64"
untouched "shape mismatch with --load = --save"

mkdir -p "$TMP/bad"
cp "$TMP/good.bin" "$TMP/bad/checkpoint.bin"
flip_byte "$TMP/bad/checkpoint.bin" $(($(stat -c %s "$TMP/good.bin") / 2))
cp "$TMP/bad/checkpoint.bin" "$TMP/bad.bin"
if cmp -s "$TMP/good.bin" "$TMP/bad.bin"; then
    fail "corrupt a checkpoint byte" "flip_byte changed nothing"
fi
expect_fail "--load of a corrupted checkpoint" 2 1 $SHORT --context-parallel-size 2 $RING \
    --load "$TMP/bad" --save "$GOOD" -- "corrupted" "checksum" "$TMP/bad/checkpoint.bin"
untouched "corrupted --load"
if cmp -s "$TMP/bad/checkpoint.bin" "$TMP/bad.bin"; then pass "corrupted --load: file left as it was"
else fail "corrupted --load: file left as it was" "the corrupted file changed"; fi

expect_fail "--load of a missing folder" 2 1 $SHORT --context-parallel-size 2 $RING \
    --load "$TMP/nowhere" --save "$GOOD" -- "--load $TMP/nowhere" "No such file"
untouched "missing --load"
expect_fail "usage error with --save" 4 2 $SHORT --context-parallel-size 2 \
    --global-batch-size 3 --save "$GOOD" -- "--global-batch-size 3"
untouched "usage error"

# Resuming can never rewind a checkpoint: below its iteration is refused,
# at it there is nothing to do; a forged negative iteration (checksum
# recomputed, as a careless edit would) is refused.
expect_fail "--train-iters below the checkpoint's iteration" 2 2 $SHORT --context-parallel-size 2 \
    $RING --train-iters 4 --load "$GOOD" --save "$GOOD" -- "--train-iters 4" "(8)" \
    "rewind"
untouched "rewinding resume"
prun 2 train $SHORT --context-parallel-size 2 $RING --train-iters 8 --load "$GOOD" --save "$GOOD"
if [ "$rc" -eq 0 ] && grep -q "nothing to train" "$OUT" && ! grep -q "saved checkpoint" "$OUT"; then
    pass "resume at exactly --train-iters: nothing to train, exit 0"
else fail "resume at exactly --train-iters: nothing to train, exit 0" "exit $rc"; fi
untouched "resume at --train-iters"

# put_bytes FILE OFFSET HEX : write the bytes spelled by HEX at OFFSET.
put_bytes() {
    printf "$(sed 's/../\\x&/g' <<<"$3")" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
# resum FILE : recompute the checkpoint's trailing SHA-256 over everything
# before it (what an edit that wants to pass the checksum does).
resum() {
    local size hex
    size=$(stat -c %s "$1")
    hex=$(head -c $((size - 32)) "$1" | sha256sum | cut -c1-64)
    put_bytes "$1" $((size - 32)) "$hex"
}
mkdir -p "$TMP/neg"
cp "$TMP/good.bin" "$TMP/neg/checkpoint.bin"
put_bytes "$TMP/neg/checkpoint.bin" 12 18fcffffffffffff # iteration -1000, little-endian
resum "$TMP/neg/checkpoint.bin"
cp "$TMP/neg/checkpoint.bin" "$TMP/neg.bin"
expect_fail "forged negative iteration (checksum recomputed)" 2 1 $SHORT \
    --context-parallel-size 2 $RING --train-iters 20 --load "$TMP/neg" --save "$TMP/neg" -- \
    "iteration -1000" "iterations are >= 0"
if cmp -s "$TMP/neg/checkpoint.bin" "$TMP/neg.bin"; then pass "forged checkpoint left as it was"
else fail "forged checkpoint left as it was" "it changed"; fi

# Megatron's NaN guard: a checkpoint whose first weight is NaN (checksum
# recomputed) trains one step, stops before the update naming the
# iteration, exit 1, and no checkpoint is written from that state.
mkdir -p "$TMP/nan"
cp "$TMP/good.bin" "$TMP/nan/checkpoint.bin"
cfg_len=$(od -An -tu4 -j 28 -N 4 "$TMP/nan/checkpoint.bin" | tr -d ' ')
put_bytes "$TMP/nan/checkpoint.bin" $((54 + cfg_len)) 0000c07f # params[0] = NaN
resum "$TMP/nan/checkpoint.bin"
cp "$TMP/nan/checkpoint.bin" "$TMP/nan.bin"
expect_fail "NaN weights: the guard stops training" 2 1 $SHORT --context-parallel-size 2 $RING \
    --train-iters 12 --save-interval 1 --load "$TMP/nan" --save "$TMP/nan" -- "iteration 9" \
    "the loss is NaN" "training stops before the update"
if cmp -s "$TMP/nan/checkpoint.bin" "$TMP/nan.bin" && [ "$(ls -A "$TMP/nan")" = "checkpoint.bin" ]; then
    pass "NaN guard: no checkpoint written from the NaN state"
else fail "NaN guard: no checkpoint written from the NaN state" "$(ls -A "$TMP/nan")"; fi

# --save is checked before any work, and a run that does not resume the
# checkpoint in --save does not replace it unless told.
expect_fail "a fresh run into a folder holding a checkpoint" 2 2 $SHORT \
    --context-parallel-size 2 $RING --save "$GOOD" -- "--save $GOOD already holds a checkpoint" \
    "(iteration 8)" "--overwrite-save"
untouched "fresh run into a checkpoint folder"
expect_fail "resuming A into B's checkpoint folder" 2 2 $SHORT --context-parallel-size 2 $RING \
    --train-iters 9 --load "$GOOD" --save "$TMP/B" -- "--save $TMP/B already holds" "--overwrite-save"
mkdir -p "$TMP/ow" && cp "$TMP/good.bin" "$TMP/ow/checkpoint.bin"
prun 2 train $SHORT --context-parallel-size 2 $RING --hidden-size 64 --save "$TMP/ow" --overwrite-save
if [ "$rc" -eq 0 ] && grep -q "overwrite-save: this run will replace the checkpoint in $TMP/ow (iteration 8, of a different model shape)" "$OUT" &&
    ! cmp -s "$TMP/ow/checkpoint.bin" "$TMP/good.bin"; then
    pass "--overwrite-save replaces it, saying so (iteration, different shape)"
else fail "--overwrite-save replaces it, saying so" "exit $rc"; fi
: >"$TMP/afile"
expect_fail "--save names a regular file" 2 2 $SHORT --context-parallel-size 2 $RING \
    --save "$TMP/afile" -- "--save $TMP/afile" "not a folder"
expect_fail "--save ''" 2 2 $SHORT --context-parallel-size 2 $RING --save "" -- "--save ''"
mkdir -p "$TMP/imm"
if chattr +i "$TMP/imm" 2>/dev/null; then
    # An immutable folder refuses even root: what a read-only folder is to
    # everybody else.  Found at start-up, not after the run.
    expect_fail "--save in an unwritable folder, found before training" 2 2 $SHORT \
        --context-parallel-size 2 $RING --train-iters 40 --save "$TMP/imm" -- \
        "--save $TMP/imm" "cannot write into the folder"
    expect_fail "--save under an unwritable folder" 2 2 $SHORT --context-parallel-size 2 $RING \
        --save "$TMP/imm/sub" -- "--save $TMP/imm/sub" "cannot create the folder"
    chattr -i "$TMP/imm"
else
    echo "skip: chattr +i is not possible here (needs root on ext2/3/4 or similar); the unwritable-folder cases are not run"
fi

# Temporaries that crashed saves left (a dead process's pid) are removed at
# start-up; a live process's (this shell's) is left alone.
mkdir -p "$TMP/st"
pid=$$
head -c 1000 /dev/zero >"$TMP/st/.checkpoint.bin.tmp.2147483000.7"
: >"$TMP/st/.checkpoint.bin.tmp.$pid.0"
prun 2 train $SHORT --context-parallel-size 2 $RING --save "$TMP/st"
if [ "$rc" -eq 0 ] && grep -q "removed 1 temporary of interrupted saves in $TMP/st" "$OUT" &&
    [ ! -e "$TMP/st/.checkpoint.bin.tmp.2147483000.7" ] && [ -e "$TMP/st/.checkpoint.bin.tmp.$pid.0" ]; then
    pass "stale temporaries of dead processes are removed, a live one kept"
else fail "stale temporaries of dead processes are removed, a live one kept" "$(ls -A "$TMP/st")"; fi

# A FIFO where the checkpoint should be is refused at once, on every rank.
mkdir -p "$TMP/fifo" && mkfifo "$TMP/fifo/checkpoint.bin"
expect_fail "--load of a FIFO" 2 1 $SHORT --context-parallel-size 2 $RING --load "$TMP/fifo" -- \
    "not a regular file" "FIFO"

expect_fail "--data-path of a missing file" 2 1 $SHORT --context-parallel-size 2 $RING \
    --data-path "$TMP/no-such.txt" -- "--data-path" "$TMP/no-such.txt" "No such file"
printf 'A stitch in time saves nine.\n' >"$TMP/small.txt"
expect_fail "--data-path of a too-small file" 2 2 $SHORT --context-parallel-size 2 $RING \
    --data-path "$TMP/small.txt" -- "--data-path" "$TMP/small.txt" "too small" "S+2 = 66"

# ---------------------------------------------------------------------------
# 5. Text data: byte-level LM on ~15 KB of English at CP = 2, the loss falls
# ---------------------------------------------------------------------------

for ((i = 0; i < 100; ++i)); do
    printf 'The quick brown fox jumps over the lazy dog. A stitch in time saves nine.\n'
    printf 'She sells sea shells by the sea shore, and the shells she sells are sea shells.\n'
done >"$TMP/text.txt"
if train_losses 2 30 $MODEL --lr 1e-2 --lr-warmup-iters 2 --log-interval 1 --eval-interval 0 \
    --train-iters 30 --micro-batch-size 2 --context-parallel-size 2 $RING \
    --data-path "$TMP/text.txt"; then
    first=${got%% *}
    last=${got##* }
    # From ln(256) = 5.5 the loss must fall by a clear margin (to < 80%).
    if awk -v f="$first" -v l="$last" 'BEGIN { exit !(l < 0.8 * f) }' &&
        grep -q '^ eval at iteration 30: loss [0-9.]*$' "$OUT"; then
        pass "--data-path text at CP=2: loss falls $first -> $last"
    else fail "--data-path text at CP=2: loss falls" "first $first, last $last"; fi
else fail "--data-path text at CP=2: loss falls" "$why"; fi

# ---------------------------------------------------------------------------
# 7. Megatron's indexed dataset, cpattn preprocess, the reset flags
# ---------------------------------------------------------------------------

# 200 JSON documents of 20..130 bytes with escapes, so that the default
# 969,30,1 split and 949,50,1 both leave valid documents.
for ((i = 0; i < 200; ++i)); do
    printf '{"id": %d, "text": "Document %d says \\"%s\\"\\nand ends\\t%d."}\n' "$i" "$i" \
        "$(head -c $((10 + (i * 37) % 100)) /dev/zero | tr '\0' 'x')" "$((i * i))"
done >"$TMP/docs.jsonl"
prun_pre() { # prun_pre ARGS... : cpattn preprocess (one process) into $OUT/$ERR, $rc
    rc=0
    timeout "$USAGE_SECS" "$BIN" preprocess "$@" >"$OUT" 2>"$ERR" || rc=$?
}
prun_pre --input "$TMP/docs.jsonl" --output-prefix "$TMP/ds"
if [ "$rc" -eq 0 ] && [ -s "$TMP/ds.bin" ] && [ -s "$TMP/ds.idx" ] &&
    grep -q "200 documents" "$OUT" && [ "$(head -c 9 "$TMP/ds.idx" | od -An -c | tr -d ' ')" = 'MMIDIDX\0\0' ]; then
    pass "preprocess: JSON lines -> ds.bin/ds.idx (200 documents, Megatron's magic)"
else fail "preprocess: JSON lines -> ds.bin/ds.idx" "exit $rc: $(cat "$ERR")"; fi
# Round trip of a text document: the .bin holds its bytes as uint16, then 256.
printf 'caf\xc3\xa9\r\n\x00end' >"$TMP/one.txt"
prun_pre --input "$TMP/one.txt" --output-prefix "$TMP/one"
want="99 97 102 195 169 13 10 0 101 110 100 256"
got_tok=$(od -An -tu2 -v "$TMP/one.bin" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//')
if [ "$rc" -eq 0 ] && [ "$got_tok" = "$want" ]; then
    pass "preprocess: a text file round-trips (bytes as uint16, then EOD 256)"
else fail "preprocess: a text file round-trips" "exit $rc, tokens '$got_tok', want '$want'"; fi
printf '{"text": "fine"}\n{"text": "bad \\q"}\n' >"$TMP/bad.jsonl"
prun_pre --input "$TMP/bad.jsonl" --output-prefix "$TMP/never"
if [ "$rc" -eq 2 ] && grep -q "$TMP/bad.jsonl:2: column" "$ERR" && grep -q "nothing was written" "$ERR" &&
    [ ! -e "$TMP/never.bin" ] && [ ! -e "$TMP/never.idx" ] && [ -z "$(ls -A "$TMP" | grep '\.tmp\.')" ]; then
    pass "preprocess: a bad JSON line exits 2 naming FILE:LINE, nothing written"
else fail "preprocess: a bad JSON line exits 2 naming FILE:LINE, nothing written" "exit $rc: $(cat "$ERR")"; fi
prun_pre --input "$TMP/no-such.jsonl" --output-prefix "$TMP/never"
if [ "$rc" -eq 1 ] && grep -q "$TMP/no-such.jsonl" "$ERR" && [ ! -e "$TMP/never.bin" ]; then
    pass "preprocess: a missing input exits 1 naming it"
else fail "preprocess: a missing input exits 1 naming it" "exit $rc: $(cat "$ERR")"; fi

DATA="$BASE --data-path $TMP/ds --split 949,50,1"
RESETS="--reset-position-ids --eod-mask-loss"
if train_losses 1 5 $DATA $RESETS; then
    REF_DS=$got
    pass "reference indexed data + resets CP=1: losses $REF_DS"
    if grep -q "^# data: indexed dataset $TMP/ds: 200 documents" "$OUT" &&
        grep -q "vocabulary 257, EOD token 256; split train 190 documents" "$OUT"; then
        pass "indexed data: described (200 documents, vocabulary 257, split 190/10/0)"
    else fail "indexed data: described" "$(grep '^# data' "$OUT")"; fi
    if train_losses 1 5 $DATA && [ "$got" != "$REF_DS" ]; then
        pass "the reset flags change the losses ('$got' without them)"
    else fail "the reset flags change the losses" "same losses '$got' or failed: ${why:-}"; fi
else
    REF_DS=""
    fail "reference indexed data + resets CP=1" "$why"
fi
same_losses "indexed data + resets: ring CP=2 == CP=1" "$REF_DS" 2 $DATA $RESETS \
    --context-parallel-size 2 $RING
same_losses "indexed data + resets: ulysses CP=2 == CP=1" "$REF_DS" 2 $DATA $RESETS \
    --context-parallel-size 2 $ULY

PACKED="$BASE --synthetic-documents $RESETS"
if train_losses 1 5 $PACKED; then
    REF_PK=$got
    pass "reference packed copy task + resets CP=1: losses $REF_PK"
else
    REF_PK=""
    fail "reference packed copy task + resets CP=1" "$why"
fi
same_losses "packed copy task + resets: ring CP=2 == CP=1" "$REF_PK" 2 $PACKED \
    --context-parallel-size 2 $RING
same_losses "packed copy task + resets: ring CP=4 == CP=1" "$REF_PK" 4 $PACKED \
    --context-parallel-size 4 $RING
same_losses "packed copy task + resets: ulysses CP=2 == CP=1" "$REF_PK" 2 $PACKED \
    --context-parallel-size 2 $ULY

# --reset-attention-mask too: every sample attends inside its own documents,
# under every algorithm (the plan runs per sample with its cu_seqlens).
ALL="--reset-position-ids --reset-attention-mask --eod-mask-loss"
for data in "packed:$BASE --synthetic-documents" "indexed:$DATA"; do
    name=${data%%:*}
    args=${data#*:}
    if train_losses 1 5 $args $ALL; then
        REF_AM=$got
        pass "$name + all three reset flags CP=1: losses $REF_AM"
        if train_losses 1 5 $args $RESETS && [ "$got" != "$REF_AM" ]; then
            pass "$name: --reset-attention-mask changes the losses"
        else fail "$name: --reset-attention-mask changes the losses" "same '$got' or ${why:-}"; fi
    else
        REF_AM=""
        fail "$name + all three reset flags CP=1" "$why"
    fi
    same_losses "$name + reset mask: ring CP=2 == CP=1" "$REF_AM" 2 $args $ALL \
        --context-parallel-size 2 $RING --use-cp-send-recv-overlap
    same_losses "$name + reset mask: ulysses CP=2 == CP=1" "$REF_AM" 2 $args $ALL \
        --context-parallel-size 2 $ULY
    same_losses "$name + reset mask: allgather CP=2 == CP=1" "$REF_AM" 2 $args $ALL \
        --context-parallel-size 2 --context-parallel-algo allgather_cp_algo
    if [ "$name" = packed ]; then
        same_losses "$name + reset mask: ring CP=4 == CP=1" "$REF_AM" 4 $args $ALL \
            --context-parallel-size 4 $RING
        same_losses "$name + reset mask: double ring CP=4 W=2 == CP=1" "$REF_AM" 4 $args $ALL \
            --context-parallel-size 4 $RING --cp-window-size 2
        same_losses "$name + reset mask: hybrid CP=4 U=2 == CP=1" "$REF_AM" 4 $args $ALL \
            --context-parallel-size 4 $HYB --ulysses-degree-in-cp 2
    fi
done

# Damaged datasets: a copy of ds with one field changed, or its .bin cut.
cp "$TMP/ds.bin" "$TMP/dsv.bin" && cp "$TMP/ds.idx" "$TMP/dsv.idx"
put_bytes "$TMP/dsv.idx" 9 0200000000000000 # version 2
expect_fail "a bad .idx (version) exits 2 naming the field" 2 2 $SHORT --context-parallel-size 2 \
    $RING --data-path "$TMP/dsv" -- "--data-path" "$TMP/dsv.idx" "version 2"
cp "$TMP/ds.bin" "$TMP/dsp.bin" && cp "$TMP/ds.idx" "$TMP/dsp.idx"
put_bytes "$TMP/dsp.idx" $((34 + 4 * 200 + 8 * 3)) 0100000000000000 # pointers[3] = 1
expect_fail "a bad .idx (pointers) exits 2 naming the field" 2 2 $SHORT --context-parallel-size 2 \
    $RING --data-path "$TMP/dsp" -- "$TMP/dsp.idx" "pointers[3] = 1"
cp "$TMP/ds.idx" "$TMP/dst.idx"
head -c $(($(stat -c %s "$TMP/ds.bin") - 2)) "$TMP/ds.bin" >"$TMP/dst.bin"
expect_fail "a truncated .bin exits 2 naming it" 2 2 $SHORT --context-parallel-size 2 $RING \
    --data-path "$TMP/dst" -- "$TMP/dst.bin" "truncated"
expect_fail "an empty valid split exits 2" 2 2 $SHORT --context-parallel-size 2 $RING \
    --data-path "$TMP/ds" --split 100,0,0 -- "--data-path" "valid split is empty"
expect_fail "a bad --split exits 2" 2 2 $SHORT --context-parallel-size 2 $RING \
    --data-path "$TMP/ds" --split 9,x,1 -- "--split" "split '9,x,1'"
expect_fail "--split with a text file exits 2" 2 2 $SHORT --context-parallel-size 2 $RING \
    --data-path "$TMP/text.txt" --split 90,10,0 -- "--split" "text file"
expect_fail "--reset-attention-mask with documents balance exits 2" 2 2 $SHORT \
    --context-parallel-size 2 $RING --synthetic-documents --reset-attention-mask \
    --cp-load-balance documents -- "--reset-attention-mask" "--cp-load-balance zigzag"
expect_fail "--reset-attention-mask without documents exits 2" 2 2 $SHORT \
    --context-parallel-size 2 $RING --reset-attention-mask -- "--reset-attention-mask" \
    "needs documents"
expect_fail "--reset-position-ids without documents exits 2" 2 2 $SHORT \
    --context-parallel-size 2 $RING --reset-position-ids -- "--reset-position-ids" \
    "needs documents"
expect_fail "--eod-mask-loss on a text file exits 2" 2 2 $SHORT --context-parallel-size 2 $RING \
    --data-path "$TMP/text.txt" --eod-mask-loss -- "--eod-mask-loss" "indexed dataset"

echo "# $(($(date +%s) - T0)) s"
report
