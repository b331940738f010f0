//! Whole-process comparison driver (issue 5).
//!
//! A process has one global allocator, so each configuration is its own
//! small program (`benches/compare/<config>.rs`, built as the `cmp_<config>`
//! benches). This driver finds those executables next to its own, runs every
//! workload under every configuration as a fresh child process, interleaved
//! over several rounds, and prints markdown tables: median milliseconds with
//! the ratio against raw jemalloc, peak RSS (`ru_maxrss` from `wait4`) and
//! heapwatch's own tracker memory.
//!
//! ```sh
//! cargo bench --features bench-jemalloc-prof --benches --no-run
//! cargo bench --features bench-jemalloc-prof --bench compare -- --rounds 5
//! ```
//!
//! The feature builds jemalloc with its profiler compiled in, which the
//! `jemalloc_prof` peer needs; all jemalloc configurations of the run then
//! share that build, so the comparison stays like with like. Without it the
//! `jemalloc_prof` worker is not built and that column is skipped.
//!
//! Options: `--rounds N` (default 5), `--workloads a,b`, `--configs a,b`,
//! `--fp-dir DIR`. The `floor_*` configurations (the floor model of
//! `benches/floor.rs` as whole programs' allocators, one part added at a
//! time: `floor_bare`, `floor_counts`, `floor_budget`, `floor_guard`,
//! `floor_filter`, `floor_all`) run only when `--configs` names them.
//!
//! # The frame-pointer configuration (`hw_all_fp`)
//!
//! `cmp_hw_all_fp` is heapwatch exact with `Unwinder::FramePointers`, which
//! only engages in a build with `-C force-frame-pointers=yes`. That build
//! lives in a target directory of its own, so the other workers (and the
//! baseline) keep the default build; `scripts/compare.sh` makes both builds
//! and runs this driver (arguments are passed through):
//!
//! ```sh
//! scripts/compare.sh --rounds 5
//! ```
//!
//! The driver takes `cmp_hw_all_fp-*` from `--fp-dir DIR`, else from
//! `$HW_CMP_FP_DIR`, else from `<target>/fp/release/deps`, where `<target>`
//! is the target directory the driver itself was built in (so
//! `CARGO_TARGET_DIR` is followed); never from the driver's own directory,
//! whose `cmp_hw_all_fp` has no frame pointers. If it is not there the
//! column is skipped with a note. Each run prints the unwinder actually used
//! (`unwinder=...`, read after the workload); if any run reports another
//! unwinder than `frame_pointers` the row is labelled `frame pointers NOT
//! active` in every table and a warning is printed, since its figures are
//! then those of the backtrace unwinder.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Configurations, in table order: (name, description).
const CONFIGS: &[(&str, &str)] = &[
    ("system", "System"),
    ("jemalloc", "jemalloc"),
    ("jemalloc_prof", "jemalloc prof (lg_prof_sample:19)"),
    ("cap", "cap::Cap<System>"),
    ("dhat", "dhat::Alloc + profiler"),
    ("hw_off", "heapwatch Off (totals+budget)"),
    ("hw_bytes", "heapwatch default (512 KiB sampling)"),
    ("hw_all", "heapwatch exact (backtrace)"),
    ("hw_all_cfi", "heapwatch exact (CFI cache)"),
    ("hw_all_fp", "heapwatch exact (frame pointers)"),
    ("floor_bare", "floor model: a bare wrapper"),
    ("floor_counts", "floor model: exact counters only"),
    ("floor_budget", "floor model: + the budget's limits"),
    ("floor_guard", "floor model: + the reentrancy guard"),
    ("floor_filter", "floor model: + the free filter"),
    ("floor_all", "floor model: every part of `Off`"),
];

/// Configurations run only when `--configs` names them: the floor model
/// (`benches/compare/floor_model.rs`), which measures what heapwatch's
/// parts cost, not a peer.
const OPT_IN_PREFIX: &str = "floor_";

/// The configuration built with frame pointers, in a target directory of
/// its own.
const FP_CONFIG: &str = "hw_all_fp";

/// Environment variable naming the frame-pointer build's `deps` directory
/// (`--fp-dir` wins over it).
const FP_DIR_ENV: &str = "HW_CMP_FP_DIR";

const FP_BUILD_HINT: &str = "scripts/compare.sh (or: RUSTFLAGS=\"-C force-frame-pointers=yes\" \
     CARGO_TARGET_DIR=<target>/fp cargo bench --features bench-jemalloc-prof --bench cmp_hw_all_fp --no-run)";

const WORKLOADS: &[&str] = &[
    "small", "threads", "mixed", "structs", "strings", "hashmap", "large",
];

/// The baseline of the ratio column.
const BASELINE: &str = "jemalloc";

const PROF_CONF: &str = "prof:true,prof_active:true,lg_prof_sample:19";

const BUILD_HINT: &str = "cargo bench --features bench-jemalloc-prof --benches --no-run";

/// One child run's results.
struct Run {
    elapsed_ns: u64,
    max_rss_kib: u64,
    overhead_bytes: Option<u64>,
    extra: Vec<(String, String)>,
}

fn main() {
    let mut rounds = 5usize;
    let mut workloads: Vec<String> = WORKLOADS.iter().map(|s| s.to_string()).collect();
    let mut configs: Vec<String> = CONFIGS
        .iter()
        .map(|(c, _)| c.to_string())
        .filter(|c| !c.starts_with(OPT_IN_PREFIX))
        .collect();
    let mut fp_dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| fail("--rounds needs a positive number"));
            }
            "--workloads" => {
                workloads = split_list(args.next(), WORKLOADS.iter().copied(), "--workloads");
            }
            "--configs" => {
                configs = split_list(args.next(), CONFIGS.iter().map(|(c, _)| *c), "--configs");
            }
            "--fp-dir" => {
                fp_dir = Some(PathBuf::from(
                    args.next()
                        .unwrap_or_else(|| fail("--fp-dir needs a directory")),
                ));
            }
            // `cargo bench` passes `--bench`; ignore it and anything else.
            _ => {}
        }
    }
    if !configs.iter().any(|c| c == BASELINE) {
        eprintln!("note: `{BASELINE}` not selected, ratios are left out");
    }

    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| fail("cannot locate the driver's own executable"));
    // <target>/release/deps -> <target>/fp/release/deps
    let fp_dir = fp_dir
        .or_else(|| std::env::var_os(FP_DIR_ENV).map(PathBuf::from))
        .or_else(|| {
            dir.parent()
                .and_then(Path::parent)
                .map(|target| target.join("fp/release/deps"))
        })
        .unwrap_or_else(|| {
            fail("cannot derive the frame-pointer build's directory; pass --fp-dir")
        });
    let mut exes: BTreeMap<String, PathBuf> = BTreeMap::new();
    for c in &configs {
        let worker_dir = if c == FP_CONFIG { &fp_dir } else { &dir };
        match find_worker(worker_dir, c) {
            Some(exe) => {
                exes.insert(c.clone(), exe);
            }
            // Built only with the feature; everything else must be there.
            None if c == "jemalloc_prof" => eprintln!(
                "note: `cmp_jemalloc_prof` not built (needs --features bench-jemalloc-prof): column skipped"
            ),
            // Built separately, with frame pointers.
            None if c == FP_CONFIG => eprintln!(
                "note: `cmp_{FP_CONFIG}-*` not found in {} (the frame-pointer build; \
                 --fp-dir or ${FP_DIR_ENV} to point elsewhere): column skipped; build it with {FP_BUILD_HINT}",
                fp_dir.display()
            ),
            None => fail(&format!(
                "worker executable `cmp_{c}-*` not found in {}; build the workers with `{BUILD_HINT}`",
                dir.display()
            )),
        }
    }
    configs.retain(|c| exes.contains_key(c));

    println!("# Whole-process comparison: {rounds} rounds, configurations interleaved\n");
    for (c, exe) in &exes {
        eprintln!("{c}: {}", exe.display());
    }

    // results[(workload, config)] = runs
    let mut results: BTreeMap<(String, String), Vec<Run>> = BTreeMap::new();
    for round in 0..rounds {
        for w in &workloads {
            // Rotate the starting configuration each round so no
            // configuration always runs first (or right after another).
            for i in 0..configs.len() {
                let c = &configs[(i + round) % configs.len()];
                let run = run_child(&exes[c], c, w);
                eprintln!(
                    "round {}/{rounds} {w:>8} {c:>14}: {:>10.1} ms, {:>7} KiB max RSS{}",
                    round + 1,
                    run.elapsed_ns as f64 / 1e6,
                    run.max_rss_kib,
                    run.extra
                        .iter()
                        .map(|(k, v)| format!(", {k}={v}"))
                        .collect::<String>()
                );
                if c == "jemalloc_prof" {
                    let ok = run
                        .extra
                        .iter()
                        .any(|(k, v)| k == "opt_prof" && v == "true")
                        && run
                            .extra
                            .iter()
                            .any(|(k, v)| k == "prof_active" && v == "true");
                    if !ok {
                        fail("jemalloc_prof: jemalloc's profiler is not active (opt.prof / prof.active not true)");
                    }
                }
                if c == FP_CONFIG {
                    let unwinder = extra_value(&run, "unwinder").unwrap_or("(not reported)");
                    if unwinder != "frame_pointers" {
                        eprintln!(
                            "WARNING: {FP_CONFIG} {w}: the worker ran with unwinder={unwinder}, \
                             not frame_pointers: its row is labelled NOT active"
                        );
                    }
                }
                results.entry((w.clone(), c.clone())).or_default().push(run);
            }
        }
    }

    // Row labels; the frame-pointer row says so when the walk did not engage.
    let mut labels: BTreeMap<String, String> =
        configs.iter().map(|c| (c.clone(), describe(c))).collect();
    if configs.iter().any(|c| c == FP_CONFIG) {
        let runs: Vec<&Run> = results
            .iter()
            .filter(|((_, c), _)| c == FP_CONFIG)
            .flat_map(|(_, runs)| runs)
            .collect();
        let not_fp = runs
            .iter()
            .filter(|r| extra_value(r, "unwinder") != Some("frame_pointers"))
            .count();
        if not_fp > 0 {
            let label = format!(
                "**heapwatch exact, frame pointers NOT active** ({not_fp} of {} runs used \
                 another unwinder: backtrace figures) (`cmp_{FP_CONFIG}`)",
                runs.len()
            );
            println!(
                "**WARNING**: `cmp_{FP_CONFIG}` did not use the frame-pointer unwinder in \
                 {not_fp} of {} runs (was it built with `-C force-frame-pointers=yes`? \
                 did the probe reject the walk?); its row is labelled accordingly.\n",
                runs.len()
            );
            eprintln!(
                "WARNING: {FP_CONFIG}: frame pointers NOT active in {not_fp} of {} runs",
                runs.len()
            );
            labels.insert(FP_CONFIG.to_string(), label);
        }
    }

    let med_ms = |w: &str, c: &str| -> Option<f64> {
        results
            .get(&(w.to_string(), c.to_string()))
            .map(|runs| median(runs.iter().map(|r| r.elapsed_ns as f64 / 1e6).collect()))
    };

    println!("## Time (median ms, ratio vs raw jemalloc)\n");
    print_header(&workloads);
    for c in &configs {
        let cells: Vec<String> = workloads
            .iter()
            .map(|w| {
                let ms = med_ms(w, c).unwrap_or(f64::NAN);
                match med_ms(w, BASELINE) {
                    Some(base) => format!("{} ({:.2}x)", fmt_ms(ms), ms / base),
                    None => fmt_ms(ms),
                }
            })
            .collect();
        println!("| {} | {} |", labels[c.as_str()], cells.join(" | "));
    }

    // The machine may be shared: the fastest run is the least disturbed one.
    println!("\n## Time, fastest run (min ms, ratio vs raw jemalloc's fastest)\n");
    let min_ms = |w: &str, c: &str| -> Option<f64> {
        results.get(&(w.to_string(), c.to_string())).map(|runs| {
            runs.iter()
                .map(|r| r.elapsed_ns as f64 / 1e6)
                .fold(f64::INFINITY, f64::min)
        })
    };
    print_header(&workloads);
    for c in &configs {
        let cells: Vec<String> = workloads
            .iter()
            .map(|w| {
                let ms = min_ms(w, c).unwrap_or(f64::NAN);
                match min_ms(w, BASELINE) {
                    Some(base) => format!("{} ({:.2}x)", fmt_ms(ms), ms / base),
                    None => fmt_ms(ms),
                }
            })
            .collect();
        println!("| {} | {} |", labels[c.as_str()], cells.join(" | "));
    }

    println!("\n## Peak RSS (median of `ru_maxrss`, MiB)\n");
    print_header(&workloads);
    for c in &configs {
        let cells: Vec<String> = workloads
            .iter()
            .map(|w| {
                let runs = &results[&(w.clone(), c.clone())];
                let kib = median(runs.iter().map(|r| r.max_rss_kib as f64).collect());
                format!("{:.1}", kib / 1024.0)
            })
            .collect();
        println!("| {} | {} |", labels[c.as_str()], cells.join(" | "));
    }

    let hw: Vec<&String> = configs.iter().filter(|c| c.starts_with("hw_")).collect();
    if !hw.is_empty() {
        println!("\n## heapwatch tracker memory at exit (`stats().overhead_bytes`, median, MiB)\n");
        print_header(&workloads);
        for c in hw {
            let cells: Vec<String> = workloads
                .iter()
                .map(|w| {
                    let runs = &results[&(w.clone(), c.clone())];
                    let v: Vec<f64> = runs
                        .iter()
                        .filter_map(|r| r.overhead_bytes)
                        .map(|b| b as f64)
                        .collect();
                    if v.is_empty() {
                        "?".to_string()
                    } else {
                        format!("{:.2}", median(v) / (1024.0 * 1024.0))
                    }
                })
                .collect();
            println!("| {} | {} |", labels[c.as_str()], cells.join(" | "));
        }
    }
}

fn describe(config: &str) -> String {
    let desc = CONFIGS
        .iter()
        .find(|(c, _)| *c == config)
        .map_or(config, |(_, d)| d);
    format!("{desc} (`cmp_{config}`)")
}

/// The value of a `key=value` line a worker printed, other than the
/// elapsed time and the tracker memory.
fn extra_value<'a>(run: &'a Run, key: &str) -> Option<&'a str> {
    run.extra
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn print_header(workloads: &[String]) {
    println!("| configuration | {} |", workloads.join(" | "));
    println!("| --- |{}", " ---: |".repeat(workloads.len()));
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn split_list<'a>(
    value: Option<String>,
    known: impl Iterator<Item = &'a str> + Clone,
    flag: &str,
) -> Vec<String> {
    let value = value.unwrap_or_else(|| fail(&format!("{flag} needs a comma-separated list")));
    let list: Vec<String> = value.split(',').map(str::to_string).collect();
    for item in &list {
        if !known.clone().any(|k| k == item) {
            let known: Vec<&str> = known.clone().collect();
            fail(&format!(
                "{flag}: unknown `{item}` (known: {})",
                known.join(", ")
            ));
        }
    }
    list
}

fn fail(msg: &str) -> ! {
    eprintln!("compare: {msg}");
    std::process::exit(1);
}

/// The newest executable file in `dir` named `cmp_<config>-<hash>`.
fn find_worker(dir: &Path, config: &str) -> Option<PathBuf> {
    let prefix = format!("cmp_{config}-");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let hash = name.strip_prefix(&prefix)?;
            if hash.is_empty() || !hash.chars().all(|ch| ch.is_ascii_hexdigit()) {
                return None; // `.d` files and the like
            }
            let meta = e.metadata().ok()?;
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                return None;
            }
            Some((meta.modified().ok()?, e.path()))
        })
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p)
}

/// Runs one worker as a fresh process and reaps it with `wait4` for its
/// resource usage.
fn run_child(exe: &Path, config: &str, workload: &str) -> Run {
    let mut cmd = Command::new(exe);
    cmd.arg(workload)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env_remove("_RJEM_MALLOC_CONF")
        .env_remove("HEAPWATCH_MAX_MEMORY_MB");
    if config == "jemalloc_prof" {
        cmd.env("_RJEM_MALLOC_CONF", PROF_CONF)
            .env("HW_CMP_CHECK_PROF", "1");
    }
    // Reaped below with `wait4` (for its rusage), not `Child::wait`.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start {}: {e}", exe.display())));
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout is piped")
        .read_to_string(&mut out)
        .unwrap_or_else(|e| fail(&format!("reading {config}'s output: {e}")));
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = loop {
        // SAFETY: `pid` is our own child, not yet reaped (`Child::wait` is
        // never called, and dropping a `Child` does not reap it); `status`
        // and `usage` are valid, writable and live for the call.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break rc;
    };
    if rc != pid {
        fail(&format!(
            "wait4 on {config}: {}",
            std::io::Error::last_os_error()
        ));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        fail(&format!(
            "{config} {workload} failed (wait status {status:#x}); output:\n{out}"
        ));
    }
    let mut run = Run {
        elapsed_ns: 0,
        max_rss_kib: usage.ru_maxrss as u64,
        overhead_bytes: None,
        extra: Vec::new(),
    };
    let mut seen_elapsed = false;
    for line in out.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "elapsed_ns" => {
                run.elapsed_ns = v.trim().parse().unwrap_or(0);
                seen_elapsed = true;
            }
            "overhead_bytes" => run.overhead_bytes = v.trim().parse().ok(),
            _ => run.extra.push((k.to_string(), v.trim().to_string())),
        }
    }
    if !seen_elapsed {
        fail(&format!(
            "{config} {workload}: no elapsed_ns in output:\n{out}"
        ));
    }
    run
}
