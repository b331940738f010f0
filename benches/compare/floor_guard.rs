//! Whole-process comparison worker: the floor model over jemalloc
//! (`floor_model.rs`) with the counters, the budget's limits and the reentrancy
//! guard.

const PARTS: u32 = OUT_OF_LINE | WORD | COUNTS | BUDGET | GUARD;

include!("floor_worker.rs");
