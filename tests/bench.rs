//! `metrics bench` really loads the server, in every mode, and reports what it did.

mod common;

use assert_cmd::Command;
use common::TestServer;
use predicates::prelude::*;

fn bench(server: &TestServer, args: &[&str]) -> assert_cmd::assert::Assert {
    Command::cargo_bin("metrics")
        .unwrap()
        .arg("bench")
        .args(["--addr", &server.addr_string()])
        .args(args)
        .timeout(common::PATIENCE)
        .assert()
}

fn report_line(stdout: &[u8], prefix: &str) -> String {
    String::from_utf8_lossy(stdout)
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line"))
        .to_string()
}

#[test]
fn pipelined_puts_store_every_point_and_report_the_rate() {
    let server = TestServer::start();
    let out = bench(
        &server,
        &["-c", "3", "-n", "3000", "-P", "64", "--keys", "10"],
    )
    .success()
    .stdout(predicate::str::starts_with(
        "bench: put, 3 connections, pipeline 64, 3000 requests, 10 keys\n",
    ))
    .stdout(predicate::str::contains("errors: 0\n"))
    .get_output()
    .stdout
    .clone();
    assert!(report_line(&out, "throughput: ").contains(" requests/s (3000 in "));
    assert!(report_line(&out, "latency: p50 ").contains(" ms, p99 "));
    let dump = server.dump();
    assert_eq!(dump.lines().count(), 3000);
    // Ten keys, each with timestamps 0.. counting up from the base: nothing overwritten.
    assert_eq!(
        dump.lines()
            .filter(|l| l.starts_with("bench.key3 "))
            .count(),
        300
    );
    assert!(dump.contains(&format!(
        "bench.key0 0.0 {}\n",
        1_700_000_000 // the timestamps bench writes start here (documented in its help)
    )));
}

#[test]
fn unpipelined_puts_over_many_connections_store_every_point() {
    let server = TestServer::start();
    bench(&server, &["-c", "9", "-n", "901", "--keys", "7"])
        .success()
        .stdout(predicate::str::contains("errors: 0\n"));
    assert_eq!(server.dump().lines().count(), 901);
}

#[test]
fn get_and_mixed_workloads_run_without_errors() {
    let server = TestServer::start();
    bench(
        &server,
        &["-c", "2", "-n", "1000", "-P", "10", "--keys", "5"],
    )
    .success();
    bench(
        &server,
        &["-c", "2", "-n", "200", "--workload", "get", "--keys", "5"],
    )
    .success()
    .stdout(predicate::str::contains("bench: get,"))
    .stdout(predicate::str::contains("errors: 0\n"));
    bench(
        &server,
        &[
            "-c",
            "2",
            "-n",
            "500",
            "-P",
            "5",
            "--workload",
            "mixed",
            "--keys",
            "5",
        ],
    )
    .success()
    .stdout(predicate::str::contains("errors: 0\n"));
    // Mixed writes the same points again (nine requests in ten), and reads the rest.
    assert_eq!(server.dump().lines().count(), 1000);
    let fresh = TestServer::start();
    bench(
        &fresh,
        &["-c", "2", "-n", "500", "-P", "5", "--workload", "mixed"],
    )
    .success();
    assert_eq!(fresh.dump().lines().count(), 450);
}

#[test]
fn a_failing_server_makes_the_bench_fail() {
    let server = TestServer::start_with(&["--max-line-bytes", "10"]);
    bench(&server, &["-c", "1", "-n", "10"])
        .code(1)
        .stderr(predicate::str::starts_with("metrics: "));
}

#[test]
fn bad_bench_flags_are_usage_errors() {
    let server = TestServer::start();
    bench(&server, &["--workload", "delete"]).code(2);
    bench(&server, &["-c", "0"]).code(2);
    bench(&server, &["-P", "x"]).code(2);
}
