//! `metrics put -`: bulk loading from stdin, dump and restore, per-line rejections.

mod common;

use common::TestServer;
use predicates::prelude::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;

#[test]
fn put_dash_stores_every_line_and_prints_nothing() {
    let server = TestServer::start();
    server
        .cli()
        .args(["put", "-"])
        .write_stdin(
            "palm.cpu 0.5 1150864247\n\neardrum.cpu\t3 1150864250\r\npalm.cpu 1e3 1150864248\n",
        )
        .assert()
        .success()
        .stdout("")
        .stderr("");
    assert_eq!(
        server.dump(),
        "eardrum.cpu 3.0 1150864250\npalm.cpu 0.5 1150864247\npalm.cpu 1000.0 1150864248\n"
    );
}

#[test]
fn lines_without_a_timestamp_are_stored_now() {
    let server = TestServer::start();
    let before = metrics::defaults::now();
    server
        .cli()
        .args(["put", "-"])
        .write_stdin("now.metric 1\n")
        .assert()
        .success();
    let dump = server.dump();
    let timestamp: i64 = dump.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        (before..=metrics::defaults::now()).contains(&timestamp),
        "{dump}"
    );
}

#[test]
fn rejected_lines_are_reported_by_number_and_the_rest_are_stored() {
    let server = TestServer::start();
    server
        .cli()
        .args(["put", "-"])
        .write_stdin(
            "good 1 1\nbad x 2\ngood 3 3\nonly-a-name\n* 1 1\ngood 4 4.5\ngood nan 5\ngood 6 6\n",
        )
        .assert()
        .code(1)
        .stdout("")
        .stderr(
            "metrics: line 2: value is not a number: 'x'\n\
             metrics: line 4: expected 'metric value [timestamp]', got 1 fields\n\
             metrics: line 5: metric name '*' is reserved\n\
             metrics: line 6: timestamp is not a whole number of seconds: '4.5'\n\
             metrics: line 7: value is not finite: 'nan'\n",
        );
    assert_eq!(server.dump(), "good 1.0 1\ngood 3.0 3\ngood 6.0 6\n");
}

#[test]
fn a_server_refusal_names_the_line_and_keeps_what_was_acknowledged() {
    let server = TestServer::start_with(&["--max-line-bytes", "40"]);
    let long_name = "m".repeat(60);
    server
        .cli()
        .args(["put", "-"])
        .write_stdin(format!("a 1 1\nb 2 2\n{long_name} 3 3\nc 4 4\n"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "metrics: line 3: server replied with an error: line too long\n",
        ))
        .stderr(predicate::str::contains(
            "metrics: stopped after at least 2 lines were stored: ",
        ));
    assert_eq!(server.dump(), "a 1.0 1\nb 2.0 2\n");
}

#[test]
fn a_dump_restores_into_a_fresh_server_exactly() {
    let source = TestServer::start();
    let mut lines = String::new();
    for i in 0..50_000u32 {
        let value = f64::from(i) * 0.37 - 1e4;
        let mut text = Vec::new();
        metrics::protocol::write_float(&mut text, value);
        lines.push_str(&format!(
            "m.{} {} {}\n",
            i % 97,
            String::from_utf8(text).unwrap(),
            1_000_000 + i64::from(i / 97)
        ));
    }
    lines.push_str("tiny 1e-300 -5\nhuge 1.7976931348623157e+308 9\nneg.zero -0.0 0\n");
    source
        .cli()
        .args(["put", "-"])
        .write_stdin(lines)
        .assert()
        .success();
    let dump = source
        .cli()
        .args(["get", "*"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(String::from_utf8_lossy(&dump).lines().count(), 50_003);

    let restored = TestServer::start();
    restored
        .cli()
        .args(["put", "-"])
        .write_stdin(dump.clone())
        .assert()
        .success()
        .stderr("");
    let again = restored
        .cli()
        .args(["get", "*"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(again == dump, "restored data differs from the dump");
}

#[test]
fn an_unreachable_server_exits_1() {
    let addr = common::dead_addr();
    common::metrics()
        .args(["put", "--addr", &addr.to_string(), "-"])
        .write_stdin("a 1 1\n")
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with("metrics: cannot connect to"));
}

#[test]
fn a_line_over_the_limit_is_rejected_alone_and_loading_continues() {
    let server = TestServer::start_with(&["--max-line-bytes", "40"]);
    let long_name = "m".repeat(60);
    // Line 3 is too long as input; line 4 is short but its request would be too long
    // (`put` and the timestamp it gets); line 5 fits exactly.
    let exact = format!("{} 1.0 9", "e".repeat(40 - "put  1.0 9".len()));
    server
        .cli()
        .args(["put", "--max-line-bytes", "40", "-"])
        .write_stdin(format!(
            "a 1 1\nb 2 2\n{long_name} 3 3\n{} 4\n{exact}\nc 5 5\n",
            "n".repeat(30)
        ))
        .assert()
        .code(1)
        .stderr(format!(
            "metrics: line 3: line too long: {} bytes, the limit is 40 (--max-line-bytes)\n\
             metrics: line 4: line too long: {} bytes, the limit is 40 (--max-line-bytes)\n",
            long_name.len() + " 3 3".len(),
            "put ".len() + 30 + " 4.0 ".len() + 10,
        ));
    assert_eq!(
        server.dump(),
        format!("a 1.0 1\nb 2.0 2\nc 5.0 5\n{exact}\n")
    );
}

#[test]
fn a_dump_at_the_line_limit_restores_exactly() {
    let source = TestServer::start_with(&["--max-line-bytes", "40"]);
    let mut wire = source.connect();
    let name = "f".repeat(40 - "put  0.5 1".len());
    common::exchange(
        &mut wire,
        format!("put {name} 0.5 1\n").as_bytes(),
        b"ok\n\n",
    );
    let dump = source.dump();
    let restored = TestServer::start_with(&["--max-line-bytes", "40"]);
    restored
        .cli()
        .args(["put", "--max-line-bytes", "40", "-"])
        .write_stdin(dump.clone())
        .assert()
        .success()
        .stderr("");
    assert_eq!(restored.dump(), dump);
}

#[test]
fn a_huge_input_line_is_skipped_without_holding_it() {
    let server = TestServer::start();
    let mut child = spawn_put_stdin(&server.addr_string());
    let mut stdin = child.stdin.take().unwrap();
    const HUGE: usize = 128 << 20;
    stdin.write_all(b"a 1 1\n").unwrap();
    let block = vec![b'x'; 1 << 20];
    for _ in 0..HUGE / block.len() {
        stdin.write_all(&block).unwrap();
    }
    // All but a pipe's worth of the line has been read, and the line has not ended: now the
    // client would hold it all if it held lines whole.
    let peak = common::peak_rss_kib(child.id());
    stdin.write_all(b"\nb 2 2\n").unwrap();
    drop(stdin);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert_eq!(
        stderr,
        format!(
            "metrics: line 2: line too long: {HUGE} bytes, the limit is 65536 (--max-line-bytes)\n"
        )
    );
    assert_eq!(server.dump(), "a 1.0 1\nb 2.0 2\n");
    println!(
        "put - peak RSS while reading a {} MiB line: {peak} KiB",
        HUGE >> 20
    );
    assert!(peak < 32 * 1024, "peak RSS {peak} KiB");
}

#[test]
fn a_server_that_never_acknowledges_sees_a_bounded_window() {
    let (stalled_tx, stalled_rx) = mpsc::channel();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let (addr, server) = common::scripted_server(move |mut stream| {
        // Read fast, answer nothing; the client stalled once nothing comes for a second.
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        let (mut bytes, mut lines) = (0u64, 0u64);
        let mut buf = vec![0; 256 * 1024];
        while bytes < 256 << 20 {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    bytes += n as u64;
                    lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
                }
            }
        }
        stalled_tx.send(lines).unwrap();
        let _ = close_rx.recv();
    });
    let mut child = spawn_put_stdin(&addr.to_string());
    let mut stdin = child.stdin.take().unwrap();
    // Endless input, until the client goes away.
    let feeder = std::thread::spawn(move || {
        let block = b"m 1 1\n".repeat(10_000);
        while stdin.write_all(&block).is_ok() {}
    });
    let lines = stalled_rx.recv().unwrap();
    let peak = common::peak_rss_kib(child.id());
    close_tx.send(()).unwrap();
    server.join().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1));
    feeder.join().unwrap();
    println!("unacknowledged lines: {lines}, put - peak RSS {peak} KiB");
    assert!(lines <= 65_536, "{lines} lines in flight");
    assert!(peak < 32 * 1024, "peak RSS {peak} KiB");
    assert!(
        stderr.starts_with("metrics: stopped after at least 0 lines were stored: "),
        "{stderr}"
    );
}

#[test]
fn an_error_reply_that_never_ends_stops_the_load() {
    let (addr, server) = common::scripted_server(|stream| {
        common::read_request(&stream);
        common::stream_forever(&stream, b"ok\n\nerror\n", b"x\n")
    });
    common::metrics()
        .args(["put", "--addr", &addr.to_string(), "-"])
        .write_stdin("a 1 1\nb 2 2\n")
        .assert()
        .code(1)
        .stderr(
            "metrics: stopped after at least 1 line was stored: malformed reply from the \
             server: an error message is longer than 65536 bytes\n",
        );
    server.join().unwrap();
}

/// `metrics put --addr ADDR -` with its stdin and stderr piped, for tests that feed it slowly.
fn spawn_put_stdin(addr: &str) -> std::process::Child {
    Command::new(common::binary())
        .args(["put", "--addr", addr, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}
