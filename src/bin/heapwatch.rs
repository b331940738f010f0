//! `heapwatch`: the command-line companion of the heapwatch crate.
//!
//! ```text
//! heapwatch diff BASE.json NEW.json [--top N]     compare two saved snapshots
//! heapwatch get URL [-o FILE]                      save a snapshot from an endpoint
//! heapwatch top URL [--interval SECS] [--count N]  watch the top callsites live
//! ```
//!
//! Built only with the `cli` feature (`cargo install heapwatch --features
//! cli`, or `cargo run --features cli --bin heapwatch -- ...`). It has no
//! dependency beyond the heapwatch library: the HTTP client is a small
//! HTTP/1.1 `GET` over `std::net::TcpStream` (`http://` only).
//!
//! Exit codes: 0 success, 1 runtime error (unreachable endpoint, HTTP error
//! status, unreadable or corrupt snapshot file), 2 usage error. Errors are
//! written to stderr, prefixed `heapwatch: `.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

// A crate root looks for modules next to itself: these live in heapwatch/.

#[path = "heapwatch/args.rs"]
mod args;
#[path = "heapwatch/diff.rs"]
mod diff;
#[path = "heapwatch/format.rs"]
mod format;
#[path = "heapwatch/get.rs"]
mod get;
#[path = "heapwatch/help.rs"]
mod help;
#[path = "heapwatch/http.rs"]
mod http;
#[path = "heapwatch/stop.rs"]
mod stop;
#[path = "heapwatch/top.rs"]
mod top;

use std::io::{self, Write};
use std::process::ExitCode;

/// Why a command did not succeed, and so which exit code it ends with.
#[derive(Debug)]
pub enum Failure {
    /// The command line is wrong (exit 2). `command` names the subcommand
    /// whose `--help` the message points to, if any.
    Usage {
        /// What is wrong.
        message: String,
        /// The subcommand, for the "try --help" hint.
        command: Option<&'static str>,
    },
    /// The command could not do its job (exit 1).
    Runtime(String),
    /// Stop quietly with this exit code (stdout closed by a pager, Ctrl-C).
    Quiet(u8),
}

impl Failure {
    /// A usage error of `command`.
    pub fn usage(command: Option<&'static str>, message: impl Into<String>) -> Failure {
        Failure::Usage {
            message: message.into(),
            command,
        }
    }

    /// A runtime error.
    pub fn runtime(message: impl Into<String>) -> Failure {
        Failure::Runtime(message.into())
    }
}

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the command ran and failed (network, HTTP status, file).
pub const EXIT_RUNTIME: u8 = 1;
/// Exit code: the command line is wrong.
pub const EXIT_USAGE: u8 = 2;

/// Writes `text` to stdout and flushes. A closed stdout (`| head`) ends
/// the program quietly with success.
pub fn emit(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(Failure::Quiet(EXIT_OK)),
        Err(e) => Err(Failure::runtime(format!("writing to stdout: {e}"))),
    }
}

fn run(argv: Vec<String>) -> Result<(), Failure> {
    let Some((command, rest)) = argv.split_first() else {
        return Err(Failure::usage(None, "missing command (diff, get or top)"));
    };
    match command.as_str() {
        "diff" => diff::run(rest),
        "get" => get::run(rest),
        "top" => top::run(rest),
        "help" => match rest.first().map(String::as_str) {
            None => emit(help::MAIN),
            Some(cmd) => match help::for_command(cmd) {
                Some(text) => emit(text),
                None => Err(Failure::usage(
                    None,
                    format!("no help for unknown command {cmd:?}"),
                )),
            },
        },
        "-h" | "--help" => emit(help::MAIN),
        "-V" | "--version" => emit(&format!("heapwatch {}\n", env!("CARGO_PKG_VERSION"))),
        other if other.starts_with('-') => Err(Failure::usage(
            None,
            format!("unknown option {other:?} before the command"),
        )),
        other => Err(Failure::usage(
            None,
            format!("unknown command {other:?} (use diff, get or top)"),
        )),
    }
}

fn main() -> ExitCode {
    let mut argv = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(a) => argv.push(a),
            Err(bad) => {
                eprintln!("heapwatch: argument {bad:?} is not valid UTF-8");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    match run(argv) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(Failure::Usage { message, command }) => {
            let hint = match command {
                Some(c) => format!("heapwatch {c} --help"),
                None => "heapwatch --help".to_string(),
            };
            eprintln!("heapwatch: {message}\nTry '{hint}' for usage.");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("heapwatch: {message}");
            ExitCode::from(EXIT_RUNTIME)
        }
        Err(Failure::Quiet(code)) => ExitCode::from(code),
    }
}
