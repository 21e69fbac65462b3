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
//! A program can embed the server too: [`Server::bind`] with a [`Config`], then
//! [`Server::run`].
//!
//! # Layout
//! In the order a reader should meet them:
//! - [`protocol`]: pure parsing and encoding of requests, replies and point lines, Python float
//!   text, and the one rule for a metric name. No I/O.
//! - `codec`: the compressed block format of a series; pure encode and decode.
//! - `store`: the in-memory data: compressed blocks and a head per series, the name index,
//!   memory accounting; no locks, no I/O.
//! - `journal`: the optional data file: append, replay, compaction.
//! - `db`: the shared state: the store's lock, the journal and its ordering rule, retention and
//!   the maintenance step, behind a narrow API.
//! - `connection`: one client's I/O: input buffer, batching, replies.
//! - [`server`]: the listener, admission, threads.
//! - `forward`: sending every put on to Graphite plaintext upstreams.
//! - [`client`]: [`Client`] and [`ClientError`], used by programs and by the CLI.
//! - [`defaults`]: the clock, the default address and timeout, shared by client and server.
//! - `cli`, `bulk` (`metrics put -`), `bench` (`metrics bench`), `plot` (`metrics plot`): the
//!   command line.
//! - `log`: stderr lines, written by a thread of their own, and the rate limiter.
#![warn(missing_docs)]

pub mod client;
pub mod defaults;
pub mod protocol;
pub mod server;

pub(crate) mod bench;
pub(crate) mod bulk;
mod cli;
mod codec;
mod connection;
mod db;
mod forward;
mod journal;
mod log;
mod plot;
mod store;

pub use cli::run;
pub use client::{Client, ClientError, Points};
pub use journal::Fsync;
pub use server::{Config, Server, ServerError};
