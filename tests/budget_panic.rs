//! A thread that panics with the budget spent can still build its panic
//! message and unwind: allocations made while panicking are let through
//! (counted as overages) instead of refused, which would abort the process
//! or deadlock std's out-of-memory hook.

use std::panic::{catch_unwind, AssertUnwindSafe};

use heapwatch::{Budget, Tracker};

const BUDGET: u64 = 8 << 20;

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_budget(Budget::from_bytes(BUDGET));

/// Formats as `.0` spaces: formatted only when the panic builds its
/// message.
struct Padding(usize);

impl std::fmt::Display for Padding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chunk = [b' '; 1024];
        let chunk = std::str::from_utf8(&chunk).map_err(|_| std::fmt::Error)?;
        for _ in 0..self.0 / 1024 {
            f.write_str(chunk)?;
        }
        Ok(())
    }
}

fn a_panic_with_the_budget_spent_unwinds() {
    // Quiet: the message below is a mebibyte long.
    std::panic::set_hook(Box::new(|_| {}));

    // Spend the budget: take 64 KiB blocks until one is refused.
    let mut spent: Vec<Vec<u8>> = Vec::with_capacity(1024);
    loop {
        let mut block = Vec::new();
        if block.try_reserve_exact(64 << 10).is_err() {
            break;
        }
        spent.push(block);
    }
    let mut probe: Vec<u8> = Vec::new();
    let refused_before = probe.try_reserve_exact(1 << 20).is_err();
    let before = heapwatch::stats();

    // The message is formatted while the thread panics: 1 MiB of spaces.
    let caught = catch_unwind(AssertUnwindSafe(|| -> () {
        panic!("{}", Padding(1 << 20));
    }));
    let after = heapwatch::stats();
    let message_len = match &caught {
        Err(p) => p.downcast_ref::<String>().map(String::len),
        Ok(()) => None,
    };
    drop((caught, spent));
    let _ = std::panic::take_hook();

    assert!(refused_before, "the budget was not spent");
    assert_eq!(message_len, Some(1 << 20));
    assert!(
        after.budget_overages > before.budget_overages,
        "{before:?} {after:?}"
    );
    // Outside the panic, the budget refuses again.
    let mut again: Vec<u8> = Vec::new();
    let spent_again: Vec<u8> = vec![0; (BUDGET as usize) - (1 << 20)];
    assert!(again.try_reserve_exact(2 << 20).is_err());
    drop(spent_again);
}

// `harness = false` (Cargo.toml): the test spends the whole budget at once,
// and libtest's main thread, still setting up when the test thread starts,
// could have its own next allocation refused and abort the process.
fn main() {
    a_panic_with_the_budget_spent_unwinds();
    println!("budget_panic: ok");
}
