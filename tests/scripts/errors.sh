#!/usr/bin/env bash
# ctest scripts.errors: the set-up and GPU-check scripts refuse bad input with a message naming it, before they
# install or build anything. A fake nvidia-smi stands in for the driver, so the result is the same with or without
# a GPU.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failures=0

# expect_error "what" "fragment of the message" command...: the command must fail and print the fragment.
expect_error() {
  local what=$1 fragment=$2; shift 2
  local output rc
  output=$("$@" 2>&1 </dev/null)
  rc=$?
  if ((rc == 0)); then
    echo "FAIL $what: exited 0"; failures=$((failures + 1))
  elif [[ $output != *"$fragment"* ]]; then
    echo "FAIL $what: the message lacks '$fragment':"; echo "$output"; failures=$((failures + 1))
  else
    echo "ok   $what: $(tail -n 1 <<<"$output")"
  fi
}

fake_driver() {  # fake_driver DIR OUTPUT RC: an nvidia-smi that prints OUTPUT and exits RC
  mkdir -p "$1"
  printf '#!/bin/sh\nprintf "%s\\n"\nexit %s\n' "$2" "$3" >"$1/nvidia-smi"
  chmod +x "$1/nvidia-smi"
}
fake_driver "$scratch/none" "" 9
fake_driver "$scratch/maxwell" "5.2" 0

expect_error "setup: unknown option" "unknown argument '--gpu'" "$root/scripts/setup" --gpu
expect_error "setup: CAMEX_CUDA not 0 or 1" "CAMEX_CUDA: expected 0 or 1, given 'yes'" env CAMEX_CUDA=yes "$root/scripts/setup"
expect_error "setup --cuda: no GPU, no CAMEX_CUDA_ARCH" "nvidia-smi reports no GPU here; set CAMEX_CUDA_ARCH" \
  env -u CAMEX_CUDA_ARCH PATH="$scratch/none:$PATH" "$root/scripts/setup" --cuda
expect_error "setup --cuda: a GPU CUDA 13 cannot build for" "compute capability 52 is not one CUDA 13 builds for" \
  env -u CAMEX_CUDA_ARCH PATH="$scratch/maxwell:$PATH" "$root/scripts/setup" --cuda
expect_error "setup --cuda: CAMEX_CUDA_ARCH unknown" "CAMEX_CUDA_ARCH: expected a compute capability CUDA 13 builds for" \
  env CAMEX_CUDA_ARCH=91 "$root/scripts/setup" --cuda
expect_error "build-kokkos: --cuda-arch unknown" "--cuda-arch: expected a compute capability CUDA 13 builds for" \
  "$root/scripts/build-kokkos" --cuda --cuda-arch 61
expect_error "build-kokkos: --cuda-arch without --cuda" "--cuda-arch needs --cuda" "$root/scripts/build-kokkos" --cuda-arch 90
expect_error "gpu-check: no mode" "scripts/gpu-check prepare ARCHIVE" "$root/scripts/gpu-check"
expect_error "gpu-check prepare: CAMEX_CUDA_ARCH unknown" "CAMEX_CUDA_ARCH: expected one of" \
  env CAMEX_CUDA_ARCH=12 "$root/scripts/gpu-check" prepare "$scratch/archive.tar.xz"
expect_error "gpu-check prepare: no archive named" "prepare needs the archive to write" "$root/scripts/gpu-check" prepare
expect_error "gpu-check run: no archive there" "no archive at '$scratch/missing.tar.xz'" \
  "$root/scripts/gpu-check" run "$scratch/missing.tar.xz" "$scratch/out"
expect_error "gpu-check dry-run: no output folder" "needs a folder for the logs and JSON" \
  "$root/scripts/gpu-check" dry-run "$scratch/missing.tar.xz"
printf 'not an archive' >"$scratch/broken.tar.xz"
expect_error "gpu-check run: a broken archive" "could not unpack $scratch/broken.tar.xz" \
  "$root/scripts/gpu-check" run "$scratch/broken.tar.xz" "$scratch/out"

echo "$([[ $failures == 0 ]] && echo PASS || echo FAIL): $failures failing"
exit $((failures > 0))
