//! Per-axis storage for 3-vectors: one `f32` array per axis.
//!
//! Positions and velocities are stored as three parallel arrays rather than
//! an array of `[x, y, z]`, so a system streams through whole cache lines of
//! one axis at a time and the compiler can process several entities per SIMD
//! instruction; the snapshot encoder quantises an axis at a time the same way,
//! and a browser reads each axis as a typed array.

use crate::math::Vec3;

/// Three parallel arrays. Invariant: `x`, `y` and `z` have the same length.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vec3Column {
    x: Vec<f32>,
    y: Vec<f32>,
    z: Vec<f32>,
}

impl Vec3Column {
    pub fn with_capacity(n: usize) -> Self {
        Vec3Column {
            x: Vec::with_capacity(n),
            y: Vec::with_capacity(n),
            z: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.x.len()
    }

    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }

    pub fn get(&self, i: usize) -> Vec3 {
        self.slices().get(i)
    }

    pub fn set(&mut self, i: usize, v: Vec3) {
        self.slices_mut().set(i, v);
    }

    pub fn push(&mut self, v: Vec3) {
        self.x.push(v.x);
        self.y.push(v.y);
        self.z.push(v.z);
    }

    pub fn swap_remove(&mut self, i: usize) -> Vec3 {
        Vec3::new(
            self.x.swap_remove(i),
            self.y.swap_remove(i),
            self.z.swap_remove(i),
        )
    }

    pub fn slices(&self) -> Vec3Slices<'_> {
        Vec3Slices {
            x: &self.x,
            y: &self.y,
            z: &self.z,
        }
    }

    pub fn slices_mut(&mut self) -> Vec3SlicesMut<'_> {
        Vec3SlicesMut {
            x: &mut self.x,
            y: &mut self.y,
            z: &mut self.z,
        }
    }

    /// Bytes held by the three arrays (capacity, not length).
    pub fn heap_bytes(&self) -> usize {
        (self.x.capacity() + self.y.capacity() + self.z.capacity()) * size_of::<f32>()
    }
}

/// Read access to a [`Vec3Column`]: three slices of equal length.
#[derive(Clone, Copy, Debug)]
pub struct Vec3Slices<'a> {
    pub x: &'a [f32],
    pub y: &'a [f32],
    pub z: &'a [f32],
}

impl Vec3Slices<'_> {
    pub fn len(&self) -> usize {
        self.x.len()
    }

    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }

    pub fn get(&self, i: usize) -> Vec3 {
        Vec3::new(self.x[i], self.y[i], self.z[i])
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Vec3> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// Write access to a [`Vec3Column`]: three slices of equal length.
#[derive(Debug)]
pub struct Vec3SlicesMut<'a> {
    pub x: &'a mut [f32],
    pub y: &'a mut [f32],
    pub z: &'a mut [f32],
}

impl Vec3SlicesMut<'_> {
    pub fn len(&self) -> usize {
        self.x.len()
    }

    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }

    pub fn get(&self, i: usize) -> Vec3 {
        Vec3::new(self.x[i], self.y[i], self.z[i])
    }

    pub fn set(&mut self, i: usize, v: Vec3) {
        self.x[i] = v.x;
        self.y[i] = v.y;
        self.z[i] = v.z;
    }
}
