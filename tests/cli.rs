//! The `metrics` command line: output, exit codes, address selection, help.

mod common;

use assert_cmd::Command;
use common::{metrics, TestServer};
use predicates::prelude::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn client(server: &TestServer) -> Command {
    let mut cmd = metrics();
    cmd.args(["--addr", &server.addr_string()]);
    cmd
}

/// The CLI takes options after the command, so `--addr` goes after `put`/`get`.
fn run(server: &TestServer, args: &[&str]) -> assert_cmd::assert::Assert {
    let mut cmd = metrics();
    cmd.arg(args[0])
        .args(["--addr", &server.addr_string()])
        .args(&args[1..]);
    cmd.assert()
}

#[test]
fn put_then_get_prints_wire_lines() {
    let server = TestServer::start();
    run(&server, &["put", "palm.cpu", "0.5", "1150864247"])
        .success()
        .stdout("")
        .stderr("");
    run(&server, &["put", "palm.cpu", "-2", "1150864248"]).success();
    run(&server, &["put", "eardrum.cpu", "1e16", "1150864250"]).success();
    run(&server, &["get", "palm.cpu"])
        .success()
        .stdout("palm.cpu 0.5 1150864247\npalm.cpu -2.0 1150864248\n")
        .stderr("");
    run(&server, &["get", "*"]).success().stdout(
        "eardrum.cpu 1e+16 1150864250\npalm.cpu 0.5 1150864247\npalm.cpu -2.0 1150864248\n",
    );
    run(&server, &["get", "nothing"]).success().stdout("");
}

#[test]
fn put_without_timestamp_uses_now() {
    let server = TestServer::start();
    let before = metrics::defaults::now();
    run(&server, &["put", "now", "1"]).success();
    let out = run(&server, &["get", "now"])
        .success()
        .get_output()
        .stdout
        .clone();
    let line = String::from_utf8(out).unwrap();
    let timestamp: i64 = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        timestamp >= before && timestamp <= metrics::defaults::now(),
        "{line}"
    );
}

#[test]
fn metrics_addr_environment_variable_selects_the_server() {
    let server = TestServer::start();
    metrics()
        .env("METRICS_ADDR", server.addr_string())
        .args(["put", "env.metric", "3", "3"])
        .assert()
        .success();
    // --addr wins over the environment.
    metrics()
        .env("METRICS_ADDR", "127.0.0.1:1")
        .args(["get", "--addr", &server.addr_string(), "env.metric"])
        .assert()
        .success()
        .stdout("env.metric 3.0 3\n");
}

#[test]
fn unreachable_server_exits_1_with_a_message() {
    let addr = common::dead_addr().to_string();
    metrics()
        .args(["get", "--addr", &addr, "x"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::starts_with(format!(
            "metrics: cannot connect to {addr}: "
        )));
    metrics()
        .env("METRICS_ADDR", &addr)
        .args(["put", "x", "1", "1"])
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with("metrics: cannot connect"));
}

#[test]
fn an_error_reply_exits_1_with_the_server_message() {
    let (addr, fake) = common::fake_server(b"error\ndisk full\n\n");
    let addr = addr.to_string();
    metrics()
        .args(["put", "--addr", &addr, "x", "1", "1"])
        .assert()
        .code(1)
        .stderr("metrics: server replied with an error: disk full\n");
    assert_eq!(fake.join().unwrap(), "put x 1.0 1\n");
}

#[test]
fn a_malformed_reply_exits_1() {
    let (addr, fake) = common::fake_server(b"ok\npalm.cpu 10.5 12 13\n\n");
    let addr = addr.to_string();
    metrics()
        .args(["get", "--addr", &addr, "palm.cpu"])
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with(
            "metrics: malformed reply from the server",
        ));
    fake.join().unwrap();
}

#[test]
fn usage_errors_exit_2_before_connecting() {
    // No server anywhere: a usage error must be decided without trying to connect.
    let cases: &[(&[&str], &str)] = &[
        (&[], "no command given"),
        (&["frobnicate"], "unknown command 'frobnicate'"),
        (&["put", "m"], "wrong number of arguments for 'put'"),
        (
            &["put", "m", "1", "2", "3"],
            "wrong number of arguments for 'put'",
        ),
        (&["put", "m", "abc"], "value is not a number: 'abc'"),
        (&["put", "m", "nan", "1"], "value must be finite: 'nan'"),
        (&["put", "m", "inf"], "value must be finite: 'inf'"),
        (
            &["put", "m", "1", "soon"],
            "timestamp is not a whole number of seconds: 'soon'",
        ),
        (&["get"], "wrong number of arguments for 'get'"),
        (&["get", "--port", "1", "m"], "unknown option '--port'"),
        (&["server", "notaport"], "invalid port 'notaport'"),
    ];
    for (args, message) in cases {
        metrics()
            .env("METRICS_ADDR", "127.0.0.1:1")
            .args(*args)
            .assert()
            .code(2)
            .stdout("")
            .stderr(predicate::str::starts_with(format!(
                "metrics: {message}\nusage: metrics "
            )))
            .stderr(predicate::str::ends_with("\n").and(predicate::str::contains("\n").count(2)));
    }
}

#[test]
fn help_goes_to_stdout_and_exits_0() {
    for args in [&["--help"][..], &["-h"], &["help"]] {
        metrics()
            .args(args)
            .assert()
            .success()
            .stdout(predicate::str::contains("usage: metrics <command>"))
            .stderr("");
    }
    for (args, usage) in [
        (&["put", "--help"][..], "usage: metrics put "),
        (&["help", "put"], "usage: metrics put "),
        (&["get", "--help"], "usage: metrics get "),
        (&["server", "--help"], "usage: metrics server "),
        (&["help", "server"], "--max-connections"),
    ] {
        metrics()
            .args(args)
            .assert()
            .success()
            .stdout(predicate::str::contains(usage));
    }
    metrics()
        .arg("--version")
        .assert()
        .success()
        .stdout(format!("metrics {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_port_in_use_exits_1_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    metrics()
        .args(["server", &port])
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::starts_with(format!(
            "metrics: cannot listen on 127.0.0.1:{port}: "
        )));
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let server = TestServer::start();
    let mut load = server.connect();
    let mut batch = Vec::new();
    for t in 0..100_000 {
        batch.extend_from_slice(format!("put closed.stdout {t} {t}\n").as_bytes());
    }
    load.write_all(&batch).unwrap();
    common::expect(&mut load, &b"ok\n\n".repeat(100_000));
    // `metrics get '*' | head -n 1`: read one line, then close the pipe.
    let mut child = std::process::Command::new(common::binary())
        .args(["get", "--addr", &server.addr_string(), "*"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "closed.stdout 0.0 0\n");
    let output = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn client_options_may_come_before_the_command() {
    let server = TestServer::start();
    client(&server)
        .args(["put", "early", "1", "1"])
        .assert()
        .success();
    metrics()
        .args([
            &format!("--addr={}", server.addr_string()),
            "--timeout",
            "5",
            "get",
            "early",
        ])
        .assert()
        .success()
        .stdout("early 1.0 1\n");
}

#[test]
fn help_usage_and_the_hint_after_an_error_list_the_same_options() {
    // The one-line hint after an error names every command and every option of the command.
    metrics()
        .arg("frobnicate")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "usage: metrics <server|put|get|plot|stats|bench|help> [ARGS...]\n",
        ));
    metrics().args(["help", "frobnicate"]).assert().code(2);
    let hint = metrics()
        .args(["bench", "--bogus"])
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let hint = String::from_utf8(hint).unwrap();
    let help = metrics()
        .args(["help", "bench"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let help = String::from_utf8(help).unwrap();
    for option in [
        "--addr",
        "--timeout",
        "-c",
        "-n",
        "-P",
        "--keys",
        "--workload",
    ] {
        assert!(
            hint.contains(&format!("[{option} ")),
            "hint lacks {option}: {hint}"
        );
        assert!(
            help.contains(&format!("\n  {option} ")) || help.contains(&format!("\n  {option}, ")),
            "help lacks {option}: {help}"
        );
    }
    metrics()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("\n  bench "));
}

#[test]
fn what_can_be_judged_before_connecting_is_a_usage_error() {
    // Nothing listens anywhere: each is refused before any connection is tried.
    let cases: &[&[&str]] = &[
        &["get", "--addr", "127.0.0.1:99999", "m"],
        &["get", "--addr", "::1", "m"],
        &["get", "--addr", "", "m"],
        &["put", "--addr", "localhost", "m", "1"],
        &["put", "--addr", "127.0.0.1:0", "-"],
        &["bench", "--addr", "[::1]"],
        &["get", "--timeout", "1e-12", "m"],
        &["bench", "--timeout", "1e-10"],
        &["put", "--max-line-bytes", "0", "-"],
    ];
    for args in cases {
        metrics()
            .args(*args)
            .assert()
            .code(2)
            .stdout("")
            .stderr(predicate::str::starts_with("metrics: "))
            .stderr(predicate::str::contains("\nusage: metrics "));
    }
    metrics()
        .env("METRICS_ADDR", "::1")
        .args(["get", "m"])
        .assert()
        .code(2)
        .stderr(predicate::str::starts_with(
            "metrics: invalid address '::1' in METRICS_ADDR: an IPv6 address goes in brackets",
        ));
}

#[test]
fn server_error_text_is_shown_with_control_characters_escaped() {
    let (addr, fake) = common::fake_server(b"error\n\x1b[2Jgone\rX\n\x07bell\xc2\x85\n\n");
    metrics()
        .args(["put", "--addr", &addr.to_string(), "x", "1", "1"])
        .assert()
        .code(1)
        .stderr("metrics: server replied with an error: \\u{1b}[2Jgone\\rX\\n\\u{7}bell\\u{85}\n");
    fake.join().unwrap();
}

#[test]
fn an_error_reply_that_never_ends_fails_fast_as_malformed() {
    for args in [&["get", "m"][..], &["put", "m", "1", "1"]] {
        let (addr, server) = common::scripted_server(|stream| {
            common::read_request(&stream);
            common::stream_forever(&stream, b"error\n", b"x\n")
        });
        let started = Instant::now();
        metrics()
            .args(["--addr", &addr.to_string()])
            .args(args)
            .assert()
            .code(1)
            .stderr(
                "metrics: malformed reply from the server: \
                 an error message is longer than 65536 bytes\n",
            );
        assert!(started.elapsed() < Duration::from_secs(10));
        // It stopped reading at the cap: the server could send little more than that, plus
        // what the socket buffers hold.
        let sent = server.join().unwrap();
        assert!(sent < 64 << 20, "{args:?}: the server sent {sent} bytes");
    }
}

#[test]
fn a_put_reply_with_points_that_never_end_fails_at_the_first() {
    let (addr, server) = common::scripted_server(|stream| {
        common::read_request(&stream);
        common::stream_forever(&stream, b"ok\n", b"m 1.0 1\n")
    });
    metrics()
        .args(["put", "--addr", &addr.to_string(), "m", "1", "1"])
        .assert()
        .code(1)
        .stderr("metrics: malformed reply from the server: a point line in the reply to a put\n");
    server.join().unwrap();
}

/// Runs `metrics ARGS` with stderr a pipe whose reader is already gone.
fn status_with_broken_stderr(args: &[&str]) -> Option<i32> {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    std::process::Command::new(common::binary())
        .args(args)
        .env_remove("METRICS_ADDR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer)
        .status()
        .unwrap()
        .code()
}

#[test]
fn a_closed_stderr_keeps_the_exit_codes() {
    let dead = common::dead_addr().to_string();
    // A pipe nobody reads: writes fail with EPIPE.
    assert_eq!(
        status_with_broken_stderr(&["get", "--addr", &dead, "m"]),
        Some(1)
    );
    assert_eq!(status_with_broken_stderr(&["get"]), Some(2));
    assert_eq!(status_with_broken_stderr(&["--help"]), Some(0));
    // A closed descriptor: writes fail with EBADF.
    for (args, code) in [(format!("get --addr {dead} m"), 1), ("put m".into(), 2)] {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("\"$0\" {args} 2>&-"))
            .arg(common::binary())
            .env_remove("METRICS_ADDR")
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(code), "{args}");
    }
}

/// A server holding `a` and `b` at timestamps 10, 20, 30, 40.
fn loaded() -> TestServer {
    let server = TestServer::start();
    let mut s = server.connect();
    let mut request = String::new();
    for t in [10, 20, 30, 40] {
        request.push_str(&format!("put a {t} {t}\nput b -{t} {t}\n"));
    }
    common::exchange(&mut s, request.as_bytes(), &b"ok\n\n".repeat(8));
    server
}

#[test]
fn get_from_and_to_print_the_points_inside_the_range() {
    let server = loaded();
    run(&server, &["get", "a", "--from", "20", "--to", "30"])
        .success()
        .stdout("a 20.0 20\na 30.0 30\n")
        .stderr("");
    run(&server, &["get", "a", "--from=35"])
        .success()
        .stdout("a 40.0 40\n");
    run(&server, &["get", "--to", "+10", "a"])
        .success()
        .stdout("a 10.0 10\n");
    run(&server, &["get", "*", "--from", "25", "--to", "35"])
        .success()
        .stdout("a 30.0 30\nb -30.0 30\n");
    // Empty ranges, from > to, negative bounds: nothing, and success.
    for args in [
        &["get", "a", "--from", "41"][..],
        &["get", "a", "--from", "30", "--to", "20"],
        &["get", "a", "--to", "-1"],
        &["get", "nobody", "--from", "0"],
    ] {
        run(&server, args).success().stdout("");
    }
}

#[test]
fn get_since_counts_back_from_now() {
    let server = TestServer::start();
    let now = metrics::defaults::now();
    let mut s = server.connect();
    let request = format!(
        "put s 1 {}\nput s 2 {}\nput s 3 {now}\nput s 4 {}\n",
        now - 7200,
        now - 600,
        now + 3600
    );
    common::exchange(&mut s, request.as_bytes(), &b"ok\n\n".repeat(4));
    let since = |args: &[&str]| {
        let out = run(&server, args).success().get_output().stdout.clone();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        since(&["get", "s", "--since", "15m"]),
        ["2.0", "3.0", "4.0"]
    );
    assert_eq!(
        since(&["get", "s", "--since", "3h"]),
        ["1.0", "2.0", "3.0", "4.0"]
    );
    assert_eq!(
        since(&["get", "s", "--since", "60", "--to", &now.to_string()]),
        ["3.0"]
    );
    assert_eq!(since(&["get", "s", "--since", "1d"]).len(), 4);
}

#[test]
fn the_range_options_choose_the_request_bytes() {
    // No range option: the course's `get`, byte for byte; an open side is the i64 extreme.
    for (args, request) in [
        (&["get", "m"][..], "get m\n".to_string()),
        (
            &["get", "*", "--to", "5"],
            "get * -9223372036854775808 5\n".into(),
        ),
        (
            &["get", "m", "--from", "-5"],
            "get m -5 9223372036854775807\n".into(),
        ),
        (
            &["get", "m", "--from", "1", "--to", "2"],
            "get m 1 2\n".into(),
        ),
    ] {
        let (addr, fake) = common::fake_server(b"ok\n\n");
        metrics()
            .arg("--addr")
            .arg(addr.to_string())
            .args(args)
            .assert()
            .success()
            .stdout("");
        assert_eq!(fake.join().unwrap(), request, "{args:?}");
    }
    let (addr, fake) = common::fake_server(b"ok\n\n");
    let before = metrics::defaults::now();
    metrics()
        .args(["get", "--addr", &addr.to_string(), "m", "--since", "15m"])
        .assert()
        .success();
    let after = metrics::defaults::now();
    let request = fake.join().unwrap();
    let fields: Vec<&str> = request.trim_end().split(' ').collect();
    assert_eq!(fields[..2], ["get", "m"], "{request}");
    assert_eq!(fields[3], "9223372036854775807", "{request}");
    let from: i64 = fields[2].parse().unwrap();
    assert!((before - 900..=after - 900).contains(&from), "{request}");
}

#[test]
fn bad_ranges_exit_2_before_connecting() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["get", "m", "--from", "1", "--since", "1h"],
            "--since and --from cannot be given together",
        ),
        (
            &["get", "m", "--from", "yesterday"],
            "invalid value for --from: 'yesterday' (a whole number of seconds)",
        ),
        (
            &["get", "m", "--to", "1.5"],
            "invalid value for --to: '1.5' (a whole number of seconds)",
        ),
        (
            &["get", "m", "--from", "-9223372036854775809"],
            "invalid value for --from: '-9223372036854775809' (a whole number of seconds)",
        ),
        (
            &["get", "m", "--since", "2w"],
            "invalid --since '2w' (seconds, or a number with s, m, h or d)",
        ),
        (
            &["get", "m", "--since", "-5m"],
            "invalid --since '-5m' (seconds, or a number with s, m, h or d)",
        ),
        (&["get", "m", "--to"], "--to needs a value"),
        (
            &["plot", "m", "--since", "soon"],
            "invalid --since 'soon' (seconds, or a number with s, m, h or d)",
        ),
        (&["plot", "*"], "plot draws one metric, not '*'"),
        (&["plot"], "wrong number of arguments for 'plot'"),
        (&["stats", "extra"], "wrong number of arguments for 'stats'"),
        (&["stats", "--since", "1h"], "unknown option '--since'"),
    ];
    let dead = common::dead_addr().to_string();
    for (args, message) in cases {
        metrics()
            .env("METRICS_ADDR", &dead)
            .args(*args)
            .assert()
            .code(2)
            .stdout("")
            .stderr(format!("metrics: {message}\n{}\n", usage_line(args[0])));
    }
}

/// The one-line usage hint of `command`, as its help page's options spell it.
fn usage_line(command: &str) -> String {
    let out = metrics()
        .args([command, "--bogus-option"])
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn range_options_are_in_help_and_usage() {
    for command in ["get", "plot"] {
        let usage = usage_line(command);
        for option in ["[--from TS]", "[--to TS]", "[--since DURATION]"] {
            assert!(usage.contains(option), "{usage}");
        }
        metrics()
            .args(["help", command])
            .assert()
            .success()
            .stdout(predicate::str::contains("\n  --since DURATION "))
            .stdout(predicate::str::contains("\n  --from TS "));
    }
    assert_eq!(
        usage_line("stats"),
        "usage: metrics stats [-h] [--addr HOST:PORT] [--timeout SECS]"
    );
    metrics()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("\n  plot METRIC "))
        .stdout(predicate::str::contains("\n  stats "));
}

#[test]
fn stats_prints_sorted_rows_in_the_get_format() {
    let server = loaded();
    let out = run(&server, &["stats"])
        .success()
        .stderr("")
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    let now = metrics::defaults::now();
    let mut names = Vec::new();
    for line in out.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert!(fields[0].starts_with("metrics."), "{line}");
        fields[1].parse::<f64>().unwrap();
        let time: i64 = fields[2].parse().unwrap();
        assert!((now - 2..=now + 2).contains(&time), "{line}");
        names.push(fields[0]);
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(out.contains("\nmetrics.points 8.0 "), "{out}");
    assert!(out.contains("\nmetrics.puts_total 8.0 "), "{out}");
    // A dead server is a runtime failure.
    metrics()
        .args(["stats", "--addr", &common::dead_addr().to_string()])
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::starts_with("metrics: cannot connect to "));
}

#[test]
fn stats_exits_1_on_an_error_reply() {
    let (addr, fake) = common::fake_server(b"error\nwrong command\n\n");
    metrics()
        .args(["stats", "--addr", &addr.to_string()])
        .assert()
        .code(1)
        .stdout("")
        .stderr("metrics: server replied with an error: wrong command\n");
    assert_eq!(fake.join().unwrap(), "stats\n");
}

#[test]
fn server_flags_that_cannot_work_are_usage_errors() {
    for args in [
        &[
            "server",
            "0",
            "--forward",
            "127.0.0.1:2003",
            "--forward",
            "127.0.0.1:2003",
        ][..],
        &["server", "0", "--forward", "127.0.0.1"],
        &["server", "0", "--forward-buffer", "0"],
        &["server", "0", "--max-memory", "lots"],
        &["server", "0", "--self-metrics", "x"],
    ] {
        metrics()
            .args(args)
            .assert()
            .code(2)
            .stderr(predicates::str::starts_with("metrics: "));
    }
}
