# Prepare this shell to build llamactl with `--features cuda` on a machine that has no GPU and no
# CUDA toolkit (a laptop, CI). Source it from the repository root, then build:
#
#   source scripts/cuda-env.sh && cargo build --release --features cuda
#
# The first run takes a few minutes and needs python3 (with venv), pip access to PyPI and gcc; later
# runs only set variables. Everything lands under $LLAMACTL_CUDA_HOME (default
# ~/.cache/llamactl-cuda):
#   venv/  NVIDIA's CUDA 13.0 wheels: nvcc, NVVM, the runtime headers and static runtime, CCCL, and
#          cuBLAS, cuRAND and NVRTC. A 13.0 nvcc emits code that R580 and newer drivers load.
#   link/  libcuda.so: a stand-in for the driver library with one empty function per driver entry
#          point that cudarc declares, so that any build step that links against it is satisfied,
#          plus links to the CUDA libraries above. The binary itself links none of them: the CUDA
#          runtime goes in statically and the driver, cuBLAS, cuRAND and NVRTC are loaded when a run
#          asks for a GPU, so it starts (and runs on the CPU) on a machine without them.
# Then it exports PATH (nvcc), CUDA_ROOT/CUDA_PATH, CUDARC_CUDA_VERSION, CUDA_COMPUTE_CAP (90 =
# H100/H200 unless already set) and adds link/ to RUSTFLAGS' library path. Sourcing it again changes
# nothing more; `llamactl_cuda_off` puts PATH and RUSTFLAGS back as they were before the first
# source (CPU builds after it then reuse their own cache instead of rebuilding for new RUSTFLAGS).
#
# On the GPU machine the binary finds that machine's driver and CUDA 13 libraries on its own
# (LD_LIBRARY_PATH if they are outside the loader's default paths).

llamactl_cuda_home=${LLAMACTL_CUDA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/llamactl-cuda}

# Wheels pinned to one CUDA release so nvcc, headers and libraries agree.
llamactl_cuda_wheels="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt~=13.0.0 nvidia-cuda-runtime~=13.0.0
  nvidia-cuda-cccl~=13.0.0 nvidia-nvvm~=13.0.0 nvidia-cuda-nvrtc~=13.0.0 nvidia-cublas~=13.0.0
  nvidia-curand~=10.4.0"

# The wheels install under site-packages/nvidia/cu13; prints that folder, empty when absent.
llamactl_cuda_root() {
    ls -d "$llamactl_cuda_home"/venv/lib/python3*/site-packages/nvidia/cu13 2>/dev/null | head -n 1
}

llamactl_cuda_install() {
    echo "cuda-env: installing CUDA 13.0 wheels into $llamactl_cuda_home/venv" >&2
    python3 -m venv "$llamactl_cuda_home/venv" || return 1
    # shellcheck disable=SC2086 # the list is meant to split into arguments
    "$llamactl_cuda_home/venv/bin/pip" install --quiet $llamactl_cuda_wheels
}

# cudarc lists the driver API as `fn cuXxx(` declarations; its sources are in cargo's registry
# once the crates are fetched.
llamactl_cuda_stub() {
    local root=$1 link="$llamactl_cuda_home/link" sys lib
    sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys 2>/dev/null |
        sort -V | tail -n 1)
    if [ -z "$sys" ]; then
        echo "cuda-env: cudarc's sources are not on disk; run 'cargo fetch' first" >&2
        return 1
    fi
    mkdir -p "$link" || return 1
    grep -ohE '\bfn cu[A-Za-z0-9_]+\(' "$sys"/*.rs | sort -u |
        sed -E 's/^fn (cu[A-Za-z0-9_]+)\($/void \1(void) {}/' >"$link/driver_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/driver_stub.c" || return 1
    for lib in cudart cublas cublasLt curand nvrtc; do
        ln -sf "$(ls "$root"/lib/lib$lib.so.* | head -n 1)" "$link/lib$lib.so"
    done
}

llamactl_cuda_env() {
    local root
    root=$(llamactl_cuda_root)
    if [ -z "$root" ] || [ ! -x "$root/bin/nvcc" ]; then
        llamactl_cuda_install || { echo "cuda-env: pip install failed" >&2; return 1; }
        root=$(llamactl_cuda_root)
    fi
    if [ ! -f "$llamactl_cuda_home/link/libcuda.so" ]; then
        llamactl_cuda_stub "$root" || return 1
    fi
    # Remember the shell's own values once, so a second source adds nothing and _off restores them.
    if [ -z "${LLAMACTL_CUDA_SAVED:-}" ]; then
        export LLAMACTL_CUDA_SAVED=1 LLAMACTL_CUDA_OLD_PATH="$PATH" LLAMACTL_CUDA_OLD_RUSTFLAGS="${RUSTFLAGS:-}"
    fi
    export PATH="$root/bin:$LLAMACTL_CUDA_OLD_PATH"
    export CUDA_ROOT="$root" CUDA_PATH="$root" CUDARC_CUDA_VERSION=13000
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    export RUSTFLAGS="${LLAMACTL_CUDA_OLD_RUSTFLAGS:+$LLAMACTL_CUDA_OLD_RUSTFLAGS }-L $llamactl_cuda_home/link"
    echo "cuda-env: ready (nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), compute cap $CUDA_COMPUTE_CAP)" >&2
}

# Undo the exports of llamactl_cuda_env (for CPU builds in the same shell).
llamactl_cuda_off() {
    [ -n "${LLAMACTL_CUDA_SAVED:-}" ] || return 0
    export PATH="$LLAMACTL_CUDA_OLD_PATH"
    if [ -n "$LLAMACTL_CUDA_OLD_RUSTFLAGS" ]; then
        export RUSTFLAGS="$LLAMACTL_CUDA_OLD_RUSTFLAGS"
    else
        unset RUSTFLAGS
    fi
    unset CUDA_ROOT CUDA_PATH CUDARC_CUDA_VERSION LLAMACTL_CUDA_SAVED LLAMACTL_CUDA_OLD_PATH LLAMACTL_CUDA_OLD_RUSTFLAGS
}

llamactl_cuda_env
