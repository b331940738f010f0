#!/usr/bin/env bash
# Instructions executed by the whole-process comparison's workloads
# (benches/compare/workloads.rs) under each configuration, counted by
# callgrind: a load-independent companion to the timed tables of
# `scripts/compare.sh`, whose ratios swing with the machine's other load.
#
# Only the workload function is counted (`--toggle-collect`, its callees
# included: the allocator, the hook, stack captures, table inserts), not
# process start-up or exit. Threads are serialized by valgrind, so `threads`
# counts both threads' work.
#
# Usage: scripts/instructions_whole.sh [WORKLOADS] [CONFIGS]
#   WORKLOADS  comma-separated, default small,mixed (also: threads,
#              structs, strings, hashmap, large)
#   CONFIGS    comma-separated, default
#              jemalloc,jemalloc_prof,cap,hw_off,hw_bytes,hw_all_cfi,hw_all_fp
#              (dhat and hw_all, which unwind with libgcc on every
#              allocation, take minutes each under callgrind; name them to
#              include them)
# Environment: CARGO_TARGET_DIR, FP_TARGET_DIR as for scripts/compare.sh,
# whose builds this reuses (run it first, or this builds them).
set -euo pipefail
cd "$(dirname "$0")/.."

workloads=${1:-small,mixed}
configs=${2:-jemalloc,jemalloc_prof,cap,hw_off,hw_bytes,hw_all_cfi,hw_all_fp}
target=${CARGO_TARGET_DIR:-target}
fp_target=${FP_TARGET_DIR:-$target/fp}
features=${CARGO_FEATURES:-bench-jemalloc-prof}

command -v valgrind >/dev/null || { echo "instructions_whole.sh: valgrind is not installed" >&2; exit 2; }

CARGO_TARGET_DIR=$target cargo bench --features "$features" --benches --no-run 2>/dev/null
if [[ ",$configs," == *",hw_all_fp,"* ]]; then
  RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C force-frame-pointers=yes" CARGO_TARGET_DIR=$fp_target \
    cargo bench --features "$features" --bench cmp_hw_all_fp --no-run 2>/dev/null
fi

worker() {
  local dir=$target/release/deps
  [ "$1" = hw_all_fp ] && dir=$fp_target/release/deps
  ls -t "$dir"/cmp_"$1"-* 2>/dev/null | grep -v '\.d$' | head -1
}

count() { # config workload
  local bin fn env=()
  bin=$(worker "$1")
  [ -n "$bin" ] || { echo "instructions_whole.sh: no cmp_$1 worker" >&2; exit 2; }
  case $2 in
    small | threads) fn='*small_loop' ;;
    mixed | structs | strings | hashmap | large) fn="*::$2" ;;
    *) echo "instructions_whole.sh: unknown workload $2" >&2; exit 2 ;;
  esac
  [ "$1" = jemalloc_prof ] && env=(_RJEM_MALLOC_CONF=prof:true,prof_active:true,lg_prof_sample:19)
  env "${env[@]}" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
    --toggle-collect="$fn" "$bin" "$2" 2>&1 >/dev/null |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

IFS=, read -ra ws <<<"$workloads"
IFS=, read -ra cs <<<"$configs"
declare -A base
for w in "${ws[@]}"; do base[$w]=$(count jemalloc "$w"); done

printf '| configuration |'
for w in "${ws[@]}"; do printf ' %s |' "$w"; done
printf '\n| --- |'
for w in "${ws[@]}"; do printf ' ---: |'; done
printf '\n'
for c in "${cs[@]}"; do
  printf '| %s |' "$c"
  for w in "${ws[@]}"; do
    if [ "$c" = jemalloc ]; then n=${base[$w]}; else n=$(count "$c" "$w"); fi
    awk -v n="$n" -v b="${base[$w]}" 'BEGIN { printf " %.1f M (%.2fx) |", n / 1e6, n / b }'
  done
  printf '\n'
done
