//! A peer's messages applied to a real simulation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use engine::{Scene, SceneLimits, SimConfig, Simulation, UserIndex, Vec3};
use net::input::{InputLimits, Outcome, PeerInput, RefusedUpdates, change_ownership};
use net::messages::*;
use net::snapshot::{ClientSnapshots, SnapshotConfig, SnapshotEncoder};
use net::{Channel, Decoder, Encoder, MessageKind};

fn sim() -> Simulation {
    let scene = r#"{"version": 1, "bounds": {"min": [-20, -5, -20], "max": [20, 20, 20]},
        "spawn_points": [{"position": [0, 0, 0]}, {"position": [4, 0, 0]}],
        "entities": [
          {"transform": {"position": [0, -0.5, 0]}, "collider": {"shape": "cuboid", "half_extents": [20, 0.5, 20]}},
          {"transform": {"position": [3, 1, 3]}, "body": {"kind": "dynamic"}, "collider": {"shape": "ball", "radius": 0.3}},
          {"name": "flag", "transform": {"position": [-3, 1, 3]}, "networked": true},
          {"name": "wall", "transform": {"position": [-6, 1, 6]}, "networked": true, "body": {"kind": "fixed"}, "collider": {"shape": "cuboid", "half_extents": [1, 1, 0.1]}}
        ]}"#;
    let scene = Scene::from_json(scene.as_bytes(), &SceneLimits::default()).unwrap();
    Simulation::new(&scene, SimConfig::default()).unwrap()
}

struct Peer {
    input: PeerInput,
    snapshots: ClientSnapshots,
    seq: u32,
}

impl Peer {
    fn new(user: u32) -> Self {
        Peer {
            input: PeerInput::new(UserIndex(user), InputLimits::default()),
            snapshots: ClientSnapshots::new(SnapshotConfig::default()),
            seq: 0,
        }
    }

    fn send<T>(&mut self, sim: &mut Simulation, kind: MessageKind, msg: &T) -> Outcome
    where
        T: for<'a, 'b> rkyv::Serialize<net::codec::FrameSerializer<'a, 'b>>,
    {
        self.seq += 1;
        let bytes = Encoder::default()
            .encode(kind, self.seq, 0, msg)
            .unwrap()
            .to_vec();
        let mut dec = Decoder::default();
        let msg = dec.decode_client(&bytes, kind.channel()).unwrap();
        self.input.handle(sim, &mut self.snapshots, &msg)
    }
}

fn move_to(network_id: u32, p: [f32; 3]) -> Input {
    Input {
        owned: vec![OwnedUpdate {
            network_id,
            position: p,
            rotation: [0.0, 0.0, 0.0, 1.0],
        }],
    }
}

/// The test scene's ball: its one networked body.
fn networked_body(sim: &Simulation) -> engine::EntityId {
    sim.world()
        .optional
        .bodies
        .ids()
        .iter()
        .copied()
        .find(|&e| sim.world().network_id(e).unwrap().0 != 0)
        .unwrap()
}

fn net_id(sim: &Simulation, e: engine::EntityId) -> u32 {
    sim.world().network_id(e).unwrap().0
}

#[test]
fn owners_move_their_avatars_and_nobody_elses() {
    let mut sim = sim();
    let a = sim.spawn_avatar(UserIndex(0)).unwrap();
    let b = sim.spawn_avatar(UserIndex(1)).unwrap();
    let (na, nb) = (net_id(&sim, a), net_id(&sim, b));
    let mut alice = Peer::new(0);
    let out = alice.send(&mut sim, MessageKind::Input, &move_to(na, [0.0, 0.9, 2.0]));
    assert_eq!(
        out,
        Outcome::Input {
            applied: 1,
            refused: RefusedUpdates::default()
        }
    );
    let out = alice.send(&mut sim, MessageKind::Input, &move_to(nb, [9.0, 0.9, 9.0]));
    assert_eq!(
        out,
        Outcome::Input {
            applied: 0,
            refused: RefusedUpdates {
                not_owner: 1,
                ..RefusedUpdates::default()
            }
        },
        "not alice's avatar"
    );
    for _ in 0..60 {
        sim.step();
    }
    let pa = sim.world().transform(a).unwrap().position;
    assert!((pa.z - 2.0).abs() < 0.02, "{pa:?}");
    let pb = sim.world().transform(b).unwrap().position;
    assert!(
        (pb.x - 4.0).abs() < 1e-3,
        "bob's avatar did not move: {pb:?}"
    );
}

#[test]
fn stale_inputs_are_dropped() {
    let mut sim = sim();
    let a = sim.spawn_avatar(UserIndex(0)).unwrap();
    let na = net_id(&sim, a);
    let mut alice = Peer::new(0);
    alice.seq = 10;
    alice.send(&mut sim, MessageKind::Input, &move_to(na, [0.0, 0.9, 1.0]));
    alice.seq = 5;
    let out = alice.send(&mut sim, MessageKind::Input, &move_to(na, [0.0, 0.9, -1.0]));
    assert_eq!(out, Outcome::StaleInput);
}

#[test]
fn ownership_is_granted_once_and_owned_props_move_at_bounded_speed() {
    let mut sim = sim();
    let flag = sim
        .world()
        .columns()
        .ids
        .iter()
        .copied()
        .find(|&e| {
            sim.world().network_id(e).unwrap().0 != 0
                && sim.world().motion(e) == Ok(engine::Motion::Static)
        })
        .unwrap();
    let nf = net_id(&sim, flag);
    let ball = networked_body(&sim);
    let nball = net_id(&sim, ball);
    let (mut alice, mut bob) = (Peer::new(0), Peer::new(1));
    let members = |u: u32| u < 2;
    let (alice_u, bob_u) = (UserIndex(0), UserIndex(1));
    let take = OwnershipOp::Take;
    // The request comes through as such; the instance decides it.
    let req = OwnershipRequest {
        network_id: nf,
        op: take,
    };
    assert_eq!(
        alice.send(&mut sim, MessageKind::OwnershipRequest, &req),
        Outcome::Ownership {
            network_id: nf,
            op: take
        }
    );
    assert_eq!(
        change_ownership(&mut sim, alice_u, nf, take, 16, members),
        Ok(Some(OwnershipChanged {
            network_id: nf,
            owner: Some(0)
        }))
    );
    assert_eq!(
        change_ownership(&mut sim, bob_u, nf, take, 16, members),
        Err(OwnershipRefusal::OwnedBy(0))
    );
    assert_eq!(
        change_ownership(&mut sim, bob_u, nf, OwnershipOp::Release, 16, members),
        Err(OwnershipRefusal::NotOwner)
    );
    assert_eq!(
        change_ownership(&mut sim, bob_u, 9999, take, 16, members),
        Err(OwnershipRefusal::UnknownEntity)
    );
    let avatar = sim.spawn_avatar(UserIndex(0)).unwrap();
    let navatar = net_id(&sim, avatar);
    assert_eq!(
        change_ownership(&mut sim, bob_u, navatar, take, 16, members),
        Err(OwnershipRefusal::Avatar)
    );
    assert_eq!(
        change_ownership(
            &mut sim,
            alice_u,
            nf,
            OwnershipOp::Transfer { to: 5 },
            16,
            members
        ),
        Err(OwnershipRefusal::UnknownUser(5))
    );
    assert!(
        change_ownership(&mut sim, alice_u, nball, take, 16, members).is_ok(),
        "a dynamic body nobody holds can be taken"
    );
    assert_eq!(
        change_ownership(&mut sim, alice_u, nball, take, 16, members),
        Ok(None),
        "taking it again changes nothing and tells nobody"
    );
    assert_eq!(
        change_ownership(&mut sim, bob_u, nball, take, 0, members),
        Err(OwnershipRefusal::OwnedBy(0)),
    );
    let wall = sim
        .world()
        .optional
        .bodies
        .iter()
        .filter(|(_, l)| l.kind == engine::BodyKind::Fixed)
        .map(|(e, _)| net_id(&sim, e))
        .find(|&n| n != 0)
        .expect("the test scene has a fixed wall");
    assert_eq!(
        change_ownership(&mut sim, bob_u, wall, take, 16, members),
        Err(OwnershipRefusal::SceneBody)
    );

    // 20 m/s at 60 Hz allows 1/3 m per tick since the last move, however
    // far the client asks, and at most 6 ticks' worth after a long pause.
    for _ in 0..100 {
        sim.step();
    }
    let before = sim.world().transform(flag).unwrap().position;
    alice.send(&mut sim, MessageKind::Input, &move_to(nf, [15.0, 1.0, 3.0]));
    let after = sim.world().transform(flag).unwrap().position;
    let moved = after.minus(before).length();
    assert!(
        (moved - 2.0).abs() < 1e-3,
        "capped at 6 ticks: moved {moved}"
    );
    sim.step();
    alice.send(&mut sim, MessageKind::Input, &move_to(nf, [15.0, 1.0, 3.0]));
    let moved = sim
        .world()
        .transform(flag)
        .unwrap()
        .position
        .minus(after)
        .length();
    assert!(
        (moved - 20.0 / 60.0).abs() < 1e-3,
        "one tick later: moved {moved}"
    );
    // Bob cannot move it; alice can release it, then bob may take it.
    let out = bob.send(&mut sim, MessageKind::Input, &move_to(nf, [0.0, 1.0, 0.0]));
    assert_eq!(
        out,
        Outcome::Input {
            applied: 0,
            refused: RefusedUpdates {
                not_owner: 1,
                ..RefusedUpdates::default()
            }
        }
    );
    let out = bob.send(
        &mut sim,
        MessageKind::Input,
        &move_to(4242, [0.0, 1.0, 0.0]),
    );
    assert_eq!(
        out,
        Outcome::Input {
            applied: 0,
            refused: RefusedUpdates {
                unknown_entity: 1,
                ..RefusedUpdates::default()
            }
        }
    );
    // Alice hands it to bob, who moves it; then he releases it.
    assert_eq!(
        change_ownership(
            &mut sim,
            alice_u,
            nf,
            OwnershipOp::Transfer { to: 1 },
            16,
            members
        ),
        Ok(Some(OwnershipChanged {
            network_id: nf,
            owner: Some(1)
        }))
    );
    sim.step();
    let out = bob.send(&mut sim, MessageKind::Input, &move_to(nf, [0.0, 1.0, 0.0]));
    assert_eq!(
        out.clone(),
        Outcome::Input {
            applied: 1,
            refused: RefusedUpdates::default()
        }
    );
    assert_eq!(
        change_ownership(&mut sim, bob_u, nf, OwnershipOp::Release, 16, members),
        Ok(Some(OwnershipChanged {
            network_id: nf,
            owner: None
        }))
    );
    assert_eq!(
        change_ownership(&mut sim, alice_u, nf, take, 1, members),
        Err(OwnershipRefusal::TooMany(1)),
        "alice holds the ball already"
    );
    assert!(change_ownership(&mut sim, alice_u, nf, take, 2, members).is_ok());
}

#[test]
fn a_held_body_stops_falling_follows_its_owner_and_falls_when_released() {
    let mut sim = sim();
    let ball = networked_body(&sim);
    let nball = net_id(&sim, ball);
    let mut alice = Peer::new(0);
    let start = sim.world().transform(ball).unwrap().position;
    change_ownership(&mut sim, UserIndex(0), nball, OwnershipOp::Take, 16, |_| {
        true
    })
    .unwrap();
    for _ in 0..30 {
        sim.step();
    }
    let held = sim.world().transform(ball).unwrap().position;
    assert!(
        held.minus(start).length() < 1e-3,
        "a held ball does not fall: {start:?} -> {held:?}"
    );
    // Its owner lifts it 1 m over a few ticks (20 m/s allows 1/3 m a tick).
    for _ in 0..6 {
        let out = alice.send(
            &mut sim,
            MessageKind::Input,
            &move_to(nball, [3.0, 2.0, 3.0]),
        );
        assert!(matches!(out, Outcome::Input { applied: 1, .. }), "{out:?}");
        sim.step();
    }
    let lifted = sim.world().transform(ball).unwrap().position;
    assert!((lifted.y - 2.0).abs() < 1e-3, "{lifted:?}");
    // It cannot be pushed through the floor (to be lost below the world).
    for _ in 0..30 {
        alice.send(
            &mut sim,
            MessageKind::Input,
            &move_to(nball, [3.0, -4.0, 3.0]),
        );
        sim.step();
    }
    let pressed = sim.world().transform(ball).unwrap().position;
    assert!(
        pressed.y > 0.29 && pressed.y < 0.35,
        "a 0.3 m ball held against the floor rests on it: {pressed:?}"
    );
    for _ in 0..6 {
        alice.send(
            &mut sim,
            MessageKind::Input,
            &move_to(nball, [3.0, 2.0, 3.0]),
        );
        sim.step();
    }
    change_ownership(
        &mut sim,
        UserIndex(0),
        nball,
        OwnershipOp::Release,
        16,
        |_| true,
    )
    .unwrap();
    for _ in 0..60 {
        sim.step();
    }
    let fallen = sim.world().transform(ball).unwrap().position;
    assert!(
        fallen.y < 0.5,
        "released, it falls to the floor: {fallen:?}"
    );
}

#[test]
fn actions_are_stamped_with_the_real_sender_and_pings_answered() {
    let mut sim = sim();
    let mut alice = Peer::new(7);
    let action = Action {
        topic: "chat".into(),
        action_type: "chat.message".into(),
        target: Target::Everyone,
        cache: Cache::Keep,
        payload: b"hi".to_vec(),
    };
    match alice.send(&mut sim, MessageKind::Action, &action) {
        Outcome::Broadcast(b) => {
            assert_eq!(b.sender, 7);
            assert_eq!((b.cache, b.topic.as_str()), (Cache::Keep, "chat"));
            assert_eq!(b.payload, b"hi");
        }
        other => panic!("{other:?}"),
    }
    sim.step();
    let out = alice.send(&mut sim, MessageKind::Ping, &Ping { client_time_us: 99 });
    assert_eq!(
        out,
        Outcome::Pong(Pong {
            client_time_us: 99,
            server_tick: 1
        })
    );
}

#[test]
fn input_acknowledges_snapshots() {
    let mut sim = sim();
    let a = sim.spawn_avatar(UserIndex(0)).unwrap();
    let mut alice = Peer::new(0);
    let q = net::quant::Quantizer::new(sim.bounds());
    let mut frame = net::snapshot::WorldFrame::default();
    sim.step();
    frame.capture(sim.world(), &q);
    alice
        .snapshots
        .encode(&mut SnapshotEncoder::default(), &frame, Vec3::ZERO, 1)
        .unwrap();
    let bytes = Encoder::default()
        .encode(
            MessageKind::Input,
            1,
            1,
            &move_to(net_id(&sim, a), [0.0, 0.9, 0.0]),
        )
        .unwrap()
        .to_vec();
    let mut dec = Decoder::default();
    let msg = dec.decode_client(&bytes, Channel::State).unwrap();
    alice.input.handle(&mut sim, &mut alice.snapshots, &msg);
    assert_eq!(alice.snapshots.acked(), Some(1));
}

#[test]
fn stateful_fuzz_corpus_replays() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/instance_inputs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        net::fuzzing::instance_inputs(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/snapshot");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        net::fuzzing::snapshot(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0);
}
