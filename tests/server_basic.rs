//! Every route over real HTTP: status, content type, the JSON contract.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use heapwatch::{ServerBuilder, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> = Tracker::new(std::alloc::System);

#[inline(never)]
fn grow_for_diff() -> Vec<u8> {
    std::hint::black_box(vec![7; 1 << 20])
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn get(addr: SocketAddr, target: &str) -> Reply {
    raw(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// How long a client waits for a response: 30 s, or HEAPWATCH_TEST_TIMEOUT_SECS
/// (scripts/valgrind.sh sets it: there the first snapshot, which parses the
/// binary's debug info to symbolize, takes minutes).
fn read_timeout() -> Duration {
    Duration::from_secs(env_u64("HEAPWATCH_TEST_TIMEOUT_SECS", 30))
}

/// The number in environment variable `name`, or `default` when it is unset
/// or not a number (scripts/valgrind.sh sets the test's slow-mode knobs).
fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(read_timeout())).unwrap();
    s.write_all(request).expect("write request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read response");
    parse(&buf)
}

fn parse(buf: &[u8]) -> Reply {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        b = &b[nl + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[inline(never)]
fn keep_some_memory() -> Vec<Vec<u8>> {
    (0..64).map(|i| vec![i as u8; 16 * 1024]).collect()
}

#[test]
fn routes_history_diff_and_shutdown() {
    heapwatch::set_sampling(heapwatch::Sampling::All);
    let kept = keep_some_memory();
    // 50 ms keeps the test short. Under valgrind (~50x slower) a snapshot
    // takes longer than that to build, so the history task would never let
    // a request through: scripts/valgrind.sh sets a slower interval.
    let interval_ms = env_u64("HEAPWATCH_TEST_HISTORY_MS", 50);
    let server = ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(None)
        .history_interval(Duration::from_millis(interval_ms))
        // 1,000 intervals: ids stay retained far longer than the test runs.
        .history_len(1000)
        // Every callsite in every retained snapshot: a base cut to the
        // default 256 could not call grow_for_diff's callsite new, and
        // exact mode in this binary already has 110-120 (with the parallel
        // test's): half the default, and growing with the tests.
        .history_callsites(100_000)
        // 20 intervals: a verdict needs points spanning a tenth of it.
        .leak_window(Duration::from_millis(interval_ms * 20))
        .serve()
        .expect("serve");
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);

    // /heap: the contract fields.
    let r = get(addr, "/heap");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let heap = r.json();
    for key in [
        "version",
        "id",
        "taken_at_ms",
        "uptime_ms",
        "mode",
        "sample_interval_bytes",
        "totals",
        "callsites",
        "unattributed",
        "allocator",
        "process",
    ] {
        assert!(heap.get(key).is_some(), "/heap lacks {key}");
    }
    assert!(heap["totals"]["live_bytes"].as_u64().unwrap() >= 64 * 16 * 1024);
    assert!(heap["callsites"].as_array().unwrap().len() > 2);

    // top and sort.
    let r = get(addr, "/heap?top=2&sort=allocations");
    assert_eq!(r.status, 200);
    let sites = r.json()["callsites"].as_array().unwrap().clone();
    assert_eq!(sites.len(), 2);
    assert!(sites[0]["allocations"].as_u64() >= sites[1]["allocations"].as_u64());
    let r = get(addr, "/heap?sort=allocated_bytes");
    let sites = r.json()["callsites"].as_array().unwrap().clone();
    for w in sites.windows(2) {
        assert!(w[0]["allocated_bytes"].as_u64() >= w[1]["allocated_bytes"].as_u64());
    }
    let r = get(addr, "/heap?top=1");
    assert_eq!(r.json()["callsites"].as_array().unwrap().len(), 1);

    // History grows: poll (bounded) until two entries.
    let mut hist = serde_json::Value::Null;
    for _ in 0..400.max(interval_ms * 3 / 25) {
        let r = get(addr, "/heap/history");
        assert_eq!(r.status, 200);
        hist = r.json();
        if hist["snapshots"].as_array().unwrap().len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let snaps = hist["snapshots"].as_array().unwrap();
    assert!(snaps.len() >= 2, "history did not grow: {hist}");
    assert_eq!(hist["interval_ms"], interval_ms);
    assert_eq!(hist["capacity"], 1000);
    for s in snaps {
        for key in [
            "id",
            "taken_at_ms",
            "uptime_ms",
            "totals",
            "callsites_omitted",
        ] {
            assert!(s.get(key).is_some(), "history entry lacks {key}");
        }
        // `history_callsites` above keeps every callsite.
        assert_eq!(s["callsites_omitted"], 0, "{s}");
    }
    assert!(snaps[1]["id"].as_u64() > snaps[0]["id"].as_u64());

    // Diff against the newest retained snapshots (older ones may be evicted
    // by the time the request lands: the ring is short and fast here).
    let hist = get(addr, "/heap/history").json();
    let snaps = hist["snapshots"].as_array().unwrap();
    let first = snaps[snaps.len() - 2]["id"].as_u64().unwrap();
    let second = snaps[snaps.len() - 1]["id"].as_u64().unwrap();
    assert!(second > first);

    // Diff against "now" and between two retained snapshots. The process's
    // live bytes also move with this test's own earlier responses being
    // freed, so check the callsite that grew: exact mode, exact delta.
    let grown = grow_for_diff();
    let r = get(addr, &format!("/heap/diff?base={first}"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let d = r.json();
    assert_eq!(d["base_id"].as_u64(), Some(first));
    assert!(d["to_id"].as_u64().unwrap() > first);
    let grew = d["callsites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["frames"][0]["function"]
                .as_str()
                .is_some_and(|f| f.ends_with("grow_for_diff"))
        })
        .expect("the diff names the callsite that grew");
    assert_eq!(grew["live_bytes_delta"].as_i64(), Some(1 << 20), "{grew}");
    assert_eq!(grew["change"], "new");
    let r = get(addr, &format!("/heap/diff?base={first}&to={second}&top=3"));
    assert_eq!(r.status, 200);
    let d = r.json();
    assert_eq!(d["to_id"].as_u64(), Some(second));
    assert!(d["callsites"].as_array().unwrap().len() <= 3);
    // Frames are put back on history snapshots.
    if let Some(c) = d["callsites"].as_array().unwrap().first() {
        assert!(!c["frames"].as_array().unwrap().is_empty());
    }
    drop(grown);

    // Unknown id: 404 naming the retained ids.
    let r = get(addr, "/heap/diff?base=999999999");
    assert_eq!(r.status, 404);
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("999999999"), "{msg}");
    assert!(msg.contains("retained ids"), "{msg}");
    let newest = get(addr, "/heap/history").json()["snapshots"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    assert!(
        msg.contains(&newest.to_string()) || msg.contains(".."),
        "{msg}"
    );
    let r = get(addr, "/heap/diff");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("base"));

    // Leaks. Slopes need two points at distinct times; a fast build can
    // get here with two snapshots taken in the same millisecond, so wait
    // (bounded) for the history to span some time.
    let deadline = std::time::Instant::now()
        + Duration::from_secs(10).max(Duration::from_millis(interval_ms * 10));
    let (r, l) = loop {
        let r = get(addr, "/heap/leaks");
        let l = r.json();
        if l["enough_data"] == true || std::time::Instant::now() > deadline {
            break (r, l);
        }
        std::thread::sleep(Duration::from_millis(interval_ms));
    };
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    for key in [
        "window_ms",
        "points",
        "enough_data",
        "process",
        "callsites",
        "budget",
    ] {
        assert!(l.get(key).is_some(), "/heap/leaks lacks {key}");
    }
    assert_eq!(l["window_ms"], interval_ms * 20);
    // The interval is at least 10 ms (ServerBuilder clamps it).
    assert_eq!(l["history_span_ms"], interval_ms.max(10) * 999);
    assert!(l["points"].as_u64().unwrap() >= 2);
    assert_eq!(l["enough_data"], true);
    assert!(l["budget"].get("level").is_some());
    assert!(l["process"].get("severity").is_some());

    // pprof.
    for (path, file) in [
        ("/debug/pprof/heap", "heap.pb.gz"),
        ("/debug/pprof/allocs?gc=1&debug=0", "allocs.pb.gz"),
    ] {
        let r = get(addr, path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert_eq!(
            r.header("content-disposition"),
            Some(format!("attachment; filename=\"{file}\"").as_str())
        );
        assert_eq!(&r.body[..2], &[0x1f, 0x8b], "{path} is not gzip");
    }
    let r = get(addr, "/debug/pprof/heap?seconds=30");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("seconds"));

    // Prometheus.
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("# TYPE"), "{text}");

    // Flamegraph.
    let r = get(addr, "/heap/flamegraph.svg");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/svg+xml"));
    assert!(String::from_utf8_lossy(&r.body).contains("<svg"));

    // Dashboard: self-contained HTML.
    let r = get(addr, "/");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.header("content-security-policy").is_some());
    let html = String::from_utf8(r.body).unwrap();
    assert!(html.contains("/heap/history") && html.contains("/heap/leaks"));
    for external in [
        "src=\"http",
        "href=\"http",
        "https://",
        "@import",
        "url(http",
    ] {
        assert!(
            !html.contains(external),
            "dashboard must not load external assets ({external})"
        );
    }

    // Keep-alive: two requests on one connection.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(read_timeout())).unwrap();
    s.write_all(b"GET /heap/history HTTP/1.1\r\nHost: localhost\r\n\r\nGET /heap/history HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&buf)
            .matches("HTTP/1.1 200")
            .count(),
        2
    );

    // Shutdown joins the server: the port no longer accepts.
    server.shutdown();
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "server still accepting after shutdown"
    );
    assert!(heapwatch::stats().live_bytes > 0);
    drop(kept);
}

#[test]
fn bind_errors_are_synchronous() {
    let first = heapwatch::serve("127.0.0.1:0").expect("serve");
    let taken = first.local_addr();
    let err = heapwatch::serve(taken).expect_err("port in use");
    assert!(matches!(err, heapwatch::Error::Io { .. }), "{err}");
    assert!(std::error::Error::source(&err).is_some(), "source kept");

    let err = ServerBuilder::new()
        .addr("0.0.0.0:0")
        .serve()
        .expect_err("non-loopback refused");
    assert!(
        matches!(err, heapwatch::Error::NonLoopbackAddress { .. }),
        "{err}"
    );
    let ok = ServerBuilder::new()
        .addr("0.0.0.0:0")
        .allow_non_loopback(true)
        .token(Some("t".into()))
        .serve()
        .expect("explicitly allowed");
    drop(ok); // Drop stops it too.
    first.shutdown();
    assert!(TcpStream::connect_timeout(&taken, Duration::from_secs(2)).is_err());
}

/// A history too short for the leak window says so: the report carries the
/// span it covers on schedule, and the dashboard tells "too short" from
/// "not yet".
#[test]
fn a_history_too_short_for_the_leak_window_says_so() {
    let server = ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(None)
        .history_interval(Duration::from_secs(1))
        .history_len(3)
        // The default window, 5 minutes: a rate needs 30 s of history.
        .serve()
        .expect("serve");
    let r = get(server.local_addr(), "/heap/leaks");
    assert_eq!(r.status, 200);
    let l = r.json();
    assert_eq!(l["window_ms"], 300_000);
    assert_eq!(l["history_span_ms"], 2_000);
    assert_eq!(l["enough_data"], false);
    let page = get(server.local_addr(), "/");
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("history_span_ms"), "the dashboard reads it");
    server.shutdown();
}
