// Workloads shared by the whole-process comparison programs
// (`benches/compare/<config>.rs`, included with `include!`). Each program
// installs one global allocator, runs the workload named by argv[1] once
// and prints `elapsed_ns=<n>` (plus configuration-specific `key=value`
// lines) on stdout for the driver, `benches/compare.rs`.
//
// Everything is deterministic: a fixed LCG drives sizes and keys, and the
// hash maps use SipHash with fixed keys.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::hint::black_box;
use std::time::Instant;

/// Allocations (each followed, once the ring is full, by a free) per thread
/// in `small` and `threads`.
const SMALL_OPS: usize = 2_000_000;
/// Rounds of the app-like workload.
const MIXED_ROUNDS: usize = 40;
/// Rounds of the large-buffer workload.
const LARGE_ROUNDS: usize = 2;
/// Rounds of each of the smaller app-like workloads (`structs`, `strings`,
/// `hashmap`).
const APP_ROUNDS: usize = 60;

type FixedMap<K, V> = HashMap<K, V, BuildHasherDefault<DefaultHasher>>;

fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

/// A tight loop of small allocations (8..=256 bytes) kept in a ring of
/// 1,024 slots: each new block replaces (frees) a random older one.
#[inline(never)] // a symbol of its own, for scripts/instructions_whole.sh
fn small_loop(seed: u64, ops: usize) -> u64 {
    let mut rng = seed;
    let mut ring: Vec<Option<Vec<u8>>> = (0..1024).map(|_| None).collect();
    let mut sum = 0u64;
    for i in 0..ops {
        let size = 8 + (lcg(&mut rng) % 249) as usize;
        let v = vec![i as u8; size];
        sum = sum.wrapping_add(v.len() as u64);
        let slot = (lcg(&mut rng) as usize) & 1023;
        ring[slot] = Some(v);
    }
    sum
}

/// The small loop on two threads at once, each doing the full loop.
fn threads() -> u64 {
    std::thread::scope(|s| {
        let a = s.spawn(|| small_loop(1, SMALL_OPS));
        let b = s.spawn(|| small_loop(2, SMALL_OPS));
        a.join().unwrap().wrapping_add(b.join().unwrap())
    })
}

/// App-like: hash maps of strings, JSON serialize and parse, sorting.
#[inline(never)] // a symbol of its own, for scripts/instructions_whole.sh
fn mixed(rounds: usize) -> u64 {
    let mut rng = 42u64;
    let mut total = 0u64;
    for r in 0..rounds {
        let mut map: FixedMap<String, Vec<u64>> = FixedMap::default();
        for i in 0..2_000u64 {
            let key = format!("user-{}-{}", lcg(&mut rng) % 500, i % 7);
            map.entry(key).or_default().push(lcg(&mut rng));
        }
        let json = serde_json::to_string(&map).unwrap();
        let parsed: FixedMap<String, Vec<u64>> = serde_json::from_str(&json).unwrap();
        let mut keys: Vec<String> = parsed.keys().cloned().collect();
        keys.sort_unstable();
        let records: Vec<serde_json::Value> = keys
            .iter()
            .take(300)
            .map(|k| {
                serde_json::json!({
                    "name": k,
                    "values": parsed[k],
                    "tag": format!("{k}:{r}"),
                    "meta": { "round": r, "len": k.len() },
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&records).unwrap();
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        total += back.as_array().map_or(0, |a| a.len()) as u64 + json.len() as u64;
        let mut words: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect();
        words.sort();
        words.dedup();
        total += words.len() as u64;
    }
    total
}

/// An order, as a service would parse it from JSON (serde derive).
#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
    customer: String,
    items: Vec<Item>,
    note: Option<String>,
}

/// A line of an [`Order`].
#[derive(serde::Serialize, serde::Deserialize)]
struct Item {
    sku: String,
    qty: u32,
    tags: Vec<String>,
}

/// App-like: typed JSON round trips (serde derive), 300 orders of one to
/// five items each per round, serialized, parsed back and dropped.
#[inline(never)] // a symbol of its own, for scripts/instructions_whole.sh
fn structs(rounds: usize) -> u64 {
    let mut rng = 4u64;
    let mut total = 0u64;
    for _ in 0..rounds {
        let orders: Vec<Order> = (0..300u64)
            .map(|i| Order {
                id: i,
                customer: format!("customer-{}", lcg(&mut rng) % 100),
                items: (0..i % 5 + 1)
                    .map(|j| Item {
                        sku: format!("sku-{j}"),
                        qty: j as u32,
                        tags: vec!["stock".to_owned(), format!("tag-{j}")],
                    })
                    .collect(),
                note: (i % 3 == 0).then(|| "fragile".to_owned()),
            })
            .collect();
        let json = serde_json::to_string(&orders).unwrap();
        let back: Vec<Order> = serde_json::from_str(&json).unwrap();
        total += back.iter().map(|o| o.items.len() as u64).sum::<u64>() + json.len() as u64;
    }
    total
}

/// App-like: text handling. 3,000 formatted words per round, sorted,
/// deduplicated on a prefix, joined and split again.
#[inline(never)] // a symbol of its own, for scripts/instructions_whole.sh
fn strings(rounds: usize) -> u64 {
    let mut rng = 1u64;
    let mut total = 0u64;
    for _ in 0..rounds {
        let mut words: Vec<String> = (0..3_000)
            .map(|i| format!("w{}-{}", lcg(&mut rng) % 1_000, i % 13))
            .collect();
        words.sort();
        words.dedup_by(|a, b| a.get(..4) == b.get(..4));
        let joined = words.join(",");
        let parts: Vec<&str> = joined.split(',').collect();
        total += parts.len() as u64 + joined.len() as u64;
    }
    total
}

/// App-like: a cache-like hash map of 5,000 keys whose entries (buffers of
/// 1 to 300 bytes) are inserted and removed at random, 5,000 operations
/// per round.
#[inline(never)] // a symbol of its own, for scripts/instructions_whole.sh
fn hashmap(rounds: usize) -> u64 {
    let mut rng = 3u64;
    let mut map: FixedMap<u64, Vec<u8>> = FixedMap::default();
    let mut total = 0u64;
    for _ in 0..rounds * 5_000 {
        let key = lcg(&mut rng) % 5_000;
        match map.remove(&key) {
            Some(v) => total += v.len() as u64,
            None => {
                map.insert(key, vec![1; (key % 300) as usize + 1]);
            }
        }
    }
    total
}

/// Large buffers grown by appending 4 KiB chunks (realloc growth) to 32 MiB,
/// four live at once.
#[inline(never)] // a symbol of its own, for scripts/instructions_whole.sh
fn large(rounds: usize) -> u64 {
    let mut sum = 0u64;
    for r in 0..rounds {
        let mut bufs: Vec<Vec<u8>> = Vec::new();
        for b in 0..4usize {
            let chunk = [(r ^ b) as u8; 4096];
            let mut v: Vec<u8> = Vec::new();
            while v.len() < 32 << 20 {
                v.extend_from_slice(&chunk);
            }
            bufs.push(v);
        }
        sum += bufs.iter().map(|b| u64::from(b[b.len() / 2])).sum::<u64>();
    }
    sum
}

/// Runs the workload named by argv[1] (`small`, `threads`, `mixed`,
/// `structs`, `strings`, `hashmap`, `large`) and prints `elapsed_ns=<n>`; then calls `report` for extra
/// `key=value` lines.
fn run_from_args(report: impl FnOnce()) {
    let name = std::env::args().nth(1).unwrap_or_default();
    if name.is_empty() || name.starts_with("--") {
        // A plain `cargo bench` runs every bench target with `--bench`:
        // the workers only do something under the driver.
        eprintln!("comparison worker: run it through `cargo bench --bench compare`");
        return;
    }
    let start = Instant::now();
    let out = match name.as_str() {
        "small" => small_loop(1, SMALL_OPS),
        "threads" => threads(),
        "mixed" => mixed(MIXED_ROUNDS),
        "structs" => structs(APP_ROUNDS),
        "strings" => strings(APP_ROUNDS),
        "hashmap" => hashmap(APP_ROUNDS),
        "large" => large(LARGE_ROUNDS),
        other => {
            eprintln!(
                "unknown workload {other:?}: expected small, threads, mixed, structs, \
                 strings, hashmap or large"
            );
            std::process::exit(2);
        }
    };
    let elapsed = start.elapsed();
    black_box(out);
    println!("elapsed_ns={}", elapsed.as_nanos());
    report();
}
