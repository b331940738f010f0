//! heapwatch's own symbolizer (Linux): the objects loaded in the process,
//! mapped and read with `object` and `addr2line` (the libraries the
//! `backtrace` crate reads them with), into state that is heapwatch's alone.
//!
//! The `backtrace` crate keeps one symbol cache for the whole process. A
//! program that symbolizes with it too (dhat writing its profile, an error
//! reporter) shares that cache with heapwatch: heapwatch would free the
//! program's entries when it drops what it parsed, and the program would
//! free heapwatch's, each counted on the wrong side (the program's live
//! bytes and budget against heapwatch's overhead). Here everything is
//! allocated and freed under heapwatch's guard, so it is overhead from the
//! first byte to the last, and what [`Objects`] read (tens of MiB for a
//! binary built with debug information) is dropped after each snapshot that
//! had to read it ([`Objects::release`]); the list of objects is kept.
//!
//! For an address: the loaded object that holds it (`dl_iterate_phdr`; the
//! list is made again at the first look-up after a release, and when no
//! object holds an address, for a library opened since; never in a `fork`
//! child, see [`Objects::frames`]), its DWARF (inlined calls as frames of
//! their own, innermost first, with file and line), else its symbol table
//! (`.symtab`, else `.dynsym`; a name with no file or line), else nothing
//! (the caller shows `module+offset`). DWARF made with
//! `debug = "line-tables-only"` names functions without their path and has no entry
//! at all for a function with nothing inlined into it: the function holding
//! the address then takes its name from the symbol table, with DWARF's file
//! and line, and inlined functions get their crate's name in front when
//! their source path tells it (`heapwatch::` for heapwatch's own,
//! `hashbrown::` for std's vendored copy, a registry crate's name), so that
//! callsites start at the user's frame as they do with full debug info (see
//! `named`).
//!
//! An object's file is found by the path it was loaded
//! from, else the file mapped at its address (`/proc/self/maps`), and for
//! the program `/proc/self/exe`; a file is read only if its GNU build id is
//! the one loaded, so a library replaced on disk since is never read for
//! it. Not read: split DWARF (`.dwo`, `.dwp`), separate debug files
//! (`.gnu_debuglink`, `/usr/lib/debug`) and compressed debug sections:
//! their addresses fall back to the symbol table.

use std::ffi::CStr;
use std::path::PathBuf;

use gimli::{EndianSlice, RunTimeEndian};
use object::{Object, ObjectSection, ObjectSymbol, ObjectSymbolTable};

use super::Frame;

type Reader = EndianSlice<'static, RunTimeEndian>;

/// The loaded objects, each read the first time one of its addresses is
/// looked up.
pub(super) struct Objects {
    loaded: Vec<Loaded>,
    /// Set by [`Objects::release`]: the list is made again before its next
    /// use, except in a `fork` child.
    stale: bool,
    /// Where heapwatch's own sources are (see [`Objects::own_sources`]);
    /// `None` until looked up.
    own_sources: Option<Vec<String>>,
}

/// A loaded object: where it is on disk and where it is in memory.
struct Loaded {
    /// Files that may hold it, best first (see `candidates`).
    paths: Vec<PathBuf>,
    /// Load bias: an address in memory less `bias` is its address in the
    /// file's own numbering.
    bias: usize,
    /// Its `PT_LOAD` segments, in the file's numbering: `[start, end)`.
    segments: Vec<(usize, usize)>,
    /// Its GNU build id as loaded (empty if it has none): a file is read
    /// for it only if it has the same, so that a library replaced on disk
    /// since it was loaded (a package upgrade) never lends it its names.
    build_id: Vec<u8>,
    /// `None` until read; `Some(None)` if no file could be.
    read: Option<Option<Debug>>,
}

/// One object's debug information and symbols, borrowing its mapping.
/// Field order matters: `context` and `symbols` borrow `map`'s bytes, and
/// fields drop in order, so they are gone before `map` unmaps them.
struct Debug {
    context: Option<addr2line::Context<Reader>>,
    /// `(address, size, name)` sorted by address, from `.symtab` or
    /// `.dynsym`.
    symbols: Vec<(u64, u64, &'static str)>,
    /// Kept for its `Drop`, after the borrowers above.
    _map: Mapping,
}

/// A file mapped read-only; unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only memory that nothing writes; `Mapping`
// only unmaps it on drop, which needs exclusive ownership anyway.
unsafe impl Send for Mapping {}

impl Mapping {
    fn open(path: &std::path::Path) -> Option<Mapping> {
        let file = std::fs::File::open(path).ok()?;
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        if len == 0 {
            return None;
        }
        use std::os::fd::AsRawFd;
        // SAFETY: maps `len` bytes of an open file read-only and private;
        // the result is checked for MAP_FAILED. The mapping outlives the
        // file descriptor (closed when `file` drops), as mmap(2) allows.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(Mapping { ptr, len })
    }

    /// The mapped bytes, for as long as the caller keeps `self` alive (see
    /// `Debug`'s field order).
    fn bytes(&self) -> &'static [u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes until
        // `self` drops. The `'static` is a promise the callers keep: every
        // borrower is a field of the `Debug` that owns this mapping and is
        // declared before it, so it drops first.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are the mapping `open` made, unmapped once.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

impl Objects {
    /// The objects loaded now.
    pub(super) fn load() -> Objects {
        /// What the callback gathers of one object.
        struct Seen {
            name: Vec<u8>,
            bias: usize,
            segments: Vec<(usize, usize)>,
            build_id: Vec<u8>,
        }
        let mut seen: Vec<Seen> = Vec::new();
        unsafe extern "C" fn each(
            info: *mut libc::dl_phdr_info,
            _size: libc::size_t,
            data: *mut libc::c_void,
        ) -> libc::c_int {
            // SAFETY: `data` is the `&mut Vec<Seen>` passed below, alive and
            // not otherwise borrowed during the call; `info` is valid for
            // the callback's duration (dl_iterate_phdr(3)).
            let (seen, info) = unsafe { (&mut *data.cast::<Vec<Seen>>(), &*info) };
            let name = if info.dlpi_name.is_null() {
                Vec::new()
            } else {
                // SAFETY: a non-null `dlpi_name` is a C string.
                unsafe { CStr::from_ptr(info.dlpi_name) }
                    .to_bytes()
                    .to_vec()
            };
            let headers: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
                &[]
            } else {
                // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
                unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
            };
            let bias = info.dlpi_addr as usize;
            let loads: Vec<&libc::Elf64_Phdr> = headers
                .iter()
                .filter(|h| h.p_type == libc::PT_LOAD)
                .collect();
            let build_id = headers
                .iter()
                .filter(|h| h.p_type == libc::PT_NOTE)
                .filter(|n| {
                    // Read only notes that a loaded segment maps from the file.
                    loads.iter().any(|l| {
                        n.p_vaddr >= l.p_vaddr
                            && n.p_vaddr.saturating_add(n.p_filesz)
                                <= l.p_vaddr.saturating_add(l.p_filesz)
                    })
                })
                .find_map(|n| {
                    // SAFETY: the note lies inside a loaded segment of an
                    // object that stays loaded during the callback, so its
                    // `p_filesz` bytes at `bias + p_vaddr` are mapped and
                    // readable.
                    let notes = unsafe {
                        std::slice::from_raw_parts(
                            bias.wrapping_add(n.p_vaddr as usize) as *const u8,
                            n.p_filesz as usize,
                        )
                    };
                    gnu_build_id(notes).map(<[u8]>::to_vec)
                })
                .unwrap_or_default();
            seen.push(Seen {
                name,
                bias,
                segments: loads
                    .iter()
                    .map(|h| (h.p_vaddr as usize, (h.p_vaddr + h.p_memsz) as usize))
                    .collect(),
                build_id,
            });
            0
        }
        // SAFETY: `each` matches the callback type and only uses `data` as
        // the `Vec` passed here, which outlives the call.
        unsafe {
            libc::dl_iterate_phdr(Some(each), (&mut seen as *mut Vec<Seen>).cast());
        }
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let loaded = seen
            .into_iter()
            .enumerate()
            .filter_map(|(i, o)| {
                let start = o.bias.wrapping_add(o.segments.first()?.0);
                let paths = candidates(i == 0, &o.name, mapped_file(&maps, start));
                (!paths.is_empty()).then_some(Loaded {
                    paths,
                    bias: o.bias,
                    segments: o.segments,
                    build_id: o.build_id,
                    read: None,
                })
            })
            .collect();
        Objects {
            loaded,
            stale: false,
            own_sources: None,
        }
    }

    /// Drops what was read of every object (their debug information and
    /// symbols), keeping the list of objects, marked stale.
    pub(super) fn release(&mut self) {
        for obj in &mut self.loaded {
            obj.read = None;
        }
        self.stale = true;
    }

    /// The loaded object that holds `addr`, if any.
    fn holding(&mut self, addr: usize) -> Option<&mut Loaded> {
        self.loaded.iter_mut().find(|o| {
            let a = addr.wrapping_sub(o.bias);
            o.segments.iter().any(|&(s, e)| (s..e).contains(&a))
        })
    }

    /// Loads the list of objects again (a library opened since), keeping
    /// what was read of those still loaded.
    fn refresh(&mut self) {
        let mut fresh = Objects::load();
        fresh.own_sources = self.own_sources.take();
        for obj in &mut fresh.loaded {
            if let Some(old) = self.loaded.iter_mut().find(|o| {
                o.bias == obj.bias && o.segments == obj.segments && o.build_id == obj.build_id
            }) {
                obj.read = old.read.take();
            }
        }
        *self = fresh;
    }

    /// The directory of heapwatch's own sources as its DWARF records them
    /// (`…/src/`), as absolute paths: the file DWARF gives for a function
    /// of this file, less this file's path in the crate, which holds with
    /// paths remapped (`--remap-path-prefix`); and the same from `file!()`
    /// (remapped alike) when that is absolute, as for a crate from a
    /// registry, else the crate's directory when built
    /// (`CARGO_MANIFEST_DIR`, for a path dependency inside the program's
    /// workspace, whose paths are relative to it), which hold for its
    /// generic code compiled into the program when heapwatch itself has no
    /// DWARF.
    fn own_sources(&mut self) -> Vec<String> {
        if let Some(known) = &self.own_sources {
            return known.clone();
        }
        let from_dwarf = self
            .debug_at(own_sources_marker as *const () as usize + 1)
            .and_then(|(probe, debug)| {
                // The outermost frame: the marker itself, not what the
                // optimizer inlined into it.
                let mut frames = debug
                    .context
                    .as_ref()?
                    .find_frames(probe)
                    .skip_all_loads()
                    .ok()?;
                let mut file = None;
                while let Ok(Some(frame)) = frames.next() {
                    file = frame.location.and_then(|l| l.file);
                }
                file?
                    .strip_suffix("symbolize/objects.rs")
                    .map(str::to_string)
            });
        let built = match file!().strip_suffix("symbolize/objects.rs") {
            Some(root) if root.starts_with('/') => root.to_string(),
            _ => concat!(env!("CARGO_MANIFEST_DIR"), "/src/").to_string(),
        };
        let mut own: Vec<String> = Vec::new();
        for root in from_dwarf.into_iter().chain([built]) {
            if root.starts_with('/') && !own.contains(&root) {
                own.push(root);
            }
        }
        self.own_sources = Some(own.clone());
        own
    }

    /// The object holding `addr`, read if it was not yet: `addr` in the
    /// file's own numbering, and the file's debug information.
    fn debug_at(&mut self, addr: usize) -> Option<(u64, &Debug)> {
        let obj = self.holding(addr)?;
        let probe = addr.wrapping_sub(obj.bias) as u64;
        let (paths, build_id) = (&obj.paths, &obj.build_id);
        let debug = obj
            .read
            .get_or_insert_with(|| paths.iter().find_map(|p| Debug::read(p, build_id)))
            .as_ref()?;
        Some((probe, debug))
    }

    /// The frames at `addr` (an address inside the call, not the return
    /// address), innermost first; empty if no object or symbol knows it.
    ///
    /// In a `fork` child the list of objects is never made again: another
    /// thread of the parent may have held the loader's lock at the fork,
    /// and `dl_iterate_phdr` would then wait for it for ever. The child
    /// uses the list it inherited (the fork handler makes one if there was
    /// none, see `symbolize::before_fork`); a library opened since is
    /// missing from it, and its addresses show as `module+offset`.
    pub(super) fn frames(&mut self, addr: usize) -> Vec<Frame> {
        if !super::in_fork_child() && (self.stale || self.holding(addr).is_none()) {
            self.refresh();
        }
        let own = self.own_sources();
        let Some((probe, debug)) = self.debug_at(addr) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        // Each frame's source file as DWARF records it, for `crate_path`.
        let mut raw_files = Vec::new();
        if let Some(ctx) = &debug.context {
            let comp_dir = comp_dir(ctx, probe);
            if let Ok(mut iter) = ctx.find_frames(probe).skip_all_loads() {
                while let Ok(Some(frame)) = iter.next() {
                    raw_files.push(frame.location.as_ref().and_then(|l| l.file));
                    let function = frame
                        .function
                        .as_ref()
                        .and_then(|f| f.raw_name().ok())
                        .map(|n| demangle(&n))
                        .unwrap_or_default();
                    let (file, line) = frame.location.map_or((None, None), |l| {
                        let file = l.file.map(|f| super::shorten_path(f, comp_dir.as_deref()));
                        (file, l.line)
                    });
                    out.push(Frame {
                        function,
                        file,
                        line,
                    });
                }
            }
        }
        // DWARF made with `debug = "line-tables-only"` names functions
        // without their path (`reserve_exact<u8, …>`): the last frame, the
        // function that holds `probe`, takes the symbol table's name; the
        // others (inlined) their crate's, if their file tells it.
        let holder = debug.symbol_holding(probe);
        let last = out.len().wrapping_sub(1);
        for (k, (frame, raw_file)) in out.iter_mut().zip(&raw_files).enumerate() {
            let function = std::mem::take(&mut frame.function);
            let holder = holder.filter(|_| k == last);
            frame.function = named(function, *raw_file, holder, &own);
        }
        if out.iter().all(|f| f.function.is_empty()) {
            if let Some(name) = debug.symbol(probe) {
                // Only the symbol table names it: one frame. With the line
                // DWARF found, if no function entry goes with it: DWARF made
                // with `debug = "line-tables-only"` has function entries
                // only for functions with calls inlined into them, so the
                // line is this function's own. Else no file or line: a
                // skeleton unit of split DWARF has no function entries at
                // all, and its line table gives the innermost inlined
                // call's line, which would pair one function's name with
                // another's source.
                let skeleton = || debug.context.as_ref().is_none_or(|c| in_skeleton(c, probe));
                let (file, line) = match out.as_mut_slice() {
                    [only] if !skeleton() => (only.file.take(), only.line),
                    _ => (None, None),
                };
                return vec![Frame {
                    function: demangle(name),
                    file,
                    line,
                }];
            }
        }
        out
    }
}

impl Debug {
    /// Reads the file at `path`, if it is the object loaded with
    /// `build_id` (any file, if that is empty).
    fn read(path: &std::path::Path, build_id: &[u8]) -> Option<Debug> {
        let map = Mapping::open(path)?;
        let data = map.bytes();
        let file = object::File::parse(data).ok()?;
        if !build_id.is_empty() && file.build_id().ok().flatten() != Some(build_id) {
            return None;
        }
        let endian = if file.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let section = |id: gimli::SectionId| -> Result<Reader, ()> {
            let bytes = file
                .section_by_name(id.name())
                .filter(|s| {
                    // A compressed section's bytes are not DWARF.
                    s.compressed_file_range()
                        .is_ok_and(|r| r.format == object::CompressionFormat::None)
                })
                .and_then(|s| s.data().ok())
                .unwrap_or(&[]);
            Ok(EndianSlice::new(bytes, endian))
        };
        let context = gimli::Dwarf::load(section)
            .ok()
            .and_then(|dwarf| addr2line::Context::from_dwarf(dwarf).ok());
        let table = file.symbol_table().or_else(|| file.dynamic_symbol_table());
        let mut symbols: Vec<(u64, u64, &'static str)> = table
            .map(|t| {
                t.symbols()
                    .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
                    .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        symbols.sort_unstable_by_key(|&(a, _, _)| a);
        Some(Debug {
            context,
            symbols,
            _map: map,
        })
    }

    /// The symbol that holds `probe` (the last one at or before it, if its
    /// size is unknown).
    fn symbol(&self, probe: u64) -> Option<&'static str> {
        self.symbol_at(probe, true)
    }

    /// The symbol that holds `probe`, only if its size says so.
    fn symbol_holding(&self, probe: u64) -> Option<&'static str> {
        self.symbol_at(probe, false)
    }

    /// The last symbol at or before `probe`, if it holds `probe` (or, with
    /// `unsized_holds`, if its size is unknown).
    fn symbol_at(&self, probe: u64, unsized_holds: bool) -> Option<&'static str> {
        let i = self.symbols.partition_point(|&(a, _, _)| a <= probe);
        let &(start, size, name) = self.symbols.get(i.checked_sub(1)?)?;
        ((size == 0 && unsized_holds) || probe - start < size).then_some(name)
    }
}

/// The files that may hold an object, best first: for the program itself
/// (the first object, with no name) `/proc/self/exe`, which still reads the
/// program deleted or replaced on disk; for a library the absolute path it
/// was loaded from; then the file `/proc/self/maps` shows at its first
/// segment (the program started through `ld.so`, whose `/proc/self/exe` is
/// `ld.so`; a library opened by a relative path from another directory).
fn candidates(program: bool, name: &[u8], mapped: Option<&str>) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut paths = Vec::new();
    if name.is_empty() {
        if !program {
            return paths;
        }
        paths.push(PathBuf::from("/proc/self/exe"));
    } else if name.starts_with(b"/") {
        paths.push(PathBuf::from(std::ffi::OsStr::from_bytes(name)));
    }
    if let Some(m) = mapped {
        if !paths.iter().any(|p| p.as_os_str() == m) {
            paths.push(PathBuf::from(m));
        }
    }
    if !name.is_empty() && !name.starts_with(b"/") {
        paths.push(PathBuf::from(std::ffi::OsStr::from_bytes(name)));
    }
    paths
}

/// The file `/proc/self/maps` (its text in `maps`) shows mapped at `addr`:
/// an absolute path, not one marked deleted.
fn mapped_file(maps: &str, addr: usize) -> Option<&str> {
    maps.lines().find_map(|line| {
        let mut fields = line.splitn(6, ' ');
        let (lo, hi) = fields.next()?.split_once('-')?;
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).ok()?,
            usize::from_str_radix(hi, 16).ok()?,
        );
        if !(lo..hi).contains(&addr) {
            return None;
        }
        let path = fields.nth(4)?.trim_start();
        (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
    })
}

/// The GNU build id in a run of ELF notes (`NT_GNU_BUILD_ID`, owner "GNU").
fn gnu_build_id(mut notes: &[u8]) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let pad = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let namesz = word(notes, 0)? as usize;
        let descsz = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let name_end = 12usize.checked_add(pad(namesz)?)?;
        let desc_end = name_end.checked_add(pad(descsz)?)?;
        let name = notes.get(12..12 + namesz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return notes.get(name_end..name_end + descsz);
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

/// Whether the unit that holds `probe` is a skeleton unit of split DWARF
/// (it names a `.dwo` file, which is not read): its line table has no
/// function entries to go with it. Every lookup in such a unit, not only
/// the first, which alone asks for the `.dwo` file to be loaded.
fn in_skeleton(ctx: &addr2line::Context<Reader>, probe: u64) -> bool {
    ctx.find_dwarf_and_unit(probe)
        .skip_all_loads()
        .is_some_and(|unit| unit.unit.dwo_id.is_some())
}

/// A function name without its path (`alloc_slow<std::alloc::System>`,
/// `{closure#0}`), as DWARF made with `debug = "line-tables-only"` has it.
fn is_bare(function: &str) -> bool {
    !function.is_empty()
        && !function.starts_with('<')
        && !function.split('<').next().unwrap_or("").contains("::")
}

/// The directory the compiler ran in for the code at `probe` (its unit's
/// `DW_AT_comp_dir`), for `shorten_path`.
fn comp_dir(ctx: &addr2line::Context<Reader>, probe: u64) -> Option<String> {
    ctx.find_dwarf_and_unit(probe)
        .skip_all_loads()
        .and_then(|unit| unit.comp_dir)
        .map(|dir| dir.to_string_lossy().into_owned())
}

/// A frame's name: `function` as DWARF gives it, the symbol-table name of
/// the function holding the address (`holder`, given for the outermost
/// frame only) if DWARF's is that function's name without its path, else
/// [`crate_path`]'s.
fn named(function: String, raw_file: Option<&str>, holder: Option<&str>, own: &[String]) -> String {
    match holder.and_then(|symbol| full_name(&function, symbol)) {
        Some(full) => full,
        None => crate_path(function, raw_file, own),
    }
}

/// A function of this file whose address [`Objects::own_sources`] looks
/// up: never inlined, so its address is its own.
#[inline(never)]
fn own_sources_marker() -> u64 {
    std::hint::black_box(0x6877)
}

/// `function`, a frame's name as DWARF gives it, with its crate in front
/// if it is bare and the crate can be told from `raw_file` (the path DWARF
/// records): `heapwatch::` in heapwatch's own sources (`own`, see
/// [`Objects::own_sources`]), `name::` in a crate downloaded by cargo
/// (`…/registry/src/<index>/name-1.2.3/`) or vendored into the standard
/// library (`/rust/deps/name-1.2.3/`). Code built with `debug =
/// "line-tables-only"` names its inlined functions without their path, and
/// callsites are trimmed of heapwatch's frames and the allocation
/// plumbing (`hashbrown::`) by that prefix. The program's own inlined
/// functions keep their bare names.
fn crate_path(function: String, raw_file: Option<&str>, own: &[String]) -> String {
    let Some(file) = raw_file.filter(|_| is_bare(&function)) else {
        return function;
    };
    if own.iter().any(|own| file.starts_with(own.as_str())) {
        return format!("heapwatch::{function}");
    }
    match crate_of(file) {
        Some(krate) => format!("{krate}::{function}"),
        None => function,
    }
}

/// The crate a source file belongs to, if its path says: a crate cargo
/// downloaded, or one vendored into the standard library. Dashes become
/// underscores, as in the crate's paths.
fn crate_of(file: &str) -> Option<String> {
    let dir = if let Some(i) = file.find("/registry/src/") {
        // Past the index directory (`index.crates.io-…/`).
        file[i + "/registry/src/".len()..].split('/').nth(1)?
    } else if let Some(rest) = file.strip_prefix("/rust/deps/") {
        rest.split('/').next()?
    } else {
        return None;
    };
    // `name-1.2.3` (`tikv-jemalloc-sys-0.7.1+5.3.1`, `utf-8-0.7.6`): the
    // name is what comes before the dash that a version (`1.2.3`) follows.
    let semver = |v: &str| {
        let digits = |p: &str| p.bytes().take_while(u8::is_ascii_digit).count();
        let mut parts = v.splitn(3, '.');
        let (major, minor, patch) = (parts.next(), parts.next(), parts.next());
        major.is_some_and(|m| !m.is_empty() && digits(m) == m.len())
            && minor.is_some_and(|m| !m.is_empty() && digits(m) == m.len())
            && patch.is_some_and(|p| digits(p) > 0)
    };
    let at = dir
        .match_indices('-')
        .find(|&(i, _)| semver(&dir[i + 1..]))?
        .0;
    Some(dir[..at].replace('-', "_")).filter(|n| !n.is_empty())
}

/// The full name for a frame DWARF named bare (`function`), from `symbol`,
/// the symbol of the function holding its address: its demangled name if
/// that is a Rust path ending in the same function (`Vec<T,A>::reserve_exact`
/// for `reserve_exact<u8, Global>`; a closure for `{closure#0}`). `None`
/// keeps DWARF's name: already a path, a C function, or another name at the
/// same address.
fn full_name(function: &str, symbol: &str) -> Option<String> {
    if !is_bare(function) {
        return None;
    }
    let full = demangle(symbol);
    let last = full.rsplit("::").next().unwrap_or("");
    let ident = function.split('<').next().unwrap_or("");
    let same = if ident.starts_with('{') {
        last.starts_with('{')
    } else {
        last.split('<').next() == Some(ident)
    };
    (full.contains("::") && same).then_some(full)
}

/// A Rust symbol demangled without its hash; any other name as it is.
fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(d) => format!("{d:#}"),
        Err(_) => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The return addresses of the current stack.
    #[inline(never)]
    fn stack() -> Vec<usize> {
        let mut ips = Vec::new();
        backtrace::trace(|f| {
            ips.push(f.ip() as usize);
            true
        });
        ips
    }

    #[test]
    fn agrees_with_the_backtrace_crate_on_the_program_itself() {
        let mut objects = Objects::load();
        assert_eq!(objects.loaded[0].paths[0], PathBuf::from("/proc/self/exe"));
        // The program's build id, read from its loaded notes, is the one
        // in its file (or the program has none and any file is taken).
        let id = objects.loaded[0].build_id.clone();
        assert!(Debug::read(&objects.loaded[0].paths[0], &id).is_some());
        if !id.is_empty() {
            let mut other = id.clone();
            other[0] ^= 0xff;
            assert!(
                Debug::read(&objects.loaded[0].paths[0], &other).is_none(),
                "a file with another build id is not read"
            );
        }
        let program = |addr: usize| {
            let o = &objects.loaded[0];
            let a = addr.wrapping_sub(o.bias);
            o.segments.iter().any(|&(s, e)| (s..e).contains(&a))
        };
        let addrs: Vec<usize> = stack()
            .into_iter()
            .filter(|&ip| ip > 1)
            .map(|ip| ip - 1)
            .filter(|&a| program(a))
            .collect();
        assert!(addrs.len() >= 4, "{addrs:?}");
        for addr in addrs {
            let ours = objects.frames(addr);
            let mut theirs = Vec::new();
            backtrace::resolve(addr as *mut std::ffi::c_void, |sym| {
                theirs.push(Frame {
                    function: sym.name().map(|n| format!("{n:#}")).unwrap_or_default(),
                    file: sym
                        .filename()
                        .map(|p| super::super::shorten_path(&p.to_string_lossy(), None)),
                    line: sym.lineno(),
                });
            });
            assert_eq!(ours, theirs, "at {addr:#x}");
        }
        // This test's own frame is among them, named and placed.
        let named = stack().into_iter().filter(|&ip| ip > 1).any(|ip| {
            objects.frames(ip - 1).iter().any(|f| {
                f.function
                    .ends_with("tests::agrees_with_the_backtrace_crate_on_the_program_itself")
                    && f.file.as_deref() == Some("src/symbolize/objects.rs")
                    && f.line.is_some()
            })
        });
        assert!(named);
        // Paths are made relative to the directory cargo ran rustc in,
        // this crate's (its own workspace), before anything else.
        let here = stack as fn() -> Vec<usize> as usize;
        let (probe, debug) = objects.debug_at(here).expect("the program's DWARF");
        let ctx = debug.context.as_ref().expect("the program's DWARF");
        let dir = comp_dir(ctx, probe).expect("DW_AT_comp_dir");
        let file = ctx
            .find_location(probe)
            .ok()
            .flatten()
            .and_then(|l| l.file)
            .expect("a file");
        assert!(file.starts_with(&dir), "{file} under {dir}");
        assert_eq!(
            super::super::shorten_path(file, Some(&dir)),
            "src/symbolize/objects.rs"
        );
    }

    #[test]
    fn build_ids_are_found_among_notes() {
        let mut notes = Vec::new();
        let mut note = |name: &[u8], kind: u32, desc: &[u8]| {
            notes.extend((name.len() as u32).to_ne_bytes());
            notes.extend((desc.len() as u32).to_ne_bytes());
            notes.extend(kind.to_ne_bytes());
            notes.extend(name);
            notes.resize(notes.len().next_multiple_of(4), 0);
            notes.extend(desc);
            notes.resize(notes.len().next_multiple_of(4), 0);
        };
        note(b"GNU\0", 1, &[0, 0, 0, 0, 3, 2, 0, 0]); // ABI tag
        note(b"Go\0", 3, b"not this one");
        note(b"GNU\0", 3, &[0xde, 0xad, 0xbe, 0xef, 1]);
        assert_eq!(gnu_build_id(&notes), Some(&[0xde, 0xad, 0xbe, 0xef, 1][..]));
        assert_eq!(gnu_build_id(&notes[..20]), None, "cut short");
        assert_eq!(gnu_build_id(&[]), None);
    }

    #[test]
    fn files_are_found_in_proc_self_maps() {
        let maps = "\
55d0a000-55d0b000 r--p 00000000 08:01 1234                       /usr/bin/prog
55d0b000-55d0c000 r-xp 00001000 08:01 1234                       /usr/bin/prog
7f00a000-7f00b000 r-xp 00000000 08:01 99                         /tmp/gone.so (deleted)
7f00c000-7f00d000 rw-p 00000000 00:00 0 
7ffd0000-7ffd1000 r-xp 00000000 00:00 0                          [vdso]
";
        assert_eq!(mapped_file(maps, 0x55d0b123), Some("/usr/bin/prog"));
        assert_eq!(mapped_file(maps, 0x7f00a000), None, "deleted");
        assert_eq!(mapped_file(maps, 0x7f00c000), None, "anonymous");
        assert_eq!(mapped_file(maps, 0x7ffd0000), None, "not a file");
        assert_eq!(mapped_file(maps, 0x1000), None);
    }

    #[test]
    fn candidate_files_come_best_first() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            candidates(true, b"", Some("/usr/bin/prog")),
            [p("/proc/self/exe"), p("/usr/bin/prog")]
        );
        assert_eq!(
            candidates(false, b"/lib/libc.so.6", Some("/lib/libc.so.6")),
            [p("/lib/libc.so.6")]
        );
        assert_eq!(
            candidates(false, b"./libplug.so", Some("/work/libplug.so")),
            [p("/work/libplug.so"), p("./libplug.so")]
        );
        assert!(candidates(false, b"", None).is_empty());
    }

    #[test]
    fn a_library_opened_after_the_list_was_made_is_found() {
        let mut objects = Objects::load();
        // SAFETY: opens a system library by name (its initialisers are
        // zlib's, which do nothing); the handle is closed below.
        let handle = unsafe { libc::dlopen(c"libz.so.1".as_ptr(), libc::RTLD_NOW) };
        if handle.is_null() {
            eprintln!("libz.so.1 not installed: nothing to open");
            return;
        }
        // SAFETY: `handle` is a live handle from `dlopen`.
        let f = unsafe { libc::dlsym(handle, c"zlibVersion".as_ptr()) };
        assert!(!f.is_null());
        let frames = objects.frames(f as usize);
        assert_eq!(
            frames.first().map(|f| f.function.as_str()),
            Some("zlibVersion"),
            "{frames:?}"
        );
        // SAFETY: `handle` came from `dlopen`; nothing of it is used after.
        unsafe { libc::dlclose(handle) };
    }

    /// The fixture library's source: `plain` has nothing inlined into it,
    /// `outer` has `inner` inlined.
    const FIXTURE: &str = "\
pub mod fixture {
    #[inline(never)]
    pub fn plain(x: u64) -> u64 {
        x ^ 0x5a5a
    }

    #[inline(always)]
    fn inner(x: u64) -> u64 {
        x ^ 0x1234
    }

    #[inline(never)]
    pub fn outer(x: u64) -> u64 {
        inner(x) ^ 7
    }
}

#[no_mangle]
pub extern \"C\" fn hwfix_plain() -> usize {
    fixture::plain as *const () as usize
}

#[no_mangle]
pub extern \"C\" fn hwfix_outer() -> usize {
    fixture::outer as *const () as usize
}
";

    /// [`FIXTURE`] built by `rustc` with `flags` (at `-C opt-level=0`) and
    /// opened: the frames `look` gets from the addresses of `plain` and
    /// `outer`, with the library still loaded. `None` if there is no
    /// `rustc` to build it with, or if that `rustc` builds for another
    /// architecture than these tests run on (a cross build under
    /// emulation), since this process could not load what it builds.
    fn with_fixture<T>(
        tag: &str,
        flags: &[&str],
        look: impl FnOnce(&mut Objects, usize, usize) -> T,
    ) -> Option<T> {
        let rustc = std::env::var("RUSTC").unwrap_or("rustc".into());
        if let Ok(v) = std::process::Command::new(&rustc).arg("-vV").output() {
            let v = String::from_utf8_lossy(&v.stdout).into_owned();
            let host = v.lines().find_map(|l| l.strip_prefix("host: "));
            if host.is_some_and(|h| !h.starts_with(std::env::consts::ARCH)) {
                eprintln!(
                    "rustc builds for {host:?}, not {}: skipped",
                    std::env::consts::ARCH
                );
                return None;
            }
        }
        let dir =
            std::env::temp_dir().join(format!("heapwatch-fixture-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("fixture.rs");
        std::fs::write(&src, FIXTURE).unwrap();
        let lib = dir.join("libhwfix.so");
        let built = std::process::Command::new(&rustc)
            .args([
                "--edition=2021",
                "--crate-type=cdylib",
                "--crate-name=hwfix",
            ])
            .args(["-C", "opt-level=0"])
            .args(flags)
            .arg("-o")
            .arg(&lib)
            .arg(&src)
            .current_dir(&dir)
            .status();
        match built {
            Ok(s) => assert!(s.success(), "rustc failed: {s}"),
            Err(e) => {
                eprintln!("rustc not found ({e}): nothing to build");
                let _ = std::fs::remove_dir_all(&dir);
                return None;
            }
        }
        let path = std::ffi::CString::new(lib.to_str().unwrap()).unwrap();
        // SAFETY: opens the library just built, which has no initialisers;
        // the handle is closed below.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
        assert!(!handle.is_null(), "dlopen {}", lib.display());
        let address_of = |name: &CStr| {
            // SAFETY: `handle` is live; each symbol is an `extern "C" fn()
            // -> usize` of the fixture.
            let f = unsafe { libc::dlsym(handle, name.as_ptr()) };
            assert!(!f.is_null(), "{name:?}");
            // SAFETY: as above.
            let f: extern "C" fn() -> usize = unsafe { std::mem::transmute(f) };
            f()
        };
        let (plain, outer) = (address_of(c"hwfix_plain"), address_of(c"hwfix_outer"));
        let out = look(&mut Objects::load(), plain, outer);
        // SAFETY: `handle` came from `dlopen`; nothing of it is used after
        // (what `look` returns owns its strings).
        unsafe { libc::dlclose(handle) };
        let _ = std::fs::remove_dir_all(&dir);
        Some(out)
    }

    fn line_of(needle: &str) -> u32 {
        FIXTURE.lines().position(|l| l.contains(needle)).unwrap() as u32 + 1
    }

    /// A library built with `-C debuginfo=line-tables-only` gets the same
    /// names, files and lines as with full debug info: its DWARF has no
    /// function entry for a function with nothing inlined into it, and one
    /// named without its path for a function with inlined calls.
    #[test]
    fn line_tables_only_debug_info_gives_full_names_and_lines() {
        let Some((frames, outer_frames)) = with_fixture(
            "lto",
            &["-C", "debuginfo=line-tables-only"],
            |objects, plain, outer| (objects.frames(plain + 1), objects.frames(outer + 1)),
        ) else {
            return;
        };
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].function, "hwfix::fixture::plain");
        assert!(
            frames[0]
                .file
                .as_deref()
                .is_some_and(|f| f.ends_with("fixture.rs")),
            "{frames:?}"
        );
        assert_eq!(frames[0].line, Some(line_of("pub fn plain")), "{frames:?}");
        let last = outer_frames.last().expect("frames for outer");
        assert_eq!(last.function, "hwfix::fixture::outer", "{outer_frames:?}");
        assert!(
            last.file
                .as_deref()
                .is_some_and(|f| f.ends_with("fixture.rs")),
            "{outer_frames:?}"
        );
        assert_eq!(last.line, Some(line_of("pub fn outer")), "{outer_frames:?}");
    }

    /// Split DWARF (`.dwo` files, not read): every address of the library,
    /// the first looked up in its unit and the ones after, gets its
    /// function's name from the symbol table and no file or line (the
    /// skeleton's line table would give `inner`'s line to `outer`).
    #[test]
    fn split_dwarf_gives_names_without_lines() {
        let Some(looked) = with_fixture(
            "split",
            &["-C", "debuginfo=2", "-C", "split-debuginfo=unpacked"],
            |objects, plain, outer| {
                let mut looked = vec![objects.frames(plain + 1)];
                looked.extend((1..48).map(|k| objects.frames(outer + k)));
                looked
            },
        ) else {
            return;
        };
        assert_eq!(looked[0].len(), 1, "{:?}", looked[0]);
        assert_eq!(looked[0][0].function, "hwfix::fixture::plain");
        for frames in &looked {
            for f in frames {
                assert_eq!((&f.file, f.line), (&None, None), "{looked:?}");
            }
        }
        // `outer` and whatever follows it (padding, `plain`).
        assert_eq!(looked[1].len(), 1, "{:?}", looked[1]);
        assert_eq!(looked[1][0].function, "hwfix::fixture::outer");
        for frames in looked.iter().filter(|f| !f.is_empty()) {
            assert_eq!(frames.len(), 1, "{frames:?}");
            assert!(
                frames[0].function.starts_with("hwfix::fixture::"),
                "{frames:?}"
            );
        }
    }

    /// heapwatch's own sources, as this build's DWARF records them.
    #[test]
    fn own_sources_are_found_in_dwarf() {
        assert_eq!(
            Objects::load().own_sources(),
            [concat!(env!("CARGO_MANIFEST_DIR"), "/src/")]
        );
    }

    #[test]
    fn an_address_in_no_object_has_no_frames() {
        assert!(Objects::load().frames(16).is_empty());
    }

    /// Names as DWARF made with `debug = "line-tables-only"` has them get
    /// their path: from the symbol table for the function holding the
    /// address, `heapwatch::` for heapwatch's inlined frames.
    #[test]
    fn bare_names_get_their_path() {
        for bare in [
            "record_sampled",
            "alloc_slow<std::alloc::System>",
            "{closure#0}",
            "main",
        ] {
            assert!(is_bare(bare), "{bare}");
        }
        for full in [
            "",
            "t2::make",
            "alloc::vec::Vec<T,A>::reserve_exact",
            "<heapwatch::Tracker<A> as core::alloc::global::GlobalAlloc>::alloc",
        ] {
            assert!(!is_bare(full), "{full}");
        }

        let full = |f: &str, sym: &str| full_name(f, sym);
        assert_eq!(
            full(
                "reserve_exact<u8, alloc::alloc::Global>",
                "_ZN5alloc3vec16Vec$LT$T$C$A$GT$13reserve_exact17hb2ec1bd4bb18a967E"
            )
            .as_deref(),
            Some("alloc::vec::Vec<T,A>::reserve_exact")
        );
        assert_eq!(
            full(
                "record_sampled",
                "_ZN9heapwatch7tracker14record_sampled17h411a955764275a8dE"
            )
            .as_deref(),
            Some("heapwatch::tracker::record_sampled")
        );
        assert_eq!(
            full(
                "{closure#0}",
                "_ZN2t24main28_$u7b$$u7b$closure$u7d$$u7d$17hdb8291c50a8d1bb7E"
            )
            .as_deref(),
            Some("t2::main::{{closure}}")
        );
        // Already a path; a C function; another function at the address.
        assert_eq!(full("t2::make", "_ZN2t24make17hf89dcfd87e5d406dE"), None);
        assert_eq!(full("malloc", "__libc_malloc"), None);
        assert_eq!(full("make", "_ZN2t24main17h3d66d36912bcfb39E"), None);

        let own = ["/hw/src/".to_string()];
        let path = |f: &str, file: Option<&str>| crate_path(f.into(), file, &own);
        assert_eq!(
            path("on_alloc", Some("/hw/src/tracker.rs")),
            "heapwatch::on_alloc"
        );
        assert_eq!(
            path("heapwatch::tracker::on_alloc", Some("/hw/src/tracker.rs")),
            "heapwatch::tracker::on_alloc"
        );
        assert_eq!(path("make", Some("/tmp/t2/src/main.rs")), "make");
        assert_eq!(path("on_alloc", None), "on_alloc");
        assert_eq!(
            path(
                "reserve_rehash<(u64, u64)>",
                Some("/rust/deps/hashbrown-0.16.1/src/raw/mod.rs")
            ),
            "hashbrown::reserve_rehash<(u64, u64)>"
        );
        assert_eq!(
            path(
                "with_mut<T>",
                Some("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.48.0/src/loom/std/unsafe_cell.rs")
            ),
            "tokio::with_mut<T>"
        );
        assert_eq!(
            crate_of("/c/registry/src/idx/tikv-jemalloc-sys-0.7.1+5.3.1/src/lib.rs").as_deref(),
            Some("tikv_jemalloc_sys")
        );
        assert_eq!(
            crate_of("/c/registry/src/idx/tokio-1.0.0-alpha.1/src/lib.rs").as_deref(),
            Some("tokio")
        );
        assert_eq!(crate_of("/work/app/src/main.rs"), None);
        // The outermost frame in a registry crate: the symbol table's full
        // name, not the crate's prefix on the bare name.
        let tokio_file = Some("/c/registry/src/idx/tokio-1.48.0/src/sync/oneshot.rs");
        assert_eq!(
            named(
                "channel<()>".into(),
                tokio_file,
                Some("_ZN5tokio4sync7oneshot7channel17h0123456789abcdefE"),
                &own
            ),
            "tokio::sync::oneshot::channel"
        );
        assert_eq!(
            named("channel<()>".into(), tokio_file, None, &own),
            "tokio::channel<()>"
        );
        assert_eq!(
            crate_of("/c/registry/src/idx/utf-8-0.7.6/src/lib.rs").as_deref(),
            Some("utf_8")
        );
    }
}
