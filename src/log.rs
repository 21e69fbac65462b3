//! Diagnostics on stderr, one line per event: `2026-11-25T18:25:47Z warn 127.0.0.1:5000 ...`.
//! Also the rate limiter that keeps one client from filling a disk with log lines.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Writes one line to stderr. A failed write is ignored: logging must never stop the server.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    let line = format!("{} {level} {args}\n", utc_now());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Logs at info level, `format!`-style.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}

/// Logs at warn level, `format!`-style.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) };
}

/// Logs at error level, `format!`-style.
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
    pub fn new(per_second: u32) -> Self {
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
    }
}
