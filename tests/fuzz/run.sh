#!/usr/bin/env bash
# Build the libFuzzer harnesses (clang, ASan + UBSan, in build-fuzz) and run
# each for SECONDS (default 30) from its seed corpus in tests/fuzz/corpus.
#
#   tests/fuzz/run.sh            30 s each: what CI runs
#   tests/fuzz/run.sh 3600       the longer run (an hour each)
#   tests/fuzz/run.sh 60 npy     one harness (npy | ckpt | args)
#
# New inputs the fuzzer finds go to build-fuzz/corpus/<name> (the seeds in
# the repository are only read); a crash leaves build-fuzz/crash-* and the
# script exits 1 naming it.  Replay one input: build-fuzz/fuzz_<name> FILE.
set -uo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-30}
shift || true
names=("$@")
((${#names[@]})) || names=(npy ckpt args)
if ! command -v clang >/dev/null; then
  echo "tests/fuzz/run.sh: clang is not installed (scripts/install-deps.sh fuzz)" >&2
  exit 2
fi
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCPA_FUZZ=ON \
  -DCPA_WERROR=ON >/dev/null || exit 1
targets=()
for n in "${names[@]}"; do targets+=("fuzz_$n"); done
cmake --build build-fuzz -j "$(nproc)" --target "${targets[@]}" >/dev/null || exit 1

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# The harnesses run side by side (each is one process), so the wall time is
# SECONDS, not three times it; on a 2-core machine each gets fewer inputs.
fuzz_one() { # name
  local n=$1
  mkdir -p "build-fuzz/corpus/$n"
  # -max_len bounds an input: the seeds are small and the readers' edge
  # cases (lengths, headers) do not need more.
  (cd build-fuzz && exec ./fuzz_"$n" -max_total_time="$secs" -max_len=8192 -timeout=10 \
     -rss_limit_mb=2048 -dict=../tests/fuzz/$n.dict -artifact_prefix=./crash-$n- \
     -print_final_stats=1 "corpus/$n" "../tests/fuzz/corpus/$n") >"build-fuzz/fuzz_$n.log" 2>&1
  echo $? >"build-fuzz/fuzz_$n.rc"
}
for n in "${names[@]}"; do fuzz_one "$n" & done
wait
failed=0
for n in "${names[@]}"; do
  log=build-fuzz/fuzz_$n.log rc=$(cat "build-fuzz/fuzz_$n.rc" 2>/dev/null || echo 1)
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$')
  if [ "$rc" -eq 0 ]; then
    echo "ok   fuzz_$n: ${runs:-?} inputs in ${secs} s, no crash, leak or UB"
  else
    echo "FAIL fuzz_$n (rc $rc): $(grep -Eo 'crash-[^ ]+|ERROR: .*' "$log" | head -2 | tr '\n' ' ')— see $log"
    tail -40 "$log"
    failed=$((failed + 1))
  fi
done
[ "$failed" -eq 0 ]
