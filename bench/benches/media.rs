//! What forwarding audio costs the shard's thread: one Opus packet from a
//! publisher in a media instance, received (SRTP decrypted, demuxed to its
//! track) and written to each of N receivers (renumbered, SRTP encrypted,
//! queued for the socket). Real str0m peers joined through the harness.
//!
//! Only the shard's work is timed: the publisher's packet is made and
//! encrypted outside the timer, and the receivers do not process what they
//! are sent; between iterations the harness runs (untimed) so every peer
//! keeps its connection alive with its own timers and feedback.
//!
//! Audio consumers per core = 1 s / (time per packet / N receivers × 50
//! packets per second); `docs/media.md` gives the figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use instanceserver::config::Config;
use instanceserver::harness::{Harness, Network};
use net::client::ClientEvent;
use net::messages::TrackKind;
use state::commands::Topics;

/// A media instance with one audio publisher and `receivers` members who
/// have all answered the node's offer of its track.
fn room(receivers: usize) -> (Harness, usize) {
    let mut config = Config::default();
    config.shard.peers_max = receivers + 8;
    let mut h = Harness::new(config, Network::perfect(), 1);
    h.create_media_instance("room", receivers as u32 + 1);
    let ann = h
        .join_publishing("room", "ann", Topics::All, &[TrackKind::Audio])
        .unwrap();
    let members: Vec<usize> = (0..receivers)
        .map(|i| h.join("room", &format!("u{i}")).unwrap())
        .collect();
    let ready = h.run_until(Duration::from_secs(30), |h| {
        members.iter().all(|&c| {
            h.clients[c]
                .events
                .iter()
                .any(|e| matches!(e, ClientEvent::Receiving { .. }))
        })
    });
    assert!(ready, "every receiver is offered the track");
    // Their answers reach the node.
    h.run_for(Duration::from_millis(200));
    (h, ann)
}

/// Publishes one packet (untimed), then times the shard receiving it and
/// writing it to every receiver (SRTP-encrypted datagrams in its send
/// queue, which the harness delivers afterwards); returns the elapsed time
/// and how many receivers it was written to.
fn forward_one(h: &mut Harness, ann: usize, seq: u64, payload: &[u8]) -> (Duration, u64) {
    let now = h.now();
    let mid = h.client(ann).published()[0].0;
    h.client_mut(ann)
        .write_rtp(mid, seq, (seq as u32) * 960, false, payload, now)
        .unwrap();
    let mut datagrams = Vec::new();
    while let Some(t) = h.client_mut(ann).poll_transmit() {
        datagrams.push(t.contents.to_vec());
    }
    let from = h.clients[ann].addr;
    let before = h.shard.metrics().media_packets_forwarded;
    let start = Instant::now();
    for d in &datagrams {
        h.shard.handle_datagram(from, black_box(d), now);
    }
    let elapsed = start.elapsed();
    (elapsed, h.shard.metrics().media_packets_forwarded - before)
}

fn forwarding(c: &mut Criterion) {
    let mut g = c.benchmark_group("media_forward_audio");
    g.sample_size(10);
    // Each iteration also runs 20 ms of the harness untimed: keep the
    // timed budget small.
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    let payload = [0x5au8; 80];
    for receivers in [1usize, 10, 50] {
        let (mut h, ann) = room(receivers);
        let mut seq = 1u64;
        let (_, sent) = forward_one(&mut h, ann, seq, &payload);
        assert_eq!(sent, receivers as u64, "written to every receiver");
        g.throughput(Throughput::Elements(receivers as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(receivers),
            &receivers,
            |b, _| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        seq += 1;
                        let (elapsed, sent) = forward_one(&mut h, ann, seq, &payload);
                        assert_eq!(sent, receivers as u64, "packet {seq}");
                        total += elapsed;
                        // 20 ms of everyone's timers and feedback, untimed.
                        h.run_for(Duration::from_millis(20));
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, forwarding);
criterion_main!(benches);
