//! Range queries, `stats` and self-metrics on the wire: exact bytes.

mod common;

use common::{exchange, read_reply, TempDir, TestServer};
use std::io::Write;
use std::time::{Duration, Instant};

const OK: &[u8] = b"ok\n\n";
const WRONG: &[u8] = b"error\nwrong command\n\n";

fn loaded() -> TestServer {
    let server = TestServer::start();
    let mut s = server.connect();
    let mut request = Vec::new();
    for t in [10, 20, 30, 40] {
        request.extend_from_slice(format!("put a {t} {t}\nput b -{t} {t}\n").as_bytes());
    }
    request.extend_from_slice(b"put c 1 9223372036854775807\nput c 2 -9223372036854775808\n");
    exchange(&mut s, &request, &OK.repeat(10));
    server
}

#[test]
fn ranges_select_points_inside_across_and_outside_the_data() {
    let server = loaded();
    let mut s = server.connect();
    for (request, reply) in [
        (&b"get a 20 30\n"[..], &b"ok\na 20.0 20\na 30.0 30\n\n"[..]),
        (b"get a 15 25\n", b"ok\na 20.0 20\n\n"),
        (b"get a 0 10\n", b"ok\na 10.0 10\n\n"),
        (b"get a 40 1000\n", b"ok\na 40.0 40\n\n"),
        (b"get a 41 1000\n", b"ok\n\n"),
        (b"get a -5 9\n", b"ok\n\n"),
        (b"get a 30 20\n", b"ok\n\n"),
        (b"get a 20 20\n", b"ok\na 20.0 20\n\n"),
        (b"get nobody 0 100\n", b"ok\n\n"),
        (b"get\ta\t+20\t30\r\n", b"ok\na 20.0 20\na 30.0 30\n\n"),
        (b"get * 25 35\n", b"ok\na 30.0 30\nb -30.0 30\n\n"),
        (
            b"get c -9223372036854775808 9223372036854775807\n",
            b"ok\nc 2.0 -9223372036854775808\nc 1.0 9223372036854775807\n\n",
        ),
        (
            b"get c 9223372036854775807 9223372036854775807\n",
            b"ok\nc 1.0 9223372036854775807\n\n",
        ),
        (b"get * 1 0\n", b"ok\n\n"),
    ] {
        exchange(&mut s, request, reply);
    }
}

#[test]
fn malformed_ranges_are_wrong_commands() {
    let server = loaded();
    let mut s = server.connect();
    for request in [
        &b"get a b\n"[..],
        b"get a 1\n",
        b"get a 1 2 3\n",
        b"get a x 2\n",
        b"get a 1 2.5\n",
        b"get a 1e3 2000\n",
        b"get a 1 9223372036854775808\n",
        b"get * -9223372036854775809 0\n",
        b"stats now\n",
    ] {
        exchange(&mut s, request, WRONG);
    }
    // The course protocol is unchanged.
    exchange(
        &mut s,
        b"get a\n",
        b"ok\na 10.0 10\na 20.0 20\na 30.0 30\na 40.0 40\n\n",
    );
}

/// The `stats` rows as (name, value, timestamp).
fn stats(server: &TestServer) -> Vec<(String, f64, i64)> {
    let mut s = server.connect();
    s.write_all(b"stats\n").unwrap();
    read_reply(&mut s)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 3, "{line}");
            (
                fields[0].to_string(),
                fields[1].parse().unwrap(),
                fields[2].parse().unwrap(),
            )
        })
        .collect()
}

fn stat(rows: &[(String, f64, i64)], name: &str) -> f64 {
    rows.iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in {rows:?}"))
        .1
}

#[test]
fn stats_counts_exactly_and_never_shows_in_get_star() {
    let server = TestServer::start();
    let before = stats(&server);
    let names: Vec<&str> = before.iter().map(|(n, _, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for name in [
        "metrics.connections",
        "metrics.connections_total",
        "metrics.errors_total",
        "metrics.gets_total",
        "metrics.memory_bytes",
        "metrics.memory_limit_bytes",
        "metrics.memory_refused_total",
        "metrics.points",
        "metrics.puts_total",
        "metrics.series",
        "metrics.uptime_seconds",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let now = metrics::defaults::now();
    assert!(before
        .iter()
        .all(|(_, _, t)| (now - 1..=now + 1).contains(t)));

    let mut s = server.connect();
    let mut request = Vec::new();
    for i in 0..1000 {
        request.extend_from_slice(format!("put m.{} {i} {i}\n", i % 7).as_bytes());
    }
    exchange(&mut s, &request, &OK.repeat(1000));
    exchange(
        &mut s,
        b"put m.0 5 0\nbad\n",
        b"ok\n\nerror\nwrong command\n\n",
    );
    s.write_all(b"get m.1\n").unwrap();
    assert_eq!(read_reply(&mut s).lines().count(), 143);
    exchange(&mut s, b"get zz 1 2\n", OK);
    let after = stats(&server);
    let grew = |name| stat(&after, name) - stat(&before, name);
    assert_eq!(grew("metrics.puts_total"), 1001.0);
    assert_eq!(grew("metrics.gets_total"), 2.0);
    assert_eq!(grew("metrics.errors_total"), 1.0);
    assert_eq!(grew("metrics.connections_total"), 2.0);
    assert_eq!(stat(&after, "metrics.points"), 1000.0);
    assert_eq!(stat(&after, "metrics.series"), 7.0);
    assert_eq!(stat(&after, "metrics.connections"), 2.0);
    assert!(stat(&after, "metrics.memory_bytes") > stat(&before, "metrics.memory_bytes"));
    assert!(!server.dump().contains("metrics."));
}

#[test]
fn stats_reports_the_data_file() {
    let dir = TempDir::new("stats-data");
    let server = TestServer::start_with(&["--data", &dir.file("d.txt")]);
    let mut s = server.connect();
    exchange(&mut s, b"put a 1 1\n", OK);
    let rows = stats(&server);
    assert_eq!(
        stat(&rows, "metrics.data_file_bytes"),
        "a 1.0 1\n".len() as f64
    );
}

#[test]
fn self_metrics_are_stored_as_points_with_history() {
    let server = TestServer::start_with(&["--self-metrics", "1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dump = server.dump();
        let uptime = dump
            .lines()
            .filter(|l| l.starts_with("metrics.uptime_seconds "))
            .count();
        if uptime >= 2 && dump.contains("metrics.puts_total ") {
            break;
        }
        assert!(Instant::now() < deadline, "no self-metrics in {dump}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
