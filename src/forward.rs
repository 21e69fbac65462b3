//! Forwarding: every acknowledged put is sent on, in Graphite plaintext
//! (`metric value timestamp\n`), to each `--forward HOST:PORT` upstream, by a thread of its own
//! per upstream, so ingestion never waits on an upstream however slow or absent.
//!
//! Each upstream reads from a source, by position (a byte offset in a stream of point lines):
//! - with `--data`, the data file itself is the queue: the forwarder reads the lines written to
//!   it, saves how far it has got beside it (atomically, in a file named for the data file and
//!   the upstream), and compaction keeps what any forwarder has not yet sent;
//! - without, a bounded queue in memory ([`MemoryQueue`]): past `--forward-buffer` unsent
//!   points the oldest unsent are dropped, counted and logged. It holds points as records;
//!   the sender formats them on its own thread and keeps the lines for a resend ([`Window`]).
//!
//! Graphite plaintext has no acknowledgements: bytes written just before an upstream failed may
//! never have been read, let alone stored. After every reconnect the forwarder starts again
//! from its *safe* position: the last position it had written at least [`RESEND_WINDOW`]
//! before (or [`RESEND_MOST`] bytes before, at high rates), with at least [`RESEND_BYTES`]
//! (more than the socket buffers of both sides hold)
//! written on the same connection after it, so the upstream must have read it. Nothing short
//! of that counts as proof of reading: a write that returns at once only means the buffers had
//! room. Duplicates are harmless to Graphite-style stores, which keep one value per metric and
//! timestamp.

use crate::journal::{FileId, Journal, Place};
use crate::log::{self, suppressed_note, Topic};
use crate::protocol;
use crate::{info, warn};
use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Bytes sent in one write, at most (a single longer line goes in a write of its own).
const WRITE_BYTES: usize = 1 << 20;
/// A forwarder with less than this to send waits up to [`LINGER`] for more: fewer, larger
/// writes cost the server, and the upstream, far less than one per put batch.
const MIN_WRITE: u64 = 1 << 20;
const LINGER: Duration = Duration::from_millis(20);
/// A memory queue's batches grow by appending up to this size: few of them, reused.
const BATCH_BYTES: usize = 256 << 10;
/// Bytes of records a memory-mode sender turns into lines before it yields its core: about
/// 40 µs of work. A sender is background work, and a thread serving a client (or the client
/// itself) that waits for the same core should not wait for a whole take of up to a MiB of
/// records (a millisecond or more); yielding to no one costs a system call per step.
const FORMAT_STEP: usize = 32 << 10;
/// Buffers kept for reuse, at most: a memory queue's batches, and a window's lines.
const SPARE_BATCHES: usize = 4;
/// How far back a forwarder starts again after a reconnect, in time...
pub const RESEND_WINDOW: Duration = Duration::from_secs(5);
/// ...and at least in bytes written after: more than the socket buffers on both sides hold
/// (Linux's defaults top out at 4 MiB to send and 6 MiB to receive).
pub const RESEND_BYTES: u64 = 16 << 20;
/// ...but never more than this: at millions of points a second, five seconds of lines would
/// be hundreds of MiB to keep (in memory, without `--data`) and to resend.
pub const RESEND_MOST: u64 = 64 << 20;
/// Reconnect backoff: from the first delay, doubling, up to the most.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const BACKOFF_MOST: Duration = Duration::from_secs(10);
/// A connection that lasted this long was a working one: after it fails, the backoff starts
/// again from the first delay. One that fails sooner (an upstream that accepts and closes at
/// once) keeps backing off.
const HEALTHY: Duration = Duration::from_secs(10);
/// How long a write may block on an upstream that does not read before it counts as failed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a forwarder with nothing to send waits for more before it checks that the upstream
/// has not closed the connection.
const IDLE_CHECK: Duration = Duration::from_millis(200);
/// How often a forwarder saves its position (when it moved).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Write marks kept for the resend window, at most; writes within [`MARK_EVERY`] and
/// [`MARK_BYTES`] of a mark's first share it. Merging only ever makes the safe position later.
const MARKS_MOST: usize = 4096;
const MARK_EVERY: Duration = Duration::from_millis(100);
const MARK_BYTES: u64 = 1 << 20;
/// Points dropped from a full memory queue are logged at most this often, with their count.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The forwarders' shared figures, for `stats`.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
}

impl Totals {
    /// Counts points dropped from an in-memory queue.
    pub fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// One upstream, as the rest of the server sees it.
#[derive(Debug)]
pub(crate) struct Upstream {
    addr: String,
    source: Source,
    /// The safe position (see the module docs): compaction keeps the data file from here on.
    safe: AtomicU64,
    /// File mode: the position just past the furthest byte ever written to the upstream, so
    /// a resend is not counted as new.
    sent_most: AtomicU64,
    /// File mode: lines of the file before the first position sent from, and lines newly sent
    /// since: what is pending is the rest of the lines written.
    lines_before: AtomicU64,
    lines_sent: AtomicU64,
    totals: Arc<Totals>,
}

#[derive(Debug)]
enum Source {
    File {
        journal: Arc<Journal>,
        progress: PathBuf,
        /// Held while the progress file is written (the forwarder and a compaction both save),
        /// with what was last written there.
        saved: Mutex<Option<Place>>,
    },
    Memory(MemoryQueue),
}

impl Upstream {
    /// An upstream that reads the data file, from where a previous run got to.
    pub fn from_file(addr: &str, journal: Arc<Journal>, totals: Arc<Totals>) -> Upstream {
        let progress = progress_path(journal.path(), addr);
        let start = match read_progress(&progress) {
            Ok(None) => 0,
            Ok(Some(place)) => journal.seq_of(place).unwrap_or_else(|| {
                // Not the file it was saved for: sent again from the start, as nothing says
                // how much of this one the upstream has.
                warn!(
                    "forwarding progress in {} is for another data file than {} (replaced or \
                     restored?); sending it to {addr} from its start",
                    progress.display(),
                    journal.path().display()
                );
                0
            }),
            Err(e) => {
                warn!(
                    "cannot read forwarding progress from {}: {e}; sending {} to {addr} from \
                     its start",
                    progress.display(),
                    journal.path().display()
                );
                0
            }
        };
        let lines_before = journal.lines_before(start);
        let upstream = Upstream {
            addr: addr.to_string(),
            source: Source::File {
                journal,
                progress,
                saved: Mutex::new(None),
            },
            safe: AtomicU64::new(start),
            sent_most: AtomicU64::new(start),
            lines_before: AtomicU64::new(lines_before),
            lines_sent: AtomicU64::new(0),
            totals,
        };
        upstream.save();
        upstream
    }

    /// An upstream fed by a queue in memory that holds at most `bound` unsent points.
    pub fn in_memory(addr: &str, bound: u64, totals: Arc<Totals>) -> Upstream {
        Upstream {
            addr: addr.to_string(),
            source: Source::Memory(MemoryQueue::new(bound)),
            safe: AtomicU64::new(0),
            sent_most: AtomicU64::new(0),
            lines_before: AtomicU64::new(0),
            lines_sent: AtomicU64::new(0),
            totals,
        }
    }

    /// The upstream's address as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Points not yet sent.
    pub fn pending(&self) -> u64 {
        match &self.source {
            Source::File { journal, .. } => journal.written_lines().saturating_sub(
                self.lines_before.load(Ordering::Relaxed) + self.lines_sent.load(Ordering::Relaxed),
            ),
            Source::Memory(queue) => lock(&queue.state).unsent_points,
        }
    }

    /// Where the data file must be kept from for this upstream (`None` in memory mode).
    pub fn keep_from(&self) -> Option<u64> {
        matches!(self.source, Source::File { .. }).then(|| self.safe.load(Ordering::Acquire))
    }

    /// The in-memory queue, when there is no data file.
    pub fn queue(&self) -> Option<&MemoryQueue> {
        match &self.source {
            Source::Memory(queue) => Some(queue),
            Source::File { .. } => None,
        }
    }

    /// Saves the safe position beside the data file, atomically (a new file renamed over the
    /// old), unless that is what the file already says: after a crash the forwarder resends
    /// from there. Call it after a compaction too: the position is saved as an offset in the
    /// file, which is a new one then.
    pub fn save(&self) {
        let Source::File {
            journal,
            progress,
            saved,
        } = &self.source
        else {
            return;
        };
        // The offset is looked up under the lock, so the last save is never an older file's.
        let mut saved = lock(saved);
        let Some(place) = journal.place(self.safe.load(Ordering::Acquire)) else {
            return;
        };
        if *saved == Some(place) {
            return;
        }
        let Place {
            offset,
            id: FileId(dev, ino),
            mark,
        } = place;
        let mark = mark.unwrap_or_default();
        match write_atomically(
            progress,
            format!("{offset} {dev} {ino} {mark}\n").as_bytes(),
        ) {
            Ok(()) => *saved = Some(place),
            Err(e) => {
                drop(saved);
                if let Some(suppressed) = log::allow(Topic::Refusals) {
                    warn!(
                        "cannot save forwarding progress to {}: {e}{}",
                        progress.display(),
                        suppressed_note(suppressed)
                    );
                }
            }
        }
    }

    /// Appends lines from `position` on (whole lines, about `most` bytes at most) to `out`;
    /// waits up to `wait` for some when there are none, and up to [`LINGER`] for more when
    /// there are less than [`MIN_WRITE`] bytes. Returns the position after them, and in
    /// memory mode, when they were new, taken from the queue, their points: the caller then
    /// keeps them in `window` ([`Window::keep`]). A memory-mode resend comes from `window`.
    fn read(
        &self,
        position: u64,
        most: usize,
        wait: Duration,
        window: &mut Window,
        out: &mut Vec<u8>,
    ) -> io::Result<(u64, Option<u64>)> {
        match &self.source {
            Source::File { journal, .. } => {
                let started = Instant::now();
                loop {
                    let available = journal.written_seq().saturating_sub(position);
                    let waited = started.elapsed();
                    if available >= MIN_WRITE
                        || waited >= wait
                        || (available > 0 && waited >= LINGER.min(wait))
                    {
                        break;
                    }
                    thread::sleep(LINGER);
                }
                let start = out.len();
                let mut most = most;
                loop {
                    journal.read_from(position, most, out)?;
                    let available = journal.written_seq().saturating_sub(position);
                    // A line longer than `most` (`--max-line-bytes` allows that): read more.
                    if out.len() > start || available <= most as u64 {
                        break;
                    }
                    most = most.saturating_mul(2);
                }
                if out.len() == start && journal.written_seq() > position {
                    // Written bytes that cannot be read: do not spin on them.
                    thread::sleep(wait);
                }
                Ok((position + (out.len() - start) as u64, None))
            }
            Source::Memory(queue) => {
                if let Some(next) = window.resend(position, most, out) {
                    return Ok((next, None));
                }
                let (next, points) = queue.take(most, wait, &mut window.taken);
                for records in &window.taken {
                    let mut rest = records.as_slice();
                    while !rest.is_empty() {
                        let step = records_within(rest, FORMAT_STEP);
                        write_lines(&rest[..step], &mut window.timestamp, out);
                        rest = &rest[step..];
                        thread::yield_now();
                    }
                }
                // Back at once, still in cache, for new batches.
                queue.recycle(&mut window.taken);
                Ok((next, Some(points)))
            }
        }
    }

    /// The position the sender starts from after a (re)connect.
    fn resume_from(&self) -> u64 {
        self.safe.load(Ordering::Acquire)
    }

    /// Records that `bytes`, read from `from` up to `to`, were written to the upstream, and
    /// that everything before `safe` is now safe. In file mode lines sent before (a resend)
    /// are not new; in memory mode the caller says how many points are (`new_points`).
    fn advance(&self, from: u64, bytes: &[u8], to: u64, safe: u64, new_points: u64) {
        let new_lines = match &self.source {
            Source::File { .. } => {
                let before = self.sent_most.fetch_max(to, Ordering::AcqRel);
                let fresh = if to > before {
                    // File positions have no gaps: `bytes` are exactly `from..to`.
                    let skip = (before.saturating_sub(from) as usize).min(bytes.len());
                    bytes[skip..].iter().filter(|&&b| b == b'\n').count() as u64
                } else {
                    0
                };
                self.lines_sent.fetch_add(fresh, Ordering::Relaxed);
                fresh
            }
            Source::Memory(queue) => {
                queue.sent(new_points);
                new_points
            }
        };
        if new_lines > 0 {
            self.totals.sent.fetch_add(new_lines, Ordering::Relaxed);
        }
        self.safe.fetch_max(safe, Ordering::AcqRel);
    }

    /// Points a memory queue has dropped so far.
    fn dropped(&self) -> u64 {
        match &self.source {
            Source::Memory(queue) => lock(&queue.state).dropped,
            Source::File { .. } => 0,
        }
    }
}

/// The length of a point's record in a [`MemoryQueue`] before its name: the name's length, the
/// value's bits and the timestamp, 8 bytes each.
const RECORD_HEAD: usize = 24;

/// Appends a point to `out` as a memory queue holds it: a record, not yet its line. Turning
/// the value into text is left to the sender's thread, off the store lock and the thread that
/// serves the client.
pub(crate) fn push_record(out: &mut Vec<u8>, metric: &str, value: f64, timestamp: i64) {
    let mut head = [0; RECORD_HEAD];
    head[..8].copy_from_slice(&(metric.len() as u64).to_le_bytes());
    head[8..16].copy_from_slice(&value.to_bits().to_le_bytes());
    head[16..].copy_from_slice(&timestamp.to_le_bytes());
    out.reserve(RECORD_HEAD + metric.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(metric.as_bytes());
}

/// The length of the first record in `records` (all of them if that one is cut short).
fn record_len(records: &[u8]) -> usize {
    records
        .first_chunk::<8>()
        .map_or(records.len(), |len| {
            RECORD_HEAD.saturating_add(u64::from_le_bytes(*len) as usize)
        })
        .min(records.len())
}

/// The length of the first records in `records` that reach `bytes` (or all of them): at least
/// one record, and only whole ones.
fn records_within(records: &[u8], bytes: usize) -> usize {
    let mut len = 0;
    while len < records.len() {
        len += record_len(&records[len..]);
        if len >= bytes {
            break;
        }
    }
    len
}

/// Appends the point line of each record, as [`protocol::write_point`] writes it.
/// `timestamp` keeps the last timestamp's text: points put together mostly share one.
fn write_lines(mut records: &[u8], timestamp: &mut TimestampText, out: &mut Vec<u8>) {
    while let Some((head, rest)) = records.split_first_chunk::<RECORD_HEAD>() {
        let field = |at: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&head[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let Some((name, rest)) = rest.split_at_checked(field(0) as usize) else {
            break;
        };
        out.extend_from_slice(name);
        out.push(b' ');
        protocol::write_float(out, f64::from_bits(field(8)));
        out.push(b' ');
        out.extend_from_slice(timestamp.text(field(16) as i64));
        out.push(b'\n');
        records = rest;
    }
}

/// A timestamp and its decimal text.
#[derive(Debug, Default)]
struct TimestampText {
    value: Option<i64>,
    text: Vec<u8>,
}

impl TimestampText {
    fn text(&mut self, timestamp: i64) -> &[u8] {
        if self.value != Some(timestamp) {
            self.value = Some(timestamp);
            self.text.clear();
            protocol::write_i64(&mut self.text, timestamp);
        }
        &self.text
    }
}

/// Put batches' points, as records, in a [`MemoryQueue`]: a later batch is appended to the last
/// one while it is under [`BATCH_BYTES`].
#[derive(Debug)]
struct Batch {
    /// The position of its first byte.
    start: u64,
    records: Vec<u8>,
    points: u64,
}

impl Batch {
    fn end(&self) -> u64 {
        self.start + self.records.len() as u64
    }
}

/// What [`MemoryQueue::push_with`] did.
#[must_use]
#[derive(Debug)]
pub(crate) struct Pushed {
    /// Points dropped to stay within the bound.
    pub dropped: u64,
    /// Whether the sender waits for these: call [`MemoryQueue::wake`] once no lock is held.
    pub wake: bool,
}

/// The points waiting for one upstream without a data file, in put order, as records. Holds at
/// most `bound` of them; past that the oldest are dropped (the bytes of dropped points are a
/// gap in the positions). The sender takes them from the front: what it has taken, and the
/// resend window, it keeps itself ([`Window`]).
#[derive(Debug)]
pub(crate) struct MemoryQueue {
    state: Mutex<QueueState>,
    grew: Condvar,
    bound: u64,
}

#[derive(Debug)]
struct QueueState {
    batches: VecDeque<Batch>,
    /// Position just past the last byte.
    end: u64,
    /// The position up to which the sender has taken: where the batches start, gaps aside.
    claimed: u64,
    /// Points not yet sent (what `stats` calls pending), and of those the ones waiting here
    /// (what the bound applies to).
    unsent_points: u64,
    waiting_points: u64,
    dropped: u64,
    /// The sender waits until `end` reaches this; a push that gets it there wakes it. Pushes
    /// that do not cost no wakeup (nor system call).
    wake_at: u64,
    /// Buffers of batches the sender has formatted, for new ones: fresh memory would cost
    /// page faults on the thread that serves the client, under the store lock.
    spare: Vec<Vec<u8>>,
}

impl MemoryQueue {
    fn new(bound: u64) -> Self {
        MemoryQueue {
            state: Mutex::new(QueueState {
                batches: VecDeque::new(),
                end: 0,
                claimed: 0,
                unsent_points: 0,
                waiting_points: 0,
                dropped: 0,
                wake_at: u64::MAX,
                spare: Vec::new(),
            }),
            grew: Condvar::new(),
            bound,
        }
    }

    /// Adds `points` points, as records that `write` appends ([`push_record`]) straight to
    /// the queue's last batch: no copy of them is made on the way. Never waits for the sender.
    /// Drops the oldest waiting points past the bound, point by point, so the newest `bound`
    /// are kept whatever the batches' sizes. The sender is not woken here: the caller holds
    /// the store lock, and a woken thread may take the caller's core at once.
    pub fn push_with(&self, points: u64, write: impl FnOnce(&mut Vec<u8>)) -> Pushed {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let start = state.end;
        let written = match state.batches.back_mut() {
            Some(last) if last.end() == start && last.records.len() < BATCH_BYTES => {
                let before = last.records.len();
                write(&mut last.records);
                last.points += points;
                last.records.len() - before
            }
            _ => {
                let mut buffer = state.spare.pop().unwrap_or_default();
                write(&mut buffer);
                let written = buffer.len();
                state.batches.push_back(Batch {
                    start,
                    records: buffer,
                    points,
                });
                written
            }
        };
        state.end += written as u64;
        state.unsent_points += points;
        state.waiting_points += points;
        let mut dropped = 0;
        while state.waiting_points > self.bound {
            let excess = state.waiting_points - self.bound;
            let Some(batch) = state.batches.front_mut() else {
                break;
            };
            let cut = if batch.points <= excess {
                let whole = batch.points;
                state.batches.pop_front();
                whole
            } else {
                // Its oldest `excess` points go; later positions are unchanged.
                let mut bytes_cut = 0;
                for _ in 0..excess {
                    bytes_cut += record_len(&batch.records[bytes_cut..]);
                }
                batch.records.drain(..bytes_cut);
                batch.start += bytes_cut as u64;
                batch.points -= excess;
                excess
            };
            state.unsent_points -= cut;
            state.waiting_points -= cut;
            dropped += cut;
        }
        state.dropped += dropped;
        let wake = state.end >= state.wake_at;
        if wake {
            state.wake_at = u64::MAX;
        }
        Pushed { dropped, wake }
    }

    /// Wakes the sender, as a push asked for ([`Pushed::wake`]).
    pub fn wake(&self) {
        self.grew.notify_one();
    }

    /// [`push_with`](MemoryQueue::push_with) of records made already, waking the sender.
    #[cfg(test)]
    fn push(&self, records: &[u8], points: u64) -> u64 {
        let pushed = self.push_with(points, |out| out.extend_from_slice(records));
        if pushed.wake {
            self.wake();
        }
        pushed.dropped
    }

    /// Moves whole batches from the front (at least one, then up to `most` bytes) to `out`.
    /// With nothing waiting it waits up to `wait`; with less than [`MIN_WRITE`] bytes, up to
    /// [`LINGER`] for more. Returns the position after them (past dropped points, when none
    /// are left) and how many points they hold.
    fn take(&self, most: usize, wait: Duration, out: &mut Vec<Vec<u8>>) -> (u64, u64) {
        let started = Instant::now();
        let mut state = lock(&self.state);
        loop {
            let available = state.end - state.claimed;
            let (want, until) = if available == 0 {
                (1, wait)
            } else {
                (MIN_WRITE, LINGER.min(wait))
            };
            let waited = started.elapsed();
            if available >= want || waited >= until {
                break;
            }
            state.wake_at = state.claimed + want;
            state = self
                .grew
                .wait_timeout(state, until - waited)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.wake_at = u64::MAX;
        let (mut bytes, mut points) = (0, 0);
        while let Some(batch) = state.batches.front() {
            if bytes > 0 && bytes + batch.records.len() > most {
                break;
            }
            let Some(batch) = state.batches.pop_front() else {
                break;
            };
            bytes += batch.records.len();
            points += batch.points;
            state.claimed = batch.end();
            out.push(batch.records);
        }
        if bytes == 0 {
            // Nothing left: whatever was there was dropped.
            state.claimed = state.end;
        }
        state.waiting_points -= points.min(state.waiting_points);
        (state.claimed, points)
    }

    /// Gives back the buffers of taken batches, for new ones.
    fn recycle(&self, buffers: &mut Vec<Vec<u8>>) {
        let mut state = lock(&self.state);
        for mut buffer in buffers.drain(..) {
            if state.spare.len() < SPARE_BATCHES && buffer.capacity() <= 2 * BATCH_BYTES {
                buffer.clear();
                state.spare.push(buffer);
            }
        }
    }

    /// Counts `points` taken points as sent.
    fn sent(&self, points: u64) {
        if points > 0 {
            let mut state = lock(&self.state);
            state.unsent_points -= points.min(state.unsent_points);
        }
    }
}

/// Memory mode: the lines a sender has taken from its queue and formatted, from its safe
/// position on: the resend window. The sender keeps them, so that the memory they take is
/// allocated and first touched on its thread, and the queue's few buffers go back to it
/// while still in cache.
#[derive(Debug, Default)]
struct Window {
    chunks: VecDeque<Chunk>,
    /// Buffers of chunks no longer kept, for the next lines.
    spare: Vec<Vec<u8>>,
    /// Batches taken from the queue, on their way back to it.
    taken: Vec<Vec<u8>>,
    timestamp: TimestampText,
}

/// Lines written (or being written) to the upstream.
#[derive(Debug)]
struct Chunk {
    /// The position just past them.
    end: u64,
    lines: Vec<u8>,
    /// Their points not yet counted as sent: all of them until a write of them succeeds.
    uncounted: u64,
}

impl Window {
    /// Appends the kept lines from `position` on (at least one chunk, then up to `most`
    /// bytes) to `out`, when there are any; returns the position after them.
    fn resend(&self, position: u64, most: usize, out: &mut Vec<u8>) -> Option<u64> {
        let first = self.chunks.partition_point(|c| c.end <= position);
        let mut next = None;
        for chunk in self.chunks.range(first..) {
            if next.is_some() && out.len() + chunk.lines.len() > most {
                break;
            }
            out.extend_from_slice(&chunk.lines);
            next = Some(chunk.end);
        }
        next
    }

    /// Keeps new lines, up to position `end`; `uncounted` of their points are not yet counted
    /// as sent. Takes `lines`, leaving an empty buffer in its place.
    fn keep(&mut self, end: u64, lines: &mut Vec<u8>, uncounted: u64) {
        let spare = self.spare.pop().unwrap_or_default();
        self.chunks.push_back(Chunk {
            end,
            lines: std::mem::replace(lines, spare),
            uncounted,
        });
    }

    /// Counts as sent the points of kept lines written up to `to`; returns how many.
    fn count_sent(&mut self, to: u64) -> u64 {
        let mut counted = 0;
        for chunk in self.chunks.iter_mut().rev() {
            if chunk.end <= to {
                counted += std::mem::take(&mut chunk.uncounted);
            }
        }
        counted
    }

    /// Lets go of what is before `safe`.
    fn forget(&mut self, safe: u64) {
        while self.chunks.front().is_some_and(|c| c.end <= safe) {
            if let Some(chunk) = self.chunks.pop_front() {
                let mut lines = chunk.lines;
                if self.spare.len() < SPARE_BATCHES && lines.capacity() <= 4 * WRITE_BYTES {
                    lines.clear();
                    self.spare.push(lines);
                }
            }
        }
    }
}

/// A forwarder's notes between connections: the reconnect backoff, the outage under way and
/// what it has logged about dropped points.
struct Sender<'a> {
    upstream: &'a Upstream,
    backoff: Duration,
    /// When the outage began, and the attempts that failed in it.
    outage: Option<(Instant, u64)>,
    drops_logged: u64,
    drops_logged_at: Option<Instant>,
    /// Memory mode: the resend window.
    window: Window,
}

impl Sender<'_> {
    /// Logs points dropped from a full memory queue since the last note, at most every
    /// [`DROP_LOG_EVERY`].
    fn note_drops(&mut self) {
        let dropped = self.upstream.dropped();
        if dropped == self.drops_logged
            || self
                .drops_logged_at
                .is_some_and(|at| at.elapsed() < DROP_LOG_EVERY)
        {
            return;
        }
        let bound = match &self.upstream.source {
            Source::Memory(queue) => queue.bound,
            Source::File { .. } => 0,
        };
        warn!(
            "forwarding to {}: the queue of unsent points is full (--forward-buffer {bound}); \
             dropped the {} oldest ({dropped} in all)",
            self.upstream.addr,
            dropped - self.drops_logged
        );
        self.drops_logged = dropped;
        self.drops_logged_at = Some(Instant::now());
    }
}

/// Runs one upstream's sender until the process ends.
pub(crate) fn run(upstream: &Upstream) {
    let mut sender = Sender {
        upstream,
        backoff: BACKOFF_FIRST,
        outage: None,
        drops_logged: 0,
        drops_logged_at: None,
        window: Window::default(),
    };
    loop {
        sender.note_drops();
        match connect(&upstream.addr) {
            Ok(stream) => {
                if let Some((since, failures)) = sender.outage.take() {
                    info!(
                        "forwarding to {} resumed after {:.1} s ({failures} failed attempts)",
                        upstream.addr,
                        since.elapsed().as_secs_f64()
                    );
                }
                let connected = Instant::now();
                let error = send(&mut sender, stream);
                if connected.elapsed() >= HEALTHY {
                    sender.backoff = BACKOFF_FIRST;
                }
                warn!(
                    "forwarding to {} interrupted: {error}; reconnecting, and resending from the \
                     last safe point",
                    upstream.addr
                );
                sender.outage = Some((Instant::now(), 0));
            }
            Err(e) => match &mut sender.outage {
                Some((_, failures)) => *failures += 1,
                None => {
                    warn!(
                        "forwarding to {} stopped: {e}; retrying with backoff up to \
                         {BACKOFF_MOST:?}",
                        upstream.addr
                    );
                    sender.outage = Some((Instant::now(), 1));
                }
            },
        }
        thread::sleep(sender.backoff);
        sender.backoff = (sender.backoff * 2).min(BACKOFF_MOST);
    }
}

/// Writes to the upstream: when the first of them ended and the bytes written on the
/// connection before it; when the last ended, the position after it, and the bytes written on
/// the connection up to then.
#[derive(Debug, Clone, Copy)]
struct Mark {
    opened: Instant,
    opened_at: u64,
    when: Instant,
    position: u64,
    written: u64,
}

/// Sends until the connection fails; returns why.
fn send(sender: &mut Sender<'_>, mut stream: TcpStream) -> io::Error {
    let upstream = sender.upstream;
    let mut position = upstream.resume_from();
    let mut safe = position;
    // After each write, oldest first: the resend window.
    let mut marks: VecDeque<Mark> = VecDeque::new();
    let mut written = 0u64;
    let mut saved = Instant::now();
    let mut buf = Vec::with_capacity(WRITE_BYTES);
    loop {
        buf.clear();
        let read = upstream.read(
            position,
            WRITE_BYTES,
            IDLE_CHECK,
            &mut sender.window,
            &mut buf,
        );
        let (next, taken) = match read {
            Ok(read) => read,
            Err(e) => return e,
        };
        let mut new_points = 0;
        let now = Instant::now();
        if buf.is_empty() {
            // Nothing to send: make sure the upstream is still there, so what went out last
            // is resent soon if it closed, rather than at the next write.
            if let Err(e) = check_open(&stream) {
                return e;
            }
        } else {
            let result = stream.write_all(&buf);
            let length = buf.len() as u64;
            if let Some(points) = taken {
                // Kept before anything else: taken from the queue, they are only here now.
                let uncounted = if result.is_ok() { 0 } else { points };
                sender.window.keep(next, &mut buf, uncounted);
                new_points = points - uncounted;
            } else if result.is_ok() {
                new_points = sender.window.count_sent(next);
            }
            if let Err(e) = result {
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the upstream read nothing for {WRITE_TIMEOUT:?}"),
                    ),
                    _ => e,
                };
            }
            written += length;
            let when = Instant::now();
            let full = marks.len() >= MARKS_MOST;
            match marks.back_mut() {
                // Taken into the last mark, which so becomes safe later: never too early.
                Some(last)
                    if full
                        || (when.duration_since(last.opened) < MARK_EVERY
                            && written - last.opened_at < MARK_BYTES) =>
                {
                    last.when = when;
                    last.position = next;
                    last.written = written;
                }
                _ => marks.push_back(Mark {
                    opened: when,
                    opened_at: written - length,
                    when,
                    position: next,
                    written,
                }),
            }
        }
        // Safe: written at least the resend window ago, with more than the socket buffers
        // hold written after it on this connection; or with the most the window keeps
        // written after it, however recent.
        while let Some(mark) = marks.front() {
            let after = written - mark.written;
            if (now.duration_since(mark.when) >= RESEND_WINDOW && after >= RESEND_BYTES)
                || after >= RESEND_MOST
            {
                safe = mark.position;
                marks.pop_front();
            } else {
                break;
            }
        }
        upstream.advance(position, &buf, next, safe, new_points);
        sender.window.forget(safe);
        position = next;
        sender.note_drops();
        if now.duration_since(saved) >= SAVE_EVERY {
            saved = now;
            upstream.save();
        }
    }
}

/// Fails when the upstream has closed or reset the connection. A Graphite upstream sends
/// nothing, so anything it does send is read and discarded.
fn check_open(mut stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    let mut scratch = [0u8; 4096];
    let mut result = Ok(());
    // Bounded: an upstream that talks without end is checked again next time.
    for _ in 0..16 {
        match stream.read(&mut scratch) {
            Ok(0) => {
                result = Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection",
                ));
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    stream.set_nonblocking(false)?;
    result
}

fn connect(addr: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address found");
    for candidate in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&candidate, BACKOFF_MOST) {
            Ok(stream) => {
                stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The progress file of the forwarder to `addr` for the data file at `data`: hidden, beside it,
/// named for both (`.data.txt.forward.127.0.0.1_2003`).
pub(crate) fn progress_path(data: &Path, addr: &str) -> PathBuf {
    let name = data.file_name().unwrap_or_default().to_string_lossy();
    let upstream: String = addr
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    data.with_file_name(format!(".{name}.forward.{upstream}"))
}

/// The place a progress file holds: `offset dev ino mark` (older versions wrote no mark).
/// `None` when there is no progress file yet.
fn read_progress(path: &Path) -> io::Result<Option<Place>> {
    /// Longer than any progress file: a file put in its place is not read whole.
    const MOST: u64 = 256;
    // Looked at before it is opened: opening a FIFO waits for a writer, and a device may
    // read without end.
    match fs::metadata(path) {
        Ok(meta) if !meta.is_file() => return Err(io::Error::other("it is not a regular file")),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut text = String::new();
    io::Read::take(fs::File::open(path)?, MOST).read_to_string(&mut text)?;
    let fields: Vec<_> = text
        .split_ascii_whitespace()
        .map(str::parse::<u64>)
        .collect();
    match fields[..] {
        [Ok(offset), Ok(dev), Ok(ino)] => Ok(Some(Place {
            offset,
            id: FileId(dev, ino),
            mark: None,
        })),
        [Ok(offset), Ok(dev), Ok(ino), Ok(mark)] => Ok(Some(Place {
            offset,
            id: FileId(dev, ino),
            mark: Some(mark),
        })),
        _ => Err(io::Error::other(format!(
            "not 'offset device inode mark': {:?}",
            text.trim_end()
        ))),
    }
}

/// Writes `path` as a whole or not at all: a new file of this process's, synced, renamed over.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = path.with_file_name(format!(
        "{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        // Created anew, never opened through a link or over another file: one left by an
        // earlier process with this number is this server's to remove (it holds the data
        // file's lock), and removing a link removes only the link.
        match fs::remove_file(&temp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_data()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_files_are_named_for_the_data_file_and_upstream() {
        assert_eq!(
            progress_path(Path::new("/d/data.txt"), "127.0.0.1:2003"),
            Path::new("/d/.data.txt.forward.127.0.0.1_2003")
        );
        assert_eq!(
            progress_path(Path::new("x"), "[::1]:2003"),
            Path::new(".x.forward.___1__2003")
        );
    }

    /// Records of points named by each character of `names`, each with value 1 and time 1.
    fn records(names: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for name in names.chars() {
            push_record(&mut out, &name.to_string(), 1.0, 1);
        }
        out
    }

    /// A record's length for a one-character name: positions in the tests are multiples.
    const R: u64 = RECORD_HEAD as u64 + 1;

    /// Takes what is waiting without waiting; returns the position after and the lines.
    fn take(queue: &MemoryQueue) -> (u64, String) {
        let mut batches = Vec::new();
        let (next, points) = queue.take(1 << 20, Duration::ZERO, &mut batches);
        let mut out = Vec::new();
        for records in &batches {
            write_lines(records, &mut TimestampText::default(), &mut out);
        }
        assert_eq!(points as usize, out.iter().filter(|&&b| b == b'\n').count());
        queue.recycle(&mut batches);
        (next, String::from_utf8(out).unwrap())
    }

    #[test]
    fn records_become_the_lines_write_point_prints() {
        let points = [
            ("a.b", 0.25, 1_700_000_000),
            ("c", -0.0, -5),
            ("d", 94.79799999999999, 0),
            ("é", 1e300, i64::MIN),
            ("f", f64::MIN_POSITIVE / 3.0, i64::MAX),
            ("g", 7.0, i64::MAX),
            ("h", 1e-5, 1_700_000_000),
        ];
        let (mut raw, mut want) = (Vec::new(), Vec::new());
        for (name, value, timestamp) in points {
            push_record(&mut raw, name, value, timestamp);
            protocol::write_point(&mut want, name, value, timestamp);
        }
        let mut out = Vec::new();
        write_lines(&raw, &mut TimestampText::default(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(want.clone()).unwrap()
        );
        assert_eq!(record_len(&raw), RECORD_HEAD + 3);
        // Formatted in steps of any size, the lines are the same: steps end between records.
        for step in 0..=raw.len() + 1 {
            let (mut rest, mut out, mut steps) = (raw.as_slice(), Vec::new(), 0);
            while !rest.is_empty() {
                let len = records_within(rest, step);
                assert!(len > 0 && len >= step.min(rest.len()), "{step}: {len}");
                write_lines(&rest[..len], &mut TimestampText::default(), &mut out);
                rest = &rest[len..];
                steps += 1;
            }
            assert_eq!(out, want, "steps of {step} bytes");
            assert!(steps <= points.len(), "{step}: {steps} steps");
        }
    }

    #[test]
    fn the_memory_queue_drops_the_oldest_unsent_points_past_its_bound() {
        let queue = MemoryQueue::new(4);
        assert_eq!(queue.push(&records("ab"), 2), 0);
        assert_eq!(queue.push(&records("cd"), 2), 0);
        assert_eq!(queue.push(&records("e"), 1), 1);
        assert_eq!(
            take(&queue),
            (5 * R, "b 1.0 1\nc 1.0 1\nd 1.0 1\ne 1.0 1\n".into())
        );
        assert_eq!(lock(&queue.state).unsent_points, 4);
        queue.sent(4);
        assert_eq!(lock(&queue.state).unsent_points, 0);
    }

    #[test]
    fn a_batch_larger_than_the_bound_keeps_its_newest_points() {
        let queue = MemoryQueue::new(2);
        assert_eq!(queue.push(&records("a"), 1), 0);
        assert_eq!(queue.push(&records("bcd"), 3), 2);
        assert_eq!(take(&queue), (4 * R, "c 1.0 1\nd 1.0 1\n".into()));
        assert_eq!(lock(&queue.state).dropped, 2);
    }

    #[test]
    fn points_taken_by_the_sender_are_never_dropped() {
        let queue = MemoryQueue::new(1);
        queue.push(&records("a"), 1);
        // The sender has taken `a` and is writing it when `b` and `c` come: the bound is on
        // points waiting, so `b` is dropped for `c`, and `a` is not touched.
        assert_eq!(take(&queue), (R, "a 1.0 1\n".into()));
        assert_eq!(queue.push(&records("b"), 1), 0);
        assert_eq!(queue.push(&records("c"), 1), 1);
        assert_eq!(lock(&queue.state).unsent_points, 2);
        // `b` was dropped: the sender skips its bytes and gets `c`.
        assert_eq!(take(&queue), (3 * R, "c 1.0 1\n".into()));
        let state = lock(&queue.state);
        assert_eq!((state.unsent_points, state.dropped), (2, 1));
    }

    #[test]
    fn a_sender_past_only_dropped_points_moves_to_the_end() {
        let queue = MemoryQueue::new(0);
        assert_eq!(queue.push(&records("a"), 1), 1);
        assert_eq!(take(&queue), (R, String::new()));
    }

    #[test]
    fn the_window_resends_what_is_not_yet_safe_and_counts_points_once() {
        let mut window = Window::default();
        // The first write failed, the second worked.
        window.keep(10, &mut b"a 1.0 1\n".to_vec(), 1);
        window.keep(20, &mut b"b 1.0 1\n".to_vec(), 0);
        let mut out = Vec::new();
        assert_eq!(window.resend(0, 1 << 20, &mut out), Some(20));
        assert_eq!(out, b"a 1.0 1\nb 1.0 1\n");
        // Resent: `a` is counted now, and not again.
        assert_eq!(window.count_sent(20), 1);
        assert_eq!(window.count_sent(20), 0);
        window.forget(10);
        out.clear();
        assert_eq!(window.resend(10, 1 << 20, &mut out), Some(20));
        assert_eq!(out, b"b 1.0 1\n");
        assert_eq!(window.resend(20, 1 << 20, &mut out), None);
        window.forget(20);
        assert!(window.chunks.is_empty());
    }

    #[test]
    fn a_sender_with_little_to_send_waits_a_moment_for_more() {
        let queue = Arc::new(MemoryQueue::new(1 << 20));
        queue.push(&records("a"), 1);
        let pusher = Arc::clone(&queue);
        let filler = thread::spawn(move || {
            // Enough to wake the sender before its linger is over.
            let big = records(&"b".repeat(MIN_WRITE as usize / R as usize + 1));
            pusher.push(&big, big.len() as u64 / R);
        });
        let (next, _) = queue.take(4 << 20, Duration::from_secs(60), &mut Vec::new());
        filler.join().unwrap();
        // Either the linger ran out with `a` alone, or the batch came in time: never stuck.
        assert!(next == R || next >= MIN_WRITE, "{next}");
    }

    /// Random pushes (some past BATCH_BYTES, some past the bound, some onto a nearly full
    /// batch) and takes against a model of the newest `bound` waiting points: the lines, the
    /// drop counts, the pending counts and the positions all agree.
    #[test]
    fn push_with_matches_a_model_of_the_newest_waiting_points() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for bound in [0u64, 1, 3, 100, 5000, 40_000] {
            let queue = MemoryQueue::new(bound);
            let mut waiting: std::collections::VecDeque<u64> = Default::default();
            let (mut id, mut end, mut dropped_total, mut unsent) = (0u64, 0u64, 0u64, 0u64);
            for _ in 0..300 {
                let roll = next();
                if roll % 5 == 0 {
                    let mut batches = Vec::new();
                    let (pos, points) = queue.take(usize::MAX, Duration::ZERO, &mut batches);
                    let mut out = Vec::new();
                    let mut ts = TimestampText::default();
                    for records in &batches {
                        write_lines(records, &mut ts, &mut out);
                    }
                    queue.recycle(&mut batches);
                    let want: String = waiting
                        .drain(..)
                        .map(|i| format!("m{} {}.0 {}\n", i % 7, i, i))
                        .collect();
                    assert_eq!(String::from_utf8(out).unwrap(), want, "bound {bound}");
                    assert_eq!(points as usize, want.lines().count());
                    assert_eq!(pos, end, "bound {bound}: the sender is at the end");
                    queue.sent(points);
                    unsent -= points;
                    continue;
                }
                // Sizes from 1 point to a batch several times BATCH_BYTES.
                let n = match roll % 4 {
                    0 => 1,
                    1 => 1 + (roll >> 8) % 50,
                    2 => 1 + (roll >> 8) % 3000,
                    _ => BATCH_BYTES as u64 / 26 + (roll >> 8) % 30_000,
                };
                let mut bytes = 0;
                let pushed = queue.push_with(n, |out| {
                    let before = out.len();
                    for i in id..id + n {
                        push_record(out, &format!("m{}", i % 7), i as f64, i as i64);
                    }
                    bytes = out.len() - before;
                });
                end += bytes as u64;
                waiting.extend(id..id + n);
                id += n;
                unsent += n;
                let mut want_dropped = 0;
                while waiting.len() as u64 > bound {
                    waiting.pop_front();
                    want_dropped += 1;
                }
                assert_eq!(pushed.dropped, want_dropped, "bound {bound}");
                dropped_total += pushed.dropped;
                unsent -= pushed.dropped;
                let state = lock(&queue.state);
                assert_eq!(state.end, end);
                assert_eq!(state.dropped, dropped_total);
                assert_eq!(state.waiting_points, waiting.len() as u64);
                assert_eq!(state.unsent_points, unsent);
                assert_eq!(
                    state.batches.iter().map(|b| b.points).sum::<u64>(),
                    waiting.len() as u64
                );
                // Batches are contiguous from the first waiting point to the end.
                for pair in state.batches.iter().collect::<Vec<_>>().windows(2) {
                    assert_eq!(pair[0].end(), pair[1].start);
                }
                if let Some(last) = state.batches.back() {
                    assert_eq!(last.end(), end);
                }
            }
        }
    }

    /// A Db forwarding in memory to two upstreams, with a memory limit: batches mixing new
    /// metrics (refused once full), overwrites (always taken), bad lines and gets. Each queue
    /// holds exactly the puts acknowledged, in order; a batch larger than the bound keeps its
    /// newest; the counts agree.
    #[test]
    fn db_forwards_exactly_the_acknowledged_puts_to_every_upstream() {
        use crate::db::{Db, Reply, Settings};
        use crate::protocol::Request;
        for (bound, limit) in [(1u64 << 20, 40_000usize), (7, 40_000), (1 << 20, 1)] {
            let forward = ["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
            let db = Db::open(Settings {
                data: None,
                fsync: crate::journal::Fsync::No,
                retention: None,
                max_memory: Some(limit),
                self_metrics: None,
                forward: &forward,
                forward_buffer: bound,
            })
            .unwrap();
            let mut lines = Vec::new();
            for i in 0..3000 {
                lines.push(format!("put new.m{i} {i} 100"));
                if i % 3 == 0 {
                    lines.push(format!("put new.m0 {} {}", i as f64 / 4.0, 100));
                }
                if i % 17 == 0 {
                    lines.push("nonsense".to_string());
                    lines.push("get new.m1".to_string());
                }
            }
            let (mut accepted, mut refused, mut dropped) = (Vec::new(), 0, 0);
            for chunk in lines.chunks(333) {
                let requests: Vec<_> = chunk
                    .iter()
                    .map(|line| Request::parse(line.as_bytes()).map(Option::unwrap))
                    .collect();
                let mut replies = Vec::new();
                let applied = db.apply(&requests, &mut replies);
                assert_eq!(applied.consumed, requests.len());
                refused += applied.memory_refused;
                dropped += applied.forward_dropped;
                // One outcome per request, from the runs.
                let mut at = 0;
                for reply in &replies {
                    match reply {
                        Reply::Ok(n) => {
                            for line in &chunk[at..at + n] {
                                let mut words = line.split(' ').skip(1);
                                let (m, v, t) = (
                                    words.next().unwrap(),
                                    words.next().unwrap(),
                                    words.next().unwrap(),
                                );
                                let mut want = Vec::new();
                                protocol::write_point(
                                    &mut want,
                                    m,
                                    v.parse().unwrap(),
                                    t.parse().unwrap(),
                                );
                                accepted.push(String::from_utf8(want).unwrap());
                            }
                            at += n;
                        }
                        Reply::Error(_, n) => at += n,
                        Reply::Series(_) => at += 1,
                        _ => panic!("unexpected reply"),
                    }
                }
                assert_eq!(at, chunk.len());
            }
            if limit == 1 {
                // The empty store takes one metric; then only its overwrites.
                assert!(
                    accepted.iter().all(|line| line.starts_with("new.m0 ")),
                    "{accepted:?}"
                );
                assert_eq!(accepted.len(), 1001);
            } else {
                assert!(refused > 0 && accepted.len() > 100, "{refused} refused");
            }
            let keep = (accepted.len() as u64).min(bound) as usize;
            let want: String = accepted[accepted.len() - keep..].concat();
            for upstream in db.upstreams() {
                let queue = upstream.queue().unwrap();
                let (_, got) = take(queue);
                assert_eq!(got, want, "bound {bound}");
                assert_eq!(lock(&queue.state).dropped, (accepted.len() - keep) as u64);
            }
            assert_eq!(dropped, 2 * (accepted.len() - keep) as u64);
        }
    }

    fn test_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("metrics-forward-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn append(journal: &Journal, lines: std::ops::Range<i64>) {
        let mut appender = journal.appender();
        for i in lines {
            appender.push("m", i as f64, i);
        }
        journal.commit(appender.finish()).unwrap();
    }

    fn read_all(upstream: &Upstream, from: u64) -> String {
        let mut out = Vec::new();
        upstream
            .read(
                from,
                1 << 20,
                Duration::ZERO,
                &mut Window::default(),
                &mut out,
            )
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn expected(lines: std::ops::Range<i64>) -> String {
        lines.map(|i| format!("m {i}.0 {i}\n")).collect()
    }

    #[test]
    fn a_forwarder_behind_a_compaction_and_a_restart_resumes_at_its_place() {
        let dir = test_dir("compaction");
        let path = dir.join("data.txt");
        let (_, journal, _) = Journal::open(&path, crate::journal::Fsync::No, i64::MIN).unwrap();
        let journal = Arc::new(journal);
        append(&journal, 0..100);
        let upstream = Upstream::from_file("127.0.0.1:1", Arc::clone(&journal), Arc::default());
        assert_eq!(upstream.pending(), 100);
        // Sent up to line 40, of which up to line 30 is safe.
        let (sent, safe) = (expected(0..40), expected(0..30).len() as u64);
        upstream.advance(0, sent.as_bytes(), sent.len() as u64, safe, 0);
        assert_eq!(upstream.pending(), 60);
        // A compaction, with the tail kept from the safe point.
        let at = journal.position();
        let keep_from = upstream.keep_from().unwrap();
        let mut snapshot = Some(b"m 99.0 99\n".to_vec());
        journal
            .compact(at, keep_from, |out| match snapshot.take() {
                Some(lines) => {
                    out.extend_from_slice(&lines);
                    1
                }
                None => 0,
            })
            .unwrap();
        upstream.save();
        append(&journal, 100..110);
        assert_eq!(
            read_all(&upstream, upstream.resume_from()),
            expected(30..110)
        );
        assert_eq!(upstream.pending(), 70);
        // A restart finds the same place in the new file.
        drop(upstream);
        drop(journal);
        let (_, journal, _) = Journal::open(&path, crate::journal::Fsync::No, i64::MIN).unwrap();
        let upstream = Upstream::from_file("127.0.0.1:1", Arc::new(journal), Arc::default());
        assert_eq!(
            read_all(&upstream, upstream.resume_from()),
            expected(30..110)
        );
        assert_eq!(upstream.pending(), 80);
        let _ = fs::remove_dir_all(dir);
    }

    /// A data file put back in place (same inode, other lines) while the server was stopped:
    /// the saved offset would skip points and start mid-line, so the file is sent from its start.
    #[test]
    fn a_place_saved_for_other_contents_is_not_resumed() {
        let dir = test_dir("restored");
        let path = dir.join("data.txt");
        let open = || {
            let (_, journal, _) =
                Journal::open(&path, crate::journal::Fsync::No, i64::MIN).unwrap();
            Arc::new(journal)
        };
        let journal = open();
        append(&journal, 0..100);
        let upstream = Upstream::from_file("127.0.0.1:1", Arc::clone(&journal), Arc::default());
        let sent = expected(0..40);
        upstream.advance(0, sent.as_bytes(), sent.len() as u64, sent.len() as u64, 0);
        upstream.save();
        drop((upstream, journal));
        // The same place, found again.
        let journal = open();
        let upstream = Upstream::from_file("127.0.0.1:1", Arc::clone(&journal), Arc::default());
        assert_eq!(upstream.resume_from(), sent.len() as u64);
        drop((upstream, journal));
        // Other lines written into the same file (`cp backup data.txt` keeps the inode).
        let other: String = (0..100).map(|i| format!("other.{i} {i}.5 {i}\n")).collect();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&path);
        fs::write(&path, &other).unwrap();
        assert_eq!(inode(&path), before);
        let journal = open();
        let upstream = Upstream::from_file("127.0.0.1:1", Arc::clone(&journal), Arc::default());
        assert_eq!(upstream.resume_from(), 0);
        assert_eq!(read_all(&upstream, 0), other);
        drop((upstream, journal));
        // A place saved by an older version, without a mark, is taken only at a line's end.
        let progress = progress_path(&path, "127.0.0.1:1");
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            let meta = fs::metadata(&path).unwrap();
            (meta.dev(), meta.ino())
        };
        let line = "other.0 0.5 0\n".len();
        for (offset, resumed) in [(line, line), (line + 3, 0)] {
            fs::write(&progress, format!("{offset} {dev} {ino}\n")).unwrap();
            let journal = open();
            let upstream = Upstream::from_file("127.0.0.1:1", Arc::clone(&journal), Arc::default());
            assert_eq!(upstream.resume_from(), resumed as u64, "offset {offset}");
        }
        let _ = fs::remove_dir_all(dir);
    }

    /// Whatever is found where the progress file should be is an error (the caller warns and
    /// sends the data file from its start), and reading it neither waits nor fills memory.
    #[test]
    fn a_progress_file_that_cannot_be_used_is_an_error_read_without_waiting() {
        let dir = test_dir("bad-progress");
        let path = dir.join("p");
        assert!(matches!(read_progress(&path), Ok(None)));
        fs::write(&path, "12 x 3\n").unwrap();
        assert!(read_progress(&path).is_err());
        fs::write(&path, vec![b'7'; 1 << 20]).unwrap();
        assert!(read_progress(&path).is_err());
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        assert!(read_progress(&path).is_err());
        fs::remove_dir(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert!(read_progress(&path).is_err());
        fs::remove_file(&path).unwrap();
        let fifo = std::process::Command::new("mkfifo").arg(&path).status();
        if fifo.is_ok_and(|s| s.success()) {
            assert!(
                read_progress(&path).is_err(),
                "a FIFO is refused without waiting"
            );
        }
        let _ = fs::remove_dir_all(dir);
    }

    /// The progress file is written through a file of its own: not through a link someone left
    /// at the temporary name, and not over what the link names.
    #[test]
    fn saving_progress_never_writes_through_a_link() {
        let dir = test_dir("link");
        let path = dir.join(".data.forward.x");
        let victim = dir.join("victim");
        fs::write(&victim, "keep me\n").unwrap();
        let temp = dir.join(format!(".data.forward.x.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &temp).unwrap();
        write_atomically(&path, b"1 2 3 4\n").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep me\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "1 2 3 4\n");
        assert!(fs::symlink_metadata(&temp).is_err(), "the link is gone");
        let _ = fs::remove_dir_all(dir);
    }
}
