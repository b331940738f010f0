//! Whole-process comparison worker: raw `tikv_jemallocator::Jemalloc`.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

include!("workloads.rs");
include!("prof_check.rs");

fn main() {
    run_from_args(print_prof_state);
}
