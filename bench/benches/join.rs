//! What a join costs the shard's thread: `Connections::accept` of a real
//! client offer (SDP parsed, the peer's `Rtc` built from the shard's
//! config, the answer written), and beside it what generating a DTLS
//! certificate costs, which str0m did for every join until the connection
//! layer made one certificate per shard.
//!
//! Only the named call is timed: each iteration gets a fresh connection
//! layer (so the peer count does not grow) built outside the timer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use net::client::Session;
use net::conn::{ConnConfig, Connections};

fn layer() -> Connections {
    Connections::new(
        ConnConfig {
            local: "127.0.0.1:40000".parse().unwrap(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            send_queue_len: 1024,
            conns_max: 16,
            media: true,
            media_packet_cache: 1_024,
        },
        7,
    )
}

fn join(c: &mut Criterion) {
    let now = Instant::now();
    let (_, offer) = Session::new("127.0.0.1:5000".parse().unwrap(), now).unwrap();
    let mut g = c.benchmark_group("join");
    g.bench_function("accept", |b| {
        b.iter_batched(
            layer,
            |mut conns| {
                let accepted = conns.accept(&offer, now).unwrap();
                (conns, accepted)
            },
            BatchSize::PerIteration,
        )
    });
    // `layer()` installs the process's crypto provider.
    drop(layer());
    let provider = str0m::crypto::CryptoProvider::get_default().unwrap();
    g.bench_function("dtls_certificate", |b| {
        b.iter(|| provider.dtls_provider.generate_certificate().unwrap())
    });
    g.finish();
}

criterion_group!(benches, join);
criterion_main!(benches);
