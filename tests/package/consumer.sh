#!/usr/bin/env bash
# consumer.sh MODE BUILD_DIR SOURCE_DIR WORK_DIR: builds examples/ as another project would and
# runs it at 2 ranks (each program checks itself against one rank and prints PASS).
#   MODE build-tree  find_package(tplinear) from the build directory's export (tplinear_DIR)
#   MODE install     `cmake --install` into WORK_DIR/prefix, then find_package from that prefix
#                    only, and the same MLP program once more through pkg-config
set -euo pipefail
mode=$1 build=$2 src=$3 work=$4
rm -rf "$work"
mkdir -p "$work"
step() { echo "== $*"; }
run2() { mpirun -np 2 --bind-to none "$@"; }

if [[ $mode == build-tree ]]; then
  find_args=(-Dtplinear_DIR="$build")
  tplinear=$build/tools/tplinear/tplinear
elif [[ $mode == install ]]; then
  step "cmake --install $build --prefix $work/prefix"
  cmake --install "$build" --prefix "$work/prefix" >"$work/install.log"
  for f in include/tpl/linear.h include/tpl/mpi.h bin/tplinear lib/libtplinear.a \
           lib/cmake/tplinear/tplinearConfig.cmake lib/cmake/tplinear/tplinearConfigVersion.cmake \
           lib/cmake/tplinear/tplinearTargets.cmake lib/pkgconfig/tplinear.pc; do
    [[ -e $work/prefix/$f ]] || { echo "FAIL: $f not installed"; exit 1; }
  done
  # No private header and nothing of src/ may be needed: only include/tpl is installed.
  if [[ -e $work/prefix/include/gemm || -e $work/prefix/include/tpl/build_config.h ]]; then
    echo "FAIL: private headers installed"; exit 1
  fi
  find_args=(-DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
  tplinear=$work/prefix/bin/tplinear
else
  echo "usage: consumer.sh build-tree|install BUILD_DIR SOURCE_DIR WORK_DIR" >&2
  exit 2
fi

step "configure and build examples/ against the $mode package"
cmake -S "$src/examples" -B "$work/examples" -G Ninja -DCMAKE_BUILD_TYPE=Release "${find_args[@]}" \
  | grep -E "tplinear|Error" || true
cmake --build "$work/examples" -j 2 >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
# It must have found this package, not another one.
found=$(grep -E '^tplinear_DIR:' "$work/examples/CMakeCache.txt" | cut -d= -f2)
echo "tplinear_DIR = $found"
if [[ $mode == install && $found != "$work/prefix/"* ]]; then echo "FAIL: found $found"; exit 1; fi

step "mpirun -np 2 tp_mlp 37"
run2 "$work/examples/tp_mlp" 37 | tee "$work/mlp.out"
grep -qx PASS "$work/mlp.out"

step "tplinear plan, then mpirun -np 2 tp_decoder plan.json 5 300"
"$tplinear" --np 2 plan --model tiny --profile "$src/profiles/epyc-zen3-2core-np2.json" \
  --workload 16,1024 --out "$work/plan.json" >"$work/plan.log" 2>&1 || { cat "$work/plan.log"; exit 1; }
run2 "$work/examples/tp_decoder" "$work/plan.json" 5 300 | tee "$work/decoder.out"
grep -qx PASS "$work/decoder.out"

if [[ $mode == install ]]; then
  step "the MLP program through pkg-config"
  export PKG_CONFIG_PATH=$work/prefix/lib/pkgconfig
  # shellcheck disable=SC2046
  g++ -std=c++20 -O1 "$src/examples/tp_mlp.cc" -o "$work/tp_mlp_pc" $(pkg-config --cflags --libs tplinear)
  run2 "$work/tp_mlp_pc" 19 | tee "$work/mlp_pc.out"
  grep -qx PASS "$work/mlp_pc.out"
fi
if [[ $mode == install && -d $work/prefix/lib/python3/dist-packages/tplinear ]]; then
  step "the Python module from the prefix: mpirun -np 2 /usr/bin/python3 examples/python/tp_mlp.py"
  PYTHONPATH=$work/prefix/lib/python3/dist-packages run2 /usr/bin/python3 \
    "$src/examples/python/tp_mlp.py" | tee "$work/py.out"
  grep -qx PASS "$work/py.out"
fi
echo "OK ($mode)"
