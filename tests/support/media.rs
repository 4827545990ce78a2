//! Shared by the media tests on the harness (`tests/media.rs`,
//! `tests/media_control.rs`).

#![allow(dead_code)]

use std::time::Duration;

use instanceserver::harness::Harness;
use net::client::ClientEvent;
use net::conn::Mid;

/// Opus at 50 packets a second: 20 ms of 48 kHz audio each.
pub const OPUS_TICKS_PER_PACKET: u32 = 960;

pub fn joined(h: &Harness, c: usize) -> bool {
    h.client(c).welcome().is_some()
}

/// The track ids client `c` is receiving (the server's offers applied).
pub fn receiving(h: &Harness, c: usize) -> Vec<u32> {
    h.clients[c]
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Receiving { track, .. } => Some(*track),
            _ => None,
        })
        .collect()
}

/// Client `c` sends `n` Opus packets of 20 ms on `mid`, numbered from
/// `first` (the number also in the payload's first 4 bytes), with an
/// audio level (RFC 6464) when `level` is given; the harness runs 20 ms
/// after each.
pub fn send_audio(h: &mut Harness, c: usize, mid: Mid, first: u32, n: u32, level: Option<u8>) {
    for i in first..first + n {
        let mut payload = vec![0u8; 80];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        let (seq, time, now) = (u64::from(i) + 1, i * OPUS_TICKS_PER_PACKET, h.now());
        let client = h.client_mut(c);
        match level {
            Some(level) => client.write_audio(mid, seq, time, level, &payload, now),
            None => client.write_rtp(mid, seq, time, false, &payload, now),
        }
        .unwrap();
        h.run_for(Duration::from_millis(20));
    }
}

/// The actions on `topic` client `c` was sent: (type, payload as text).
pub fn actions_of(h: &Harness, c: usize, topic: &str) -> Vec<(String, String)> {
    h.clients[c]
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Action(a) if a.topic == topic => Some((
                a.action_type.clone(),
                String::from_utf8_lossy(&a.payload).into_owned(),
            )),
            _ => None,
        })
        .collect()
}
