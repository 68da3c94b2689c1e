#!/usr/bin/env bash
# check_reliability_doc.sh — docs/reliability.md's table of bad inputs names,
# in its last column, the test that asserts each row as "`FILE` · CASE".
# Fail if FILE does not exist under tests/ or does not contain CASE, so the
# table cannot drift from the tests.  Usage: check_reliability_doc.sh [ROOT]
set -u
root=${1:-$(dirname "$0")/../..}
doc=$root/docs/reliability.md
[ -f "$doc" ] || { echo "no $doc"; echo "0 passed, 1 failed"; exit 1; }
passed=0 failed=0
while IFS= read -r line; do
    cell=${line%|}
    cell=${cell##*|}
    cell=$(sed -E 's/^ +//; s/ +$//' <<<"$cell")
    file=$(sed -E 's/^`([^`]+)` · .*/\1/' <<<"$cell")
    case_name=$(sed -E 's/^`[^`]+` · //' <<<"$cell")
    path=$(find "$root/tests" -name "$file" -type f | head -1)
    if [ -z "$path" ]; then
        echo "FAIL row names $file, which is not under tests/"; failed=$((failed + 1))
    elif ! grep -qF -- "$case_name" "$path"; then
        echo "FAIL $file has no case '$case_name'"; failed=$((failed + 1))
    else
        passed=$((passed + 1))
    fi
done < <(grep -E '^\|.*\| `[^`]+` · [^|]+\|$' "$doc")
[ "$passed" -gt 20 ] || { echo "FAIL only $passed rows found in $doc"; failed=$((failed + 1)); }
echo "reliability table: $passed rows checked"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
