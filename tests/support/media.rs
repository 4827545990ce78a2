//! Shared by the media tests on the harness (`tests/media.rs`,
//! `tests/media_control.rs`).

#![allow(dead_code)]

use instanceserver::harness::Harness;
use net::client::ClientEvent;

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
