//! Forwarding (`--forward`), proven against a real VictoriaMetrics (Debian's `victoria-metrics`,
//! started here on free loopback ports with its data in a temp dir and queried over its HTTP
//! API) and against a fault-injecting local upstream for what a real one cannot easily show: a
//! reader that stalls, a connection reset mid-write, the in-memory bound and its dropped count.
//!
//! Values are quarters and timestamps whole seconds: VictoriaMetrics stores those exactly (it
//! rounds other values to about 12 significant digits), so every point can be compared exactly.
//! It keeps duplicates, and at-least-once delivery may send some: arrival is checked as a set.

mod common;

use common::{read_reply, TempDir, TestServer, PATIENCE};
use std::collections::{BTreeSet, HashMap};
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long an upstream may take to receive everything once it is up: VictoriaMetrics makes
/// points searchable about a second after they arrive, and the forwarder's reconnect backoff
/// reaches 10 s.
const DELIVERY: Duration = Duration::from_secs(60);
/// The first timestamp the tests use (2023-11-14), well inside `-retentionPeriod=100y`.
const BASE_TS: i64 = 1_700_000_000;

/// The reply to a put.
const OK: &[u8] = b"ok\n\n";
/// A point as the upstream must store it: metric, timestamp in seconds, value's bits.
type Point = (String, i64, u64);

/// `n` points numbered from `first`: 50 metrics under `prefix`, each timestamp used once per
/// metric, values that are exact quarters.
fn points(prefix: &str, first: usize, n: usize) -> Vec<(String, i64, f64)> {
    (first..first + n)
        .map(|i| {
            (
                format!("{prefix}.m{}", i % 50),
                BASE_TS + (i / 50) as i64,
                (i % 4000) as f64 / 4.0,
            )
        })
        .collect()
}

fn as_set(points: &[(String, i64, f64)]) -> BTreeSet<Point> {
    points
        .iter()
        .map(|(m, t, v)| (m.clone(), *t, v.to_bits()))
        .collect()
}

/// Puts `points` pipelined on one connection; returns once every one is acknowledged.
fn put(server: &TestServer, points: &[(String, i64, f64)]) {
    let mut body = Vec::new();
    for (metric, ts, value) in points {
        writeln!(body, "put {metric} {value} {ts}").unwrap();
    }
    let stream = server.connect();
    let mut writer = stream.try_clone().unwrap();
    // Written from a thread of its own: the replies flow back while the requests go out.
    let sender = thread::spawn(move || writer.write_all(&body));
    let mut replies = vec![0u8; OK.len() * points.len()];
    (&stream)
        .read_exact(&mut replies)
        .expect("read the replies");
    sender.join().unwrap().expect("write the puts");
    assert!(
        replies.chunks(OK.len()).all(|r| r == OK),
        "a put was refused: {}",
        String::from_utf8_lossy(&replies)
    );
}

/// The server's `stats` rows, by name.
fn stats(server: &TestServer) -> HashMap<String, f64> {
    let mut stream = server.connect();
    stream.write_all(b"stats\n").unwrap();
    read_reply(&mut stream)
        .lines()
        .map(|row| {
            let mut fields = row.split(' ');
            let name = fields.next().unwrap().to_string();
            let value = fields.next().unwrap().parse().unwrap();
            (name, value)
        })
        .collect()
}

/// Polls `stats` until `done` holds for it; returns the rows, or panics after [`DELIVERY`].
fn wait_for_stats(
    server: &TestServer,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let mut rows = HashMap::new();
    wait_until("stats", || {
        rows = stats(server);
        done(&rows)
    });
    rows
}

/// Polls `done` until it holds; panics naming `what` after [`DELIVERY`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DELIVERY;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not there in {DELIVERY:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Checks the forward figures add up once everything has gone: nothing pending, nothing
/// dropped, at least `puts` sent.
fn assert_drained(server: &TestServer, puts: usize) {
    let rows = wait_for_stats(server, |s| s["metrics.forward_pending"] == 0.0);
    assert_eq!(rows["metrics.forward_dropped_total"], 0.0, "{rows:?}");
    assert!(
        rows["metrics.forward_sent_total"] >= puts as f64,
        "{rows:?}"
    );
}

/// A port that was free a moment ago.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client, enough for VictoriaMetrics' API.

/// `GET target` on `addr`; the status and the body (chunked or not).
fn http_get(addr: SocketAddr, target: &str) -> io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_write_timeout(Some(PATIENCE))?;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let head_end = find(&raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let body = &raw[head_end + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut body: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n").ok_or_else(|| bad("chunk size"))?;
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or_else(|| bad("chunk size"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err(bad("chunk cut short"));
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------------
// VictoriaMetrics, run by the test.

/// Whether `victoria-metrics` can be run: under `CI=true` it must be (.ci/run installs it);
/// elsewhere a missing one skips the test with a note.
fn victoria_metrics_installed() -> bool {
    match Command::new("victoria-metrics")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "victoria-metrics is required in CI (.ci/run installs it): {e}"
            );
            eprintln!("victoria-metrics not found ({e}): this VictoriaMetrics test did not run");
            false
        }
    }
}

/// A VictoriaMetrics single node on loopback, its data in a temp dir; killed on drop.
struct Vm {
    child: Option<Child>,
    dir: TempDir,
    graphite: SocketAddr,
    http: SocketAddr,
}

impl Vm {
    /// Ports chosen, not started: for an upstream that is down when the server starts.
    fn reserved(name: &str) -> Vm {
        Vm {
            child: None,
            dir: TempDir::new(&format!("vm-{name}")),
            graphite: free_addr(),
            http: free_addr(),
        }
    }

    /// Started and healthy, on ports of its own (new ones if the first were taken meanwhile).
    fn running(name: &str) -> Vm {
        let mut vm = Vm::reserved(name);
        for _ in 0..3 {
            match vm.try_start() {
                Ok(()) => return vm,
                Err(e) => eprintln!("victoria-metrics did not start, trying other ports: {e}"),
            }
            vm.graphite = free_addr();
            vm.http = free_addr();
        }
        panic!("victoria-metrics did not start three times");
    }

    /// Starts it on its ports (again), and waits until it says it is healthy.
    fn start(&mut self) {
        let mut last = String::new();
        // Ports it held a moment ago may take a moment to be free again.
        for _ in 0..3 {
            match self.try_start() {
                Ok(()) => return,
                Err(e) => last = e,
            }
        }
        panic!("victoria-metrics did not start on its ports: {last}");
    }

    fn try_start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut child = Command::new("victoria-metrics")
            .arg(format!("-storageDataPath={}", self.dir.file("storage")))
            .arg(format!("-graphiteListenAddr={}", self.graphite))
            .arg(format!("-httpListenAddr={}", self.http))
            .arg("-retentionPeriod=100y")
            .arg("-loggerLevel=WARN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok((200, body)) = http_get(self.http, "/health") {
                if body.starts_with(b"OK") {
                    self.child = Some(child);
                    return Ok(());
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("exited with {status}: {}", self.log_tail()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("not healthy in time: {}", self.log_tail()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it with SIGTERM, as a service manager would, and waits until it is gone.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + PATIENCE;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("victoria-metrics did not stop on SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.0.join("victoria-metrics.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read(self.log_path()).unwrap_or_default();
        String::from_utf8_lossy(&log[log.len().saturating_sub(2000)..]).into_owned()
    }

    /// Every point it holds.
    fn export(&self) -> BTreeSet<Point> {
        let _ = http_get(self.http, "/internal/force_flush");
        // match[]={__name__=~".+"}
        let (status, body) = http_get(
            self.http,
            "/api/v1/export?match%5B%5D=%7B__name__%3D~%22.%2B%22%7D",
        )
        .expect("export");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let mut all = BTreeSet::new();
        for line in String::from_utf8(body).unwrap().lines() {
            let name = between(line, "\"__name__\":\"", "\"");
            let values = between(line, "\"values\":[", "]");
            let stamps = between(line, "\"timestamps\":[", "]");
            for (value, ms) in values.split(',').zip(stamps.split(',')) {
                let value: f64 = value.parse().unwrap();
                let ms: i64 = ms.parse().unwrap();
                all.insert((name.to_string(), ms / 1000, value.to_bits()));
            }
        }
        all
    }

    /// Waits until it holds every point of `expected`; panics naming what is missing.
    fn wait_for(&self, expected: &BTreeSet<Point>) {
        wait_for_delivery(expected, Duration::from_millis(200), || self.export());
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> &'a str {
    let start = text
        .find(open)
        .unwrap_or_else(|| panic!("no {open} in {text}"))
        + open.len();
    let len = text[start..].find(close).unwrap();
    &text[start..start + len]
}

fn with_data(dir: &TempDir, upstreams: &[&Vm]) -> TestServer {
    let data = dir.file("data.txt");
    let mut args = vec!["--data".to_string(), data];
    for vm in upstreams {
        args.push("--forward".into());
        args.push(vm.graphite.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestServer::start_with(&args)
}

// ---------------------------------------------------------------------------------------------
// Against VictoriaMetrics.

#[test]
fn an_upstream_down_at_start_gets_every_point_once_it_is_up() {
    if !victoria_metrics_installed() {
        return;
    }
    let dir = TempDir::new("forward-down-at-start");
    let mut vm = Vm::reserved("down-at-start");
    let server = with_data(&dir, &[&vm]);
    let sent = points("down", 0, 5000);
    put(&server, &sent);
    assert!(server.wait_for_log("forwarding to", 1), "{}", server.logs());
    assert_eq!(stats(&server)["metrics.forward_pending"], 5000.0);
    vm.start();
    vm.wait_for(&as_set(&sent));
    assert_drained(&server, sent.len());
    assert!(server.wait_for_log("resumed", 1), "{}", server.logs());
}

#[test]
fn an_upstream_restarted_while_points_stream_to_it_misses_nothing() {
    if !victoria_metrics_installed() {
        return;
    }
    let dir = TempDir::new("forward-restart");
    let mut vm = Vm::running("restart");
    let server = Arc::new(with_data(&dir, &[&vm]));
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let streamer = {
        let (server, stop, acknowledged) = (server.clone(), stop.clone(), acknowledged.clone());
        thread::spawn(move || {
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                let batch = points("restart", next, 200);
                put(&server, &batch);
                next += batch.len();
                acknowledged.lock().unwrap().extend(batch);
                // A steady stream rather than a flood: the point is what happens mid-stream.
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let sent_total = |s: &HashMap<String, f64>| s["metrics.forward_sent_total"];
    let before = sent_total(&wait_for_stats(&server, |s| sent_total(s) >= 2000.0));
    vm.stop();
    let down = acknowledged.lock().unwrap().len();
    vm.start();
    // Wait until points put after the restart are flowing, then stop.
    wait_for_stats(&server, |s| sent_total(s) >= before + 2000.0);
    let up = acknowledged.lock().unwrap().len();
    wait_until("more puts", || {
        acknowledged.lock().unwrap().len() >= up + 2000
    });
    stop.store(true, Ordering::Relaxed);
    streamer.join().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(down < acknowledged.len());
    vm.wait_for(&as_set(&acknowledged));
    assert_drained(&server, acknowledged.len());
    assert!(server.wait_for_log("interrupted", 1), "{}", server.logs());
}

#[test]
fn a_server_killed_with_unsent_points_sends_them_after_its_restart() {
    if !victoria_metrics_installed() {
        return;
    }
    let dir = TempDir::new("forward-killed");
    let mut vm = Vm::reserved("killed");
    let mut server = with_data(&dir, &[&vm]);
    let sent = points("killed", 0, 3000);
    put(&server, &sent);
    assert_eq!(stats(&server)["metrics.forward_pending"], 3000.0);
    server.kill();
    let server = with_data(&dir, &[&vm]);
    let more = points("killed", 3000, 1000);
    put(&server, &more);
    vm.start();
    vm.wait_for(&as_set(&[sent, more].concat()));
    assert_drained(&server, 4000);
}

#[test]
fn compaction_keeps_what_an_upstream_that_is_behind_has_not_received() {
    if !victoria_metrics_installed() {
        return;
    }
    let dir = TempDir::new("forward-compaction");
    let mut vm = Vm::reserved("compaction");
    let server = with_data(&dir, &[&vm]);
    // 300 points, then each overwritten five times: 1800 lines for 300 live points.
    let mut all = Vec::new();
    for round in 0..6 {
        let mut batch = points("compact", 0, 300);
        for (_, _, value) in &mut batch {
            *value += f64::from(round) * 1000.0;
        }
        put(&server, &batch);
        all.extend(batch);
    }
    assert!(server.wait_for_log("compacted", 1), "{}", server.logs());
    // More after the compaction, into the new file.
    let later = points("compact", 300, 200);
    put(&server, &later);
    all.extend(later);
    vm.start();
    // Every value each point ever had arrives, in order, so the newest one is what a
    // Graphite-style store keeps.
    vm.wait_for(&as_set(&all));
    assert_drained(&server, all.len());
}

#[test]
fn compaction_after_an_upstream_fell_behind_mid_stream_keeps_its_place() {
    if !victoria_metrics_installed() {
        return;
    }
    let dir = TempDir::new("forward-compaction-mid");
    let mut vm = Vm::running("compaction-mid");
    let server = with_data(&dir, &[&vm]);
    // The same 1000 points overwritten round after round, with long names: the file is
    // compacted again and again while the forwarder streams, and more than its 16 MiB resend
    // window goes out, so its saved place moves past the start of the file.
    let prefix = format!("mid.{}", "x".repeat(200));
    let mut all = Vec::new();
    let mut round = 0;
    let mut put_round = |server: &TestServer, all: &mut Vec<_>| {
        let mut batch = points(&prefix, 0, 1000);
        for (_, _, value) in &mut batch {
            *value += f64::from(round) * 1000.0;
        }
        put(server, &batch);
        all.extend(batch);
        round += 1;
    };
    for _ in 0..120 {
        put_round(&server, &mut all);
    }
    let progress = dir.0.join(format!(
        ".data.txt.forward.{}",
        vm.graphite.to_string().replace(':', "_")
    ));
    // Its saved place (an offset in the data file, which compactions rewrite) is past the
    // start of what was put: fewer lines follow it than were put.
    let put_lines = all.len();
    wait_until("a saved place past the start", || {
        let Some(offset) = std::fs::read_to_string(&progress)
            .ok()
            .and_then(|text| text.split(' ').next()?.parse::<usize>().ok())
        else {
            return false;
        };
        let data = std::fs::read(dir.file("data.txt")).unwrap();
        let after = data[offset.min(data.len())..]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        after < put_lines
    });
    vm.stop();
    // More rounds while the upstream is down, until the file is compacted again: behind the
    // forwarder's saved place, over what it has not sent.
    let compactions = server.logs().matches("compacted").count();
    assert!(compactions > 0, "{}", server.logs());
    for _ in 0..300 {
        put_round(&server, &mut all);
        if server.logs().matches("compacted").count() > compactions {
            break;
        }
    }
    assert!(
        server.wait_for_log("compacted", compactions + 1),
        "{}",
        server.logs()
    );
    vm.start();
    vm.wait_for(&as_set(&all));
    assert_drained(&server, all.len());
}

/// Spellings of values that any upstream stores exactly: both spelling tests start with these.
const SPELLINGS: [&str; 8] = ["0.5", "0.50", "007", "-12.25", "1e3", ".5", "5.", "+1.5"];

/// Puts one point per spelling of a value, `spelled.I` at 1700000000 + I; returns the points
/// the server stored.
fn put_spellings(server: &TestServer, spellings: &[&str]) -> BTreeSet<Point> {
    let mut body = String::new();
    let mut expected = BTreeSet::new();
    for (i, text) in spellings.iter().enumerate() {
        let ts = 1_700_000_000 + i as i64;
        body.push_str(&format!("put spelled.{i} {text} {ts}\n"));
        let value: f64 = text.parse().unwrap();
        expected.insert((format!("spelled.{i}"), ts, value.to_bits()));
    }
    let mut stream = server.connect();
    stream.write_all(body.as_bytes()).unwrap();
    let mut replies = vec![0u8; OK.len() * spellings.len()];
    stream.read_exact(&mut replies).unwrap();
    assert!(replies.chunks(OK.len()).all(|r| r == OK));
    expected
}

#[test]
fn values_reach_victoria_metrics_exactly_however_the_client_spelled_them() {
    // However a client spells a value, VictoriaMetrics must store the double the server stored.
    // (It keeps about 15 significant digits and no negative zero, so values past that are
    // checked against the fake upstream below.)
    if !victoria_metrics_installed() {
        return;
    }
    let vm = Vm::running("spellings");
    let upstream = vm.graphite.to_string();
    let server = TestServer::start_with(&["--forward", &upstream]);
    let extra = [
        "2.5E-3",
        "1700000000.25",
        "0.000000000000001234",
        "-98765.4321",
    ];
    vm.wait_for(&put_spellings(&server, &[&SPELLINGS[..], &extra].concat()));
}

#[test]
fn forwarded_lines_read_back_as_the_stored_values_bit_for_bit() {
    let upstream = FakeUpstream::start(vec![Script::Read]);
    let server = forwarding_to(upstream.addr, &[]);
    let extra = [
        "-0",
        "-0.000",
        "0",
        "94.79799999999999",
        "0.1234567890123456",
        "123456789012345678",
        "1.7976931348623157e308",
        "5e-324",
        "-2.2250738585072014e-308",
        "123456789012345",
    ];
    upstream.wait_for(&put_spellings(&server, &[&SPELLINGS[..], &extra].concat()));
    // Every value went as `get` prints it.
    let lines = upstream.lines();
    for line in [
        "spelled.2 7.0 1700000002",
        "spelled.4 1000.0 1700000004",
        "spelled.8 -0.0 1700000008",
    ] {
        assert!(lines.iter().any(|l| l == line), "{line} not in {lines:?}");
    }
}

#[test]
fn two_upstreams_each_receive_every_point() {
    if !victoria_metrics_installed() {
        return;
    }
    let dir = TempDir::new("forward-two");
    let first = Vm::running("first");
    let mut second = Vm::reserved("second");
    let server = with_data(&dir, &[&first, &second]);
    let sent = points("two", 0, 4000);
    put(&server, &sent);
    first.wait_for(&as_set(&sent));
    // The second, down so far, is behind on its own; the first is not held back by it.
    let rows = stats(&server);
    assert_eq!(rows["metrics.forward_pending"], 4000.0, "{rows:?}");
    second.start();
    second.wait_for(&as_set(&sent));
    assert_drained(&server, 2 * sent.len());
}

// ---------------------------------------------------------------------------------------------
// A fault-injecting upstream.

/// What the fake upstream does with one connection.
#[derive(Clone)]
enum Script {
    /// Reads everything.
    Read,
    /// Reads nothing until the flag is set, then everything.
    StallUntil(Arc<AtomicBool>),
    /// Reads this many bytes, then closes with bytes still unread: the kernel resets the
    /// connection.
    ResetAfter(usize),
    /// Reads everything until the first flag is set, then nothing; resets the connection
    /// once the second is set.
    StallThenReset(Arc<AtomicBool>, Arc<AtomicBool>),
}

/// A Graphite plaintext upstream on loopback that runs `scripts[i]` on its i-th connection
/// (the last script for any later ones) and keeps the complete lines each connection read.
struct FakeUpstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeUpstream {
    fn start(scripts: Vec<Script>) -> FakeUpstream {
        FakeUpstream::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), scripts)
    }

    fn start_on(listener: TcpListener, scripts: Vec<Script>) -> FakeUpstream {
        let upstream = FakeUpstream {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            connections: Arc::default(),
            stop: Arc::default(),
        };
        let (received, connections, stop) = (
            upstream.received.clone(),
            upstream.connections.clone(),
            upstream.stop.clone(),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let n = connections.fetch_add(1, Ordering::Relaxed);
                let script = scripts[n.min(scripts.len() - 1)].clone();
                let slot = {
                    let mut received = received.lock().unwrap();
                    received.push(Vec::new());
                    received.len() - 1
                };
                let received = received.clone();
                thread::spawn(move || serve(stream, script, &received, slot));
            }
        });
        upstream
    }

    /// Every complete line received, over all connections.
    fn lines(&self) -> Vec<String> {
        let received = self.received.lock().unwrap();
        let mut lines = Vec::new();
        for bytes in received.iter() {
            let text = String::from_utf8_lossy(bytes);
            // A connection cut mid-line leaves a partial last line: not received.
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            lines.extend(complete.lines().map(str::to_string));
        }
        lines
    }

    /// Waits until the lines received, as a set, hold every point in `expected`.
    fn wait_for(&self, expected: &BTreeSet<Point>) {
        wait_for_delivery(expected, Duration::from_millis(20), || {
            parse_lines(&self.lines())
        });
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut stream: TcpStream, script: Script, received: &Mutex<Vec<Vec<u8>>>, slot: usize) {
    stream.set_read_timeout(Some(DELIVERY)).unwrap();
    let keep = |bytes: &[u8]| received.lock().unwrap()[slot].extend_from_slice(bytes);
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0;
    let wait_for = |flag: &AtomicBool| {
        let deadline = Instant::now() + DELIVERY;
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    };
    match &script {
        Script::Read => {}
        Script::StallUntil(go) => wait_for(go),
        Script::ResetAfter(bytes) => {
            while read < *bytes {
                let want = buf.len().min(bytes - read);
                match stream.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        keep(&buf[..n]);
                        read += n;
                    }
                }
            }
            // Closing with unread bytes makes the kernel send a reset: wait for some.
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            let _ = stream.peek(&mut buf[..1]);
            return;
        }
        Script::StallThenReset(stall, reset) => {
            // Short reads, so the stall takes effect within moments of being asked for.
            stream
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            while !stall.load(Ordering::Relaxed) {
                match stream.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => keep(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
            wait_for(reset);
            let _ = stream.peek(&mut buf[..1]);
            return;
        }
    }
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            Ok(n) => keep(&buf[..n]),
        }
    }
}

/// Point lines as points.
fn parse_lines(lines: &[String]) -> BTreeSet<Point> {
    lines
        .iter()
        .map(|line| {
            let mut fields = line.split(' ');
            let metric = fields.next().unwrap().to_string();
            let value: f64 = fields.next().unwrap().parse().unwrap();
            let ts: i64 = fields.next().unwrap().parse().unwrap();
            (metric, ts, value.to_bits())
        })
        .collect()
}

fn forwarding_to(upstream: SocketAddr, extra: &[&str]) -> TestServer {
    let upstream = upstream.to_string();
    let mut args = vec!["--forward", &upstream];
    args.extend_from_slice(extra);
    TestServer::start_with(&args)
}

#[test]
fn puts_are_acknowledged_while_the_upstream_stalls() {
    let go = Arc::new(AtomicBool::new(false));
    let upstream = FakeUpstream::start(vec![Script::StallUntil(go.clone()), Script::Read]);
    let server = forwarding_to(upstream.addr, &[]);
    // About 25 MB of lines: more than the socket buffers of both sides hold, so the forwarder
    // is blocked in a write while these are put.
    let mut sent = Vec::new();
    for chunk in 0..20 {
        let batch = points(
            "stall.a.metric.name.long.enough.to.fill.buffers.fast",
            chunk * 20_000,
            20_000,
        );
        put(&server, &batch);
        sent.extend(batch);
    }
    let rows = stats(&server);
    assert!(rows["metrics.forward_pending"] > 0.0, "{rows:?}");
    // Everything was acknowledged, and the stalled upstream has read nothing.
    assert!(upstream.lines().is_empty());
    go.store(true, Ordering::Relaxed);
    upstream.wait_for(&as_set(&sent));
    assert_drained(&server, sent.len());
}

#[test]
fn a_connection_reset_mid_write_is_resent_after_the_reconnect() {
    for data in [false, true] {
        let dir = TempDir::new("forward-reset");
        let upstream = FakeUpstream::start(vec![Script::ResetAfter(100_000), Script::Read]);
        let file = dir.file("data.txt");
        let extra: &[&str] = if data { &["--data", &file] } else { &[] };
        let server = forwarding_to(upstream.addr, extra);
        let sent = points("reset", 0, 20_000);
        put(&server, &sent);
        // The reset is noticed at the next write.
        let last = points("reset", 20_000, 1);
        wait_for_stats(&server, |s| s["metrics.forward_pending"] == 0.0);
        put(&server, &last);
        upstream.wait_for(&as_set(&[sent, last].concat()));
        assert!(upstream.connections.load(Ordering::Relaxed) >= 2);
        assert!(server.wait_for_log("interrupted", 1), "{}", server.logs());
        assert_drained(&server, 20_001);
    }
}

#[test]
fn points_an_upstream_never_read_are_resent_even_after_a_long_stall() {
    // The upstream reads, then stops reading for longer than the resend window while the
    // connection stays open and writes still go through at once (into socket buffers with
    // room), then resets it. What it never read must be sent again.
    let (stall, reset) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let upstream = FakeUpstream::start(vec![
        Script::StallThenReset(stall.clone(), reset.clone()),
        Script::Read,
    ]);
    let server = forwarding_to(upstream.addr, &[]);
    let mut sent = points("long", 0, 1000);
    put(&server, &sent);
    upstream.wait_for(&as_set(&sent));
    stall.store(true, Ordering::Relaxed);
    // A point every 100 ms for longer than the forwarder's 5 s resend window: the pacing is
    // the test's subject, not a wait for readiness.
    let started = Instant::now();
    let mut next = sent.len();
    while started.elapsed() < Duration::from_millis(6500) {
        let point = points("long", next, 1);
        put(&server, &point);
        sent.extend(point);
        next += 1;
        thread::sleep(Duration::from_millis(100));
    }
    reset.store(true, Ordering::Relaxed);
    // The reset is noticed at the next write; keep putting until the upstream reconnects.
    let deadline = Instant::now() + PATIENCE;
    while upstream.connections.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "no reconnect");
        let point = points("long", next, 1);
        put(&server, &point);
        sent.extend(point);
        next += 1;
        thread::sleep(Duration::from_millis(20));
    }
    upstream.wait_for(&as_set(&sent));
    assert_drained(&server, sent.len());
}

#[test]
fn without_a_data_file_a_full_queue_drops_the_oldest_points_and_counts_them() {
    let listener_addr = free_addr();
    let server = forwarding_to(listener_addr, &["--forward-buffer", "100"]);
    // 250 points pipelined, while the upstream is down: the 150 oldest do not fit.
    let sent = points("bound", 0, 250);
    put(&server, &sent);
    let rows = stats(&server);
    assert_eq!(rows["metrics.forward_dropped_total"], 150.0, "{rows:?}");
    assert_eq!(rows["metrics.forward_pending"], 100.0, "{rows:?}");
    assert_eq!(rows["metrics.forward_sent_total"], 0.0, "{rows:?}");
    assert!(server.wait_for_log("dropped", 1), "{}", server.logs());
    let listener = TcpListener::bind(listener_addr).expect("the upstream's port is free again");
    let upstream = FakeUpstream::start_on(listener, vec![Script::Read]);
    let rows = wait_for_stats(&server, |s| s["metrics.forward_pending"] == 0.0);
    assert_eq!(rows["metrics.forward_sent_total"], 100.0, "{rows:?}");
    assert_eq!(rows["metrics.forward_dropped_total"], 150.0, "{rows:?}");
    upstream.wait_for(&as_set(&sent[150..]));
    // Exactly the newest: nothing older, nothing twice.
    let mut lines = upstream.lines();
    assert_eq!(lines.len(), 100, "{lines:?}");
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 100);
    assert_eq!(parse_lines(&lines), as_set(&sent[150..]));
}

#[test]
fn puts_the_memory_limit_refuses_are_not_forwarded() {
    let upstream = FakeUpstream::start(vec![Script::Read]);
    let server = forwarding_to(upstream.addr, &["--max-memory", "300K"]);
    // New metrics until the limit refuses them, each followed by an overwrite of the first
    // one's point, which is always taken: accepted and refused puts interleave in one batch.
    let mut tried = Vec::new();
    for i in 0..5000 {
        tried.push((format!("full.m{i}"), BASE_TS, 1.0));
        tried.push(("full.m0".to_string(), BASE_TS, i as f64 / 4.0));
    }
    let mut body = Vec::new();
    for (metric, ts, value) in &tried {
        writeln!(body, "put {metric} {value} {ts}").unwrap();
    }
    let stream = server.connect();
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || writer.write_all(&body));
    let mut replies = io::BufReader::new(&stream);
    let mut accepted = Vec::new();
    for point in &tried {
        let mut reply = String::new();
        while !reply.ends_with("\n\n") {
            replies.read_line(&mut reply).expect("read a reply");
        }
        match reply.as_str() {
            "ok\n\n" => accepted.push(point.clone()),
            "error\nmemory limit reached\n\n" => {}
            other => panic!("unexpected reply {other:?}"),
        }
    }
    sender.join().unwrap().expect("write the puts");
    let new_metrics = accepted
        .iter()
        .filter(|(m, _, v)| m != "full.m0" || *v == 1.0);
    let new_metrics = new_metrics.count();
    assert!(
        new_metrics > 100 && new_metrics < 5000,
        "{new_metrics} new metrics taken: the limit should refuse some"
    );
    upstream.wait_for(&as_set(&accepted));
    let rows = wait_for_stats(&server, |s| s["metrics.forward_pending"] == 0.0);
    assert_eq!(rows["metrics.forward_sent_total"], accepted.len() as f64);
    // Exactly what was acknowledged, in the order it was.
    let lines = upstream.lines();
    let want: Vec<String> = accepted
        .iter()
        .map(|(m, t, v)| {
            let mut line = Vec::new();
            metrics::protocol::write_point(&mut line, m, *v, *t);
            String::from_utf8(line).unwrap().trim_end().to_string()
        })
        .collect();
    assert_eq!(lines, want);
}

/// Polls what an upstream holds, every `poll`, until it holds every expected point; fails
/// after [`DELIVERY`] naming a few that are missing.
fn wait_for_delivery(
    expected: &BTreeSet<Point>,
    poll: Duration,
    held: impl Fn() -> BTreeSet<Point>,
) {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let held = held();
        let missing: Vec<_> = expected.difference(&held).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} points missing upstream, e.g. {:?}",
            missing.len(),
            expected.len(),
            &missing[..missing.len().min(5)]
        );
        thread::sleep(poll);
    }
}
