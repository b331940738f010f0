//! The Prometheus exporter: a hand-written validator of the text exposition
//! format 0.0.4 checks every line, then the values are compared with the
//! snapshot's. `promtool check metrics` also runs when it is on PATH.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};

use heapwatch::{BudgetStatus, Sampling, Snapshot};

mod common;

#[global_allocator]
static GLOBAL: heapwatch::Tracker<std::alloc::System> =
    heapwatch::Tracker::new(std::alloc::System).with_sampling(Sampling::All);

/// One sample line, parsed.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// A parsed exposition: families' types and help, and every sample.
#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    help: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(k2, v2)| k2 == k && v2 == v))
            })
            .map(|s| s.value)
    }

    fn get(&self, name: &str) -> f64 {
        self.value(name, &[])
            .unwrap_or_else(|| panic!("no sample {name}"))
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

/// Parses `{k="v",...}` (without the braces); returns the labels.
fn parse_labels(body: &str, line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .unwrap_or_else(|| panic!("label without '=': {line}"));
        let key = &rest[..eq];
        assert!(is_label_name(key), "bad label name {key:?}: {line}");
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("label value not quoted: {line}"));
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?}: {line}"),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) => panic!("raw newline in label value: {line}"),
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value: {line}"),
            }
        };
        assert!(
            !out.iter().any(|(k, _): &(String, String)| k == key),
            "label {key} twice: {line}"
        );
        out.push((key.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
            assert!(!rest.is_empty(), "trailing comma: {line}");
        } else {
            assert!(rest.is_empty(), "junk after label value: {line}");
        }
    }
    out
}

fn parse_value(v: &str, line: &str) -> f64 {
    match v {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => v
            .parse()
            .unwrap_or_else(|_| panic!("value {v:?} is not a float: {line}")),
    }
}

/// Validates `text` line by line and parses it. Panics naming the line on
/// the first violation.
fn validate(text: &str) -> Exposition {
    assert!(text.ends_with('\n'), "exposition must end with a line feed");
    let mut e = Exposition::default();
    // Families in order of appearance, to check each is one group.
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series: HashSet<String> = HashSet::new();
    let mut enter = |name: &str, current: &mut Option<String>| {
        if current.as_deref() != Some(name) {
            if let Some(prev) = current.take() {
                finished.insert(prev);
            }
            assert!(
                !finished.contains(name),
                "lines of {name} are not one group"
            );
            *current = Some(name.to_string());
        }
    };
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("HELP without text: {line}"));
            assert!(is_name(name), "bad metric name: {line}");
            assert!(!help.trim().is_empty(), "empty HELP: {line}");
            enter(name, &mut current);
            assert!(
                !e.types.contains_key(name),
                "HELP after TYPE for {name} (this exporter writes HELP first)"
            );
            assert!(
                e.help.insert(name.to_string(), help.to_string()).is_none(),
                "HELP twice: {line}"
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("TYPE without type: {line}"));
            assert!(is_name(name), "bad metric name: {line}");
            assert!(
                matches!(
                    ty,
                    "gauge" | "counter" | "histogram" | "summary" | "untyped"
                ),
                "bad type: {line}"
            );
            enter(name, &mut current);
            assert!(
                e.types.insert(name.to_string(), ty.to_string()).is_none(),
                "TYPE twice: {line}"
            );
        } else if line.starts_with('#') {
            panic!("unexpected comment: {line}");
        } else {
            let (series_part, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample without value: {line}"));
            let (name, labels) = match series_part.split_once('{') {
                Some((n, l)) => (
                    n,
                    parse_labels(
                        l.strip_suffix('}')
                            .unwrap_or_else(|| panic!("unclosed labels: {line}")),
                        line,
                    ),
                ),
                None => (series_part, Vec::new()),
            };
            assert!(is_name(name), "bad metric name: {line}");
            enter(name, &mut current);
            let ty = e
                .types
                .get(name)
                .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
            if ty == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            }
            let value = parse_value(value, line);
            if ty == "counter" {
                assert!(value >= 0.0, "negative counter: {line}");
            }
            assert!(
                series.insert(series_part.to_string()),
                "series twice: {line}"
            );
            e.samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
    }
    for name in e.types.keys() {
        assert!(name.starts_with("heapwatch_"), "{name} lacks the prefix");
        assert!(e.help.contains_key(name), "{name} has no HELP");
        if e.types[name] != "counter" {
            assert!(!name.ends_with("_total"), "{name}: _total on a non-counter");
        }
    }
    e
}

/// Runs `promtool check metrics` when it is installed.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            println!("note: promtool not runnable ({e}); skipped `promtool check metrics`");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- input ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn edited(snap: &Snapshot, edit: impl FnOnce(&mut serde_json::Value)) -> Snapshot {
    let mut v = serde_json::to_value(snap).expect("snapshot to JSON");
    edit(&mut v);
    Snapshot::from_json(&v.to_string()).expect("edited snapshot parses")
}

fn budget_from(json: serde_json::Value) -> BudgetStatus {
    serde_json::from_value(json).expect("budget status parses")
}

/// Families every exposition has (a sample may be absent when unknown).
const ALWAYS: &[(&str, &str)] = &[
    ("heapwatch_info", "gauge"),
    ("heapwatch_live_bytes", "gauge"),
    ("heapwatch_live_blocks", "gauge"),
    ("heapwatch_peak_bytes", "gauge"),
    ("heapwatch_allocations_total", "counter"),
    ("heapwatch_frees_total", "counter"),
    ("heapwatch_reallocs_total", "counter"),
    ("heapwatch_allocated_bytes_total", "counter"),
    ("heapwatch_freed_bytes_total", "counter"),
    ("heapwatch_budget_bytes", "gauge"),
    ("heapwatch_budget_denials_total", "counter"),
    ("heapwatch_budget_overages_total", "counter"),
    ("heapwatch_budget_level", "gauge"),
    ("heapwatch_budget_env_var_invalid", "gauge"),
    ("heapwatch_budget_threshold_crossings_total", "counter"),
    ("heapwatch_overhead_bytes", "gauge"),
    ("heapwatch_overhead_blocks", "gauge"),
    ("heapwatch_callsites", "gauge"),
    ("heapwatch_shard_overflows_total", "counter"),
    ("heapwatch_shards_used", "gauge"),
    ("heapwatch_unattributed_allocations_total", "counter"),
    ("heapwatch_dropped_samples_total", "counter"),
    ("heapwatch_process_resident_memory_bytes", "gauge"),
];

const JEMALLOC: &[&str] = &[
    "heapwatch_jemalloc_allocated_bytes",
    "heapwatch_jemalloc_active_bytes",
    "heapwatch_jemalloc_resident_bytes",
    "heapwatch_jemalloc_mapped_bytes",
    "heapwatch_jemalloc_retained_bytes",
];

#[inline(never)]
fn export_prometheus_known_site() -> Vec<u8> {
    std::hint::black_box(vec![3u8; 12_345])
}

#[test]
fn prometheus_exposition_is_valid_and_matches_the_snapshot() {
    let kept = export_prometheus_known_site();
    let snap = heapwatch::snapshot();
    let budget = heapwatch::budget_status();
    let mut text = String::new();
    heapwatch::render_prometheus(&snap, &budget, &mut text);
    let e = validate(&text);
    for (name, ty) in ALWAYS {
        assert_eq!(e.types.get(*name).map(String::as_str), Some(*ty), "{name}");
    }

    let t = &snap.totals;
    // The kept block is live at its callsite (exact mode). The process-wide
    // `live_bytes` is no lower bound here: other tests of this binary
    // allocate and free on other threads while the totals are summed, and
    // such a reading is only within the bound `Stats` documents.
    assert_eq!(
        common::figures_at(&snap, "export_prometheus_known_site").3,
        12_345
    );
    assert_eq!(e.get("heapwatch_live_bytes"), t.live_bytes as f64);
    assert_eq!(e.get("heapwatch_live_blocks"), t.live_blocks as f64);
    assert_eq!(e.get("heapwatch_peak_bytes"), t.peak_bytes as f64);
    assert_eq!(e.get("heapwatch_allocations_total"), t.allocations as f64);
    assert_eq!(e.get("heapwatch_frees_total"), t.frees as f64);
    assert_eq!(e.get("heapwatch_reallocs_total"), t.reallocs as f64);
    assert_eq!(
        e.get("heapwatch_allocated_bytes_total"),
        t.allocated_bytes as f64
    );
    assert_eq!(e.get("heapwatch_freed_bytes_total"), t.freed_bytes as f64);
    assert_eq!(e.get("heapwatch_overhead_bytes"), t.overhead_bytes as f64);
    assert_eq!(e.get("heapwatch_overhead_blocks"), t.overhead_blocks as f64);
    assert_eq!(
        e.get("heapwatch_callsites"),
        snap.tables.callsites_used as f64
    );
    assert!(e.get("heapwatch_callsites") >= 1.0);
    assert_eq!(
        e.get("heapwatch_shard_overflows_total"),
        snap.tables.shard_overflows as f64
    );
    assert_eq!(
        e.get("heapwatch_shards_used"),
        snap.tables.shards_used as f64
    );
    assert!(e.get("heapwatch_shards_used") >= 1.0);
    assert_eq!(
        e.get("heapwatch_unattributed_allocations_total"),
        snap.unattributed.allocations as f64
    );
    for (reason, n) in [
        (
            "callsite_table_full",
            snap.unattributed.dropped_callsite_table_full,
        ),
        ("live_table_full", snap.unattributed.dropped_live_table_full),
        ("no_tables", snap.unattributed.dropped_no_tables),
    ] {
        assert_eq!(
            e.value("heapwatch_dropped_samples_total", &[("reason", reason)]),
            Some(n as f64)
        );
    }
    assert_eq!(
        e.value(
            "heapwatch_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("mode", "all"),
                ("unwinder", &snap.unwinder),
                ("run_id", &snap.run_id),
            ]
        ),
        Some(1.0)
    );
    // The default budget is unlimited: HELP and TYPE but no sample.
    assert!(budget.budget.is_unlimited());
    assert_eq!(e.value("heapwatch_budget_bytes", &[]), None);
    assert_eq!(e.get("heapwatch_budget_level"), 0.0);
    assert_eq!(
        e.get("heapwatch_budget_env_var_invalid"),
        f64::from(u8::from(budget.env_var_invalid))
    );
    match snap.process.rss_bytes {
        Some(rss) => assert_eq!(e.get("heapwatch_process_resident_memory_bytes"), rss as f64),
        None => assert_eq!(
            e.value("heapwatch_process_resident_memory_bytes", &[]),
            None
        ),
    }
    // The inner allocator is System: no jemalloc figures.
    assert!(snap.allocator.is_none());
    for name in JEMALLOC {
        assert!(!e.types.contains_key(*name), "{name} without jemalloc");
    }
    promtool_check(&text);

    // to_prometheus is render_prometheus with the budget's state now.
    let via_method = validate(&snap.to_prometheus());
    assert_eq!(
        via_method.get("heapwatch_live_bytes"),
        e.get("heapwatch_live_bytes")
    );
    drop(kept);
}

#[test]
fn prometheus_budget_figures_come_from_the_budget_status() {
    let snap = heapwatch::snapshot();
    let budget = budget_from(serde_json::json!({
        "budget": 1_048_576,
        "policy": "warn",
        "thresholds": { "warning_percent": 80, "critical_percent": 95 },
        "reserved_bytes": 1_000_000,
        "peak_bytes": 1_100_000,
        "denials": 4,
        "overages": 9,
        "level": "critical",
        "warning_crossings": 3,
        "critical_crossings": 2,
        "exceeded_crossings": 1,
        "env_var_invalid": true
    }));
    let mut text = String::new();
    heapwatch::render_prometheus(&snap, &budget, &mut text);
    let e = validate(&text);
    assert_eq!(e.get("heapwatch_budget_bytes"), 1_048_576.0);
    assert_eq!(e.get("heapwatch_budget_denials_total"), 4.0);
    assert_eq!(e.get("heapwatch_budget_overages_total"), 9.0);
    assert_eq!(e.get("heapwatch_budget_level"), 2.0);
    assert_eq!(e.get("heapwatch_budget_env_var_invalid"), 1.0);
    for (level, n) in [("warning", 3.0), ("critical", 2.0), ("exceeded", 1.0)] {
        assert_eq!(
            e.value(
                "heapwatch_budget_threshold_crossings_total",
                &[("level", level)]
            ),
            Some(n)
        );
    }
    for (level, v) in [("normal", 0.0), ("warning", 1.0), ("exceeded", 3.0)] {
        let b = budget_from(serde_json::json!({
            "budget": null, "policy": "refuse",
            "thresholds": { "warning_percent": 80, "critical_percent": 95 },
            "reserved_bytes": 0, "peak_bytes": 0, "denials": 0, "overages": 0,
            "level": level, "warning_crossings": 0, "critical_crossings": 0,
            "exceeded_crossings": 0, "env_var_invalid": false
        }));
        let mut text = String::new();
        heapwatch::render_prometheus(&snap, &b, &mut text);
        let e = validate(&text);
        assert_eq!(e.get("heapwatch_budget_level"), v, "{level}");
        assert_eq!(e.value("heapwatch_budget_bytes", &[]), None);
        assert_eq!(e.get("heapwatch_budget_env_var_invalid"), 0.0);
    }
    promtool_check(&text);
}

#[test]
fn prometheus_allocator_process_and_escaping() {
    let snap = heapwatch::snapshot();
    let weird = "run \"7\" \\ back\nslash";
    let s = edited(&snap, |v| {
        v["run_id"] = weird.into();
        v["allocator"] = serde_json::json!({
            "name": "jemalloc", "allocated": 1000, "active": 2000,
            "resident": 3000, "mapped": 4000, "retained": 5000
        });
        v["process"]["rss_bytes"] = serde_json::Value::Null;
    });
    let mut text = String::new();
    heapwatch::render_prometheus(&s, &heapwatch::budget_status(), &mut text);
    let e = validate(&text);
    let info = e
        .samples
        .iter()
        .find(|x| x.name == "heapwatch_info")
        .expect("info");
    assert!(
        info.labels.iter().any(|(k, v)| k == "run_id" && v == weird),
        "escaped label value must parse back: {:?}",
        info.labels
    );
    for (name, v) in JEMALLOC
        .iter()
        .zip([1000.0, 2000.0, 3000.0, 4000.0, 5000.0])
    {
        assert_eq!(e.types.get(*name).map(String::as_str), Some("gauge"));
        assert_eq!(e.get(name), v, "{name}");
    }
    assert_eq!(
        e.types
            .get("heapwatch_process_resident_memory_bytes")
            .map(String::as_str),
        Some("gauge")
    );
    assert_eq!(
        e.value("heapwatch_process_resident_memory_bytes", &[]),
        None
    );
    promtool_check(&text);
}

#[test]
fn validator_rejects_malformed_expositions() {
    let bad = [
        "heapwatch_x 1\n",                                                   // no TYPE
        "# HELP heapwatch_x h\n# TYPE heapwatch_x counter\nheapwatch_x 1\n", // counter without _total
        "# HELP heapwatch_x h\n# TYPE heapwatch_x gauge\nheapwatch_x one\n", // value
        "# HELP heapwatch_x h\n# TYPE heapwatch_x gauge\nheapwatch_x{a=\"\\q\"} 1\n", // escape
        "# HELP heapwatch_x h\n# TYPE heapwatch_x gauge\nheapwatch_x 1\nheapwatch_x 2\n", // duplicate
        "# HELP 1x h\n# TYPE 1x gauge\n1x 1\n",                                           // name
    ];
    for text in bad {
        let r = std::panic::catch_unwind(|| validate(text));
        assert!(r.is_err(), "accepted: {text:?}");
    }
    validate("# HELP heapwatch_x h\n# TYPE heapwatch_x gauge\nheapwatch_x{a=\"\\\"\"} 1\n");
}
