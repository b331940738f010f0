#!/usr/bin/env bash
# Alternate runs of compare workers: runs each given worker binary on one
# workload in turn, for N rounds, and prints the median and fastest
# `elapsed_ns` of each, as a ratio to the first binary's. Used for the
# before/after figures in BENCHMARKS.md: copy the worker binaries of the
# two builds aside (e.g. /tmp/raw, /tmp/off_before, /tmp/off_after), then
#
#   scripts/alternate.sh 21 small /tmp/raw /tmp/off_before /tmp/off_after
#
# Binaries are told apart by file name. Needs python3.
set -euo pipefail
rounds=$1
workload=$2
shift 2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "$rounds"); do
  for b in "$@"; do
    if ! ns=$("$b" "$workload" 2>&1 | grep -o 'elapsed_ns=[0-9]*' | cut -d= -f2) \
      || [ -z "$ns" ]; then
      echo "alternate.sh: $b $workload failed or printed no elapsed_ns" >&2
      exit 1
    fi
    printf '%s %s\n' "$(basename "$b")" "$ns" >>"$out"
  done
done
python3 - "$out" <<'PY'
import collections, statistics, sys
runs = collections.OrderedDict()
for line in open(sys.argv[1]):
    name, ns = line.split()
    runs.setdefault(name, []).append(int(ns) / 1e6)
base = None
for name, ms in runs.items():
    med, low = statistics.median(ms), min(ms)
    if base is None:
        base = (med, low)
    print(f"{name:16s} median {med:8.2f} ms ({med / base[0]:.3f}x)  "
          f"fastest {low:8.2f} ms ({low / base[1]:.3f}x)")
PY
