//! Whole-process comparison worker: `heapwatch::Tracker<Jemalloc>`,
//! exact (`Sampling::All`) with the frame-pointer unwinder.
//!
//! Meant to be built with `RUSTFLAGS="-C force-frame-pointers=yes"` in a
//! target directory of its own (`scripts/compare.sh` does it), so that the
//! other workers keep the default build. In a build without frame pointers
//! the unwinder falls back to `backtrace`: the worker prints the unwinder
//! actually used (`unwinder=...`) and the driver refuses to label such a run
//! as frame pointers.

#[global_allocator]
static GLOBAL: heapwatch::Tracker<tikv_jemallocator::Jemalloc> =
    heapwatch::Tracker::new(tikv_jemallocator::Jemalloc)
        .with_sampling(heapwatch::Sampling::All)
        .with_unwinder(heapwatch::Unwinder::FramePointers);

include!("workloads.rs");

include!("hw_report.rs");

fn main() {
    run_from_args(|| {
        print_hw_stats();
        // After the workload: the frame-pointer probe ran on the first
        // captured stack, so this is the unwinder that captured them all.
        println!("unwinder={}", heapwatch::active_unwinder());
    });
}
