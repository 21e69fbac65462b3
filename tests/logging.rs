//! The server never waits on its stderr: a pipe nobody reads must not stop it serving.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Kills the server on drop, even when an assertion fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn exchange(stream: &mut TcpStream, request: &[u8], replies: usize) -> String {
    stream.write_all(request).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(2).filter(|w| w == b"\n\n").count() < replies {
        let n = stream.read(&mut buf).expect("the server answers");
        assert!(n > 0, "server closed");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

#[test]
fn a_stderr_pipe_nobody_reads_does_not_stop_the_server() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_metrics"))
        .args(["server", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    // Held open and never read: once the pipe's buffer (64 KiB on Linux) is full, every
    // write to it blocks.
    let stderr = child.stderr.take().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let child = Killed(child);
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let bad = format!("{}\n", "x".repeat(100));
    let mut request = b"put m 1 1\n".to_vec();
    for _ in 0..5 {
        request.extend_from_slice(bad.as_bytes());
    }
    request.extend_from_slice(b"get m\n");
    // Each connection causes about 7 log lines of 60-190 bytes. The server logs at most 100
    // lines a second about connections and 100 about bad requests, so five seconds of this
    // write well over the pipe's 64 KiB, and the later connections come after it is full.
    let started = std::time::Instant::now();
    let mut round = 0;
    while round < 300 || started.elapsed() < Duration::from_secs(5) {
        round += 1;
        let mut stream = TcpStream::connect(&addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reply = exchange(&mut stream, &request, 7);
        assert_eq!(
            reply,
            format!(
                "ok\n\n{}ok\nm 1.0 1\n\n",
                "error\nwrong command\n\n".repeat(5)
            ),
            "round {round}"
        );
    }
    let mut client = metrics::Client::connect(&addr, Some(Duration::from_secs(10))).unwrap();
    client.put("after", 2.0, Some(2)).unwrap();
    assert_eq!(client.get("after").unwrap()["after"], vec![(2, 2.0)]);
    // The pipe really was full: once the server is gone, it still holds nearly its 64 KiB
    // (each of its 16 pages less an end too short for the next line).
    let reader = std::thread::spawn(move || {
        let mut stderr = stderr;
        let mut text = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 || text.len() > 70_000 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
        }
        text.len()
    });
    drop(child);
    let logged = reader.join().unwrap();
    assert!(logged > 60_000, "only {logged} bytes were logged");
}
