#!/usr/bin/env bash
# test_cli.sh — the contract of the `cpattn` program, checked from outside:
# --help lists every flag with its default; every usage error exits 2 with one
# line naming the flag; `attn --check` passes over a grid of small shapes
# (causal/general, GQA, Dv != D, every layout, B = 2, ragged S); without
# mpiexec the context-parallel flags run the single-process kernel (P = 1) and
# P != 1 is a usage error naming the world size; .npy files round-trip
# bit-exactly through --save-inputs / --load; malformed .npy files
# give a clean error naming the file; --forward-only, --iters and the kernel
# benchmark produce their documented lines.
#
# usage: bash tests/cli/test_cli.sh path/to/cpattn
# Prints one line per case and "N passed, N failed"; exits 1 if any failed.
# Every invocation runs under `timeout` so a hang fails instead of stalling.
# It needs only bash and coreutils (no Python): .npy files are written with
# printf where a test needs a hand-made one.

set -u
source "$(dirname "$0")/lib.sh"

BIN=${1:?usage: test_cli.sh path/to/cpattn}
cli_setup cpattn-cli "build it first: make"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
FAIL_STDERR_HEADING="--- stderr ---"

# expect_ok NAME PATTERN ARGS... : exit 0 and stdout matches PATTERN (grep -E).
expect_ok() {
    local name=$1 pattern=$2
    shift 2
    expect_exit "$name" 0 "$@" || return
    if ! grep -Eq -- "$pattern" "$OUT"; then
        fail "$name" "stdout lacks /$pattern/ (cpattn $*)"
    else
        pass "$name"
    fi
}

# expect_usage NAME WORD ARGS... : exit 2, exactly one stderr line, which
# contains WORD (the flag, or the value, the message must name).
expect_usage() {
    local name=$1 word=$2
    shift 2
    expect_exit "$name" 2 "$@" || return
    if [ "$(wc -l <"$ERR")" -ne 1 ]; then
        fail "$name" "expected exactly one line on stderr (cpattn $*)"
    else
        expect_named "$name" "$word" "$ERR" "$@" && pass "$name"
    fi
}

# expect_error NAME WORD ARGS... : exit 1 or 2 (no crash, no signal) and
# stderr contains WORD (for example the offending file's name).
expect_error() {
    local name=$1 word=$2
    shift 2
    expect_exit "$name" "1 2" "$@" && expect_named "$name" "$word" "$ERR" "$@" && pass "$name"
}

# digest ARGS... : the 'digest ...' line of an attn run ("" on failure).
digest() {
    timeout "$TIMEOUT" "$BIN" attn "$@" 2>/dev/null | grep '^digest'
}

# npy_file PATH DESCR SHAPE NBYTES : a .npy v1.0 file with the given dtype
# string ('<f4'), shape text ('(2, 3)') and NBYTES zero bytes of data.
npy_file() {
    local path=$1 descr=$2 shape=$3 nbytes=$4
    local dict="{'descr': '$descr', 'fortran_order': False, 'shape': $shape, }"
    local len=$((${#dict} + 1)) # + the closing newline
    local pad=$(((64 - (10 + len) % 64) % 64))
    local total=$((len + pad))
    {
        printf '\x93NUMPY\x01\x00'
        printf "\\x$(printf %02x $((total % 256)))\\x$(printf %02x $((total / 256)))"
        printf '%s%*s\n' "$dict" "$pad" ''
        head -c "$nbytes" /dev/zero
    } >"$path"
}

# ---------------------------------------------------------------------------
# Help and configuration
# ---------------------------------------------------------------------------

expect_ok "top-level --help" "attn" --help
run attn --help
help_ok=1
for f in --micro-batch-size --seq-length --num-attention-heads --num-query-groups \
    --group-query-attention --kv-channels --v-channels --attention-mask-type \
    --softmax-scale --layout --megatron-cp-in-bnsd --seed --load --save --save-inputs \
    --forward-only --check --check-tol --check-tol-grad --reference --iters --warmup \
    --threads --context-parallel-size --context-parallel-algo --cp-window-size \
    --ulysses-degree-in-cp --use-cp-send-recv-overlap --tensor-model-parallel-size; do
    grep -Fq -- "  $f" "$OUT" || help_ok=0
done
for d in "(default: 1024)" "(default: causal)" "(default: bshd)" "(default: 1234)" \
    "(default: 2e-4)" "(default: 1e-3)" "(default: ulysses_cp_algo)"; do
    grep -Fq -- "$d" "$OUT" || help_ok=0
done
if [ "$rc" -eq 0 ] && [ "$help_ok" -eq 1 ]; then pass "attn --help lists flags and defaults"
else fail "attn --help lists flags and defaults" "exit $rc or a flag/default missing"; fi

expect_ok "bench --help" "kernel" bench --help
run bench kernel --help
if [ "$rc" -eq 0 ] && grep -Fq -- "--seq-lengths" "$OUT" && grep -Fq "(default: 1024,4096,16384)" "$OUT"
then pass "bench kernel --help lists flags and defaults"
else fail "bench kernel --help lists flags and defaults" "exit $rc or flags missing"; fi

# ---------------------------------------------------------------------------
# Usage errors: exit 2, one line naming the flag (or value) and the rule
# ---------------------------------------------------------------------------

# (main.c follows this message with the subcommand list, so not one line.)
run frobnicate
if [ "$rc" -eq 2 ] && grep -q "unknown subcommand 'frobnicate'" "$ERR"; then pass "unknown subcommand"
else fail "unknown subcommand" "exit $rc, expected 2 naming it"; fi
expect_usage "unknown flag" "--seq-lenght" attn --seq-lenght 64
expect_usage "unknown flag suggests" "did you mean --seq-length" attn --seq-lenght 64
expect_usage "non-numeric int" "--seq-length 12x" attn --seq-length 12x
expect_usage "int with =" "--seq-length abc" attn --seq-length=abc
expect_usage "float as int" "--micro-batch-size 1.5" attn --micro-batch-size 1.5
expect_usage "zero seq length" "--seq-length 0" attn --seq-length 0
expect_usage "negative seq length" "--seq-length -5" attn --seq-length -5
expect_usage "int overflow" "--seq-length 99999999999999999999" attn --seq-length 99999999999999999999
expect_usage "missing value" "--seq-length" attn --seq-length
expect_usage "H % G != 0" "--num-query-groups 3" attn --num-query-groups 3
expect_usage "H % G names H" "--num-attention-heads 8" attn --num-query-groups 3
expect_usage "bad mask type" "--attention-mask-type diagonal" attn --attention-mask-type diagonal
expect_usage "bad layout" "--layout bhsd" attn --layout bhsd
expect_usage "bnsd flag vs layout" "--megatron-cp-in-bnsd" attn --megatron-cp-in-bnsd --layout sbhd
expect_usage "load missing dir" "$TMP/nowhere" attn --load "$TMP/nowhere"
expect_usage "size overflow" "overflow" attn --seq-length 4000000000000000000
expect_usage "size overflow names flag" "--seq-length 4000000000000000000" attn --seq-length 4000000000000000000
expect_usage "negative threads" "--threads -1" attn --threads -1
expect_usage "bad float" "--softmax-scale x" attn --softmax-scale x
expect_usage "flag with bad value" "--check maybe" attn --check=maybe
expect_usage "stray argument" "stray" attn stray
expect_usage "save-inputs without save" "--save-inputs" attn --save-inputs
CPATTN_SEED=abc expect_usage "bad env value" "CPATTN_SEED" attn
# Above float's range, or so small it would round to 0 (once "the default"):
# a usage error naming the flag and the range.
expect_usage "--softmax-scale 1e39 is out of range" "--softmax-scale 1e39: must be between" \
    attn --softmax-scale 1e39
expect_usage "--softmax-scale 1e-50 is out of range" "--softmax-scale 1e-50: must be between" \
    attn --softmax-scale 1e-50
# A flag overrides its variable, which is then not even parsed.
CPATTN_THREADS=abc expect_exit "an invalid CPATTN_THREADS under --threads 1 is ignored" 0 \
    attn --threads 1 --seq-length 8 &&
    expect_named "an invalid CPATTN_THREADS under --threads 1 is ignored" "kernel threads 1" "$OUT" \
        attn --threads 1 && pass "an invalid CPATTN_THREADS under --threads 1 is ignored"
expect_usage "bench missing name" "kernel" bench
expect_usage "bench bad list" "--seq-lengths 1,,2" bench kernel --seq-lengths 1,,2
expect_usage "bench bad threads" "--threads 0" bench kernel --threads 0

# Context-parallel flags without mpiexec (world size 1).
expect_usage "P != world size names both" "--context-parallel-size 2: must equal the MPI world size 1" \
    attn --context-parallel-size 2
expect_usage "P = 0" "--context-parallel-size 0" attn --context-parallel-size 0
expect_usage "unknown CP algorithm" "--context-parallel-algo ring" attn --context-parallel-algo ring
expect_usage "window 0" "--cp-window-size 0" attn --cp-window-size 0
expect_usage "ulysses degree not an int" "--ulysses-degree-in-cp two" attn --ulysses-degree-in-cp two
expect_usage "TP too large for int" "--tensor-model-parallel-size 4294967296" \
    attn --tensor-model-parallel-size 4294967296

# A size that fits in 64 bits but not in memory: a clear error, no crash.
expect_error "too big for memory" "out of memory" attn --seq-length 100000000000

# ---------------------------------------------------------------------------
# --check against the reference over a grid of small shapes
# ---------------------------------------------------------------------------

check_case() {
    local name=$1
    shift
    run attn --check "$@"
    if [ "$rc" -ne 0 ]; then
        fail "check $name" "exit $rc (cpattn attn --check $*)"
    elif ! grep -q '^check: PASS' "$OUT" || grep -q 'FAIL' "$OUT"; then
        fail "check $name" "no 'check: PASS' (cpattn attn --check $*)"
    else
        pass "check $name"
    fi
}

check_case "causal default-ish" --seq-length 128
check_case "general" --seq-length 128 --attention-mask-type general
check_case "GQA H=8 G=2" --seq-length 96 --num-query-groups 2
check_case "GQA via Megatron flag (G=1)" --seq-length 64 --group-query-attention
check_case "MLA Dv != D" --seq-length 64 --kv-channels 48 --v-channels 32
check_case "Dv > D general" --seq-length 64 --kv-channels 16 --v-channels 80 --attention-mask-type general
check_case "layout sbhd" --seq-length 64 --layout sbhd --num-query-groups 4
check_case "layout bnsd" --seq-length 64 --layout bnsd --attention-mask-type general
check_case "megatron-cp-in-bnsd" --seq-length 64 --megatron-cp-in-bnsd
check_case "batch 2" --micro-batch-size 2 --seq-length 64
check_case "ragged S=77 B=2 GQA sbhd" --micro-batch-size 2 --seq-length 77 --num-query-groups 2 --layout sbhd
check_case "ragged S=77 general bnsd" --seq-length 77 --attention-mask-type general --layout bnsd
check_case "S=1" --seq-length 1 --num-attention-heads 2
check_case "explicit softmax scale" --seq-length 50 --softmax-scale 0.3
check_case "1 thread" --seq-length 100 --threads 1

# Packed documents and sliding windows (Megatron's --reset-attention-mask,
# TE's cu_seqlens, Mistral's window): a document of length 1, documents on
# tile edges, windows shorter than a tile and longer than S, both combined.
check_case "documents causal" --seq-length 200 --cu-seqlens 0,1,37,128,129,200
check_case "documents general GQA" --seq-length 200 --cu-seqlens 0,64,65,200 \
    --attention-mask-type general --num-query-groups 2
check_case "sliding window 5 causal" --seq-length 150 --sliding-window 5
check_case "sliding window 40 general bnsd" --seq-length 150 --sliding-window 40 \
    --attention-mask-type general --layout bnsd
check_case "window longer than S" --seq-length 64 --sliding-window 1000
check_case "documents and window, B=2 Dv != D" --micro-batch-size 2 --seq-length 130 \
    --cu-seqlens 0,3,5,6,70,130 --sliding-window 17 --v-channels 32
d1=$(digest --seq-length 96 --cu-seqlens 0,96)
d2=$(digest --seq-length 96)
if [ -n "$d1" ] && [ "$d1" = "$d2" ]; then pass "one document covering S = no documents, bit for bit"
else fail "one document covering S = no documents, bit for bit" "'$d1' / '$d2'"; fi
expect_usage "cu_seqlens not starting at 0" "cu_seqlens: starts at 1" attn --seq-length 96 \
    --cu-seqlens 1,50,96
expect_usage "cu_seqlens not increasing" "cu_seqlens: entry 2 (50) is not greater" attn \
    --seq-length 96 --cu-seqlens 0,50,50,96
expect_usage "cu_seqlens not ending at S" "must end at the sequence length S = 96" attn \
    --seq-length 96 --cu-seqlens 0,50,90
expect_usage "cu_seqlens not integers" "--cu-seqlens 0,x,96" attn --seq-length 96 \
    --cu-seqlens 0,x,96
expect_usage "cu_seqlens one entry" "at least 2 entries" attn --seq-length 96 --cu-seqlens 0
expect_usage "sliding window 0" "--sliding-window 0" attn --seq-length 96 --sliding-window 0
# DIR/cu_seqlens.npy with --load: int64 and int32 read, other dtypes and
# shapes refused naming the file, a conflicting --cu-seqlens refused.
cudir=$TMP/cu
run attn --seq-length 96 --save "$cudir" --save-inputs
npy_index() { # PATH DESCR PACK SHAPE VALUES...: a 1-D index .npy written by perl
    local path=$1 descr=$2 fmt=$3 shape=$4
    shift 4
    npy_file "$path" "$descr" "$shape" 0
    perl -e "print pack('$fmt', @ARGV)" "$@" >>"$path"
}
npy_index "$cudir/cu_seqlens.npy" '<i8' 'q<*' '(4,)' 0 10 50 96
d_file=$(digest --load "$cudir")
rm "$cudir/cu_seqlens.npy"
d_list=$(digest --load "$cudir" --cu-seqlens 0,10,50,96)
if [ -n "$d_file" ] && [ "$d_file" = "$d_list" ]; then pass "cu_seqlens.npy (int64) == --cu-seqlens"
else fail "cu_seqlens.npy (int64) == --cu-seqlens" "'$d_file' / '$d_list'"; fi
npy_index "$cudir/cu_seqlens.npy" '<i4' 'l<*' '(4,)' 0 10 50 96
d_i4=$(digest --load "$cudir")
if [ -n "$d_i4" ] && [ "$d_i4" = "$d_list" ]; then pass "cu_seqlens.npy (int32) == --cu-seqlens"
else fail "cu_seqlens.npy (int32) == --cu-seqlens" "'$d_i4' / '$d_list'"; fi
expect_usage "cu_seqlens.npy and --cu-seqlens conflict" "conflicts" attn --load "$cudir" \
    --cu-seqlens 0,96
npy_index "$cudir/cu_seqlens.npy" '<f4' 'f<*' '(4,)' 0 10 50 96
expect_usage "cu_seqlens.npy float32 refused" "int32 or int64" attn --load "$cudir"
npy_index "$cudir/cu_seqlens.npy" '<i8' 'q<*' '(2, 2)' 0 10 50 96
expect_usage "cu_seqlens.npy 2-D refused" "1-D" attn --load "$cudir"
npy_index "$cudir/cu_seqlens.npy" '<i8' 'q<*' '(3,)' 0 60 50
expect_usage "cu_seqlens.npy decreasing refused" "cu_seqlens.npy: cu_seqlens: entry 2" attn \
    --load "$cudir"
rm -f "$cudir/cu_seqlens.npy"
check_case "forward only" --seq-length 77 --forward-only
check_case "reference as main path" --seq-length 40 --reference

# ---------------------------------------------------------------------------
# Outputs, determinism and .npy round trips
# ---------------------------------------------------------------------------

expect_ok "config printed" "^# +--seq-length +77 +\(command line\)" attn --seq-length 77 --forward-only
expect_ok "config shows CP flags" "^# +--context-parallel-algo +ulysses_cp_algo +\(default\)" \
    attn --seq-length 16 --forward-only
expect_ok "P=1 says CP is off" "^# context parallel: off \(--context-parallel-size 1, MPI world size 1\)" \
    attn --seq-length 16 --forward-only

# P = 1 is a plan like any other.  Ulysses and the all-gather both make one
# kernel call over the whole sequence there: the same bits.  The ring calls
# the kernel on its two zigzag chunks (other blocking, other rounding), so it
# is held to --check; its rules still apply (a window needs W < P).
d1=$(digest --seq-length 64 --num-query-groups 2)
d2=$(digest --seq-length 64 --num-query-groups 2 --context-parallel-algo allgather_cp_algo)
if [ -n "$d1" ] && [ "$d1" = "$d2" ]; then pass "P=1: ulysses and allgather plans give the same bits"
else fail "P=1: ulysses and allgather plans give the same bits" "'$d1' / '$d2'"; fi
check_case "P=1 ring plan (zigzag chunks)" --seq-length 64 --context-parallel-algo megatron_cp_algo \
    --use-cp-send-recv-overlap
expect_usage "P=1 ring with a window" "--cp-window-size 3" attn --seq-length 64 \
    --context-parallel-algo megatron_cp_algo --cp-window-size 3
expect_ok "forward-only prints out/lse digest" "^digest out=[0-9a-f]+ lse=[0-9a-f]+$" attn --seq-length 64 --forward-only
expect_ok "iters: forward median" "^forward  median [0-9.]+ ms \(min [0-9.]+, max [0-9.]+, n=2\) +[0-9.]+ GFLOP/s" attn --seq-length 64 --iters 2
expect_ok "iters: backward median" "^backward median [0-9.]+ ms \(min [0-9.]+, max [0-9.]+, n=2\)" attn --seq-length 64 --iters 2
expect_ok "peak RSS" "^peak RSS [0-9.]+ MiB" attn --seq-length 32

d1=$(digest --seq-length 200 --num-query-groups 2 --threads 1)
d2=$(digest --seq-length 200 --num-query-groups 2 --threads 2)
d3=$(digest --seq-length 200 --num-query-groups 2 --threads 2)
if [ -n "$d1" ] && [ "$d1" = "$d2" ] && [ "$d2" = "$d3" ]; then pass "bitwise identical for 1 and 2 threads, run after run"
else fail "bitwise identical for 1 and 2 threads, run after run" "'$d1' / '$d2' / '$d3'"; fi

d1=$(digest --seq-length 64 --seed 7)
d2=$(CPATTN_SEED=7 digest --seq-length=64)
d3=$(digest --seq-length 64 --seed 8)
if [ -n "$d1" ] && [ "$d1" = "$d2" ] && [ "$d1" != "$d3" ]; then pass "--seed, CPATTN_SEED and --flag=value agree"
else fail "--seed, CPATTN_SEED and --flag=value agree" "'$d1' / '$d2' / '$d3'"; fi

# Random inputs do not depend on the layout.
run attn --seq-length 40 --layout bshd --forward-only --save "$TMP/in_bshd" --save-inputs
run attn --seq-length 40 --layout bnsd --forward-only --save "$TMP/in_bnsd" --save-inputs
same=1
for f in q k v dout; do cmp -s "$TMP/in_bshd/$f.npy" "$TMP/in_bnsd/$f.npy" || same=0; done
if [ "$same" -eq 1 ]; then pass "random inputs identical in every layout"
else fail "random inputs identical in every layout" "saved q/k/v/dout differ between bshd and bnsd"; fi

# --save (creating nested folders) then --load of the saved inputs: same bits.
run attn --micro-batch-size 2 --seq-length 45 --num-query-groups 4 --v-channels 24 \
    --save "$TMP/run1/nested" --save-inputs
ok=$rc
run attn --load "$TMP/run1/nested" --save "$TMP/run2"
ok=$((ok + rc))
for f in out lse dq dk dv; do cmp -s "$TMP/run1/nested/$f.npy" "$TMP/run2/$f.npy" || ok=1; done
if [ "$ok" -eq 0 ]; then pass "--save-inputs then --load reproduces outputs bit-exactly"
else fail "--save-inputs then --load reproduces outputs bit-exactly" "exit codes or files differ"; fi

check_case "loaded inputs in another layout" --load "$TMP/run1/nested" --layout sbhd
expect_usage "load vs disagreeing flag" "--seq-length 46" attn --load "$TMP/run1/nested" --seq-length 46
expect_ok "load with agreeing flag" "^digest" attn --load "$TMP/run1/nested" --seq-length 45 --forward-only

# Malformed inputs: a clear error naming the file, nothing else.
bad=$TMP/bad
mkdir -p "$bad"
cp "$TMP/run1/nested/"{q,k,v,dout}.npy "$bad/"
printf 'not a numpy file at all' >"$bad/k.npy"
expect_error "garbage .npy names the file" "k.npy" attn --load "$bad"

cp "$TMP/run1/nested/k.npy" "$bad/k.npy"
head -c 300 "$TMP/run1/nested/v.npy" >"$bad/v.npy"
expect_error "truncated .npy names the file" "v.npy" attn --load "$bad"

npy_file "$bad/v.npy" '<f8' '(2, 45, 2, 24)' $((2 * 45 * 2 * 24 * 8))
expect_error "float64 .npy names the file" "v.npy" attn --load "$bad"

cp "$TMP/run1/nested/v.npy" "$bad/v.npy"
npy_file "$bad/dout.npy" '<f4' '(2, 45, 8)' $((2 * 45 * 8 * 4))
expect_usage "dout.npy with wrong dims" "dout.npy" attn --load "$bad"

npy_file "$bad/dout.npy" '<f4' '(2, 45, 8, 25)' $((2 * 45 * 8 * 25 * 4))
expect_usage "dout.npy with wrong Dv" "dout.npy" attn --load "$bad"

rm -f "$bad/dout.npy"
expect_usage "missing dout.npy" "dout.npy" attn --load "$bad"
expect_ok "missing dout.npy is fine with --forward-only" "^digest out=" attn --load "$bad" --forward-only

# ---------------------------------------------------------------------------
# The kernel benchmark (a tiny grid: this checks the output, not the speed)
# ---------------------------------------------------------------------------

run bench kernel --seq-lengths 64,96 --head-dims 16,24/16 --threads 1 --reps 1 --warmup 0 \
    --sgemm-size 128 --csv "$TMP/bench.csv"
# 2 S x 2 head dims x 2 KV head counts (8 and 2) x 2 masks
rows=$(grep -c '^1,\(causal\|general\),' "$TMP/bench.csv" 2>/dev/null)
if [ "$rc" -eq 0 ] && grep -q '^# ceilings, 1 thread(s): FMA peak (.*) [0-9.]* GFLOP/s; sgemm 128x128x128' "$OUT" &&
    grep -q '^threads,mask,B,S,H,G,Dqk,Dv,isa,.*fwdbwd_over_peak' "$TMP/bench.csv" && [ "$rows" = 16 ]; then
    pass "bench kernel table and CSV"
else fail "bench kernel table and CSV" "exit $rc, $rows CSV rows"; fi
# The ratios are the figures over the same run's ceilings (columns 20 fwd+bwd
# GFLOP/s, 21 FMA peak, 23 sgemm, 26 and 29 the ratios), and a table row that
# claims more than the FMA peak is flagged with '!'.  (Whether a ratio is
# below 1 depends on how busy the machine is while the ceiling is probed, so
# that is the benchmark's business, not a test's.)
if awk -F, 'NR > 1 { d = $26 - $20 / $21; e = $29 - $20 / $23;
                     if (d > 0.001 || d < -0.001 || e > 0.001 || e < -0.001) bad = 1 }
            END { exit bad }' "$TMP/bench.csv" &&
    awk '$2 ~ /causal|general/ && NF > 14 { split($0, f, "|"); split(f[4], r, " ");
                                           if (r[2] + 0 > 1 && r[2] !~ /!/) bad = 1 }
         END { exit bad }' "$OUT"; then
    pass "bench kernel ratios are figure / same-run ceiling, and > 1 is flagged"
else fail "bench kernel ratios are figure / same-run ceiling, and > 1 is flagged" "see the CSV and table"; fi
expect_usage "bench kernel bad --head-dims" "--head-dims" bench kernel --head-dims 64,/
expect_usage "bench kernel G not dividing H" "--num-query-groups" bench kernel --num-query-groups 3

# ---------------------------------------------------------------------------
# Reliability: non-finite inputs, FIFOs, escaped file bytes, --save up front
# ---------------------------------------------------------------------------

nf=$TMP/nonfinite
run attn --seq-length 64 --num-attention-heads 2 --kv-channels 8 --save "$nf" --save-inputs
# q[0, 1, 0, 5] = NaN: its data starts after the 128-byte header.
printf '\x00\x00\xc0\x7f' | dd of="$nf/q.npy" bs=1 seek=$((128 + 4 * 21)) conv=notrunc status=none
expect_exit "NaN in q.npy is refused" 1 attn --load "$nf" &&
    expect_named "NaN in q.npy is refused" "element [0, 1, 0, 5] is NaN" "$ERR" attn --load "$nf" &&
    expect_named "NaN in q.npy is refused" "--allow-non-finite" "$ERR" attn --load "$nf" &&
    pass "NaN in q.npy is refused, naming the element"
run attn --load "$nf" --check --allow-non-finite
if [ "$rc" -eq 0 ] && grep -q '^check: PASS' "$OUT" &&
    grep -q '^check dk .*non-finite in both alike 16 ' "$OUT" && grep -q '^check lse .*alike 1 ' "$OUT"; then
    pass "--allow-non-finite: NaN propagates exactly as in the reference (lse 1 row, dk 2 keys x 8)"
else fail "--allow-non-finite: NaN propagates exactly as in the reference" "exit $rc"; fi

mkdir -p "$TMP/fifo" && mkfifo "$TMP/fifo/q.npy"
expect_exit "a FIFO where q.npy should be is refused at once" 1 attn --load "$TMP/fifo" &&
    expect_named "a FIFO where q.npy should be is refused at once" "FIFO" "$ERR" attn --load "$TMP/fifo" &&
    pass "a FIFO where q.npy should be is refused at once"

esc=$TMP/escape
mkdir -p "$esc"
npy_file "$esc/q.npy" "$(printf '\033]0;owned\007\033[2J')" '(1, 8, 1, 4)' 128
run attn --load "$esc"
if [ "$rc" -ne 0 ] && ! grep -q "$(printf '\033')" "$ERR" && grep -Fq '\x1b]0;owned\x07' "$ERR"; then
    pass "terminal escapes in a .npy header are printed escaped"
else fail "terminal escapes in a .npy header are printed escaped" "exit $rc: $(od -c "$ERR" | head -3)"; fi

: >"$TMP/notadir"
expect_usage "--save names a regular file (before computing)" "--save" attn --seq-length 64 --save "$TMP/notadir"
expect_usage "--save ''" "--save" attn --seq-length 64 --save ""

# ---------------------------------------------------------------------------
# Kernel instruction set and the BLAS start-up check
# ---------------------------------------------------------------------------

expect_ok "configuration names the kernel instruction set" "^# kernels: (avx512|avx2|scalar) " attn --seq-length 64
for isa in scalar avx2 avx512; do
    CPATTN_ISA=$isa run attn --seq-length 96 --num-attention-heads 4 --num-query-groups 2 --check
    if grep -q "^# kernels: $isa (chosen by CPATTN_ISA" "$OUT" && [ "$rc" -eq 0 ] && grep -q '^check: PASS' "$OUT"; then
        pass "CPATTN_ISA=$isa runs and checks"
    elif [ "$rc" -eq 2 ] && grep -q "does not support" "$ERR"; then
        echo "skip: CPATTN_ISA=$isa: this CPU cannot run it (refused with exit 2, as it should)"
        pass "CPATTN_ISA=$isa is refused on a CPU without it"
    else fail "CPATTN_ISA=$isa runs and checks" "exit $rc"; fi
done
CPATTN_ISA=sse9 expect_usage "bad CPATTN_ISA" "CPATTN_ISA=sse9" attn --seq-length 64

# The check runs before anything else.  CPATTN_BLAS_PRETEND_CORE makes it
# believe OpenBLAS chose its oldest kernels by itself, as it does on CPUs it
# does not recognise.
CPATTN_BLAS_PRETEND_CORE=Prescott expect_ok "a BLAS below the CPU: one restart with OPENBLAS_CORETYPE" \
    "^# blas: OpenBLAS chose Prescott for this CPU; restarted once with OPENBLAS_CORETYPE=[A-Za-z]+ \(self-test passed\)" \
    attn --seq-length 64
if grep -q "STILL below" "$OUT"; then fail "the restart fixes the kernels" "$(grep '^# blas' "$OUT")"
else pass "the restart fixes the kernels"; fi
# A process that was restarted never restarts again, even if the kernels
# still look wrong (this is what bounds the restarts to one).
CPATTN_BLAS_RESTARTED=Prescott CPATTN_BLAS_PRETEND_CORE=Prescott expect_ok "never a second restart" \
    "^# blas: OpenBLAS chose Prescott for this CPU; restarted once .*STILL below the CPU" attn --seq-length 64
OPENBLAS_CORETYPE=Haswell CPATTN_BLAS_PRETEND_CORE=Prescott expect_ok "a user-set OPENBLAS_CORETYPE is obeyed" \
    "^# blas: OPENBLAS_CORETYPE=Haswell set by the user: obeyed \(Haswell kernels in use" attn --seq-length 64
CPATTN_BLAS_FIX=0 CPATTN_BLAS_PRETEND_CORE=Prescott expect_ok "CPATTN_BLAS_FIX=0 only warns" \
    "^# blas: WARNING: OpenBLAS runs its Prescott kernels .*CPATTN_BLAS_FIX=0: not corrected" attn --seq-length 64
CPATTN_BLAS_SELFTEST_FAIL=1 CPATTN_BLAS_PRETEND_CORE=Prescott expect_ok "a failed self-test keeps the default" \
    "^# blas: WARNING: .*failed its self-test here, so the slow kernels stay" attn --seq-length 64
# This host's own BLAS: either it fits (nothing to do) or, as on the Xeons
# Debian's OpenBLAS 0.3.21 takes for Prescott, one restart corrects it.
expect_ok "this host's BLAS: fits, or corrected by one restart" \
    "^# blas: (OpenBLAS runs its [A-Za-z0-9]+ kernels .*which fit this CPU|OpenBLAS chose [A-Za-z0-9]+ for this CPU; restarted once with OPENBLAS_CORETYPE=[A-Za-z0-9]+ \(self-test passed\): [A-Za-z0-9]+ kernels in use)" \
    attn --seq-length 64

report
