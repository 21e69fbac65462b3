//! `metrics`: a small, fast, dependable metric collection server, its client library and CLI.
//!
//! Programs talk to the server over a plain text protocol on TCP (see [`protocol`]):
//! `put palm.cpu 0.5 1150864247` stores a point, `get palm.cpu` or `get *` reads points back.
//!
//! ```no_run
//! use metrics::{Client, ClientError};
//! use std::time::Duration;
//!
//! let mut client = Client::connect("127.0.0.1:8888", Some(Duration::from_secs(15)))?;
//! client.put("palm.cpu", 0.5, Some(1150864247))?;
//! let points = client.get("palm.cpu")?;
//! assert_eq!(points["palm.cpu"], vec![(1150864247, 0.5)]);
//! # Ok::<(), ClientError>(())
//! ```
//!
//! # Layout
//! - [`protocol`]: pure parsing and encoding of requests and replies, and Python float text.
//! - [`store`]: the in-memory data, in compact chunks; no locks, no I/O.
//! - [`journal`]: the optional data file: append, replay, compaction.
//! - [`server`]: the listener, one thread per connection, the shared lock, every limit.
//! - [`client`]: [`Client`] and [`ClientError`], used by programs and by the CLI.
//! - [`bulk`]: `metrics put -`, pipelined loading of point lines.
//! - [`bench`]: `metrics bench`, the load generator.
//! - [`cli`]: the `metrics` command line and its exit codes.
//! - [`log`]: stderr log lines and the rate limiter that bounds them.

pub mod bench;
pub mod bulk;
pub mod cli;
pub mod client;
pub mod defaults;
pub mod journal;
pub mod log;
pub mod protocol;
pub mod server;
pub mod store;

pub use client::{Client, ClientError, Points};
pub use server::{Config, Server};
pub use store::Store;
