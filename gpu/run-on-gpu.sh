#!/usr/bin/env bash
# Everything the GPU machine runs, in one go: nothing is built there (it has no Rust toolchain).
# Prerequisite on the build machine: `cargo xtask gpu-build`, then carry target/gpu/carry.tar.gz
# (both binaries, gzipped: ~30 MB) with the working tree. Finds the CUDA 13 libraries (the
# driver's, the system toolkit's, or PyTorch's nvidia wheels), runs `xtask gpu-test` and
# `xtask bench gpu` each under its own time limit, and copies the tables and logs to $OUT (if set)
# as they are written, so a run stopped at its limit still returns what it measured.
#
#   PHASES="test bench"   which to run (default both; `profile` adds an Nsight Compute profile
#                         of the attention kernels at the quick shapes)
#   TEST_LIMIT=240        seconds for gpu-test;   TEST_ARGS, e.g. "--parts oracle,nccl"
#   BENCH_LIMIT=300       seconds for bench gpu;  BENCH_ARGS, e.g. "--parts step"
#   PROFILE_LIMIT=90      seconds for the profile
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=target/gpu/bin
if [ ! -x "$BIN/xtask" ] && [ -f target/gpu/carry.tar.gz ]; then
    tar -xzf target/gpu/carry.tar.gz -C target/gpu
fi
[ -x "$BIN/xtask" ] || { echo "no $BIN/xtask: run \`cargo xtask gpu-build\` on the build machine and carry target/gpu/bin" >&2; exit 2; }

# Library directories: the driver's, the system toolkit, then every nvidia/*/lib of the Python
# that has torch.
dirs=(/usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
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

dest=${OUT:-}
save() { if [ -n "$dest" ]; then cp "$@" "$dest/" 2>/dev/null || true; fi; }
mkdir -p out/gpu
status=0
phases=${PHASES:-test bench}
if [[ " $phases " == *" test "* ]]; then
    # shellcheck disable=SC2086
    timeout "${TEST_LIMIT:-240}" "$BIN/xtask" gpu-test ${TEST_ARGS:-} 2>&1 | tee out/gpu/gpu-test.log
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    save out/gpu/gpu-test.md out/gpu/gpu-test.log
fi
if [[ " $phases " == *" bench "* ]]; then
    # shellcheck disable=SC2086
    timeout "${BENCH_LIMIT:-300}" "$BIN/xtask" bench gpu ${BENCH_ARGS:-} 2>&1 | tee out/gpu/bench.log
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    save out/gpu/bench.md out/gpu/bench.log
fi
if [[ " $phases " == *" profile "* ]]; then
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    # Clocks left as they are (METHOD.md); one launch of each attention kernel, the quick shapes.
    timeout "${PROFILE_LIMIT:-90}" "$ncu" --clock-control none --kernel-name regex:attn_ \
        --launch-count 4 --section SpeedOfLight --section Occupancy --section LaunchStats \
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
        "$BIN/xtask" bench gpu --quick --parts attention --out out/gpu/profile \
        > out/gpu/ncu.txt 2>&1
    save out/gpu/ncu.txt
fi
exit $status
