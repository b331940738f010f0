//! A minimal HTTP/1.1 `GET` client over `std::net::TcpStream`: `http://`
//! only, one request per connection (`Connection: close`), bodies framed by
//! `Content-Length`, chunked transfer-encoding, or the end of the stream,
//! and one deadline for the whole exchange.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Largest response head (status line and headers) accepted.
const MAX_HEAD_BYTES: u64 = 64 * 1024;
/// Largest response body accepted.
const MAX_BODY_BYTES: u64 = 1 << 30;

/// An `http://host[:port][/path][?query]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// Host as written (an IPv6 literal keeps its brackets).
    pub host: String,
    /// Port (80 when not given).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
    /// Whether the URL had a path (other than a bare `/`).
    pub has_path: bool,
}

impl Url {
    /// Parses a URL; the `http://` scheme may be left out.
    pub fn parse(input: &str) -> Result<Url, String> {
        let bad = |why: &str| format!("invalid URL {input:?}: {why}");
        let rest =
            match input.split_once("://") {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
                Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => return Err(bad(
                    "https is not supported (the heapwatch endpoint serves plain http on loopback)",
                )),
                Some((scheme, _)) => return Err(bad(&format!("unsupported scheme {scheme:?}"))),
                None => input,
            };
        let rest = rest.split('#').next().unwrap_or("");
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains('@') {
            return Err(bad("user names in URLs are not supported (use --token)"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unterminated IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            };
            (format!("[{addr}]"), port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad(&format!("invalid port {p:?}")))?,
        };
        if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("spaces or control characters in the path"));
        }
        let (target, has_path) = if target.is_empty() || target == "/" {
            ("/".to_string(), false)
        } else if target.starts_with('?') {
            (format!("/{target}"), false)
        } else {
            (target.to_string(), !target.starts_with("/?"))
        };
        Ok(Url {
            host,
            port,
            target,
            has_path,
        })
    }

    /// Uses `path` when the URL named none (keeping any query).
    pub fn or_path(mut self, path: &str) -> Url {
        if !self.has_path {
            let query = self.target.trim_start_matches('/').to_string();
            self.target = format!("{path}{query}");
            self.has_path = true;
        }
        self
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Whether the query has parameter `name`.
    pub fn has_param(&self, name: &str) -> bool {
        self.target.split_once('?').is_some_and(|(_, q)| {
            q.split('&')
                .any(|kv| kv.split('=').next().is_some_and(|k| k == name))
        })
    }

    /// Adds `name=value` to the query.
    pub fn with_param(mut self, name: &str, value: &str) -> Url {
        let sep = if self.target.contains('?') { '&' } else { '?' };
        self.target = format!("{}{sep}{name}={value}", self.target);
        self
    }

    fn authority(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.target)
    }
}

/// A response with its body read in full.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, after removing chunked framing.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum HttpError {
    /// Ctrl-C arrived while waiting.
    Interrupted,
    /// Anything else, described for the user.
    Failed(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Interrupted => f.write_str("interrupted"),
            HttpError::Failed(m) => f.write_str(m),
        }
    }
}

/// Sends `GET` requests with a timeout and an optional bearer token.
#[derive(Clone, Debug)]
pub struct Client {
    /// Deadline for connecting, sending and reading a whole response.
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl Client {
    /// `GET url`, reading the whole response. Any status is returned as
    /// a [`Response`]; only transport and protocol failures are errors.
    pub fn get(&self, url: &Url) -> Result<Response, HttpError> {
        let deadline = Instant::now() + self.timeout;
        let fail = |what: String| HttpError::Failed(format!("GET {url}: {what}"));
        let stream = self.connect(url, deadline).map_err(|e| match e {
            HttpError::Failed(m) => fail(m),
            other => other,
        })?;
        let io_fail = |e: io::Error| -> HttpError {
            if crate::stop::requested() {
                return HttpError::Interrupted;
            }
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => fail(format!(
                    "no complete response within {} (--timeout)",
                    crate::format::duration(self.timeout)
                )),
                io::ErrorKind::UnexpectedEof => {
                    fail("the connection closed before the response was complete".into())
                }
                _ => fail(e.to_string()),
            }
        };
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: heapwatch-cli/{}\r\n\
             Accept: application/json\r\nConnection: close\r\n",
            url.target,
            url.authority(),
            env!("CARGO_PKG_VERSION")
        );
        if let Some(token) = &self.token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        let mut conn = Deadline { stream, deadline };
        conn.stream
            .set_write_timeout(Some(remaining(deadline).max(Duration::from_millis(1))))
            .map_err(io_fail)?;
        conn.stream.write_all(request.as_bytes()).map_err(io_fail)?;
        let mut reader = BufReader::with_capacity(64 * 1024, conn);
        read_response(&mut reader).map_err(|e| match e {
            ReadError::Io(e) => io_fail(e),
            ReadError::Protocol(m) => fail(m),
        })
    }

    fn connect(&self, url: &Url, deadline: Instant) -> Result<TcpStream, HttpError> {
        let host = url.host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = (host, url.port)
            .to_socket_addrs()
            .map_err(|e| HttpError::Failed(format!("cannot resolve {}: {e}", url.host)))?
            .collect();
        let mut last = None;
        for addr in &addrs {
            let left = remaining(deadline);
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(addr, left) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some((addr, e)),
            }
            if crate::stop::requested() {
                return Err(HttpError::Interrupted);
            }
        }
        Err(HttpError::Failed(match last {
            Some((addr, e)) if e.kind() == io::ErrorKind::TimedOut => format!(
                "cannot connect to {addr}: no answer within {} (--timeout)",
                crate::format::duration(self.timeout)
            ),
            Some((addr, e)) => format!("cannot connect to {addr}: {e}"),
            None => format!("cannot connect to {}: no address", url.host),
        }))
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// A stream whose every read waits at most until the deadline.
struct Deadline {
    stream: TcpStream,
    deadline: Instant,
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let left = remaining(self.deadline);
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if crate::stop::requested() {
                        // Not `Interrupted`: callers would retry that.
                        return Err(io::Error::other("interrupted"));
                    }
                }
                r => return r,
            }
        }
    }
}

/// Reading a response failed.
#[derive(Debug)]
enum ReadError {
    Io(io::Error),
    Protocol(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> ReadError {
        ReadError::Io(e)
    }
}

fn protocol(m: impl Into<String>) -> ReadError {
    ReadError::Protocol(m.into())
}

/// Reads a CRLF- (or LF-) terminated line of at most `MAX_HEAD_BYTES`.
fn read_line(r: &mut impl BufRead) -> Result<String, ReadError> {
    let mut line = Vec::new();
    let n = r.take(MAX_HEAD_BYTES).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    if line.last() != Some(&b'\n') {
        return Err(if n as u64 >= MAX_HEAD_BYTES {
            protocol("response header line too long")
        } else {
            io::Error::from(io::ErrorKind::UnexpectedEof).into()
        });
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| protocol("response head is not valid UTF-8"))
}

/// Reads a response from `r`: status line, headers, then the body.
fn read_response(r: &mut impl BufRead) -> Result<Response, ReadError> {
    loop {
        let status_line = read_line(r)?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(protocol(format!(
                "not an HTTP/1.x response (status line {:?}); is this the heapwatch endpoint?",
                truncate(&status_line, 60)
            )));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|s| (100..1000).contains(s))
            .ok_or_else(|| protocol(format!("malformed status line {status_line:?}")))?;
        let reason = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        let mut head_bytes = status_line.len() as u64;
        loop {
            let line = read_line(r)?;
            if line.is_empty() {
                break;
            }
            head_bytes += line.len() as u64 + 2;
            if head_bytes > MAX_HEAD_BYTES {
                return Err(protocol("response headers too large"));
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| protocol(format!("malformed header line {line:?}")))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        if (100..200).contains(&status) {
            // 100 Continue and friends: the real response follows.
            continue;
        }
        let mut response = Response {
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        if let Some(enc) = response.header("content-encoding") {
            if !enc.eq_ignore_ascii_case("identity") {
                return Err(protocol(format!("unsupported content-encoding {enc:?}")));
            }
        }
        let chunked = response.header("transfer-encoding").is_some_and(|te| {
            te.rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        });
        response.body = if status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            read_chunked(r)?
        } else if let Some(len) = response.header("content-length") {
            let len: u64 = len
                .parse()
                .map_err(|_| protocol(format!("invalid content-length {len:?}")))?;
            if len > MAX_BODY_BYTES {
                return Err(protocol(format!("response body too large ({len} bytes)")));
            }
            let mut body = vec![0; len as usize];
            r.read_exact(&mut body)?;
            body
        } else {
            let mut body = Vec::new();
            r.take(MAX_BODY_BYTES + 1).read_to_end(&mut body)?;
            if body.len() as u64 > MAX_BODY_BYTES {
                return Err(protocol("response body too large"));
            }
            body
        };
        return Ok(response);
    }
}

/// Reads a chunked body and its trailers.
fn read_chunked(r: &mut impl BufRead) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_hex, 16)
            .map_err(|_| protocol(format!("malformed chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to an empty line.
            while !read_line(r)?.is_empty() {}
            return Ok(body);
        }
        if body.len() as u64 + size > MAX_BODY_BYTES {
            return Err(protocol("response body too large"));
        }
        let start = body.len();
        body.resize(start + size as usize, 0);
        r.read_exact(&mut body[start..])?;
        if !read_line(r)?.is_empty() {
            return Err(protocol("chunk not followed by CRLF"));
        }
    }
}

/// At most `max` characters of `s`.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Response, ReadError> {
        read_response(&mut io::Cursor::new(raw.as_bytes().to_vec()))
    }

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("127.0.0.1", 8080, "/")
        );
        assert!(!u.has_path);
        let u = u.or_path("/heap");
        assert_eq!(u.to_string(), "http://127.0.0.1:8080/heap");
        let u = Url::parse("localhost:9/?top=3").unwrap().or_path("/heap");
        assert_eq!(u.to_string(), "http://localhost:9/heap?top=3");
        assert!(u.has_param("top") && !u.has_param("to"));
        let u = Url::parse("http://[::1]:7/heap/diff?base=1#x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[::1]", 7));
        assert_eq!(u.target, "/heap/diff?base=1");
        assert_eq!(u.path(), "/heap/diff");
        assert_eq!(u.with_param("top", "5").target, "/heap/diff?base=1&top=5");
        for bad in [
            "https://x/heap",
            "ftp://x",
            "http://",
            "http://h:0",
            "http://h:99999",
            "http://u@h/",
            "http://h/a b",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_length_chunked_and_eof_bodies() {
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhelloEXTRA").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(r.header("x"), Some("y"));
        let r = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: t\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"hello, world");
        let r = parse("HTTP/1.0 404 Not Found\r\n\r\n{\"error\":\"x\"}").unwrap();
        assert_eq!((r.status, r.reason.as_str()), (404, "Not Found"));
        assert_eq!(r.body, b"{\"error\":\"x\"}");
        let r = parse("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(r.status, 204);
    }

    #[test]
    fn broken_responses() {
        assert!(matches!(
            parse("SSH-2.0-OpenSSH\r\n"),
            Err(ReadError::Protocol(_))
        ));
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof
        ));
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err(ReadError::Protocol(_))
        ));
        assert!(matches!(parse(""), Err(ReadError::Io(_))));
    }
}
