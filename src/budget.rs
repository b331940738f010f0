//! The memory budget: a value type, its policy, and the reservation that
//! enforces it without a contended atomic on every allocation.
//!
//! How the budget is enforced, as a user sees it, is documented on
//! [`Budget`], in the public docs; how a thread's credit is derived from
//! its shard's counters is in "the hook's side" below.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::*};

use serde::{Deserialize, Serialize};

use crate::counters::Shard;
use crate::error::Error;

/// Credit a thread draws from the global reservation at a time.
pub const CHUNK_BYTES: u64 = 64 * 1024;

const UNLIMITED: u64 = u64::MAX;

/// A memory budget in bytes, or unlimited.
///
/// A megabyte here is a mebibyte (2^20 bytes), as `maxMemoryMB` settings
/// mean it; `"512MB"` and `"512MiB"` parse to the same budget.
///
/// # How the budget is enforced
///
/// The budget bounds the program's live bytes. heapwatch's own blocks (its
/// tables, the symbol caches, snapshots being built, the server) are not
/// charged to it and never refused: they go straight to the inner
/// allocator and are reported apart, as `overhead_bytes`. So building a
/// snapshot, which parses debug information, can never make the program's
/// allocations fail, nor abort the process; leave room for heapwatch's
/// overhead when sizing a budget against a container's memory limit.
///
/// A global counter, the *reservation*, is always at least the program's
/// live bytes. Each
/// thread draws credit from it in chunks of [`CHUNK_BYTES`] and spends the
/// credit locally: most allocations touch only the thread's own shard. When
/// a thread's credit runs out it draws again with a compare-and-swap that
/// never lets the reservation pass the budget (near the budget it draws
/// exactly what it needs). Frees give credit back to the freeing thread,
/// which returns anything above `2 × CHUNK_BYTES` to the pool.
///
/// The credit costs the hook's fast path no counter of its own: it is
/// derived from the shard's allocated and freed bytes, which the hook counts
/// anyway, and checked against two limits.
///
/// Consequences, which the tests check:
///
/// - Policy [`Policy::Refuse`]: live bytes never exceed the budget, under any
///   concurrency (the overshoot bound is zero). The price is that an
///   allocation may be refused while up to `threads × 2 × CHUNK_BYTES` of
///   the budget sits as other threads' unspent credit.
/// - The 80% / 95% warnings compare the reservation, so they may fire up to
///   that much early, never late.
/// - `peak_bytes` is the highest reservation: never below the true peak.
///
/// # Example
///
/// ```
/// use heapwatch::Budget;
///
/// assert_eq!(Budget::from_mb(512).bytes(), Some(512 << 20));
/// assert_eq!("2GiB".parse::<Budget>().unwrap(), Budget::from_gb(2));
/// assert_eq!("unlimited".parse::<Budget>().unwrap(), Budget::UNLIMITED);
/// assert!("12 parsecs".parse::<Budget>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget(u64);

impl Budget {
    /// No budget: nothing is refused.
    pub const UNLIMITED: Budget = Budget(UNLIMITED);

    /// A budget of `bytes` bytes. `u64::MAX` bytes is [`Budget::UNLIMITED`].
    /// Zero is a budget of nothing, not "no budget" (the environment
    /// variable's `0` is): every allocation is refused.
    pub const fn from_bytes(bytes: u64) -> Budget {
        Budget(bytes)
    }

    /// A budget of `mb` mebibytes (saturating: a size past `u64::MAX`
    /// bytes is [`Budget::UNLIMITED`]). `from_mb(0)` refuses every
    /// allocation, as [`from_bytes`](Budget::from_bytes)`(0)` does.
    pub const fn from_mb(mb: u64) -> Budget {
        Budget(mb.saturating_mul(1 << 20))
    }

    /// A budget of `gb` gibibytes (saturating: a size past `u64::MAX`
    /// bytes is [`Budget::UNLIMITED`]).
    pub const fn from_gb(gb: u64) -> Budget {
        Budget(gb.saturating_mul(1 << 30))
    }

    /// The budget in bytes, `None` when unlimited.
    pub const fn bytes(self) -> Option<u64> {
        if self.0 == UNLIMITED {
            None
        } else {
            Some(self.0)
        }
    }

    /// Whether this budget refuses nothing.
    pub const fn is_unlimited(self) -> bool {
        self.0 == UNLIMITED
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::UNLIMITED
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bytes() {
            None => f.write_str("unlimited"),
            Some(b) if b != 0 && b % (1 << 30) == 0 => write!(f, "{}GiB", b >> 30),
            Some(b) if b != 0 && b % (1 << 20) == 0 => write!(f, "{}MiB", b >> 20),
            Some(b) if b != 0 && b % (1 << 10) == 0 => write!(f, "{}KiB", b >> 10),
            Some(b) => write!(f, "{b}B"),
        }
    }
}

impl FromStr for Budget {
    type Err = Error;

    /// Parses `"unlimited"` (or `"none"`, `"off"`), or a number with an
    /// optional unit: `B`, `K`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB`,
    /// `T`/`TB`/`TiB` (all binary, case-insensitive). A number without a
    /// unit is bytes. Fractions are allowed with a unit larger than a byte
    /// (`"1.5GiB"`). `"0"` is a budget of zero bytes, which refuses every
    /// allocation past the credit threads hold (unlike
    /// `HEAPWATCH_MAX_MEMORY_MB=0`, which means unlimited, as `maxMemoryMB`
    /// settings usually do).
    fn from_str(s: &str) -> Result<Budget, Error> {
        parse_size(s.trim(), 0).map_err(|bad| Error::InvalidBudget {
            input: s.to_string(),
            reason: match bad {
                BadSize::UnknownUnit(written) => format!(
                    "unknown unit {written:?} (use B, KiB, MiB, GiB or TiB after a plain \
                     number, as in 512MiB or 1.5GiB)"
                ),
                bad => bad.reason().to_string(),
            },
        })
    }
}

/// Why a size does not parse. Holds no allocation: the environment
/// variable is parsed in the allocator hook, at the first allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BadSize<'a> {
    Empty,
    Negative,
    NoNumberFirst,
    /// The unit as written.
    UnknownUnit(&'a str),
    NotANumber,
    FractionOfAByte,
    LessThanAByte,
    TooLarge,
}

impl BadSize<'_> {
    fn reason(self) -> &'static str {
        match self {
            BadSize::Empty => "empty",
            BadSize::Negative => "a budget cannot be negative",
            BadSize::NoNumberFirst => "expected a number, then an optional unit (such as 512MiB)",
            BadSize::UnknownUnit(_) => "unknown unit",
            BadSize::NotANumber => "not a number",
            BadSize::FractionOfAByte => "a fraction of a byte (add a unit: 0.5MiB)",
            BadSize::LessThanAByte => "less than a byte",
            BadSize::TooLarge => "too large",
        }
    }
}

/// The units a size may name (in any ASCII case), with their power of two.
const UNITS: [(&str, u32); 13] = [
    ("b", 0),
    ("k", 10),
    ("kb", 10),
    ("kib", 10),
    ("m", 20),
    ("mb", 20),
    ("mib", 20),
    ("g", 30),
    ("gb", 30),
    ("gib", 30),
    ("t", 40),
    ("tb", 40),
    ("tib", 40),
];

/// Parses a trimmed budget as [`Budget`]'s `FromStr` documents it, a
/// number without a unit counting `1 << default_shift` bytes (0: bytes;
/// 20: mebibytes, for the environment variable). Never allocates nor
/// panics: the environment variable is read with it inside the allocator
/// hook.
fn parse_size(t: &str, default_shift: u32) -> Result<Budget, BadSize<'_>> {
    if t.is_empty() {
        return Err(BadSize::Empty);
    }
    if ["unlimited", "none", "off"]
        .iter()
        .any(|w| t.eq_ignore_ascii_case(w))
    {
        return Ok(Budget::UNLIMITED);
    }
    if t.starts_with('-') {
        return Err(BadSize::Negative);
    }
    if !t.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return Err(BadSize::NoNumberFirst);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let Some((num, unit)) = t.split_at_checked(split) else {
        return Err(BadSize::NotANumber);
    };
    let unit = unit.trim();
    let shift = if unit.is_empty() {
        default_shift
    } else {
        match UNITS
            .iter()
            .find(|(name, _)| unit.eq_ignore_ascii_case(name))
        {
            Some(&(_, shift)) => shift,
            None => return Err(BadSize::UnknownUnit(unit)),
        }
    };
    // Whole numbers are parsed exactly (a u64 and a checked shift), so
    // every byte count round-trips through Display; only a fraction goes
    // through f64.
    if let Ok(whole) = num.parse::<u64>() {
        return match whole.checked_mul(1u64 << shift) {
            Some(bytes) if bytes != UNLIMITED => Ok(Budget(bytes)),
            _ => Err(BadSize::TooLarge),
        };
    }
    let value: f64 = num.parse().map_err(|_| BadSize::NotANumber)?;
    let bytes = value * (1u64 << shift) as f64;
    if bytes.fract() != 0.0 && shift == 0 {
        return Err(BadSize::FractionOfAByte);
    }
    if bytes.round() == 0.0 && value != 0.0 {
        return Err(BadSize::LessThanAByte);
    }
    if !bytes.is_finite() || bytes >= UNLIMITED as f64 {
        return Err(BadSize::TooLarge);
    }
    Ok(Budget(bytes.round() as u64))
}

impl Serialize for Budget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.bytes().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map_or(Budget::UNLIMITED, Budget))
    }
}

/// What happens to an allocation that would take the process over budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Return null: `Vec::try_reserve` gets `Err` and the program carries on;
    /// an infallible allocation reaches `handle_alloc_error`, as for any
    /// out-of-memory. Some allocations are never refused and, over the
    /// budget, go through counted as overages, so that they cannot abort
    /// the process: those of a thread that is panicking (the panic's
    /// message, its backtrace); the [`Snapshot`](crate::Snapshot) that
    /// [`snapshot`](crate::snapshot) hands the program, and what its
    /// methods make (`save`, `diff`, `to_pprof`, `to_prometheus`,
    /// `to_flamegraph_svg`); what a [`watch_budget`](crate::watch_budget)
    /// callback allocates; and what starting the endpoint or the watcher
    /// allocates on the calling thread.
    #[default]
    Refuse,
    /// Let the allocation through and count it in `budget_overages`.
    Warn,
}

/// Warning thresholds, in percent of the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Thresholds {
    /// First warning (default 80).
    pub warning_percent: u8,
    /// Second warning (default 95).
    pub critical_percent: u8,
}

impl Thresholds {
    /// 80% and 95%.
    pub const DEFAULT: Thresholds = Thresholds::new(80, 95);

    /// Thresholds at `warning_percent` and `critical_percent` of the budget.
    /// Values are clamped to 1..=100 and ordered.
    pub const fn new(warning_percent: u8, critical_percent: u8) -> Thresholds {
        let w = clamp_pct(warning_percent);
        let c = clamp_pct(critical_percent);
        if w <= c {
            Thresholds {
                warning_percent: w,
                critical_percent: c,
            }
        } else {
            Thresholds {
                warning_percent: c,
                critical_percent: w,
            }
        }
    }
}

const fn clamp_pct(p: u8) -> u8 {
    if p == 0 {
        1
    } else if p > 100 {
        100
    } else {
        p
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds::DEFAULT
    }
}

/// Where the reservation stands against the budget.
///
/// A level is entered as soon as the reservation reaches its threshold, and
/// left only once the reservation falls 2% of the budget below that
/// threshold (or half-way to zero, for a threshold under 4%): with a
/// 100 MiB budget and the default thresholds, `Warning` from 80 MiB up, and
/// `Normal` again below 78 MiB. A reservation hovering at a threshold
/// therefore counts one crossing and makes one [`watch_budget`] event, not
/// one per wobble; and a level can be reported while the reservation is a
/// little under its threshold (with thresholds closer than 2% apart, even
/// under the threshold of the level below).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum BudgetLevel {
    /// Below the warning threshold (and below its exit point, if the level
    /// was higher), or no budget.
    #[default]
    Normal = 0,
    /// Reached the warning threshold (80% by default), and not since
    /// fallen 2% of the budget below it.
    Warning = 1,
    /// Reached the critical threshold (95% by default), and not since
    /// fallen 2% of the budget below it.
    Critical = 2,
    /// The reservation (live bytes plus the credit threads hold) went over
    /// the budget, and has not since fallen 2% of the budget below it:
    /// with [`Policy::Warn`]; after the budget was lowered below the
    /// reservation; or under [`Policy::Refuse`] through what is never
    /// refused and counted as an overage instead (a panicking thread's
    /// allocations, such as std's backtrace printer and the debug info it
    /// keeps; the [`Snapshot`](crate::Snapshot) that
    /// [`snapshot`](crate::snapshot) returns and what its methods make;
    /// what a [`watch_budget`](crate::watch_budget) callback allocates).
    Exceeded = 3,
}

impl BudgetLevel {
    fn from_u8(v: u8) -> BudgetLevel {
        match v {
            0 => BudgetLevel::Normal,
            1 => BudgetLevel::Warning,
            2 => BudgetLevel::Critical,
            _ => BudgetLevel::Exceeded,
        }
    }
}

static LIMIT: AtomicU64 = AtomicU64::new(UNLIMITED);
static REFUSE: AtomicBool = AtomicBool::new(true);
static WARN_PCT: AtomicU8 = AtomicU8::new(80);
static CRIT_PCT: AtomicU8 = AtomicU8::new(95);
static RESERVED: AtomicU64 = AtomicU64::new(0);
/// `RESERVED` less the reservations of allocations still in the inner
/// allocator: what the peak is the highest value of. A grant is added here
/// only once its allocation succeeded, so that one the inner allocator
/// fails (a `try_reserve` of more than the machine has) never shows in the
/// peak, whatever other threads do meanwhile.
static COMMITTED: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);
static DENIALS: AtomicU64 = AtomicU64::new(0);
static OVERAGES: AtomicU64 = AtomicU64::new(0);
static LEVEL: AtomicU8 = AtomicU8::new(0);
static WARNING_CROSSINGS: AtomicU64 = AtomicU64::new(0);
static CRITICAL_CROSSINGS: AtomicU64 = AtomicU64::new(0);
static EXCEEDED_CROSSINGS: AtomicU64 = AtomicU64::new(0);
static ENV_INVALID: AtomicBool = AtomicBool::new(false);

// Settings made through the public setters win over the tracker's builder,
// even when made before the tracker's first allocation applies it.
const SET_BUDGET: u8 = 1;
const SET_POLICY: u8 = 2;
const SET_THRESHOLDS: u8 = 4;
static EXPLICIT: AtomicU8 = AtomicU8::new(0);

/// A reading of the budget's state, from [`budget_status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BudgetStatus {
    /// The budget in force.
    pub budget: Budget,
    /// The policy in force.
    pub policy: Policy,
    /// The thresholds in force.
    pub thresholds: Thresholds,
    /// The reservation: the program's live bytes plus the credit threads
    /// hold. Always at least the program's live bytes (heapwatch's own are
    /// not charged to the budget).
    pub reserved_bytes: u64,
    /// The highest reservation so far, counting allocations once they
    /// succeeded (one the inner allocator fails never shows in it).
    pub peak_bytes: u64,
    /// Allocations refused (policy `Refuse`).
    pub denials: u64,
    /// Allocations let through over budget: every one under policy `Warn`;
    /// under `Refuse`, those that are never refused (see
    /// [`Policy::Refuse`]).
    pub overages: u64,
    /// The level now.
    pub level: BudgetLevel,
    /// Times the reservation rose to the warning threshold from below
    /// (by growing, or by the budget or thresholds being lowered under it).
    /// From below means from under the level's exit point, 2% of the budget
    /// under the threshold ([`BudgetLevel`] says why).
    pub warning_crossings: u64,
    /// Times the reservation rose to the critical threshold from below
    /// (likewise).
    pub critical_crossings: u64,
    /// Times the reservation rose over the budget (likewise).
    pub exceeded_crossings: u64,
    /// `HEAPWATCH_MAX_MEMORY_MB` was set but could not be parsed, and was
    /// ignored: the tracker's own budget applied instead (see
    /// [`Tracker::with_budget`](crate::Tracker::with_budget)). Exported to
    /// Prometheus as `heapwatch_budget_env_var_invalid`.
    pub env_var_invalid: bool,
}

/// Reads the budget's state. Never allocates.
///
/// # Example
///
/// ```
/// let status = heapwatch::budget_status();
/// assert_eq!(status.level, heapwatch::BudgetLevel::Normal);
/// ```
pub fn budget_status() -> BudgetStatus {
    status()
}

pub(crate) fn status() -> BudgetStatus {
    BudgetStatus {
        budget: Budget(LIMIT.load(Relaxed)),
        policy: if REFUSE.load(Relaxed) {
            Policy::Refuse
        } else {
            Policy::Warn
        },
        thresholds: Thresholds::new(WARN_PCT.load(Relaxed), CRIT_PCT.load(Relaxed)),
        reserved_bytes: RESERVED.load(Relaxed),
        peak_bytes: PEAK.load(Relaxed),
        denials: DENIALS.load(Relaxed),
        overages: OVERAGES.load(Relaxed),
        level: BudgetLevel::from_u8(LEVEL.load(Relaxed)),
        warning_crossings: WARNING_CROSSINGS.load(Relaxed),
        critical_crossings: CRITICAL_CROSSINGS.load(Relaxed),
        exceeded_crossings: EXCEEDED_CROSSINGS.load(Relaxed),
        env_var_invalid: ENV_INVALID.load(Relaxed),
    }
}

/// Sets the budget at run time. Takes effect for the next allocation that
/// draws credit: each thread may still allocate the credit it holds (at
/// most `2 × CHUNK_BYTES`, 128 KiB). Lowering it below the reservation
/// refuses (or, with [`Policy::Warn`], reports) further growth past that
/// credit; it frees nothing. How the budget is enforced, and what that
/// guarantees, is in [`Budget`]'s docs.
///
/// # Example
///
/// ```
/// heapwatch::set_budget(heapwatch::Budget::from_mb(512));
/// assert_eq!(heapwatch::budget_status().budget.bytes(), Some(512 << 20));
/// heapwatch::set_budget(heapwatch::Budget::UNLIMITED);
/// ```
pub fn set_budget(budget: Budget) {
    EXPLICIT.fetch_or(SET_BUDGET, Relaxed);
    store_budget(budget);
}

fn store_budget(budget: Budget) {
    LIMIT.store(budget.0, Relaxed);
    update_level(RESERVED.load(Relaxed));
}

/// Sets the policy for allocations over budget.
///
/// # Example
///
/// ```
/// use heapwatch::Policy;
///
/// heapwatch::set_budget_policy(Policy::Warn); // allow, but count overages
/// assert_eq!(heapwatch::budget_status().policy, Policy::Warn);
/// heapwatch::set_budget_policy(Policy::Refuse);
/// ```
pub fn set_budget_policy(policy: Policy) {
    EXPLICIT.fetch_or(SET_POLICY, Relaxed);
    REFUSE.store(policy == Policy::Refuse, Relaxed);
}

/// Sets the warning thresholds.
///
/// # Example
///
/// ```
/// use heapwatch::Thresholds;
///
/// heapwatch::set_budget_thresholds(Thresholds::new(70, 90));
/// assert_eq!(heapwatch::budget_status().thresholds.warning_percent, 70);
/// ```
pub fn set_budget_thresholds(thresholds: Thresholds) {
    EXPLICIT.fetch_or(SET_THRESHOLDS, Relaxed);
    store_thresholds(thresholds);
}

fn store_thresholds(thresholds: Thresholds) {
    // The fields are public: a struct literal is clamped and ordered here
    // as `Thresholds::new` does, so that what is reported is what applies.
    let thresholds = Thresholds::new(thresholds.warning_percent, thresholds.critical_percent);
    WARN_PCT.store(thresholds.warning_percent, Relaxed);
    CRIT_PCT.store(thresholds.critical_percent, Relaxed);
    update_level(RESERVED.load(Relaxed));
}

/// Applies a tracker's const configuration, then `HEAPWATCH_MAX_MEMORY_MB`.
/// Called once, from the first allocation; must not allocate.
pub(crate) fn configure(budget: Budget, policy: Policy, thresholds: Thresholds) {
    let explicit = EXPLICIT.load(Relaxed);
    if explicit & SET_POLICY == 0 {
        REFUSE.store(policy == Policy::Refuse, Relaxed);
    }
    if explicit & SET_THRESHOLDS == 0 {
        store_thresholds(thresholds);
    }
    let budget = match read_env_mb(b"HEAPWATCH_MAX_MEMORY_MB\0") {
        EnvMb::Unset => budget,
        EnvMb::Value(b) => b,
        EnvMb::Invalid => {
            ENV_INVALID.store(true, Relaxed);
            budget
        }
    };
    if explicit & SET_BUDGET == 0 {
        store_budget(budget);
    }
}

enum EnvMb {
    Unset,
    Value(Budget),
    Invalid,
}

/// Reads an environment variable holding a budget, without allocating
/// (`libc::getenv` and [`parse_env_budget`]).
fn read_env_mb(name: &[u8]) -> EnvMb {
    // SAFETY: `name` is NUL-terminated. `getenv` returns null or a pointer
    // to a NUL-terminated string owned by the environment; it is read
    // before `main` runs (first allocation), when no thread can be changing
    // the environment.
    let p = unsafe { libc::getenv(name.as_ptr().cast()) };
    if p.is_null() {
        return EnvMb::Unset;
    }
    // SAFETY: non-null `getenv` results are valid NUL-terminated strings.
    let bytes = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
    parse_env_budget(bytes)
}

/// `HEAPWATCH_MAX_MEMORY_MB`'s value: what [`Budget`]'s `FromStr` reads,
/// but a number without a unit is mebibytes, and zero (in any unit) is
/// unlimited, as `maxMemoryMB` settings usually mean it. An empty value
/// (or only whitespace) reads as unset. Never allocates (see
/// [`parse_size`]).
fn parse_env_budget(bytes: &[u8]) -> EnvMb {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return EnvMb::Invalid;
    };
    let text = text.trim();
    // Set but empty (`HEAPWATCH_MAX_MEMORY_MB= cmd`): as if unset, as
    // shells and most programs read an empty variable.
    if text.is_empty() {
        return EnvMb::Unset;
    }
    match parse_size(text, 20) {
        Ok(b) if b.bytes() == Some(0) => EnvMb::Value(Budget::UNLIMITED),
        Ok(b) => EnvMb::Value(b),
        Err(_) => EnvMb::Invalid,
    }
}

// ---- callbacks, outside the hook --------------------------------------------

/// A change of [`BudgetLevel`] seen by [`watch_budget`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetEvent {
    /// The level at the previous poll.
    pub previous: BudgetLevel,
    /// The highest level reached since the previous poll (a brief excursion
    /// between two polls is reported, not lost).
    pub reached: BudgetLevel,
    /// The state now.
    pub status: BudgetStatus,
}

/// The running watcher, from [`watch_budget`]. Stops the watcher thread
/// and joins it when dropped (in the child of a `fork`, which does not
/// have the thread, dropping an inherited watcher does nothing).
///
/// So keep the handle for as long as the callback should be called: bind
/// it to a named variable (`let _watch = heapwatch::watch_budget(..);`:
/// not `let _ = ...`, which drops it at once), or, to watch for the whole
/// life of the process, hand it to [`std::mem::forget`].
#[derive(Debug)]
#[must_use = "dropping a BudgetWatch stops the watcher: keep it for as long as the callback should be called"]
pub struct BudgetWatch {
    stop: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<crate::threads::OwnThread>,
}

/// Calls `callback` on a background thread (`heapwatch-limit`) whenever the
/// budget level changes or a threshold was crossed since the previous poll
/// (also when the level went down and back up between two polls).
/// The callback never runs inside the allocator: it may allocate, log, shed
/// load. Its allocations are the program's, but never refused: with the
/// budget spent they are let through as `budget_overages`, so that a
/// callback reacting to a full budget cannot abort the process. A callback
/// that panics is reported by the panic hook and called again for the next
/// event. Polls every `interval`, at least every 10 ms (a shorter
/// interval, zero included, is taken as 10 ms, so that the thread cannot
/// spin on a core); stop it by dropping the returned handle.
///
/// Starting the watcher works with the budget spent, too: what this call
/// allocates is never refused, and the thread allocates nothing before
/// its first poll. If the thread cannot be started (the system is out of
/// threads), no callback is ever called. The thread is not a `std` thread
/// (see README, "Budget"): its name is set for the operating system only,
/// on Linux, and `std::thread::current().name()` is `None` in the callback.
///
/// # Example
///
/// ```
/// use std::time::Duration;
///
/// let watch = heapwatch::watch_budget(Duration::from_millis(100), |event| {
///     eprintln!("memory budget: {:?} -> {:?}", event.previous, event.reached);
/// });
/// drop(watch); // stops and joins the thread
/// ```
pub fn watch_budget(
    interval: std::time::Duration,
    mut callback: impl FnMut(BudgetEvent) + Send + 'static,
) -> BudgetWatch {
    use std::sync::{Arc, Condvar, Mutex};
    let interval = watch_interval(interval);
    // Called to react to a spent budget, this must not abort the program.
    never_refused(move || {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stop2 = Arc::clone(&stop);
        // The starting reading is taken now, not in the thread: a level change
        // right after this call returns must be reported.
        let mut last = status();
        let thread = crate::threads::spawn(
            c"heapwatch-limit",
            crate::threads::Mode::NeverRefused,
            move || loop {
                {
                    let (lock, cvar) = &*stop2;
                    let Ok(stopped) = lock.lock() else { return };
                    let Ok((stopped, _)) = cvar.wait_timeout_while(stopped, interval, |s| !*s)
                    else {
                        return;
                    };
                    if *stopped {
                        return;
                    }
                }
                let now = status();
                let reached = if now.exceeded_crossings > last.exceeded_crossings {
                    BudgetLevel::Exceeded
                } else if now.critical_crossings > last.critical_crossings {
                    BudgetLevel::Critical.max(now.level)
                } else if now.warning_crossings > last.warning_crossings {
                    BudgetLevel::Warning.max(now.level)
                } else {
                    now.level
                };
                let crossed = now.exceeded_crossings > last.exceeded_crossings
                    || now.critical_crossings > last.critical_crossings
                    || now.warning_crossings > last.warning_crossings;
                if crossed || now.level != last.level {
                    let event = BudgetEvent {
                        previous: last.level,
                        reached,
                        status: now,
                    };
                    // A panicking callback is reported by the panic hook, and
                    // the watcher goes on with the next poll.
                    let _ =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(event)));
                }
                last = now;
            },
        )
        .ok();
        BudgetWatch { stop, thread }
    })
}

/// The shortest interval [`watch_budget`] polls at.
const MIN_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// The interval [`watch_budget`] polls at when asked for `interval`.
fn watch_interval(interval: std::time::Duration) -> std::time::Duration {
    interval.max(MIN_WATCH_INTERVAL)
}

impl BudgetWatch {
    /// Stops the watcher and waits for its thread.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if self.thread.as_ref().is_some_and(|t| !t.in_this_process()) {
            // A `fork` child dropping the watcher it inherited: the thread
            // does not exist here, and it may have held the stop flag's
            // lock at the fork. Leave both.
            return;
        }
        let (lock, cvar) = &*self.stop;
        if let Ok(mut s) = lock.lock() {
            *s = true;
        }
        cvar.notify_all();
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}

impl Drop for BudgetWatch {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

// ---- the hook's side -------------------------------------------------------
//
// A leased shard's credit is not a counter the hook updates. It is kept as
// the credit at the shard's last *sync* (`Shard::credit`), together with the
// shard's `alloc_bytes` and `freed_bytes` at that moment; since then the
// program's allocations on the shard have spent exactly what `alloc_bytes`
// grew by, and its frees have given back what `freed_bytes` grew by:
//
//     credit now = credit + (freed_bytes - sync_freed) - (alloc_bytes - sync_alloc)
//
// The fast paths therefore update only the counters they count anyway, and
// compare them with two limits set at the sync: an allocation stays on the
// fast path while `alloc_bytes` stays within `alloc_limit` (the credit at the
// sync is not overspent, whatever was freed since), a free while
// `freed_bytes` stays within `free_limit` (the credit cannot have grown past
// `2 × CHUNK_BYTES`, whatever was allocated since). Each limit ignores what
// the other counter did since the sync, so it is reached early, never late;
// the general path then computes the credit now, draws or hands back, and
// syncs again. Everything else that changes a leased shard's credit
// (reserving, handing back, heapwatch's own blocks) syncs first.

/// The credit of a leased shard now (see above).
#[inline]
fn credit_now(shard: &Shard) -> i64 {
    let spent = shard
        .alloc_bytes
        .load(Relaxed)
        .wrapping_sub(shard.sync_alloc.load(Relaxed));
    let returned = shard
        .freed_bytes
        .load(Relaxed)
        .wrapping_sub(shard.sync_freed.load(Relaxed));
    shard
        .credit
        .load(Relaxed)
        .wrapping_add(returned as i64)
        .wrapping_sub(spent as i64)
}

/// Records `credit` as a leased shard's credit now and sets the fast paths'
/// limits from it. Only the shard's own thread calls this.
fn sync(shard: &Shard, credit: i64) {
    let allocated = shard.alloc_bytes.load(Relaxed);
    let freed = shard.freed_bytes.load(Relaxed);
    shard.credit.store(credit, Relaxed);
    shard.sync_alloc.store(allocated, Relaxed);
    shard.sync_freed.store(freed, Relaxed);
    shard
        .alloc_limit
        .store(allocated.saturating_add(credit.max(0) as u64), Relaxed);
    let room = (2 * CHUNK_BYTES as i64).saturating_sub(credit).max(0) as u64;
    shard.free_limit.store(freed.saturating_add(room), Relaxed);
}

/// Starts a newly leased shard's credit bookkeeping (whatever the previous
/// owner left was returned by [`return_all_credit`]).
pub(crate) fn start_lease(shard: &Shard) {
    sync(shard, 0);
}

/// What [`admit`] decided.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Admission {
    /// Refused: do not allocate.
    Refused,
    /// Covered by the shard's credit.
    Covered,
    /// This many bytes reserved from the pool, over the budget if the flag
    /// is set: committed (and the peak raised, the overage counted) once
    /// the allocation succeeded ([`allocated`]), handed back if it failed
    /// ([`cancel`]).
    Reserved(u64, bool),
}

impl Admission {
    /// Whether the allocation may go ahead.
    pub(crate) fn admitted(self) -> bool {
        self != Admission::Refused
    }
}

/// Admits an allocation of `size` bytes on `shard`. Never allocates or
/// panics. If the inner allocator then fails, call [`cancel`]; if it
/// succeeds, [`allocated`] and count the block in the shard's counters.
/// heapwatch's own blocks never come here: they are not charged to the
/// budget.
#[inline]
pub(crate) fn admit(shard: &Shard, size: usize) -> Admission {
    if shard.is_exclusive() {
        let credit = credit_now(shard);
        if credit >= size as i64 {
            sync(shard, credit);
            return Admission::Covered;
        }
        admit_slow(shard, size as u64, credit)
    } else {
        admit_slow(shard, size as u64, 0)
    }
}

/// After an admitted allocation succeeded: a reservation it made is
/// committed, and counts towards the peak.
#[inline]
pub(crate) fn allocated(admission: Admission) {
    if let Admission::Reserved(granted, over) = admission {
        if over {
            OVERAGES.fetch_add(1, Relaxed);
        }
        commit(granted);
    }
}

/// Adds `bytes` to the committed reservation and raises the peak to it:
/// it covers every live block (the calling thread's new one included) and
/// the credit threads hold.
fn commit(bytes: u64) {
    let now = COMMITTED.fetch_add(bytes, Relaxed).wrapping_add(bytes);
    PEAK.fetch_max(now, Relaxed);
}

/// Reserves from the pool. `credit` is an exclusive shard's credit now.
#[cold]
#[inline(never)]
fn admit_slow(shard: &Shard, size: u64, credit: i64) -> Admission {
    let (need, want) = if shard.is_exclusive() {
        let need = (size as i64).saturating_sub(credit).max(0) as u64;
        (need, need.saturating_add(CHUNK_BYTES))
    } else {
        // The shared shard holds no credit: it reserves exactly.
        (size, size)
    };
    let limit = LIMIT.load(Relaxed);
    let granted = RESERVED.fetch_update(Relaxed, Relaxed, |r| {
        match r.checked_add(want) {
            Some(n) if n <= limit => return Some(n),
            _ => {}
        }
        match r.checked_add(need) {
            Some(n) if n <= limit => Some(n),
            _ => None,
        }
    });
    let (granted, now, over) = match granted {
        Ok(prev) => {
            // The closure's choice, made again from the same `prev`.
            let g = if prev.checked_add(want).is_some_and(|n| n <= limit) {
                want
            } else {
                need
            };
            (g, prev + g, false)
        }
        // A panicking thread's allocations (its message, its backtrace)
        // are let through as overages: refused, they would abort the
        // process, or deadlock std's out-of-memory hook on the backtrace
        // lock the panic holds. `panicking` reads a global atomic, and a
        // `const` thread-local only while some thread panics.
        Err(_) if REFUSE.load(Relaxed) && !std::thread::panicking() && !exempt() => {
            DENIALS.fetch_add(1, Relaxed);
            return Admission::Refused;
        }
        Err(_) => {
            let prev = RESERVED.fetch_add(need, Relaxed);
            (need, prev.wrapping_add(need), true)
        }
    };
    if shard.is_exclusive() {
        sync(shard, credit.wrapping_add(granted as i64));
    }
    update_level(now);
    Admission::Reserved(granted, over)
}

/// The hook's fast-path admission of an allocation of `size` bytes on the
/// calling thread's own leased shard: true if the credit at the last sync
/// covers it on top of everything allocated since. When false, take the
/// general path ([`admit`]). On success, add `size` to `alloc_bytes`.
#[inline(always)]
pub(crate) fn admit_owned(shard: &Shard, size: usize) -> bool {
    let allocated = shard.alloc_bytes.load(Relaxed).wrapping_add(size as u64);
    allocated <= shard.alloc_limit.load(Relaxed)
}

/// The hook's fast-path admission of a reallocation from `old_size` to
/// `new_size` bytes on the calling thread's own leased shard: both
/// [`admit_owned`] for the new size and [`free_fits`] for the old one. On
/// success, add `new_size` to `alloc_bytes` and `old_size` to
/// `freed_bytes`.
#[inline(always)]
pub(crate) fn admit_realloc_owned(shard: &Shard, old_size: usize, new_size: usize) -> bool {
    admit_owned(shard, new_size)
        && free_fits(
            shard,
            shard
                .freed_bytes
                .load(Relaxed)
                .wrapping_add(old_size as u64),
        )
}

/// Whether a free that takes the calling thread's own leased shard's
/// `freed_bytes` to `freed` can stay on the fast path: false when the
/// credit it gives back might leave the shard more than it may keep; then
/// the caller takes the general path, which counts the free and calls
/// [`release`].
#[inline(always)]
pub(crate) fn free_fits(shard: &Shard, freed: u64) -> bool {
    freed <= shard.free_limit.load(Relaxed)
}

/// Undoes [`admit`] for an allocation the inner allocator failed: what it
/// reserved from the pool goes back, never committed, and the shard's
/// credit is what it was before. A failed allocation of many bytes leaves
/// neither the reservation (which other threads' allocations are refused
/// against) nor the peak raised by them.
pub(crate) fn cancel(shard: &Shard, admission: Admission) {
    let Admission::Reserved(granted, _) = admission else {
        return;
    };
    if shard.is_exclusive() {
        // No allocation of this thread's came between `admit` and here:
        // its credit now is the granted bytes on top of what it had.
        sync(shard, credit_now(shard).wrapping_sub(granted as i64));
    }
    update_level(unreserve(granted));
}

/// Settles the budget after a program free (or shrinking reallocation) of
/// `size` bytes that is already counted in the shard's `freed_bytes`: the
/// shared shard gives the bytes back to the pool; a leased shard syncs,
/// handing back to the pool whatever its credit holds beyond `CHUNK_BYTES`
/// once that exceeds `2 × CHUNK_BYTES`.
pub(crate) fn release(shard: &Shard, size: usize) {
    if shard.is_exclusive() {
        settle(shard, credit_now(shard));
    } else {
        give_back(size as u64);
    }
}

/// Syncs a leased shard at `credit`, first handing back to the pool what
/// it holds beyond `CHUNK_BYTES` if that exceeds `2 × CHUNK_BYTES`.
fn settle(shard: &Shard, credit: i64) {
    if credit > 2 * CHUNK_BYTES as i64 {
        sync(shard, CHUNK_BYTES as i64);
        give_back((credit - CHUNK_BYTES as i64) as u64);
    } else {
        sync(shard, credit);
    }
}

/// Returns `bytes` of committed reservation to the pool and updates the
/// budget level.
fn give_back(bytes: u64) {
    let _ = COMMITTED.fetch_update(Relaxed, Relaxed, |c| Some(c.saturating_sub(bytes)));
    update_level(unreserve(bytes));
}

std::thread_local! {
    /// Set by [`never_refused`] on its thread.
    static EXEMPT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is inside [`never_refused`]. Allocation-free
/// and panic-free (a `const` thread-local without a destructor).
fn exempt() -> bool {
    EXEMPT.try_with(std::cell::Cell::get).unwrap_or(false)
}

/// Runs `f` with the calling thread's allocations let through, as
/// overages, where the budget would refuse them: for what heapwatch's API
/// hands the program (a snapshot), which an infallible allocation would
/// otherwise turn into an abort under a spent budget.
pub(crate) fn never_refused<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = EXEMPT.try_with(|e| e.set(self.0));
        }
    }
    let _reset = Reset(EXEMPT.try_with(|e| e.replace(true)).unwrap_or(false));
    f()
}

/// Takes `bytes` out of the reservation, never below zero, and returns
/// what is left. Only a free of a block the budget never charged could
/// take more than is there: one of heapwatch's own blocks freed outside
/// its guard, as when the program drops a `dhat::Profiler` whose tables
/// dhat allocated while serving heapwatch. Wrapping around would refuse
/// every allocation that follows.
fn unreserve(bytes: u64) -> u64 {
    let prev = RESERVED
        .fetch_update(Relaxed, Relaxed, |r| Some(r.saturating_sub(bytes)))
        .unwrap_or_else(|r| r);
    prev.saturating_sub(bytes)
}

/// Returns all of a shard's credit to the pool (its thread is exiting).
pub(crate) fn return_all_credit(shard: &Shard) {
    if !shard.is_exclusive() {
        return;
    }
    let c = credit_now(shard);
    sync(shard, 0);
    if c > 0 {
        give_back(c as u64);
    } else if c < 0 {
        RESERVED.fetch_add(c.unsigned_abs(), Relaxed);
        commit(c.unsigned_abs());
    }
}

/// How far below a level's entry point the reservation must fall before the
/// level is left: 2% of the budget (1/50), and at most half the entry point
/// (so that a level entered at 1% of the budget is still left, at 0.5%). A
/// reservation that hovers at a threshold (a thread drawing and handing back
/// a chunk of credit, a cache that fills and evicts) then counts one
/// crossing and makes one watcher event, not one for every wobble.
const HYSTERESIS_DIVISOR: u64 = 50;

/// Where the levels above `Normal` begin and end, in bytes reserved, for
/// one reading of the budget and thresholds.
struct LevelPoints {
    /// Entry points of `Warning`, `Critical` and `Exceeded`: a reservation
    /// at or above one is at least that level.
    enter: [u64; 3],
    /// Exit points: a level is kept while the reservation is at or above
    /// its exit point.
    exit: [u64; 3],
}

impl LevelPoints {
    /// The points for the budget and thresholds in force; `None` with no
    /// budget.
    fn now() -> Option<LevelPoints> {
        LevelPoints::of(
            LIMIT.load(Relaxed),
            WARN_PCT.load(Relaxed),
            CRIT_PCT.load(Relaxed),
        )
    }

    /// The points for a budget of `limit` bytes with these thresholds.
    fn of(limit: u64, warn_pct: u8, crit_pct: u8) -> Option<LevelPoints> {
        if limit == UNLIMITED {
            return None;
        }
        let pct = |p: u8| (limit as u128 * u128::from(p) / 100) as u64;
        let enter = [pct(warn_pct), pct(crit_pct), limit.saturating_add(1)];
        let margin = limit / HYSTERESIS_DIVISOR;
        Some(LevelPoints {
            enter,
            exit: enter.map(|e| e - margin.min(e / 2)),
        })
    }

    /// The highest level whose point in `points` the reservation reaches.
    fn level(points: &[u64; 3], reserved: u64) -> u8 {
        points.iter().filter(|&&p| reserved >= p).count() as u8
    }

    /// The level after `old` for a reservation of `reserved`: a higher
    /// level is entered as soon as its threshold is reached; a level is
    /// left only once the reservation falls below its exit point
    /// ([`HYSTERESIS_DIVISOR`]).
    fn next(&self, old: u8, reserved: u64) -> u8 {
        let reached = LevelPoints::level(&self.enter, reserved);
        let kept = LevelPoints::level(&self.exit, reserved).min(old);
        reached.max(kept)
    }
}

/// The level after `old` for a reservation of `reserved`, with the budget
/// and thresholds in force (see [`LevelPoints::next`]).
fn next_level(old: u8, reserved: u64) -> u8 {
    LevelPoints::now().map_or(BudgetLevel::Normal as u8, |p| p.next(old, reserved))
}

/// Records the level for a new reservation, counting upward crossings.
/// Atomics only; called from the hook's slow paths.
fn update_level(reserved: u64) {
    let mut new = 0;
    let old = LEVEL
        .fetch_update(Relaxed, Relaxed, |old| {
            new = next_level(old, reserved);
            (new != old).then_some(new)
        })
        .unwrap_or_else(|old| old);
    if new > old {
        if old < 1 && new >= 1 {
            WARNING_CROSSINGS.fetch_add(1, Relaxed);
        }
        if old < 2 && new >= 2 {
            CRITICAL_CROSSINGS.fetch_add(1, Relaxed);
        }
        if old < 3 && new >= 3 {
            EXCEEDED_CROSSINGS.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_left_below_their_exit_points() {
        // 100,000 bytes, thresholds 80% and 95%: margins of 2,000 bytes.
        let p = LevelPoints::of(100_000, 80, 95).unwrap();
        let walk = |steps: &[u64]| {
            let mut level = 0;
            steps
                .iter()
                .map(|&r| {
                    level = p.next(level, r);
                    level
                })
                .collect::<Vec<u8>>()
        };
        assert_eq!(
            walk(&[79_999, 80_000, 79_000, 78_000, 77_999, 80_000]),
            [0, 1, 1, 1, 0, 1]
        );
        assert_eq!(
            walk(&[95_000, 93_000, 92_999, 78_000, 100_001, 98_001, 98_000, 0]),
            [2, 2, 1, 1, 3, 3, 2, 0]
        );
        // Entered at 1% (1,000 bytes), a level is left at half that, not
        // never (a 2% margin would put its exit point below zero).
        let low = LevelPoints::of(100_000, 1, 2).unwrap();
        assert_eq!(low.exit[..2], [500, 1_000]);
        assert_eq!(low.next(2, 499), 0);
        assert_eq!(low.next(2, 999), 1);
        // Thresholds close together: leaving `Critical` goes as far down as
        // the reservation says.
        let close = LevelPoints::of(100_000, 80, 81).unwrap();
        assert_eq!(close.next(2, 79_500), 2);
        assert_eq!(close.next(2, 78_999), 1);
        assert_eq!(close.next(2, 77_999), 0);
        // A zero budget is at its critical level from the first byte.
        let zero = LevelPoints::of(0, 80, 95).unwrap();
        assert_eq!(zero.next(0, 0), 2);
        assert!(LevelPoints::of(UNLIMITED, 80, 95).is_none());
    }

    /// A fast-path allocation of `size` on `shard`, as the hook makes it.
    fn fast_alloc(shard: &Shard, size: usize) -> bool {
        if !admit_owned(shard, size) {
            return false;
        }
        let a = shard.alloc_bytes.load(Relaxed);
        shard.alloc_bytes.store(a + size as u64, Relaxed);
        true
    }

    /// A fast-path free of `size` on `shard`, as the hook makes it.
    fn fast_free(shard: &Shard, size: usize) -> bool {
        let freed = shard.freed_bytes.load(Relaxed) + size as u64;
        if !free_fits(shard, freed) {
            return false;
        }
        shard.freed_bytes.store(freed, Relaxed);
        true
    }

    #[test]
    fn fast_path_limits_are_exact_right_after_a_sync() {
        let chunk = CHUNK_BYTES as usize;
        for credit in [0, 1, 100, chunk, 2 * chunk - 1, 2 * chunk] {
            let shard = Shard::new(true);
            shard.alloc_bytes.store(12_345, Relaxed);
            shard.freed_bytes.store(6_789, Relaxed);
            sync(&shard, credit as i64);
            assert_eq!(credit_now(&shard), credit as i64);
            // The whole credit can be spent, not a byte more.
            assert!(!admit_owned(&shard, credit + 1), "credit {credit}");
            assert!(
                credit == 0 || admit_owned(&shard, credit),
                "credit {credit}"
            );
            // Frees may bring it up to 2 chunks, not a byte more.
            let room = 2 * chunk - credit;
            assert!(free_fits(&shard, 6_789 + room as u64), "credit {credit}");
            assert!(
                !free_fits(&shard, 6_789 + room as u64 + 1),
                "credit {credit}"
            );
        }
        // Negative credit (a re-entrant inner allocator spent it): nothing
        // fits until the general path draws more.
        let shard = Shard::new(true);
        sync(&shard, -10);
        assert!(!admit_owned(&shard, 1));
        assert!(free_fits(&shard, 2 * CHUNK_BYTES + 10));
    }

    #[test]
    fn fast_paths_keep_credit_between_zero_and_two_chunks() {
        // Whatever mix of fast allocations and frees follows a sync, the
        // credit they leave (derived from the counters) stays in
        // [0, 2 chunks]: the fast paths never overspend and never hoard.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let shard = Shard::new(true);
        let mut fast = 0;
        for round in 0..200 {
            let credit = (next() % (2 * CHUNK_BYTES + 1)) as i64;
            sync(&shard, credit);
            for _ in 0..500 {
                let size = 1 + (next() % 5_000) as usize;
                let ok = if next() % 2 == 0 {
                    fast_alloc(&shard, size)
                } else {
                    fast_free(&shard, size)
                };
                fast += usize::from(ok);
                let now = credit_now(&shard);
                assert!(
                    (0..=2 * CHUNK_BYTES as i64).contains(&now),
                    "round {round}: credit {now}"
                );
            }
        }
        assert!(fast > 1_000, "the fast paths were taken {fast} times");
    }

    #[test]
    fn parses_units() {
        let p = |s: &str| s.parse::<Budget>().unwrap().bytes();
        assert_eq!(p("512MB"), Some(512 << 20));
        assert_eq!(p("512 MiB"), Some(512 << 20));
        assert_eq!(p("2GiB"), Some(2 << 30));
        assert_eq!(p("1.5g"), Some(3 << 29));
        assert_eq!(p("1024.0"), Some(1024));
        assert_eq!(p("1."), Some(1));
        assert_eq!(p("0.0"), Some(0));
        assert_eq!(p("4096"), Some(4096));
        assert_eq!(p("64KiB"), Some(64 << 10));
        assert_eq!(p("unlimited"), None);
        assert_eq!(p("NONE"), None);
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for bad in ["", "MB", "12 parsecs", "-5MB", "1e999GB", "1.2.3MB"] {
            let e = bad.parse::<Budget>().unwrap_err();
            assert!(e.to_string().contains("budget"), "{bad:?}: {e}");
        }
        // Each says what is wrong with it.
        for (bad, why) in [
            ("-5MB", "negative"),
            ("1e3", "unknown unit \"e3\""),
            ("1,000", "unknown unit \",000\""),
            ("12 parsecs", "unknown unit \"parsecs\""),
            ("0.4", "a fraction of a byte"),
            ("1.5B", "a fraction of a byte"),
            ("0.0001KiB", "less than a byte"),
            ("+5MB", "expected a number"),
            ("0xFF", "unknown unit \"xFF\""),
            ("1e3MB", "unknown unit \"e3MB\""),
        ] {
            let e = bad.parse::<Budget>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn display_round_trips() {
        for b in [
            Budget::from_bytes(1_152_921_504_606_846_977),
            Budget::from_bytes(u64::MAX - 1),
            Budget::from_mb(512),
            Budget::from_gb(3),
            Budget::from_bytes(1000),
            Budget::from_bytes(0),
            Budget::UNLIMITED,
        ] {
            assert_eq!(b.to_string().parse::<Budget>().unwrap(), b);
        }
    }

    #[test]
    fn env_values() {
        let value = |s: &[u8]| match parse_env_budget(s) {
            EnvMb::Value(b) => Some(b),
            _ => None,
        };
        // A number without a unit is mebibytes, as the name says.
        assert_eq!(value(b"512"), Some(Budget::from_mb(512)));
        assert_eq!(value(b" 64 "), Some(Budget::from_mb(64)));
        assert_eq!(value(b"1.5"), Some(Budget::from_bytes(3 << 19)));
        // Units as `Budget::from_str` reads them.
        assert_eq!(value(b"512MB"), Some(Budget::from_mb(512)));
        assert_eq!(value(b"512 MiB"), Some(Budget::from_mb(512)));
        assert_eq!(value(b"2GiB"), Some(Budget::from_gb(2)));
        assert_eq!(value(b"1.5g"), Some(Budget::from_mb(1536)));
        assert_eq!(value(b"65536KiB"), Some(Budget::from_mb(64)));
        assert_eq!(value(b"4096B"), Some(Budget::from_bytes(4096)));
        // Zero in any unit, and the words, are no budget.
        for none in [
            &b"0"[..],
            b"0MB",
            b"0B",
            b"unlimited",
            b"Unlimited",
            b"none",
            b"off",
        ] {
            assert_eq!(
                value(none),
                Some(Budget::UNLIMITED),
                "{}",
                String::from_utf8_lossy(none)
            );
        }
        assert!(matches!(parse_env_budget(b""), EnvMb::Unset));
        assert!(matches!(parse_env_budget(b"  "), EnvMb::Unset));
        for bad in [
            &b"99999999999999999999999"[..],
            b"16777216TiB",
            b"512 parsecs",
            b"-5",
            b"MB",
            b"0.0001B",
            b"1e3",
            b"512\xff",
        ] {
            assert!(
                matches!(parse_env_budget(bad), EnvMb::Invalid),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn watch_interval_is_at_least_10_ms() {
        use std::time::Duration;
        assert_eq!(watch_interval(Duration::ZERO), Duration::from_millis(10));
        assert_eq!(
            watch_interval(Duration::from_micros(9_999)),
            Duration::from_millis(10)
        );
        assert_eq!(
            watch_interval(Duration::from_millis(10)),
            Duration::from_millis(10)
        );
        assert_eq!(
            watch_interval(Duration::from_millis(250)),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn thresholds_are_clamped_and_ordered() {
        assert_eq!(Thresholds::new(95, 80), Thresholds::new(80, 95));
        assert_eq!(Thresholds::new(0, 200), Thresholds::new(1, 100));
    }
}
