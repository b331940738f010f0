//! The `heapwatch` command-line tool against a real endpoint in this
//! process: `get`, `diff`, `top`, exit codes and error messages.
#![cfg(feature = "cli")]

use std::hint::black_box;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Output};

use heapwatch::{Sampling, ServerBuilder, ServerHandle, Snapshot, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::All);

/// The allocation `heapwatch diff` must find: 64 blocks of 16 KiB kept.
#[inline(never)]
fn grow_here(kept: &mut Vec<Vec<u8>>) {
    for i in 0..64u8 {
        kept.push(black_box(vec![i; 16 * 1024]));
    }
}

fn server(token: Option<&str>) -> ServerHandle {
    ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(token.map(str::to_string))
        .serve()
        .expect("start the endpoint")
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Runs the CLI with `args`, without a token from the environment.
fn cli(args: &[&str]) -> Output {
    cli_env(args, None)
}

fn cli_env(args: &[&str], token_env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_heapwatch"));
    cmd.args(args).env_remove("HEAPWATCH_TOKEN");
    // Requests to a server get a minute, not the default 5 s: a debug
    // build's first snapshot on a loaded machine must not fail a test.
    let to_a_server = matches!(args, ["get" | "top", url, ..] if url.starts_with("http://"));
    let given = |a: &&str| a.starts_with("--timeout") || ["--help", "-h"].contains(a);
    if to_a_server && !args.iter().any(given) {
        cmd.args(["--timeout", "60"]);
    }
    if let Some(t) = token_env {
        cmd.env("HEAPWATCH_TOKEN", t);
    }
    cmd.output().expect("run heapwatch")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

/// A fresh path under cargo's per-target temp dir.
fn temp_file(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// A loopback port nothing listens on, held by a socket that is bound and
/// never listens (a released port could be taken by a parallel test or
/// another program; connecting to this one is always refused). The port
/// stays held while the returned descriptor lives.
fn closed_port() -> (SocketAddr, OwnedFd) {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: sin is a valid sockaddr_in and len its size; bind only reads
    // it and getsockname writes at most len bytes into it.
    unsafe {
        let sa = (&raw mut sin).cast::<libc::sockaddr>();
        assert_eq!(libc::bind(fd.as_raw_fd(), sa, len), 0, "bind");
        assert_eq!(libc::getsockname(fd.as_raw_fd(), sa, &mut len), 0);
    }
    let port = u16::from_be(sin.sin_port);
    (SocketAddr::from(([127, 0, 0, 1], port)), fd)
}

#[test]
fn get_twice_then_diff_names_the_growing_function() {
    let srv = server(None);
    let (a, b) = (temp_file("base.json"), temp_file("new.json"));

    let out = cli(&["get", &url(srv.local_addr()), "-o", a.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("saved snapshot"), "{}", stdout(&out));

    let mut kept = Vec::new();
    grow_here(&mut kept);

    let out = cli(&[
        "get",
        &url(srv.local_addr()),
        "--output",
        b.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let base = Snapshot::load(&a).expect("get wrote a snapshot");
    let new = Snapshot::load(&b).expect("get wrote a snapshot");
    assert!(new.id > base.id);
    assert_eq!(base.run_id, new.run_id);

    let out = cli(&[
        "diff",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--top",
        "100",
    ]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(text.contains("same process"), "{text}");
    assert!(text.contains("live bytes"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains("grow_here"))
        .unwrap_or_else(|| panic!("grow_here is not in the diff:\n{text}"));
    let delta = row.split_whitespace().next().unwrap();
    assert!(delta.starts_with('+'), "live delta of {row:?}");
    // At least the 1 MiB it keeps (the Vec of Vecs adds a little).
    assert!(row.trim_start().starts_with("+1.0 MiB"), "{row:?}");
    assert!(row.contains("tests/cli.rs:"), "{row:?}");
    drop(kept);
    srv.shutdown();
}

#[test]
fn get_writes_pretty_json_to_stdout_and_honors_the_query() {
    let srv = server(None);
    let out = cli(&["get", &format!("{}/heap?top=1", url(srv.local_addr()))]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("{\n  \"version\": 1,"), "{text}");
    let snap = Snapshot::from_json(&text).unwrap();
    assert!(snap.callsites.len() <= 1);
    srv.shutdown();
}

#[test]
fn top_with_count_prints_two_status_lines_and_exits_0() {
    let srv = server(None);
    let out = cli(&[
        "top",
        &url(srv.local_addr()),
        "--count",
        "2",
        "--interval",
        "0.1",
        "--top",
        "3",
    ]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{}\n{text}", stderr(&out));
    let status: Vec<&str> = text.lines().filter(|l| l.contains("latency ")).collect();
    assert_eq!(status.len(), 2, "{text}");
    for line in status {
        assert!(line.contains(" UTC  live "), "{line}");
        assert!(line.contains("peak "), "{line}");
        assert!(line.contains("budget "), "{line}");
    }
    // Not a terminal: no escape codes, tables separated by a line.
    assert!(!text.contains('\x1b'), "{text:?}");
    assert!(text.contains("\n-----"), "{text}");
    srv.shutdown();
}

#[test]
fn unreachable_endpoint_is_a_runtime_error() {
    let (addr, _held) = closed_port();
    for args in [vec!["get", "URL"], vec!["top", "URL", "--count", "1"]] {
        let u = url(addr);
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "URL" { u.as_str() } else { a })
            .collect();
        let out = cli(&args);
        let err = stderr(&out);
        assert_eq!(code(&out), 1, "{args:?}: {err}");
        assert!(err.starts_with("heapwatch: "), "{err}");
        assert!(err.contains(&format!("cannot connect to {addr}")), "{err}");
        assert!(stdout(&out).is_empty());
    }
}

#[test]
fn http_errors_and_non_snapshots_are_runtime_errors() {
    let srv = server(None);
    let base = url(srv.local_addr());
    let out = cli(&["get", &format!("{base}/nope")]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("HTTP 404"), "{}", stderr(&out));

    let out = cli(&["get", &format!("{base}/heap?top=zero")]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("HTTP 400"), "{}", stderr(&out));
    assert!(stderr(&out).contains("top"), "{}", stderr(&out));

    let out = cli(&["get", &format!("{base}/metrics")]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("not a heapwatch snapshot"),
        "{}",
        stderr(&out)
    );
    srv.shutdown();
}

#[test]
fn bearer_token_from_flag_or_environment() {
    let srv = server(Some("s3cret"));
    let u = url(srv.local_addr());

    let out = cli(&["get", &u]);
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(err.contains("HEAPWATCH_TOKEN"), "{err}");

    let out = cli(&["get", &u, "--token", "wrong"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("refused"), "{}", stderr(&out));

    let out = cli(&["get", &u, "--token", "s3cret"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(Snapshot::from_json(&stdout(&out)).is_ok());

    let out = cli_env(&["get", &u], Some("s3cret"));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    srv.shutdown();
}

#[test]
fn bad_snapshot_files_are_runtime_errors_naming_the_file() {
    let good = temp_file("good.json");
    let snap = heapwatch::snapshot();
    snap.save(&good).unwrap();
    let good = good.to_str().unwrap().to_string();

    let corrupt = temp_file("corrupt.json");
    std::fs::write(&corrupt, "{\"version\": 1, \"id\": ").unwrap();
    let foreign = temp_file("foreign.json");
    std::fs::write(&foreign, "{\"hello\": \"world\"}").unwrap();
    let future = temp_file("future.json");
    std::fs::write(&future, "{\"version\": 99}").unwrap();
    let missing = temp_file("missing.json");
    let empty = temp_file("empty.json");
    std::fs::write(&empty, "").unwrap();
    let gzipped = temp_file("heap.pb.gz");
    std::fs::write(&gzipped, [0x1f, 0x8b, 0x08, 0x00, 0xff, 0xfe]).unwrap();
    let binary = temp_file("binary.bin");
    std::fs::write(&binary, [0x00, 0xc3, 0x28, 0xff]).unwrap();

    for (file, why) in [
        (&corrupt, "not a heapwatch snapshot"),
        (&empty, "the input is empty"),
        (&gzipped, "gzip-compressed (a pprof profile?)"),
        (&binary, "not UTF-8 text"),
        (&foreign, "missing field `version`"),
        (&future, "unsupported snapshot version 99"),
        (&missing, "No such file"),
    ] {
        let f = file.to_str().unwrap();
        for args in [["diff", f, &good], ["diff", &good, f]] {
            let out = cli(&args);
            let err = stderr(&out);
            assert_eq!(code(&out), 1, "{args:?}: {err}");
            assert!(err.starts_with("heapwatch: "), "{err}");
            assert!(err.contains(f), "names the file: {err}");
            assert!(err.contains(why), "{err}");
            assert!(stdout(&out).is_empty(), "{}", stdout(&out));
        }
    }

    // The good file against itself: nothing grew.
    let out = cli(&["diff", &good, &good]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("no callsite's live bytes grew"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["--bogus"],
        &["diff"],
        &["diff", "only-one.json"],
        &["diff", "a.json", "b.json", "c.json"],
        &["diff", "a.json", "b.json", "--top", "0"],
        &["diff", "a.json", "b.json", "--top"],
        &["diff", "a.json", "b.json", "--bogus"],
        &["get"],
        &["get", "https://127.0.0.1:1/heap"],
        &["get", "http://127.0.0.1:1", "--timeout", "soon"],
        &["top", "http://127.0.0.1:1", "--count", "0"],
        &["top", "http://127.0.0.1:1", "--interval", "0"],
        &["help", "frobnicate"],
    ] {
        let out = cli(args);
        let err = stderr(&out);
        assert_eq!(code(&out), 2, "{args:?}: {err}");
        assert!(err.starts_with("heapwatch: "), "{args:?}: {err}");
        assert!(err.contains("--help"), "{args:?} points to the help: {err}");
        assert!(stdout(&out).is_empty());
    }
    let err = stderr(&cli(&["diff", "only-one.json"]));
    assert!(err.contains("missing NEW.json"), "{err}");
}

#[test]
fn help_exits_0_and_documents_exit_codes() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["help"],
        &["help", "diff"],
        &["diff", "--help"],
        &["get", "--help"],
        &["top", "-h"],
    ] {
        let out = cli(args);
        let text = stdout(&out);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        assert!(text.contains("Usage:"), "{args:?}: {text}");
        assert!(text.contains("Exit codes"), "{args:?}: {text}");
    }
    let out = cli(&["--version"]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).starts_with("heapwatch "));
}

#[test]
fn diff_names_how_each_side_was_sampled() {
    // Two snapshots sampled by bytes at different intervals.
    let mut v = serde_json::to_value(heapwatch::snapshot()).unwrap();
    v["mode"] = "bytes".into();
    v["sample_interval_bytes"] = (64u64 << 10).into();
    let base = temp_file("base-64k.json");
    std::fs::write(&base, v.to_string()).unwrap();
    v["sample_interval_bytes"] = (512u64 << 10).into();
    let new = temp_file("new-512k.json");
    std::fs::write(&new, v.to_string()).unwrap();

    let out = cli(&["diff", base.to_str().unwrap(), new.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "estimates, sampled every 512.0 KiB; BASE was sampled differently \
             (estimates, sampled every 64.0 KiB)"
        ),
        "{text}"
    );
}

#[test]
fn diff_says_how_many_callsites_a_truncated_file_kept_out_of_the_comparison() {
    let mut kept = Vec::new();
    grow_here(&mut kept);
    let full = heapwatch::snapshot();
    let n = full.callsites.len();
    assert!(n >= 2, "{n} callsites");
    let mut top1 = full.clone();
    top1.truncate_callsites(1);
    let base = temp_file("base-top1.json");
    std::fs::write(&base, serde_json::to_string(&top1).unwrap()).unwrap();
    let new = temp_file("new-full.json");
    std::fs::write(&new, serde_json::to_string(&full).unwrap()).unwrap();

    let out = cli(&["diff", base.to_str().unwrap(), new.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("note: {} callsite", n - 1)) && text.contains("not compared"),
        "{text}"
    );
    assert!(
        text.contains("0 new, 0 gone"),
        "nothing is new or gone: {text}"
    );
    drop(kept);
}
