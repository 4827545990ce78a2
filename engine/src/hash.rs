//! A deterministic hash of simulation state.
//!
//! FNV-1a (64-bit) over the exact bits of every value, in storage order.
//! `std`'s `DefaultHasher` is not used because its algorithm may change
//! between Rust releases; this one is fixed, so a hash recorded today can be
//! compared with one computed by a later build.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

#[derive(Debug, Clone)]
pub struct StateHasher(u64);

impl Default for StateHasher {
    fn default() -> Self {
        StateHasher(OFFSET)
    }
}

impl StateHasher {
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }

    pub fn write_u8(&mut self, v: u8) {
        self.write_bytes(&[v]);
    }

    pub fn write_u32(&mut self, v: u32) {
        self.write_bytes(&v.to_le_bytes());
    }

    pub fn write_u64(&mut self, v: u64) {
        self.write_bytes(&v.to_le_bytes());
    }

    pub fn write_f32(&mut self, v: f32) {
        self.write_u32(v.to_bits());
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// A component that contributes to the world's state hash.
pub trait StateHash {
    fn hash_state(&self, h: &mut StateHasher);
}

impl StateHash for crate::math::Vec3 {
    fn hash_state(&self, h: &mut StateHasher) {
        h.write_f32(self.x);
        h.write_f32(self.y);
        h.write_f32(self.z);
    }
}

impl StateHash for crate::math::Quat {
    fn hash_state(&self, h: &mut StateHasher) {
        for v in self.to_array() {
            h.write_f32(v);
        }
    }
}
