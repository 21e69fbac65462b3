//! `metrics put -`: bulk loading from stdin, dump and restore, per-line rejections.

mod common;

use assert_cmd::Command;
use common::TestServer;
use predicates::prelude::*;

fn metrics(server: &TestServer) -> Command {
    let mut cmd = Command::cargo_bin("metrics").unwrap();
    cmd.env("METRICS_ADDR", server.addr_string())
        .timeout(common::PATIENCE);
    cmd
}

#[test]
fn put_dash_stores_every_line_and_prints_nothing() {
    let server = TestServer::start();
    metrics(&server)
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
    metrics(&server)
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
    metrics(&server)
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
    metrics(&server)
        .args(["put", "-"])
        .write_stdin(format!("a 1 1\nb 2 2\n{long_name} 3 3\nc 4 4\n"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "metrics: line 3: server replied with an error: line too long\n",
        ))
        .stderr(predicate::str::contains("(after 2 lines were stored)"));
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
    metrics(&source)
        .args(["put", "-"])
        .write_stdin(lines)
        .assert()
        .success();
    let dump = metrics(&source)
        .args(["get", "*"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(String::from_utf8_lossy(&dump).lines().count(), 50_003);

    let restored = TestServer::start();
    metrics(&restored)
        .args(["put", "-"])
        .write_stdin(dump.clone())
        .assert()
        .success()
        .stderr("");
    let again = metrics(&restored)
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
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    Command::cargo_bin("metrics")
        .unwrap()
        .args(["put", "--addr", &addr.to_string(), "-"])
        .write_stdin("a 1 1\n")
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with("metrics: cannot connect to"));
}
