#!/usr/bin/env bash
# Whole-process comparison (benches/compare.rs), including the exact mode
# with frame pointers (`hw_all_fp`).
#
# Two builds: every worker and the driver in the normal target directory
# (no extra flags, so the baseline is the usual build), and `cmp_hw_all_fp`
# again with `-C force-frame-pointers=yes` in a target directory of its own
# (RUSTFLAGS apply to every crate of a build, and a different RUSTFLAGS in
# the same directory would rebuild everything back and forth). Then runs the
# driver with `--fp-dir` and this script's arguments passed through.
#
# Usage: scripts/compare.sh [driver options]
#   e.g. scripts/compare.sh --rounds 1 --configs jemalloc,hw_all,hw_all_fp
# Environment:
#   CARGO_TARGET_DIR  the normal target directory (default: target)
#   FP_TARGET_DIR     the frame-pointer build's (default: $CARGO_TARGET_DIR/fp)
#   CARGO_FEATURES    features of both builds (default: bench-jemalloc-prof)
#   RUSTFLAGS         if set, used by both builds (the frame-pointer build
#                     appends -C force-frame-pointers=yes)
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
fp_target=${FP_TARGET_DIR:-$target/fp}
features=${CARGO_FEATURES:-bench-jemalloc-prof}
# An inherited RUSTFLAGS applies to both builds; the frame-pointer build
# adds its flag to it.
fp_rustflags="${RUSTFLAGS:+$RUSTFLAGS }-C force-frame-pointers=yes"

echo "compare.sh: building the driver and the workers in $target" >&2
CARGO_TARGET_DIR=$target cargo bench --features "$features" --benches --no-run

echo "compare.sh: building cmp_hw_all_fp with frame pointers in $fp_target" >&2
RUSTFLAGS=$fp_rustflags CARGO_TARGET_DIR=$fp_target \
  cargo bench --features "$features" --bench cmp_hw_all_fp --no-run

# The newest driver executable (cargo bench --bench compare would check the
# build again; running it directly keeps the two builds' output separate).
driver=$(ls -t "$target"/release/deps/compare-* | grep -v '\.d$' | head -1)
exec "$driver" --fp-dir "$fp_target/release/deps" "$@"
