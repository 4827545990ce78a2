//! Systems: plain functions over a [`World`] that stream through its columns.

use crate::components::Motion;
use crate::world::World;

/// Moves every [`Motion::Integrated`] entity by its linear velocity over
/// `dt_s` seconds and stamps the rows that moved. Returns how many moved.
///
/// Branch-free over contiguous columns so the compiler vectorises it: rows
/// that must not move are multiplied by zero and keep their stamp.
pub fn integrate_velocities(world: &mut World, dt_s: f32) -> usize {
    let c = world.columns_mut();
    let tick = c.tick;
    let mut moved = 0usize;
    for (((p, v), m), t) in c
        .positions
        .iter_mut()
        .zip(c.linear_velocities.iter())
        .zip(c.motions.iter())
        .zip(c.changed.iter_mut())
    {
        let moving = (*m == Motion::Integrated) & !v.is_zero();
        let s = if moving { dt_s } else { 0.0 };
        p.x += v.x * s;
        p.y += v.y * s;
        p.z += v.z * s;
        *t = if moving { tick } else { *t };
        moved += usize::from(moving);
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::{Transform, Velocity};
    use crate::math::Vec3;
    use crate::world::WorldConfig;

    #[test]
    fn only_integrated_entities_with_velocity_move_and_get_stamped() {
        let mut w = World::new(WorldConfig::default());
        let v = Velocity {
            linear: Vec3::new(1.0, 0.0, -2.0),
            angular: Vec3::ZERO,
        };
        let mover = w
            .spawn(Transform::default(), v, Motion::Integrated, true)
            .unwrap();
        let still = w
            .spawn(
                Transform::default(),
                Velocity::default(),
                Motion::Integrated,
                true,
            )
            .unwrap();
        let physical = w
            .spawn(Transform::default(), v, Motion::Physics, true)
            .unwrap();
        let t1 = w.begin_tick();
        assert_eq!(integrate_velocities(&mut w, 0.5), 1);
        assert_eq!(
            w.transform(mover).unwrap().position,
            Vec3::new(0.5, 0.0, -1.0)
        );
        assert_eq!(w.changed_at(mover).unwrap(), t1);
        assert_eq!(w.transform(still).unwrap().position, Vec3::ZERO);
        assert_eq!(w.changed_at(still).unwrap(), crate::Tick::ZERO);
        assert_eq!(w.transform(physical).unwrap().position, Vec3::ZERO);
        assert_eq!(w.changed_at(physical).unwrap(), crate::Tick::ZERO);
    }
}
