//! The connection layer alone, against the client session over an
//! in-memory network: opening, messages both ways, timeouts, closes, demux.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/pair.rs"]
mod pair;

use std::time::Duration;

use net::client::ClientEvent;
use net::conn::{CloseReason, ConnConfig, ConnEvent, SendError};
use net::messages::{Input, Pong};
use net::{Channel, Encoder, MessageKind};
use pair::{Pair, config};

#[test]
fn a_connection_opens_and_carries_messages_both_ways() {
    let mut p = Pair::new(config());
    assert!(!p.conns.is_open(p.key));
    assert!(
        matches!(
            p.conns.send(p.key, Channel::Actions, b"x"),
            Err(SendError::NotOpen(Channel::Actions))
        ),
        "nothing is written before both channels open"
    );
    assert!(p.open(), "{:?}", p.server_events);
    assert!(p.conns.is_open(p.key));
    assert!(p.client.is_open());

    let now = p.now;
    p.client.send_input(Vec::new(), now).unwrap();
    p.deliver();
    let sent = Encoder::default()
        .encode(MessageKind::Input, 1, 0, &Input { owned: Vec::new() })
        .unwrap()
        .to_vec();
    assert!(
        p.server_events
            .iter()
            .any(|e| *e == ConnEvent::Message(p.key, Channel::State, sent.clone())),
        "{:?}",
        p.server_events
    );

    let pong = Pong {
        client_time_us: 42,
        server_tick: 7,
    };
    let frame = Encoder::default()
        .encode(MessageKind::Pong, 1, 7, &pong)
        .unwrap()
        .to_vec();
    assert_eq!(
        p.conns.send(p.key, Channel::State, &frame).unwrap(),
        frame.len()
    );
    let now = p.now;
    p.conns.flush(now);
    p.deliver();
    assert!(p.client_events.contains(&ClientEvent::Pong {
        client_time_us: 42,
        server_tick: 7
    }));
    let stats = p.conns.stats();
    assert!(stats.packets_in > 0 && stats.packets_out > 0 && stats.bytes_out > 0);
}

#[test]
fn an_open_connection_that_goes_quiet_times_out() {
    let mut p = Pair::new(config());
    assert!(p.open());
    p.client_gone = true;
    p.run_for(Duration::from_secs(11));
    assert!(
        p.server_events
            .contains(&ConnEvent::Closed(p.key, CloseReason::IdleTimedOut)),
        "{:?}",
        p.server_events
    );
    assert!(p.conns.is_empty());
    assert!(matches!(
        p.conns.send(p.key, Channel::State, b"x"),
        Err(SendError::Gone)
    ));
}

#[test]
fn a_connection_that_never_opens_times_out() {
    let mut p = Pair::new(config());
    p.client_gone = true;
    p.run_for(Duration::from_secs(6));
    assert_eq!(
        p.server_events,
        [ConnEvent::Closed(p.key, CloseReason::ConnectTimedOut)]
    );
    assert!(p.conns.is_empty());
}

#[test]
fn a_remote_close_is_reported_and_a_local_close_is_not() {
    let mut p = Pair::new(config());
    assert!(p.open());
    let now = p.now;
    p.client.close(now);
    p.run_for(Duration::from_millis(200));
    assert!(
        p.server_events
            .contains(&ConnEvent::Closed(p.key, CloseReason::Remote)),
        "{:?}",
        p.server_events
    );

    let mut q = Pair::new(config());
    assert!(q.open());
    q.conns.close(q.key);
    q.run_for(Duration::from_millis(200));
    assert!(
        !q.server_events
            .iter()
            .any(|e| matches!(e, ConnEvent::Closed(..))),
        "{:?}",
        q.server_events
    );
    assert!(q.conns.is_empty());
    assert!(
        q.client_events.contains(&ClientEvent::Closed),
        "{:?}",
        q.client_events
    );
}

#[test]
fn datagrams_from_strangers_are_dropped_and_counted() {
    let mut p = Pair::new(config());
    let now = p.now;
    p.conns
        .handle_datagram("192.0.2.9:1234".parse().unwrap(), &[0x17; 60], now);
    assert_eq!(p.conns.drops().0.get("unknown_source"), Some(&1));
    assert!(p.conns.poll_event().is_none());
}

#[test]
fn offers_past_the_limit_or_without_data_channels_are_refused() {
    let mut c = config();
    c.conns_max = 1;
    let mut p = Pair::new(c);
    let (_, offer) = net::client::Session::new("10.0.1.2:50000".parse().unwrap(), p.now).unwrap();
    let now = p.now;
    assert_eq!(
        p.conns.accept(&offer, now).unwrap_err(),
        net::conn::AcceptError::Full(1)
    );
    let mut q = Pair::new(config());
    let now = q.now;
    assert!(matches!(
        q.conns.accept("v=0\r\nnot an offer", now),
        Err(net::conn::AcceptError::BadOffer(_))
    ));
}

/// With media off (`webrtc.media = false`), an offer with audio and video
/// tracks is answered with those sections `inactive` (no media flows
/// either way); its data channels open as usual.
#[test]
fn with_media_off_audio_and_video_are_answered_inactive_and_the_channels_still_open() {
    use str0m::media::{Direction, MediaKind};
    let mut p = Pair::new(ConnConfig {
        media: false,
        ..config()
    });
    let now = p.now;
    let mut rtc = str0m::Rtc::builder().build(now);
    rtc.add_local_candidate(
        str0m::Candidate::host("10.0.1.3:50000".parse().unwrap(), "udp").unwrap(),
    );
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    api.add_channel("actions".into());
    let (offer, _) = api.apply().unwrap();
    let offer = offer.to_sdp_string();
    assert!(offer.contains("a=sendrecv") && offer.contains("a=sendonly"));
    let (_, answer) = p.conns.accept(&offer, now).unwrap();
    let sections: Vec<&str> = answer.split("m=").skip(1).collect();
    let media: Vec<&&str> = sections
        .iter()
        .filter(|s| s.starts_with("audio") || s.starts_with("video"))
        .collect();
    assert_eq!(media.len(), 2, "{answer}");
    for s in media {
        assert!(s.contains("a=inactive"), "{s}");
        assert!(
            !s.contains("a=sendrecv") && !s.contains("a=recvonly") && !s.contains("a=sendonly"),
            "{s}"
        );
    }
    assert!(answer.contains("m=application"));
    // And the usual client, whose offer has data channels only, opens.
    assert!(p.open(), "{:?}", p.server_events);
}
