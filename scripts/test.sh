#!/usr/bin/env bash
# The README's test command: install what is missing, build with warnings as
# errors, run the whole suite, then the unit tests again under AddressSanitizer
# + UndefinedBehaviorSanitizer.  Prints "N passed, N failed" (CTest tests) at
# the end and exits non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh || exit 1

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

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
