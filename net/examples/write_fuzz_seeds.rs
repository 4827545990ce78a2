//! Writes the seed corpora of the `net` fuzz targets into `fuzz/corpus/`:
//! `cargo run -p net --example write_fuzz_seeds`. One valid frame of every
//! kind, plus the channel-pick byte the message targets expect.

use std::path::Path;

use net::messages::*;
use net::{Channel, Encoder, MessageKind};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut enc = Encoder::default();
    let mut client: Vec<(MessageKind, Vec<u8>)> = Vec::new();
    let mut server: Vec<(MessageKind, Vec<u8>)> = Vec::new();
    let owned = OwnedUpdate {
        network_id: 3,
        position: [1.0, 2.0, 3.0],
        rotation: [0.0, 0.0, 0.0, 1.0],
    };
    let input = Input {
        owned: vec![owned; 2],
    };
    client.push((
        MessageKind::Input,
        frame(&mut enc, MessageKind::Input, &input),
    ));
    let action = Action {
        topic: "chat".into(),
        action_type: "chat.message".into(),
        target: Target::Everyone,
        cache: Cache::Keep,
        payload: b"hello".to_vec(),
    };
    client.push((
        MessageKind::Action,
        frame(&mut enc, MessageKind::Action, &action),
    ));
    let req = OwnershipRequest {
        network_id: 3,
        op: OwnershipOp::Transfer { to: 2 },
    };
    client.push((
        MessageKind::OwnershipRequest,
        frame(&mut enc, MessageKind::OwnershipRequest, &req),
    ));
    let ping = Ping { client_time_us: 1 };
    client.push((MessageKind::Ping, frame(&mut enc, MessageKind::Ping, &ping)));

    let broadcast = ActionBroadcast {
        sender: 1,
        topic: "world".into(),
        action_type: "spawn".into(),
        target: Target::User(2),
        cache: Cache::ReplaceOwn,
        payload: vec![9; 16],
    };
    let welcome = Welcome {
        user_id: "user".into(),
        user_index: 1,
        avatar: 10,
        tick_hz: 60,
        snapshot_hz: 30,
        bounds_min: [-1.0; 3],
        bounds_max: [1.0; 3],
        position_bits: 20,
        cached_actions: vec![broadcast.clone()],
        owners: vec![EntityOwner {
            network_id: 3,
            owner: 2,
        }],
    };
    server.push((
        MessageKind::Welcome,
        frame(&mut enc, MessageKind::Welcome, &welcome),
    ));
    server.push((
        MessageKind::ActionBroadcast,
        frame(&mut enc, MessageKind::ActionBroadcast, &broadcast),
    ));
    let joined = PeerJoined {
        user_index: 2,
        user_id: "u2".into(),
        name: "Ada".into(),
        avatar: 11,
    };
    server.push((
        MessageKind::PeerJoined,
        frame(&mut enc, MessageKind::PeerJoined, &joined),
    ));
    let kick = Kick {
        reason: KickReason::Operator,
        message: "bye".into(),
    };
    server.push((MessageKind::Kick, frame(&mut enc, MessageKind::Kick, &kick)));
    let changed = OwnershipChanged {
        network_id: 3,
        owner: Some(2),
    };
    server.push((
        MessageKind::OwnershipChanged,
        frame(&mut enc, MessageKind::OwnershipChanged, &changed),
    ));
    let pong = Pong {
        client_time_us: 1,
        server_tick: 2,
    };
    server.push((MessageKind::Pong, frame(&mut enc, MessageKind::Pong, &pong)));
    let refused = OwnershipRefused {
        network_id: 3,
        op: OwnershipOp::Take,
        reason: OwnershipRefusal::OwnedBy(2),
    };
    server.push((
        MessageKind::OwnershipRefused,
        frame(&mut enc, MessageKind::OwnershipRefused, &refused),
    ));
    let names = EntityNames {
        entities: vec![
            EntityName {
                network_id: 3,
                name: "crate-3".into(),
            },
            EntityName {
                network_id: 4,
                name: "door".into(),
            },
        ],
    };
    server.push((
        MessageKind::EntityNames,
        frame(&mut enc, MessageKind::EntityNames, &names),
    ));
    let requested = OwnershipRequested {
        network_id: 3,
        by: 1,
    };
    server.push((
        MessageKind::OwnershipRequested,
        frame(&mut enc, MessageKind::OwnershipRequested, &requested),
    ));

    write_snapshot_seeds(&root.join("snapshot"))?;
    write_instance_seeds(&root.join("instance_inputs"), &mut enc)?;
    write(&root.join("frame_header"), &client, false)?;
    for (kind, bytes) in &client {
        let dir = root.join(match kind {
            MessageKind::Input => "input_payload",
            MessageKind::Action => "action_payload",
            MessageKind::OwnershipRequest => "ownership_request_payload",
            _ => "ping_payload",
        });
        std::fs::create_dir_all(&dir)?;
        let name = format!("{kind:?}").to_lowercase();
        std::fs::write(dir.join(name), &bytes[net::FRAME_HEADER_LEN..])?;
    }
    write(&root.join("client_message"), &client, true)?;
    write(&root.join("server_message"), &server, true)?;
    Ok(())
}

fn frame<T>(enc: &mut Encoder, kind: MessageKind, msg: &T) -> Vec<u8>
where
    T: for<'a, 'b> rkyv::Serialize<net::codec::FrameSerializer<'a, 'b>>,
{
    enc.encode(kind, 1, 1, msg)
        .expect("seed messages are within limits")
        .to_vec()
}

fn write(dir: &Path, frames: &[(MessageKind, Vec<u8>)], pick: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (kind, bytes) in frames {
        let mut data = Vec::new();
        if pick {
            data.push(u8::from(kind.channel() == Channel::Actions));
        }
        data.extend_from_slice(bytes);
        std::fs::write(dir.join(format!("{kind:?}").to_lowercase()), data)?;
    }
    Ok(())
}

/// A full snapshot and a delta of a small moving world.
fn write_snapshot_seeds(dir: &Path) -> std::io::Result<()> {
    use engine::{Aabb, Motion, Transform, Vec3, Velocity, World, WorldConfig};
    use net::quant::Quantizer;
    use net::snapshot::{ClientSnapshots, SnapshotConfig, SnapshotEncoder, WorldFrame};
    std::fs::create_dir_all(dir)?;
    let mut world = World::new(WorldConfig::default());
    for i in 0..8 {
        let t = Transform::from_position(Vec3::new(i as f32, 1.0, 0.0));
        let v = Velocity {
            linear: Vec3::new(0.0, 0.0, 2.0),
            angular: Vec3::ZERO,
        };
        world
            .spawn(t, v, Motion::Integrated, true)
            .expect("room for 8 entities");
    }
    let bounds = Aabb {
        min: Vec3::new(-50.0, -50.0, -50.0),
        max: Vec3::new(50.0, 50.0, 50.0),
    };
    let q = Quantizer::new(&bounds);
    let mut frame = WorldFrame::default();
    let config = SnapshotConfig {
        velocities: true,
        ..SnapshotConfig::default()
    };
    let mut server = ClientSnapshots::new(config);
    let mut enc = SnapshotEncoder::default();
    for (tick, name) in [(1u32, "full"), (2, "delta")] {
        world.begin_tick();
        engine::systems::integrate_velocities(&mut world, 1.0 / 60.0);
        frame.capture(&world, &q);
        let bytes = server
            .encode(&mut enc, &frame, Vec3::ZERO, tick)
            .expect("8 entities fit one snapshot");
        std::fs::write(dir.join(name), &bytes[net::FRAME_HEADER_LEN..])?;
        server.ack(tick);
    }
    Ok(())
}

/// Message sequences for the stateful target: `[len][user/channel][frame]`
/// records. Network ids follow the target's scene: 1 the ball, 2 the flag,
/// 3 and 4 the avatars of users 0 and 1.
fn write_instance_seeds(dir: &Path, enc: &mut Encoder) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let record = |out: &mut Vec<u8>, user: u8, bytes: &[u8]| {
        let kind = net::split_frame(bytes).expect("valid frame").1;
        let channel = u8::from(kind.channel() == Channel::Actions) << 1;
        out.push(u8::try_from(bytes.len()).expect("seed frames are short"));
        out.push(user | channel);
        out.extend_from_slice(bytes);
    };
    let mv = |id: u32, p: [f32; 3]| Input {
        owned: vec![OwnedUpdate {
            network_id: id,
            position: p,
            rotation: [0.0, 0.0, 0.0, 1.0],
        }],
    };
    let mut walk = Vec::new();
    for (i, p) in [[0.0, 0.9, 1.0], [0.0, 0.9, 2.0], [50.0, 0.9, 2.0]]
        .iter()
        .enumerate()
    {
        let f = enc
            .encode(MessageKind::Input, i as u32 + 1, 0, &mv(3, *p))
            .expect("small")
            .to_vec();
        record(&mut walk, 0, &f);
    }
    std::fs::write(dir.join("walk"), walk)?;
    let mut own = Vec::new();
    let take = OwnershipRequest {
        network_id: 2,
        op: OwnershipOp::Take,
    };
    let f = enc
        .encode(MessageKind::OwnershipRequest, 1, 0, &take)
        .expect("small")
        .to_vec();
    record(&mut own, 1, &f);
    let f = enc
        .encode(MessageKind::Input, 1, 0, &mv(2, [5.0, 1.0, 5.0]))
        .expect("small")
        .to_vec();
    record(&mut own, 1, &f);
    let f = enc
        .encode(MessageKind::Input, 1, 0, &mv(2, [5.0, 1.0, 5.0]))
        .expect("small")
        .to_vec();
    record(&mut own, 0, &f);
    let chat = Action {
        topic: "chat".into(),
        action_type: "chat.message".into(),
        target: Target::Everyone,
        cache: Cache::Keep,
        payload: b"hi".to_vec(),
    };
    let f = enc
        .encode(MessageKind::Action, 1, 0, &chat)
        .expect("small")
        .to_vec();
    record(&mut own, 0, &f);
    let f = enc
        .encode(MessageKind::Ping, 2, 0, &Ping { client_time_us: 5 })
        .expect("small")
        .to_vec();
    record(&mut own, 1, &f);
    std::fs::write(dir.join("ownership"), own)?;
    Ok(())
}
