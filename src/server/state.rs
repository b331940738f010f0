//! The server's shared state: configuration, the coalesced "latest
//! snapshot", and the bounded history ring.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::leaks::LeakThresholds;
use crate::snapshot::Snapshot;
use crate::symbolize::Frame;

/// Settings fixed when the server starts.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) token: Option<Vec<u8>>,
    pub(crate) history_interval: Duration,
    pub(crate) history_len: usize,
    pub(crate) history_callsites: usize,
    pub(crate) max_connections: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) leak_window: Duration,
    pub(crate) leak_thresholds: LeakThresholds,
    /// Bound to loopback: answer only requests to loopback names.
    pub(crate) loopback_only: bool,
    /// More names to answer (lowercase), from `ServerBuilder::allow_host`.
    pub(crate) allowed_hosts: Vec<String>,
}

/// The history ring. Snapshots are kept without their frames (a
/// callsite's frames take far more room than its figures); frames live
/// once per callsite id in `frames` and are put back when answering.
#[derive(Default)]
pub(crate) struct History {
    ring: VecDeque<Arc<Snapshot>>,
    frames: HashMap<String, std::sync::Arc<[Frame]>>,
    pushes_since_prune: usize,
}

impl History {
    fn push(&mut self, snap: &Snapshot, capacity: usize, max_callsites: usize) {
        if self.ring.back().is_some_and(|b| b.id >= snap.id) {
            return;
        }
        let mut stripped = snap.clone();
        stripped.sort_callsites(crate::snapshot::SortKey::LiveBytes);
        stripped.truncate_callsites(max_callsites);
        for c in &mut stripped.callsites {
            let frames = std::mem::take(&mut c.frames);
            if !self.frames.contains_key(&c.id) {
                self.frames.insert(c.id.clone(), frames);
            }
        }
        while self.ring.len() >= capacity.max(1) {
            self.ring.pop_front();
        }
        self.ring.push_back(Arc::new(stripped));
        self.pushes_since_prune += 1;
        if self.pushes_since_prune >= 32 {
            self.pushes_since_prune = 0;
            let live: HashSet<&str> = self
                .ring
                .iter()
                .flat_map(|s| s.callsites.iter().map(|c| c.id.as_str()))
                .collect();
            self.frames.retain(|id, _| live.contains(id.as_str()));
        }
    }

    /// The retained snapshots (frames stripped), oldest first.
    pub(crate) fn snapshots(&self) -> Vec<Arc<Snapshot>> {
        self.ring.iter().cloned().collect()
    }

    /// A retained snapshot by id (frames stripped).
    pub(crate) fn get(&self, id: u64) -> Option<Arc<Snapshot>> {
        self.ring.iter().find(|s| s.id == id).cloned()
    }

    /// The frames of a callsite seen in the history.
    pub(crate) fn frames(&self, id: &str) -> Option<&std::sync::Arc<[Frame]>> {
        self.frames.get(id)
    }

    /// The retained ids as ranges of consecutive ids: `"5..=7, 9"`.
    pub(crate) fn describe_ids(&self) -> String {
        let mut out = String::new();
        let mut run: Option<(u64, u64)> = None;
        let flush = |out: &mut String, (a, b): (u64, u64)| {
            if !out.is_empty() {
                out.push_str(", ");
            }
            if a == b {
                out.push_str(&a.to_string());
            } else {
                out.push_str(&format!("{a}..={b}"));
            }
        };
        for s in &self.ring {
            run = match run {
                Some((a, b)) if s.id == b + 1 => Some((a, s.id)),
                Some(r) => {
                    flush(&mut out, r);
                    Some((s.id, s.id))
                }
                None => Some((s.id, s.id)),
            };
        }
        if let Some(r) = run {
            flush(&mut out, r);
        }
        if out.is_empty() {
            out.push_str("none");
        }
        out
    }
}

/// Why a snapshot could not be built.
#[derive(Debug)]
pub(crate) struct BuildFailed(pub(crate) String);

/// What the server asks of its snapshot thread.
pub(crate) enum BuildRequest {
    /// Build a snapshot and send it back.
    Build(tokio::sync::oneshot::Sender<Snapshot>),
    /// The server is stopping: end the thread.
    Stop,
}

/// The snapshot thread's body (`heapwatch-snap`, under the guard): builds
/// what it is asked for, one at a time, off the server's event loop, since
/// symbolizing is blocking work.
pub(crate) fn build_snapshots(requests: mpsc::Receiver<BuildRequest>) {
    while let Ok(BuildRequest::Build(reply)) = requests.recv() {
        // A panic fails this request alone: its reply is dropped, and
        // the caller answers 500 (the panic hook reported it).
        if let Ok(snap) = std::panic::catch_unwind(crate::snapshot::snapshot) {
            let _ = reply.send(snap);
        }
    }
}

/// Shared by every connection and the history task.
pub(crate) struct State {
    pub(crate) cfg: Config,
    latest: tokio::sync::Mutex<Option<(Instant, Arc<Snapshot>)>>,
    history: Mutex<History>,
    /// The snapshot thread's queue.
    builds: mpsc::Sender<BuildRequest>,
}

impl State {
    pub(crate) fn new(cfg: Config, builds: mpsc::Sender<BuildRequest>) -> State {
        State {
            cfg,
            latest: tokio::sync::Mutex::new(None),
            history: Mutex::new(History::default()),
            builds,
        }
    }

    /// Runs `f` on the history (the lock is never held across an await).
    pub(crate) fn with_history<R>(&self, f: impl FnOnce(&History) -> R) -> R {
        let h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        f(&h)
    }

    /// A snapshot whose build started after this call: it shows
    /// everything the caller did before asking. Builds are single-flight:
    /// callers that queue behind a build share the next one, so a burst of
    /// requests costs at most two builds. With `record`, the snapshot also
    /// goes into the history.
    pub(crate) async fn fresh(&self, record: bool) -> Result<Arc<Snapshot>, BuildFailed> {
        let asked = Instant::now();
        let mut slot = self.latest.lock().await;
        if let Some((started, snap)) = slot.as_ref() {
            if *started >= asked {
                if record {
                    self.record(snap);
                }
                return Ok(Arc::clone(snap));
            }
        }
        // Symbolization is blocking CPU work: keep it off the accept loop.
        let started = Instant::now();
        let (reply, built) = tokio::sync::oneshot::channel();
        self.builds
            .send(BuildRequest::Build(reply))
            .map_err(|_| BuildFailed("the snapshot thread has stopped".into()))?;
        let snap = built
            .await
            .map_err(|_| BuildFailed("building the snapshot failed: it panicked".into()))?;
        let snap = Arc::new(snap);
        *slot = Some((started, Arc::clone(&snap)));
        if record {
            self.record(&snap);
        }
        Ok(snap)
    }

    fn record(&self, snap: &Snapshot) {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(snap, self.cfg.history_len, self.cfg.history_callsites);
    }

    /// Makes sure the history has at least one snapshot (the history task
    /// takes the first one at start; a request may arrive before it lands).
    pub(crate) async fn ensure_history(&self) -> Result<(), BuildFailed> {
        if self.with_history(|h| !h.ring.is_empty()) {
            return Ok(());
        }
        self.fresh(true).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_keeps_frames_once() {
        let mut h = History::default();
        let base = crate::snapshot::snapshot();
        for i in 0..100u64 {
            let mut s = base.clone();
            s.id = 1000 + i * 2;
            h.push(&s, 10, usize::MAX);
        }
        assert_eq!(h.ring.len(), 10);
        assert_eq!(h.ring.front().map(|s| s.id), Some(1000 + 90 * 2));
        assert!(h
            .ring
            .iter()
            .all(|s| s.callsites.iter().all(|c| c.frames.is_empty())));
        for c in &base.callsites {
            assert_eq!(h.frames(&c.id), Some(&c.frames));
        }
        assert_eq!(h.describe_ids().matches(", ").count(), 9);
        // An older or equal id is not pushed again.
        let mut old = base.clone();
        old.id = 1;
        h.push(&old, 10, usize::MAX);
        assert_eq!(h.ring.len(), 10);
        assert_eq!(h.ring.back().map(|s| s.id), Some(1000 + 99 * 2));
    }

    #[test]
    fn history_keeps_only_the_largest_callsites() {
        let mut h = History::default();
        let mut s = crate::snapshot::snapshot();
        s.callsites = (0..10u64)
            .map(|i| crate::snapshot::Callsite {
                id: format!("{i:016x}"),
                frames: vec![Frame {
                    function: format!("f{i}"),
                    file: None,
                    line: None,
                }]
                .into(),
                allocations: 1,
                allocated_bytes: i * 100,
                frees: 0,
                freed_bytes: 0,
                live_blocks: 1,
                live_bytes: i * 100,
                estimated: false,
            })
            .collect();
        h.push(&s, 10, 3);
        let kept: Vec<u64> = h.ring[0].callsites.iter().map(|c| c.live_bytes).collect();
        assert_eq!(kept, vec![900, 800, 700]);
    }

    #[test]
    fn describe_ids_compresses_runs() {
        let mut h = History::default();
        let base = crate::snapshot::snapshot();
        for id in [5, 6, 7, 9, 12, 13] {
            let mut s = base.clone();
            s.id = id;
            h.push(&s, 100, usize::MAX);
        }
        assert_eq!(h.describe_ids(), "5..=7, 9, 12..=13");
        assert_eq!(History::default().describe_ids(), "none");
    }
}
