#!/usr/bin/env bash
# The ptxas resource report of every kernel (ctest "ptxas: ..."; docs/cuda.md "Resources"):
# compiles each kernels/*.cu for each architecture with -Xptxas -v and fails when a kernel
# uses local memory (a stack frame or spills), more than 255 registers, or more than 48 KiB of
# static shared memory (dynamic shared memory is checked at launch). Prints one line per kernel.
# usage: check_ptxas.sh NVCC PROJECT_ROOT ARCH...      (ARCH: 80, 90, ...)
# Exits 77 (ctest's skip) when NVCC is empty: a build without the CUDA toolkit.
set -euo pipefail
nvcc=$1
root=$2
shift 2
if [ -z "$nvcc" ]; then
  echo "SKIP: no nvcc in this build (the CUDA toolkit was not found at configure time)"
  exit 77
fi
demangle() { if command -v c++filt >/dev/null; then c++filt; else cat; fi; }
failed=0
for arch in "$@"; do
  for cu in "$root"/kernels/*.cu; do
    if ! report=$("$nvcc" -std=c++17 -O3 -arch=sm_"$arch" -Xptxas -v -I"$root" -c "$cu" \
        -o /dev/null 2>&1); then
      echo "$report"
      echo "FAIL: nvcc could not compile $cu for sm_$arch"
      exit 1
    fi
    # ptxas prints per kernel: the entry name, then "N bytes stack frame, S bytes spill
    # stores, L bytes spill loads", then "Used R registers, ..., M bytes smem".
    lines=$(echo "$report" | awk -v arch="$arch" -v file="$(basename "$cu")" '
      /Compiling entry function/ { split($0, q, "'"'"'"); fn = q[2]; stack = 0; st = 0; ld = 0 }
      /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
      /Used [0-9]+ registers/ {
        regs = 0; smem = 0
        for (i = 1; i <= NF; i++) {
          if ($(i + 1) == "registers,") regs = $i
          if ($(i + 1) == "bytes" && $(i + 2) ~ /^smem/) smem = $i
        }
        bad = (stack > 0 || st > 0 || ld > 0 || regs > 255 || smem > 49152) ? "FAIL" : "ok"
        printf "%s sm_%s %s: %d registers, %d B smem, %d B stack, %d/%d B spill st/ld  %s\n",
               bad, arch, file, regs, smem, stack, st, ld, fn
      }')
    echo "$lines" | demangle
    if echo "$lines" | grep -q '^FAIL'; then failed=1; fi
  done
done
if [ "$failed" -ne 0 ]; then
  echo "FAIL: a kernel uses local memory or exceeds the register / shared-memory limits (above)"
  exit 1
fi
echo "all kernels: no local memory, registers and static shared memory within limits"
