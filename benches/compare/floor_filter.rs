//! Whole-process comparison worker: the floor model over jemalloc
//! (`floor_model.rs`) with every part of `Sampling::Off`'s fast path but the
//! sampling countdown.

const PARTS: u32 = OUT_OF_LINE | WORD | COUNTS | BUDGET | GUARD | FILTER;

include!("floor_worker.rs");
