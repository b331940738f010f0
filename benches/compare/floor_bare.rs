//! Whole-process comparison worker: the floor model over jemalloc
//! (`floor_model.rs`) with nothing but `dealloc` out of line: what a wrapper
//! costs as such.

const PARTS: u32 = OUT_OF_LINE;

include!("floor_worker.rs");
