//! What the avatar controller costs per moving avatar per tick, in the
//! `social` and `demo` scenes: ten avatars, each given a new target every
//! tick as a client's inputs would. Eight walk back and forth along x at
//! 2 m/s (the load generator's walk); two push toward a wall beyond the
//! floor's edge and slide along it once they reach it. A third case gives
//! ten avatars targets where they already stand.
//!
//! Only [`Simulation::drive_avatars`] is timed; the rest of each tick
//! (physics, bodies) runs outside the timer so the avatars really move.
//! Throughput is avatars per second: criterion's time per element is the
//! cost of one avatar's tick.
//! Run: `cargo bench -p bench --bench avatars`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::{EntityId, Scene, SimConfig, Simulation, Transform, UserIndex, Vec3};

const AVATARS: u32 = 10;
const TICK_HZ: f32 = 60.0;
const WALK_MPS: f32 = 2.0;
const WALK_AMPLITUDE_M: f32 = 2.0;

#[derive(Clone, Copy, PartialEq)]
enum Moves {
    /// Eight walk, two push into a wall.
    Walking,
    /// Every target is where the avatar stands.
    Standing,
}

struct Case {
    sim: Simulation,
    avatars: Vec<(EntityId, Vec3)>,
    tick: u32,
}

impl Case {
    fn new(scene: &Scene) -> Self {
        let mut sim = Simulation::new(scene, SimConfig::default()).expect("scene fits");
        let avatars = (0..AVATARS)
            .map(|u| {
                let id = sim.spawn_avatar(UserIndex(u)).unwrap();
                (id, sim.world().transform(id).unwrap().position)
            })
            .collect();
        // Let the scene's bodies settle first, as in a running instance.
        for _ in 0..600 {
            sim.step();
        }
        Case {
            sim,
            avatars,
            tick: 0,
        }
    }

    fn set_targets(&mut self, moves: Moves) {
        let t = self.tick as f32 / TICK_HZ;
        self.tick += 1;
        let span = 4.0 * WALK_AMPLITUDE_M / WALK_MPS;
        let u = (t % span) / span;
        let tri = if u < 0.5 {
            4.0 * u - 1.0
        } else {
            3.0 - 4.0 * u
        };
        for (i, &(id, origin)) in self.avatars.iter().enumerate() {
            let position = match moves {
                Moves::Standing => self.sim.world().transform(id).unwrap().position,
                // Far past the east wall: clamped to the bounds, so the
                // avatar walks into the wall and then slides along it.
                Moves::Walking if i < 2 => Vec3::new(1_000.0, origin.y, origin.z + 3.0 * tri),
                Moves::Walking => Vec3::new(origin.x + WALK_AMPLITUDE_M * tri, origin.y, origin.z),
            };
            self.sim
                .set_avatar_target(id, Transform::from_position(position))
                .unwrap();
        }
    }
}

fn avatars(c: &mut Criterion) {
    let scenes = [
        ("social", Scene::builtin("social").expect("built in")),
        ("demo", Scene::demo()),
    ];
    let mut group = c.benchmark_group("avatar_controller");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(u64::from(AVATARS)));
    for (name, scene) in &scenes {
        for (label, moves) in [("walking", Moves::Walking), ("standing", Moves::Standing)] {
            let mut case = Case::new(scene);
            group.bench_function(BenchmarkId::new(*name, label), |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        case.set_targets(moves);
                        let start = Instant::now();
                        std::hint::black_box(case.sim.drive_avatars());
                        timed += start.elapsed();
                        case.sim.step();
                    }
                    timed
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, avatars);
criterion_main!(benches);
