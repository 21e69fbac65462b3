//! The library client against the real server, and against scripted fake servers for the
//! failures a real one does not produce.

mod common;

use common::{fake_server, TestServer};
use metrics::{Client, ClientError};
use std::net::TcpListener;
use std::time::Duration;

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
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    match Client::connect(addr, Some(Duration::from_secs(5))) {
        Err(e @ ClientError::Connect { .. }) => {
            assert!(
                e.to_string()
                    .starts_with(&format!("cannot connect to {addr}: ")),
                "{e}"
            );
            assert!(std::error::Error::source(&e).is_some());
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
