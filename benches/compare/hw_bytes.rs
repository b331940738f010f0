//! Whole-process comparison worker: `heapwatch::Tracker<Jemalloc>`,
//! default byte sampling (`Sampling::DEFAULT`, 512 KiB).

#[global_allocator]
static GLOBAL: heapwatch::Tracker<tikv_jemallocator::Jemalloc> =
    heapwatch::Tracker::new(tikv_jemallocator::Jemalloc)
        .with_sampling(heapwatch::Sampling::DEFAULT);

include!("workloads.rs");

fn main() {
    run_from_args(|| {
        let s = heapwatch::stats();
        println!("overhead_bytes={}", s.overhead_bytes);
        println!("allocations={}", s.allocations);
        println!("allocated_bytes={}", s.allocated_bytes);
    });
}
