#!/usr/bin/env bash
# test_plan.sh — `cpattn plan` and `cpattn train --context-parallel-algo
# auto` from outside, under mpiexec on small problems (seconds each):
#   - the output parses: the calibration lines, one table row per legal
#     configuration with numeric predictions, a "recommended: FLAGS" last
#     line whose flags are a row's;
#   - the recommended flags run: `cpattn attn FLAGS --check` passes;
#   - --validate K fills measured columns for K rows and prints the summary;
#   - a --seq-length list prints the recommendation per length;
#   - usage errors exit 2 on every rank naming the flag (world size, H % G);
#   - the trainer's auto mode prints the planner's choice and trains.
# usage: bash tests/cli/test_plan.sh path/to/cpattn
# Prints one line per case and "N passed, N failed"; exits 1 if any failed.

set -u
source "$(dirname "$0")/lib.sh"

BIN=${1:?usage: test_plan.sh path/to/cpattn}
cli_setup cpattn-plan "build it first: make"
mpi_setup
SHAPE="--seq-length 512 --num-attention-heads 4 --num-query-groups 2 --kv-channels 32 --threads 1"

# Rows of the table: lines starting with a rank number.
rows() { grep -E '^ *[0-9]+ +[0-9.]+ +[0-9.]+ ' "$OUT"; }

# plan at P=2: parse, recommended flags are the first row's, and they run.
case_parse() {
    local name=plan_output_parses_P2
    expect_ranks "$name" 2 0 plan --context-parallel-size 2 $SHAPE --iters 1 || return
    local n last flags first
    n=$(rows | wc -l)
    last=$(tail -n 1 "$OUT")
    flags=${last#recommended: }
    first=$(rows | head -n 1 | sed -E 's/.*  (--context-parallel-algo .*)$/\1/')
    # P = 2, H = 4: Ulysses, ring with/without overlap, all-gather
    [ "$n" -eq 4 ] || { fail "$name" "$n table rows, expected 4"; return; }
    [[ $last == "recommended: --context-parallel-algo "* ]] || { fail "$name" "last line: $last"; return; }
    [ "$flags" = "$first" ] || { fail "$name" "recommended '$flags' is not the first row '$first'"; return; }
    grep -q '^# S=512: calibration .* hidden fraction' "$OUT" || { fail "$name" "no calibration line"; return; }
    if rows | awk '{ for (i = 2; i <= 6; ++i) if ($i !~ /^[0-9.]+$/ || $i + 0 < 0) exit 1 }'; then
        pass "$name"
    else
        fail "$name" "non-numeric predictions"
        return
    fi
    # shellcheck disable=SC2086
    expect_ranks plan_recommended_flags_run 2 0 attn --context-parallel-size 2 $SHAPE $flags --check &&
        grep -q '^check: PASS' "$OUT" && pass plan_recommended_flags_run ||
        fail plan_recommended_flags_run "attn $flags --check did not pass"
}

# P=4: every family enumerated, --validate, a list of lengths.
case_validate() {
    local name=plan_validate_and_list_P4
    expect_ranks "$name" 4 0 plan --context-parallel-size 4 --seq-length 256,1024 \
        --num-attention-heads 8 --kv-channels 32 --threads 1 --iters 1 --validate 3 || return
    local n
    # per length: Ulysses; ring W 1, 2 (each with/without overlap); hybrid U 2
    # with W 1 (each with/without overlap); all-gather = 8
    n=$(rows | wc -l)
    [ "$n" -eq 16 ] || { fail "$name" "$n rows, expected 8 per length"; return; }
    for w in "ulysses_cp_algo$" "megatron_cp_algo --cp-window-size 2" \
             "hybrid_cp_algo --ulysses-degree-in-cp 2" "allgather_cp_algo$"; do
        rows | grep -qE -- "$w" || { fail "$name" "no row for $w"; return; }
    done
    local measured
    measured=$(rows | grep -cE ' -?[0-9.]+ +--context') # err% is '-' where not run
    [ "$measured" -eq 6 ] || { fail "$name" "$measured rows with measured times, expected 3 per length"; return; }
    grep -q '^# validate: median |predicted - measured| / measured' "$OUT" &&
        grep -q '^# the recommendation per sequence length:' "$OUT" &&
        grep -q '^#   S=1024 (S/P=256): --context-parallel-algo' "$OUT" &&
        tail -n 1 "$OUT" | grep -q '^recommended: --context-parallel-algo' &&
        pass "$name" || fail "$name" "summary lines missing"
}

case_usage() {
    expect_ranks plan_world_size_mismatch 2 2 plan --context-parallel-size 3 $SHAPE &&
        expect_named plan_world_size_mismatch "--context-parallel-size" "$ERR" &&
        pass plan_world_size_mismatch
    expect_ranks plan_bad_groups 2 2 plan --context-parallel-size 2 --num-attention-heads 4 \
        --num-query-groups 3 &&
        expect_named plan_bad_groups "--num-query-groups" "$ERR" && pass plan_bad_groups
}

case_train_auto() {
    local name=train_algo_auto
    expect_ranks "$name" 2 0 train --context-parallel-size 2 --context-parallel-algo auto \
        --num-layers 1 --hidden-size 64 --num-attention-heads 4 --num-query-groups 2 \
        --seq-length 256 --vocab-size 64 --train-iters 2 --log-interval 1 --eval-interval 0 \
        --threads 1 || return
    grep -qE '^# --context-parallel-algo auto: the planner chose --context-parallel-algo [a-z_]+' "$OUT" &&
        [ "$(grep -c '^ iteration' "$OUT")" -eq 2 ] && pass "$name" ||
        fail "$name" "no planner choice line or not 2 iterations"
}

case_parse
case_validate
case_usage
case_train_auto
report
