//! Steady-state snapshot encoding and decoding do not touch the heap.
//! One test only in this binary: the counting allocator is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;

use engine::{Aabb, Motion, Transform, Vec3, Velocity, World, WorldConfig};
use net::FRAME_HEADER_LEN;
use net::quant::Quantizer;
use net::snapshot::{
    ClientSnapshots, SnapshotConfig, SnapshotEncoder, SnapshotReceiver, WorldFrame,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn steady_state_snapshots_do_not_allocate() {
    let bounds = Aabb {
        min: Vec3::new(-500.0, -500.0, -500.0),
        max: Vec3::new(500.0, 500.0, 500.0),
    };
    let mut world = World::new(WorldConfig::default());
    for i in 0..300 {
        let t = Transform::from_position(Vec3::new((i % 30) as f32, 1.0, (i / 30) as f32));
        let v = Velocity {
            linear: Vec3::new(0.5, 0.0, 3.0),
            angular: Vec3::ZERO,
        };
        world.spawn(t, v, Motion::Integrated, true).unwrap();
    }
    let q = Quantizer::new(&bounds);
    let mut frame = WorldFrame::with_capacity(1024);
    let config = SnapshotConfig::default();
    let mut server = ClientSnapshots::new(config);
    let mut enc = SnapshotEncoder::default();
    let mut client = SnapshotReceiver::new(config.history_len, config.view_entities_max);
    let mut datagram = vec![0u8; config.budget_bytes];
    let mut run = |ticks: std::ops::Range<u32>| {
        for t in ticks {
            world.begin_tick();
            engine::systems::integrate_velocities(&mut world, 1.0 / 60.0);
            frame.capture(&world, &q);
            if let Some(latest) = client.latest() {
                server.ack(latest.saturating_sub(2));
            }
            let bytes = server
                .encode(&mut enc, &frame, Vec3::new(15.0, 1.0, 5.0), t)
                .unwrap();
            let n = bytes.len();
            datagram[..n].copy_from_slice(bytes);
            client.apply(t, &datagram[FRAME_HEADER_LEN..n]).unwrap();
        }
    };
    // Warm up: all 300 entities reach the client (a few per tick at first)
    // and every view in both rings has held the full set once.
    run(1..160);
    let region = Region::new(GLOBAL);
    run(160..480);
    let change = region.change();
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "320 ticks of capture + encode + decode allocated: {change:?}"
    );
}
