//! `metrics bench`: a load generator in the spirit of `redis-benchmark`.
//!
//! Each connection sends its share of the requests in batches of `pipeline` requests. Without
//! pipelining each connection has one request in flight, and each thread drives a group of four
//! connections. With pipelining up to two batches are in flight, so the generator keeps the
//! server busy instead of waiting on itself: one thread per connection writes a batch and then
//! reads the replies to the one before it when those replies are few and small (puts in
//! batches of up to 1024), and reads them sooner if the server stops taking requests;
//! otherwise a writer thread sends while a reader thread takes the replies. The generator costs
//! little of what it measures: values' text is made once, and replies that are a plain `ok` are
//! counted without parsing. Latency is measured per request, from the write of its batch to the
//! reading of its reply (with one thread, after the next batch is written).
//!
//! Memory does not grow with the flags: metric names are made as they are sent (`--keys` costs
//! nothing up front), a batch is encoded and written [`CHUNK_REQUESTS`] requests at a time
//! however large `-P` is, and the reader hears of a batch before it is written, so it takes the
//! replies while the writer is still writing and neither side waits for the other.

use crate::client::{self, ClientError, ReplyReader};
use crate::protocol::{self, Reply};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::net::TcpStream;
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The first timestamp the benchmark writes; later points count up from it per key.
pub const BASE_TIMESTAMP: i64 = 1_700_000_000;

/// Requests encoded and written at a time, whatever `-P` is: about 64 KiB.
pub const CHUNK_REQUESTS: u64 = 2048;

/// Why a benchmark could not run to the end.
#[derive(Debug)]
pub enum BenchError {
    /// A connection could not be made before the run began.
    Connect(ClientError),
    /// A thread could not be started.
    Spawn(io::Error),
    /// A connection failed during the run; `answered` requests of `requests` had their reply.
    Failed {
        answered: u64,
        requests: u64,
        source: ClientError,
    },
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Transparent: what the client error says is the whole story.
            BenchError::Connect(e) => e.fmt(f),
            BenchError::Spawn(_) => f.write_str("cannot start a bench thread"),
            BenchError::Failed {
                answered, requests, ..
            } => write!(
                f,
                "bench stopped after {answered} of {requests} requests were answered"
            ),
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BenchError::Connect(e) => e.source(),
            BenchError::Spawn(e) => Some(e),
            BenchError::Failed { source, .. } => Some(source),
        }
    }
}

/// Which requests to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Only puts: each key gets points at increasing timestamps.
    Put,
    /// Only gets of the keys (whatever a put run left there).
    Get,
    /// Nine puts to one get.
    Mixed,
}

impl Workload {
    /// Reads `put`, `get` or `mixed`.
    pub fn parse(text: &str) -> Option<Workload> {
        match text {
            "put" => Some(Workload::Put),
            "get" => Some(Workload::Get),
            "mixed" => Some(Workload::Mixed),
            _ => None,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
        })
    }
}

/// What to run; the CLI's `metrics bench` flags.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    pub addr: String,
    pub timeout: Option<Duration>,
    /// `-c`: connections, default 50.
    pub connections: usize,
    /// `-n`: requests in all, default 100000.
    pub requests: u64,
    /// `-P`: requests per batch, default 1.
    pub pipeline: usize,
    /// `--keys`: distinct metrics, default 1000.
    pub keys: u64,
    /// `--workload`: default put.
    pub workload: Workload,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            addr: crate::defaults::ADDR.into(),
            timeout: Some(Duration::from_secs(15)),
            connections: 50,
            requests: 100_000,
            pipeline: 1,
            keys: 1000,
            workload: Workload::Put,
        }
    }
}

/// Latencies in log-linear buckets: 32 per power of two, so quantiles are within about 3%.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    max: u64,
}

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; (64 * SUB) as usize],
            max: 0,
        }
    }
}

impl Histogram {
    fn index(nanos: u64) -> usize {
        if nanos < SUB {
            return nanos as usize;
        }
        let exponent = 63 - nanos.leading_zeros();
        let mantissa = (nanos >> (exponent - SUB_BITS)) & (SUB - 1);
        ((u64::from(exponent - SUB_BITS + 1) << SUB_BITS) + mantissa) as usize
    }

    /// The smallest value that falls in bucket `index`.
    fn lower_bound(index: usize) -> u64 {
        let index = index as u64;
        if index < SUB {
            return index;
        }
        let exponent = (index >> SUB_BITS) + u64::from(SUB_BITS) - 1;
        let mantissa = index & (SUB - 1);
        (1 << exponent) | (mantissa << (exponent - u64::from(SUB_BITS)))
    }

    /// Records `n` requests that took `latency` each.
    pub fn record(&mut self, latency: Duration, n: u64) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::index(nanos)] += n;
        self.max = self.max.max(nanos);
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.max = self.max.max(other.max);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The latency at quantile `q` (0 to 1), to bucket precision.
    pub fn quantile(&self, q: f64) -> Duration {
        let total = self.count();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_nanos(Self::lower_bound(index).min(self.max));
            }
        }
        self.max()
    }

    /// The largest latency recorded.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max)
    }
}

/// What a benchmark measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub config: BenchConfig,
    pub elapsed: Duration,
    pub completed: u64,
    pub errors: u64,
    pub latency: Histogram,
}

impl Report {
    /// Requests answered per second.
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(
            f,
            "bench: {}, {} connection{}, pipeline {}, {} requests, {} keys",
            c.workload,
            c.connections,
            if c.connections == 1 { "" } else { "s" },
            c.pipeline,
            c.requests,
            c.keys
        )?;
        writeln!(
            f,
            "throughput: {:.0} requests/s ({} in {:.3} s)",
            self.rate(),
            self.completed,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "latency: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(self.latency.quantile(0.5)),
            ms(self.latency.quantile(0.99)),
            ms(self.latency.max())
        )?;
        writeln!(f, "errors: {}", self.errors)
    }
}

/// The requests of one connection: the `i`-th is global request `i * stride + offset`.
#[derive(Clone)]
struct Plan {
    keys: u64,
    workload: Workload,
    offset: u64,
    stride: u64,
    count: u64,
    /// The text of each value a put can carry ([`VALUES`] of them), made once: formatting
    /// every request's value would make the load generator a large part of what is measured.
    values: Vec<Box<[u8]>>,
    /// The last timestamp written and its text: it changes once every `keys` requests.
    stamp: (i64, Vec<u8>),
}

/// Distinct values a put carries: request `i` puts `(i % VALUES) * 0.25`.
const VALUES: u64 = 1000;

impl Plan {
    fn new(keys: u64, workload: Workload, offset: u64, stride: u64, count: u64) -> Plan {
        let values = (0..VALUES)
            .map(|v| {
                let mut text = Vec::with_capacity(protocol::MAX_FLOAT_LEN);
                protocol::write_float(&mut text, Self::value(v));
                text.into_boxed_slice()
            })
            .collect();
        Plan {
            keys: keys.max(1),
            workload,
            offset,
            stride,
            count,
            values,
            stamp: (i64::MIN, Vec::new()),
        }
    }

    fn value(global: u64) -> f64 {
        (global % VALUES) as f64 * 0.25
    }

    /// Appends requests `from..from + count` of this connection, byte for byte what
    /// [`Request::encode`](protocol::Request::encode) writes. Key `k` is `bench.key{k}`, made here rather than looked up,
    /// so any `--keys` costs nothing up front.
    fn encode(&mut self, from: u64, count: u64, out: &mut Vec<u8>) {
        let mut digits = [0; 20];
        for i in from..from + count {
            let global = i * self.stride + self.offset;
            let get = match self.workload {
                Workload::Put => false,
                Workload::Get => true,
                Workload::Mixed => global % 10 == 9,
            };
            out.extend_from_slice(if get { b"get " } else { b"put " });
            out.extend_from_slice(b"bench.key");
            out.extend_from_slice(protocol::digits(global % self.keys, &mut digits));
            if !get {
                let timestamp = BASE_TIMESTAMP.saturating_add((global / self.keys) as i64);
                if self.stamp.0 != timestamp {
                    self.stamp.0 = timestamp;
                    self.stamp.1.clear();
                    protocol::write_i64(&mut self.stamp.1, timestamp);
                }
                out.push(b' ');
                out.extend_from_slice(&self.values[(global % VALUES) as usize]);
                out.push(b' ');
                out.extend_from_slice(&self.stamp.1);
            }
            out.push(b'\n');
        }
    }
}

/// What one connection counted.
#[derive(Default)]
struct Tally {
    completed: u64,
    errors: u64,
    latency: Histogram,
}

impl Tally {
    /// Reads `count` replies to a batch written at `sent`.
    fn read_batch(
        &mut self,
        replies: &mut ReplyReader<TcpStream>,
        sent: Instant,
        count: u64,
    ) -> Result<(), ClientError> {
        let mut skip_points = |_: &str, _: f64, _: i64| ControlFlow::Continue(());
        // Replies that came in one read arrived at one time: read the clock once per read.
        let (mut reads, mut latency) = (u64::MAX, Duration::ZERO);
        let mut left = count;
        while left > 0 {
            let mut answered = replies.take_buffered_oks(left);
            if answered == 0 {
                match replies.read_reply(&mut skip_points)? {
                    Some(Reply::Ok { .. }) => {}
                    _ => self.errors += 1,
                }
                answered = 1;
            }
            if replies.reads() != reads {
                reads = replies.reads();
                latency = sent.elapsed();
            }
            left -= answered;
            self.completed += answered;
            self.latency.record(latency, answered);
        }
        Ok(())
    }
}

/// Runs the benchmark and reports what it measured.
///
/// # Errors
/// [`BenchError`] when a connection cannot be made or fails mid-run, or a thread cannot start.
pub fn run(config: &BenchConfig) -> Result<Report, BenchError> {
    let connections = config.connections.max(1);
    let streams = (0..connections)
        .map(|_| client::connect_stream(config.addr.as_str(), config.timeout))
        .collect::<Result<Vec<_>, _>>()
        .map_err(BenchError::Connect)?;
    let n = connections as u64;
    let pipeline = config.pipeline.max(1) as u64;
    let work: Vec<(TcpStream, Plan)> = streams
        .into_iter()
        .zip(0..n)
        .map(|(stream, c)| {
            let count = config.requests / n + u64::from(c < config.requests % n);
            (stream, Plan::new(config.keys, config.workload, c, n, count))
        })
        .collect();
    let started = Instant::now();
    let (outcomes, spawn_error) = thread::scope(|scope| {
        let mut handles = Vec::new();
        let mut spawn_error = None;
        let jobs: Vec<Vec<(TcpStream, Plan)>> = if pipeline == 1 {
            let threads = connections.div_ceil(CONNECTIONS_PER_THREAD);
            let mut groups: Vec<Vec<(TcpStream, Plan)>> =
                (0..threads).map(|_| Vec::new()).collect();
            for (i, conn) in work.into_iter().enumerate() {
                groups[i % threads].push(conn);
            }
            groups.into_iter().filter(|g| !g.is_empty()).collect()
        } else {
            work.into_iter().map(|conn| vec![conn]).collect()
        };
        for job in jobs {
            let spawned = thread::Builder::new().spawn_scoped(scope, move || {
                if pipeline == 1 {
                    drive_group(job)
                } else {
                    let (stream, plan) = job.into_iter().next().expect("one connection");
                    drive(stream, plan, pipeline)
                }
            });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    // Started threads finish their share; the run is reported as failed.
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        let outcomes: Vec<Outcome> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        (outcomes, spawn_error)
    });
    let elapsed = started.elapsed();
    if let Some(e) = spawn_error {
        return Err(BenchError::Spawn(e));
    }
    let mut report = Report {
        config: config.clone(),
        elapsed,
        completed: 0,
        errors: 0,
        latency: Histogram::default(),
    };
    let mut failure = None;
    for (tally, error) in outcomes {
        report.completed += tally.completed;
        report.errors += tally.errors;
        report.latency.merge(&tally.latency);
        failure = failure.or(error);
    }
    match failure {
        Some(source) => Err(BenchError::Failed {
            answered: report.completed,
            requests: config.requests,
            source,
        }),
        None => Ok(report),
    }
}

/// What one thread counted, and why it stopped early if it did.
type Outcome = (Tally, Option<ClientError>);

/// Connections one unpipelined driver thread keeps busy: measured on two cores, groups of about
/// four beat both one thread per connection (context switches) and one thread per core (a
/// round waits for its slowest reply).
const CONNECTIONS_PER_THREAD: usize = 4;

/// Without pipelining: keeps one request in flight on each of several connections, writing to
/// all of them and then reading each reply.
fn drive_group(group: Vec<(TcpStream, Plan)>) -> Outcome {
    let mut tally = Tally::default();
    let result = (|| {
        let mut conns = Vec::with_capacity(group.len());
        for (stream, plan) in group {
            let replies = ReplyReader::new(stream.try_clone()?);
            conns.push((stream, replies, plan, Instant::now()));
        }
        let mut out = Vec::new();
        let most = conns.iter().map(|c| c.2.count).max().unwrap_or(0);
        for i in 0..most {
            for (stream, _, plan, sent) in conns.iter_mut().filter(|c| i < c.2.count) {
                out.clear();
                plan.encode(i, 1, &mut out);
                *sent = Instant::now();
                (&*stream).write_all(&out)?;
            }
            for (_, replies, _, sent) in conns.iter_mut().filter(|c| i < c.2.count) {
                tally.read_batch(replies, *sent, 1)?;
            }
        }
        Ok(())
    })();
    (tally, result.err())
}

/// Batches a pipelining connection has written and not yet had all replies to, at most.
const IN_FLIGHT: usize = 2;

/// The reply to a put that is stored or refused for memory (`error\nmemory limit reached\n\n`).
const PUT_REPLY_MOST: u64 = 32;

/// Reply bytes a connection can leave unread without the server ever waiting to write them:
/// half of Linux's smallest default receive buffer (128 KiB).
const UNREAD_REPLIES_MOST: u64 = 64 << 10;

/// How long a write of [`drive_alone`] waits on a server that takes nothing before the thread
/// reads the replies it is owed: the server may be waiting to write them.
const STALL: Duration = Duration::from_millis(20);

/// With pipelining. When the replies in flight are few and small (puts, batches of up to about
/// a thousand), one thread writes a batch and then reads the replies to the one before it: the
/// generator costs half the threads and no handoffs between them. Otherwise a writer and a
/// reader thread.
fn drive(stream: TcpStream, plan: Plan, pipeline: u64) -> Outcome {
    if alone_suits(plan.workload, pipeline) {
        drive_alone(stream, plan, pipeline).0
    } else {
        drive_with_reader(stream, plan, pipeline)
    }
}

/// Whether the replies to [`IN_FLIGHT`] batches of this workload are sure to be few and small.
fn alone_suits(workload: Workload, pipeline: u64) -> bool {
    let unread_most = pipeline.saturating_mul(IN_FLIGHT as u64 * PUT_REPLY_MOST);
    workload == Workload::Put && unread_most <= UNREAD_REPLIES_MOST
}

/// The batches of a connection: `(first request, requests)`.
fn batches(plan: &Plan, pipeline: u64) -> impl Iterator<Item = (u64, u64)> + use<> {
    let count = plan.count;
    (0..count)
        .step_by(usize::try_from(pipeline).unwrap_or(usize::MAX))
        .map(move |from| (from, pipeline.min(count - from)))
}

/// Writes requests `from..from + count`, encoded [`CHUNK_REQUESTS`] at a time.
fn write_batch(
    stream: &TcpStream,
    plan: &mut Plan,
    (from, count): (u64, u64),
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let mut at = from;
    while at < from + count {
        let chunk = (from + count - at).min(CHUNK_REQUESTS);
        out.clear();
        plan.encode(at, chunk, out);
        (&*stream).write_all(out)?;
        at += chunk;
    }
    Ok(())
}

/// One thread writes each batch, then reads the replies to the batch before it. The replies it
/// leaves unread usually fit in the socket's buffers; when they do not (long errors, small
/// buffers), the server stops reading until they are read, so a write that waits [`STALL`]
/// reads every reply owed so far and writes on. A batch's latency includes the writing of the
/// next batch, as its replies are read after it. Returns also how many writes stalled.
fn drive_alone(stream: TcpStream, mut plan: Plan, pipeline: u64) -> (Outcome, u64) {
    let mut alone = match Alone::new(stream) {
        Ok(alone) => alone,
        Err(e) => return ((Tally::default(), Some(e.into())), 0),
    };
    let mut out = Vec::new();
    let mut written = Ok(());
    for batch in batches(&plan, pipeline) {
        if alone.owed.len() == IN_FLIGHT {
            if let Err(e) = alone.read_owed(1) {
                return ((alone.tally, Some(e)), alone.stalls);
            }
        }
        match alone.write_batch(&mut plan, batch, &mut out) {
            Ok(()) => {}
            // The replies are out of step with the batches now: nothing more can be read.
            Err(Stop::Read(e)) => return ((alone.tally, Some(e)), alone.stalls),
            Err(Stop::Write(e)) => {
                written = Err(e);
                break;
            }
        }
    }
    // After a failed write too: a server that closed may have said why.
    let read = alone.read_owed(IN_FLIGHT);
    ((alone.tally, read.and(written).err()), alone.stalls)
}

/// Why [`Alone::write_batch`] stopped: the write failed, or reading the replies owed did.
enum Stop {
    Write(ClientError),
    Read(ClientError),
}

/// A batch written, or being written, whose replies are not all read.
struct Owed {
    sent: Instant,
    requests: u64,
    /// Requests written whole, each owed a reply.
    written: u64,
    read: u64,
}

/// The state of a connection that [`drive_alone`] drives.
struct Alone {
    stream: TcpStream,
    replies: ReplyReader<TcpStream>,
    /// Oldest first; the last is the batch being written.
    owed: VecDeque<Owed>,
    tally: Tally,
    /// The user's write timeout: how long the server may take nothing while nothing is owed.
    patience: Option<Duration>,
    /// Writes that waited [`STALL`] for the server.
    stalls: u64,
}

impl Alone {
    fn new(stream: TcpStream) -> io::Result<Alone> {
        let patience = stream.write_timeout()?;
        stream.set_write_timeout(Some(patience.map_or(STALL, |p| p.min(STALL))))?;
        Ok(Alone {
            replies: ReplyReader::new(stream.try_clone()?),
            stream,
            owed: VecDeque::with_capacity(IN_FLIGHT),
            tally: Tally::default(),
            patience,
            stalls: 0,
        })
    }

    /// Writes requests `from..from + count` like [`write_batch`], reading the replies owed
    /// whenever the server stops taking them.
    fn write_batch(
        &mut self,
        plan: &mut Plan,
        (from, count): (u64, u64),
        out: &mut Vec<u8>,
    ) -> Result<(), Stop> {
        self.owed.push_back(Owed {
            sent: Instant::now(),
            requests: count,
            written: 0,
            read: 0,
        });
        let mut at = from;
        while at < from + count {
            let chunk = (from + count - at).min(CHUNK_REQUESTS);
            out.clear();
            plan.encode(at, chunk, out);
            let (mut done, mut waited) = (0, Duration::ZERO);
            while done < out.len() {
                let result = (&self.stream).write(&out[done..]);
                if let Ok(n) = result {
                    done += n;
                    waited = Duration::ZERO;
                }
                // Requests are lines: each whose newline is written is owed a reply.
                let whole = if done == out.len() {
                    chunk
                } else {
                    out[..done].iter().filter(|&&b| b == b'\n').count() as u64
                };
                if let Some(batch) = self.owed.back_mut() {
                    batch.written = at - from + whole;
                }
                match result {
                    Ok(0) => {
                        return Err(Stop::Write(ClientError::Io(
                            io::ErrorKind::WriteZero.into(),
                        )))
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        self.stalls += 1;
                        if self.read_owed(IN_FLIGHT).map_err(Stop::Read)? == 0 {
                            waited += STALL;
                            if self.patience.is_some_and(|p| waited >= p) {
                                return Err(Stop::Write(e.into()));
                            }
                        }
                    }
                    Err(e) => return Err(Stop::Write(e.into())),
                }
            }
            at += chunk;
        }
        Ok(())
    }

    /// Reads the replies owed to the oldest `batches` batches, and forgets the batches that
    /// are answered whole. Returns how many replies it read.
    fn read_owed(&mut self, batches: usize) -> Result<u64, ClientError> {
        let mut read = 0;
        for batch in self.owed.iter_mut().take(batches) {
            let left = batch.written - batch.read;
            self.tally.read_batch(&mut self.replies, batch.sent, left)?;
            batch.read += left;
            read += left;
        }
        while self.owed.front().is_some_and(|b| b.read == b.requests) {
            self.owed.pop_front();
        }
        Ok(read)
    }
}

/// A writer sends one connection's batches while a reader takes the replies. A batch is
/// announced to the reader before its first byte is written, so the reader drains replies
/// while a batch of any size is still being written.
fn drive_with_reader(stream: TcpStream, mut plan: Plan, pipeline: u64) -> Outcome {
    let mut replies = match stream.try_clone() {
        Ok(clone) => ReplyReader::new(clone),
        Err(e) => return (Tally::default(), Some(e.into())),
    };
    let mut out = Vec::new();
    let (sent_tx, sent_rx) = mpsc::sync_channel::<(Instant, u64)>(IN_FLIGHT);
    let (credit_tx, credit_rx) = mpsc::sync_channel::<()>(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        let _ = credit_tx.send(());
    }
    let shared = &stream;
    thread::scope(|scope| {
        let reader = move || -> Outcome {
            let mut tally = Tally::default();
            for (sent, count) in sent_rx {
                if let Err(e) = tally.read_batch(&mut replies, sent, count) {
                    // Unblock a writer stuck on a server that stopped reading.
                    let _ = shared.shutdown(std::net::Shutdown::Both);
                    return (tally, Some(e));
                }
                // The writer may have finished; a closed credit channel is fine.
                let _ = credit_tx.send(());
            }
            (tally, None)
        };
        let reader = match thread::Builder::new().spawn_scoped(scope, reader) {
            Ok(reader) => reader,
            Err(e) => return (Tally::default(), Some(e.into())),
        };
        let written: Result<(), ClientError> = (|| {
            for batch in batches(&plan, pipeline) {
                if credit_rx.recv().is_err() {
                    break; // the reader failed; it reports why
                }
                if sent_tx.send((Instant::now(), batch.1)).is_err() {
                    break;
                }
                write_batch(&stream, &mut plan, batch, &mut out)?;
            }
            Ok(())
        })();
        drop(sent_tx);
        let (tally, read_error) = reader
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        // The reader's failure says more than the writer's broken pipe that follows from it.
        (tally, read_error.or(written.err()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Request, Selector};

    #[test]
    fn histogram_buckets_round_trip_within_precision() {
        for nanos in [0, 1, 31, 32, 33, 100, 1000, 123_456, 10_000_000_000] {
            let index = Histogram::index(nanos);
            let low = Histogram::lower_bound(index);
            assert!(low <= nanos, "{nanos}: {low}");
            assert!(nanos - low <= nanos / 32 + 1, "{nanos}: {low}");
            assert!(Histogram::lower_bound(index + 1) > nanos);
        }
    }

    #[test]
    fn quantiles_come_from_the_recorded_values() {
        let mut h = Histogram::default();
        for micros in 1..=100 {
            h.record(Duration::from_micros(micros), 1);
        }
        let p50 = h.quantile(0.5).as_micros();
        assert!((48..=50).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).as_micros();
        assert!((96..=99).contains(&p99), "{p99}");
        assert_eq!(h.max(), Duration::from_micros(100));
        assert_eq!(h.count(), 100);
        // A reply read that answers many requests records them all at once.
        h.record(Duration::from_micros(1000), 300);
        assert_eq!(h.count(), 400);
        assert!(h.quantile(0.5).as_micros() >= 960);
        assert_eq!(h.max(), Duration::from_micros(1000));
    }

    #[test]
    fn plans_cover_every_global_request_once() {
        let mut lines = Vec::new();
        for offset in 0..4 {
            let mut plan = Plan::new(3, Workload::Put, offset, 4, 3);
            let mut out = Vec::new();
            plan.encode(0, 3, &mut out);
            lines.extend(String::from_utf8(out).unwrap().lines().map(String::from));
        }
        lines.sort();
        lines.dedup();
        assert_eq!(lines.len(), 12);
        assert!(lines.contains(&format!("put bench.key0 0.0 {BASE_TIMESTAMP}")));
        assert!(lines.contains(&format!("put bench.key2 2.75 {}", BASE_TIMESTAMP + 3)));
    }

    #[test]
    fn no_error_prints_its_source() {
        use std::error::Error;
        let os = || io::Error::other("os says no");
        for e in [
            BenchError::Connect(ClientError::Connect {
                addr: "127.0.0.1:1".into(),
                source: os(),
            }),
            BenchError::Spawn(os()),
            BenchError::Failed {
                answered: 3,
                requests: 10,
                source: ClientError::Io(os()),
            },
        ] {
            let text = e.to_string();
            let source = e.source().expect("a source");
            assert!(!text.contains(&source.to_string()), "{e:?}");
        }
    }

    #[test]
    fn any_number_of_keys_costs_nothing_up_front() {
        let mut plan = Plan::new(10_000_000_000, Workload::Mixed, 9_999_999_999, 1, 1);
        let mut out = Vec::new();
        plan.encode(0, 1, &mut out);
        assert_eq!(out, b"get bench.key9999999999\n");
    }

    #[test]
    fn one_thread_drives_puts_in_batches_of_up_to_1024() {
        assert!(alone_suits(Workload::Put, 1));
        assert!(alone_suits(Workload::Put, 1024));
        assert!(!alone_suits(Workload::Put, 1025));
        assert!(!alone_suits(Workload::Get, 2));
        assert!(!alone_suits(Workload::Mixed, 2));
        // No wrap to a small product.
        assert!(!alone_suits(Workload::Put, 1 << 58));
        assert!(!alone_suits(Workload::Put, u64::MAX));
    }

    /// A server whose replies fill the sockets' buffers stops reading until they are read (its
    /// first hundred replies here are long errors); one thread that only wrote on would wait
    /// for it forever once its own requests filled them too.
    #[test]
    fn one_thread_reads_the_replies_a_stalled_server_waits_to_write() {
        use std::io::{BufRead, BufReader};
        const LONG: u64 = 100;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::with_capacity(8192, stream.try_clone().unwrap());
            let long = format!("error\n{}\n\n", "x".repeat(60_000));
            let (mut answered, mut out) = (0, Vec::new());
            loop {
                let read = reader.fill_buf().unwrap();
                if read.is_empty() {
                    return answered;
                }
                let (len, lines) = (read.len(), read.iter().filter(|&&b| b == b'\n').count());
                reader.consume(len);
                out.clear();
                for _ in 0..lines {
                    answered += 1;
                    let reply = if answered <= LONG {
                        long.as_str()
                    } else {
                        "ok\n\n"
                    };
                    out.extend_from_slice(reply.as_bytes());
                }
                (&stream).write_all(&out).unwrap();
            }
        });
        let stream = client::connect_stream(addr, Some(Duration::from_secs(10))).unwrap();
        // Two batches of 6.6 MB: more than the sending socket's buffer can grow to (4 MiB by
        // default) and the receiving one's, as the server reads little.
        let requests = 400_000;
        let plan = Plan::new(1000, Workload::Put, 0, 1, requests);
        let ((tally, error), stalls) = drive_alone(stream, plan, requests / 2);
        assert!(error.is_none(), "{error:?}");
        assert!(stalls > 0, "the server never stopped taking requests");
        assert_eq!((tally.completed, tally.errors), (requests, LONG));
        assert_eq!(tally.latency.count(), requests);
        assert_eq!(server.join().unwrap(), requests);
    }

    /// A server that takes requests until its buffers are full and never answers: the wait
    /// for the replies owed fails once, after the timeout, and is not waited for again.
    #[test]
    fn one_thread_gives_up_on_a_server_that_never_answers_after_one_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let server = thread::spawn(move || {
            let (_stream, _) = listener.accept().unwrap();
            let _ = done_rx.recv();
        });
        let timeout = Duration::from_secs(2);
        let stream = client::connect_stream(addr, Some(timeout)).unwrap();
        let requests = 400_000;
        let plan = Plan::new(1000, Workload::Put, 0, 1, requests);
        let started = Instant::now();
        let ((tally, error), stalls) = drive_alone(stream, plan, requests / 2);
        let took = started.elapsed();
        done_tx.send(()).unwrap();
        server.join().unwrap();
        assert!(stalls > 0);
        assert!(matches!(error, Some(ClientError::Io(_))), "{error:?}");
        assert_eq!(tally.completed, 0);
        // Two timeouts would be 4 s.
        assert!(took < timeout + timeout * 3 / 4, "{took:?}");
    }

    #[test]
    fn requests_are_the_bytes_the_protocol_encodes() {
        for (keys, workload, offset, stride) in [
            (1, Workload::Put, 0, 1),
            (7, Workload::Mixed, 3, 5),
            (1000, Workload::Put, 1, 2),
            (999, Workload::Get, 0, 8),
        ] {
            let mut plan = Plan::new(keys, workload, offset, stride, 5000);
            let mut out = Vec::new();
            plan.encode(0, 2500, &mut out);
            plan.encode(2500, 2500, &mut out);
            let mut expected = Vec::new();
            for i in 0..5000 {
                let global = i * stride + offset;
                let metric = format!("bench.key{}", global % keys);
                let get =
                    workload == Workload::Get || (workload == Workload::Mixed && global % 10 == 9);
                let request = if get {
                    Request::Get(Selector::Metric(&metric))
                } else {
                    Request::Put {
                        metric: &metric,
                        value: (global % 1000) as f64 * 0.25,
                        timestamp: BASE_TIMESTAMP + (global / keys) as i64,
                    }
                };
                request.encode(&mut expected);
            }
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(expected).unwrap(),
                "{keys} keys, {workload}"
            );
        }
    }
}
