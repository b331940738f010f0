#!/usr/bin/env bash
# Runs the exact-mode, unwinder and server test binaries under valgrind
# (memcheck):
# any invalid read/write, use of uninitialised memory, bad free or
# *definitely* lost block fails the run (exit 1).
#
#   scripts/valgrind.sh                # default tests
#   scripts/valgrind.sh exact_callsites unwinders server_basic
#
# Builds with `cargo test --no-run --message-format=json` and takes the
# test executables from cargo's JSON (needs jq). Suppressions for one-time
# statics of std/tokio live in scripts/valgrind.supp (documented there).
# Each binary runs its tests on one thread (--test-threads=1) to keep the
# run short and the output readable. Environment: CARGO_TARGET_DIR is
# honoured; VALGRIND_EXTRA adds valgrind options, VALGRIND_TEST_ARGS test
# binary arguments (a filter, `--skip NAME`), CARGO_TEST_ARGS cargo options
# for the build (CI passes `--all-features` to reuse the test build). HEAPWATCH_TEST_HISTORY_MS
# (default here 2000) slows the server test's history snapshots, which
# otherwise take the server's whole time under valgrind;
# HEAPWATCH_TEST_TIMEOUT_SECS (default here 900) lets its client wait for
# the first snapshot, whose symbolization parses the debug info.
#
# Exit status: 0 clean; 1 memcheck errors or failing tests (the message says
# which); 2 set-up problems.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."

tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
    tests=(exact_callsites unwinders server_basic)
fi

command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind is not installed" >&2; exit 2; }
command -v jq >/dev/null || { echo "valgrind.sh: jq is not installed" >&2; exit 2; }

args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done

echo "valgrind.sh: building ${tests[*]}" >&2
# shellcheck disable=SC2086
mapfile -t bins < <(cargo test --no-run --message-format=json ${CARGO_TEST_ARGS:-} "${args[@]}" \
    | jq -r 'select(.reason == "compiler-artifact" and .executable != null and .profile.test == true) | .executable')

if [ ${#bins[@]} -ne ${#tests[@]} ]; then
    echo "valgrind.sh: expected ${#tests[@]} test binaries, cargo reported ${#bins[@]}: ${bins[*]}" >&2
    exit 2
fi

export HEAPWATCH_TEST_HISTORY_MS="${HEAPWATCH_TEST_HISTORY_MS:-2000}"
export HEAPWATCH_TEST_TIMEOUT_SECS="${HEAPWATCH_TEST_TIMEOUT_SECS:-900}"

status=0
for bin in "${bins[@]}"; do
    name="$(basename "$bin")"
    log="${CARGO_TARGET_DIR:-target}/valgrind-${name}.log"
    echo "valgrind.sh: $name (log: $log)" >&2
    rc=0
    # shellcheck disable=SC2086
    valgrind --error-exitcode=1 --leak-check=full \
        --errors-for-leak-kinds=definite --show-leak-kinds=definite \
        --suppressions="$here/valgrind.supp" --fair-sched=yes \
        --log-file="$log" ${VALGRIND_EXTRA:-} \
        "$bin" --test-threads=1 ${VALGRIND_TEST_ARGS:-} || rc=$?
    case $rc in
        0) echo "valgrind.sh: $name: clean" >&2 ;;
        1)
            echo "valgrind.sh: $name: MEMCHECK ERRORS, see $log" >&2
            grep -E "ERROR SUMMARY|definitely lost|Invalid|uninitialised" "$log" >&2 || true
            status=1
            ;;
        *)
            # libtest exits 101 when a test fails: under valgrind (~50x
            # slower) a test with wall-clock assumptions can fail without any
            # memory error. Reported apart, still a failure of this script.
            echo "valgrind.sh: $name: the tests failed under valgrind (exit $rc), no memcheck error reported; see the output above" >&2
            status=1
            ;;
    esac
    grep -E "ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|suppressed:" "$log" >&2 || true
done
exit $status
