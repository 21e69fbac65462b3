//! Diagnostics on stderr, one line per event: `2026-11-25T18:25:47Z warn 127.0.0.1:5000 ...`.
//! Also the rate limiter that keeps one client from filling a disk with log lines.
//!
//! Every line a client can cause goes through a limit for its [`Topic`], shared by all
//! connections, so that no number of clients can flood the log; what a limit holds back is
//! counted and reported within about a second, even when nothing else is logged.
//!
//! Nobody waits on stderr: lines go through a bounded queue to a thread of their own that
//! writes them. When stderr is a pipe nobody reads, that thread blocks, the queue fills, and
//! further lines are dropped and counted (the count is logged once stderr moves again) — the
//! server goes on serving.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lines that may wait for stderr; past this they are dropped and counted.
pub const QUEUE_LINES: usize = 4096;

enum Message {
    Line(String),
    Flushed(SyncSender<()>),
}

static QUEUE: OnceLock<Option<SyncSender<Message>>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The queue to the writer thread, started on first use; `None` if it could not start.
fn queue() -> Option<&'static SyncSender<Message>> {
    QUEUE
        .get_or_init(|| {
            let (sender, receiver) = mpsc::sync_channel(QUEUE_LINES);
            thread::Builder::new()
                .name("log".into())
                .spawn(move || write_out(receiver))
                .ok()
                .map(|_| sender)
        })
        .as_ref()
}

/// What a client can make the server log, each with a limit of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// Connections opened, closed or refused.
    Connections,
    /// Bad requests and HTTP on the metrics port.
    Requests,
    /// Puts refused (memory limit, data file failure).
    Refusals,
}

impl Topic {
    const ALL: [Topic; 3] = [Topic::Connections, Topic::Requests, Topic::Refusals];

    fn name(self) -> &'static str {
        match self {
            Topic::Connections => "connection",
            Topic::Requests => "bad request",
            Topic::Refusals => "refused put",
        }
    }

    fn limit(self) -> &'static Mutex<RateLimit> {
        &LIMITS[self as usize]
    }
}

/// Lines per second each topic may log, across all connections.
pub const TOPIC_LINES_PER_SECOND: u32 = 100;

static LIMITS: [Mutex<RateLimit>; 3] =
    [const { Mutex::new(RateLimit::new(TOPIC_LINES_PER_SECOND)) }; 3];

/// Whether a line about `topic` may be logged now: `Some(n)` with the lines held back since
/// the last one (to note on it), `None` to hold this one back.
pub fn allow(topic: Topic) -> Option<u64> {
    topic
        .limit()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .allow(Instant::now())
}

/// Reports each topic's held-back lines once its window has passed.
fn report_suppressed(stderr: &mut impl Write) {
    for topic in Topic::ALL {
        let held = topic
            .limit()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take_expired(Instant::now());
        if held > 0 {
            let note = format!(
                "{} warn {held} {} log lines suppressed (limit {TOPIC_LINES_PER_SECOND} a second)\n",
                utc_now(),
                topic.name()
            );
            let _ = stderr.write_all(note.as_bytes());
        }
    }
}

fn write_out(receiver: Receiver<Message>) {
    loop {
        let message = match receiver.recv_timeout(Duration::from_millis(500)) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => {
                report_suppressed(&mut std::io::stderr().lock());
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        report_suppressed(&mut std::io::stderr().lock());
        match message {
            Message::Line(line) => {
                let dropped = DROPPED.swap(0, Ordering::Relaxed);
                let mut stderr = std::io::stderr().lock();
                if dropped > 0 {
                    let note = format!(
                        "{} warn {dropped} log lines dropped: stderr was not being read\n",
                        utc_now()
                    );
                    let _ = stderr.write_all(note.as_bytes());
                }
                let _ = stderr.write_all(line.as_bytes());
            }
            Message::Flushed(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// How serious a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        })
    }
}

/// Queues one line for stderr, never waiting: a full queue drops it (and counts it). A failed
/// write is ignored too: logging must never stop the server.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    let line = format!("{} {level} {args}\n", utc_now());
    match queue() {
        Some(queue) => {
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                queue.try_send(Message::Line(line))
            {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        // No thread to write for us: write here rather than lose the line.
        None => {
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
}

/// Waits (up to a second) until the lines queued so far are written: before the process exits.
pub fn flush() {
    let Some(queue) = QUEUE.get().and_then(Option::as_ref) else {
        return;
    };
    let (done, written) = mpsc::sync_channel(1);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut message = Message::Flushed(done);
    loop {
        match queue.try_send(message) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                message = back;
                thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

/// An error and its sources, joined with `": "`: each error's `Display` says only its own part.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let part = source.to_string();
        // An error from elsewhere that prints its source itself would repeat it.
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = source.source();
    }
    text
}

/// ` (N similar lines suppressed)` after a line that a [`RateLimit`] let through, or nothing.
pub fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} similar lines suppressed)")
    }
}

/// Logs at info level, `format!`-style.
#[doc(hidden)]
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}

/// Logs at warn level, `format!`-style.
#[doc(hidden)]
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) };
}

/// Logs at error level, `format!`-style.
#[doc(hidden)]
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) };
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    utc(secs)
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian calendar).
pub fn utc(secs: i64) -> String {
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date, after Howard Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Lets through at most `per_second` events a second and counts the rest.
#[derive(Debug)]
pub struct RateLimit {
    per_second: u32,
    window: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    /// A limiter allowing `per_second` events in each one-second window.
    pub const fn new(per_second: u32) -> Self {
        RateLimit {
            per_second,
            window: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` if an event at `now` may be logged, `n` being how many were suppressed since the
    /// last one that was; `None` if this one must be suppressed.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let expired = self
            .window
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1));
        if expired {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// How many events were suppressed and not yet reported.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// The suppressed count, taken (so it is reported once), when the window it was counted in
    /// has passed; 0 while it is still open.
    pub fn take_expired(&mut self, now: Instant) -> u64 {
        match self.window {
            Some(start) if now.duration_since(start) >= Duration::from_secs(1) => {
                std::mem::take(&mut self.suppressed)
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1150864247), "2006-06-21T04:30:47Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn rate_limit_counts_what_it_suppresses() {
        let start = Instant::now();
        let mut limit = RateLimit::new(2);
        assert_eq!(limit.allow(start), Some(0));
        assert_eq!(limit.allow(start), Some(0));
        assert_eq!(limit.allow(start), None);
        assert_eq!(limit.allow(start), None);
        assert_eq!(limit.suppressed(), 2);
        assert_eq!(limit.allow(start + Duration::from_secs(1)), Some(2));
        assert_eq!(limit.allow(start + Duration::from_secs(1)), Some(0));
        assert_eq!(limit.allow(start + Duration::from_secs(1)), None);
        assert_eq!(limit.take_expired(start + Duration::from_millis(1500)), 0);
        assert_eq!(limit.take_expired(start + Duration::from_secs(2)), 1);
        assert_eq!(limit.take_expired(start + Duration::from_secs(3)), 0);
    }
}
