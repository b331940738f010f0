//! The flamegraph exporter: SVG output is well-formed (checked by a small
//! tag-balance parser), names the live callsites, and the empty case still
//! gives an SVG.
#![cfg(feature = "flamegraph")]

use heapwatch::{Sampling, Snapshot};

#[global_allocator]
static GLOBAL: heapwatch::Tracker<std::alloc::System> =
    heapwatch::Tracker::new(std::alloc::System).with_sampling(Sampling::All);

/// Checks that `svg` is an XML document whose root is `<svg>` and whose
/// elements are balanced. Understands declarations, comments, CDATA and
/// quoted attribute values; that is all inferno and heapwatch emit.
fn check_xml(svg: &str) {
    assert!(
        svg.starts_with("<?xml") || svg.starts_with("<svg"),
        "does not start like XML: {:?}",
        &svg[..svg.len().min(80)]
    );
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut rest = svg;
    while let Some(lt) = rest.find('<') {
        check_entities(&rest[..lt]);
        rest = &rest[lt..];
        let skip = |rest: &mut &str, open: &str, close: &str| -> bool {
            if let Some(r) = rest.strip_prefix(open) {
                let end = r
                    .find(close)
                    .unwrap_or_else(|| panic!("unterminated {open}"));
                *rest = &r[end + close.len()..];
                true
            } else {
                false
            }
        };
        if skip(&mut rest, "<?", "?>")
            || skip(&mut rest, "<!--", "-->")
            || skip(&mut rest, "<![CDATA[", "]]>")
            || skip(&mut rest, "<!DOCTYPE", ">")
        {
            continue;
        }
        // A tag: find its end outside quoted attribute values.
        let mut quote = None;
        let mut end = None;
        for (i, c) in rest.char_indices().skip(1) {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), '<') => panic!("'<' in an attribute value"),
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '<') => panic!("'<' inside a tag: {:?}", &rest[..i]),
                (None, '>') => {
                    end = Some(i);
                    break;
                }
                (None, _) => {}
            }
        }
        let end = end.expect("unterminated tag");
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack
                .pop()
                .unwrap_or_else(|| panic!("</{name}> closes nothing"));
            assert_eq!(open, name.trim(), "mismatched close tag");
        } else {
            let name: String = tag
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '/')
                .collect();
            assert!(!name.is_empty(), "empty tag name");
            if stack.is_empty() {
                roots += 1;
                assert_eq!(name, "svg", "root element");
            }
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
    }
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    assert!(rest.trim().is_empty(), "text after the root");
    assert_eq!(roots, 1, "one root element");
}

/// Every `&` in text starts an entity reference (`&name;` or `&#n;`).
fn check_entities(text: &str) {
    for (i, _) in text.match_indices('&') {
        let after = &text[i + 1..];
        let end = after
            .find(';')
            .unwrap_or_else(|| panic!("bare '&' in text: {text:?}"));
        let name = &after[..end];
        let ok = match name.strip_prefix('#') {
            Some(n) => n.strip_prefix('x').map_or(
                !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()),
                |h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()),
            ),
            None => !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()),
        };
        assert!(ok, "bad entity &{name}; in text");
    }
}

fn edited(snap: &Snapshot, edit: impl FnOnce(&mut serde_json::Value)) -> Snapshot {
    let mut v = serde_json::to_value(snap).expect("snapshot to JSON");
    edit(&mut v);
    Snapshot::from_json(&v.to_string()).expect("edited snapshot parses")
}

#[inline(never)]
fn export_flamegraph_known_site() -> Vec<u8> {
    std::hint::black_box(vec![9u8; 50_000])
}

#[test]
fn flamegraph_shows_live_callsites() {
    let kept = export_flamegraph_known_site();
    let snap = heapwatch::snapshot();
    let site = snap
        .callsites
        .iter()
        .find(|c| {
            c.frames
                .first()
                .is_some_and(|f| f.function.ends_with("export_flamegraph_known_site"))
        })
        .expect("known callsite in the snapshot");
    assert_eq!(site.live_bytes, 50_000);
    let svg = snap.to_flamegraph_svg().expect("flamegraph");
    check_xml(&svg);
    assert!(svg.contains("export_flamegraph_known_site"));
    assert!(svg.contains("heapwatch: in-use bytes"));
    // inferno titles each frame "name (N bytes, P%)".
    assert!(
        svg.contains("50,000 bytes"),
        "the callsite's live bytes appear in its frame's title"
    );
    drop(kept);
}

#[test]
fn flamegraph_without_live_memory_is_still_an_svg() {
    let snap = heapwatch::snapshot();
    let empty = edited(&snap, |v| {
        v["callsites"] = serde_json::json!([]);
        v["unattributed"]["live_bytes"] = 0.into();
    });
    let svg = empty.to_flamegraph_svg().expect("empty flamegraph");
    check_xml(&svg);
    assert!(svg.contains("no live sampled memory"));

    // Callsites whose blocks were all freed count as nothing live.
    let freed = edited(&snap, |v| {
        v["unattributed"]["live_bytes"] = 0.into();
        v["callsites"] = serde_json::json!([
            { "id": "0000000000000001",
              "frames": [ {"function": "app::gone"} ],
              "allocations": 1, "allocated_bytes": 64, "frees": 1, "freed_bytes": 64,
              "live_blocks": 0, "live_bytes": 0, "estimated": false }
        ]);
    });
    let svg = freed.to_flamegraph_svg().expect("freed flamegraph");
    check_xml(&svg);
    assert!(svg.contains("no live sampled memory"));
    assert!(!svg.contains("app::gone"));
}

#[test]
fn flamegraph_sanitizes_names_and_shows_unattributed() {
    let snap = heapwatch::snapshot();
    let s = edited(&snap, |v| {
        v["unattributed"]["live_bytes"] = 700.into();
        v["callsites"] = serde_json::json!([
            { "id": "0000000000000001",
              "frames": [ {"function": "<[u8; 4] as app::Fill>::fill", "file": "src/f.rs", "line": 2},
                          {"function": "app::main", "file": "src/main.rs", "line": 1} ],
              "allocations": 3, "allocated_bytes": 3000, "frees": 0, "freed_bytes": 0,
              "live_blocks": 3, "live_bytes": 3000, "estimated": false },
            { "id": "0000000000000002",
              "frames": [],
              "allocations": 1, "allocated_bytes": 100, "frees": 0, "freed_bytes": 0,
              "live_blocks": 1, "live_bytes": 100, "estimated": false }
        ]);
    });
    let svg = s.to_flamegraph_svg().expect("flamegraph");
    check_xml(&svg);
    assert!(svg.contains("app::main"));
    // `;` would split the frame in two; it is replaced by `,`.
    assert!(svg.contains("&lt;[u8, 4] as app::Fill&gt;::fill"));
    assert!(svg.contains("[unattributed]"));
    assert!(svg.contains("[no frames]"));
}

#[test]
fn xml_checker_rejects_malformed_svg() {
    for bad in [
        "<svg><g></svg>",
        "<svg></svg><svg></svg>",
        "<html></html>",
        "<svg>a & b</svg>",
        "<svg><text x=\"1>a</text></svg>",
        "not xml",
    ] {
        let r = std::panic::catch_unwind(|| check_xml(bad));
        assert!(r.is_err(), "accepted: {bad:?}");
    }
    check_xml("<?xml version=\"1.0\"?>\n<svg a=\"x>y\"><![CDATA[a<b]]><g/>&amp;</svg>\n");
}
