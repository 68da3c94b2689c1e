#!/usr/bin/env bash
# Two "hosts" on one machine: context-parallel attention across a shaped link.
#
# Builds two network namespaces joined by a veth pair (198.18.0.1 and
# 198.18.0.2, the benchmarking range, only inside these namespaces: the root
# namespace's interfaces, lo included, are never touched), shapes both ends
# with `tc tbf` at each rate of RATES, gives each namespace its own hostname
# (unshare --uts, so Open MPI sees two nodes: TCP between them, shared memory
# inside each) and runs P = 4 ranks, 2 per host, rank r on host r / 2
# (hostfile order + --map-by slot, checked from the hostname every rank
# prints before anything is measured).  Per rate it times `cpattn attn`
# forward + backward (causal) for
#     ring        megatron_cp_algo --use-cp-send-recv-overlap
#     double ring megatron_cp_algo --cp-window-size 2     (W = ranks per host)
#     hybrid      hybrid_cp_algo --ulysses-degree-in-cp 2 (U = ranks per host)
#     ulysses     ulysses_cp_algo
#     all-gather  allgather_cp_algo
# and prints one markdown table per rate: fwd+bwd ms (the sum of the slowest
# rank's forward and backward medians, with min-max), exposed communication
# (wait ms, fwd + bwd, the largest rank), MiB sent per rank per fwd+bwd (the
# tool's counter, the largest rank), and the INTER-HOST MiB per fwd+bwd
# measured on the veth pair: tx bytes of both ends (`ip -n NS -s link show`)
# around a run with --iters ITERS, minus the same around a run with --iters 0
# (process start-up, wire-up and the untimed first call, which both runs
# make; --warmup 0 so the difference is exactly ITERS calls), divided by
# ITERS.  Beside it the bytes the schedules imply (block = B*(S/P)*G*(D+Dv)*4
# bytes of K+V; N = P/W hosts of W ranks; see docs/two_nodes.md):
#     ring        N(3P-2) blocks: the two ranks at a host boundary send their
#                 3 forward blocks one way and 7 backward blocks the other;
#     double ring P(3N-2) blocks: every rank sends its outer-ring block, the
#                 backward's first fetch, the outer K/V and one dK/dV over
#                 the link, the inner ring stays on the host;
#     hybrid      P(3N-2) blocks: the ring groups (0,2)(1,3) cross the link
#                 with blocks of S/N rows and G/U heads (the same size), the
#                 Ulysses all-to-alls stay on the host;
#     ulysses     (P-W)/(P-1) of what the ranks send (the all-to-all's direct
#                 messages: 2 of every rank's 3 peers are on the other host);
#     all-gather  what libnbc (Open MPI 4.1) does with the library's
#                 MPI_Iallgather (twice) and MPI_Ireduce_scatter_block: a
#                 linear all-gather, P(P-W) slabs (slab = one block); a
#                 binomial reduce of the whole [P, slab] buffer to rank 0 and
#                 a linear scatter from it: 4 + 2 slabs at P = 4, W = 2.
#                 Shown, not checked: another Open MPI may choose otherwise.
# The measured bytes include Ethernet/IP/TCP headers and the ACKs, so they
# must lie in [1, 1 + TOL] x the prediction (TOL = 0.06 by default: a
# 1448-byte segment carries 66 bytes of headers, 4.6%, and veth's GSO
# usually counts far fewer).  The script exits 1 when a rank lands on the
# wrong host, when a measured volume is outside that band, or when double
# ring does not move fewer inter-host bytes than ring; the tables are printed
# first either way.
#
# Then `cpattn plan` (if this binary has it) under the same mpirun at each
# rate: its `recommended:` line, and whether it names the fastest measured
# configuration (ignoring --use-cp-send-recv-overlap, which the planner may
# add or drop); "planner: not built yet" otherwise.
#
#   bench/two_nodes.sh                  (as root; env, defaults in brackets:
#       BIN      [build/cpattn]  the cpattn binary (or the first argument)
#       RATES    ["1gbit 10gbit"] tc rates, one run per rate
#       SEQ      [8192]  S;  H [8] query heads;  G [H] KV heads;  D [128] head dim
#       ITERS    [3]     timed calls per configuration
#       TIMEOUT  [600]   seconds any one mpirun may take
#       BURST    [256kb] tbf burst (small, so that small messages stay honest)
#       TOL      [0.06]  header allowance on the inter-host bytes
#       PLANNER  [1]     0: skip `cpattn plan`
#       QUICK=1  a CI-sized run: RATES=1gbit SEQ=2048 D=64 ITERS=2 TIMEOUT=60,
#                no planner (each still overridable))
#
# Exit codes: 0 ok; 1 a run failed or a check failed; 2 bad usage; 77 this
# machine cannot build the namespaces (not root, no `ip netns`, no veth, no
# tbf, no unshare --uts, no mpirun): one line says why.  The EXIT/INT/TERM
# trap always removes what the run made: the processes left inside its
# namespaces, the namespaces (with them the veth pair and the qdiscs) and the
# temporary folder.  Namespace names carry the script's PID
# (cpa2n-PID-a/-b), so parallel runs do not collide, and namespaces of
# earlier runs whose PID is gone are removed at start.
#
# With 2 ranks per host on a 2-vCPU machine the 4 ranks share 2 cores: the
# times are oversubscribed; the inter-host bytes, and which configuration
# moves fewer bytes over the slow link, are exact.
set -uo pipefail

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    RATES=${RATES:-1gbit} SEQ=${SEQ:-2048} D=${D:-64} ITERS=${ITERS:-2} TIMEOUT=${TIMEOUT:-60}
    PLANNER=${PLANNER:-0}
fi
BIN=${BIN:-${1:-build/cpattn}}
RATES=${RATES:-"1gbit 10gbit"}
SEQ=${SEQ:-8192}
H=${H:-8}
G=${G:-$H}
D=${D:-128}
ITERS=${ITERS:-3}
TIMEOUT=${TIMEOUT:-600}
BURST=${BURST:-256kb}
TOL=${TOL:-0.06}
PLANNER=${PLANNER:-1}
P=4 PER_HOST=2 # 2 hosts of 2 ranks
SKIP=77
PREFIX=cpa2n
NSA=$PREFIX-$$-a NSB=$PREFIX-$$-b
IFA=veth-a IFB=veth-b # names inside the namespaces only
IPA=198.18.0.1 IPB=198.18.0.2 NET=198.18.0.0/24
HOSTA=node0-$$ HOSTB=node1-$$
TMP=
MADE=0

say() { echo "two_nodes: $*" >&2; }
usage() { say "$*"; exit 2; }
skip() { say "skipped: $*"; exit "$SKIP"; }

for v in SEQ H G D ITERS TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || usage "$v=${!v} must be a positive integer"
done
for r in $RATES; do
    [[ $r =~ ^[0-9]+(\.[0-9]+)?[kmgt]?(bit|bps)$ ]] || usage "rate '$r' is not a tc rate (e.g. 1gbit)"
done
[ $((SEQ % (2 * P))) -eq 0 ] || usage "SEQ=$SEQ must be a multiple of $((2 * P)) (the zigzag's 2P chunks)"
[ $((H % P)) -eq 0 ] && [ $((H % G)) -eq 0 ] && [ $((G % PER_HOST)) -eq 0 ] ||
    usage "need H % $P == 0, H % G == 0 and G % $PER_HOST == 0 (H=$H G=$G)"
[ -x "$BIN" ] || usage "$BIN is not an executable (build it: cmake --build BUILD --target cpattn_tool)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

# ---- cleanup -----------------------------------------------------------------

# Kill what is still running inside one of our namespaces (mpirun, orted,
# ranks of a run that timed out or was interrupted), then delete it.
drop_ns() {
    local ns=$1 pids
    ip netns list 2>/dev/null | awk '{ print $1 }' | grep -qx -- "$ns" || return 0
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [ -n "$pids" ] && kill -TERM $pids 2>/dev/null && sleep 1
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    ip netns del "$ns" 2>/dev/null
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "${CHILD:-}" ]; then # an mpirun still running: stop it, give it 5 s
        kill -TERM "$CHILD" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.5; done
    fi
    if [ "$MADE" = 1 ]; then
        drop_ns "$NSA"
        drop_ns "$NSB"
    fi
    [ -n "$TMP" ] && rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

# Namespaces an earlier run of this script left behind (killed with -9, or
# the machine stopped mid-run): their PID no longer runs this script.
remove_stale() {
    local ns pid
    for ns in $(ip netns list 2>/dev/null | awk '{ print $1 }' | grep -E "^$PREFIX-[0-9]+-[ab]$"); do
        pid=${ns#"$PREFIX"-}
        pid=${pid%-*}
        [ "$pid" = "$$" ] && continue
        if ! tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q two_nodes; then
            say "removing stale namespace $ns (its run, PID $pid, is gone)"
            drop_ns "$ns"
        fi
    done
}

# ---- set-up (every step that can fail here is a reason to skip) -------------

[ "$(id -u)" -eq 0 ] || skip "not root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)"
for c in ip tc unshare timeout mpirun awk; do
    command -v "$c" >/dev/null 2>&1 || skip "'$c' not found"
done
remove_stale
TMP=$(mktemp -d "${TMPDIR:-/tmp}/two_nodes.XXXXXX") || skip "cannot create a temporary folder"
MADE=1
ip netns add "$NSA" 2>"$TMP/err" && ip netns add "$NSB" 2>>"$TMP/err" ||
    skip "'ip netns add' failed: $(head -n 1 "$TMP/err")"
# The veth pair is created inside the first namespace with its peer in the
# second: it never exists in the root namespace.
ip -n "$NSA" link add "$IFA" type veth peer name "$IFB" netns "$NSB" 2>"$TMP/err" ||
    skip "cannot create a veth pair: $(head -n 1 "$TMP/err")"
ip -n "$NSA" addr add "$IPA/24" dev "$IFA" && ip -n "$NSB" addr add "$IPB/24" dev "$IFB" &&
    ip -n "$NSA" link set lo up && ip -n "$NSB" link set lo up &&
    ip -n "$NSA" link set "$IFA" up && ip -n "$NSB" link set "$IFB" up ||
    skip "cannot configure the veth pair"

# shape RATE : tbf on both ends (each end shapes what it sends).
shape() {
    ip netns exec "$NSA" tc qdisc replace dev "$IFA" root tbf rate "$1" burst "$BURST" latency 50ms &&
        ip netns exec "$NSB" tc qdisc replace dev "$IFB" root tbf rate "$1" burst "$BURST" latency 50ms
}
shape 1gbit 2>"$TMP/err" || skip "tc tbf does not work here: $(head -n 1 "$TMP/err")"
ip netns exec "$NSB" unshare --uts /bin/sh -c "hostname $HOSTB" 2>"$TMP/err" ||
    skip "unshare --uts failed: $(head -n 1 "$TMP/err")"

# The launch agent Open MPI calls instead of ssh: agent HOST COMMAND...
# (the command comes as shell words, as ssh would pass it on).
cat >"$TMP/agent.sh" <<EOF
#!/bin/sh
host=\$1
shift
case \$host in
    $IPA) ns=$NSA name=$HOSTA ;;
    $IPB) ns=$NSB name=$HOSTB ;;
    *) echo "two_nodes agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" unshare --uts /bin/sh -c "hostname \$name; \$*"
EOF
chmod +x "$TMP/agent.sh"
printf '%s slots=%d\n%s slots=%d\n' "$IPA" "$PER_HOST" "$IPB" "$PER_HOST" >"$TMP/hosts"
mkdir -p "$TMP/ompi"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1

# mpi LOG ARGS... : ARGS on P ranks, mpirun inside the first host; output in
# LOG.  It runs in the background and the script waits for it, because bash
# runs a trap only once a foreground command has ended: so a SIGTERM reaches
# cleanup at once, which stops the job (timeout passes the signal on to
# mpirun) before it deletes the namespaces.
CHILD=
mpi() {
    local log=$1 rc
    shift
    ip netns exec "$NSA" unshare --uts /bin/sh -c 'hostname "$0" && exec "$@"' "$HOSTA" \
        timeout -k 10 "$TIMEOUT" mpirun -np "$P" --hostfile "$TMP/hosts" --map-by slot \
        --bind-to none --mca plm_rsh_agent "$TMP/agent.sh" --mca btl vader,tcp,self \
        --mca btl_tcp_if_include "$NET" --mca oob_tcp_if_include "$NET" \
        --mca mpi_yield_when_idle 1 --mca orte_tmpdir_base "$TMP/ompi" \
        -x OMP_NUM_THREADS -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM \
        "$@" >"$log" 2>&1 &
    CHILD=$!
    wait "$CHILD"
    rc=$?
    CHILD=
    return "$rc"
}

# tx bytes of both veth ends: "A B".
counters() {
    local a b
    a=$(ip -n "$NSA" -s link show dev "$IFA" | awk '/TX:/ { getline; print $1; exit }')
    b=$(ip -n "$NSB" -s link show dev "$IFB" | awk '/TX:/ { getline; print $1; exit }')
    echo "$a $b"
}

# ---- placement ---------------------------------------------------------------

fail=0
echo "# two hosts: namespaces $NSA ($HOSTA, $IPA) and $NSB ($HOSTB, $IPB), veth pair, tc tbf burst $BURST"
echo "# machine: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(env -u OMP_NUM_THREADS nproc) vCPUs;" \
    "$P ranks, $PER_HOST per host, 1 thread each (oversubscribed when 4 > cores: times are, bytes are not)"
if ! mpi "$TMP/place" /bin/sh -c 'echo "rank $OMPI_COMM_WORLD_RANK $(hostname)"'; then
    say "the placement run failed:"
    tail -n 20 "$TMP/place" >&2
    exit 1
fi
placement=""
for ((r = 0; r < P; ++r)); do
    want=$([ $((r / PER_HOST)) -eq 0 ] && echo "$HOSTA" || echo "$HOSTB")
    got=$(awk -v r="$r" '$1 == "rank" && $2 == r { print $3 }' "$TMP/place")
    placement="$placement rank$r=$got"
    [ "$got" = "$want" ] || { say "rank $r runs on '$got', expected $want"; fail=1; }
done
for h in "$HOSTA" "$HOSTB"; do
    n=$(awk -v h="$h" '$1 == "rank" && $3 == h' "$TMP/place" | wc -l)
    echo "# placement: $h has $n ranks"
done
echo "# placement:$placement ($([ $fail -eq 0 ] && echo ok || echo WRONG))"
[ $fail -eq 0 ] || exit 1

# ---- the measurements --------------------------------------------------------

SHAPE=(--micro-batch-size 1 --seq-length "$SEQ" --num-attention-heads "$H" --num-query-groups "$G"
       --kv-channels "$D" --attention-mask-type causal --context-parallel-size "$P" --threads 1)
NAMES=(ring "double ring" hybrid ulysses all-gather)
FLAGS=("--context-parallel-algo megatron_cp_algo --use-cp-send-recv-overlap"
       "--context-parallel-algo megatron_cp_algo --cp-window-size $PER_HOST"
       "--context-parallel-algo hybrid_cp_algo --ulysses-degree-in-cp $PER_HOST"
       "--context-parallel-algo ulysses_cp_algo"
       "--context-parallel-algo allgather_cp_algo")
N=$((P / PER_HOST))
# K+V of one ring block in MiB (B = 1, S/P rows, G heads, D + D floats).
BLOCK=$(awk -v s="$SEQ" -v p="$P" -v g="$G" -v d="$D" 'BEGIN { printf "%.6f", s / p * g * 2 * d * 4 / 1048576 }')

# expected INDEX SENT_TOTAL_MIB -> predicted inter-host MiB per fwd+bwd
expected() {
    awk -v i="$1" -v sent="$2" -v b="$BLOCK" -v p="$P" -v n="$N" -v w="$PER_HOST" 'BEGIN {
        if (i == 0) printf "%.3f", n * (3 * p - 2) * b
        else if (i == 1 || i == 2) printf "%.3f", p * (3 * n - 2) * b
        else if (i == 3) printf "%.3f", sent * (p - w) / (p - 1)
        else printf "%.3f", allgather_slabs(p) * b }
    # libnbc (Open MPI 4.1): a linear all-gather (every rank sends its slab
    # to every other rank), twice; a reduce-scatter that reduces the whole
    # [P, slab] buffer to rank 0 up a binomial tree and then scatters it.
    # Counts slabs (one = K+V of S/P rows = one ring block) crossing hosts.
    function host(r) { return int(r / w) }
    function allgather_slabs(p,    r, q, d, n) {
        for (r = 0; r < p; ++r) for (q = 0; q < p; ++q) if (host(r) != host(q)) n += 2
        for (d = 1; d < p; d *= 2)
            for (r = d; r < p; r += 2 * d) if (host(r) != host(r - d)) n += p
        for (q = 1; q < p; ++q) if (host(q) != host(0)) n += 1
        return n }'
}

# summarise LOG -> "fwd bwd fmin fmax bmin bmax wait sent_max sent_total"
summarise() {
    awk '
        /^ *[0-9]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+$/ {
            w = $4 + $5; if (w > wait) wait = w
            s = $6 + $7; tot += s; if (s > sent) sent = s }
        /^forward  median/ { f = $3; fmin = $6; sub(/,/, "", fmin); fmax = $8 }
        /^backward median/ { b = $3; bmin = $6; sub(/,/, "", bmin); bmax = $8 }
        END { if (f == "") exit 1
              printf "%s %s %s %s %s %s %.3f %.3f %.3f\n", f, b, fmin, fmax, bmin, bmax, wait, sent, tot }' "$1"
}

echo "# shape: B=1 S=$SEQ H=$H G=$G D=$D causal (zigzag), P=$P; ITERS=$ITERS timed calls after an untimed first one;" \
    "one ring block (K+V of S/P rows) = $BLOCK MiB"
for rate in $RATES; do
    if ! shape "$rate" 2>"$TMP/err"; then
        say "tc refused rate $rate: $(head -n 1 "$TMP/err")"
        fail=1
        continue
    fi
    echo
    echo "### $rate (tc tbf on both ends of the veth pair)"
    echo
    echo "| configuration | flags | fwd+bwd ms (min–max) | fwd ms | bwd ms | wait ms | sent MiB/rank | inter-host MiB measured | predicted | measured/predicted |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    best=-1 best_ms=
    declare -A inter=()
    for i in "${!NAMES[@]}"; do
        read -r -a fl <<<"${FLAGS[$i]}"
        read -r a0 b0 <<<"$(counters)"
        mpi "$TMP/run0" "$BIN" attn "${SHAPE[@]}" "${fl[@]}" --iters 0
        rc0=$?
        read -r a1 b1 <<<"$(counters)"
        mpi "$TMP/run" "$BIN" attn "${SHAPE[@]}" "${fl[@]}" --iters "$ITERS" --warmup 0
        rc=$?
        read -r a2 b2 <<<"$(counters)"
        if [ "$rc0" -ne 0 ] || [ "$rc" -ne 0 ] || ! sum=$(summarise "$TMP/run"); then
            why=$(grep -m1 -E 'cpattn attn:|error|rror' "$TMP/run0" "$TMP/run" | tr '|' '/')
            echo "| ${NAMES[$i]} | \`${FLAGS[$i]}\` | failed (rc $rc0 / $rc, 124: timeout) $why |"
            fail=1
            continue
        fi
        read -r f b fmin fmax bmin bmax wait sent tot <<<"$sum"
        meas=$(awk -v a="$((a2 - a1 - (a1 - a0)))" -v b="$((b2 - b1 - (b1 - b0)))" -v n="$ITERS" \
            'BEGIN { printf "%.3f", (a + b) / n / 1048576 }')
        pred=$(expected "$i" "$tot")
        ratio=$(awk -v m="$meas" -v p="$pred" 'BEGIN { printf "%.3f", m / p }')
        ms=$(awk -v f="$f" -v b="$b" -v a="$fmin" -v c="$bmin" -v x="$fmax" -v y="$bmax" \
            'BEGIN { printf "%.1f (%.1f–%.1f)", f + b, a + c, x + y }')
        echo "| ${NAMES[$i]} | \`${FLAGS[$i]}\` | $ms | $f | $b | $wait | $sent | $meas | $pred | $ratio |"
        inter[$i]=$meas
        # all-gather: informative only (its bytes are libnbc's choice, not ours)
        if [ "$i" -ne 4 ] && ! awk -v r="$ratio" -v t="$TOL" 'BEGIN { exit !(r >= 0.999 && r <= 1 + t) }'; then
            say "$rate ${NAMES[$i]}: inter-host bytes $meas MiB are $ratio x the prediction $pred MiB (allowed 1..1+$TOL)"
            fail=1
        fi
        if [ -z "$best_ms" ] || awk -v a="$f" -v b="$b" -v m="$best_ms" 'BEGIN { exit !(a + b < m) }'; then
            best=$i best_ms=$(awk -v a="$f" -v b="$b" 'BEGIN { print a + b }')
        fi
    done
    echo
    echo "measured/predicted must lie in [1, $(awk -v t="$TOL" 'BEGIN { print 1 + t }')] (headers and ACKs) for all rows" \
        "but all-gather, whose prediction assumes libnbc's collective algorithms and is shown only."
    if [ -n "${inter[0]:-}" ] && [ -n "${inter[1]:-}" ]; then
        if awk -v d="${inter[1]}" -v r="${inter[0]}" 'BEGIN { exit !(d < r) }'; then
            echo "double ring moves ${inter[1]} MiB over the link per fwd+bwd, ring ${inter[0]} MiB" \
                "(predicted ratio $(awk -v p="$P" -v n="$N" 'BEGIN { printf "%.3f", p * (3 * n - 2) / (n * (3 * p - 2)) }'))."
        else
            say "$rate: double ring moved ${inter[1]} MiB inter-host, not fewer than ring's ${inter[0]} MiB"
            fail=1
        fi
    fi
    [ "$best" -ge 0 ] && echo "fastest measured: ${NAMES[$best]} (\`${FLAGS[$best]}\`, $best_ms ms)."
    unset inter

    # The planner, under the same mpirun on the same link.
    if [ "$PLANNER" != 1 ]; then
        echo "planner: not run (QUICK=1 or PLANNER=0)"
    elif ! "$BIN" plan --help >/dev/null 2>&1; then
        echo "planner: not built yet"
    elif ! mpi "$TMP/plan" "$BIN" plan "${SHAPE[@]}"; then
        echo "planner: failed: $(grep -m1 -E 'cpattn plan:|rror' "$TMP/plan")"
        fail=1
    else
        rec=$(tail -n 1 "$TMP/plan")
        grep -m1 -E '^# S=[0-9]+: calibration' "$TMP/plan" | sed 's/^# /planner calibration: /'
        norm() { sed -E 's/ ?--use-cp-send-recv-overlap//g; s/^ +| +$//g' <<<"$1"; }
        if [[ $rec != "recommended: "* ]]; then
            echo "planner: no 'recommended:' line (last line: $rec)"
            fail=1
        elif [ "$best" -ge 0 ] && [ "$(norm "${rec#recommended: }")" = "$(norm "${FLAGS[$best]}")" ]; then
            echo "planner $rec — matches the fastest measured (${NAMES[$best]})"
        else
            echo "planner $rec — differs from the fastest measured (${NAMES[$best]:-none})"
        fi
    fi
done
exit "$fail"
