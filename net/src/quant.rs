//! Quantisation of positions, rotations and velocities for snapshots.
//!
//! | field | encoding | precision |
//! |---|---|---|
//! | position | `u32` per axis: millimetres from the world bounds' minimum | error ≤ 0.5 mm |
//! | rotation | smallest three: three 15-bit components and a 2-bit index in `[u16; 3]` | error < 0.01° |
//! | linear velocity | `i16` per axis, 1 cm/s steps, clamped to ±327.67 m/s | error ≤ 5 mm/s |
//! | angular velocity | `i16` per axis, 1 mrad/s steps, clamped to ±32.767 rad/s | error ≤ 0.5 mrad/s |

use engine::{Aabb, Quat, Vec3};

/// Metres per quantised position step.
pub const POSITION_STEP_M: f64 = 0.001;
const LINEAR_VELOCITY_STEP_MPS: f32 = 0.01;
const ANGULAR_VELOCITY_STEP_RPS: f32 = 0.001;
/// Each smallest-three component is `centre + round(v * sqrt(2) * centre)`,
/// so 0 encodes exactly and the range is `0..=2 * centre`.
const ROTATION_CENTRE: u16 = (1 << 14) - 1;
const ROTATION_VALUE_MASK: u16 = (1 << 15) - 1;

/// Position quantisation for one instance, derived from its world bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantizer {
    min: [f64; 3],
    steps_max: [u32; 3],
}

impl Quantizer {
    /// Bounds up to 4,294 km per axis fit; the scene loader caps them far below.
    pub fn new(bounds: &Aabb) -> Self {
        let min = [bounds.min.x, bounds.min.y, bounds.min.z].map(f64::from);
        let size = bounds.size().to_array();
        let steps_max = size.map(|s| {
            (f64::from(s) / POSITION_STEP_M)
                .ceil()
                .min(f64::from(u32::MAX)) as u32
        });
        Quantizer { min, steps_max }
    }

    /// Bits needed per position axis (the widest axis).
    pub fn position_bits(&self) -> u8 {
        let widest = self.steps_max.iter().copied().max().unwrap_or(0);
        (u32::BITS - widest.leading_zeros()) as u8
    }

    /// Millimetres from the bounds' minimum, clamped into the bounds (NaN maps to the minimum).
    pub fn position(&self, p: Vec3) -> [u32; 3] {
        let p = [p.x, p.y, p.z];
        std::array::from_fn(|i| {
            let steps = (f64::from(p[i]) - self.min[i]) / POSITION_STEP_M;
            // Non-negative after `max`, so adding a half and truncating rounds
            // (one instruction, where `round` is a libm call on baseline
            // x86-64). `as` saturates and maps NaN to 0.
            ((steps.max(0.0) + 0.5) as u32).min(self.steps_max[i])
        })
    }

    pub fn dequantize_position(&self, q: [u32; 3]) -> Vec3 {
        let v: [f32; 3] =
            std::array::from_fn(|i| (self.min[i] + f64::from(q[i]) * POSITION_STEP_M) as f32);
        Vec3::from(v)
    }
}

/// The components kept when the one at the index is dropped, in order.
const SMALLEST_THREE: [[usize; 3]; 4] = [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]];

/// Smallest-three encoding of a unit quaternion.
pub fn rotation(q: Quat) -> [u16; 3] {
    let c = q.to_array();
    let len2: f32 = c.iter().map(|v| v * v).sum();
    let c = if !(len2 > 0.0 && len2.is_finite()) {
        [0.0, 0.0, 0.0, 1.0]
    } else if (len2 - 1.0).abs() > 1e-5 {
        let len = len2.sqrt();
        c.map(|v| v / len)
    } else {
        // The engine keeps rotations normalised: skip the division.
        c
    };
    // Branch-free: which component is largest depends on the data, and a
    // mispredicted branch per component cost more than all the arithmetic.
    // Ties keep the first, as `>` does.
    let a = c.map(f32::abs);
    let mut largest = 0;
    let mut max = a[0];
    for (i, &v) in a.iter().enumerate().skip(1) {
        let bigger = v > max;
        largest = if bigger { i } else { largest };
        max = if bigger { v } else { max };
    }
    // q and -q are the same rotation: make the dropped component positive.
    let sign = if c[largest] < 0.0 { -1.0 } else { 1.0 };
    let scale = sign * std::f32::consts::SQRT_2 * f32::from(ROTATION_CENTRE);
    let centre = i32::from(ROTATION_CENTRE);
    let component = |v: f32| (round_to_i32(v * scale).clamp(-centre, centre) + centre) as u16;
    let [i, j, k] = SMALLEST_THREE[largest];
    let mut out = [component(c[i]), component(c[j]), component(c[k])];
    out[0] |= ((largest as u16) >> 1) << 15;
    out[1] |= ((largest as u16) & 1) << 15;
    out
}

/// Decodes [`rotation`]'s output (any three `u16`s decode to a unit quaternion).
pub fn dequantize_rotation(q: [u16; 3]) -> Quat {
    let largest = usize::from(((q[0] >> 15) << 1) | (q[1] >> 15));
    let small = [q[0], q[1], q[2]].map(|v| {
        let centre = f32::from(ROTATION_CENTRE);
        let steps = f32::from(v & ROTATION_VALUE_MASK).min(2.0 * centre) - centre;
        steps / centre / std::f32::consts::SQRT_2
    });
    let rest = (1.0 - small.iter().map(|v| v * v).sum::<f32>())
        .max(0.0)
        .sqrt();
    let mut c = [0.0f32; 4];
    let mut k = 0;
    for (i, slot) in c.iter_mut().enumerate() {
        if i == largest {
            *slot = rest;
        } else {
            *slot = small[k];
            k += 1;
        }
    }
    let len = c.iter().map(|v| v * v).sum::<f32>().sqrt();
    Quat::from(c.map(|v| v / len))
}

/// Rounds half away from zero without a libm call: add ±0.5, truncate.
/// `as` saturates and maps NaN to 0.
fn round_to_i32(v: f32) -> i32 {
    (v + 0.5f32.copysign(v)) as i32
}

fn to_i16(v: f32, step: f32) -> i16 {
    round_to_i32(v / step).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

pub fn linear_velocity(v: Vec3) -> [i16; 3] {
    v.to_array().map(|c| to_i16(c, LINEAR_VELOCITY_STEP_MPS))
}

pub fn dequantize_linear_velocity(q: [i16; 3]) -> Vec3 {
    Vec3::from(q.map(|c| f32::from(c) * LINEAR_VELOCITY_STEP_MPS))
}

pub fn angular_velocity(v: Vec3) -> [i16; 3] {
    v.to_array().map(|c| to_i16(c, ANGULAR_VELOCITY_STEP_RPS))
}

pub fn dequantize_angular_velocity(q: [i16; 3]) -> Vec3 {
    Vec3::from(q.map(|c| f32::from(c) * ANGULAR_VELOCITY_STEP_RPS))
}

/// The angle in degrees between the rotations of two unit quaternions,
/// computed in `f64` with `4 asin(|a - b| / 2)`, which stays accurate for
/// tiny angles where `acos` of a dot product does not.
pub fn angle_between_deg(a: Quat, b: Quat) -> f64 {
    let (a, b) = (a.to_array().map(f64::from), b.to_array().map(f64::from));
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let s = if dot < 0.0 { -1.0 } else { 1.0 };
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - s * y).powi(2))
        .sum::<f64>()
        .sqrt();
    4.0 * (d / 2.0).min(1.0).asin().to_degrees()
}
