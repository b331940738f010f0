//! Starting, querying and stopping the server leaks nothing: dhat (as the
//! inner allocator, so it sees every block, heapwatch's own included)
//! shows no growth over 50 rounds beyond bounded caches.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[global_allocator]
static GLOBAL: heapwatch::Tracker<dhat::Alloc> = heapwatch::Tracker::new(dhat::Alloc);

fn get(addr: SocketAddr, target: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

fn round() {
    let server = heapwatch::ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(None)
        .serve()
        .expect("serve");
    let addr = server.local_addr();
    let heap = get(addr, "/heap?top=5");
    assert!(heap.starts_with("HTTP/1.1 200"), "{heap}");
    let metrics = get(addr, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    server.shutdown();
}

// `harness = false` (see Cargo.toml): with `dhat::Alloc`, no thread may
// allocate while another symbolizes (dhat-rs #18, #25). Here the only other
// threads are the server's, and this thread waits for each answer.
fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    // Sampling off: the rounds add no callsite rows, so the snapshot's
    // symbolization meets no new addresses after the warm-up.
    heapwatch::set_sampling(heapwatch::Sampling::Off);
    // Warm-up: fills the bounded, process-lifetime caches (symbolization
    // cache and debug info, callsite tables, the run id, std's and tokio's
    // one-time statics).
    for _ in 0..3 {
        round();
    }
    let before = dhat::HeapStats::get();
    for _ in 0..50 {
        round();
    }
    let after = dhat::HeapStats::get();
    let blocks = after.curr_blocks as i64 - before.curr_blocks as i64;
    let bytes = after.curr_bytes as i64 - before.curr_bytes as i64;
    eprintln!(
        "after warm-up: {} blocks / {} bytes; after 50 rounds: {} blocks / {} bytes",
        before.curr_blocks, before.curr_bytes, after.curr_blocks, after.curr_bytes
    );
    // Bound: zero. Measured: 0 blocks / 0 bytes of growth. With sampling
    // off no callsite row or symbol-cache entry is added after the warm-up,
    // and shutdown drops the runtime, the state (history ring, latest
    // snapshot) and joins both threads, so their thread-locals are freed
    // too: the only bounded caches (symbols, run id) are full after the
    // warm-up. One leaked round would be thousands of blocks.
    dhat::assert!(blocks <= 0, "grew by {blocks} blocks");
    dhat::assert!(bytes <= 0, "grew by {bytes} bytes");
    println!("server_dhat: 50 start/query/stop rounds grew by {blocks} blocks, {bytes} bytes");
}
