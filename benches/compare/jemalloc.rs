//! Whole-process comparison worker: raw `tikv_jemallocator::Jemalloc`.
//! Also the `jemalloc_prof` worker (the driver sets `_RJEM_MALLOC_CONF`).

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

include!("workloads.rs");

fn main() {
    run_from_args(|| {
        if std::env::var_os("HW_CMP_CHECK_PROF").is_some_and(|v| v == "1") {
            // SAFETY: "opt.prof" and "prof.active" are bool mallctls (they
            // exist when jemalloc is built with --enable-prof); the names
            // are NUL-terminated as `raw::read` requires.
            let opt = unsafe { tikv_jemalloc_ctl::raw::read::<bool>(b"opt.prof\0") };
            // SAFETY: as above.
            let active = unsafe { tikv_jemalloc_ctl::raw::read::<bool>(b"prof.active\0") };
            println!(
                "opt_prof={}",
                opt.map_or_else(|e| format!("error:{e}"), |b| b.to_string())
            );
            println!(
                "prof_active={}",
                active.map_or_else(|e| format!("error:{e}"), |b| b.to_string())
            );
        }
    });
}
