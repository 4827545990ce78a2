//! (c) physics ticks of the demo and the stress scene, from load, while the
//! bodies are falling and colliding. Throughput is bodies x ticks.
//! Run: `cargo bench -p bench --bench physics`.

use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::{Scene, SceneLimits, SimConfig, Simulation};

/// Ticks measured per iteration: one second of simulated time at 60 Hz.
const TICKS: u64 = 60;

fn physics(c: &mut Criterion) {
    let stress_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../engine/scenes/stress.json");
    let stress = Scene::load(std::path::Path::new(stress_path), &SceneLimits::default())
        .expect("the shipped stress scene loads");
    let scenes = [("demo", Scene::demo()), ("stress", stress)];
    let mut group = c.benchmark_group("physics_60_ticks");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for (name, scene) in &scenes {
        let bodies = scene.dynamic_bodies() as u64;
        group.throughput(Throughput::Elements(bodies * TICKS));
        group.bench_with_input(BenchmarkId::new(*name, bodies), scene, |b, scene| {
            b.iter_batched(
                || Simulation::new(scene, SimConfig::default()).expect("scene fits"),
                |mut sim| {
                    for _ in 0..TICKS {
                        sim.step();
                    }
                    sim
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, physics);
criterion_main!(benches);
