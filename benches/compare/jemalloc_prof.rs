//! Whole-process comparison worker: `tikv_jemallocator::Jemalloc` with
//! jemalloc's own sampled heap profiler (the driver sets
//! `_RJEM_MALLOC_CONF=prof:true,prof_active:true,lg_prof_sample:19`; the
//! program is the raw jemalloc worker's, built with the profiler compiled in).

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

include!("workloads.rs");
include!("prof_check.rs");

fn main() {
    run_from_args(print_prof_state);
}
