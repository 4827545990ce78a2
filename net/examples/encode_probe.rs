//! Runs 200 ticks of capture + encode for one client of a 1,000-entity
//! world (or as many entities as the first argument says, 1 to 4,096: the
//! view holds at most 4,096), for instruction counting:
//! `valgrind --tool=callgrind`.
use engine::{Aabb, Motion, Transform, Vec3, Velocity, World, WorldConfig};
use net::quant::Quantizer;
use net::snapshot::{ClientSnapshots, SnapshotConfig, SnapshotEncoder, WorldFrame};

fn main() {
    let n: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().expect("the entity count is a number"),
        None => 1000,
    };
    assert!((1..=4096).contains(&n), "1 to 4,096 entities");
    let mut world = World::new(WorldConfig::default());
    for i in 0..n {
        let cell = (i * 7919) % n;
        let t = Transform::from_position(Vec3::new(
            (cell % 32) as f32 * 0.5,
            1.0,
            (cell / 32) as f32 * 0.5,
        ));
        let v = Velocity {
            linear: Vec3::new(0.0, 0.0, 5.0),
            angular: Vec3::ZERO,
        };
        world.spawn(t, v, Motion::Integrated, true).expect("room");
    }
    let bounds = Aabb {
        min: Vec3::new(-500.0, -500.0, -500.0),
        max: Vec3::new(500.0, 500.0, 500.0),
    };
    let q = Quantizer::new(&bounds);
    let mut frame = WorldFrame::with_capacity(n);
    let config = SnapshotConfig {
        budget_bytes: 64 * 1024,
        interest_radius_m: 1000.0,
        view_entities_max: 4096,
        ..SnapshotConfig::default()
    };
    let mut server = ClientSnapshots::new(config);
    let mut enc = SnapshotEncoder::default();
    let mut total = 0usize;
    for t in 1..=200u32 {
        world.begin_tick();
        engine::systems::integrate_velocities(&mut world, 1.0 / 60.0);
        frame.capture(&world, &q);
        if t > 3 {
            server.ack(t - 3);
        }
        total += encode(&mut server, &mut enc, &frame, t);
    }
    println!("{total}");
}

#[inline(never)]
fn encode(
    server: &mut ClientSnapshots,
    enc: &mut SnapshotEncoder,
    frame: &WorldFrame,
    t: u32,
) -> usize {
    server
        .encode(enc, frame, Vec3::ZERO, t)
        .expect("fits")
        .len()
}
