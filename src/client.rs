//! The client library: [`Client`] speaks the protocol over one connection, reused for every
//! call, and [`ClientError`] says what went wrong. The CLI is built on it.

use crate::defaults::now;
use crate::protocol::{self, MalformedReply, Reply, ReplyParser, Request, Selector};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::ops::ControlFlow;
use std::time::Duration;

/// Points by metric name, each metric's points as `(timestamp, value)` sorted by timestamp.
pub type Points = BTreeMap<String, Vec<(i64, f64)>>;

/// The longest reply line the client accepts; a longer one is a malformed reply.
pub const MAX_REPLY_LINE: u64 = 1 << 20;

/// What can go wrong talking to a server.
#[derive(Debug)]
pub enum ClientError {
    /// An argument that can never be valid; nothing was sent.
    InvalidArgument(String),
    /// The server address could not be resolved.
    Resolve(io::Error),
    /// No connection could be made.
    Connect { addr: String, source: io::Error },
    /// The connection failed, timed out or closed mid-reply.
    Io(io::Error),
    /// The server answered with an error reply; this is its message.
    Server(String),
    /// The server's reply does not follow the protocol.
    Malformed(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            ClientError::Resolve(e) => write!(f, "cannot resolve the server address: {e}"),
            ClientError::Connect { addr, source } => {
                write!(f, "cannot connect to {addr}: {source}")
            }
            ClientError::Io(e) => match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    f.write_str("timed out waiting for the server")
                }
                io::ErrorKind::UnexpectedEof => f.write_str("connection closed by the server"),
                _ => write!(f, "connection failed: {e}"),
            },
            ClientError::Server(message) => write!(f, "server replied with an error: {message}"),
            ClientError::Malformed(what) => write!(f, "malformed reply from the server: {what}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Resolve(e) | ClientError::Io(e) => Some(e),
            ClientError::Connect { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl ClientError {
    fn invalid(e: impl fmt::Display) -> Self {
        ClientError::InvalidArgument(e.to_string())
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl From<MalformedReply> for ClientError {
    fn from(e: MalformedReply) -> Self {
        ClientError::Malformed(e.0)
    }
}

/// Opens a TCP connection to `addr`; `timeout` bounds the connect and every later read and
/// write. The building block of [`Client`], `metrics put -` and `metrics bench`.
///
/// # Errors
/// [`ClientError::Resolve`] or [`ClientError::Connect`].
pub fn connect_stream<A: ToSocketAddrs>(
    addr: A,
    timeout: Option<Duration>,
) -> Result<TcpStream, ClientError> {
    let mut last = None;
    for candidate in addr.to_socket_addrs().map_err(ClientError::Resolve)? {
        let attempt = match timeout {
            Some(t) => TcpStream::connect_timeout(&candidate, t),
            None => TcpStream::connect(candidate),
        };
        let configured = attempt.and_then(|stream| {
            stream.set_read_timeout(timeout)?;
            stream.set_write_timeout(timeout)?;
            stream.set_nodelay(true)?;
            Ok(stream)
        });
        match configured {
            Ok(stream) => return Ok(stream),
            Err(source) => {
                last = Some(ClientError::Connect {
                    addr: candidate.to_string(),
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        ClientError::Resolve(io::Error::new(
            io::ErrorKind::NotFound,
            "no addresses found",
        ))
    }))
}

/// Reads whole replies from a byte stream, a large buffer at a time.
#[derive(Debug)]
pub struct ReplyReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    parser: ReplyParser,
    reads: u64,
}

impl<R: Read> ReplyReader<R> {
    /// How many reads from the stream have returned data so far; replies parsed between two
    /// changes of this number arrived together.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Wraps a stream positioned at the start of a reply.
    pub fn new(inner: R) -> Self {
        ReplyReader {
            inner,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            parser: ReplyParser::default(),
            reads: 0,
        }
    }

    /// Reads one reply. Its points go to `each` as they are read; if `each` breaks, the rest of
    /// the reply is left unread and `Ok(None)` is returned.
    ///
    /// # Errors
    /// [`ClientError::Io`] when the stream fails, times out or ends mid-reply;
    /// [`ClientError::Malformed`] for a reply that breaks the protocol or a line over
    /// [`MAX_REPLY_LINE`] bytes.
    pub fn read_reply(
        &mut self,
        each: &mut dyn FnMut(&str, f64, i64) -> ControlFlow<()>,
    ) -> Result<Option<Reply>, ClientError> {
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(len) = protocol::find_newline(pending) {
                let line = &pending[..len];
                self.start += len + 1;
                let mut stopped = false;
                let reply = self.parser.feed(line, |metric, value, timestamp| {
                    stopped = stopped || each(metric, value, timestamp).is_break();
                })?;
                if stopped {
                    return Ok(None);
                }
                match reply {
                    Some(reply) => return Ok(Some(reply)),
                    None => continue,
                }
            }
            self.fill()?;
        }
    }

    /// Reads more bytes, keeping the partial line at the front of the buffer.
    fn fill(&mut self) -> Result<(), ClientError> {
        let partial = self.end - self.start;
        if partial as u64 >= MAX_REPLY_LINE {
            return Err(ClientError::Malformed(format!(
                "a reply line is longer than {MAX_REPLY_LINE} bytes"
            )));
        }
        self.buf.copy_within(self.start..self.end, 0);
        (self.start, self.end) = (0, partial);
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => {
                    self.end += n;
                    self.reads += 1;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ClientError::Io(e)),
            }
        }
    }
}

/// A connection to a metrics server.
#[derive(Debug)]
pub struct Client {
    reader: ReplyReader<TcpStream>,
    writer: TcpStream,
    request: Vec<u8>,
}

impl Client {
    /// Connects to `addr`; `timeout` bounds the connect and every later read and write.
    ///
    /// # Errors
    /// [`ClientError::Resolve`] or [`ClientError::Connect`].
    pub fn connect<A: ToSocketAddrs>(
        addr: A,
        timeout: Option<Duration>,
    ) -> Result<Client, ClientError> {
        let stream = connect_stream(addr, timeout)?;
        Ok(Client {
            reader: ReplyReader::new(stream.try_clone()?),
            writer: stream,
            request: Vec::new(),
        })
    }

    /// Stores `value` for `metric` at `timestamp` (whole seconds; `None` is now).
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for an empty metric, one with whitespace, `*`, or a value
    /// that is not finite (nothing is sent); otherwise what the server or the connection says.
    pub fn put(
        &mut self,
        metric: &str,
        value: f64,
        timestamp: Option<i64>,
    ) -> Result<(), ClientError> {
        protocol::check_metric(metric, true).map_err(ClientError::invalid)?;
        if !value.is_finite() {
            return Err(ClientError::InvalidArgument(format!(
                "value must be finite, not {value}"
            )));
        }
        let timestamp = timestamp.unwrap_or_else(now);
        let request = Request::Put {
            metric,
            value,
            timestamp,
        };
        let points = self.call(request, |_, _, _| ControlFlow::Continue(()))?;
        if points > 0 {
            self.close();
            return Err(ClientError::Malformed(format!(
                "{points} point lines in the reply to a put"
            )));
        }
        Ok(())
    }

    /// The points of `metric`, or of every metric for `*`. An unknown metric gives an empty map.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for an empty metric or one with whitespace; otherwise
    /// what the server or the connection says.
    pub fn get(&mut self, metric: &str) -> Result<Points, ClientError> {
        let mut points = Points::new();
        self.get_each(metric, |name, value, timestamp| {
            match points.get_mut(name) {
                Some(series) => series.push((timestamp, value)),
                None => {
                    points.insert(name.to_string(), vec![(timestamp, value)]);
                }
            }
            ControlFlow::Continue(())
        })?;
        for series in points.values_mut() {
            series.sort_by_key(|&(timestamp, _)| timestamp);
        }
        Ok(points)
    }

    /// Like [`get`](Client::get), but hands each point to `each` as it is read, in reply order,
    /// without collecting them. If `each` breaks, the rest of the reply is not read and the
    /// connection is closed.
    ///
    /// # Errors
    /// As [`get`](Client::get).
    pub fn get_each(
        &mut self,
        metric: &str,
        each: impl FnMut(&str, f64, i64) -> ControlFlow<()>,
    ) -> Result<(), ClientError> {
        protocol::check_metric(metric, false).map_err(ClientError::invalid)?;
        self.call(Request::Get(Selector::parse(metric)), each)?;
        Ok(())
    }

    /// Sends one request and reads its reply; returns how many points it carried.
    fn call(
        &mut self,
        request: Request<'_>,
        mut each: impl FnMut(&str, f64, i64) -> ControlFlow<()>,
    ) -> Result<usize, ClientError> {
        self.request.clear();
        request.encode(&mut self.request);
        let result = self.exchange(&mut each);
        if matches!(result, Err(ClientError::Io(_) | ClientError::Malformed(_))) {
            // The reply framing is lost; later calls must fail rather than read stale bytes.
            self.close();
        }
        result
    }

    fn exchange(
        &mut self,
        each: &mut impl FnMut(&str, f64, i64) -> ControlFlow<()>,
    ) -> Result<usize, ClientError> {
        self.writer.write_all(&self.request)?;
        match self.reader.read_reply(each)? {
            Some(Reply::Ok { points }) => Ok(points),
            Some(Reply::Error(message)) => Err(ClientError::Server(message)),
            None => {
                self.close();
                Ok(0)
            }
        }
    }

    fn close(&mut self) {
        let _ = self.writer.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_lowercase_and_specific() {
        let cases = [
            ClientError::Server("wrong command".into()).to_string(),
            ClientError::Io(io::ErrorKind::TimedOut.into()).to_string(),
            ClientError::Io(io::ErrorKind::UnexpectedEof.into()).to_string(),
            ClientError::Malformed("bad point line".into()).to_string(),
            ClientError::InvalidArgument("metric name is empty".into()).to_string(),
        ];
        assert_eq!(cases[0], "server replied with an error: wrong command");
        assert_eq!(cases[1], "timed out waiting for the server");
        assert_eq!(cases[2], "connection closed by the server");
        for text in cases {
            assert!(text.starts_with(|c: char| c.is_lowercase()), "{text}");
        }
    }

    #[test]
    fn io_errors_have_a_source() {
        use std::error::Error;
        assert!(ClientError::Io(io::ErrorKind::TimedOut.into())
            .source()
            .is_some());
        assert!(ClientError::Server("x".into()).source().is_none());
    }
}
