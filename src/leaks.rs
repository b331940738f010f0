//! Leak detection by growth rate over retained snapshots. How growth is
//! measured and graded is documented on [`leak_report`], in the public
//! docs.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::budget::BudgetStatus;
use crate::snapshot::Snapshot;
use crate::symbolize::Frame;

const MIB: f64 = (1u64 << 20) as f64;

/// How fast live bytes must grow (MiB per minute) to reach each
/// [`Severity`]. Defaults: 3, 6, 12 and 15 MiB/min.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeakThresholds {
    /// Growth at or above this is [`Severity::Low`].
    pub low_mb_per_min: f64,
    /// Growth at or above this is [`Severity::Medium`].
    pub medium_mb_per_min: f64,
    /// Growth at or above this is [`Severity::High`].
    pub high_mb_per_min: f64,
    /// Growth at or above this is [`Severity::Critical`].
    pub critical_mb_per_min: f64,
}

impl LeakThresholds {
    /// 3, 6, 12 and 15 MiB per minute.
    pub const DEFAULT: LeakThresholds = LeakThresholds {
        low_mb_per_min: 3.0,
        medium_mb_per_min: 6.0,
        high_mb_per_min: 12.0,
        critical_mb_per_min: 15.0,
    };

    /// Thresholds in MiB per minute, for low, medium, high and critical.
    pub const fn new(low: f64, medium: f64, high: f64, critical: f64) -> LeakThresholds {
        LeakThresholds {
            low_mb_per_min: low,
            medium_mb_per_min: medium,
            high_mb_per_min: high,
            critical_mb_per_min: critical,
        }
    }

    /// The severity of growing `mb_per_min` MiB per minute. NaN is
    /// [`Severity::None`].
    pub fn severity(&self, mb_per_min: f64) -> Severity {
        if mb_per_min >= self.critical_mb_per_min {
            Severity::Critical
        } else if mb_per_min >= self.high_mb_per_min {
            Severity::High
        } else if mb_per_min >= self.medium_mb_per_min {
            Severity::Medium
        } else if mb_per_min >= self.low_mb_per_min {
            Severity::Low
        } else {
            Severity::None
        }
    }
}

impl Default for LeakThresholds {
    fn default() -> Self {
        LeakThresholds::DEFAULT
    }
}

/// How alarming a growth rate is.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Below the low threshold (or no data).
    #[default]
    None,
    /// At or above the low threshold.
    Low,
    /// At or above the medium threshold.
    Medium,
    /// At or above the high threshold.
    High,
    /// At or above the critical threshold.
    Critical,
}

/// The process's growth over the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Growth {
    /// Least-squares slope of live bytes, MiB per minute (0 without
    /// enough data).
    pub mb_per_min: f64,
    /// The same slope in bytes per second.
    pub bytes_per_sec: f64,
    /// Live bytes at the first point in the window.
    pub first_live_bytes: u64,
    /// Live bytes at the last point in the window.
    pub last_live_bytes: u64,
    /// `last_live_bytes - first_live_bytes`.
    pub delta_bytes: i64,
    /// Least-squares slope over the later half of the points' span only
    /// (the points at or after its middle), MiB per minute; the same as
    /// `mb_per_min` with fewer than two points there. 0 in files from
    /// builds before it existed.
    #[serde(default)]
    pub recent_mb_per_min: f64,
    /// The rate `severity` grades, MiB per minute: the lower of
    /// `mb_per_min` and `recent_mb_per_min` (see [`leak_report`]). 0
    /// without enough data, and in files from builds before it existed.
    #[serde(default)]
    pub graded_mb_per_min: f64,
    /// The grade of `graded_mb_per_min`.
    pub severity: Severity,
}

/// One callsite's growth over the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CallsiteGrowth {
    /// The callsite's id.
    pub id: String,
    /// Its frames, as in the latest snapshot that has it.
    pub frames: std::sync::Arc<[Frame]>,
    /// Live bytes in the last snapshot of the window.
    pub live_bytes: u64,
    /// Least-squares slope of its live bytes, MiB per minute.
    pub mb_per_min: f64,
    /// The same slope in bytes per second.
    pub bytes_per_sec: f64,
    /// Live bytes at the last point minus at the first.
    pub delta_bytes: i64,
    /// Least-squares slope over the later half of its points' span, as
    /// [`Growth::recent_mb_per_min`]. 0 in files from builds before it
    /// existed.
    #[serde(default)]
    pub recent_mb_per_min: f64,
    /// The rate `severity` grades, MiB per minute: as
    /// [`Growth::graded_mb_per_min`] for exact figures; for sampling
    /// estimates ([`Callsite::estimated`](crate::Callsite::estimated)),
    /// the window's slope is first lowered to the lower end of its
    /// one-sided 99% confidence interval, and with fewer than three points
    /// (no interval) it is 0 (see [`leak_report`]). 0 in files from builds
    /// before it existed.
    #[serde(default)]
    pub graded_mb_per_min: f64,
    /// The grade of `graded_mb_per_min`.
    pub severity: Severity,
}

/// What [`leak_report`] found (its docs say how growth is measured and
/// graded).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LeakReport {
    /// The window asked for, in milliseconds.
    pub window_ms: u64,
    /// Time between the first and the last point used, in milliseconds.
    pub span_ms: u64,
    /// Snapshots inside the window.
    pub points: usize,
    /// Whether there were at least two points at distinct times, spanning
    /// at least a tenth of the window (otherwise every slope is zero and
    /// every severity `none`).
    pub enough_data: bool,
    /// The thresholds used.
    pub thresholds: LeakThresholds,
    /// The process's growth (`totals.live_bytes`).
    pub process: Growth,
    /// Callsites whose live bytes grew (positive slope): by severity, the
    /// most severe first, then by `graded_mb_per_min`, then by
    /// `mb_per_min`, each the highest first.
    pub callsites: Vec<CallsiteGrowth>,
    /// The budget's state when the report was made.
    pub budget: BudgetStatus,
    /// The span the endpoint's full history covers when its snapshots are
    /// taken on schedule, in milliseconds: `(history_len - 1) ×
    /// history_interval`. Set by `/heap/leaks`, `None` (left out of the
    /// JSON) from [`leak_report`]. When it is under a tenth of `window_ms`,
    /// the history is too short for the window: `enough_data` stays `false`
    /// unless slow snapshots or a paused process stretch it. Raise
    /// `history_len` or lower `leak_window` (`ServerBuilder`, feature
    /// `server`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_span_ms: Option<u64>,
    /// Whether the window holds snapshots taken before the sampling mode
    /// last changed ([`Snapshot::sampling_changes`]). Callsites are then
    /// fitted only on the snapshots since the change (their figures before
    /// it were recorded another way); the process's growth, exact in every
    /// mode, on all of them. false in files from builds before it existed.
    #[serde(default)]
    pub sampling_changed: bool,
}

/// Grades the growth of live bytes over the snapshots taken within
/// `window` of the latest one, and attaches the budget's state
/// ([`budget_status`](crate::budget_status)).
///
/// # How growth is measured
///
/// A leak shows as live bytes that keep rising. This function fits a
/// least-squares line to live bytes against time over the snapshots inside
/// the window (the endpoint's default is the last five minutes) and reports
/// its slope in MiB per minute, for the process (`totals.live_bytes`) and
/// for every callsite (matched by id), graded by [`LeakThresholds`] into a
/// [`Severity`]. It is a pure function of its inputs: the server feeds it
/// its history ring, and a program can feed it snapshots it kept itself.
///
/// Time is the snapshots' `uptime_ms` (monotonic), not their wall clock, so
/// a clock step does not fake a slope. A callsite absent from a snapshot
/// counts as zero live bytes there (it did not exist yet, or had nothing
/// live), unless that snapshot left callsites out
/// ([`Snapshot::callsites_omitted`], as the server's history does): there
/// its figure is unknown and that point is left out of the callsite's fit
/// (a callsite needs known points spanning a tenth of the window, the last
/// snapshot among them, to have a slope). With fewer than two points, or
/// points spanning less than a tenth of the window (all at one instant, or
/// a program's first seconds), there is no slope: the report says
/// `enough_data: false` and every slope is zero.
///
/// A megabyte here is a mebibyte (2^20 bytes), as in [`Budget`](crate::Budget).
///
/// # How growth is graded
///
/// The rate is the least-squares slope over the window (`mb_per_min`). A
/// leak grows all the time; a cache filled at start-up, a buffer that
/// doubled once or a burst that ended is a step, which a line fitted
/// across it also reads as a rate, for as long as the step stays in the
/// window. So the slope over the later half of the points' span
/// (`recent_mb_per_min`) is computed too, and the lower of the two is
/// graded: growth must go on to be graded at a rate. A step stops being
/// graded once it is in the first half of the span (within half a window),
/// a service's first minutes of filling its caches are graded only while
/// the filling goes on, and a leak that started within the window (the
/// later half steeper) is graded at the window's rate, as before.
///
/// The price: a leak that itself grows in steps is graded by where its
/// steps fall. A `Vec` pushed to steadily grows its live bytes (its
/// capacity) in doublings, each waiting for as many bytes as the `Vec`
/// already holds, so they come further apart as it grows. It is graded
/// below its filling rate, or not at all, while no doubling falls in the
/// later half of the span (a `Vec` filled at 8 MiB/min over an 11 s span
/// was graded at 4.1 MiB/min, `low`), and again at each doubling
/// ([`GrowthCheck`](crate::GrowthCheck) does not call such a `Vec` a leak
/// at all, for the same reason).
///
/// A callsite's figures sampled by bytes ([`Callsite::estimated`](crate::Callsite::estimated))
/// are estimates that wobble around the truth by about the square root of
/// live bytes × the sampling interval (3 MiB for a 20 MiB callsite at
/// 512 KiB), and a line fitted to a few of them can read that wobble as
/// growth. For them the window's rate is first lowered to the lower end of
/// its one-sided 99% confidence interval (Student's t over the points'
/// scatter around the line): growth is graded at the rate the points bear
/// out. A steady leak's points lie close to its line and lose little; a
/// flat callsite's scatter, most of its slope. With fewer than three
/// points there is no interval, and such a callsite is not graded. The
/// rate graded is reported as `graded_mb_per_min`.
///
/// The interval takes the points' errors as independent, which they are
/// when the callsite's blocks are replaced between snapshots. A callsite
/// whose sampled blocks stay live for minutes has errors that drift
/// together, and over a short window the drift can lie close to a line:
/// such a callsite can still be graded though it does not grow (less often
/// than by its fitted rate, far more often than 1 time in 100). A leak
/// that starts within the window is graded later than with exact figures,
/// as the flat points before it scatter around the line. Act on a sampled
/// callsite's severity once it holds over minutes, or confirm it under
/// `Sampling::All`.
///
/// The process's live bytes are exact, and so are the figures of callsites
/// with `estimated: false`: what scatter they show is the program's own,
/// and they are graded at their fitted rates.
///
/// Snapshots may come in any order; they are ordered by `uptime_ms`.
/// Accepts `&[Snapshot]`, `&[Arc<Snapshot>]` or `&[&Snapshot]`.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use heapwatch::{leak_report, LeakThresholds, Severity};
///
/// let first = heapwatch::snapshot();
/// let report = leak_report(&[first], Duration::from_secs(300), &LeakThresholds::DEFAULT);
/// assert_eq!(report.points, 1);
/// assert!(!report.enough_data);
/// assert_eq!(report.process.severity, Severity::None);
/// ```
pub fn leak_report<S: Borrow<Snapshot>>(
    snapshots: &[S],
    window: Duration,
    thresholds: &LeakThresholds,
) -> LeakReport {
    report_with_budget(
        snapshots,
        window,
        thresholds,
        crate::budget::budget_status(),
    )
}

/// [`leak_report`] with the budget's state given: the pure part.
pub(crate) fn report_with_budget<S: Borrow<Snapshot>>(
    snapshots: &[S],
    window: Duration,
    thresholds: &LeakThresholds,
    budget: BudgetStatus,
) -> LeakReport {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    let mut points: Vec<&Snapshot> = snapshots.iter().map(Borrow::borrow).collect();
    points.sort_by_key(|s| (s.uptime_ms, s.id));
    if let Some(last) = points.last().map(|s| s.uptime_ms) {
        let start = last.saturating_sub(window_ms);
        points.retain(|s| s.uptime_ms >= start);
    }
    let span_ms = match (points.first(), points.last()) {
        (Some(a), Some(b)) => b.uptime_ms - a.uptime_ms,
        _ => 0,
    };
    // Points a few milliseconds apart give a slope, but not a rate worth
    // grading (a program filling its first buffers read as thousands of
    // MiB per minute): the points must span a tenth of the window.
    let enough_data = points.len() >= 2 && span_ms > 0 && span_ms >= window_ms / 10;
    // x: minutes since the first point.
    let t0 = points.first().map_or(0, |s| s.uptime_ms);
    let xs: Vec<f64> = points
        .iter()
        .map(|s| (s.uptime_ms - t0) as f64 / 60_000.0)
        .collect();

    let totals: Vec<u64> = points.iter().map(|s| s.totals.live_bytes).collect();
    let process = growth(&xs, &totals, enough_data, false, thresholds);

    // Callsite figures compare only between snapshots recorded the same
    // way: the latest one's mode, and (within one process) no switch since.
    let comparable: Vec<bool> = match points.last() {
        Some(last) => points.iter().map(|s| s.sampled_like(last)).collect(),
        None => Vec::new(),
    };
    let sampling_changed = comparable.contains(&false);

    let mut callsites = Vec::new();
    if enough_data {
        // id -> live bytes per point, and the index of the latest snapshot
        // that has it (for frames). Absent from a point: 0 if that snapshot
        // has every callsite, unknown (`None`, left out of the fit) if it
        // left callsites out (the server's history keeps each snapshot's
        // largest ones): reading that absence as 0 made a steady callsite
        // that moved into the kept set look like a leak.
        // A point recorded another way is unknown for every callsite.
        let absent: Vec<Option<u64>> = points
            .iter()
            .zip(&comparable)
            .map(|(s, &same)| (same && s.callsites_omitted == 0).then_some(0))
            .collect();
        let mut series: HashMap<&str, (Vec<Option<u64>>, usize, usize)> = HashMap::new();
        for (i, snap) in points.iter().enumerate() {
            if comparable.get(i) != Some(&true) {
                continue;
            }
            for (j, c) in snap.callsites.iter().enumerate() {
                let entry = series
                    .entry(c.id.as_str())
                    .or_insert_with(|| (absent.clone(), i, j));
                if let Some(v) = entry.0.get_mut(i) {
                    *v = Some(v.unwrap_or(0).saturating_add(c.live_bytes));
                }
                entry.1 = i;
                entry.2 = j;
            }
        }
        // A callsite's own known points must span a tenth of the window,
        // as the process's must.
        let min_span = window_ms as f64 / 10.0 / 60_000.0;
        for (id, (known, si, ci)) in series {
            // Unknown at the latest point (left out of it as smaller than
            // what it kept): its rate now is not known either. Its known
            // points would be only those from before it shrank, and their
            // rise would read as a leak long after the memory was freed.
            if known.last().is_some_and(Option::is_none) {
                continue;
            }
            let (xs, ys): (Vec<f64>, Vec<u64>) = xs
                .iter()
                .zip(&known)
                .filter_map(|(&x, y)| Some((x, (*y)?)))
                .unzip();
            let spans = xs
                .first()
                .zip(xs.last())
                .is_some_and(|(a, b)| b > a && b - a >= min_span);
            if !spans {
                continue;
            }
            let latest = points.get(si).and_then(|s| s.callsites.get(ci));
            let estimated = latest.is_some_and(|c| c.estimated);
            let g = growth(&xs, &ys, true, estimated, thresholds);
            if g.bytes_per_sec.is_nan() || g.bytes_per_sec <= 0.0 {
                continue;
            }
            let frames = latest.map(|c| c.frames.clone()).unwrap_or_default();
            callsites.push(CallsiteGrowth {
                id: id.to_string(),
                frames,
                live_bytes: g.last_live_bytes,
                mb_per_min: g.mb_per_min,
                bytes_per_sec: g.bytes_per_sec,
                delta_bytes: g.delta_bytes,
                recent_mb_per_min: g.recent_mb_per_min,
                graded_mb_per_min: g.graded_mb_per_min,
                severity: g.severity,
            });
        }
        // Graded callsites first, so that `?top=N` keeps them: a sampled
        // callsite's fitted rate can be high and its grade none.
        callsites.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| b.graded_mb_per_min.total_cmp(&a.graded_mb_per_min))
                .then_with(|| b.bytes_per_sec.total_cmp(&a.bytes_per_sec))
                .then_with(|| a.id.cmp(&b.id))
        });
    }

    LeakReport {
        window_ms,
        span_ms,
        points: points.len(),
        enough_data,
        thresholds: *thresholds,
        process,
        callsites,
        budget,
        history_span_ms: None,
        sampling_changed,
    }
}

/// The growth of `ys` over `xs` (minutes). `estimated`: the ys are
/// sampling estimates, graded on the lower end of the slope's confidence
/// interval (see [`leak_report`]).
fn growth(
    xs: &[f64],
    ys: &[u64],
    enough: bool,
    estimated: bool,
    thresholds: &LeakThresholds,
) -> Growth {
    let first = ys.first().copied().unwrap_or(0);
    let last = ys.last().copied().unwrap_or(0);
    let delta = (i128::from(last) - i128::from(first))
        .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    let (mb_per_min, recent_mb_per_min, graded) = if enough {
        let fit = fit(xs, ys);
        let recent = recent_slope(xs, ys) / MIB;
        // The lower of the window's rate and the later half's, so that the
        // growth must go on: a step (growth that stopped) reads as its
        // later half, a leak that started within the window as the
        // window's.
        let window = if estimated {
            // Sampling estimates wobble by about sqrt(live × interval):
            // the rate graded is one the points bear out, not one their
            // noise draws (no bound, hence no grade, from two points).
            fit.lower_bound().map_or(0.0, |b| b / MIB)
        } else {
            fit.slope / MIB
        };
        (fit.slope / MIB, recent, window.min(recent))
    } else {
        (0.0, 0.0, 0.0)
    };
    Growth {
        mb_per_min,
        bytes_per_sec: mb_per_min * MIB / 60.0,
        first_live_bytes: first,
        last_live_bytes: last,
        delta_bytes: delta,
        recent_mb_per_min,
        graded_mb_per_min: graded,
        severity: if enough {
            thresholds.severity(graded)
        } else {
            Severity::None
        },
    }
}

/// [`slope`] over the points at or after the middle of the xs' span; over
/// all of them when fewer than two are there.
fn recent_slope(xs: &[f64], ys: &[u64]) -> f64 {
    let (Some(&a), Some(&b)) = (xs.first(), xs.last()) else {
        return 0.0;
    };
    let mid = a + (b - a) / 2.0;
    let from = xs.iter().position(|&x| x >= mid).unwrap_or(0);
    match (xs.get(from..), ys.get(from..)) {
        (Some(rx), Some(ry)) if rx.len() >= 2 => slope(rx, ry),
        _ => slope(xs, ys),
    }
}

/// A least-squares line's slope (units of y per unit of x) and what the
/// scatter of the points around it says about it.
#[derive(Clone, Copy, Debug)]
struct Fit {
    /// 0 when the xs do not vary.
    slope: f64,
    /// The slope's standard error; `None` with fewer than three points or
    /// xs that do not vary.
    std_error: Option<f64>,
    /// Points fitted less two: the degrees of freedom of `std_error`.
    freedom: usize,
}

impl Fit {
    /// The lower end of the slope's one-sided 99% confidence interval
    /// (Student's t, taking the points' errors around the line as
    /// independent).
    fn lower_bound(&self) -> Option<f64> {
        Some(self.slope - t99(self.freedom) * self.std_error?)
    }
}

/// Student's t for a one-sided 99% interval with `freedom` degrees of
/// freedom (at least 1), to three decimals: the value for the largest
/// tabulated freedom not above it (for freedoms between rows, a larger
/// value than the exact one).
fn t99(freedom: usize) -> f64 {
    const TABLE: [(usize, f64); 16] = [
        (1, 31.821),
        (2, 6.965),
        (3, 4.541),
        (4, 3.747),
        (5, 3.365),
        (6, 3.143),
        (7, 2.998),
        (8, 2.896),
        (9, 2.821),
        (10, 2.764),
        (12, 2.681),
        (15, 2.602),
        (20, 2.528),
        (30, 2.457),
        (60, 2.390),
        (120, 2.358),
    ];
    TABLE
        .iter()
        .rev()
        .find(|&&(f, _)| f <= freedom)
        .map_or(f64::INFINITY, |&(_, t)| t)
}

/// Least-squares slope of `ys` against `xs` (units of y per unit of x); 0
/// when the xs do not vary.
fn slope(xs: &[f64], ys: &[u64]) -> f64 {
    fit(xs, ys).slope
}

/// The least-squares line of `ys` against `xs`.
fn fit(xs: &[f64], ys: &[u64]) -> Fit {
    let n = xs.len().min(ys.len());
    let none = Fit {
        slope: 0.0,
        std_error: None,
        freedom: 0,
    };
    if n < 2 {
        return none;
    }
    let nf = n as f64;
    let mx = xs.iter().take(n).sum::<f64>() / nf;
    // Centre y on its first value to keep precision with large byte counts.
    let y0 = ys.first().copied().unwrap_or(0) as f64;
    let my = ys.iter().take(n).map(|&y| y as f64 - y0).sum::<f64>() / nf;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (&x, &y) in xs.iter().zip(ys) {
        let dx = x - mx;
        sxy += dx * (y as f64 - y0 - my);
        sxx += dx * dx;
    }
    if sxx == 0.0 {
        return none;
    }
    let slope = sxy / sxx;
    let freedom = n - 2;
    let std_error = (freedom > 0).then(|| {
        let rss: f64 = xs
            .iter()
            .zip(ys)
            .map(|(&x, &y)| {
                let r = y as f64 - y0 - my - slope * (x - mx);
                r * r
            })
            .sum();
        (rss / freedom as f64 / sxx).sqrt()
    });
    Fit {
        slope,
        std_error,
        freedom,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    /// A snapshot at `uptime_ms` with `total` live bytes and the given
    /// callsites `(id, live_bytes)`, built from JSON as users would.
    fn snap(id: u64, uptime_ms: u64, total: u64, sites: &[(&str, u64)]) -> Snapshot {
        let callsites: Vec<serde_json::Value> = sites
            .iter()
            .map(|(cid, live)| {
                serde_json::json!({
                    "id": cid,
                    "frames": [{"function": format!("app::{cid}"), "file": "src/app.rs", "line": 1}],
                    "allocations": 1, "allocated_bytes": live, "frees": 0, "freed_bytes": 0,
                    "live_blocks": 1, "live_bytes": live, "estimated": false
                })
            })
            .collect();
        // Start from a real snapshot's JSON so that every field the format
        // has is present, then set the figures under test.
        let mut json = serde_json::to_value(crate::snapshot::snapshot()).unwrap();
        json["id"] = id.into();
        json["run_id"] = "test".into();
        json["taken_at_ms"] = (1_700_000_000_000u64 + uptime_ms).into();
        json["uptime_ms"] = uptime_ms.into();
        json["totals"]["live_bytes"] = total.into();
        json["callsites"] = callsites.into();
        serde_json::from_value(json).expect("synthetic snapshot must parse")
    }

    fn report(snaps: &[Snapshot], window_s: u64) -> LeakReport {
        report_with_budget(
            snaps,
            Duration::from_secs(window_s),
            &LeakThresholds::DEFAULT,
            crate::budget::budget_status(),
        )
    }

    #[test]
    fn no_snapshots_and_one_snapshot_are_not_enough() {
        let r = report(&[], 300);
        assert_eq!(r.points, 0);
        assert!(!r.enough_data);
        assert_eq!(r.process.mb_per_min, 0.0);

        let r = report(&[snap(1, 1000, 100 * MB, &[("a", 100 * MB)])], 300);
        assert_eq!(r.points, 1);
        assert!(!r.enough_data);
        assert_eq!(r.process.severity, Severity::None);
        assert!(r.callsites.is_empty());
    }

    #[test]
    fn points_spanning_less_than_a_tenth_of_the_window_are_not_enough() {
        let start = [snap(1, 1000, 0, &[]), snap(2, 1020, 50 * MB, &[])];
        assert!(!report(&start, 300).enough_data, "20 ms of a 5 min window");
        assert_eq!(report(&start, 300).process.severity, Severity::None);
        let later = [snap(1, 1000, 0, &[]), snap(2, 31_000, 50 * MB, &[])];
        assert!(report(&later, 300).enough_data, "30 s of a 5 min window");
    }

    #[test]
    fn same_instant_is_not_enough() {
        let r = report(&[snap(1, 1000, 0, &[]), snap(2, 1000, 50 * MB, &[])], 300);
        assert_eq!(r.points, 2);
        assert!(!r.enough_data);
        assert_eq!(r.process.mb_per_min, 0.0);
    }

    #[test]
    fn linear_growth_gives_exact_slope_and_severity() {
        // 10 MiB per minute, sampled every 10 s for 2 minutes.
        let snaps: Vec<Snapshot> = (0..13)
            .map(|i| {
                let t = i * 10_000;
                let live = 10 * MB * t / 60_000;
                snap(
                    i + 1,
                    t,
                    1000 + live,
                    &[("leaky", live), ("steady", 5 * MB)],
                )
            })
            .collect();
        let r = report(&snaps, 300);
        assert!(r.enough_data);
        assert_eq!(r.points, 13);
        assert_eq!(r.span_ms, 120_000);
        assert!(
            (r.process.mb_per_min - 10.0).abs() < 1e-6,
            "{}",
            r.process.mb_per_min
        );
        assert_eq!(r.process.severity, Severity::Medium);
        assert_eq!(r.process.delta_bytes, 20 * MB as i64);
        // Only the growing callsite is listed.
        assert_eq!(r.callsites.len(), 1);
        assert_eq!(r.callsites[0].id, "leaky");
        assert_eq!(r.callsites[0].severity, Severity::Medium);
        assert_eq!(r.callsites[0].frames[0].function, "app::leaky");
        assert!((r.callsites[0].bytes_per_sec - 10.0 * MB as f64 / 60.0).abs() < 1e-2);
    }

    #[test]
    fn absent_from_a_truncated_snapshot_is_unknown_not_zero() {
        // "steady" holds 20 MiB throughout; it makes the kept set of the
        // truncated snapshots only once "batch" (50 MiB) is freed at 60 s.
        let snaps: Vec<Snapshot> = (0..13)
            .map(|i| {
                let t = i * 10_000;
                let mut s = if t < 60_000 {
                    snap(i + 1, t, 70 * MB, &[("batch", 50 * MB)])
                } else {
                    snap(i + 1, t, 20 * MB, &[("steady", 20 * MB)])
                };
                s.callsites_omitted = 5;
                s
            })
            .collect();
        let r = report(&snaps, 300);
        assert!(r.enough_data);
        assert!(
            r.callsites.iter().all(|c| c.id != "steady"),
            "a steady callsite read as growing from 0: {:?}",
            r.callsites
                .iter()
                .map(|c| (&c.id, c.mb_per_min))
                .collect::<Vec<_>>()
        );

        // The same snapshots complete: "steady" was truly absent (0) in
        // the first ones, so it grew.
        let complete: Vec<Snapshot> = snaps
            .into_iter()
            .map(|mut s| {
                s.callsites_omitted = 0;
                s
            })
            .collect();
        let r = report(&complete, 300);
        assert_eq!(r.callsites.first().map(|c| c.id.as_str()), Some("steady"));

        // A callsite known at one point only has no slope.
        let mut one = vec![
            snap(1, 0, 0, &[]),
            snap(2, 10_000, 0, &[]),
            snap(3, 20_000, 9 * MB, &[("late", 9 * MB)]),
        ];
        for s in &mut one {
            s.callsites_omitted = 1;
        }
        assert!(report(&one, 300).callsites.is_empty());

        // A callsite that rose and was then freed, so that the truncated
        // snapshots left it out again: its rise is not a leak now.
        let mut ramp: Vec<Snapshot> = (0..6)
            .map(|i| {
                let t = i * 10_000;
                snap(i + 1, t, 30 * MB + i * 15 * MB, &[("batch", i * 15 * MB)])
            })
            .collect();
        ramp.extend((6..13).map(|i| snap(i + 1, i * 10_000, 30 * MB, &[("steady", 20 * MB)])));
        for s in &mut ramp {
            s.callsites_omitted = 3;
        }
        let r = report(&ramp, 300);
        assert!(
            r.callsites.iter().all(|c| c.id != "batch"),
            "freed, yet graded from its rise: {:?}",
            r.callsites
                .iter()
                .map(|c| (&c.id, c.mb_per_min, c.live_bytes))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn severities_follow_thresholds() {
        let t = LeakThresholds::DEFAULT;
        assert_eq!(t.severity(0.0), Severity::None);
        assert_eq!(t.severity(2.99), Severity::None);
        assert_eq!(t.severity(3.0), Severity::Low);
        assert_eq!(t.severity(6.0), Severity::Medium);
        assert_eq!(t.severity(11.9), Severity::Medium);
        assert_eq!(t.severity(12.0), Severity::High);
        assert_eq!(t.severity(15.0), Severity::Critical);
        assert_eq!(t.severity(-40.0), Severity::None);
        assert_eq!(t.severity(f64::NAN), Severity::None);
        let custom = LeakThresholds::new(0.5, 1.0, 2.0, 4.0);
        assert_eq!(custom.severity(3.0), Severity::High);
    }

    #[test]
    fn window_keeps_only_recent_points() {
        // Steep growth long ago, flat in the last minute.
        let mut snaps = vec![snap(1, 0, 0, &[]), snap(2, 60_000, 500 * MB, &[])];
        for i in 0..7 {
            snaps.push(snap(3 + i, 200_000 + i * 10_000, 500 * MB, &[]));
        }
        let r = report(&snaps, 60);
        assert_eq!(r.points, 7);
        assert_eq!(r.process.mb_per_min, 0.0);
        assert_eq!(r.process.severity, Severity::None);
        let all = report(&snaps, 2000);
        assert_eq!(all.points, 9);
        assert!(all.process.mb_per_min > 0.0);
    }

    #[test]
    fn order_of_input_does_not_matter_and_absent_is_zero() {
        let a = snap(1, 0, 0, &[]);
        let b = snap(2, 60_000, 20 * MB, &[("new", 20 * MB)]);
        let c = snap(3, 120_000, 40 * MB, &[("new", 40 * MB), ("shrinking", 0)]);
        let fwd = report(&[a.clone(), b.clone(), c.clone()], 300);
        let rev = report(&[c, a, b], 300);
        assert_eq!(fwd, rev);
        assert!((fwd.process.mb_per_min - 20.0).abs() < 1e-9);
        assert_eq!(fwd.process.severity, Severity::Critical);
        assert_eq!(fwd.callsites.len(), 1, "zero growth is not listed");
        assert_eq!(fwd.callsites[0].id, "new");
        assert_eq!(fwd.callsites[0].live_bytes, 40 * MB);
    }

    #[test]
    fn a_cache_filled_at_start_up_is_not_graded_once_filled() {
        // The history's first snapshot is taken as the server starts
        // (18 KB live); a 20 MiB cache is full 4 s later and then flat.
        let at = |i: u64, t: u64| {
            let live = if t == 0 { 18_000 } else { 20 * MB };
            snap(i + 1, t, live, &[("cache", live)])
        };
        for last in [3u64, 6, 12] {
            let snaps: Vec<Snapshot> = (0..=last).map(|i| at(i, i * 10_000)).collect();
            let r = report(&snaps, 300);
            assert!(r.enough_data, "{last}");
            // The line fitted across the step still reads a rate ...
            assert!(r.process.mb_per_min >= 3.0, "{last}: {r:?}");
            // ... but the later half does not grow: not a leak.
            assert_eq!(r.process.recent_mb_per_min, 0.0, "{last}");
            assert_eq!(r.process.severity, Severity::None, "{last}: {r:?}");
            assert!(
                r.callsites.iter().all(|c| c.severity == Severity::None),
                "{last}: {:?}",
                r.callsites
            );
        }
    }

    #[test]
    fn growth_that_goes_on_is_graded_and_a_ramp_that_stopped_is_not() {
        // 12 MiB per minute for 2 minutes, then flat for 3.
        let ramp = |t: u64| 12 * MB * t.min(120_000) / 60_000;
        let snaps: Vec<Snapshot> = (0..=30u64)
            .map(|i| {
                let t = i * 10_000;
                snap(i + 1, t, ramp(t), &[("ramp", ramp(t))])
            })
            .collect();
        // While it grows (the first 2 minutes), at its full rate.
        let r = report(&snaps[..=12], 300);
        assert_eq!(r.process.severity, Severity::High, "{:?}", r.process);
        assert_eq!(r.callsites[0].severity, Severity::High);
        assert!((r.process.recent_mb_per_min - 12.0).abs() < 1e-6);
        // After it stopped, the grade falls with the later half's rate.
        let t = LeakThresholds::DEFAULT;
        let mut last = Severity::Critical;
        for n in 13..snaps.len() {
            let g = report(&snaps[..=n], 300).process;
            let graded = g.mb_per_min.min(g.recent_mb_per_min);
            assert_eq!(g.severity, t.severity(graded), "{n}: {g:?}");
            assert!(g.severity <= last, "{n}: the grade rose again: {g:?}");
            last = g.severity;
        }
        // Three minutes after, the window still reads a rate, but the later
        // half is flat.
        let r = report(&snaps, 300);
        assert!(r.process.mb_per_min >= 3.0, "{:?}", r.process);
        assert_eq!(r.process.recent_mb_per_min, 0.0);
        assert_eq!(r.process.severity, Severity::None);
        assert_eq!(r.callsites[0].severity, Severity::None);
    }

    #[test]
    fn callsites_are_fitted_only_since_the_sampling_mode_changed() {
        // Off for a minute (no callsite recorded), then sampling by bytes
        // from 70 s: the program's 20 MiB cache, flat all along, shows at
        // its callsite once sampling is on.
        let snaps: Vec<Snapshot> = (0..=18u64)
            .map(|i| {
                let t = i * 10_000;
                let mut s = if t < 70_000 {
                    snap(i + 1, t, 20 * MB, &[])
                } else {
                    snap(i + 1, t, 20 * MB, &[("cache", 20 * MB)])
                };
                s.mode = if t < 70_000 { "off" } else { "bytes" }.to_string();
                s.sample_interval_bytes = (t >= 70_000).then_some(512 * 1024);
                s.sampling_changes = if t < 70_000 { 1 } else { 2 };
                s
            })
            .collect();
        let r = report(&snaps, 300);
        assert!(r.sampling_changed);
        assert_eq!(r.process.severity, Severity::None);
        // Read from 0 while off, the cache would have grown 20 MiB.
        assert!(r.callsites.is_empty(), "{:?}", r.callsites);
        // Once the window holds no snapshot from before the switch, the
        // report says so.
        let r = report(&snaps[7..], 300);
        assert!(!r.sampling_changed);
        // A switch and back between two snapshots of one process counts
        // too, though both are in the same mode.
        let mut same_mode = snaps[7..].to_vec();
        for s in &mut same_mode[..3] {
            s.sampling_changes = 0;
        }
        assert!(report(&same_mode, 300).sampling_changed);
    }

    /// `s` with every callsite's figures marked as sampling estimates.
    fn sampled(mut s: Snapshot) -> Snapshot {
        for c in &mut s.callsites {
            c.estimated = true;
        }
        s
    }

    #[test]
    fn sampled_estimates_are_graded_at_the_rate_their_points_bear_out() {
        // A callsite whose estimates wobble as a flat 20 MiB cache's do
        // (about 3 MiB at 512 KiB), 10 s apart: the line through five of
        // them rises 9 MiB/min.
        let wobble = [17, 21, 18, 22, 24];
        let snaps: Vec<Snapshot> = wobble
            .iter()
            .zip(0u64..)
            .map(|(&mb, i)| snap(i + 1, i * 10_000, 30 * MB, &[("cache", mb * MB)]))
            .collect();
        // Exact figures (`Sampling::All`) are the program's memory: graded
        // at the fitted rate.
        let exact = report(&snaps, 300);
        let c = &exact.callsites[0];
        assert!((c.mb_per_min - 9.0).abs() < 1e-9, "{c:?}");
        assert!((c.graded_mb_per_min - 9.0).abs() < 1e-9, "{c:?}");
        assert_eq!(c.severity, Severity::Medium);
        // The same figures sampled: the same slope, but the points'
        // scatter does not bear it out.
        let snaps: Vec<Snapshot> = snaps.into_iter().map(sampled).collect();
        let r = report(&snaps, 300);
        let c = &r.callsites[0];
        assert!((c.mb_per_min - 9.0).abs() < 1e-9, "{c:?}");
        assert!(c.graded_mb_per_min < 3.0, "{c:?}");
        assert_eq!(c.severity, Severity::None, "{c:?}");

        // A sampled leak: 10 MiB/min, each estimate off by a quarter MiB.
        let snaps: Vec<Snapshot> = (0..13u64)
            .map(|i| {
                let live = 10 * MB * i / 6 + if i % 2 == 0 { MB / 4 } else { 0 };
                sampled(snap(i + 1, i * 10_000, live, &[("leaky", live)]))
            })
            .collect();
        let r = report(&snaps, 300);
        let c = &r.callsites[0];
        assert!(
            c.graded_mb_per_min > 9.5 && c.graded_mb_per_min < c.mb_per_min,
            "{c:?}"
        );
        assert_eq!(c.severity, Severity::Medium);
        // The process's figures are exact: graded at the rate fitted.
        assert_eq!(
            r.process.graded_mb_per_min,
            r.process.mb_per_min.min(r.process.recent_mb_per_min)
        );

        // Two sampled points have no interval: listed, not graded.
        let two = [
            sampled(snap(1, 0, 0, &[("x", MB)])),
            sampled(snap(2, 60_000, 40 * MB, &[("x", 40 * MB)])),
        ];
        let r = report(&two, 300);
        assert_eq!(r.process.severity, Severity::Critical);
        let c = &r.callsites[0];
        assert!(c.mb_per_min > 38.0, "{c:?}");
        assert_eq!((c.graded_mb_per_min, c.severity), (0.0, Severity::None));
    }

    #[test]
    fn a_leak_that_starts_within_the_window_is_graded_later_when_sampled() {
        // 10 MiB/min from `start` on, no noise at all; 31 points 10 s apart.
        let series = |start: u64, est: bool| -> Vec<Snapshot> {
            (0..=30u64)
                .map(|i| {
                    let t = i * 10_000;
                    let live = 10 * MB * t.saturating_sub(start) / 60_000;
                    let s = snap(i + 1, t, live, &[("leak", live)]);
                    if est {
                        sampled(s)
                    } else {
                        s
                    }
                })
                .collect()
        };
        for (age_s, exact_min, exact_max) in [(120, 3.0, 4.0), (180, 6.0, 7.0), (240, 8.5, 9.5)] {
            let start = 300_000 - age_s * 1000;
            let exact = report(&series(start, false), 300).callsites[0].graded_mb_per_min;
            let sampled = report(&series(start, true), 300).callsites[0].graded_mb_per_min;
            // The flat points before the leak scatter around the line.
            assert!(exact > exact_min && exact < exact_max, "{age_s} s: {exact}");
            assert!(
                sampled < exact - 0.3,
                "{age_s} s: {sampled} against {exact}"
            );
        }
        // From start to end in the window: on its line, graded at its rate.
        let r = report(&series(0, true), 300);
        assert!((r.callsites[0].graded_mb_per_min - 10.0).abs() < 1e-6);
    }

    #[test]
    fn fit_gives_the_slope_and_its_standard_error() {
        let f = fit(&[0.0, 1.0, 2.0], &[0, 1, 3]);
        assert!((f.slope - 1.5).abs() < 1e-12);
        // Residuals 1/6, -1/3, 1/6: (1/6 / 1 / 2).sqrt().
        let se = f.std_error.unwrap();
        assert!((se - (1.0f64 / 12.0).sqrt()).abs() < 1e-12, "{se}");
        assert_eq!(f.freedom, 1);
        assert!((f.lower_bound().unwrap() - (1.5 - 31.821 * se)).abs() < 1e-12);
        // On the line exactly: no scatter.
        let f = fit(&[0.0, 1.0, 2.0, 3.0], &[5, 7, 9, 11]);
        assert_eq!((f.slope, f.std_error), (2.0, Some(0.0)));
        // Two points: a slope, no error.
        let f = fit(&[0.0, 1.0], &[0, 4]);
        assert_eq!((f.slope, f.std_error, f.lower_bound()), (4.0, None, None));
        assert_eq!(fit(&[1.0, 1.0, 1.0], &[0, 4, 9]).std_error, None);
        assert_eq!(t99(0), f64::INFINITY);
        assert_eq!(t99(1), 31.821);
        assert_eq!(t99(11), 2.764);
        assert_eq!(t99(10_000), 2.358);
    }

    #[test]
    fn shrinking_and_noisy_flat_are_not_leaks() {
        let snaps: Vec<Snapshot> = (0..10u64)
            .map(|i| {
                let noisy = 100 * MB + if i % 2 == 0 { MB } else { 0 };
                snap(i + 1, i * 10_000, noisy, &[("down", 100 * MB - i * MB)])
            })
            .collect();
        let r = report(&snaps, 300);
        assert!(r.enough_data);
        assert_eq!(r.process.severity, Severity::None);
        assert!(r.callsites.is_empty());
    }

    #[test]
    fn report_serializes_with_contract_fields() {
        let r = report(
            &[
                snap(1, 0, 0, &[]),
                snap(2, 30_000, 2 * MB, &[("x", 2 * MB)]),
            ],
            300,
        );
        let v = serde_json::to_value(&r).unwrap();
        for key in [
            "window_ms",
            "points",
            "enough_data",
            "process",
            "callsites",
            "budget",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["process"]["severity"], "low");
        assert_eq!(v["window_ms"], 300_000);
        // Only the endpoint knows its history's capacity.
        assert!(v.get("history_span_ms").is_none());
        assert!(v["budget"].get("level").is_some());
    }
}
