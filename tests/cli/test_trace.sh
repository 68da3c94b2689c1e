#!/usr/bin/env bash
# test_trace.sh — `--trace FILE` of `cpattn attn` and `cpattn train`, and
# `cpattn trace-svg`, checked from outside (docs/trace.md).
#
# For the ring (zigzag, send/recv overlap, P = 2), the double ring (P = 4,
# W = 2), Ulysses (P = 2), the hybrid (P = 4, U = 2) and a short training
# run (P = 2), the trace must be valid JSON in the trace-event format
# (Debian's python3 json module reads it): "X" events with numeric ts/dur,
# "pid" = the rank, metadata naming every rank "rank N (host)"; events on
# one pid/tid nest or are disjoint; each expected kind of event is there
# with a positive duration; and the bytes of the send events (and
# all-to-alls, all-gathers) inside each plan call add up to the call's
# bytes_sent, which equals what `attn --iters` prints per rank
# (fwd_sent_MiB / bwd_sent_MiB).  A tiny --trace-max-events drops events,
# says so on stderr and in the JSON, and still writes a valid trace.
# trace-svg turns a trace into an SVG that python3's xml.etree parses, and
# refuses malformed JSON (exit 1, naming the byte) and bad usage (exit 2),
# writing nothing; --trace refuses a folder that does not exist (exit 2 on
# every rank, before any work).
#
# usage: bash tests/cli/test_trace.sh path/to/cpattn
# Prints one line per case and "N passed, N failed"; exits 1 if any failed.
# Every job runs under `timeout` and as `mpiexec -n P --oversubscribe`
# (prun in lib.sh: each rank's exit code is recorded).  Needs bash,
# coreutils, Open MPI's mpiexec and /usr/bin/python3 (json, xml.etree).

set -u
source "$(dirname "$0")/lib.sh"

BIN=${1:?usage: test_trace.sh path/to/cpattn}
cli_setup cpattn-trace "build it first: make"
mpi_setup
PY=${PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || give_up "$PY not found (apt-get install python3)"
SMALL="--seq-length 1024 --num-attention-heads 4 --kv-channels 32 --iters 2 --warmup 0"

# The validator: FILE MODE [EXPECTED...].  MODE attn checks the byte sums
# against the --iters table in $OUT; train checks the model's spans.
# Prints what it found; exits 1 with the reason on the first problem.
cat >"$TMP/check_trace.py" <<'EOF'
import json, re, sys
from collections import defaultdict

path, mode, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
want = sys.argv[4:]  # categories, or names with '-' for ' ', that must appear

def die(why):
    print("trace check: " + why)
    sys.exit(1)

with open(path) as f:
    doc = json.load(f)
if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
    die("no traceEvents array")
other = doc.get("otherData", {})
ranks = other.get("ranks")
events = [e for e in doc["traceEvents"] if e.get("ph") == "X"]
meta = [e for e in doc["traceEvents"] if e.get("ph") == "M"]
if not events:
    die("no complete events")
for e in events:
    for k, t in (("name", str), ("cat", str), ("pid", int), ("tid", int)):
        if not isinstance(e.get(k), t):
            die("event without a %s %s: %r" % (t.__name__, k, e))
    for k in ("ts", "dur"):
        if not isinstance(e.get(k), (int, float)) or e[k] < 0:
            die("event with a bad %s: %r" % (k, e))
pids = sorted({e["pid"] for e in events})
if ranks is None or pids != list(range(ranks)):
    die("pids %r do not match otherData.ranks %r" % (pids, ranks))
names = {m["pid"]: m["args"]["name"] for m in meta if m.get("name") == "process_name"}
for p in pids:
    if not re.match(r"rank %d \(.+\)$" % p, names.get(p, "")):
        die("process %d is named %r, not 'rank %d (host)'" % (p, names.get(p), p))

# Nesting per (pid, tid), in integer nanoseconds (ts and dur have three
# decimals of microseconds).
def ns(x):
    return int(round(x * 1000))
lanes = defaultdict(list)
for e in events:
    lanes[(e["pid"], e["tid"])].append(e)
for key, evs in lanes.items():
    evs.sort(key=lambda e: (ns(e["ts"]), -ns(e["dur"])))
    stack = []
    for e in evs:
        a, z = ns(e["ts"]), ns(e["ts"]) + ns(e["dur"])
        while stack and stack[-1][0] <= a:
            stack.pop()
        if stack and z > stack[-1][0]:
            die("pid %d tid %d: %r [%d, %d] overlaps %r ending at %d without nesting"
                % (key[0], key[1], e["name"], a, z, stack[-1][1], stack[-1][0]))
        stack.append((z, e["name"]))

# What must be there, with a positive duration.
for w in want:
    hits = [e for e in events if e["cat"] == w or e["name"] == w.replace("-", " ")]
    if not any(e["dur"] > 0 for e in hits):
        die("no %r event with a positive duration" % w)

# Bytes: inside each plan call, the sends plus the collectives' bytes equal
# the call's bytes_sent.
def inside(c, e):
    return (e["pid"] == c["pid"] and ns(e["ts"]) >= ns(c["ts"]) and
            ns(e["ts"]) + ns(e["dur"]) <= ns(c["ts"]) + ns(c["dur"]))
calls = [e for e in events if e["cat"] == "plan"]
comm = [e for e in events if e["cat"] in ("send", "alltoall", "allgather")]
sent = defaultdict(set)  # (pid, "forward"/"backward") -> bytes_sent values
for c in calls:
    total = sum(e["args"]["bytes"] for e in comm if inside(c, e))
    if total != c["args"]["bytes_sent"]:
        die("%s on rank %d at %.3f us: its sends add up to %d bytes, bytes_sent says %d"
            % (c["name"], c["pid"], c["ts"], total, c["args"]["bytes_sent"]))
    sent[(c["pid"], c["name"].split()[-1])].add(total)
if mode == "attn":
    # The --iters table: rank fwd_ms bwd_ms fwd_wait bwd_wait fwd_sent_MiB bwd_sent_MiB rss
    rows = 0
    for line in open(out_path):
        f = line.split()
        if len(f) == 8 and f[0].isdigit():
            r = int(f[0])
            for col, which in ((5, "forward"), (6, "backward")):
                got = sent.get((r, which))
                if not got or len(got) != 1:
                    die("rank %d: %s calls sent %r bytes (expected one value)" % (r, which, got))
                if abs(next(iter(got)) / 1048576.0 - float(f[col])) > 0.0006:
                    die("rank %d: the trace's %s sends are %d bytes, the tool printed %s MiB"
                        % (r, which, next(iter(got)), f[col]))
            rows += 1
    if rows != len(pids):
        die("the --iters table has %d rows for %d ranks" % (rows, len(pids)))
if mode == "train":
    blocks = [e for e in events if e["name"] == "block forward"]
    for b in blocks:
        if not any(c["name"] == "plan forward" and inside(b, c) for c in calls):
            die("a block forward on rank %d holds no plan forward" % b["pid"])
print("trace ok: %d events, %d tracks, %d plan calls, dropped %s"
      % (len(events), len(lanes), len(calls), other.get("dropped_events")))
EOF

# trace_case NAME P MODE "EXPECTED..." ARGS... : the job exits 0 on every
# rank, says it wrote the trace, and the validator accepts it.
trace_case() {
    local name=$1 np=$2 mode=$3 expected=$4
    shift 4
    local file=$TMP/$name.json
    rm -f "$file"
    expect_ranks "$name" "$np" 0 "$@" --trace "$file" || return
    if ! grep -q "^trace: wrote $file" "$OUT"; then
        fail "$name" "no 'trace: wrote' line (cpattn $* --trace $file)"
        return
    fi
    # shellcheck disable=SC2086 # the expected kinds are words
    if "$PY" "$TMP/check_trace.py" "$file" "$mode" "$OUT" $expected >"$TMP/check.out" 2>&1; then
        pass "$name ($(tail -n 1 "$TMP/check.out"))"
    else
        cp "$TMP/check.out" "$ERR"
        fail "$name" "$(tail -n 1 "$TMP/check.out")"
    fi
}

RING="--context-parallel-algo megatron_cp_algo"
trace_case trace_ring_zigzag_overlap 2 attn "compute send recv wait plan" \
    attn --context-parallel-size 2 $RING --use-cp-send-recv-overlap $SMALL
# A causal window shorter than a shard: only halos travel (ring.c).
trace_case trace_ring_halo 2 attn "compute send recv wait plan" \
    attn --context-parallel-size 2 $RING --sliding-window 128 $SMALL
trace_case trace_double_ring_P4_W2 4 attn "compute send recv wait plan" \
    attn --context-parallel-size 4 $RING --cp-window-size 2 --use-cp-send-recv-overlap $SMALL
trace_case trace_ulysses 2 attn "compute alltoall plan" \
    attn --context-parallel-size 2 --context-parallel-algo ulysses_cp_algo $SMALL
trace_case trace_hybrid_P4_U2 4 attn "compute alltoall send recv wait plan" \
    attn --context-parallel-size 4 --context-parallel-algo hybrid_cp_algo \
    --ulysses-degree-in-cp 2 $SMALL
trace_case trace_allgather 2 attn "compute allgather plan" \
    attn --context-parallel-size 2 --context-parallel-algo allgather_cp_algo $SMALL
# The clocks aligned by ping-pong (the path of ranks on several hosts),
# forced on one host by the writer's test hook.
CPATTN_TRACE_CLOCK_SYNC=1 trace_case trace_clock_sync_P4 4 attn "compute send recv wait plan" \
    attn --context-parallel-size 4 $RING $SMALL
if ! grep -q '"clock":"CLOCK_MONOTONIC aligned to rank 0 by ping-pong"' "$TMP/trace_clock_sync_P4.json"; then
    fail trace_clock_sync_P4 "otherData.clock does not say the clocks were aligned"
fi
trace_case trace_train 2 train \
    "iteration optimizer-step block-forward block-backward attention MLP compute send wait plan" \
    train --context-parallel-size 2 $RING --use-cp-send-recv-overlap --num-layers 2 \
    --hidden-size 64 --num-attention-heads 4 --seq-length 128 --train-iters 2 \
    --eval-interval 0 --eval-iters 1 --log-interval 1

# A full buffer: events dropped, said once per rank on stderr and in the
# JSON; the trace is still valid.
F=$TMP/full.json
if expect_ranks trace_buffer_full 2 0 attn --context-parallel-size 2 $RING $SMALL \
    --trace "$F" --trace-max-events 12; then
    if [ "$(grep -c 'trace buffer is full' "$ERR")" -ne 2 ]; then
        fail trace_buffer_full "expected one 'trace buffer is full' line per rank on stderr"
    elif ! grep -q 'dropped (the buffer was full' "$OUT"; then
        fail trace_buffer_full "the 'trace: wrote' line does not say events were dropped"
    elif ! "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d['otherData']['dropped_events'] > 0 and len([e for e in d['traceEvents'] if e['ph']=='X']) == 24 else 1)" "$F"; then
        fail trace_buffer_full "otherData.dropped_events is not > 0, or not 12 events per rank kept"
    else
        pass trace_buffer_full
    fi
fi

# --trace into a folder that does not exist: exit 2 on every rank, before work.
if expect_ranks trace_bad_folder 2 2 attn --context-parallel-size 2 $RING $SMALL \
    --trace "$TMP/no/such/dir/t.json"; then
    expect_named trace_bad_folder "--trace" "$ERR" && pass trace_bad_folder
fi

# trace-svg: a well-formed SVG from a real trace (and from the training one).
for src in trace_double_ring_P4_W2 trace_train; do
    svg=$TMP/$src.svg
    if expect_exit "svg_$src" 0 trace-svg "$TMP/$src.json" "$svg" --title "test <&> $src"; then
        if "$PY" -c "
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
ns = '{http://www.w3.org/2000/svg}'
rects = root.findall('.//' + ns + 'rect')
texts = ' '.join(''.join(t.itertext()) for t in root.iter(ns + 'text'))
assert root.tag == ns + 'svg', root.tag
assert len(rects) > 20, len(rects)
assert 'test <&> ' in texts and 'rank 0' in texts and 'wait' in texts, texts[:200]
" "$svg" 2>"$TMP/xml.err"; then
            pass "svg_$src"
        else
            cp "$TMP/xml.err" "$ERR"
            fail "svg_$src" "the SVG does not parse or lacks lanes, title or legend"
        fi
    fi
done

# trace-svg refuses malformed input (exit 1, naming the problem) and leaves
# an existing OUT alone.
GOOD=$TMP/trace_ulysses.json
head -c 700 "$GOOD" >"$TMP/cut.json"
printf '{"traceEvents": 3}' >"$TMP/notarray.json"
printf '{"traceEvents": [{"ph":"X","name":"a","pid":0,"tid":0,"ts":1}]}' >"$TMP/nodur.json"
printf '{"traceEvents": [] } x' >"$TMP/trailing.json"
printf '{"traceEvents": [{"name":"a\\q"}]}' >"$TMP/escape.json"
printf '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[' >"$TMP/deep.json"
for bad in cut notarray nodur trailing escape deep; do
    echo "previous" >"$TMP/keep.svg"
    if expect_exit "svg_refuses_$bad" 1 trace-svg "$TMP/$bad.json" "$TMP/keep.svg"; then
        if [ "$(cat "$TMP/keep.svg")" != "previous" ] || ls "$TMP"/keep.svg.tmp.* >/dev/null 2>&1; then
            fail "svg_refuses_$bad" "OUT was touched or a temporary was left"
        elif ! grep -q "^cpattn trace-svg: .*$bad.json" "$ERR"; then
            fail "svg_refuses_$bad" "the message does not name the file"
        else
            pass "svg_refuses_$bad"
        fi
    fi
done
expect_exit svg_missing_input 1 trace-svg "$TMP/none.json" "$TMP/x.svg" &&
    expect_named svg_missing_input "none.json" "$ERR" && pass svg_missing_input
expect_exit svg_usage_no_args 2 trace-svg && pass svg_usage_no_args
expect_exit svg_usage_bad_flag 2 trace-svg "$GOOD" "$TMP/x.svg" --frobnicate &&
    expect_named svg_usage_bad_flag "--frobnicate" "$ERR" && pass svg_usage_bad_flag
expect_exit svg_usage_bad_range 2 trace-svg "$GOOD" "$TMP/x.svg" --range 5:1 &&
    expect_named svg_usage_bad_range "--range" "$ERR" && pass svg_usage_bad_range
expect_exit svg_help 0 trace-svg --help && pass svg_help

report
