//! Whole-process comparison worker: `heapwatch::Tracker<Jemalloc>`,
//! default byte sampling (`Sampling::DEFAULT`, 512 KiB).

#[global_allocator]
static GLOBAL: heapwatch::Tracker<tikv_jemallocator::Jemalloc> =
    heapwatch::Tracker::new(tikv_jemallocator::Jemalloc)
        .with_sampling(heapwatch::Sampling::DEFAULT);

include!("workloads.rs");

include!("hw_report.rs");

fn main() {
    run_from_args(print_hw_stats);
}
