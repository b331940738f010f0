//! Whole-process comparison worker: the floor model over jemalloc
//! (`floor_model.rs`) with the exact counters and the budget's limits.

const PARTS: u32 = OUT_OF_LINE | WORD | COUNTS | BUDGET;

include!("floor_worker.rs");
