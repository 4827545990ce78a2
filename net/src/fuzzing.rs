//! Entry points for the fuzz targets in `fuzz/` and the corpus replay test.
//! Each takes arbitrary bytes and must never panic.

use crate::codec::Decoder;
use crate::frame::{Channel, split_frame};

/// The first byte picks the data channel; the rest is the frame.
fn pick_channel(data: &[u8]) -> Option<(Channel, &[u8])> {
    let (&pick, rest) = data.split_first()?;
    let channel = if pick & 1 == 0 {
        Channel::State
    } else {
        Channel::Actions
    };
    Some((channel, rest))
}

/// The frame header alone.
pub fn frame_header(data: &[u8]) {
    let _ = split_frame(data);
}

/// A client message on either channel, as the server decodes it. The first
/// byte picks the channel.
pub fn client_message(data: &[u8]) {
    let Some((channel, rest)) = pick_channel(data) else {
        return;
    };
    let mut decoder = Decoder::default();
    let _ = decoder.decode_client(rest, channel);
}

/// Arbitrary bytes as the payload of a well-formed frame of one client
/// kind, so the fuzzer spends its time inside that kind's archive checks.
pub fn client_payload(kind: crate::frame::MessageKind, data: &[u8]) {
    let max = kind.payload_bytes_max();
    let data = &data[..data.len().min(max)];
    let mut frame = vec![0u8; crate::frame::FRAME_HEADER_LEN + data.len()];
    crate::frame::write_header(&mut frame, kind, data.len(), 1, 1);
    frame[crate::frame::FRAME_HEADER_LEN..].copy_from_slice(data);
    let mut decoder = Decoder::default();
    let _ = decoder.decode_client(&frame, kind.channel());
}

/// A server message, as clients and bots decode it.
pub fn server_message(data: &[u8]) {
    let Some((channel, rest)) = pick_channel(data) else {
        return;
    };
    let mut decoder = Decoder::default();
    let _ = decoder.decode_server(rest, channel);
}

/// A snapshot payload as a client applies it: as tick 2 to a fresh client,
/// then (if that was refused) as tick 1, and as tick 3 on top of whatever
/// the first applications left, so deltas can name baselines it holds.
pub fn snapshot(data: &[u8]) {
    use crate::snapshot::SnapshotReceiver;
    let mut receiver = SnapshotReceiver::new(32, 256);
    let _ = receiver.apply(2, data);
    let _ = receiver.apply(1, data);
    let _ = receiver.apply(3, data);
}

/// A stateful run: arbitrary message sequences from two users into one
/// small instance. Input: records of `[len: u8][user/channel: u8][frame]`;
/// the simulation steps after every record. Checks that avatars stay
/// inside the world bounds with finite positions.
pub fn instance_inputs(data: &[u8]) {
    use crate::input::{InputLimits, PeerInput};
    use crate::snapshot::{ClientSnapshots, SnapshotConfig, SnapshotEncoder, WorldFrame};
    use engine::{Scene, SceneLimits, SimConfig, Simulation, UserIndex};

    const SCENE: &str = r#"{"version": 1, "bounds": {"min": [-20, -5, -20], "max": [20, 20, 20]},
        "spawn_points": [{"position": [0, 0, 0]}, {"position": [2, 0, 0]}],
        "entities": [
          {"transform": {"position": [0, -0.5, 0]}, "collider": {"shape": "cuboid", "half_extents": [20, 0.5, 20]}},
          {"transform": {"position": [3, 1, 3]}, "body": {"kind": "dynamic"}, "collider": {"shape": "ball", "radius": 0.3}},
          {"transform": {"position": [-3, 1, 3]}, "networked": true}
        ]}"#;
    let Ok(scene) = Scene::from_json(SCENE.as_bytes(), &SceneLimits::default()) else {
        return;
    };
    let Ok(mut sim) = Simulation::new(&scene, SimConfig::default()) else {
        return;
    };
    let mut peers = Vec::new();
    for u in 0..2 {
        if sim.spawn_avatar(UserIndex(u)).is_err() {
            return;
        }
        peers.push((
            PeerInput::new(UserIndex(u), InputLimits::default()),
            ClientSnapshots::new(SnapshotConfig::default()),
        ));
    }
    let quantizer = crate::quant::Quantizer::new(sim.bounds());
    let mut frame = WorldFrame::default();
    let mut decoder = Decoder::default();
    let mut encoder = SnapshotEncoder::default();
    let mut rest = data;
    let mut records = 0;
    while let [len, pick, tail @ ..] = rest {
        records += 1;
        if records > 64 {
            break;
        }
        let len = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        let channel = if pick & 2 == 0 {
            Channel::State
        } else {
            Channel::Actions
        };
        let (peer, snapshots) = &mut peers[usize::from(pick & 1)];
        if let Ok(msg) = decoder.decode_client(bytes, channel) {
            let user = peer.user();
            // Ownership is decided as the instance does, between the two peers.
            if let crate::input::Outcome::Ownership { network_id, op } =
                peer.handle(&mut sim, snapshots, &msg)
            {
                let _ =
                    crate::input::change_ownership(&mut sim, user, network_id, op, 4, |u| u < 2);
            }
        }
        sim.step();
        frame.capture(sim.world(), &quantizer);
        for (_, snapshots) in &mut peers {
            let _ = snapshots.encode(&mut encoder, &frame, engine::Vec3::ZERO, records);
        }
        let bounds = *sim.bounds();
        for id in sim.world().optional.avatars.ids() {
            if let Ok(t) = sim.world().transform(*id) {
                assert!(t.position.is_finite(), "avatar position not finite");
                let p = t.position;
                let slack = 1.0;
                assert!(
                    p.x >= bounds.min.x - slack
                        && p.x <= bounds.max.x + slack
                        && p.z >= bounds.min.z - slack
                        && p.z <= bounds.max.z + slack,
                    "avatar left the bounds: {p:?}"
                );
            }
        }
    }
}

/// The STUN USERNAME extraction of the shard's demux. Whatever it returns
/// must be a part of the datagram without a colon.
pub fn stun_username(data: &[u8]) {
    if let Some(ufrag) = crate::stun::local_ufrag(data) {
        assert!(!ufrag.contains(':'));
        assert!(ufrag.len() < data.len());
    }
}
