//! A small command-line parser: `--long VALUE`, `--long=VALUE`, `-s VALUE`,
//! flags, `--` to end options, and `-h`/`--help`.

use std::time::Duration;

use crate::Failure;

/// One option a subcommand accepts.
pub struct Opt {
    /// Long name, without the dashes.
    pub long: &'static str,
    /// Short name, if any.
    pub short: Option<char>,
    /// Whether it takes a value (else it is a flag).
    pub takes_value: bool,
}

/// A subcommand's arguments after parsing.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Arguments that are not options, in order.
    pub positional: Vec<String>,
    /// Options given, by long name, with their values (`None` for flags).
    options: Vec<(&'static str, Option<String>)>,
    /// `-h` or `--help` was given.
    pub help: bool,
}

impl Parsed {
    /// The value of option `long`, if given.
    pub fn value(&self, long: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(name, _)| *name == long)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Parses `args` for `command` against `opts`. Unknown or repeated options
/// and missing values are usage errors.
pub fn parse(command: &'static str, args: &[String], opts: &[Opt]) -> Result<Parsed, Failure> {
    let usage = |m: String| Failure::usage(Some(command), m);
    let mut parsed = Parsed::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            parsed.positional.extend(it.by_ref().cloned());
            break;
        }
        if arg == "-h" || arg == "--help" {
            parsed.help = true;
            continue;
        }
        let (opt, inline) = if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let opt = opts
                .iter()
                .find(|o| o.long == name)
                .ok_or_else(|| usage(format!("unknown option --{name}")))?;
            (opt, inline)
        } else if arg.len() > 1 && arg.starts_with('-') && !is_number(arg) {
            let mut chars = arg[1..].chars();
            let c = chars.next().unwrap_or('-');
            let opt = opts
                .iter()
                .find(|o| o.short == Some(c))
                .ok_or_else(|| usage(format!("unknown option {arg}")))?;
            let rest: String = chars.collect();
            (opt, (!rest.is_empty()).then_some(rest))
        } else {
            parsed.positional.push(arg.clone());
            continue;
        };
        if parsed.options.iter().any(|(n, _)| *n == opt.long) {
            return Err(usage(format!("--{} given more than once", opt.long)));
        }
        let value = if opt.takes_value {
            match inline {
                Some(v) => Some(v),
                None => Some(
                    it.next()
                        .cloned()
                        .ok_or_else(|| usage(format!("--{} needs a value", opt.long)))?,
                ),
            }
        } else if inline.is_some() {
            return Err(usage(format!("--{} takes no value", opt.long)));
        } else {
            None
        };
        parsed.options.push((opt.long, value));
    }
    Ok(parsed)
}

fn is_number(s: &str) -> bool {
    s[1..].chars().all(|c| c.is_ascii_digit() || c == '.') && s.len() > 1
}

/// Parses a positive integer option; one past what a machine can count
/// stands for "all" (`usize::MAX`), as the endpoint's `top` does.
pub fn positive(command: &'static str, name: &str, value: &str) -> Result<usize, Failure> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Ok(usize::MAX),
        _ => Err(Failure::usage(
            Some(command),
            format!("--{name} must be a positive integer, not {value:?}"),
        )),
    }
}

/// The longest duration an option takes: a year.
const MAX_SECONDS: f64 = 86_400.0 * 365.0;

/// Parses a duration in seconds (fractions allowed), at least `min` and
/// at most a year.
pub fn seconds(
    command: &'static str,
    name: &str,
    value: &str,
    min: Duration,
) -> Result<Duration, Failure> {
    let bad = || {
        Failure::usage(
            Some(command),
            format!(
                "--{name} must be a number of seconds from {} to {MAX_SECONDS} (a year), \
                 not {value:?}",
                min.as_secs_f64()
            ),
        )
    };
    let secs: f64 = value.parse().map_err(|_| bad())?;
    if !secs.is_finite() || secs > MAX_SECONDS {
        return Err(bad());
    }
    let d = Duration::from_secs_f64(secs.max(0.0));
    if d < min {
        return Err(bad());
    }
    Ok(d)
}

/// Errors unless exactly `n` positional arguments were given, naming the
/// missing ones (`names`) or the first extra one.
pub fn expect_positional(
    command: &'static str,
    parsed: &Parsed,
    names: &[&str],
) -> Result<(), Failure> {
    let got = parsed.positional.len();
    if got < names.len() {
        let missing = names[got..].join(" and ");
        return Err(Failure::usage(Some(command), format!("missing {missing}")));
    }
    if let Some(extra) = parsed.positional.get(names.len()) {
        return Err(Failure::usage(
            Some(command),
            format!("unexpected argument {extra:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: &[Opt] = &[
        Opt {
            long: "top",
            short: None,
            takes_value: true,
        },
        Opt {
            long: "output",
            short: Some('o'),
            takes_value: true,
        },
    ];

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn long_short_inline_and_positional() {
        let p = parse("t", &argv(&["a", "--top=3", "-o", "f", "b"]), OPTS).unwrap();
        assert_eq!(p.positional, ["a", "b"]);
        assert_eq!(p.value("top"), Some("3"));
        assert_eq!(p.value("output"), Some("f"));
        let p = parse("t", &argv(&["-ofile", "--", "--top"]), OPTS).unwrap();
        assert_eq!(p.value("output"), Some("file"));
        assert_eq!(p.positional, ["--top"]);
    }

    #[test]
    fn errors_are_usage_errors() {
        for bad in [
            &["--nope"][..],
            &["--top"],
            &["--top", "1", "--top", "2"],
            &["-x"],
        ] {
            let r = parse("t", &argv(bad), OPTS);
            assert!(matches!(r, Err(Failure::Usage { .. })), "{bad:?}: {r:?}");
        }
        assert!(positive("t", "top", "0").is_err());
        assert!(positive("t", "top", "x").is_err());
        assert_eq!(positive("t", "top", "7").unwrap(), 7);
        assert_eq!(
            positive("t", "top", "99999999999999999999999").unwrap(),
            usize::MAX
        );
        assert!(positive("t", "top", "-99999999999999999999999").is_err());
        let min = Duration::from_millis(100);
        assert!(seconds("t", "interval", "0.05", min).is_err());
        assert!(seconds("t", "interval", "NaN", min).is_err());
        let too_long = format!("{:?}", seconds("t", "timeout", "1e9", min).unwrap_err());
        assert!(
            too_long.contains("from 0.1 to 31536000 (a year)"),
            "{too_long}"
        );
        assert_eq!(
            seconds("t", "interval", "1.5", min).unwrap(),
            Duration::from_millis(1500)
        );
    }
}
