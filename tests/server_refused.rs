//! Connections refused while every slot is taken cost heapwatch nothing
//! that stays: refusing thousands of them leaves its own memory
//! (`overhead_bytes`) where it was.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use heapwatch::{Sampling, ServerBuilder, Tracker};

// Exact mode: the callsite tables are mapped (overhead) at the first
// allocation, not at a first sampled one in the middle of the measurement.
#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::All);

/// A connection over the limit: its `503`, read until the server closes.
fn refused(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(b"GET /heap HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn refused_connections_leave_no_memory_behind() {
    let server = ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(None)
        .max_connections(2)
        .header_timeout(Duration::from_secs(600))
        .history_interval(Duration::from_secs(3600))
        .serve()
        .expect("serve");
    let addr = server.local_addr();
    // The history's first snapshot (symbols read, tables mapped) before
    // measuring.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /heap/history HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut history = String::new();
    s.read_to_string(&mut history).unwrap();
    assert!(history.starts_with("HTTP/1.1 200"), "{history}");
    // Both slots taken by clients that stay connected.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut held_until_refused = String::new();
    while !held_until_refused.starts_with("HTTP/1.1 503") {
        held_until_refused = refused(addr);
    }
    // Warm-up: the runtime's and the history's first allocations.
    for _ in 0..200 {
        assert!(refused(addr).starts_with("HTTP/1.1 503"));
    }
    let before = heapwatch::stats().overhead_bytes;
    for _ in 0..3000 {
        let r = refused(addr);
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    }
    // What is kept, not what is in use at one instant: a snapshot the
    // server happens to be building (the history's first, on a slow
    // machine) holds debug information for a moment. Its lowest reading
    // over up to 10 s.
    let limit = before + (256 << 10);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut after = heapwatch::stats().overhead_bytes;
    while after >= limit && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = after.min(heapwatch::stats().overhead_bytes);
    }
    assert!(
        after < limit,
        "3,000 refused connections took heapwatch's memory from {before} to {after} bytes (lowest reading over 10 s)"
    );
    drop(held);
    server.shutdown();
}

// `harness = false` (Cargo.toml): `overhead_bytes` is process-wide, and
// other tests' servers would move it.
fn main() {
    refused_connections_leave_no_memory_behind();
    println!("server_refused: ok");
}
