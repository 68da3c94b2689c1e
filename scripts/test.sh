#!/usr/bin/env bash
# The README's test command: install what is missing, build with warnings as
# errors, run the whole suite, then the unit tests again under AddressSanitizer
# + UndefinedBehaviorSanitizer, then the fuzz harnesses for 30 s each
# (FUZZ_SECONDS).  Prints "N passed, N failed" (CTest tests) at
# the end and exits non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh || exit 1
# Debian's python3, NumPy, mpi4py, PyTorch and pkg-config: the install and
# Python tests (install_consumer, python_*) need them and fail without.
scripts/install-deps.sh python || echo "test.sh: the Python packages could not be installed; the python_* tests will fail"
# clang and libFuzzer for the fuzz harnesses; without them those are skipped.
fuzz_ok=1
scripts/install-deps.sh fuzz || fuzz_ok=0

# Open MPI refuses to run as root unless told it is fine (CI runs as root).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
JOBS=$(nproc)
passed=0 failed=0

run_suite() { # name build-dir ctest-args...
  local name=$1 dir=$2
  shift 2
  echo "== $name"
  local log
  log=$(mktemp)
  (cd "$dir" && ctest --output-on-failure -j "$JOBS" "$@") 2>&1 | tee "$log"
  local line
  line=$(grep -E "tests passed, [0-9]+ tests? failed out of [0-9]+" "$log" | tail -n 1)
  if [ -z "$line" ]; then
    echo "$name: ctest printed no summary"
    failed=$((failed + 1))
  else
    local f total
    f=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
    total=$(sed -E 's/.* failed out of ([0-9]+).*/\1/' <<<"$line")
    passed=$((passed + total - f))
    failed=$((failed + f))
  fi
  rm -f "$log"
}

build() { # dir cmake-args...
  local dir=$1
  shift
  cmake -S . -B "$dir" -DCPA_WERROR=ON "$@" >/dev/null && cmake --build "$dir" -j "$JOBS" >/dev/null
}

if build build -DCMAKE_BUILD_TYPE=Release; then
  run_suite "tests (release build, -Werror)" build
else
  echo "release build failed"; failed=$((failed + 1))
fi
if build build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCPA_SANITIZE=ON; then
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    run_suite "unit tests under ASan+UBSan" build-asan -L unit
else
  echo "sanitizer build failed"; failed=$((failed + 1))
fi

# The libFuzzer harnesses (tests/fuzz): each for FUZZ_SECONDS (30) from its
# seed corpus, under ASan+UBSan; one test each.
if [ "$fuzz_ok" -eq 1 ] && command -v clang >/dev/null; then
  echo "== fuzz harnesses, ${FUZZ_SECONDS:-30} s each"
  log=$(mktemp)
  bash tests/fuzz/run.sh "${FUZZ_SECONDS:-30}" 2>&1 | tee "$log"
  p=$(grep -c '^ok   fuzz_' "$log") f=$(grep -c '^FAIL fuzz_' "$log")
  [ $((p + f)) -eq 3 ] || f=$((3 - p))
  passed=$((passed + p)) failed=$((failed + f))
  rm -f "$log"
else
  echo "== fuzz harnesses skipped: clang or libclang-rt-14-dev missing and not installable"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
