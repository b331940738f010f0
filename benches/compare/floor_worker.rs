// The body of every `floor_*` comparison worker, included after the
// worker's `const PARTS: u32`: the floor model (`floor_model.rs`) with
// those parts as the global allocator, and the shared workloads.

#[path = "floor_model.rs"]
mod floor_model;

use floor_model::*;

#[global_allocator]
static GLOBAL: Floor<PARTS> = Floor;

include!("workloads.rs");

fn main() {
    run_from_args(|| {});
}
