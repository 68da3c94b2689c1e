#!/usr/bin/env bash
# test_cli_mpi.sh — the contract of `cpattn attn` under mpiexec, checked from
# outside: with --context-parallel-size P (= the world size) every usage error
# exits 2 on EVERY rank within seconds, printed once by rank 0, naming the
# flag and the rule; --check passes against the single-process reference for
# the ring and double ring (megatron_cp_algo), Ulysses and the hybrid over a
# grid of small shapes (P = 2..8, windows, send/recv overlap, causal and
# general masks, GQA, D = 64/80, Dv != D, B = 2, every layout); only rank 0
# prints; results are bitwise identical run after run; random inputs are the
# same global tensors for any P (a P = 4 run on the P = 1 inputs loaded from
# .npy gives the same digest as the P = 4 run on its own shard-generated
# inputs); --save gathers whole tensors in natural order, replayable by a
# single-process --load --check; --iters prints the per-rank table.
#
# usage: bash tests/cli/test_cli_mpi.sh path/to/cpattn
# Prints one line per case and "N passed, N failed"; exits 1 if any failed.
# Every job runs under `timeout` (a hang fails instead of stalling) and as
# `mpiexec -n P --oversubscribe` with Open MPI's run-as-root variables, one
# OpenMP thread per rank.  Each rank's own exit code is recorded through a
# small bash wrapper (prun in lib.sh), so "exit 2 on every rank" is checked,
# not assumed.
# Needs bash, coreutils and Open MPI's mpiexec (no Python).

set -u
source "$(dirname "$0")/lib.sh"

BIN=${1:?usage: test_cli_mpi.sh path/to/cpattn}
cli_setup cpattn-cli-mpi "build it first: make"
mpi_setup
RING="--context-parallel-algo megatron_cp_algo"

# expect_usage NAME P WORD ARGS... : exit 2 on every rank, within
# $USAGE_SECS, one "cpattn attn:" line on stderr (rank 0 only) naming WORD,
# nothing on stdout but rank 0's configuration.
expect_usage() {
    local name=$1 np=$2 word=$3
    shift 3
    expect_ranks "$name" "$np" 2 "$@" || return
    local lines
    lines=$(grep -c '^cpattn attn:' "$ERR")
    if [ "$secs" -gt "$USAGE_SECS" ]; then
        fail "$name" "took ${secs}s (more than ${USAGE_SECS}s: a rank waited) (cpattn $*)"
    elif [ "$lines" -ne 1 ]; then
        fail "$name" "$lines 'cpattn attn:' lines on stderr, expected 1 (cpattn $*)"
    elif ! grep '^cpattn attn:' "$ERR" | grep -Fq -- "$word"; then
        fail "$name" "message does not name '$word' (cpattn $*)"
    elif [ "$(grep -c 'configuration:$' "$OUT")" -gt 1 ]; then
        fail "$name" "configuration printed by more than one rank (cpattn $*)"
    else
        pass "$name"
    fi
}

# expect_error NAME P CODE WORD ARGS... : exit CODE on every rank, one
# message naming WORD.
expect_error() {
    local name=$1 np=$2 code=$3 word=$4
    shift 4
    expect_ranks "$name" "$np" "$code" "$@" || return
    if [ "$(grep -c '^cpattn attn:' "$ERR")" -ne 1 ]; then
        fail "$name" "expected exactly one 'cpattn attn:' line on stderr (cpattn $*)"
    else
        expect_named "$name" "$word" "$ERR" "$@" && pass "$name"
    fi
}

# expect_ok NAME P PATTERN ARGS... : exit 0 on every rank, stdout matches
# PATTERN (grep -E), and only one rank printed.
expect_ok() {
    local name=$1 np=$2 pattern=$3
    shift 3
    expect_ranks "$name" "$np" 0 "$@" || return
    if ! grep -Eq -- "$pattern" "$OUT"; then
        fail "$name" "stdout lacks /$pattern/ (cpattn $*)"
    elif [ "$(grep -c '^peak RSS' "$OUT")" -gt 1 ] ||
        [ "$(grep -c 'configuration:$' "$OUT")" -gt 1 ]; then
        fail "$name" "more than one rank printed (cpattn $*)"
    else
        pass "$name"
    fi
}

# check_case NAME P ARGS... : `cpattn attn --check --context-parallel-size P`
# passes on every rank.
check_case() {
    local name=$1 np=$2
    shift 2
    prun "$np" attn --check --context-parallel-size "$np" "$@"
    if [ "$rc" -ne 0 ]; then
        fail "check $name" "rank exit codes '$codes', rc $rc (P=$np: cpattn attn --check $*)"
    elif [ "$(grep -c '^check: PASS' "$OUT")" -ne 1 ] || grep -q 'FAIL' "$OUT"; then
        fail "check $name" "not exactly one 'check: PASS' (P=$np: cpattn attn --check $*)"
    else
        pass "check $name"
    fi
}

# digest P ARGS... : the 'digest ...' line of a P-rank attn run ("" on failure).
digest() {
    local np=$1
    shift
    prun "$np" attn --context-parallel-size "$np" "$@"
    [ "$rc" -eq 0 ] && grep '^digest' "$OUT"
}

# ---------------------------------------------------------------------------
# Help and usage errors: exit 2 on every rank, one message from rank 0
# ---------------------------------------------------------------------------

prun 2 attn --help
if [ "$rc" -eq 0 ] && [ "$(grep -c '^usage: cpattn attn' "$OUT")" -eq 1 ] &&
    grep -Fq -- "--context-parallel-size P" "$OUT" && grep -Fq "(default: ulysses_cp_algo)" "$OUT"
then pass "--help on 2 ranks: printed once, exit 0 everywhere"
else fail "--help on 2 ranks: printed once, exit 0 everywhere" "exit $rc, codes '$codes'"; fi

expect_usage "P != world size names both" 2 "--context-parallel-size 4: must equal the MPI world size 2" \
    attn --context-parallel-size 4 $RING --seq-length 96
expect_usage "default P=1 under mpiexec -n 3" 3 "--context-parallel-size 1" attn --seq-length 96
expect_usage "W must divide P (W=3, P=4)" 4 "--cp-window-size 3" \
    attn --context-parallel-size 4 $RING --cp-window-size 3 --seq-length 96
expect_usage "W >= P (W=4, P=4)" 4 "--cp-window-size 4" \
    attn --context-parallel-size 4 $RING --cp-window-size 4 --seq-length 96
expect_usage "W >= P (W=2, P=2)" 2 "--cp-window-size 2" \
    attn --context-parallel-size 2 $RING --cp-window-size 2 --seq-length 96
# Any length works (uneven shards); only a sequence shorter than the
# split's chunks is refused.
expect_usage "causal ring S < 2P (S=7, P=4)" 4 "--seq-length 7 is shorter than the 8 chunks" \
    attn --context-parallel-size 4 $RING --seq-length 7
expect_usage "general ring S < P (S=3, P=4)" 4 "--seq-length 3 is shorter than" \
    attn --context-parallel-size 4 $RING --seq-length 3 --attention-mask-type general
check_case "ring P=4 causal uneven S=101" 4 $RING --seq-length 101
check_case "ring P=3 general uneven S=98 overlap" 3 $RING --seq-length 98 \
    --attention-mask-type general --use-cp-send-recv-overlap
expect_usage "unknown algorithm" 2 "--context-parallel-algo ring_cp_algo" \
    attn --context-parallel-size 2 --context-parallel-algo ring_cp_algo
expect_usage "H % G != 0" 2 "--num-query-groups 3" \
    attn --context-parallel-size 2 $RING --num-query-groups 3 --seq-length 96
expect_usage "bad window value" 2 "--cp-window-size 0" \
    attn --context-parallel-size 2 $RING --cp-window-size 0
expect_usage "--load missing dir (rank 0 finds out)" 3 "$TMP/nowhere" \
    attn --context-parallel-size 3 $RING --load "$TMP/nowhere"

# ---------------------------------------------------------------------------
# --check against the single-process reference: ring and double ring
# ---------------------------------------------------------------------------

check_case "ring P=2 causal" 2 $RING --seq-length 96
check_case "ring P=3 causal" 3 $RING --seq-length 96
check_case "ring P=4 causal" 4 $RING --seq-length 96
check_case "ring P=4 general" 4 $RING --seq-length 100 --attention-mask-type general
check_case "ring P=3 general" 3 $RING --seq-length 99 --attention-mask-type general
check_case "double ring P=4 W=2" 4 $RING --cp-window-size 2 --seq-length 96
check_case "double ring P=4 W=2 general" 4 $RING --cp-window-size 2 --seq-length 96 \
    --attention-mask-type general
check_case "double ring P=6 W=3" 6 $RING --cp-window-size 3 --seq-length 96
check_case "double ring P=8 W=2" 8 $RING --cp-window-size 2 --seq-length 96
check_case "double ring P=8 W=4 overlap" 8 $RING --cp-window-size 4 --seq-length 96 \
    --use-cp-send-recv-overlap
check_case "overlap P=2" 2 $RING --seq-length 96 --use-cp-send-recv-overlap
check_case "overlap P=3 (odd ring)" 3 $RING --seq-length 96 --use-cp-send-recv-overlap
check_case "overlap P=4 W=2 general" 4 $RING --cp-window-size 2 --seq-length 96 \
    --use-cp-send-recv-overlap --attention-mask-type general
check_case "GQA H=8 G=2 P=4" 4 $RING --seq-length 96 --num-query-groups 2
check_case "GQA G=1 P=4 W=2" 4 $RING --cp-window-size 2 --seq-length 96 --group-query-attention
check_case "D=80 P=4" 4 $RING --seq-length 96 --kv-channels 80
check_case "D=64 Dv=32 P=2" 2 $RING --seq-length 96 --v-channels 32
check_case "B=2 S=240 P=4 GQA" 4 $RING --micro-batch-size 2 --seq-length 240 --num-query-groups 4
check_case "B=2 S=240 P=3 general" 3 $RING --micro-batch-size 2 --seq-length 240 \
    --attention-mask-type general
check_case "layout sbhd P=4" 4 $RING --seq-length 96 --layout sbhd --num-query-groups 2
check_case "megatron-cp-in-bnsd P=4 W=2" 4 $RING --seq-length 96 --megatron-cp-in-bnsd \
    --cp-window-size 2
check_case "explicit scale P=2" 2 $RING --seq-length 96 --softmax-scale 0.3
check_case "forward only P=3" 3 $RING --seq-length 96 --forward-only
check_case "2 threads per rank P=2" 2 $RING --seq-length 96 --threads 2

# ---------------------------------------------------------------------------
# --check: Ulysses (the default algorithm) and hybrid (Ulysses x ring)
# ---------------------------------------------------------------------------

check_case "ulysses P=2 causal (default algo)" 2 --seq-length 96
check_case "ulysses P=4 causal" 4 --seq-length 96 --context-parallel-algo ulysses_cp_algo
check_case "ulysses P=4 general" 4 --seq-length 100 --attention-mask-type general
check_case "ulysses P=4 GQA G=2 (KV heads replicated)" 4 --seq-length 96 --num-query-groups 2
check_case "ulysses P=4 GQA G=1" 4 --seq-length 96 --group-query-attention
check_case "ulysses P=4 D=80 bnsd" 4 --seq-length 96 --kv-channels 80 --megatron-cp-in-bnsd
check_case "ulysses P=2 B=2 S=240 Dv=32 sbhd" 2 --micro-batch-size 2 --seq-length 240 \
    --v-channels 32 --layout sbhd
HYB="--context-parallel-algo hybrid_cp_algo"
check_case "hybrid P=4 U=2" 4 $HYB --ulysses-degree-in-cp 2 --seq-length 96
check_case "hybrid P=4 U=2 general GQA G=2" 4 $HYB --ulysses-degree-in-cp 2 --seq-length 96 \
    --attention-mask-type general --num-query-groups 2
check_case "hybrid P=6 U=3 H=6 G=2 overlap" 6 $HYB --ulysses-degree-in-cp 3 --seq-length 96 \
    --num-attention-heads 6 --num-query-groups 2 --use-cp-send-recv-overlap
check_case "hybrid P=8 U=2 W=2 (double ring)" 8 $HYB --ulysses-degree-in-cp 2 \
    --cp-window-size 2 --seq-length 96
check_case "hybrid P=8 U=4 bnsd B=2" 8 $HYB --ulysses-degree-in-cp 4 --seq-length 96 \
    --megatron-cp-in-bnsd --micro-batch-size 2

# ---------------------------------------------------------------------------
# --check: every configuration of every row of the library's algorithm table
# (`cpattn algos` lists them), so a new algorithm is checked here with no
# edit; the reference kernel inside the plan; the all-gather row's shapes.
# ---------------------------------------------------------------------------

table_cases=0
for np in 2 3 4; do
    while read -r -u 3 _ algo rest; do
        flags=$(sed 's/ *plan_MiB.*//' <<<"$rest")
        # shellcheck disable=SC2086
        check_case "table: $algo$( [ -n "$flags" ] && echo " $flags") P=$np" "$np" \
            --context-parallel-algo "$algo" $flags --seq-length 96 --num-attention-heads 12 \
            --num-query-groups 2
        table_cases=$((table_cases + 1))
    done 3< <("$BIN" algos --context-parallel-size "$np" --seq-length 96 --num-attention-heads 12 \
                  --num-query-groups 2 --kv-channels 64)
done
if [ "$table_cases" -ge 11 ]; then pass "cpattn algos listed $table_cases configurations at P=2,3,4"
else fail "cpattn algos listed $table_cases configurations at P=2,3,4" "expected >= 11"; fi
check_case "reference kernel inside the ring plan P=2" 2 $RING --seq-length 96 --reference
check_case "reference kernel inside the hybrid plan P=4" 4 --context-parallel-algo hybrid_cp_algo \
    --ulysses-degree-in-cp 2 --seq-length 96 --reference
AG="--context-parallel-algo allgather_cp_algo"
check_case "allgather P=4 general B=2 bnsd" 4 $AG --seq-length 100 --attention-mask-type general \
    --micro-batch-size 2 --megatron-cp-in-bnsd
check_case "allgather P=3 GQA G=1 Dv=32 sbhd" 3 $AG --seq-length 96 --group-query-attention \
    --v-channels 32 --layout sbhd
expect_usage "allgather takes no window" 4 "--cp-window-size 2" \
    attn --context-parallel-size 4 $AG --cp-window-size 2 --seq-length 96
# Packed documents and sliding windows through every algorithm: a document
# spanning shards, one ending on a shard edge, one of length 1; windows
# shorter than a shard and longer than S.
DOCS="--cu-seqlens 0,1,37,48,90,96"
check_case "ring P=3 documents" 3 $RING --seq-length 96 $DOCS
check_case "double ring P=4 W=2 documents + window 9" 4 $RING --cp-window-size 2 --seq-length 96 \
    $DOCS --sliding-window 9
check_case "ulysses P=4 documents general" 4 --seq-length 96 $DOCS --attention-mask-type general
check_case "hybrid P=4 U=2 window 5" 4 --context-parallel-algo hybrid_cp_algo \
    --ulysses-degree-in-cp 2 --seq-length 96 --sliding-window 5
check_case "allgather P=3 documents + window 200" 3 $AG --seq-length 96 $DOCS --sliding-window 200
expect_usage "bad cu_seqlens on 3 ranks" 3 "cu_seqlens: ends at 90" \
    attn --context-parallel-size 3 $RING --seq-length 96 --cu-seqlens 0,40,90
# The document-aware assignment (--cp-load-balance documents): exact for the
# ring, the double ring and the all-gather, reported in the --iters table,
# refused for the rows that balance by heads.
LONG="--cu-seqlens 0,60,64,70,80,96"
check_case "ring P=4 documents balance" 4 $RING --seq-length 96 $LONG --cp-load-balance documents
check_case "double ring P=4 W=2 documents balance, window 9" 4 $RING --cp-window-size 2 \
    --seq-length 96 $LONG --cp-load-balance documents --sliding-window 9
check_case "allgather P=3 documents balance general" 3 $AG --seq-length 96 $LONG \
    --cp-load-balance documents --attention-mask-type general
expect_ok "documents balance in the --iters table" 4 \
    "^imbalance \(max/mean rank visible pairs\) zigzag [0-9.]+ documents 1\.0[0-9]+$" \
    attn --context-parallel-size 4 $RING --seq-length 1024 --cp-load-balance documents \
    --cu-seqlens 0,600,610,640,700,720,800,830,900,1000,1024 --iters 1 --warmup 0 --forward-only
expect_usage "documents balance with ulysses" 2 "--cp-load-balance documents applies to" \
    attn --context-parallel-size 2 --seq-length 64 --cp-load-balance documents

expect_usage "ulysses H % (TP*P) (H=6, P=4)" 4 "--num-attention-heads 6" \
    attn --context-parallel-size 4 --seq-length 96 --num-attention-heads 6 --num-query-groups 2
expect_usage "ulysses S < P (S=3, P=4)" 4 "--seq-length 3" \
    attn --context-parallel-size 4 --seq-length 3
check_case "ulysses P=4 uneven S=98 GQA" 4 --seq-length 98 --num-query-groups 2
check_case "hybrid P=4 U=2 uneven S=99 causal" 4 $HYB --ulysses-degree-in-cp 2 --seq-length 99
check_case "allgather P=3 uneven S=100 documents" 3 $AG --seq-length 100 \
    --cu-seqlens 0,1,37,38,90,100 --cp-load-balance documents
expect_usage "hybrid without U" 4 "--ulysses-degree-in-cp" \
    attn --context-parallel-size 4 $HYB --seq-length 96
expect_usage "hybrid U must divide P (U=3, P=4)" 4 "--ulysses-degree-in-cp 3" \
    attn --context-parallel-size 4 $HYB --ulysses-degree-in-cp 3 --seq-length 96
expect_usage "hybrid P/U > 1 (U=4, P=4)" 4 "--ulysses-degree-in-cp 4" \
    attn --context-parallel-size 4 $HYB --ulysses-degree-in-cp 4 --seq-length 96
expect_usage "hybrid H % (U*TP) (TP=8)" 4 "--tensor-model-parallel-size 8" \
    attn --context-parallel-size 4 $HYB --ulysses-degree-in-cp 2 --seq-length 96 \
    --tensor-model-parallel-size 8
expect_usage "hybrid W < R (P=8, U=2, W=4)" 8 "--cp-window-size 4" \
    attn --context-parallel-size 8 $HYB --ulysses-degree-in-cp 2 --cp-window-size 4 --seq-length 96

# ---------------------------------------------------------------------------
# Output, determinism, inputs independent of P, --save/--load
# ---------------------------------------------------------------------------

expect_ok "configuration names P, world size and split" 4 \
    "^# context parallel: 4 ranks \(MPI world size 4\), megatron_cp_algo, .*split zigzag" \
    attn --context-parallel-size 4 $RING --seq-length 96 --forward-only
expect_ok "general mask: contiguous split" 2 "split contiguous" \
    attn --context-parallel-size 2 $RING --seq-length 96 --attention-mask-type general --forward-only
expect_ok "P=1 under mpiexec -n 1: the single-process kernel" 1 "^# context parallel: off" \
    attn --seq-length 96 --forward-only --context-parallel-algo megatron_cp_algo

d1=$(digest 4 $RING --cp-window-size 2 --seq-length 96 --num-query-groups 2)
d2=$(digest 4 $RING --cp-window-size 2 --seq-length 96 --num-query-groups 2)
if [ -n "$d1" ] && [ "$d1" = "$d2" ]; then pass "P=4 bitwise identical run after run"
else fail "P=4 bitwise identical run after run" "'$d1' / '$d2'"; fi

# Inputs saved by a single-process run, loaded by a P=4 run: the same bits as
# the P=4 run's own shard-generated random inputs (so the same digest), and
# --check passes on them.
prun 1 attn --seq-length 96 --num-query-groups 2 --save "$TMP/p1" --save-inputs
ok1=$rc
d_rand=$(digest 4 $RING --seq-length 96 --num-query-groups 2)
d_load=$(digest 4 $RING --load "$TMP/p1")
if [ "$ok1" -eq 0 ] && [ -n "$d_rand" ] && [ "$d_rand" = "$d_load" ]; then
    pass "P=4 shards of random inputs == P=1 inputs loaded by P=4"
else fail "P=4 shards of random inputs == P=1 inputs loaded by P=4" "exit $ok1, '$d_rand' / '$d_load'"; fi
check_case "P=4 on the P=1 saved inputs (--load)" 4 $RING --load "$TMP/p1"
# Every rank writes its own rows (collective MPI-IO): the inputs a P=4 zigzag
# run saves are the P=1 run's files byte for byte, and so are outputs that do
# not depend on the algorithm's rounding (lse of a forward through the same
# kernel is not compared: it may differ in the last bits).
prun 4 attn --context-parallel-size 4 $RING --seq-length 96 --num-query-groups 2 \
    --save "$TMP/p4" --save-inputs --forward-only
same=$rc
for f in q k v dout; do cmp -s "$TMP/p1/$f.npy" "$TMP/p4/$f.npy" || same=1; done
left=$(find "$TMP/p4" -name '.*' -type f | wc -l)
if [ "$same" -eq 0 ] && [ "$left" -eq 0 ]; then
    pass "P=4 --save-inputs (zigzag rows, MPI-IO) == P=1 files byte for byte, no temporary left"
else fail "P=4 --save-inputs (zigzag rows, MPI-IO) == P=1 files byte for byte" "exit $rc, $left temporaries"; fi
check_case "P=3 on loaded inputs, forward only, no dout.npy needed" 3 $RING --load "$TMP/p1" --forward-only

# --save at P=2 (whole tensors, natural order) then a single-process replay.
prun 2 attn --context-parallel-size 2 $RING --micro-batch-size 2 --seq-length 96 \
    --num-query-groups 4 --save "$TMP/p2/nested" --save-inputs
shape_ok=1
for spec in "out (2, 96, 8, 64)" "lse (2, 8, 96)" "dq (2, 96, 8, 64)" "dk (2, 96, 4, 64)" \
    "dv (2, 96, 4, 64)" "q (2, 96, 8, 64)" "k (2, 96, 4, 64)" "v (2, 96, 4, 64)" \
    "dout (2, 96, 8, 64)"; do
    f=${spec%% *}
    head -c 128 "$TMP/p2/nested/$f.npy" 2>/dev/null | grep -aFq "'shape': ${spec#* }" || shape_ok=0
done
if [ "$rc" -eq 0 ] && [ "$shape_ok" -eq 1 ] && grep -q "^saved to $TMP/p2/nested" "$OUT"; then
    pass "P=2 --save writes whole tensors (B,S,N,D; lse B,H,S)"
else fail "P=2 --save writes whole tensors (B,S,N,D; lse B,H,S)" "exit $rc or a shape is wrong"; fi

run attn --load "$TMP/p2/nested" --check
if [ "$rc" -eq 0 ] && grep -q '^check: PASS' "$OUT"; then pass "single-process --load --check of P=2 saved inputs"
else fail "single-process --load --check of P=2 saved inputs" "exit $rc"; fi

prun 2 attn --context-parallel-size 2 $RING --load "$TMP/p2/nested" --save "$TMP/p2b"
same=$rc
for f in out lse dq dk dv; do cmp -s "$TMP/p2/nested/$f.npy" "$TMP/p2b/$f.npy" || same=1; done
if [ "$same" -eq 0 ]; then pass "P=2 --load of its own saved inputs reproduces the saved outputs bit-exactly"
else fail "P=2 --load of its own saved inputs reproduces the saved outputs bit-exactly" "exit or files differ"; fi

# Rank-0-only failures reach every rank: a malformed file, a missing dout.npy.
bad=$TMP/bad
mkdir -p "$bad"
cp "$TMP/p1/"{q,k,v,dout}.npy "$bad/"
head -c 300 "$TMP/p1/v.npy" >"$bad/v.npy"
expect_error "truncated .npy on rank 0: exit 1 on every rank" 3 1 "v.npy" \
    attn --context-parallel-size 3 $RING --load "$bad"
cp "$TMP/p1/v.npy" "$bad/v.npy"
rm -f "$bad/dout.npy"
expect_usage "missing dout.npy: exit 2 on every rank" 4 "dout.npy" \
    attn --context-parallel-size 4 $RING --load "$bad"
expect_usage "--load vs disagreeing flag" 2 "--seq-length 48" \
    attn --context-parallel-size 2 $RING --load "$TMP/p1" --seq-length 48
# An unusable --save is found before any work: a usage error on every rank.
prun 2 attn --context-parallel-size 2 $RING --seq-length 96 --save /dev/null/x
if [ "$rc" -eq 2 ] && [ "$codes" = "$(all_ranks 2 2)" ] && [ "$(grep -c '^cpattn attn:' "$ERR")" -eq 1 ] &&
    grep -q -- "--save /dev/null/x" "$ERR" && ! grep -q "^first run" "$OUT"; then
    pass "unwritable --save: exit 2 on every rank before computing, one message"
else fail "unwritable --save: exit 2 on every rank before computing, one message" "exit $rc, codes '$codes'"; fi

# ---------------------------------------------------------------------------
# --iters: per-rank table
# ---------------------------------------------------------------------------

prun 4 attn --context-parallel-size 4 $RING --cp-window-size 2 --seq-length 96 --iters 2 --warmup 1
rows=$(grep -cE '^ +[0-3] +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+$' "$OUT")
header='^rank +fwd_ms +bwd_ms +fwd_wait_ms +bwd_wait_ms +fwd_sent_MiB +bwd_sent_MiB +peak_RSS_MiB$'
if [ "$rc" -eq 0 ] && grep -Eq "$header" "$OUT" &&
    [ "$rows" -eq 4 ] &&
    grep -Eq '^forward  median [0-9.]+ ms \(min [0-9.]+, max [0-9.]+, n=2\) +[0-9.]+ GFLOP/s' "$OUT" &&
    grep -Eq '^backward median [0-9.]+ ms \(min [0-9.]+, max [0-9.]+, n=2\) +[0-9.]+ GFLOP/s' "$OUT" &&
    grep -Eq '^imbalance \(max/mean rank compute_s\) fwd [0-9.]+ bwd [0-9.]+$' "$OUT" &&
    grep -Eq '^peak RSS [0-9.]+ MiB \(max over 4 ranks\)$' "$OUT"
then pass "--iters per-rank table, aggregate and imbalance lines"
else fail "--iters per-rank table, aggregate and imbalance lines" "exit $rc, $rows rank rows"; fi

expect_ok "--iters forward only" 2 "^imbalance \(max/mean rank compute_s\) fwd [0-9.]+ bwd -$" \
    attn --context-parallel-size 2 $RING --seq-length 96 --iters 2 --forward-only

report
