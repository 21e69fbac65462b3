//! Test fixture: runs the real `metrics` binary on port 0, reads its `listening on` line, and
//! kills it on drop. Also what several test files share: the `metrics` command builder, a dead
//! address, the raw-socket helpers and scripted fake servers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before the test fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_metrics")
}

/// `metrics` as an `assert_cmd` command: `METRICS_ADDR` unset, killed after [`PATIENCE`].
pub fn metrics() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(binary());
    cmd.env_remove("METRICS_ADDR").timeout(PATIENCE);
    cmd
}

/// An address nothing listens on: a port that was free a moment ago.
pub fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A process's peak resident memory so far, from /proc (Linux); the process must be running.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

/// Everything the server wrote to stderr so far, and a signal for each new piece.
#[derive(Default)]
struct Log {
    text: Mutex<String>,
    grew: Condvar,
}

pub struct TestServer {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Log>,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(&[])
    }

    /// `metrics server 0 ARGS...`, once it has said where it listens.
    pub fn start_with(args: &[&str]) -> TestServer {
        let mut command = Command::new(binary());
        command.arg("server").arg("0").args(args);
        TestServer::start_command(command)
    }

    /// Runs `command`, which must start the server on port 0 (perhaps through a shell).
    pub fn start_command(mut command: Command) -> TestServer {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start metrics server");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Log::default());
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr);
            let mut line = String::new();
            while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                sink.text.lock().unwrap().push_str(&line);
                sink.grew.notify_all();
                line.clear();
            }
        });
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("read the listening line");
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .parse()
            .expect("listening address");
        TestServer { child, addr, log }
    }

    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// A raw connection whose reads give up after [`PATIENCE`].
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        stream
    }

    pub fn client(&self) -> metrics::Client {
        metrics::Client::connect(self.addr, Some(PATIENCE)).expect("client connects")
    }

    pub fn logs(&self) -> String {
        self.log.text.lock().unwrap().clone()
    }

    /// Waits until stderr holds `count` lines containing `needle`; false after [`PATIENCE`].
    pub fn wait_for_log(&self, needle: &str, count: usize) -> bool {
        let deadline = Instant::now() + PATIENCE;
        let mut text = self.log.text.lock().unwrap();
        loop {
            if text.matches(needle).count() >= count {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            text = self.log.grew.wait_timeout(text, left).unwrap().0;
        }
    }

    /// The server's peak resident memory so far, from /proc (Linux).
    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.child.id())
    }

    /// `metrics` as an `assert_cmd` command whose `METRICS_ADDR` is this server.
    pub fn cli(&self) -> assert_cmd::Command {
        let mut cmd = metrics();
        cmd.env("METRICS_ADDR", self.addr_string());
        cmd
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to be gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill the server");
        self.child.wait().expect("wait for the server");
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Every point as the server's `get *` reply body (`metric value timestamp` lines).
    pub fn dump(&self) -> String {
        let mut stream = self.connect();
        stream.write_all(b"get *\n").unwrap();
        read_reply(&mut stream)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` and checks that exactly `expected` comes back.
pub fn exchange(stream: &mut TcpStream, request: &[u8], expected: &[u8]) {
    stream.write_all(request).unwrap();
    expect(stream, expected);
}

/// Reads exactly `expected.len()` bytes and compares them.
pub fn expect(stream: &mut TcpStream, expected: &[u8]) {
    let mut got = vec![0; expected.len()];
    stream
        .read_exact(&mut got)
        .unwrap_or_else(|e| panic!("reading {:?}: {e}", String::from_utf8_lossy(expected)));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
}

/// Reads one `ok` reply and returns its body, the point lines; panics on anything else.
pub fn read_reply(stream: &mut TcpStream) -> String {
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert_eq!(status, "ok\n");
    let mut body = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "reply cut short");
        if line == "\n" {
            assert!(reader.buffer().is_empty(), "bytes after the reply");
            return body;
        }
        body.push_str(&line);
    }
}

/// Reads until the server closes the connection; returns what it sent.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("waiting for the server to close: {e}"),
    }
    got
}

/// A small deterministic generator, so load and fuzz tests replay exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("metrics-test-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A one-shot server: reads one request line, answers `reply`, closes. Returns what it read.
pub fn fake_server(reply: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut reader = BufReader::new(&stream);
        let mut request = String::new();
        let _ = reader.read_line(&mut request);
        if !request.is_empty() {
            let _ = (&stream).write_all(reply);
        }
        request
    });
    (addr, handle)
}

/// A scripted fake server for the failures a real one does not produce: accepts one
/// connection on 127.0.0.1 and hands it to `script`, with reads and writes bounded by
/// [`PATIENCE`]. Dropping the connection when the script returns closes it.
pub fn scripted_server<T: Send + 'static>(
    script: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (SocketAddr, std::thread::JoinHandle<T>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        script(stream)
    });
    (addr, handle)
}

/// Reads one request line from a scripted server's connection.
pub fn read_request(stream: &TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = (&*stream).read(&mut byte) {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Writes `head`, then `tail` over and over until the peer goes away or [`PATIENCE`] runs
/// out; returns how many bytes went out. A hostile server's reply that never ends.
pub fn stream_forever(mut stream: &TcpStream, head: &[u8], tail: &[u8]) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    let mut sent = 0;
    if stream.write_all(head).is_err() {
        return 0;
    }
    let block = tail.repeat((64 * 1024 / tail.len()).max(1));
    while Instant::now() < deadline && stream.write_all(&block).is_ok() {
        sent += block.len() as u64;
    }
    sent
}
