//! Seeded fuzzing over loopback: random requests must each get exactly the right reply and
//! store exactly what they should; random bytes and random disconnects must not hurt the server.

mod common;

use common::{Rng, TestServer};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::thread;

/// Tokens with known meaning, so the test knows every line's right reply without the library.
const COMMANDS: [(&str, bool); 6] = [
    ("put", true),
    ("get", true),
    ("PUT", false),
    ("Get", false),
    ("delete", false),
    ("*", false),
];
const VALUES: [(&str, Option<f64>); 10] = [
    ("1", Some(1.0)),
    ("-2.25", Some(-2.25)),
    ("1e3", Some(1000.0)),
    (".5", Some(0.5)),
    ("0.1", Some(0.1)),
    ("nan", None),
    ("inf", None),
    ("x", None),
    ("1,5", None),
    ("", None),
];
const TIMESTAMPS: [(&str, Option<i64>); 7] = [
    ("1", Some(1)),
    ("2", Some(2)),
    ("-7", Some(-7)),
    ("1150864247", Some(1150864247)),
    ("1.5", None),
    ("1e3", None),
    ("99999999999999999999", None),
];

#[derive(Debug, PartialEq)]
enum Expect {
    Nothing,
    Ok,
    Points,
    Wrong,
}

fn separator(rng: &mut Rng) -> &'static str {
    [" ", "  ", "\t", " \t "][rng.below(4) as usize]
}

/// One random line, what it must get back, and the point it stores if it is a valid put.
fn random_line(rng: &mut Rng, conn: usize) -> (String, Expect, Option<(String, i64, f64)>) {
    if rng.below(20) == 0 {
        return (
            [" ", "", "\t\r"][rng.below(3) as usize].to_string(),
            Expect::Nothing,
            None,
        );
    }
    let (command, known) = COMMANDS[rng.below(COMMANDS.len() as u64) as usize];
    let metric = match rng.below(10) {
        0 => "*".to_string(),
        n => format!("c{conn}.m{n}"),
    };
    let (value, parsed_value) = VALUES[rng.below(VALUES.len() as u64) as usize];
    let (timestamp, parsed_timestamp) = TIMESTAMPS[rng.below(TIMESTAMPS.len() as u64) as usize];
    let arity = rng.below(5) as usize;
    let args: Vec<&str> = [metric.as_str(), value, timestamp]
        .into_iter()
        .chain(std::iter::once("extra"))
        .take(arity)
        .filter(|a| !a.is_empty())
        .collect();
    let mut line = String::new();
    if rng.below(4) == 0 {
        line.push_str(separator(rng));
    }
    line.push_str(command);
    for arg in &args {
        line.push_str(separator(rng));
        line.push_str(arg);
    }
    if rng.below(4) == 0 {
        line.push_str(separator(rng));
    }
    if rng.below(3) == 0 {
        line.push('\r');
    }
    let outcome = match (command, known, args.len()) {
        ("put", true, 3) if metric != "*" => match (parsed_value, parsed_timestamp) {
            (Some(v), Some(t)) if args[1] == value => {
                return (line, Expect::Ok, Some((metric, t, v)));
            }
            _ => Expect::Wrong,
        },
        ("get", true, 1) => Expect::Points,
        // A range: `get METRIC FROM TO` with whole-number bounds.
        ("get", true, 3) if args[1].parse::<i64>().is_ok() && args[2].parse::<i64>().is_ok() => {
            Expect::Points
        }
        _ => Expect::Wrong,
    };
    (line, outcome, None)
}

/// Reads one reply; checks its kind.
fn read_reply(reader: &mut impl BufRead, expect: &Expect) {
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    match expect {
        Expect::Ok => {
            let mut blank = String::new();
            reader.read_line(&mut blank).unwrap();
            assert_eq!((status.as_str(), blank.as_str()), ("ok\n", "\n"));
        }
        Expect::Wrong => {
            let mut rest = String::new();
            reader.read_line(&mut rest).unwrap();
            reader.read_line(&mut rest).unwrap();
            assert_eq!(
                (status.as_str(), rest.as_str()),
                ("error\n", "wrong command\n\n")
            );
        }
        Expect::Points => {
            assert_eq!(status, "ok\n");
            loop {
                let mut line = String::new();
                assert!(reader.read_line(&mut line).unwrap() > 0);
                if line == "\n" {
                    break;
                }
                assert_eq!(line.split(' ').count(), 3, "{line:?}");
            }
        }
        Expect::Nothing => unreachable!(),
    }
}

#[test]
fn random_requests_get_exactly_one_right_reply_and_store_exactly() {
    const CONNECTIONS: usize = 8;
    const LINES: usize = 3000;
    let server = TestServer::start();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|conn| {
            let stream = server.connect();
            thread::spawn(move || {
                let mut rng = Rng::new(0xC0FFEE + conn as u64);
                let mut model = BTreeMap::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut sent = 0;
                while sent < LINES {
                    // Pipelined batches of random size; then every reply, in order.
                    let batch = 1 + rng.below(64) as usize;
                    let mut bytes = String::new();
                    let mut expected = Vec::new();
                    for _ in 0..batch {
                        let (line, expect, stored) = random_line(&mut rng, conn);
                        bytes.push_str(&line);
                        bytes.push('\n');
                        if let Some((metric, t, v)) = stored {
                            model.insert((metric, t), v);
                        }
                        if expect != Expect::Nothing {
                            expected.push(expect);
                        }
                    }
                    writer.write_all(bytes.as_bytes()).unwrap();
                    for expect in &expected {
                        read_reply(&mut reader, expect);
                    }
                    sent += batch;
                }
                model
            })
        })
        .collect();
    let mut expected = String::new();
    let mut model = BTreeMap::new();
    for worker in workers {
        model.extend(worker.join().unwrap());
    }
    // `get *` order: by metric name bytes, then timestamp.
    for ((metric, timestamp), value) in &model {
        let mut text = Vec::new();
        metrics::protocol::write_float(&mut text, *value);
        expected.push_str(&format!(
            "{metric} {} {timestamp}\n",
            String::from_utf8(text).unwrap()
        ));
    }
    assert!(model.len() > 100, "too few valid puts: {}", model.len());
    assert_eq!(server.dump(), expected);
}

#[test]
fn random_bytes_and_random_disconnects_do_not_hurt_the_server() {
    let mut server = TestServer::start();
    let mut rng = Rng::new(42);
    let mut watcher = server.connect();
    for round in 0..300 {
        let mut s = TcpStream::connect(server.addr).unwrap();
        let len = rng.below(4096) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| match rng.below(10) {
                0 => b'\n',
                1 => b' ',
                2..=4 => b"putget*.-0123456789e"[rng.below(20) as usize],
                _ => rng.next() as u8,
            })
            .collect();
        // Cut anywhere: mid-line, mid-UTF-8 sequence, before or after any reply.
        let cut = rng.below(len as u64 + 1) as usize;
        let _ = s.write_all(&bytes[..cut]);
        if rng.below(2) == 0 {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        drop(s);
        if round % 50 == 0 {
            common::exchange(&mut watcher, b"put watcher 1 1\n", b"ok\n\n");
        }
    }
    assert!(server.is_running());
    let mut fresh = server.connect();
    common::exchange(&mut fresh, b"get watcher\n", b"ok\nwatcher 1.0 1\n\n");
}
