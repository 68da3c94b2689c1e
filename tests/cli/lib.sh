# lib.sh — helpers shared by the CLI test scripts (test_cli.sh,
# test_cli_mpi.sh, test_train.sh).  A script sets `set -u`, sources it with
#     source "$(dirname "$0")/lib.sh"
# sets BIN (the cpattn binary, its $1) and calls cli_setup.  Nothing runs at
# source time; it provides:
#
#   cli_setup TAG HINT      exit 1 ("0 passed, 1 failed") unless $BIN is an
#                           executable (HINT, e.g. "build it first", goes in
#                           the message); TIMEOUT (CPATTN_TEST_TIMEOUT, 120 s
#                           by default); TMP, a fresh ${TMPDIR:-/tmp}/TAG.*
#                           folder removed on exit; OUT and ERR (files in it);
#                           passed=failed=0; CPATTN_SEED, CPATTN_THREADS unset.
#   mpi_setup               (after cli_setup) exit 1 unless $MPIEXEC (default
#                           mpiexec) is a command; USAGE_SECS
#                           (CPATTN_TEST_USAGE_SECS, 30 by default); exports
#                           Open MPI's run-as-root variables, one OpenMP thread
#                           per rank, OMPI_MCA_orte_abort_on_non_zero_status=0
#                           and CPATTN_RC_DIR (created) for prun.
#   pass NAME               count a pass, print "ok   NAME".
#   fail NAME WHY           count a failure, print "FAIL NAME: WHY" and the
#                           tails of $OUT and $ERR (the stderr heading is
#                           $FAIL_STDERR_HEADING, "--- stderr (tail) ---" by
#                           default).
#   report                  print "N passed, N failed"; return 1 if any failed
#                           (the scripts end with it, so it is their exit code).
#   run ARGS...             `cpattn ARGS` in one process under timeout: sets
#                           $rc, output in $OUT and $ERR.
#   prun P ARGS...          `cpattn ARGS` on P ranks under mpiexec: sets
#                           $codes, $rc, $secs (see below), output in $OUT and
#                           $ERR.
#   all_ranks P CODE        "CODE CODE ..." (P times), to compare with $codes.
#
# and guards, which on failure record it with `fail` and return 1 (so that a
# case reads `guard && guard && pass NAME`):
#
#   expect_exit NAME CODES ARGS...    run ARGS; the exit code is one of CODES
#                                     ("0", "2", "1 2").
#   expect_ranks NAME P CODE ARGS...  prun P ARGS; every rank exits CODE.
#   expect_named NAME WORD FILE ARGS...
#                                     FILE (the message) contains WORD.

# give_up WHY : the script cannot test anything: say why, count one failure
# and exit 1.
give_up() {
    echo "${0##*/}: $1" >&2
    echo "0 passed, 1 failed"
    exit 1
}

# cli_setup TAG HINT : see the header.
cli_setup() {
    [ -x "$BIN" ] || give_up "$BIN is not an executable ($2)"
    TIMEOUT=${CPATTN_TEST_TIMEOUT:-120}
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    trap 'rm -rf "$TMP"' EXIT
    # The caller's environment must not steer what the cases check: a CI
    # host may export OPENBLAS_CORETYPE (or the BLAS-fix switches), which
    # changes the '# blas:' lines the BLAS cases expect; those cases set
    # what they need themselves.
    unset CPATTN_SEED CPATTN_THREADS OPENBLAS_CORETYPE CPATTN_BLAS_FIX \
          CPATTN_BLAS_PRETEND_CORE CPATTN_ISA
    passed=0
    failed=0
    OUT=$TMP/stdout
    ERR=$TMP/stderr
}

# mpi_setup : see the header.
mpi_setup() {
    MPIEXEC=${MPIEXEC:-mpiexec}
    command -v "$MPIEXEC" >/dev/null 2>&1 ||
        give_up "$MPIEXEC not found (apt-get install openmpi-bin)"
    USAGE_SECS=${CPATTN_TEST_USAGE_SECS:-30} # an error must end the job this fast
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
    # Let every rank finish and record its own exit code (by default mpiexec
    # kills the job as soon as one rank exits non-zero, which would hide a
    # rank that hangs or exits with another code).
    export OMPI_MCA_orte_abort_on_non_zero_status=0
    export CPATTN_RC_DIR=$TMP/rc
    mkdir -p "$CPATTN_RC_DIR"
}

pass() {
    passed=$((passed + 1))
    echo "ok   $1"
}

# fail NAME WHY : record a failure and show what the last command printed.
fail() {
    failed=$((failed + 1))
    echo "FAIL $1: $2"
    echo "     --- stdout (tail) ---"
    tail -n 8 "$OUT" | sed 's/^/     /'
    echo "     ${FAIL_STDERR_HEADING:-"--- stderr (tail) ---"}"
    tail -n 8 "$ERR" | sed 's/^/     /'
}

report() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

# run ARGS... : run the binary; sets $rc, output in $OUT and $ERR.
run() {
    timeout "$TIMEOUT" "$BIN" "$@" >"$OUT" 2>"$ERR"
    rc=$?
}

# prun P ARGS... : run `cpattn ARGS` on P ranks.  Sets $codes (each rank's
# exit code, sorted, e.g. "2 2 2 2"), $rc (the ranks' common exit code; 124
# if the job timed out, 255 if the ranks disagree or one is missing) and
# $secs; output in $OUT and $ERR.  Each rank's own exit code is recorded
# through a small bash wrapper, so "exit 2 on every rank" is checked, not
# assumed.
prun() {
    local np=$1
    shift
    rm -f "$CPATTN_RC_DIR"/rc.*
    local t0 mrc
    t0=$(date +%s)
    timeout "$TIMEOUT" "$MPIEXEC" -n "$np" --oversubscribe bash -c \
        '"$@"; c=$?; echo "$c" >"$CPATTN_RC_DIR/rc.$OMPI_COMM_WORLD_RANK"; exit "$c"' \
        cpattn-rank "$BIN" "$@" >"$OUT" 2>"$ERR"
    mrc=$?
    secs=$(($(date +%s) - t0))
    codes=$(cat "$CPATTN_RC_DIR"/rc.* 2>/dev/null | sort -n | tr '\n' ' ' | sed 's/ $//')
    local first=${codes%% *}
    if [ "$mrc" -eq 124 ] || [ "$mrc" -eq 137 ]; then
        rc=124
    elif [ -n "$first" ] && [ "$codes" = "$(all_ranks "$np" "$first")" ]; then
        rc=$first
    else
        rc=255
    fi
}

# all_ranks P CODE : "CODE CODE ... " (P times), to compare with $codes.
all_ranks() {
    local s="" i
    for ((i = 0; i < $1; ++i)); do s="$s $2"; done
    echo "${s# }"
}

# expect_exit NAME CODES ARGS... : run ARGS; unless the exit code is one of
# CODES, fail NAME and return 1.
expect_exit() {
    local name=$1 want=$2 c
    shift 2
    run "$@"
    for c in $want; do
        [ "$rc" -eq "$c" ] && return 0
    done
    fail "$name" "exit $rc, expected ${want// / or } (cpattn $*)"
    return 1
}

# expect_ranks NAME P CODE ARGS... : prun P ARGS; unless every rank exited
# CODE, fail NAME and return 1.
expect_ranks() {
    local name=$1 np=$2 code=$3
    shift 3
    prun "$np" "$@"
    [ "$rc" -eq "$code" ] && return 0
    fail "$name" "rank exit codes '$codes' (rc $rc, 124: timed out), expected $code on \
all $np ranks (cpattn $*)"
    return 1
}

# expect_named NAME WORD FILE ARGS... : unless FILE contains WORD, fail NAME
# ("message does not name 'WORD' (cpattn ARGS)") and return 1.
expect_named() {
    local name=$1 word=$2 file=$3
    shift 3
    grep -Fq -- "$word" "$file" && return 0
    fail "$name" "message does not name '$word' (cpattn $*)"
    return 1
}
