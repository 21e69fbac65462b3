//! The client library: [`Client`] speaks the protocol over one connection, reused for every
//! call, and [`ClientError`] says what went wrong. The CLI is built on it.

use crate::defaults::now;
use crate::protocol::{self, MalformedReply, Reply, ReplyParser, Request, Selector};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::ops::ControlFlow;
use std::time::Duration;

/// Points by metric name, each metric's points as `(timestamp, value)` sorted by timestamp.
pub type Points = BTreeMap<String, Vec<(i64, f64)>>;

/// The server's figures about itself, as [`Client::stats`] returns them.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// When the server took them: whole seconds since the Unix epoch, by the server's clock
    /// (the timestamp of every `stats` row; the latest, should they differ).
    pub time: i64,
    /// Each figure by name, such as `metrics.points` or `metrics.puts_total`.
    pub values: BTreeMap<String, f64>,
}

impl Stats {
    /// The figure called `name`, if the server reported it.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }
}

/// A callback for [`Client::get_each`] that gathers points by metric, in reply order.
fn collect_into(points: &mut Points) -> impl FnMut(&str, f64, i64) -> ControlFlow<()> + '_ {
    |name, value, timestamp| {
        match points.get_mut(name) {
            Some(series) => series.push((timestamp, value)),
            None => {
                points.insert(name.to_string(), vec![(timestamp, value)]);
            }
        }
        ControlFlow::Continue(())
    }
}

/// Sorts each series by timestamp, the order [`Points`] promises whatever the reply's order.
fn sort_series(points: &mut Points) {
    for series in points.values_mut() {
        series.sort_by_key(|&(timestamp, _)| timestamp);
    }
}

/// The longest reply line the client accepts, without its `\n`; a longer one is a malformed
/// reply. Point lines are handed on one at a time, so this bounds what a reply of any length
/// makes the client hold.
pub const MAX_REPLY_LINE: u64 = 1 << 20;

/// The longest error message the client accepts, all its lines together; a longer one is a
/// malformed reply, so a server that sends `error` and then endless lines costs at most this.
pub const MAX_ERROR_MESSAGE: u64 = 64 * 1024;

/// What can go wrong talking to a server.
///
/// `Display` gives what failed, `source()` the underlying error, never both: print the chain
/// (as the CLI does, joined with `": "`) to see everything once.
#[derive(Debug)]
pub enum ClientError {
    /// An argument that can never be valid; nothing was sent.
    InvalidArgument(String),
    /// The server address could not be resolved.
    Resolve(io::Error),
    /// No connection could be made.
    Connect {
        /// The address tried last.
        addr: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The connection failed, timed out or closed mid-reply.
    Io(io::Error),
    /// The server answered with an error reply; this is its message, as sent. `Display` shows
    /// it with control characters escaped.
    Server(String),
    /// The server's reply does not follow the protocol, or is over a size limit.
    Malformed(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            ClientError::Resolve(_) => f.write_str("cannot resolve the server address"),
            ClientError::Connect { addr, .. } => write!(f, "cannot connect to {addr}"),
            ClientError::Io(e) => f.write_str(match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    "timed out waiting for the server"
                }
                io::ErrorKind::UnexpectedEof => "connection closed by the server",
                _ => "connection failed",
            }),
            ClientError::Server(message) => write!(
                f,
                "server replied with an error: {}",
                escape_controls(message)
            ),
            ClientError::Malformed(what) => write!(f, "malformed reply from the server: {what}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Resolve(e) => Some(e),
            ClientError::Connect { source, .. } => Some(source),
            // A timeout and an end of stream say all there is in `Display`.
            ClientError::Io(e) => match e.kind() {
                io::ErrorKind::TimedOut
                | io::ErrorKind::WouldBlock
                | io::ErrorKind::UnexpectedEof => None,
                _ => Some(e),
            },
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

/// Text from the server made safe to show on a terminal: control characters (C0, DEL, C1), line
/// and paragraph separators and bidirectional overrides are escaped as Rust's `{:?}` writes them
/// (`\n`, `\u{1b}`), so a message can neither move the cursor nor start an escape sequence, and
/// it stays on one line. Other text is unchanged.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
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

/// Reads whole replies from a byte stream, a large buffer at a time. It holds at most one reply
/// line ([`MAX_REPLY_LINE`]) and one error message ([`MAX_ERROR_MESSAGE`]) however long a reply
/// is: points go to a callback as they are read.
#[derive(Debug)]
pub struct ReplyReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    parser: ReplyParser,
    reads: u64,
    /// The next line is a reply's status line.
    at_status: bool,
    /// Inside an error reply: the length of its message so far.
    message: Option<u64>,
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
            at_status: true,
            message: None,
        }
    }

    /// Reads one reply. Its points go to `each` as they are read; if `each` breaks, the rest of
    /// the reply is left unread and `Ok(None)` is returned.
    ///
    /// # Errors
    /// [`ClientError::Io`] when the stream fails, times out or ends mid-reply;
    /// [`ClientError::Malformed`] for a reply that breaks the protocol, a line over
    /// [`MAX_REPLY_LINE`] bytes or an error message over [`MAX_ERROR_MESSAGE`] bytes.
    pub fn read_reply(
        &mut self,
        each: &mut dyn FnMut(&str, f64, i64) -> ControlFlow<()>,
    ) -> Result<Option<Reply>, ClientError> {
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(len) = protocol::find_newline(pending) {
                let line = &pending[..len];
                self.start += len + 1;
                Self::track(&mut self.at_status, &mut self.message, line)?;
                let mut stopped = false;
                let reply = self.parser.feed(line, |metric, value, timestamp| {
                    stopped = stopped || each(metric, value, timestamp).is_break();
                })?;
                if stopped {
                    return Ok(None);
                }
                match reply {
                    Some(reply) => {
                        (self.at_status, self.message) = (true, None);
                        return Ok(Some(reply));
                    }
                    None => continue,
                }
            }
            self.fill()?;
        }
    }

    /// Takes up to `most` replies that are already buffered and are exactly `ok` with no
    /// points; returns how many. A load generator counts the replies to its puts this way
    /// without parsing each; anything else is left for [`read_reply`](Self::read_reply).
    pub fn take_buffered_oks(&mut self, most: u64) -> u64 {
        const OK: &[u8] = b"ok\n\n";
        if !self.at_status {
            return 0;
        }
        let mut taken = 0;
        while taken < most && self.buf[self.start..self.end].starts_with(OK) {
            self.start += OK.len();
            taken += 1;
        }
        taken
    }

    /// Follows the reply's shape as far as the size of its error message needs: the parser
    /// would otherwise gather a message of any length.
    fn track(
        at_status: &mut bool,
        message: &mut Option<u64>,
        line: &[u8],
    ) -> Result<(), ClientError> {
        if std::mem::take(at_status) {
            if line == b"error" {
                *message = Some(0);
            }
        } else if let Some(total) = message {
            // Lines are joined with `\n`; the first one has nothing before it.
            *total += line.len() as u64 + u64::from(*total > 0 && !line.is_empty());
            if *total > MAX_ERROR_MESSAGE {
                return Err(ClientError::Malformed(format!(
                    "an error message is longer than {MAX_ERROR_MESSAGE} bytes"
                )));
            }
        }
        Ok(())
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
        // A point line cannot belong to a put's reply: stop at the first rather than read on.
        let mut point = false;
        let points = self.call(request, |_, _, _| {
            point = true;
            ControlFlow::Break(())
        })?;
        if point || points > 0 {
            self.close();
            return Err(ClientError::Malformed(
                "a point line in the reply to a put".into(),
            ));
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
        self.get_each(metric, collect_into(&mut points))?;
        sort_series(&mut points);
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

    /// The points of `metric`, or of every metric for `*`, with `from <= timestamp <= to`
    /// (both inclusive; use `i64::MIN` or `i64::MAX` for an open side). An unknown metric, an
    /// empty range or `from > to` gives an empty map. Sends `get <metric> <from> <to>`.
    ///
    /// # Errors
    /// As [`get`](Client::get).
    pub fn get_range(&mut self, metric: &str, from: i64, to: i64) -> Result<Points, ClientError> {
        let mut points = Points::new();
        self.get_range_each(metric, from, to, collect_into(&mut points))?;
        sort_series(&mut points);
        Ok(points)
    }

    /// Like [`get_range`](Client::get_range), but hands each point to `each` as it is read, as
    /// [`get_each`](Client::get_each) does.
    ///
    /// # Errors
    /// As [`get`](Client::get).
    pub fn get_range_each(
        &mut self,
        metric: &str,
        from: i64,
        to: i64,
        each: impl FnMut(&str, f64, i64) -> ControlFlow<()>,
    ) -> Result<(), ClientError> {
        protocol::check_metric(metric, false).map_err(ClientError::invalid)?;
        let request = Request::GetRange {
            selector: Selector::parse(metric),
            from,
            to,
        };
        self.call(request, each)?;
        Ok(())
    }

    /// The server's figures about itself (`stats`): open connections, points stored, requests
    /// served and so on, by name (`metrics.points`). The names a server reports are listed in
    /// the README; look them up with [`Stats::value`].
    ///
    /// # Errors
    /// What the server or the connection says, as for [`get`](Client::get).
    pub fn stats(&mut self) -> Result<Stats, ClientError> {
        let mut stats = Stats {
            time: 0,
            values: BTreeMap::new(),
        };
        self.call(Request::Stats, |name, value, timestamp| {
            stats.time = stats.time.max(timestamp);
            stats.values.insert(name.to_string(), value);
            ControlFlow::Continue(())
        })?;
        Ok(stats)
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
    fn io_errors_have_a_source_unless_display_says_it_all() {
        use std::error::Error;
        assert!(ClientError::Io(io::ErrorKind::ConnectionReset.into())
            .source()
            .is_some());
        assert!(ClientError::Io(io::ErrorKind::TimedOut.into())
            .source()
            .is_none());
        assert!(ClientError::Server("x".into()).source().is_none());
    }

    /// Every variant: `Display` never repeats what `source()` gives, so a printed chain says
    /// each part once.
    fn every_client_error() -> Vec<ClientError> {
        let os = || io::Error::other("os says no");
        vec![
            ClientError::InvalidArgument("metric name is empty".into()),
            ClientError::Resolve(os()),
            ClientError::Connect {
                addr: "127.0.0.1:1".into(),
                source: os(),
            },
            ClientError::Io(os()),
            ClientError::Io(io::ErrorKind::TimedOut.into()),
            ClientError::Io(io::ErrorKind::WouldBlock.into()),
            ClientError::Io(io::ErrorKind::UnexpectedEof.into()),
            ClientError::Server("disk full".into()),
            ClientError::Malformed("bad point line".into()),
        ]
    }

    #[test]
    fn no_error_prints_its_source() {
        use std::error::Error;
        for e in every_client_error() {
            if let Some(source) = e.source() {
                assert!(!e.to_string().contains(&source.to_string()), "{e:?}");
            }
        }
    }

    #[test]
    fn server_text_is_shown_with_control_characters_escaped() {
        let e = ClientError::Server("bad\n\x1b[31mred\u{7}\r\u{2028}\u{202e}end\u{85}".into());
        assert_eq!(
            e.to_string(),
            "server replied with an error: bad\\n\\u{1b}[31mred\\u{7}\\r\\u{2028}\\u{202e}end\\u{85}"
        );
        assert!(matches!(
            escape_controls("plain é 名"),
            Cow::Borrowed("plain é 名")
        ));
    }

    /// A stream that yields `head` and then `tail` over and over, for ever.
    struct Endless {
        head: &'static [u8],
        tail: &'static [u8],
        at: usize,
        served: u64,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut n = 0;
            while n < buf.len() {
                let source = if self.at < self.head.len() {
                    &self.head[self.at..]
                } else {
                    let i = (self.at - self.head.len()) % self.tail.len();
                    &self.tail[i..]
                };
                let take = source.len().min(buf.len() - n);
                buf[n..n + take].copy_from_slice(&source[..take]);
                (n, self.at) = (n + take, self.at + take);
            }
            self.served += n as u64;
            Ok(n)
        }
    }

    fn endless(head: &'static [u8], tail: &'static [u8]) -> ReplyReader<Endless> {
        ReplyReader::new(Endless {
            head,
            tail,
            at: 0,
            served: 0,
        })
    }

    #[test]
    fn an_error_message_without_end_is_malformed_at_its_cap() {
        let mut replies = endless(b"error\n", b"x\n");
        let result = replies.read_reply(&mut |_, _, _| ControlFlow::Continue(()));
        match result {
            Err(ClientError::Malformed(what)) => {
                assert_eq!(what, "an error message is longer than 65536 bytes")
            }
            other => panic!("{other:?}"),
        }
        // It stopped at the cap, give or take one read.
        assert!(replies.inner.served < MAX_ERROR_MESSAGE + 200 * 1024);
    }

    #[test]
    fn an_error_message_at_the_cap_is_read() {
        let mut wire = b"error\n".to_vec();
        let line = [b'y'; 1023];
        for _ in 0..64 {
            wire.extend_from_slice(&line);
            wire.push(b'\n');
        }
        wire.extend_from_slice(b"\nok\n\n");
        assert_eq!(64 * 1024, 64 * (line.len() + 1));
        let mut replies = ReplyReader::new(&wire[..]);
        let mut none = |_: &str, _: f64, _: i64| ControlFlow::Continue(());
        match replies.read_reply(&mut none) {
            Ok(Some(Reply::Error(message))) => {
                assert_eq!(message.len() as u64, MAX_ERROR_MESSAGE - 1)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            replies.read_reply(&mut none).unwrap(),
            Some(Reply::Ok { points: 0 })
        );
        // One byte more is over.
        let mut wire = b"error\n".to_vec();
        wire.extend_from_slice(&[b'z'; MAX_ERROR_MESSAGE as usize + 1]);
        wire.extend_from_slice(b"\n\n");
        assert!(matches!(
            ReplyReader::new(&wire[..]).read_reply(&mut none),
            Err(ClientError::Malformed(_))
        ));
    }

    #[test]
    fn a_line_without_end_is_malformed_at_its_cap() {
        let mut replies = endless(b"ok\n", b"m");
        match replies.read_reply(&mut |_, _, _| ControlFlow::Continue(())) {
            Err(ClientError::Malformed(what)) => {
                assert_eq!(what, "a reply line is longer than 1048576 bytes")
            }
            other => panic!("{other:?}"),
        }
        assert!(replies.inner.served <= 2 * MAX_REPLY_LINE + 64 * 1024);
    }

    /// Hands out its text one to three bytes a read, so that replies are split anywhere.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = self.1 % 3 + 1;
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn replies_split_across_reads_are_each_counted_once() {
        let mut text = Vec::new();
        let (mut oks, mut errors) = (0, 0);
        for i in 0..300 {
            if i % 7 == 3 {
                text.extend_from_slice(b"error\nmemory limit reached\n\n");
                errors += 1;
            } else {
                text.extend_from_slice(b"ok\n\n");
                oks += 1;
            }
        }
        let mut replies = ReplyReader::new(Trickle(&text, 0));
        let mut none = |_: &str, _: f64, _: i64| ControlFlow::Continue(());
        let (mut taken, mut read_oks, mut read_errors) = (0, 0, 0);
        while taken + read_oks + read_errors < oks + errors {
            let left = oks + errors - taken - read_oks - read_errors;
            let n = replies.take_buffered_oks(left);
            if n > 0 {
                taken += n;
                continue;
            }
            match replies.read_reply(&mut none) {
                Ok(Some(Reply::Ok { .. })) => read_oks += 1,
                Ok(Some(Reply::Error(_))) => read_errors += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((taken + read_oks, read_errors), (oks, errors));
        assert_eq!(replies.take_buffered_oks(9), 0);
        assert!(replies.read_reply(&mut none).is_err(), "nothing is left");
    }

    #[test]
    fn buffered_oks_are_taken_up_to_the_first_other_reply() {
        let text: &[u8] = b"ok\n\nok\n\nok\n\nerror\nwrong command\n\nok\nm 1.0 2\n\nok\n\nok\n";
        let mut replies = ReplyReader::new(text);
        let mut none = |_: &str, _: f64, _: i64| ControlFlow::Continue(());
        assert_eq!(replies.take_buffered_oks(9), 0, "nothing is buffered yet");
        assert!(matches!(
            replies.read_reply(&mut none),
            Ok(Some(Reply::Ok { .. }))
        ));
        assert_eq!(replies.take_buffered_oks(1), 1, "at most as many as asked");
        assert_eq!(replies.take_buffered_oks(9), 1, "not the error");
        assert!(matches!(
            replies.read_reply(&mut none),
            Ok(Some(Reply::Error(_)))
        ));
        assert_eq!(replies.take_buffered_oks(9), 0, "not an ok with points");
        let mut points = 0;
        let mut count = |_: &str, _: f64, _: i64| {
            points += 1;
            ControlFlow::Continue(())
        };
        assert!(matches!(
            replies.read_reply(&mut count),
            Ok(Some(Reply::Ok { .. }))
        ));
        assert_eq!(points, 1);
        assert_eq!(replies.take_buffered_oks(9), 1, "not the unfinished one");
        assert!(
            replies.read_reply(&mut none).is_err(),
            "the stream ends mid-reply"
        );
    }
}
