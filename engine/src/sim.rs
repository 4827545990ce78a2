//! One instance's simulation: a [`World`], its [`Physics`] and the fixed-step
//! clock, advanced by explicit calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::{ClockAdvance, FixedClock};
use crate::components::{
    Avatar, BodyKind, ColliderDesc, Motion, Owner, Shape, SpawnPoint, Transform, UserIndex,
    Velocity,
};
use crate::entity::EntityId;
use crate::error::WorldError;
use crate::math::{Aabb, Vec3};
use crate::physics::{Physics, PhysicsError, StepReport};
use crate::prepared::PreparedScene;
use crate::scene::Scene;
use crate::systems;
use crate::world::{World, WorldConfig};

/// Settings of a simulation. Every field is checked by [`SimConfig::validate`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimConfig {
    /// Fixed ticks per second (1..=1000).
    pub tick_hz: u32,
    /// Physics steps per tick (1..=16).
    pub substeps: u32,
    pub gravity: Vec3,
    /// Most ticks run by one `advance` when behind; the rest are skipped.
    pub catch_up_steps_max: u32,
    pub world: WorldConfig,
    pub avatar: AvatarConfig,
}

/// The shape and speed of avatars.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AvatarConfig {
    pub half_height_m: f32,
    pub radius_m: f32,
    /// The fastest an owner may move its avatar.
    pub speed_max_mps: f32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            tick_hz: 60,
            substeps: 1,
            gravity: Vec3::new(0.0, -9.81, 0.0),
            catch_up_steps_max: 4,
            world: WorldConfig::default(),
            avatar: AvatarConfig {
                half_height_m: 0.6,
                radius_m: 0.3,
                speed_max_mps: 10.0,
            },
        }
    }
}

impl SimConfig {
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |msg: String| Err(SimError::Config(msg));
        if !(1..=1000).contains(&self.tick_hz) {
            return bad(format!("tick_hz must be 1..=1000, got {}", self.tick_hz));
        }
        if !(1..=16).contains(&self.substeps) {
            return bad(format!("substeps must be 1..=16, got {}", self.substeps));
        }
        if !self.gravity.is_finite() {
            return bad("gravity must be finite".into());
        }
        if self.catch_up_steps_max == 0 {
            return bad("catch_up_steps_max must be at least 1".into());
        }
        if self.world.entities_max == 0 || self.world.entities_max == u32::MAX {
            return bad("entities_max must be 1..u32::MAX".into());
        }
        let a = &self.avatar;
        let positive_finite = |v: f32| v > 0.0 && v.is_finite();
        if ![a.half_height_m, a.radius_m, a.speed_max_mps]
            .into_iter()
            .all(positive_finite)
        {
            return bad("avatar half height, radius and speed must be positive".into());
        }
        Ok(())
    }

    pub fn tick_duration(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.tick_hz))
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum SimError {
    #[error("invalid simulation config: {0}")]
    Config(String),
    #[error(transparent)]
    World(#[from] WorldError),
    #[error("scene entity {index}: {source}")]
    Physics { index: usize, source: PhysicsError },
    #[error("cannot build the avatar's body: {0}")]
    Avatar(PhysicsError),
    #[error("the scene has no spawn points, so avatars cannot be placed")]
    NoSpawnPoints,
    #[error("entity {0:?} is not an avatar")]
    NotAnAvatar(EntityId),
}

/// What one tick did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TickReport {
    pub physics: StepReport,
    /// Entities moved by [`systems::integrate_velocities`].
    pub integrated: usize,
    /// Bodies despawned because they left the world bounds.
    pub out_of_bounds: usize,
}

/// The simulation of one instance.
#[derive(Debug)]
pub struct Simulation {
    world: World,
    /// `None` while paused: put away whole (see [`Self::pause`]).
    physics: Option<Box<Physics>>,
    clock: FixedClock,
    bounds: Aabb,
    config: SimConfig,
    tick_dt_s: f32,
    spawn_points: Vec<EntityId>,
    next_spawn: usize,
    /// Reused every tick: entities to despawn for leaving the bounds.
    out_of_bounds: Vec<EntityId>,
    skipped_ticks: u64,
    /// Entities the last step moved by integration (see [`Self::at_rest`]).
    last_integrated: usize,
    /// The scene, shared with every instance of it.
    scene: Arc<PreparedScene>,
    /// The entity each scene entity became, by scene index (stale once
    /// despawned).
    scene_entities: Vec<EntityId>,
}

impl Simulation {
    /// Builds the world and physics of `scene` (prepared for this
    /// simulation alone; instances of one scene share a
    /// [`PreparedScene`] through [`Self::from_prepared`]).
    pub fn new(scene: &Scene, config: SimConfig) -> Result<Self, SimError> {
        config.validate()?;
        Self::from_prepared(Arc::new(PreparedScene::new(scene.clone())?), config)
    }

    /// Builds the world and physics of a prepared scene; its collider
    /// shapes are shared, not copied.
    pub fn from_prepared(
        prepared: Arc<PreparedScene>,
        config: SimConfig,
    ) -> Result<Self, SimError> {
        config.validate()?;
        let tick_dt_s = 1.0 / config.tick_hz as f32;
        let scene = prepared.scene();
        let entity_count = (scene.entities.len() + scene.spawn_points.len()) as u32;
        let mut world = World::with_capacity(config.world, entity_count);
        let mut physics = Physics::new(config.gravity, tick_dt_s, config.substeps);
        let mut scene_entities = Vec::with_capacity(scene.entities.len());
        for (index, e) in scene.entities.iter().enumerate() {
            let motion = match &e.body {
                Some(b) if b.body.kind != BodyKind::Fixed => Motion::Physics,
                _ => Motion::Static,
            };
            let id = world.spawn(e.transform, e.velocity, motion, e.networked)?;
            scene_entities.push(id);
            if let (Some(b), Some(shape)) = (&e.body, prepared.shape(index)) {
                let link = physics.add_shaped_body(
                    id,
                    e.transform,
                    e.velocity,
                    b.body,
                    &b.collider,
                    shape.clone(),
                    false,
                );
                world.insert(id, link, |c| &mut c.bodies)?;
                world.insert(id, b.collider, |c| &mut c.colliders)?;
            }
        }
        let mut spawn_points = Vec::with_capacity(scene.spawn_points.len());
        for t in &scene.spawn_points {
            let id = world.spawn(*t, Velocity::default(), Motion::Static, false)?;
            world.insert(id, SpawnPoint, |c| &mut c.spawn_points)?;
            spawn_points.push(id);
        }
        Ok(Simulation {
            world,
            physics: Some(Box::new(physics)),
            clock: FixedClock::new(config.tick_duration(), config.catch_up_steps_max),
            bounds: scene.bounds,
            config,
            tick_dt_s,
            spawn_points,
            next_spawn: 0,
            out_of_bounds: Vec::new(),
            skipped_ticks: 0,
            last_integrated: 0,
            scene: prepared,
            scene_entities,
        })
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    /// Mutable access for systems outside the engine. Despawn through
    /// [`Self::despawn`], which also removes the entity's physics body.
    pub fn world_mut(&mut self) -> &mut World {
        &mut self.world
    }

    /// The physics world; `None` while the simulation is paused (it is
    /// rebuilt by [`Self::resume`], or by whatever needs it first).
    pub fn physics(&self) -> Option<&Physics> {
        self.physics.as_deref()
    }

    pub fn bounds(&self) -> &Aabb {
        &self.bounds
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Ticks that were due but dropped by the catch-up cap, since creation.
    pub fn skipped_ticks(&self) -> u64 {
        self.skipped_ticks
    }

    /// When the next tick falls due.
    pub fn next_tick_due(&self) -> Option<Instant> {
        self.clock.next_due()
    }

    /// Whether the last step moved nothing and nothing will move by itself:
    /// every physics body asleep and no entity integrating a velocity. A
    /// world at rest stays unchanged until something outside touches it.
    pub fn at_rest(&self) -> bool {
        self.last_integrated == 0 && self.physics().is_none_or(|p| p.awake_bodies() == 0)
    }

    /// Stops the clock: no tick falls due until [`Self::resume`]. The
    /// physics world is dropped meanwhile (bodies, contacts, broad phase,
    /// the pipelines' scratch): the columns hold every body's transform and
    /// velocity, and the shared scene its shape, which is all it takes to
    /// build it again. Meant for a world [`Self::at_rest`].
    pub fn pause(&mut self) {
        self.clock.pause();
        self.physics = None;
        self.out_of_bounds = Vec::new();
    }

    /// Restarts a paused clock with a tick due at `now`; the time it was
    /// paused is not caught up (nor counted as skipped). The physics world
    /// is rebuilt, its bodies asleep where they rested.
    pub fn resume(&mut self, now: Instant) {
        self.thaw();
        self.clock.resume(now);
    }

    /// Rebuilds the physics world put away by [`Self::pause`]: every scene
    /// body still in the world from the shared scene, every avatar from its
    /// collider column, each at its transform and velocity in the columns.
    fn thaw(&mut self) {
        self.physics_mut();
    }

    /// The physics world, rebuilt first if it was put away.
    fn physics_mut(&mut self) -> &mut Physics {
        let physics = match self.physics.take() {
            Some(physics) => physics,
            None => Box::new(self.rebuild_physics()),
        };
        self.physics.insert(physics)
    }

    fn rebuild_physics(&mut self) -> Physics {
        let mut physics = Physics::new(self.config.gravity, self.tick_dt_s, self.config.substeps);
        let tick = self.world.tick();
        let scene = Arc::clone(&self.scene);
        let mut links = Vec::new();
        for (index, e) in scene.scene().entities.iter().enumerate() {
            let (Some(b), Some(shape)) = (&e.body, scene.shape(index)) else {
                continue;
            };
            let Some(&id) = self.scene_entities.get(index) else {
                continue;
            };
            if !self.world.optional.bodies.contains(id) {
                continue;
            }
            let (Ok(transform), Ok(velocity)) = (self.world.transform(id), self.world.velocity(id))
            else {
                continue;
            };
            let asleep = b.body.kind != BodyKind::Fixed;
            let link = physics.add_shaped_body(
                id,
                transform,
                velocity,
                b.body,
                &b.collider,
                shape.clone(),
                asleep,
            );
            links.push((id, link));
        }
        for &id in self.world.optional.avatars.ids() {
            let Some(collider) = self.world.optional.colliders.get(id) else {
                continue;
            };
            if !self.world.optional.bodies.contains(id) {
                continue;
            }
            let Ok(transform) = self.world.transform(id) else {
                continue;
            };
            // Built from the same description as at spawn, so it cannot fail.
            if let Ok(link) = physics.add_avatar_body(id, transform, collider, true) {
                links.push((id, link));
            }
        }
        for (id, link) in links {
            // Stamp only links that changed: handles usually come back the
            // same, as bodies are added in the same order.
            if self.world.optional.bodies.get(id) != Some(&link)
                && let Some(slot) = self.world.optional.bodies.get_mut(id, tick)
            {
                *slot = link;
            }
        }
        physics.settle_rebuilt();
        physics
    }

    /// Runs the ticks that are due at `now` (capped; see [`FixedClock`]).
    pub fn advance(&mut self, now: Instant) -> ClockAdvance {
        let due = self.due_ticks(now);
        for _ in 0..due.steps {
            self.step();
        }
        due
    }

    /// Moves the clock to `now` and says how many ticks to [`Self::step`],
    /// for callers that time each tick; [`Self::advance`] does both.
    pub fn due_ticks(&mut self, now: Instant) -> ClockAdvance {
        let due = self.clock.advance(now);
        self.skipped_ticks += due.skipped;
        due
    }

    /// The avatar phase of [`Self::step`] alone: moves every avatar with a
    /// target toward it (see [`Physics::drive_avatars`]) and returns how many
    /// the controller ran for. For benchmarks and tools: a step after it
    /// drives the avatars still moving again, to the same result.
    pub fn drive_avatars(&mut self) -> usize {
        self.thaw();
        let Some(physics) = self.physics.as_deref_mut() else {
            return 0;
        };
        physics.drive_avatars(&mut self.world, self.tick_dt_s)
    }

    /// Runs exactly one tick: avatars, velocity integration, physics, bounds.
    pub fn step(&mut self) -> TickReport {
        self.thaw();
        let Some(physics) = self.physics.as_deref_mut() else {
            return TickReport::default();
        };
        self.world.begin_tick();
        physics.drive_avatars(&mut self.world, self.tick_dt_s);
        let integrated = systems::integrate_velocities(&mut self.world, self.tick_dt_s);
        self.last_integrated = integrated;
        self.out_of_bounds.clear();
        let physics = physics.step(&mut self.world, &self.bounds, &mut self.out_of_bounds);
        let out = std::mem::take(&mut self.out_of_bounds);
        for &id in &out {
            // Cannot be stale: the physics step only reports linked entities.
            let _ = self.despawn(id);
        }
        self.out_of_bounds = out;
        TickReport {
            physics,
            integrated,
            out_of_bounds: self.out_of_bounds.len(),
        }
    }

    /// Despawns an entity, removing its body from the physics world.
    pub fn despawn(&mut self, id: EntityId) -> Result<(), WorldError> {
        if let Some(link) = self.world.optional.bodies.get(id).copied()
            && let Some(physics) = self.physics.as_deref_mut()
        {
            physics.remove_body(&link);
        }
        self.world.despawn(id)
    }

    /// The named scene entities still alive, with their network ids (for
    /// clients to tell scene objects apart; unnetworked ones left out).
    pub fn scene_names(&self) -> impl Iterator<Item = (crate::NetworkId, &str)> + '_ {
        self.scene
            .scene()
            .entities
            .iter()
            .zip(&self.scene_entities)
            .filter_map(|(e, &id)| {
                let name = e.name.as_deref()?;
                let network_id = self.world.network_id(id).ok()?;
                (network_id != crate::NetworkId::NONE).then_some((network_id, name))
            })
    }

    /// A client takes an entity: a dynamic body becomes kinematic, moved by
    /// [`Simulation::move_held`] until [`Simulation::release`]. Returns
    /// whether the entity has a body (is moved through physics).
    pub fn hold(&mut self, id: EntityId) -> Result<bool, WorldError> {
        self.world.row(id)?;
        let Some(link) = self.world.optional.bodies.get(id).copied() else {
            return Ok(false);
        };
        if let Some(physics) = self.physics.as_deref_mut() {
            physics.hold_body(&link);
        }
        Ok(true)
    }

    /// The client let go of an entity it held: a dynamic body falls again,
    /// with the velocity its last moves gave it.
    pub fn release(&mut self, id: EntityId) -> Result<(), WorldError> {
        self.world.row(id)?;
        if let Some(link) = self.world.optional.bodies.get(id).copied()
            && let Some(physics) = self.physics.as_deref_mut()
        {
            physics.release_body(&link);
        }
        Ok(())
    }

    /// Moves a held body (see [`Simulation::hold`]): it is at `to` after
    /// the next step, pushing dynamic bodies on its way. The caller checks
    /// the speed limit and bounds.
    pub fn move_held(&mut self, id: EntityId, to: Transform) -> Result<(), WorldError> {
        self.world.row(id)?;
        if let Some(link) = self.world.optional.bodies.get(id).copied()
            && let Some(physics) = self.physics.as_deref_mut()
        {
            physics.move_held(&link, to);
        }
        Ok(())
    }

    /// Spawns `user`'s avatar at the next spawn point (round robin): a
    /// kinematic capsule owned by the user.
    pub fn spawn_avatar(&mut self, user: UserIndex) -> Result<EntityId, SimError> {
        if self.spawn_points.is_empty() {
            return Err(SimError::NoSpawnPoints);
        }
        let point = self.spawn_points[self.next_spawn % self.spawn_points.len()];
        self.next_spawn = self.next_spawn.wrapping_add(1);
        let a = self.config.avatar;
        let mut transform = self.world.transform(point)?;
        // Stand the capsule on the spawn point rather than sinking into it.
        transform.position.y += a.half_height_m + a.radius_m;
        let id = self
            .world
            .spawn(transform, Velocity::default(), Motion::Physics, true)?;
        let collider = ColliderDesc {
            shape: Shape::Capsule {
                half_height: a.half_height_m,
                radius: a.radius_m,
            },
            friction: 0.0,
            restitution: 0.0,
            mass_kg: None,
        };
        let link = self
            .physics_mut()
            .add_avatar_body(id, transform, &collider, false)
            .map_err(SimError::Avatar)?;
        self.world.insert(id, link, |c| &mut c.bodies)?;
        self.world.insert(id, collider, |c| &mut c.colliders)?;
        self.world.insert(id, Owner { user }, |c| &mut c.owners)?;
        let avatar = Avatar {
            user,
            target: None,
            speed_max_mps: a.speed_max_mps,
        };
        self.world.insert(id, avatar, |c| &mut c.avatars)?;
        Ok(id)
    }

    /// Sets where an avatar should go; it moves there over the next ticks at
    /// no more than its speed limit. The target is clamped to the world
    /// bounds and its rotation normalised; non-finite values are refused.
    pub fn set_avatar_target(&mut self, id: EntityId, target: Transform) -> Result<(), SimError> {
        let len = target.rotation.length();
        if !(target.position.is_finite() && len.is_finite() && len > 1e-6) {
            return Err(WorldError::NotFinite {
                what: "avatar target",
            }
            .into());
        }
        let q = target.rotation;
        let (lo, hi) = (self.bounds.min, self.bounds.max);
        let p = target.position;
        let target = Transform {
            // Inside the world bounds: an owner cannot walk its avatar out.
            position: Vec3::new(
                p.x.clamp(lo.x, hi.x),
                p.y.clamp(lo.y, hi.y),
                p.z.clamp(lo.z, hi.z),
            ),
            rotation: crate::math::Quat::new(q.x / len, q.y / len, q.z / len, q.w / len),
        };
        self.world.row(id)?;
        let tick = self.world.tick();
        let avatar = self
            .world
            .optional
            .avatars
            .get_mut(id, tick)
            .ok_or(SimError::NotAnAvatar(id))?;
        avatar.target = Some(target);
        Ok(())
    }

    /// The hash of the world state (see [`World::state_hash`]).
    pub fn state_hash(&self) -> u64 {
        self.world.state_hash()
    }
}
