//! In-use bytes as an SVG flamegraph, drawn by `inferno` from folded
//! stacks.

use std::collections::BTreeMap;
use std::io;

use inferno::flamegraph::color::{BasicPalette, Palette};
use inferno::flamegraph::{self, Options};

use super::{NO_FRAMES, UNATTRIBUTED_FRAME};
use crate::error::Error;
use crate::snapshot::Snapshot;
use crate::symbolize::Frame;

const TITLE: &str = "heapwatch: in-use bytes";
const WIDTH: usize = 1200;

/// A frame's name as a folded-stack element: `;` separates frames and a
/// line ends a stack, so neither may appear in a name (`;` occurs in Rust
/// names such as `<[u8; 4] as Trait>::f`).
fn folded_name(name: &str, out: &mut String) {
    for c in name.chars() {
        match c {
            ';' => out.push(','),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
}

/// The folded stack of `frames` (innermost first), root first.
fn fold(frames: &[Frame]) -> String {
    let mut s = String::new();
    for (i, f) in frames.iter().rev().enumerate() {
        if i > 0 {
            s.push(';');
        }
        folded_name(&f.function, &mut s);
    }
    s
}

/// Folded stacks with their live bytes, merged and skipping zero.
fn folded_lines(snapshot: &Snapshot) -> Vec<String> {
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    for c in &snapshot.callsites {
        if c.live_bytes == 0 {
            continue;
        }
        let stack = if c.frames.is_empty() {
            NO_FRAMES.to_string()
        } else {
            fold(&c.frames)
        };
        let w = stacks.entry(stack).or_default();
        *w = w.saturating_add(c.live_bytes);
    }
    if snapshot.unattributed.live_bytes > 0 {
        let w = stacks.entry(UNATTRIBUTED_FRAME.to_string()).or_default();
        *w = w.saturating_add(snapshot.unattributed.live_bytes);
    }
    stacks
        .into_iter()
        .map(|(stack, bytes)| format!("{stack} {bytes}"))
        .collect()
}

fn subtitle(snapshot: &Snapshot) -> String {
    let sampling = match snapshot.sample_interval_bytes {
        Some(n) => format!("sampled every {n} bytes on average (estimates)"),
        None => format!("sampling {}", snapshot.mode),
    };
    format!(
        "snapshot {} of run {}, {} live bytes in total, {sampling}",
        snapshot.id, snapshot.run_id, snapshot.totals.live_bytes
    )
}

fn escape_xml(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// The SVG for a snapshot with nothing live in any callsite: a titled
/// image saying so (inferno refuses empty input).
fn empty_svg(snapshot: &Snapshot) -> String {
    let mut s = String::new();
    s.push_str("<?xml version=\"1.0\" standalone=\"no\"?>\n");
    s.push_str(&format!(
        "<svg version=\"1.1\" width=\"{WIDTH}\" height=\"90\" viewBox=\"0 0 {WIDTH} 90\" \
         xmlns=\"http://www.w3.org/2000/svg\">\n"
    ));
    s.push_str("<rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"#eeeeee\"/>\n");
    for (y, size, text) in [
        (24, 17, TITLE.to_string()),
        (46, 12, subtitle(snapshot)),
        (
            72,
            14,
            "no live sampled memory: no callsite holds live bytes".to_string(),
        ),
    ] {
        s.push_str(&format!(
            "<text x=\"50%\" y=\"{y}\" text-anchor=\"middle\" font-family=\"Verdana\" \
             font-size=\"{size}\">"
        ));
        escape_xml(&text, &mut s);
        s.push_str("</text>\n");
    }
    s.push_str("</svg>\n");
    s
}

impl Snapshot {
    /// Draws the snapshot's in-use bytes as an SVG flamegraph: one tower
    /// per callsite, root at the bottom, width proportional to its live
    /// bytes (estimates when the snapshot is sampled by bytes). Callsites
    /// with nothing live are left out; the unattributed row's live bytes
    /// appear as `[unattributed]`. When nothing at all is live the SVG says
    /// so instead of drawing an empty graph.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if inferno fails to render (it does not for the input
    /// this builds).
    ///
    /// # Example
    ///
    /// ```
    /// #[global_allocator]
    /// static GLOBAL: heapwatch::Tracker<std::alloc::System> =
    ///     heapwatch::Tracker::new(std::alloc::System);
    ///
    /// fn main() {
    ///     heapwatch::set_sampling(heapwatch::Sampling::All);
    ///     let kept = vec![0u8; 100_000];
    ///     let svg = heapwatch::snapshot().to_flamegraph_svg().unwrap();
    ///     assert!(svg.contains("<svg"));
    ///     drop(kept);
    /// }
    /// ```
    pub fn to_flamegraph_svg(&self) -> Result<String, Error> {
        crate::budget::never_refused(|| self.flamegraph_svg())
    }

    fn flamegraph_svg(&self) -> Result<String, Error> {
        let lines = folded_lines(self);
        if lines.is_empty() {
            return Ok(empty_svg(self));
        }
        let mut opt = Options::default();
        opt.title = TITLE.to_string();
        opt.subtitle = Some(subtitle(self));
        opt.count_name = "bytes".to_string();
        opt.colors = Palette::Basic(BasicPalette::Mem);
        opt.hash = true;
        opt.deterministic = true;
        opt.image_width = Some(WIDTH);
        let mut svg = Vec::new();
        flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut svg)
            .map_err(|e| Error::io("rendering the flamegraph", e))?;
        String::from_utf8(svg).map_err(|e| {
            Error::io(
                "rendering the flamegraph",
                io::Error::new(io::ErrorKind::InvalidData, e),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(f: &str) -> Frame {
        Frame {
            function: f.to_string(),
            file: None,
            line: None,
        }
    }

    #[test]
    fn folds_root_first_and_sanitizes() {
        let frames = [frame("<[u8; 4] as app::T>::f"), frame("app::main")];
        assert_eq!(fold(&frames), "app::main;<[u8, 4] as app::T>::f");
    }

    #[test]
    fn escapes_xml() {
        let mut s = String::new();
        escape_xml("a<b>&\"c\"", &mut s);
        assert_eq!(s, "a&lt;b&gt;&amp;&quot;c&quot;");
    }
}
