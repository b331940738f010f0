//! Whole-process comparison worker: the floor model over jemalloc
//! (`floor_model.rs`) with nothing but `dealloc` out of line: what a wrapper costs as such.

#[path = "floor_model.rs"]
mod floor_model;

#[global_allocator]
static GLOBAL: floor_model::Floor<{ floor_model::OUT_OF_LINE }> = floor_model::Floor;

include!("workloads.rs");

fn main() {
    run_from_args(|| {});
}
