//! Whole-process comparison worker: `heapwatch::Tracker<Jemalloc>`,
//! exact (`Sampling::All`) with the cached DWARF CFI unwinder (what
//! `Unwinder::Auto` picks in a build without frame pointers on x86-64
//! Linux).

#[global_allocator]
static GLOBAL: heapwatch::Tracker<tikv_jemallocator::Jemalloc> =
    heapwatch::Tracker::new(tikv_jemallocator::Jemalloc)
        .with_sampling(heapwatch::Sampling::All)
        .with_unwinder(heapwatch::Unwinder::Cfi);

include!("workloads.rs");

include!("hw_report.rs");

fn main() {
    run_from_args(print_hw_stats);
}
