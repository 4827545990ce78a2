//! Voice and video through the shard (issue 12): members publish tracks,
//! the shard forwards each packet to the other members of the instance.
//! Real str0m peers (ICE, DTLS-SRTP, SCTP) on the harness's network.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use instanceserver::config::Config;
use instanceserver::harness::{Harness, Network};
use net::client::ClientEvent;
use net::messages::TrackKind;
use state::commands::Topics;

#[path = "support/media.rs"]
mod media_support;
use media_support::{actions_of, joined, receiving, send_audio};

/// (packet index carried in the payload, sequence number) of what `c`
/// received on `track`.
fn received(h: &Harness, c: usize, track: u32) -> Vec<(u32, u64)> {
    h.clients[c]
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Rtp {
                track: Some(t),
                seq_no,
                payload,
                ..
            } if *t == track => Some((
                u32::from_be_bytes(payload[..4].try_into().unwrap()),
                *seq_no,
            )),
            _ => None,
        })
        .collect()
}

/// Ann publishes a synthetic Opus track for five seconds; Bob and Carol
/// each get at least 95% of its packets, in order of their sequence
/// numbers, which count up with Ann's.
fn audio_reaches_both_subscribers(media_instance: bool, network: Network, seed: u64) {
    let mut h = Harness::new(Config::default(), network, seed);
    if media_instance {
        h.create_media_instance("room", 8);
    } else {
        h.create_instance("room", 8);
    }
    let ann = h
        .join_publishing("room", "ann", Topics::All, &[TrackKind::Audio])
        .unwrap();
    let bob = h.join("room", "bob").unwrap();
    let carol = h.join("room", "carol").unwrap();
    assert!(
        h.run_until(Duration::from_secs(10), |h| {
            [ann, bob, carol].iter().all(|&c| joined(h, c))
                && !receiving(h, bob).is_empty()
                && !receiving(h, carol).is_empty()
        }),
        "seed {seed}: joined and offered the track: bob {:?}, carol {:?}",
        receiving(&h, bob),
        receiving(&h, carol)
    );
    // Both were told who publishes it.
    for c in [bob, carol] {
        let added: Vec<_> = h.clients[c]
            .events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::TrackAdded {
                    track,
                    publisher,
                    kind,
                } => Some((*track, *publisher, *kind)),
                _ => None,
            })
            .collect();
        let ann_index = h.client(ann).welcome().unwrap().user_index;
        assert_eq!(
            added,
            vec![(receiving(&h, c)[0], ann_index, TrackKind::Audio)]
        );
    }
    let track = receiving(&h, bob)[0];
    let mid = h.client(ann).published()[0].0;
    const PACKETS: u32 = 250;
    send_audio(&mut h, ann, mid, 0, PACKETS, None);
    h.run_for(Duration::from_secs(1));
    for c in [bob, carol] {
        let got = received(&h, c, track);
        let mut indices: Vec<u32> = got.iter().map(|(i, _)| *i).collect();
        indices.sort_unstable();
        indices.dedup();
        assert!(
            indices.len() as u32 * 100 >= PACKETS * 95,
            "seed {seed}: client {c} got {} of {PACKETS} packets",
            indices.len()
        );
        // Sequence numbers keep their distance: renumbered from the
        // first forwarded packet, never shuffled.
        let (first_index, first_seq) = got[0];
        for &(i, seq) in &got {
            assert_eq!(
                seq - first_seq,
                u64::from(i - first_index),
                "seed {seed}: packet {i} went out as {seq}"
            );
        }
    }
    // Ann hears nothing of her own.
    assert!(receiving(&h, ann).is_empty());
    let m = h.shard.metrics();
    assert_eq!(m.media_tracks_published, 1);
    assert_eq!(m.media_packets_in, u64::from(PACKETS));
    assert!(m.media_packets_forwarded >= u64::from(PACKETS) * 2 * 95 / 100);
}

#[test]
fn an_opus_track_reaches_every_other_member_of_a_world_instance() {
    audio_reaches_both_subscribers(false, Network::perfect(), 1);
}

#[test]
fn an_opus_track_reaches_every_other_member_of_a_media_instance() {
    audio_reaches_both_subscribers(true, Network::perfect(), 2);
}

#[test]
fn forwarding_keeps_up_with_a_jittery_network() {
    let jitter = Network {
        loss: 0.0,
        delay_min: Duration::from_millis(5),
        delay_max: Duration::from_millis(40),
    };
    audio_reaches_both_subscribers(false, jitter, 3);
}

fn track_events(h: &Harness, c: usize) -> (Vec<(u32, u32)>, Vec<u32>) {
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for e in &h.clients[c].events {
        match e {
            ClientEvent::TrackAdded {
                track, publisher, ..
            } => added.push((*track, *publisher)),
            ClientEvent::TrackRemoved { track } => removed.push(*track),
            _ => {}
        }
    }
    (added, removed)
}

/// Bob joins without media and adds a microphone later (his offer over
/// `actions`); Ann, already in, is offered it and hears him. Dave joins
/// after: he is told of the track and offered it at once. When Bob
/// leaves, the others are told the track is gone.
#[test]
fn a_track_added_after_joining_reaches_members_already_in_and_late_joiners() {
    let mut h = Harness::new(Config::default(), Network::perfect(), 4);
    h.create_instance("room", 8);
    let ann = h.join("room", "ann").unwrap();
    let bob = h.join("room", "bob").unwrap();
    assert!(h.run_until(Duration::from_secs(10), |h| joined(h, ann)
        && joined(h, bob)));
    let now = h.now();
    let mid = h.client_mut(bob).add_track(TrackKind::Audio, now).unwrap();
    assert!(
        h.run_until(Duration::from_secs(5), |h| !receiving(h, ann).is_empty()),
        "ann is offered bob's new track"
    );
    let track = receiving(&h, ann)[0];
    let bob_index = h.client(bob).welcome().unwrap().user_index;
    assert_eq!(track_events(&h, ann).0, vec![(track, bob_index)]);
    send_audio(&mut h, bob, mid, 0, 50, None);
    let dave = h.join("room", "dave").unwrap();
    assert!(
        h.run_until(Duration::from_secs(10), |h| joined(h, dave)
            && receiving(h, dave) == vec![track]),
        "dave is offered the track on joining"
    );
    assert_eq!(track_events(&h, dave).0, vec![(track, bob_index)]);
    send_audio(&mut h, bob, mid, 50, 50, None);
    h.run_for(Duration::from_millis(200));
    assert!(received(&h, ann, track).len() >= 95, "ann hears bob");
    let dave_got = received(&h, dave, track);
    assert!(dave_got.len() >= 48, "dave hears bob: {}", dave_got.len());
    // Dave's numbering starts at 1 with the first packet he was sent.
    assert_eq!(dave_got[0].1, 1);
    h.client_mut(bob).close(now);
    assert!(
        h.run_until(Duration::from_secs(5), |h| track_events(h, ann).1
            == vec![track]
            && track_events(h, dave).1 == vec![track]),
        "the others are told the track is gone"
    );
}

/// Video over a network that loses 5% of datagrams both ways: the node
/// NACKs the publisher's losses and answers the receiver's NACKs from its
/// per-receiver cache, so the receiver ends up with (nearly) every packet,
/// where plain forwarding would leave it about a tenth short.
#[test]
fn lost_video_packets_are_nacked_and_retransmitted() {
    let lossy = Network {
        loss: 0.05,
        delay_min: Duration::from_millis(10),
        delay_max: Duration::from_millis(12),
    };
    let seed = 5;
    let mut h = Harness::new(Config::default(), lossy, seed);
    h.create_instance("room", 8);
    let ann = h
        .join_publishing("room", "ann", Topics::All, &[TrackKind::Video])
        .unwrap();
    let bob = h.join("room", "bob").unwrap();
    assert!(h.run_until(Duration::from_secs(20), |h| joined(h, ann)
        && joined(h, bob)
        && !receiving(h, bob).is_empty()));
    let track = receiving(&h, bob)[0];
    let mid = h.client(ann).published()[0].0;
    const PACKETS: u32 = 400;
    // 100 packets a second of "VP8": frames of four packets, 25 frames/s.
    for i in 0..PACKETS {
        let mut payload = vec![0u8; 300];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        let now = h.now();
        h.client_mut(ann)
            .write_rtp(
                mid,
                u64::from(i) + 1,
                (i / 4) * 3600,
                i % 4 == 3,
                &payload,
                now,
            )
            .unwrap();
        h.run_for(Duration::from_millis(10));
    }
    h.run_for(Duration::from_secs(2));
    let mut got: Vec<u32> = received(&h, bob, track).iter().map(|(i, _)| *i).collect();
    got.sort_unstable();
    got.dedup();
    // Packets lost before the receiver's first one cannot be asked for.
    let from = got[0];
    let expected = PACKETS - from;
    assert!(
        got.len() as u32 * 100 >= expected * 99,
        "seed {seed}: bob got {} of {expected} packets ({} lost on the way)",
        got.len(),
        h.network_counts().1
    );
}

fn keyframe_requests(h: &Harness, c: usize) -> usize {
    h.clients[c]
        .events
        .iter()
        .filter(|e| matches!(e, ClientEvent::KeyframeRequested { .. }))
        .count()
}

/// A receiver's keyframe request (PLI) reaches the video's publisher;
/// another within 500 ms is answered by the same keyframe, so it is not
/// relayed; one after that is.
#[test]
fn keyframe_requests_reach_the_publisher_at_most_twice_a_second() {
    let mut h = Harness::new(Config::default(), Network::perfect(), 6);
    h.create_instance("room", 8);
    let ann = h
        .join_publishing("room", "ann", Topics::All, &[TrackKind::Video])
        .unwrap();
    let bob = h.join("room", "bob").unwrap();
    let carol = h.join("room", "carol").unwrap();
    assert!(
        h.run_until(Duration::from_secs(10), |h| !receiving(h, bob).is_empty()
            && !receiving(h, carol).is_empty())
    );
    let mid = h.client(ann).published()[0].0;
    // Some video first: a receiver asks for keyframes of a stream it has.
    for i in 0..20u32 {
        let now = h.now();
        let payload = i.to_be_bytes();
        h.client_mut(ann)
            .write_rtp(mid, u64::from(i) + 1, i * 3000, true, &payload, now)
            .unwrap();
        h.run_for(Duration::from_millis(33));
    }
    let before = keyframe_requests(&h, ann);
    let mid_at = |h: &Harness, c: usize| match h.clients[c]
        .events
        .iter()
        .find(|e| matches!(e, ClientEvent::Receiving { .. }))
    {
        Some(ClientEvent::Receiving { mid, .. }) => *mid,
        _ => unreachable!(),
    };
    let (bob_mid, carol_mid) = (mid_at(&h, bob), mid_at(&h, carol));
    // Asks for a keyframe from client `c`, waits 100 ms, returns how many
    // requests reached Ann so far.
    let ask = |h: &mut Harness, c: usize, mid| {
        let now = h.now();
        h.client_mut(c).request_keyframe(mid, now).unwrap();
        h.run_for(Duration::from_millis(100));
        keyframe_requests(h, ann)
    };
    assert_eq!(
        ask(&mut h, bob, bob_mid),
        before + 1,
        "bob's request reached ann"
    );
    assert_eq!(
        ask(&mut h, carol, carol_mid),
        before + 1,
        "carol's, 100 ms later, did not"
    );
    h.run_for(Duration::from_millis(500));
    assert_eq!(
        ask(&mut h, carol, carol_mid),
        before + 2,
        "carol's, 700 ms later, did"
    );
    let m = h.shard.metrics();
    assert_eq!(m.media_keyframe_requests, 2 + before as u64);
    assert_eq!(m.media_keyframe_requests_coalesced, 1);
}

/// Tracks per member and publishers per instance are capped: a track over
/// a cap is not announced nor forwarded, and its publisher is told why.
#[test]
fn tracks_over_the_media_limits_are_refused_and_their_publisher_told() {
    let mut config = Config::default();
    config.instance.media_tracks_per_member_max = 1;
    config.instance.media_video_publishers_max = 1;
    let mut h = Harness::new(config, Network::perfect(), 7);
    h.create_instance("room", 8);
    // Two tracks where one is allowed.
    let ann = h
        .join_publishing(
            "room",
            "ann",
            Topics::All,
            &[TrackKind::Audio, TrackKind::Audio],
        )
        .unwrap();
    let vic = h
        .join_publishing("room", "vic", Topics::All, &[TrackKind::Video])
        .unwrap();
    // A second video publisher where one is allowed.
    let wes = h
        .join_publishing("room", "wes", Topics::All, &[TrackKind::Video])
        .unwrap();
    let bob = h.join("room", "bob").unwrap();
    assert!(h.run_until(Duration::from_secs(10), |h| {
        [ann, vic, wes, bob].iter().all(|&c| joined(h, c)) && receiving(h, bob).len() == 2
    }));
    h.run_for(Duration::from_secs(1));
    let (added, _) = track_events(&h, bob);
    let index = |c: usize| h.client(c).welcome().unwrap().user_index;
    let publishers: Vec<u32> = added.iter().map(|(_, p)| *p).collect();
    assert_eq!(publishers, vec![index(ann), index(vic)], "{added:?}");
    assert_eq!(receiving(&h, bob).len(), 2);
    let told = |c| actions_of(&h, c, "media");
    assert_eq!(told(ann).len(), 1, "{:?}", told(ann));
    assert_eq!(told(ann)[0].0, "track_refused");
    assert!(
        told(ann)[0]
            .1
            .ends_with("over instance.media_tracks_per_member_max"),
        "{:?}",
        told(ann)
    );
    assert!(
        told(wes)[0]
            .1
            .ends_with("over instance.media_video_publishers_max")
    );
    assert!(told(vic).is_empty());
    let m = h.shard.metrics();
    assert_eq!(m.media_tracks_published, 2);
    assert_eq!(m.refused_messages["media_tracks_per_member_max"], 1);
    assert_eq!(m.refused_messages["media_video_publishers_max"], 1);
}

/// A member that publishes in its join offer but never connects is never
/// announced: nobody is offered a track that will never play.
#[test]
fn a_publisher_that_never_connects_is_never_announced() {
    let mut h = Harness::new(Config::default(), Network::perfect(), 8);
    h.create_instance("room", 8);
    let bob = h.join("room", "bob").unwrap();
    assert!(h.run_until(Duration::from_secs(5), |h| joined(h, bob)));
    let ghost = h
        .join_publishing("room", "ghost", Topics::All, &[TrackKind::Audio])
        .unwrap();
    // The ghost vanishes once the node knows of its track (str0m reports
    // the join offer's tracks once DTLS is up), before its channels open.
    assert!(h.run_until(
        Duration::from_secs(5),
        |h| h.shard.metrics().media_tracks_published == 1
    ));
    h.clients[ghost].stopped = true;
    assert!(!joined(&h, ghost));
    h.run_for(Duration::from_secs(15));
    assert_eq!(track_events(&h, bob), (vec![], vec![]));
    assert!(receiving(&h, bob).is_empty());
    // A later joiner is not told of it either.
    let carol = h.join("room", "carol").unwrap();
    assert!(h.run_until(Duration::from_secs(5), |h| joined(h, carol)));
    h.run_for(Duration::from_millis(500));
    assert_eq!(track_events(&h, carol), (vec![], vec![]));
}

/// The member offers (adds a microphone) while the node's offer to it is on
/// the way: the member ignores the node's offer, the node drops it, answers
/// the member's, and offers again; in the end both tracks flow, and the
/// member's later removal reaches the others.
#[test]
fn crossed_offers_end_with_both_sides_agreed() {
    let slow = Network {
        loss: 0.0,
        delay_min: Duration::from_millis(30),
        delay_max: Duration::from_millis(30),
    };
    let mut h = Harness::new(Config::default(), slow, 9);
    h.create_instance("room", 8);
    let ann = h
        .join_publishing("room", "ann", Topics::All, &[TrackKind::Audio])
        .unwrap();
    assert!(h.run_until(Duration::from_secs(5), |h| joined(h, ann)));
    let bob = h.join("room", "bob").unwrap();
    // Bob's channels open as the node sends him its Welcome and its offer
    // of Ann's track, 30 ms away: his own offer crosses it.
    assert!(h.run_until(Duration::from_secs(5), |h| {
        h.clients[bob].events.contains(&ClientEvent::Connected)
    }));
    let now = h.now();
    let bob_mid = h.client_mut(bob).add_track(TrackKind::Audio, now).unwrap();
    assert!(
        h.run_until(Duration::from_secs(5), |h| !receiving(h, bob).is_empty()
            && !receiving(h, ann).is_empty()),
        "bob receives {:?}, ann {:?}",
        receiving(&h, bob),
        receiving(&h, ann)
    );
    assert_eq!(h.client(bob).offers_ignored, 1, "the offers crossed");
    let ann_mid = h.client(ann).published()[0].0;
    let (from_ann, from_bob) = (receiving(&h, bob)[0], receiving(&h, ann)[0]);
    for i in 0..50u32 {
        let now = h.now();
        let payload = i.to_be_bytes();
        for (c, mid) in [(ann, ann_mid), (bob, bob_mid)] {
            h.client_mut(c)
                .write_rtp(mid, u64::from(i) + 1, i * 960, false, &payload, now)
                .unwrap();
        }
        h.run_for(Duration::from_millis(20));
    }
    h.run_for(Duration::from_millis(200));
    assert_eq!(received(&h, bob, from_ann).len(), 50);
    assert_eq!(received(&h, ann, from_bob).len(), 50);
    // Bob stops publishing: Ann is told the track is gone.
    let now = h.now();
    h.client_mut(bob).remove_track(bob_mid, now).unwrap();
    assert!(
        h.run_until(Duration::from_secs(5), |h| track_events(h, ann).1
            == vec![from_bob]),
        "ann is told bob's track is gone"
    );
}

/// A forwarded packet leaves the node at once, not at the receiver
/// connection's next timer: with 1 ms each way it arrives within 5 ms.
#[test]
fn a_forwarded_packet_arrives_within_milliseconds() {
    let mut h = Harness::new(Config::default(), Network::perfect(), 10);
    h.create_media_instance("room", 4);
    let ann = h
        .join_publishing("room", "ann", Topics::All, &[TrackKind::Audio])
        .unwrap();
    let bob = h.join("room", "bob").unwrap();
    assert!(h.run_until(Duration::from_secs(10), |h| !receiving(h, bob).is_empty()));
    h.run_for(Duration::from_millis(500));
    let track = receiving(&h, bob)[0];
    let mid = h.client(ann).published()[0].0;
    for i in 0..20u32 {
        let now = h.now();
        h.client_mut(ann)
            .write_rtp(mid, u64::from(i) + 1, i * 960, false, &i.to_be_bytes(), now)
            .unwrap();
        h.run_for(Duration::from_millis(5));
        assert_eq!(
            received(&h, bob, track).len(),
            i as usize + 1,
            "packet {i} within 5 ms"
        );
        h.run_for(Duration::from_millis(15));
    }
}
