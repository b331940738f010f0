//! Budget with policy `Warn`: over-budget allocations succeed and are
//! counted; the level reports `Exceeded`.

use heapwatch::{Budget, BudgetLevel, Policy, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> = Tracker::new(std::alloc::System)
    .with_budget(Budget::from_mb(8))
    .with_policy(Policy::Warn);

fn warn_policy_lets_allocations_through_and_counts_them() {
    let before = heapwatch::stats();
    let big = vec![1u8; 16 << 20];
    let after = heapwatch::stats();
    assert_eq!(big.len(), 16 << 20);
    assert_eq!(after.budget_denials, before.budget_denials);
    assert!(after.budget_overages > before.budget_overages, "{after:?}");
    let st = heapwatch::budget_status();
    assert_eq!(st.policy, Policy::Warn);
    assert_eq!(st.level, BudgetLevel::Exceeded);
    assert!(st.exceeded_crossings >= 1);
    assert_eq!(after.live_bytes - before.live_bytes, 16 << 20);
    drop(big);
    assert!(heapwatch::budget_status().level < BudgetLevel::Exceeded);
}

// `harness = false` (Cargo.toml): this file asserts exact process-wide
// deltas, and libtest's own threads allocate while a test starts.
fn main() {
    warn_policy_lets_allocations_through_and_counts_them();
    println!("budget_warn: ok");
}
