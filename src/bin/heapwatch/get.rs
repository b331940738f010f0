//! `heapwatch get URL [-o FILE]`: fetch a snapshot from a running endpoint,
//! check it, and save it as pretty JSON.

use std::time::{Duration, Instant};

use heapwatch::Snapshot;

use crate::args::{self, Opt, Parsed};
use crate::format;
use crate::http::{Client, HttpError, Url};
use crate::{emit, help, Failure};

const COMMAND: &str = "get";

/// The options every command that talks to an endpoint takes.
pub const NET_OPTS: [Opt; 2] = [
    Opt {
        long: "timeout",
        short: None,
        takes_value: true,
    },
    Opt {
        long: "token",
        short: None,
        takes_value: true,
    },
];

/// Default for `--timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The client `--timeout` and `--token` (or `HEAPWATCH_TOKEN`) describe.
pub fn client(command: &'static str, parsed: &Parsed) -> Result<Client, Failure> {
    let timeout = match parsed.value("timeout") {
        Some(v) => args::seconds(command, "timeout", v, Duration::from_millis(1))?,
        None => DEFAULT_TIMEOUT,
    };
    let token = match parsed.value("token") {
        Some(t) => Some(t.to_string()),
        None => std::env::var("HEAPWATCH_TOKEN").ok(),
    }
    .filter(|t| !t.is_empty());
    if let Some(t) = &token {
        if t.bytes().any(|b| b < b' ' || b == 0x7f) {
            return Err(Failure::usage(
                Some(command),
                "the token contains control characters",
            ));
        }
    }
    Ok(Client { timeout, token })
}

/// Parses the URL argument, defaulting the path to `/heap`.
pub fn url(command: &'static str, raw: &str) -> Result<Url, Failure> {
    Url::parse(raw)
        .map(|u| u.or_path("/heap"))
        .map_err(|e| Failure::usage(Some(command), e))
}

/// Fetches `url` and parses the body as a snapshot; returns it with the
/// request's latency.
pub fn fetch(client: &Client, url: &Url) -> Result<(Snapshot, Duration), HttpError> {
    let started = Instant::now();
    let response = client.get(url)?;
    let latency = started.elapsed();
    let fail = |m: String| HttpError::Failed(format!("GET {url}: {m}"));
    if response.status != 200 {
        let mut m = format!("HTTP {} {}", response.status, response.reason);
        if let Some(err) = serde_json::from_slice::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        {
            m.push_str(&format!(": {err}"));
        }
        if response.status == 401 {
            m.push_str(if client.token.is_some() {
                " (the token was refused)"
            } else {
                " (pass --token or set HEAPWATCH_TOKEN)"
            });
        }
        return Err(fail(m));
    }
    let kind = response.header("content-type").unwrap_or("no content-type");
    let body = std::str::from_utf8(&response.body).map_err(|_| {
        fail(format!(
            "the response is not a JSON snapshot but {} bytes of binary data ({kind}); \
             `heapwatch get` reads /heap (save a pprof profile with curl -o)",
            response.body.len()
        ))
    })?;
    let snapshot = Snapshot::from_json(body)
        .map_err(|e| fail(format!("{e} (got {kind}, {} bytes)", body.len())))?;
    Ok((snapshot, latency))
}

/// Runs `heapwatch get`.
pub fn run(argv: &[String]) -> Result<(), Failure> {
    let mut opts = vec![Opt {
        long: "output",
        short: Some('o'),
        takes_value: true,
    }];
    opts.extend(NET_OPTS);
    let parsed = args::parse(COMMAND, argv, &opts)?;
    if parsed.help {
        return emit(help::GET);
    }
    args::expect_positional(COMMAND, &parsed, &["URL"])?;
    let url = url(COMMAND, &parsed.positional[0])?;
    let client = client(COMMAND, &parsed)?;
    let (snapshot, latency) = fetch(&client, &url).map_err(|e| Failure::runtime(e.to_string()))?;
    match parsed.value("output") {
        Some(path) if path != "-" => {
            snapshot
                .save(path)
                .map_err(|e| Failure::runtime(e.to_string()))?;
            let n = snapshot.callsites.len();
            emit(&format!(
                "saved snapshot {} ({n} callsite{}, live {}, peak {}) from {url} to {path} in {}\n",
                snapshot.id,
                if n == 1 { "" } else { "s" },
                format::size(snapshot.totals.live_bytes),
                format::size(snapshot.totals.peak_bytes),
                format::duration(latency),
            ))
        }
        _ => {
            let mut json = serde_json::to_string_pretty(&snapshot)
                .map_err(|e| Failure::runtime(format!("encoding the snapshot: {e}")))?;
            json.push('\n');
            emit(&json)
        }
    }
}
