//! `metrics bench`: a load generator in the spirit of `redis-benchmark`.
//!
//! Each connection sends its share of the requests in batches of `pipeline` requests. Without
//! pipelining each connection has one request in flight, and each thread drives a group of four
//! connections. With pipelining a writer thread formats and sends a connection's batches
//! while a reader thread takes the replies, with up to two batches in flight, so the generator
//! keeps the server busy instead of waiting on itself.
//! Latency is measured per request, from the write of its batch to the arrival of its reply.

use crate::client::{self, ClientError, ReplyReader};
use crate::protocol::{Reply, Request, Selector};
use std::fmt;
use std::io::Write;
use std::net::TcpStream;
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The first timestamp the benchmark writes; later points count up from it per key.
pub const BASE_TIMESTAMP: i64 = 1_700_000_000;

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

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::index(nanos)] += 1;
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
struct Plan<'a> {
    names: &'a [String],
    workload: Workload,
    offset: u64,
    stride: u64,
    count: u64,
}

impl Plan<'_> {
    /// Appends requests `from..from + count` of this connection.
    fn encode(&self, from: u64, count: u64, out: &mut Vec<u8>) {
        let keys = self.names.len() as u64;
        for i in from..from + count {
            let global = i * self.stride + self.offset;
            let metric = self.names[(global % keys) as usize].as_str();
            let get = match self.workload {
                Workload::Put => false,
                Workload::Get => true,
                Workload::Mixed => global % 10 == 9,
            };
            let request = if get {
                Request::Get(Selector::Metric(metric))
            } else {
                Request::Put {
                    metric,
                    value: (global % 1000) as f64 * 0.25,
                    timestamp: BASE_TIMESTAMP + (global / keys) as i64,
                }
            };
            request.encode(out);
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
        for _ in 0..count {
            match replies.read_reply(&mut skip_points)? {
                Some(Reply::Ok { .. }) => {}
                _ => self.errors += 1,
            }
            if replies.reads() != reads {
                reads = replies.reads();
                latency = sent.elapsed();
            }
            self.completed += 1;
            self.latency.record(latency);
        }
        Ok(())
    }
}

/// Runs the benchmark and reports what it measured.
///
/// # Errors
/// [`ClientError`] when a connection cannot be made or fails mid-run.
pub fn run(config: &BenchConfig) -> Result<Report, ClientError> {
    let names: Vec<String> = (0..config.keys.max(1))
        .map(|k| format!("bench.key{k}"))
        .collect();
    let connections = config.connections.max(1);
    let streams = (0..connections)
        .map(|_| client::connect_stream(config.addr.as_str(), config.timeout))
        .collect::<Result<Vec<_>, _>>()?;
    let n = connections as u64;
    let pipeline = config.pipeline.max(1) as u64;
    let work: Vec<(TcpStream, Plan)> = streams
        .into_iter()
        .zip(0..n)
        .map(|(stream, c)| {
            let plan = Plan {
                names: &names,
                workload: config.workload,
                offset: c,
                stride: n,
                count: config.requests / n + u64::from(c < config.requests % n),
            };
            (stream, plan)
        })
        .collect();
    let started = Instant::now();
    let tallies: Vec<Result<Tally, ClientError>> = thread::scope(|scope| {
        let handles: Vec<_> = if pipeline == 1 {
            let threads = connections.div_ceil(CONNECTIONS_PER_THREAD);
            let mut groups: Vec<Vec<(TcpStream, Plan)>> =
                (0..threads).map(|_| Vec::new()).collect();
            for (i, conn) in work.into_iter().enumerate() {
                groups[i % threads].push(conn);
            }
            groups
                .into_iter()
                .filter(|g| !g.is_empty())
                .map(|group| scope.spawn(move || drive_group(group)))
                .collect()
        } else {
            work.into_iter()
                .map(|(stream, plan)| scope.spawn(move || drive(stream, &plan, pipeline)))
                .collect()
        };
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let elapsed = started.elapsed();
    let mut report = Report {
        config: config.clone(),
        elapsed,
        completed: 0,
        errors: 0,
        latency: Histogram::default(),
    };
    for tally in tallies {
        let tally = tally?;
        report.completed += tally.completed;
        report.errors += tally.errors;
        report.latency.merge(&tally.latency);
    }
    Ok(report)
}

/// Connections one unpipelined driver thread keeps busy: measured on two cores, groups of about
/// four beat both one thread per connection (context switches) and one thread per core (a
/// round waits for its slowest reply).
const CONNECTIONS_PER_THREAD: usize = 4;

/// Without pipelining: keeps one request in flight on each of several connections, writing to
/// all of them and then reading each reply.
fn drive_group(group: Vec<(TcpStream, Plan<'_>)>) -> Result<Tally, ClientError> {
    let mut conns = Vec::with_capacity(group.len());
    for (stream, plan) in group {
        let replies = ReplyReader::new(stream.try_clone()?);
        conns.push((stream, replies, plan, Instant::now()));
    }
    let mut tally = Tally::default();
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
    Ok(tally)
}

/// With pipelining: a writer sends one connection's batches while a reader takes the replies.
fn drive(stream: TcpStream, plan: &Plan<'_>, pipeline: u64) -> Result<Tally, ClientError> {
    let mut replies = ReplyReader::new(stream.try_clone()?);
    let mut tally = Tally::default();
    let mut out = Vec::new();
    let batches = (0..plan.count)
        .step_by(pipeline as usize)
        .map(move |from| (from, pipeline.min(plan.count - from)));
    const IN_FLIGHT: usize = 2;
    let (sent_tx, sent_rx) = mpsc::sync_channel::<(Instant, u64)>(IN_FLIGHT);
    let (credit_tx, credit_rx) = mpsc::sync_channel::<()>(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        let _ = credit_tx.send(());
    }
    thread::scope(|scope| {
        let reader = scope.spawn(move || -> Result<Tally, ClientError> {
            for (sent, count) in sent_rx {
                tally.read_batch(&mut replies, sent, count)?;
                // The writer may have finished; a closed credit channel is fine.
                let _ = credit_tx.send(());
            }
            Ok(tally)
        });
        let written: Result<(), ClientError> = (|| {
            for (from, count) in batches {
                if credit_rx.recv().is_err() {
                    break; // the reader failed; it reports why
                }
                out.clear();
                plan.encode(from, count, &mut out);
                let sent = Instant::now();
                (&stream).write_all(&out)?;
                if sent_tx.send((sent, count)).is_err() {
                    break;
                }
            }
            Ok(())
        })();
        drop(sent_tx);
        let read = reader
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        written.and(read)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            h.record(Duration::from_micros(micros));
        }
        let p50 = h.quantile(0.5).as_micros();
        assert!((48..=50).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).as_micros();
        assert!((96..=99).contains(&p99), "{p99}");
        assert_eq!(h.max(), Duration::from_micros(100));
        assert_eq!(h.count(), 100);
    }

    #[test]
    fn plans_cover_every_global_request_once() {
        let names: Vec<String> = (0..3).map(|k| format!("k{k}")).collect();
        let mut lines = Vec::new();
        for offset in 0..4 {
            let plan = Plan {
                names: &names,
                workload: Workload::Put,
                offset,
                stride: 4,
                count: 3,
            };
            let mut out = Vec::new();
            plan.encode(0, 3, &mut out);
            lines.extend(String::from_utf8(out).unwrap().lines().map(String::from));
        }
        lines.sort();
        lines.dedup();
        assert_eq!(lines.len(), 12);
        assert!(lines.contains(&format!("put k0 0.0 {BASE_TIMESTAMP}")));
        assert!(lines.contains(&format!("put k2 2.75 {}", BASE_TIMESTAMP + 3)));
    }
}
