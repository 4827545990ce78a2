//! Quantisation error bounds, checked over random values.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use engine::{Aabb, Quat, Vec3};
use net::quant::{self, Quantizer};
use proptest::prelude::*;

fn km_world() -> Aabb {
    Aabb {
        min: Vec3::new(-500.0, -500.0, -500.0),
        max: Vec3::new(500.0, 500.0, 500.0),
    }
}

fn unit_quat() -> impl Strategy<Value = Quat> {
    (-1.0f32..1.0, -1.0f32..1.0, -1.0f32..1.0, -1.0f32..1.0)
        .prop_filter("non-degenerate", |(x, y, z, w)| {
            x * x + y * y + z * z + w * w > 1e-3
        })
        .prop_map(|(x, y, z, w)| {
            let l = (x * x + y * y + z * z + w * w).sqrt();
            Quat::new(x / l, y / l, z / l, w / l)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn positions_within_half_a_millimetre_in_a_1km_world(
        x in -500.0f32..500.0, y in -500.0f32..500.0, z in -500.0f32..500.0,
    ) {
        let q = Quantizer::new(&km_world());
        let p = Vec3::new(x, y, z);
        let back = q.dequantize_position(q.position(p));
        for (a, b) in p.to_array().iter().zip(back.to_array()) {
            prop_assert!((a - b).abs() <= 0.0005 + 1e-4, "{p:?} -> {back:?}");
        }
    }

    #[test]
    fn rotations_within_a_hundredth_of_a_degree(q in unit_quat()) {
        let back = quant::dequantize_rotation(quant::rotation(q));
        let err = quant::angle_between_deg(q, back);
        prop_assert!(err < 0.01, "{q:?} -> {back:?}: {err} degrees");
    }

    #[test]
    fn any_bits_decode_to_a_unit_rotation(a: u16, b: u16, c: u16) {
        let r = quant::dequantize_rotation([a, b, c]);
        prop_assert!((r.length() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn velocities_within_half_a_step(x in -300.0f32..300.0, w in -30.0f32..30.0) {
        let v = Vec3::new(x, -x, 0.5 * x);
        let back = quant::dequantize_linear_velocity(quant::linear_velocity(v));
        prop_assert!((back.x - v.x).abs() <= 0.0051);
        let a = Vec3::new(w, 0.0, -w);
        let back = quant::dequantize_angular_velocity(quant::angular_velocity(a));
        prop_assert!((back.z - a.z).abs() <= 0.00051);
    }
}

#[test]
fn out_of_range_values_clamp() {
    let q = Quantizer::new(&km_world());
    assert_eq!(
        q.position(Vec3::new(-9e9, 9e9, f32::NAN)),
        [0, 1_000_000, 0]
    );
    assert_eq!(q.position_bits(), 20, "1,000,000 mm fits 20 bits");
    assert_eq!(
        quant::linear_velocity(Vec3::new(1e6, -1e6, f32::NAN)),
        [i16::MAX, i16::MIN, 0]
    );
    let r = quant::dequantize_rotation(quant::rotation(Quat::new(0.0, 0.0, 0.0, 0.0)));
    assert_eq!(r, Quat::IDENTITY, "a zero quaternion encodes as identity");
}

/// Smallest three as the format defines it, written plainly: drop the
/// first component of largest magnitude, flip the sign so that it is
/// positive, keep the other three in order.
fn reference_rotation(q: Quat) -> [u16; 3] {
    let c = q.to_array();
    let mut largest = 0;
    for i in 1..4 {
        if c[i].abs() > c[largest].abs() {
            largest = i;
        }
    }
    let sign = if c[largest] < 0.0 { -1.0 } else { 1.0 };
    let centre = 16383.0f32;
    let scale = sign * std::f32::consts::SQRT_2 * centre;
    let mut out = Vec::new();
    for (i, v) in c.iter().enumerate() {
        if i != largest {
            // Half away from zero, as the encoder rounds.
            let steps = ((v * scale) + 0.5f32.copysign(v * scale)).trunc();
            out.push((steps.clamp(-centre, centre) + centre) as u16);
        }
    }
    out[0] |= ((largest as u16) >> 1) << 15;
    out[1] |= ((largest as u16) & 1) << 15;
    [out[0], out[1], out[2]]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn rotations_encode_as_the_format_defines(q in unit_quat()) {
        prop_assert_eq!(quant::rotation(q), reference_rotation(q), "{:?}", q);
    }
}

#[test]
fn rotation_ties_drop_the_first_largest_component() {
    let half = Quat::new(0.5, 0.5, 0.5, 0.5);
    assert_eq!(quant::rotation(half), [27968, 27968, 27968], "x dropped");
    let flipped = Quat::new(-0.5, 0.5, -0.5, 0.5);
    assert_eq!(quant::rotation(flipped), reference_rotation(flipped));
    assert_eq!(quant::rotation(flipped)[2], 4798, "w flipped with x");
    assert_eq!(quant::rotation(Quat::IDENTITY), [49151, 49151, 16383]);
    let y_and_w = Quat::new(
        0.0,
        std::f32::consts::FRAC_1_SQRT_2,
        0.0,
        -std::f32::consts::FRAC_1_SQRT_2,
    );
    let encoded = quant::rotation(y_and_w);
    assert_eq!(encoded, reference_rotation(y_and_w));
    assert_eq!(encoded[0] >> 15, 0, "y (index 1) dropped, not w");
    assert_eq!(encoded[1] >> 15, 1);
    for degenerate in [
        Quat::new(0.0, 0.0, 0.0, 0.0),
        Quat::new(f32::NAN, 0.0, 0.0, 1.0),
        Quat::new(f32::INFINITY, 0.0, 0.0, 1.0),
    ] {
        assert_eq!(
            quant::rotation(degenerate),
            [49151, 49151, 16383],
            "{degenerate:?} encodes as identity"
        );
    }
    assert_eq!(
        quant::rotation(Quat::new(0.0, 0.0, 0.0, -1.0)),
        [49151, 49151, 16383],
        "-q is q"
    );
}
