//! Whole-process comparison worker: `cap::Cap<System>` with no limit.

#[global_allocator]
static GLOBAL: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

include!("workloads.rs");

fn main() {
    run_from_args(|| {});
}
