//! Plain value types for positions and rotations.
//!
//! The engine stores these in its columns instead of glam's types so the
//! layout is fixed (`repr(C)`, no SIMD padding) and the snapshot encoder can
//! read them as flat `f32` triples and quadruples. Conversions to the physics
//! library's types live at the physics boundary only.

use rapier3d::math::{Rotation, Vector};

/// A 3-component vector of `f32`, laid out as `[x, y, z]` with no padding.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct Vec3 {
    pub x: f32,
    pub y: f32,
    pub z: f32,
}

const _: () = assert!(size_of::<Vec3>() == 12);

impl Vec3 {
    pub const ZERO: Vec3 = Vec3::new(0.0, 0.0, 0.0);

    pub const fn new(x: f32, y: f32, z: f32) -> Self {
        Vec3 { x, y, z }
    }

    pub fn to_array(self) -> [f32; 3] {
        [self.x, self.y, self.z]
    }

    pub fn length(self) -> f32 {
        (self.x * self.x + self.y * self.y + self.z * self.z).sqrt()
    }

    pub fn is_finite(self) -> bool {
        self.x.is_finite() && self.y.is_finite() && self.z.is_finite()
    }

    /// True when every component is exactly zero.
    pub fn is_zero(self) -> bool {
        self.x == 0.0 && self.y == 0.0 && self.z == 0.0
    }

    /// `self + v * s`.
    pub fn add_scaled(self, v: Vec3, s: f32) -> Vec3 {
        Vec3::new(self.x + v.x * s, self.y + v.y * s, self.z + v.z * s)
    }

    pub fn minus(self, v: Vec3) -> Vec3 {
        Vec3::new(self.x - v.x, self.y - v.y, self.z - v.z)
    }

    /// Bit-exact equality (distinguishes `0.0` from `-0.0`), used to decide
    /// whether a value really changed.
    pub fn bits_eq(self, other: Vec3) -> bool {
        self.x.to_bits() == other.x.to_bits()
            && self.y.to_bits() == other.y.to_bits()
            && self.z.to_bits() == other.z.to_bits()
    }
}

impl From<[f32; 3]> for Vec3 {
    fn from([x, y, z]: [f32; 3]) -> Self {
        Vec3 { x, y, z }
    }
}

impl From<Vec3> for Vector {
    fn from(v: Vec3) -> Self {
        Vector::new(v.x, v.y, v.z)
    }
}

impl From<Vector> for Vec3 {
    fn from(v: Vector) -> Self {
        Vec3::new(v.x, v.y, v.z)
    }
}

/// A rotation as a unit quaternion `[x, y, z, w]`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct Quat {
    pub x: f32,
    pub y: f32,
    pub z: f32,
    pub w: f32,
}

const _: () = assert!(size_of::<Quat>() == 16);

impl Default for Quat {
    fn default() -> Self {
        Quat::IDENTITY
    }
}

impl Quat {
    pub const IDENTITY: Quat = Quat {
        x: 0.0,
        y: 0.0,
        z: 0.0,
        w: 1.0,
    };

    pub const fn new(x: f32, y: f32, z: f32, w: f32) -> Self {
        Quat { x, y, z, w }
    }

    pub fn to_array(self) -> [f32; 4] {
        [self.x, self.y, self.z, self.w]
    }

    /// A rotation of `angle_rad` about the vertical (+Y) axis.
    pub fn from_yaw(angle_rad: f32) -> Self {
        let (s, c) = (angle_rad * 0.5).sin_cos();
        Quat::new(0.0, s, 0.0, c)
    }

    pub fn length(self) -> f32 {
        (self.x * self.x + self.y * self.y + self.z * self.z + self.w * self.w).sqrt()
    }

    pub fn bits_eq(self, other: Quat) -> bool {
        self.to_array()
            .iter()
            .zip(other.to_array())
            .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl From<[f32; 4]> for Quat {
    fn from([x, y, z, w]: [f32; 4]) -> Self {
        Quat { x, y, z, w }
    }
}

impl From<Quat> for Rotation {
    fn from(q: Quat) -> Self {
        Rotation::from_xyzw(q.x, q.y, q.z, q.w)
    }
}

impl From<Rotation> for Quat {
    fn from(q: Rotation) -> Self {
        Quat::new(q.x, q.y, q.z, q.w)
    }
}

/// An axis-aligned box, `min` ≤ `max` on every axis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Aabb {
    pub min: Vec3,
    pub max: Vec3,
}

impl Aabb {
    pub fn contains(&self, p: Vec3) -> bool {
        p.x >= self.min.x
            && p.y >= self.min.y
            && p.z >= self.min.z
            && p.x <= self.max.x
            && p.y <= self.max.y
            && p.z <= self.max.z
    }

    pub fn size(&self) -> Vec3 {
        self.max.minus(self.min)
    }
}
