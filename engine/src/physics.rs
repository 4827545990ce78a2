//! One rapier3d physics world per instance, and the bridge between its
//! bodies and the world's columns.

use rapier3d::control::KinematicCharacterController;
use rapier3d::dynamics::{RigidBodyBuilder, RigidBodyHandle};
use rapier3d::geometry::{ColliderBuilder, SharedShape};
use rapier3d::math::{Pose, Vector};
use rapier3d::pipeline::{PhysicsWorld, QueryFilter};

use crate::components::{Avatar, BodyKind, BodyLink, ColliderDesc, Shape, Transform, Velocity};
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
    controller: KinematicCharacterController,
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
        let controller = KinematicCharacterController {
            // Clients send full positions, jumps included: do not pull
            // avatars down to the ground, only keep them out of geometry.
            snap_to_ground: None,
            ..KinematicCharacterController::default()
        };
        Physics {
            world,
            substeps,
            controller,
        }
    }

    pub fn body_count(&self) -> usize {
        self.world.bodies.len()
    }

    /// Drops the pipelines' scratch buffers (rapier keeps them between
    /// steps to reuse them; they regrow on the next step). For a world that
    /// will not step for a while.
    pub fn release_workspace(&mut self) {
        self.world.physics_pipeline = rapier3d::pipeline::PhysicsPipeline::new();
        self.world.collision_pipeline = rapier3d::pipeline::CollisionPipeline::new();
        self.world.ccd_solver = rapier3d::dynamics::CCDSolver::new();
    }

    /// Dynamic and kinematic bodies currently awake.
    pub fn awake_bodies(&self) -> usize {
        self.world.islands.active_bodies().count()
    }

    /// Creates the body and collider of `entity` at `transform`.
    pub fn add_body(
        &mut self,
        entity: EntityId,
        transform: Transform,
        velocity: Velocity,
        body: BodyDesc,
        collider: &ColliderDesc,
        mesh: Option<&TriMeshData>,
    ) -> Result<BodyLink, PhysicsError> {
        let shape = shared_shape(collider.shape, mesh)?;
        let builder = match body.kind {
            BodyKind::Fixed => RigidBodyBuilder::fixed(),
            BodyKind::Dynamic => RigidBodyBuilder::dynamic()
                .linvel(velocity.linear.into())
                .angvel(velocity.angular.into()),
            BodyKind::Kinematic => RigidBodyBuilder::kinematic_position_based(),
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
        Ok(BodyLink {
            body: handle,
            collider,
            kind: body.kind,
        })
    }

    /// Removes a body and its colliders.
    pub fn remove_body(&mut self, link: &BodyLink) {
        self.world.remove_body_with_colliders(link.body, true);
    }

    /// Moves every avatar with a target toward it for one tick: at most
    /// `speed_max_mps`, sliding along colliders instead of passing through.
    pub fn drive_avatars(&mut self, world: &World, tick_dt_s: f32) {
        let avatars = &world.optional.avatars;
        for (id, avatar) in avatars.iter() {
            let Some(link) = world.optional.bodies.get(id) else {
                continue;
            };
            if link.kind != BodyKind::Kinematic {
                continue;
            }
            self.drive_avatar(avatar, link, tick_dt_s);
        }
    }

    fn drive_avatar(&mut self, avatar: &Avatar, link: &BodyLink, dt: f32) {
        let Some(target) = avatar.target else {
            return;
        };
        let Some(body) = self.world.bodies.get(link.body) else {
            return;
        };
        let current = *body.position();
        let mut wanted = Vector::from(target.position) - current.translation;
        let step_max = avatar.speed_max_mps * dt;
        let len = wanted.length();
        if len > step_max {
            wanted *= step_max / len;
        }
        let rotation = target.rotation.into();
        let moved = if len <= f32::EPSILON {
            Vector::ZERO
        } else {
            let Some(collider) = self.world.colliders.get(link.collider) else {
                return;
            };
            let queries = self
                .world
                .query_pipeline_with_filter(QueryFilter::default().exclude_rigid_body(link.body));
            self.controller
                .move_shape(dt, &queries, collider.shape(), &current, wanted, |_| {})
                .translation
        };
        if let Some(body) = self.world.bodies.get_mut(link.body) {
            body.set_next_kinematic_position(Pose::from_parts(
                current.translation + moved,
                rotation,
            ));
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

fn shared_shape(shape: Shape, mesh: Option<&TriMeshData>) -> Result<SharedShape, PhysicsError> {
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
