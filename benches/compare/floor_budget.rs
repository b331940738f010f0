//! Whole-process comparison worker: the floor model over jemalloc
//! (`floor_model.rs`) with the exact counters and the budget's limits.

#[path = "floor_model.rs"]
mod floor_model;

#[global_allocator]
static GLOBAL: floor_model::Floor<
    { floor_model::OUT_OF_LINE | floor_model::WORD | floor_model::COUNTS | floor_model::BUDGET },
> = floor_model::Floor;

include!("workloads.rs");

fn main() {
    run_from_args(|| {});
}
