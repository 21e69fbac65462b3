//! Bulk loading for `metrics put -`: point lines in, pipelined puts out over one connection.
//!
//! Input lines are `metric value [timestamp]`, which is what `metrics get` prints, what the data
//! file holds and Graphite's plaintext format. This thread reads and checks lines and writes
//! batches; a second thread reads the replies. Each batch's line numbers travel to the reader
//! before the batch is written, so a rejection can name its line and the reader always knows
//! of every request on the wire.
//!
//! Memory is bounded whatever the input and the server do: an input line is held up to the line
//! limit and the rest of a longer one is skipped, a batch is at most [`BATCH_BYTES`] of requests
//! and [`BATCH_LINES`] lines, and at most [`WINDOW_LINES`] lines are unacknowledged: the writer
//! waits for replies when the window is full.

use crate::client::{self, ClientError, ReplyReader};
use crate::protocol::{self, Reply, Request};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Bytes of requests gathered before a write, unless the input pauses first.
pub const BATCH_BYTES: usize = 64 * 1024;
/// Lines in one batch at most.
pub const BATCH_LINES: usize = 4096;
/// Lines sent but not yet acknowledged, at most: 16 batches.
pub const WINDOW_LINES: usize = 16 * BATCH_LINES;
/// The default longest input line and request line, without `\n`: the server's default
/// `--max-line-bytes`. A longer line is rejected here, since the server would close the
/// connection on it and every later line would be lost.
pub const MAX_LINE_BYTES: usize = 65536;

/// Why a bulk load stopped.
#[derive(Debug)]
pub enum BulkError {
    /// The input could not be read.
    Input(io::Error),
    /// The connection could not be made.
    Client(ClientError),
    /// The thread that reads the replies could not start; nothing was sent.
    Spawn(io::Error),
    /// The connection failed after at least `stored` lines were stored: that many were
    /// acknowledged, and lines whose replies never came may have been stored too.
    Interrupted { stored: u64, source: ClientError },
}

impl fmt::Display for BulkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BulkError::Input(_) => f.write_str("cannot read input"),
            BulkError::Spawn(_) => f.write_str("cannot start the thread that reads replies"),
            // Transparent: what the client error says is the whole story.
            BulkError::Client(e) => e.fmt(f),
            BulkError::Interrupted { stored: 1, .. } => {
                f.write_str("stopped after at least 1 line was stored")
            }
            BulkError::Interrupted { stored, .. } => {
                write!(f, "stopped after at least {stored} lines were stored")
            }
        }
    }
}

impl std::error::Error for BulkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BulkError::Input(e) | BulkError::Spawn(e) => Some(e),
            BulkError::Client(e) => e.source(),
            BulkError::Interrupted { source, .. } => Some(source),
        }
    }
}

impl From<ClientError> for BulkError {
    fn from(e: ClientError) -> Self {
        BulkError::Client(e)
    }
}

/// A line that was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// 1-based line number in the input.
    pub line: u64,
    /// Why, in lowercase words.
    pub reason: String,
}

/// What a bulk load did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines sent to the server.
    pub sent: u64,
    /// Lines the server acknowledged with `ok`: these are stored.
    pub stored: u64,
    /// Lines rejected, by the client's checks or by the server.
    pub rejected: u64,
}

/// Reads one input line into a put, with [`protocol::parse_point_line`]; a line without a
/// timestamp takes `now()`. `Ok(None)` for a blank line.
///
/// # Errors
/// Why the line cannot be a point, in words for the user.
pub fn parse_line(line: &[u8], now: impl FnOnce() -> i64) -> Result<Option<Request<'_>>, String> {
    let point = protocol::parse_point_line(line).map_err(|e| e.to_string())?;
    Ok(point.map(|point| Request::Put {
        metric: point.metric,
        value: point.value,
        timestamp: point.timestamp.unwrap_or_else(now),
    }))
}

/// How `put -` talks to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The server address, `HOST:PORT`.
    pub addr: String,
    /// Bounds the connect and every read and write; `None` waits for ever.
    pub timeout: Option<Duration>,
    /// The longest input line and request line, without `\n` (the server's `--max-line-bytes`).
    pub max_line_bytes: usize,
}

/// Sends every point line of `input` to the server, pipelined over one connection.
/// `on_reject` hears of each line not stored, from either thread, as soon as it is known.
///
/// # Errors
/// [`BulkError`] when the input cannot be read or the connection cannot be made or fails; lines
/// acknowledged before a failure are stored.
pub fn put_lines(
    input: impl Read,
    options: &Options,
    on_reject: &(dyn Fn(&Rejected) + Sync),
) -> Result<Summary, BulkError> {
    let stream = client::connect_stream(options.addr.as_str(), options.timeout)?;
    let replies = ReplyReader::new(stream.try_clone().map_err(ClientError::Io)?);
    // The window: a batch's numbers are queued before the batch is written, and the reader
    // holds one batch while it reads its replies.
    let (batches, batch_lines) = mpsc::sync_channel::<Vec<u64>>(WINDOW_LINES / BATCH_LINES - 1);
    thread::scope(|scope| {
        let shared = &stream;
        let reader = thread::Builder::new()
            .spawn_scoped(scope, move || {
                let counts = read_replies(replies, batch_lines, on_reject);
                if counts.2.is_some() {
                    // Unblock a writer stuck on a server that stopped reading, even without a
                    // timeout.
                    let _ = shared.shutdown(Shutdown::Both);
                }
                counts
            })
            .map_err(BulkError::Spawn)?;
        let written = write_requests(input, &stream, batches, options.max_line_bytes, on_reject);
        // Whatever happened, let the server finish: it answers all it read, then sees the end.
        let _ = stream.shutdown(Shutdown::Write);
        let (stored, refused, read_error) = match reader.join() {
            Ok(counts) => counts,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        if let Some(source) = read_error {
            return Err(BulkError::Interrupted { stored, source });
        }
        let (sent, bad_lines) = written?;
        Ok(Summary {
            sent,
            stored,
            rejected: bad_lines + refused,
        })
    })
}

/// Reads the next line of `input` into `line`, without its `\n`, keeping at most `limit + 1`
/// bytes of it; the rest of a longer line is read and dropped. Returns the line's whole length,
/// or `None` at the end of the input.
fn read_line_bounded(
    input: &mut impl BufRead,
    line: &mut Vec<u8>,
    limit: usize,
) -> io::Result<Option<u64>> {
    line.clear();
    let mut total: Option<u64> = None;
    loop {
        let buf = match input.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(total);
        }
        let newline = protocol::find_newline(buf);
        let content = &buf[..newline.unwrap_or(buf.len())];
        let room = (limit + 1).saturating_sub(line.len());
        line.extend_from_slice(&content[..content.len().min(room)]);
        total = Some(total.unwrap_or(0) + content.len() as u64);
        let used = newline.map_or(buf.len(), |at| at + 1);
        input.consume(used);
        if newline.is_some() {
            return Ok(total);
        }
    }
}

/// Reads, checks and sends lines; returns (lines sent, lines rejected here).
fn write_requests(
    input: impl Read,
    mut stream: &TcpStream,
    batches: mpsc::SyncSender<Vec<u64>>,
    max_line_bytes: usize,
    on_reject: &(dyn Fn(&Rejected) + Sync),
) -> Result<(u64, u64), BulkError> {
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let mut line = Vec::with_capacity(256);
    let mut out = Vec::with_capacity(BATCH_BYTES + max_line_bytes.min(BATCH_BYTES) + 1);
    let mut numbers = Vec::new();
    let (mut number, mut sent, mut bad) = (0u64, 0u64, 0u64);
    let mut reject = |line, reason| {
        bad += 1;
        on_reject(&Rejected { line, reason });
    };
    loop {
        let read =
            read_line_bounded(&mut input, &mut line, max_line_bytes).map_err(BulkError::Input)?;
        if let Some(length) = read {
            number += 1;
            if length > max_line_bytes as u64 {
                reject(number, too_long(length, max_line_bytes));
            } else {
                match parse_line(&line, crate::defaults::now) {
                    Ok(Some(request)) => {
                        let before = out.len();
                        request.encode(&mut out);
                        // The request the server reads, without its `\n`, must fit too.
                        let request_length = out.len() - before - 1;
                        if request_length > max_line_bytes {
                            out.truncate(before);
                            reject(number, too_long(request_length as u64, max_line_bytes));
                        } else {
                            numbers.push(number);
                        }
                    }
                    Ok(None) => {}
                    Err(reason) => reject(number, reason),
                }
            }
        }
        // Send when the batch is full, or when the input pauses, so a slow producer's points
        // are not held back.
        let done = read.is_none();
        let full = out.len() >= BATCH_BYTES || numbers.len() >= BATCH_LINES;
        if !numbers.is_empty() && (full || done || input.buffer().is_empty()) {
            sent += numbers.len() as u64;
            // Announced before it is written, so the reader takes the replies of a batch while
            // it is still being written. This waits while the window is full; it fails only
            // once the reader has stopped, and the reader reports why.
            if batches.send(std::mem::take(&mut numbers)).is_err() {
                break;
            }
            if stream.write_all(&out).is_err() {
                // The reader reports the failure with what was acknowledged.
                break;
            }
            out.clear();
        }
        if done {
            break;
        }
    }
    Ok((sent, bad))
}

fn too_long(length: u64, limit: usize) -> String {
    format!("line too long: {length} bytes, the limit is {limit} (--max-line-bytes)")
}

/// Reads replies, batch by batch; returns (stored, refused by the server, failure).
fn read_replies(
    mut replies: ReplyReader<TcpStream>,
    batches: mpsc::Receiver<Vec<u64>>,
    on_reject: &(dyn Fn(&Rejected) + Sync),
) -> (u64, u64, Option<ClientError>) {
    let (mut stored, mut refused) = (0, 0);
    // A point line cannot belong to a put's reply: stop at the first rather than read on.
    let mut no_points = |_: &str, _: f64, _: i64| ControlFlow::Break(());
    for numbers in batches {
        for line in numbers {
            match replies.read_reply(&mut no_points) {
                Ok(Some(Reply::Ok { .. })) => stored += 1,
                Ok(None) => {
                    let e = ClientError::Malformed("a point line in the reply to a put".into());
                    return (stored, refused, Some(e));
                }
                Ok(Some(Reply::Error(message))) => {
                    refused += 1;
                    on_reject(&Rejected {
                        line,
                        reason: ClientError::Server(message).to_string(),
                    });
                }
                Err(e) => return (stored, refused, Some(e)),
            }
        }
    }
    (stored, refused, None)
}

/// Reports to stderr as `metrics: line N: reason`; for the CLI.
pub fn report_to_stderr(rejected: &Rejected) {
    // A closed stderr must not stop the load: the exit code still tells.
    let _ = writeln!(
        io::stderr().lock(),
        "metrics: line {}: {}",
        rejected.line,
        rejected.reason
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_lines_parse_with_or_without_timestamp() {
        assert_eq!(
            parse_line(b"palm.cpu 0.5 1150864247\n", || 0),
            Ok(Some(Request::Put {
                metric: "palm.cpu",
                value: 0.5,
                timestamp: 1150864247
            }))
        );
        assert_eq!(
            parse_line(b"m\t-1e3\r\n", || 77),
            Ok(Some(Request::Put {
                metric: "m",
                value: -1000.0,
                timestamp: 77
            }))
        );
        assert_eq!(parse_line(b"  \n", || 0), Ok(None));
    }

    #[test]
    fn bad_lines_say_why() {
        for (line, reason) in [
            (
                &b"m"[..],
                "expected 'metric value [timestamp]', got 1 fields",
            ),
            (
                b"m 1 2 3",
                "expected 'metric value [timestamp]', got 4 fields",
            ),
            (b"m x", "value is not a number: 'x'"),
            (b"m nan 1", "value is not finite: 'nan'"),
            (
                b"m 1 1.5",
                "timestamp is not a whole number of seconds: '1.5'",
            ),
            (b"* 1 1", "metric name '*' is reserved"),
            (b"m\xff 1 1", "not valid utf-8"),
        ] {
            assert_eq!(parse_line(line, || 0), Err(reason.to_string()));
        }
    }

    #[test]
    fn no_error_prints_its_source() {
        use std::error::Error;
        let os = || io::Error::other("os says no");
        for e in [
            BulkError::Input(os()),
            BulkError::Spawn(os()),
            BulkError::Client(ClientError::Connect {
                addr: "127.0.0.1:1".into(),
                source: os(),
            }),
            BulkError::Client(ClientError::Server("disk full".into())),
            BulkError::Interrupted {
                stored: 7,
                source: ClientError::Io(os()),
            },
            BulkError::Interrupted {
                stored: 7,
                source: ClientError::Io(io::ErrorKind::UnexpectedEof.into()),
            },
        ] {
            let text = e.to_string();
            if let Some(source) = e.source() {
                assert!(!text.contains(&source.to_string()), "{e:?}");
            }
        }
        let e = BulkError::Interrupted {
            stored: 7,
            source: ClientError::Io(io::ErrorKind::UnexpectedEof.into()),
        };
        assert_eq!(e.to_string(), "stopped after at least 7 lines were stored");
    }

    #[test]
    fn long_lines_are_measured_but_not_held() {
        let mut input = Vec::new();
        input.extend_from_slice(b"a 1 1\n");
        input.extend_from_slice(&[b'x'; 100_000]);
        input.extend_from_slice(b"\nb 2 2\r\nlast");
        let mut reader = BufReader::with_capacity(1024, &input[..]);
        let mut line = Vec::new();
        let mut next = || {
            let length = read_line_bounded(&mut reader, &mut line, 10).unwrap();
            (length, line.clone())
        };
        assert_eq!(next(), (Some(5), b"a 1 1".to_vec()));
        assert_eq!(next(), (Some(100_000), vec![b'x'; 11]));
        assert_eq!(next(), (Some(6), b"b 2 2\r".to_vec()));
        assert_eq!(next(), (Some(4), b"last".to_vec()));
        assert_eq!(next(), (None, Vec::new()));
    }
}
