//! The server: the only place that locks the store and spawns threads.
//!
//! One OS thread per connection, all sharing an `Arc<Mutex<Store>>`. Each thread reads what the
//! socket has, answers every complete line in it under one lock acquisition, releases the lock,
//! then formats and writes all the replies with one write. The lock is never held during socket
//! I/O or while a `get` reply is formatted: a get takes a [`Snapshot`] (reference counts only).
//!
//! Everything a client controls is bounded: line length, connection count, idle time, time spent
//! blocked writing to a client that does not read, and log lines per connection.

use crate::journal::{CompactReport, Fsync, Journal, JournalError};
use crate::protocol::{self, Request, RequestError, Selector};
use crate::store::{Snapshot, Store};
use crate::{error, info, log::RateLimit, warn};
use std::collections::TryReserveError;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Settings for [`Server::bind`]; every field has a documented default.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to listen on; default `127.0.0.1`.
    pub host: String,
    /// Port to listen on; 0 picks a free one. Default 8888.
    pub port: u16,
    /// Longest request line, in bytes, without its `\n`. Default 65536.
    pub max_line_bytes: usize,
    /// Most connections served at once. Default 1024.
    pub max_connections: usize,
    /// Close a connection silent this long; `None` (the default) never does.
    pub idle_timeout: Option<Duration>,
    /// Give up on a client that accepts no reply bytes for this long. Default 30 s.
    pub write_timeout: Duration,
    /// Append every put to this file, replayed at start-up; `None` (the default) keeps data
    /// in memory only.
    pub data: Option<PathBuf>,
    /// When the data file is synced. Default `everysec`.
    pub fsync: Fsync,
    /// Forget points older than this; `None` (the default) keeps everything.
    pub retention: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "127.0.0.1".into(),
            port: 8888,
            max_line_bytes: 65536,
            max_connections: 1024,
            idle_timeout: None,
            write_timeout: Duration::from_secs(30),
            data: None,
            fsync: Fsync::EverySec,
            retention: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum ServerError {
    /// The listening socket could not be bound.
    Bind { addr: String, source: io::Error },
    /// The data file could not be loaded; it is left as it was.
    Data(JournalError),
    /// The background thread (syncs, retention, compaction) could not start.
    Spawn(io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServerError::Data(e) => e.fmt(f),
            ServerError::Spawn(e) => write!(f, "cannot start the maintenance thread: {e}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Bind { source, .. } | ServerError::Spawn(source) => Some(source),
            ServerError::Data(e) => Some(e),
        }
    }
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    config: Config,
    open: AtomicUsize,
    journal: Option<Journal>,
}

impl Shared {
    /// The oldest timestamp a `get` returns: now minus the retention window.
    fn since(&self) -> i64 {
        match self.config.retention {
            Some(window) => {
                let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
                crate::defaults::now().saturating_sub(window)
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
}

/// The reply to a connection-level refusal, sent before closing.
const TOO_MANY_CONNECTIONS: &str = "too many connections";
const LINE_TOO_LONG: &str = "line too long";
/// Stack of a connection thread: the handler is shallow, and 1024 threads stay small.
const THREAD_STACK_BYTES: usize = 256 * 1024;
/// Bytes asked of the socket per read: a connection starts small and grows to the most when
/// its reads keep filling the buffer (pipelining), since fewer, larger reads cost less.
const READ_BYTES: usize = 16 * 1024;
const READ_BYTES_MOST: usize = 256 * 1024;
/// Reply bytes gathered before a write while streaming a large `get`.
const FLUSH_BYTES: usize = 64 * 1024;
/// How long, and how many bytes, a connection closed for a bad line is drained before closing.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;
/// Error lines logged per connection per second; the rest are counted.
const LOG_LINES_PER_SECOND: u32 = 5;

impl Server {
    /// Binds the listening socket, then loads the data file if there is one (so a port in use
    /// never touches the file).
    ///
    /// # Errors
    /// [`ServerError::Bind`] when the address is in use, not permitted or cannot be resolved;
    /// [`ServerError::Data`] when the data file cannot be read or has a bad line.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        let listener =
            TcpListener::bind((config.host.as_str(), config.port)).map_err(|source| {
                ServerError::Bind {
                    addr: host_port(&config.host, config.port),
                    source,
                }
            })?;
        let mut shared = Shared {
            store: Mutex::new(Store::new()),
            config,
            open: AtomicUsize::new(0),
            journal: None,
        };
        if let Some(path) = shared.config.data.clone() {
            let since = shared.since();
            let (store, journal) = load(&path, shared.config.fsync, since)?;
            shared.store = Mutex::new(store);
            shared.journal = Some(journal);
        }
        Ok(Server {
            listener,
            shared: Arc::new(shared),
        })
    }

    /// The address actually bound, with the real port when 0 was asked for.
    ///
    /// # Errors
    /// The OS error if the socket cannot report its address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts and serves connections until the process ends.
    ///
    /// # Errors
    /// [`ServerError::Spawn`] when the background thread that syncs the data file, applies
    /// retention and compacts cannot start.
    pub fn run(self) -> Result<(), ServerError> {
        if self.shared.journal.is_some() || self.shared.config.retention.is_some() {
            let shared = Arc::clone(&self.shared);
            thread::Builder::new()
                .name("maintenance".into())
                .spawn(move || maintain(&shared))
                .map_err(ServerError::Spawn)?;
        }
        let mut backoff = Duration::ZERO;
        // Refusals and failures here come from many clients: one limiter bounds them all.
        let mut log_limit = RateLimit::new(LOG_LINES_PER_SECOND);
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    backoff = Duration::ZERO;
                    self.admit(stream, peer, &mut log_limit);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors and the like: wait for clients to leave, don't spin.
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    if let Some(suppressed) = log_limit.allow(Instant::now()) {
                        error!(
                            "accept failed: {e}; retrying in {backoff:?}{}",
                            suppressed_note(suppressed)
                        );
                    }
                    thread::sleep(backoff);
                }
            }
        }
    }

    fn admit(&self, stream: TcpStream, peer: SocketAddr, log_limit: &mut RateLimit) {
        let Some(slot) = Slot::take(&self.shared) else {
            if let Some(suppressed) = log_limit.allow(Instant::now()) {
                warn!(
                    "{peer} refused: too many connections (limit {}){}",
                    self.shared.config.max_connections,
                    suppressed_note(suppressed)
                );
            }
            refuse(stream, TOO_MANY_CONNECTIONS);
            return;
        };
        let shared = Arc::clone(&self.shared);
        let spawned = thread::Builder::new()
            .name(format!("conn {peer}"))
            .stack_size(THREAD_STACK_BYTES)
            .spawn(move || {
                info!("{peer} connected ({} open)", slot.open());
                let (end, suppressed) = Connection::new(stream, peer, &shared).run();
                // The place is free before the line saying so is written.
                drop(slot);
                info!("{peer} disconnected: {end}{}", suppressed_note(suppressed));
            });
        if let Err(e) = spawned {
            // The closure, with its socket and slot, is dropped: that one client is closed.
            if let Some(suppressed) = log_limit.allow(Instant::now()) {
                error!(
                    "{peer} dropped: cannot start a thread: {e}{}",
                    suppressed_note(suppressed)
                );
            }
        }
    }
}

/// Replays the data file, and compacts it at once when it holds more than twice the live data.
fn load(path: &Path, fsync: Fsync, since: i64) -> Result<(Store, Journal), ServerError> {
    let started = Instant::now();
    let (store, journal, report) = Journal::open(path, fsync, since).map_err(ServerError::Data)?;
    if report.torn_bytes > 0 {
        warn!(
            "{}: dropped a torn last line ({} bytes) left by an interrupted write",
            path.display(),
            report.torn_bytes
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
        let compacted = journal
            .compact(|| (store.snapshot(Selector::All, since), journal.position()))
            .map_err(ServerError::Data)?;
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

/// How long a failed compaction waits before the next try.
const COMPACT_RETRY: Duration = Duration::from_secs(60);
/// How often the maintenance thread wakes.
const TICK: Duration = Duration::from_millis(100);

/// The background work: syncing the data file once a second (`everysec`), retrying a data file
/// that failed, compacting it, and forgetting points past the retention window.
fn maintain(shared: &Shared) {
    let second = Duration::from_secs(1);
    let sweep_every = shared
        .config
        .retention
        .map(|window| (window / 10).clamp(second, 60 * second));
    let (mut synced, mut checked, mut swept) = (Instant::now(), Instant::now(), Instant::now());
    // After a failed compaction (a full disk, say), wait a while before the next attempt.
    let mut compact_after = Instant::now();
    loop {
        thread::sleep(TICK);
        if let Some(journal) = &shared.journal {
            if journal.failure().is_some() && checked.elapsed() >= second {
                // A retry: it clears the failure, and logs, once a write succeeds.
                let _ = journal.flush();
            }
            if journal.fsync() == Fsync::EverySec && synced.elapsed() >= second {
                synced = Instant::now();
                if let Err(e) = journal.sync() {
                    error!("cannot sync {}: {e}", journal.path().display());
                }
            }
            if checked.elapsed() >= second {
                checked = Instant::now();
                let points = shared.lock().points();
                if journal.needs_compaction(points) && Instant::now() >= compact_after {
                    let since = shared.since();
                    let take = || {
                        let store = shared.lock();
                        (store.snapshot(Selector::All, since), journal.position())
                    };
                    match journal.compact(take) {
                        Ok(report) => log_compaction(journal, &report),
                        Err(e) => {
                            compact_after = Instant::now() + COMPACT_RETRY;
                            error!("compaction failed, next try in {COMPACT_RETRY:?}: {e}");
                        }
                    }
                }
            }
        }
        if let Some(every) = sweep_every {
            if swept.elapsed() >= every {
                swept = Instant::now();
                let since = shared.since();
                let removed = shared.lock().expire_before(since);
                if removed > 0 {
                    info!("retention: removed {removed} points older than {since}");
                }
            }
        }
    }
}

/// `host:port`, with brackets around an IPv6 host.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} similar lines suppressed)")
    }
}

/// Sends a final error reply and closes, without waiting on a client that does not read.
fn refuse(stream: TcpStream, message: &str) {
    let mut reply = Vec::new();
    protocol::write_error(&mut reply, message);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = (&stream).write_all(&reply);
    let _ = stream.shutdown(Shutdown::Write);
}

/// One of the `max_connections` places; given back on drop, however the connection ends.
struct Slot(Arc<Shared>);

impl Slot {
    fn take(shared: &Arc<Shared>) -> Option<Slot> {
        let limit = shared.config.max_connections;
        shared
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(shared)))
    }

    fn open(&self) -> usize {
        self.0.open.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a connection ended, for the log.
#[derive(Debug)]
enum End {
    ClientClosed,
    Idle,
    LineTooLong,
    Http,
    ReadFailed(io::Error),
    WriteFailed(io::Error),
    NoMemory(TryReserveError),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::ClientClosed => f.write_str("closed by client"),
            End::Idle => f.write_str("idle timeout"),
            End::LineTooLong => f.write_str("line too long"),
            End::Http => f.write_str("http request on the metrics port"),
            End::ReadFailed(e) => write!(f, "read failed: {e}"),
            End::WriteFailed(e) => write!(f, "write failed: {e}"),
            End::NoMemory(e) => write!(f, "cannot allocate a read buffer: {e}"),
        }
    }
}

/// A reply decided under the lock and written after it is released.
enum Reply {
    /// This many `ok` replies in a row: a pipelined run of puts.
    Ok(usize),
    Error(&'static str),
    /// This many puts refused, with the data file's failure.
    Failed(Arc<str>, usize),
    Points(Snapshot),
}

/// Bytes read but not yet answered: `buf[start..end]`. The buffer grows while reads keep
/// filling it, up to [`READ_BYTES_MOST`], or while a single line is longer than it, and never
/// past the line limit plus one read.
struct Input {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes to ask for in the next read.
    want: usize,
}

impl Input {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Makes room for one more read. Allocation failure is an error, not an abort: under memory
    /// pressure one connection closes and the server lives on.
    fn reserve(&mut self, most: usize) -> Result<(), TryReserveError> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            // A connection that stopped streaming gives its large buffer back.
            if self.buf.len() > 2 * self.want.max(READ_BYTES) {
                self.buf.truncate(self.want);
                self.buf.shrink_to_fit();
            }
        }
        if self.buf.len() - self.end >= self.want / 2 {
            return Ok(());
        }
        self.buf.copy_within(self.start..self.end, 0);
        (self.start, self.end) = (0, self.end - self.start);
        if self.buf.len() - self.end < self.want / 2 {
            let grown = (self.buf.len() * 2).min(most).max(self.end + self.want);
            self.buf.try_reserve_exact(grown - self.buf.len())?;
            self.buf.resize(grown, 0);
        }
        Ok(())
    }

    /// Records a read of `n` bytes into `free` bytes of room: a full read asks for more next
    /// time, a small one for less.
    fn record_read(&mut self, n: usize, free: usize) {
        self.end += n;
        if n == free {
            self.want = (self.want * 2).min(READ_BYTES_MOST);
        } else if n < self.want / 8 {
            self.want = (self.want / 2).max(READ_BYTES);
        }
    }
}

struct Connection<'a> {
    stream: TcpStream,
    peer: SocketAddr,
    shared: &'a Shared,
    input: Input,
    output: Vec<u8>,
    replies: Vec<Reply>,
    /// This batch's puts as data file lines, and how many.
    journal_lines: Vec<u8>,
    journal_count: u64,
    log_limit: RateLimit,
}

impl<'a> Connection<'a> {
    fn new(stream: TcpStream, peer: SocketAddr, shared: &'a Shared) -> Self {
        Connection {
            stream,
            peer,
            shared,
            input: Input {
                buf: Vec::new(),
                start: 0,
                end: 0,
                want: READ_BYTES,
            },
            output: Vec::new(),
            replies: Vec::new(),
            journal_lines: Vec::new(),
            journal_count: 0,
            log_limit: RateLimit::new(LOG_LINES_PER_SECOND),
        }
    }

    /// Serves until the connection ends; returns why, and how many log lines were suppressed.
    fn run(mut self) -> (End, u64) {
        let end = self.serve();
        if matches!(end, End::LineTooLong) {
            self.linger();
        }
        (end, self.log_limit.suppressed())
    }

    /// After a final error reply, reads and drops what the client is still sending, for a
    /// bounded time and amount, so that closing does not reset the connection before the
    /// client has read the reply.
    fn linger(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
        let _ = self.stream.set_read_timeout(Some(LINGER_TIME));
        let started = Instant::now();
        let mut drained = 0;
        while drained < LINGER_BYTES && started.elapsed() < LINGER_TIME {
            match self.stream.read(&mut self.input.buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    }

    fn serve(&mut self) -> End {
        let config = &self.shared.config;
        let configured = self
            .stream
            .set_read_timeout(config.idle_timeout)
            .and_then(|()| self.stream.set_write_timeout(Some(config.write_timeout)))
            .and_then(|()| self.stream.set_nodelay(true));
        if let Err(e) = configured {
            return End::ReadFailed(e);
        }
        let max_line = config.max_line_bytes;
        loop {
            if let Err(e) = self.input.reserve(max_line + READ_BYTES_MOST + 1) {
                return End::NoMemory(e);
            }
            let free = self.input.buf.len() - self.input.end;
            let read = self.stream.read(&mut self.input.buf[self.input.end..]);
            match read {
                Ok(0) => return End::ClientClosed,
                Ok(n) => self.input.record_read(n, free),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return End::Idle
                }
                Err(e) => return End::ReadFailed(e),
            }
            let mut end = self.answer_lines();
            if end.is_none() && self.input.pending().len() > max_line {
                self.replies.push(Reply::Error(LINE_TOO_LONG));
                end = Some(End::LineTooLong);
            }
            if let Err(e) = self.send_replies() {
                return End::WriteFailed(e);
            }
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// Answers every complete line in the input under one lock acquisition, queueing the
    /// replies. Returns how the connection must end, if a line ends it.
    fn answer_lines(&mut self) -> Option<End> {
        let max_line = self.shared.config.max_line_bytes;
        let journal = self.shared.journal.as_ref();
        // A data file that cannot be written refuses puts before they touch the store.
        let refusal = journal.and_then(Journal::failure);
        let since = self.shared.since();
        let mut store: Option<MutexGuard<'_, Store>> = None;
        let mut end = None;
        while let Some(len) = protocol::find_newline(self.input.pending()) {
            let line = &self.input.buf[self.input.start..self.input.start + len];
            if len > max_line {
                self.replies.push(Reply::Error(LINE_TOO_LONG));
                end = Some(End::LineTooLong);
                break;
            }
            match Request::parse(line) {
                Ok(None) => {}
                Ok(Some(Request::Put {
                    metric,
                    value,
                    timestamp,
                })) => {
                    if let Some(message) = &refusal {
                        self.replies.push(Reply::Failed(Arc::clone(message), 1));
                    } else {
                        let store = store.get_or_insert_with(|| self.shared.lock());
                        store.put(metric, value, timestamp);
                        if journal.is_some() {
                            protocol::write_point(
                                &mut self.journal_lines,
                                metric,
                                value,
                                timestamp,
                            );
                            self.journal_count += 1;
                        }
                        match self.replies.last_mut() {
                            Some(Reply::Ok(run)) => *run += 1,
                            _ => self.replies.push(Reply::Ok(1)),
                        }
                    }
                }
                Ok(Some(Request::Get(selector))) => {
                    let store = store.get_or_insert_with(|| self.shared.lock());
                    self.replies
                        .push(Reply::Points(store.snapshot(selector, since)));
                }
                Err(_) if is_http(line) => {
                    // A browser or proxy talking to the wrong port: nothing it sent is applied.
                    warn!("{} sent an http request; closing", self.peer);
                    end = Some(End::Http);
                    break;
                }
                Err(e) => {
                    log_bad_request(&mut self.log_limit, self.peer, e, line);
                    self.replies.push(Reply::Error(protocol::WRONG_COMMAND));
                }
            }
            self.input.start += len + 1;
        }
        // Lines go to the journal in the order the store applied them: before the lock is let go.
        let commit = match journal {
            Some(journal) if self.journal_count > 0 => {
                let seq = journal.append(&self.journal_lines, self.journal_count);
                self.journal_lines.clear();
                self.journal_count = 0;
                Some((journal, seq))
            }
            _ => None,
        };
        drop(store);
        if let Some((journal, seq)) = commit {
            if let Err(message) = journal.commit(seq) {
                // Not written, so not acknowledged.
                if let Some(suppressed) = self.log_limit.allow(Instant::now()) {
                    warn!(
                        "{} puts refused: {message}{}",
                        self.peer,
                        suppressed_note(suppressed)
                    );
                }
                for reply in &mut self.replies {
                    if let Reply::Ok(run) = *reply {
                        *reply = Reply::Failed(Arc::clone(&message), run);
                    }
                }
            }
        }
        end
    }

    /// Formats the queued replies and writes them, in one write unless a large `get` streams.
    fn send_replies(&mut self) -> io::Result<()> {
        for reply in self.replies.drain(..) {
            match reply {
                Reply::Ok(run) => {
                    for _ in 0..run {
                        self.output.extend_from_slice(protocol::OK);
                    }
                }
                Reply::Error(message) => protocol::write_error(&mut self.output, message),
                Reply::Failed(message, run) => {
                    for _ in 0..run {
                        protocol::write_error(&mut self.output, &message);
                    }
                }
                Reply::Points(mut snapshot) => {
                    self.output.extend_from_slice(b"ok\n");
                    for (metric, value, timestamp) in snapshot.iter() {
                        protocol::write_point(&mut self.output, metric, value, timestamp);
                        if self.output.len() >= FLUSH_BYTES {
                            self.stream.write_all(&self.output)?;
                            self.output.clear();
                        }
                    }
                    self.output.push(b'\n');
                }
            }
        }
        if !self.output.is_empty() {
            self.stream.write_all(&self.output)?;
            self.output.clear();
        }
        Ok(())
    }
}

fn log_bad_request(limit: &mut RateLimit, peer: SocketAddr, e: RequestError, line: &[u8]) {
    if let Some(suppressed) = limit.allow(Instant::now()) {
        const SHOWN: usize = 60;
        let shown = String::from_utf8_lossy(&line[..line.len().min(SHOWN)]);
        warn!(
            "{peer} bad request ({e}): {shown:?}{}",
            suppressed_note(suppressed)
        );
    }
}

/// Whether a line is an HTTP/1.x request line (`METHOD target HTTP/1.x`) or a `Host:` header.
pub fn is_http(line: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH", b"CONNECT", b"TRACE",
    ];
    let line = line.trim_ascii();
    if line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"host:") {
        return true;
    }
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let (Some(method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    METHODS.contains(&method)
        && version.len() == 8
        && version.starts_with(b"HTTP/1.")
        && version[7].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_request_lines_are_recognised() {
        for line in [
            &b"GET / HTTP/1.1"[..],
            b"POST /metrics HTTP/1.0\r",
            b"OPTIONS * HTTP/1.1",
            b"Host: localhost:8888",
            b"host:x",
        ] {
            assert!(is_http(line), "{line:?}");
        }
        for line in [
            &b"get / HTTP/1.1"[..],
            b"GET /",
            b"PUT a b c",
            b"FETCH / HTTP/1.1",
            b"GET / HTTP/2",
            b"put host: 1 2",
        ] {
            assert!(!is_http(line), "{line:?}");
        }
    }

    #[test]
    fn a_panic_while_holding_the_lock_does_not_stop_other_clients() {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            config: Config::default(),
            open: AtomicUsize::new(0),
            journal: None,
        });
        shared.lock().put("m", 1.0, 1);
        let poisoner = Arc::clone(&shared);
        let panicked = thread::spawn(move || {
            let _guard = poisoner.lock();
            panic!("a connection thread fails while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert!(shared.store.is_poisoned());
        let mut store = shared.lock();
        store.put("m", 2.0, 2);
        assert_eq!(store.points(), 2);
    }

    #[test]
    fn a_retention_longer_than_time_itself_keeps_everything() {
        let shared = Shared {
            store: Mutex::new(Store::new()),
            config: Config {
                retention: Some(Duration::from_secs(u64::MAX)),
                ..Config::default()
            },
            open: AtomicUsize::new(0),
            journal: None,
        };
        assert!(shared.since() < -1_000_000_000);
    }

    #[test]
    fn host_port_brackets_ipv6() {
        assert_eq!(host_port("127.0.0.1", 1), "127.0.0.1:1");
        assert_eq!(host_port("::", 8888), "[::]:8888");
    }
}
