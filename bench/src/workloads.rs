//! The same ECS workloads written for this engine, hecs and bevy_ecs.
//!
//! Each workload holds N entities with a position and a velocity (three
//! `f32` each) and, per update, moves every position by its velocity times a
//! fixed time step, recording the change where the ECS tracks changes.

// Harness types: their worlds are third-party and not all implement Debug.
#![allow(missing_debug_implementations)]

use engine::{EntityId, Motion, Transform, Vec3, Velocity, World, WorldConfig};

/// The fixed step every update uses.
pub const DT: f32 = 1.0 / 60.0;

fn start(i: usize) -> ([f32; 3], [f32; 3]) {
    let f = i as f32;
    ([f, 0.5 * f, -f], [1.0, 0.25 + (i % 7) as f32 * 0.1, -0.5])
}

/// Spawns workload entity `i` in this engine: a velocity-integrated mover.
fn spawn_ours(world: &mut World, i: usize) -> Result<EntityId, engine::WorldError> {
    let (p, v) = start(i);
    let velocity = Velocity {
        linear: Vec3::from(v),
        angular: Vec3::ZERO,
    };
    world.spawn(
        Transform::from_position(Vec3::from(p)),
        velocity,
        Motion::Integrated,
        true,
    )
}

/// This engine: the real system, [`engine::systems::integrate_velocities`].
pub struct Ours {
    pub world: World,
}

impl Ours {
    pub fn new(n: usize) -> Self {
        let mut world = World::with_capacity(
            WorldConfig {
                entities_max: n as u32 + 1,
                ..WorldConfig::default()
            },
            n as u32,
        );
        for i in 0..n {
            spawn_ours(&mut world, i).expect("capacity was reserved for n entities");
        }
        Ours { world }
    }

    pub fn update(&mut self) -> usize {
        self.world.begin_tick();
        engine::systems::integrate_velocities(&mut self.world, DT)
    }

    pub fn checksum(&self) -> f32 {
        self.world.columns().positions.x.iter().sum()
    }
}

#[derive(Clone, Copy, Debug, bevy_ecs::component::Component)]
pub struct Position {
    pub x: f32,
    pub y: f32,
    pub z: f32,
}

#[derive(Clone, Copy, Debug, bevy_ecs::component::Component)]
pub struct Speed {
    pub x: f32,
    pub y: f32,
    pub z: f32,
}

fn pair(i: usize) -> (Position, Speed) {
    let (p, v) = start(i);
    (
        Position {
            x: p[0],
            y: p[1],
            z: p[2],
        },
        Speed {
            x: v[0],
            y: v[1],
            z: v[2],
        },
    )
}

/// hecs, iterated with `query_mut` (no runtime borrow tracking).
pub struct Hecs {
    pub world: hecs::World,
}

impl Hecs {
    pub fn new(n: usize) -> Self {
        let mut world = hecs::World::new();
        world.spawn_batch((0..n).map(pair));
        Hecs { world }
    }

    pub fn update(&mut self) {
        for (p, v) in self.world.query_mut::<(&mut Position, &Speed)>() {
            p.x += v.x * DT;
            p.y += v.y * DT;
            p.z += v.z * DT;
        }
    }
}

/// bevy_ecs, iterated with a cached `QueryState` and `for_each` (its
/// fastest path); `Mut` records change ticks as ours does.
pub struct Bevy {
    pub world: bevy_ecs::world::World,
    query: bevy_ecs::query::QueryState<(&'static mut Position, &'static Speed)>,
}

impl Bevy {
    pub fn new(n: usize) -> Self {
        let mut world = bevy_ecs::world::World::new();
        world.spawn_batch((0..n).map(pair));
        let query = world.query::<(&mut Position, &Speed)>();
        Bevy { world, query }
    }

    pub fn update(&mut self) {
        self.world.increment_change_tick();
        self.query.iter_mut(&mut self.world).for_each(|(mut p, v)| {
            p.x += v.x * DT;
            p.y += v.y * DT;
            p.z += v.z * DT;
        });
    }
}

/// A deterministic permutation of `0..n`, so despawns hit rows all over the
/// columns (each one a swap-remove with an index fix-up).
pub fn despawn_order(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// Spawns `order.len()` entities and despawns them all in `order`.
pub fn churn_ours(world: &mut World, order: &[usize], ids: &mut Vec<EntityId>) {
    ids.clear();
    for i in 0..order.len() {
        ids.push(spawn_ours(world, i).expect("the world is sized for the churn"));
    }
    for &i in order {
        world.despawn(ids[i]).expect("each id is despawned once");
    }
}

pub fn churn_hecs(world: &mut hecs::World, order: &[usize], ids: &mut Vec<hecs::Entity>) {
    ids.clear();
    for i in 0..order.len() {
        ids.push(world.spawn(pair(i)));
    }
    for &i in order {
        world.despawn(ids[i]).expect("each id is despawned once");
    }
}

pub fn churn_bevy(
    world: &mut bevy_ecs::world::World,
    order: &[usize],
    ids: &mut Vec<bevy_ecs::entity::Entity>,
) {
    ids.clear();
    for i in 0..order.len() {
        ids.push(world.spawn(pair(i)).id());
    }
    for &i in order {
        assert!(world.despawn(ids[i]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three implementations compute the same positions.
    #[test]
    fn workloads_agree() {
        let n = 1000;
        let mut ours = Ours::new(n);
        let mut h = Hecs::new(n);
        let mut b = Bevy::new(n);
        for _ in 0..10 {
            assert_eq!(ours.update(), n);
            h.update();
            b.update();
        }
        let hsum: f32 = h
            .world
            .query_mut::<&Position>()
            .into_iter()
            .map(|p| p.x)
            .sum();
        let bsum: f32 = b
            .world
            .query::<&Position>()
            .iter(&b.world)
            .map(|p| p.x)
            .sum();
        assert_eq!(ours.checksum(), hsum);
        assert_eq!(ours.checksum(), bsum);
    }

    #[test]
    fn churn_leaves_every_world_empty() {
        let order = despawn_order(500);
        let mut seen = order.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..500).collect::<Vec<_>>(), "a permutation");
        let mut w = World::new(WorldConfig {
            entities_max: 500,
            ..WorldConfig::default()
        });
        churn_ours(&mut w, &order, &mut Vec::new());
        assert!(w.is_empty());
        let mut h = hecs::World::new();
        churn_hecs(&mut h, &order, &mut Vec::new());
        assert_eq!(h.len(), 0);
        let mut b = bevy_ecs::world::World::new();
        // bevy keeps bookkeeping entities of its own: compare with the start.
        let before = b.entities().count_spawned();
        churn_bevy(&mut b, &order, &mut Vec::new());
        assert_eq!(b.entities().count_spawned(), before);
    }
}
