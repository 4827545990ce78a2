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
        action_type: "chat.message".into(),
        target: Target::Everyone,
        cached: false,
        payload: b"hello".to_vec(),
    };
    client.push((
        MessageKind::Action,
        frame(&mut enc, MessageKind::Action, &action),
    ));
    let req = OwnershipRequest {
        network_id: 3,
        take: true,
    };
    client.push((
        MessageKind::OwnershipRequest,
        frame(&mut enc, MessageKind::OwnershipRequest, &req),
    ));
    let ping = Ping { client_time_us: 1 };
    client.push((MessageKind::Ping, frame(&mut enc, MessageKind::Ping, &ping)));

    let broadcast = ActionBroadcast {
        sender: 1,
        action_type: "spawn".into(),
        target: Target::User(2),
        cached: true,
        payload: vec![9; 16],
    };
    let welcome = Welcome {
        user_id: "user".into(),
        user_index: 1,
        avatar: 10,
        tick_hz: 60,
        bounds_min: [-1.0; 3],
        bounds_max: [1.0; 3],
        position_bits: 20,
        cached_actions: vec![broadcast.clone()],
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

    write(&root.join("frame_header"), &client, false)?;
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
