//! The data file: nothing acknowledged is lost to SIGKILL, torn and corrupt files, compaction,
//! retention, and a disk that stops taking writes.

mod common;

use common::{exchange, TempDir, TestServer};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::sync::mpsc;
use std::thread;

const OK: &[u8] = b"ok\n\n";

fn with_data(data: &str, extra: &[&str]) -> TestServer {
    let mut args = vec!["--data", data];
    args.extend_from_slice(extra);
    TestServer::start_with(&args)
}

/// `metrics server 0 --data DATA`, which must exit 1 at start-up without printing to stdout.
fn refused_start(data: &str) -> assert_cmd::assert::Assert {
    common::metrics()
        .args(["server", "0", "--data", data])
        .assert()
        .code(1)
        .stdout("")
}

/// Point `i` of the crash test: a metric, a timestamp and a value only it has.
fn point(i: u64) -> (String, i64, f64) {
    (format!("load.{}", i % 97), (i / 97) as i64, i as f64 + 0.25)
}

#[test]
fn acknowledged_puts_survive_sigkill_in_every_fsync_mode() {
    const TOTAL: u64 = 300_000;
    const KILL_AFTER: u64 = 60_000;
    for mode in ["always", "everysec", "no"] {
        let dir = TempDir::new(mode);
        let data = dir.file("data.txt");
        let mut server = with_data(&data, &["--fsync", mode]);
        let stream = server.connect();
        let mut writer = stream.try_clone().unwrap();
        let sender = thread::spawn(move || {
            let mut batch = Vec::new();
            for start in (0..TOTAL).step_by(1000) {
                batch.clear();
                for i in start..start + 1000 {
                    let (metric, timestamp, value) = point(i);
                    batch.extend_from_slice(
                        format!("put {metric} {value} {timestamp}\n").as_bytes(),
                    );
                }
                if writer.write_all(&batch).is_err() {
                    break; // the server is gone
                }
            }
        });
        let (halfway_tx, halfway_rx) = mpsc::channel();
        let counter = thread::spawn(move || {
            let mut replies = BufReader::new(stream);
            let mut acknowledged = 0u64;
            let mut line = String::new();
            loop {
                line.clear();
                match replies.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "ok\n" => {}
                    Ok(_) if line == "\n" => {
                        acknowledged += 1;
                        if acknowledged == KILL_AFTER {
                            let _ = halfway_tx.send(());
                        }
                    }
                    Ok(_) => panic!("unexpected reply line {line:?}"),
                }
            }
            acknowledged
        });
        halfway_rx.recv().expect("the load reaches the kill point");
        server.kill();
        let acknowledged = counter.join().unwrap();
        sender.join().unwrap();
        assert!(
            (KILL_AFTER..TOTAL).contains(&acknowledged),
            "{mode}: {acknowledged}"
        );
        eprintln!("{mode}: killed after {acknowledged} of {TOTAL} puts were acknowledged");

        let restarted = with_data(&data, &["--fsync", mode]);
        let mut stored = BTreeMap::new();
        for line in restarted.dump().lines() {
            let mut fields = line.split(' ');
            let (metric, value, timestamp) = (
                fields.next().unwrap(),
                fields.next().unwrap(),
                fields.next().unwrap(),
            );
            stored.insert(
                (metric.to_string(), timestamp.parse::<i64>().unwrap()),
                value.parse::<f64>().unwrap(),
            );
        }
        for i in 0..acknowledged {
            let (metric, timestamp, value) = point(i);
            assert_eq!(
                stored.get(&(metric.clone(), timestamp)),
                Some(&value),
                "{mode}: acknowledged put {i} ({metric} {timestamp}) lost after SIGKILL"
            );
        }
        // Whatever else survived is a whole, correct point too.
        assert!(stored.len() as u64 <= TOTAL);
        for ((metric, timestamp), value) in &stored {
            let i = (*value - 0.25) as u64;
            assert_eq!(point(i), (metric.clone(), *timestamp, *value));
        }
    }
}

#[test]
fn a_torn_last_line_is_dropped_and_later_appends_read_back() {
    let dir = TempDir::new("torn");
    let data = dir.file("data.txt");
    fs::write(&data, "a 1.0 1\nb 2.0 2\nc 3.0").unwrap();
    let mut server = with_data(&data, &[]);
    assert!(server.wait_for_log("dropped a torn last line (5 bytes)", 1));
    assert_eq!(server.dump(), "a 1.0 1\nb 2.0 2\n");
    let mut s = server.connect();
    exchange(&mut s, b"put d 4 4\n", OK);
    server.kill();
    assert_eq!(
        fs::read_to_string(&data).unwrap(),
        "a 1.0 1\nb 2.0 2\nd 4.0 4\n"
    );
    let again = with_data(&data, &[]);
    assert_eq!(again.dump(), "a 1.0 1\nb 2.0 2\nd 4.0 4\n");
    assert!(!again.logs().contains("dropped a torn"));
}

#[test]
fn a_corrupt_line_in_the_middle_refuses_to_start_and_leaves_the_file() {
    let dir = TempDir::new("corrupt");
    let data = dir.file("data.txt");
    let text = "a 1.0 1\nb 2.0 2\nthis is not a point\nc 3.0 3\n";
    fs::write(&data, text).unwrap();
    refused_start(&data).stderr(format!(
        "metrics: {data}:3: not a 'metric value timestamp' line: \"this is not a point\"\n"
    ));
    assert_eq!(fs::read_to_string(&data).unwrap(), text);
}

/// An operator who names the wrong file loses nothing: a file whose only line is not the start
/// of a point is not taken for a torn write and cut, and a device is not read without end.
#[test]
fn a_file_named_by_mistake_refuses_to_start_and_is_left_alone() {
    let dir = TempDir::new("mistake");
    let data = dir.file("notes.txt");
    let text = "remember: the server runs on port 8888";
    fs::write(&data, text).unwrap();
    refused_start(&data).stderr(format!(
        "metrics: {data}:1: the last line has no newline and is not the start of a point: \
         \"{text}\"\n"
    ));
    assert_eq!(fs::read_to_string(&data).unwrap(), text);
    refused_start("/dev/zero").stderr("metrics: cannot use /dev/zero: it is not a regular file\n");
}

#[test]
fn start_up_compacts_a_file_of_overwritten_points() {
    let dir = TempDir::new("compact-start");
    let data = dir.file("data.txt");
    let mut text = String::new();
    for round in 0..3 {
        for i in 0..1000 {
            text.push_str(&format!("m.{} {round}.5 {i}\n", i % 10));
        }
    }
    fs::write(&data, &text).unwrap();
    let server = with_data(&data, &[]);
    assert!(server.wait_for_log("compacted", 1));
    let dump = server.dump();
    assert_eq!(dump.lines().count(), 1000);
    assert!(dump.lines().all(|l| l.contains(" 2.5 ")));
    // The file now holds exactly the live points, in `get *` order.
    assert_eq!(fs::read_to_string(&data).unwrap(), dump);
}

#[test]
fn online_compaction_keeps_exactly_the_live_data() {
    let dir = TempDir::new("compact-online");
    let data = dir.file("data.txt");
    let mut server = with_data(&data, &[]);
    let mut s = server.connect();
    for round in 0..3 {
        let mut batch = Vec::new();
        for i in 0..800 {
            batch.extend_from_slice(format!("put m.{} {round} {i}\n", i % 8).as_bytes());
        }
        exchange(&mut s, &batch, &OK.repeat(800));
    }
    assert!(server.wait_for_log("compacted", 1));
    // Writes after the compaction land in the new file.
    exchange(&mut s, b"put after 1 1\n", OK);
    let dump = server.dump();
    assert_eq!(dump.lines().count(), 801);
    server.kill();
    let file = fs::read_to_string(&data).unwrap();
    assert_eq!(file.lines().count(), 801, "the file holds only live points");
    let restarted = with_data(&data, &[]);
    assert_eq!(restarted.dump(), dump);
}

#[test]
fn retention_hides_then_frees_old_points_and_compaction_drops_them() {
    let dir = TempDir::new("retention");
    let data = dir.file("data.txt");
    let now = metrics::defaults::now();
    let mut server = with_data(&data, &["--retention", "30s"]);
    let mut s = server.connect();
    let mut batch = Vec::new();
    for i in 0..1200 {
        batch.extend_from_slice(format!("put old.{} 1 {}\n", i % 3, now - 3600 - i).as_bytes());
    }
    batch.extend_from_slice(format!("put fresh 2 {now}\n").as_bytes());
    exchange(&mut s, &batch, &OK.repeat(1201));
    // Hidden at once from get, whatever the sweep has done.
    assert_eq!(server.dump(), format!("fresh 2.0 {now}\n"));
    exchange(&mut s, b"get old.1\n", b"ok\n\n");
    // Then freed from memory, and from the file by the compaction that follows.
    assert!(server.wait_for_log("retention: removed 1200 points", 1));
    assert!(server.wait_for_log("compacted", 1));
    server.kill();
    assert_eq!(
        fs::read_to_string(&data).unwrap(),
        format!("fresh 2.0 {now}\n")
    );
}

#[test]
fn a_failing_disk_refuses_puts_it_cannot_write_and_keeps_serving_reads() {
    let dir = TempDir::new("full");
    let data = dir.file("data.txt");
    // A file size limit of 512 bytes stands in for a full disk (EFBIG instead of ENOSPC).
    let mut command = Command::new("sh");
    command.args([
        "-c",
        "trap '' XFSZ; ulimit -f 1 && exec \"$0\" server 0 --fsync always --data \"$1\"",
        common::binary(),
        &data,
    ]);
    let mut server = TestServer::start_command(command);
    let mut s = server.connect();
    let mut replies = BufReader::new(s.try_clone().unwrap());
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..100 {
        s.write_all(format!("put disk.{i:03} {i} {i}\n").as_bytes())
            .unwrap();
        let mut status = String::new();
        replies.read_line(&mut status).unwrap();
        if status == "ok\n" {
            assert!(refused == 0, "a put was acknowledged after the disk failed");
            acknowledged.push(i);
        } else {
            assert_eq!(status, "error\n");
            let mut message = String::new();
            replies.read_line(&mut message).unwrap();
            assert!(message.starts_with("cannot write data file: "), "{message}");
            refused += 1;
        }
        let mut blank = String::new();
        replies.read_line(&mut blank).unwrap();
        assert_eq!(blank, "\n");
    }
    assert!(
        !acknowledged.is_empty() && refused > 0,
        "{} ok, {refused} refused",
        acknowledged.len()
    );
    assert!(server.wait_for_log("puts refused: cannot write data file", 1));
    // Reads go on.
    s.write_all(b"get disk.000\n").unwrap();
    let mut line = String::new();
    replies.read_line(&mut line).unwrap();
    assert_eq!(line, "ok\n");
    server.kill();
    // Every acknowledged put is in the file, which holds only whole lines.
    let file = fs::read_to_string(&data).unwrap();
    assert!(file.ends_with('\n'));
    let restarted = with_data(&data, &[]);
    let dump = restarted.dump();
    for i in acknowledged {
        assert!(
            dump.contains(&format!("disk.{i:03} {i}.0 {i}\n")),
            "put {i} lost"
        );
    }
}

#[test]
fn a_second_server_on_the_same_data_file_refuses_to_start() {
    let dir = TempDir::new("locked");
    let data = dir.file("data.txt");
    let first = with_data(&data, &[]);
    refused_start(&data).stderr(format!(
        "metrics: cannot lock {data}: another metrics server is using it\n"
    ));
    let mut s = first.connect();
    exchange(&mut s, b"put still.mine 1 1\n", OK);
}
