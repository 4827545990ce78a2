//! Test vectors for the browser SDK (`web/`): frames of every message kind
//! and a run of snapshots (deltas of every width, rotations, velocities,
//! removals, a baseline table and escaped baseline ages), written by this
//! crate's encoders, with what a client must read from them (the Rust
//! `SnapshotReceiver`'s state after each one). `web/test/protocol.test.mjs`
//! checks the JavaScript decoder and encoder against them.
//!
//! The vectors are checked in (`web/test/vectors.json`); this test fails
//! when the Rust side no longer produces them, so the two cannot drift.
//! After a deliberate protocol change regenerate them with
//! `UPDATE_JS_VECTORS=1 cargo test -p net --test js_vectors` and commit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use engine::{Aabb, EntityId, Motion, Quat, Transform, Vec3, Velocity, World, WorldConfig};
use net::messages::*;
use net::quant::Quantizer;
use net::snapshot::{
    ArchivedSnapshotBody, ClientSnapshots, EntityState, SnapshotConfig, SnapshotEncoder,
    SnapshotReceiver, WorldFrame,
};
use net::{Channel, Decoder, Encoder, FRAME_HEADER_LEN, MessageKind, ServerMessage};
use serde_json::{Value, json};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn frame<T>(kind: MessageKind, sequence: u32, tick: u32, msg: &T) -> String
where
    T: for<'a, 'b> rkyv::Serialize<net::codec::FrameSerializer<'a, 'b>>,
{
    hex(Encoder::default()
        .encode(kind, sequence, tick, msg)
        .expect("encodes"))
}

fn target_json(t: Target) -> Value {
    match t {
        Target::Everyone => json!({"kind": "everyone"}),
        Target::User(u) => json!({"kind": "user", "user": u}),
        Target::Server => json!({"kind": "server"}),
    }
}

fn cache_json(c: Cache) -> &'static str {
    match c {
        Cache::No => "no",
        Cache::Keep => "keep",
        Cache::ReplaceOwn => "replace_own",
    }
}

fn broadcast_json(a: &ActionBroadcast) -> Value {
    json!({
        "sender": a.sender,
        "topic": a.topic,
        "actionType": a.action_type,
        "target": target_json(a.target),
        "cache": cache_json(a.cache),
        "payload": a.payload,
    })
}

fn op_json(op: OwnershipOp) -> Value {
    match op {
        OwnershipOp::Take => json!({"kind": "take"}),
        OwnershipOp::Release => json!({"kind": "release"}),
        OwnershipOp::Transfer { to } => json!({"kind": "transfer", "to": to}),
    }
}

/// Server → client frames and the object the SDK must decode each into.
fn server_messages() -> Vec<Value> {
    let long_payload: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    let broadcasts = [
        ActionBroadcast {
            sender: 3,
            topic: "chat".into(),
            action_type: "message".into(),
            target: Target::Everyone,
            cache: Cache::No,
            payload: "héllo".as_bytes().to_vec(),
        },
        ActionBroadcast {
            sender: u32::MAX,
            topic: "game.scores-v2_x".into(),
            action_type: "a type longer than eight bytes".into(),
            target: Target::User(7),
            cache: Cache::ReplaceOwn,
            payload: long_payload,
        },
        ActionBroadcast {
            sender: 0,
            topic: "t".into(),
            action_type: "x".into(),
            target: Target::Server,
            cache: Cache::Keep,
            payload: Vec::new(),
        },
    ];
    let mut out = Vec::new();
    let welcome = Welcome {
        user_id: "user-0123456789".into(),
        user_index: 2,
        avatar: 223,
        tick_hz: 60,
        snapshot_hz: 30,
        bounds_min: [-60.0, -20.0, -60.5],
        bounds_max: [60.0, 60.0, 60.25],
        position_bits: 17,
        cached_actions: broadcasts[..2].to_vec(),
        owners: vec![
            EntityOwner {
                network_id: 5,
                owner: 1,
            },
            EntityOwner {
                network_id: 9,
                owner: 2,
            },
        ],
    };
    out.push(json!({
        "name": "welcome",
        "channel": "actions",
        "frame": frame(MessageKind::Welcome, 1, 12, &welcome),
        "expect": {
            "kind": "Welcome", "sequence": 1, "tick": 12,
            "userId": welcome.user_id, "userIndex": 2, "avatar": 223,
            "tickHz": 60, "snapshotHz": 30,
            "boundsMin": [-60.0, -20.0, -60.5], "boundsMax": [60.0, 60.0, 60.25],
            "positionBits": 17,
            "cachedActions": broadcasts[..2].iter().map(broadcast_json).collect::<Vec<_>>(),
            "owners": [{"networkId": 5, "owner": 1}, {"networkId": 9, "owner": 2}],
        }
    }));
    let empty_welcome = Welcome {
        user_id: "u".into(),
        cached_actions: Vec::new(),
        owners: Vec::new(),
        ..welcome
    };
    out.push(json!({
        "name": "welcome with empty lists",
        "channel": "actions",
        "frame": frame(MessageKind::Welcome, 1, 0, &empty_welcome),
        "expect": {
            "kind": "Welcome", "sequence": 1, "tick": 0,
            "userId": "u", "userIndex": 2, "avatar": 223,
            "tickHz": 60, "snapshotHz": 30,
            "boundsMin": [-60.0, -20.0, -60.5], "boundsMax": [60.0, 60.0, 60.25],
            "positionBits": 17, "cachedActions": [], "owners": [],
        }
    }));
    for (i, b) in broadcasts.iter().enumerate() {
        let mut expect = broadcast_json(b);
        expect["kind"] = json!("ActionBroadcast");
        expect["sequence"] = json!(10 + i);
        expect["tick"] = json!(100);
        out.push(json!({
            "name": format!("action broadcast {i}"),
            "channel": "actions",
            "frame": frame(MessageKind::ActionBroadcast, 10 + i as u32, 100, b),
            "expect": expect,
        }));
    }
    let peer = PeerJoined {
        user_index: 4,
        user_id: "a-user-id-of-some-length".into(),
        name: "Zoë".into(),
        avatar: 230,
    };
    out.push(json!({
        "name": "peer joined", "channel": "actions",
        "frame": frame(MessageKind::PeerJoined, 2, 5, &peer),
        "expect": {"kind": "PeerJoined", "sequence": 2, "tick": 5, "userIndex": 4,
                   "userId": peer.user_id, "name": "Zoë", "avatar": 230}
    }));
    out.push(json!({
        "name": "peer left", "channel": "actions",
        "frame": frame(MessageKind::PeerLeft, 3, 6, &PeerLeft { user_index: 4 }),
        "expect": {"kind": "PeerLeft", "sequence": 3, "tick": 6, "userIndex": 4}
    }));
    for (i, owner) in [Some(7), None].into_iter().enumerate() {
        out.push(json!({
            "name": format!("ownership changed {i}"), "channel": "actions",
            "frame": frame(MessageKind::OwnershipChanged, 4, 7,
                           &OwnershipChanged { network_id: 42, owner }),
            "expect": {"kind": "OwnershipChanged", "sequence": 4, "tick": 7,
                       "networkId": 42, "owner": owner}
        }));
    }
    let refusals = [
        (
            OwnershipOp::Take,
            OwnershipRefusal::UnknownEntity,
            json!({"kind": "unknown_entity"}),
        ),
        (
            OwnershipOp::Take,
            OwnershipRefusal::Avatar,
            json!({"kind": "avatar"}),
        ),
        (
            OwnershipOp::Take,
            OwnershipRefusal::OwnedBy(3),
            json!({"kind": "owned_by", "value": 3}),
        ),
        (
            OwnershipOp::Release,
            OwnershipRefusal::NotOwner,
            json!({"kind": "not_owner"}),
        ),
        (
            OwnershipOp::Transfer { to: 9 },
            OwnershipRefusal::UnknownUser(9),
            json!({"kind": "unknown_user", "value": 9}),
        ),
        (
            OwnershipOp::Take,
            OwnershipRefusal::SceneBody,
            json!({"kind": "scene_body"}),
        ),
        (
            OwnershipOp::Take,
            OwnershipRefusal::TooMany(16),
            json!({"kind": "too_many", "value": 16}),
        ),
    ];
    for (i, (op, reason, expect)) in refusals.into_iter().enumerate() {
        out.push(json!({
            "name": format!("ownership refused {i}"), "channel": "actions",
            "frame": frame(MessageKind::OwnershipRefused, 5, 8,
                           &OwnershipRefused { network_id: 11, op, reason }),
            "expect": {"kind": "OwnershipRefused", "sequence": 5, "tick": 8,
                       "networkId": 11, "op": op_json(op), "reason": expect}
        }));
    }
    out.push(json!({
        "name": "ownership requested", "channel": "actions",
        "frame": frame(MessageKind::OwnershipRequested, 6, 9,
                       &OwnershipRequested { network_id: 11, by: 1 }),
        "expect": {"kind": "OwnershipRequested", "sequence": 6, "tick": 9, "networkId": 11, "by": 1}
    }));
    let names = EntityNames {
        entities: vec![
            EntityName {
                network_id: 1,
                name: "crate".into(),
            },
            EntityName {
                network_id: 2,
                name: "a ball with a long name".into(),
            },
            EntityName {
                network_id: 300,
                name: "".into(),
            },
        ],
    };
    out.push(json!({
        "name": "entity names", "channel": "actions",
        "frame": frame(MessageKind::EntityNames, 2, 0, &names),
        "expect": {"kind": "EntityNames", "sequence": 2, "tick": 0, "entities": [
            {"networkId": 1, "name": "crate"},
            {"networkId": 2, "name": "a ball with a long name"},
            {"networkId": 300, "name": ""}]}
    }));
    out.push(json!({
        "name": "draining", "channel": "actions",
        "frame": frame(MessageKind::Draining, 7, 10, &Draining { grace_ms: 30000 }),
        "expect": {"kind": "Draining", "sequence": 7, "tick": 10, "graceMs": 30000}
    }));
    let kicks = [
        (KickReason::Operator, "operator"),
        (KickReason::Banned, "banned"),
        (KickReason::ProtocolViolation, "protocol_violation"),
        (KickReason::InstanceEnded, "instance_ended"),
        (KickReason::ServerError, "server_error"),
        (KickReason::Replaced, "replaced"),
        (KickReason::Silent, "silent"),
    ];
    for (i, (reason, name)) in kicks.into_iter().enumerate() {
        let message = if i % 2 == 0 {
            "short"
        } else {
            "a message longer than eight bytes"
        };
        out.push(json!({
            "name": format!("kick {name}"), "channel": "actions",
            "frame": frame(MessageKind::Kick, 8, 11, &Kick { reason, message: message.into() }),
            "expect": {"kind": "Kick", "sequence": 8, "tick": 11, "reason": name, "message": message}
        }));
    }
    out.push(json!({
        "name": "pong", "channel": "state",
        "frame": frame(MessageKind::Pong, 9, 12,
                       &Pong { client_time_us: 9_007_199_254_740_991, server_tick: 4242 }),
        "expect": {"kind": "Pong", "sequence": 9, "tick": 12,
                   "clientTimeUs": 9_007_199_254_740_991u64, "serverTick": 4242}
    }));
    out.push(json!({
        "name": "version mismatch", "channel": "actions",
        "frame": frame(MessageKind::VersionMismatch, 1, 0, &VersionMismatch { server_version: 3 }),
        "expect": {"kind": "VersionMismatch", "sequence": 1, "tick": 0, "serverVersion": 3}
    }));
    for (i, (kind, name, sdp)) in [
        (SdpKind::Offer, "offer", "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:track-7 track-7\r\na=sendonly\r\n"),
        (SdpKind::Answer, "answer", "v=0"),
    ]
    .into_iter()
    .enumerate()
    {
        out.push(json!({
            "name": format!("server sdp {i}"), "channel": "actions",
            "frame": frame(MessageKind::ServerSdp, 13 + i as u32, 14,
                           &Sdp { kind, sdp: sdp.to_owned() }),
            "expect": {"kind": "ServerSdp", "sequence": 13 + i as u32, "tick": 14,
                       "type": name, "sdp": sdp}
        }));
    }
    for (i, (kind, name)) in [(TrackKind::Audio, "audio"), (TrackKind::Video, "video")]
        .into_iter()
        .enumerate()
    {
        out.push(json!({
            "name": format!("track added {i}"), "channel": "actions",
            "frame": frame(MessageKind::TrackAdded, 15, 16,
                           &TrackAdded { track: 7 + i as u32, publisher: 3, kind }),
            "expect": {"kind": "TrackAdded", "sequence": 15, "tick": 16,
                       "track": 7 + i as u32, "publisher": 3, "media": name}
        }));
    }
    out.push(json!({
        "name": "track removed", "channel": "actions",
        "frame": frame(MessageKind::TrackRemoved, 17, 18, &TrackRemoved { track: 4_000_000_000 }),
        "expect": {"kind": "TrackRemoved", "sequence": 17, "tick": 18, "track": 4_000_000_000u32}
    }));
    // Every server kind is covered (snapshots are in their own section).
    let kinds: std::collections::BTreeSet<_> = out
        .iter()
        .map(|v| v["expect"]["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.len(), 15, "{kinds:?}");
    // And every frame decodes on the Rust side.
    for v in &out {
        let bytes = unhex(v["frame"].as_str().unwrap());
        let channel = if v["channel"] == "state" {
            Channel::State
        } else {
            Channel::Actions
        };
        Decoder::default()
            .decode_server(&bytes, channel)
            .unwrap_or_else(|e| panic!("{}: {e}", v["name"]));
    }
    out
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Client → server frames, and the arguments the SDK's encoder takes to
/// produce the same bytes.
fn client_messages() -> Vec<Value> {
    let mut out = Vec::new();
    out.push(json!({
        "name": "empty input (an acknowledgement)",
        "encode": {"kind": "Input", "sequence": 1, "ack": 0, "owned": []},
        "frame": frame(MessageKind::Input, 1, 0, &Input { owned: Vec::new() }),
    }));
    let owned = vec![
        OwnedUpdate {
            network_id: 223,
            position: [1.5, 0.9, -3.25],
            rotation: [0.0, 0.3826834, 0.0, 0.9238795],
        },
        OwnedUpdate {
            network_id: 7,
            position: [-10.0, 2.0, 0.001],
            rotation: [0.0, 0.0, 0.0, 1.0],
        },
    ];
    out.push(json!({
        "name": "input with two updates",
        "encode": {"kind": "Input", "sequence": 4_294_967_295u32, "ack": 1234,
                   "owned": owned.iter().map(|u| json!({
                       "networkId": u.network_id, "position": u.position, "rotation": u.rotation
                   })).collect::<Vec<_>>()},
        "frame": frame(MessageKind::Input, u32::MAX, 1234, &Input { owned }),
    }));
    let actions = [
        (
            "chat",
            "message",
            Target::Everyone,
            Cache::No,
            b"hi there".to_vec(),
        ),
        (
            "a.topic_of-32-bytes-exactly.....",
            "an action type over eight bytes",
            Target::User(5),
            Cache::ReplaceOwn,
            (0..=255u8).collect(),
        ),
        ("t", "x", Target::Server, Cache::Keep, Vec::new()),
    ];
    for (i, (topic, action_type, target, cache, payload)) in actions.into_iter().enumerate() {
        let a = Action {
            topic: topic.into(),
            action_type: action_type.into(),
            target,
            cache,
            payload: payload.clone(),
        };
        out.push(json!({
            "name": format!("action {i}"),
            "encode": {"kind": "Action", "sequence": 3 + i, "topic": topic, "actionType": action_type,
                       "target": target_json(target), "cache": cache_json(cache), "payload": payload},
            "frame": frame(MessageKind::Action, 3 + i as u32, 0, &a),
        }));
    }
    for (i, op) in [
        OwnershipOp::Take,
        OwnershipOp::Release,
        OwnershipOp::Transfer { to: 6 },
    ]
    .into_iter()
    .enumerate()
    {
        out.push(json!({
            "name": format!("ownership request {i}"),
            "encode": {"kind": "OwnershipRequest", "sequence": 9, "networkId": 77, "op": op_json(op)},
            "frame": frame(MessageKind::OwnershipRequest, 9, 0,
                           &OwnershipRequest { network_id: 77, op }),
        }));
    }
    out.push(json!({
        "name": "ping",
        "encode": {"kind": "Ping", "sequence": 2, "ack": 77, "clientTimeUs": 123_456_789_012u64},
        "frame": frame(MessageKind::Ping, 2, 77, &Ping { client_time_us: 123_456_789_012 }),
    }));
    for (i, (kind, name, sdp)) in [
        (SdpKind::Offer, "offer", "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:track-7 track-7\r\na=sendonly\r\n"),
        (SdpKind::Answer, "answer", "v=0\r\n"),
    ]
    .into_iter()
    .enumerate()
    {
        out.push(json!({
            "name": format!("sdp {i}"),
            "encode": {"kind": "Sdp", "sequence": 4 + i as u32, "type": name, "sdp": sdp},
            "frame": frame(MessageKind::Sdp, 4 + i as u32, 0, &Sdp { kind, sdp: sdp.to_owned() }),
        }));
    }
    out
}

fn bounds() -> Aabb {
    Aabb {
        min: Vec3::new(-100.0, -10.0, -100.0),
        max: Vec3::new(100.0, 50.0, 100.0),
    }
}

fn state_json(s: &EntityState) -> Value {
    json!([
        s.id,
        s.position[0],
        s.position[1],
        s.position[2],
        s.rotation[0],
        s.rotation[1],
        s.rotation[2],
        s.linear_velocity[0],
        s.linear_velocity[1],
        s.linear_velocity[2],
        s.angular_velocity[0],
        s.angular_velocity[1],
        s.angular_velocity[2]
    ])
}

/// What the snapshot run covered, so the vectors keep covering it.
#[derive(Default, Debug)]
struct Coverage {
    pos_i8: bool,
    pos_i16: bool,
    pos_u32_delta_entry: bool,
    rotations: bool,
    linear: bool,
    angular: bool,
    removed: bool,
    escaped_baseline: bool,
    table_of_several: bool,
    dropped: bool,
}

/// A run of snapshots for one client: entities moving at different rates
/// (so their acknowledged baselines differ), turning, jumping, spawned and
/// despawned, one leaving the client's interest; the client loses some
/// snapshots and acknowledges two ticks late. Returns the frames it
/// applied, each with its view afterwards.
fn snapshot_run() -> Value {
    let q = Quantizer::new(&bounds());
    let config = SnapshotConfig {
        velocities: true,
        interest_radius_m: 40.0,
        ..SnapshotConfig::default()
    };
    let mut world = World::new(WorldConfig::default());
    let mut ids: Vec<EntityId> = (0..24)
        .map(|i| {
            let t = Transform::from_position(Vec3::new(i as f32 - 12.0, 1.0, 0.0));
            world
                .spawn(t, Velocity::default(), Motion::Integrated, true)
                .unwrap()
        })
        .collect();
    let mut frame = WorldFrame::with_capacity(64);
    let mut server = ClientSnapshots::new(config);
    let mut enc = SnapshotEncoder::default();
    let mut client = SnapshotReceiver::new(config.history_len, config.view_entities_max);
    let mut decoder = Decoder::default();
    let mut applied = Vec::new();
    let mut cover = Coverage::default();
    let mut acks: Vec<u32> = Vec::new();
    for t in 1..=60u32 {
        world.begin_tick();
        for (k, &id) in ids.clone().iter().enumerate() {
            if !world.contains(id) {
                continue;
            }
            // Each moves every k + 2 ticks: their baselines differ.
            let every = k as u32 + 2;
            if t % every != 0 {
                continue;
            }
            let mut tr = world.transform(id).unwrap();
            tr.position.z += 0.004 * every as f32 * (1 + k % 3) as f32;
            if k % 4 == 1 {
                tr.position.x += 0.2;
            }
            if k == 5 && t % 20 == 0 {
                // Too far for an i16 delta.
                tr.position.y += if t % 40 == 0 { -40.0 } else { 40.0 };
            }
            if k % 5 == 2 {
                tr.rotation = Quat::from_yaw(0.05 * t as f32 + k as f32);
            }
            world.set_transform(id, tr).unwrap();
            if k % 6 == 0 {
                let v = Velocity {
                    linear: Vec3::new(0.5, -1.0 + t as f32 * 0.01, 2.0),
                    angular: Vec3::new(0.0, 0.1 * k as f32, 0.0),
                };
                world.set_velocity(id, v).unwrap();
            }
        }
        // Entity 20 walks out of interest; two are despawned, two spawned.
        let walker = ids[20];
        if world.contains(walker) {
            let mut tr = world.transform(walker).unwrap();
            tr.position.x += 1.5;
            world.set_transform(walker, tr).unwrap();
        }
        if t == 25 || t == 40 {
            let id = ids.remove(3);
            world.despawn(id).unwrap();
        }
        if t == 30 || t == 45 {
            let tr = Transform::from_position(Vec3::new(3.0, 2.0, t as f32 * 0.1));
            ids.push(
                world
                    .spawn(tr, Velocity::default(), Motion::Integrated, true)
                    .unwrap(),
            );
        }
        frame.capture(&world, &q);
        // The client acknowledges what it applied two ticks ago.
        if acks.len() >= 2 {
            server.ack(acks[acks.len() - 2]);
        }
        let bytes = server
            .encode(&mut enc, &frame, Vec3::ZERO, t)
            .unwrap()
            .to_vec();
        let ServerMessage::Snapshot(h, payload) =
            decoder.decode_server(&bytes, Channel::State).unwrap()
        else {
            panic!("not a snapshot")
        };
        let tick = h.tick.get();
        let body = rkyv::access::<ArchivedSnapshotBody, rkyv::rancor::Error>(payload).unwrap();
        // Lost on the way: the client never sees it.
        if t % 7 == 3 {
            cover.dropped = true;
            continue;
        }
        cover.pos_i8 |= !body.pos_i8.is_empty();
        cover.pos_i16 |= !body.pos_i16.is_empty();
        cover.rotations |= !body.rotations.is_empty();
        cover.linear |= !body.linear_velocities.is_empty();
        cover.angular |= !body.angular_velocities.is_empty();
        cover.removed |= !body.removed.is_empty();
        cover.table_of_several |= body.baselines.len() > 1;
        cover.escaped_baseline |= body.masks.iter().any(|m| m >> 5 == 7);
        cover.pos_u32_delta_entry |= body
            .masks
            .iter()
            .any(|m| m & 3 == 3 && (m >> 5 == 7 || body.baselines[(m >> 5) as usize] != 0));
        let view: Vec<Value> = client
            .apply(tick, payload)
            .unwrap()
            .iter()
            .map(state_json)
            .collect();
        acks.push(tick);
        applied.push(json!({"tick": tick, "frame": hex(&bytes), "entities": view}));
    }
    let c = &cover;
    assert!(
        c.pos_i8
            && c.pos_i16
            && c.pos_u32_delta_entry
            && c.rotations
            && c.linear
            && c.angular
            && c.removed
            && c.escaped_baseline
            && c.table_of_several
            && c.dropped,
        "the snapshot vectors no longer cover every case: {c:?}"
    );
    json!({
        "boundsMin": [bounds().min.x, bounds().min.y, bounds().min.z],
        "snapshots": applied,
    })
}

#[test]
fn the_browser_sdk_vectors_are_what_the_rust_encoders_write() {
    let vectors = json!({
        "about": "Written by net/tests/js_vectors.rs (UPDATE_JS_VECTORS=1 cargo test -p net --test js_vectors); read by web/test/protocol.test.mjs. Do not edit.",
        "frameHeaderLen": FRAME_HEADER_LEN,
        "server": server_messages(),
        "client": client_messages(),
        "snapshotRun": snapshot_run(),
    });
    let text = serde_json::to_string(&vectors).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/test/vectors.json");
    if std::env::var_os("UPDATE_JS_VECTORS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == text,
        "web/test/vectors.json differs from what the Rust encoders write now: the browser \
         SDK's vectors drifted. If the protocol changed on purpose, update web/lib/ to match, \
         regenerate with `UPDATE_JS_VECTORS=1 cargo test -p net --test js_vectors`, and run \
         `node --test web/test/`."
    );
}
