//! Entry points for the fuzz targets in `fuzz/` and for the test that replays
//! their corpora. Each takes arbitrary bytes and must never panic.

use crate::scene::{Scene, SceneLimits};
use crate::sim::{SimConfig, Simulation};

/// Parses a scene; when it validates, loads it and runs one tick.
/// Returns whether the scene was accepted.
pub fn scene_json(data: &[u8]) -> bool {
    let limits = SceneLimits {
        file_bytes_max: 1 << 20,
        ..SceneLimits::default()
    };
    let Ok(scene) = Scene::from_json(data, &limits) else {
        return false;
    };
    if let Ok(mut sim) = Simulation::new(&scene, SimConfig::default()) {
        sim.step();
    }
    true
}
