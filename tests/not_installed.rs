//! A test crate whose global allocator is not a `Tracker` (each file in
//! `tests/` is a crate of its own, and forgetting the `#[global_allocator]`
//! item in one is easy): nothing can be measured, and heapwatch's leak
//! helpers must say so rather than pass.

use std::hint::black_box;

#[test]
fn without_the_tracker_scope_is_not_exact_and_growth_checks_panic() {
    assert!(!heapwatch::installed());
    let (v, s) = heapwatch::scope(|| black_box(vec![0u8; 1000]));
    assert!(!s.exact, "{s:?}");
    assert_eq!(s.allocations, 0);
    drop(v);

    let mut kept = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        heapwatch::assert_no_growth(|| kept.push(black_box(vec![0u8; 256])));
    }));
    let message = r.expect_err("a leak check without the tracker must fail");
    let message = message
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| message.downcast_ref::<&str>().copied())
        .unwrap_or("");
    assert!(message.contains("#[global_allocator]"), "{message}");
}
