#!/usr/bin/env bash
# gpu-check.sh: on a machine with an NVIDIA GPU, check that `carbon-agent run` gives a
# GPU-bound process tree the GPU energy that NVML's own counter measures.
#
# It reads the GPU's total-energy counter (`carbon-agent doctor --gpu-energy INDEX`,
# which prints the counter in joules on one line), runs a ~30 s GPU load under
# `carbon-agent run --json FILE`, reads the counter again, and checks that the tree's
# `energy_j.gpu` is within TOLERANCE (default 5%) of the counter's difference.
#
# Environment:
#   AGENT       carbon-agent binary (default: target/release/carbon-agent, built if missing)
#   GPU_INDEX   NVML index of the GPU to load and check (default 0)
#   DURATION_S  seconds of load (default 30)
#   TOLERANCE   allowed relative difference (default 0.05)
#   GPU_LOAD    command line of the load (default: a matrix-multiply loop with PyTorch,
#               else CuPy); it must keep GPU_INDEX busy for about DURATION_S seconds
#
# Exit status: 0 pass, 1 fail, 2 cannot check here (no GPU, no load available).
# Needs root (carbon-agent loads eBPF programs).
set -euo pipefail

GPU_INDEX=${GPU_INDEX:-0}
DURATION_S=${DURATION_S:-30}
TOLERANCE=${TOLERANCE:-0.05}
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AGENT=${AGENT:-$repo_root/target/release/carbon-agent}

die() {
    echo "gpu-check: $2" >&2
    exit "$1"
}

command -v nvidia-smi >/dev/null 2>&1 || die 2 "no NVIDIA driver (nvidia-smi not found): nothing to check here"
nvidia-smi -i "$GPU_INDEX" >/dev/null 2>&1 || die 2 "no NVIDIA GPU with index $GPU_INDEX"
command -v python3 >/dev/null 2>&1 || die 2 "python3 is needed to read the run's JSON"

if [[ ! -x $AGENT ]]; then
    (cd "$repo_root" && cargo build --release -p carbon-agent) || die 1 "cannot build carbon-agent"
fi

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT

# The load: CUDA numbers devices like NVML only with PCI bus order.
export CUDA_DEVICE_ORDER=PCI_BUS_ID
export CUDA_VISIBLE_DEVICES=$GPU_INDEX
cat >"$workdir/load.py" <<'PY'
import sys, time
seconds = float(sys.argv[1])
try:
    import torch
    a = torch.randn(8192, 8192, device="cuda")
    b = torch.randn(8192, 8192, device="cuda")
    sync = torch.cuda.synchronize
except ImportError:
    import cupy
    a = cupy.random.rand(8192, 8192, dtype=cupy.float32)
    b = cupy.random.rand(8192, 8192, dtype=cupy.float32)
    sync = cupy.cuda.Device().synchronize
end = time.time() + seconds
while time.time() < end:
    for _ in range(8):
        c = a @ b
    sync()
PY
if [[ -n ${GPU_LOAD:-} ]]; then
    read -r -a load <<<"$GPU_LOAD"
elif python3 -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1 ||
    python3 -c 'import cupy; cupy.cuda.Device(0).compute_capability' >/dev/null 2>&1; then
    load=(python3 "$workdir/load.py" "$DURATION_S")
else
    die 2 "no GPU load: install PyTorch or CuPy with CUDA, or set GPU_LOAD to a command"
fi

read_counter() {
    local j
    j=$("$AGENT" doctor --gpu-energy "$GPU_INDEX") || die 1 "carbon-agent doctor --gpu-energy $GPU_INDEX failed"
    [[ $j =~ ^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]] || die 1 "doctor --gpu-energy printed '$j', expected joules"
    echo "$j"
}

before=$(read_counter)
"$AGENT" run --json "$workdir/run.json" -- "${load[@]}" || die 1 "the load under carbon-agent run failed"
after=$(read_counter)

python3 - "$workdir/run.json" "$before" "$after" "$TOLERANCE" <<'PY'
import json, sys
path, before, after, tolerance = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
doc = json.load(open(path))
tree_gpu = float(doc["energy_j"]["gpu"])
nvml = after - before
if nvml <= 0:
    print(f"gpu-check: FAIL: NVML counter did not advance ({before} J -> {after} J)")
    sys.exit(1)
diff = abs(tree_gpu - nvml) / nvml
meter = doc["energy_j"].get("meter", {})
print(f"gpu-check: tree energy_j.gpu = {tree_gpu:.1f} J, NVML counter delta = {nvml:.1f} J, "
      f"difference {diff:.2%} (tolerance {tolerance:.0%}), meter {meter}, duration {doc.get('duration_s')} s")
if diff > tolerance:
    print("gpu-check: FAIL")
    sys.exit(1)
print("gpu-check: PASS")
PY
