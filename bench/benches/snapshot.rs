//! Snapshot encode / decode / validate of 1, 10, 100 and 1,000 entities in
//! steady motion: this protocol against serde + postcard and against IR
//! Engine's current format, side by side. Bytes per entity are printed once
//! per size. Run: `cargo bench -p bench --bench snapshot`.
//!
//! Only the named step is timed (`iter_custom`); moving the world and
//! capturing the frame happen outside the timer. The client acknowledges
//! three ticks late, as on a 50 ms round trip. The byte budget is raised
//! so all N entities fit one snapshot and the per-entity cost is measured.
//! Movers turn around at the ends of a 100 m track so that they keep
//! changing however many iterations criterion runs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bench::wire::{self, IrDecoder, IrEncoder};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::{Aabb, EntityId, Motion, Transform, Vec3, Velocity, World, WorldConfig};
use net::FRAME_HEADER_LEN;
use net::quant::Quantizer;
use net::snapshot::{
    ArchivedSnapshotBody, ClientSnapshots, SnapshotConfig, SnapshotEncoder, SnapshotReceiver,
    WorldFrame,
};

const SIZES: [usize; 4] = [1, 10, 100, 1000];
const ACK_LAG: u32 = 3;

/// This protocol's server and client for one world of `n` movers.
struct Ours {
    world: World,
    frame: WorldFrame,
    quantizer: Quantizer,
    server: ClientSnapshots,
    encoder: SnapshotEncoder,
    client: SnapshotReceiver,
    tick: u32,
    last: Vec<u8>,
}

impl Ours {
    fn new(n: usize) -> Self {
        Self::with_budget(n, 64 * 1024)
    }

    fn with_budget(n: usize, budget_bytes: usize) -> Self {
        let mut world = World::new(WorldConfig::default());
        for e in wire::moving_entities(n) {
            let t = Transform {
                position: Vec3::from(e.position),
                rotation: e.rotation.into(),
            };
            let v = Velocity {
                linear: Vec3::from(e.linear),
                angular: Vec3::ZERO,
            };
            let _: EntityId = world.spawn(t, v, Motion::Integrated, true).expect("room");
        }
        let bounds = Aabb {
            min: Vec3::new(-500.0, -500.0, -500.0),
            max: Vec3::new(500.0, 500.0, 500.0),
        };
        let config = SnapshotConfig {
            budget_bytes,
            interest_radius_m: 1000.0,
            view_entities_max: 4096,
            ..SnapshotConfig::default()
        };
        let mut ours = Ours {
            world,
            frame: WorldFrame::with_capacity(n),
            quantizer: Quantizer::new(&bounds),
            server: ClientSnapshots::new(config),
            encoder: SnapshotEncoder::default(),
            client: SnapshotReceiver::new(config.history_len, config.view_entities_max),
            tick: 0,
            last: Vec::with_capacity(64 * 1024),
        };
        for _ in 0..40 {
            ours.advance();
            ours.encode();
            ours.apply();
        }
        ours
    }

    fn advance(&mut self) {
        self.tick += 1;
        self.world.begin_tick();
        // Keep the movers inside the bounds however long criterion runs
        // (positions clamp at the bounds and would stop changing).
        let turns: Vec<(EntityId, Velocity)> = {
            let c = self.world.columns();
            (0..c.ids.len())
                .filter_map(|r| {
                    let (z, vz) = (c.positions.z[r], c.linear_velocities.z[r]);
                    let turned = wire::turn_around(z, vz);
                    (turned != vz).then(|| {
                        let mut v = c.linear_velocities.get(r);
                        v.z = turned;
                        (
                            c.ids[r],
                            Velocity {
                                linear: v,
                                angular: Vec3::ZERO,
                            },
                        )
                    })
                })
                .collect()
        };
        for (id, v) in turns {
            self.world.set_velocity(id, v).expect("live entity");
        }
        engine::systems::integrate_velocities(&mut self.world, 1.0 / 60.0);
        self.frame.capture(&self.world, &self.quantizer);
        if self.tick > ACK_LAG {
            self.server.ack(self.tick - ACK_LAG);
        }
    }

    fn encode(&mut self) -> usize {
        let bytes = self
            .server
            .encode(&mut self.encoder, &self.frame, Vec3::ZERO, self.tick)
            .expect("within the raised budget");
        self.last.clear();
        self.last.extend_from_slice(bytes);
        bytes.len()
    }

    fn apply(&mut self) -> usize {
        self.client
            .apply(self.tick, &self.last[FRAME_HEADER_LEN..])
            .expect("valid snapshot")
            .len()
    }
}

fn timed(iters: u64, mut untimed: impl FnMut(), mut timed: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        untimed();
        let t = Instant::now();
        timed();
        total += t.elapsed();
    }
    total
}

fn print_bytes(n: usize) {
    let mut ours = Ours::new(n);
    ours.advance();
    let total = ours.encode();
    let mut empty = Ours::new(0);
    empty.advance();
    let fixed = empty.encode();
    let mut e = wire::moving_entities(n);
    let mut buf = Vec::new();
    wire::postcard_encode(1, &e, &mut buf);
    let mut ir = IrEncoder::default();
    ir.encode(&e);
    wire::step(&mut e);
    let ir_len = ir.encode(&e).len();
    println!(
        "bytes/entity at n={n}: instanceserver {:.2} ({total} B, {fixed} B fixed), postcard {:.2}, ir_engine {:.2}",
        (total - fixed) as f64 / n as f64,
        buf.len() as f64 / n as f64,
        (ir_len - 4) as f64 / n as f64
    );
}

/// Times `encode` only; advancing the world and capturing stay untimed.
fn bench_our_encode(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    n: usize,
    ours: &std::cell::RefCell<Ours>,
) {
    group.bench_function(BenchmarkId::new("instanceserver", n), |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || ours.borrow_mut().advance(),
                || {
                    black_box(ours.borrow_mut().encode());
                },
            )
        })
    });
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_encode");
    for n in SIZES {
        print_bytes(n);
        group.throughput(Throughput::Elements(n as u64));
        let ours = std::cell::RefCell::new(Ours::new(n));
        bench_our_encode(&mut group, n, &ours);
        let mut e = wire::moving_entities(n);
        let mut buf = Vec::with_capacity(64 * n + 16);
        group.bench_function(BenchmarkId::new("serde_postcard", n), |b| {
            b.iter_custom(|iters| {
                let cell = std::cell::RefCell::new(&mut e);
                timed(
                    iters,
                    || wire::step(&mut cell.borrow_mut()),
                    || wire::postcard_encode(1, &cell.borrow(), &mut buf),
                )
            })
        });
        let mut e = wire::moving_entities(n);
        let mut ir = IrEncoder::default();
        ir.encode(&e);
        group.bench_function(BenchmarkId::new("ir_engine", n), |b| {
            b.iter_custom(|iters| {
                let cell = std::cell::RefCell::new(&mut e);
                timed(
                    iters,
                    || wire::step(&mut cell.borrow_mut()),
                    || {
                        black_box(ir.encode(&cell.borrow()));
                    },
                )
            })
        });
    }
    group.finish();
}

/// The real case: 1,000 changing entities in view and the default
/// one-datagram budget, so only the highest-priority ~140 fit each tick.
/// Throughput counts the entities considered.
fn encode_budgeted(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_encode_budgeted");
    for n in [100usize, 1000] {
        group.throughput(Throughput::Elements(n as u64));
        let ours = std::cell::RefCell::new(Ours::with_budget(n, net::SNAPSHOT_DATAGRAM_BYTES_MAX));
        {
            let mut o = ours.borrow_mut();
            o.advance();
            o.encode();
            let s = o.server.last_stats();
            println!(
                "budgeted n={n}: {} entities sent, {} waiting, {} bytes",
                s.entities_sent, s.waiting, s.bytes
            );
        }
        bench_our_encode(&mut group, n, &ours);
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_decode");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        let ours = std::cell::RefCell::new(Ours::new(n));
        group.bench_function(BenchmarkId::new("instanceserver", n), |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || {
                        let mut o = ours.borrow_mut();
                        o.advance();
                        o.encode();
                    },
                    || {
                        black_box(ours.borrow_mut().apply());
                    },
                )
            })
        });
        let e = wire::moving_entities(n);
        let mut buf = Vec::new();
        wire::postcard_encode(1, &e, &mut buf);
        group.bench_function(BenchmarkId::new("serde_postcard", n), |b| {
            b.iter(|| black_box(wire::postcard_decode(&buf).expect("valid")))
        });
        let mut e = wire::moving_entities(n);
        let mut enc = IrEncoder::default();
        let mut dec = IrDecoder::default();
        dec.decode(enc.encode(&e));
        wire::step(&mut e);
        let msg = enc.encode(&e).to_vec();
        group.bench_function(BenchmarkId::new("ir_engine", n), |b| {
            b.iter(|| black_box(dec.decode(&msg)))
        });
    }
    group.finish();
}

/// Once per instance per tick (shared by all its clients): quantise every
/// networked entity and sort by id.
fn capture(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_capture");
    for n in [100usize, 1000] {
        group.throughput(Throughput::Elements(n as u64));
        let mut ours = Ours::new(n);
        ours.advance();
        group.bench_function(BenchmarkId::new("instanceserver", n), |b| {
            b.iter(|| ours.frame.capture(black_box(&ours.world), &ours.quantizer))
        });
    }
    group.finish();
}

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_validate");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        let mut ours = Ours::new(n);
        ours.advance();
        ours.encode();
        let mut payload = rkyv::util::AlignedVec::<16>::new();
        payload.extend_from_slice(&ours.last[FRAME_HEADER_LEN..]);
        group.bench_function(BenchmarkId::new("instanceserver", n), |b| {
            b.iter(|| {
                black_box(
                    rkyv::access::<ArchivedSnapshotBody, rkyv::rancor::Error>(black_box(&payload))
                        .expect("valid"),
                );
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode, encode_budgeted, decode, capture, validate);
criterion_main!(benches);
