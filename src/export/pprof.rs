//! pprof export: a snapshot as a gzipped `perftools.profiles.Profile`
//! (google/pprof `proto/profile.proto`), laid out as Go's heap profile so
//! `go tool pprof` reads it with the usual `-sample_index` names.
//!
//! The messages are declared by hand with `prost` (no `protoc` at build
//! time); their field numbers are those of `profile.proto`.

use std::collections::HashMap;
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use super::{NO_FRAMES, UNATTRIBUTED_FRAME};
use crate::snapshot::Snapshot;
use crate::symbolize::Frame;

/// Which view a pprof profile opens with (its `default_sample_type`). Both
/// carry the same four sample types; only the default differs.
///
/// # Example
///
/// ```
/// #[global_allocator]
/// static GLOBAL: heapwatch::Tracker<std::alloc::System> =
///     heapwatch::Tracker::new(std::alloc::System);
///
/// fn main() {
///     heapwatch::set_sampling(heapwatch::Sampling::All);
///     let kept = vec![7u8; 10_000];
///     let gz = heapwatch::snapshot().to_pprof(heapwatch::PprofKind::Heap);
///     // gzip magic: pprof files are gzipped protobufs.
///     assert_eq!(&gz[..2], &[0x1f, 0x8b]);
///     drop(kept);
/// }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PprofKind {
    /// Opens on `inuse_space`: what is live now (`go tool pprof`'s heap
    /// profile).
    #[default]
    Heap,
    /// Opens on `alloc_space`: everything allocated since the start
    /// (Go's allocs profile).
    Allocs,
}

impl PprofKind {
    fn default_sample_type(self) -> &'static str {
        match self {
            PprofKind::Heap => "inuse_space",
            PprofKind::Allocs => "alloc_space",
        }
    }
}

/// `perftools.profiles` messages, with the field numbers of
/// `profile.proto`. Fields heapwatch never sets are left out (a decoder
/// skips unknown fields; an encoder need not write default ones).
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Profile {
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
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub(super) struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub(super) struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub(super) struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub(super) struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub(super) struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// The id of the one mapping every location belongs to.
const MAPPING_ID: u64 = 1;

/// Builds the profile: interns strings, functions and locations.
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<proto::Function>,
    function_ids: HashMap<(String, Option<String>), u64>,
    locations: Vec<proto::Location>,
    location_ids: HashMap<Frame, u64>,
    samples: Vec<proto::Sample>,
    bytes_key: i64,
    bytes_unit: i64,
}

impl Builder {
    fn new() -> Builder {
        let mut b = Builder {
            strings: Vec::new(),
            string_ids: HashMap::new(),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
            samples: Vec::new(),
            bytes_key: 0,
            bytes_unit: 0,
        };
        // string_table[0] must be "".
        b.string("");
        b.bytes_key = b.string("bytes");
        b.bytes_unit = b.bytes_key;
        b
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), i);
        i
    }

    fn value_type(&mut self, ty: &str, unit: &str) -> proto::ValueType {
        proto::ValueType {
            r#type: self.string(ty),
            unit: self.string(unit),
        }
    }

    /// The id of the function `(name, file)`, sequential from 1.
    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let key = (name.to_string(), file.map(str::to_string));
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let name = self.string(name);
        let filename = file.map_or(0, |f| self.string(f));
        self.functions.push(proto::Function {
            id,
            name,
            // Empty: heapwatch keeps demangled names only. A system name
            // equal to the name makes `go tool pprof` take the name for a
            // demangled C++ one and cut out everything between `<` and `>`
            // (`<Box<F> as FnOnce<()>>::call_once` becomes `::call_once`).
            system_name: 0,
            filename,
            start_line: 0,
        });
        self.function_ids.insert(key, id);
        id
    }

    /// The id of the location of `frame`, sequential from 1. Frames are
    /// already symbolized (inlined calls are separate frames), so each
    /// location has one line and no address.
    fn location(&mut self, frame: &Frame) -> u64 {
        if let Some(&id) = self.location_ids.get(frame) {
            return id;
        }
        let function_id = self.function(&frame.function, frame.file.as_deref());
        let id = self.locations.len() as u64 + 1;
        self.locations.push(proto::Location {
            id,
            mapping_id: MAPPING_ID,
            address: 0,
            line: vec![proto::Line {
                function_id,
                line: i64::from(frame.line.unwrap_or(0)),
            }],
            is_folded: false,
        });
        self.location_ids.insert(frame.clone(), id);
        id
    }

    /// Adds a sample: `frames` innermost first (the leaf is
    /// `location_id[0]`, as pprof wants).
    fn sample(&mut self, frames: &[Frame], values: [u64; 4]) {
        let location_id = frames.iter().map(|f| self.location(f)).collect();
        let [allocations, allocated_bytes, _, _] = values;
        // The mean block size; no label when nothing was allocated.
        let label = match allocated_bytes.checked_div(allocations) {
            Some(mean) => vec![proto::Label {
                key: self.bytes_key,
                str: 0,
                num: to_i64(mean),
                num_unit: self.bytes_unit,
            }],
            None => Vec::new(),
        };
        self.samples.push(proto::Sample {
            location_id,
            value: values.iter().map(|&v| to_i64(v)).collect(),
            label,
        });
    }
}

/// Protobuf int64 fields hold the figures; saturate rather than wrap.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn synthetic(name: &str) -> Frame {
    Frame {
        function: name.to_string(),
        file: None,
        line: None,
    }
}

impl Snapshot {
    /// Encodes the snapshot as a gzipped pprof profile
    /// (`perftools.profiles.Profile`), for `go tool pprof` and other pprof
    /// readers.
    ///
    /// The layout follows Go's heap profile: sample types
    /// `alloc_objects/count`, `alloc_space/bytes`, `inuse_objects/count`,
    /// `inuse_space/bytes`; one sample per callsite with values
    /// `[allocations, allocated_bytes, live_blocks, live_bytes]` (sampling
    /// estimates when the snapshot's `mode` is `"bytes"`, already scaled:
    /// readers must not scale them again) and a numeric label `bytes`, the
    /// mean block size. `period_type` is `space/bytes` and `period` the
    /// sampling interval (1 when every allocation is recorded, 0 when
    /// sampling is off). The unattributed row, when it holds any
    /// allocation, is a sample whose only frame is `[unattributed]`.
    /// `kind` picks the `default_sample_type`. See `docs/FORMATS.md`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::io::Read;
    ///
    /// #[global_allocator]
    /// static GLOBAL: heapwatch::Tracker<std::alloc::System> =
    ///     heapwatch::Tracker::new(std::alloc::System);
    ///
    /// fn main() {
    ///     heapwatch::set_sampling(heapwatch::Sampling::All);
    ///     let kept = vec![0u8; 1 << 16];
    ///     let gz = heapwatch::snapshot().to_pprof(heapwatch::PprofKind::Allocs);
    ///     let mut raw = Vec::new();
    ///     flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut raw).unwrap();
    ///     assert!(!raw.is_empty());
    ///     // std::fs::write("heap.pb.gz", &gz) and `go tool pprof -top heap.pb.gz`.
    ///     drop(kept);
    /// }
    /// ```
    pub fn to_pprof(&self, kind: PprofKind) -> Vec<u8> {
        crate::budget::never_refused(|| self.pprof_bytes(kind))
    }

    fn pprof_bytes(&self, kind: PprofKind) -> Vec<u8> {
        let profile = self.pprof_profile(kind);
        let raw = profile.encode_to_vec();
        // The fastest level, as Go's runtime/pprof writes its profiles:
        // a profile is fetched often and read once, and the default level
        // spent most of a `/debug/pprof/heap` request compressing.
        let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 2 + 64), Compression::fast());
        // The encoder's only source of errors is its writer, and writing to a
        // `Vec<u8>` never fails. Were it to, the plain protobuf is still a
        // profile every pprof reader accepts (they gunzip only when they see
        // the gzip magic), so return that rather than panic.
        match gz.write_all(&raw) {
            Ok(()) => gz.finish().unwrap_or(raw),
            Err(_) => raw,
        }
    }

    fn pprof_profile(&self, kind: PprofKind) -> proto::Profile {
        let mut b = Builder::new();
        let sample_type = vec![
            b.value_type("alloc_objects", "count"),
            b.value_type("alloc_space", "bytes"),
            b.value_type("inuse_objects", "count"),
            b.value_type("inuse_space", "bytes"),
        ];
        let period_type = b.value_type("space", "bytes");
        let period = match (self.sample_interval_bytes, self.mode.as_str()) {
            (Some(n), _) => to_i64(n),
            (None, "all") => 1,
            _ => 0,
        };
        let default_sample_type = b.string(kind.default_sample_type());
        let comment = vec![b.string(&format!(
            "heapwatch snapshot {} run {} mode {} unwinder {}",
            self.id, self.run_id, self.mode, self.unwinder
        ))];

        for c in &self.callsites {
            let values = [
                c.allocations,
                c.allocated_bytes,
                c.live_blocks,
                c.live_bytes,
            ];
            if c.frames.is_empty() {
                b.sample(&[synthetic(NO_FRAMES)], values);
            } else {
                b.sample(&c.frames, values);
            }
        }
        let u = &self.unattributed;
        if u.allocations > 0 {
            // Files saved before `live_blocks` existed read 0 there: the
            // estimate those versions made.
            let live_blocks = if u.live_blocks == 0 && u.live_bytes > 0 {
                u.allocations.saturating_sub(u.frees)
            } else {
                u.live_blocks
            };
            let values = [u.allocations, u.allocated_bytes, live_blocks, u.live_bytes];
            b.sample(&[synthetic(UNATTRIBUTED_FRAME)], values);
        }

        let mapping = vec![proto::Mapping {
            id: MAPPING_ID,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            ..Default::default()
        }];
        proto::Profile {
            sample_type,
            sample: b.samples,
            mapping,
            location: b.locations,
            function: b.functions,
            string_table: b.strings,
            drop_frames: 0,
            keep_frames: 0,
            time_nanos: to_i64(self.taken_at_ms.saturating_mul(1_000_000)),
            duration_nanos: 0,
            period_type: Some(period_type),
            period,
            comment,
            default_sample_type,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(f: &str, file: &str, line: u32) -> Frame {
        Frame {
            function: f.to_string(),
            file: Some(file.to_string()),
            line: Some(line),
        }
    }

    #[test]
    fn functions_and_locations_are_deduplicated_and_sequential() {
        let mut b = Builder::new();
        let a = frame("app::a", "src/a.rs", 1);
        let a2 = frame("app::a", "src/a.rs", 2);
        let main = frame("app::main", "src/main.rs", 9);
        b.sample(&[a.clone(), main.clone()], [2, 20, 1, 10]);
        b.sample(&[a2, main.clone()], [1, 8, 1, 8]);
        b.sample(&[a, main], [0, 0, 0, 0]);
        let ids: Vec<u64> = b.locations.iter().map(|l| l.id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        let fids: Vec<u64> = b.functions.iter().map(|f| f.id).collect();
        assert_eq!(fids, vec![1, 2], "app::a at two lines is one function");
        assert_eq!(b.samples[0].location_id, vec![1, 2]);
        assert_eq!(b.samples[1].location_id, vec![3, 2]);
        assert_eq!(b.samples[2].location_id, vec![1, 2]);
        assert_eq!(b.samples[0].label[0].num, 10, "mean block size");
        assert!(b.samples[2].label.is_empty(), "no allocations: no size");
        assert_eq!(b.strings[0], "");
    }

    #[test]
    fn saturates_huge_figures() {
        assert_eq!(to_i64(u64::MAX), i64::MAX);
        assert_eq!(to_i64(5), 5);
    }
}
