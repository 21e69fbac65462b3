//! The wire protocol, and nothing but bytes: parsing and encoding of requests and replies, and the
//! Python float text values travel in. No sockets here; the server and the client both call into it,
//! so the two sides cannot drift.
//!
//! ```text
//! line      = ws* [ request ] ws* "\n"          ; a blank line gets no reply
//! request   = "put" sp metric sp value sp timestamp
//!           | "get" sp ( metric | "*" ) [ sp from sp to ]   ; from, to: timestamps, inclusive
//!           | "stats"                                       ; the server's own figures
//! sp        = ( " " | "\t" )+                    ; ws also covers "\r", so CRLF is accepted
//! metric    = one or more UTF-8 characters, none whitespace or control (see `check_metric`);
//!             not "*" in a put
//! value     = what `f64::from_str` reads (`0.5`, `10`, `1e3`, `-2.25`, `.5`), finite
//! timestamp = whole seconds, an i64 with optional sign
//!
//! reply     = "ok\n" point* "\n"                 ; put: no points
//!           | "error\n" message "\n\n"
//! point     = metric " " value " " timestamp "\n" ; value printed like Python's repr(float)
//! ```
//!
//! The range form of `get` and `stats` are ours; the rest is the course protocol, byte for byte.
//! `stats` answers like a `get`, one `metrics.NAME value now` row per figure.
//!
//! Every malformed request gets `error\nwrong command\n\n`; [`RequestError`] says why, for logs.

use std::fmt;

/// The reply to a successful put.
pub const OK: &[u8] = b"ok\n\n";
/// The message of the reply to any malformed request.
pub const WRONG_COMMAND: &str = "wrong command";
/// The message of the reply to a line over the server's limit.
pub const LINE_TOO_LONG: &str = "line too long";
/// The longest text [`write_float`] produces (`-1.2345678901234567e-308`).
pub const MAX_FLOAT_LEN: usize = 24;

/// Which metrics a `get` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector<'a> {
    /// `get *`: every metric.
    All,
    /// One metric by name.
    Metric(&'a str),
}

impl<'a> Selector<'a> {
    /// Reads a `get` argument: `*` is every metric, anything else one metric.
    pub fn parse(arg: &'a str) -> Self {
        if arg == "*" {
            Selector::All
        } else {
            Selector::Metric(arg)
        }
    }

    /// The text of this selector on the wire.
    pub fn as_str(&self) -> &'a str {
        match *self {
            Selector::All => "*",
            Selector::Metric(name) => name,
        }
    }
}

/// One request, borrowing its metric name from the line it was read from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Request<'a> {
    /// Store `value` for `metric` at `timestamp`, replacing a value already there.
    Put {
        /// The metric's name.
        metric: &'a str,
        /// A finite value.
        value: f64,
        /// Whole seconds since the Unix epoch.
        timestamp: i64,
    },
    /// Return the points of the selected metrics.
    Get(Selector<'a>),
    /// Return the points of the selected metrics with `from <= timestamp <= to`.
    GetRange {
        /// Which metrics.
        selector: Selector<'a>,
        /// The first timestamp wanted.
        from: i64,
        /// The last timestamp wanted.
        to: i64,
    },
    /// Return the server's own figures as point rows.
    Stats,
}

/// Why a request line was rejected. On the wire every case reads `wrong command`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// The line is not valid UTF-8.
    NotUtf8,
    /// The first token is neither `put` nor `get`.
    UnknownCommand,
    /// `put` without exactly three arguments, `get` without one or three, `stats` with any.
    WrongArgumentCount,
    /// The metric name breaks the name rule of [`check_metric`].
    BadMetric(NameError),
    /// The value is not a number.
    BadValue,
    /// The value is NaN or infinite.
    NonFiniteValue,
    /// The timestamp is not an integer that fits in i64.
    BadTimestamp,
    /// A put whose line, as `get` prints it back (`1e1` as `10.0`), would be longer than the
    /// line limit: accepting it would make a dump that cannot be restored.
    TooLong,
}

impl RequestError {
    /// The message of the error reply: `wrong command`, except for [`RequestError::TooLong`].
    pub fn reply(self) -> &'static str {
        match self {
            RequestError::TooLong => LINE_TOO_LONG,
            _ => WRONG_COMMAND,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestError::NotUtf8 => "request is not valid utf-8",
            RequestError::UnknownCommand => "unknown command",
            RequestError::WrongArgumentCount => "wrong number of arguments",
            RequestError::BadMetric(e) => return e.fmt(f),
            RequestError::BadValue => "value is not a number",
            RequestError::NonFiniteValue => "value is not finite",
            RequestError::BadTimestamp => "timestamp is not a whole number of seconds",
            RequestError::TooLong => "put would print longer than the line limit",
        })
    }
}

impl std::error::Error for RequestError {}

/// Splits a line into tokens: runs of bytes other than space and tab. Works on bytes, since
/// both separators are ASCII and so always fall on character boundaries.
pub fn tokens(line: &str) -> Tokens<'_> {
    Tokens { line, at: 0 }
}

/// The iterator [`tokens`] returns.
#[derive(Debug, Clone)]
pub struct Tokens<'a> {
    line: &'a str,
    at: usize,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let bytes = self.line.as_bytes();
        let start = self.at + bytes[self.at..].iter().position(|&b| !is_separator(b))?;
        let end = start + find_separator(&bytes[start..]).unwrap_or(bytes.len() - start);
        self.at = end;
        self.line.get(start..end)
    }
}

fn is_separator(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The index of the first space or tab.
fn find_separator(bytes: &[u8]) -> Option<usize> {
    find_first(bytes, is_separator, |word| {
        zero_bytes(word ^ u64::from_le_bytes([b' '; 8]))
            | zero_bytes(word ^ u64::from_le_bytes([b'\t'; 8]))
    })
}

/// The index of the first `\n`: where a request line ends.
pub fn find_newline(bytes: &[u8]) -> Option<usize> {
    find_first(
        bytes,
        |b| b == b'\n',
        |word| zero_bytes(word ^ u64::from_le_bytes([b'\n'; 8])),
    )
}

/// The index of the first byte that `is` accepts, eight bytes at a time, since every request
/// byte passes through here: `mark` gives the high bit of each byte of a word that `is` would
/// accept.
fn find_first(bytes: &[u8], is: impl Fn(u8) -> bool, mark: impl Fn(u64) -> u64) -> Option<usize> {
    let mut words = bytes.chunks_exact(8);
    for (i, word) in (&mut words).enumerate() {
        let mut array = [0u8; 8];
        array.copy_from_slice(word);
        let found = mark(u64::from_le_bytes(array));
        if found != 0 {
            return Some(i * 8 + (found.trailing_zeros() / 8) as usize);
        }
    }
    let tail = bytes.len() - words.remainder().len();
    words
        .remainder()
        .iter()
        .position(|&b| is(b))
        .map(|i| tail + i)
}

/// The high bit of every byte of `x` that is zero, and no other bit.
pub(crate) fn zero_bytes(x: u64) -> u64 {
    const LOW7: u64 = u64::from_le_bytes([0x7f; 8]);
    !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
}

/// Reads a value the way the server does: a finite `f64`.
///
/// # Errors
/// [`RequestError::BadValue`] for text that is not a number, [`RequestError::NonFiniteValue`] for
/// NaN and infinities.
pub fn parse_value(text: &str) -> Result<f64, RequestError> {
    let value: f64 = text.parse().map_err(|_| RequestError::BadValue)?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(RequestError::NonFiniteValue)
    }
}

/// Reads a timestamp the way the server does: whole seconds that fit in i64.
///
/// # Errors
/// [`RequestError::BadTimestamp`] for anything else (`1.5`, `1e3`, `x`).
pub fn parse_timestamp(text: &str) -> Result<i64, RequestError> {
    text.parse().map_err(|_| RequestError::BadTimestamp)
}

/// Why a text cannot name a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// `*` in a put: in a get it stands for every metric.
    Reserved,
    /// The name holds this whitespace or control character.
    Forbidden(char),
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NameError::Empty => f.write_str("metric name is empty"),
            NameError::Reserved => f.write_str("metric name '*' is reserved"),
            NameError::Forbidden(c) if c.is_whitespace() => {
                write!(f, "metric name contains whitespace ({c:?})")
            }
            NameError::Forbidden(c) => {
                write!(f, "metric name contains a control character ({c:?})")
            }
        }
    }
}

impl std::error::Error for NameError {}

/// The one rule for a metric name, applied by the server, the client library, the CLI,
/// `metrics put -` and data file replay. A name is one or more characters, none of them
/// whitespace (Unicode's `White_Space`: every separator Python's `str.split()` splits on, so
/// that every client can split a `get` row into three fields) nor a control character (C0, DEL
/// and C1: nothing that moves a terminal's cursor or starts an escape sequence). `*` names
/// every metric in a get and is refused in a put (`for_put`).
///
/// # Errors
/// A [`NameError`] naming the first offending character.
pub fn check_metric(name: &str, for_put: bool) -> Result<(), NameError> {
    // Nearly every name is printable ASCII: one pass over the bytes decides it.
    if name.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        return match name {
            "" => Err(NameError::Empty),
            "*" if for_put => Err(NameError::Reserved),
            _ => Ok(()),
        };
    }
    match name.chars().find(|c| c.is_whitespace() || c.is_control()) {
        Some(c) => Err(NameError::Forbidden(c)),
        None => Ok(()),
    }
}

/// One `metric value [timestamp]` line: the input of `metrics put -` and of data file replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointLine<'a> {
    /// A name that passed [`check_metric`] for a put.
    pub metric: &'a str,
    /// A finite value.
    pub value: f64,
    /// The timestamp, when the line has one.
    pub timestamp: Option<i64>,
}

/// Why a line is not a `metric value [timestamp]` point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointError {
    /// The line is not valid UTF-8.
    NotUtf8,
    /// Not two or three fields; this many.
    FieldCount(usize),
    /// The metric name breaks the name rule.
    Metric(NameError),
    /// The value is not a finite number; the text, and why.
    Value(String, RequestError),
    /// The timestamp is not whole seconds in i64; the text.
    Timestamp(String),
}

impl fmt::Display for PointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointError::NotUtf8 => f.write_str("not valid utf-8"),
            PointError::FieldCount(n) => {
                write!(f, "expected 'metric value [timestamp]', got {n} fields")
            }
            PointError::Metric(e) => e.fmt(f),
            PointError::Value(text, e) => write!(f, "{e}: '{text}'"),
            PointError::Timestamp(text) => {
                write!(f, "{}: '{text}'", RequestError::BadTimestamp)
            }
        }
    }
}

impl std::error::Error for PointError {}

/// Reads one point line, without its `\n`; surrounding whitespace (a `\r` too) is ignored and a
/// blank line is `Ok(None)`. The one parser `metrics put -` and data file replay share.
///
/// # Errors
/// A [`PointError`] saying what is wrong with the line.
pub fn parse_point_line(line: &[u8]) -> Result<Option<PointLine<'_>>, PointError> {
    let text = std::str::from_utf8(line.trim_ascii()).map_err(|_| PointError::NotUtf8)?;
    let mut fields = tokens(text);
    let (metric, value, timestamp) = match (fields.next(), fields.next(), fields.next()) {
        (None, ..) => return Ok(None),
        (Some(metric), Some(value), timestamp) if fields.next().is_none() => {
            (metric, value, timestamp)
        }
        _ => return Err(PointError::FieldCount(tokens(text).count())),
    };
    check_metric(metric, true).map_err(PointError::Metric)?;
    let value = parse_value(value).map_err(|e| PointError::Value(value.into(), e))?;
    let timestamp = match timestamp {
        Some(text) => Some(parse_timestamp(text).map_err(|_| PointError::Timestamp(text.into()))?),
        None => None,
    };
    Ok(Some(PointLine {
        metric,
        value,
        timestamp,
    }))
}

impl<'a> Request<'a> {
    /// Parses one line, without its `\n`. A blank line is `Ok(None)`.
    ///
    /// # Errors
    /// A [`RequestError`] naming what is wrong with the line.
    pub fn parse(line: &'a [u8]) -> Result<Option<Self>, RequestError> {
        let line = std::str::from_utf8(line.trim_ascii()).map_err(|_| RequestError::NotUtf8)?;
        let mut args = tokens(line);
        let Some(command) = args.next() else {
            return Ok(None);
        };
        let request = match command {
            "put" => {
                let (Some(metric), Some(value), Some(timestamp), None) =
                    (args.next(), args.next(), args.next(), args.next())
                else {
                    return Err(RequestError::WrongArgumentCount);
                };
                check_metric(metric, true).map_err(RequestError::BadMetric)?;
                Request::Put {
                    metric,
                    value: parse_value(value)?,
                    timestamp: parse_timestamp(timestamp)?,
                }
            }
            "get" => {
                let selector = match (args.next(), args.next(), args.next(), args.next()) {
                    (Some(selector), None, ..) | (Some(selector), Some(_), Some(_), None) => {
                        selector
                    }
                    _ => return Err(RequestError::WrongArgumentCount),
                };
                check_metric(selector, false).map_err(RequestError::BadMetric)?;
                let selector = Selector::parse(selector);
                let mut bounds = tokens(line).skip(2);
                match (bounds.next(), bounds.next()) {
                    (Some(from), Some(to)) => Request::GetRange {
                        selector,
                        from: parse_timestamp(from)?,
                        to: parse_timestamp(to)?,
                    },
                    _ => Request::Get(selector),
                }
            }
            "stats" => match args.next() {
                None => Request::Stats,
                Some(_) => return Err(RequestError::WrongArgumentCount),
            },
            _ => return Err(RequestError::UnknownCommand),
        };
        Ok(Some(request))
    }

    /// Appends this request as one line, `\n` included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Request::Put {
                metric,
                value,
                timestamp,
            } => {
                out.extend_from_slice(b"put ");
                write_point(out, metric, value, timestamp);
            }
            Request::Get(selector) => {
                out.extend_from_slice(b"get ");
                out.extend_from_slice(selector.as_str().as_bytes());
                out.push(b'\n');
            }
            Request::GetRange { selector, from, to } => {
                out.extend_from_slice(b"get ");
                out.extend_from_slice(selector.as_str().as_bytes());
                out.push(b' ');
                write_i64(out, from);
                out.push(b' ');
                write_i64(out, to);
                out.push(b'\n');
            }
            Request::Stats => out.extend_from_slice(b"stats\n"),
        }
    }
}

/// The length of `put metric value timestamp` as [`Request::encode`] writes it, without its
/// `\n`: what `metrics put -` sends back when restoring a dump.
pub fn put_line_len(metric: &str, value: f64, timestamp: i64) -> usize {
    let mut text = Vec::with_capacity(MAX_FLOAT_LEN + 21);
    write_float(&mut text, value);
    text.push(b' ');
    write_i64(&mut text, timestamp);
    "put ".len() + metric.len() + 1 + text.len()
}

/// Whether a put, printed back as [`put_line_len`] says, stays within `max_line` bytes. Costs
/// nothing unless the metric name is within about 50 bytes of the limit.
pub fn put_fits(metric: &str, value: f64, timestamp: i64, max_line: usize) -> bool {
    const MOST: usize = "put ".len() + 1 + MAX_FLOAT_LEN + 1 + 20;
    metric.len() + MOST <= max_line || put_line_len(metric, value, timestamp) <= max_line
}

/// Appends an error reply carrying `message`.
pub fn write_error(out: &mut Vec<u8>, message: &str) {
    out.extend_from_slice(b"error\n");
    out.extend_from_slice(message.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Appends one point line, `metric value timestamp\n`: the body of a get reply, the tail of a put
/// request, and the line format of `metrics get`, `metrics put -` and the data file.
pub fn write_point(out: &mut Vec<u8>, metric: &str, value: f64, timestamp: i64) {
    out.extend_from_slice(metric.as_bytes());
    out.push(b' ');
    write_float(out, value);
    out.push(b' ');
    write_i64(out, timestamp);
    out.push(b'\n');
}

/// Appends the decimal text of `n`.
pub fn write_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_digits(out, n.unsigned_abs());
}

/// "00" to "99": two digits per division when printing, which `get` does for every line.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// The decimal digits of `n`, written at the start of `buf`.
pub fn digits(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let len = fill_digits(n, buf);
    &buf[..len]
}

/// Writes the digits of `n` at the start of `buf`; returns how many.
#[inline]
fn fill_digits(mut n: u64, buf: &mut [u8; 20]) -> usize {
    let len = n.checked_ilog10().map_or(1, |log| log as usize + 1);
    let mut at = len;
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        buf[..2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        buf[0] = b'0' + n as u8;
    }
    len
}

/// Appends the digits of `n`.
#[inline]
fn push_digits(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let len = fill_digits(n, &mut buf);
    push_first(out, &buf, len);
}

/// Appends the first `len` bytes of `buf`. The whole buffer is copied and the rest cut off: a
/// copy of constant size is a few moves, where one of a varying length is a call to `memcpy`.
#[inline]
fn push_first<const N: usize>(out: &mut Vec<u8>, buf: &[u8; N], len: usize) {
    let start = out.len();
    out.extend_from_slice(buf);
    out.truncate(start + len);
}

/// Whether `value` is a whole number; for |value| < 2^63, where the cast is exact (one
/// instruction each way, where `f64::trunc` may be a library call).
#[inline]
fn is_whole(value: f64) -> bool {
    value as i64 as f64 == value
}

/// Appends `value` as Python's `repr(float)` prints it: the shortest digits that read back to the
/// same f64, positional when 1e-4 <= |v| < 1e16 (always with a digit after the point), scientific
/// otherwise with a signed exponent of at least two digits. No heap allocation.
pub fn write_float(out: &mut Vec<u8>, value: f64) {
    if !value.is_finite() {
        out.extend_from_slice(if value.is_nan() {
            b"nan"
        } else if value > 0.0 {
            b"inf"
        } else {
            b"-inf"
        });
        return;
    }
    // Whole numbers are most of what metrics carry; below 2^53 they print exactly as integers.
    if value.abs() < 1e15 && is_whole(value) {
        if value.is_sign_negative() {
            out.push(b'-');
        }
        write_i64(out, value.abs() as i64);
        out.extend_from_slice(b".0");
        return;
    }
    if write_short_decimal(out, value) {
        return;
    }
    write_float_shortest(out, value);
}

/// Powers of ten tried by the short-decimal path: values with up to four decimals.
const SCALES: [f64; 4] = [10.0, 100.0, 1000.0, 10000.0];

/// Writes values with at most four decimals (`0.5`, `12.25`, `99.9`), which is what most
/// metrics carry, without the general shortest-digits search. If `n / 10^d` (correctly rounded)
/// is `value` and `|n| < 1e15`, the decimal `n * 10^-d` reads back to `value`, and doubles there
/// are closer together than `10^-d`, so no shorter decimal does: it is Python's text.
fn write_short_decimal(out: &mut Vec<u8>, value: f64) -> bool {
    for (d, scale) in SCALES.iter().enumerate() {
        let scaled = value * scale;
        if scaled.abs() >= 1e15 || !is_whole(scaled) {
            continue;
        }
        if scaled / scale != value {
            return false;
        }
        let n = scaled.abs() as u64;
        let (mut places, unit) = (d + 1, 10u64.pow(d as u32 + 1));
        let mut fraction = n % unit;
        while places > 1 && fraction.is_multiple_of(10) {
            fraction /= 10;
            places -= 1;
        }
        if value.is_sign_negative() {
            out.push(b'-');
        }
        push_digits(out, n / unit);
        // The point and the fraction's digits, with their leading zeros.
        let mut text = [b'.', b'0', b'0', b'0', b'0'];
        for place in (1..=places).rev() {
            text[place] = b'0' + (fraction % 10) as u8;
            fraction /= 10;
        }
        push_first(out, &text, 1 + places);
        return true;
    }
    false
}

/// The general case: the shortest round-trip digits, laid out as Python does.
fn write_float_shortest(out: &mut Vec<u8>, value: f64) {
    // `{:e}` gives the shortest round-trip digits as `d.ddde-5`; only the layout differs from Python.
    let mut scratch = StackText::default();
    // Formatting into a buffer of fixed size cannot fail: the text is at most MAX_FLOAT_LEN bytes.
    let _ = fmt::Write::write_fmt(&mut scratch, format_args!("{value:e}"));
    let text = scratch.as_bytes();
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let e_at = text.iter().position(|&b| b == b'e').unwrap_or(text.len());
    let (mantissa, exponent) = text.split_at(e_at);
    let exponent = parse_small_int(exponent.get(1..).unwrap_or(b"0"));
    let mut digits = [0u8; 17];
    let mut count = 0;
    for &b in mantissa
        .iter()
        .filter(|b| b.is_ascii_digit())
        .take(digits.len())
    {
        digits[count] = b;
        count += 1;
    }
    let digits = &digits[..count];
    // Python's decpt: the value is 0.DIGITS * 10^decpt.
    let decpt = exponent + 1;
    if negative {
        out.push(b'-');
    }
    if -4 < decpt && decpt <= 16 {
        if decpt <= 0 {
            out.extend_from_slice(b"0.");
            out.resize(out.len() + (-decpt) as usize, b'0');
            out.extend_from_slice(digits);
        } else if (decpt as usize) < digits.len() {
            let (whole, fraction) = digits.split_at(decpt as usize);
            out.extend_from_slice(whole);
            out.push(b'.');
            out.extend_from_slice(fraction);
        } else {
            out.extend_from_slice(digits);
            out.resize(out.len() + decpt as usize - digits.len(), b'0');
            out.extend_from_slice(b".0");
        }
    } else {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if exponent < 0 { b'-' } else { b'+' });
        if exponent.abs() < 10 {
            out.push(b'0');
        }
        write_i64(out, i64::from(exponent.abs()));
    }
}

/// Reads the exponent of `{:e}` text: an optional `-` and a few digits.
fn parse_small_int(text: &[u8]) -> i32 {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let magnitude = digits
        .iter()
        .fold(0i32, |n, &d| n * 10 + i32::from(d - b'0'));
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// A fixed buffer that `fmt::Write` can fill without allocating.
#[derive(Default)]
struct StackText {
    bytes: [u8; 32],
    len: usize,
}

impl StackText {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A reply as the client reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `ok`, with the number of point lines handed to the parser's callback.
    Ok {
        /// How many point lines it carried.
        points: usize,
    },
    /// `error`, with the server's message.
    Error(String),
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedReply(pub String);

impl fmt::Display for MalformedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MalformedReply {}

/// Reads one reply a line at a time, for a client that owns the socket.
#[derive(Debug, Default)]
pub struct ReplyParser {
    state: ReplyState,
    points: usize,
    message: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ReplyState {
    #[default]
    Status,
    Points,
    Message,
}

impl ReplyParser {
    /// Feeds one line, without its `\n`. Point lines go to `on_point`; the finished reply is
    /// returned once its closing blank line arrives, and the parser is ready for the next one.
    ///
    /// # Errors
    /// [`MalformedReply`] for a status other than `ok`/`error` or a point line that is not
    /// `metric value timestamp` with a number and a whole timestamp.
    pub fn feed(
        &mut self,
        line: &[u8],
        mut on_point: impl FnMut(&str, f64, i64),
    ) -> Result<Option<Reply>, MalformedReply> {
        match self.state {
            ReplyState::Status => match line {
                b"ok" => self.state = ReplyState::Points,
                b"error" => self.state = ReplyState::Message,
                _ => return Err(malformed("unexpected status line", line)),
            },
            ReplyState::Points if line.is_empty() => {
                let points = std::mem::take(&mut self.points);
                self.state = ReplyState::Status;
                return Ok(Some(Reply::Ok { points }));
            }
            ReplyState::Points => {
                let (metric, value, timestamp) =
                    parse_point(line).ok_or_else(|| malformed("bad point line", line))?;
                on_point(metric, value, timestamp);
                self.points += 1;
            }
            ReplyState::Message if line.is_empty() => {
                self.state = ReplyState::Status;
                return Ok(Some(Reply::Error(std::mem::take(&mut self.message))));
            }
            ReplyState::Message => {
                if !self.message.is_empty() {
                    self.message.push('\n');
                }
                self.message.push_str(&String::from_utf8_lossy(line));
            }
        }
        Ok(None)
    }
}

/// Reads `metric value timestamp`, the line a get reply, `metrics get` and the data file carry.
pub fn parse_point(line: &[u8]) -> Option<(&str, f64, i64)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut fields = tokens(line);
    let (Some(metric), Some(value), Some(timestamp), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return None;
    };
    Some((
        metric,
        parse_value(value).ok()?,
        parse_timestamp(timestamp).ok()?,
    ))
}

fn malformed(what: &str, line: &[u8]) -> MalformedReply {
    const SHOWN: usize = 80;
    let shown = String::from_utf8_lossy(&line[..line.len().min(SHOWN)]);
    let more = if line.len() > SHOWN { "..." } else { "" };
    MalformedReply(format!("{what}: {shown:?}{more}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(v: f64) -> String {
        let mut out = Vec::new();
        write_float(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn digits_match_display_at_every_length() {
        let mut n = 1u64;
        let mut cases = vec![0, u64::MAX];
        while let Some(next) = n.checked_mul(10) {
            cases.extend([n - 1, n, n + 1, n * 5, n * 7 + 3]);
            n = next;
        }
        for n in cases {
            let text = std::str::from_utf8(digits(n, &mut [0; 20]))
                .unwrap()
                .to_owned();
            assert_eq!(text, n.to_string());
        }
    }

    #[test]
    fn floats_print_like_python_repr() {
        let cases: &[(f64, &str)] = &[
            (10.0, "10.0"),
            (0.5, "0.5"),
            (2.156, "2.156"),
            (1000.0, "1000.0"),
            (0.0001, "0.0001"),
            (-1.0, "-1.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e16, "1e+16"),
            (1e-5, "1e-05"),
            (1e22, "1e+22"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (1e15, "1000000000000000.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (0.1, "0.1"),
            (0.3, "0.3"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.5e-7, "1.5e-07"),
            (-2.5e-300, "-2.5e-300"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (0.00012345, "0.00012345"),
            (123.456, "123.456"),
            (-0.25, "-0.25"),
            (1234567.125, "1234567.125"),
            (1e100, "1e+100"),
        ];
        for &(value, text) in cases {
            assert_eq!(float(value), text, "formatting {value:?}");
        }
    }

    #[test]
    fn short_decimals_print_as_the_general_path_does() {
        for d in 0..=5 {
            let scale = 10f64.powi(d);
            for n in (-200_000i64..200_000)
                .step_by(7)
                .chain([1, 5, 99_999_999_999_999])
            {
                let value = n as f64 / scale;
                let mut fast = Vec::new();
                write_float(&mut fast, value);
                let mut general = Vec::new();
                write_float_shortest(&mut general, value);
                assert_eq!(
                    String::from_utf8_lossy(&fast),
                    String::from_utf8_lossy(&general),
                    "{n} / 10^{d}"
                );
            }
        }
    }

    /// xorshift64: the next of a seeded sequence, so failures reproduce.
    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn floats_round_trip_through_their_text() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let value = f64::from_bits(xorshift(&mut seed));
            if !value.is_finite() {
                continue;
            }
            let text = float(value);
            assert!(text.len() <= MAX_FLOAT_LEN, "{text}");
            assert_eq!(text.parse::<f64>().unwrap().to_bits(), value.to_bits());
        }
    }

    #[test]
    fn integers_print_in_decimal() {
        for n in [0, 1, -1, 42, i64::MAX, i64::MIN, 1150864247] {
            let mut out = Vec::new();
            write_i64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn tokens_split_on_runs_of_spaces_and_tabs_only() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   \t ", &[]),
            ("a", &["a"]),
            ("put a 1 2", &["put", "a", "1", "2"]),
            ("\t put\t\ta   1  2 \t", &["put", "a", "1", "2"]),
            (
                "averyveryverylongmetricname.with.dots 12345678.25 1700000000",
                &[
                    "averyveryverylongmetricname.with.dots",
                    "12345678.25",
                    "1700000000",
                ],
            ),
            ("a\rb\x0bc\x0cd é☃ x", &["a\rb\x0bc\x0cd", "é☃", "x"]),
            ("\u{a0}\u{2009}x y", &["\u{a0}\u{2009}x", "y"]),
        ];
        for (line, expected) in cases {
            assert_eq!(tokens(line).collect::<Vec<_>>(), *expected, "{line:?}");
        }
        // Every split point, for separators at every offset within and across words, in lines
        // shorter and longer than the 8-byte words the separator search reads.
        for len in 1..140 {
            for at in 0..len {
                let mut line = vec![b'x'; len];
                line[at] = if at % 2 == 0 { b' ' } else { b'\t' };
                let text = String::from_utf8(line).unwrap();
                let expected: Vec<&str> =
                    text.split([' ', '\t']).filter(|t| !t.is_empty()).collect();
                assert_eq!(tokens(&text).collect::<Vec<_>>(), expected, "{text:?}");
            }
        }
    }

    #[test]
    fn tokens_match_a_plain_split_on_random_lines() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            xorshift(&mut seed);
            let len = (seed % 140) as usize;
            let text: String = (0..len)
                .map(|i| match (seed >> (i % 60)) % 7 {
                    0 => ' ',
                    1 => '\t',
                    2 => 'é',
                    _ => 'x',
                })
                .collect();
            let expected: Vec<&str> = text.split([' ', '\t']).filter(|t| !t.is_empty()).collect();
            assert_eq!(tokens(&text).collect::<Vec<_>>(), expected, "{text:?}");
        }
    }

    #[test]
    fn find_newline_finds_the_first_one_anywhere() {
        for len in 0..40 {
            for at in 0..len {
                let mut bytes = vec![b'x'; len];
                bytes[at] = b'\n';
                if at + 3 < len {
                    bytes[at + 3] = b'\n';
                }
                // Bytes one off from a newline must not be taken for one.
                if at > 0 {
                    bytes[at - 1] = b'\n' + 1;
                }
                assert_eq!(find_newline(&bytes), Some(at), "{len} {at}");
            }
            assert_eq!(find_newline(&vec![0x8a; len]), None);
            assert_eq!(find_newline(&vec![0x0b; len]), None);
        }
    }

    #[test]
    fn zero_bytes_marks_exactly_the_zero_bytes() {
        for word in [
            0u64,
            u64::MAX,
            0x0100_0000_0000_0001,
            0x8000_0000_0000_0080,
            0x00ff_00ff_0100_8000,
        ] {
            let expected = word
                .to_le_bytes()
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == 0)
                .fold(0u64, |m, (i, _)| m | 0x80 << (8 * i));
            assert_eq!(zero_bytes(word), expected, "{word:#x}");
        }
    }

    #[test]
    fn put_and_get_parse() {
        assert_eq!(
            Request::parse(b"put palm.cpu 0.5 1150864247"),
            Ok(Some(Request::Put {
                metric: "palm.cpu",
                value: 0.5,
                timestamp: 1150864247
            }))
        );
        assert_eq!(
            Request::parse(b" \tget \t palm.cpu \r"),
            Ok(Some(Request::Get(Selector::Metric("palm.cpu"))))
        );
        assert_eq!(
            Request::parse(b"get *"),
            Ok(Some(Request::Get(Selector::All)))
        );
        assert_eq!(
            Request::parse(b"put m .5 -3"),
            Ok(Some(Request::Put {
                metric: "m",
                value: 0.5,
                timestamp: -3
            }))
        );
    }

    #[test]
    fn blank_lines_are_not_requests() {
        for line in [&b""[..], b"   ", b"\t\r", b"\r"] {
            assert_eq!(Request::parse(line), Ok(None));
        }
    }

    #[test]
    fn bad_requests_say_why() {
        use RequestError::*;
        let cases: &[(&[u8], RequestError)] = &[
            (b"PUT m 1 2", UnknownCommand),
            (b"GET m", UnknownCommand),
            (b"delete m", UnknownCommand),
            (b"put m 1", WrongArgumentCount),
            (b"put m 1 2 3", WrongArgumentCount),
            (b"get", WrongArgumentCount),
            (b"get a b", WrongArgumentCount),
            (b"get a 1 2 3", WrongArgumentCount),
            (b"get a 1 x", BadTimestamp),
            (b"get a 1.5 2", BadTimestamp),
            (b"get * 1 99999999999999999999", BadTimestamp),
            (b"stats now", WrongArgumentCount),
            (b"STATS", UnknownCommand),
            (b"put * 1 2", BadMetric(NameError::Reserved)),
            (b"put a\x0bb 1 2", BadMetric(NameError::Forbidden('\u{b}'))),
            (b"get a\rb", BadMetric(NameError::Forbidden('\r'))),
            (b"put m x 2", BadValue),
            (b"put m nan 2", NonFiniteValue),
            (b"put m inf 2", NonFiniteValue),
            (b"put m -inf 2", NonFiniteValue),
            (b"put m infinity 2", NonFiniteValue),
            (b"put m 1 1.5", BadTimestamp),
            (b"put m 1 1e3", BadTimestamp),
            (b"put m 1 x", BadTimestamp),
            (b"put m 1 99999999999999999999", BadTimestamp),
            (b"put m\xff 1 2", NotUtf8),
        ];
        for &(line, expected) in cases {
            assert_eq!(Request::parse(line), Err(expected), "{line:?}");
        }
    }

    #[test]
    fn put_line_len_is_the_encoded_length() {
        for (metric, value, timestamp) in [
            ("m", 1e1, 5),
            ("a.b", -1.2345678901234567e-308, i64::MIN),
            ("x", 0.1, 0),
        ] {
            let mut line = Vec::new();
            Request::Put {
                metric,
                value,
                timestamp,
            }
            .encode(&mut line);
            assert_eq!(put_line_len(metric, value, timestamp), line.len() - 1);
            assert!(put_fits(metric, value, timestamp, line.len() - 1));
            assert!(!put_fits(metric, value, timestamp, line.len() - 2));
        }
        assert_eq!(RequestError::TooLong.reply(), LINE_TOO_LONG);
        assert_eq!(RequestError::BadValue.reply(), WRONG_COMMAND);
    }

    #[test]
    fn requests_encode_to_what_parse_reads() {
        let requests = [
            Request::Put {
                metric: "a.b",
                value: -2.25,
                timestamp: 7,
            },
            Request::Get(Selector::All),
            Request::Get(Selector::Metric("x")),
            Request::GetRange {
                selector: Selector::All,
                from: i64::MIN,
                to: i64::MAX,
            },
            Request::GetRange {
                selector: Selector::Metric("x"),
                from: -5,
                to: 7,
            },
            Request::Stats,
        ];
        for request in requests {
            let mut line = Vec::new();
            request.encode(&mut line);
            assert_eq!(line.pop(), Some(b'\n'));
            assert_eq!(Request::parse(&line), Ok(Some(request)));
        }
        let mut line = Vec::new();
        Request::Put {
            metric: "palm.cpu",
            value: 10.0,
            timestamp: 1150864247,
        }
        .encode(&mut line);
        assert_eq!(line, b"put palm.cpu 10.0 1150864247\n");
    }

    type OwnedPoint = (String, f64, i64);

    fn parse_reply(lines: &[&[u8]]) -> Result<(Vec<Reply>, Vec<OwnedPoint>), MalformedReply> {
        let mut parser = ReplyParser::default();
        let mut replies = Vec::new();
        let mut points = Vec::new();
        for line in lines {
            let fed = parser.feed(line, |m, v, t| points.push((m.to_string(), v, t)))?;
            replies.extend(fed);
        }
        Ok((replies, points))
    }

    #[test]
    fn replies_parse_with_their_points() {
        let (replies, points) =
            parse_reply(&[b"ok", b"a 1.0 1", b"a 2.5 2", b"", b"ok", b""]).unwrap();
        assert_eq!(
            replies,
            vec![Reply::Ok { points: 2 }, Reply::Ok { points: 0 }]
        );
        assert_eq!(
            points,
            vec![("a".to_string(), 1.0, 1), ("a".to_string(), 2.5, 2)]
        );
        let (replies, _) = parse_reply(&[b"error", b"wrong command", b""]).unwrap();
        assert_eq!(replies, vec![Reply::Error("wrong command".into())]);
    }

    #[test]
    fn malformed_replies_are_rejected() {
        for lines in [
            &[&b"ok"[..], b"palm.cpu 10.5 12 13"][..],
            &[b"ok", b"palm.cpu x 12"],
            &[b"ok", b"palm.cpu 1.0 1.5"],
            &[b"ok", b"palm.cpu 1.0"],
            &[b"okay"],
            &[b""],
        ] {
            assert!(parse_reply(lines).is_err(), "{lines:?}");
        }
    }
}
