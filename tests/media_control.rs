//! What members and moderators control of the forwarded media (issue 12):
//! subscribing, simulcast layers, mute and pause, moderation, the active
//! speaker and bitrate caps. Real str0m peers (ICE, DTLS-SRTP, SCTP) on the
//! harness's network.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use instanceserver::config::Config;
use instanceserver::harness::{Harness, Network};
use net::client::ClientEvent;
use net::conn::{Mid, Rid};
use net::messages::TrackKind;
use state::commands::{Command, Topics};

#[path = "support/media.rs"]
mod media_support;
use media_support::{actions_of, joined, receiving, send_audio};

/// The payloads (and sequence numbers, RTP times) `c` received on `track`.
fn packets(h: &Harness, c: usize, track: u32) -> Vec<(Vec<u8>, u64, u32)> {
    h.clients[c]
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Rtp {
                track: Some(t),
                seq_no,
                time,
                payload,
                ..
            } if *t == track => Some((payload.to_vec(), *seq_no, *time)),
            _ => None,
        })
        .collect()
}

/// The `media` actions `c` was sent: (type, JSON payload).
fn media_actions(h: &Harness, c: usize) -> Vec<(String, serde_json::Value)> {
    actions_of(h, c, "media")
        .into_iter()
        .map(|(kind, payload)| {
            let json = serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null);
            (kind, json)
        })
        .collect()
}

fn of_type(h: &Harness, c: usize, kind: &str) -> Vec<serde_json::Value> {
    media_actions(h, c)
        .into_iter()
        .filter(|(t, _)| t == kind)
        .map(|(_, v)| v)
        .collect()
}

fn request(h: &mut Harness, c: usize, what: &str, track: u32, layer: Option<&str>) {
    let now = h.now();
    h.client_mut(c)
        .media_request(what, track, layer, now)
        .unwrap();
    h.run_for(Duration::from_millis(100));
}

/// Ann publishes audio; Bob and Carol are in, offered it and answered.
fn room_with_audio(config: Config, seed: u64) -> (Harness, [usize; 3], Mid, u32) {
    let mut h = Harness::new(config, Network::perfect(), seed);
    h.create_instance("room", 8);
    let ann = h
        .join_publishing("room", "ann", Topics::All, &[TrackKind::Audio])
        .unwrap();
    let bob = h.join("room", "bob").unwrap();
    let carol = h.join("room", "carol").unwrap();
    assert!(h.run_until(Duration::from_secs(10), |h| {
        [ann, bob, carol].iter().all(|&c| joined(h, c))
            && !receiving(h, bob).is_empty()
            && !receiving(h, carol).is_empty()
    }));
    let track = receiving(&h, bob)[0];
    let mid = h.client(ann).published()[0].0;
    (h, [ann, bob, carol], mid, track)
}

/// A member unsubscribes from a track and is sent none of its packets
/// while another member still is; it subscribes again and they come back.
/// A request about a track that does not exist is refused with the reason.
#[test]
fn a_member_unsubscribes_from_a_track_and_subscribes_again() {
    let (mut h, [ann, bob, carol], mid, track) = room_with_audio(Config::default(), 11);
    send_audio(&mut h, ann, mid, 0, 25, Some(40));
    let before = packets(&h, bob, track).len();
    assert!(before >= 20, "bob hears ann first: {before}");
    request(&mut h, bob, "unsubscribe", track, None);
    let bob_then = packets(&h, bob, track).len();
    let carol_then = packets(&h, carol, track).len();
    send_audio(&mut h, ann, mid, 25, 50, Some(40));
    assert_eq!(packets(&h, bob, track).len(), bob_then, "bob hears nothing");
    assert!(packets(&h, carol, track).len() >= carol_then + 48);
    request(&mut h, bob, "subscribe", track, None);
    send_audio(&mut h, ann, mid, 75, 50, Some(40));
    h.run_for(Duration::from_millis(100));
    let again = packets(&h, bob, track).len() - bob_then;
    assert!(again >= 48, "bob hears ann again: {again}");
    // Sequence numbers go on from where they stopped (no gap a receiver
    // would take for 50 lost packets).
    let got = packets(&h, bob, track);
    assert_eq!(got[bob_then].1, got[bob_then - 1].1 + 1);
    let m = h.shard.metrics();
    assert_eq!((m.media_tracks, m.media_subscriptions), (1, 2));
    // A track that does not exist, a request type that does not.
    request(&mut h, bob, "subscribe", 999, None);
    request(&mut h, bob, "shout", track, None);
    let refused = of_type(&h, bob, "refused");
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0]["track"], 999);
    assert_eq!(refused[0]["reason"], "no track 999 in this instance");
    assert!(
        refused[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("unknown media request \"shout\""),
        "{refused:?}"
    );
    assert_eq!(h.shard.metrics().refused_messages["media_request"], 2);
}

/// One frame of synthetic VP8 on layer `layer` (0 low .. 2 high): a
/// payload descriptor starting the frame, the frame header (P bit clear
/// on a keyframe), then the layer and frame number.
fn vp8_frame(layer: u8, frame: u32, key: bool) -> Vec<u8> {
    let mut p = vec![0x10, if key { 0x00 } else { 0x01 }, layer];
    p.extend_from_slice(&frame.to_be_bytes());
    p.extend_from_slice(&[0u8; 100]);
    p
}

/// A video publisher sends three simulcast layers (l, m, h). A receiver
/// that asks for `low` is sent only the low layer; when it asks for
/// `high`, the node asks the publisher for a high keyframe (PLI) and
/// switches at that keyframe: the receiver's stream goes on with the next
/// sequence number and a later RTP time, and carries only high packets
/// after. Another receiver, asking nothing, is sent the high layer
/// throughout.
#[test]
fn a_receiver_picks_its_simulcast_layer_and_switches_at_the_next_keyframe() {
    let mut h = Harness::new(Config::default(), Network::perfect(), 12);
    h.create_instance("room", 8);
    let ann = h.join("room", "ann").unwrap();
    let bob = h.join("room", "bob").unwrap();
    let carol = h.join("room", "carol").unwrap();
    assert!(h.run_until(Duration::from_secs(10), |h| {
        [ann, bob, carol].iter().all(|&c| joined(h, c))
    }));
    let now = h.now();
    let mid = h
        .client_mut(ann)
        .add_simulcast_track(&["l", "m", "h"], now)
        .unwrap();
    assert!(h.run_until(Duration::from_secs(5), |h| {
        !receiving(h, bob).is_empty() && !receiving(h, carol).is_empty()
    }));
    let track = receiving(&h, bob)[0];
    request(&mut h, bob, "layer", track, Some("low"));
    let rids = ["l", "m", "h"];
    let mut seq = [0u64; 3];
    let mut frame = 0u32;
    // Frames at 30 a second on the first `layers` layers; a keyframe on
    // the first and on each layer the node asks for one of.
    let mut send = |h: &mut Harness, frames: u32, layers: usize| {
        for _ in 0..frames {
            let asked: Vec<Option<Rid>> = h.clients[ann]
                .events
                .drain(..)
                .filter_map(|e| match e {
                    ClientEvent::KeyframeRequested { rid, .. } => Some(rid),
                    _ => None,
                })
                .collect();
            for (l, rid) in rids.iter().enumerate().take(layers) {
                let key = frame == 0 || asked.contains(&Some(Rid::from(*rid)));
                seq[l] += 1;
                let now = h.now();
                h.client_mut(ann)
                    .write_rtp_layer(
                        mid,
                        Some(rid),
                        seq[l],
                        frame * 3000 + l as u32 * 7,
                        true,
                        &vp8_frame(l as u8, frame, key),
                        now,
                    )
                    .unwrap();
            }
            frame += 1;
            h.run_for(Duration::from_millis(33));
        }
    };
    send(&mut h, 60, 3);
    let low = packets(&h, bob, track);
    assert!(low.len() >= 55, "bob got {} low frames", low.len());
    assert!(
        low.iter().all(|(p, _, _)| p[2] == 0),
        "bob got only the low layer"
    );
    let carol_got = packets(&h, carol, track);
    assert!(carol_got.len() >= 55);
    assert!(carol_got.iter().all(|(p, _, _)| p[2] == 2), "carol: high");
    // Now high: one keyframe request for the high layer reaches Ann.
    request(&mut h, bob, "layer", track, Some("high"));
    send(&mut h, 30, 3);
    let all = packets(&h, bob, track);
    let switch = all
        .iter()
        .position(|(p, _, _)| p[2] == 2)
        .expect("bob switched to high");
    assert!(switch >= low.len(), "low until the switch");
    let (first_high, seq_at, time_at) = &all[switch];
    assert_eq!(first_high[1], 0x00, "the switch is at a keyframe");
    assert!(
        all[switch..].iter().all(|(p, _, _)| p[2] == 2),
        "only high after"
    );
    let (_, seq_before, time_before) = &all[switch - 1];
    assert_eq!(*seq_at, seq_before + 1, "numbering goes on");
    assert!(time_at > time_before, "RTP time goes on");
    // Every packet after is numbered one more than the one before.
    for w in all.windows(2) {
        assert_eq!(w[1].1, w[0].1 + 1);
    }
    assert!(
        all.len() - switch >= 20,
        "bob gets high frames after the switch"
    );
    let switched = of_type(&h, bob, "layer");
    assert_eq!(
        switched.last().unwrap(),
        &serde_json::json!({ "track": track, "layer": "high" })
    );
    let m = h.shard.metrics();
    assert_eq!(m.media_layer_switches, 1);
    assert!(m.media_keyframe_requests >= 1);
    // The publisher stops its high layer (short of bandwidth): a second
    // later its receivers go down to mid, at a mid keyframe the node asks
    // for, and back up when high comes back.
    let (bob_before, carol_before) = (all.len(), packets(&h, carol, track).len());
    send(&mut h, 60, 2);
    let carol_got = packets(&h, carol, track);
    let down = &carol_got[carol_before..];
    let first_mid = down
        .iter()
        .position(|(p, _, _)| p[2] == 1)
        .expect("carol went to mid");
    assert_eq!(down[first_mid].0[1], 0x00, "at a keyframe");
    assert!(down[first_mid..].iter().all(|(p, _, _)| p[2] == 1));
    assert!(
        down.len() - first_mid >= 20,
        "{} mid frames",
        down.len() - first_mid
    );
    assert!(packets(&h, bob, track).len() > bob_before + 20, "bob too");
    send(&mut h, 60, 3);
    let back = &packets(&h, carol, track)[carol_before + down.len()..];
    assert!(
        back.last().is_some_and(|(p, _, _)| p[2] == 2),
        "carol back on high"
    );
    for w in packets(&h, carol, track).windows(2) {
        assert_eq!(w[1].1, w[0].1 + 1, "carol's numbering has no gap");
    }
    // A layer that does not exist.
    request(&mut h, bob, "layer", track, Some("ultra"));
    let refused = of_type(&h, bob, "refused");
    assert_eq!(refused.len(), 1);
    assert!(refused[0]["reason"].as_str().unwrap().contains("\"ultra\""));
}

/// A publisher mutes its track: every member is told (`track_state`) and
/// no packet of it is forwarded; a member who joins meanwhile learns it
/// is muted. A moderator's mute (the control API's `MuteUser`) holds the
/// track too, and the publisher's own unmute is refused until the
/// moderator lifts it.
#[test]
fn mutes_and_a_moderators_mute_stop_forwarding_and_late_joiners_see_them() {
    let (mut h, [ann, bob, _carol], mid, track) = room_with_audio(Config::default(), 13);
    // Ann names her track by its mid (she is not told its id).
    let now = h.now();
    let mute = net::messages::Action {
        topic: "media".into(),
        action_type: "mute".into(),
        target: net::messages::Target::Server,
        cache: net::messages::Cache::No,
        payload: format!(r#"{{"mid":"{mid}"}}"#).into_bytes(),
    };
    h.client_mut(ann).send_action(&mute, now).unwrap();
    h.run_for(Duration::from_millis(100));
    let states = of_type(&h, bob, "track_state");
    assert_eq!(states.len(), 1);
    assert_eq!(states[0]["muted"], true);
    assert_eq!(states[0]["track"], track);
    send_audio(&mut h, ann, mid, 0, 25, Some(40));
    assert!(
        packets(&h, bob, track).is_empty(),
        "muted: nothing forwarded"
    );
    let dave = h.join("room", "dave").unwrap();
    assert!(h.run_until(Duration::from_secs(10), |h| {
        joined(h, dave) && !of_type(h, dave, "track_state").is_empty()
    }));
    assert_eq!(of_type(&h, dave, "track_state")[0]["muted"], true);
    request(&mut h, ann, "unmute", track, None);
    send_audio(&mut h, ann, mid, 25, 25, Some(40));
    assert!(packets(&h, bob, track).len() >= 24, "unmuted: heard again");
    // The moderator.
    h.command(Command::Moderate {
        instance_id: "room".into(),
        user_id: "ann".into(),
        audio: true,
        video: false,
        muted: true,
    });
    h.run_for(Duration::from_millis(100));
    let last = of_type(&h, bob, "track_state").pop().unwrap();
    assert_eq!(last["moderated"], true);
    assert_eq!(last["muted"], false);
    let heard = packets(&h, bob, track).len();
    request(&mut h, ann, "unmute", track, None);
    send_audio(&mut h, ann, mid, 50, 25, Some(40));
    assert_eq!(packets(&h, bob, track).len(), heard, "still held");
    let refused = of_type(&h, ann, "refused");
    assert_eq!(
        refused.last().unwrap()["reason"],
        format!("track {track} is muted by a moderator")
    );
    h.command(Command::Moderate {
        instance_id: "room".into(),
        user_id: "ann".into(),
        audio: true,
        video: false,
        muted: false,
    });
    h.run_for(Duration::from_millis(100));
    send_audio(&mut h, ann, mid, 75, 25, Some(40));
    assert!(packets(&h, bob, track).len() >= heard + 24, "lifted");
    // Only the publisher mutes its track.
    request(&mut h, bob, "mute", track, None);
    assert_eq!(
        of_type(&h, bob, "refused").last().unwrap()["reason"],
        format!("track {track} is not yours")
    );
    // Nobody else speaks on topic `media`: a member's broadcast of a fake
    // track state reaches no one.
    let before = of_type(&h, ann, "track_state").len();
    let now = h.now();
    let fake = net::messages::Action {
        topic: "media".into(),
        action_type: "track_state".into(),
        target: net::messages::Target::Everyone,
        cache: net::messages::Cache::No,
        payload: br#"{"track":0,"muted":true}"#.to_vec(),
    };
    h.client_mut(bob).send_action(&fake, now).unwrap();
    h.run_for(Duration::from_millis(100));
    assert_eq!(of_type(&h, ann, "track_state").len(), before);
    assert_eq!(
        h.shard.metrics().refused_messages["media_topic_reserved"],
        1
    );
}

/// Ann and Bob talk in turn, Carol listens: the node announces the active
/// speaker from the packets' audio levels, never more than four times a
/// second, and a member who joins is told who speaks.
#[test]
fn the_active_speaker_is_announced_at_most_four_times_a_second() {
    let mut h = Harness::new(Config::default(), Network::perfect(), 14);
    h.create_media_instance("room", 8);
    let ann = h
        .join_publishing("room", "ann", Topics::All, &[TrackKind::Audio])
        .unwrap();
    let bob = h
        .join_publishing("room", "bob", Topics::All, &[TrackKind::Audio])
        .unwrap();
    let carol = h.join("room", "carol").unwrap();
    assert!(h.run_until(Duration::from_secs(10), |h| {
        [ann, bob, carol].iter().all(|&c| joined(h, c)) && receiving(h, carol).len() == 2
    }));
    let index = |h: &Harness, c: usize| h.client(c).welcome().unwrap().user_index;
    let (ann_mid, bob_mid) = (
        h.client(ann).published()[0].0,
        h.client(bob).published()[0].0,
    );
    // Ann talks (-30 dBov), Bob is quiet (-90), for a second; then the
    // other way round.
    let mut n = 0u32;
    let mut turn = |h: &mut Harness, loud: usize, packets: u32| {
        for _ in 0..packets {
            for (c, mid) in [(ann, ann_mid), (bob, bob_mid)] {
                let level = if c == loud { 30 } else { 90 };
                let now = h.now();
                let mut payload = vec![0u8; 60];
                payload[..4].copy_from_slice(&n.to_be_bytes());
                h.client_mut(c)
                    .write_audio(mid, u64::from(n) + 1, n * 960, level, &payload, now)
                    .unwrap();
            }
            n += 1;
            h.run_for(Duration::from_millis(20));
        }
    };
    turn(&mut h, ann, 50);
    let speakers = of_type(&h, carol, "active_speaker");
    assert_eq!(speakers.len(), 1, "{speakers:?}");
    assert_eq!(speakers[0]["user"], index(&h, ann));
    turn(&mut h, bob, 50);
    let speakers = of_type(&h, carol, "active_speaker");
    assert_eq!(speakers.len(), 2, "{speakers:?}");
    assert_eq!(speakers[1]["user"], index(&h, bob));
    // They take turns every 600 ms for six seconds: the speaker follows
    // (a window with one voice in it names it).
    let before = speakers.len();
    for i in 0..10 {
        turn(&mut h, if i % 2 == 0 { ann } else { bob }, 30);
    }
    let changes = of_type(&h, carol, "active_speaker").len() - before;
    assert!((8..=10).contains(&changes), "{changes} changes in 6 s");
    // Every 60 ms: it may change at most every 250 ms.
    let before = of_type(&h, carol, "active_speaker").len();
    for i in 0..50 {
        turn(&mut h, if i % 2 == 0 { ann } else { bob }, 3);
    }
    let changes = of_type(&h, carol, "active_speaker").len() - before;
    assert!(changes <= 13, "{changes} changes in 3 s");
    assert_eq!(
        h.shard.metrics().media_speaker_changes,
        of_type(&h, carol, "active_speaker").len() as u64
    );
    // A joiner learns who speaks now.
    let dave = h.join("room", "dave").unwrap();
    assert!(h.run_until(Duration::from_secs(10), |h| joined(h, dave)
        && !of_type(h, dave, "active_speaker").is_empty()));
}

/// A track over its bitrate cap: packets beyond the cap (a one-second
/// bucket) are dropped, and its publisher is told once.
#[test]
fn a_track_over_its_bitrate_cap_is_cut_and_its_publisher_told() {
    let mut config = Config::default();
    config.instance.media_audio_bitrate_max = 16_000;
    let (mut h, [ann, bob, _carol], mid, track) = room_with_audio(config, 15);
    // 50 packets a second of 200 bytes: 80 kbit/s, five times the cap.
    for i in 0..150u32 {
        let mut payload = vec![0u8; 200];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        let now = h.now();
        h.client_mut(ann)
            .write_rtp(mid, u64::from(i) + 1, i * 960, false, &payload, now)
            .unwrap();
        h.run_for(Duration::from_millis(20));
    }
    let got = packets(&h, bob, track).len();
    // 3 s at 16 kbit/s and the bucket's first second: 8,000 bytes.
    assert!(
        (20..=41).contains(&got),
        "bob got {got} packets of 200 bytes"
    );
    let told = of_type(&h, ann, "track_limited");
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(
        told[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("over instance.media_audio_bitrate_max (16000 bit/s)")
    );
    assert!(h.shard.metrics().dropped["rtp_over_bitrate"] >= 100);
}
