//! (a) one update system over the same data in this ECS, hecs and bevy_ecs;
//! (b) spawn/despawn churn in the same three. Run: `cargo bench -p bench --bench ecs`.

use std::hint::black_box;

use bench::workloads::{self, Bevy, Hecs, Ours};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::{World, WorldConfig};

fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    for n in [10_000usize, 1_000_000] {
        group.throughput(Throughput::Elements(n as u64));
        let mut ours = Ours::new(n);
        group.bench_with_input(BenchmarkId::new("instanceserver", n), &n, |b, _| {
            b.iter(|| black_box(ours.update()))
        });
        drop(ours);
        let mut hecs = Hecs::new(n);
        group.bench_with_input(BenchmarkId::new("hecs", n), &n, |b, _| {
            b.iter(|| hecs.update())
        });
        drop(hecs);
        let mut bevy = Bevy::new(n);
        group.bench_with_input(BenchmarkId::new("bevy_ecs", n), &n, |b, _| {
            b.iter(|| bevy.update())
        });
    }
    group.finish();
}

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("spawn_despawn");
    let n = 10_000usize;
    let order = workloads::despawn_order(n);
    group.throughput(Throughput::Elements(n as u64));

    let mut world = World::with_capacity(
        WorldConfig {
            entities_max: n as u32,
            ..WorldConfig::default()
        },
        n as u32,
    );
    let mut ids = Vec::with_capacity(n);
    group.bench_with_input(BenchmarkId::new("instanceserver", n), &n, |b, _| {
        b.iter(|| workloads::churn_ours(&mut world, &order, &mut ids))
    });
    let mut world = hecs::World::new();
    let mut ids = Vec::with_capacity(n);
    group.bench_with_input(BenchmarkId::new("hecs", n), &n, |b, _| {
        b.iter(|| workloads::churn_hecs(&mut world, &order, &mut ids))
    });
    let mut world = bevy_ecs::world::World::new();
    let mut ids = Vec::with_capacity(n);
    group.bench_with_input(BenchmarkId::new("bevy_ecs", n), &n, |b, _| {
        b.iter(|| workloads::churn_bevy(&mut world, &order, &mut ids))
    });
    group.finish();
}

criterion_group!(benches, update, churn);
criterion_main!(benches);
