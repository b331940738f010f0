//! What polling (`budget_status`) and watching (`watch_budget`) the budget
//! report: the level that applies, every crossing, and a callback that may
//! allocate with the budget spent.

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use heapwatch::{Budget, BudgetEvent, BudgetLevel, Thresholds, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_budget(Budget::from_mb(100));

const MIB: usize = 1 << 20;

fn percent_reserved() -> f64 {
    let s = heapwatch::budget_status();
    s.reserved_bytes as f64 * 100.0 / s.budget.bytes().expect("a budget") as f64
}

/// Waits up to 5 s for `done`.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

/// The credit an exiting thread hands back lowers the level.
fn a_thread_exiting_lowers_the_level() {
    let held = vec![1u8; 200 << 10];
    let (go, wait) = mpsc::channel::<()>();
    let (ready, is_ready) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        // Allocating and freeing leaves the thread holding credit.
        drop(vec![1u8; 100 << 10]);
        ready.send(()).unwrap();
        wait.recv().unwrap();
    });
    is_ready.recv().unwrap();
    let reserved = heapwatch::budget_status().reserved_bytes;
    heapwatch::set_budget(Budget::from_bytes(reserved * 100 / 81));
    assert_eq!(heapwatch::budget_status().level, BudgetLevel::Warning);
    go.send(()).unwrap();
    worker.join().unwrap();
    let pct = percent_reserved();
    assert!(
        pct < 79.0,
        "the worker's credit went back: {pct:.1}% reserved"
    );
    assert_eq!(
        heapwatch::budget_status().level,
        BudgetLevel::Normal,
        "{pct:.1}% reserved"
    );
    drop(held);
    heapwatch::set_budget(Budget::from_mb(100));
}

/// Thresholds written as a struct literal are clamped and ordered, and
/// what is reported is what applies.
fn threshold_literals_apply_as_reported() {
    heapwatch::set_budget_thresholds(Thresholds {
        warning_percent: 90,
        critical_percent: 70,
    });
    assert_eq!(
        heapwatch::budget_status().thresholds,
        Thresholds::new(70, 90)
    );
    let held = vec![1u8; 75 * MIB];
    assert_eq!(heapwatch::budget_status().level, BudgetLevel::Warning);
    drop(held);
    heapwatch::set_budget_thresholds(Thresholds {
        warning_percent: 0,
        critical_percent: 250,
    });
    assert_eq!(
        heapwatch::budget_status().thresholds,
        Thresholds::new(1, 100)
    );
    heapwatch::set_budget_thresholds(Thresholds::DEFAULT);
}

/// Leaving the warning level and coming back between two polls is reported.
fn a_crossing_between_polls_is_reported() {
    let held = vec![1u8; 85 * MIB];
    assert_eq!(heapwatch::budget_status().level, BudgetLevel::Warning);
    let events: Arc<Mutex<Vec<BudgetEvent>>> = Arc::default();
    let seen = Arc::clone(&events);
    let watch = heapwatch::watch_budget(Duration::from_millis(300), move |e| {
        seen.lock().unwrap().push(e);
    });
    drop(held);
    let held = vec![1u8; 85 * MIB];
    let reached_warning = |events: &[BudgetEvent]| {
        events
            .iter()
            .position(|e| e.reached == BudgetLevel::Warning)
    };
    assert!(
        wait_for(|| reached_warning(&events.lock().unwrap()).is_some()),
        "no event for a warning crossed again between two polls: {:?}",
        events.lock().unwrap()
    );
    drop(watch);
    let events = events.lock().unwrap().clone();
    let pairs: Vec<_> = events.iter().map(|e| (e.previous, e.reached)).collect();
    // Polled before the drop and after the new block: one event, the
    // crossing seen between polls. A poll landing between the drop and the
    // new block (a stall of the main thread) sees both moves as they are.
    let (w, n) = (BudgetLevel::Warning, BudgetLevel::Normal);
    assert!(
        pairs.starts_with(&[(w, w)]) || pairs.starts_with(&[(w, n), (n, w)]),
        "{pairs:?}"
    );
    drop(held);
}

/// A callback reacting to a spent budget may allocate: it is let through,
/// not refused into an abort.
fn a_callback_may_allocate_with_the_budget_spent() {
    let ran: Arc<Mutex<Option<usize>>> = Arc::default();
    let ran2 = Arc::clone(&ran);
    let watch = heapwatch::watch_budget(Duration::from_millis(20), move |e| {
        if e.reached >= BudgetLevel::Critical {
            // More than the watcher thread's credit: the pool is asked.
            let scratch: Vec<u64> = Vec::with_capacity(64 << 10);
            let report = format!("{:?} at {} bytes", e.reached, e.status.reserved_bytes);
            *ran2.lock().unwrap() = Some(scratch.capacity() + report.len());
        }
    });
    let overages = heapwatch::budget_status().overages;
    // Filled to within 4 KiB of the budget.
    let mut filled: Vec<Vec<u8>> = Vec::with_capacity(4096);
    for size in [MIB, 64 << 10, 4 << 10] {
        loop {
            let mut block = Vec::new();
            if block.try_reserve_exact(size).is_err() {
                break;
            }
            filled.push(block);
        }
    }
    assert!(
        wait_for(|| ran.lock().unwrap().is_some()),
        "the callback never ran at the critical level"
    );
    drop(watch);
    assert!(heapwatch::budget_status().overages > overages);
    drop(filled);
}

/// A callback that panics is called again for the next event.
fn a_panicking_callback_is_called_again() {
    // The intended panic is not printed; any other is.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("(as intended)") {
            default_hook(info);
        }
    }));
    let calls: Arc<Mutex<Vec<BudgetLevel>>> = Arc::default();
    let seen = Arc::clone(&calls);
    let watch = heapwatch::watch_budget(Duration::from_millis(20), move |e| {
        let first = {
            let mut calls = seen.lock().unwrap();
            calls.push(e.status.level);
            calls.len() == 1
        };
        assert!(!first, "the first event panics the callback (as intended)");
    });
    let held = vec![1u8; MIB];
    heapwatch::set_budget(Budget::from_bytes(1));
    assert!(wait_for(|| calls.lock().unwrap().len() == 1));
    heapwatch::set_budget(Budget::from_mb(100));
    assert!(
        wait_for(|| calls.lock().unwrap().len() == 2),
        "no call after the callback panicked"
    );
    drop(watch);
    assert_eq!(
        *calls.lock().unwrap(),
        [BudgetLevel::Exceeded, BudgetLevel::Normal]
    );
    drop(held);
}

/// A reservation hovering at a threshold is one crossing: the level is left
/// only 2% of the budget below the threshold.
fn a_level_hovering_at_a_threshold_counts_one_crossing() {
    let budget = 100 * MIB as u64;
    assert_eq!(heapwatch::budget_status().budget.bytes(), Some(budget));
    let before = heapwatch::budget_status();
    assert_eq!(before.level, BudgetLevel::Normal, "{before:?}");
    // Held at 79.5% of the budget, give or take the thread's credit (at most
    // 128 KiB, 0.125%).
    let held = vec![1u8; (budget * 795 / 1000 - before.reserved_bytes) as usize];
    assert_eq!(heapwatch::budget_status().level, BudgetLevel::Normal);
    for round in 0..10 {
        let wobble = vec![1u8; MIB];
        assert_eq!(
            heapwatch::budget_status().level,
            BudgetLevel::Warning,
            "round {round}: {:.2}% reserved",
            percent_reserved()
        );
        drop(wobble);
        assert_eq!(
            heapwatch::budget_status().level,
            BudgetLevel::Warning,
            "round {round}: 1.5% under the threshold is within the margin ({:.2}% reserved)",
            percent_reserved()
        );
    }
    let after = heapwatch::budget_status();
    assert_eq!(
        after.warning_crossings - before.warning_crossings,
        1,
        "ten wobbles across 80% are one crossing"
    );
    drop(held);
    assert_eq!(
        heapwatch::budget_status().level,
        BudgetLevel::Normal,
        "{:.2}% reserved",
        percent_reserved()
    );
}

// `harness = false` (Cargo.toml): the assertions read process-wide
// figures, which libtest's own threads would move.
fn main() {
    a_thread_exiting_lowers_the_level();
    threshold_literals_apply_as_reported();
    a_crossing_between_polls_is_reported();
    a_callback_may_allocate_with_the_budget_spent();
    a_panicking_callback_is_called_again();
    a_level_hovering_at_a_threshold_counts_one_crossing();
    println!("budget_watch: ok");
}
