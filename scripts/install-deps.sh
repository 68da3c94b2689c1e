#!/usr/bin/env bash
# Install the Debian packages cpattn needs, only those that are missing.
# Safe to run again; needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(
  gcc make cmake            # toolchain (gcc brings OpenMP's libgomp)
  libopenblas-openmp-dev    # OpenBLAS, OpenMP flavour (GEMMs of the kernels)
  openmpi-bin libopenmpi-dev  # MPI for the context-parallel algorithms
)

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
