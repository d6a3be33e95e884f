#!/usr/bin/env bash
# The GPU path in one run, for a machine with an NVIDIA GPU (CI never needs one): builds
# rlhf.cpp against that machine's CUDA libtorch (its python3's torch), runs the CUDA tests
# (tests/test_cuda.cpp: logits and greedy generation against the CPU, the first step of SFT,
# RM and DPO against the CPU, a PPO iteration) and the Qwen2.5-0.5B-shape benches on the GPU
# (bench/shapes_vs_peers.py --device cuda: generation, SFT, RM and DPO against transformers /
# TRL on the same GPU). Meant to finish in under 8 minutes on an H200-class machine.
#
#   bench/gpu_check.sh fetch       # here, with Debian's archive reachable: the -dev packages
#                                  # the build needs, as .debs in .gpu-deps/ (git-ignored), and
#                                  # stories260K in .gpu-deps/data/
#   bench/gpu_check.sh [OUT_DIR]   # on the GPU machine (needs python3 with a CUDA torch,
#                                  # transformers and trl, cmake, ninja and a C++ compiler;
#                                  # .gpu-deps/ is git-ignored: a copy to that machine must carry it)
#
# Results: OUT_DIR (default gpu-check/) gets build.log, tests.log and shapes.md / shapes.json.
set -euo pipefail
cd "$(dirname "$0")/.."
deps=.gpu-deps
pkgs=(nlohmann-json3-dev libtomlplusplus-dev libtomlplusplus3 libcli11-dev libpcre2-dev libpcre2-8-0
      libsqlite3-dev libsqlite3-0 libcpp-httplib-dev libcpp-httplib0.11 liblua5.4-dev liblua5.4-0 zlib1g-dev
      libgtest-dev libgmock-dev libssl-dev libbrotli-dev libgloo-dev)  # gloo: headers only (torch links its own)

if [ "${1:-}" = fetch ]; then
  mkdir -p "$deps/data"
  (cd "$deps" && apt-get download "${pkgs[@]}")
  cp -r "${RLHF_DATA:-../shared/data}/stories260K" "$deps/data/"
  du -sh "$deps"
  exit 0
fi

out="${1:-gpu-check}"
mkdir -p "$out"
py=python3
$py -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")'
$py -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))'

# Debian packages unpacked into a private root (not /), found through CMAKE_PREFIX_PATH and a
# pkg-config sysroot.
root=/tmp/rlhf-gpu-deps
if ls "$deps"/*.deb >/dev/null 2>&1; then
  mkdir -p "$root"
  for f in "$deps"/*.deb; do dpkg -x "$f" "$root"; done
  export PKG_CONFIG_SYSROOT_DIR="$root"
  export PKG_CONFIG_PATH="$root/usr/lib/x86_64-linux-gnu/pkgconfig:$root/usr/share/pkgconfig"
  export LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export CPATH="$root/usr/include${CPATH:+:$CPATH}"
fi
export RLHF_DATA="${RLHF_DATA:-$PWD/$deps/data}"
[ -f "$RLHF_DATA/stories260K/stories260K.gguf" ] || RLHF_DATA=../shared/data

torch_prefix=$($py -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$root/usr;$root/usr/lib/x86_64-linux-gnu/cmake" \
  -DTORCH_CUDA_ARCH_LIST=9.0 >"$out/build.log" 2>&1
cmake --build build-gpu -j"$(nproc)" --target rlhf_cli rlhf_tests bench_generate >>"$out/build.log" 2>&1 \
  || { tail -40 "$out/build.log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"

# The CUDA tests must run, not skip: a skip here means the GPU was not seen.
build-gpu/tests/rlhf_tests --gtest_filter='Cuda.*:*OnCuda*' 2>&1 | tee "$out/tests.log" | tail -15
grep -q "SKIPPED" "$out/tests.log" && { echo "CUDA tests skipped: no GPU seen by libtorch"; exit 1; }
grep -q "PASSED" "$out/tests.log" && ! grep -q "FAILED" "$out/tests.log"
echo "tests done at $(( $(date +%s) - start )) s"

$py bench/shapes_vs_peers.py --device cuda --shapes qwen2.5-0.5b --workloads generate,sft,rm,dpo \
  --batches 1,16,64 --steps 4 --build build-gpu --cache /tmp/rlhf-gpu-shapes --out "$out/shapes.json" \
  | tee "$out/shapes.md"
echo "finished in $(( $(date +%s) - start )) s"
