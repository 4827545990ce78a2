//! One rapier3d physics world per instance, and the bridge between its
//! bodies and the world's columns.

use rapier3d::dynamics::{RigidBodyBuilder, RigidBodyHandle, RigidBodyType};
use rapier3d::geometry::{ColliderBuilder, SharedShape};
use rapier3d::math::{Pose, Vector};
use rapier3d::parry::query::ShapeCastOptions;
use rapier3d::pipeline::{PhysicsWorld, QueryFilter};

use crate::components::{BodyKind, BodyLink, ColliderDesc, Shape, Transform, Velocity};
use crate::entity::EntityId;
use crate::math::{Aabb, Vec3};
use crate::world::World;

/// Triangle-mesh data for a [`Shape::TriMesh`] collider.
#[derive(Clone, Debug, PartialEq)]
pub struct TriMeshData {
    pub vertices: Vec<Vec3>,
    pub indices: Vec<[u32; 3]>,
}

/// How a body is built, beyond its collider.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BodyDesc {
    pub kind: BodyKind,
    pub linear_damping: f32,
    pub angular_damping: f32,
    /// Continuous collision detection, for small fast bodies.
    pub ccd: bool,
}

impl BodyDesc {
    pub fn new(kind: BodyKind) -> Self {
        BodyDesc {
            kind,
            linear_damping: 0.0,
            angular_damping: 0.0,
            ccd: false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum PhysicsError {
    #[error("invalid triangle mesh: {0}")]
    TriMesh(String),
    #[error("a trimesh collider needs its mesh data")]
    MissingMesh,
}

/// What one physics tick did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepReport {
    /// Dynamic and kinematic bodies awake after the step.
    pub awake_bodies: usize,
    /// Rows whose transform or velocity was written back (really changed).
    pub moved_rows: usize,
}

/// The physics of one instance.
///
/// Invariant: every body's `user_data` holds the [`EntityId::to_bits`] of the
/// entity that links to it through a [`BodyLink`].
pub struct Physics {
    world: PhysicsWorld,
    substeps: u32,
}

impl std::fmt::Debug for Physics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Physics")
            .field("bodies", &self.world.bodies.len())
            .field("colliders", &self.world.colliders.len())
            .field("substeps", &self.substeps)
            .finish()
    }
}

impl Physics {
    /// A physics world stepping `tick_dt_s` per tick in `substeps` equal steps.
    pub fn new(gravity: Vec3, tick_dt_s: f32, substeps: u32) -> Self {
        assert!(substeps >= 1, "at least one physics substep");
        let mut world = PhysicsWorld::new();
        world.gravity = gravity.into();
        world.integration_parameters.dt = tick_dt_s / substeps as f32;
        Physics { world, substeps }
    }

    pub fn body_count(&self) -> usize {
        self.world.bodies.len()
    }

    /// After bodies were added asleep (a world rebuilt where it rested):
    /// finds the contacts between them and leaves them asleep. Without
    /// this, the first step finds every resting contact anew, and rapier
    /// wakes both bodies of each contact that starts, so the whole world
    /// would wake and settle again. The contacts are found with a
    /// throwaway island manager, so their wake-ups touch only the bodies'
    /// flags; every moving body (dynamic or kinematic) is then put back to
    /// sleep through `get_mut`, which also hands it to the real island
    /// manager at the next step (the collision pass consumed its first
    /// change flags).
    pub(crate) fn settle_rebuilt(&mut self) {
        let w = &mut self.world;
        let prediction = w.integration_parameters.prediction_distance();
        let mut scratch = rapier3d::dynamics::IslandManager::new();
        let asleep: Vec<RigidBodyHandle> = w
            .bodies
            .iter()
            .filter(|(_, b)| !b.is_fixed() && b.is_sleeping())
            .map(|(h, _)| h)
            .collect();
        w.collision_pipeline.step(
            prediction,
            &mut scratch,
            &mut w.broad_phase,
            &mut w.narrow_phase,
            &mut w.bodies,
            &mut w.colliders,
            &(),
            &(),
        );
        for handle in asleep {
            if let Some(body) = w.bodies.get_mut(handle) {
                body.sleep();
            }
        }
    }

    /// Dynamic and kinematic bodies currently awake.
    pub fn awake_bodies(&self) -> usize {
        self.world.islands.active_bodies().count()
    }

    /// Creates the body and collider of `entity` with a shape built before
    /// (shared with other instances of the same scene). A body created
    /// `asleep` stays where it is until something touches or moves it, as
    /// it was when its world was put away.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_shaped_body(
        &mut self,
        entity: EntityId,
        transform: Transform,
        velocity: Velocity,
        body: BodyDesc,
        collider: &ColliderDesc,
        shape: SharedShape,
        asleep: bool,
    ) -> BodyLink {
        let builder = match body.kind {
            BodyKind::Fixed => RigidBodyBuilder::fixed(),
            BodyKind::Dynamic => RigidBodyBuilder::dynamic()
                .linvel(velocity.linear.into())
                .angvel(velocity.angular.into())
                .sleeping(asleep),
            BodyKind::Kinematic => RigidBodyBuilder::kinematic_position_based().sleeping(asleep),
        };
        let rb = builder
            .pose(Pose::from_parts(
                transform.position.into(),
                transform.rotation.into(),
            ))
            .linear_damping(body.linear_damping)
            .angular_damping(body.angular_damping)
            .ccd_enabled(body.ccd)
            .user_data(u128::from(entity.to_bits()))
            .build();
        let handle = self.world.insert_body(rb);
        let mut cb = ColliderBuilder::new(shape)
            .friction(collider.friction)
            .restitution(collider.restitution);
        if let Some(m) = collider.mass_kg {
            cb = cb.mass(m);
        }
        let collider = self.world.insert_collider(cb.build(), Some(handle));
        BodyLink {
            body: handle,
            collider,
            kind: body.kind,
        }
    }

    /// Creates an avatar's kinematic body, its collider marked so that
    /// other avatars' casts pass through it.
    pub(crate) fn add_avatar_body(
        &mut self,
        entity: EntityId,
        transform: Transform,
        collider: &ColliderDesc,
        asleep: bool,
    ) -> Result<BodyLink, PhysicsError> {
        let shape = shared_shape(collider.shape, None)?;
        let link = self.add_shaped_body(
            entity,
            transform,
            Velocity::default(),
            BodyDesc::new(BodyKind::Kinematic),
            collider,
            shape,
            asleep,
        );
        if let Some(c) = self.world.colliders.get_mut(link.collider) {
            c.user_data = AVATAR_COLLIDER;
        }
        Ok(link)
    }

    /// Removes a body and its colliders.
    pub fn remove_body(&mut self, link: &BodyLink) {
        self.world.remove_body_with_colliders(link.body, true);
    }

    /// Hands a dynamic body to a client: it becomes kinematic (no longer
    /// falling, pushing dynamic bodies), moved by [`Physics::move_held`]
    /// until [`Physics::release_body`], and avatars pass through it (the one
    /// holding it may carry it against itself). Fixed and kinematic scene
    /// bodies are never held: callers refuse them, and this leaves them be.
    pub fn hold_body(&mut self, link: &BodyLink) {
        if link.kind != BodyKind::Dynamic {
            return;
        }
        if let Some(body) = self.world.bodies.get_mut(link.body) {
            body.set_body_type(RigidBodyType::KinematicPositionBased, true);
        }
        if let Some(c) = self.world.colliders.get_mut(link.collider)
            && c.user_data == 0
        {
            c.user_data = HELD_COLLIDER;
        }
    }

    /// Gives a held body back to the simulation: it falls again with the
    /// velocity of its last tick's move (so a held box can be thrown).
    pub fn release_body(&mut self, link: &BodyLink) {
        if link.kind != BodyKind::Dynamic {
            return;
        }
        if let Some(body) = self.world.bodies.get_mut(link.body) {
            body.set_body_type(RigidBodyType::Dynamic, true);
        }
        if let Some(c) = self.world.colliders.get_mut(link.collider)
            && c.user_data == HELD_COLLIDER
        {
            c.user_data = 0;
        }
    }

    /// Moves a held body toward `to` for the next step, sliding along fixed
    /// and kinematic scene geometry rather than through it (so no client can
    /// push a body under the floor or through a wall); dynamic bodies in
    /// the way are pushed by the step. The step writes it back to the world.
    pub fn move_held(&mut self, link: &BodyLink, to: Transform) {
        let Some(body) = self.world.bodies.get(link.body) else {
            return;
        };
        if !body.is_kinematic() {
            return;
        }
        let current = *body.position();
        let wanted = Vector::from(to.position) - current.translation;
        let mut next = Pose::from_parts(current.translation + wanted, to.rotation.into());
        if let Some(collider) = self.world.colliders.get(link.collider) {
            let not_moved_by_users = |_, c: &rapier3d::geometry::Collider| {
                c.user_data != AVATAR_COLLIDER && c.user_data != HELD_COLLIDER
            };
            let filter = QueryFilter::exclude_dynamic()
                .exclude_rigid_body(link.body)
                .predicate(&not_moved_by_users);
            let queries = self.world.query_pipeline_with_filter(filter);
            let shape = collider.shape();
            next.translation = current.translation + slide(&queries, shape, &current, wanted);
            // The slide keeps a skin's distance from what it meets, but a
            // turn may still end inside something: then it moves without
            // turning. A body already touching something (resting contacts
            // overlap a little) never turns, so it cannot be levered into
            // it; and a move that would still end inside something from
            // outside is not made.
            let overlaps = |pose: Pose| queries.intersect_shape(pose, shape).next().is_some();
            if overlaps(next) {
                let unturned = Pose::from_parts(next.translation, current.rotation);
                next = if overlaps(current) || !overlaps(unturned) {
                    unturned
                } else {
                    current
                };
            }
        }
        if let Some(body) = self.world.bodies.get_mut(link.body) {
            body.set_next_kinematic_position(next);
        }
    }

    /// Moves every avatar with a target toward it for one tick: at most
    /// `speed_max_mps`, sliding along static colliders instead of passing
    /// through them. An avatar whose target is reached, or that cannot get
    /// any closer to it, has its target cleared: the controller does not run
    /// for it again until its owner sends a new one, and its body can sleep.
    /// Returns how many avatars the controller ran for.
    pub fn drive_avatars(&mut self, world: &mut World, tick_dt_s: f32) -> usize {
        let tick = world.tick();
        let avatars = &mut world.optional.avatars;
        let bodies = &world.optional.bodies;
        let mut driven = 0;
        for i in 0..avatars.len() {
            let id = avatars.ids()[i];
            let avatar = &avatars.values()[i];
            let Some(target) = avatar.target else {
                continue;
            };
            let Some(link) = bodies.get(id) else {
                continue;
            };
            if link.kind != BodyKind::Kinematic {
                continue;
            }
            driven += 1;
            let step_max = avatar.speed_max_mps * tick_dt_s;
            if self.drive_avatar(&target, step_max, link) == Drive::Settled
                && let Some(avatar) = avatars.get_mut(id, tick)
            {
                avatar.target = None;
            }
        }
        driven
    }

    /// One avatar's tick: where it can get toward `target` this tick,
    /// against geometry that does not move by itself: fixed and kinematic
    /// colliders, other avatars' excepted. Dynamic bodies do not stop an
    /// avatar (its kinematic body pushes them in the physics step) and
    /// avatars pass through each other; leaving them out keeps the query
    /// cheap.
    fn drive_avatar(&mut self, target: &Transform, step_max: f32, link: &BodyLink) -> Drive {
        let Some(body) = self.world.bodies.get(link.body) else {
            return Drive::Settled;
        };
        let current = *body.position();
        let rotation: rapier3d::math::Rotation = target.rotation.into();
        let wanted = Vector::from(target.position) - current.translation;
        let len = wanted.length();
        let turned = current.rotation != rotation;
        if len <= AVATAR_CLOSE_M {
            if len == 0.0 && !turned {
                return Drive::Settled;
            }
            // Close enough to land exactly on the target: no gap to cast
            // through, and no 1 mm flicker around it afterwards.
            self.set_kinematic(link, Vector::from(target.position), rotation);
            return Drive::Settled;
        }
        let Some(collider) = self.world.colliders.get(link.collider) else {
            return Drive::Settled;
        };
        let wanted = if len > step_max {
            wanted * (step_max / len)
        } else {
            wanted
        };
        let not_an_avatar = |_, c: &rapier3d::geometry::Collider| {
            c.user_data != AVATAR_COLLIDER && c.user_data != HELD_COLLIDER
        };
        let filter = QueryFilter::exclude_dynamic().predicate(&not_an_avatar);
        let queries = self.world.query_pipeline_with_filter(filter);
        // Cast upright whatever the avatar's rotation: a client may pitch
        // or roll its avatar, and the clearance is for the floor below.
        let current = Pose::from_translation(current.translation);
        let moved = match collider.shape().as_capsule() {
            Some(capsule) => slide(&queries, &raised_feet(capsule), &current, wanted),
            None => slide(&queries, collider.shape(), &current, wanted),
        };
        let arrived = len <= step_max && (moved - wanted).length() <= AVATAR_CLOSE_M;
        let position = if arrived {
            Vector::from(target.position)
        } else {
            current.translation + moved
        };
        let stuck = moved.length() <= AVATAR_STUCK_M;
        if !stuck || turned || arrived {
            self.set_kinematic(link, position, rotation);
        }
        if arrived || stuck {
            Drive::Settled
        } else {
            Drive::Moving
        }
    }

    fn set_kinematic(
        &mut self,
        link: &BodyLink,
        position: Vector,
        rotation: rapier3d::math::Rotation,
    ) {
        if let Some(body) = self.world.bodies.get_mut(link.body) {
            body.set_next_kinematic_position(Pose::from_parts(position, rotation));
        }
    }

    /// Runs one tick of physics and copies the results of awake bodies back
    /// into `world`. Sleeping bodies are not visited, so their rows keep
    /// their change ticks. Dynamic bodies whose position left `bounds` (or
    /// became NaN) are pushed to `out_of_bounds` for the caller to despawn.
    pub fn step(
        &mut self,
        world: &mut World,
        bounds: &Aabb,
        out_of_bounds: &mut Vec<EntityId>,
    ) -> StepReport {
        for _ in 0..self.substeps {
            self.world.step();
        }
        let mut report = StepReport::default();
        for handle in self.world.islands.active_bodies() {
            report.awake_bodies += 1;
            let Some(body) = self.world.bodies.get(handle) else {
                continue;
            };
            let entity = EntityId::from_bits(body.user_data as u64);
            let pose = body.position();
            let position = Vec3::from(pose.translation);
            let velocity = Velocity {
                linear: body.linvel().into(),
                angular: body.angvel().into(),
            };
            let transform = Transform {
                position,
                rotation: pose.rotation.into(),
            };
            if world.write_physics_state(entity, transform, velocity) {
                report.moved_rows += 1;
            }
            // Only simulated bodies can be flung out; kinematic ones go where
            // their targets say, and avatar targets are clamped to the bounds.
            if body.is_dynamic() && !bounds.contains(position) {
                out_of_bounds.push(entity);
            }
        }
        report
    }

    /// The body of a link, for tests and tools that need rapier's view.
    pub fn body(&self, handle: RigidBodyHandle) -> Option<&rapier3d::dynamics::RigidBody> {
        self.world.bodies.get(handle)
    }
}

/// `user_data` of an avatar's collider.
const AVATAR_COLLIDER: u128 = 1;
/// The `user_data` of a collider whose body a client holds: avatars pass
/// through it, as through dynamic bodies.
const HELD_COLLIDER: u128 = 2;

/// Whether an avatar still has somewhere to go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drive {
    Moving,
    /// At its target, or stopped by geometry short of it.
    Settled,
}

/// The gap an avatar keeps from static geometry.
const AVATAR_SKIN_M: f32 = 0.005;
/// How far above its feet an avatar's casts start (see [`raised_feet`]).
pub const AVATAR_FOOT_CLEARANCE_M: f32 = 0.02;
/// How far a slide leans away from the surface it slides along.
const AVATAR_LEAN_M: f32 = 1.0e-5;
/// An avatar this close to its target is put on it.
const AVATAR_CLOSE_M: f32 = 1.0e-3;
/// A tick that moves an avatar less than this means geometry holds it.
const AVATAR_STUCK_M: f32 = 1.0e-4;
/// Obstacles an avatar slides along in one tick (a corner is two).
const AVATAR_SLIDES_MAX: usize = 3;

/// The avatar's capsule with its lower end raised by
/// [`AVATAR_FOOT_CLEARANCE_M`], for casting: a capsule standing on a floor
/// touches it, and a cast from touching is slow (GJK at contact) and
/// fragile (a move tilted 1e-9 into the floor stops on it). The raised
/// capsule clears the floor, so a walk across open floor tests no shape at
/// all, and ledges lower than the clearance are walked over. The cost: a
/// client may put its avatar's feet that far into a floor.
fn raised_feet(capsule: &rapier3d::parry::shape::Capsule) -> rapier3d::parry::shape::Capsule {
    let (mut low, high) = if capsule.segment.a.y <= capsule.segment.b.y {
        (capsule.segment.a, capsule.segment.b)
    } else {
        (capsule.segment.b, capsule.segment.a)
    };
    let axis = high - low;
    let len = axis.length();
    if len > 0.0 {
        low += axis * (AVATAR_FOOT_CLEARANCE_M.min(len) / len);
    }
    rapier3d::parry::shape::Capsule::new(low, high, capsule.radius)
}

/// Casts `shape` from `start` along `wanted`, and on a hit slides the rest
/// of the way along the obstacle's surface, up to [`AVATAR_SLIDES_MAX`]
/// times. Returns the translation that keeps it out of what `queries`
/// sees. A cast that starts touching a surface and moves along or away
/// from it is not stopped by it (parry reports no hit), so an avatar walks
/// on a floor it stands on.
fn slide(
    queries: &rapier3d::pipeline::QueryPipeline<'_>,
    shape: &dyn rapier3d::geometry::Shape,
    start: &Pose,
    wanted: Vector,
) -> Vector {
    let mut moved = Vector::ZERO;
    let mut remaining = wanted;
    for _ in 0..AVATAR_SLIDES_MAX {
        let len = remaining.length();
        if len <= AVATAR_STUCK_M {
            break;
        }
        let dir = remaining / len;
        let from = Pose::from_parts(start.translation + moved, start.rotation);
        let options = ShapeCastOptions {
            max_time_of_impact: len,
            target_distance: AVATAR_SKIN_M,
            stop_at_penetration: false,
            compute_impact_geometry_on_penetration: true,
        };
        let Some((_, hit)) = queries.cast_shape(&from, dir, shape, options) else {
            return moved + remaining;
        };
        let travel = hit.time_of_impact.min(len);
        moved += dir * travel;
        remaining -= dir * travel;
        // The obstacle's normal, facing the avatar; drop the part of the
        // remaining move that goes into it and lean the rest a hair away, so
        // the next cast does not find the same surface again: a move along
        // a floor that rounding tilts 1e-9 into it would stop on it.
        let mut normal = hit.normal1;
        if normal.dot(dir) > 0.0 {
            normal = -normal;
        }
        let into = remaining.dot(normal);
        if into < 0.0 {
            remaining -= normal * into;
        }
        remaining += normal * AVATAR_LEAN_M;
    }
    moved
}

pub(crate) fn shared_shape(
    shape: Shape,
    mesh: Option<&TriMeshData>,
) -> Result<SharedShape, PhysicsError> {
    Ok(match shape {
        Shape::Cuboid { half_extents: h } => SharedShape::cuboid(h.x, h.y, h.z),
        Shape::Ball { radius } => SharedShape::ball(radius),
        Shape::Capsule {
            half_height,
            radius,
        } => SharedShape::capsule_y(half_height, radius),
        Shape::Cylinder {
            half_height,
            radius,
        } => SharedShape::cylinder(half_height, radius),
        Shape::TriMesh { .. } => {
            let mesh = mesh.ok_or(PhysicsError::MissingMesh)?;
            let vertices = mesh.vertices.iter().map(|&v| v.into()).collect();
            SharedShape::trimesh(vertices, mesh.indices.clone())
                .map_err(|e| PhysicsError::TriMesh(e.to_string()))?
        }
    })
}
