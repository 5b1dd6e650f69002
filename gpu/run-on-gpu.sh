#!/usr/bin/env bash
# Everything the GPU machine runs, in one go: nothing is built there (it has no Rust toolchain).
# Prerequisite on the build machine: `cargo xtask gpu-build`, then carry target/gpu/carry.tar.gz
# (both binaries, gzipped: ~30 MB) with the working tree. Finds the CUDA 13 libraries (system CUDA or PyTorch's nvidia wheels), runs
# `xtask gpu-test` and `xtask bench gpu`, and copies the tables to $OUT (if set).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=target/gpu/bin
if [ ! -x "$BIN/xtask" ] && [ -f target/gpu/carry.tar.gz ]; then
    tar -xzf target/gpu/carry.tar.gz -C target/gpu
fi
[ -x "$BIN/xtask" ] || { echo "no $BIN/xtask: run \`cargo xtask gpu-build\` on the build machine and carry target/gpu/bin" >&2; exit 2; }

# Library directories: the system toolkit, then every nvidia/*/lib of the Python that has torch.
dirs=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
if [ -n "$site" ] && [ -d "$site/nvidia" ]; then
    while IFS= read -r d; do dirs+=("$d"); done < <(find "$site/nvidia" -maxdepth 3 -type d -name lib)
fi
export LD_LIBRARY_PATH="$(IFS=:; echo "${dirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing=$(ldd "$BIN/xtask" | awk '/not found/ {print $1}')
if [ -n "$missing" ]; then
    echo "missing at run time: $missing (searched $LD_LIBRARY_PATH)" >&2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

status=0
"$BIN/xtask" gpu-test || status=1
"$BIN/xtask" bench gpu "$@" || status=1
if [ -n "${OUT:-}" ]; then cp -r out/gpu "$OUT/" 2>/dev/null || true; fi
exit $status
