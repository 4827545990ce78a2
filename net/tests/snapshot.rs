//! Snapshot replication: round trips, per-entity baselines under loss and
//! reordering, interest, the byte budget, and bytes per moving entity.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use engine::{Aabb, EntityId, Global, Motion, Transform, Vec3, Velocity, World, WorldConfig};
use net::quant::Quantizer;
use net::snapshot::{
    ClientSnapshots, EntityState, SnapshotConfig, SnapshotEncoder, SnapshotReceiver, WorldFrame,
};
use net::{Channel, Decoder, FRAME_HEADER_LEN, ServerMessage};

fn bounds() -> Aabb {
    Aabb {
        min: Vec3::new(-500.0, -500.0, -500.0),
        max: Vec3::new(500.0, 500.0, 500.0),
    }
}

/// A world of `n` entities on a line along x, `spacing` apart, each moving
/// at `speed` m/s along z.
fn moving_world(n: usize, spacing: f32, speed: f32) -> (World, Vec<EntityId>) {
    let mut w = World::new(WorldConfig::default());
    let ids = (0..n)
        .map(|i| {
            let t = Transform::from_position(Vec3::new(i as f32 * spacing, 1.0, 0.0));
            let v = Velocity {
                linear: Vec3::new(0.0, 0.0, speed),
                angular: Vec3::ZERO,
            };
            w.spawn(t, v, Motion::Integrated, true).unwrap()
        })
        .collect();
    (w, ids)
}

fn tick(w: &mut World) {
    w.begin_tick();
    engine::systems::integrate_velocities(w, 1.0 / 60.0);
}

/// The states a client holds once it is up to date with `frame`: every
/// entity (all within interest in these worlds), velocities not sent.
fn expected(frame: &WorldFrame) -> Vec<EntityState> {
    frame
        .states()
        .iter()
        .map(|s| EntityState {
            linear_velocity: [0; 3],
            angular_velocity: [0; 3],
            ..*s
        })
        .collect()
}

/// What a client at the origin holds once up to date: `expected`, limited
/// to the entities within `radius` of it.
fn within(frame: &WorldFrame, w: &World, radius: f32) -> Vec<EntityState> {
    expected(frame)
        .into_iter()
        .filter(|s| {
            let id = w.by_network_id(engine::NetworkId(s.id)).unwrap();
            w.transform(id).unwrap().position.length() <= radius
        })
        .collect()
}

/// Runs `ticks` ticks; the client acknowledges `lag` ticks late and its
/// receiver applies every snapshot. Whenever a snapshot left nothing
/// waiting, checks the client now holds exactly the world's quantised
/// state. Returns payload sizes.
fn run(
    world: &mut World,
    config: SnapshotConfig,
    ticks: u32,
    lag: u32,
    viewer: Vec3,
) -> (Vec<usize>, ClientSnapshots, SnapshotReceiver) {
    let q = Quantizer::new(&bounds());
    let mut frame = WorldFrame::with_capacity(4096);
    let mut server = ClientSnapshots::new(config);
    let mut enc = SnapshotEncoder::default();
    let mut client = SnapshotReceiver::new(config.history_len, config.view_entities_max);
    let mut decoder = Decoder::default();
    let mut sizes = Vec::new();
    for t in 1..=ticks {
        tick(world);
        frame.capture(world, &q);
        if t > lag {
            server.ack(t - lag);
        }
        let bytes = server.encode(&mut enc, &frame, viewer, t).unwrap().to_vec();
        assert!(
            bytes.len() <= config.budget_bytes,
            "{} > budget",
            bytes.len()
        );
        sizes.push(bytes.len());
        let ServerMessage::Snapshot(h, payload) =
            decoder.decode_server(&bytes, Channel::State).unwrap()
        else {
            panic!("not a snapshot")
        };
        let got = client.apply(h.tick.get(), payload).unwrap().to_vec();
        if server.last_stats().waiting == 0 {
            assert!(
                got == expected(&frame),
                "tick {t}: the client does not hold the world"
            );
        }
    }
    (sizes, server, client)
}

#[test]
fn client_state_matches_the_world_within_quantisation_error() {
    let (mut w, ids) = moving_world(50, 1.0, 3.0);
    let (_, server, client) = run(&mut w, SnapshotConfig::default(), 30, 2, Vec3::ZERO);
    assert_eq!(server.last_stats().waiting, 0);
    let q = Quantizer::new(&bounds());
    let view = client.entities();
    assert_eq!(view.len(), 50);
    for (state, id) in view.iter().zip(&ids) {
        let real = w.transform(*id).unwrap().position;
        let got = q.dequantize_position(state.position);
        assert!(real.minus(got).length() < 0.001, "{real:?} vs {got:?}");
    }
}

#[test]
fn deltas_decode_against_every_baseline_in_the_history() {
    for lag in 1..32 {
        let (mut w, _) = moving_world(20, 1.5, 2.0);
        let (sizes, server, _) = run(&mut w, SnapshotConfig::default(), 45, lag, Vec3::ZERO);
        assert_eq!(server.acked(), Some(45 - lag));
        // Only the snapshots sent after the acknowledged one are kept.
        assert_eq!(server.unacknowledged(), lag as usize, "lag {lag}");
        let stats = server.last_stats();
        assert_eq!(stats.absolute, 0, "lag {lag}: {stats:?}");
        assert_eq!(stats.newest_baseline, 45 - lag, "lag {lag}: {stats:?}");
        // Once acknowledged, snapshots are deltas: smaller than the first (full) one.
        assert!(sizes[44] < sizes[0], "lag {lag}: {sizes:?}");
    }
}

#[test]
fn a_client_that_never_acks_gets_full_snapshots_it_can_still_decode() {
    let (mut w, _) = moving_world(10, 1.0, 1.0);
    let (sizes, server, _) = run(&mut w, SnapshotConfig::default(), 40, 100, Vec3::ZERO);
    assert_eq!(server.acked(), None);
    assert_eq!(sizes[0], sizes[39], "no baseline: every snapshot is full");
    assert_eq!(server.last_stats().absolute, 10);
    // Snapshots kept for a client that acknowledges nothing stay bounded.
    assert_eq!(
        server.unacknowledged(),
        SnapshotConfig::default().history_len
    );
}

#[test]
fn steady_motion_costs_at_most_8_bytes_per_entity() {
    let n = 100;
    let config = SnapshotConfig::default();
    let (mut w, _) = moving_world(n, 0.4, 5.0);
    let (sizes, server, _) = run(&mut w, config, 60, 3, Vec3::ZERO);
    let stats = server.last_stats();
    assert_eq!(
        stats.entities_sent, n as u32,
        "every mover is in the snapshot: {stats:?}"
    );
    assert_eq!(
        (stats.baselines, stats.newest_baseline),
        (1, 57),
        "{stats:?}"
    );
    // What each entity adds: against the same snapshot of one mover (the
    // frame header, the root and the one-tick baseline table are fixed).
    let (mut one, _) = moving_world(1, 0.4, 5.0);
    let (base, _, _) = run(&mut one, config, 60, 3, Vec3::ZERO);
    let per_entity = (sizes[59] - base[59]) as f64 / (n - 1) as f64;
    println!(
        "steady motion: {} bytes for {n} entities ({} for one), {per_entity:.2} bytes/entity",
        sizes[59], base[59]
    );
    assert!(per_entity <= 8.0, "{per_entity} bytes per entity");
}

/// One server-client pair over a hand-driven world: each step captures the
/// world, encodes, and optionally applies and acknowledges.
struct Pair {
    q: Quantizer,
    frame: WorldFrame,
    server: ClientSnapshots,
    enc: SnapshotEncoder,
    client: SnapshotReceiver,
    tick: u32,
}

impl Pair {
    fn new() -> Self {
        let config = SnapshotConfig::default();
        Pair {
            q: Quantizer::new(&bounds()),
            frame: WorldFrame::default(),
            server: ClientSnapshots::new(config),
            enc: SnapshotEncoder::default(),
            client: SnapshotReceiver::new(config.history_len, config.view_entities_max),
            tick: 0,
        }
    }

    /// Advances `w` a tick and encodes its snapshot; returns the payload.
    fn encode(&mut self, w: &mut World) -> Vec<u8> {
        tick(w);
        self.tick += 1;
        self.frame.capture(w, &self.q);
        let bytes = self
            .server
            .encode(&mut self.enc, &self.frame, Vec3::ZERO, self.tick)
            .unwrap();
        bytes[FRAME_HEADER_LEN..].to_vec()
    }

    /// Encodes, applies, and (if `ack`) acknowledges the snapshot.
    fn step(&mut self, w: &mut World, ack: bool) {
        let payload = self.encode(w);
        self.client.apply(self.tick, &payload).unwrap();
        if ack {
            self.server.ack(self.tick);
        }
    }
}

#[test]
fn an_entity_at_rest_costs_nothing_and_moves_again_as_a_small_delta() {
    let (mut w, ids) = moving_world(50, 1.0, 0.0);
    let mut pair = Pair::new();
    for _ in 0..3 {
        pair.step(&mut w, true);
    }
    // Long after its last acknowledgement (beyond the 32-tick history),
    // a resting entity is in no snapshot.
    for _ in 0..100 {
        pair.step(&mut w, true);
        assert_eq!(pair.server.last_stats().entities_sent, 0);
    }
    // Nudged 1 cm, it goes as a delta against its 100-tick-old baseline.
    let mut t = w.transform(ids[7]).unwrap();
    t.position.x += 0.01;
    w.set_transform(ids[7], t).unwrap();
    pair.step(&mut w, true);
    let stats = pair.server.last_stats();
    assert_eq!((stats.entities_sent, stats.absolute), (1, 0), "{stats:?}");
    assert!(stats.newest_baseline <= 3, "{stats:?}");
    assert_eq!(pair.client.entities(), &expected(&pair.frame)[..]);
}

#[test]
fn an_entity_that_moves_back_is_resent_while_the_client_may_hold_the_detour() {
    let (mut w, ids) = moving_world(3, 1.0, 0.0);
    let mut pair = Pair::new();
    for _ in 0..3 {
        pair.step(&mut w, true);
    }
    let home = w.transform(ids[1]).unwrap();
    let mut away = home;
    away.position.y += 0.5;
    // The detour arrives, but its acknowledgement is lost.
    w.set_transform(ids[1], away).unwrap();
    pair.step(&mut w, false);
    // Back home: the state the server last had acknowledged. The client
    // holds the detour, so the entity must still be sent.
    w.set_transform(ids[1], home).unwrap();
    pair.step(&mut w, false);
    assert_eq!(pair.server.last_stats().entities_sent, 1);
    assert_eq!(pair.client.entities(), &expected(&pair.frame)[..]);
    // Until a snapshot carrying home is acknowledged, it keeps coming.
    pair.step(&mut w, true);
    assert_eq!(pair.server.last_stats().entities_sent, 1);
    pair.step(&mut w, true);
    assert_eq!(pair.server.last_stats().entities_sent, 0);
    assert_eq!(pair.client.entities(), &expected(&pair.frame)[..]);
}

#[test]
fn a_reordered_older_snapshot_is_refused_and_changes_nothing() {
    let (mut w, _) = moving_world(5, 1.0, 2.0);
    let mut pair = Pair::new();
    pair.step(&mut w, true);
    let older = pair.encode(&mut w);
    let newer = pair.encode(&mut w);
    pair.client.apply(3, &newer).unwrap();
    let before = pair.client.entities().to_vec();
    let err = pair.client.apply(2, &older).unwrap_err();
    assert!(err.to_string().contains("older than the newest"), "{err}");
    assert_eq!(pair.client.entities(), &before[..]);
    assert_eq!(pair.client.latest(), Some(3));
    assert_eq!(before, expected(&pair.frame));
}

#[test]
fn a_removal_is_repeated_until_acknowledged() {
    let (mut w, ids) = moving_world(4, 1.0, 0.0);
    let mut pair = Pair::new();
    pair.step(&mut w, true);
    let gone = w.network_id(ids[2]).unwrap().0;
    w.despawn(ids[2]).unwrap();
    // Removal lost, then received but not acknowledged: sent each time.
    let _lost = pair.encode(&mut w);
    assert_eq!(pair.server.last_stats().removed, 1);
    pair.step(&mut w, false);
    assert_eq!(pair.server.last_stats().removed, 1);
    assert!(pair.client.entities().iter().all(|e| e.id != gone));
    pair.step(&mut w, true);
    assert_eq!(pair.server.last_stats().removed, 1);
    // Acknowledged: no more removals, and the server forgets the entity.
    pair.step(&mut w, true);
    assert_eq!(pair.server.last_stats().removed, 0);
    assert_eq!(pair.server.tracked(), 3);
    assert_eq!(pair.client.entities(), &expected(&pair.frame)[..]);
}

#[test]
fn an_entity_back_in_view_before_its_removal_was_acknowledged_comes_whole() {
    let (mut w, ids) = moving_world(3, 1.0, 0.0);
    let mut pair = Pair::new();
    pair.step(&mut w, true);
    let home = w.transform(ids[1]).unwrap();
    let mut far = home;
    far.position.x = 400.0;
    // It leaves the view; the removal is applied but never acknowledged.
    w.set_transform(ids[1], far).unwrap();
    pair.step(&mut w, false);
    assert_eq!(pair.server.last_stats().removed, 1);
    assert_eq!(pair.client.entities().len(), 2);
    // Back (and moved) before that: it comes absolute, whatever the client holds.
    w.set_transform(ids[1], home).unwrap();
    let _lost = pair.encode(&mut w);
    let stats = pair.server.last_stats();
    assert_eq!((stats.removed, stats.absolute), (0, 1), "{stats:?}");
    pair.step(&mut w, false);
    assert_eq!(pair.server.last_stats().absolute, 1);
    assert_eq!(pair.client.entities(), &expected(&pair.frame)[..]);
    // An acknowledgement of the snapshot that removed it is too old to count.
    pair.server.ack(2);
    pair.step(&mut w, true);
    assert_eq!(pair.server.last_stats().absolute, 1);
    pair.step(&mut w, true);
    assert_eq!(pair.server.last_stats().entities_sent, 0);
    assert_eq!(pair.client.entities(), &expected(&pair.frame)[..]);
}

#[test]
fn a_client_that_acknowledges_nothing_costs_bounded_memory() {
    let (mut w, _) = moving_world(0, 1.0, 0.0);
    let q = Quantizer::new(&bounds());
    let config = SnapshotConfig::default();
    let mut frame = WorldFrame::default();
    let mut server = ClientSnapshots::new(config);
    let mut enc = SnapshotEncoder::default();
    let still = Velocity::default();
    // Ten entities live at any time; one is replaced every tick.
    let mut live: std::collections::VecDeque<EntityId> = (0..10)
        .map(|i| {
            let t = Transform::from_position(Vec3::new(i as f32, 0.0, 0.0));
            w.spawn(t, still, Motion::Static, true).unwrap()
        })
        .collect();
    for t in 1..=500u32 {
        tick(&mut w);
        w.despawn(live.pop_front().unwrap()).unwrap();
        let at = Transform::from_position(Vec3::new((t % 10) as f32, 0.0, 0.0));
        live.push_back(w.spawn(at, still, Motion::Static, true).unwrap());
        frame.capture(&w, &q);
        server.encode(&mut enc, &frame, Vec3::ZERO, t).unwrap();
        // The view, plus removals repeated for at most `history_len` ticks.
        assert!(
            server.tracked() <= 10 + config.history_len,
            "tick {t}: {} entities tracked",
            server.tracked()
        );
        assert!(server.unacknowledged() <= config.history_len);
    }
}

#[test]
fn interest_limits_what_is_sent_and_global_entities_always_arrive() {
    let mut w = World::new(WorldConfig::default());
    let still = Velocity::default();
    let near = w
        .spawn(
            Transform::from_position(Vec3::new(5.0, 0.0, 0.0)),
            still,
            Motion::Static,
            true,
        )
        .unwrap();
    let far = w
        .spawn(
            Transform::from_position(Vec3::new(200.0, 0.0, 0.0)),
            still,
            Motion::Static,
            true,
        )
        .unwrap();
    let global = w
        .spawn(
            Transform::from_position(Vec3::new(-300.0, 0.0, 0.0)),
            still,
            Motion::Static,
            true,
        )
        .unwrap();
    w.insert(global, Global, |c| &mut c.globals).unwrap();
    // A mover that starts far and drives through the viewer's radius and out.
    let mover = w
        .spawn(
            Transform::from_position(Vec3::new(-100.0, 0.0, 0.0)),
            Velocity {
                linear: Vec3::new(120.0, 0.0, 0.0),
                angular: Vec3::ZERO,
            },
            Motion::Integrated,
            true,
        )
        .unwrap();
    let nid = |id| w.network_id(id).unwrap().0;
    let (near_id, far_id, global_id, mover_id) = (nid(near), nid(far), nid(global), nid(mover));
    let config = SnapshotConfig {
        interest_radius_m: 50.0,
        ..SnapshotConfig::default()
    };
    let q = Quantizer::new(&bounds());
    let mut frame = WorldFrame::default();
    let mut server = ClientSnapshots::new(config);
    let mut enc = SnapshotEncoder::default();
    let mut client = SnapshotReceiver::new(32, 1024);
    let mut decoder = Decoder::default();
    let mut mover_seen = Vec::new();
    for t in 1..=120u32 {
        tick(&mut w);
        frame.capture(&w, &q);
        server.ack(t.saturating_sub(1));
        let bytes = server
            .encode(&mut enc, &frame, Vec3::ZERO, t)
            .unwrap()
            .to_vec();
        let ServerMessage::Snapshot(h, payload) =
            decoder.decode_server(&bytes, Channel::State).unwrap()
        else {
            panic!()
        };
        let ids: Vec<u32> = client
            .apply(h.tick.get(), payload)
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect();
        assert!(
            ids.contains(&near_id) && ids.contains(&global_id),
            "tick {t}: {ids:?}"
        );
        assert!(!ids.contains(&far_id), "tick {t}: the far entity leaked");
        mover_seen.push(ids.contains(&mover_id));
    }
    // 120 m/s from x = -100: inside |x| <= 50 from about 0.42 s to 1.25 s.
    let first = mover_seen.iter().position(|&s| s).unwrap();
    let last = mover_seen.iter().rposition(|&s| s).unwrap();
    assert!((24..=27).contains(&first), "entered at tick {first}");
    assert!((73..=76).contains(&last), "left at tick {last}");
    assert!(mover_seen[first..=last].iter().all(|&s| s));
}

#[test]
fn the_budget_holds_and_every_entity_still_updates_within_a_bounded_time() {
    // 2,000 moving entities around the viewer: far more than one datagram.
    let n = 2000;
    let (mut w, _) = moving_world(n, 0.02, 2.0);
    let config = SnapshotConfig {
        view_entities_max: 4096,
        ..SnapshotConfig::default()
    };
    let q = Quantizer::new(&bounds());
    let mut frame = WorldFrame::with_capacity(n);
    let mut server = ClientSnapshots::new(config);
    let mut enc = SnapshotEncoder::default();
    let mut client = SnapshotReceiver::new(32, 4096);
    let mut decoder = Decoder::default();
    let mut last_update = vec![0u32; n];
    let mut max_wait = 0u32;
    let mut previous: Vec<net::snapshot::EntityState> = Vec::new();
    for t in 1..=400u32 {
        tick(&mut w);
        frame.capture(&w, &q);
        server.ack(t.saturating_sub(1));
        let bytes = server
            .encode(&mut enc, &frame, Vec3::new(20.0, 1.0, 0.0), t)
            .unwrap()
            .to_vec();
        assert!(bytes.len() <= config.budget_bytes);
        let ServerMessage::Snapshot(h, payload) =
            decoder.decode_server(&bytes, Channel::State).unwrap()
        else {
            panic!()
        };
        let now = client.apply(h.tick.get(), payload).unwrap().to_vec();
        for s in &now {
            let i = (s.id - 1) as usize;
            let changed = previous
                .binary_search_by_key(&s.id, |p| p.id)
                .map_or(true, |k| previous[k] != *s);
            if changed {
                if t > 100 {
                    max_wait = max_wait.max(t - last_update[i]);
                }
                last_update[i] = t;
            }
        }
        previous = now;
    }
    assert_eq!(previous.len(), n, "every entity reached the client");
    println!("max ticks between updates of one entity: {max_wait}");
    assert!(max_wait <= 40, "an entity waited {max_wait} ticks");
}

#[test]
fn malformed_snapshots_are_refused_without_panics() {
    let (mut w, _) = moving_world(30, 1.0, 1.0);
    let q = Quantizer::new(&bounds());
    let mut frame = WorldFrame::default();
    let mut server = ClientSnapshots::new(SnapshotConfig::default());
    let mut enc = SnapshotEncoder::default();
    tick(&mut w);
    frame.capture(&w, &q);
    let first = server
        .encode(&mut enc, &frame, Vec3::ZERO, 1)
        .unwrap()
        .to_vec();
    server.ack(1);
    tick(&mut w);
    frame.capture(&w, &q);
    let delta = server
        .encode(&mut enc, &frame, Vec3::ZERO, 2)
        .unwrap()
        .to_vec();
    // A delta whose baseline the client does not have is refused.
    let mut fresh = SnapshotReceiver::new(32, 1024);
    assert!(fresh.apply(2, &delta[FRAME_HEADER_LEN..]).is_err());
    // Byte flips anywhere: refused or applied, never a panic.
    for i in FRAME_HEADER_LEN..delta.len() {
        for bit in [1u8, 0x40, 0xFF] {
            let mut client = SnapshotReceiver::new(32, 1024);
            client.apply(1, &first[FRAME_HEADER_LEN..]).unwrap();
            let mut b = delta[FRAME_HEADER_LEN..].to_vec();
            b[i - FRAME_HEADER_LEN] ^= bit;
            let _ = client.apply(2, &b);
        }
    }
    // The entity cap of the client is enforced.
    let mut small = SnapshotReceiver::new(32, 10);
    assert!(small.apply(1, &first[FRAME_HEADER_LEN..]).is_err());
}

mod property {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Event {
        Move {
            entity: usize,
            by: [f32; 3],
            yaw: f32,
        },
        Jump {
            entity: usize,
            to: [f32; 3],
        },
        Spawn {
            at: [f32; 3],
        },
        Despawn {
            entity: usize,
        },
        /// The snapshot of this tick is lost (not applied, not acknowledged).
        Lose,
    }

    fn event() -> impl Strategy<Value = Event> {
        let v = -100.0f32..100.0;
        prop_oneof![
            6 => (any::<usize>(), [-0.5f32..0.5, -0.5f32..0.5, -0.5f32..0.5], -3.2f32..3.2)
                .prop_map(|(entity, by, yaw)| Event::Move { entity, by, yaw }),
            1 => (any::<usize>(), [v.clone(), v.clone(), v.clone()]).prop_map(|(entity, to)| Event::Jump { entity, to }),
            1 => [v.clone(), v.clone(), v].prop_map(|at| Event::Spawn { at }),
            1 => any::<usize>().prop_map(|entity| Event::Despawn { entity }),
            1 => Just(Event::Lose),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random worlds, movement in and out of interest, spawns,
        /// despawns, losses and ack lags (some past the history): with a
        /// roomy budget every snapshot the client applies leaves it with
        /// exactly the world's quantised state around the viewer (within
        /// quantisation error of the world); with a tight one, entities
        /// wait their turn and the client holds exactly that once things
        /// settle.
        #[test]
        fn snapshots_round_trip_under_churn_and_loss(
            start in prop::collection::vec([-100.0f32..100.0, -100.0f32..100.0, -100.0f32..100.0], 1..40),
            ticks in prop::collection::vec((prop::collection::vec(event(), 0..6), 1u32..40), 1..60),
            tight in any::<bool>(),
        ) {
            let mut w = World::new(WorldConfig::default());
            let mut live: Vec<EntityId> = Vec::new();
            let spawn = |w: &mut World, p: [f32; 3]| {
                w.spawn(Transform::from_position(Vec3::from(p)), Velocity::default(), Motion::Static, true).unwrap()
            };
            for p in start {
                live.push(spawn(&mut w, p));
            }
            // Roomy: everything fits every snapshot. Tight: entities wait
            // their turn, and the client only converges once things settle.
            let budget_bytes = if tight { 300 } else { 8192 };
            // Entities jump in and out of the 80 m around the viewer.
            let config = SnapshotConfig { budget_bytes, interest_radius_m: 80.0, ..SnapshotConfig::default() };
            let q = Quantizer::new(&bounds());
            let mut frame = WorldFrame::default();
            let mut server = ClientSnapshots::new(config);
            let mut enc = SnapshotEncoder::default();
            let mut client = SnapshotReceiver::new(config.history_len, config.view_entities_max);
            // Ticks the client applied; acks arrive `lag` applications late,
            // but always name a tick the client really applied.
            let mut applied: Vec<u32> = Vec::new();
            for (t, (events, lag)) in ticks.into_iter().enumerate() {
                let t = t as u32 + 1;
                w.begin_tick();
                let mut lost = false;
                for e in events {
                    match e {
                        Event::Move { entity, by, yaw } if !live.is_empty() => {
                            let id = live[entity % live.len()];
                            let mut tr = w.transform(id).unwrap();
                            tr.position = tr.position.add_scaled(Vec3::from(by), 1.0);
                            tr.rotation = engine::Quat::from_yaw(yaw);
                            w.set_transform(id, tr).unwrap();
                        }
                        Event::Jump { entity, to } if !live.is_empty() => {
                            let id = live[entity % live.len()];
                            w.set_transform(id, Transform::from_position(Vec3::from(to))).unwrap();
                        }
                        Event::Spawn { at } => live.push(spawn(&mut w, at)),
                        Event::Despawn { entity } if !live.is_empty() => {
                            let id = live.swap_remove(entity % live.len());
                            w.despawn(id).unwrap();
                        }
                        Event::Lose => lost = true,
                        _ => {}
                    }
                }
                frame.capture(&w, &q);
                // Mostly a few applications late; sometimes later than the
                // 32 ticks of history.
                let late = if lag >= 36 { lag as usize } else { (lag % 4) as usize };
                if applied.len() > late {
                    server.ack(applied[applied.len() - 1 - late]);
                }
                let bytes = server.encode(&mut enc, &frame, Vec3::ZERO, t).unwrap().to_vec();
                prop_assert!(bytes.len() <= config.budget_bytes);
                if lost {
                    continue;
                }
                let got = client.apply(t, &bytes[FRAME_HEADER_LEN..]).unwrap().to_vec();
                applied.push(t);
                if tight {
                    continue;
                }
                // Everything fits this budget, so every snapshot the client
                // applies leaves it holding exactly the world.
                prop_assert_eq!(server.last_stats().waiting, 0);
                prop_assert_eq!(&got[..], &within(&frame, &w, 80.0)[..]);
                for s in &got {
                    let id = w.by_network_id(engine::NetworkId(s.id)).unwrap();
                    let real = w.transform(id).unwrap();
                    let pos = q.dequantize_position(s.position);
                    prop_assert!(real.position.minus(pos).length() <= 0.001, "{:?} vs {:?}", real.position, pos);
                    let rot = net::quant::dequantize_rotation(s.rotation);
                    prop_assert!(net::quant::angle_between_deg(real.rotation, rot) < 0.01);
                }
            }
            // Then a quiet spell, nothing lost and every snapshot acked:
            // whatever waited arrives, and the client holds the world.
            for _ in 0..40 {
                w.begin_tick();
                frame.capture(&w, &q);
                let t = frame.tick();
                let bytes = server.encode(&mut enc, &frame, Vec3::ZERO, t).unwrap().to_vec();
                client.apply(t, &bytes[FRAME_HEADER_LEN..]).unwrap();
                server.ack(t);
            }
            prop_assert_eq!(server.last_stats().waiting, 0);
            prop_assert_eq!(client.entities(), &within(&frame, &w, 80.0)[..]);
        }
    }
}
