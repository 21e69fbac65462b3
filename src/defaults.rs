//! What the client, the CLI and the server agree on without importing each other: the clock,
//! the default address and the default timeout.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The server address when neither `--addr` nor `METRICS_ADDR` gives one.
pub const ADDR: &str = "127.0.0.1:8888";
/// The environment variable naming the server address.
pub const ADDR_ENV: &str = "METRICS_ADDR";
/// How long a client waits to connect, and for each read and write, unless told otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// The current time in whole seconds since the Unix epoch: a put's default timestamp, the
/// retention cut-off and the log's clock. A clock set before 1970 reads as 0.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
