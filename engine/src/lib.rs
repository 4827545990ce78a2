//! The simulation core of one instance: a hand-written struct-of-arrays ECS,
//! rapier3d physics, JSON scenes and a fixed-step clock.
//!
//! Nothing here reads the clock, touches a socket or spawns a thread: the
//! shard that owns an instance passes `now` in and reads state out.
//!
//! - [`World`]: entities (index + generation ids) and their components in
//!   dense columns with a change tick per row; see [`components`] for the
//!   layout and how to add a component.
//! - [`Physics`]: one rapier3d world per instance; awake bodies are copied
//!   back into the columns after each step, sleeping ones are not visited.
//! - [`Scene`]: the JSON scene format (`docs/scene-format.md`), validated
//!   with errors that name the JSON path.
//! - [`Simulation`]: the three together, stepped by [`FixedClock`].
//!
//! ```
//! use std::time::{Duration, Instant};
//! use engine::{Scene, SimConfig, Simulation, Tick, UserIndex};
//!
//! let scene = Scene::demo();
//! let mut sim = Simulation::new(&scene, SimConfig::default()).unwrap();
//! let avatar = sim.spawn_avatar(UserIndex(0)).unwrap();
//! let start = Instant::now();
//! // The shard's loop: advance to `now`, then read what changed.
//! for i in 0..10u32 {
//!     sim.advance(start + Duration::from_millis(u64::from(i) * 17));
//! }
//! let changed = sim.world().changed_since(Tick(1)).count();
//! assert!(changed > 0);
//! assert!(sim.world().contains(avatar));
//! ```
#![forbid(unsafe_code)]

pub mod clock;
pub mod column;
pub mod components;
pub mod entity;
pub mod error;
pub mod fuzzing;
pub mod hash;
pub mod math;
pub mod physics;
pub mod prepared;
pub mod scene;
pub mod sim;
pub mod soa;
pub mod stats;
pub mod systems;
pub mod tick;
pub mod world;

pub use clock::{ClockAdvance, FixedClock};
pub use column::SparseColumn;
pub use components::{
    Avatar, BodyKind, BodyLink, ColliderDesc, Global, Motion, NetworkId, OptionalColumns, Owner,
    Shape, SpawnPoint, Transform, UserIndex, Velocity,
};
pub use entity::{EntityId, Row};
pub use error::WorldError;
pub use math::{Aabb, Quat, Vec3};
pub use physics::{BodyDesc, Physics, PhysicsError, StepReport, TriMeshData};
pub use prepared::{PreparedScene, SceneCache};
pub use scene::{Scene, SceneError, SceneLimits};
pub use sim::{AvatarConfig, SimConfig, SimError, Simulation, TickReport};
pub use soa::{Vec3Column, Vec3Slices, Vec3SlicesMut};
pub use stats::{TickSummary, TickTimes};
pub use tick::Tick;
pub use world::{BodyColumns, BodyColumnsMut, World, WorldConfig};
