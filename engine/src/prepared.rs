//! A scene made ready for instances: validated once, its collider shapes
//! (triangle meshes with their BVH included) built once, and then shared,
//! read-only, by every instance of it on the node (`Arc<PreparedScene>`).
//! An instance keeps only what changes: its world's columns, and unless it
//! sleeps (empty, its world at rest), its physics world, whose colliders
//! point at the shared shapes.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use rapier3d::geometry::SharedShape;

use crate::physics::shared_shape;
use crate::scene::Scene;
use crate::sim::SimError;

pub struct PreparedScene {
    scene: Scene,
    /// The collider shape of every scene entity with a body, by entity index.
    shapes: Vec<Option<SharedShape>>,
}

impl std::fmt::Debug for PreparedScene {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedScene")
            .field("name", &self.scene.name)
            .field("entities", &self.scene.entities.len())
            .finish()
    }
}

impl PreparedScene {
    /// Builds the shapes of `scene`; fails on a triangle mesh parry refuses.
    pub fn new(scene: Scene) -> Result<Self, SimError> {
        let shapes = scene
            .entities
            .iter()
            .enumerate()
            .map(|(index, e)| {
                e.body
                    .as_ref()
                    .map(|b| shared_shape(b.collider.shape, b.mesh.as_ref()))
                    .transpose()
                    .map_err(|source| SimError::Physics { index, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(PreparedScene { scene, shapes })
    }

    pub fn scene(&self) -> &Scene {
        &self.scene
    }

    /// The shape of scene entity `index`, if it has a body.
    pub(crate) fn shape(&self, index: usize) -> Option<&SharedShape> {
        self.shapes.get(index)?.as_ref()
    }
}

/// Prepared scenes by name, so that instances of one scene share one
/// [`PreparedScene`]: the control thread prepares every scene it sends to
/// a shard through it. Holds weak references only: a scene no instance
/// uses any more is freed, and forgotten at the next [`Self::prepare`].
#[derive(Debug, Default)]
pub struct SceneCache {
    by_name: HashMap<String, Vec<Weak<PreparedScene>>>,
}

impl SceneCache {
    /// The prepared scene equal to `scene` if one is alive, else a new
    /// one. Scenes are compared whole, so a scene file edited between two
    /// creates gives two prepared scenes.
    pub fn prepare(&mut self, scene: Scene) -> Result<Arc<PreparedScene>, SimError> {
        self.by_name.retain(|_, list| {
            list.retain(|w| w.strong_count() > 0);
            !list.is_empty()
        });
        if let Some(list) = self.by_name.get(&scene.name) {
            for weak in list {
                if let Some(prepared) = weak.upgrade()
                    && prepared.scene == scene
                {
                    return Ok(prepared);
                }
            }
        }
        let prepared = Arc::new(PreparedScene::new(scene)?);
        self.by_name
            .entry(prepared.scene.name.clone())
            .or_default()
            .push(Arc::downgrade(&prepared));
        Ok(prepared)
    }

    /// Prepared scenes alive.
    pub fn len(&self) -> usize {
        self.by_name
            .values()
            .flatten()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_of_one_scene_share_it_until_the_last_is_gone() {
        let mut cache = SceneCache::default();
        let a = cache.prepare(Scene::demo()).unwrap();
        let b = cache.prepare(Scene::demo()).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the same scene is prepared once");
        let social = cache.prepare(Scene::builtin("social").unwrap()).unwrap();
        assert!(!Arc::ptr_eq(&a, &social));
        let mut edited = Scene::demo();
        edited.spawn_points.pop();
        let c = cache.prepare(edited).unwrap();
        assert!(
            !Arc::ptr_eq(&a, &c),
            "a scene changed under its name is not mixed up"
        );
        assert_eq!(cache.len(), 3);
        drop((a, b, c, social));
        assert!(cache.is_empty(), "nothing kept once no instance holds it");
        let again = cache.prepare(Scene::demo()).unwrap();
        assert_eq!(Arc::strong_count(&again), 1);
        assert_eq!(cache.len(), 1);
    }
}
