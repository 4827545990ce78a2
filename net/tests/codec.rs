//! Encode/decode round trips and malformed-input handling of every message.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use net::messages::*;
use net::{
    Channel, ClientMessage, Decoder, Encoder, FRAME_HEADER_LEN, MessageKind, PROTOCOL_VERSION,
    ProtocolError, ServerMessage,
};
use proptest::prelude::*;

fn frame<T>(kind: MessageKind, msg: &T) -> Vec<u8>
where
    T: for<'a, 'b> rkyv::Serialize<net::codec::FrameSerializer<'a, 'b>>,
{
    Encoder::default()
        .encode(kind, 9, 1234, msg)
        .unwrap()
        .to_vec()
}

fn input(n: usize) -> Input {
    Input {
        owned: (0..n as u32)
            .map(|i| OwnedUpdate {
                network_id: i + 1,
                position: [i as f32, 1.5, -2.0],
                rotation: [0.0, 0.0, 0.0, 1.0],
            })
            .collect(),
    }
}

fn action(action_type: &str, payload_len: usize) -> Action {
    Action {
        topic: "world".into(),
        action_type: action_type.into(),
        target: Target::User(3),
        cache: Cache::ReplaceOwn,
        payload: vec![0xAB; payload_len],
    }
}

fn client_err(bytes: &[u8], channel: Channel) -> ProtocolError {
    Decoder::default()
        .decode_client(bytes, channel)
        .expect_err("must be refused")
}

#[test]
fn client_messages_round_trip() {
    let mut dec = Decoder::default();
    let bytes = frame(MessageKind::Input, &input(3));
    match dec.decode_client(&bytes, Channel::State).unwrap() {
        ClientMessage::Input(h, m) => {
            assert_eq!((h.sequence.get(), h.tick.get()), (9, 1234));
            assert_eq!(h.version, PROTOCOL_VERSION);
            assert_eq!(m.owned.len(), 3);
            assert_eq!(m.owned[2].network_id.to_native(), 3);
            assert_eq!(m.owned[2].position[0].to_native(), 2.0);
        }
        other => panic!("{other:?}"),
    }
    let bytes = frame(MessageKind::Action, &action("chat.message", 100));
    match dec.decode_client(&bytes, Channel::Actions).unwrap() {
        ClientMessage::Action(_, a) => {
            assert_eq!(a.action_type.as_str(), "chat.message");
            assert_eq!(a.target, ArchivedTarget::User(3.into()));
            assert_eq!(a.cache, ArchivedCache::ReplaceOwn);
            assert_eq!(a.topic.as_str(), "world");
            assert_eq!(a.payload.len(), 100);
        }
        other => panic!("{other:?}"),
    }
    let req = OwnershipRequest {
        network_id: 12,
        op: OwnershipOp::Transfer { to: 6 },
    };
    let bytes = frame(MessageKind::OwnershipRequest, &req);
    match dec.decode_client(&bytes, Channel::Actions).unwrap() {
        ClientMessage::OwnershipRequest(_, r) => {
            assert_eq!(r.network_id.to_native(), 12);
            assert_eq!(r.op, ArchivedOwnershipOp::Transfer { to: 6.into() });
        }
        other => panic!("{other:?}"),
    }
    let bytes = frame(MessageKind::Ping, &Ping { client_time_us: 77 });
    match dec.decode_client(&bytes, Channel::State).unwrap() {
        ClientMessage::Ping(_, p) => assert_eq!(p.client_time_us.to_native(), 77),
        other => panic!("{other:?}"),
    }
}

#[test]
fn server_messages_round_trip() {
    let mut dec = Decoder::default();
    let broadcast = ActionBroadcast {
        sender: 4,
        topic: "world".into(),
        action_type: "spawn".into(),
        target: Target::Everyone,
        cache: Cache::Keep,
        payload: vec![1, 2, 3],
    };
    let welcome = Welcome {
        user_id: "user-abc".into(),
        user_index: 4,
        avatar: 99,
        tick_hz: 60,
        snapshot_hz: 30,
        bounds_min: [-60.0, -20.0, -60.0],
        bounds_max: [60.0, 60.0, 60.0],
        position_bits: 20,
        cached_actions: vec![broadcast.clone(); 3],
        owners: vec![EntityOwner {
            network_id: 7,
            owner: 2,
        }],
    };
    let bytes = frame(MessageKind::Welcome, &welcome);
    match dec.decode_server(&bytes, Channel::Actions).unwrap() {
        ServerMessage::Welcome(_, w) => {
            assert_eq!(w.user_id.as_str(), "user-abc");
            assert_eq!(w.avatar.to_native(), 99);
            assert_eq!(w.cached_actions.len(), 3);
            assert_eq!(w.cached_actions[0].sender.to_native(), 4);
            assert_eq!(w.owners[0].owner.to_native(), 2);
        }
        other => panic!("{other:?}"),
    }
    let bytes = frame(MessageKind::ActionBroadcast, &broadcast);
    assert!(matches!(
        dec.decode_server(&bytes, Channel::Actions).unwrap(),
        ServerMessage::ActionBroadcast(_, a) if a.payload.as_slice() == [1, 2, 3]
    ));
    let joined = PeerJoined {
        user_index: 5,
        user_id: "u5".into(),
        name: "Ada".into(),
        avatar: 42,
    };
    let bytes = frame(MessageKind::PeerJoined, &joined);
    assert!(matches!(
        dec.decode_server(&bytes, Channel::Actions).unwrap(),
        ServerMessage::PeerJoined(_, p) if p.name.as_str() == "Ada" && p.avatar == 42
    ));
    let refused = OwnershipRefused {
        network_id: 7,
        op: OwnershipOp::Take,
        reason: OwnershipRefusal::OwnedBy(2),
    };
    let bytes = frame(MessageKind::OwnershipRefused, &refused);
    assert!(matches!(
        dec.decode_server(&bytes, Channel::Actions).unwrap(),
        ServerMessage::OwnershipRefused(_, r) if r.reason == ArchivedOwnershipRefusal::OwnedBy(2.into())
    ));
    let asked = OwnershipRequested {
        network_id: 7,
        by: 3,
    };
    let bytes = frame(MessageKind::OwnershipRequested, &asked);
    assert!(matches!(
        dec.decode_server(&bytes, Channel::Actions).unwrap(),
        ServerMessage::OwnershipRequested(_, r) if r.by == 3
    ));
    let bytes = frame(MessageKind::PeerLeft, &PeerLeft { user_index: 5 });
    assert!(matches!(
        dec.decode_server(&bytes, Channel::Actions).unwrap(),
        ServerMessage::PeerLeft(_, p) if p.user_index == 5
    ));
    let changed = OwnershipChanged {
        network_id: 8,
        owner: None,
    };
    let bytes = frame(MessageKind::OwnershipChanged, &changed);
    assert!(matches!(
        dec.decode_server(&bytes, Channel::Actions).unwrap(),
        ServerMessage::OwnershipChanged(_, c) if c.owner.is_none()
    ));
    let bytes = frame(MessageKind::Draining, &Draining { grace_ms: 30_000 });
    assert!(matches!(
        dec.decode_server(&bytes, Channel::Actions).unwrap(),
        ServerMessage::Draining(_, d) if d.grace_ms == 30_000
    ));
    let kick = Kick {
        reason: KickReason::Banned,
        message: "banned for 10 minutes".into(),
    };
    let bytes = frame(MessageKind::Kick, &kick);
    assert!(matches!(
        dec.decode_server(&bytes, Channel::Actions).unwrap(),
        ServerMessage::Kick(_, k) if k.reason == ArchivedKickReason::Banned
    ));
    let pong = Pong {
        client_time_us: 5,
        server_tick: 600,
    };
    let bytes = frame(MessageKind::Pong, &pong);
    assert!(matches!(
        dec.decode_server(&bytes, Channel::State).unwrap(),
        ServerMessage::Pong(_, p) if p.server_tick == 600
    ));
    let bytes = frame(
        MessageKind::VersionMismatch,
        &VersionMismatch { server_version: 1 },
    );
    assert!(matches!(
        dec.decode_server(&bytes, Channel::Actions).unwrap(),
        ServerMessage::VersionMismatch(_, v) if v.server_version == 1
    ));
}

#[test]
fn header_errors() {
    let good = frame(MessageKind::Ping, &Ping { client_time_us: 1 });
    assert_eq!(
        client_err(&good[..10], Channel::State),
        ProtocolError::Truncated { len: 10 }
    );
    let mut b = good.clone();
    b[0] = PROTOCOL_VERSION + 1;
    assert_eq!(
        client_err(&b, Channel::State),
        ProtocolError::VersionMismatch {
            theirs: PROTOCOL_VERSION + 1
        }
    );
    let mut b = good.clone();
    b[1] = 200;
    assert_eq!(
        client_err(&b, Channel::State),
        ProtocolError::UnknownKind(200)
    );
    let mut b = good.clone();
    b[2] = 1;
    assert_eq!(
        client_err(&b, Channel::State),
        ProtocolError::ReservedFlags(1)
    );
    let mut b = good.clone();
    b.push(0);
    assert!(matches!(
        client_err(&b, Channel::State),
        ProtocolError::LengthMismatch { .. }
    ));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&1_000_000u32.to_le_bytes());
    assert!(matches!(
        client_err(&b, Channel::State),
        ProtocolError::TooLarge { max: 64, .. }
    ));
}

#[test]
fn direction_and_channel_are_enforced() {
    let pong = frame(
        MessageKind::Pong,
        &Pong {
            client_time_us: 1,
            server_tick: 1,
        },
    );
    assert_eq!(
        client_err(&pong, Channel::State),
        ProtocolError::WrongDirection(MessageKind::Pong)
    );
    let ping = frame(MessageKind::Ping, &Ping { client_time_us: 1 });
    assert_eq!(
        client_err(&ping, Channel::Actions),
        ProtocolError::WrongChannel {
            kind: MessageKind::Ping
        }
    );
    let err = Decoder::default()
        .decode_server(&ping, Channel::State)
        .unwrap_err();
    assert_eq!(err, ProtocolError::WrongDirection(MessageKind::Ping));
}

#[test]
fn counts_lengths_and_numbers_are_bounded() {
    let too_many = frame(MessageKind::Input, &input(INPUT_OWNED_MAX + 1));
    assert!(matches!(
        client_err(&too_many, Channel::State),
        ProtocolError::CountExceeded {
            what: "input.owned",
            count: 17,
            max: 16
        }
    ));
    let mut nan = input(1);
    nan.owned[0].position[1] = f32::NAN;
    let nan = frame(MessageKind::Input, &nan);
    assert!(matches!(
        client_err(&nan, Channel::State),
        ProtocolError::NotFinite { .. }
    ));
    let empty_type = frame(MessageKind::Action, &action("", 1));
    assert!(matches!(
        client_err(&empty_type, Channel::Actions),
        ProtocolError::CountExceeded { .. }
    ));
    let long_type = frame(MessageKind::Action, &action(&"x".repeat(65), 1));
    assert!(matches!(
        client_err(&long_type, Channel::Actions),
        ProtocolError::CountExceeded { max: 64, .. }
    ));
    for topic in ["", "Chat", "chat room", &"t".repeat(33)] {
        let mut bad = action("a", 1);
        bad.topic = topic.into();
        let bad = frame(MessageKind::Action, &bad);
        assert!(
            matches!(
                client_err(&bad, Channel::Actions),
                ProtocolError::InvalidTopic(_)
            ),
            "topic {topic:?}"
        );
    }
    let big = frame(
        MessageKind::Action,
        &action("a", ACTION_PAYLOAD_BYTES_MAX + 1),
    );
    assert!(matches!(
        client_err(&big, Channel::Actions),
        ProtocolError::CountExceeded { max: 4096, .. }
    ));
    // The encoder refuses to build a frame over its kind's limit.
    let huge = action("a", 9000);
    let err = Encoder::default()
        .encode(MessageKind::Action, 1, 1, &huge)
        .unwrap_err();
    assert!(matches!(err, ProtocolError::TooLarge { .. }), "{err}");
}

#[test]
fn corrupted_archives_are_refused_not_trusted() {
    let good = frame(MessageKind::Action, &action("chat", 8));
    let mut refused = 0;
    for i in FRAME_HEADER_LEN..good.len() {
        for bit in [0x01u8, 0x80, 0xFF] {
            let mut b = good.clone();
            b[i] ^= bit;
            if Decoder::default()
                .decode_client(&b, Channel::Actions)
                .is_err()
            {
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "some corruption must be detected");
    // Pointing the string's relative pointer outside the buffer is caught.
    let mut b = good.clone();
    let len = b.len();
    b[len - 24..len].fill(0x7F);
    assert!(matches!(
        client_err(&b, Channel::Actions),
        ProtocolError::InvalidArchive { .. }
    ));
}

#[test]
fn misaligned_input_is_copied_and_decoded() {
    let good = frame(MessageKind::Input, &input(2));
    let mut shifted = vec![0u8; good.len() + 1];
    shifted[1..].copy_from_slice(&good);
    let mut dec = Decoder::default();
    match dec.decode_client(&shifted[1..], Channel::State).unwrap() {
        ClientMessage::Input(_, m) => assert_eq!(m.owned.len(), 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fuzz_corpora_replay_without_panics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    type Target = fn(&[u8]);
    let targets: [(&str, Target); 4] = [
        ("stun_username", net::fuzzing::stun_username),
        ("frame_header", net::fuzzing::frame_header),
        ("client_message", net::fuzzing::client_message),
        ("server_message", net::fuzzing::server_message),
    ];
    for (name, kind) in [
        ("input_payload", MessageKind::Input),
        ("action_payload", MessageKind::Action),
        ("ownership_request_payload", MessageKind::OwnershipRequest),
        ("ping_payload", MessageKind::Ping),
    ] {
        let dir = root.join(name);
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            net::fuzzing::client_payload(kind, &std::fs::read(entry.unwrap().path()).unwrap());
            files += 1;
        }
        assert!(files > 0, "no seeds in {}", dir.display());
    }
    for (name, run) in targets {
        let dir = root.join(name);
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            run(&std::fs::read(&path).unwrap());
            files += 1;
        }
        assert!(files > 0, "no seeds in {}", dir.display());
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        net::fuzzing::frame_header(&bytes);
        net::fuzzing::client_message(&bytes);
        net::fuzzing::server_message(&bytes);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        n in 0usize..20,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut b = frame(MessageKind::Input, &input(n));
        for (i, v) in edits {
            let i = i.index(b.len());
            b[i] = v;
        }
        let _ = Decoder::default().decode_client(&b, Channel::State);
    }
}
