//! `heapwatch diff BASE.json NEW.json [--top N]`: what changed between two
//! saved snapshots.

use heapwatch::{Change, Snapshot, SnapshotDiff};

use crate::args::{self, Opt};
use crate::format::{self, Align};
use crate::{emit, help, Failure};

const COMMAND: &str = "diff";

/// Default for `--top`.
const DEFAULT_TOP: usize = 10;

/// Loads a snapshot file, with an error naming the file and the problem.
pub fn load(path: &str) -> Result<Snapshot, Failure> {
    Snapshot::load(path).map_err(|e| match e {
        // Already "reading PATH: reason".
        heapwatch::Error::Io { .. } => Failure::runtime(e.to_string()),
        other => Failure::runtime(format!("{path}: {other}")),
    })
}

/// Runs `heapwatch diff`.
pub fn run(argv: &[String]) -> Result<(), Failure> {
    let opts = [Opt {
        long: "top",
        short: None,
        takes_value: true,
    }];
    let parsed = args::parse(COMMAND, argv, &opts)?;
    if parsed.help {
        return emit(help::DIFF);
    }
    args::expect_positional(COMMAND, &parsed, &["BASE.json", "NEW.json"])?;
    let top = match parsed.value("top") {
        Some(v) => args::positive(COMMAND, "top", v)?,
        None => DEFAULT_TOP,
    };
    let (base_path, new_path) = (&parsed.positional[0], &parsed.positional[1]);
    let base = load(base_path)?;
    let new = load(new_path)?;
    let diff = new.diff(&base);
    emit(&render(base_path, &base, new_path, &new, &diff, top))
}

/// The report: header, totals, then the top growing callsites.
fn render(
    base_path: &str,
    base: &Snapshot,
    new_path: &str,
    new: &Snapshot,
    diff: &SnapshotDiff,
    top: usize,
) -> String {
    let mut out = String::new();
    for (label, path, s) in [("base", base_path, base), ("new ", new_path, new)] {
        out.push_str(&format!(
            "{label}  {path}: snapshot {} of run {}, {}, uptime {}\n",
            s.id,
            s.run_id,
            format::utc(s.taken_at_ms),
            format::duration(std::time::Duration::from_millis(s.uptime_ms)),
        ));
    }
    out.push_str(&format!(
        "interval {}, {}\n",
        format::interval_ms(diff.interval_ms),
        if diff.same_process {
            "same process".to_string()
        } else {
            "different processes (cumulative deltas compare two runs' totals)".to_string()
        }
    ));
    if diff.interval_ms < 0 {
        out.push_str("note: NEW was taken before BASE; are the arguments swapped?\n");
    }
    if diff.callsites_not_compared > 0 {
        let n = diff.callsites_not_compared;
        out.push_str(&format!(
            "note: {n} callsite{} not compared: {} absent from a snapshot that left callsites out (saved with ?top=N)\n",
            if n == 1 { "" } else { "s" },
            if n == 1 { "it is" } else { "each is" },
        ));
    }
    out.push('\n');

    let t = &diff.totals;
    let n = &new.totals;
    let mut rows = vec![
        vec![
            "live bytes".into(),
            format::signed_size(t.live_bytes_delta),
            format::size(n.live_bytes),
        ],
        vec![
            "live blocks".into(),
            format::signed_count(t.live_blocks_delta),
            format::count(n.live_blocks),
        ],
        vec![
            "allocations".into(),
            format::signed_count(t.allocations),
            format::count(n.allocations),
        ],
        vec![
            "bytes allocated".into(),
            format::signed_size(t.allocated_bytes),
            format::size(n.allocated_bytes),
        ],
    ];
    rows.push(vec![
        "RSS".into(),
        t.rss_bytes_delta.map_or("n/a".into(), format::signed_size),
        new.process.rss_bytes.map_or("n/a".into(), format::size),
    ]);
    out.push_str(&format::table(
        &["", "change", "now"],
        &[Align::Left, Align::Right, Align::Right],
        &rows,
    ));
    out.push('\n');

    let growing: Vec<_> = diff
        .callsites
        .iter()
        .filter(|c| c.live_bytes_delta > 0)
        .collect();
    let new_sites = diff
        .callsites
        .iter()
        .filter(|c| c.change == Change::New)
        .count();
    let gone = diff
        .callsites
        .iter()
        .filter(|c| c.change == Change::Gone)
        .count();
    let shown = growing.len().min(top);
    out.push_str(&format!(
        "top {shown} growing callsite{} ({} grew, {new_sites} new, {gone} gone{})\n",
        if shown == 1 { "" } else { "s" },
        growing.len(),
        sampling_note(base, new),
    ));
    if growing.is_empty() {
        out.push_str(if new.mode == "off" {
            "  (callsite sampling is off in NEW: no callsites recorded)\n"
        } else {
            "  (no callsite's live bytes grew)\n"
        });
        return out;
    }
    let rows: Vec<Vec<String>> = growing
        .iter()
        .take(top)
        .map(|c| {
            let (function, at) = format::site(&c.frames);
            vec![
                format::signed_size(c.live_bytes_delta),
                format::size(c.live_bytes),
                format::signed_count(c.allocations),
                format::keep_tail(&function, 72),
                at,
            ]
        })
        .collect();
    out.push_str(&format::table(
        &["live Δ", "live now", "allocs Δ", "function", "at"],
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

/// `; estimates, sampled every 64.0 KiB` and the like.
fn sampling_note(base: &Snapshot, new: &Snapshot) -> String {
    let mut note = format!("; {}", sampling_of(new));
    if base.mode != new.mode || base.sample_interval_bytes != new.sample_interval_bytes {
        note.push_str(&format!(
            "; BASE was sampled differently ({})",
            sampling_of(base)
        ));
    }
    note
}

/// `estimates, sampled every 64.0 KiB`, `exact` or `sampling off`.
fn sampling_of(snap: &Snapshot) -> String {
    match (snap.mode.as_str(), snap.sample_interval_bytes) {
        ("bytes", Some(i)) => format!("estimates, sampled every {}", format::size(i)),
        ("all", _) => "exact".to_string(),
        (mode, _) => format!("sampling {mode}"),
    }
}
