//! The server: the listener, admission (the connection cap and its slot guard), one thread per
//! connection, and the maintenance thread. What a connection does lives in
//! `connection`; the shared state it reaches, in `db`.
//!
//! Everything a client controls is bounded: line length, connection count, idle time, time spent
//! blocked writing to a client that does not read, and log lines per connection.

use crate::connection::{Connection, Limits, LOG_LINES_PER_SECOND};
use crate::db::{Db, Maintenance, Settings};
use crate::forward;
use crate::journal::{Fsync, JournalError};
use crate::log::{self, suppressed_note, RateLimit, Topic};
use crate::protocol;
use crate::{error, info, warn};
use std::fmt;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
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
    /// Most bytes the store may hold (points, names, indexes); puts that would add more are
    /// refused with `memory limit reached`. `None` is no limit. The default is half of the
    /// machine's memory (see [`default_max_memory`]).
    pub max_memory: Option<usize>,
    /// Store the `stats` figures as points this often; `None` (the default) never does, so
    /// `get *` shows only what clients put.
    pub self_metrics: Option<Duration>,
    /// Upstreams (`HOST:PORT`) that receive every acknowledged put in Graphite plaintext.
    pub forward: Vec<String>,
    /// Without a data file: unsent points each upstream's queue holds before it drops the
    /// oldest. Default 1,000,000.
    pub forward_buffer: u64,
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
            max_memory: default_max_memory(),
            self_metrics: None,
            forward: Vec::new(),
            forward_buffer: 1_000_000,
        }
    }
}

/// Half of the machine's physical memory (`MemTotal` in `/proc/meminfo`), or `None` where that
/// cannot be read. Half, because the store's count leaves out the allocator's slack, connection
/// buffers and the page cache the data file needs: refusing puts there keeps the process far
/// from the point where the OS kills it and every point in memory is lost.
pub fn default_max_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: usize = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 2 * 1024)
}

/// Why the server could not start.
#[derive(Debug)]
pub enum ServerError {
    /// The listening socket could not be bound.
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
    /// The data file could not be loaded; it is left as it was.
    Data(JournalError),
    /// A background thread (maintenance, a forwarder) could not start.
    Spawn(io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Bind { addr, .. } => write!(f, "cannot listen on {addr}"),
            // Transparent: the data file's error says it all.
            ServerError::Data(e) => e.fmt(f),
            ServerError::Spawn(_) => f.write_str("cannot start a background thread"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Bind { source, .. } | ServerError::Spawn(source) => Some(source),
            ServerError::Data(e) => e.source(),
        }
    }
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    db: Arc<Db>,
    config: Config,
}

/// The reply to a connection-level refusal, sent before closing.
const TOO_MANY_CONNECTIONS: &str = "too many connections";
/// Stack of a connection thread: the handler is shallow, and 1024 threads stay small.
const THREAD_STACK_BYTES: usize = 256 * 1024;
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
        let db = Db::open(Settings {
            data: config.data.as_deref(),
            fsync: config.fsync,
            retention: config.retention,
            max_memory: config.max_memory,
            self_metrics: config.self_metrics,
            forward: &config.forward,
            forward_buffer: config.forward_buffer,
        })
        .map_err(|e| {
            // What was logged while loading is out before the caller reports the failure.
            log::flush();
            ServerError::Data(e)
        })?;
        Ok(Server {
            listener,
            db: Arc::new(db),
            config,
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
        {
            let db = Arc::clone(&self.db);
            thread::Builder::new()
                .name("maintenance".into())
                .spawn(move || {
                    let mut state = Maintenance::new();
                    loop {
                        thread::sleep(Maintenance::TICK);
                        db.maintain(&mut state);
                    }
                })
                .map_err(ServerError::Spawn)?;
        }
        for upstream in self.db.upstreams() {
            let upstream = Arc::clone(upstream);
            thread::Builder::new()
                .name(format!("forward {}", upstream.addr()))
                .spawn(move || forward::run(&upstream))
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
        let Some(slot) = Slot::take(&self.db, self.config.max_connections) else {
            if let Some(suppressed) = log::allow(Topic::Connections) {
                warn!(
                    "{peer} refused: too many connections (limit {}){}",
                    self.config.max_connections,
                    suppressed_note(suppressed)
                );
            }
            refuse(stream, TOO_MANY_CONNECTIONS);
            self.db.count_errors(1);
            return;
        };
        let db = Arc::clone(&self.db);
        let limits = Limits {
            max_line_bytes: self.config.max_line_bytes,
            idle_timeout: self.config.idle_timeout,
            write_timeout: self.config.write_timeout,
        };
        let spawned = thread::Builder::new()
            .name(format!("conn {peer}"))
            .stack_size(THREAD_STACK_BYTES)
            .spawn(move || {
                if let Some(suppressed) = log::allow(Topic::Connections) {
                    info!(
                        "{peer} connected ({} open){}",
                        slot.open(),
                        suppressed_note(suppressed)
                    );
                }
                let (end, suppressed) = Connection::new(stream, peer, &db, limits).run();
                // The place is free before the line saying so is written.
                drop(slot);
                if let Some(more) = log::allow(Topic::Connections) {
                    info!(
                        "{peer} disconnected: {end}{}{}",
                        suppressed_note(suppressed),
                        suppressed_note(more)
                    );
                }
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

/// `host:port`, with brackets around an IPv6 host.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
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
struct Slot(Arc<Db>);

impl Slot {
    fn take(db: &Arc<Db>, limit: usize) -> Option<Slot> {
        db.try_open_connection(limit).then(|| Slot(Arc::clone(db)))
    }

    fn open(&self) -> usize {
        self.0.open_connections()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.close_connection();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_brackets_ipv6() {
        assert_eq!(host_port("127.0.0.1", 1), "127.0.0.1:1");
        assert_eq!(host_port("::", 8888), "[::]:8888");
    }
}
