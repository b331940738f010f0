//! Whole-process comparison worker: the floor model over jemalloc
//! (`floor_model.rs`) with `dealloc` out of line, the thread's word and the
//! four exact counters: the least that keeps exact totals.

const PARTS: u32 = OUT_OF_LINE | WORD | COUNTS;

include!("floor_worker.rs");
