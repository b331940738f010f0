//! Routing and the handlers. Everything here answers; nothing panics on
//! request data (and the caller catches a panic anyway).

use std::collections::HashMap;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use serde::Serialize;

use super::state::State;
use crate::export::PprofKind;
use crate::snapshot::{Snapshot, SortKey};

/// The dashboard page (self-contained: no external assets).
const DASHBOARD: &str = include_str!("dashboard.html");

type Resp = Response<Full<Bytes>>;

/// A failed request: status and message, answered as `{"error": ...}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_param(name: &str, value: &str, why: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid query parameter {name}={value:?}: {why}"),
        )
    }
}

impl From<super::state::BuildFailed> for ApiError {
    fn from(e: super::state::BuildFailed) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.0)
    }
}

/// `{"error": message}` with `status`.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Resp {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
    }
    let body = serde_json::to_vec(&Body { error: message })
        .unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec());
    let mut r = with_body(status, "application/json", body);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"heapwatch\""),
        );
    }
    r
}

fn with_body(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn json<T: Serialize>(value: &T) -> Result<Resp, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("serializing the response: {e}"),
        )
    })?;
    Ok(with_body(StatusCode::OK, "application/json", body))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Dashboard,
    Heap,
    History,
    Diff,
    Leaks,
    PprofHeap,
    PprofAllocs,
    Metrics,
    Flamegraph,
}

impl Route {
    fn from_path(path: &str) -> Option<Route> {
        Some(match path {
            "/" => Route::Dashboard,
            "/heap" => Route::Heap,
            "/heap/history" => Route::History,
            "/heap/diff" => Route::Diff,
            "/heap/leaks" => Route::Leaks,
            "/debug/pprof/heap" => Route::PprofHeap,
            "/debug/pprof/allocs" => Route::PprofAllocs,
            "/metrics" => Route::Metrics,
            "/heap/flamegraph.svg" => Route::Flamegraph,
            _ => return None,
        })
    }

    /// The query parameters the route accepts.
    fn params(self) -> &'static [&'static str] {
        match self {
            Route::Dashboard => &["token"],
            Route::Heap => &["top", "sort"],
            Route::History | Route::Metrics | Route::Flamegraph => &[],
            Route::Diff => &["base", "to", "top"],
            Route::Leaks => &["top"],
            Route::PprofHeap | Route::PprofAllocs => &["gc", "debug", "seconds"],
        }
    }
}

/// Answers one request.
pub(crate) async fn handle(state: Arc<State>, req: Request<Incoming>) -> Resp {
    match respond(&state, &req).await {
        Ok(r) => r,
        Err(e) => {
            let mut r = error_response(e.status, &e.message);
            if e.status == StatusCode::METHOD_NOT_ALLOWED {
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
    }
}

async fn respond(state: &State, req: &Request<Incoming>) -> Result<Resp, ApiError> {
    // Checks in this order, so that each answer says the first thing wrong:
    // a malformed Host (400), the host (403), the token (401), the path
    // (404), the method (405), a body (413), the query (400).
    if let Some(problem) = bad_host_header(req) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, problem));
    }
    if state.cfg.loopback_only {
        if let Some(host) = foreign_host(req, &state.cfg.allowed_hosts) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "host {host:?} is not a loopback name: this endpoint is bound to \
                     loopback and answers only localhost, 127.0.0.1, [::1] and the \
                     names allowed with ServerBuilder::allow_host (a guard against \
                     DNS rebinding)"
                ),
            ));
        }
    }
    let query = parse_query(req.uri().query().unwrap_or(""));
    let route = Route::from_path(req.uri().path());
    if let Some(token) = &state.cfg.token {
        let from_header = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()));
        let from_query = match (route, &query) {
            (Some(Route::Dashboard), Ok(q)) => q.get("token").map(|t| t.as_bytes()),
            _ => None,
        };
        let ok = from_header.or(from_query).is_some_and(|t| ct_eq(t, token));
        if !ok {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: send Authorization: Bearer <token>",
            ));
        }
    }
    let not_allowed = || {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed (use GET or HEAD)", req.method()),
        )
    };
    let route = match route {
        Some(route) => route,
        // `CONNECT host:port` names no path at all.
        None if req.method() == Method::CONNECT => return Err(not_allowed()),
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {}", req.uri().path()),
            ))
        }
    };
    // `HEAD` is answered as `GET` is (RFC 9110, 9.3.2): hyper sends the
    // status and headers, with the body's `Content-Length`, and not the body.
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(not_allowed());
    }
    if !req.body().is_end_stream() {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request bodies are not accepted",
        ));
    }
    let query = query?;
    if let Some(name) = query.keys().find(|k| !route.params().contains(&k.as_str())) {
        // `seconds` is recognized only to be refused with its own message.
        let allowed: Vec<&str> = route
            .params()
            .iter()
            .copied()
            .filter(|p| *p != "seconds")
            .collect();
        let allowed = allowed.join(", ");
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown query parameter {name:?} (accepted: {})",
                if allowed.is_empty() { "none" } else { &allowed }
            ),
        ));
    }

    match route {
        Route::Dashboard => Ok(dashboard_headers(with_body(
            StatusCode::OK,
            "text/html; charset=utf-8",
            DASHBOARD,
        ))),
        Route::Heap => {
            let top = parse_top(&query)?;
            let sort = match query.get("sort") {
                Some(v) => Some(
                    v.parse::<SortKey>()
                        .map_err(|why| ApiError::bad_param("sort", v, &why.to_string()))?,
                ),
                None => None,
            };
            let snap = state.fresh(false).await?;
            if top.is_none() && sort.is_none() {
                return json(&*snap);
            }
            let mut s = Snapshot::clone(&snap);
            s.sort_callsites(sort.unwrap_or_default());
            if let Some(n) = top {
                s.truncate_callsites(n);
            }
            json(&s)
        }
        Route::History => {
            state.ensure_history().await?;
            history(state)
        }
        Route::Diff => diff(state, &query).await,
        Route::Leaks => {
            let top = parse_top(&query)?;
            state.ensure_history().await?;
            let (snaps, _) = state.with_history(|h| (h.snapshots(), ()));
            let mut report = crate::leaks::leak_report(
                &snaps,
                state.cfg.leak_window,
                &state.cfg.leak_thresholds,
            );
            if let Some(n) = top {
                report.callsites.truncate(n);
            }
            let len = u32::try_from(state.cfg.history_len.saturating_sub(1)).unwrap_or(u32::MAX);
            let span = state.cfg.history_interval.saturating_mul(len);
            report.history_span_ms = Some(u64::try_from(span.as_millis()).unwrap_or(u64::MAX));
            state.with_history(|h| {
                for c in &mut report.callsites {
                    if let Some(f) = h.frames(&c.id) {
                        c.frames.clone_from(f);
                    }
                }
            });
            json(&report)
        }
        Route::PprofHeap | Route::PprofAllocs => {
            if let Some(v) = query.get("seconds") {
                return Err(ApiError::bad_param(
                    "seconds",
                    v,
                    "delta profiles are not supported; take two snapshots and use /heap/diff",
                ));
            }
            let kind = if route == Route::PprofHeap {
                PprofKind::Heap
            } else {
                PprofKind::Allocs
            };
            let snap = state.fresh(false).await?;
            let body = snap.to_pprof(kind);
            let mut r = with_body(StatusCode::OK, "application/octet-stream", body);
            let name = if kind == PprofKind::Heap {
                "attachment; filename=\"heap.pb.gz\""
            } else {
                "attachment; filename=\"allocs.pb.gz\""
            };
            r.headers_mut()
                .insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(name));
            Ok(r)
        }
        Route::Metrics => {
            let snap = state.fresh(false).await?;
            Ok(with_body(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                snap.to_prometheus(),
            ))
        }
        Route::Flamegraph => {
            let snap = state.fresh(false).await?;
            let svg = snap.to_flamegraph_svg().map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("rendering the flamegraph: {e}"),
                )
            })?;
            Ok(with_body(StatusCode::OK, "image/svg+xml", svg))
        }
    }
}

fn dashboard_headers(mut r: Resp) -> Resp {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    // The page may carry ?token= in its URL: never send it on.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn history(state: &State) -> Result<Resp, ApiError> {
    #[derive(Serialize)]
    struct Entry<'a> {
        id: u64,
        taken_at_ms: u64,
        uptime_ms: u64,
        totals: &'a crate::counters::Stats,
        callsites_omitted: u64,
    }
    #[derive(Serialize)]
    struct History<'a> {
        interval_ms: u64,
        capacity: usize,
        snapshots: Vec<Entry<'a>>,
    }
    let snaps = state.with_history(|h| h.snapshots());
    json(&History {
        interval_ms: u64::try_from(state.cfg.history_interval.as_millis()).unwrap_or(u64::MAX),
        capacity: state.cfg.history_len,
        snapshots: snaps
            .iter()
            .map(|s| Entry {
                id: s.id,
                taken_at_ms: s.taken_at_ms,
                uptime_ms: s.uptime_ms,
                totals: &s.totals,
                callsites_omitted: s.callsites_omitted,
            })
            .collect(),
    })
}

async fn diff(state: &State, query: &HashMap<String, String>) -> Result<Resp, ApiError> {
    let top = parse_top(query)?;
    let Some(base_s) = query.get("base") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing query parameter base (a snapshot id from /heap/history)",
        ));
    };
    let base_id = parse_id("base", base_s)?;
    let to_id = match query.get("to").map(String::as_str) {
        None | Some("now") => None,
        Some(v) => Some(parse_id("to", v)?),
    };
    state.ensure_history().await?;
    let lookup = |id: u64| {
        state.with_history(|h| {
            h.get(id).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "snapshot {id} is not retained; retained ids: {}",
                        h.describe_ids()
                    ),
                )
            })
        })
    };
    let base = lookup(base_id)?;
    let retained_to = to_id.map(lookup).transpose()?;
    // Ids grow with time: a `to` before `base` is a swapped query, whose
    // "made between" figures would all be negative. Checked once both are
    // found, so that an id that is not retained gets its 404 first (a
    // swap would not make it retained).
    if let Some(to) = to_id.filter(|&to| to < base_id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("to ({to}) is older than base ({base_id}): swap them"),
        ));
    }
    let to = match retained_to {
        Some(to) => to,
        None => state.fresh(false).await?,
    };
    let mut d = to.diff(&base);
    if let Some(n) = top {
        d.callsites.truncate(n);
    }
    // History snapshots are kept without frames: put them back.
    state.with_history(|h| {
        for c in d.callsites.iter_mut().filter(|c| c.frames.is_empty()) {
            if let Some(f) = h.frames(&c.id) {
                c.frames.clone_from(f);
            }
        }
    });
    json(&d)
}

fn parse_id(name: &str, v: &str) -> Result<u64, ApiError> {
    v.parse::<u64>().map_err(|e| {
        let why = if *e.kind() == std::num::IntErrorKind::PosOverflow {
            "no snapshot has an id this large (ids are at most 2^64 - 1)"
        } else {
            "expected a snapshot id (a non-negative integer)"
        };
        ApiError::bad_param(name, v, why)
    })
}

fn parse_top(query: &HashMap<String, String>) -> Result<Option<usize>, ApiError> {
    match query.get("top") {
        None => Ok(None),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            // More than can exist: every callsite.
            Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Ok(Some(usize::MAX)),
            _ => Err(ApiError::bad_param("top", v, "expected a positive integer")),
        },
    }
}

/// Splits `a=1&b=2` into a map, percent-decoding names and values.
/// Duplicate names and undecodable text are errors.
fn parse_query(q: &str) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("query parameter name {k:?} is not valid percent-encoded UTF-8"),
            )
        })?;
        let v = percent_decode(v)
            .ok_or_else(|| ApiError::bad_param(&k, v, "not valid percent-encoded UTF-8"))?;
        if out.contains_key(&k) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("query parameter {k:?} given more than once"),
            ));
        }
        out.insert(k, v);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in
/// any case, as RFC 9110 has it).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(rest.trim_ascii())
}

/// What is wrong with a request's `Host` header by RFC 9112, section 3.2
/// (which has a server answer `400`): more than one, none in an HTTP/1.1
/// request, or a value that is not `host[:port]`. An empty value is allowed
/// (the host check then refuses it), as is no `Host` in HTTP/1.0. An
/// absolute request target's authority (`GET http://host:port/heap`) is
/// held to the same `host[:port]`: it names the host as `Host` does.
fn bad_host_header(req: &Request<Incoming>) -> Option<String> {
    if let Some(authority) = req.uri().authority() {
        if authority.as_str().is_empty() || !is_host_and_port(authority.as_str().as_bytes()) {
            return Some(format!(
                "the request target's authority {:?} is not a host name or address with an \
                 optional port",
                authority.as_str()
            ));
        }
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Some("more than one Host header".to_string()),
        (None, _) if req.version() == Version::HTTP_11 => {
            Some("an HTTP/1.1 request needs a Host header".to_string())
        }
        (None, _) => None,
        (Some(h), None) if is_host_and_port(h.as_bytes()) => None,
        (Some(h), None) => Some(format!(
            "Host {:?} is not a host name or address with an optional port",
            String::from_utf8_lossy(h.as_bytes())
        )),
    }
}

/// `uri-host [ ":" port ]`, or empty: an IPv6 address in brackets, or a
/// name or IPv4 address of the characters RFC 3986 allows in one (no user
/// information), and a port of digits only that fits in 16 bits.
fn is_host_and_port(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let Ok(s) = std::str::from_utf8(value) else {
        return false;
    };
    let Ok(authority) = s.parse::<hyper::http::uri::Authority>() else {
        return false;
    };
    if s.contains('@') {
        return false;
    }
    let host = authority.host();
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => is_reg_name(host),
    };
    if !host_ok {
        return false;
    }
    let Some(port) = s.strip_prefix(host) else {
        return false;
    };
    match port.strip_prefix(':') {
        None => port.is_empty(),
        Some("") => true,
        Some(digits) => digits.bytes().all(|b| b.is_ascii_digit()) && digits.parse::<u16>().is_ok(),
    }
}

/// Why a name given to `ServerBuilder::allow_host` could never match a
/// request's host, if it could not.
pub(super) fn bad_allowed_host(host: &str) -> Option<&'static str> {
    if !is_host_and_port(host.as_bytes()) || host.is_empty() {
        return Some("not a host name or address");
    }
    let bare = match host.strip_prefix('[') {
        Some(v6) => v6.ends_with(']'),
        None => !host.contains(':'),
    };
    if !bare {
        return Some("give the name without a port (requests to it on any port are answered)");
    }
    None
}

/// RFC 3986's `reg-name` (which an IPv4 address also is), not empty:
/// unreserved characters, sub-delimiters and percent-encoded octets.
fn is_reg_name(host: &str) -> bool {
    let b = host.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&c) => i += 1,
            _ => return false,
        }
    }
    !b.is_empty()
}

/// The host a request names, through its `Host` header or an absolute
/// request target, when that is not a loopback name (`localhost`, a name
/// under `.localhost`, or a loopback address). A page that makes its own
/// name resolve to 127.0.0.1 (DNS rebinding) sends its name here.
fn foreign_host(req: &Request<Incoming>, allowed: &[String]) -> Option<String> {
    let from_header = req.headers().get(header::HOST).map(|h| {
        h.to_str()
            .ok()
            .and_then(|h| h.parse::<hyper::http::uri::Authority>().ok())
            .ok_or_else(|| String::from_utf8_lossy(h.as_bytes()).into_owned())
    });
    let from_target = req.uri().authority().cloned().map(Ok);
    for authority in [from_header, from_target].into_iter().flatten() {
        match authority {
            Ok(a) if is_loopback_name(a.host()) => {}
            Ok(a) if allowed.iter().any(|h| a.host().eq_ignore_ascii_case(h)) => {}
            Ok(a) => return Some(a.host().to_string()),
            Err(unparsable) => return Some(unparsable),
        }
    }
    None
}

fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let lower = host.to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Compares in time that depends only on the lengths, not on where the
/// inputs differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query("top=5&sort=live_bytes&&x=a%20b+c").unwrap();
        assert_eq!(q["top"], "5");
        assert_eq!(q["x"], "a b c");
        assert!(parse_query("a=1&a=2").is_err());
        assert!(parse_query("a=%zz").is_err());
        assert!(parse_query("a=%ff").is_err(), "not UTF-8");
        assert!(parse_query("a=%4").is_err());
        assert!(parse_query("").unwrap().is_empty());
    }

    #[test]
    fn host_values() {
        for ok in [
            "",
            "localhost",
            "localhost:7878",
            "localhost:",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:7878",
            "LocalHost:65535",
            "heap.internal",
            "[::ffff:127.0.0.1]:80",
            "my_host.example",
        ] {
            assert!(is_host_and_port(ok.as_bytes()), "{ok:?}");
        }
        for bad in [
            "localhost:abc",
            "localhost:65536",
            "localhost:-1",
            "user@localhost",
            "not a host name",
            "localhost/heap",
            "[::1",
            "localhost:80:80",
            "[]",
            "[not-an-ip]",
            "local[host]",
            "[fe80::1%25eth0]",
            "local%zzhost",
        ] {
            assert!(!is_host_and_port(bad.as_bytes()), "{bad:?}");
        }
        assert!(!is_host_and_port(b"local\xffhost"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(!ct_eq(b"", b"x"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn top_must_be_positive() {
        let q = |s: &str| parse_top(&parse_query(s).unwrap());
        assert_eq!(q("top=3").ok().flatten(), Some(3));
        assert!(q("top=0").is_err());
        assert!(q("top=-1").is_err());
        assert!(q("top=abc").is_err());
        assert_eq!(q("").ok().flatten(), None);
    }
}

#[cfg(test)]
mod proptests {
    //! Query parsing never panics, on any text, and round-trips any
    //! percent-encoded map.
    use super::*;
    use proptest::prelude::*;

    fn encode(s: &str) -> String {
        s.bytes().map(|b| format!("%{b:02X}")).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_query_never_panics(q in any::<String>()) {
            if let Ok(map) = parse_query(&q) {
                prop_assert!(map.len() <= q.split('&').count());
                let _ = parse_top(&map);
            }
        }

        #[test]
        fn parse_query_never_panics_on_query_like_text(q in "[a-z=&%+0-9A-F]{0,64}") {
            let _ = parse_query(&q).map(|m| parse_top(&m));
        }

        #[test]
        fn encoded_maps_round_trip(map in prop::collection::hash_map(".{1,8}", ".{0,8}", 0..6)) {
            let q: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect();
            let parsed = parse_query(&q.join("&"));
            prop_assert_eq!(parsed.ok(), Some(map));
        }

        #[test]
        fn top_is_accepted_exactly_when_a_positive_integer(
            v in "[-+0-9a-z ]{0,24}|[0-9]{15,30}"
        ) {
            let map = HashMap::from([("top".to_string(), v.clone())]);
            // Past what a usize holds: every callsite.
            let want = match v.parse::<usize>() {
                Ok(n) => Some(n).filter(|&n| n > 0),
                Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Some(usize::MAX),
                Err(_) => None,
            };
            match parse_top(&map) {
                Ok(got) => prop_assert_eq!(got, want),
                Err(_) => prop_assert!(want.is_none()),
            }
        }
    }
}
