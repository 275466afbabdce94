#!/usr/bin/env bash
# Where the I/O exit handler spends its time, per instruction of its JIT'd code.
#
# Runs the release agent, copies a file with `dd bs=4k` (read/write syscalls) under
# `perf record -a`, reads the JIT image of io_sys_exit with BPF_OBJ_GET_INFO_BY_FD, and prints
# the instructions that got at least 0.4 % of the handler's samples (perf's own annotate
# needs libopcodes, which the packaged perf lacks). Needs root, perf, objdump and python3.
#
#   cargo build --release -p carbon-agent && sudo scripts/profile-io-exit.sh [MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-256}
work=$(mktemp -d /var/tmp/carbon-profile.XXXXXX)
trap 'kill "$agent" 2>/dev/null || true; rm -rf "$work"' EXIT
head -c "${mib}M" /dev/zero > "$work/src"
cat "$work/src" > /dev/null
target/release/carbon-agent --json --duration 600 > /dev/null 2> "$work/agent.err" &
agent=$!
for _ in $(seq 50); do
  id=$(bpftool prog show 2>/dev/null | awk -F: '/name io_sys_exit/ {print $1; exit}')
  [ -n "${id:-}" ] && break
  sleep 0.2
done
[ -n "${id:-}" ] || { echo "io_sys_exit is not loaded: $(cat "$work/agent.err")" >&2; exit 1; }
python3 - "$id" "$work/exit.bin" <<'EOF'
import ctypes, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF, PROG_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD = 321, 13, 15
def call(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(SYS_BPF, cmd, buf, 128)
    if r < 0:
        raise OSError(ctypes.get_errno(), "bpf")
    return r
fd = call(PROG_GET_FD_BY_ID, struct.pack("I", int(sys.argv[1])))
info = ctypes.create_string_buffer(256)
call(OBJ_GET_INFO_BY_FD, struct.pack("IIQ", fd, 256, ctypes.addressof(info)))
length = struct.unpack_from("I", info.raw, 16)[0]
code = ctypes.create_string_buffer(length)
info = ctypes.create_string_buffer(256)
struct.pack_into("I", info, 16, length)
struct.pack_into("Q", info, 24, ctypes.addressof(code))
call(OBJ_GET_INFO_BY_FD, struct.pack("IIQ", fd, 256, ctypes.addressof(info)))
open(sys.argv[2], "wb").write(code.raw)
EOF
perf record -q -F 25000 -a -o "$work/perf.data" -- \
  dd if="$work/src" of="$work/dst" bs=4k conv=notrunc status=none 2> /dev/null
objdump -D -b binary -m i386:x86-64 "$work/exit.bin" > "$work/dis.txt"
perf script -i "$work/perf.data" -F comm,ip,sym,symoff 2> /dev/null > "$work/samples.txt"
python3 - "$work/dis.txt" "$work/samples.txt" <<'EOF'
import bisect, collections, re, sys
insns = []
for line in open(sys.argv[1]):
    m = re.match(r"\s+([0-9a-f]+):\t(.*)", line)
    if m:
        insns.append((int(m.group(1), 16), m.group(2).replace("\t", " ").strip()))
offsets = [o for o, _ in insns]
hits, dd, other = collections.Counter(), 0, collections.Counter()
for line in open(sys.argv[2]):
    parts = line.split()
    if len(parts) < 2:
        continue
    if parts[0] == "dd":
        dd += 1
    m = re.search(r"bpf_prog_\w+_io_sys_exit\+0x([0-9a-f]+)", line)
    if m:
        hits[bisect.bisect_right(offsets, int(m.group(1), 16)) - 1] += 1
    elif parts[0] == "dd" and re.search(r"bpf|sys_exit", parts[-1]):
        other[re.sub(r"\+0x[0-9a-f]+$", "", parts[-1])] += 1
total = sum(hits.values())
print(f"dd samples {dd}; io_sys_exit {total} ({100 * total / max(dd, 1):.1f} % of dd's)")
for sym, n in other.most_common(5):
    print(f"  {sym}: {n} ({100 * n / max(dd, 1):.1f} % of dd's)")
for i, (off, text) in enumerate(insns):
    if hits[i] * 250 >= total > 0:
        print(f"{100 * hits[i] / total:5.1f} %  {off:5x}: {text[:90]}")
EOF
