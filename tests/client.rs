//! The library client against the real server, and against scripted fake servers for the
//! failures a real one does not produce.

mod common;

use common::{fake_server, TestServer};
use metrics::{Client, ClientError};
use std::error::Error;
use std::net::TcpListener;
use std::time::{Duration, Instant};

#[test]
fn put_then_get_round_trips_through_the_server() {
    let server = TestServer::start();
    let mut client = server.client();
    client.put("palm.cpu", 0.5, Some(1150864247)).unwrap();
    client.put("palm.cpu", 2.0, Some(1150864248)).unwrap();
    client.put("eardrum.cpu", -3.25, Some(1150864250)).unwrap();
    let palm = client.get("palm.cpu").unwrap();
    assert_eq!(palm.len(), 1);
    assert_eq!(palm["palm.cpu"], vec![(1150864247, 0.5), (1150864248, 2.0)]);
    let all = client.get("*").unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["eardrum.cpu", "palm.cpu"]);
    assert_eq!(all["eardrum.cpu"], vec![(1150864250, -3.25)]);
    assert!(client.get("missing").unwrap().is_empty());
}

#[test]
fn put_without_timestamp_uses_now() {
    let server = TestServer::start();
    let mut client = server.client();
    let before = metrics::defaults::now();
    client.put("now", 1.0, None).unwrap();
    let after = metrics::defaults::now();
    let (timestamp, _) = client.get("now").unwrap()["now"][0];
    assert!((before..=after).contains(&timestamp));
}

#[test]
fn values_survive_the_text_exactly() {
    let server = TestServer::start();
    let mut client = server.client();
    let values = [
        0.1,
        1.0 / 3.0,
        1e-300,
        1.7976931348623157e308,
        -0.0,
        5e-324,
        1e16,
    ];
    for (t, v) in values.iter().enumerate() {
        client.put("exact", *v, Some(t as i64)).unwrap();
    }
    let got = client.get("exact").unwrap();
    for ((t, v), expected) in got["exact"].iter().zip(values) {
        assert_eq!(v.to_bits(), expected.to_bits(), "timestamp {t}");
    }
}

#[test]
fn invalid_arguments_are_refused_without_sending() {
    let (addr, seen) = fake_server(b"");
    let mut client = Client::connect(addr, Some(Duration::from_secs(5))).unwrap();
    for result in [
        client.put("", 1.0, Some(1)),
        client.put("a b", 1.0, Some(1)),
        client.put("a\nb", 1.0, Some(1)),
        client.put("*", 1.0, Some(1)),
        client.put("m", f64::NAN, Some(1)),
        client.put("m", f64::INFINITY, Some(1)),
    ] {
        assert!(
            matches!(result, Err(ClientError::InvalidArgument(_))),
            "{result:?}"
        );
    }
    assert!(matches!(
        client.get(""),
        Err(ClientError::InvalidArgument(_))
    ));
    assert!(matches!(
        client.get("x y"),
        Err(ClientError::InvalidArgument(_))
    ));
    drop(client);
    assert_eq!(seen.join().unwrap(), "");
}

#[test]
fn an_error_reply_carries_the_server_message() {
    let (addr, seen) = fake_server(b"error\nwrong command\n\n");
    let mut client = Client::connect(addr, Some(Duration::from_secs(5))).unwrap();
    match client.put("m", 1.5, Some(7)) {
        Err(ClientError::Server(message)) => assert_eq!(message, "wrong command"),
        other => panic!("{other:?}"),
    }
    drop(client);
    assert_eq!(seen.join().unwrap(), "put m 1.5 7\n");
}

#[test]
fn malformed_replies_are_reported() {
    for reply in [
        &b"ok\npalm.cpu 10.5 12 13\n\n"[..],
        b"ok\npalm.cpu ten 12\n\n",
        b"ok\npalm.cpu 1.0 1.5\n\n",
        b"yes\n\n",
        b"ok\nm 1.0 1\n\n",
    ] {
        let (addr, _) = fake_server(reply);
        let mut client = Client::connect(addr, Some(Duration::from_secs(5))).unwrap();
        let result = if reply.ends_with(b"m 1.0 1\n\n") {
            client.put("m", 1.0, Some(1)).map(|_| ())
        } else {
            client.get("palm.cpu").map(|_| ())
        };
        match result {
            Err(e @ ClientError::Malformed(_)) => {
                assert!(e.to_string().starts_with("malformed reply"), "{e}")
            }
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(reply)),
        }
    }
}

#[test]
fn a_reply_cut_short_is_an_io_error() {
    let (addr, _) = fake_server(b"ok\npalm.cpu 1.0 1\n");
    let mut client = Client::connect(addr, Some(Duration::from_secs(5))).unwrap();
    match client.get("palm.cpu") {
        Err(e @ ClientError::Io(_)) => assert_eq!(e.to_string(), "connection closed by the server"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = Client::connect(addr, Some(Duration::from_millis(200))).unwrap();
    match client.get("x") {
        Err(e @ ClientError::Io(_)) => {
            assert_eq!(e.to_string(), "timed out waiting for the server")
        }
        other => panic!("{other:?}"),
    }
    drop(listener);
}

#[test]
fn a_refused_connection_is_a_connect_error() {
    let addr = common::dead_addr();
    match Client::connect(addr, Some(Duration::from_secs(5))) {
        Err(e @ ClientError::Connect { .. }) => {
            // The context in Display, the OS error as the source: each said once.
            assert_eq!(e.to_string(), format!("cannot connect to {addr}"));
            let source = e.source().expect("the OS error").to_string();
            assert!(!e.to_string().contains(&source), "{e}: {source}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_connection_is_reused_for_every_call() {
    let server = TestServer::start();
    let mut client = server.client();
    for i in 0..50 {
        client
            .put("reuse", f64::from(i), Some(i64::from(i)))
            .unwrap();
    }
    assert_eq!(client.get("reuse").unwrap()["reuse"].len(), 50);
    drop(client);
    assert!(server.wait_for_log("disconnected", 1));
    assert_eq!(server.logs().matches("connected (").count(), 1);
}

#[test]
fn an_error_reply_that_never_ends_is_malformed_at_the_cap() {
    for put in [false, true] {
        let (addr, server) = common::scripted_server(|stream| {
            common::read_request(&stream);
            common::stream_forever(&stream, b"error\n", b"x\n")
        });
        let mut client = Client::connect(addr, Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let result = if put {
            client.put("m", 1.0, Some(1))
        } else {
            client.get("m").map(|_| ())
        };
        match result {
            Err(ClientError::Malformed(what)) => {
                assert_eq!(what, "an error message is longer than 65536 bytes")
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        // Framing is lost: the connection is closed, so the server stops too.
        assert!(matches!(client.get("m"), Err(ClientError::Io(_))));
        drop(client);
        let sent = server.join().unwrap();
        assert!(sent < 64 << 20, "the server sent {sent} bytes");
    }
}

#[test]
fn a_put_reply_carrying_points_is_malformed_at_the_first() {
    let (addr, server) = common::scripted_server(|stream| {
        common::read_request(&stream);
        common::stream_forever(&stream, b"ok\n", b"m 1.0 1\n")
    });
    let mut client = Client::connect(addr, Some(Duration::from_secs(5))).unwrap();
    match client.put("m", 1.0, Some(1)) {
        Err(ClientError::Malformed(what)) => assert_eq!(what, "a point line in the reply to a put"),
        other => panic!("{other:?}"),
    }
    drop(client);
    server.join().unwrap();
}

#[test]
fn a_reply_line_that_never_ends_is_malformed_at_the_cap() {
    let (addr, server) = common::scripted_server(|stream| {
        common::read_request(&stream);
        common::stream_forever(&stream, b"ok\nm", b"1")
    });
    let mut client = Client::connect(addr, Some(Duration::from_secs(5))).unwrap();
    match client.get("m") {
        Err(ClientError::Malformed(what)) => {
            assert_eq!(what, "a reply line is longer than 1048576 bytes")
        }
        other => panic!("{other:?}"),
    }
    drop(client);
    server.join().unwrap();
}

#[test]
fn server_text_is_escaped_when_shown_and_kept_as_sent() {
    let (addr, _) = fake_server(b"error\n\x1b]0;owned\x07\nline two\n\n");
    let mut client = Client::connect(addr, Some(Duration::from_secs(5))).unwrap();
    match client.put("m", 1.0, Some(1)) {
        Err(e @ ClientError::Server(_)) => {
            assert_eq!(
                e.to_string(),
                "server replied with an error: \\u{1b}]0;owned\\u{7}\\nline two"
            );
            let ClientError::Server(message) = e else {
                unreachable!()
            };
            assert_eq!(message, "\x1b]0;owned\x07\nline two");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn get_range_returns_only_the_points_inside_the_range() {
    let server = TestServer::start();
    let mut client = server.client();
    for t in [10, 20, 30, 40] {
        client.put("a", t as f64, Some(t)).unwrap();
        client.put("b", -t as f64, Some(t)).unwrap();
    }
    client.put("edge", 1.0, Some(i64::MIN)).unwrap();
    client.put("edge", 2.0, Some(i64::MAX)).unwrap();
    let a = client.get_range("a", 15, 30).unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a["a"], vec![(20, 20.0), (30, 30.0)]);
    let all = client.get_range("*", 40, 40).unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(all["b"], vec![(40, -40.0)]);
    assert_eq!(
        client.get_range("edge", i64::MIN, i64::MAX).unwrap()["edge"],
        vec![(i64::MIN, 1.0), (i64::MAX, 2.0)]
    );
    assert!(client.get_range("a", 41, i64::MAX).unwrap().is_empty());
    assert!(client.get_range("a", 30, 20).unwrap().is_empty());
    assert!(client.get_range("nobody", 0, 100).unwrap().is_empty());
    // The whole range is the plain get.
    assert_eq!(
        client.get_range("*", i64::MIN, i64::MAX).unwrap(),
        client.get("*").unwrap()
    );
}

#[test]
fn get_range_each_streams_points_in_reply_order() {
    let server = TestServer::start();
    let mut client = server.client();
    for t in 0..100 {
        client.put("stream", t as f64, Some(t)).unwrap();
    }
    let mut seen = Vec::new();
    client
        .get_range_each("stream", 10, 19, |name, value, timestamp| {
            assert_eq!(name, "stream");
            seen.push((timestamp, value));
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(seen, (10..20).map(|t| (t, t as f64)).collect::<Vec<_>>());
}

#[test]
fn get_range_sends_the_range_request_and_refuses_bad_names() {
    let (addr, seen) = fake_server(b"ok\nm 1.0 -3\n\n");
    let mut client = Client::connect(addr, Some(Duration::from_secs(5))).unwrap();
    for bad in ["", "a b", "a\u{85}"] {
        assert!(matches!(
            client.get_range(bad, 0, 1),
            Err(ClientError::InvalidArgument(_))
        ));
    }
    let points = client.get_range("m", -9, i64::MAX).unwrap();
    assert_eq!(points["m"], vec![(-3, 1.0)]);
    drop(client);
    assert_eq!(seen.join().unwrap(), "get m -9 9223372036854775807\n");
}

#[test]
fn stats_counts_what_the_client_did() {
    let server = TestServer::start();
    let mut client = server.client();
    let before = client.stats().unwrap();
    let names: Vec<&String> = before.values.keys().collect();
    for name in [
        "metrics.points",
        "metrics.puts_total",
        "metrics.uptime_seconds",
    ] {
        assert!(
            before.value(name).is_some(),
            "{name} missing from {names:?}"
        );
    }
    let now = metrics::defaults::now();
    assert!(
        (now - 2..=now + 2).contains(&before.time),
        "{}",
        before.time
    );
    for t in 0..25 {
        client.put("counted", 1.0, Some(t)).unwrap();
    }
    client.get_range("counted", 0, 9).unwrap();
    let after = client.stats().unwrap();
    let grew = |name| after.value(name).unwrap() - before.value(name).unwrap();
    assert_eq!(grew("metrics.puts_total"), 25.0);
    assert_eq!(grew("metrics.gets_total"), 1.0);
    assert_eq!(after.value("metrics.points"), Some(25.0));
    assert_eq!(after.value("metrics.connections"), Some(1.0));
    assert_eq!(after.value("no.such.figure"), None);
    // Stats are not points: `get *` holds only what was put.
    assert_eq!(
        client.get("*").unwrap().keys().collect::<Vec<_>>(),
        ["counted"]
    );
}

#[test]
fn stats_reads_the_rows_of_the_reply() {
    let (addr, seen) = fake_server(b"ok\nmetrics.a 1.0 1700000000\nmetrics.b 2.5 1700000000\n\n");
    let mut client = Client::connect(addr, Some(Duration::from_secs(5))).unwrap();
    let stats = client.stats().unwrap();
    assert_eq!(stats.time, 1_700_000_000);
    assert_eq!(
        stats.values.into_iter().collect::<Vec<_>>(),
        [
            ("metrics.a".to_string(), 1.0),
            ("metrics.b".to_string(), 2.5)
        ]
    );
    drop(client);
    assert_eq!(seen.join().unwrap(), "stats\n");
    // An error reply is the server's error, as for any call.
    let (addr, _) = fake_server(b"error\nwrong command\n\n");
    let mut client = Client::connect(addr, Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(client.stats(), Err(ClientError::Server(m)) if m == "wrong command"));
}
