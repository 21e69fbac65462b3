//! One client's I/O: the input buffer, parsing its lines, handing each batch to the [`Db`],
//! and writing the replies, batched into as few writes as possible (after mini-redis'
//! `connection.rs`). No lock is held here: parsing happens before [`Db::apply`] takes the store
//! lock, and log lines and socket writes after it has released it.

use crate::db::{Applied, Db, Parsed, Reply, MEMORY_LIMIT_REACHED};
use crate::log::{self, suppressed_note, RateLimit, Topic};
use crate::protocol::{self, Request, RequestError};
use crate::store::SeriesSnapshot;
use crate::warn;
use std::collections::TryReserveError;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What a connection may hold or wait for; from the server's configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_line_bytes: usize,
    pub idle_timeout: Option<Duration>,
    pub write_timeout: Duration,
}

/// Bytes asked of the socket per read: a connection starts small and grows to the most when
/// its reads keep filling the buffer (pipelining), since fewer, larger reads cost less.
const READ_BYTES: usize = 16 * 1024;
const READ_BYTES_MOST: usize = 256 * 1024;
/// Reply bytes gathered before a write while streaming a large `get`.
const FLUSH_BYTES: usize = 64 * 1024;
/// How long, and how many bytes, a connection closed for a bad line is drained before closing.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;
/// Lines parsed and applied as one batch, at most: bounds the request and reply queues. Each
/// batch takes the store lock once, and where connections contend for it every taking can
/// mean a thread woken and waited for: 2048 rather than 1024 measured 5-10% more puts a second
/// with 8 connections on two cores, and no change in other clients' latency.
const BATCH_LINES: usize = 2048;
/// Error lines logged per connection per second; the rest are counted.
pub(crate) const LOG_LINES_PER_SECOND: u32 = 5;

/// How a connection ended, for the log.
#[derive(Debug)]
pub(crate) enum End {
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

/// Replies on their way out: the queue decided under the lock, and the bytes being written.
struct Output {
    stream: TcpStream,
    replies: Vec<Reply>,
    buf: Vec<u8>,
    write_timeout: Duration,
    /// Whether the socket's write timeout was shortened for the rest of a write.
    timeout_shortened: bool,
}

impl Output {
    /// Formats the queued replies and writes them, in one write unless they are large.
    fn send(&mut self, db: &Db) -> io::Result<()> {
        let mut replies = std::mem::take(&mut self.replies);
        for reply in replies.drain(..) {
            match reply {
                Reply::Ok(run) => {
                    for _ in 0..run {
                        self.buf.extend_from_slice(protocol::OK);
                        self.flush_if_full()?;
                    }
                }
                Reply::Error(message, run) => {
                    db.count_errors(run as u64);
                    for _ in 0..run {
                        protocol::write_error(&mut self.buf, message);
                        self.flush_if_full()?;
                    }
                }
                Reply::Failed(failure, run) => {
                    db.count_errors(run as u64);
                    let message = failure.to_string();
                    for _ in 0..run {
                        protocol::write_error(&mut self.buf, &message);
                        self.flush_if_full()?;
                    }
                }
                Reply::Series(series) => {
                    self.buf.extend_from_slice(b"ok\n");
                    if let Some(series) = series {
                        self.write_series(&series)?;
                    }
                    self.buf.push(b'\n');
                }
                Reply::Stats(rows, now) => {
                    self.buf.extend_from_slice(b"ok\n");
                    for (name, value) in rows {
                        protocol::write_point(&mut self.buf, name, value, now);
                    }
                    self.buf.push(b'\n');
                }
                Reply::All(mut cursor) => {
                    self.buf.extend_from_slice(b"ok\n");
                    // Step by step: the lock is taken once per step, and a client that stops
                    // reading holds at most one step's blocks alive.
                    loop {
                        let step = db.read_step(&mut cursor);
                        if step.is_empty() {
                            break;
                        }
                        for series in &step {
                            self.write_series(series)?;
                        }
                    }
                    self.buf.push(b'\n');
                }
            }
        }
        // A burst's queue goes back to a small one.
        if replies.capacity() > 64 {
            replies.shrink_to(16);
        }
        self.replies = replies;
        if !self.buf.is_empty() {
            self.write_buf()?;
        }
        if self.buf.capacity() > 2 * FLUSH_BYTES {
            self.buf.shrink_to(FLUSH_BYTES);
        }
        Ok(())
    }

    fn write_series(&mut self, series: &SeriesSnapshot) -> io::Result<()> {
        let name = series.name();
        for (timestamp, value) in series.points() {
            protocol::write_point(&mut self.buf, name, value, timestamp);
            self.flush_if_full()?;
        }
        Ok(())
    }

    fn flush_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() >= FLUSH_BYTES {
            self.write_buf()?;
        }
        Ok(())
    }

    /// Writes the buffer out. The write timeout bounds the whole write, not each part of it: a
    /// client that takes a few bytes now and then still cannot keep the thread past it.
    fn write_buf(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + self.write_timeout;
        if self.timeout_shortened {
            self.stream.set_write_timeout(Some(self.write_timeout))?;
            self.timeout_shortened = false;
        }
        let mut written = 0;
        while written < self.buf.len() {
            if written > 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                self.stream.set_write_timeout(Some(left))?;
                self.timeout_shortened = true;
            }
            match self.stream.write(&self.buf[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.clear();
        Ok(())
    }
}

/// One client's connection, served on its own thread.
pub(crate) struct Connection<'a> {
    peer: SocketAddr,
    db: &'a Db,
    limits: Limits,
    input: Input,
    /// The parsed lines of one batch; empty between batches, kept for its allocation.
    requests: Vec<Parsed<'static>>,
    output: Output,
    log_limit: RateLimit,
}

impl<'a> Connection<'a> {
    pub fn new(stream: TcpStream, peer: SocketAddr, db: &'a Db, limits: Limits) -> Self {
        Connection {
            peer,
            db,
            limits,
            input: Input {
                buf: Vec::new(),
                start: 0,
                end: 0,
                want: READ_BYTES,
            },
            requests: Vec::new(),
            output: Output {
                stream,
                replies: Vec::new(),
                buf: Vec::new(),
                write_timeout: limits.write_timeout,
                timeout_shortened: false,
            },
            log_limit: RateLimit::new(LOG_LINES_PER_SECOND),
        }
    }

    /// Serves until the connection ends; returns why, and how many log lines were suppressed.
    pub fn run(mut self) -> (End, u64) {
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
        let stream = &self.output.stream;
        let _ = stream.shutdown(Shutdown::Write);
        let _ = stream.set_read_timeout(Some(LINGER_TIME));
        let started = Instant::now();
        let mut drained = 0;
        let mut scratch = [0u8; 16 * 1024];
        while drained < LINGER_BYTES && started.elapsed() < LINGER_TIME {
            match (&mut &*stream).read(&mut scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    }

    fn serve(&mut self) -> End {
        let stream = &self.output.stream;
        let configured = stream
            .set_read_timeout(self.limits.idle_timeout)
            .and_then(|()| stream.set_write_timeout(Some(self.limits.write_timeout)))
            .and_then(|()| stream.set_nodelay(true));
        if let Err(e) = configured {
            return End::ReadFailed(e);
        }
        let max_line = self.limits.max_line_bytes;
        loop {
            if let Err(e) = self.input.reserve(max_line + READ_BYTES_MOST + 1) {
                return End::NoMemory(e);
            }
            let free = self.input.buf.len() - self.input.end;
            let read = (&mut &self.output.stream).read(&mut self.input.buf[self.input.end..]);
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
            let mut end = match self.answer_lines() {
                Ok(end) => end,
                Err(e) => return End::WriteFailed(e),
            };
            if end.is_none() && self.input.pending().len() > max_line {
                end = Some(End::LineTooLong);
            }
            if matches!(end, Some(End::LineTooLong)) {
                Reply::push_error(&mut self.output.replies, protocol::LINE_TOO_LONG);
            }
            if let Err(e) = self.output.send(self.db) {
                return End::WriteFailed(e);
            }
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// Parses every complete line in the input, then has the [`Db`] apply them, queueing the
    /// replies; a `get *` is written out before the requests after it are applied. Returns
    /// how the connection must end, if a line ends it.
    fn answer_lines(&mut self) -> io::Result<Option<End>> {
        let max_line = self.limits.max_line_bytes;
        let mut requests = recycle(std::mem::take(&mut self.requests));
        let mut end = None;
        loop {
            // At most BATCH_LINES at a time, so a burst of tiny lines cannot make the request
            // and reply queues large.
            while requests.len() < BATCH_LINES {
                let Some(len) = protocol::find_newline(self.input.pending()) else {
                    break;
                };
                let line = &self.input.buf[self.input.start..self.input.start + len];
                if len > max_line {
                    end = Some(End::LineTooLong);
                    break;
                }
                match Request::parse(line) {
                    Ok(None) => {}
                    Ok(Some(Request::Put {
                        metric,
                        value,
                        timestamp,
                    })) if !protocol::put_fits(metric, value, timestamp, max_line) => {
                        log_bad_request(
                            &mut self.log_limit,
                            self.peer,
                            RequestError::TooLong,
                            line,
                        );
                        requests.push(Err(RequestError::TooLong));
                    }
                    Ok(Some(request)) => requests.push(Ok(request)),
                    Err(_) if is_http(line) => {
                        // A browser or proxy talking to the wrong port: nothing it sent is
                        // applied.
                        if let Some(suppressed) = log::allow(Topic::Requests) {
                            warn!(
                                "{} sent an http request; closing{}",
                                self.peer,
                                suppressed_note(suppressed)
                            );
                        }
                        end = Some(End::Http);
                        break;
                    }
                    Err(e) => {
                        log_bad_request(&mut self.log_limit, self.peer, e, line);
                        requests.push(Err(e));
                    }
                }
                self.input.start += len + 1;
            }
            let full = requests.len() == BATCH_LINES;
            let mut at = 0;
            while at < requests.len() {
                let applied = self.db.apply(&requests[at..], &mut self.output.replies);
                at += applied.consumed;
                log_refusals(&mut self.log_limit, self.peer, &applied);
                if at < requests.len() || full {
                    self.output.send(self.db)?;
                }
            }
            requests.clear();
            if !full || end.is_some() {
                break;
            }
        }
        self.requests = recycle(requests);
        Ok(end)
    }
}

/// Whether this connection, and all of them together, may log a line about `topic` now; the
/// note of what both held back.
fn allow(limit: &mut RateLimit, topic: Topic) -> Option<String> {
    let own = limit.allow(Instant::now())?;
    let all = log::allow(topic)?;
    Some(format!("{}{}", suppressed_note(own), suppressed_note(all)))
}

fn log_refusals(limit: &mut RateLimit, peer: SocketAddr, applied: &Applied) {
    if let Some(failure) = &applied.write_failure {
        if let Some(suppressed) = allow(limit, Topic::Refusals) {
            warn!("{peer} puts refused: {failure}{suppressed}");
        }
    }
    if applied.memory_refused > 0 {
        if let Some(suppressed) = allow(limit, Topic::Refusals) {
            warn!(
                "{peer} {} puts refused: {MEMORY_LIMIT_REACHED}{suppressed}",
                applied.memory_refused,
            );
        }
    }
}

/// Empties a batch's request list and frees it of the lines it borrowed, keeping its
/// allocation (std collects a `vec::IntoIter` of same-sized items in place).
#[expect(
    clippy::unnecessary_filter_map,
    reason = "filter_map to a new item type is what lets std reuse the allocation"
)]
fn recycle<'b>(mut requests: Vec<Parsed<'_>>) -> Vec<Parsed<'b>> {
    requests.clear();
    requests.into_iter().filter_map(|_| None).collect()
}

fn log_bad_request(limit: &mut RateLimit, peer: SocketAddr, e: RequestError, line: &[u8]) {
    if let Some(suppressed) = allow(limit, Topic::Requests) {
        const SHOWN: usize = 60;
        let shown = String::from_utf8_lossy(&line[..line.len().min(SHOWN)]);
        warn!("{peer} bad request ({e}): {shown:?}{suppressed}");
    }
}

/// Whether a line is an HTTP/1.x request line (`METHOD target HTTP/1.x`) or a `Host:` header.
fn is_http(line: &[u8]) -> bool {
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
    fn a_recycled_request_list_keeps_its_allocation() {
        let line = b"put m 1 2".to_vec();
        let mut requests: Vec<Parsed<'_>> = Vec::with_capacity(1000);
        requests.push(Request::parse(&line).map(Option::unwrap));
        let (at, capacity) = (requests.as_ptr() as usize, requests.capacity());
        let recycled: Vec<Parsed<'static>> = recycle(requests);
        assert!(recycled.is_empty());
        assert_eq!(
            (recycled.as_ptr() as usize, recycled.capacity()),
            (at, capacity)
        );
    }
}
