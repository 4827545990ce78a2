//! Errors of the world API. Scene errors live in [`crate::scene::SceneError`].

use crate::entity::EntityId;

#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum WorldError {
    /// The id was despawned (or never existed in this world).
    #[error("entity {0:?} does not exist (despawned or never spawned)")]
    Stale(EntityId),
    /// The world already holds its maximum number of entities.
    #[error("the world is full: at most {max} entities (entities_max)")]
    Full { max: u32 },
    /// The entity lacks a component the operation needs.
    #[error("entity {entity:?} has no {component} component")]
    MissingComponent {
        entity: EntityId,
        component: &'static str,
    },
    /// A value that must be finite was NaN or infinite.
    #[error("{what} must be finite")]
    NotFinite { what: &'static str },
}
