//! Physics, avatars and determinism through the whole simulation.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use engine::{
    BodyKind, Scene, SceneLimits, SimConfig, Simulation, Tick, Transform, UserIndex, Vec3,
};

fn scene(entities: &str) -> Scene {
    let text = format!(
        r#"{{"version": 1, "bounds": {{"min": [-20, -5, -20], "max": [20, 40, 20]}},
            "spawn_points": [{{"position": [0, 0, 0]}}], "entities": {entities}}}"#
    );
    Scene::from_json(text.as_bytes(), &SceneLimits::default()).unwrap()
}

const FLOOR: &str = r#"{"transform": {"position": [0, -0.5, 0]}, "collider": {"shape": "cuboid", "half_extents": [20, 0.5, 20]}}"#;

fn dynamic_ids(sim: &Simulation) -> Vec<engine::EntityId> {
    sim.world()
        .optional
        .bodies
        .iter()
        .filter(|(_, l)| l.kind == BodyKind::Dynamic)
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn a_falling_box_falls_lands_and_then_stops_dirtying_its_row() {
    let boxed = r#"{"transform": {"position": [0, 10, 0]}, "body": {"kind": "dynamic"}, "collider": {"shape": "cuboid", "half_extents": [0.5, 0.5, 0.5]}}"#;
    let mut sim =
        Simulation::new(&scene(&format!("[{FLOOR}, {boxed}]")), SimConfig::default()).unwrap();
    let b = dynamic_ids(&sim)[0];

    sim.step();
    let y1 = sim.world().transform(b).unwrap().position.y;
    assert!(y1 < 10.0, "gravity moved the box: {y1}");
    assert!(sim.world().velocity(b).unwrap().linear.y < 0.0);
    assert_eq!(sim.world().changed_at(b).unwrap(), Tick(1));

    // Free fall from 10 m takes about 1.4 s; give it 6 s to land and sleep.
    for _ in 0..360 {
        sim.step();
    }
    let rest = sim.world().transform(b).unwrap().position;
    assert!(
        (rest.y - 0.5).abs() < 0.05,
        "the box rests on the floor: {rest:?}"
    );
    assert_eq!(
        sim.physics().unwrap().awake_bodies(),
        0,
        "the box fell asleep"
    );
    let stamped = sim.world().changed_at(b).unwrap();
    for _ in 0..30 {
        let report = sim.step();
        assert_eq!(report.physics.moved_rows, 0);
    }
    assert_eq!(
        sim.world().changed_at(b).unwrap(),
        stamped,
        "a sleeping body does not dirty its row"
    );
    assert_eq!(sim.world().changed_since(stamped).count(), 0);
}

#[test]
fn bodies_leaving_the_world_bounds_are_despawned() {
    let thrown = r#"{"transform": {"position": [0, 2, 0]}, "body": {"kind": "dynamic", "linear_velocity": [0, 0, 60]}, "collider": {"shape": "ball", "radius": 0.2}}"#;
    let mut sim = Simulation::new(&scene(&format!("[{thrown}]")), SimConfig::default()).unwrap();
    let b = dynamic_ids(&sim)[0];
    let mut gone_at = None;
    for tick in 0..120 {
        if sim.step().out_of_bounds > 0 {
            gone_at = Some(tick);
            break;
        }
    }
    assert!(
        gone_at.is_some(),
        "60 m/s leaves a 20 m half-width world within 2 s"
    );
    assert!(!sim.world().contains(b));
    assert_eq!(sim.physics().unwrap().body_count(), 0);
    let net = sim.world().despawned_since(Tick::ZERO).unwrap().count();
    assert_eq!(net, 1, "clients are told about the despawn");
}

#[test]
fn avatars_follow_targets_at_bounded_speed_and_do_not_pass_walls() {
    let wall = r#"{"transform": {"position": [0, 1, 5]}, "collider": {"shape": "cuboid", "half_extents": [10, 1, 0.5]}}"#;
    let mut sim =
        Simulation::new(&scene(&format!("[{FLOOR}, {wall}]")), SimConfig::default()).unwrap();
    let avatar = sim.spawn_avatar(UserIndex(7)).unwrap();
    let start = sim.world().transform(avatar).unwrap().position;
    assert!(
        (start.y - 0.9).abs() < 1e-4,
        "stands on the spawn point: {start:?}"
    );
    assert_eq!(
        sim.world().optional.owners.get(avatar).unwrap().user,
        UserIndex(7)
    );

    // A target 3 m away along x: 10 m/s at 60 Hz means 1/6 m per tick.
    let target = Transform::from_position(Vec3::new(3.0, start.y, 0.0));
    sim.set_avatar_target(avatar, target).unwrap();
    sim.step();
    sim.step();
    let p = sim.world().transform(avatar).unwrap().position;
    assert!(
        p.x > 0.05 && p.x <= 2.0 / 6.0 + 1e-3,
        "speed-limited step: {p:?}"
    );
    for _ in 0..60 {
        sim.step();
    }
    let p = sim.world().transform(avatar).unwrap().position;
    assert!((p.x - 3.0).abs() < 0.02, "reached the target: {p:?}");

    // Through the wall at z = 4.5..5.5: the controller stops in front of it.
    sim.set_avatar_target(
        avatar,
        Transform::from_position(Vec3::new(3.0, start.y, 10.0)),
    )
    .unwrap();
    for _ in 0..180 {
        sim.step();
    }
    let p = sim.world().transform(avatar).unwrap().position;
    assert!(p.z < 4.5 - 0.25, "blocked by the wall: {p:?}");
    assert!(p.z > 3.5, "but got up to it: {p:?}");
}

/// Steps until the world is at rest (see `Simulation::at_rest`); returns the
/// ticks it took, at most `ticks_max`.
fn step_until_at_rest(sim: &mut Simulation, ticks_max: u32) -> u32 {
    for ticks in 1..=ticks_max {
        sim.step();
        if sim.at_rest() {
            return ticks;
        }
    }
    panic!("not at rest within {ticks_max} ticks");
}

/// A settled avatar: the controller no longer runs for it, and its row
/// stays unchanged for `ticks` more ticks.
fn assert_settled(sim: &mut Simulation, avatar: engine::EntityId, ticks: u32, why: &str) {
    assert_eq!(
        sim.drive_avatars(),
        0,
        "{why}: the controller no longer runs for it"
    );
    let settled_at = sim.world().changed_at(avatar).unwrap();
    for _ in 0..ticks {
        sim.step();
    }
    assert_eq!(
        sim.world().changed_at(avatar).unwrap(),
        settled_at,
        "{why}: an avatar at rest is unchanged tick after tick"
    );
}

#[test]
fn an_avatar_at_its_target_stands_exactly_there_and_stops_costing_anything() {
    let mut sim = Simulation::new(&scene(&format!("[{FLOOR}]")), SimConfig::default()).unwrap();
    let avatar = sim.spawn_avatar(UserIndex(3)).unwrap();
    let start = sim.world().transform(avatar).unwrap().position;
    // A target a hair below the spawn height, as a client's float maths
    // gives: the floor must not stop the walk.
    let target = Vec3::new(2.5, start.y - 1e-6, -1.25);
    sim.set_avatar_target(avatar, Transform::from_position(target))
        .unwrap();
    for _ in 0..60 {
        sim.step();
    }
    let p = sim.world().transform(avatar).unwrap().position;
    assert_eq!(p, target, "lands exactly on its target");
    assert_settled(&mut sim, avatar, 120, "at its target");
    assert_eq!(sim.world().transform(avatar).unwrap().position, target);
    assert_eq!(sim.physics().unwrap().awake_bodies(), 0, "its body sleeps");

    // A new target wakes it.
    sim.set_avatar_target(
        avatar,
        Transform::from_position(Vec3::new(0.0, target.y, 0.0)),
    )
    .unwrap();
    sim.step();
    let p = sim.world().transform(avatar).unwrap().position;
    assert!(p.x < 2.5 - 0.1, "walks again: {p:?}");
}

#[test]
fn an_avatar_pushed_into_a_wall_slides_along_it_then_stops() {
    let wall = r#"{"transform": {"position": [0, 1, 5]}, "collider": {"shape": "cuboid", "half_extents": [10, 1, 0.5]}}"#;
    let mut sim =
        Simulation::new(&scene(&format!("[{FLOOR}, {wall}]")), SimConfig::default()).unwrap();
    let avatar = sim.spawn_avatar(UserIndex(1)).unwrap();
    let y = sim.world().transform(avatar).unwrap().position.y;
    // Diagonally into the wall (face at z = 4.5, avatar radius 0.3).
    let target = Transform::from_position(Vec3::new(6.0, y, 12.0));
    sim.set_avatar_target(avatar, target).unwrap();
    for _ in 0..600 {
        sim.step();
    }
    let p = sim.world().transform(avatar).unwrap().position;
    assert!(p.z <= 4.2 && p.z > 4.15, "held off the wall's face: {p:?}");
    assert!((p.y - y).abs() < 1e-3, "neither climbs nor sinks: {p:?}");
    assert!(
        (p.x - 6.0).abs() < 1e-2,
        "slid along the wall to the target's x: {p:?}"
    );
    assert_settled(&mut sim, avatar, 30, "stopped by the wall");
}

#[test]
fn kinematic_bodies_and_avatars_survive_pause_and_resume() {
    // A box resting on a kinematic platform, an avatar standing against
    // another box: both kinds of kinematic body are rebuilt, the world
    // wakes, moves and falls asleep again (rapier's island bookkeeping
    // must know every rebuilt body by then).
    let platform = r#"{"transform": {"position": [5, 0.25, 0]}, "body": {"kind": "kinematic"}, "collider": {"shape": "cuboid", "half_extents": [1, 0.25, 1]}}"#;
    let on_platform = r#"{"transform": {"position": [5, 0.75, 0]}, "body": {"kind": "dynamic"}, "collider": {"shape": "cuboid", "half_extents": [0.25, 0.25, 0.25]}}"#;
    let by_avatar = r#"{"transform": {"position": [0, 0.25, 0.9]}, "body": {"kind": "dynamic"}, "collider": {"shape": "cuboid", "half_extents": [0.25, 0.25, 0.25]}}"#;
    let mut sim = Simulation::new(
        &scene(&format!(
            "[{FLOOR}, {platform}, {on_platform}, {by_avatar}]"
        )),
        SimConfig::default(),
    )
    .unwrap();
    let avatar = sim.spawn_avatar(UserIndex(1)).unwrap();
    let rest = |sim: &mut Simulation| step_until_at_rest(sim, 60 * 30);
    rest(&mut sim);
    let before = all_transforms(&sim);
    sim.pause();
    sim.resume(Instant::now());
    for _ in 0..30 {
        sim.step();
    }
    assert!(all_transforms(&sim) == before, "nothing moved on waking");

    // Walk the avatar through the box beside it (dynamic bodies do not
    // stop avatars; it pushes them) and let everything rest again.
    let y = sim.world().transform(avatar).unwrap().position.y;
    sim.set_avatar_target(avatar, Transform::from_position(Vec3::new(0.0, y, 3.0)))
        .unwrap();
    rest(&mut sim);
    let pushed = dynamic_ids(&sim)
        .into_iter()
        .map(|id| sim.world().transform(id).unwrap().position)
        .find(|p| p.x.abs() < 1.0)
        .unwrap();
    assert!(pushed.z > 1.5, "the avatar pushed the box: {pushed:?}");
    assert_eq!(
        sim.world().transform(avatar).unwrap().position,
        Vec3::new(0.0, y, 3.0)
    );
    // And once more through a pause, with the avatar still in the world.
    sim.pause();
    sim.resume(Instant::now());
    rest(&mut sim);
}

#[test]
fn an_avatar_pushing_a_box_into_a_wall_does_not_push_it_through() {
    let wall = r#"{"transform": {"position": [0, 1, 3]}, "collider": {"shape": "cuboid", "half_extents": [10, 1, 0.5]}}"#;
    let crate_ = r#"{"transform": {"position": [0, 0.3, 1.5]}, "body": {"kind": "dynamic"}, "collider": {"shape": "cuboid", "half_extents": [0.3, 0.3, 0.3]}}"#;
    let mut sim = Simulation::new(
        &scene(&format!("[{FLOOR}, {wall}, {crate_}]")),
        SimConfig::default(),
    )
    .unwrap();
    let avatar = sim.spawn_avatar(UserIndex(1)).unwrap();
    let y = sim.world().transform(avatar).unwrap().position.y;
    sim.set_avatar_target(avatar, Transform::from_position(Vec3::new(0.0, y, 10.0)))
        .unwrap();
    let b = dynamic_ids(&sim)[0];
    for _ in 0..240 {
        sim.step();
        let p = sim.world().transform(b).unwrap().position;
        assert!(p.z < 2.5 + 0.05 || p.y > 2.0, "not through the wall: {p:?}");
    }
    assert!(sim.world().contains(b), "squeezed, not flung out of bounds");
    let p = sim.world().transform(avatar).unwrap().position;
    assert!(
        p.z <= 2.5 - 0.3,
        "the avatar itself stops at the wall: {p:?}"
    );
}

#[test]
fn avatars_pass_ledges_lower_than_the_foot_clearance_only() {
    let low = r#"{"transform": {"position": [2, 0.005, 0]}, "collider": {"shape": "cuboid", "half_extents": [0.5, 0.005, 5]}}"#;
    let high = r#"{"transform": {"position": [-2, 0.2, 0]}, "collider": {"shape": "cuboid", "half_extents": [0.5, 0.2, 5]}}"#;
    let mut sim = Simulation::new(
        &scene(&format!("[{FLOOR}, {low}, {high}]")),
        SimConfig::default(),
    )
    .unwrap();
    let a = sim.spawn_avatar(UserIndex(1)).unwrap();
    let b = sim.spawn_avatar(UserIndex(2)).unwrap();
    let y = sim.world().transform(a).unwrap().position.y;
    sim.set_avatar_target(a, Transform::from_position(Vec3::new(4.0, y, 0.0)))
        .unwrap();
    sim.set_avatar_target(b, Transform::from_position(Vec3::new(-4.0, y, 0.0)))
        .unwrap();
    for _ in 0..90 {
        sim.step();
    }
    let pa = sim.world().transform(a).unwrap().position;
    let pb = sim.world().transform(b).unwrap().position;
    // Clients set their avatars' height: the server neither lifts it onto
    // a ledge nor stops it at one lower than the clearance.
    assert_eq!(pa.x, 4.0, "not stopped by a 1 cm strip: {pa:?}");
    assert!(
        pb.x > -1.2 && pb.x < -1.19,
        "stopped by a 40 cm step, its radius off the face at x = -1.5: {pb:?}"
    );
}

fn all_transforms(sim: &Simulation) -> Vec<(engine::EntityId, Transform)> {
    let world = sim.world();
    let ids = world.columns().ids.to_vec();
    ids.into_iter()
        .map(|id| (id, world.transform(id).unwrap()))
        .collect()
}

#[test]
fn a_paused_world_puts_physics_away_and_resumes_exactly_where_it_rested() {
    let mut sim = Simulation::new(&Scene::demo(), SimConfig::default()).unwrap();
    let t0 = Instant::now();
    let ticks = step_until_at_rest(&mut sim, 60 * 60);
    assert!(ticks > 60, "the boxes and balls fell first");
    let bodies = sim.physics().unwrap().body_count();
    let rested = sim.state_hash();
    let transforms = all_transforms(&sim);
    sim.pause();
    assert!(sim.physics().is_none(), "the physics world is put away");
    assert_eq!(sim.next_tick_due(), None, "and the clock stopped");
    assert_eq!(sim.state_hash(), rested, "the world's columns are kept");

    sim.resume(t0);
    assert_eq!(sim.physics().unwrap().body_count(), bodies);
    let resumed_at = sim.world().tick();
    sim.step();
    assert_eq!(
        sim.physics().unwrap().awake_bodies(),
        0,
        "bodies rebuilt asleep stay asleep"
    );
    for _ in 0..30 {
        sim.step();
    }
    let moved = all_transforms(&sim)
        .iter()
        .zip(&transforms)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(moved, 0, "nothing moved on waking");
    assert_eq!(sim.world().changed_since(resumed_at).count(), 0);

    // Rebuilt bodies are real: an avatar walking into a pyramid of boxes
    // wakes and pushes them.
    let avatar = sim.spawn_avatar(UserIndex(0)).unwrap();
    let y = sim.world().transform(avatar).unwrap().position.y;
    sim.set_avatar_target(avatar, Transform::from_position(Vec3::new(12.0, y, 12.0)))
        .unwrap();
    let before = all_transforms(&sim);
    for _ in 0..240 {
        sim.step();
    }
    let after = all_transforms(&sim);
    let moved_boxes = before
        .iter()
        .filter(|&&(id, t)| id != avatar && after.iter().any(|&(i, u)| i == id && u != t))
        .count();
    assert!(
        moved_boxes > 0,
        "the avatar pushed boxes of the rebuilt world"
    );
}

#[test]
fn avatar_targets_are_clamped_to_the_world_bounds() {
    let mut sim = Simulation::new(&scene(&format!("[{FLOOR}]")), SimConfig::default()).unwrap();
    let avatar = sim.spawn_avatar(UserIndex(1)).unwrap();
    let far = Transform::from_position(Vec3::new(500.0, 0.9, 0.0));
    sim.set_avatar_target(avatar, far).unwrap();
    for _ in 0..600 {
        sim.step();
    }
    let p = sim.world().transform(avatar).unwrap().position;
    assert!(sim.world().contains(avatar), "the avatar is not despawned");
    assert!(
        p.x <= 20.0 && p.x > 19.0,
        "stopped at the bound x = 20: {p:?}"
    );
}

#[test]
fn bad_avatar_targets_are_refused() {
    let mut sim = Simulation::new(&scene(&format!("[{FLOOR}]")), SimConfig::default()).unwrap();
    let avatar = sim.spawn_avatar(UserIndex(1)).unwrap();
    let nan = Transform::from_position(Vec3::new(f32::NAN, 0.0, 0.0));
    assert!(sim.set_avatar_target(avatar, nan).is_err());
    let floor = sim.world().columns().ids[0];
    assert!(
        sim.set_avatar_target(floor, Transform::default()).is_err(),
        "not an avatar"
    );
}

/// Runs the demo scene with two avatars following a scripted path.
fn scripted_run(ticks: u32, wiggle: f32) -> u64 {
    let mut sim = Simulation::new(&Scene::demo(), SimConfig::default()).unwrap();
    let a = sim.spawn_avatar(UserIndex(0)).unwrap();
    let b = sim.spawn_avatar(UserIndex(1)).unwrap();
    for t in 0..ticks {
        let s = t as f32 * 0.05;
        let pa = Transform::from_position(Vec3::new(10.0 * s.sin(), 1.0, 10.0 * s.cos() + wiggle));
        let pb = Transform::from_position(Vec3::new(12.0 - s, 1.0, 12.0));
        sim.set_avatar_target(a, pa).unwrap();
        sim.set_avatar_target(b, pb).unwrap();
        sim.step();
    }
    sim.state_hash()
}

#[test]
fn same_scene_and_inputs_give_the_same_hash() {
    let first = scripted_run(240, 0.0);
    assert_eq!(first, scripted_run(240, 0.0));
    assert_ne!(
        first,
        scripted_run(240, 0.001),
        "the hash sees a 1 mm input difference"
    );
    assert_ne!(first, scripted_run(239, 0.0));
}

#[test]
fn advance_runs_ticks_from_explicit_time_and_caps_catch_up() {
    let mut sim = Simulation::new(&Scene::demo(), SimConfig::default()).unwrap();
    let t0 = Instant::now();
    assert_eq!(sim.advance(t0).steps, 1);
    assert_eq!(sim.world().tick(), Tick(1));
    let step = sim.config().tick_duration();
    assert_eq!(sim.advance(t0 + step * 3).steps, 3);
    assert_eq!(sim.world().tick(), Tick(4));
    // A 2 s stall runs at most `catch_up_steps_max` ticks and reports the rest.
    let a = sim.advance(t0 + step * 3 + Duration::from_secs(2));
    assert_eq!(a.steps, 4);
    assert!(a.skipped >= 115, "{a:?}");
    assert_eq!(sim.skipped_ticks(), a.skipped);
}

#[test]
fn config_is_validated() {
    let bad = SimConfig {
        tick_hz: 0,
        ..SimConfig::default()
    };
    assert!(Simulation::new(&Scene::demo(), bad).is_err());
    let bad = SimConfig {
        substeps: 0,
        ..SimConfig::default()
    };
    assert!(Simulation::new(&Scene::demo(), bad).is_err());
    let tiny = SimConfig {
        world: engine::WorldConfig {
            entities_max: 10,
            despawn_log_len: 8,
        },
        ..SimConfig::default()
    };
    let err = Simulation::new(&Scene::demo(), tiny).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the world is full: at most 10 entities (entities_max)"
    );
}

#[test]
fn the_stress_scene_runs() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenes/stress.json");
    let scene = Scene::load(&path, &SceneLimits::default()).unwrap();
    let mut sim = Simulation::new(&scene, SimConfig::default()).unwrap();
    let report = sim.step();
    assert!(report.physics.awake_bodies >= 5000);
    assert!(report.physics.moved_rows >= 5000);
}
