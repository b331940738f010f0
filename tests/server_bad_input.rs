//! Bad input never hurts the server: each bad request gets an error (or a
//! closed connection) and a good request right after still succeeds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

use heapwatch::{ServerBuilder, ServerHandle, Tracker};

mod common;

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> = Tracker::new(std::alloc::System);

/// Sends `request` and reads until the server closes. Write and read
/// errors (the server may reset a connection it refuses) give what was
/// read so far.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn get(addr: SocketAddr, target: &str, extra_headers: &str) -> String {
    exchange(
        addr,
        format!(
            "GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra_headers}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
}

fn status(response: &str) -> Option<u16> {
    response.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn body(response: &str) -> serde_json::Value {
    let (_, b) = response.split_once("\r\n\r\n").expect("a head and a body");
    serde_json::from_str(b).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {b:?}"))
}

fn assert_good(addr: SocketAddr, after: &str) {
    let r = get(addr, "/heap/history", "");
    assert_eq!(
        status(&r),
        Some(200),
        "good request failed after {after}: {r}"
    );
}

fn assert_error(r: &str, code: u16, mentions: &[&str]) {
    assert_eq!(status(r), Some(code), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{r}"
    );
    let msg = body(r)["error"].as_str().expect("error string").to_string();
    for m in mentions {
        assert!(msg.contains(m), "{msg:?} does not mention {m:?}");
    }
}

/// Asks `GET /heap/history` every 10 ms, for at most 30 s, until it is
/// answered with `code`: whether it was.
fn until_status(addr: SocketAddr, code: u16) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if status(&get(addr, "/heap/history", "")) == Some(code) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn server() -> ServerHandle {
    ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(None)
        .serve()
        .expect("serve")
}

#[test]
fn malformed_http_is_rejected_and_the_server_keeps_serving() {
    let server = server();
    let addr = server.local_addr();

    let r = exchange(addr, b"GARBAGE\r\n\r\n");
    assert!(r.is_empty() || status(&r) == Some(400), "{r}");
    assert_good(addr, "malformed request line");

    let r = exchange(
        addr,
        b"GET /heap\xff\xfe HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(r.is_empty() || matches!(status(&r), Some(400 | 404)), "{r}");
    assert_good(addr, "invalid UTF-8 in the path");

    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let r = exchange(addr, long.as_bytes());
    assert!(
        r.is_empty() || matches!(status(&r), Some(400 | 414 | 431)),
        "{r}"
    );
    assert_good(addr, "a 100 KiB path");

    let mut huge = String::from("GET /heap HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..2000 {
        huge.push_str(&format!("X-Filler-{i}: {}\r\n", "v".repeat(40)));
    }
    huge.push_str("\r\n");
    let r = exchange(addr, huge.as_bytes());
    assert!(r.is_empty() || matches!(status(&r), Some(400 | 431)), "{r}");
    assert_good(addr, "huge headers");

    let r = exchange(
        addr,
        b"GET /heap HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_error(&r, 413, &["bod"]);
    assert_good(addr, "a body on GET");

    let r = exchange(
        addr,
        b"GET /heap HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_error(&r, 413, &["bod"]);
    assert_good(addr, "a chunked body on GET");

    // A client that never finishes its headers is cut off by the header
    // timeout (the read below ends with a close, not with our timeout).
    // 1 s: the good request that follows must not be cut off by a stall of
    // this thread between its connect and its write.
    let slow = ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(None)
        .header_timeout(Duration::from_secs(1))
        .serve()
        .expect("serve");
    let asked = std::time::Instant::now();
    let r = exchange(
        slow.local_addr(),
        b"GET /heap HTTP/1.1\r\nHost: localhost\r\n",
    );
    assert!(r.is_empty() || matches!(status(&r), Some(408)), "{r}");
    // Cut off by the 1 s header timeout: not before it (the timer cannot
    // fire early), and well before exchange's own 30 s read timeout.
    let waited = asked.elapsed();
    assert!(waited >= Duration::from_secs(1), "closed early: {waited:?}");
    assert!(waited < Duration::from_secs(20), "cut off after {waited:?}");
    assert_good(slow.local_addr(), "an unfinished request");
    slow.shutdown();

    server.shutdown();
}

#[test]
fn bad_requests_get_json_errors() {
    let server = server();
    let addr = server.local_addr();

    let r = exchange(
        addr,
        b"DELETE /heap HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_error(&r, 405, &["DELETE"]);
    assert!(
        r.to_ascii_lowercase().contains("\r\nallow: get, head\r\n"),
        "{r}"
    );
    assert_good(addr, "an unknown method");

    // HEAD is answered as GET, without the body (curl -I).
    let full = get(addr, "/metrics", "");
    let head = exchange(
        addr,
        b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&head), Some(200), "{head}");
    let (head_fields, head_body) = head.split_once("\r\n\r\n").expect("a head");
    assert_eq!(head_body, "", "HEAD sent a body: {head}");
    let lower = head_fields.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/plain"), "{head}");
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .expect("HEAD gives the body's length");
    let (_, full_body) = full.split_once("\r\n\r\n").expect("a GET response");
    // The two readings are moments apart: the same text but for figures
    // that moved (a few digits).
    assert!(
        length.abs_diff(full_body.len()) < 200,
        "{length} vs {}",
        full_body.len()
    );
    let head = exchange(
        addr,
        b"HEAD /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&head), Some(404), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD sent a body: {head}");

    let r = exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_error(&r, 405, &["POST"]);

    let r = get(addr, "/nope", "");
    assert_error(&r, 404, &["/nope"]);
    assert_good(addr, "an unknown path");

    // Each answer names the first thing wrong: the path before the method,
    // the method before the query.
    let r = get(addr, "/nope?a=1&a=2", "");
    assert_error(&r, 404, &["/nope"]);
    let r = exchange(
        addr,
        b"POST /heap?x=%zz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_error(&r, 405, &["POST"]);
    let r = exchange(
        addr,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n",
    );
    assert_error(&r, 405, &["CONNECT"]);
    assert_good(addr, "CONNECT");

    for (target, mentions) in [
        ("/heap?top=abc", &["top", "abc"][..]),
        ("/heap?top=-1", &["top", "-1"]),
        ("/heap?top=0", &["top", "0"]),
        ("/heap?sort=bogus", &["sort", "bogus"]),
        ("/heap?color=blue", &["color"]),
        ("/heap?top=1&top=2", &["top"]),
        ("/heap/history?x=1", &["x"]),
        (
            "/heap/diff?base=abc",
            &["base", "abc", "non-negative integer"],
        ),
        (
            "/heap/diff?base=99999999999999999999999",
            &["base", "no snapshot has an id this large"],
        ),
        ("/heap/diff?base=1&to=later", &["to", "later"]),
        ("/heap/leaks?top=many", &["top", "many"]),
        ("/metrics?token=abc", &["token"]),
        (
            "/debug/pprof/heap?seconds=10",
            &["seconds", "10", "/heap/diff"],
        ),
        ("/heap?top=%ZZ", &["top"]),
    ] {
        let r = get(addr, target, "");
        assert_error(&r, 400, mentions);
        assert_good(addr, target);
    }
    // A `top` past what a machine can count keeps every callsite.
    let r = get(addr, "/heap?top=99999999999999999999999", "");
    assert_eq!(status(&r), Some(200), "{r}");
    assert_eq!(body(&r)["callsites_omitted"], 0, "{r}");
    // `seconds` is refused on its own (above): not listed as accepted.
    let r = get(addr, "/debug/pprof/allocs?x=1", "");
    assert_error(&r, 400, &["\"x\"", "(accepted: gc, debug)"]);
    server.shutdown();
}

/// A swapped `/heap/diff` (`to` older than `base`) is a 400 naming both;
/// an id that is not retained is a 404 naming it, even when the pair is
/// also swapped.
#[test]
fn diff_ids_are_checked_retained_then_ordered() {
    let server = ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(None)
        .history_interval(Duration::from_millis(20))
        .serve()
        .expect("serve");
    let addr = server.local_addr();
    let mut ids = Vec::new();
    for _ in 0..500 {
        let r = get(addr, "/heap/history", "");
        ids = body(&r)["snapshots"]
            .as_array()
            .expect("snapshots")
            .iter()
            .map(|s| s["id"].as_u64().expect("id"))
            .collect::<Vec<u64>>();
        if ids.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ids.len() >= 2, "two history snapshots within 5 s: {ids:?}");
    let (old, new) = (ids[0], ids[ids.len() - 1]);
    assert!(old < new, "{ids:?}");

    let r = get(addr, &format!("/heap/diff?base={new}&to={old}"), "");
    assert_error(
        &r,
        400,
        &[&format!("to ({old}) is older than base ({new})")],
    );
    let r = get(addr, &format!("/heap/diff?base={old}&to={new}"), "");
    assert_eq!(status(&r), Some(200), "{r}");

    let gone = u64::MAX - 1;
    let r = get(addr, &format!("/heap/diff?base={gone}&to={old}"), "");
    assert_error(&r, 404, &[&format!("snapshot {gone} is not retained")]);
    let r = get(addr, &format!("/heap/diff?base={old}&to={gone}"), "");
    assert_error(&r, 404, &[&format!("snapshot {gone} is not retained")]);
    // A `to` that is not retained gets its 404 even when it is older than
    // `base` (ids start at 1): swapping them would not help.
    let r = get(addr, &format!("/heap/diff?base={new}&to=0"), "");
    assert_error(&r, 404, &["snapshot 0 is not retained"]);
    assert_good(addr, "diffs of ids not retained");
    server.shutdown();
}

#[test]
fn token_is_required_when_configured() {
    let server = ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(Some("correct horse".to_string()))
        .serve()
        .expect("serve");
    let addr = server.local_addr();
    let ok = "Authorization: Bearer correct horse\r\n";

    for (target, headers) in [
        ("/heap", ""),
        ("/heap", "Authorization: Bearer wrong\r\n"),
        ("/heap", "Authorization: Bearer correct hors\r\n"),
        ("/heap", "Authorization: Basic Y29ycmVjdA==\r\n"),
        ("/metrics", ""),
        ("/", ""),
        ("/?token=wrong", ""),
        // The query token is for the dashboard page only.
        ("/heap?token=correct%20horse", ""),
        ("/nope", ""),
        // The token is checked before the query.
        ("/heap?top=1&top=2", ""),
        ("/heap?top=%zz", ""),
    ] {
        let r = get(addr, target, headers);
        assert_error(&r, 401, &["token"]);
        assert!(
            r.to_ascii_lowercase().contains("www-authenticate: bearer"),
            "{r}"
        );
        let good = get(addr, "/heap/history", ok);
        assert_eq!(status(&good), Some(200), "{good}");
    }
    for target in ["/heap?top=1", "/metrics", "/heap/leaks", "/"] {
        let r = get(addr, target, ok);
        assert_eq!(status(&r), Some(200), "{target}: {r}");
    }
    // The scheme's name is case-insensitive.
    for header in [
        "Authorization: bearer correct horse\r\n",
        "Authorization: BEARER correct horse\r\n",
    ] {
        let r = get(addr, "/heap/history", header);
        assert_eq!(status(&r), Some(200), "{header:?}: {r}");
    }
    let r = get(addr, "/?token=correct%20horse", "");
    assert_eq!(status(&r), Some(200), "{r}");
    assert!(r.contains("<html"));
    server.shutdown();
}

#[test]
fn connection_limit_holds_and_recovers() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let server = ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(None)
        .max_connections(64)
        .header_timeout(Duration::from_secs(60))
        .serve()
        .expect("serve");
    let addr = server.local_addr();

    // 1,000 client sockets plus the server's side need more than the usual
    // soft limit of 1,024 descriptors: raise it to the hard limit. Where
    // the hard limit is lower, fewer clients (still many times the 64
    // slots), leaving 128 descriptors to the rest of the test binary.
    // SAFETY: getrlimit/setrlimit write and read a valid local struct.
    let descriptors = unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            1024
        } else {
            if lim.rlim_cur < 4096 {
                lim.rlim_cur = lim.rlim_max.min(4096);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            }
            lim.rlim_cur
        }
    };
    let clients = (descriptors.saturating_sub(128) / 2).min(1000) as usize;
    assert!(
        clients >= 256,
        "{descriptors} descriptors: too few for the test"
    );

    // The application keeps allocating while the clients pile up.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let app = {
        let (stop, rounds) = (Arc::clone(&stop), Arc::clone(&rounds));
        std::thread::spawn(move || {
            let mut held: Vec<Vec<u8>> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                held.push(vec![1u8; 4096]);
                if held.len() > 256 {
                    held.clear();
                }
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let idle: Vec<TcpStream> = (0..clients)
        .map(|_| TcpStream::connect(addr).expect("connect idle"))
        .collect();
    let rounds_during_flood = rounds.load(Ordering::Relaxed);
    // The last connections are over the limit: they get a 503 and a close.
    let mut last = idle.last().unwrap().try_clone().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = String::new();
    let _ = last.read_to_string(&mut buf);
    assert_error(&buf, 503, &["connections"]);
    // A new request is refused too while the slots are held.
    let r = get(addr, "/heap/history", "");
    assert_eq!(status(&r), Some(503), "{r}");

    drop(last);
    drop(idle);
    // Slots come back as the server sees the closes: poll, bounded.
    assert!(
        until_status(addr, 200),
        "the server did not recover after the idle clients left"
    );
    // The application was never stalled by the flood.
    assert!(
        rounds.load(Ordering::Relaxed) > rounds_during_flood && rounds_during_flood > 0,
        "the application stopped allocating during the flood"
    );
    stop.store(true, Ordering::Relaxed);
    app.join().unwrap();
    server.shutdown();
}

#[test]
fn requests_to_other_host_names_are_refused() {
    // A web page that makes its own name resolve to 127.0.0.1 (DNS
    // rebinding) reaches the endpoint with its own name in `Host`.
    let server = ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(None)
        .allow_host("Heap.Internal")
        .serve()
        .expect("serve");
    let addr = server.local_addr();
    let port = addr.port();
    let with_host = |target: &str, host: &str| {
        exchange(
            addr,
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    };

    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        "127.0.0.1.nip.io".to_string(),
        "localhost.evil.example".to_string(),
        "10.0.0.1".to_string(),
    ] {
        let r = with_host("/heap", &host);
        assert_error(&r, 403, &["DNS rebinding"]);
        assert!(!r.contains("callsites"), "{r}");
    }
    // A Host that is not `host[:port]`, two of them, or none in HTTP/1.1:
    // 400 (RFC 9112, section 3.2), before the host check.
    for host in [
        "not a host name",
        "localhost:abc",
        "user@localhost",
        "localhost:70000",
    ] {
        let r = with_host("/heap", host);
        assert_error(&r, 400, &["Host", "not a host name or address"]);
        assert!(!r.contains("callsites"), "{r}");
    }
    let r = exchange(
        addr,
        b"GET /heap HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    );
    assert_error(&r, 400, &["more than one Host header"]);
    let r = exchange(addr, b"GET /heap HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_error(&r, 400, &["needs a Host header"]);
    // An absolute request target names a host too, held to the same
    // `host[:port]` as `Host`.
    let r = with_host("http://evil.example/heap", "localhost");
    assert_error(&r, 403, &["evil.example"]);
    for target in ["http://user@localhost/heap", "http://localhost:99999/heap"] {
        let r = with_host(target, "localhost");
        assert_error(&r, 400, &["request target's authority", "not a host name"]);
        assert!(!r.contains("callsites"), "{r}");
    }
    // An empty `Host` is valid HTTP (a target with no authority) but names
    // no loopback host.
    let r = with_host("/heap", "");
    assert_error(&r, 403, &["\"\" is not a loopback name"]);

    for host in [
        "localhost".to_string(),
        format!("LocalHost:{port}"),
        format!("127.0.0.1:{port}"),
        "127.3.2.1".to_string(),
        format!("[::1]:{port}"),
        "dashboard.localhost".to_string(),
        "heap.internal".to_string(),
        format!("HEAP.INTERNAL:{port}"),
    ] {
        let r = with_host("/heap/history", &host);
        assert_eq!(status(&r), Some(200), "{host}: {r}");
    }
    let r = with_host(
        &format!("http://127.0.0.1:{port}/heap/history"),
        "localhost",
    );
    assert_eq!(status(&r), Some(200), "{r}");
    // HTTP/1.0 clients may send no Host at all.
    let r = exchange(addr, b"GET /heap/history HTTP/1.0\r\n\r\n");
    assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
    server.shutdown();
}

#[test]
fn refused_connections_still_read_their_503() {
    let server = ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(None)
        .max_connections(2)
        .header_timeout(Duration::from_secs(60))
        .serve()
        .expect("serve");
    let addr = server.local_addr();
    // Two idle connections take both slots (the server answers the third
    // only once it has taken them: wait for a 503).
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    assert!(
        until_status(addr, 503),
        "the two idle connections never filled the slots"
    );

    // Clients over the limit that send their request at once and read the
    // answer a little later (as a busy client does): each must read the
    // whole 503, not a connection reset.
    let clients: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                s.write_all(b"GET /heap HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    .expect("send the request");
                std::thread::sleep(Duration::from_millis(200));
                let mut answer = Vec::new();
                let read = s.read_to_end(&mut answer);
                (
                    read.map_err(|e| e.kind()),
                    String::from_utf8_lossy(&answer).into_owned(),
                )
            })
        })
        .collect();
    for c in clients {
        let (read, answer) = c.join().unwrap();
        assert!(read.is_ok(), "{read:?} after reading {answer:?}");
        assert_error(&answer, 503, &["connections"]);
    }
    drop(held);
    assert!(until_status(addr, 200), "the slots did not come back");
    server.shutdown();
}

#[test]
fn a_client_that_stops_reading_loses_its_slot() {
    let server = ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(None)
        .max_connections(1)
        .write_timeout(Duration::from_millis(1500))
        .serve()
        .expect("serve");
    let addr = server.local_addr();

    // 2,000 pipelined requests for the dashboard page (tens of KiB each),
    // and never a read: the answers fill the socket buffers and the
    // server's writes wait.
    let mut stalled = TcpStream::connect(addr).expect("connect");
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut pipelined = Vec::with_capacity(request.len() * 2000);
    for _ in 0..2000 {
        pipelined.extend_from_slice(request);
    }
    stalled
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stalled.write_all(&pipelined);

    // While it holds the only slot, others are refused; once its writes
    // have waited 1.5 s, the server drops it and answers again (before
    // the write timeout, only the 2-minute age limit freed the slot).
    assert!(
        until_status(addr, 503),
        "the stalled client never held the slot"
    );
    assert!(until_status(addr, 200), "the stalled client kept the slot");
    drop(stalled);
    server.shutdown();
}

#[test]
fn allowed_host_names_that_cannot_match_are_refused() {
    for (host, why) in [
        ("heap.internal:8080", "without a port"),
        ("[::1]:8080", "without a port"),
        ("not a name", "not a host name"),
        ("", "not a host name"),
    ] {
        let e = ServerBuilder::new()
            .addr("127.0.0.1:0")
            .allow_host(host)
            .serve()
            .map(|s| s.shutdown())
            .expect_err(host);
        assert!(
            matches!(&e, heapwatch::Error::InvalidAllowedHost { host: h, .. } if h == host),
            "{host}: {e:?}"
        );
        assert!(e.to_string().contains(why), "{host}: {e}");
    }
    for host in ["heap.internal", "10.0.0.5", "[fd00::1]"] {
        let server = ServerBuilder::new()
            .addr("127.0.0.1:0")
            .allow_host(host)
            .serve()
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        server.shutdown();
    }
}

/// `serve` of `builder` on a free loopback port.
fn serve_any_port(builder: ServerBuilder) -> Result<ServerHandle, heapwatch::Error> {
    builder.addr("127.0.0.1:0").serve()
}

/// What `serve` says to `builder` on a free loopback port, which must
/// refuse it (`what` names the case).
fn refused(builder: ServerBuilder, what: &str) -> heapwatch::Error {
    serve_any_port(builder)
        .map(|s| s.shutdown())
        .expect_err(what)
}

/// Tokens that would protect nothing, or that no client could send, are
/// refused by `serve`, whether given or read from `HEAPWATCH_TOKEN`.
#[test]
fn empty_tokens_are_refused() {
    use heapwatch::Error::{EmptyToken, UnsendableToken};
    const CHILD: &str = "HEAPWATCH_TEST_TOKEN_CHILD";
    match std::env::var(CHILD).as_deref() {
        Ok("blank") => {
            let e = refused(ServerBuilder::new(), "a HEAPWATCH_TOKEN of only whitespace");
            assert!(matches!(e, EmptyToken { from_env: true }), "{e:?}");
            assert!(e.to_string().contains("HEAPWATCH_TOKEN"), "{e}");
            // `token(None)` does not read the variable.
            let s = serve_any_port(ServerBuilder::new().token(None))
                .expect("token(None) serves without a token");
            assert_good(s.local_addr(), "token(None)");
            s.shutdown();
            return;
        }
        Ok("newline") => {
            let e = refused(
                ServerBuilder::new(),
                "a HEAPWATCH_TOKEN ending in a newline",
            );
            assert!(matches!(e, UnsendableToken { from_env: true, .. }), "{e:?}");
            assert!(e.to_string().contains("HEAPWATCH_TOKEN"), "{e}");
            return;
        }
        Ok("empty") => {
            // Set but empty: no token, as documented.
            let s = serve_any_port(ServerBuilder::new())
                .expect("an empty HEAPWATCH_TOKEN means no token");
            assert_good(s.local_addr(), "an empty HEAPWATCH_TOKEN");
            s.shutdown();
            return;
        }
        Ok(mode @ ("set" | "non_utf8")) => {
            // A token that is not UTF-8 is still a token (it was ignored,
            // and the endpoint served without one).
            let s = serve_any_port(ServerBuilder::new()).expect("serve with the variable's token");
            let r = get(s.local_addr(), "/heap/history", "");
            assert_error(&r, 401, &["token"]);
            let token: &[u8] = if mode == "set" {
                b"from env"
            } else {
                b"tok\xff"
            };
            let request = [
                &b"GET /heap/history HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "[..],
                token,
                b"\r\nConnection: close\r\n\r\n",
            ]
            .concat();
            let r = exchange(s.local_addr(), &request);
            assert_eq!(status(&r), Some(200), "{r}");
            s.shutdown();
            return;
        }
        _ => {}
    }
    // Empty or only whitespace: refused, not read as "no token"
    // (`token(Some(""))` served without authentication). One no client
    // could send: refused (it answered every request with 401).
    for (token, unsendable, says) in [
        ("", false, "pass None"),
        (" ", false, "pass None"),
        ("\t \r\n", false, "pass None"),
        ("s3cret\n", true, "whitespace"),
        (" s3cret", true, "whitespace"),
        ("s3cret\t", true, "whitespace"),
        ("s3\ncret", true, "control character"),
        ("s3\u{1}cret", true, "control character"),
        ("s3\u{7f}cret", true, "control character"),
    ] {
        let e = refused(ServerBuilder::new().token(Some(token.to_string())), token);
        let right_kind = if unsendable {
            matches!(
                e,
                UnsendableToken {
                    from_env: false,
                    ..
                }
            )
        } else {
            matches!(e, EmptyToken { from_env: false })
        };
        assert!(right_kind, "{token:?}: {e:?}");
        assert!(e.to_string().contains(says), "{token:?}: {e}");
    }
    // The environment variable's cases run in child processes of this
    // test, since the other tests here read the variable.
    for (value, mode) in [
        ("tok\n".into(), "newline"),
        (" \t ".into(), "blank"),
        ("".into(), "empty"),
        ("from env".into(), "set"),
        (
            std::ffi::OsString::from_vec(b"tok\xff".to_vec()),
            "non_utf8",
        ),
    ] {
        common::pass_in_child(
            "empty_tokens_are_refused",
            CHILD,
            mode,
            "HEAPWATCH_TOKEN",
            value,
        );
    }
}
