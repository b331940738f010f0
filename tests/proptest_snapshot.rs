//! Bad input never panics: `Snapshot::from_json` on arbitrary text, on every
//! truncation of a real snapshot, with numbers mutated and with deep nesting
//! (an error, never a stack overflow: serde_json's recursion limit stops deep
//! values, and fields it skips are skipped without recursion);
//! `Budget::from_str` on arbitrary text; `Budget` round-trips through
//! `Display` and `FromStr` where an `f64` holds the count exactly.

use std::hint::black_box;
use std::sync::OnceLock;

use heapwatch::{Budget, Sampling, Snapshot, Tracker};
use proptest::prelude::*;

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::Off);

#[inline(never)]
fn some_blocks() -> Vec<Vec<u8>> {
    (0..5)
        .map(|i| black_box(vec![i as u8; 100 * (i + 1)]))
        .collect()
}

/// A real snapshot's JSON, with a few callsites (exact mode only around
/// `some_blocks`, so the document stays small enough to cut at every
/// length).
fn valid_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        heapwatch::set_sampling(Sampling::All);
        // The process's first sample maps the callsite tables, and samples
        // taken on other threads while that is under way go to the
        // unattributed row: let the mapping finish first (libtest's threads
        // allocate too, and were sampled from the line above on).
        while heapwatch::snapshot().tables.callsite_capacity == 0 {
            drop(black_box(vec![0u8; 8]));
            std::thread::yield_now();
        }
        let kept = some_blocks();
        heapwatch::set_sampling(Sampling::Off);
        let mut snap = heapwatch::snapshot();
        snap.truncate_callsites(4);
        assert!(!snap.callsites.is_empty());
        drop(kept);
        serde_json::to_string(&snap).unwrap()
    })
}

/// Byte ranges of the JSON's numbers (outside strings).
fn number_spans(json: &str) -> Vec<(usize, usize)> {
    let b = json.as_bytes();
    let mut spans = Vec::new();
    let (mut i, mut in_str, mut esc) = (0, false, false);
    while i < b.len() {
        let c = b[i];
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            i += 1;
        } else if c == b'"' {
            in_str = true;
            i += 1;
        } else if c == b'-' || c.is_ascii_digit() {
            let start = i;
            while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    spans
}

/// Either `Ok` or an `Err` with a message; a panic fails the test.
fn load(json: &str) -> Result<Snapshot, String> {
    Snapshot::from_json(json).map_err(|e| {
        let msg = e.to_string();
        assert!(!msg.is_empty(), "an error without a message");
        msg
    })
}

#[test]
fn the_valid_snapshot_loads_and_every_truncation_is_an_error() {
    let json = valid_json();
    let snap = load(json).unwrap();
    assert!(!snap.callsites.is_empty());
    let mut cuts = 0;
    for len in (0..json.len()).filter(|&l| json.is_char_boundary(l)) {
        let r = load(&json[..len]);
        assert!(r.is_err(), "a truncation to {len} bytes loaded");
        cuts += 1;
    }
    assert!(cuts > 1000, "the snapshot is suspiciously small: {cuts}");
    eprintln!("{cuts} truncations of a {} byte snapshot", json.len());
}

#[test]
fn foreign_json_says_what_is_wrong() {
    // A byte order mark before a snapshot is ignored (RFC 8259, 8.1).
    let snap = heapwatch::snapshot();
    let with_bom = format!("\u{feff}{}", serde_json::to_string(&snap).unwrap());
    assert_eq!(
        heapwatch::Snapshot::from_json(&with_bom).unwrap().id,
        snap.id
    );

    for (text, says) in [
        (
            "[1,2,3]",
            "expected a JSON object with a \"version\" field, found '['",
        ),
        ("  \"heap\"", "expected a JSON object"),
        ("", "the input is empty"),
        (" \n\t ", "the input is empty"),
        ("\u{feff}[]", "found '['"),
        ("{}", "missing field `version`"),
        ("{\"version\": 99}", "unsupported snapshot version 99"),
        (
            "{\"dhatFileVersion\": 2, \"pps\": []}",
            "missing field `version`",
        ),
    ] {
        let e = load(text).unwrap_err();
        assert!(e.contains(says), "{text:?}: {e}");
    }

    // heapwatch's other documents, saved by mistake, say which they are:
    // a diff (as `Snapshot::diff` serializes it), /heap/history's list and
    // /heap/leaks' report.
    let diff = serde_json::to_string(&snap.diff(&snap)).unwrap();
    let history = r#"{"interval_ms":10000,"capacity":360,"snapshots":[]}"#;
    let leaks = r#"{"window_ms":300000,"span_ms":0,"points":1,"enough_data":false,"process":{}}"#;
    for (text, says) in [
        (diff.as_str(), "this is a diff of two snapshots"),
        (history, "(/heap/history); save /heap instead"),
        (leaks, "a leak report (/heap/leaks)"),
    ] {
        let e = load(text).unwrap_err();
        assert!(e.contains(says), "{e}");
        assert!(e.starts_with("not a heapwatch snapshot: this is"), "{e}");
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // serde_json's recursion limit (128) stops a deep document at once.
    let deep = "[".repeat(10_000);
    let e = serde_json::from_str::<serde_json::Value>(&deep).unwrap_err();
    assert!(e.to_string().contains("recursion limit"), "{e}");

    for depth in [200, 10_000, 100_000] {
        let arrays = "[".repeat(depth);
        let closed_arrays = format!("{arrays}{}", "]".repeat(depth));
        let objects = "{\"a\":".repeat(depth);
        let in_totals = format!("{{\"version\":1,\"totals\":{arrays}");
        let in_callsites = format!("{{\"version\":1,\"callsites\":{closed_arrays}}}");
        for text in [&arrays, &closed_arrays, &objects, &in_totals, &in_callsites] {
            load(text).unwrap_err();
        }
        // Deep nesting in a field the loader skips (serde_json skips values
        // without recursing): it loads or fails, without overflowing.
        let json = valid_json();
        let extra = format!("{{\"zzz\":{closed_arrays},{}", &json[1..]);
        let _ = load(&extra);
        let unclosed = format!("{{\"zzz\":{arrays},{}", &json[1..]);
        load(&unclosed).unwrap_err();
    }
}

const REPLACEMENTS: &[&str] = &[
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "-1",
    "-9223372036854775809",
    "1.5",
    "-0",
    "0.0",
    "1e308",
    "1e400",
    "-1e400",
    "4294967296",
    "1e",
    "--1",
    "0x10",
    "NaN",
    "null",
    "\"7\"",
    "[]",
    "{}",
    "true",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(s in any::<String>()) {
        let _ = load(&s);
    }

    #[test]
    fn json_like_text_never_panics(s in "[\\[\\]{}\":,0-9a-z. -]{0,200}") {
        let _ = load(&s);
        let _ = load(&format!("{{\"version\":1,{s}"));
    }

    #[test]
    fn mutated_numbers_never_panic(which in any::<prop::sample::Index>(),
                                   with in prop::sample::select(REPLACEMENTS),
                                   also in any::<prop::sample::Index>()) {
        let json = valid_json();
        let spans = number_spans(json);
        prop_assert!(spans.len() > 20);
        let (a, b) = spans[which.index(spans.len())];
        let mut mutated = format!("{}{}{}", &json[..a], with, &json[b..]);
        // Sometimes a second number too (offsets moved: recompute).
        if also.index(2) == 1 {
            let spans = number_spans(&mutated);
            let (a, b) = spans[also.index(spans.len())];
            mutated = format!("{}{}{}", &mutated[..a], with, &mutated[b..]);
        }
        if let Ok(snap) = load(&mutated) {
            // Whatever loaded serializes again.
            prop_assert!(serde_json::to_string(&snap).is_ok());
        }
    }

    #[test]
    fn budget_parsing_never_panics(s in any::<String>()) {
        let _ = s.parse::<Budget>();
    }

    #[test]
    fn budget_like_text_never_panics(s in "[ 0-9.]{0,25}[kmgtbiKMGTBI]{0,4} ?") {
        if let Ok(b) = s.parse::<Budget>() {
            prop_assert!(b.is_unlimited() || b.bytes().is_some());
        }
    }

    /// Exact for every byte count an `f64` holds exactly (below 2^53), and
    /// for every whole number of KiB, MiB, GiB below 2^53 units.
    #[test]
    fn budget_display_round_trips(bytes in 0u64..(1 << 53),
                                  shift in prop::sample::select(&[0u32, 10, 20, 30][..]),
                                  units in 0u64..(1 << 33)) {
        for b in [bytes, units << shift] {
            let budget = Budget::from_bytes(b);
            let text = budget.to_string();
            prop_assert_eq!(text.parse::<Budget>().ok(), Some(budget), "{}", text);
        }
        prop_assert_eq!(Budget::UNLIMITED.to_string().parse::<Budget>().ok(), Some(Budget::UNLIMITED));
    }
}

/// Byte counts above 2^53 that are not a multiple of 1 KiB survive
/// `Display` → `FromStr` (once a bug: `FromStr` parsed through `f64`).
#[test]
fn budget_display_round_trips_for_every_u64() {
    for b in [(1u64 << 60) + 1, (1u64 << 53) + 1, u64::MAX - 1] {
        let text = Budget::from_bytes(b).to_string();
        assert_eq!(
            text.parse::<Budget>().ok(),
            Some(Budget::from_bytes(b)),
            "{text}"
        );
    }
}
