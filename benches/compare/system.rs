//! Whole-process comparison worker: `std::alloc::System`.

#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;

include!("workloads.rs");

fn main() {
    run_from_args(|| {});
}
