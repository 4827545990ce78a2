//! The ECS against a naive model, change ticks and stale ids.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use engine::{
    EntityId, Motion, NetworkId, Owner, Tick, Transform, UserIndex, Vec3, Velocity, World,
    WorldConfig, WorldError,
};
use proptest::prelude::*;

fn at(x: f32) -> Transform {
    Transform::from_position(Vec3::new(x, 0.0, 0.0))
}

fn spawn(w: &mut World, x: f32) -> EntityId {
    w.spawn(at(x), Velocity::default(), Motion::Static, true)
        .unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Spawn(f32),
    /// Despawn the n-th live entity (modulo the count).
    Despawn(usize),
    /// Despawn an entity that was already despawned (if any).
    DespawnStale(usize),
    SetOwner(usize, u32),
    RemoveOwner(usize),
    Move(usize, f32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (-100.0f32..100.0).prop_map(Op::Spawn),
        3 => any::<usize>().prop_map(Op::Despawn),
        1 => any::<usize>().prop_map(Op::DespawnStale),
        2 => (any::<usize>(), 0u32..8).prop_map(|(i, u)| Op::SetOwner(i, u)),
        1 => any::<usize>().prop_map(Op::RemoveOwner),
        2 => (any::<usize>(), -100.0f32..100.0).prop_map(|(i, x)| Op::Move(i, x)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random spawn / despawn / insert / remove sequences leave the world
    /// equal to a plain map of id -> (position, owner).
    #[test]
    fn swap_remove_matches_a_naive_model(ops in prop::collection::vec(op(), 1..200)) {
        let mut w = World::new(WorldConfig { entities_max: 64, despawn_log_len: 16 });
        let mut model: BTreeMap<EntityId, (f32, Option<u32>)> = BTreeMap::new();
        let mut dead: Vec<EntityId> = Vec::new();
        for op in ops {
            let live: Vec<EntityId> = model.keys().copied().collect();
            let pick = |i: usize| (!live.is_empty()).then(|| live[i % live.len()]);
            match op {
                Op::Spawn(x) => match w.spawn(at(x), Velocity::default(), Motion::Static, true) {
                    Ok(id) => { prop_assert!(model.insert(id, (x, None)).is_none()); }
                    Err(e) => {
                        prop_assert_eq!(e, WorldError::Full { max: 64 });
                        prop_assert_eq!(model.len(), 64);
                    }
                },
                Op::Despawn(i) => if let Some(id) = pick(i) {
                    w.despawn(id).unwrap();
                    model.remove(&id);
                    dead.push(id);
                },
                Op::DespawnStale(i) => if !dead.is_empty() {
                    let id = dead[i % dead.len()];
                    prop_assert_eq!(w.despawn(id), Err(WorldError::Stale(id)));
                    prop_assert!(w.transform(id).is_err());
                    let inserted = w.insert(id, Owner { user: UserIndex(1) }, |c| &mut c.owners);
                    prop_assert!(inserted.is_err());
                },
                Op::SetOwner(i, u) => if let Some(id) = pick(i) {
                    w.insert(id, Owner { user: UserIndex(u) }, |c| &mut c.owners).unwrap();
                    model.get_mut(&id).unwrap().1 = Some(u);
                },
                Op::RemoveOwner(i) => if let Some(id) = pick(i) {
                    let had = w.remove(id, |c| &mut c.owners).unwrap().map(|o| o.user.0);
                    prop_assert_eq!(had, model.get_mut(&id).unwrap().1.take());
                },
                Op::Move(i, x) => if let Some(id) = pick(i) {
                    w.set_transform(id, at(x)).unwrap();
                    model.get_mut(&id).unwrap().0 = x;
                },
            }
            // Full comparison after every operation.
            prop_assert_eq!(w.len(), model.len());
            prop_assert_eq!(w.optional.owners.len(), model.values().filter(|v| v.1.is_some()).count());
            for (&id, &(x, owner)) in &model {
                prop_assert_eq!(w.transform(id).unwrap().position.x, x);
                prop_assert_eq!(w.optional.owners.get(id).map(|o| o.user.0), owner);
            }
            let cols = w.columns();
            for (r, id) in cols.ids.iter().enumerate() {
                prop_assert_eq!(w.row(*id).unwrap().index(), r);
            }
            for &id in model.keys() {
                let net = w.network_id(id).unwrap();
                prop_assert_eq!(w.by_network_id(net), Some(id));
            }
            for &id in &dead {
                prop_assert!(!w.contains(id));
                prop_assert!(w.optional.owners.get(id).is_none());
            }
        }
    }
}

#[test]
fn stale_ids_are_rejected_everywhere() {
    let mut w = World::new(WorldConfig::default());
    let a = spawn(&mut w, 1.0);
    w.insert(a, Owner { user: UserIndex(1) }, |c| &mut c.owners)
        .unwrap();
    w.despawn(a).unwrap();
    let b = spawn(&mut w, 2.0);
    assert_eq!(a.index(), b.index(), "the slot is reused");
    assert_eq!(w.transform(a), Err(WorldError::Stale(a)));
    assert_eq!(w.set_transform(a, at(5.0)), Err(WorldError::Stale(a)));
    assert_eq!(w.despawn(a), Err(WorldError::Stale(a)));
    assert!(w.optional.owners.get(a).is_none());
    assert!(
        w.optional.owners.get(b).is_none(),
        "the new entity does not inherit components"
    );
    assert_eq!(w.transform(b).unwrap().position.x, 2.0);
}

#[test]
fn change_ticks_record_what_changed_since_a_tick() {
    let mut w = World::new(WorldConfig::default());
    let a = spawn(&mut w, 0.0);
    let b = spawn(&mut w, 0.0);
    let c = spawn(&mut w, 0.0);
    assert_eq!(w.changed_since(Tick::ZERO).count(), 0, "spawned at tick 0");

    let t1 = w.begin_tick();
    w.set_transform(a, at(1.0)).unwrap();
    // Writing the same value is not a change.
    w.set_transform(b, at(0.0)).unwrap();
    let t2 = w.begin_tick();
    w.set_velocity(
        c,
        Velocity {
            linear: Vec3::new(0.0, 1.0, 0.0),
            angular: Vec3::ZERO,
        },
    )
    .unwrap();
    w.begin_tick();

    let ids_since = |w: &World, t: Tick| -> Vec<EntityId> {
        w.changed_since(t)
            .map(|r| w.columns().ids[r.index()])
            .collect()
    };
    let mut since0 = ids_since(&w, Tick::ZERO);
    since0.sort();
    assert_eq!(since0, {
        let mut v = vec![a, c];
        v.sort();
        v
    });
    assert_eq!(ids_since(&w, t1), vec![c]);
    assert!(ids_since(&w, t2).is_empty());
    assert_eq!(w.changed_at(a).unwrap(), t1);

    // Optional columns stamp on insert and on mutable access.
    w.insert(b, Owner { user: UserIndex(2) }, |c| &mut c.owners)
        .unwrap();
    let owners: Vec<_> = w
        .optional
        .owners
        .changed_since(t2)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(owners, vec![b]);
}

#[test]
fn despawns_are_logged_for_networked_entities_until_the_log_overflows() {
    let mut w = World::new(WorldConfig {
        entities_max: 100,
        despawn_log_len: 2,
    });
    let ids: Vec<_> = (0..4).map(|i| spawn(&mut w, i as f32)).collect();
    let net: Vec<NetworkId> = ids.iter().map(|&id| w.network_id(id).unwrap()).collect();
    let quiet = w
        .spawn(at(0.0), Velocity::default(), Motion::Static, false)
        .unwrap();
    assert_eq!(w.network_id(quiet).unwrap(), NetworkId::NONE);

    let t1 = w.begin_tick();
    w.despawn(ids[0]).unwrap();
    w.despawn(quiet).unwrap();
    let t2 = w.begin_tick();
    w.despawn(ids[1]).unwrap();
    let since0: Vec<_> = w.despawned_since(Tick::ZERO).unwrap().collect();
    assert_eq!(since0, vec![net[0], net[1]]);
    let since1: Vec<_> = w.despawned_since(t1).unwrap().collect();
    assert_eq!(since1, vec![net[1]]);

    w.begin_tick();
    w.despawn(ids[2]).unwrap();
    // The entry of tick 1 fell off: a client acked at tick 0 needs a full resync.
    assert!(w.despawned_since(Tick::ZERO).is_none());
    let since2: Vec<_> = w.despawned_since(t2).unwrap().collect();
    assert_eq!(since2, vec![net[2]]);
}

#[test]
fn non_finite_values_are_refused() {
    let mut w = World::new(WorldConfig::default());
    let bad = Transform::from_position(Vec3::new(f32::NAN, 0.0, 0.0));
    assert_eq!(
        w.spawn(bad, Velocity::default(), Motion::Static, true),
        Err(WorldError::NotFinite { what: "position" })
    );
    let a = spawn(&mut w, 0.0);
    assert!(w.set_transform(a, bad).is_err());
    assert_eq!(w.transform(a).unwrap().position.x, 0.0);
}
