//! heapwatch's own threads start and run with the budget spent.
//!
//! Under `Policy::Refuse` an infallible allocation over budget aborts the
//! process. A thread std spawns allocates as it starts, before the code it
//! was given runs (its name and its stack-overflow record), so a
//! heapwatch thread started the ordinary way with no budget left would
//! abort the program it watches. This test spends the whole budget, then
//! starts the budget watcher and the server and has the server build
//! snapshots: the process must carry on.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use heapwatch::{Budget, BudgetLevel, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_budget(Budget::from_mb(64));

/// Fills the budget until not one more byte is admitted.
fn spend_the_budget() -> Vec<Vec<u8>> {
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(1 << 16);
    for size in [1 << 20, 64 << 10, 4 << 10, 256, 16, 1] {
        loop {
            let mut block = Vec::new();
            if block.try_reserve_exact(size).is_err() || held.len() == held.capacity() {
                break;
            }
            held.push(block);
        }
    }
    held
}

/// The response to `GET path`, read into `buf` (allocated before the
/// budget was spent, and large enough).
fn get(port: u16, path: &str, buf: &mut Vec<u8>) {
    buf.clear();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s.read_to_end(buf).unwrap();
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

// `harness = false` (Cargo.toml): libtest's own threads would need budget.
fn main() {
    let (tx, rx) = mpsc::channel::<BudgetLevel>();
    let (mut heap, mut metrics) = (Vec::with_capacity(8 << 20), Vec::with_capacity(1 << 20));
    let mut held = spend_the_budget();
    let status = heapwatch::budget_status();
    assert_eq!(
        status.budget.bytes(),
        Some(status.reserved_bytes),
        "every byte of the budget is reserved"
    );
    // Less budget than is reserved: nothing is left to draw, whatever
    // slack the filling left. This thread has no credit either: it spent
    // it before drawing on the pool.
    let spent = Budget::from_bytes(status.reserved_bytes - 1);
    heapwatch::set_budget(spent);

    // What these calls allocate on this thread, and what the threads they
    // start allocate as they start, would be refused, and the process
    // would abort.
    let watch = heapwatch::watch_budget(Duration::from_millis(10), move |e| {
        let _ = tx.send(e.status.level);
    });
    let server = heapwatch::ServerBuilder::new()
        .addr("127.0.0.1:0")
        .allow_host("heap.internal")
        .serve()
        .expect("the server starts with the budget spent");

    // Room for what this thread does below: its own credit, which no other
    // thread can draw on.
    let reserve = held.iter().position(|b| b.capacity() == 64 << 10).unwrap();
    let before = heapwatch::budget_status().reserved_bytes;
    drop(held.swap_remove(reserve));
    assert_eq!(heapwatch::budget_status().reserved_bytes, before);
    assert!(
        before > status.reserved_bytes,
        "the calls above were let through as overages"
    );

    // A crossing for the watcher to report: out of `Exceeded` and back in
    // at once, so that its callback, which allocates to send the level,
    // runs with no room left. (Leaving `Exceeded` takes room: the level is
    // kept until the reservation is 2% of the budget under it.)
    let reserved = heapwatch::budget_status().reserved_bytes;
    heapwatch::set_budget(Budget::UNLIMITED);
    heapwatch::set_budget(Budget::from_bytes(reserved - 1));
    let level = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(BudgetLevel::Exceeded) => break Ok(BudgetLevel::Exceeded),
            // A poll between the two calls saw the budget unlimited.
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };

    // The server builds snapshots on its own threads.
    let port = server.local_addr().port();
    get(port, "/heap", &mut heap);
    get(port, "/metrics", &mut metrics);
    server.shutdown();
    watch.stop();

    assert_eq!(level, Ok(BudgetLevel::Exceeded), "the watcher reported");
    let text = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned();
    assert!(heap.starts_with(b"HTTP/1.1 200"), "{}", text(&heap));
    assert!(contains(&heap, "\"live_bytes\""), "{}", text(&heap));
    assert!(metrics.starts_with(b"HTTP/1.1 200"), "{}", text(&metrics));
    assert!(
        contains(&metrics, "heapwatch_live_bytes"),
        "{}",
        text(&metrics)
    );
    drop(held);
    println!("budget_spent_threads: ok");
}
