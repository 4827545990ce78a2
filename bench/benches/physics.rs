//! (c) physics ticks of the demo and the stress scene, from load, while the
//! bodies are falling and colliding. Throughput is bodies x ticks.
//! Also what waking a sleeping instance costs (the physics world rebuilt).
//! Run: `cargo bench -p bench --bench physics`.

use std::time::{Duration, Instant};

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

/// What waking a sleeping instance costs its shard: rebuilding the physics
/// world put away by `Simulation::pause` (bodies asleep where they rested,
/// their contacts found). Only `resume` is timed; each iteration pauses
/// the same resting world again first.
fn wake(c: &mut Criterion) {
    let scenes = [
        ("social", Scene::builtin("social").expect("built in")),
        ("demo", Scene::demo()),
    ];
    let mut group = c.benchmark_group("instance_wake");
    group.sample_size(20);
    for (name, scene) in &scenes {
        let mut sim = Simulation::new(scene, SimConfig::default()).expect("scene fits");
        for _ in 0..60 * 60 {
            sim.step();
            if sim.at_rest() {
                break;
            }
        }
        assert!(sim.at_rest(), "{name} comes to rest within a minute");
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    sim.pause();
                    let start = Instant::now();
                    sim.resume(start);
                    timed += start.elapsed();
                }
                timed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, physics, wake);
criterion_main!(benches);
