//! A DWARF CFI unwinder with a process-wide cache of unwind rules (x86-64
//! Linux): the speed of a frame-pointer walk on builds without frame
//! pointers, once the cache is warm.
//!
//! The platform unwinder (`_Unwind_Backtrace`, behind the `backtrace` crate)
//! looks up the object, binary-searches its `.eh_frame_hdr`, parses the CIE
//! and FDE and runs the CFI program again for every frame of every capture.
//! Allocation stacks repeat the same few thousand return addresses, so this
//! unwinder does that work once per return address and keeps the result, a
//! rule of one word ("the caller's frame is at `rsp + 56`, its return
//! address at CFA − 8, `rbp` saved at CFA − 16"), in a fixed table of
//! [`CACHE_SLOTS`] slots, in sets of [`WAYS`]: an address may sit in any
//! slot of its set, so a few hot addresses that hash alike (which happens
//! or not with each run's address-space layout) do not evict each other
//! on every capture.
//!
//! - **Hit:** one hash, two relaxed loads (a few more when the address is
//!   not in the first slot of its set), two stack reads a frame.
//! - **Miss:** `dl_iterate_phdr` finds the object that holds the address;
//!   inside its callback (the loader's lock held, so the object cannot be
//!   unloaded meanwhile) `gimli` reads the FDE from `.eh_frame` and evaluates
//!   its CFI program with fixed-size, on-stack storage: no allocation.
//! - **Anything unusual** (no FDE, a CFA or register rule given by a DWARF
//!   expression as in signal frames and PLT stubs, a rule reading outside
//!   the thread's stack, a frame that does not move up the stack) ends the
//!   walk as a failure, and the caller captures that stack with the platform
//!   unwinder instead. A walk ends as a success only where the CFI says the
//!   return address is undefined (the outermost frame of every thread) or at
//!   the requested depth.
//!
//! Every stack read is checked against the thread's stack bounds first, so a
//! wrong rule (say, a stale cache slot after `dlclose` put other code at the
//! same address) can give a wrong stack, never an invalid read.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, NativeEndian, Pointer, Register, RegisterRule,
    UnwindContext, UnwindContextStorage, UnwindSection, X86_64,
};

/// Slots in the rule cache (16 bytes each, static: 64 KiB).
pub(crate) const CACHE_SLOTS: usize = 4096;

/// One cached rule. `key` is the address XOR the packed rule, so a slot torn
/// by two threads writing at once fails the check instead of giving one
/// address another's rule (the lockless-hashing trick of chess engines).
struct Slot {
    key: AtomicU64,
    rule: AtomicU64,
}

static CACHE: [Slot; CACHE_SLOTS] = [const {
    Slot {
        key: AtomicU64::new(0),
        rule: AtomicU64::new(0),
    }
}; CACHE_SLOTS];

/// Touches every page of the rule cache, so that no page of it is first
/// mapped by a read (see `callsites::touch_pages`).
pub(super) fn prefault_cache() {
    crate::callsites::touch_pages(&CACHE, |slot| {
        let _ = slot.rule.compare_exchange(0, 0, Relaxed, Relaxed);
    });
}

/// How to find the caller's frame from a frame at a given address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule {
    /// The CFA is `rbp + cfa_offset` (else `rsp + cfa_offset`).
    cfa_from_rbp: bool,
    cfa_offset: i32,
    /// The return address is at `CFA + ra_offset`; `None`: the outermost
    /// frame (the return address is undefined).
    ra_offset: Option<i16>,
    /// The caller's `rbp` is saved at `CFA + rbp_offset` (else unchanged).
    rbp_offset: Option<i16>,
}

const VALID: u64 = 1 << 63;
const OUTERMOST: u64 = 1 << 62;
const FROM_RBP: u64 = 1 << 61;
const RBP_SAVED: u64 = 1 << 60;

impl Rule {
    /// One word: flags in the top 4 bits, `rbp_offset` (12 bits, signed)
    /// below them, then `ra_offset` (16 bits) and `cfa_offset` (32 bits).
    /// `None` if an offset does not fit.
    fn pack(self) -> Option<u64> {
        let mut w = VALID | u64::from(self.cfa_offset as u32);
        if self.cfa_from_rbp {
            w |= FROM_RBP;
        }
        match self.ra_offset {
            Some(o) => w |= u64::from(o as u16) << 32,
            None => w |= OUTERMOST,
        }
        if let Some(o) = self.rbp_offset {
            if !(-2048..2048).contains(&o) {
                return None;
            }
            w |= RBP_SAVED | (u64::from(o as u16) & 0xfff) << 48;
        }
        Some(w)
    }

    fn unpack(w: u64) -> Rule {
        // Sign-extend the 12-bit field.
        let rbp = (((w >> 48) as u16) << 4) as i16 >> 4;
        Rule {
            cfa_from_rbp: w & FROM_RBP != 0,
            cfa_offset: w as u32 as i32,
            ra_offset: (w & OUTERMOST == 0).then_some((w >> 32) as u16 as i16),
            rbp_offset: (w & RBP_SAVED != 0).then_some(rbp),
        }
    }
}

/// Slots an address may occupy (one set of the cache).
pub(crate) const WAYS: usize = 4;
const _: () = assert!(CACHE_SLOTS.is_power_of_two() && CACHE_SLOTS.is_multiple_of(WAYS));

/// The set of slots where `address`'s rule may be cached, and which of
/// them a miss overwrites when all are taken (chosen by other bits of the
/// hash, so two addresses competing for one full set usually pick
/// different victims).
fn set_of(address: usize) -> (&'static [Slot], usize) {
    let h = (address as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let set = (h >> 40) as usize & (CACHE_SLOTS / WAYS - 1);
    let victim = (h >> 20) as usize % WAYS;
    (
        CACHE.get(set * WAYS..(set + 1) * WAYS).unwrap_or(&[]),
        victim,
    )
}

/// The rule for code at `address`: from the cache, else from the CFI
/// (and then cached). `None` if the CFI gives no rule this walk can follow.
fn rule_for(address: usize) -> Option<Rule> {
    if let Some(rule) = cached(address) {
        return Some(rule);
    }
    let found = rule_from_cfi(address)?;
    cache(address, found.pack()?);
    Some(found)
}

/// The cached rule for `address`, if its set holds one.
#[inline(always)]
fn cached(address: usize) -> Option<Rule> {
    let (set, _) = set_of(address);
    for slot in set {
        let rule = slot.rule.load(Relaxed);
        if rule & VALID != 0 && slot.key.load(Relaxed) ^ rule == address as u64 {
            return Some(Rule::unpack(rule));
        }
    }
    None
}

/// Caches the packed rule for `address`: in an empty slot of its set, else
/// over the set's victim slot for this address.
fn cache(address: usize, packed: u64) {
    let (set, victim) = set_of(address);
    let empty = set.iter().find(|s| s.rule.load(Relaxed) & VALID == 0);
    if let Some(slot) = empty.or_else(|| set.get(victim)) {
        slot.rule.store(packed, Relaxed);
        slot.key.store(address as u64 ^ packed, Relaxed);
    }
}

/// Fixed-size storage for `gimli`'s CFI evaluation: enough rules for every
/// x86-64 register DWARF numbers below 32 and four remembered states, on
/// the stack (about 3 KiB), so a miss allocates nothing.
struct OnStack;

impl<T: gimli::ReaderOffset> UnwindContextStorage<T> for OnStack {
    type Rules = [(Register, RegisterRule<T>); 24];
    type Stack = [gimli::UnwindTableRow<T, Self>; 4];
}

struct Search {
    address: usize,
    rule: Option<Rule>,
}

/// Set in a child process after `fork`: another thread of the parent may
/// have held the loader's lock at the fork, and `dl_iterate_phdr` would
/// then wait for it forever. In a child, a cache miss ends the walk as a
/// failure (the capture falls back to `backtrace`, whose libgcc unwinder
/// finds objects with the lock-free `_dl_find_object`); cached rules still
/// serve.
static FORKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process is a `fork` child (see `FORKED`): capture then uses
/// `backtrace` for every stack, so that a child's callsites are all walked
/// one way.
pub(super) fn in_forked_child() -> bool {
    FORKED.load(Relaxed)
}

extern "C" fn on_fork_child() {
    FORKED.store(true, Relaxed);
}

/// Registers the `fork` child handler (once, from the tracker's set-up,
/// before any walk can take the loader's lock).
pub(super) fn register_fork_handler() {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, Relaxed) {
        return;
    }
    // SAFETY: registers a plain `extern "C"` function with no arguments;
    // glibc allocates the registration with its own `malloc`, never through
    // Rust's global allocator.
    unsafe {
        libc::pthread_atfork(None, None, Some(on_fork_child));
    }
}

/// Looks `address` up in the loaded objects' `.eh_frame` (see the module
/// docs).
fn rule_from_cfi(address: usize) -> Option<Rule> {
    if FORKED.load(Relaxed) {
        return None;
    }
    let mut search = Search {
        address,
        rule: None,
    };
    // SAFETY: the callback matches the type `dl_iterate_phdr` expects and
    // receives `&mut search` back as its data pointer, which outlives the
    // call. glibc allocates here only with its own `malloc`, never through
    // Rust's global allocator.
    unsafe {
        libc::dl_iterate_phdr(Some(visit), std::ptr::addr_of_mut!(search).cast());
    }
    search.rule
}

/// `dl_iterate_phdr`'s callback: returns 1 (stop) at the object whose
/// loadable segment holds the address.
unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: `data` is the `&mut Search` given to `dl_iterate_phdr`, and
    // `info` points to the loader's valid description of one object for the
    // duration of this call.
    let (search, info) = unsafe { (&mut *data.cast::<Search>(), &*info) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: the loader describes `dlpi_phnum` program headers at
    // `dlpi_phdr`.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let base = info.dlpi_addr as usize;
    let holds = |p: &libc::Elf64_Phdr, a: usize| {
        let start = base.wrapping_add(p.p_vaddr as usize);
        p.p_type == libc::PT_LOAD && a >= start && a - start < p.p_memsz as usize
    };
    if !phdrs
        .iter()
        .any(|p| holds(p, search.address) && p.p_flags & libc::PF_X != 0)
    {
        return 0;
    }
    // This object holds the address: whatever happens now, stop looking.
    let Some(hdr) = phdrs.iter().find(|p| p.p_type == libc::PT_GNU_EH_FRAME) else {
        return 1;
    };
    let hdr_addr = base.wrapping_add(hdr.p_vaddr as usize);
    // A readable loadable segment, as a byte slice from `from` to its end.
    let readable_from = |from: usize| -> Option<&'static [u8]> {
        let seg = phdrs
            .iter()
            .find(|p| holds(p, from) && p.p_flags & libc::PF_R != 0)?;
        let end = base
            .wrapping_add(seg.p_vaddr as usize)
            .wrapping_add(seg.p_memsz as usize);
        // SAFETY: `from .. end` lies inside a readable loadable segment of
        // an object that stays loaded while the loader's lock is held,
        // which it is for the whole callback; the slice does not escape it
        // (only the rule computed from it does).
        Some(unsafe { std::slice::from_raw_parts(from as *const u8, end - from) })
    };
    search.rule = readable_from(hdr_addr).and_then(|hdr_bytes| {
        let bases = BaseAddresses::default().set_eh_frame_hdr(hdr_addr as u64);
        let parsed = EhFrameHdr::new(hdr_bytes, NativeEndian)
            .parse(&bases, 8)
            .ok()?;
        let Pointer::Direct(eh_frame_addr) = parsed.eh_frame_ptr() else {
            return None;
        };
        let eh_frame_bytes = readable_from(eh_frame_addr as usize)?;
        let bases = bases.set_eh_frame(eh_frame_addr);
        let eh_frame = EhFrame::new(eh_frame_bytes, NativeEndian);
        let table = parsed.table()?;
        let mut ctx = UnwindContext::<usize, OnStack>::new_in();
        let row = table
            .unwind_info_for_address(
                &eh_frame,
                &bases,
                &mut ctx,
                search.address as u64,
                EhFrame::cie_from_offset,
            )
            .ok()?;
        let (cfa_from_rbp, cfa_offset) = match *row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RSP => {
                (false, i32::try_from(offset).ok()?)
            }
            CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RBP => {
                (true, i32::try_from(offset).ok()?)
            }
            _ => return None,
        };
        let ra_offset = match row.register(X86_64::RA) {
            Some(RegisterRule::Offset(o)) => Some(i16::try_from(o).ok()?),
            Some(RegisterRule::Undefined) => None,
            _ => return None,
        };
        let rbp_offset = match row.register(X86_64::RBP) {
            None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => None,
            Some(RegisterRule::Offset(o)) => Some(i16::try_from(o).ok()?),
            _ => return None,
        };
        Some(Rule {
            cfa_from_rbp,
            cfa_offset,
            ra_offset,
            rbp_offset,
        })
    });
    1
}

/// Walks the calling stack with the cached CFI rules, writing the return
/// addresses from this function's caller on into `out`. Returns how many it
/// wrote when the walk ended cleanly (`out` full, or the outermost frame
/// reached), and 0 when a frame could not be unwound: the caller should then
/// capture with the platform unwinder instead. Allocation-free and
/// panic-free.
#[inline(never)]
pub(super) fn walk(out: &mut [usize]) -> usize {
    walk_from_here(out).unwrap_or(0)
}

/// [`walk`]'s body, inlined into it so that the registers it reads are
/// `walk`'s own.
#[inline(always)]
fn walk_from_here(out: &mut [usize]) -> Option<usize> {
    let (lo, hi) = super::stack_bounds()?;
    let (mut pc, mut sp, mut bp): (usize, usize, usize);
    // SAFETY: reads the instruction pointer, stack pointer and frame
    // pointer into locals at one point of this function; touches no memory.
    unsafe {
        std::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags)
        );
    }
    // A word of the stack, if it lies inside this thread's stack.
    let read = |at: usize| -> Option<usize> {
        if at < lo || at > hi.checked_sub(8)? || !at.is_multiple_of(8) {
            return None;
        }
        // SAFETY: `at .. at + 8` is inside this thread's mapped stack and
        // aligned (checked just above).
        Some(unsafe { (at as *const usize).read() })
    };
    // The first rule is for `pc` itself; after that, for the call
    // instruction before each return address.
    let mut lookup = pc;
    let mut n = 0;
    while n < out.len() {
        let rule = rule_for(lookup)?;
        let Some(ra_offset) = rule.ra_offset else {
            return Some(n);
        };
        let base = if rule.cfa_from_rbp { bp } else { sp };
        let cfa = base.checked_add_signed(rule.cfa_offset as isize)?;
        if cfa <= sp {
            return None;
        }
        let ra = read(cfa.checked_add_signed(isize::from(ra_offset))?)?;
        if let Some(o) = rule.rbp_offset {
            bp = read(cfa.checked_add_signed(isize::from(o))?)?;
        }
        if ra == 0 {
            return Some(n);
        }
        *out.get_mut(n)? = ra;
        n += 1;
        sp = cfa;
        pc = ra;
        lookup = pc.wrapping_sub(1);
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_pack_and_unpack() {
        let rules = [
            Rule {
                cfa_from_rbp: false,
                cfa_offset: 8,
                ra_offset: Some(-8),
                rbp_offset: None,
            },
            Rule {
                cfa_from_rbp: true,
                cfa_offset: 16,
                ra_offset: Some(-8),
                rbp_offset: Some(-16),
            },
            Rule {
                cfa_from_rbp: false,
                cfa_offset: 1 << 20,
                ra_offset: None,
                rbp_offset: Some(-2048),
            },
            Rule {
                cfa_from_rbp: false,
                cfa_offset: -40,
                ra_offset: Some(i16::MIN),
                rbp_offset: Some(2047),
            },
        ];
        for r in rules {
            assert_eq!(Rule::unpack(r.pack().unwrap()), r);
        }
        let far = Rule {
            rbp_offset: Some(-4096),
            ..rules[0]
        };
        assert_eq!(
            far.pack(),
            None,
            "an rbp offset beyond 12 bits is not cached"
        );
    }

    #[test]
    fn walk_matches_the_platform_unwinder() {
        let mut a = [0usize; 24];
        let n = walk(&mut a);
        assert!(n > 0, "the CFI walk failed on the test thread");
        let a = &a[..n];
        let mut b = [0usize; 48];
        let nb = super::super::backtrace_walk(&mut b);
        let b = &b[..nb];
        assert!(n >= 3, "only {n} frames");
        // From this test's caller on, both walks see the same return
        // addresses (the first ones differ: each walk's own frames).
        let second = a[1];
        let j = b.iter().position(|&ip| ip == second).expect("caller frame");
        let m = (n - 1).min(nb - j);
        assert!(m >= 2);
        assert_eq!(&a[1..1 + m], &b[j..j + m]);
    }

    #[test]
    fn addresses_that_hash_alike_share_a_set_without_evicting_each_other() {
        // Fake addresses (never code) in one set, far from any real code
        // address the other tests cache.
        let first = 0x7e57_0000_0000usize;
        let (target, _) = set_of(first);
        let same_set: Vec<usize> = (0..1_000_000usize)
            .map(|k| first + 16 * k)
            .filter(|&a| std::ptr::eq(set_of(a).0, target))
            .take(WAYS + 1)
            .collect();
        assert_eq!(same_set.len(), WAYS + 1);
        let rule = |k: usize| Rule {
            cfa_from_rbp: false,
            cfa_offset: 8 * (k as i32 + 1),
            ra_offset: Some(-8),
            rbp_offset: None,
        };
        for (k, &a) in same_set.iter().take(WAYS).enumerate() {
            cache(a, rule(k).pack().unwrap());
        }
        for (k, &a) in same_set.iter().take(WAYS).enumerate() {
            assert_eq!(cached(a), Some(rule(k)), "way {k}");
        }
        // A fifth address evicts exactly one of them.
        cache(same_set[WAYS], rule(WAYS).pack().unwrap());
        assert_eq!(cached(same_set[WAYS]), Some(rule(WAYS)));
        let kept = same_set[..WAYS]
            .iter()
            .filter(|&&a| cached(a).is_some())
            .count();
        assert_eq!(kept, WAYS - 1);
    }

    #[test]
    fn unknown_code_has_no_rule() {
        // An address on the stack, not in any object's code.
        let x = 0u64;
        assert_eq!(rule_from_cfi(std::ptr::addr_of!(x) as usize), None);
    }
}
