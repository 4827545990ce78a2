//! What the connection layer allocates per datagram in steady state, on
//! the receive path (demux, DTLS, SCTP, the message event) and the send
//! path (a frame written, the datagram queued). The layer itself
//! allocates nothing per datagram; what is counted here is str0m's: the
//! `Vec` of each message it hands over and of each `Transmit` it queues,
//! and its SCTP and DTLS bookkeeping. The bounds keep that from growing
//! unnoticed. One test only in this binary: the counting allocator is
//! process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/pair.rs"]
mod pair;

use std::alloc::System;
use std::time::Duration;

use net::conn::ConnEvent;
use net::messages::Pong;
use net::{Channel, Encoder, MessageKind};
use pair::{CLIENT, Pair, config};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Inputs and frames measured.
const ROUNDS: usize = 200;
/// Allocations per received input datagram at most, all str0m's (15.5
/// measured with str0m 0.25 on 2026-12-03).
const RECEIVE_ALLOCATIONS_MAX: usize = 20;
/// Allocations per sent frame at most, until its datagram is queued, all
/// str0m's (19 measured with str0m 0.25 on 2026-12-03).
const SEND_ALLOCATIONS_MAX: usize = 24;

#[test]
fn steady_state_datagrams_allocate_only_what_str0m_does() {
    let mut p = Pair::new(config());
    assert!(p.open());
    let client = CLIENT.parse().unwrap();
    let frame = Encoder::default()
        .encode(
            MessageKind::Pong,
            1,
            7,
            &Pong {
                client_time_us: 1,
                server_tick: 7,
            },
        )
        .unwrap()
        .to_vec();
    let mut received = (0usize, 0usize);
    let mut sent = (0usize, 0usize);
    for round in 0..2 * ROUNDS {
        let measure = round >= ROUNDS; // the first half warms up
        // Receive: one input datagram from the client.
        let now = p.now;
        p.client.send_input(Vec::new(), now).unwrap();
        let datagrams: Vec<_> = std::iter::from_fn(|| p.client.poll_transmit()).collect();
        let region = Region::new(GLOBAL);
        for t in &datagrams {
            p.conns.handle_datagram(client, &t.contents, now);
        }
        let mut messages = 0;
        while let Some(e) = p.conns.poll_event() {
            messages += usize::from(matches!(e, ConnEvent::Message(..)));
        }
        let change = region.change();
        assert_eq!(messages, 1, "one input, one message");
        if measure {
            received.0 += change.allocations + change.reallocations;
            received.1 += datagrams.len();
        }
        // Send: one frame to the client, out to the transmit queue.
        let region = Region::new(GLOBAL);
        p.conns.send(p.key, Channel::State, &frame).unwrap();
        p.conns.flush(now);
        let change = region.change();
        if measure {
            sent.0 += change.allocations + change.reallocations;
            sent.1 += 1;
        }
        p.deliver();
        p.run_for(Duration::from_millis(16));
    }
    let per_received = received.0 as f64 / received.1 as f64;
    let per_sent = sent.0 as f64 / sent.1 as f64;
    println!(
        "str0m allocations: {per_received:.2} per received datagram, {per_sent:.2} per sent frame"
    );
    assert!(
        per_received <= RECEIVE_ALLOCATIONS_MAX as f64,
        "{per_received:.2} allocations per received datagram"
    );
    assert!(
        per_sent <= SEND_ALLOCATIONS_MAX as f64,
        "{per_sent:.2} allocations per sent frame"
    );
}
