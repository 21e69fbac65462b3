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
use crate::forward::{self, Totals, Upstream};
use crate::journal::{self, CompactReport, Fsync, Journal, JournalError, Position, WriteError};
use crate::log;
use crate::protocol::{self, Request, RequestError, Selector};
use crate::store::{MemoryFull, NameHasher, SeriesSnapshot, Store};
use crate::{error, info, warn};
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// One request line as the connection parsed it: a request, or why it is not one.
pub(crate) type Parsed<'a> = Result<Request<'a>, RequestError>;

/// The reply to a put refused by the memory limit.
pub(crate) const MEMORY_LIMIT_REACHED: &str = "memory limit reached";
/// How much one step of a `get *`, a sweep or a compaction reads under the lock: about this
/// many points (whole blocks count in full) or series. It bounds both the time the lock is
/// held and what a reader that stops reading keeps alive.
pub(crate) const STEP_POINTS: usize = 8192;
/// Series whose late points one maintenance step merges.
const MERGE_SERIES: usize = 64;
/// Series one retention step visits.
const SWEEP_SERIES: usize = 256;

/// A reply decided under the lock and written after it is released.
#[derive(Debug)]
pub(crate) enum Reply {
    /// This many `ok` replies in a row: a pipelined run of puts.
    Ok(usize),
    /// This many error replies in a row with this message.
    Error(&'static str, usize),
    /// This many puts in a row refused, because the data file cannot be written.
    Failed(WriteError, usize),
    /// A get of one metric: its points (`None`: no such metric).
    Series(Option<SeriesSnapshot>),
    /// A get of every metric, read in steps with [`Db::read_step`] as the reply is written.
    All(Cursor),
    /// The `stats` rows, all at one timestamp.
    Stats(Vec<(&'static str, f64)>, i64),
}

impl Reply {
    /// Appends an error reply, merging it into a run of the same.
    pub fn push_error(replies: &mut Vec<Reply>, message: &'static str) {
        match replies.last_mut() {
            Some(Reply::Error(last, run)) if *last == message => *run += 1,
            _ => replies.push(Reply::Error(message, 1)),
        }
    }
}

/// Where a `get *` has got to: it goes on after this name.
#[derive(Debug)]
pub(crate) struct Cursor {
    after: Option<Arc<str>>,
    range: RangeInclusive<i64>,
    done: bool,
}

/// What [`Db::apply`] did with a batch.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Requests applied, from the front of the batch: all of them, or up to and including a
    /// `get *`, whose reply must be written before later requests are applied.
    pub consumed: usize,
    /// The data file's failure, when this batch's puts could not be written; their replies say
    /// so, and the caller logs it.
    pub write_failure: Option<WriteError>,
    /// Puts refused by the memory limit.
    pub memory_refused: usize,
    /// Points dropped from full forward queues to make room for these.
    pub forward_dropped: u64,
}

/// Where the data lives, how long it is kept and how much memory it may take: what
/// [`Db::open`] needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings<'a> {
    pub data: Option<&'a Path>,
    pub fsync: Fsync,
    pub retention: Option<Duration>,
    pub max_memory: Option<usize>,
    pub self_metrics: Option<Duration>,
    /// Upstreams to forward every put to, and the bound of each one's queue in memory.
    pub forward: &'a [String],
    pub forward_buffer: u64,
}

/// The server's counters; each is exact, and updated once per batch rather than per request.
#[derive(Debug, Default)]
struct Counters {
    connections: AtomicUsize,
    connections_total: AtomicU64,
    puts: AtomicU64,
    gets: AtomicU64,
    errors: AtomicU64,
    memory_refused: AtomicU64,
}

/// The shared state; see the module docs.
#[derive(Debug)]
pub(crate) struct Db {
    store: Mutex<Store>,
    /// The store's name hasher: puts' names are hashed before the lock is taken.
    names: NameHasher,
    journal: Option<Arc<Journal>>,
    upstreams: Vec<Arc<Upstream>>,
    forwarded: Arc<Totals>,
    retention: Option<Duration>,
    max_memory: Option<usize>,
    self_metrics: Option<Duration>,
    started: Instant,
    counters: Counters,
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
            names: NameHasher::default(),
            journal: None,
            upstreams: Vec::new(),
            forwarded: Arc::new(Totals::default()),
            retention: settings.retention,
            max_memory: settings.max_memory,
            self_metrics: settings.self_metrics,
            started: Instant::now(),
            counters: Counters::default(),
        };
        if let Some(path) = settings.data {
            // Progress files sit beside the file a link names, as the data file's own do.
            let path = &journal::resolve_link(path);
            // Before the replay, which may take a while: a progress file that could never be
            // written would leave its upstream's place unsaved for good.
            for addr in settings.forward {
                let progress = forward::progress_path(path, addr);
                let name = progress.file_name().unwrap_or_default().to_string_lossy();
                journal::check_made_name(
                    path,
                    &name,
                    &format!("its forwarding progress file for {addr} ({name}.PID.tmp)"),
                )?;
            }
            let (store, journal) = load(path, settings.fsync, db.since())?;
            db.store = Mutex::new(store);
            db.journal = Some(Arc::new(journal));
        }
        let names = db.lock().name_hasher();
        db.names = names;
        for addr in settings.forward {
            let totals = Arc::clone(&db.forwarded);
            db.upstreams.push(Arc::new(match &db.journal {
                Some(journal) => Upstream::from_file(addr, Arc::clone(journal), totals),
                None => Upstream::in_memory(addr, settings.forward_buffer, totals),
            }));
        }
        // Replayed overwrites are counted once merged.
        db.lock().merge_late();
        if db
            .journal()
            .is_some_and(|j| j.needs_compaction(db.lock().points()))
        {
            db.compact_now()?;
        }
        db.lock().set_memory_limit(settings.max_memory);
        Ok(db)
    }

    fn journal(&self) -> Option<&Journal> {
        self.journal.as_deref()
    }

    /// The upstreams puts are forwarded to; each needs a thread running
    /// [`forward::run`](crate::forward::run).
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
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

    /// Applies requests from the front of a batch under one lock acquisition, in order, and
    /// appends their replies to `replies`; it stops after a `get *` (see [`Applied`]). With a
    /// data file, the puts are written (group commit) after the lock is released and before
    /// this returns: a put is acknowledged only once written.
    pub fn apply(&self, requests: &[Parsed<'_>], replies: &mut Vec<Reply>) -> Applied {
        let journal = self.journal();
        // A data file that cannot be written refuses puts before they touch the store.
        let refusal = journal.and_then(Journal::failure);
        let since = self.since();
        let first = replies.len();
        let mut applied = Applied::default();
        let (mut puts, mut gets) = (0u64, 0u64);
        // Without a data file, forwarded points go to each upstream's queue in memory, as
        // records: their sender threads format them. Puts the memory limit refused are not
        // forwarded.
        let forward_in_memory = journal.is_none() && !self.upstreams.is_empty();
        let mut refused = Vec::new();
        // Senders to wake once the store lock is released.
        let mut wake = Vec::new();
        // Hashed before the lock: the less each put does under it, the better several
        // connections share it.
        let hashes: Vec<u64> = requests
            .iter()
            .map(|request| match request {
                Ok(Request::Put { metric, .. }) => self.names.hash(metric),
                _ => 0,
            })
            .collect();
        let written_to = {
            let mut store = self.lock();
            let mut appender = None;
            for (request, &hash) in requests.iter().zip(&hashes) {
                applied.consumed += 1;
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
                        if let Err(MemoryFull) = store.put_hashed(metric, hash, value, timestamp) {
                            applied.memory_refused += 1;
                            refused.push(applied.consumed - 1);
                            Reply::push_error(replies, MEMORY_LIMIT_REACHED);
                            continue;
                        }
                        if let Some(journal) = journal {
                            appender
                                .get_or_insert_with(|| journal.appender())
                                .push(metric, value, timestamp);
                        }
                        puts += 1;
                        match replies.last_mut() {
                            Some(Reply::Ok(run)) => *run += 1,
                            _ => replies.push(Reply::Ok(1)),
                        }
                    }
                    Ok(Request::Get(selector)) => {
                        gets += 1;
                        if read(&store, selector, since..=i64::MAX, replies) {
                            break;
                        }
                    }
                    Ok(Request::GetRange { selector, from, to }) => {
                        gets += 1;
                        if read(&store, selector, from.max(since)..=to, replies) {
                            break;
                        }
                    }
                    Ok(Request::Stats) => {
                        store.merge_late();
                        replies.push(Reply::Stats(self.stats(&store), defaults::now()));
                    }
                    Err(e) => Reply::push_error(replies, e.reply()),
                }
            }
            // The journal's ordering rule: the lines are appended before the lock goes. The
            // same holds for the forward queues: upstreams see puts in the store's order.
            if forward_in_memory && puts > 0 {
                let applied_now = &requests[..applied.consumed];
                for queue in self.upstreams.iter().filter_map(|u| u.queue()) {
                    let pushed = queue.push_with(puts, |out| {
                        let mut refused = refused.iter().copied().peekable();
                        for (i, request) in applied_now.iter().enumerate() {
                            if let Ok(Request::Put {
                                metric,
                                value,
                                timestamp,
                            }) = *request
                            {
                                if refused.next_if_eq(&i).is_none() {
                                    forward::push_record(out, metric, value, timestamp);
                                }
                            }
                        }
                    });
                    applied.forward_dropped += pushed.dropped;
                    if pushed.wake {
                        wake.push(queue);
                    }
                }
            }
            appender.map(|appender| appender.finish())
        };
        // Not under the store lock: a woken sender may take this core at once.
        for queue in wake {
            queue.wake();
        }
        if applied.forward_dropped > 0 {
            self.forwarded.dropped(applied.forward_dropped);
        }
        let counters = &self.counters;
        if applied.memory_refused > 0 {
            counters
                .memory_refused
                .fetch_add(applied.memory_refused as u64, Ordering::Relaxed);
        }
        if gets > 0 {
            counters.gets.fetch_add(gets, Ordering::Relaxed);
        }
        let Some((journal, seq)) = journal.zip(written_to) else {
            counters.puts.fetch_add(puts, Ordering::Relaxed);
            return applied;
        };
        if let Err(failure) = journal.commit(seq) {
            // Not written, so not acknowledged.
            for reply in &mut replies[first..] {
                if let Reply::Ok(run) = *reply {
                    *reply = Reply::Failed(failure.clone(), run);
                }
            }
            applied.write_failure = Some(failure);
        } else {
            counters.puts.fetch_add(puts, Ordering::Relaxed);
        }
        applied
    }

    /// The `stats` figures, sorted by name. `store` is the locked store: the figures are read
    /// at one moment.
    fn stats(&self, store: &Store) -> Vec<(&'static str, f64)> {
        let c = &self.counters;
        let count = |n: &AtomicU64| n.load(Ordering::Relaxed) as f64;
        let mut rows = vec![
            ("metrics.connections", self.open_connections() as f64),
            ("metrics.connections_total", count(&c.connections_total)),
            ("metrics.errors_total", count(&c.errors)),
            ("metrics.gets_total", count(&c.gets)),
            ("metrics.memory_bytes", store.memory_bytes() as f64),
            ("metrics.points", store.points() as f64),
            ("metrics.puts_total", count(&c.puts)),
            ("metrics.series", store.metrics() as f64),
            (
                "metrics.uptime_seconds",
                self.started.elapsed().as_secs() as f64,
            ),
        ];
        if let Some(journal) = self.journal() {
            rows.push(("metrics.data_file_bytes", journal.file_bytes() as f64));
        }
        if !self.upstreams.is_empty() {
            let pending = self.upstreams.iter().map(|u| u.pending()).sum::<u64>();
            rows.push(("metrics.forward_pending", pending as f64));
            rows.push(("metrics.forward_sent_total", count(&self.forwarded.sent)));
            rows.push((
                "metrics.forward_dropped_total",
                count(&self.forwarded.dropped),
            ));
        }
        if let Some(limit) = self.max_memory {
            rows.push(("metrics.memory_limit_bytes", limit as f64));
            rows.push(("metrics.memory_refused_total", count(&c.memory_refused)));
        }
        rows.sort_by_key(|&(name, _)| name);
        rows
    }

    /// Counts error replies sent, wherever they were decided.
    pub fn count_errors(&self, n: u64) {
        self.counters.errors.fetch_add(n, Ordering::Relaxed);
    }

    /// Stores the current `stats` figures as points, journaled like any put: `--self-metrics`.
    fn record_self_metrics(&self) {
        let now = defaults::now();
        let rows = {
            let mut store = self.lock();
            store.merge_late();
            self.stats(&store)
        };
        let requests: Vec<Parsed<'_>> = rows
            .iter()
            .map(|&(metric, value)| {
                Ok(Request::Put {
                    metric,
                    value,
                    timestamp: now,
                })
            })
            .collect();
        let applied = self.apply(&requests, &mut Vec::new());
        if let Some(e) = applied.write_failure {
            warn!("self-metrics not stored: {e}");
        }
    }

    /// The next step of a `get *`: series in name order, each complete and consistent, about
    /// [`STEP_POINTS`] points in all. Empty when the reply is complete.
    pub fn read_step(&self, cursor: &mut Cursor) -> Vec<SeriesSnapshot> {
        if cursor.done {
            return Vec::new();
        }
        let step =
            self.lock()
                .read_after(cursor.after.as_deref(), cursor.range.clone(), STEP_POINTS);
        match step.last() {
            Some(last) => cursor.after = Some(Arc::from(last.name())),
            None => cursor.done = true,
        }
        step
    }

    /// Takes one of `limit` connection places; `false` when all are taken.
    pub fn try_open_connection(&self, limit: usize) -> bool {
        let taken = self
            .counters
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if taken {
            self.counters
                .connections_total
                .fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Gives back a place taken by [`try_open_connection`](Db::try_open_connection).
    pub fn close_connection(&self) {
        self.counters.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.counters.connections.load(Ordering::Acquire)
    }

    /// One step of the background work; call it every [`Maintenance::TICK`].
    pub fn maintain(&self, state: &mut Maintenance) {
        let now = Instant::now();
        let second = Duration::from_secs(1);
        self.merge_late_step(state, now, Maintenance::TICK / 2);
        if let Some(journal) = self.journal() {
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
                self.check_data_file(journal, state, now);
            }
        }
        if let Some(every) = self.self_metrics {
            if now.duration_since(state.recorded) >= every {
                state.recorded = now;
                self.record_self_metrics();
            }
        }
        if let Some(window) = self.retention {
            let every = (window / 10).clamp(second, 60 * second);
            if state.sweeping.is_some() || now.duration_since(state.swept) >= every {
                self.sweep(state);
            }
        }
    }

    /// Rewrites the data file from memory when it was removed or replaced, and compacts it
    /// when it has grown to more than twice the live data.
    fn check_data_file(&self, journal: &Journal, state: &mut Maintenance, now: Instant) {
        if now < state.compact_after {
            return;
        }
        let lost = journal.lost();
        if let Some(why) = lost {
            error!(
                "data file {} is not the file being written ({why}); writing a complete new one \
                 from memory",
                journal.path().display()
            );
        } else if !journal.needs_compaction(self.lock().points()) {
            return;
        }
        match self.compact_now() {
            Ok(report) if lost.is_some() => info!(
                "rewrote {} from memory: {} lines in {} ms",
                journal.path().display(),
                report.lines_after,
                report.millis
            ),
            Ok(_) => {}
            Err(e) => {
                let retry = if lost.is_some() {
                    Maintenance::REWRITE_RETRY
                } else {
                    Maintenance::COMPACT_RETRY
                };
                state.compact_after = now + retry;
                error!(
                    "compaction failed, next try in {retry:?}: {}",
                    log::chain(&e)
                );
            }
        }
    }

    /// Retention, in steps that each hold the lock briefly: runs steps for up to a tick's
    /// worth of time, and goes on at the next tick when there is more.
    fn sweep(&self, state: &mut Maintenance) {
        let started = Instant::now();
        let since = self.since();
        loop {
            let cursor = state.sweeping.take().unwrap_or(None);
            let (removed, next) = self
                .lock()
                .expire_after(cursor.as_deref(), since, SWEEP_SERIES);
            state.swept_points += removed;
            match next {
                Some(next) => state.sweeping = Some(Some(next)),
                None => {
                    state.swept = Instant::now();
                    if state.swept_points > 0 {
                        info!(
                            "retention: removed {} points older than {since}",
                            state.swept_points
                        );
                    }
                    state.swept_points = 0;
                    return;
                }
            }
            if started.elapsed() >= Maintenance::TICK / 2 {
                return;
            }
        }
    }

    /// Late points are merged into their blocks within about a second: once a second a pass
    /// starts over the series waiting then, and goes on, a few series per lock, for at most
    /// `budget` of each tick until it is done. Puts merge busy series' lists sooner; merging
    /// every tick took the lock from them ten times a second, for lists half full.
    fn merge_late_step(&self, state: &mut Maintenance, now: Instant, budget: Duration) {
        if state.merge_left == 0 {
            if now.duration_since(state.merged) < Maintenance::MERGE_EVERY {
                return;
            }
            state.merged = now;
            state.merge_left = self.lock().late_waiting();
        }
        while state.merge_left > 0 {
            let most = state.merge_left.min(MERGE_SERIES);
            let merged = self.lock().merge_late_some(most);
            state.merge_left = if merged < most {
                0
            } else {
                state.merge_left - most
            };
            if now.elapsed() >= budget {
                break;
            }
        }
    }

    /// Compacts the data file now, reading the store in steps.
    fn compact_now(&self) -> Result<CompactReport, JournalError> {
        let Some(journal) = self.journal() else {
            return Ok(CompactReport::default());
        };
        let since = self.since();
        // The position is read under the store lock, before the first step: every put after
        // it is in the tail that compaction copies.
        let at: Position = {
            let _store = self.lock();
            journal.position()
        };
        let mut cursor = Cursor {
            after: None,
            range: since..=i64::MAX,
            done: false,
        };
        // Forwarders that are behind keep the lines they have not yet sent.
        let keep_from = self
            .upstreams
            .iter()
            .filter_map(|u| u.keep_from())
            .min()
            .unwrap_or(u64::MAX);
        let report = journal.compact(at, keep_from, |out| {
            let mut added = 0;
            while added == 0 {
                let step = self.read_step(&mut cursor);
                if step.is_empty() {
                    break;
                }
                for series in &step {
                    for (timestamp, value) in series.points() {
                        protocol::write_point(out, series.name(), value, timestamp);
                        added += 1;
                    }
                }
            }
            added
        })?;
        // Their saved places are offsets in the file, which is a new one now.
        for upstream in &self.upstreams {
            upstream.save();
        }
        log_compaction(journal, &report);
        Ok(report)
    }

    /// A test's handle on the store, as a connection thread that panics would hold it.
    #[cfg(test)]
    fn store(&self) -> MutexGuard<'_, Store> {
        self.lock()
    }
}

/// Queues the reply to a get; `true` for a `get *`, whose reply is read in steps later.
fn read(
    store: &Store,
    selector: Selector<'_>,
    range: RangeInclusive<i64>,
    replies: &mut Vec<Reply>,
) -> bool {
    match selector {
        Selector::Metric(metric) => {
            replies.push(Reply::Series(store.read(metric, range)));
            false
        }
        Selector::All => {
            replies.push(Reply::All(Cursor {
                after: None,
                range,
                done: false,
            }));
            true
        }
    }
}

/// When the background steps last ran, and where a sweep has got to.
#[derive(Debug)]
pub(crate) struct Maintenance {
    /// When the last pass over late lists started, and how many series it has left.
    merged: Instant,
    merge_left: usize,
    synced: Instant,
    checked: Instant,
    swept: Instant,
    recorded: Instant,
    /// A retention sweep under way: `Some(cursor)`, the cursor `None` at its start.
    sweeping: Option<Option<Arc<str>>>,
    swept_points: usize,
    /// After a failed compaction (a full disk, say), no new attempt before this.
    compact_after: Instant,
}

impl Maintenance {
    /// How often the maintenance thread wakes.
    pub const TICK: Duration = Duration::from_millis(100);
    /// How often a pass over late lists starts (see [`Db::merge_late_step`]).
    const MERGE_EVERY: Duration = Duration::from_secs(1);
    /// How long a failed compaction waits before the next try.
    const COMPACT_RETRY: Duration = Duration::from_secs(60);
    /// How long a failed rewrite of a lost data file waits before the next try.
    const REWRITE_RETRY: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        let now = Instant::now();
        Maintenance {
            merged: now,
            merge_left: 0,
            synced: now,
            checked: now,
            swept: now,
            recorded: now,
            sweeping: None,
            swept_points: 0,
            compact_after: now,
        }
    }
}

/// Replays the data file and logs what it found.
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
    for leftover in &report.leftovers {
        warn!(
            "removed {}, a file left half-written by a server that stopped while writing it",
            leftover.display()
        );
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
    use std::thread;

    fn memory(retention: Option<Duration>) -> Db {
        Db::open(Settings {
            data: None,
            fsync: Fsync::No,
            retention,
            max_memory: None,
            self_metrics: None,
            forward: &[],
            forward_buffer: 0,
        })
        .unwrap()
    }

    fn parse<'a>(lines: &[&'a str]) -> Vec<Parsed<'a>> {
        lines
            .iter()
            .map(|line| Request::parse(line.as_bytes()).map(Option::unwrap))
            .collect()
    }

    fn shapes(db: &Db, replies: &mut Vec<Reply>) -> Vec<String> {
        replies
            .drain(..)
            .map(|reply| match reply {
                Reply::Ok(n) => format!("ok {n}"),
                Reply::Error(message, n) => format!("error {message} {n}"),
                Reply::Failed(_, n) => format!("failed {n}"),
                Reply::Series(series) => {
                    format!("points {}", series.map_or(0, |s| s.points().count()))
                }
                Reply::Stats(rows, _) => format!("stats {}", rows.len()),
                Reply::All(mut cursor) => {
                    let mut count = 0;
                    loop {
                        let step = db.read_step(&mut cursor);
                        if step.is_empty() {
                            break format!("all {count}");
                        }
                        count += step.iter().map(|s| s.points().count()).sum::<usize>();
                    }
                }
            })
            .collect()
    }

    #[test]
    fn a_batch_gets_one_reply_per_request_in_order() {
        let db = memory(None);
        let requests = parse(&[
            "put a 1 1",
            "put a 2 2",
            "nonsense",
            "nonsense",
            "get a",
            "put b 1 1",
        ]);
        let mut replies = Vec::new();
        let applied = db.apply(&requests, &mut replies);
        assert_eq!(applied.consumed, 6);
        assert_eq!(
            shapes(&db, &mut replies),
            ["ok 2", "error wrong command 2", "points 2", "ok 1"]
        );
    }

    #[test]
    fn a_get_star_is_answered_before_later_puts_are_applied() {
        let db = memory(None);
        let requests = parse(&["put a 1 1", "get *", "put b 1 1"]);
        let mut replies = Vec::new();
        assert_eq!(db.apply(&requests, &mut replies).consumed, 2);
        assert_eq!(shapes(&db, &mut replies), ["ok 1", "all 1"]);
        assert_eq!(db.apply(&requests[2..], &mut replies).consumed, 1);
        assert_eq!(shapes(&db, &mut replies), ["ok 1"]);
    }

    #[test]
    fn the_memory_limit_refuses_puts_with_their_own_reply() {
        let db = Db::open(Settings {
            data: None,
            fsync: Fsync::No,
            retention: None,
            max_memory: Some(0),
            self_metrics: None,
            forward: &[],
            forward_buffer: 0,
        })
        .unwrap();
        let mut replies = Vec::new();
        let applied = db.apply(&parse(&["put a 1 1", "put a 2 2", "get a"]), &mut replies);
        assert_eq!(applied.memory_refused, 2);
        let stats = db.stats(&db.lock());
        assert!(
            stats.contains(&("metrics.memory_refused_total", 2.0)),
            "{stats:?}"
        );
        assert_eq!(
            shapes(&db, &mut replies),
            ["error memory limit reached 2", "points 0"]
        );
    }

    #[test]
    fn a_panic_while_holding_the_lock_does_not_stop_other_clients() {
        let db = Arc::new(memory(None));
        db.store().put("m", 1.0, 1).unwrap();
        let poisoner = Arc::clone(&db);
        let panicked = thread::spawn(move || {
            let _guard = poisoner.store();
            panic!("a connection thread fails while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert!(db.store.is_poisoned());
        db.apply(&parse(&["put m 2 2"]), &mut Vec::new());
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

    /// A data file whose forwarding progress file could never be written is refused before
    /// anything is read or created.
    #[test]
    fn a_progress_file_name_that_cannot_fit_is_refused_at_start() {
        let dir = std::env::temp_dir().join(format!("metrics-db-{}-names", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d".repeat(200));
        let long = format!("{}:2003", "h".repeat(30));
        // Through a link with a short name too: the progress file sits beside its target.
        let link = dir.join("l");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let open_at = |data: &Path, forward: &[String]| {
            Db::open(Settings {
                data: Some(data),
                fsync: Fsync::No,
                retention: None,
                max_memory: None,
                self_metrics: None,
                forward,
                forward_buffer: 0,
            })
        };
        for data in [&path, &link] {
            let Err(error) = open_at(data, std::slice::from_ref(&long)) else {
                panic!("opened {}", data.display());
            };
            let source = std::error::Error::source(&error).unwrap().to_string();
            assert!(
                source.contains(&format!("forwarding progress file for {long}")),
                "{source}"
            );
            assert!(!path.exists());
        }
        let open = |forward: &[String]| open_at(&path, forward);
        assert!(open(&["h:2003".to_string()]).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn late_lists_are_merged_in_passes_once_a_second_that_go_on_until_done() {
        // 200 series, each with two late points at one timestamp: they count as two each
        // until merged.
        let db = memory(None);
        let lines: Vec<String> = (0..200)
            .flat_map(|i| {
                [
                    format!("put s{i} 1 10"),
                    format!("put s{i} 2 5"),
                    format!("put s{i} 3 5"),
                ]
            })
            .collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        db.apply(&parse(&lines), &mut Vec::new());
        let points = || db.store().points();
        assert_eq!(points(), 600);
        let mut state = Maintenance::new();
        let start = state.merged;
        // Within a second of the last pass, nothing is merged.
        db.merge_late_step(&mut state, start, Duration::ZERO);
        assert_eq!(points(), 600);
        // A pass starts after a second; with no time to spare it merges one lock's worth
        // per tick, and goes on at the next ticks, not a second later, until it is done.
        let later = start + Maintenance::MERGE_EVERY;
        for merged in [64, 128, 192, 200] {
            db.merge_late_step(&mut state, later, Duration::ZERO);
            assert_eq!(points(), 600 - merged);
        }
        assert_eq!(state.merge_left, 0);
        db.apply(&parse(&["put s0 4 6", "put s0 5 6"]), &mut Vec::new());
        db.merge_late_step(&mut state, later, Duration::ZERO);
        assert_eq!(points(), 402, "a new pass waits for its second");
        db.merge_late_step(&mut state, later + Maintenance::MERGE_EVERY, Duration::ZERO);
        assert_eq!(points(), 401);
    }
}
