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
//! first byte to the last, and [`Objects`] is dropped after each snapshot
//! that had to read debug information (tens of MiB for a binary built with
//! it).
//!
//! For an address: the loaded object that holds it (`dl_iterate_phdr`), its
//! DWARF (inlined calls as frames of their own, innermost first, with file
//! and line), else its symbol table (`.symtab`, else `.dynsym`), else
//! nothing (the caller shows `module+offset`). Not read: split DWARF
//! (`.dwo`), separate debug files (`.gnu_debuglink`, `/usr/lib/debug`) and
//! compressed debug sections: their addresses fall back to the symbol
//! table.

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
}

/// A loaded object: where it is on disk and where it is in memory.
struct Loaded {
    /// `/proc/self/exe` for the program itself.
    path: PathBuf,
    /// Load bias: an address in memory less `bias` is its address in the
    /// file's own numbering.
    bias: usize,
    /// Its `PT_LOAD` segments, in the file's numbering: `[start, end)`.
    segments: Vec<(usize, usize)>,
    /// `None` until read; `Some(None)` if it could not be.
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
        let mut loaded: Vec<Loaded> = Vec::new();
        unsafe extern "C" fn each(
            info: *mut libc::dl_phdr_info,
            _size: libc::size_t,
            data: *mut libc::c_void,
        ) -> libc::c_int {
            // SAFETY: `data` is the `&mut Vec<Loaded>` passed below, alive
            // and not otherwise borrowed during the call; `info` is valid
            // for the callback's duration (dl_iterate_phdr(3)).
            let (loaded, info) = unsafe { (&mut *data.cast::<Vec<Loaded>>(), &*info) };
            let path = if info.dlpi_name.is_null() {
                None
            } else {
                // SAFETY: a non-null `dlpi_name` is a C string.
                Some(unsafe { CStr::from_ptr(info.dlpi_name) })
            };
            let path = match path.map(CStr::to_bytes) {
                // The first object with no name is the program itself.
                None | Some([]) if loaded.is_empty() => PathBuf::from("/proc/self/exe"),
                None | Some([]) => return 0,
                Some(bytes) => {
                    use std::os::unix::ffi::OsStrExt;
                    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
                }
            };
            let headers: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
                &[]
            } else {
                // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
                unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
            };
            let segments = headers
                .iter()
                .filter(|h| h.p_type == libc::PT_LOAD)
                .map(|h| (h.p_vaddr as usize, (h.p_vaddr + h.p_memsz) as usize))
                .collect();
            loaded.push(Loaded {
                path,
                bias: info.dlpi_addr as usize,
                segments,
                read: None,
            });
            0
        }
        // SAFETY: `each` matches the callback type and only uses `data` as
        // the `Vec` passed here, which outlives the call.
        unsafe {
            libc::dl_iterate_phdr(Some(each), (&mut loaded as *mut Vec<Loaded>).cast());
        }
        Objects { loaded }
    }

    /// The frames at `addr` (an address inside the call, not the return
    /// address), innermost first; empty if no object or symbol knows it.
    pub(super) fn frames(&mut self, addr: usize) -> Vec<Frame> {
        let Some(obj) = self.loaded.iter_mut().find(|o| {
            let a = addr.wrapping_sub(o.bias);
            o.segments.iter().any(|&(s, e)| (s..e).contains(&a))
        }) else {
            return Vec::new();
        };
        let probe = addr.wrapping_sub(obj.bias) as u64;
        let path = &obj.path;
        let Some(debug) = obj.read.get_or_insert_with(|| Debug::read(path)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(ctx) = &debug.context {
            if let Ok(mut iter) = ctx.find_frames(probe).skip_all_loads() {
                while let Ok(Some(frame)) = iter.next() {
                    let function = frame
                        .function
                        .as_ref()
                        .and_then(|f| f.raw_name().ok())
                        .map(|n| demangle(&n))
                        .unwrap_or_default();
                    let (file, line) = frame
                        .location
                        .map_or((None, None), |l| (l.file.map(super::shorten_path), l.line));
                    out.push(Frame {
                        function,
                        file,
                        line,
                    });
                }
            }
        }
        if out.iter().all(|f| f.function.is_empty()) {
            if let Some(name) = debug.symbol(probe) {
                if out.is_empty() {
                    out.push(Frame {
                        function: String::new(),
                        file: None,
                        line: None,
                    });
                }
                if let Some(first) = out.first_mut() {
                    first.function = demangle(name);
                }
            }
        }
        out
    }
}

impl Debug {
    fn read(path: &std::path::Path) -> Option<Debug> {
        let map = Mapping::open(path)?;
        let data = map.bytes();
        let file = object::File::parse(data).ok()?;
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
        let i = self.symbols.partition_point(|&(a, _, _)| a <= probe);
        let &(start, size, name) = self.symbols.get(i.checked_sub(1)?)?;
        (size == 0 || probe - start < size).then_some(name)
    }
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
        assert!(objects.loaded[0].path.ends_with("exe"));
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
                        .map(|p| super::super::shorten_path(&p.to_string_lossy())),
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
    }

    #[test]
    fn an_address_in_no_object_has_no_frames() {
        assert!(Objects::load().frames(16).is_empty());
    }
}
