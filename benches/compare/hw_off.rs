//! Whole-process comparison worker: `heapwatch::Tracker<Jemalloc>`,
//! totals and budget only (`Sampling::Off`).

#[global_allocator]
static GLOBAL: heapwatch::Tracker<tikv_jemallocator::Jemalloc> =
    heapwatch::Tracker::new(tikv_jemallocator::Jemalloc).with_sampling(heapwatch::Sampling::Off);

include!("workloads.rs");

include!("hw_report.rs");

fn main() {
    run_from_args(print_hw_stats);
}
