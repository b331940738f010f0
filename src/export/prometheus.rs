//! Prometheus text exposition format (version 0.0.4): every figure of a
//! snapshot and the budget as `heapwatch_*` metrics. Needs no feature and no
//! dependency.

use std::fmt::{self, Write as _};

use crate::budget::{BudgetLevel, BudgetStatus};
use crate::snapshot::Snapshot;

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

struct Out<'a>(&'a mut String);

impl Out<'_> {
    /// `# HELP` and `# TYPE` lines of a metric family.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.0.push_str("# HELP ");
        self.0.push_str(name);
        self.0.push(' ');
        escape_help(help, self.0);
        self.0.push_str("\n# TYPE ");
        self.0.push_str(name);
        self.0.push(' ');
        self.0.push_str(kind.name());
        self.0.push('\n');
    }

    /// One sample line.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                escape_label_value(v, self.0);
                self.0.push('"');
            }
            self.0.push('}');
        }
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes `# HELP` text: backslash and line feed.
fn escape_help(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn level_value(level: BudgetLevel) -> u8 {
    level as u8
}

/// Appends the Prometheus text exposition (format 0.0.4) of `snapshot` and
/// `budget` to `out`.
///
/// Totals, table use, allocator and process figures come from `snapshot`;
/// the budget's figures (`heapwatch_budget_*`) from `budget`. Every family
/// has `# HELP` and `# TYPE` lines; counters end in `_total`; units are in
/// the names. Families whose value is unknown keep their `# HELP` and
/// `# TYPE` lines but have no sample: `heapwatch_budget_bytes` when the
/// budget is unlimited, `heapwatch_process_resident_memory_bytes` when the
/// OS did not say. The `heapwatch_jemalloc_*` families appear only when
/// the snapshot has jemalloc's statistics. The full list is in
/// `docs/FORMATS.md`.
///
/// # Example
///
/// ```
/// let snap = heapwatch::snapshot();
/// let mut text = String::new();
/// heapwatch::render_prometheus(&snap, &heapwatch::budget_status(), &mut text);
/// assert!(text.contains("# TYPE heapwatch_live_bytes gauge\n"));
/// ```
pub fn render_prometheus(snapshot: &Snapshot, budget: &BudgetStatus, out: &mut String) {
    crate::budget::never_refused(|| render(snapshot, budget, out));
}

fn render(snapshot: &Snapshot, budget: &BudgetStatus, out: &mut String) {
    use Kind::{Counter, Gauge};
    let t = &snapshot.totals;
    let u = &snapshot.unattributed;
    let mut o = Out(out);

    o.family(
        "heapwatch_info",
        Gauge,
        "Always 1; labels describe the heapwatch build and the snapshot's sampling.",
    );
    o.sample(
        "heapwatch_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("mode", &snapshot.mode),
            ("unwinder", &snapshot.unwinder),
            ("run_id", &snapshot.run_id),
        ],
        1,
    );
    o.single(
        "heapwatch_live_bytes",
        Gauge,
        "Bytes in blocks the program holds now.",
        t.live_bytes,
    );
    o.single(
        "heapwatch_live_blocks",
        Gauge,
        "Blocks the program holds now.",
        t.live_blocks,
    );
    o.single(
        "heapwatch_peak_bytes",
        Gauge,
        "Highest reservation seen (never below the true peak of live bytes).",
        t.peak_bytes,
    );
    o.single(
        "heapwatch_allocations_total",
        Counter,
        "Successful alloc and alloc_zeroed calls.",
        t.allocations,
    );
    o.single("heapwatch_frees_total", Counter, "dealloc calls.", t.frees);
    o.single(
        "heapwatch_unwinder_fallbacks_total",
        Counter,
        "Stacks the CFI unwinder could not walk, captured by backtrace instead.",
        snapshot.unwinder_fallbacks,
    );
    o.single(
        "heapwatch_reallocs_total",
        Counter,
        "Successful realloc calls.",
        t.reallocs,
    );
    o.single(
        "heapwatch_allocated_bytes_total",
        Counter,
        "Bytes handed out (allocations plus the new size of reallocations).",
        t.allocated_bytes,
    );
    o.single(
        "heapwatch_freed_bytes_total",
        Counter,
        "Bytes returned (frees plus the old size of reallocations).",
        t.freed_bytes,
    );

    o.family(
        "heapwatch_budget_bytes",
        Gauge,
        "The memory budget in bytes (no sample when unlimited).",
    );
    if let Some(b) = budget.budget.bytes() {
        o.sample("heapwatch_budget_bytes", &[], b);
    }
    o.single(
        "heapwatch_budget_denials_total",
        Counter,
        "Allocations refused because they would have exceeded the budget.",
        budget.denials,
    );
    o.single(
        "heapwatch_budget_overages_total",
        Counter,
        "Allocations let through over the budget (all under policy warn; under refuse, those never refused: panics, snapshots handed to the program, budget callbacks).",
        budget.overages,
    );
    o.single(
        "heapwatch_budget_level",
        Gauge,
        "Budget level: 0 normal, 1 warning, 2 critical, 3 exceeded.",
        level_value(budget.level),
    );
    o.single(
        "heapwatch_budget_env_var_invalid",
        Gauge,
        "1 when HEAPWATCH_MAX_MEMORY_MB was set but could not be parsed, and was ignored (the tracker's own budget applies); else 0.",
        u8::from(budget.env_var_invalid),
    );
    o.family(
        "heapwatch_budget_threshold_crossings_total",
        Counter,
        "Times the reservation rose to a budget level from below.",
    );
    for (level, n) in [
        ("warning", budget.warning_crossings),
        ("critical", budget.critical_crossings),
        ("exceeded", budget.exceeded_crossings),
    ] {
        o.sample(
            "heapwatch_budget_threshold_crossings_total",
            &[("level", level)],
            n,
        );
    }

    o.single(
        "heapwatch_overhead_bytes",
        Gauge,
        "Bytes heapwatch itself holds (heap and static tables).",
        t.overhead_bytes,
    );
    o.single(
        "heapwatch_overhead_blocks",
        Gauge,
        "Heap blocks heapwatch itself holds.",
        t.overhead_blocks,
    );
    o.single(
        "heapwatch_callsites",
        Gauge,
        "Slots in use in the callsite table (distinct stacks of return addresses; /heap merges those with the same frames).",
        snapshot.tables.callsites_used,
    );
    o.single(
        "heapwatch_shard_overflows_total",
        Counter,
        "Threads that found every counter shard leased and shared the fallback shard (exact, slower).",
        snapshot.tables.shard_overflows,
    );
    o.single(
        "heapwatch_shards_used",
        Gauge,
        "Counter shards ever leased (about the most threads alive at once); past heapwatch::SHARDS, threads share a fallback shard.",
        snapshot.tables.shards_used,
    );
    o.single(
        "heapwatch_unattributed_allocations_total",
        Counter,
        "Sampled allocations (estimated) with no callsite row.",
        u.allocations,
    );
    o.family(
        "heapwatch_dropped_samples_total",
        Counter,
        "Samples that could not be fully recorded, by reason.",
    );
    for (reason, n) in [
        ("callsite_table_full", u.dropped_callsite_table_full),
        ("live_table_full", u.dropped_live_table_full),
        ("no_tables", u.dropped_no_tables),
    ] {
        o.sample("heapwatch_dropped_samples_total", &[("reason", reason)], n);
    }

    if let Some(a) = &snapshot.allocator {
        for (name, help, v) in [
            (
                "heapwatch_jemalloc_allocated_bytes",
                "jemalloc stats.allocated: bytes in allocations.",
                a.allocated,
            ),
            (
                "heapwatch_jemalloc_active_bytes",
                "jemalloc stats.active: bytes in active pages.",
                a.active,
            ),
            (
                "heapwatch_jemalloc_resident_bytes",
                "jemalloc stats.resident: bytes in physically resident pages.",
                a.resident,
            ),
            (
                "heapwatch_jemalloc_mapped_bytes",
                "jemalloc stats.mapped: bytes in active extents.",
                a.mapped,
            ),
            (
                "heapwatch_jemalloc_retained_bytes",
                "jemalloc stats.retained: bytes retained, not returned to the OS.",
                a.retained,
            ),
        ] {
            o.single(name, Gauge, help, v);
        }
    }

    o.family(
        "heapwatch_process_resident_memory_bytes",
        Gauge,
        "Resident set size of the process (no sample when unknown).",
    );
    if let Some(rss) = snapshot.process.rss_bytes {
        o.sample("heapwatch_process_resident_memory_bytes", &[], rss);
    }
}

impl Snapshot {
    /// The Prometheus text exposition (format 0.0.4) of this snapshot and
    /// the budget's state now ([`budget_status`](crate::budget_status)).
    /// See [`render_prometheus`] for what it holds.
    ///
    /// # Example
    ///
    /// ```
    /// #[global_allocator]
    /// static GLOBAL: heapwatch::Tracker<std::alloc::System> =
    ///     heapwatch::Tracker::new(std::alloc::System);
    ///
    /// fn main() {
    ///     let kept = vec![1u8; 4096];
    ///     let text = heapwatch::snapshot().to_prometheus();
    ///     let live: u64 = text
    ///         .lines()
    ///         .find_map(|l| l.strip_prefix("heapwatch_live_bytes "))
    ///         .unwrap()
    ///         .parse()
    ///         .unwrap();
    ///     assert!(live >= 4096);
    ///     assert!(text.contains("# TYPE heapwatch_allocations_total counter\n"));
    ///     drop(kept);
    /// }
    /// ```
    pub fn to_prometheus(&self) -> String {
        crate::budget::never_refused(|| {
            let mut out = String::with_capacity(4096);
            render(self, &crate::budget::budget_status(), &mut out);
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        let mut s = String::new();
        escape_label_value("a\\b\"c\nd", &mut s);
        assert_eq!(s, r#"a\\b\"c\nd"#);
    }

    #[test]
    fn escapes_help_but_not_quotes() {
        let mut s = String::new();
        escape_help("x\\y\n\"z\"", &mut s);
        assert_eq!(s, r#"x\\y\n"z""#);
    }

    #[test]
    fn labelled_sample_line() {
        let mut s = String::new();
        Out(&mut s).sample("m_total", &[("a", "1"), ("b", "q\"")], 7);
        assert_eq!(s, "m_total{a=\"1\",b=\"q\\\"\"} 7\n");
    }

    #[test]
    fn levels_are_numbered() {
        assert_eq!(level_value(BudgetLevel::Normal), 0);
        assert_eq!(level_value(BudgetLevel::Warning), 1);
        assert_eq!(level_value(BudgetLevel::Critical), 2);
        assert_eq!(level_value(BudgetLevel::Exceeded), 3);
    }
}
