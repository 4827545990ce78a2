//! Scene loading: the shipped scenes, and errors for bad files.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use engine::{BodyKind, Scene, SceneError, SceneLimits, Shape};

#[test]
fn committed_scenes_match_the_generator() {
    // If this fails, run `cargo run -p engine --example generate_scenes`.
    assert_eq!(engine::scene::DEMO_SCENE_JSON, support::scenegen::demo());
    let stress =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenes/stress.json"))
            .unwrap();
    assert_eq!(stress, support::scenegen::stress());
    assert_eq!(
        engine::scene::SOCIAL_SCENE_JSON,
        support::scenegen::social()
    );
}

#[test]
fn builtin_scenes_load() {
    for name in engine::scene::BUILTIN_SCENES {
        let scene = Scene::builtin(name).unwrap();
        assert_eq!(scene.name, name);
    }
    assert!(Scene::builtin("nope").is_none());
}

/// The collider shape of every entity with a body.
fn body_shapes(scene: &Scene) -> Vec<Shape> {
    scene
        .entities
        .iter()
        .filter_map(|e| e.body.as_ref().map(|b| b.collider.shape))
        .collect()
}

#[test]
fn social_scene_is_static_geometry_and_twenty_props() {
    let scene = Scene::builtin("social").unwrap();
    assert_eq!(scene.dynamic_bodies(), 20);
    assert_eq!(scene.spawn_points.len(), 10);
    let shapes = body_shapes(&scene);
    assert!(
        shapes
            .iter()
            .any(|s| matches!(s, Shape::TriMesh { triangles: 12, .. }))
    );
    // Only the props are replicated.
    assert_eq!(scene.entities.iter().filter(|e| e.networked).count(), 20);
}

#[test]
fn demo_scene_loads() {
    let scene = Scene::demo();
    assert_eq!(scene.name, "demo");
    assert_eq!(scene.spawn_points.len(), 8);
    assert_eq!(scene.dynamic_bodies(), 220);
    let shapes = body_shapes(&scene);
    assert!(
        shapes
            .iter()
            .any(|s| matches!(s, Shape::TriMesh { triangles: 8, .. }))
    );
    assert!(shapes.iter().any(|s| matches!(s, Shape::Capsule { .. })));
    assert!(shapes.iter().any(|s| matches!(s, Shape::Cylinder { .. })));
    assert!(shapes.iter().any(|s| matches!(s, Shape::Ball { .. })));
    // Fixed geometry is not replicated by default; dynamic bodies are.
    for e in &scene.entities {
        let kind = e.body.as_ref().map(|b| b.body.kind);
        assert_eq!(e.networked, kind == Some(BodyKind::Dynamic), "{:?}", e.name);
    }
}

#[test]
fn stress_scene_has_at_least_5000_dynamic_bodies() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenes/stress.json");
    let scene = Scene::load(&path, &SceneLimits::default()).unwrap();
    assert!(scene.dynamic_bodies() >= 5000, "{}", scene.dynamic_bodies());
}

const HEAD: &str =
    r#"{"version": 1, "bounds": {"min": [-10, -10, -10], "max": [10, 10, 10]}, "entities": "#;

fn entities_err(entities: &str) -> String {
    let text = format!("{HEAD}{entities}}}");
    match Scene::from_json(text.as_bytes(), &SceneLimits::default()) {
        Ok(_) => panic!("scene was accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

fn assert_starts(err: String, expected: &str) {
    assert!(
        err.starts_with(expected),
        "error was:\n  {err}\nexpected it to start with:\n  {expected}"
    );
}

const OK_BOX: &str =
    r#"{"transform": {"position": [0, 0, 0]}, "collider": {"shape": "ball", "radius": 1}}"#;

#[test]
fn wrong_array_length_names_the_path() {
    let bad = r#"{"transform": {"position": [0, 1, 0]}, "body": {"kind": "dynamic"}, "collider": {"shape": "cuboid", "half_extents": [1, 2]}}"#;
    let err = entities_err(&format!("[{OK_BOX}, {OK_BOX}, {OK_BOX}, {bad}]"));
    assert_starts(
        err,
        "entities[3].collider.half_extents: expected 3 numbers, found 2 (line 1, column",
    );
}

#[test]
fn type_errors_and_unknown_fields_name_the_path() {
    let err = entities_err(r#"[{"transform": {"position": [0, "up", 0]}}]"#);
    assert_starts(
        err,
        "entities[0].transform.position[1]: invalid type: string \"up\"",
    );
    let err = entities_err(r#"[{"transform": {"position": [0, 0, 0]}, "colider": {}}]"#);
    assert_starts(
        err,
        "entities[0].colider: unknown field `colider`, expected one of",
    );
    let err = entities_err(
        r#"[{"transform": {"position": [0, 0, 0]}, "body": {"kind": "floaty"}, "collider": {"shape": "ball", "radius": 1}}]"#,
    );
    assert_starts(err, "entities[0].body.kind: unknown variant `floaty`");
}

#[test]
fn meaning_errors_name_the_path() {
    let cases = [
        (
            r#"[{"transform": {"position": [0, 0, 0]}, "collider": {"shape": "ball"}}]"#,
            "entities[0].collider.radius: required for shape \"ball\"",
        ),
        (
            r#"[{"transform": {"position": [0, 0, 0]}, "collider": {"shape": "ball", "radius": 1, "half_extents": [1, 1, 1]}}]"#,
            "entities[0].collider.half_extents: not used by shape \"ball\"",
        ),
        (
            r#"[{"transform": {"position": [0, 0, 0]}, "collider": {"shape": "cuboid", "half_extents": [1, 0, 1]}}]"#,
            "entities[0].collider.half_extents: every half extent must be positive",
        ),
        (
            r#"[{"transform": {"position": [0, 50, 0]}}]"#,
            "entities[0].transform.position: [0.0, 50.0, 0.0] is outside the world bounds",
        ),
        (
            r#"[{"transform": {"position": [0, 0, 0], "rotation": [0, 0, 0, 2]}}]"#,
            "entities[0].transform.rotation: expected a unit quaternion",
        ),
        (
            r#"[{"transform": {"position": [0, 0, 0]}, "body": {"kind": "fixed", "mass": 3}, "collider": {"shape": "ball", "radius": 1}}]"#,
            "entities[0].body.mass: only dynamic bodies take this field",
        ),
        (
            r#"[{"transform": {"position": [0, 0, 0]}, "body": {"kind": "dynamic", "mass": -3}, "collider": {"shape": "ball", "radius": 1}}]"#,
            "entities[0].body.mass: must be positive, found -3",
        ),
        (
            r#"[{"transform": {"position": [0, 0, 0]}, "body": {"kind": "dynamic"}}]"#,
            "entities[0].collider: an entity with a body needs a collider",
        ),
        (
            r#"[{"transform": {"position": [0, 0, 0]}, "collider": {"shape": "trimesh", "vertices": [[0, 0, 0], [1, 0, 0], [0, 0, 1]], "indices": [[0, 1, 3]]}}]"#,
            "entities[0].collider.indices[0]: vertex index 3 is out of range (the mesh has 3 vertices)",
        ),
        (
            r#"[{"transform": {"position": [0, 0, 0]}, "body": {"kind": "dynamic"}, "collider": {"shape": "trimesh", "vertices": [[0, 0, 0], [1, 0, 0], [0, 0, 1]], "indices": [[0, 1, 2]]}}]"#,
            "entities[0].collider.shape: trimesh colliders are only allowed on fixed or kinematic bodies",
        ),
        (
            r#"[{"transform": {"position": [0, 0, 0]}, "collider": {"shape": "ball", "radius": 1e300}}]"#,
            "entities[0].collider.radius: 1e300 is out of range for a 32-bit float",
        ),
    ];
    for (entities, expected) in cases {
        assert_starts(entities_err(entities), expected);
    }
}

#[test]
fn document_level_errors() {
    let limits = SceneLimits::default();
    let err = |text: &str| Scene::from_json(text.as_bytes(), &limits).unwrap_err();
    assert!(matches!(err("{\"version\": 1,"), SceneError::Syntax { .. }));
    assert!(matches!(err(""), SceneError::Syntax { .. }));
    assert!(matches!(
        err(&format!("{HEAD}[]}} trailing")),
        SceneError::Syntax { .. }
    ));
    assert_starts(
        err(r#"{"version": 2, "bounds": {"min": [0, 0, 0], "max": [1, 1, 1]}, "entities": []}"#)
            .to_string(),
        "version: unsupported scene version 2 (this server reads version 1)",
    );
    assert_starts(
        err(r#"{"version": 1, "bounds": {"min": [0, 0, 0], "max": [1, 0, 1]}, "entities": []}"#)
            .to_string(),
        "bounds: max must be greater than min on every axis",
    );
    assert_starts(
        err(r#"{"version": 1, "bounds": {"min": [0, 0, 0], "max": [1, 1, 1]}}"#).to_string(),
        "(document): missing field `entities`",
    );
}

#[test]
fn limits_are_enforced() {
    let small = SceneLimits {
        entities_max: 2,
        file_bytes_max: 4096,
        ..SceneLimits::default()
    };
    let three = format!("{HEAD}[{OK_BOX}, {OK_BOX}, {OK_BOX}]}}");
    let err = Scene::from_json(three.as_bytes(), &small)
        .unwrap_err()
        .to_string();
    assert_starts(
        err,
        "entities: 3 entities, more than the limit of 2 (entities_max)",
    );
    let big = format!("{HEAD}[{}]}}", vec![OK_BOX; 100].join(", "));
    let err = Scene::from_json(big.as_bytes(), &small).unwrap_err();
    assert!(
        matches!(err, SceneError::TooLarge { max: 4096, .. }),
        "{err}"
    );
}

#[test]
fn missing_and_oversized_files() {
    let limits = SceneLimits {
        file_bytes_max: 1000,
        ..SceneLimits::default()
    };
    let err = Scene::load(std::path::Path::new("/nonexistent/scene.json"), &limits).unwrap_err();
    assert!(matches!(err, SceneError::Io { .. }), "{err}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenes/demo.json");
    let err = Scene::load(&path, &limits).unwrap_err();
    assert!(
        matches!(err, SceneError::TooLarge { max: 1000, .. }),
        "{err}"
    );
}

#[test]
fn garbage_never_panics() {
    // A cheap sweep of truncations and byte flips of a real scene: every one
    // must come back as Ok or a typed error.
    let text = engine::scene::DEMO_SCENE_JSON.as_bytes();
    let limits = SceneLimits::default();
    for cut in (0..text.len()).step_by(97) {
        let _ = Scene::from_json(&text[..cut], &limits);
    }
    let mut bytes = text[..4000].to_vec();
    for i in (0..bytes.len()).step_by(13) {
        let saved = bytes[i];
        bytes[i] = b"]}[{,:0-e\"x"[i % 11];
        let _ = Scene::from_json(&bytes, &limits);
        bytes[i] = saved;
    }
}
