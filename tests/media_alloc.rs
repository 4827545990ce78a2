//! Forwarding allocates nothing per packet in steady state (issue 12): the
//! instance's side of it (finding the track, its bitrate budget, the audio
//! level for the active speaker, each subscriber) is run on a real audio
//! packet, captured from a real connection, for ten subscribers, and the
//! counting allocator sees no allocation. (Simulcast video takes the same
//! path plus a layer comparison per subscriber; a switch, rare, sends an
//! action.) What the connection layer then
//! does per receiver (str0m's SRTP and its send queue) is str0m's, bounded
//! in `net/tests/conn_alloc.rs` for data frames. One test only in this
//! binary: the counting allocator is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use instanceserver::config::Config;
use instanceserver::harness::{Harness, Network};
use net::client::{ClientEvent, Session};
use net::conn::{ConnConfig, ConnKey, Connections, RtpDrop, RtpIn, SendError};
use net::messages::TrackKind;
use net::snapshot::SnapshotEncoder;
use net::{Channel, Decoder, Encoder};
use state::commands::{ShardMetrics, Topics};
use state::instance::{Io, Outbox};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const RECEIVERS: usize = 10;
const PACKETS: u64 = 1_000;

/// Takes what the instance writes and drops it.
#[derive(Default)]
struct Sink {
    rtp: u64,
}

impl Outbox for Sink {
    fn write(&mut self, _to: ConnKey, _channel: Channel, frame: &[u8]) -> Result<usize, SendError> {
        Ok(frame.len())
    }

    fn buffered(&mut self, _to: ConnKey, _channel: Channel) -> usize {
        0
    }

    fn write_rtp(&mut self, _to: ConnKey, _track: u32, _rtp: &RtpIn) -> Result<(), RtpDrop> {
        self.rtp += 1;
        Ok(())
    }
}

/// One Opus packet with its audio level, as the connection layer hands
/// it over: a client publishing audio, connected to a `Connections`.
fn captured_packet() -> RtpIn {
    let server: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let client: SocketAddr = "10.0.1.1:50000".parse().unwrap();
    let mut now = Instant::now();
    let mut conns = Connections::new(
        ConnConfig {
            local: server,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            send_queue_len: 4096,
            conns_max: 4,
            media: true,
            media_packet_cache: 1_024,
        },
        7,
    );
    let (mut session, offer) = Session::with_tracks(client, &[TrackKind::Audio], now).unwrap();
    let (_, answer) = conns.accept(&offer, now).unwrap();
    session.accept_answer(&answer, now).unwrap();
    let mid = session.published()[0].0;
    let mut open = false;
    let mut seq = 0;
    for _ in 0..500 {
        while let Some(t) = conns.poll_transmit() {
            session.handle_datagram(server, &t.contents, now);
        }
        while let Some(t) = session.poll_transmit() {
            conns.handle_datagram(client, &t.contents, now);
        }
        while let Some(e) = session.poll_event() {
            open |= e == ClientEvent::Connected;
        }
        while conns.poll_event().is_some() {}
        if let Some((_, _, rtp)) = conns.poll_rtp() {
            return rtp;
        }
        if open {
            seq += 1;
            session
                .write_audio(mid, seq, seq as u32 * 960, 30, &[7u8; 80], now)
                .unwrap();
        }
        now += Duration::from_millis(10);
        session.handle_timeout(now);
        conns.handle_timeout(now);
    }
    panic!("no packet from the publisher (open: {open})");
}

#[test]
fn forwarding_a_packet_to_ten_subscribers_allocates_nothing() {
    let rtp = captured_packet();
    assert!(
        rtp.packet.header.ext_vals.audio_level.is_some(),
        "the level is there: the active-speaker path runs"
    );
    let mut h = Harness::new(Config::default(), Network::perfect(), 1);
    h.create_media_instance("room", RECEIVERS as u32 + 1);
    let ann = h
        .join_publishing("room", "ann", Topics::All, &[TrackKind::Audio])
        .unwrap();
    let members: Vec<usize> = (0..RECEIVERS)
        .map(|i| h.join("room", &format!("u{i}")).unwrap())
        .collect();
    assert!(h.run_until(Duration::from_secs(30), |h| {
        members.iter().all(|&c| {
            h.clients[c]
                .events
                .iter()
                .any(|e| matches!(e, ClientEvent::Receiving { .. }))
        })
    }));
    let mid = h.client(ann).published()[0].0;
    let mut now = h.now();
    let instance = h.shard.instance_mut("room").unwrap();
    let user = instance
        .members()
        .iter()
        .find(|m| m.user_id == "ann")
        .unwrap()
        .user;
    let mut sink = Sink::default();
    let mut encoder = Encoder::default();
    let mut snapshots = SnapshotEncoder::default();
    let mut decoder = Decoder::default();
    let mut metrics = ShardMetrics::default();
    let mut removals = Vec::new();
    let mut forward = |now: Instant, sink: &mut Sink, metrics: &mut ShardMetrics| {
        let mut io = Io {
            out: sink,
            encoder: &mut encoder,
            snapshots: &mut snapshots,
            snapshot_divisor: 1,
            decoder: &mut decoder,
            metrics,
            removals: &mut removals,
            now,
            clock: Instant::now,
        };
        instance.forward_rtp(user, mid, &rtp, &mut io);
    };
    // Warm up: the first packets choose the speaker (an action to everyone).
    for _ in 0..100 {
        now += Duration::from_millis(20);
        forward(now, &mut sink, &mut metrics);
    }
    let before = sink.rtp;
    let region = Region::new(GLOBAL);
    for _ in 0..PACKETS {
        now += Duration::from_millis(20);
        forward(now, &mut sink, &mut metrics);
    }
    let change = region.change();
    assert_eq!(
        sink.rtp - before,
        PACKETS * RECEIVERS as u64,
        "each packet went to every subscriber"
    );
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "allocations while forwarding {PACKETS} packets to {RECEIVERS} subscribers"
    );
}
