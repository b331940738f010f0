//! The `--help` texts.

/// `heapwatch --help`.
pub const MAIN: &str = "\
heapwatch: inspect heap snapshots from the heapwatch crate

Usage:
  heapwatch diff BASE.json NEW.json [--top N]   what grew between two saved snapshots
  heapwatch get URL [-o FILE]                   save a snapshot from a running endpoint
  heapwatch top URL [--interval SECS] [--count N] [--top N]
                                                watch the top callsites live
  heapwatch help COMMAND                        help for one command

URL is the endpoint started by heapwatch::serve, e.g. http://127.0.0.1:41234
(http only; the path defaults to /heap).

Exit codes:
  0  success
  1  runtime error: endpoint unreachable, HTTP error status, timeout,
     unreadable or corrupt snapshot file
  2  usage error: unknown command or option, missing or bad argument

Errors are written to stderr, prefixed 'heapwatch: '.
";

/// `heapwatch diff --help`.
pub const DIFF: &str = "\
heapwatch diff: what changed between two saved snapshots

Usage:
  heapwatch diff BASE.json NEW.json [--top N]

Loads both files (saved with 'heapwatch get -o', Snapshot::save, or
curl .../heap), computes NEW minus BASE, and prints the interval, whether
both come from the same process, the change in live bytes, live blocks,
allocations, bytes allocated and RSS, then the callsites whose live bytes
grew most: live change, live now, allocations made in between, and the
function and file:line that allocated.

Callsites are matched by their symbolized frames, so snapshots from two runs
of the same binary compare too.

Options:
  --top N      growing callsites to list (default 10)
  -h, --help   this help

Exit codes: 0 success; 1 a file is missing, unreadable or not a snapshot;
2 usage error.
";

/// `heapwatch get --help`.
pub const GET: &str = "\
heapwatch get: fetch a snapshot from a running heapwatch endpoint

Usage:
  heapwatch get URL [-o FILE] [--timeout SECS] [--token TOKEN]

GETs URL (path /heap when the URL has none; a query such as ?top=20 or
?sort=allocations is passed on), checks that the answer is a heapwatch
snapshot, and writes it as pretty JSON to FILE, or to stdout.

Options:
  -o, --output FILE   write to FILE ('-' for stdout) and print a summary
  --timeout SECS      give up after SECS for connect + response (default 5)
  --token TOKEN       send 'Authorization: Bearer TOKEN'
                      (default: the HEAPWATCH_TOKEN environment variable)
  -h, --help          this help

Exit codes: 0 success; 1 unreachable, timed out, HTTP error status (401
without the right token, 404, ...), not a snapshot, or FILE not writable;
2 usage error.
";

/// `heapwatch top --help`.
pub const TOP: &str = "\
heapwatch top: watch the top callsites of a running heapwatch endpoint

Usage:
  heapwatch top URL [--interval SECS] [--count N] [--top N]
                    [--timeout SECS] [--token TOKEN]

Fetches a snapshot every SECS and shows a status line (time, live bytes and
their change, peak, budget, request latency) and the callsites with the most
live bytes, with their change since the previous refresh. On a terminal the
screen is redrawn; otherwise successive tables are separated by a line.
A fetch that fails after the first success prints an error line and the
next refresh tries again; a first fetch that fails ends the command.

Options:
  -n, --interval SECS   seconds between refreshes (default 2, at least 0.1)
  -c, --count N         stop after N refreshes (default: until Ctrl-C)
  --top N               callsites to show (default 15)
  --timeout SECS        per-request deadline (default 5)
  --token TOKEN         bearer token (default: HEAPWATCH_TOKEN)
  -h, --help            this help

Exit codes: 0 on Ctrl-C or after --count refreshes; 1 when the first fetch
fails, or the last of --count refreshes failed; 2 usage error.
";

/// The help of `command`, if it exists.
pub fn for_command(command: &str) -> Option<&'static str> {
    match command {
        "diff" => Some(DIFF),
        "get" => Some(GET),
        "top" => Some(TOP),
        _ => None,
    }
}
