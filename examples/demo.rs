//! The demo service: a small key-value cache with a worker pool, heapwatch
//! installed over jemalloc, the endpoint on 127.0.0.1:7878, a 256 MiB
//! budget (`HEAPWATCH_MAX_MEMORY_MB` overrides it), and a deliberate slow
//! leak you can switch on.
//!
//! The leak runs until the budget reaches its critical level (95%): a
//! `watch_budget` callback then drops the leaked sessions, as an operator
//! restarting the leaking component would, and the leak starts over. The
//! leak's own allocations use `try_reserve`, so a refusal stops it instead
//! of aborting the process. The service needs about 64 MiB; under a smaller
//! budget the demo says so and exits.
//!
//! ```text
//! cargo run --release --example demo                      # no leak
//! cargo run --release --example demo -- --leak            # leaks ~8 MiB/min
//! cargo run --release --example demo -- --port 9000 --leak-mb-per-min 20
//! HEAPWATCH_DEMO_PORT=9000 cargo run --release --example demo
//! ```
//!
//! Flags: `--port N` (or `HEAPWATCH_DEMO_PORT`), `--leak`,
//! `--leak-mb-per-min X` (implies `--leak`), `--workers N`, `--seconds N`
//! (stop after N seconds; default: run until Ctrl-C), `--history-secs N`
//! (snapshot interval, default 2). Ctrl-C shuts down cleanly.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use heapwatch::{Budget, BudgetLevel, ServerBuilder, Tracker};

#[global_allocator]
static GLOBAL: Tracker<tikv_jemallocator::Jemalloc> =
    Tracker::new(tikv_jemallocator::Jemalloc).with_budget(Budget::from_mb(256));

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct Options {
    port: u16,
    leak_mb_per_min: f64,
    workers: usize,
    seconds: Option<u64>,
    history_secs: u64,
}

const USAGE: &str = "usage: demo [--port N] [--leak] [--leak-mb-per-min X] [--workers N] [--seconds N] [--history-secs N]";

fn usage(problem: &str) -> ! {
    eprintln!("demo: {problem}");
    eprintln!("{USAGE}");
    std::process::exit(2);
}

fn parse_options() -> Options {
    let mut o = Options {
        port: 7878,
        leak_mb_per_min: 0.0,
        workers: 4,
        seconds: None,
        history_secs: 2,
    };
    if let Ok(p) = std::env::var("HEAPWATCH_DEMO_PORT") {
        o.port = p
            .parse()
            .unwrap_or_else(|_| usage("HEAPWATCH_DEMO_PORT is not a port"));
    }
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--port" => {
                o.port = value("--port")
                    .parse()
                    .unwrap_or_else(|_| usage("bad --port"))
            }
            "--leak" => o.leak_mb_per_min = o.leak_mb_per_min.max(8.0),
            "--leak-mb-per-min" => {
                o.leak_mb_per_min = value("--leak-mb-per-min")
                    .parse()
                    .unwrap_or_else(|_| usage("bad --leak-mb-per-min"))
            }
            "--workers" => {
                o.workers = value("--workers")
                    .parse()
                    .unwrap_or_else(|_| usage("bad --workers"))
            }
            "--seconds" => {
                o.seconds = Some(
                    value("--seconds")
                        .parse()
                        .unwrap_or_else(|_| usage("bad --seconds")),
                )
            }
            "--history-secs" => {
                o.history_secs = value("--history-secs")
                    .parse()
                    .unwrap_or_else(|_| usage("bad --history-secs"))
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    o
}

/// A job for the worker pool.
enum Job {
    Put { key: u64, value_len: usize },
    Get { key: u64 },
    Report,
}

/// The service's state: a bounded cache (evicts, no leak) and, when the leak
/// is on, a session registry that forgets to evict.
struct Service {
    cache: Mutex<HashMap<u64, Vec<u8>>>,
    sessions: Mutex<Vec<String>>,
    served: AtomicU64,
}

const CACHE_ENTRIES: usize = 20_000;
/// Snapshots the endpoint's history keeps.
const HISTORY_LEN: usize = 900;

/// The smallest budget the service runs under: its cache holds about 40 MiB,
/// and snapshots and the workers' requests need room beside it.
const MIN_BUDGET_MB: u64 = 64;

impl Service {
    #[inline(never)]
    fn put(&self, key: u64, value_len: usize) {
        let value = vec![(key % 251) as u8; value_len];
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHE_ENTRIES {
            // Evict an arbitrary entry: the cache stays bounded.
            if let Some(&k) = cache.keys().next() {
                cache.remove(&k);
            }
        }
        cache.insert(key, value);
    }

    #[inline(never)]
    fn get(&self, key: u64) -> usize {
        self.cache.lock().unwrap().get(&key).map_or(0, Vec::len)
    }

    #[inline(never)]
    fn report(&self) -> String {
        let cache = self.cache.lock().unwrap();
        let mut sizes: Vec<usize> = cache.values().map(Vec::len).collect();
        sizes.sort_unstable();
        let summary = serde_json::json!({
            "entries": sizes.len(),
            "median": sizes.get(sizes.len() / 2),
            "max": sizes.last(),
        });
        summary.to_string()
    }

    /// The deliberate leak: a session record that is never removed. Its
    /// allocations are fallible: `false` if the budget refused one.
    #[inline(never)]
    fn remember_session(&self, id: u64, bytes: usize) -> bool {
        use std::fmt::Write as _;
        let mut record = String::new();
        if record.try_reserve_exact(bytes + 32).is_err() {
            return false;
        }
        // Within the capacity reserved: nothing more is allocated.
        let _ = write!(record, "session-{id}:");
        record.extend(std::iter::repeat_n('x', bytes));
        let mut sessions = self.sessions.lock().unwrap();
        if sessions.try_reserve(1).is_err() {
            return false;
        }
        sessions.push(record);
        true
    }

    /// Drops every leaked session; returns how many there were and their
    /// bytes.
    fn forget_sessions(&self) -> (usize, usize) {
        let dropped = std::mem::take(&mut *self.sessions.lock().unwrap());
        (dropped.len(), dropped.iter().map(String::capacity).sum())
    }
}

fn worker(service: Arc<Service>, jobs: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let job = match jobs.lock().unwrap().recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        match job {
            Job::Put { key, value_len } => service.put(key, value_len),
            Job::Get { key } => {
                black_box(service.get(key));
            }
            Job::Report => {
                black_box(service.report());
            }
        }
        service.served.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() {
    let o = parse_options();
    // SAFETY: `on_signal` only stores to an atomic, which is
    // async-signal-safe; installing a handler has no other precondition.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as usize;
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }

    let server = match ServerBuilder::new()
        .addr(("127.0.0.1", o.port))
        .history_interval(Duration::from_secs(o.history_secs.max(1)))
        .history_len(HISTORY_LEN)
        .leak_window(Duration::from_secs(120))
        .serve()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("demo: cannot start the endpoint: {e}");
            std::process::exit(1);
        }
    };
    let base = format!("http://{}", server.local_addr());
    // The budget in force: the builder's 256 MiB, or the environment's.
    let status = heapwatch::budget_status();
    let budget = match status.budget.bytes() {
        Some(b) => format!("budget {} MiB", b >> 20),
        None => "no budget".to_string(),
    };
    let source = if status.env_var_invalid {
        " (HEAPWATCH_MAX_MEMORY_MB is not a size: ignored)"
    } else if std::env::var_os("HEAPWATCH_MAX_MEMORY_MB").is_some_and(|v| !v.is_empty()) {
        " (from HEAPWATCH_MAX_MEMORY_MB)"
    } else {
        ""
    };
    if status
        .budget
        .bytes()
        .is_some_and(|b| b < MIN_BUDGET_MB << 20)
    {
        eprintln!(
            "demo: the {budget}{source} is below the {MIN_BUDGET_MB} MiB this service needs: \
             its cache would be refused memory and the process would abort"
        );
        std::process::exit(2);
    }
    println!(
        "heapwatch demo: a key-value cache with {} workers, {budget}{source}",
        o.workers
    );
    if o.leak_mb_per_min > 0.0 {
        println!(
            "leak: ON, about {} MiB/min from demo::Service::remember_session \
             (dropped when the budget reaches its critical level)",
            o.leak_mb_per_min
        );
    } else {
        println!("leak: off (start with --leak to watch one grow)");
    }
    println!();
    println!("  dashboard   {base}/");
    println!("  snapshot    curl -s '{base}/heap?top=5'");
    println!("  history     curl -s {base}/heap/history");
    // Snapshot 1 leaves the history once HISTORY_LEN more were taken.
    let kept_min = (HISTORY_LEN as u64)
        .saturating_mul(o.history_secs.max(1))
        .div_ceil(60);
    println!(
        "  diff        curl -s '{base}/heap/diff?base=1'   \
         (base: any id /heap/history lists; 1 is kept for {kept_min} min)"
    );
    println!("  leaks       curl -s {base}/heap/leaks");
    println!("  metrics     curl -s {base}/metrics");
    println!("  pprof       go tool pprof -top {base}/debug/pprof/heap");
    println!("  flamegraph  {base}/heap/flamegraph.svg");
    println!();
    println!("Ctrl-C to stop.");

    let service = Arc::new(Service {
        cache: Mutex::new(HashMap::new()),
        sessions: Mutex::new(Vec::new()),
        served: AtomicU64::new(0),
    });
    // Reacting to the budget, outside the allocator: report each level, and
    // at the critical one drop the leaked sessions, as an operator
    // restarting the leaking component would.
    let started = Instant::now();
    let watch = {
        let service = Arc::clone(&service);
        heapwatch::watch_budget(Duration::from_millis(100), move |event| {
            let t = started.elapsed().as_secs();
            let pct = event.status.budget.bytes().map_or(0.0, |b| {
                event.status.reserved_bytes as f64 * 100.0 / b as f64
            });
            println!("[{t:>4}s] budget: {:?}, {pct:.1}% reserved", event.reached);
            if event.reached >= BudgetLevel::Critical {
                let (n, bytes) = service.forget_sessions();
                if n > 0 {
                    println!(
                        "[{t:>4}s] dropped {n} leaked sessions ({:.1} MiB); the leak starts over",
                        bytes as f64 / 1_048_576.0
                    );
                }
            }
        })
    };
    let (tx, rx) = mpsc::sync_channel::<Job>(1024);
    let rx = Arc::new(Mutex::new(rx));
    let workers: Vec<_> = (0..o.workers.max(1))
        .map(|i| {
            let service = Arc::clone(&service);
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("demo-worker-{i}"))
                .spawn(move || worker(service, rx))
                .expect("spawn worker")
        })
        .collect();

    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut leaked_bytes = 0f64;
    let mut last_status = Instant::now();
    let mut tick = Instant::now();
    let mut session = 0u64;
    let mut refused = false;
    while !STOP.load(Ordering::SeqCst) {
        if o.seconds
            .is_some_and(|s| started.elapsed() >= Duration::from_secs(s))
        {
            break;
        }
        // ~20,000 requests a second.
        for _ in 0..200 {
            let r = next();
            let key = r % 50_000;
            let job = match r % 10 {
                0..=3 => Job::Put {
                    key,
                    value_len: 64 + (r >> 20) as usize % 4000,
                },
                4..=8 => Job::Get { key },
                _ => Job::Report,
            };
            if tx.send(job).is_err() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
        // The leak pauses at the critical level, until the watcher has
        // dropped what it holds (at most one poll, 100 ms, later).
        let dt = tick.elapsed().as_secs_f64();
        tick = Instant::now();
        if o.leak_mb_per_min > 0.0 && heapwatch::budget_status().level < BudgetLevel::Critical {
            leaked_bytes += o.leak_mb_per_min * 1_048_576.0 / 60.0 * dt;
            while leaked_bytes >= 4096.0 {
                session += 1;
                leaked_bytes -= 4096.0;
                if service.remember_session(session, 4096) {
                    refused = false;
                } else if !refused {
                    refused = true;
                    println!(
                        "[{:>4}s] the budget refused the leak an allocation: it waits for the next drop",
                        started.elapsed().as_secs()
                    );
                }
            }
        }
        if last_status.elapsed() >= Duration::from_secs(10) {
            last_status = Instant::now();
            let s = heapwatch::stats();
            println!(
                "[{:>4}s] live {:.1} MiB in {} blocks, peak {:.1} MiB, {} requests served",
                started.elapsed().as_secs(),
                s.live_bytes as f64 / 1_048_576.0,
                s.live_blocks,
                s.peak_bytes as f64 / 1_048_576.0,
                service.served.load(Ordering::Relaxed)
            );
        }
    }

    println!("shutting down...");
    drop(watch);
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    server.shutdown();
    println!("stopped cleanly.");
}
