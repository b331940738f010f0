//! The HTTP endpoint.
//!
//! [`serve`] (or [`ServerBuilder`]) binds a `std` listener on the caller's
//! thread, so a bad address fails at once, then serves from one background
//! thread named `heapwatch-http` that runs its own current-thread tokio
//! runtime and hyper 1.x: the host program needs no async runtime. A second
//! thread, `heapwatch-snap`, builds the snapshots. Both run under
//! heapwatch's reentrancy guard from their first instruction (they are not
//! `std` threads, which allocate as they start: see `src/threads.rs`), so
//! everything the server allocates is counted as heapwatch's overhead, not
//! as the program's, and is never refused by the budget.
//!
//! Routes are listed in `docs/ENDPOINTS.md`. Heap data is sensitive: the
//! server binds loopback unless told otherwise, and can require a bearer
//! token ([`ServerBuilder::token`], or the `HEAPWATCH_TOKEN` environment
//! variable). Bound to loopback, it answers only requests addressed to a
//! loopback name (`localhost`, `127.0.0.1`, `[::1]`, or names added with
//! [`ServerBuilder::allow_host`]), so that a web page cannot read it by
//! making its own name resolve to 127.0.0.1 (DNS rebinding): others get
//! `403`.
//!
//! The endpoint's limits (connections, sizes, timeouts, history) are
//! documented on [`ServerBuilder`], in the public docs.

mod routes;
mod stall;
mod state;

use std::convert::Infallible;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::ffi::OsStringExt;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::budget::never_refused;
use crate::error::Error;
use crate::guard::{untracked, Guard};
use crate::leaks::LeakThresholds;
use crate::threads::{self, Mode, OwnThread};
use state::{build_snapshots, BuildRequest, Config, State};

/// Request line plus headers, at most.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A connection is asked to close after this long, busy or not.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(120);
/// How long in-flight requests get to finish on shutdown.
const GRACE: Duration = Duration::from_secs(1);
/// How long a connection refused with `503` is read from before it closes.
const BUSY_LINGER: Duration = Duration::from_secs(1);
/// Refused connections read from at once, at least (else the limit).
const BUSY_MIN: usize = 64;
/// Sent to connections over the limit.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
connection: close\r\n\
retry-after: 1\r\n\
content-length: 58\r\n\
\r\n\
{\"error\":\"too many connections to the heapwatch endpoint\"}";

/// Starts the HTTP endpoint on `addr` with the default settings (see
/// [`ServerBuilder`], which also lists the endpoint's limits). The address must be loopback; `HEAPWATCH_TOKEN`, if
/// set and not empty, is required as a bearer token (one of only
/// whitespace is refused: see [`ServerBuilder::token`]). The server runs until
/// the returned [`ServerHandle`] is dropped or shut down.
///
/// # Errors
///
/// [`Error::Io`] when the address does not resolve or cannot be bound, or
/// the server thread cannot start; [`Error::NonLoopbackAddress`] for an
/// address other than loopback; [`Error::EmptyToken`] for a
/// `HEAPWATCH_TOKEN` of only whitespace.
///
/// # Example
///
/// ```
/// #[global_allocator]
/// static GLOBAL: heapwatch::Tracker<std::alloc::System> =
///     heapwatch::Tracker::new(std::alloc::System);
///
/// fn main() -> Result<(), heapwatch::Error> {
///     use std::io::{Read, Write};
///
///     let server = heapwatch::serve("127.0.0.1:0")?;
///     let mut conn = std::net::TcpStream::connect(server.local_addr()).unwrap();
///     conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
///         .unwrap();
///     let mut response = String::new();
///     conn.read_to_string(&mut response).unwrap();
///     assert!(response.starts_with("HTTP/1.1 200"));
///     server.shutdown();
///     Ok(())
/// }
/// ```
pub fn serve(addr: impl ToSocketAddrs) -> Result<ServerHandle, Error> {
    ServerBuilder::new().addr(addr).serve()
}

/// Settings for the HTTP endpoint; [`ServerBuilder::serve`] starts it.
///
/// # Limits
///
/// - at most [`ServerBuilder::max_connections`] connections (64); others
///   get `503`, then their requests are read and dropped until they close,
///   for at most 1 s (closing with a request unread would reset the
///   connection, and the client could lose the `503`); past as many again
///   (at least 64), the `503` is sent and the connection closed at once;
/// - request line and headers at most 16 KiB (hyper answers `431`);
/// - headers must arrive within [`ServerBuilder::header_timeout`] (5 s),
///   which also closes keep-alive connections idle that long; a write that
///   makes no progress for [`ServerBuilder::write_timeout`] (10 s: the
///   client stopped reading) closes the connection; a connection lives at
///   most 2 minutes;
/// - request bodies are refused (`413`);
/// - history: [`ServerBuilder::history_len`] snapshots (360), each keeping
///   its [`ServerBuilder::history_callsites`] largest callsites by live bytes
///   (256), without their frames (frames are kept once per callsite): at
///   most about 12 MB at the defaults.
///
/// # Example
///
/// ```
/// use std::time::Duration;
///
/// #[global_allocator]
/// static GLOBAL: heapwatch::Tracker<std::alloc::System> =
///     heapwatch::Tracker::new(std::alloc::System);
///
/// fn main() -> Result<(), heapwatch::Error> {
///     let server = heapwatch::ServerBuilder::new()
///         .addr("127.0.0.1:0")
///         .token(Some("s3cret".to_string()))
///         .history_interval(Duration::from_secs(5))
///         .history_len(720)
///         .leak_window(Duration::from_secs(600))
///         .serve()?;
///     println!("heapwatch at http://{}/?token=s3cret", server.local_addr());
///     server.shutdown();
///
///     // Non-loopback addresses must be allowed explicitly.
///     let refused = heapwatch::ServerBuilder::new().addr("0.0.0.0:0").serve();
///     assert!(matches!(refused, Err(heapwatch::Error::NonLoopbackAddress { .. })));
///     Ok(())
/// }
/// ```
#[must_use = "a ServerBuilder does nothing until .serve() is called"]
pub struct ServerBuilder {
    addrs: Result<Vec<SocketAddr>, io::Error>,
    token: Option<Option<String>>,
    history_interval: Duration,
    history_len: usize,
    history_callsites: usize,
    max_connections: usize,
    header_timeout: Duration,
    write_timeout: Duration,
    leak_window: Duration,
    leak_thresholds: LeakThresholds,
    allow_non_loopback: bool,
    allowed_hosts: Vec<String>,
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("addrs", &self.addrs)
            .field(
                "token",
                &self
                    .token
                    .as_ref()
                    .map(|t| t.as_ref().map(|_| "<redacted>")),
            )
            .field("history_interval", &self.history_interval)
            .field("history_len", &self.history_len)
            .field("history_callsites", &self.history_callsites)
            .field("max_connections", &self.max_connections)
            .field("header_timeout", &self.header_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("leak_window", &self.leak_window)
            .field("leak_thresholds", &self.leak_thresholds)
            .field("allow_non_loopback", &self.allow_non_loopback)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder::new()
    }
}

impl ServerBuilder {
    /// The defaults: `127.0.0.1:0` (an ephemeral port: read it from
    /// [`ServerHandle::local_addr`]), token from `HEAPWATCH_TOKEN`, a
    /// snapshot every 10 s, 360 kept (an hour) with their 256 largest
    /// callsites, 64 connections, 5 s to send
    /// headers, leaks judged over 5 minutes with [`LeakThresholds::DEFAULT`],
    /// loopback only.
    pub fn new() -> ServerBuilder {
        never_refused(|| ServerBuilder {
            addrs: Ok(vec![SocketAddr::from(([127, 0, 0, 1], 0))]),
            token: None,
            history_interval: Duration::from_secs(10),
            history_len: 360,
            history_callsites: 256,
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            leak_window: Duration::from_secs(300),
            leak_thresholds: LeakThresholds::DEFAULT,
            allow_non_loopback: false,
            allowed_hosts: Vec::new(),
        })
    }

    /// The address to bind (resolved now; a resolution error is returned by
    /// [`serve`](ServerBuilder::serve)). Every address it resolves to must
    /// be loopback unless [`allow_non_loopback`](ServerBuilder::allow_non_loopback).
    pub fn addr(mut self, addr: impl ToSocketAddrs) -> ServerBuilder {
        self.addrs = never_refused(|| addr.to_socket_addrs().map(Iterator::collect));
        self
    }

    /// Require `Authorization: Bearer <token>` on every request (`None`: no
    /// token, even if `HEAPWATCH_TOKEN` is set). A token that is empty or
    /// only whitespace is not "no token": [`serve`](ServerBuilder::serve)
    /// refuses it with [`Error::EmptyToken`]; one that no client could send
    /// (whitespace at either end, such as a file's final newline, or a
    /// control character) with [`Error::UnsendableToken`].
    ///
    /// When never called, the token is read from the `HEAPWATCH_TOKEN`
    /// environment variable when the server starts: unset or empty, no
    /// token; only whitespace, [`Error::EmptyToken`]; any other value is the
    /// token (its bytes, which need not be UTF-8).
    ///
    /// The dashboard page (`/`) also accepts the token as `?token=`, since a
    /// browser cannot add the header to a page load; its script then sends
    /// the header on every request it makes and removes the token from the
    /// address bar.
    pub fn token(mut self, token: Option<String>) -> ServerBuilder {
        self.token = Some(token);
        self
    }

    /// How often the history takes a snapshot (default 10 s, at least
    /// 10 ms).
    pub fn history_interval(mut self, interval: Duration) -> ServerBuilder {
        self.history_interval = interval;
        self
    }

    /// How many snapshots the history keeps (default 360, at least 1).
    pub fn history_len(mut self, len: usize) -> ServerBuilder {
        self.history_len = len;
        self
    }

    /// How many callsites each retained snapshot keeps: the largest by live
    /// bytes (default 256). Bounds the history's memory; a callsite that
    /// keeps growing enters this set as it grows. `/heap` always has them
    /// all.
    pub fn history_callsites(mut self, n: usize) -> ServerBuilder {
        self.history_callsites = n;
        self
    }

    /// Connections served at once (default 64, at least 1); more get `503`.
    pub fn max_connections(mut self, n: usize) -> ServerBuilder {
        self.max_connections = n;
        self
    }

    /// How long a client has to send a request's headers, and how long a
    /// keep-alive connection may sit idle (default 5 s).
    pub fn header_timeout(mut self, timeout: Duration) -> ServerBuilder {
        self.header_timeout = timeout;
        self
    }

    /// How long a write to a client may make no progress before the
    /// connection is closed (default 10 s): a client that sends requests
    /// and stops reading the answers then frees its connection slot.
    pub fn write_timeout(mut self, timeout: Duration) -> ServerBuilder {
        self.write_timeout = timeout;
        self
    }

    /// The window `/heap/leaks` fits growth over (default 5 minutes).
    pub fn leak_window(mut self, window: Duration) -> ServerBuilder {
        self.leak_window = window;
        self
    }

    /// The growth rates that grade `/heap/leaks` (default 3/6/12/15 MiB per
    /// minute).
    pub fn leak_thresholds(mut self, thresholds: LeakThresholds) -> ServerBuilder {
        self.leak_thresholds = thresholds;
        self
    }

    /// Allow binding an address other than loopback (default `false`: heap
    /// data names the program's code and shows its memory use). Set a token
    /// too.
    pub fn allow_non_loopback(mut self, allow: bool) -> ServerBuilder {
        self.allow_non_loopback = allow;
        self
    }

    /// Also answer requests addressed to `host` (a name, without a port),
    /// besides the loopback names. Requests to a server bound to loopback
    /// must name `localhost`, a name under `.localhost`, or a loopback
    /// address in their `Host` header (or request target); others get
    /// `403`, which stops web pages from reading heap data through DNS
    /// rebinding. Add the name a local proxy forwards under, if it keeps
    /// the client's. A server bound to other addresses does not check.
    ///
    /// The name is a host name or address without a port (`heap.internal`,
    /// `10.0.0.5`, `[fd00::1]`): requests to it on any port are answered.
    /// [`serve`](ServerBuilder::serve) refuses any other with
    /// [`Error::InvalidAllowedHost`].
    ///
    /// # Example
    ///
    /// ```
    /// let server = heapwatch::ServerBuilder::new()
    ///     .allow_host("heap.internal")
    ///     .serve()?;
    /// # server.shutdown();
    /// # Ok::<(), heapwatch::Error>(())
    /// ```
    pub fn allow_host(mut self, host: impl Into<String>) -> ServerBuilder {
        never_refused(|| self.allowed_hosts.push(host.into().to_ascii_lowercase()));
        self
    }

    /// Binds the address and starts the server thread. Returns once the
    /// server accepts connections. Works with the budget spent: what the
    /// builder and this call allocate is never refused (counted as
    /// overages), and the server's threads allocate only under heapwatch's
    /// guard, as overhead, from their first instruction.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the address does not resolve or cannot be bound,
    /// or the server thread or its runtime cannot start;
    /// [`Error::NonLoopbackAddress`] for an address other than loopback
    /// without [`allow_non_loopback`](ServerBuilder::allow_non_loopback);
    /// [`Error::InvalidAllowedHost`] for a name given to
    /// [`allow_host`](ServerBuilder::allow_host) with a port, or that is
    /// not a host name or address; [`Error::EmptyToken`] for a token given
    /// to [`token`](ServerBuilder::token) that is empty or only whitespace,
    /// or a `HEAPWATCH_TOKEN` of only whitespace.
    pub fn serve(self) -> Result<ServerHandle, Error> {
        // Called to see why memory is short, this must not abort the
        // program over its budget.
        never_refused(|| self.serve_now())
    }

    fn serve_now(self) -> Result<ServerHandle, Error> {
        let addrs = self
            .addrs
            .map_err(|e| Error::io("resolving the server address", e))?;
        if addrs.is_empty() {
            return Err(Error::io(
                "resolving the server address",
                io::Error::new(io::ErrorKind::InvalidInput, "it resolved to no address"),
            ));
        }
        if !self.allow_non_loopback {
            if let Some(addr) = addrs.iter().find(|a| !a.ip().is_loopback()) {
                return Err(Error::NonLoopbackAddress { addr: *addr });
            }
        }
        for host in &self.allowed_hosts {
            if let Some(reason) = routes::bad_allowed_host(host) {
                return Err(Error::InvalidAllowedHost {
                    host: host.clone(),
                    reason: reason.to_string(),
                });
            }
        }
        let token_from_env = self.token.is_none();
        let token = match self.token {
            Some(Some(t)) if t.as_bytes().trim_ascii().is_empty() => {
                return Err(Error::EmptyToken { from_env: false })
            }
            Some(t) => t.map(String::into_bytes),
            None => match std::env::var_os("HEAPWATCH_TOKEN").map(OsString::into_vec) {
                // Set but empty: no token, as if unset.
                Some(t) if t.is_empty() => None,
                Some(t) if t.trim_ascii().is_empty() => {
                    return Err(Error::EmptyToken { from_env: true })
                }
                t => t,
            },
        };
        if let Some(reason) = token.as_deref().and_then(unsendable_token) {
            return Err(Error::UnsendableToken {
                from_env: token_from_env,
                reason,
            });
        }
        let listener = TcpListener::bind(&addrs[..])
            .map_err(|e| Error::io(format!("binding {}", describe(&addrs)), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the bound address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the listener non-blocking", e))?;
        // From here on everything lives as long as the server: allocate it
        // as heapwatch's own (it is freed under the guard too).
        let started = untracked(|| {
            let cfg = Config {
                // A copy made under the guard, as `allowed_hosts` below.
                token: token.clone(),
                history_interval: self.history_interval.max(Duration::from_millis(10)),
                history_len: self.history_len.max(1),
                history_callsites: self.history_callsites.max(1),
                max_connections: self.max_connections.max(1),
                header_timeout: self.header_timeout,
                write_timeout: self.write_timeout,
                leak_window: self.leak_window,
                leak_thresholds: self.leak_thresholds,
                loopback_only: local_addr.ip().is_loopback(),
                // A copy made under the guard: the server frees it under
                // the guard too.
                allowed_hosts: self.allowed_hosts.clone(),
            };
            start(listener, cfg)
        });
        let (thread, stop) = match started {
            Ok(started) => started,
            Err((context, e)) => {
                // `e` may hold a message allocated under the guard: the
                // program gets a copy of its own, and `e` is freed under
                // the guard, where it was made.
                let copy = match e.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(e.kind(), e.to_string()),
                };
                untracked(|| drop(e));
                return Err(Error::io(context, copy));
            }
        };
        Ok(ServerHandle {
            local_addr,
            thread: Some(thread),
            stop: Some(stop),
        })
    }
}

/// Why a bearer token could not be sent in an `Authorization` header, if
/// it could not: a header's value loses the whitespace at its ends, and
/// cannot carry control characters (bytes below 0x20 but tab, and 0x7F).
fn unsendable_token(token: &[u8]) -> Option<&'static str> {
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    if token.first().is_some_and(space) || token.last().is_some_and(space) {
        return Some("begins or ends with whitespace, which a header's value loses (a newline read from a file?)");
    }
    if token.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Some(
            "holds a control character (such as a newline), which a header's value cannot carry",
        );
    }
    None
}

fn describe(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Spawns the server thread and waits until its runtime is up. Called
/// under the guard: the thread's body is freed on that thread, under it.
/// An error comes with what was being done; it is the caller's to turn
/// into an [`Error`] outside the guard.
fn start(
    listener: TcpListener,
    cfg: Config,
) -> Result<(OwnThread, watch::Sender<bool>), (&'static str, io::Error)> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), io::Error>>(1);
    // Under the guard for its whole life, thread-local destructors
    // included: everything the server allocates and frees is heapwatch's
    // overhead.
    let thread = threads::spawn(c"heapwatch-http", Mode::Guarded, move || {
        run(listener, cfg, stop_rx, ready_tx);
    })
    .map_err(|e| ("spawning the heapwatch-http thread", e))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((thread, stop_tx)),
        Ok(Err(e)) => {
            thread.join();
            Err(("starting the server runtime", e))
        }
        Err(_) => {
            thread.join();
            Err((
                "starting the server runtime",
                io::Error::other("the heapwatch-http thread exited before it was ready"),
            ))
        }
    }
}

/// The server thread's body.
fn run(
    listener: TcpListener,
    cfg: Config,
    stop: watch::Receiver<bool>,
    ready: mpsc::SyncSender<Result<(), io::Error>>,
) {
    // Snapshots are built on a thread of heapwatch's own, not on the
    // runtime's blocking pool: tokio starts those threads with `std`, which
    // allocates as they start, outside the guard (see `threads`).
    let (builds, requests) = mpsc::channel();
    let builder = match threads::spawn(c"heapwatch-snap", Mode::Guarded, move || {
        build_snapshots(requests);
    }) {
        Ok(t) => t,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let stop_builder = {
        let builds = builds.clone();
        move || {
            let _ = builds.send(BuildRequest::Stop);
            builder.join();
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            stop_builder();
            return;
        }
    };
    let listener = {
        let _enter = runtime.enter();
        tokio::net::TcpListener::from_std(listener)
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            stop_builder();
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    runtime.block_on(accept_loop(
        listener,
        Arc::new(State::new(cfg, builds)),
        stop,
    ));
    // Dropping the runtime cancels what is left; a snapshot build in
    // flight finishes before the snapshot thread reads the stop.
    drop(runtime);
    stop_builder();
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let history = tokio::spawn(history_task(Arc::clone(&state)));
    let slots = Arc::new(Semaphore::new(state.cfg.max_connections));
    let busy_slots = Arc::new(Semaphore::new(state.cfg.max_connections.max(BUSY_MIN)));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.cfg.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(_) => {
                        // Out of descriptors or similar: back off instead
                        // of spinning.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                // Finished connections, served or refused, are taken out
                // of the set here, at every accept: refused ones finish
                // while every slot is taken, when nothing else is accepted,
                // and would pile up.
                while conns.try_join_next().is_some() {}
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    // Over the limit: answer at once, then close gently
                    // while that costs no more than the limit again.
                    let _ = stream.try_write(BUSY);
                    if let Ok(busy) = Arc::clone(&busy_slots).try_acquire_owned() {
                        conns.spawn(async move {
                            close_gently(stream).await;
                            drop(busy);
                        });
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = serve_connection(
                    http.clone(),
                    stream,
                    Arc::clone(&state),
                    stop.clone(),
                );
                conns.spawn(async move {
                    conn.await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    history.abort();
    let _ = history.await;
    // Each connection was told to finish; give them the grace period.
    let drained =
        tokio::time::timeout(GRACE, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// Closes a connection that was answered `503` without resetting it.
/// Closing a socket with unread data makes the kernel send a reset, and a
/// client whose request arrived before the answer went out could then lose
/// the answer before reading it. So this ends the server's side, then reads
/// and drops what the client sends until it closes, for at most
/// [`BUSY_LINGER`].
async fn close_gently(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(BUSY_LINGER, async {
        while let Ok(1..) = stream.read(&mut sink).await {}
    })
    .await;
}

async fn serve_connection(
    http: http1::Builder,
    stream: tokio::net::TcpStream,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let write_timeout = state.cfg.write_timeout;
    let service = service_fn(move |req| {
        let state = Arc::clone(&state);
        async move {
            // A task per request: a panic in a handler ends that task only,
            // and the client gets a 500.
            let response = match tokio::spawn(routes::handle(state, req)).await {
                Ok(r) => r,
                Err(_) => routes::error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error while answering the request",
                ),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let stream = stall::WriteStall::new(stream, write_timeout);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let age = tokio::time::sleep(MAX_CONNECTION_AGE);
    tokio::pin!(age);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.changed() => {}
        _ = &mut age => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(GRACE, conn.as_mut()).await;
}

async fn history_task(state: Arc<State>) {
    let mut tick = tokio::time::interval(state.cfg.history_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A failed build is skipped; the next tick tries again.
        let _ = state.fresh(true).await;
    }
}

/// The running endpoint, from [`serve`] or [`ServerBuilder::serve`].
/// Dropping it stops the server as [`ServerHandle::shutdown`] does. In
/// the child of a `fork`, which has none of the server's threads, dropping
/// (or shutting down) an inherited handle does nothing.
///
/// So keep the handle for as long as the server should run. To serve for
/// the whole life of the process, bind it to a named variable in `main`
/// (`let _server = heapwatch::serve(addr)?;`: not `let _ = ...`, which
/// drops it at once), or hand it to [`std::mem::forget`], after which the
/// server runs until the process exits.
///
/// # Example
///
/// ```no_run
/// fn main() -> Result<(), heapwatch::Error> {
///     let _server = heapwatch::serve("127.0.0.1:7878")?; // serves until main returns
///     // ... the service runs ...
///     Ok(())
/// }
/// ```
#[derive(Debug)]
#[must_use = "dropping a ServerHandle stops the server: keep it for as long as the server should run"]
pub struct ServerHandle {
    local_addr: SocketAddr,
    thread: Option<OwnThread>,
    stop: Option<watch::Sender<bool>>,
}

impl ServerHandle {
    /// The address the server listens on (with the actual port when port 0
    /// was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server: no new connections, in-flight requests get up to
    /// a second to finish, then everything is cancelled. Returns once
    /// every thread the server started has exited.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        // These were allocated under the guard: free them under it too.
        let _g = Guard::enter();
        if self.thread.as_ref().is_some_and(|t| !t.in_this_process()) {
            // A `fork` child dropping the handle it inherited: the server's
            // threads do not exist here, and touching what they may have
            // held locked at the fork could hang. Leave all of it; the
            // child has no server.
            std::mem::forget(self.stop.take());
            return;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
            drop(stop);
        }
        if let Some(thread) = self.thread.take() {
            // A panic on the server thread has already been reported by the
            // panic hook, and ended that thread only.
            thread.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
