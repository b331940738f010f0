//! Whole-process comparison worker: the floor model over jemalloc
//! (`floor_model.rs`) with every part of heapwatch's `Sampling::Off` fast path.

#[path = "floor_model.rs"]
mod floor_model;

#[global_allocator]
static GLOBAL: floor_model::Floor<{ floor_model::ALL }> = floor_model::Floor;

include!("workloads.rs");

fn main() {
    run_from_args(|| {});
}
