//! Reliability: nothing acknowledged is lost to file names or files removed under the server,
//! memory has limits a client cannot get around, and no client can make the server freeze.

mod common;

use common::{exchange, expect, read_reply, read_to_close, TempDir, TestServer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const OK: &[u8] = b"ok\n\n";

fn with_data(data: &str, extra: &[&str]) -> TestServer {
    let mut args = vec!["--data", data, "--fsync", "always"];
    args.extend_from_slice(extra);
    TestServer::start_with(&args)
}

/// 1010 overwrites of one point, then 10 more points: enough lines for a compaction
/// (at least 1000, more than twice the live points).
fn load_and_overwrite(server: &TestServer) -> String {
    let mut s = server.connect();
    let mut request = Vec::new();
    for i in 0..1010 {
        request.extend_from_slice(format!("put hot {i} 1\n").as_bytes());
    }
    for i in 0..10 {
        request.extend_from_slice(format!("put cold.{i} {i} {i}\n").as_bytes());
    }
    exchange(&mut s, &request, &OK.repeat(1020));
    server.dump()
}

#[test]
fn a_data_file_named_like_a_compaction_file_keeps_every_point() {
    let dir = TempDir::new("compact-name");
    let data = dir.file("x.compact");
    let server = with_data(&data, &[]);
    let before = load_and_overwrite(&server);
    assert!(server.wait_for_log("compacted", 1), "{}", server.logs());
    drop(server);
    let server = with_data(&data, &[]);
    assert_eq!(server.dump(), before);
    assert_eq!(before.lines().count(), 11);
}

#[test]
fn compaction_never_touches_a_neighbours_files() {
    let dir = TempDir::new("neighbours");
    // What a server on d.txt once truncated, and what a neighbour server on data.8889 uses.
    std::fs::write(dir.file("d.compact"), "someone else's\n").unwrap();
    let a = with_data(&dir.file("data.8888"), &[]);
    let b = with_data(&dir.file("data.8889"), &[]);
    let c = with_data(&dir.file("d.txt"), &[]);
    let dumps: Vec<String> = [&a, &b, &c].iter().map(|s| load_and_overwrite(s)).collect();
    for server in [&a, &b, &c] {
        assert!(server.wait_for_log("compacted", 1), "{}", server.logs());
    }
    drop((a, b, c));
    assert_eq!(
        std::fs::read_to_string(dir.file("d.compact")).unwrap(),
        "someone else's\n"
    );
    for (name, dump) in ["data.8888", "data.8889", "d.txt"].iter().zip(&dumps) {
        let server = with_data(&dir.file(name), &[]);
        assert_eq!(&server.dump(), dump, "{name}");
    }
    // Nothing was left behind: only the data files and the neighbour's file.
    let mut names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["d.compact", "d.txt", "data.8888", "data.8889"]);
}

#[test]
fn a_deleted_data_file_is_rewritten_and_survives_a_crash() {
    let dir = TempDir::new("deleted");
    let data = dir.file("data.txt");
    let mut server = with_data(&data, &[]);
    let mut s = server.connect();
    exchange(&mut s, b"put a 1 1\nput b 2 2\n", &OK.repeat(2));
    std::fs::remove_file(&data).unwrap();
    assert!(
        server.wait_for_log("writing a complete new one", 1),
        "{}",
        server.logs()
    );
    assert!(server.wait_for_log("rewrote", 1), "{}", server.logs());
    exchange(&mut s, b"put c 3 3\n", OK);
    let before = server.dump();
    server.kill();
    let server = with_data(&data, &[]);
    assert_eq!(server.dump(), before);
    assert_eq!(before, "a 1.0 1\nb 2.0 2\nc 3.0 3\n");
}

#[test]
fn a_replaced_data_file_is_rewritten_from_memory() {
    let dir = TempDir::new("replaced");
    let data = dir.file("data.txt");
    let mut server = with_data(&data, &[]);
    let mut s = server.connect();
    exchange(&mut s, b"put a 1 1\n", OK);
    std::fs::rename(&data, dir.file("moved.txt")).unwrap();
    std::fs::write(&data, "intruder 9.0 9\n").unwrap();
    assert!(server.wait_for_log("another file replaced it", 1));
    assert!(server.wait_for_log("rewrote", 1));
    exchange(&mut s, b"put b 2 2\n", OK);
    server.kill();
    let server = with_data(&data, &[]);
    assert_eq!(server.dump(), "a 1.0 1\nb 2.0 2\n");
}

/// Sends `request(0)`, `request(1)`, ... one at a time until one is refused with the memory
/// limit's reply; returns its number.
fn put_until_refused(s: &mut TcpStream, request: impl Fn(usize) -> String) -> usize {
    for i in 0..1_000_000 {
        s.write_all(request(i).as_bytes()).unwrap();
        let mut status = [0u8; 3];
        s.read_exact(&mut status).unwrap();
        if &status == b"ok\n" {
            expect(s, b"\n");
        } else {
            assert_eq!(&status, b"err");
            expect(s, b"or\nmemory limit reached\n\n");
            return i;
        }
    }
    panic!("the memory limit was never reached");
}

#[test]
fn the_memory_limit_refuses_puts_and_the_server_keeps_serving() {
    let server = TestServer::start_with(&["--max-memory", "300K"]);
    let mut s = server.connect();
    exchange(&mut s, b"put first 1 1\n", OK);
    let refused_at = put_until_refused(&mut s, |i| format!("put name.{i} 1 1\n"));
    assert!(refused_at > 100, "{refused_at}");
    // Overwrites and reads go on; new points do not.
    exchange(&mut s, b"put first 5 1\n", OK);
    exchange(&mut s, b"get first\n", b"ok\nfirst 5.0 1\n\n");
    exchange(
        &mut s,
        b"put first 5 2\n",
        b"error\nmemory limit reached\n\n",
    );
    assert!(server.wait_for_log("puts refused: memory limit reached", 1));
    assert_eq!(server.dump().lines().count(), refused_at + 1);
}

#[test]
fn retention_frees_memory_and_puts_are_accepted_again() {
    let server = TestServer::start_with(&["--max-memory", "200K", "--retention", "1s"]);
    let mut s = server.connect();
    // Old points: hidden at once and freed by the next sweep.
    put_until_refused(&mut s, |i| format!("put old.{i} 1 1000\n"));
    assert!(server.wait_for_log("retention: removed", 1));
    let now = metrics::defaults::now();
    exchange(&mut s, format!("put new 1 {now}\n").as_bytes(), OK);
}

/// RSS growth of a fresh server while `load` runs, in KiB.
fn rss_growth(server: &TestServer, load: impl FnOnce()) -> u64 {
    let before = server.peak_rss_kib();
    load();
    server.peak_rss_kib() - before
}

#[test]
fn far_apart_timestamps_cost_a_few_bytes_per_point() {
    let server = TestServer::start();
    const POINTS: u64 = 200_000;
    let grown = rss_growth(&server, || {
        let mut s = server.connect();
        let mut request = Vec::new();
        for i in 0..POINTS {
            // Nanosecond stamps 10 s apart, and stamps 2^32 s apart.
            let ns = 1_700_000_000_000_000_000 + i as i64 * 10_000_000_000;
            let far = i64::MIN + i as i64 * (1 << 32);
            request.extend_from_slice(format!("put ns {i} {ns}\nput far {i} {far}\n").as_bytes());
        }
        exchange(&mut s, &request, &OK.repeat(2 * POINTS as usize));
    });
    let per_point = grown as f64 * 1024.0 / (2 * POINTS) as f64;
    eprintln!("far-apart timestamps: {per_point:.1} bytes per point");
    assert!(per_point < 8.0, "{per_point:.1} bytes per point");
}

#[test]
fn bursts_of_bad_lines_leave_no_large_buffers_behind() {
    let server = TestServer::start();
    let junk = b"x\n".repeat(2 << 20);
    let mut idle = Vec::new();
    let grown = rss_growth(&server, || {
        for _ in 0..8 {
            let mut s = server.connect();
            s.write_all(&junk).unwrap();
            let mut left = (2 << 20) * b"error\nwrong command\n\n".len();
            let mut buf = vec![0u8; 1 << 16];
            while left > 0 {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0);
                left -= n;
            }
            idle.push(s);
        }
    });
    eprintln!("8 connections after 4 MiB of bad lines each: {grown} KiB");
    assert!(grown < 6 * 1024, "{grown} KiB");
    drop(idle);
}

#[test]
fn stalled_get_star_readers_pin_little_even_with_overwrites() {
    let server = TestServer::start();
    let mut loader = server.connect();
    let mut request = Vec::new();
    for m in 0..200 {
        for t in 0..1000 {
            request.extend_from_slice(format!("put metric.{m:03} {t} {t}\n").as_bytes());
        }
    }
    exchange(&mut loader, &request, &OK.repeat(200_000));
    let grown = rss_growth(&server, || {
        let mut readers = Vec::new();
        for _ in 0..15 {
            let mut r = TcpStream::connect(server.addr).unwrap();
            r.write_all(b"get *\n").unwrap();
            readers.push(r);
            // Every point overwritten while the readers sit: a snapshot of the whole store
            // per reader would keep 15 copies alive.
            let mut overwrite = Vec::new();
            for m in 0..200 {
                for t in (0..1000).step_by(10) {
                    overwrite.extend_from_slice(format!("put metric.{m:03} 7 {t}\n").as_bytes());
                }
            }
            exchange(&mut loader, &overwrite, &OK.repeat(20_000));
        }
        drop(readers);
    });
    eprintln!("15 stalled get * readers: {grown} KiB");
    assert!(grown < 16 * 1024, "{grown} KiB");
}

#[test]
fn names_that_break_clients_are_refused() {
    let server = TestServer::start();
    let mut s = server.connect();
    let refused = [
        "\u{b}", "\u{c}", "\r", "\u{1c}", "\u{1d}", "\u{1e}", "\u{1f}", "\u{85}", "\u{a0}",
        "\u{1680}", "\u{2000}", "\u{200a}", "\u{2028}", "\u{2029}", "\u{202f}", "\u{205f}",
        "\u{3000}", "\u{0}", "\u{7}", "\u{1b}", "\u{7f}", "\u{9b}",
    ];
    for c in refused {
        exchange(
            &mut s,
            format!("put a{c}b 1 1\n").as_bytes(),
            b"error\nwrong command\n\n",
        );
        exchange(
            &mut s,
            format!("get a{c}b\n").as_bytes(),
            b"error\nwrong command\n\n",
        );
    }
    exchange(&mut s, "put caf\u{e9}.\u{1F600} 1 1\n".as_bytes(), OK);
    assert_eq!(server.dump(), "caf\u{e9}.\u{1F600} 1.0 1\n");
}

#[test]
fn the_write_timeout_bounds_the_whole_reply() {
    let server = TestServer::start_with(&["--write-timeout", "2"]);
    let mut loader = server.connect();
    let mut request = Vec::new();
    for t in 0..200_000 {
        request.extend_from_slice(format!("put m {t} {t}\n").as_bytes());
    }
    exchange(&mut loader, &request, &OK.repeat(200_000));
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled.write_all(&b"get m\n".repeat(20)).unwrap();
    let started = Instant::now();
    // Read a little now and then, as a slow client does: each read lets a partial write
    // through, which used to restart the timeout.
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(200));
            if matches!(stalled.read(&mut buf), Ok(0) | Err(_)) {
                break;
            }
        }
    });
    assert!(server.wait_for_log("disconnected: write failed", 1));
    let closed = started.elapsed();
    eprintln!("closed after {closed:?}");
    assert!(closed < Duration::from_secs(5), "closed after {closed:?}");
    drop(reader);
}

#[test]
fn a_dump_at_the_line_limit_restores_byte_for_byte() {
    let limit = "40";
    let source = TestServer::start_with(&["--max-line-bytes", limit]);
    let mut s = source.connect();
    // 40 bytes as sent, 42 as printed back (`1e1` is `10.0`): refused, and the connection stays.
    let long = format!("put {} 1e1 1", "m".repeat(40 - 10));
    assert_eq!(long.len(), 40);
    exchange(
        &mut s,
        format!("{long}\n").as_bytes(),
        b"error\nline too long\n\n",
    );
    // Exactly 40 bytes as printed back: accepted.
    let fits = format!("put {} 10.0 1", "n".repeat(40 - 11));
    assert_eq!(fits.len(), 40);
    exchange(
        &mut s,
        format!("{fits}\nput short 0.1 -5\n").as_bytes(),
        &OK.repeat(2),
    );
    let dump = source.dump();
    let target = TestServer::start_with(&["--max-line-bytes", limit]);
    target
        .cli()
        .args(["put", "-"])
        .write_stdin(dump.clone())
        .assert()
        .success();
    assert_eq!(target.dump(), dump);
}

#[test]
fn held_back_log_lines_are_counted_within_seconds() {
    let server = TestServer::start();
    for _ in 0..300 {
        let mut s = server.connect();
        s.write_all(b"junk\n").unwrap();
        let _ = read_to_close_after(&mut s, b"error\nwrong command\n\n");
    }
    // Nothing more happens; the count still comes.
    assert!(
        server.wait_for_log("log lines suppressed", 1),
        "{}",
        server.logs()
    );
}

fn read_to_close_after(s: &mut TcpStream, expected: &[u8]) -> Vec<u8> {
    expect(s, expected);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    read_to_close(s)
}

#[test]
fn get_star_streams_in_name_order_while_others_write() {
    let server = TestServer::start();
    let mut loader = server.connect();
    let mut request = Vec::new();
    for m in 0..3000 {
        request.extend_from_slice(format!("put s.{m:04} {m} 1\nput s.{m:04} {m} 2\n").as_bytes());
    }
    exchange(&mut loader, &request, &OK.repeat(6000));
    let mut reader = server.connect();
    reader.write_all(b"get *\n").unwrap();
    let body = read_reply(&mut reader);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 6000);
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
}
