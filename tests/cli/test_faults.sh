#!/usr/bin/env bash
# test_faults.sh — fault injection: what happens to a run when the world
# misbehaves.  Usage: test_faults.sh path/to/cpattn
#
#   killed rank   kill -9 one rank of ring, Ulysses and hybrid `attn` and of
#                 `train` while they run, with mpiexec told NOT to kill the
#                 rest (orte_abort_on_non_zero_status=0, as a launcher that
#                 waits would): every survivor must end by the watchdog
#                 (--comm-timeout 5) within the timeout plus a few seconds,
#                 saying what it waited for, and no rank process may be left.
#   killed save   kill -9 `train` while its checkpoint temporary is being
#                 written: checkpoint.bin is still a complete checkpoint, the
#                 resume from it works and removes the stale temporary.
#   full disk     a 3 MiB tmpfs as --save (skipped, with the reason, where
#                 mounting is not allowed): `attn --save` and a checkpoint
#                 save fail with "No space left on device", exit 1, no
#                 temporary left, the previous checkpoint unchanged.
#   memory limit  the estimate against a limit (CPATTN_TEST_MEMORY_LIMIT, and
#                 a real cgroup v1/v2 limit where one can be made): refused
#                 before allocating, naming the estimate and the limit.
#   FIFO          a FIFO as --data-path is refused at once (checkpoints and
#                 .npy inputs: test_train.sh, test_cli.sh).
#
# docs/reliability.md's table names these cases; check_reliability_doc.sh
# checks that they exist.  Each case prints "ok", "FAIL" or "skip NAME: why".
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
cli_setup cpattn-faults "build it first"
mpi_setup
WATCHDOG=5                      # --comm-timeout of the kill cases
SLACK=${CPATTN_TEST_KILL_SLACK:-8} # "a few seconds" on a loaded 2-core machine

# ---- a killed rank ---------------------------------------------------------

# alive PID : the process exists and is not a zombie.
alive() {
    local st
    st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "${st#Z}" = "$st" ]
}

# kill_case NAME P VICTIM MARK ARGS... : run `cpattn ARGS` on P ranks in the
# background, wait until stdout shows MARK (the run is in its steady state),
# kill -9 rank VICTIM, and time how long the survivors take to end.
kill_case() {
    local name=$1 np=$2 victim=$3 mark=$4
    shift 4
    local pids=$TMP/pids
    rm -rf "$pids" && mkdir -p "$pids"
    # Each rank records its pid and becomes cpattn (exec), so the pid is the rank's.
    OMPI_MCA_orte_abort_on_non_zero_status=0 timeout 120 "$MPIEXEC" -n "$np" --oversubscribe \
        bash -c 'echo $$ >"$0/pid.$OMPI_COMM_WORLD_RANK"; exec "$@"' "$pids" "$BIN" "$@" \
        --comm-timeout "$WATCHDOG" >"$OUT" 2>"$ERR" &
    local job=$! waited=0
    while ! grep -q -- "$mark" "$OUT" 2>/dev/null; do
        sleep 0.1
        waited=$((waited + 1))
        if [ "$waited" -gt 600 ] || ! kill -0 "$job" 2>/dev/null; then
            kill -9 "$job" 2>/dev/null
            wait "$job" 2>/dev/null
            fail "$name" "the run never showed '$mark' (cpattn $*)"
            return
        fi
    done
    local t0 t1 survivors="" p
    t0=$(date +%s.%N)
    kill -9 "$(cat "$pids/pid.$victim")"
    wait "$job"
    local mrc=$?
    t1=$(date +%s.%N)
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    # mpiexec may return while the ranks it killed are still being reaped.
    for ((i = 0; i < 50; ++i)); do
        survivors=""
        for p in "$pids"/pid.*; do
            alive "$(cat "$p")" && survivors="$survivors ${p##*.}"
        done
        [ -z "$survivors" ] && break
        sleep 0.1
    done
    if [ -n "$survivors" ]; then
        kill -9 $(cat "$pids"/pid.*) 2>/dev/null
        fail "$name" "ranks$survivors still running after mpiexec ended"
    elif [ "$mrc" -eq 124 ]; then
        fail "$name" "survivors hung: killed by timeout 120 s (cpattn $*)"
    elif awk -v s="$secs" -v m="$((WATCHDOG + SLACK))" 'BEGIN { exit !(s > m) }'; then
        fail "$name" "the job ended ${secs} s after the kill, over ${WATCHDOG} + ${SLACK} s"
    elif ! grep -Eq "rank [0-9]+: .* did not complete within $WATCHDOG s .*aborting the job" "$ERR"; then
        fail "$name" "no watchdog message naming the operation (cpattn $*)"
    else
        pass "$name: survivors ended ${secs} s after the kill ($(grep -Eo 'rank [0-9]+: [^;]* did not' "$ERR" | head -1 | sed 's/ did not//'))"
    fi
}

ATTN="attn --seq-length 2048 --iters 100000"
kill_case "killed rank, ring attention (P=4, zigzag)" 4 2 "first run" \
    $ATTN --context-parallel-size 4 --context-parallel-algo megatron_cp_algo
kill_case "killed rank, Ulysses attention (P=4)" 4 1 "first run" \
    $ATTN --context-parallel-size 4 --context-parallel-algo ulysses_cp_algo
kill_case "killed rank, hybrid attention (P=4, U=2, overlap)" 4 3 "first run" \
    $ATTN --context-parallel-size 4 --context-parallel-algo hybrid_cp_algo \
    --ulysses-degree-in-cp 2 --use-cp-send-recv-overlap
TRAIN="train --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 256 \
    --train-iters 100000 --log-interval 1 --eval-interval 0"
kill_case "killed rank, training (CP=2 ring x DP=2)" 4 3 "iteration *2" \
    $TRAIN --context-parallel-size 2 --context-parallel-algo megatron_cp_algo

# ---- a killed save ---------------------------------------------------------

# A model whose checkpoint is ~100 MB, saved every iteration: the temporary
# exists for a good part of the run, and the kill lands while it is written.
BIG="--num-layers 4 --hidden-size 512 --num-attention-heads 8 --seq-length 64 --log-interval 1 \
    --eval-interval 0 --save-interval 1"
CK=$TMP/ck
run train $BIG --train-iters 1 --save "$CK"
if [ "$rc" -ne 0 ]; then
    fail "killed save" "the first checkpoint failed: exit $rc"
else
    "$BIN" train $BIG --train-iters 1000 --load "$CK" --save "$CK" >"$OUT" 2>"$ERR" &
    job=$! # cpattn itself (the loop below bounds its time), so the kill reaches it
    caught=""
    for ((i = 0; i < 30000; ++i)); do # poll every ~2 ms for a temporary with data in it
        for f in "$CK"/.checkpoint.bin.tmp.*; do
            [ -s "$f" ] && caught=$f && break
        done
        [ -n "$caught" ] && break
        kill -0 "$job" 2>/dev/null || break
        sleep 0.002
    done
    kill -9 "$job" 2>/dev/null
    wait "$job" 2>/dev/null
    if [ -z "$caught" ] || [ ! -e "$caught" ]; then
        fail "killed save" "no temporary was caught being written"
    else
        part=$(stat -c %s "$caught") whole=$(stat -c %s "$CK/checkpoint.bin")
        # The survivor is a whole checkpoint: resuming from it works, and
        # the start-up sweep removes the dead process's temporary.
        it_before=$(od -An -td8 -j 12 -N 8 "$CK/checkpoint.bin" | tr -d ' ')
        run train $BIG --train-iters $((it_before + 1)) --load "$CK" --save "$CK"
        left=$(ls -A "$CK" | grep -c '\.tmp\.' || true)
        if [ "$rc" -ne 0 ]; then
            fail "killed save: the previous checkpoint loads" "resume exit $rc"
        elif [ "$left" -ne 0 ]; then
            fail "killed save: the stale temporary is removed" "$left temporaries left"
        else
            pass "killed save: killed with ${part} of ${whole} bytes written; checkpoint.bin (iteration $it_before) resumed, stale temporary removed"
        fi
    fi
fi

# ---- a full disk -----------------------------------------------------------

FULL=$TMP/full
mkdir -p "$FULL"
if mount -t tmpfs -o size=3m tmpfs "$FULL" 2>/dev/null; then
    # attn's outputs (q, k, v, out, lse and the gradients: ~4 MiB) do not fit.
    # Every rank writes its rows with MPI-IO; a file appears only whole: each
    # one left is exactly its header plus 4 bytes per value of its shape.
    whole_files() { # DIR -> the number of .npy files whose size is not header + data
        local bad=0 f shape n hl
        for f in "$1"/*.npy; do
            [ -e "$f" ] || continue
            shape=$(head -c 256 "$f" | grep -ao "'shape': ([0-9, ]*)" | grep -o "[0-9][0-9]*" | tr '\n' ' ')
            n=4
            for x in $shape; do n=$((n * x)); done
            hl=$(( $(od -An -tu1 -j8 -N1 "$f") + 256 * $(od -An -tu1 -j9 -N1 "$f") + 10 ))
            [ "$(stat -c %s "$f")" -eq $((hl + n)) ] || bad=$((bad + 1))
        done
        echo "$bad"
    }
    for np in 1 3; do
        rm -rf "$FULL/attn"
        if [ "$np" -eq 1 ]; then
            run attn --seq-length 1024 --num-attention-heads 8 --kv-channels 64 --save "$FULL/attn"
        else
            prun "$np" attn --context-parallel-size 3 --context-parallel-algo megatron_cp_algo \
                --seq-length 1020 --num-attention-heads 8 --kv-channels 64 --save "$FULL/attn"
        fi
        left=$(find "$FULL" -name '*.tmp.*' | wc -l)
        torn=$(whole_files "$FULL/attn")
        if [ "$rc" -eq 1 ] && grep -Eq "No space left on device|full disk" "$ERR" && [ "$left" -eq 0 ] &&
            [ "$torn" -eq 0 ]; then
            pass "full disk, P=$np: attn --save exits 1 naming it, every file left is whole, no temporary"
        else
            fail "full disk, P=$np: attn --save exits 1 naming it, every file left is whole" \
                "exit $rc, $left temporaries, $torn torn files"
        fi
    done
    rm -rf "$FULL/attn"
    # A checkpoint (~1.6 MB) that fits once; then the disk is filled and the
    # next save fails, leaving the first as it was.
    SMALL="--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 \
        --log-interval 1 --eval-interval 0"
    run train $SMALL --train-iters 1 --save "$FULL/ck"
    if [ "$rc" -ne 0 ]; then
        fail "full disk: a checkpoint save fails cleanly" "the first save failed: exit $rc"
    else
        cp "$FULL/ck/checkpoint.bin" "$TMP/first.bin"
        dd if=/dev/zero of="$FULL/filler" bs=64k 2>/dev/null
        # Free just enough for the up-front check's temporary, not a checkpoint.
        truncate -s -64k "$FULL/filler"
        run train $SMALL --train-iters 3 --save-interval 1 --load "$FULL/ck" --save "$FULL/ck"
        left=$(ls -A "$FULL/ck" | grep -c '\.tmp\.' || true)
        if [ "$rc" -eq 1 ] && grep -q "No space left on device" "$ERR" && [ "$left" -eq 0 ] &&
            cmp -s "$FULL/ck/checkpoint.bin" "$TMP/first.bin"; then
            pass "full disk: a checkpoint save exits 1 naming ENOSPC, the previous checkpoint unchanged"
        else
            fail "full disk: a checkpoint save exits 1 naming ENOSPC, the previous checkpoint unchanged" \
                "exit $rc, $left temporaries"
        fi
    fi
    umount "$FULL"
else
    echo "skip full disk: cannot mount a tmpfs here (needs root and a mount namespace that allows it)"
fi

# ---- memory limits ---------------------------------------------------------

# An estimate over the limit is refused before anything is allocated.
CPATTN_TEST_MEMORY_LIMIT=50000000 run train --num-layers 2 --hidden-size 512 --num-attention-heads 8 \
    --seq-length 256 --train-iters 1
if [ "$rc" -eq 1 ] && grep -Eq "estimated [0-9.]+ (MiB|GiB) .*limit of [0-9.]+ (MiB|GiB) \(CPATTN_TEST_MEMORY_LIMIT\)" "$ERR"; then
    pass "memory limit (hook): train refused, naming the estimate and the limit"
else
    fail "memory limit (hook): train refused, naming the estimate and the limit" "exit $rc"
fi
CPATTN_TEST_MEMORY_LIMIT=20000000 run attn --seq-length 8192
if [ "$rc" -eq 1 ] && grep -Eq "estimated .*limit of .*CPATTN_TEST_MEMORY_LIMIT" "$ERR"; then
    pass "memory limit (hook): attn refused, naming the estimate and the limit"
else
    fail "memory limit (hook): attn refused, naming the estimate and the limit" "exit $rc"
fi
# A real cgroup: v2 (memory.max) or v1 (memory.limit_in_bytes), 200 MB.
cg=""
for base in /sys/fs/cgroup /sys/fs/cgroup/unified; do
    if [ -f "$base/cgroup.controllers" ] && grep -qw memory "$base/cgroup.controllers" &&
        mkdir "$base/cpattn-test.$$" 2>/dev/null; then
        if echo 200000000 >"$base/cpattn-test.$$/memory.max" 2>/dev/null; then
            cg=$base/cpattn-test.$$; break
        fi
        rmdir "$base/cpattn-test.$$"
    fi
done
if [ -z "$cg" ] && mkdir /sys/fs/cgroup/memory/cpattn-test.$$ 2>/dev/null; then
    if echo 200000000 >/sys/fs/cgroup/memory/cpattn-test.$$/memory.limit_in_bytes 2>/dev/null; then
        cg=/sys/fs/cgroup/memory/cpattn-test.$$
    else
        rmdir /sys/fs/cgroup/memory/cpattn-test.$$
    fi
fi
if [ -n "$cg" ]; then
    timeout "$TIMEOUT" bash -c 'echo $$ >"$1/cgroup.procs" && exec "${@:2}"' cg "$cg" "$BIN" \
        train --num-layers 4 --hidden-size 1024 --num-attention-heads 8 --seq-length 256 \
        --train-iters 1 >"$OUT" 2>"$ERR"
    rc=$?
    if [ "$rc" -eq 1 ] && grep -Eq "estimated .*limit of .*cgroup" "$ERR"; then
        pass "memory limit (a real cgroup of 200 MB): train refused before allocating"
    else
        fail "memory limit (a real cgroup of 200 MB): train refused before allocating" "exit $rc"
    fi
    rmdir "$cg" 2>/dev/null
else
    echo "skip memory limit (a real cgroup): no writable cgroup memory controller here"
fi

# ---- a FIFO ----------------------------------------------------------------

mkfifo "$TMP/data.fifo"
t0=$(date +%s)
run train --num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 64 --train-iters 1 \
    --data-path "$TMP/data.fifo"
if [ "$rc" -eq 1 ] && grep -q "FIFO" "$ERR" && [ $(($(date +%s) - t0)) -lt 30 ]; then
    pass "a FIFO as --data-path is refused at once"
else
    fail "a FIFO as --data-path is refused at once" "exit $rc"
fi

report
