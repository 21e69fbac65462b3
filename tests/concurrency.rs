//! Many clients at once share one store and lose nothing.

mod common;

use common::TestServer;
use std::thread;

/// Half the clients write their own metric, half share one.
fn metric_of(client: usize) -> String {
    if client.is_multiple_of(2) {
        format!("own.{client}")
    } else {
        "shared".to_string()
    }
}

#[test]
fn many_concurrent_clients_keep_every_point() {
    const CLIENTS: usize = 32;
    const PUTS: usize = 300;
    let server = TestServer::start();
    let writers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut client = server.client();
            thread::spawn(move || {
                for i in 0..PUTS {
                    // Half the clients write their own metric, half share one, all at distinct times.
                    let metric = metric_of(c);
                    let timestamp = (i * CLIENTS + c) as i64;
                    client
                        .put(&metric, timestamp as f64 + 0.5, Some(timestamp))
                        .unwrap();
                }
                // Each client reads back its own writes.
                let own = metric_of(c);
                let got = client.get(&own).unwrap();
                assert!(got[&own].len() >= PUTS);
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let all = server.client().get("*").unwrap();
    assert_eq!(all.len(), CLIENTS / 2 + 1);
    let total: usize = all.values().map(Vec::len).sum();
    assert_eq!(total, CLIENTS * PUTS);
    for (metric, points) in &all {
        assert!(
            points.windows(2).all(|w| w[0].0 < w[1].0),
            "{metric} not sorted"
        );
        for &(timestamp, value) in points {
            assert_eq!(value, timestamp as f64 + 0.5);
            let c = timestamp as usize % CLIENTS;
            let expected = metric_of(c);
            assert_eq!(metric, &expected);
        }
    }
}
