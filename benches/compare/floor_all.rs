//! Whole-process comparison worker: the floor model over jemalloc
//! (`floor_model.rs`) with every part of `Sampling::Off`'s fast path.

const PARTS: u32 = ALL;

include!("floor_worker.rs");
