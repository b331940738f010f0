//! `heapwatch top URL [--interval SECS] [--count N] [--top N]`: the top
//! callsites of a running endpoint, refreshed in the terminal.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use heapwatch::Snapshot;

use crate::args::{self, Opt};
use crate::format::{self, Align};
use crate::get::{self, NET_OPTS};
use crate::http::{HttpError, Url};
use crate::{emit, help, stop, Failure};

const COMMAND: &str = "top";

/// Default for `--interval`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Default for `--top`.
const DEFAULT_TOP: usize = 15;
/// Clears the screen and moves the cursor home.
const CLEAR: &str = "\x1b[H\x1b[2J";
/// Between tables when stdout is not a terminal.
const SEPARATOR: &str = "----------------------------------------------------------------\n";

/// Runs `heapwatch top`.
pub fn run(argv: &[String]) -> Result<(), Failure> {
    let mut opts = vec![
        Opt {
            long: "interval",
            short: Some('n'),
            takes_value: true,
        },
        Opt {
            long: "count",
            short: Some('c'),
            takes_value: true,
        },
        Opt {
            long: "top",
            short: None,
            takes_value: true,
        },
    ];
    opts.extend(NET_OPTS);
    let parsed = args::parse(COMMAND, argv, &opts)?;
    if parsed.help {
        return emit(help::TOP);
    }
    args::expect_positional(COMMAND, &parsed, &["URL"])?;
    let interval = match parsed.value("interval") {
        Some(v) => args::seconds(COMMAND, "interval", v, Duration::from_millis(100))?,
        None => DEFAULT_INTERVAL,
    };
    let count = parsed
        .value("count")
        .map(|v| args::positive(COMMAND, "count", v))
        .transpose()?;
    let top = match parsed.value("top") {
        Some(v) => args::positive(COMMAND, "top", v)?,
        None => DEFAULT_TOP,
    };
    let mut url = get::url(COMMAND, &parsed.positional[0])?;
    if url.path() == "/heap" && !url.has_param("top") {
        // Only the rows shown travel.
        url = url.with_param("top", &top.to_string());
    }
    let client = get::client(COMMAND, &parsed)?;
    stop::install();
    let tty = std::io::stdout().is_terminal();

    let mut prev: Option<Snapshot> = None;
    let mut last_frame = String::new();
    let mut last_error: Option<String>;
    let mut refreshes = 0usize;
    loop {
        let started = Instant::now();
        let result = get::fetch(&client, &url);
        if stop::requested() {
            return Ok(());
        }
        let mut out = String::new();
        match result {
            Ok((snap, latency)) => {
                last_frame = render(&url, interval, &snap, prev.as_ref(), latency, top);
                last_error = None;
                if tty {
                    out.push_str(CLEAR);
                } else if refreshes > 0 {
                    out.push_str(SEPARATOR);
                }
                out.push_str(&last_frame);
                prev = Some(snap);
            }
            Err(HttpError::Interrupted) => return Ok(()),
            Err(HttpError::Failed(m)) if prev.is_none() => {
                // Never reached: a wrong URL, port or token, not a blip.
                return Err(Failure::runtime(m));
            }
            Err(HttpError::Failed(m)) => {
                let line = format!(
                    "{}  error: {m} (retrying every {})\n",
                    format::utc_time_now(),
                    format::duration(interval)
                );
                if tty {
                    out.push_str(CLEAR);
                    out.push_str(&last_frame);
                } else {
                    out.push_str(SEPARATOR);
                }
                out.push_str(&line);
                last_error = Some(m);
            }
        }
        emit(&out)?;
        refreshes += 1;
        if count.is_some_and(|c| refreshes >= c) {
            break;
        }
        let next = started + interval;
        while Instant::now() < next {
            if stop::requested() {
                return Ok(());
            }
            std::thread::sleep(
                next.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50)),
            );
        }
    }
    match last_error {
        Some(m) => Err(Failure::runtime(format!("the last refresh failed: {m}"))),
        None => Ok(()),
    }
}

/// One refresh: the status line and the callsite table.
fn render(
    url: &Url,
    interval: Duration,
    snap: &Snapshot,
    prev: Option<&Snapshot>,
    latency: Duration,
    top: usize,
) -> String {
    let t = &snap.totals;
    let mut out = format!(
        "heapwatch top {url}  (every {}; Ctrl-C quits)\n",
        format::duration(interval)
    );
    let live_change = prev.map_or(String::new(), |p| {
        format!(
            " ({})",
            format::signed_size(t.live_bytes as i64 - p.totals.live_bytes as i64)
        )
    });
    let budget = match t.budget_bytes {
        Some(b) if b > 0 => format!(
            "{} ({:.0}% used)",
            format::size(b),
            t.live_bytes as f64 * 100.0 / b as f64
        ),
        Some(b) => format::size(b),
        None => "none".to_string(),
    };
    out.push_str(&format!(
        "{}  live {}{live_change}  peak {}  budget {budget}  latency {}  snapshot {} pid {}\n",
        format::utc_time_now(),
        format::size(t.live_bytes),
        format::size(t.peak_bytes),
        format::duration(latency),
        snap.id,
        snap.process.pid,
    ));
    out.push('\n');
    let before: HashMap<&str, &heapwatch::Callsite> = prev
        .map(|p| p.callsites.iter().map(|c| (c.id.as_str(), c)).collect())
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = snap
        .callsites
        .iter()
        .take(top)
        .map(|c| {
            let (live_d, allocs_d) = match (prev, before.get(c.id.as_str())) {
                (None, _) => (String::new(), String::new()),
                (Some(_), None) => ("new".to_string(), String::new()),
                (Some(_), Some(b)) => (
                    format::signed_size(c.live_bytes as i64 - b.live_bytes as i64),
                    format::signed_count(c.allocations as i64 - b.allocations as i64),
                ),
            };
            let (function, at) = format::site(&c.frames);
            vec![
                format::size(c.live_bytes),
                live_d,
                allocs_d,
                format::keep_tail(&function, 60),
                at,
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str(if snap.mode == "off" {
            "(callsite sampling is off: no callsites)\n"
        } else {
            "(no callsites yet)\n"
        });
        return out;
    }
    out.push_str(&format::table(
        &["live", "Δ refresh", "allocs Δ", "function", "at"],
        &[
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Left,
            Align::Left,
        ],
        &rows,
    ));
    out
}
