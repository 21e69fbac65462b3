//! Forwarding: every acknowledged put is sent on, in Graphite plaintext
//! (`metric value timestamp\n`), to each `--forward HOST:PORT` upstream, by a thread of its own
//! per upstream, so ingestion never waits on an upstream however slow or absent.
//!
//! Each upstream reads from a source, by position (a byte offset in a stream of point lines):
//! - with `--data`, the data file itself is the queue: the forwarder reads the lines written to
//!   it, saves how far it has got beside it (atomically, in a file named for the data file and
//!   the upstream), and compaction keeps what any forwarder has not yet sent;
//! - without, a bounded queue in memory ([`MemoryQueue`]): past `--forward-buffer` points the
//!   oldest unsent are dropped and counted.
//!
//! Graphite plaintext has no acknowledgements: bytes written just before an upstream failed may
//! never have been stored. After every reconnect the forwarder starts again from its *safe*
//! position: the last position it had written at least [`RESEND_WINDOW`] before, and at least
//! [`RESEND_BYTES`] (more than a socket's buffers hold) before what it had sent. Duplicates
//! are harmless to Graphite-style stores, which keep one value per metric and timestamp.

use crate::journal::{FileId, Journal};
use crate::log::{self, suppressed_note, Topic};
use crate::{info, warn};
use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Bytes sent in one write, at most.
const WRITE_BYTES: usize = 1 << 20;
/// How far back a forwarder starts again after a reconnect, in time...
pub const RESEND_WINDOW: Duration = Duration::from_secs(5);
/// ...and at least in bytes: more than the socket buffers on both sides hold.
pub const RESEND_BYTES: u64 = 16 << 20;
/// Reconnect backoff.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MOST: Duration = Duration::from_secs(10);
/// How long a write may block on an upstream that does not read before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A write that takes less than this went straight into a socket with room: the upstream is
/// reading.
const QUICK_WRITE: Duration = Duration::from_millis(50);
/// How often a forwarder saves its position.
const SAVE_EVERY: Duration = Duration::from_secs(1);

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
    },
    Memory(MemoryQueue),
}

impl Upstream {
    /// An upstream that reads the data file, from where a previous run got to.
    pub fn from_file(addr: &str, journal: Arc<Journal>, totals: Arc<Totals>) -> Upstream {
        let progress = progress_path(journal.path(), addr);
        let start = read_progress(&progress)
            .and_then(|(offset, id)| journal.seq_of(offset, id))
            .unwrap_or(0);
        let lines_before = journal.lines_before(start);
        let upstream = Upstream {
            addr: addr.to_string(),
            source: Source::File { journal, progress },
            safe: AtomicU64::new(start),
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
            Source::Memory(queue) => lock(&queue.state).unsent_lines,
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
    /// old): after a crash the forwarder resends from there.
    pub fn save(&self) {
        let Source::File { journal, progress } = &self.source else {
            return;
        };
        let (offset, id) = journal.file_offset(self.safe.load(Ordering::Acquire));
        let Some(FileId(dev, ino)) = id else {
            return;
        };
        if let Err(e) = write_atomically(progress, format!("{offset} {dev} {ino}\n").as_bytes()) {
            if let Some(suppressed) = log::allow(Topic::Refusals) {
                warn!(
                    "cannot save forwarding progress to {}: {e}{}",
                    progress.display(),
                    suppressed_note(suppressed)
                );
            }
        }
    }

    /// Appends bytes from `position` on (whole lines, at most `most` bytes) to `out`; waits up
    /// to `wait` for some when there are none. Returns the lines appended.
    fn read(
        &self,
        position: u64,
        most: usize,
        wait: Duration,
        out: &mut Vec<u8>,
    ) -> io::Result<u64> {
        match &self.source {
            Source::File { journal, .. } => {
                let deadline = Instant::now() + wait;
                while journal.written_seq() <= position && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
                let start = out.len();
                journal.read_from(position, most, out)?;
                Ok(out[start..].iter().filter(|&&b| b == b'\n').count() as u64)
            }
            Source::Memory(queue) => Ok(queue.read(position, most, wait, out)),
        }
    }

    /// The position the sender starts from after a (re)connect.
    fn resume_from(&self) -> u64 {
        match &self.source {
            Source::File { .. } => self.safe.load(Ordering::Acquire),
            Source::Memory(queue) => queue.resume_from(),
        }
    }

    /// Records that bytes up to `sent` were written, and which of them are now safe.
    fn advance(&self, sent: u64, safe: u64, new_lines: u64) {
        self.totals.sent.fetch_add(new_lines, Ordering::Relaxed);
        self.safe.fetch_max(safe, Ordering::AcqRel);
        match &self.source {
            Source::File { .. } => {
                self.lines_sent.fetch_add(new_lines, Ordering::Relaxed);
            }
            Source::Memory(queue) => queue.advance(sent, safe),
        }
    }
}

/// The stream of point lines for one upstream without a data file: batches in put order, from
/// the oldest still kept for a resend to the newest. Holds at most `bound` unsent points; past
/// that the oldest unsent batch is dropped.
#[derive(Debug)]
pub(crate) struct MemoryQueue {
    state: Mutex<QueueState>,
    grew: Condvar,
    bound: u64,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Batches with the position of their first byte.
    batches: VecDeque<(u64, Vec<u8>, u64)>,
    /// Position just past the last byte.
    end: u64,
    /// The sender's position, and the safe one before it.
    sent: u64,
    safe: u64,
    unsent_lines: u64,
}

impl MemoryQueue {
    fn new(bound: u64) -> Self {
        MemoryQueue {
            state: Mutex::new(QueueState::default()),
            grew: Condvar::new(),
            bound,
        }
    }

    /// Adds a batch of `lines` point lines. Never waits for the sender. Returns how many
    /// points were dropped to stay within the bound.
    pub fn push(&self, bytes: &[u8], lines: u64) -> u64 {
        let mut state = lock(&self.state);
        let start = state.end;
        state.end += bytes.len() as u64;
        state.unsent_lines += lines;
        state.batches.push_back((start, bytes.to_vec(), lines));
        let mut dropped = 0;
        while state.unsent_lines > self.bound {
            // The oldest unsent batch: the first that starts at or after `sent`.
            let at = state
                .batches
                .partition_point(|&(start, _, _)| start < state.sent);
            let Some(batch) = state.batches.remove(at) else {
                break;
            };
            state.unsent_lines -= batch.2;
            dropped += batch.2;
            // Later positions are unchanged; the dropped bytes are simply skipped.
            if at == state.batches.len() {
                state.sent = state.end;
            }
        }
        drop(state);
        self.grew.notify_one();
        dropped
    }

    fn read(&self, position: u64, most: usize, wait: Duration, out: &mut Vec<u8>) -> u64 {
        let mut state = lock(&self.state);
        if state.end <= position {
            state = self
                .grew
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let first = state
            .batches
            .partition_point(|&(start, _, _)| start < position);
        let mut lines = 0;
        for (_, bytes, count) in state.batches.range(first..) {
            if !out.is_empty() && out.len() + bytes.len() > most {
                break;
            }
            out.extend_from_slice(bytes);
            lines += count;
        }
        lines
    }

    fn resume_from(&self) -> u64 {
        let state = lock(&self.state);
        state.safe
    }

    fn advance(&self, sent: u64, safe: u64) {
        let mut state = lock(&self.state);
        if sent > state.sent {
            // Lines newly sent are no longer pending.
            let from = state
                .batches
                .partition_point(|&(start, _, _)| start < state.sent);
            let newly: u64 = state
                .batches
                .range(from..)
                .take_while(|&&(start, _, _)| start < sent)
                .map(|&(_, _, lines)| lines)
                .sum();
            state.unsent_lines -= newly.min(state.unsent_lines);
            state.sent = sent;
        }
        state.safe = state.safe.max(safe);
        // What is safe is no longer needed for a resend.
        while state
            .batches
            .front()
            .is_some_and(|&(start, ref bytes, _)| start + bytes.len() as u64 <= state.safe)
        {
            state.batches.pop_front();
        }
    }
}

/// Runs one upstream's sender until the process ends.
pub(crate) fn run(upstream: &Upstream) {
    let mut backoff = BACKOFF_FIRST;
    let mut down_since: Option<(Instant, String)> = None;
    let mut failures = 0u64;
    let mut sent_most = upstream.resume_from();
    loop {
        let stream = match connect(&upstream.addr) {
            Ok(stream) => stream,
            Err(e) => {
                failures += 1;
                if down_since.is_none() {
                    warn!(
                        "forwarding to {} stopped: {e}; retrying with backoff up to {BACKOFF_MOST:?}",
                        upstream.addr
                    );
                    down_since = Some((Instant::now(), e.to_string()));
                }
                thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MOST);
                continue;
            }
        };
        if let Some((since, _)) = down_since.take() {
            info!(
                "forwarding to {} resumed after {:.1} s ({failures} failed attempts)",
                upstream.addr,
                since.elapsed().as_secs_f64()
            );
        }
        failures = 0;
        backoff = BACKOFF_FIRST;
        let error = send(upstream, stream, &mut sent_most);
        warn!(
            "forwarding to {} interrupted: {error}; resending from the last safe point",
            upstream.addr
        );
        down_since = Some((Instant::now(), error.to_string()));
    }
}

/// Sends until the connection fails; returns why.
fn send(upstream: &Upstream, mut stream: TcpStream, sent_most: &mut u64) -> io::Error {
    let mut position = upstream.resume_from();
    // (when, position) after each write, oldest first: the resend window.
    let mut marks: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut safe = position;
    let mut saved = Instant::now();
    // When a write last went through at once: the upstream was reading then.
    let mut reading_at: Option<Instant> = None;
    let mut buf = Vec::with_capacity(WRITE_BYTES);
    loop {
        buf.clear();
        let lines = match upstream.read(position, WRITE_BYTES, Duration::from_millis(200), &mut buf)
        {
            Ok(lines) => lines,
            Err(e) => return e,
        };
        if !buf.is_empty() {
            let started = Instant::now();
            if let Err(e) = stream.write_all(&buf) {
                return e;
            }
            if started.elapsed() < QUICK_WRITE {
                reading_at = Some(Instant::now());
            }
            let end = position + buf.len() as u64;
            // Lines sent before (a resend after a reconnect) are not new.
            let new_lines = if end > *sent_most {
                if position >= *sent_most {
                    lines
                } else {
                    let fresh = &buf[(*sent_most - position) as usize..];
                    fresh.iter().filter(|&&b| b == b'\n').count() as u64
                }
            } else {
                0
            };
            *sent_most = (*sent_most).max(end);
            position = end;
            marks.push_back((Instant::now(), position));
            upstream.advance(position, safe, new_lines);
        }
        // Safe: written at least the resend window ago, and since then either more than the
        // socket buffers hold was written after it, or the upstream was seen reading after the
        // window had passed.
        let now = Instant::now();
        while let Some(&(when, at)) = marks.front() {
            let old = now.duration_since(when) >= RESEND_WINDOW;
            let drained = position - at >= RESEND_BYTES
                || reading_at.is_some_and(|t| t.duration_since(when) >= RESEND_WINDOW);
            if old && drained {
                safe = at;
                marks.pop_front();
            } else {
                break;
            }
        }
        if buf.is_empty() {
            upstream.advance(position, safe, 0);
        }
        if now.duration_since(saved) >= SAVE_EVERY {
            saved = now;
            upstream.save();
        }
    }
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

fn read_progress(path: &Path) -> Option<(u64, FileId)> {
    let text = fs::read_to_string(path).ok()?;
    let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next(), fields.next()) {
        (Some(Ok(offset)), Some(Ok(dev)), Some(Ok(ino))) => Some((offset, FileId(dev, ino))),
        _ => None,
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
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
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

    #[test]
    fn the_memory_queue_drops_the_oldest_unsent_points_past_its_bound() {
        let queue = MemoryQueue::new(4);
        assert_eq!(queue.push(b"a 1.0 1\nb 1.0 1\n", 2), 0);
        assert_eq!(queue.push(b"c 1.0 1\nd 1.0 1\n", 2), 0);
        assert_eq!(queue.push(b"e 1.0 1\n", 1), 2);
        let mut out = Vec::new();
        assert_eq!(queue.read(0, 1 << 20, Duration::ZERO, &mut out), 3);
        assert_eq!(out, b"c 1.0 1\nd 1.0 1\ne 1.0 1\n");
    }

    #[test]
    fn the_memory_queue_keeps_what_is_not_yet_safe_for_a_resend() {
        let queue = MemoryQueue::new(100);
        queue.push(b"a 1.0 1\n", 1);
        queue.push(b"b 1.0 1\n", 1);
        queue.advance(16, 0);
        assert_eq!(lock(&queue.state).unsent_lines, 0);
        let mut out = Vec::new();
        queue.read(queue.resume_from(), 1 << 20, Duration::ZERO, &mut out);
        assert_eq!(out, b"a 1.0 1\nb 1.0 1\n");
        queue.advance(16, 8);
        out.clear();
        queue.read(queue.resume_from(), 1 << 20, Duration::ZERO, &mut out);
        assert_eq!(out, b"b 1.0 1\n");
    }
}
