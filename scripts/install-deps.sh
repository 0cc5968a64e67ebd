#!/usr/bin/env bash
# Installs every Debian package tplinear needs to build and test (Debian 12).
# Idempotent: apt-get skips what is already installed. Run as root (or via sudo).
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PKGS=(
  build-essential cmake ninja-build git pkg-config
  openmpi-bin libopenmpi-dev
  libdnnl-dev ocl-icd-opencl-dev libopenblas-dev
  nlohmann-json3-dev libcli11-dev libfmt-dev
  googletest libgtest-dev libgmock-dev libbenchmark-dev
  clang-format
  clang-16 libclang-rt-16-dev  # scripts/fuzz.sh: libFuzzer and the sanitizers
  pybind11-dev python3-dev python3-numpy python3-mpi4py python3-torch
  qemu-user  # scripts/emulated-cpu.sh: CPUs without AVX-512 (or AVX) on any x86-64 host
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "install-deps: all ${#PKGS[@]} packages present"
