#!/usr/bin/env bash
# test_install.sh BUILD PREFIX SRC — `cmake --install BUILD --prefix PREFIX`
# into a fresh PREFIX, then check what a user of the installed cpattn gets:
#   - the files: header, libcpattn.a, libcpattn.so (SONAME libcpattn.so.X.Y), the
#     program, cpattn.pc, the CMake package, the Python package;
#   - libcpattn.so exports exactly the functions include/cpattn.h declares
#     (nm -D --defined-only against the generated version script);
#   - tests/install/consumer.c built against PREFIX with pkg-config and with
#     find_package(cpattn) (shared and static targets), each run on 2 ranks;
#   - the installed program runs.
# PREFIX is left in place: the Python tests (CTest fixture) use it.
# Prints "N passed, N failed"; exits 1 if any failed.
set -u
BUILD=$1 PREFIX=$2 SRC=$3
source "$SRC/tests/cli/lib.sh"
BIN=$BUILD/cpattn
cli_setup cpattn_install "build it first"
mpi_setup
unset CPATTN_RC_DIR

rm -rf "$PREFIX"
if cmake --install "$BUILD" --prefix "$PREFIX" >"$OUT" 2>"$ERR"; then
    pass "cmake --install into a fresh prefix"
else
    fail "cmake --install" "exit $?"
    report
    exit 1
fi

LIBDIR=$(dirname "$(find "$PREFIX" -name libcpattn.a | head -n 1)")
missing=""
for f in include/cpattn.h bin/cpattn lib/python3/dist-packages/cpattn/__init__.py \
         lib/python3/dist-packages/cpattn/torch.py lib/python3/dist-packages/cpattn/_install.py; do
    [ -e "$PREFIX/$f" ] || missing="$missing $f"
done
for f in libcpattn.a libcpattn.so pkgconfig/cpattn.pc cmake/cpattn/cpattnConfig.cmake \
         cmake/cpattn/cpattnConfigVersion.cmake; do
    [ -e "$LIBDIR/$f" ] || missing="$missing ${LIBDIR#$PREFIX/}/$f"
done
if [ -z "$missing" ]; then pass "installed files"; else fail "installed files" "missing:$missing"; fi

SO=$(readlink -f "$LIBDIR/libcpattn.so")
soname=$(readelf -d "$SO" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
if [[ "$soname" =~ ^libcpattn\.so\.[0-9]+\.[0-9]+$ ]] && [ -e "$LIBDIR/$soname" ]; then
    pass "versioned SONAME $soname"
else
    fail "versioned SONAME" "got '$soname'"
fi

# Exports: every function the header declares, nothing else.
grep -E '^    cpa_[a-z0-9_]+;$' "$BUILD/cpattn.map" | tr -d ' ;' | sort >"$TMP/declared"
nm -D --defined-only "$SO" | awk '$2 != "A" {print $3}' | sed 's/@.*//' | sort >"$TMP/exported"
extra=$(comm -13 "$TMP/declared" "$TMP/exported" | tr '\n' ' ')
absent=$(comm -23 "$TMP/declared" "$TMP/exported" | tr '\n' ' ')
if [ -s "$TMP/declared" ] && [ -z "$extra" ] && [ -z "$absent" ]; then
    pass "exports = the $(wc -l <"$TMP/declared") functions of cpattn.h"
else
    fail "exports" "not declared but exported: [$extra]; declared but not defined: [$absent]"
fi

run_consumer() { # NAME EXE
    if timeout "$TIMEOUT" "$MPIEXEC" -n 2 --oversubscribe "$2" >"$OUT" 2>"$ERR" &&
        grep -q "consumer: ok" "$OUT"; then
        pass "$1"
    else
        fail "$1" "the consumer failed"
    fi
}

# pkg-config, as a user's Makefile would do it.
export PKG_CONFIG_PATH="$LIBDIR/pkgconfig"
if flags=$(pkg-config --cflags --libs cpattn 2>"$ERR") &&
    libdir=$(pkg-config --variable=libdir cpattn) &&
    cc -std=c11 -Wall -Wextra -Werror -o "$TMP/consumer_pc" "$SRC/tests/install/consumer.c" \
        $flags -lm -Wl,-rpath,"$libdir" >"$OUT" 2>"$ERR"; then
    pass "consumer builds with pkg-config ($flags)"
    run_consumer "pkg-config consumer runs on 2 ranks" "$TMP/consumer_pc"
    if readelf -d "$TMP/consumer_pc" | grep -q "NEEDED.*\[$soname\]"; then
        pass "pkg-config consumer links the shared library"
    else
        fail "pkg-config consumer links the shared library" "no NEEDED $soname"
    fi
else
    fail "consumer builds with pkg-config" "see stderr"
fi

# find_package(cpattn), as a user's CMake project would do it.
if cmake -S "$SRC/tests/install/consumer_cmake" -B "$TMP/cm" -DCMAKE_PREFIX_PATH="$PREFIX" \
        -DCMAKE_C_FLAGS="-Wall -Wextra -Werror" >"$OUT" 2>"$ERR" &&
    cmake --build "$TMP/cm" >"$OUT" 2>"$ERR"; then
    pass "consumer builds with find_package(cpattn)"
    run_consumer "find_package consumer (cpattn::cpattn, shared) runs on 2 ranks" "$TMP/cm/consumer_shared"
    run_consumer "find_package consumer (cpattn::cpattn_static) runs on 2 ranks" "$TMP/cm/consumer_static"
else
    fail "consumer builds with find_package(cpattn)" "see stderr"
fi

if timeout "$TIMEOUT" "$PREFIX/bin/cpattn" --version >"$OUT" 2>"$ERR" && grep -q "^cpattn " "$OUT"; then
    pass "installed program runs"
else
    fail "installed program runs" "exit $?"
fi
report
