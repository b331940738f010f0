//! Whole-process comparison worker: `dhat::Alloc` with a heap profiler
//! running (testing mode, so nothing is written at exit).

#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

include!("workloads.rs");

fn main() {
    let profiler = dhat::Profiler::builder().testing().build();
    run_from_args(|| {});
    drop(profiler);
}
