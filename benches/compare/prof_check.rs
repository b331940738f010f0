// Included by the jemalloc workers: with `HW_CMP_CHECK_PROF=1`, prints
// whether jemalloc's profiler is compiled in and active, so the driver can
// refuse a `jemalloc_prof` run whose profiler is not really on.

fn print_prof_state() {
    if std::env::var_os("HW_CMP_CHECK_PROF").as_deref() != Some(std::ffi::OsStr::new("1")) {
        return;
    }
    // SAFETY: "opt.prof" and "prof.active" are bool mallctls (they exist
    // when jemalloc is built with --enable-prof); the names are
    // NUL-terminated as `raw::read` requires.
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
