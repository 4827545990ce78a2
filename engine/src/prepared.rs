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
    /// `client_description` serialized, for the avatar it was made with:
    /// built at the first request, then served as it is.
    client_json: std::sync::OnceLock<(crate::AvatarConfig, Arc<[u8]>)>,
}

impl std::fmt::Debug for PreparedScene {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedScene")
            .field("name", &self.scene.name)
            .field("entities", &self.scene.entities.len())
            .finish()
    }
}

/// Two prepared scenes are equal when their scenes are (the shapes are
/// built from the scene).
impl PartialEq for PreparedScene {
    fn eq(&self, other: &Self) -> bool {
        self.scene == other.scene
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
        Ok(PreparedScene {
            scene,
            shapes,
            client_json: std::sync::OnceLock::new(),
        })
    }

    pub fn scene(&self) -> &Scene {
        &self.scene
    }

    /// [`Self::client_description`] as JSON bytes, built once per scene
    /// (a scene's triangle meshes make it large) and shared after; built
    /// afresh for an avatar other than the first one asked for.
    pub fn client_description_json(&self, avatar: &crate::AvatarConfig) -> Arc<[u8]> {
        let make = || -> Arc<[u8]> {
            serde_json::to_vec(&self.client_description(avatar))
                .expect("a JSON value serializes")
                .into()
        };
        let (cached_for, json) = self.client_json.get_or_init(|| (*avatar, make()));
        if cached_for == avatar {
            json.clone()
        } else {
            make()
        }
    }

    /// What a client needs to draw the scene, as JSON: its name and
    /// bounds, the avatar's capsule, and every entity with a collider or a
    /// network id, with the network id clients know it by (`null` for an
    /// entity the scene does not mark `networked`: it is never
    /// replicated), its kind of body, its transform as loaded and its
    /// shape (triangle meshes with their
    /// vertices and triangles). Network ids are those [`crate::Simulation::new`]
    /// gives: 1, 2, ... to the networked entities in scene order.
    pub fn client_description(&self, avatar: &crate::AvatarConfig) -> serde_json::Value {
        use serde_json::json;
        // Numbers as the scene file wrote them (0.3, not 0.30000001192...).
        let f = |v: f32| -> f64 { v.to_string().parse().unwrap_or(f64::from(v)) };
        let f3 = |v: [f32; 3]| v.map(f);
        let scene = &self.scene;
        let mut next_network_id = 1u32;
        let mut entities = Vec::new();
        for e in &scene.entities {
            let network_id = e.networked.then(|| {
                next_network_id += 1;
                next_network_id - 1
            });
            let Some(b) = &e.body else {
                if let Some(id) = network_id {
                    entities.push(json!({
                        "name": e.name, "network_id": id, "body": null, "shape": null,
                        "position": f3(e.transform.position.to_array()),
                        "rotation": e.transform.rotation.to_array().map(f),
                    }));
                }
                continue;
            };
            let shape = match b.collider.shape {
                crate::Shape::Cuboid { half_extents } => {
                    json!({"shape": "cuboid", "half_extents": f3(half_extents.to_array())})
                }
                crate::Shape::Ball { radius } => json!({"shape": "ball", "radius": f(radius)}),
                crate::Shape::Capsule {
                    half_height,
                    radius,
                } => {
                    json!({"shape": "capsule", "half_height": f(half_height), "radius": f(radius)})
                }
                crate::Shape::Cylinder {
                    half_height,
                    radius,
                } => {
                    json!({"shape": "cylinder", "half_height": f(half_height), "radius": f(radius)})
                }
                crate::Shape::TriMesh { .. } => {
                    let (vertices, indices): (Vec<[f64; 3]>, &[[u32; 3]]) = match &b.mesh {
                        Some(m) => (
                            m.vertices.iter().map(|v| f3(v.to_array())).collect(),
                            &m.indices,
                        ),
                        None => (Vec::new(), &[]),
                    };
                    json!({"shape": "trimesh", "vertices": vertices, "indices": indices})
                }
            };
            let kind = match b.body.kind {
                crate::BodyKind::Fixed => "fixed",
                crate::BodyKind::Dynamic => "dynamic",
                crate::BodyKind::Kinematic => "kinematic",
            };
            entities.push(json!({
                "name": e.name, "network_id": network_id, "body": kind, "shape": shape,
                "position": f3(e.transform.position.to_array()),
                "rotation": e.transform.rotation.to_array().map(f),
            }));
        }
        json!({
            "name": scene.name,
            "bounds": {"min": f3(scene.bounds.min.to_array()), "max": f3(scene.bounds.max.to_array())},
            "avatar": {"shape": "capsule", "half_height": f(avatar.half_height_m), "radius": f(avatar.radius_m)},
            "entities": entities,
        })
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

    /// A client draws networked entities by the ids the description gives:
    /// they must be the ids the simulation gave them.
    #[test]
    fn the_client_description_names_entities_by_their_network_ids() {
        for name in ["demo", "social"] {
            let prepared = Arc::new(PreparedScene::new(Scene::builtin(name).unwrap()).unwrap());
            let config = crate::SimConfig::default();
            let d = prepared.client_description(&config.avatar);
            let sim = crate::Simulation::from_prepared(prepared.clone(), config).unwrap();
            let world = sim.world();
            let mut networked = 0;
            for e in d["entities"].as_array().unwrap() {
                let Some(id) = e["network_id"].as_u64() else {
                    assert_eq!(e["body"], "fixed", "{e}");
                    continue;
                };
                networked += 1;
                let entity = world.by_network_id(crate::NetworkId(id as u32)).unwrap();
                let at = world.transform(entity).unwrap().position.to_array();
                let said: Vec<f32> = serde_json::from_value(e["position"].clone()).unwrap();
                assert_eq!(said, at.to_vec(), "{name}: entity {id}");
            }
            assert!(networked > 0);
            let in_world = (1..=u32::MAX)
                .take_while(|&n| world.by_network_id(crate::NetworkId(n)).is_some())
                .count();
            assert_eq!(networked, in_world, "{name}");
            assert_eq!(d["avatar"]["radius"], 0.3);
        }
        // Triangle meshes come with their vertices.
        let social = PreparedScene::new(Scene::builtin("social").unwrap()).unwrap();
        let d = social.client_description(&crate::SimConfig::default().avatar);
        let mesh = d["entities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["shape"]["shape"] == "trimesh")
            .expect("the social scene has a trimesh stage");
        assert!(mesh["shape"]["vertices"].as_array().unwrap().len() >= 3);
        assert!(!mesh["shape"]["indices"].as_array().unwrap().is_empty());
        // The JSON is built once and shared; another avatar gets its own.
        let avatar = crate::SimConfig::default().avatar;
        let first = social.client_description_json(&avatar);
        assert!(Arc::ptr_eq(
            &first,
            &social.client_description_json(&avatar)
        ));
        let parsed: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(parsed, d);
        let wide = crate::AvatarConfig {
            radius_m: 0.5,
            ..avatar
        };
        let other: serde_json::Value =
            serde_json::from_slice(&social.client_description_json(&wide)).unwrap();
        assert_eq!(other["avatar"]["radius"], 0.5);
    }

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
