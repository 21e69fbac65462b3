//! The protocol on the wire, byte for byte, against the real server.

mod common;

use common::{exchange, expect, TestServer};
use std::io::Write;
use std::thread;

const OK: &[u8] = b"ok\n\n";
const WRONG: &[u8] = b"error\nwrong command\n\n";

#[test]
fn put_replies_ok_and_get_returns_the_point() {
    let server = TestServer::start();
    let mut s = server.connect();
    exchange(&mut s, b"put palm.cpu 0.5 1150864247\n", OK);
    exchange(
        &mut s,
        b"get palm.cpu\n",
        b"ok\npalm.cpu 0.5 1150864247\n\n",
    );
}

#[test]
fn get_star_returns_every_metric_sorted() {
    let server = TestServer::start();
    let mut s = server.connect();
    for line in [
        "put palm.cpu 2.0 1150864248\n",
        "put eardrum.cpu 3.0 1150864250\n",
        "put palm.cpu 0.5 1150864247\n",
        "put Zeta 1 5\n",
        "put eardrum.memory 4200000 1150864251\n",
        "put eardrum.cpu 4 1150864249\n",
    ] {
        exchange(&mut s, line.as_bytes(), OK);
    }
    exchange(
        &mut s,
        b"get *\n",
        b"ok\n\
          Zeta 1.0 5\n\
          eardrum.cpu 4.0 1150864249\n\
          eardrum.cpu 3.0 1150864250\n\
          eardrum.memory 4200000.0 1150864251\n\
          palm.cpu 0.5 1150864247\n\
          palm.cpu 2.0 1150864248\n\
          \n",
    );
    exchange(
        &mut s,
        b"get eardrum.cpu\n",
        b"ok\neardrum.cpu 4.0 1150864249\neardrum.cpu 3.0 1150864250\n\n",
    );
}

#[test]
fn unknown_metric_returns_empty_and_creates_nothing() {
    let server = TestServer::start();
    let mut s = server.connect();
    exchange(&mut s, b"get nothing.here\n", b"ok\n\n");
    exchange(&mut s, b"get *\n", b"ok\n\n");
}

#[test]
fn same_metric_and_timestamp_overwrites() {
    let server = TestServer::start();
    let mut s = server.connect();
    exchange(&mut s, b"put m 1.0 10\n", OK);
    exchange(&mut s, b"put m 2.5 10\n", OK);
    exchange(&mut s, b"get m\n", b"ok\nm 2.5 10\n\n");
}

#[test]
fn blank_lines_get_no_reply() {
    let server = TestServer::start();
    let mut s = server.connect();
    exchange(&mut s, b"\n\n   \n\t\r\nget x\n\n", b"ok\n\n");
    // Nothing else is pending: the next reply is exactly the next request's.
    exchange(&mut s, b"put x 1 1\n", OK);
}

#[test]
fn crlf_tabs_and_extra_spaces_are_accepted() {
    let server = TestServer::start();
    let mut s = server.connect();
    exchange(&mut s, b"put a 1 1\r\n", OK);
    exchange(&mut s, b"  put\t\ta   2  2 \t\r\n", OK);
    exchange(&mut s, b"\tget   a \r\n", b"ok\na 1.0 1\na 2.0 2\n\n");
}

#[test]
fn every_malformed_request_gets_wrong_command_and_the_connection_stays() {
    let server = TestServer::start();
    let mut s = server.connect();
    let bad: &[&[u8]] = &[
        b"hello\n",
        b"PUT a 1 1\n",
        b"GET a\n",
        b"Put a 1 1\n",
        b"put\n",
        b"put a\n",
        b"put a 1\n",
        b"put a 1 1 1\n",
        b"get\n",
        b"get a b\n",
        b"put * 1 1\n",
        b"put a x 1\n",
        b"put a 1,5 1\n",
        b"put a nan 1\n",
        b"put a inf 1\n",
        b"put a -inf 1\n",
        b"put a infinity 1\n",
        b"put a 1 1.5\n",
        b"put a 1 1e3\n",
        b"put a 1 x\n",
        b"put a 1 9223372036854775808\n",
        b"put \xff\xfe 1 1\n",
        b"get \xc3\x28\n",
    ];
    for request in bad {
        exchange(&mut s, request, WRONG);
    }
    exchange(&mut s, b"put a 1 1\n", OK);
    exchange(&mut s, b"get *\n", b"ok\na 1.0 1\n\n");
}

#[test]
fn numbers_are_read_like_rust_and_printed_like_python() {
    let server = TestServer::start();
    let mut s = server.connect();
    let cases = [
        ("10", "10.0"),
        ("0.5", "0.5"),
        ("2.156", "2.156"),
        ("1000", "1000.0"),
        ("1e3", "1000.0"),
        ("0.0001", "0.0001"),
        ("-1", "-1.0"),
        ("0", "0.0"),
        ("-0.0", "-0.0"),
        ("-2.25", "-2.25"),
        (".5", "0.5"),
        ("+7", "7.0"),
        ("1e16", "1e+16"),
        ("0.00001", "1e-05"),
        ("1e22", "1e+22"),
        ("123456789012345678", "1.2345678901234568e+17"),
        ("0.1", "0.1"),
    ];
    for (i, (sent, _)) in cases.iter().enumerate() {
        exchange(&mut s, format!("put m{i:02} {sent} {i}\n").as_bytes(), OK);
    }
    exchange(&mut s, b"put t 1 -5\n", OK);
    exchange(&mut s, b"put t 2 +5\n", OK);
    let mut expected = String::from("ok\n");
    for (i, (_, printed)) in cases.iter().enumerate() {
        expected.push_str(&format!("m{i:02} {printed} {i}\n"));
    }
    expected.push_str("t 1.0 -5\nt 2.0 5\n\n");
    exchange(&mut s, b"get *\n", expected.as_bytes());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start();
    let mut s = server.connect();
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for i in 0..500 {
        requests.extend_from_slice(format!("put p {i} {i}\n").as_bytes());
        expected.extend_from_slice(OK);
        if i % 100 == 99 {
            requests.extend_from_slice(b"bogus\n");
            expected.extend_from_slice(WRONG);
            requests.extend_from_slice(b"get p\n");
            expected.extend_from_slice(b"ok\n");
            for j in 0..=i {
                expected.extend_from_slice(format!("p {j}.0 {j}\n").as_bytes());
            }
            expected.push(b'\n');
        }
    }
    exchange(&mut s, &requests, &expected);
}

#[test]
fn a_request_split_across_segments_is_answered_once_complete() {
    let server = TestServer::start();
    let mut s = server.connect();
    for piece in [&b"pu"[..], b"t spl", b"it 1", b".5 4", b"2"] {
        s.write_all(piece).unwrap();
        s.flush().unwrap();
        thread::yield_now();
    }
    exchange(&mut s, b"\n", OK);
    s.write_all(b"get split\r").unwrap();
    exchange(&mut s, b"\n", b"ok\nsplit 1.5 42\n\n");
}

#[test]
fn two_clients_see_each_others_writes() {
    let server = TestServer::start();
    let mut a = server.connect();
    let mut b = server.connect();
    exchange(&mut a, b"put shared 1 1\n", OK);
    exchange(&mut b, b"get shared\n", b"ok\nshared 1.0 1\n\n");
    exchange(&mut b, b"put shared 2 2\n", OK);
    exchange(
        &mut a,
        b"get shared\n",
        b"ok\nshared 1.0 1\nshared 2.0 2\n\n",
    );
}

#[test]
fn metric_names_may_hold_any_other_bytes() {
    let server = TestServer::start();
    let mut s = server.connect();
    exchange(&mut s, "put темп.cpu 1 1\n".as_bytes(), OK);
    exchange(&mut s, b"put a*b 1 1\n", OK);
    exchange(
        &mut s,
        b"get *\n",
        "ok\na*b 1.0 1\nтемп.cpu 1.0 1\n\n".as_bytes(),
    );
}

#[test]
fn ipv6_loopback_is_served() {
    let server = TestServer::start_with(&["--host", "::1"]);
    assert!(server.addr.is_ipv6());
    let mut s = server.connect();
    exchange(&mut s, b"put v6 1 1\n", OK);
    expect(&mut s, b"");
}
