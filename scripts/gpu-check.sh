#!/usr/bin/env bash
# gpu-check.sh: check carbon-agent's GPU energy on a machine with an NVIDIA GPU that has only
# the driver (libcuda.so.1, libnvidia-ml.so.1, nvidia-smi): no CUDA toolkit, no Python, no
# Rust, no network. Issue 13; the criteria are in gpu-load/src/check.rs and docs/energy.md.
#
#   scripts/gpu-check.sh bundle DIR   Here (with Rust): build carbon-agent, gpu-load and
#                                     gpu-check-eval in release mode and put them, with this
#                                     script, in DIR. Carry DIR to the GPU machine.
#   DIR/gpu-check.sh run [EVIDENCE]   There, as root: preflight; a background power trace;
#                                     one load, then two concurrent loads, each under
#                                     `carbon-agent run --json`; the verdict. Everything goes
#                                     to EVIDENCE (default: DIR/evidence-<UTC time>).
#
# Environment:
#   GPU_INDEX    NVML index of the GPU to load and check (default 0)
#   LOAD_S       seconds of each load (default 30; the whole run takes about 2 × LOAD_S + 30 s)
#   BIN          folder with carbon-agent, gpu-load, gpu-check-eval (default: DIR/bin for a
#                bundle, else target/release of this checkout)
#   BUNDLE_FROM  bundle: copy the binaries from this folder instead of building them
#
# Exit status: 0 pass, 1 fail, 2 cannot check here (the reason is printed and written to
# EVIDENCE/preflight.txt).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GPU_INDEX=${GPU_INDEX:-0}
LOAD_S=${LOAD_S:-30}

usage() {
    sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

bundle() {
    local dir=$1 from
    mkdir -p "$dir/bin" || exit 2
    if [[ -n ${BUNDLE_FROM:-} ]]; then
        from=$BUNDLE_FROM
    else
        local root
        root=$(cd "$here/.." && pwd)
        (cd "$root" && cargo build --release -p carbon-agent -p gpu-load) || {
            echo "gpu-check: the release build failed" >&2
            exit 1
        }
        from=$root/target/release
    fi
    for b in carbon-agent gpu-load gpu-check-eval; do
        [[ -x $from/$b ]] || {
            echo "gpu-check: $from/$b not found" >&2
            exit 2
        }
        cp "$from/$b" "$dir/bin/$b" || exit 2
    done
    cp "${BASH_SOURCE[0]}" "$dir/gpu-check.sh" && chmod +x "$dir/gpu-check.sh" || exit 2
    echo "gpu-check: bundle ready in $dir; on the GPU machine, as root: $dir/gpu-check.sh run"
}

evidence=
say() { echo "$*" | tee -a "$evidence/preflight.txt" >&2; }
# Cannot check here: the reason to stderr and to the evidence folder.
cannot() {
    echo "gpu-check: cannot check here: $*" >&2
    [[ -n $evidence && -d $evidence ]] && echo "cannot check here: $*" >>"$evidence/preflight.txt"
    exit 2
}

run_check() {
    evidence=${1:-$here/evidence-$(date -u +%Y%m%dT%H%M%SZ)}
    if [[ $(id -u) != 0 ]]; then
        cannot "must run as root (carbon-agent loads eBPF programs)"
    fi
    mkdir -p "$evidence/single" "$evidence/pair" || cannot "cannot create $evidence"
    : >"$evidence/preflight.txt"
    local bin=${BIN:-}
    if [[ -z $bin ]]; then
        if [[ -d $here/bin ]]; then bin=$here/bin; else bin=$here/../target/release; fi
    fi
    AGENT=$bin/carbon-agent LOAD=$bin/gpu-load EVAL=$bin/gpu-check-eval
    for b in "$AGENT" "$LOAD" "$EVAL"; do
        [[ -x $b ]] || cannot "$b not found: build a bundle with 'scripts/gpu-check.sh bundle DIR' and run DIR/gpu-check.sh"
    done
    say "root: yes; binaries: $bin; GPU index $GPU_INDEX; loads of $LOAD_S s"
    local ran
    ran=$("$LOAD" --version 2>&1) || cannot "the bundled binaries do not run on this machine ($ran); they need glibc >= 2.34 (docs/energy.md)"
    local probe
    probe=$("$LOAD" --probe 2>&1) || cannot "driver libraries: $probe"
    say "driver libraries: $probe"
    command -v nvidia-smi >/dev/null 2>&1 || cannot "nvidia-smi not found (the NVIDIA driver is incomplete)"
    nvidia-smi -i "$GPU_INDEX" -L >>"$evidence/preflight.txt" 2>&1 || cannot "nvidia-smi knows no GPU $GPU_INDEX"
    "$AGENT" doctor --json >"$evidence/doctor.json" 2>>"$evidence/preflight.txt" || cannot "carbon-agent doctor --json failed"
    "$AGENT" doctor >"$evidence/doctor.txt" 2>&1
    local hooks
    hooks=$("$EVAL" preflight-doctor "$evidence/doctor.json" 2>&1) || cannot "${hooks#gpu-check: }"
    say "doctor: $hooks"
    counter "$evidence/preflight-counter.txt" || cannot "carbon-agent doctor --gpu-energy $GPU_INDEX: $(cat "$evidence/preflight-counter.txt")"
    nvidia-smi -q -i "$GPU_INDEX" >"$evidence/nvidia-smi-q.txt" 2>&1

    # CUDA numbers devices like NVML only in PCI bus order; the load checks which it got.
    export CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=$GPU_INDEX
    TZ=UTC nvidia-smi -i "$GPU_INDEX" --query-gpu=timestamp,index,power.draw --format=csv,noheader,nounits \
        -lms 200 >"$evidence/power-trace.csv" 2>"$evidence/power-trace.err" &
    trace=$!
    trap 'kill "$trace" 2>/dev/null' EXIT
    sleep 1

    under_agent single "$LOAD" --seconds "$LOAD_S" || return 1
    # shellcheck disable=SC2016 # expanded by the inner shell
    under_agent pair /bin/sh -c '"$0" --seconds "$1" >"$2" & a=$!; "$0" --seconds "$1" >"$3" & b=$!
        wait $a; ra=$?; wait $b; rb=$?; exit $((ra | rb))' \
        "$LOAD" "$LOAD_S" "$evidence/pair/load-a.out" "$evidence/pair/load-b.out" || return 1
    sleep 1
    kill "$trace" 2>/dev/null
    wait "$trace" 2>/dev/null
    "$EVAL" evaluate "$evidence" "$GPU_INDEX"
    local rc=$?
    echo "gpu-check: evidence in $evidence" >&2
    return $rc
}

# The GPU's energy counter in joules into FILE.
counter() {
    local j
    j=$("$AGENT" doctor --gpu-energy "$GPU_INDEX" 2>&1)
    echo "$j" >"$1"
    [[ $j =~ ^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]
}

# under_agent NAME CMD...: CMD under `carbon-agent run --json`, bracketed by counter reads,
# nvidia-smi's compute apps polled while it runs.
under_agent() {
    local name=$1 dir=$evidence/$1
    shift
    counter "$dir/counter-before.txt" || { echo "gpu-check: counter read failed: $(cat "$dir/counter-before.txt")" >&2; return 1; }
    local out=$dir/load.out
    [[ $name == pair ]] && out=$dir/agent.out
    # Without SUDO_UID the agent runs the loads as root, who can write the evidence folder.
    env -u SUDO_UID -u SUDO_GID "$AGENT" run --json "$dir/run.json" -- "$@" >"$out" 2>"$dir/agent.err" &
    local agent=$!
    : >"$dir/compute-apps.txt"
    while kill -0 "$agent" 2>/dev/null; do
        sleep 2
        nvidia-smi -i "$GPU_INDEX" --query-compute-apps=pid --format=csv,noheader >>"$dir/compute-apps.txt" 2>/dev/null
    done
    wait "$agent"
    local rc=$?
    counter "$dir/counter-after.txt" || { echo "gpu-check: counter read failed: $(cat "$dir/counter-after.txt")" >&2; return 1; }
    if [[ $rc != 0 ]]; then
        echo "gpu-check: FAIL: the $name load under carbon-agent exited with $rc (see $dir/agent.err)" >&2
        return 1
    fi
}

case ${1:-} in
bundle)
    [[ $# == 2 ]] || usage
    bundle "$2"
    ;;
run)
    [[ $# -le 2 ]] || usage
    run_check "${2:-}"
    exit $?
    ;;
*) usage ;;
esac
