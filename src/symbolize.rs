//! Late symbolization with a per-address cache, and trimming of the frames
//! a user does not want to see.
//!
//! Runs only when a snapshot is built, never inside the hook. The cache and
//! everything it holds are allocated under the reentrancy guard, so they are
//! counted as heapwatch's overhead. The cache is bounded
//! ([`CACHE_CAPACITY`] addresses; when full it is cleared and refilled).

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use serde::{Deserialize, Serialize};

use crate::guard::untracked;

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
mod objects;

/// Most addresses kept in the symbol cache.
pub(crate) const CACHE_CAPACITY: usize = 65_536;

/// One frame of a callsite, after symbolization. An address inlined into
/// its caller gives several frames, innermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    /// Demangled function name (without the hash), or `module+0xoffset`
    /// when the address has no symbol.
    pub function: String,
    /// Source file, shortened the same way on every run and machine:
    /// `tokio-1.54.1/src/runtime/mod.rs` for a dependency,
    /// `library/alloc/src/vec/mod.rs` for the standard library,
    /// `build/<package>/out/…` for code a build script generated, and
    /// relative to its crate's directory (`src/main.rs`,
    /// `examples/demo.rs`) for the program's own code (on 64-bit Linux,
    /// where heapwatch reads DWARF itself: wherever its source tree was
    /// when it was built).
    /// `null` when the address has no debug information (a missing key, as
    /// in files saved by earlier builds, reads as `null`).
    #[serde(default)]
    pub file: Option<String>,
    /// Line in `file`, or `null`.
    #[serde(default)]
    pub line: Option<u32>,
}

type Cache = Mutex<HashMap<usize, Arc<[Frame]>>>;

fn cache() -> &'static Cache {
    crate::callsites::register_atfork();
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| untracked(|| Mutex::new(HashMap::new())))
}

/// Symbolizes return addresses (innermost first) into frames, trimmed of
/// heapwatch's and the allocation plumbing's frames at the top, and cut to
/// the configured depth below them (`capture::user_depth`).
pub(crate) fn symbolize(ips: &[usize]) -> Vec<Frame> {
    let groups: Vec<Arc<[Frame]>> = ips
        .iter()
        .filter(|&&ip| ip > 1)
        .map(|&ip| resolve_cached(ip))
        .collect();
    trim(&groups, crate::capture::user_depth())
}

/// A callsite's symbolized, trimmed frames and its id, shared by every
/// snapshot that shows it.
#[derive(Clone)]
pub(crate) struct SiteSymbols {
    pub(crate) frames: Arc<[Frame]>,
    pub(crate) id: Arc<str>,
}

type SiteCache = Mutex<HashMap<u32, SiteSymbols>>;

fn site_cache() -> &'static SiteCache {
    crate::callsites::register_atfork();
    static CACHE: OnceLock<SiteCache> = OnceLock::new();
    CACHE.get_or_init(|| untracked(|| Mutex::new(HashMap::new())))
}

/// The symbols of the callsite in table slot `slot`, computed once: a
/// slot's frames never change after it is published. Bounded by the
/// callsite table's capacity.
pub(crate) fn site_symbols(slot: u32, id_of: impl Fn(&[Frame]) -> String) -> SiteSymbols {
    if let Some(hit) = site_cache().lock().ok().and_then(|c| c.get(&slot).cloned()) {
        return hit;
    }
    // Everything computed here is kept in the cache for the rest of the
    // process: it is heapwatch's, so all of it is allocated (and its
    // temporaries freed) under the guard.
    untracked(|| {
        let frames = symbolize(&crate::callsites::site_frames(slot));
        let id: Arc<str> = id_of(&frames).into();
        let entry = SiteSymbols {
            frames: frames.into(),
            id,
        };
        // Another snapshot may have cached this slot meanwhile: keep its
        // entry, and return it. Replacing it would leave that snapshot's
        // frames (allocated here, as overhead) owned by the program alone,
        // and freed as the program's when it drops its snapshot.
        let mut c = site_cache().lock().unwrap_or_else(|e| e.into_inner());
        c.entry(slot).or_insert(entry).clone()
    })
}

/// Whether debug information was read since [`release_debug_info`] last
/// ran.
static PARSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Frees the debug information read to symbolize new addresses (tens of
/// MiB for a binary with full debug information). The frames are kept in
/// heapwatch's own caches, so only addresses never seen before make it read
/// again.
pub(crate) fn release_debug_info() {
    // Taken under the lock whatever the flag says: a snapshot running at the
    // same time may have read objects again after this one's last look-up,
    // and clearing the flag must not leave them loaded after both returned.
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        PARSED.store(false, std::sync::atomic::Ordering::Relaxed);
        untracked(|| {
            if let Some(objects) = objects().lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                objects.release();
            }
        });
    }
    // Elsewhere the `backtrace` crate symbolizes, into the cache it shares
    // with the program: clearing it may free the program's entries as
    // heapwatch's (see `objects`).
    #[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
    if PARSED.swap(false, std::sync::atomic::Ordering::Relaxed) {
        untracked(backtrace::clear_symbol_cache);
    }
}

/// heapwatch's own symbolizer's state, read on the first address a
/// snapshot has not seen; what it read is dropped by
/// [`release_debug_info`], its list of objects is kept.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn objects() -> &'static Mutex<Option<objects::Objects>> {
    crate::callsites::register_atfork();
    static OBJECTS: Mutex<Option<objects::Objects>> = Mutex::new(None);
    &OBJECTS
}

/// The symbolizer's locks, held by a forking thread from [`before_fork`]
/// to [`after_fork`].
struct ForkHeld {
    _sites: MutexGuard<'static, HashMap<u32, SiteSymbols>>,
    _cache: MutexGuard<'static, HashMap<usize, Arc<[Frame]>>>,
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    _objects: MutexGuard<'static, Option<objects::Objects>>,
}

/// Where [`before_fork`] keeps the guards until [`after_fork`] drops them.
struct ForkSlot(UnsafeCell<Option<ForkHeld>>);

// SAFETY: the slot is only written and read by a thread that holds every
// lock whose guard it keeps (see `before_fork` and `after_fork`): the locks
// themselves make those accesses one thread at a time. `prepare` and the
// `parent` and `child` handlers of one `fork` run on the forking thread
// (pthread_atfork(3)), so the guards are dropped by the thread that took
// them, or, in the child, by its copy.
unsafe impl Sync for ForkSlot {}

static FORK_HELD: ForkSlot = ForkSlot(UnsafeCell::new(None));

/// Before `fork` (from the `pthread_atfork` handler in `callsites`): takes
/// the symbolizer's locks, so that no other thread is in the middle of
/// symbolizing when the process is copied. A child would otherwise start
/// with a lock held by a thread it does not have, and hang in its first
/// `snapshot()`. Runs as ordinary code of the forking thread, before the
/// fork handlers registered earlier (the inner allocator's) and glibc's
/// own fork locks: it may wait for a snapshot being built on another
/// thread to finish the address it is reading, and, if no snapshot has
/// listed the loaded objects yet, lists them (allocating) so that the
/// child inherits the list (see `Objects::frames`).
pub(crate) fn before_fork() {
    let held = ForkHeld {
        _sites: site_cache().lock().unwrap_or_else(PoisonError::into_inner),
        _cache: cache().lock().unwrap_or_else(PoisonError::into_inner),
        #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
        _objects: {
            let mut objects = objects().lock().unwrap_or_else(PoisonError::into_inner);
            // The child must not list the loaded objects itself (see
            // `Objects::frames`): it inherits this list.
            if objects.is_none() && !in_fork_child() {
                *objects = Some(untracked(objects::Objects::load));
            }
            objects
        },
    };
    // SAFETY: this thread now holds every lock the slot's guards are for,
    // so no other thread is in `before_fork` past this point or in
    // `after_fork` (see `ForkSlot`). The slot is empty: the last
    // `before_fork` was followed by an `after_fork` (in the parent, also
    // when `fork` fails).
    unsafe { *FORK_HELD.0.get() = Some(held) };
}

/// Set in a `fork` child (by [`after_fork_in_child`]), for good.
static FORKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process is a `fork` child of a process that had registered
/// heapwatch's fork handler (see `callsites::register_atfork`).
#[cfg_attr(
    not(all(target_os = "linux", target_pointer_width = "64")),
    allow(dead_code)
)]
pub(crate) fn in_fork_child() -> bool {
    FORKED.load(std::sync::atomic::Ordering::Relaxed)
}

/// After `fork`, in the child, before [`after_fork`]: remembers that this
/// is a child. Never allocates.
pub(crate) fn after_fork_in_child() {
    FORKED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// After `fork`, in the parent and in the child: releases the locks
/// [`before_fork`] took. Never allocates.
pub(crate) fn after_fork() {
    // SAFETY: runs on the thread that ran `before_fork` (in the child, on
    // its copy, the child's only thread), which holds the locks; see
    // `ForkSlot`.
    let held = unsafe { (*FORK_HELD.0.get()).take() };
    drop(held);
}

/// The symbol cache's size now (addresses).
pub(crate) fn cache_len() -> usize {
    cache().lock().map_or(0, |c| c.len())
}

fn resolve_cached(ip: usize) -> Arc<[Frame]> {
    if let Some(hit) = cache().lock().ok().and_then(|c| c.get(&ip).cloned()) {
        return hit;
    }
    PARSED.store(true, std::sync::atomic::Ordering::Relaxed);
    untracked(|| {
        let frames: Arc<[Frame]> = resolve(ip).into();
        if let Ok(mut c) = cache().lock() {
            if c.len() >= CACHE_CAPACITY {
                c.clear();
                c.shrink_to(CACHE_CAPACITY);
            }
            return c.entry(ip).or_insert(frames).clone();
        }
        frames
    })
}

fn resolve(ip: usize) -> Vec<Frame> {
    // Return addresses point after the call: look up the call itself.
    let addr = ip.saturating_sub(1);
    let mut out = frames_at(addr);
    if out.is_empty() || out.iter().all(|f| f.function.is_empty()) {
        return vec![Frame {
            function: module_offset(addr),
            file: None,
            line: None,
        }];
    }
    for f in &mut out {
        if f.function.is_empty() {
            f.function = module_offset(addr);
        }
    }
    out
}

/// The frames at `addr`, innermost first, as the debug information or the
/// symbol table gives them (names may be empty).
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn frames_at(addr: usize) -> Vec<Frame> {
    let mut objects = objects().lock().unwrap_or_else(|e| e.into_inner());
    match &mut *objects {
        Some(known) => known.frames(addr),
        // A child with no list inherited (its parent was a child itself
        // and had none): listing would call `dl_iterate_phdr` (see
        // `Objects::frames`), so the address shows as `module+offset`.
        None if in_fork_child() => Vec::new(),
        None => objects.insert(objects::Objects::load()).frames(addr),
    }
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn frames_at(addr: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    backtrace::resolve(addr as *mut std::ffi::c_void, |sym| {
        let function = sym.name().map(|n| format!("{n:#}")).unwrap_or_default();
        out.push(Frame {
            function,
            file: sym
                .filename()
                .map(|p| shorten_path(&p.to_string_lossy(), None)),
            line: sym.lineno(),
        });
    });
    out
}

/// `libname.so+0x1234` for an address with no symbol.
fn module_offset(addr: usize) -> String {
    // SAFETY: `dladdr` only reads its address argument and fills `info`,
    // a valid, writable local.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let found = unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } != 0;
    if found && !info.dli_fname.is_null() {
        // SAFETY: `dladdr` succeeded, so `dli_fname` is a valid C string.
        let path = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_string_lossy();
        let name = program_file_name(&path)
            .unwrap_or_else(|| path.rsplit('/').next().unwrap_or(&path).to_string());
        let off = addr.wrapping_sub(info.dli_fbase as usize);
        format!("{name}+{off:#x}")
    } else {
        format!("{addr:#x}")
    }
}

/// The program's file name, if `loaded_as` (what `dladdr` names an object
/// by) is the program itself: the loader names it by `argv[0]`, which is
/// whatever it was started as (a symlink, a name found in `PATH`), so that
/// `module+offset` frames, and so callsite ids, would change with it.
fn program_file_name(loaded_as: &str) -> Option<String> {
    let argv0 = std::env::args_os().next()?;
    if argv0.to_string_lossy() != loaded_as {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.file_name()?.to_string_lossy().into_owned())
}

/// Shortens a source path, from the path alone (never from the current
/// directory or the machine), so that a callsite's frames, and so its `id`,
/// are the same whichever directory the program was started from, and two
/// builds of one source tree in different places match:
///
/// - cargo registry and git checkouts lose everything before
///   `crate-version/` (`tokio-1.54.1/src/runtime/mod.rs`);
/// - the toolchain's sources (`/rustc/<commit>/library/…`, or the
///   `rust-src` component's `…/lib/rustlib/src/rust/library/…` that a
///   `-Zbuild-std` build records) lose everything before `library/`, and
///   the standard library's own dependencies (`/rust/deps/…`) become
///   `crate-version/…`;
/// - a file a build script generated becomes `build/<package>/out/…`;
/// - any other absolute path in a crate becomes relative to the crate's
///   directory: it keeps its last `src` component and what follows
///   (`src/main.rs`, `src/bin/tool.rs`), or, with no `src` in it, its last
///   `examples`, `tests` or `benches` component and what follows
///   (`examples/demo.rs`, `tests/common/mod.rs`);
/// - anything else is left as it is.
///
/// `comp_dir` is the directory the compiler ran in, when known (DWARF's
/// `DW_AT_comp_dir`: the workspace's directory, where cargo runs rustc).
/// A path under it is made relative to it before the crate's directory is
/// looked for, so that the directories above the workspace never count,
/// whatever they are called. Without it, a test file of a crate checked
/// out in `~/src/app` keeps `src/app/tests/…` (the last `src` is the home
/// directory's) where one checked out in `/builds/app` keeps `tests/…`:
/// two ids for one callsite.
pub(crate) fn shorten_path(path: &str, comp_dir: Option<&str>) -> String {
    for marker in ["/registry/src/", "/git/checkouts/"] {
        if let Some(i) = path.find(marker) {
            let rest = &path[i + marker.len()..];
            // Skip the index directory (`index.crates.io-…/`).
            return rest.split_once('/').map_or(rest, |(_, r)| r).to_string();
        }
    }
    if path.starts_with("/rustc/") {
        if let Some(i) = path.find("/library/") {
            return path[i + 1..].to_string();
        }
    }
    // The standard library's own dependencies (its `hashbrown`), as the
    // toolchain records them: `crate-version/…` like a registry crate.
    if let Some(rest) = path.strip_prefix("/rust/deps/") {
        return rest.to_string();
    }
    if let Some(generated) = out_dir_file(path) {
        return generated;
    }
    // The `rust-src` component, as a `-Zbuild-std` build records it.
    if let Some(i) = path.find("/lib/rustlib/src/rust/library/") {
        return path[i + "/lib/rustlib/src/rust/".len()..].to_string();
    }
    // Only an absolute one: a remapped build (`--remap-path-prefix`,
    // cargo's `trim-paths`) records a dependency's as `crate-version`,
    // which must stay in its paths as a registry crate's does.
    let within = comp_dir
        .filter(|d| d.starts_with('/'))
        .map(|d| d.trim_end_matches('/'))
        .filter(|d| !d.is_empty())
        .and_then(|d| path.strip_prefix(d))
        .and_then(|rest| rest.strip_prefix('/'));
    if let Some(rel) = within {
        return in_crate(rel).unwrap_or(rel).to_string();
    }
    if path.starts_with('/') {
        if let Some(short) = in_crate(path) {
            return short.to_string();
        }
    }
    path.to_string()
}

/// A file a build script generated (`OUT_DIR`,
/// `…/build/<package>-<hash>/out/…`) as `build/<package>/out/…`: where the
/// target directory is and the hash of the build's settings left out.
fn out_dir_file(path: &str) -> Option<String> {
    path.match_indices("/out/").find_map(|(i, _)| {
        let (parent, dir) = path[..i].rsplit_once('/')?;
        if !(parent.ends_with("/build") || parent == "build") {
            return None;
        }
        let (package, hash) = dir.rsplit_once('-')?;
        let hex = hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        (hex && !package.is_empty())
            .then(|| format!("build/{package}/out/{}", &path[i + "/out/".len()..]))
    })
}

/// The part of `path` from its crate's directory on: from its last `src`
/// component, or with none, its last `examples`, `tests` or `benches`
/// component (see [`shorten_path`]).
fn in_crate(path: &str) -> Option<&str> {
    let from_last = |dirs: &[&str]| {
        dirs.iter()
            .filter_map(|d| {
                if path.starts_with(&format!("{d}/")) {
                    // A relative path starting in the directory.
                    Some(0)
                } else {
                    path.rfind(&format!("/{d}/")).map(|i| i + 1)
                }
            })
            .max()
    };
    from_last(&["src"])
        .or_else(|| from_last(&["examples", "tests", "benches"]))
        .map(|i| &path[i..])
}

/// heapwatch's own frames and those of the stack walker it calls.
const OWN: &[&str] = &["heapwatch::", "backtrace::"];

/// The allocator shims rustc generates for the `#[global_allocator]` item
/// (their file and line are that item's).
const SHIMS: &[&str] = &["__rustc::", "__rust_", "__rg_"];

/// The type and the rest (`Trait>::method`) of a `<T as Trait>::method`
/// name, the type without leading `&`, `&mut`, `[`, `(` or `*`.
fn qualified(function: &str) -> Option<(&str, &str)> {
    let (self_ty, trait_and_method) = function
        .strip_prefix('<')?
        .trim_start_matches('<')
        .split_once(" as ")?;
    let self_ty = self_ty.trim_start_matches(['&', '[', '(', '*']);
    Some((
        self_ty.strip_prefix("mut ").unwrap_or(self_ty),
        trait_and_method,
    ))
}

const PLUMBING: &[&str] = &[
    "heapwatch::",
    "backtrace::",
    "alloc::",
    "core::",
    "std::",
    "hashbrown::",
    "__rust",
    "__rg_",
    "__rdl_",
    "_Unwind",
];

/// Whether a frame belongs to heapwatch or to the standard library's
/// allocation plumbing (what stands between the user's code and the hook).
fn is_plumbing(function: &str) -> bool {
    let f = function.trim_start_matches('<');
    // `<T as Trait>::method`: plumbing if the self type is heapwatch's;
    // else if the trait is the standard library's and the self type is
    // too, or a primitive (`<str as ToString>`, `<[T] as ToOwned>`). A
    // trait from outside the standard library is code of the program or
    // of its dependencies whatever it is implemented for (the program's
    // extension trait on `Vec<u8>`, `u32` or every `T`; `bytes`' `BufMut`
    // for `Vec<u8>`), shown as such.
    if let Some((self_ty, trait_and_method)) = qualified(function) {
        if OWN.iter().any(|p| self_ty.starts_with(p)) {
            return true;
        }
        if !PLUMBING.iter().any(|p| trait_and_method.starts_with(p)) {
            return false;
        }
        if PLUMBING.iter().any(|p| self_ty.starts_with(p)) {
            return true;
        }
        // A primitive (`str`, `u8`, `[u8; 4]`) or a bare type parameter
        // (`T`, `[T]`).
        let name = self_ty.split([']', ')', ';', '<']).next().unwrap_or("");
        let bare = !name.contains("::");
        let primitive = name.starts_with(|c: char| c.is_ascii_lowercase());
        let parameter = !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase());
        return bare && (primitive || parameter);
    }
    PLUMBING.iter().any(|p| f.starts_with(p))
}

/// Whether a symbolized frame is plumbing: by name, or by being the
/// standard library's own source (`library/…` once shortened), which also
/// catches inherent methods of primitive types (`<[u8]>::to_vec_in`,
/// `<str>::repeat`). Never a `<T as Trait>::method` in the program's own
/// source (`src/…`, `examples/…`, `tests/…`, `benches/…`) that is not
/// heapwatch's: with v0 symbol names (`-C symbol-mangling-version=v0`) the
/// program's `impl From<Tag> for Vec<u8>` is named `<alloc::vec::Vec<u8>
/// as core::convert::From<app::Tag>>::from`, which by its name alone is
/// the standard library's.
fn is_plumbing_frame(f: &Frame) -> bool {
    let file = f.file.as_deref();
    if file.is_some_and(|p| p.starts_with("library/")) {
        return true;
    }
    let programs = |p: &str| {
        ["src/", "examples/", "tests/", "benches/"]
            .iter()
            .any(|d| p.starts_with(d))
    };
    if f.function.starts_with('<') && file.is_some_and(programs) && !names_own(&f.function) {
        return false;
    }
    is_plumbing(&f.function)
}

/// Whether a `<T as Trait>::method` name's type or trait is heapwatch's
/// (or its stack walker's).
fn names_own(function: &str) -> bool {
    let (self_ty, trait_and_method) =
        qualified(function).unwrap_or((function.trim_start_matches('<'), ""));
    OWN.iter()
        .any(|p| self_ty.starts_with(p) || trait_and_method.starts_with(p))
}

/// The function the standard library runs a thread's (and `main`'s) body
/// from: its frames and everything below them (thread start-up, `lang_start`,
/// libc) are the same for every callsite of a thread, so a callsite ends
/// above it, as Rust's own short backtraces do.
const STACK_BASE: &str = "__rust_begin_short_backtrace";

/// The same for heapwatch's own threads, which are not `std` threads.
const OWN_STACK_BASE: &str = "heapwatch::threads::thread_base";

/// The C `main` that rustc generates for a program (a symbol with no
/// source): it calls the runtime (`lang_start`), which calls the program's
/// own `main` through [`STACK_BASE`]. Allocations made before that (the
/// runtime setting up) have only it and libc below them. Known by its
/// caller being `lang_start`, so that a `#![no_main]` program's own
/// `extern "C" fn main` is not taken for it.
const C_MAIN: &str = "main";

/// Whether `f` is where a callsite's stack ends, `above` being the frame
/// it called (the previous one, innermost first).
fn is_stack_base(above: Option<&Frame>, f: &Frame) -> bool {
    f.function.contains(STACK_BASE)
        || f.function.ends_with(OWN_STACK_BASE)
        || (f.function == C_MAIN
            && f.file.is_none()
            && above.is_some_and(|a| a.function.starts_with("std::rt::lang_start")))
}

/// Flattens a stack's symbolized return addresses (`groups`, one per
/// address, each several frames for inlined calls) into frames: the leading
/// plumbing frames dropped, then at most `depth` addresses kept from the
/// first that shows a user frame, and nothing from the standard library's
/// thread entry ([`STACK_BASE`]) down. Without the cut at `depth`, a
/// callsite captured once through a path with one more heapwatch frame
/// would lose one frame at the bottom of its stack and show as a second
/// callsite. If no frame above the thread entry is the user's, see
/// [`library_only`].
fn trim(groups: &[Arc<[Frame]>], depth: usize) -> Vec<Frame> {
    // The stack down to the thread entry: the addresses above it, then the
    // frames of the entry's own address inlined above it (the thread's
    // closure).
    let mut above: Vec<&[Frame]> = Vec::with_capacity(groups.len());
    let mut at_base = false;
    let mut previous: Option<&Frame> = None;
    'groups: for group in groups {
        for (k, f) in group.iter().enumerate() {
            if is_stack_base(previous, f) {
                above.push(&group[..k]);
                at_base = true;
                break 'groups;
            }
            previous = Some(f);
        }
        above.push(group);
    }
    let Some(first) = above
        .iter()
        .position(|g| g.iter().any(|f| !is_plumbing_frame(f)))
    else {
        return library_only(groups, &above, depth);
    };
    let mut out = Vec::new();
    for (k, group) in above.iter().skip(first).take(depth).enumerate() {
        if k == 0 {
            out.extend(group.iter().skip_while(|f| is_plumbing_frame(f)).cloned());
        } else {
            out.extend(group.iter().cloned());
        }
    }
    // Kept down to the thread entry: the standard library's frames just
    // above it (`FnOnce::call_once`, which calls `main` or a thread's `fn`)
    // go too, so that the last frame is `main` or the thread's closure.
    if at_base && first + depth >= above.len() {
        while out.last().is_some_and(is_plumbing_frame) {
            out.pop();
        }
    }
    out
}

/// The crates whose frames stand between the standard library's code that
/// allocates and the allocator: `alloc::alloc::alloc`, `RawVec`, `Box::new`,
/// `Arc::new`, `hashbrown`'s tables (and `core`'s generic glue).
const ALLOCATION_CRATES: &[&str] = &["alloc::", "core::", "hashbrown::"];

/// The frames of a stack in which no frame above the thread entry is the
/// user's (`above`, the stack down to the entry): the standard library
/// allocating on its own (a test harness's threads), or the runtime before
/// `main`. The standard library's frames are kept then, since they are all
/// there is to show, from the first that allocates: below heapwatch's, the
/// allocator shims (whose file and line are the program's
/// `#[global_allocator]` item) and the allocation plumbing of the `alloc`,
/// `core` and `hashbrown` crates, so that a `std` function such as
/// `std::rt::init` leads, not `alloc::alloc::alloc`. At most `depth`
/// addresses, and as for any stack nothing from the thread entry down. If
/// there is no such frame above the entry, the same from the first frame
/// below heapwatch's and the shims; and if heapwatch's frames are all there
/// is above the entry, the whole stack less heapwatch's frames.
fn library_only(groups: &[Arc<[Frame]>], above: &[&[Frame]], depth: usize) -> Vec<Frame> {
    fn own(f: &Frame) -> bool {
        let name = f.function.trim_start_matches('<');
        OWN.iter().chain(SHIMS).any(|p| name.starts_with(p))
    }
    fn allocating(f: &Frame) -> bool {
        let name = f.function.trim_start_matches('<');
        own(f) || ALLOCATION_CRATES.iter().any(|p| name.starts_with(p))
    }
    let out = library_frames(above, depth, allocating);
    if !out.is_empty() {
        return out;
    }
    let out = library_frames(above, depth, own);
    if !out.is_empty() {
        return out;
    }
    groups
        .iter()
        .flat_map(|g| g.iter())
        .skip_while(|f| own(f))
        .cloned()
        .collect()
}

/// At most `depth` addresses of `above`, from the first frame that is not
/// `skipped`.
fn library_frames(above: &[&[Frame]], depth: usize, skipped: fn(&Frame) -> bool) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut kept = 0;
    for group in above {
        if kept == depth {
            break;
        }
        if kept == 0 {
            out.extend(group.iter().skip_while(|f| skipped(f)).cloned());
            if out.is_empty() {
                continue;
            }
        } else {
            out.extend(group.iter().cloned());
        }
        kept += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plumbing_is_recognised() {
        for p in [
            "alloc::raw_vec::RawVec<T,A>::grow_one",
            "<alloc::vec::Vec<T> as core::clone::Clone>::clone",
            "<str as alloc::string::ToString>::to_string",
            "<[T] as alloc::borrow::ToOwned>::to_owned",
            "__rust_alloc",
            "heapwatch::tracker::record_sampled",
            "<heapwatch::Tracker<A> as core::alloc::global::GlobalAlloc>::alloc",
            "<heapwatch::snapshot::Snapshot as serde_core::ser::Serialize>::serialize",
            "<alloc::vec::Vec<T> as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "<T as alloc::string::ToString>::to_string",
            "<&mut W as core::fmt::Write>::write_str",
            "core::ptr::drop_in_place<<myapp::X as myapp::Y>::Z>",
        ] {
            assert!(is_plumbing(p), "{p}");
        }
        for u in [
            "myapp::cache::Cache::insert",
            "<myapp::Foo as core::fmt::Display>::fmt",
            "main",
            "tokio_app::handler",
            // Extension traits of the program's, on std types, primitives
            // and every `T`.
            "<alloc::vec::Vec<alloc::vec::Vec<u8>> as myapp::Remember>::remember",
            "<u32 as myapp::MakeBuf>::make_buf",
            "<[u8] as myapp::ext::Hex>::to_hex",
            "<T as myapp::Describe>::describe",
            "<&mut alloc::string::String as myapp::Pad>::pad",
        ] {
            assert!(!is_plumbing(u), "{u}");
        }
    }

    #[test]
    fn the_program_is_named_by_its_file_however_it_was_started() {
        // This test binary, run again through a symlink of another name:
        // frames with no symbol are named by the file, not the link.
        const CHILD: &str = "HEAPWATCH_TEST_MODULE_NAME_CHILD";
        let here = the_program_is_named_by_its_file_however_it_was_started as fn() as usize;
        if std::env::var_os(CHILD).is_some() {
            println!("module: {}", module_offset(here));
            return;
        }
        let exe = std::env::current_exe().expect("current_exe");
        let dir = std::env::temp_dir().join(format!("heapwatch-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let link = dir.join("another-name");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link).expect("symlink");
        let out = std::process::Command::new(&link)
            .args([
                "--exact",
                "symbolize::tests::the_program_is_named_by_its_file_however_it_was_started",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .expect("run through the link");
        let _ = std::fs::remove_dir_all(&dir);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let file = exe.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            stdout.contains(&format!("module: {file}+0x")),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_programs_impls_with_v0_names_are_its_frames() {
        let f = |function: &str, file: Option<&str>| Frame {
            function: function.to_string(),
            file: file.map(str::to_string),
            line: None,
        };
        let v0 = "<alloc::vec::Vec<u8> as core::convert::From<app::Tag>>::from";
        assert!(!is_plumbing_frame(&f(v0, Some("src/main.rs"))));
        assert!(!is_plumbing_frame(&f(v0, Some("tests/leaks.rs"))));
        // By its name alone (no debug information) it is the standard
        // library's, as before; and where the file says so.
        assert!(is_plumbing_frame(&f(v0, None)));
        assert!(is_plumbing_frame(&f(
            "<alloc::vec::Vec<T> as core::clone::Clone>::clone",
            Some("library/alloc/src/vec/mod.rs")
        )));
        // heapwatch's own, built from its source as a path dependency.
        assert!(is_plumbing_frame(&f(
            "<heapwatch::Tracker<A> as core::alloc::global::GlobalAlloc>::alloc",
            Some("src/tracker.rs")
        )));
        // The standard library's `hashbrown`, its file shortened as a
        // dependency's.
        assert!(is_plumbing_frame(&f(
            "<hashbrown::map::HashMap<K,V,S,A> as core::iter::traits::collect::Extend<(K,V)>>::extend",
            Some(&shorten_path("/rust/deps/hashbrown-0.16.1/src/map.rs", None))
        )));
    }

    #[test]
    fn standard_library_sources_are_plumbing() {
        let f = |function: &str, file: Option<&str>| Frame {
            function: function.to_string(),
            file: file.map(str::to_string),
            line: None,
        };
        let frames: Vec<Arc<[Frame]>> = vec![
            [f(
                "<[u8]>::to_vec_in::<alloc::alloc::Global>",
                Some("library/alloc/src/slice.rs"),
            )]
            .into(),
            [f("<str>::repeat", Some("library/alloc/src/str.rs"))].into(),
            [f("app::remember", Some("src/app.rs"))].into(),
            [f("std::rt::lang_start", Some("library/std/src/rt.rs"))].into(),
        ];
        let trimmed = trim(&frames, 16);
        assert_eq!(trimmed[0].function, "app::remember");
        assert_eq!(trimmed.len(), 2, "only leading plumbing is trimmed");
    }

    #[test]
    fn stacks_are_cut_to_the_same_depth_below_the_plumbing() {
        // Symbolized return addresses, one frame each.
        let f = |function: &str| -> Arc<[Frame]> {
            vec![Frame {
                function: function.to_string(),
                file: None,
                line: None,
            }]
            .into()
        };
        let capture = f("heapwatch::capture::capture");
        let slow = f("heapwatch::tracker::alloc_slow");
        let rust_alloc = f("__rust_alloc");
        let user: Vec<Arc<[Frame]>> = (0..8).map(|k| f(&format!("app::level{k}"))).collect();
        // The same callsite, captured through a path with one more
        // heapwatch frame: the raw capture (cut at 7 addresses) keeps one
        // user frame less.
        let mut short_path = vec![capture.clone(), rust_alloc.clone()];
        short_path.extend(user[..5].iter().cloned());
        let mut long_path = vec![capture, slow, rust_alloc];
        long_path.extend(user[..4].iter().cloned());
        let a = trim(&short_path, 4);
        let b = trim(&long_path, 4);
        assert_eq!(a, b);
        let names: Vec<_> = a.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(
            names,
            ["app::level0", "app::level1", "app::level2", "app::level3"]
        );
    }

    #[test]
    fn stacks_end_above_the_thread_entry() {
        let f = |function: &str, file: Option<&str>| Frame {
            function: function.to_string(),
            file: file.map(str::to_string),
            line: None,
        };
        let one =
            |function: &str, file: Option<&str>| -> Arc<[Frame]> { [f(function, file)].into() };
        let entry = "std::sys::backtrace::__rust_begin_short_backtrace";
        let names = |frames: Vec<Frame>| -> Vec<String> {
            frames.into_iter().map(|f| f.function).collect()
        };
        // A spawned thread: everything from the entry down is std and libc.
        let thread = vec![
            one("__rust_alloc", None),
            one("app::put", Some("src/app.rs")),
            one("app::worker", Some("src/app.rs")),
            one("app::main::{{closure}}", Some("src/app.rs")),
            one(entry, Some("library/std/src/sys/backtrace.rs")),
            one(
                "std::thread::lifecycle::spawn_unchecked::{{closure}}",
                Some("library/std/src/thread/lifecycle.rs"),
            ),
            one(
                "<std::sys::thread::unix::Thread>::new::thread_start",
                Some("library/std/src/sys/thread/unix.rs"),
            ),
            one("start_thread", None),
            one("clone3", None),
        ];
        assert_eq!(
            names(trim(&thread, 16)),
            ["app::put", "app::worker", "app::main::{{closure}}"]
        );
        // `main`, with the thread's body inlined into the entry's frame:
        // the inlined frames above the entry stay.
        let main = vec![
            one("__rust_alloc", None),
            one("app::load", Some("src/main.rs")),
            [
                f("app::main", Some("src/main.rs")),
                f(
                    "core::ops::function::FnOnce::call_once",
                    Some("library/core/src/ops/function.rs"),
                ),
                f(entry, Some("library/std/src/sys/backtrace.rs")),
                f(
                    "std::rt::lang_start::{{closure}}",
                    Some("library/std/src/rt.rs"),
                ),
            ]
            .into(),
            one(
                "std::rt::lang_start_internal",
                Some("library/std/src/rt.rs"),
            ),
            one("main", None),
            one("__libc_start_main", None),
            one("_start", None),
        ];
        assert_eq!(names(trim(&main, 16)), ["app::load", "app::main"]);
        // Cut at the depth before the entry: the frames above the cut stay
        // as they are, standard library's included.
        let deep = vec![
            one("__rust_alloc", None),
            one("app::load", Some("src/main.rs")),
            one(
                "core::iter::traits::iterator::Iterator::for_each",
                Some("library/core/src/iter/traits/iterator.rs"),
            ),
            one("app::main", Some("src/main.rs")),
            one(entry, Some("library/std/src/sys/backtrace.rs")),
        ];
        assert_eq!(
            names(trim(&deep, 2)),
            [
                "app::load",
                "core::iter::traits::iterator::Iterator::for_each"
            ]
        );
        // The depth still counts addresses from the first user frame.
        assert_eq!(names(trim(&thread, 2)), ["app::put", "app::worker"]);
        // No user frame above the entry (the standard library allocating
        // on its own, as a test harness's threads do): the standard
        // library's frames are kept, but still only above the entry and
        // to the depth.
        let std_only = vec![
            one("heapwatch::capture::capture", None),
            one("__rustc::__rust_alloc", Some("tests/app.rs")),
            one("alloc::alloc::alloc", Some("library/alloc/src/alloc.rs")),
            one(
                "alloc::raw_vec::RawVec::grow_one",
                Some("library/alloc/src/raw_vec.rs"),
            ),
            one("test::run_test", Some("library/test/src/lib.rs")),
            one(entry, Some("library/std/src/sys/backtrace.rs")),
            one("start_thread", None),
        ];
        // The allocator shim's frame goes too (its file and line are the
        // program's `#[global_allocator]` item, not an allocation of its),
        // and so does the allocation plumbing: the function that allocates
        // leads.
        assert_eq!(names(trim(&std_only, 16)), ["test::run_test"]);
        assert_eq!(names(trim(&std_only, 1)), ["test::run_test"]);
        // Plumbing all the way down to the entry: shown from below the shim.
        let plumbing_only = vec![
            one("__rustc::__rust_alloc", Some("tests/app.rs")),
            one("alloc::alloc::alloc", Some("library/alloc/src/alloc.rs")),
            one(
                "alloc::raw_vec::RawVec::grow_one",
                Some("library/alloc/src/raw_vec.rs"),
            ),
            one(entry, Some("library/std/src/sys/backtrace.rs")),
        ];
        assert_eq!(
            names(trim(&plumbing_only, 16)),
            ["alloc::alloc::alloc", "alloc::raw_vec::RawVec::grow_one"]
        );
        // Before the program's `main`, the runtime setting up: its frames
        // above the C `main`, to the depth.
        let runtime = vec![
            one("__rustc::__rust_alloc", None),
            [
                f("alloc::alloc::alloc", Some("library/alloc/src/alloc.rs")),
                f(
                    "<alloc::alloc::Global as core::alloc::Allocator>::allocate",
                    Some("library/alloc/src/alloc.rs"),
                ),
                f(
                    "alloc::sync::Arc<T>::new",
                    Some("library/alloc/src/sync.rs"),
                ),
            ]
            .into(),
            one("std::rt::init", Some("library/std/src/rt.rs")),
            one(
                "std::rt::lang_start_internal",
                Some("library/std/src/rt.rs"),
            ),
            one("main", None),
            one("__libc_start_main", None),
            one("_start", None),
        ];
        assert_eq!(
            names(trim(&runtime, 16)),
            ["std::rt::init", "std::rt::lang_start_internal"]
        );
        assert_eq!(names(trim(&runtime, 1)), ["std::rt::init"]);
        // A `#![no_main]` program's own `extern "C" fn main` (no debug
        // information; not called by `lang_start`) is the program's frame.
        let no_main = vec![
            one("__rustc::__rust_alloc", None),
            one(
                "alloc::raw_vec::RawVec::grow_one",
                Some("library/alloc/src/raw_vec.rs"),
            ),
            one("main", None),
            one("__libc_start_main", None),
        ];
        assert_eq!(names(trim(&no_main, 1)), ["main"]);
        // Only heapwatch's frames above the entry: the stack less those.
        let own_only = vec![
            one("heapwatch::capture::capture", None),
            one(entry, Some("library/std/src/sys/backtrace.rs")),
            one("start_thread", None),
        ];
        assert_eq!(
            names(trim(&own_only, 16)),
            [
                "std::sys::backtrace::__rust_begin_short_backtrace",
                "start_thread"
            ]
        );
        assert!(trim(&[], 16).is_empty());
    }

    #[test]
    fn paths_are_shortened() {
        assert_eq!(
            shorten_path("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.1/src/runtime/mod.rs", None),
            "tokio-1.54.1/src/runtime/mod.rs"
        );
        assert_eq!(
            shorten_path("/rustc/59807616e/library/alloc/src/raw_vec.rs", None),
            "library/alloc/src/raw_vec.rs"
        );
        assert_eq!(
            shorten_path(
                "/root/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu/lib/rustlib/src/rust/library/alloc/src/vec/spec_from_elem.rs",
                None
            ),
            "library/alloc/src/vec/spec_from_elem.rs"
        );
        assert_eq!(shorten_path("/elsewhere/x.rs", None), "/elsewhere/x.rs");
        assert_eq!(shorten_path("src/main.rs", None), "src/main.rs");
        // A crate's own files, wherever the crate is and whatever the
        // current directory is.
        for (path, short) in [
            ("/work/main/examples/demo.rs", "examples/demo.rs"),
            ("/tmp/ci-clone/tests/cli.rs", "tests/cli.rs"),
            ("/home/u/proj/src/main.rs", "src/main.rs"),
            ("/home/u/proj/src/bin/tool.rs", "src/bin/tool.rs"),
            ("/repo/crates/foo/src/tests/mod.rs", "src/tests/mod.rs"),
            ("/home/u/src/proj/src/lib.rs", "src/lib.rs"),
            ("/repo/tests/common/mod.rs", "tests/common/mod.rs"),
            (
                "/repo/benches/compare/hw_off.rs",
                "benches/compare/hw_off.rs",
            ),
        ] {
            assert_eq!(shorten_path(path, None), short, "{path}");
        }
    }

    #[test]
    fn paths_are_made_relative_to_the_compilers_directory_first() {
        // One crate checked out under a directory called `src` and
        // elsewhere: the same paths, so the same callsite ids.
        for comp_dir in ["/home/u/src/app", "/builds/app", "/home/u/src/app/"] {
            for (path, short) in [
                ("examples/snap.rs", "examples/snap.rs"),
                ("tests/leaks.rs", "tests/leaks.rs"),
                ("tests/common/mod.rs", "tests/common/mod.rs"),
                ("benches/b.rs", "benches/b.rs"),
                ("src/main.rs", "src/main.rs"),
                ("src/tests/mod.rs", "src/tests/mod.rs"),
                ("src/net/examples/x.rs", "src/net/examples/x.rs"),
                // A workspace member: relative to its crate, as before.
                ("crates/core/src/lib.rs", "src/lib.rs"),
                ("crates/core/tests/t.rs", "tests/t.rs"),
                ("build.rs", "build.rs"),
            ] {
                let full = format!("{}/{path}", comp_dir.trim_end_matches('/'));
                assert_eq!(shorten_path(&full, Some(comp_dir)), short, "{full}");
            }
        }
        // Paths outside it are shortened as without it.
        for path in [
            "/rustc/59807616e/library/alloc/src/raw_vec.rs",
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.1/src/lib.rs",
            "/home/u/src/mylib/src/lib.rs",
            "/elsewhere/x.rs",
        ] {
            assert_eq!(
                shorten_path(path, Some("/builds/app")),
                shorten_path(path, None),
                "{path}"
            );
        }
        // The standard library's own dependencies, and generated files
        // wherever the target directory is.
        assert_eq!(
            shorten_path(
                "/rust/deps/hashbrown-0.16.1/src/map.rs",
                Some("/builds/app")
            ),
            "hashbrown-0.16.1/src/map.rs"
        );
        for (path, comp_dir) in [
            (
                "/tmp/t/target/release/build/my-app-aae6040035484dd2/out/gen.rs",
                Some("/builds/app"),
            ),
            (
                "/builds/app/target/debug/build/my-app-dbcdc759cabc49c2/out/gen.rs",
                Some("/builds/app"),
            ),
            (
                "/builds/app/target/debug/build/my-app-dbcdc759cabc49c2/out/gen.rs",
                None,
            ),
        ] {
            assert_eq!(
                shorten_path(path, comp_dir),
                "build/my-app/out/gen.rs",
                "{path}"
            );
        }
        assert_eq!(shorten_path("/home/u/out/x.rs", None), "/home/u/out/x.rs");
        assert_eq!(
            shorten_path("/builds/app/src/build/x-1/out/m.rs", Some("/builds/app")),
            "src/build/x-1/out/m.rs"
        );
        // A relative one (a remapped build's `crate-version`) is ignored.
        assert_eq!(
            shorten_path("pkg-1.0/src/main.rs", Some("pkg-1.0")),
            "pkg-1.0/src/main.rs"
        );
        // A directory that is only a prefix of a name is not a parent.
        assert_eq!(
            shorten_path("/builds/app2/examples/x.rs", Some("/builds/app")),
            "examples/x.rs"
        );
    }

    #[test]
    fn frames_always_have_all_three_keys() {
        let bare = Frame {
            function: "libc.so.6+0x29d90".into(),
            file: None,
            line: None,
        };
        let json = serde_json::to_string(&bare).unwrap();
        assert_eq!(
            json,
            r#"{"function":"libc.so.6+0x29d90","file":null,"line":null}"#
        );
        let old: Frame = serde_json::from_str(r#"{"function":"libc.so.6+0x29d90"}"#).unwrap();
        assert_eq!(old, bare);
    }

    #[test]
    fn symbolizes_a_function_of_ours() {
        #[inline(never)]
        fn marker_function_for_symbolize() -> usize {
            let mut out = [0usize; crate::capture::MAX_FRAMES];
            let n = crate::capture::capture(&mut out);
            std::hint::black_box(n)
        }
        let mut ips = [0usize; crate::capture::MAX_FRAMES];
        let n = crate::capture::capture(&mut ips);
        let _ = marker_function_for_symbolize();
        let frames: Vec<Frame> = ips[..n].iter().flat_map(|&ip| resolve(ip)).collect();
        assert!(
            frames
                .iter()
                .any(|f| f.function.contains("symbolizes_a_function_of_ours")),
            "{frames:#?}"
        );
    }
}
