//! `metrics bench` really loads the server, in every mode, and reports what it did.

mod common;

use common::TestServer;
use predicates::prelude::*;

fn bench(server: &TestServer, args: &[&str]) -> assert_cmd::assert::Assert {
    common::metrics()
        .arg("bench")
        .args(["--addr", &server.addr_string()])
        .args(args)
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
        .stderr(predicate::str::starts_with(
            "metrics: bench stopped after 1 of 10 requests were answered: ",
        ));
}

#[test]
fn bad_bench_flags_are_usage_errors() {
    let server = TestServer::start();
    bench(&server, &["--workload", "delete"]).code(2);
    bench(&server, &["-c", "0"]).code(2);
    bench(&server, &["-P", "x"]).code(2);
}

#[test]
fn a_batch_larger_than_the_socket_buffers_does_not_deadlock() {
    // One batch of a million gets on one connection: about 15 MB of requests and 31 MB of
    // replies, more than the socket buffers hold, so the replies must be read while the batch
    // is still being written. (Announcing the batch only once written deadlocked here.)
    let server = TestServer::start();
    bench(&server, &["-c", "1", "-n", "1", "--keys", "1"]).success();
    bench(
        &server,
        &[
            "-c",
            "1",
            "-n",
            "1000000",
            "-P",
            "1000000",
            "--keys",
            "1",
            "--workload",
            "get",
        ],
    )
    .success()
    .stdout(predicate::str::contains("(1000000 in "))
    .stdout(predicate::str::contains("errors: 0\n"));
}

#[test]
fn pipelined_puts_the_memory_limit_refuses_are_counted_as_errors() {
    // Each connection writes a batch and then reads the replies to the batch before it, from
    // one thread: replies that are errors, not `ok`, must still be read in step.
    let server = TestServer::start_with(&["--max-memory", "300K"]);
    let assert = bench(
        &server,
        &["-c", "2", "-n", "60000", "-P", "1000", "--keys", "60000"],
    )
    .code(1)
    .stdout(predicate::str::contains("(60000 in "));
    let output = assert.get_output();
    let errors: u64 = report_line(&output.stdout, "errors: ")["errors: ".len()..]
        .parse()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr, format!("metrics: {errors} requests failed\n"));
    let stored = server.dump().lines().count() as u64;
    assert!(errors > 0 && stored > 0, "{errors} errors, {stored} stored");
    assert_eq!(errors + stored, 60000);
}

#[test]
fn pipelined_puts_in_large_batches_store_every_point() {
    // Batches too large for one thread to leave their replies unread: a writer and a reader.
    let server = TestServer::start();
    bench(
        &server,
        &["-c", "2", "-n", "30000", "-P", "5000", "--keys", "7"],
    )
    .success()
    .stdout(predicate::str::contains("(30000 in "))
    .stdout(predicate::str::contains("errors: 0\n"));
    assert_eq!(server.dump().lines().count(), 30000);
}

#[test]
fn ten_billion_keys_cost_nothing_up_front() {
    let server = TestServer::start();
    bench(
        &server,
        &["-c", "2", "-n", "100", "-P", "10", "--keys", "10000000000"],
    )
    .success()
    .stdout(predicate::str::contains("100 requests, 10000000000 keys\n"))
    .stdout(predicate::str::contains("errors: 0\n"));
    let dump = server.dump();
    assert_eq!(dump.lines().count(), 100);
    assert!(dump.contains("bench.key99 "));
}

#[test]
fn a_server_that_goes_silent_fails_the_bench_without_blaming_itself() {
    let (addr, server) = common::scripted_server(|stream| {
        common::read_request(&stream);
        common::stream_forever(&stream, b"ok\n\nerror\n", b"x\n")
    });
    common::metrics()
        .args([
            "bench",
            "--addr",
            &addr.to_string(),
            "-c",
            "1",
            "-n",
            "5",
            "-P",
            "5",
        ])
        .assert()
        .code(1)
        .stderr(
            "metrics: bench stopped after 1 of 5 requests were answered: malformed reply from \
             the server: an error message is longer than 65536 bytes\n",
        );
    server.join().unwrap();
}
