# Shared by the scripts in this folder; sourced, not run.
camex_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
camex_deps="$camex_root/.deps"
camex_bundled_kokkos="$camex_deps/kokkos"

log() { printf '[camex] %s\n' "$*" >&2; }
die() { printf '[camex] error: %s\n' "$*" >&2; exit 1; }
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Installs the Debian packages named that are not installed yet (nothing, and no apt-get update, when all are).
install_debian_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# The Kokkos every build uses: the user's (Kokkos_ROOT) if set, else the bundled one.
camex_kokkos_root() { printf '%s' "${Kokkos_ROOT:-$camex_bundled_kokkos}"; }

# configure_and_build BUILD_DIR [cmake --build args, e.g. --target T]: one Release build tree shared by the scripts.
# The OpenMP settings camex's programs run with unless the caller set them: a thread per core, spread over the cores
# and bound to them (unbound threads can end up sharing a core: docs/reliability.md, "Fair under load").
camex_thread_defaults() {
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} OMP_PROC_BIND=${OMP_PROC_BIND:-spread} OMP_PLACES=${OMP_PLACES:-threads}
}

configure_and_build() {
  local dir=$1; shift
  local generator=()
  [[ -f "$dir/CMakeCache.txt" ]] || generator=(-G Ninja)
  mkdir -p "$dir"
  cmake -S "$camex_root" -B "$dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DKokkos_ROOT="$(camex_kokkos_root)" >"$dir/configure.log" 2>&1 \
    || { cat "$dir/configure.log" >&2; die "cmake configure failed (log above)"; }
  cmake --build "$dir" --parallel "$(nproc)" "$@"
}

# Compute capabilities CUDA 13's nvcc builds for, and the Kokkos folder scripts/build-kokkos --cuda fills for one.
camex_cuda_archs="75 80 86 87 89 90 100 103 110 120 121"
camex_supported_cuda_arch() { [[ " $camex_cuda_archs " == *" ${1:-none} "* ]]; }
camex_cuda_kokkos_root() { if [[ $1 == 80 ]]; then printf '%s' "$camex_deps/kokkos-cuda"; else printf '%s' "$camex_deps/kokkos-cuda-sm$1"; fi; }

# The compute capability of the first GPU the driver reports (9.0 -> 90); fails where there is none.
camex_gpu_cuda_arch() {
  command -v nvidia-smi >/dev/null || return 1
  local cc
  cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .') || return 1
  [[ $cc =~ ^[0-9]+$ ]] && printf '%s' "$cc"
}
