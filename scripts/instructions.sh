#!/usr/bin/env bash
# Instructions per alloc + free pair through the hook and through raw
# jemalloc, counted by callgrind (independent of machine load).
# Usage: scripts/instructions.sh [PAIRS]   (default 1000000; `all` uses PAIRS/100)
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-1000000}
cargo bench --bench instructions --no-run >/dev/null 2>&1
bin=$(ls -t target/release/deps/instructions-* | grep -v '\.d$' | head -1)
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
printf '| mode | instructions per alloc + free pair |\n| --- | ---: |\n'
for mode in raw off bytes all; do
  n=$pairs
  [ "$mode" = all ] && n=$((pairs / 100))
  base=$(count "$mode" 0)
  total=$(count "$mode" "$n")
  awk -v m="$mode" -v t="$total" -v b="$base" -v n="$n" \
    'BEGIN { printf "| %s | %.1f |\n", m, (t - b) / n }'
done
