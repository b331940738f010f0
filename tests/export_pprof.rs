//! The pprof exporter: decodes the gzipped profile with its own minimal
//! copy of the `perftools.profiles` messages and checks the layout against
//! the snapshot it came from.
#![cfg(feature = "pprof")]

use std::collections::HashSet;
use std::io::Read;

use heapwatch::{PprofKind, Sampling, Snapshot};
use prost::Message;

#[global_allocator]
static GLOBAL: heapwatch::Tracker<std::alloc::System> =
    heapwatch::Tracker::new(std::alloc::System).with_sampling(Sampling::All);

/// Decoder-side messages (field numbers of google/pprof `profile.proto`),
/// declared here independently of the library's encoder.
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

fn decode(gz: &[u8]) -> pb::Profile {
    assert_eq!(gz.get(..2), Some(&[0x1f, 0x8b][..]), "not gzipped");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .expect("gunzip");
    pb::Profile::decode(&raw[..]).expect("protobuf decode")
}

fn s(p: &pb::Profile, i: i64) -> &str {
    let i = usize::try_from(i).expect("negative string index");
    p.string_table.get(i).expect("string index out of range")
}

/// The leaf function's name of a sample.
fn leaf_name<'a>(p: &'a pb::Profile, sample: &pb::Sample) -> &'a str {
    let loc = location(p, sample.location_id[0]);
    let f = function(p, loc.line[0].function_id);
    s(p, f.name)
}

fn location(p: &pb::Profile, id: u64) -> &pb::Location {
    p.location
        .iter()
        .find(|l| l.id == id)
        .unwrap_or_else(|| panic!("no location {id}"))
}

fn function(p: &pb::Profile, id: u64) -> &pb::Function {
    p.function
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no function {id}"))
}

/// Structural rules every profile must follow, whatever its content.
fn check_structure(p: &pb::Profile) {
    assert_eq!(p.string_table.first().map(String::as_str), Some(""));
    let types: Vec<(&str, &str)> = p
        .sample_type
        .iter()
        .map(|t| (s(p, t.r#type), s(p, t.unit)))
        .collect();
    assert_eq!(
        types,
        [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ]
    );
    let pt = p.period_type.as_ref().expect("period_type");
    assert_eq!((s(p, pt.r#type), s(p, pt.unit)), ("space", "bytes"));
    assert_eq!(p.duration_nanos, 0);

    assert_eq!(p.mapping.len(), 1);
    let m = &p.mapping[0];
    assert_eq!(m.id, 1);
    assert!(m.has_functions && m.has_filenames && m.has_line_numbers);

    let loc_ids: Vec<u64> = p.location.iter().map(|l| l.id).collect();
    assert_eq!(loc_ids, (1..=p.location.len() as u64).collect::<Vec<_>>());
    let fn_ids: Vec<u64> = p.function.iter().map(|f| f.id).collect();
    assert_eq!(fn_ids, (1..=p.function.len() as u64).collect::<Vec<_>>());

    let mut fn_keys = HashSet::new();
    for f in &p.function {
        // go tool pprof takes a name equal to its system name for a
        // demangled C++ name and cuts out everything between < and >.
        assert_ne!(f.system_name, f.name, "{}", s(p, f.name));
        assert!(
            fn_keys.insert((f.name, f.filename)),
            "function {} listed twice",
            s(p, f.name)
        );
    }
    let mut loc_keys = HashSet::new();
    for l in &p.location {
        assert_eq!(l.mapping_id, 1);
        assert_eq!(l.line.len(), 1, "symbolized frames: one line each");
        let f = function(p, l.line[0].function_id);
        assert!(!s(p, f.name).is_empty());
        assert!(
            loc_keys.insert((l.line[0].function_id, l.line[0].line)),
            "location for {}:{} listed twice",
            s(p, f.name),
            l.line[0].line
        );
    }
    for sample in &p.sample {
        assert_eq!(sample.value.len(), 4);
        assert!(!sample.location_id.is_empty());
        for &id in &sample.location_id {
            location(p, id);
        }
    }
}

fn profile_with(snap: &Snapshot, edit: impl FnOnce(&mut serde_json::Value)) -> Snapshot {
    let mut v = serde_json::to_value(snap).expect("snapshot to JSON");
    edit(&mut v);
    Snapshot::from_json(&v.to_string()).expect("edited snapshot parses")
}

const BLOCKS: u64 = 8;
const BLOCK_SIZE: usize = 1000;

#[inline(never)]
fn export_pprof_known_site(len: usize) -> Vec<u8> {
    let v = Vec::with_capacity(len);
    std::hint::black_box(v)
}

#[test]
fn pprof_matches_the_snapshot_it_encodes() {
    let mut kept = Vec::with_capacity(BLOCKS as usize);
    for _ in 0..BLOCKS {
        kept.push(export_pprof_known_site(BLOCK_SIZE));
    }
    let snap = heapwatch::snapshot();
    let p = decode(&snap.to_pprof(PprofKind::Heap));
    check_structure(&p);

    assert_eq!(snap.mode, "all");
    assert_eq!(p.period, 1, "every allocation recorded");
    assert_eq!(p.time_nanos as u64, snap.taken_at_ms * 1_000_000);

    let site = snap
        .callsites
        .iter()
        .find(|c| {
            c.frames
                .first()
                .is_some_and(|f| f.function.ends_with("export_pprof_known_site"))
        })
        .unwrap_or_else(|| panic!("known callsite not in snapshot: {:#?}", snap.callsites));
    assert_eq!(site.allocations, BLOCKS);
    assert_eq!(site.allocated_bytes, BLOCKS * BLOCK_SIZE as u64);
    assert_eq!(site.live_blocks, BLOCKS);
    assert_eq!(site.live_bytes, BLOCKS * BLOCK_SIZE as u64);

    let with_site: Vec<&pb::Sample> = p
        .sample
        .iter()
        .filter(|smp| leaf_name(&p, smp).ends_with("export_pprof_known_site"))
        .collect();
    assert_eq!(with_site.len(), 1, "one sample for the one callsite");
    let sample = with_site[0];
    let want: Vec<i64> = [
        site.allocations,
        site.allocated_bytes,
        site.live_blocks,
        site.live_bytes,
    ]
    .iter()
    .map(|&v| v as i64)
    .collect();
    assert_eq!(sample.value, want);

    // The stack is the callsite's frames in order, leaf first.
    let names: Vec<&str> = sample
        .location_id
        .iter()
        .map(|&id| s(&p, function(&p, location(&p, id).line[0].function_id).name))
        .collect();
    let frames: Vec<&str> = site.frames.iter().map(|f| f.function.as_str()).collect();
    assert_eq!(names, frames);
    let leaf = location(&p, sample.location_id[0]);
    assert_eq!(
        leaf.line[0].line,
        i64::from(site.frames[0].line.unwrap_or(0))
    );
    let leaf_fn = function(&p, leaf.line[0].function_id);
    assert_eq!(
        Some(s(&p, leaf_fn.filename)),
        site.frames[0].file.as_deref().or(Some(""))
    );

    // Label `bytes`: the mean block size.
    let label = sample
        .label
        .iter()
        .find(|l| s(&p, l.key) == "bytes")
        .expect("bytes label");
    assert_eq!(label.num, BLOCK_SIZE as i64);

    // Every callsite of the snapshot is one sample (plus unattributed).
    let extra = usize::from(snap.unattributed.allocations > 0);
    assert_eq!(p.sample.len(), snap.callsites.len() + extra);
    drop(kept);
}

#[test]
fn pprof_default_sample_type_follows_kind() {
    let snap = heapwatch::snapshot();
    let heap = decode(&snap.to_pprof(PprofKind::Heap));
    let allocs = decode(&snap.to_pprof(PprofKind::Allocs));
    assert_eq!(s(&heap, heap.default_sample_type), "inuse_space");
    assert_eq!(s(&allocs, allocs.default_sample_type), "alloc_space");
    check_structure(&heap);
    check_structure(&allocs);
    assert_eq!(
        heap.sample, allocs.sample,
        "same data, another default view"
    );
}

#[test]
fn pprof_period_follows_sampling_mode() {
    let snap = heapwatch::snapshot();
    let bytes = profile_with(&snap, |v| {
        v["mode"] = "bytes".into();
        v["sample_interval_bytes"] = 524_288.into();
    });
    assert_eq!(decode(&bytes.to_pprof(PprofKind::Heap)).period, 524_288);
    let off = profile_with(&snap, |v| {
        v["mode"] = "off".into();
        v["sample_interval_bytes"] = serde_json::Value::Null;
        v["callsites"] = serde_json::json!([]);
    });
    let p = decode(&off.to_pprof(PprofKind::Heap));
    assert_eq!(p.period, 0);
    check_structure(&p);
}

#[test]
fn pprof_unattributed_row_is_a_synthetic_sample() {
    let snap = heapwatch::snapshot();
    let edited = profile_with(&snap, |v| {
        v["callsites"] = serde_json::json!([]);
        let u = &mut v["unattributed"];
        u["allocations"] = 10.into();
        u["allocated_bytes"] = 640.into();
        u["frees"] = 4.into();
        u["freed_bytes"] = 256.into();
        u["live_bytes"] = 320.into();
        // One of the 6 unfreed blocks is untracked: not live here.
        u["live_blocks"] = 5.into();
    });
    let p = decode(&edited.to_pprof(PprofKind::Heap));
    check_structure(&p);
    assert_eq!(p.sample.len(), 1);
    let smp = &p.sample[0];
    assert_eq!(smp.location_id, [1]);
    assert_eq!(leaf_name(&p, smp), "[unattributed]");
    assert_eq!(smp.value, [10, 640, 5, 320]);
    assert_eq!(smp.label[0].num, 64);

    // A file saved before `live_blocks` existed: allocations - frees.
    let old = profile_with(&snap, |v| {
        v["callsites"] = serde_json::json!([]);
        let u = v["unattributed"].as_object_mut().unwrap();
        u.insert("allocations".into(), 10.into());
        u.insert("allocated_bytes".into(), 640.into());
        u.insert("frees".into(), 4.into());
        u.insert("live_bytes".into(), 384.into());
        u.remove("live_blocks");
    });
    let p = decode(&old.to_pprof(PprofKind::Heap));
    assert_eq!(p.sample[0].value, [10, 640, 6, 384]);

    let none = profile_with(&snap, |v| {
        v["callsites"] = serde_json::json!([]);
        v["unattributed"]["allocations"] = 0.into();
    });
    let p = decode(&none.to_pprof(PprofKind::Heap));
    assert!(
        p.sample.is_empty(),
        "no unattributed sample without allocations"
    );
    assert!(p.location.is_empty() && p.function.is_empty());
}

#[test]
fn pprof_shared_frames_are_deduplicated() {
    let snap = heapwatch::snapshot();
    let edited = profile_with(&snap, |v| {
        v["unattributed"]["allocations"] = 0.into();
        v["callsites"] = serde_json::json!([
            { "id": "0000000000000001",
              "frames": [ {"function": "app::a", "file": "src/a.rs", "line": 3},
                          {"function": "app::main", "file": "src/main.rs", "line": 10} ],
              "allocations": 2, "allocated_bytes": 200, "frees": 1, "freed_bytes": 100,
              "live_blocks": 1, "live_bytes": 100, "estimated": false },
            { "id": "0000000000000002",
              "frames": [ {"function": "app::a", "file": "src/a.rs", "line": 7},
                          {"function": "app::main", "file": "src/main.rs", "line": 10} ],
              "allocations": 1, "allocated_bytes": 50, "frees": 0, "freed_bytes": 0,
              "live_blocks": 1, "live_bytes": 50, "estimated": false }
        ]);
    });
    let p = decode(&edited.to_pprof(PprofKind::Allocs));
    check_structure(&p);
    assert_eq!(p.location.len(), 3, "a:3, a:7 and main:10");
    assert_eq!(p.function.len(), 2, "app::a and app::main");
    assert_eq!(p.sample[0].location_id, [1, 2]);
    assert_eq!(p.sample[1].location_id, [3, 2]);
    assert_eq!(p.sample[1].value, [1, 50, 1, 50]);
}
