#!/usr/bin/env bash
# Packs the Debian packages that a GPU machine (the "device image": CUDA 13, cmake, ninja,
# python3 with PyTorch and nvidia-nccl-cu13, but no Debian dev packages and no network) needs to
# build the CUDA backend and tests/gpu with TPL_MPI=OFF TPL_ONEDNN=OFF TPL_BUILD_BENCHMARKS=OFF
# TPL_BUILD_TOOLS=OFF: GoogleTest (libgtest-dev: headers, static libraries, CMake config) and
# nlohmann-json (headers, CMake config). Run it here, on Debian 12: it only `apt-get download`s the
# .deb files into .devdeps/ at the repository root (gitignored) and installs nothing.
# scripts/gpu-check.sh unpacks them with `dpkg -x` into its build directory on the device.
# Usage: scripts/pack-device-deps.sh   (then carry .devdeps to the device with the build tree)
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(libgtest-dev nlohmann-json3-dev)
OUT=.devdeps
rm -rf "$OUT"
mkdir -p "$OUT"
download() { (cd "$OUT" && apt-get download -q "${PKGS[@]}"); }
if ! download 2>"$OUT/.err"; then
  # apt-get download needs the package lists; `apt-get update` only refreshes them.
  cat "$OUT/.err" >&2
  echo "pack-device-deps: apt-get download failed, refreshing the package lists" >&2
  apt-get update -qq
  download
fi
rm -f "$OUT/.err"
# The CMake package files that gpu-check.sh's configure looks for (CMAKE_PREFIX_PATH=<prefix>/usr).
contents=$(for d in "$OUT"/*.deb; do dpkg-deb -c "$d"; done)
for want in usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake \
            usr/lib/x86_64-linux-gnu/libgtest_main.a \
            usr/include/gtest/gtest.h \
            usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake \
            usr/include/nlohmann/json.hpp; do
  if ! grep -q "\./$want\$" <<<"$contents"; then
    echo "pack-device-deps: no package in $OUT has /$want" >&2
    exit 1
  fi
done
ls -l "$OUT"/*.deb
debs=("$OUT"/*.deb)
echo "pack-device-deps: ${#debs[@]} packages, $(du -ch "${debs[@]}" | tail -1 | cut -f1) in $OUT/"
