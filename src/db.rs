//! The shared state every connection reaches: the store behind its one lock, the optional data
//! file, the retention window and the connection count. Its methods are the only way to them;
//! each takes the lock for one short step and hands back owned data (after mini-redis' `Db`).
//!
//! The lock rule: nothing that can block happens while the store lock is held — no socket I/O,
//! no stderr, no file I/O. The one thing done under it besides the store's own work is the
//! journal's ordering rule: a batch's point lines are appended to the journal's in-memory
//! pending buffer (its own mutex, never held across I/O) before the store lock is released, so
//! the file holds puts in the order the store applied them. Writing them out comes after.

use crate::defaults;
use crate::journal::{CompactReport, Fsync, Journal, JournalError, WriteError};
use crate::protocol::{self, Request, RequestError, Selector};
use crate::store::{Snapshot, Store};
use crate::{error, info, warn};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// One request line as the connection parsed it: a request, or why it is not one.
pub(crate) type Parsed<'a> = Result<Request<'a>, RequestError>;

/// A reply decided under the lock and written after it is released.
#[derive(Debug)]
pub(crate) enum Reply {
    /// This many `ok` replies in a row: a pipelined run of puts.
    Ok(usize),
    /// An error reply with this message.
    Error(&'static str),
    /// This many puts in a row refused, because the data file cannot be written.
    Failed(WriteError, usize),
    /// A get's points, read after the lock is released.
    Points(Snapshot),
}

/// Where the data lives and how long it is kept: what [`Db::open`] needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings<'a> {
    pub data: Option<&'a Path>,
    pub fsync: Fsync,
    pub retention: Option<Duration>,
}

/// The shared state; see the module docs.
#[derive(Debug)]
pub(crate) struct Db {
    store: Mutex<Store>,
    journal: Option<Journal>,
    retention: Option<Duration>,
    open_connections: AtomicUsize,
}

impl Db {
    /// An empty store, or the data file's points when there is one: it is replayed, and
    /// compacted at once when it holds more than twice the live data.
    ///
    /// # Errors
    /// [`JournalError`] when the data file cannot be opened, read or locked, or has a bad line.
    pub fn open(settings: Settings<'_>) -> Result<Db, JournalError> {
        let mut db = Db {
            store: Mutex::new(Store::new()),
            journal: None,
            retention: settings.retention,
            open_connections: AtomicUsize::new(0),
        };
        if let Some(path) = settings.data {
            let (store, journal) = load(path, settings.fsync, db.since())?;
            db.store = Mutex::new(store);
            db.journal = Some(journal);
        }
        Ok(db)
    }

    /// The oldest timestamp a `get` returns: now minus the retention window.
    fn since(&self) -> i64 {
        match self.retention {
            Some(window) => {
                let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
                defaults::now().saturating_sub(window)
            }
            None => i64::MIN,
        }
    }

    /// Locks the store. A thread that panicked while holding the lock poisons it; the store's
    /// operations do not panic and leave it consistent at every step, so the data is still
    /// sound and every other client keeps being served.
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a batch of requests under one lock acquisition, in order, and appends their
    /// replies to `replies`. With a data file, the puts are written (group commit) after the
    /// lock is released and before this returns: a put is acknowledged only once written.
    ///
    /// Returns the data file's failure when this batch's puts could not be written; their
    /// replies then say so, and the caller logs it.
    pub fn apply(&self, requests: &[Parsed<'_>], replies: &mut Vec<Reply>) -> Option<WriteError> {
        let journal = self.journal.as_ref();
        // A data file that cannot be written refuses puts before they touch the store.
        let refusal = journal.and_then(Journal::failure);
        let since = self.since();
        let first = replies.len();
        let written_to = {
            let mut store = self.lock();
            let mut appender = None;
            for request in requests {
                match *request {
                    Ok(Request::Put {
                        metric,
                        value,
                        timestamp,
                    }) => {
                        if let Some(e) = &refusal {
                            match replies.last_mut() {
                                Some(Reply::Failed(_, run)) => *run += 1,
                                _ => replies.push(Reply::Failed(e.clone(), 1)),
                            }
                            continue;
                        }
                        store.put(metric, value, timestamp);
                        if let Some(journal) = journal {
                            appender
                                .get_or_insert_with(|| journal.appender())
                                .push(metric, value, timestamp);
                        }
                        match replies.last_mut() {
                            Some(Reply::Ok(run)) => *run += 1,
                            _ => replies.push(Reply::Ok(1)),
                        }
                    }
                    Ok(Request::Get(selector)) => {
                        replies.push(Reply::Points(store.snapshot(selector, since)));
                    }
                    Err(_) => replies.push(Reply::Error(protocol::WRONG_COMMAND)),
                }
            }
            // The journal's ordering rule: the lines are appended before the lock goes.
            appender.map(|appender| appender.finish())
        };
        let (journal, seq) = journal.zip(written_to)?;
        let failure = journal.commit(seq).err()?;
        // Not written, so not acknowledged.
        for reply in &mut replies[first..] {
            if let Reply::Ok(run) = *reply {
                *reply = Reply::Failed(failure.clone(), run);
            }
        }
        Some(failure)
    }

    /// Takes one of `limit` connection places; `false` when all are taken.
    pub fn try_open_connection(&self, limit: usize) -> bool {
        self.open_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a place taken by [`try_open_connection`](Db::try_open_connection).
    pub fn close_connection(&self) {
        self.open_connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Acquire)
    }

    /// Whether anything needs doing in the background: a data file to sync, retry and
    /// compact, or a retention window to apply.
    pub fn needs_maintenance(&self) -> bool {
        self.journal.is_some() || self.retention.is_some()
    }

    /// One step of the background work; call it every [`Maintenance::TICK`].
    pub fn maintain(&self, state: &mut Maintenance) {
        let now = Instant::now();
        let second = Duration::from_secs(1);
        if let Some(journal) = &self.journal {
            let check = now.duration_since(state.checked) >= second;
            if journal.failure().is_some() && check {
                // A retry: it clears the failure, and logs, once a write succeeds.
                let _ = journal.flush();
            }
            if journal.fsync() == Fsync::EverySec && now.duration_since(state.synced) >= second {
                state.synced = now;
                if let Err(e) = journal.sync() {
                    error!("cannot sync {}: {e}", journal.path().display());
                }
            }
            if check {
                state.checked = now;
                let points = self.lock().points();
                if journal.needs_compaction(points) && now >= state.compact_after {
                    self.compact(journal, state);
                }
            }
        }
        if let Some(window) = self.retention {
            let every = (window / 10).clamp(second, 60 * second);
            if now.duration_since(state.swept) >= every {
                state.swept = now;
                let since = self.since();
                let removed = self.lock().expire_before(since);
                if removed > 0 {
                    info!("retention: removed {removed} points older than {since}");
                }
            }
        }
    }

    fn compact(&self, journal: &Journal, state: &mut Maintenance) {
        let since = self.since();
        // The snapshot and the journal position are read under the same store lock, so the
        // lines after that position are exactly the puts the snapshot lacks.
        let take = || {
            let store = self.lock();
            (store.snapshot(Selector::All, since), journal.position())
        };
        match journal.compact(take) {
            Ok(report) => log_compaction(journal, &report),
            Err(e) => {
                state.compact_after = Instant::now() + Maintenance::COMPACT_RETRY;
                error!(
                    "compaction failed, next try in {:?}: {e}",
                    Maintenance::COMPACT_RETRY
                );
            }
        }
    }

    /// A test's handle on the store, as a connection thread that panics would hold it.
    #[cfg(test)]
    fn store(&self) -> MutexGuard<'_, Store> {
        self.lock()
    }
}

/// When the background steps last ran.
#[derive(Debug)]
pub(crate) struct Maintenance {
    synced: Instant,
    checked: Instant,
    swept: Instant,
    /// After a failed compaction (a full disk, say), no new attempt before this.
    compact_after: Instant,
}

impl Maintenance {
    /// How often the maintenance thread wakes.
    pub const TICK: Duration = Duration::from_millis(100);
    /// How long a failed compaction waits before the next try.
    const COMPACT_RETRY: Duration = Duration::from_secs(60);

    pub fn new() -> Self {
        let now = Instant::now();
        Maintenance {
            synced: now,
            checked: now,
            swept: now,
            compact_after: now,
        }
    }
}

/// Replays the data file, and compacts it at once when it holds more than twice the live data.
fn load(path: &Path, fsync: Fsync, since: i64) -> Result<(Store, Journal), JournalError> {
    let started = Instant::now();
    let (store, journal, report) = Journal::open(path, fsync, since)?;
    if report.torn_bytes > 0 {
        warn!(
            "{}: dropped a torn last line ({} bytes) left by an interrupted write",
            path.display(),
            report.torn_bytes
        );
    }
    if let Some(first) = &report.first_invalid {
        warn!(
            "{}: skipped {} points whose metric names hold whitespace or control characters, \
             which are no longer accepted (first: {first}); the next compaction drops them",
            path.display(),
            report.invalid_names
        );
    }
    info!(
        "loaded {} points in {} metrics from {} ({} lines, {} expired) in {} ms",
        store.points(),
        store.metrics(),
        path.display(),
        report.lines,
        report.expired,
        started.elapsed().as_millis()
    );
    if journal.needs_compaction(store.points()) {
        let compacted =
            journal.compact(|| (store.snapshot(Selector::All, since), journal.position()))?;
        log_compaction(&journal, &compacted);
    }
    Ok((store, journal))
}

fn log_compaction(journal: &Journal, report: &CompactReport) {
    info!(
        "compacted {}: {} lines to {} in {} ms",
        journal.path().display(),
        report.lines_before,
        report.lines_after,
        report.millis
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    fn memory(retention: Option<Duration>) -> Db {
        Db::open(Settings {
            data: None,
            fsync: Fsync::No,
            retention,
        })
        .unwrap()
    }

    #[test]
    fn a_batch_gets_one_reply_per_request_in_order() {
        let db = memory(None);
        let requests = [
            Request::parse(b"put a 1 1"),
            Request::parse(b"put a 2 2"),
            Request::parse(b"nonsense"),
            Request::parse(b"get a"),
            Request::parse(b"put b 1 1"),
        ]
        .map(|parsed| parsed.map(Option::unwrap));
        let mut replies = Vec::new();
        assert!(db.apply(&requests, &mut replies).is_none());
        let shapes: Vec<String> = replies
            .iter_mut()
            .map(|reply| match reply {
                Reply::Ok(n) => format!("ok {n}"),
                Reply::Error(message) => format!("error {message}"),
                Reply::Failed(_, n) => format!("failed {n}"),
                Reply::Points(snapshot) => format!("points {}", snapshot.iter().count()),
            })
            .collect();
        assert_eq!(shapes, ["ok 2", "error wrong command", "points 2", "ok 1"]);
    }

    #[test]
    fn a_panic_while_holding_the_lock_does_not_stop_other_clients() {
        let db = Arc::new(memory(None));
        db.store().put("m", 1.0, 1);
        let poisoner = Arc::clone(&db);
        let panicked = thread::spawn(move || {
            let _guard = poisoner.store();
            panic!("a connection thread fails while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert!(db.store.is_poisoned());
        let put = [Ok(Request::Put {
            metric: "m",
            value: 2.0,
            timestamp: 2,
        })];
        assert!(db.apply(&put, &mut Vec::new()).is_none());
        assert_eq!(db.store().points(), 2);
    }

    #[test]
    fn a_retention_longer_than_time_itself_keeps_everything() {
        let db = memory(Some(Duration::from_secs(u64::MAX)));
        assert!(db.since() < -1_000_000_000);
    }

    #[test]
    fn connection_places_are_bounded_and_given_back() {
        let db = memory(None);
        assert!(db.try_open_connection(2));
        assert!(db.try_open_connection(2));
        assert!(!db.try_open_connection(2));
        db.close_connection();
        assert_eq!(db.open_connections(), 1);
        assert!(db.try_open_connection(2));
    }
}
