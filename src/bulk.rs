//! Bulk loading for `metrics put -`: point lines in, pipelined puts out over one connection.
//!
//! Input lines are `metric value [timestamp]`, which is what `metrics get` prints, what the data
//! file holds and Graphite's plaintext format. This thread reads and checks lines and writes
//! batches; a second thread reads the replies. Each batch's line numbers travel to the reader
//! ahead of the batch, so a rejection can name its line.

use crate::client::{self, ClientError, ReplyReader};
use crate::protocol::{self, Reply, Request};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::thread;

/// Bytes of requests gathered before a write, unless the input pauses first.
const BATCH_BYTES: usize = 64 * 1024;

/// Why a bulk load stopped.
#[derive(Debug)]
pub enum BulkError {
    /// The input could not be read.
    Input(io::Error),
    /// The connection could not be made.
    Client(ClientError),
    /// The connection failed after `stored` lines were acknowledged (and so stored).
    Interrupted { stored: u64, source: ClientError },
}

impl std::fmt::Display for BulkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BulkError::Input(e) => write!(f, "cannot read input: {e}"),
            BulkError::Client(e) => e.fmt(f),
            BulkError::Interrupted { stored, source } => {
                write!(f, "{source} (after {stored} lines were stored)")
            }
        }
    }
}

impl std::error::Error for BulkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BulkError::Input(e) => Some(e),
            BulkError::Client(e) | BulkError::Interrupted { source: e, .. } => Some(e),
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

/// Sends every point line of `input` to the server at `addr`, pipelined over one connection.
/// `on_reject` hears of each line not stored, from either thread, as soon as it is known.
///
/// # Errors
/// [`BulkError`] when the input cannot be read or the connection cannot be made or fails; lines
/// acknowledged before a failure are stored.
pub fn put_lines(
    input: impl Read,
    addr: &str,
    timeout: Option<std::time::Duration>,
    on_reject: &(dyn Fn(&Rejected) + Sync),
) -> Result<Summary, BulkError> {
    let stream = client::connect_stream(addr, timeout)?;
    let replies = ReplyReader::new(stream.try_clone().map_err(ClientError::Io)?);
    let (batches, batch_lines) = mpsc::channel::<Vec<u64>>();
    thread::scope(|scope| {
        let reader = scope.spawn(move || read_replies(replies, batch_lines, on_reject));
        let written = write_requests(input, &stream, batches, on_reject);
        // Whatever happened, let the server finish: it answers all it read, then sees the end.
        let _ = stream.shutdown(Shutdown::Write);
        let (stored, refused, read_error) = match reader.join() {
            Ok(counts) => counts,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let (sent, bad_lines) = written?;
        if let Some(source) = read_error {
            return Err(BulkError::Interrupted { stored, source });
        }
        Ok(Summary {
            sent,
            stored,
            rejected: bad_lines + refused,
        })
    })
}

/// Reads, checks and sends lines; returns (lines sent, lines rejected here).
fn write_requests(
    input: impl Read,
    mut stream: &TcpStream,
    batches: mpsc::Sender<Vec<u64>>,
    on_reject: &(dyn Fn(&Rejected) + Sync),
) -> Result<(u64, u64), BulkError> {
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let mut line = Vec::with_capacity(256);
    let mut out = Vec::with_capacity(BATCH_BYTES + 4096);
    let mut numbers = Vec::new();
    let (mut number, mut sent, mut bad) = (0u64, 0u64, 0u64);
    loop {
        line.clear();
        let read = input
            .read_until(b'\n', &mut line)
            .map_err(BulkError::Input)?;
        if read > 0 {
            number += 1;
            match parse_line(&line, crate::defaults::now) {
                Ok(Some(request)) => {
                    request.encode(&mut out);
                    numbers.push(number);
                }
                Ok(None) => {}
                Err(reason) => {
                    bad += 1;
                    on_reject(&Rejected {
                        line: number,
                        reason,
                    });
                }
            }
        }
        // Send when the batch is full, or when the input pauses, so a slow producer's points
        // are not held back.
        let done = read == 0;
        if !numbers.is_empty() && (out.len() >= BATCH_BYTES || input.buffer().is_empty()) {
            sent += numbers.len() as u64;
            // The reader is alive until it has every batch's numbers, or has failed.
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

/// Reads replies, batch by batch; returns (stored, refused by the server, failure).
fn read_replies(
    mut replies: ReplyReader<TcpStream>,
    batches: mpsc::Receiver<Vec<u64>>,
    on_reject: &(dyn Fn(&Rejected) + Sync),
) -> (u64, u64, Option<ClientError>) {
    let (mut stored, mut refused) = (0, 0);
    let mut ignore_points = |_: &str, _: f64, _: i64| ControlFlow::Continue(());
    for numbers in batches {
        for line in numbers {
            match replies.read_reply(&mut ignore_points) {
                Ok(Some(Reply::Ok { .. })) => stored += 1,
                Ok(Some(Reply::Error(message))) => {
                    refused += 1;
                    on_reject(&Rejected {
                        line,
                        reason: format!("server replied with an error: {message}"),
                    });
                }
                Ok(None) => {}
                Err(e) => return (stored, refused, Some(e)),
            }
        }
    }
    (stored, refused, None)
}

/// Reports to stderr as `metrics: line N: reason`; for the CLI.
pub fn report_to_stderr(rejected: &Rejected) {
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
}
