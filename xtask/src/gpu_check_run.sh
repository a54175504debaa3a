#!/usr/bin/env bash
# The GPU checks of the CUDA path (written by `cargo xtask gpu-check`; see xtask/src/gpu_check.rs). Run it on a
# machine with an NVIDIA GPU, its driver and NVRTC, from the root of a copy of the deepgate source tree (the
# tests read its models, fixtures and board configs). Logs and results go to $OUT, else ./gpu-check-results.
# Exit status 0 only if every step passed and no GPU test skipped.
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$PWD/gpu-check-results}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The programs: one xz archive (tar's xz support, else Python's lzma module).
if ! tar -C "$work" -xJf "$here/bin.tar.xz" 2>/dev/null; then
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$here/bin.tar.xz" "$work" ||
        { echo "gpu-check: cannot unpack $here/bin.tar.xz"; exit 1; }
fi
bin=$work/bin

export DEEPGATE_SOURCE_ROOT=$PWD DEEPGATE_BIN=$bin/deepgate RUST_LOG=${RUST_LOG:-info} RUST_BACKTRACE=1
# tract's CUDA runtime loads cudart, cuBLAS and cuDNN 9: the system's if the loader finds them, else those of
# PyTorch's NVIDIA wheels.
wheels=$(python3 -c '
import glob, os, site
bases = site.getsitepackages() + [site.getusersitepackages()]
print(":".join(sorted({d for b in bases for d in glob.glob(os.path.join(b, "nvidia", "*", "lib"))})))
' 2>/dev/null)
if [ -n "$wheels" ]; then
    export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$wheels
fi

status=0
step() {
    local name=$1
    shift
    echo "== $name: $*"
    "$@" >"$out/$name.log" 2>&1
    local rc=$?
    grep -E "^test result|SKIPPED|FAILED|panicked" "$out/$name.log" | head -20
    echo "   exit status $rc (log: $out/$name.log)"
    if [ $rc -ne 0 ]; then status=1; fi
}

{ nvidia-smi; nvidia-smi -q | head -40; } >"$out/nvidia-smi.log" 2>&1
date -u +%Y-%m-%dT%H:%MZ >"$out/date.txt"
step probe "$bin/deepgate" probe --gpu
cp "$out/probe.log" "$out/probe.json"
step kernels "$bin/lib-tests" --test-threads 1 --nocapture preprocess::cuda
step binary "$bin/gpu" --test-threads 1 --nocapture
step models "$bin/models" --test-threads 1 --nocapture
step allocation "$bin/allocation" --test-threads 1 --nocapture
step bench "$bin/deepgate" bench-gpu --torch python3
step bench-json "$bin/deepgate" bench-gpu --torch python3 --json

# On a GPU machine nothing may skip: a skip is a check not made.
if grep -l "SKIPPED\|no GPU inference here" "$out"/*.log >/dev/null 2>&1; then
    echo "gpu-check: some GPU checks skipped here:"
    grep -h "SKIPPED\|no GPU inference here" "$out"/*.log | sort -u
    status=1
fi
cat "$out/bench.log"
echo "gpu-check: exit status $status; logs in $out"
exit $status
