//! `HEAPWATCH_MAX_MEMORY_MB` is read at the first allocation and overrides
//! the builder's budget. It takes `Budget`'s syntax, with a number without
//! a unit in mebibytes and zero meaning no budget; an invalid value is
//! ignored and flagged, also on `/metrics`. The variable must be set before the process
//! starts, so the test runs itself again as a child process.

mod common;

use heapwatch::{Budget, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_budget(Budget::from_mb(1024));

const CHILD: &str = "HEAPWATCH_TEST_CHILD";

#[test]
fn env_var_sets_the_budget() {
    match std::env::var(CHILD).as_deref() {
        Ok("valid") => {
            assert_eq!(heapwatch::stats().budget_bytes, Some(48 << 20));
            assert!(!heapwatch::budget_status().env_var_invalid);
            let mut v: Vec<u8> = Vec::new();
            assert!(v.try_reserve_exact(64 << 20).is_err());
            return;
        }
        Ok("unlimited") => {
            let st = heapwatch::budget_status();
            assert!(!st.env_var_invalid);
            assert!(st.budget.is_unlimited(), "{st:?}");
            return;
        }
        Ok("invalid") => {
            let st = heapwatch::budget_status();
            assert!(st.env_var_invalid);
            assert_eq!(
                st.budget.bytes(),
                Some(1024 << 20),
                "the builder's budget stays"
            );
            // ... and /metrics says the variable was ignored.
            let mut text = String::new();
            heapwatch::render_prometheus(&heapwatch::snapshot(), &st, &mut text);
            assert!(
                text.lines()
                    .any(|l| l == "heapwatch_budget_env_var_invalid 1"),
                "{text}"
            );
            return;
        }
        Ok("empty") => {
            let st = heapwatch::budget_status();
            assert!(!st.env_var_invalid);
            assert_eq!(
                st.budget.bytes(),
                Some(1024 << 20),
                "an empty variable reads as unset: the builder's budget stays"
            );
            return;
        }
        _ => {}
    }
    assert_eq!(heapwatch::stats().budget_bytes, Some(1024 << 20));
    for (value, mode) in [
        ("48", "valid"),
        ("48MB", "valid"),
        ("48 MiB", "valid"),
        ("0.046875GiB", "valid"),
        ("0", "unlimited"),
        ("0MB", "unlimited"),
        ("off", "unlimited"),
        ("48 parsecs", "invalid"),
        ("-48", "invalid"),
        ("", "empty"),
    ] {
        common::pass_in_child(
            "env_var_sets_the_budget",
            CHILD,
            mode,
            "HEAPWATCH_MAX_MEMORY_MB",
            value,
        );
    }
}
