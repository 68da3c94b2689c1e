#!/usr/bin/env bash
# Install the Debian packages cpattn needs, only those that are missing.
# Safe to run again; needs root (or sudo) only when something is missing.
#   scripts/install-deps.sh          what building and running cpattn needs
#   scripts/install-deps.sh fuzz     also clang and libFuzzer (tests/fuzz)
#   scripts/install-deps.sh python   also Debian's python3 with NumPy, mpi4py and PyTorch,
#                                    and pkg-config (the install and Python tests)
set -euo pipefail

packages=(
  gcc make cmake            # toolchain (gcc brings OpenMP's libgomp)
  libopenblas-openmp-dev    # OpenBLAS, OpenMP flavour (GEMMs of the kernels)
  openmpi-bin libopenmpi-dev  # MPI for the context-parallel algorithms
)
for group in "$@"; do
  case "$group" in
    fuzz) packages+=(clang libclang-rt-14-dev) ;;  # libFuzzer + ASan/UBSan runtimes
    python) packages+=(python3 python3-numpy python3-mpi4py python3-torch pkgconf) ;;
    *) echo "install-deps.sh: unknown group '$group' (known: fuzz, python)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "cpattn: installing missing packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
