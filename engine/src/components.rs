//! The component types of an instance.
//!
//! Two kinds of storage:
//! - **Body columns** (in [`crate::World`]): every entity has a transform, a
//!   velocity, a [`Motion`], a [`NetworkId`] and a change tick, each in its own
//!   dense array indexed by row. These are what systems and the snapshot
//!   encoder stream through, so they are plain `repr(C)` values in contiguous
//!   memory.
//! - **Optional columns** ([`OptionalColumns`]): every other component, one
//!   [`SparseColumn`] per kind, each dense in itself.
//!
//! # Adding a component
//! 1. Define the type here and implement [`StateHash`] for it (feed every
//!    field that is simulation state; handles into other libraries may be
//!    skipped).
//! 2. Add one line to the `optional_components!` list below: the field name,
//!    a doc comment and the type. The macro adds the column to
//!    [`OptionalColumns`], removes it on despawn and hashes it, so
//!    there is nothing else to keep in step.
//! 3. Read and write it through `world.optional.<field>` (`get`, `get_mut`
//!    stamps the change tick) and `World::insert_*`/`World::remove_*` helpers
//!    where the insert needs checking.

use rapier3d::dynamics::RigidBodyHandle;
use rapier3d::geometry::ColliderHandle;

use crate::column::SparseColumn;
use crate::entity::EntityId;
use crate::hash::{StateHash, StateHasher};
use crate::math::{Quat, Vec3};

/// Position and rotation in world space (metres, unit quaternion).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Transform {
    pub position: Vec3,
    pub rotation: Quat,
}

impl Transform {
    pub fn from_position(position: Vec3) -> Self {
        Transform {
            position,
            rotation: Quat::IDENTITY,
        }
    }
}

/// Linear (m/s) and angular (rad/s, axis × speed) velocity.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Velocity {
    pub linear: Vec3,
    pub angular: Vec3,
}

/// Who moves an entity's transform.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Motion {
    /// Nothing moves it (scene props, spawn points, fixed bodies).
    #[default]
    Static = 0,
    /// The physics step writes it back (dynamic and kinematic bodies).
    Physics = 1,
    /// [`crate::systems::integrate_velocities`] moves it by its linear
    /// velocity (entities without a rigid body: projectiles, scripted movers).
    Integrated = 2,
}

/// The id by which clients know an entity. `NetworkId::NONE` marks entities
/// that are never replicated. Ids are handed out by the world in increasing
/// order and not reused during an instance's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkId(pub u32);

impl NetworkId {
    pub const NONE: NetworkId = NetworkId(0);

    pub fn is_none(self) -> bool {
        self == NetworkId::NONE
    }
}

/// A user's index within one instance (assigned by the node when the user
/// joins; small and dense so it fits snapshots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserIndex(pub u32);

/// The rigid-body kinds a scene may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyKind {
    Fixed,
    Dynamic,
    /// Position-based kinematic: moved by setting targets (avatars, platforms).
    Kinematic,
}

/// Link from an entity to its body and collider in the instance's physics world.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BodyLink {
    pub body: RigidBodyHandle,
    pub collider: ColliderHandle,
    pub kind: BodyKind,
}

/// A collider's shape, in the entity's local frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    Cuboid {
        half_extents: Vec3,
    },
    Ball {
        radius: f32,
    },
    /// Along the local Y axis; total height is `2 * (half_height + radius)`.
    Capsule {
        half_height: f32,
        radius: f32,
    },
    /// Along the local Y axis.
    Cylinder {
        half_height: f32,
        radius: f32,
    },
    /// A triangle mesh; the vertices live in the physics world only.
    TriMesh {
        vertices: u32,
        triangles: u32,
    },
}

/// The description of an entity's collider, as loaded from its scene.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColliderDesc {
    pub shape: Shape,
    pub friction: f32,
    pub restitution: f32,
    /// Total mass in kg for dynamic bodies; `None` means density 1 (rapier's default).
    pub mass_kg: Option<f32>,
}

/// The user who may send updates for this entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub user: UserIndex,
}

/// A user's avatar: a kinematic capsule that follows the targets its owner sends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Avatar {
    pub user: UserIndex,
    /// Where the owner last asked the avatar to be. The avatar system moves
    /// toward it at no more than `speed_max_mps`, sliding along colliders.
    pub target: Option<Transform>,
    pub speed_max_mps: f32,
}

/// Marks an entity every client receives regardless of distance (a score
/// board, a moving platform everyone rides).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Global;

impl StateHash for Global {
    fn hash_state(&self, _h: &mut StateHasher) {}
}

/// A place where avatars appear.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpawnPoint;

impl StateHash for BodyLink {
    fn hash_state(&self, h: &mut StateHasher) {
        let (index, generation) = self.body.into_raw_parts();
        h.write_u32(index);
        h.write_u32(generation);
        h.write_u8(self.kind as u8);
    }
}

impl StateHash for ColliderDesc {
    fn hash_state(&self, h: &mut StateHasher) {
        match self.shape {
            Shape::Cuboid { half_extents } => {
                h.write_u8(0);
                half_extents.hash_state(h);
            }
            Shape::Ball { radius } => {
                h.write_u8(1);
                h.write_f32(radius);
            }
            Shape::Capsule {
                half_height,
                radius,
            } => {
                h.write_u8(2);
                h.write_f32(half_height);
                h.write_f32(radius);
            }
            Shape::Cylinder {
                half_height,
                radius,
            } => {
                h.write_u8(3);
                h.write_f32(half_height);
                h.write_f32(radius);
            }
            Shape::TriMesh {
                vertices,
                triangles,
            } => {
                h.write_u8(4);
                h.write_u32(vertices);
                h.write_u32(triangles);
            }
        }
        h.write_f32(self.friction);
        h.write_f32(self.restitution);
        h.write_f32(self.mass_kg.unwrap_or(-1.0));
    }
}

impl StateHash for Owner {
    fn hash_state(&self, h: &mut StateHasher) {
        h.write_u32(self.user.0);
    }
}

impl StateHash for Avatar {
    fn hash_state(&self, h: &mut StateHasher) {
        h.write_u32(self.user.0);
        h.write_f32(self.speed_max_mps);
        match self.target {
            Some(t) => {
                h.write_u8(1);
                t.position.hash_state(h);
                t.rotation.hash_state(h);
            }
            None => h.write_u8(0),
        }
    }
}

impl StateHash for SpawnPoint {
    fn hash_state(&self, _h: &mut StateHasher) {}
}

macro_rules! optional_components {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty ),* $(,)?) => {
        /// Every optional component column of a world. See the module docs
        /// for how to add one.
        #[derive(Debug, Default)]
        pub struct OptionalColumns {
            $( $(#[$doc])* pub $field: SparseColumn<$ty>, )*
        }

        impl OptionalColumns {
            pub(crate) fn remove_entity(&mut self, id: EntityId) {
                $( self.$field.remove(id); )*
            }

            pub(crate) fn hash_into(&self, h: &mut StateHasher) {
                $( self.$field.hash_into(h); )*
            }
        }
    };
}

optional_components! {
    /// Entities with a rigid body in the physics world.
    bodies: BodyLink,
    /// Collider descriptions, for every entity with a body.
    colliders: ColliderDesc,
    /// Client-owned entities.
    owners: Owner,
    /// User avatars.
    avatars: Avatar,
    /// Spawn points.
    spawn_points: SpawnPoint,
    /// Entities replicated to every client regardless of interest.
    globals: Global,
}
