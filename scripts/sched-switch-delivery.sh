#!/usr/bin/env bash
# How many of the kernel's context switches reach the agent's sched_switch program.
#
# Runs the release agent, then compares over SECONDS seconds the program's run count (BPF
# stats, turned on for the run and restored after) with the kernel's own count of context
# switches (`ctxt` in /proc/stat). On the Firecracker VMs this project is tested on, some
# switches never reach the program (with no recursion misses counted), which is why the
# scheduler program infers an idle stint whose start it did not see (agent-ebpf/src/sched.rs,
# `idle_switch`). Needs root, bpftool and python3.
#
#   cargo build --release -p carbon-agent && sudo scripts/sched-switch-delivery.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
stats_before=$(sysctl -n kernel.bpf_stats_enabled)
trap 'sysctl -qw kernel.bpf_stats_enabled="$stats_before"; kill "$agent" 2>/dev/null || true' EXIT
sysctl -qw kernel.bpf_stats_enabled=1
target/release/carbon-agent --json --duration $((secs + 30)) --no-io > /dev/null 2>&1 &
agent=$!
run_cnt() {
  bpftool prog show name sched_switch_btf --json 2>/dev/null |
    python3 -c 'import json, sys; d = json.load(sys.stdin); d = d[0] if isinstance(d, list) else d; print(d.get("run_cnt", 0), d.get("recursion_misses", 0))'
}
for _ in $(seq 50); do
  [ -n "$(run_cnt 2>/dev/null)" ] && break
  sleep 0.2
done
sleep 1
read -r runs0 miss0 < <(run_cnt)
ctxt0=$(awk '/^ctxt/ {print $2}' /proc/stat)
sleep "$secs"
read -r runs1 miss1 < <(run_cnt)
ctxt1=$(awk '/^ctxt/ {print $2}' /proc/stat)
runs=$((runs1 - runs0)); ctxt=$((ctxt1 - ctxt0))
echo "over ${secs} s: ${ctxt} context switches (/proc/stat ctxt), ${runs} runs of sched_switch_btf, $((miss1 - miss0)) recursion misses"
python3 -c "print(f'not delivered: {($ctxt - $runs) / $ctxt * 100:.2f} %')"
