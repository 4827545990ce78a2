//! The formats snapshots are compared with, over the same entity data:
//! - serde + postcard: every entity's full state, every snapshot;
//! - the format IR Engine's instanceserver sends today: per entity a `u32`
//!   network id, a `u32` owner index, a `u8` change mask, then the changed
//!   fields among position, rotation, linear and angular velocity as `f64`,
//!   each a delta against the last value sent, with no acknowledgements.

use serde::{Deserialize, Serialize};

/// One entity's state in the benchmark world.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntityData {
    pub id: u32,
    pub owner: u32,
    pub position: [f32; 3],
    pub rotation: [f32; 4],
    pub linear: [f32; 3],
    pub angular: [f32; 3],
}

/// `n` entities on a 0.5 m grid, all moving at 5 m/s along +z (steady
/// motion). Ids are scattered over the grid (cell `7919 * i mod n`) so that
/// id order says nothing about distance, as in a real scene.
pub fn moving_entities(n: usize) -> Vec<EntityData> {
    (0..n)
        .map(|i| {
            let cell = (i * 7919) % n.max(1);
            (i, cell)
        })
        .map(|(i, cell)| EntityData {
            id: i as u32 + 1,
            owner: 0,
            position: [(cell % 32) as f32 * 0.5, 1.0, (cell / 32) as f32 * 0.5],
            rotation: [0.0, 0.383, 0.0, 0.924],
            linear: [0.0, 0.0, 5.0],
            angular: [0.0, 0.0, 0.0],
        })
        .collect()
}

/// Movers turn around at the ends of this z range, so that however long a
/// benchmark runs they keep moving inside the world bounds.
pub const Z_RANGE_M: (f32, f32) = (0.0, 100.0);

/// The z velocity an entity at `z` moving at `vz` should have: reversed at
/// the ends of [`Z_RANGE_M`].
pub fn turn_around(z: f32, vz: f32) -> f32 {
    if (z > Z_RANGE_M.1 && vz > 0.0) || (z < Z_RANGE_M.0 && vz < 0.0) {
        -vz
    } else {
        vz
    }
}

/// Advances every entity by one 60 Hz tick.
pub fn step(entities: &mut [EntityData]) {
    for e in entities {
        e.linear[2] = turn_around(e.position[2], e.linear[2]);
        for (p, v) in e.position.iter_mut().zip(e.linear) {
            *p += v / 60.0;
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PostcardSnapshot {
    pub tick: u32,
    pub entities: Vec<EntityData>,
}

/// serde + postcard into a reused buffer.
pub fn postcard_encode(tick: u32, entities: &[EntityData], out: &mut Vec<u8>) {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        tick: u32,
        entities: &'a [EntityData],
    }
    out.clear();
    let buf = std::mem::take(out);
    *out = postcard::to_extend(&Borrowed { tick, entities }, buf)
        .expect("postcard writes to a Vec without failing");
}

pub fn postcard_decode(bytes: &[u8]) -> Result<PostcardSnapshot, postcard::Error> {
    postcard::from_bytes(bytes)
}

const IR_POSITION: u8 = 1;
const IR_ROTATION: u8 = 2;
const IR_LINEAR: u8 = 4;
const IR_ANGULAR: u8 = 8;

/// IR Engine's encoder: remembers what it last sent per entity.
#[derive(Debug, Default)]
pub struct IrEncoder {
    last: Vec<Option<EntityData>>,
    out: Vec<u8>,
}

fn put_f64s(out: &mut Vec<u8>, values: &[f32]) {
    for &v in values {
        out.extend_from_slice(&f64::from(v).to_le_bytes());
    }
}

impl IrEncoder {
    pub fn encode(&mut self, entities: &[EntityData]) -> &[u8] {
        self.out.clear();
        self.out.extend_from_slice(&0u32.to_le_bytes());
        let mut count = 0u32;
        for e in entities {
            let i = e.id as usize;
            if self.last.len() <= i {
                self.last.resize(i + 1, None);
            }
            let last = self.last[i];
            let changed = |f: fn(&EntityData) -> &[f32]| last.is_none_or(|l| f(&l) != f(e));
            let mut mask = 0;
            if changed(|d| &d.position) {
                mask |= IR_POSITION;
            }
            if changed(|d| &d.rotation) {
                mask |= IR_ROTATION;
            }
            if changed(|d| &d.linear) {
                mask |= IR_LINEAR;
            }
            if changed(|d| &d.angular) {
                mask |= IR_ANGULAR;
            }
            if mask == 0 {
                continue;
            }
            count += 1;
            self.out.extend_from_slice(&e.id.to_le_bytes());
            self.out.extend_from_slice(&e.owner.to_le_bytes());
            self.out.push(mask);
            if mask & IR_POSITION != 0 {
                put_f64s(&mut self.out, &e.position);
            }
            if mask & IR_ROTATION != 0 {
                put_f64s(&mut self.out, &e.rotation);
            }
            if mask & IR_LINEAR != 0 {
                put_f64s(&mut self.out, &e.linear);
            }
            if mask & IR_ANGULAR != 0 {
                put_f64s(&mut self.out, &e.angular);
            }
            self.last[i] = Some(*e);
        }
        self.out[..4].copy_from_slice(&count.to_le_bytes());
        &self.out
    }
}

/// IR Engine's decoder: applies updates to its copy of the entities.
#[derive(Debug, Default)]
pub struct IrDecoder {
    pub state: Vec<[f64; 13]>,
}

impl IrDecoder {
    /// Applies one message; `None` if it is malformed.
    pub fn decode(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = bytes.get(at..at + n)?;
            at += n;
            Some(s)
        };
        let count = u32::from_le_bytes(take(4)?.try_into().ok()?);
        for _ in 0..count {
            let id = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let _owner = u32::from_le_bytes(take(4)?.try_into().ok()?);
            let mask = take(1)?[0];
            if id > 1_000_000 {
                return None;
            }
            if self.state.len() <= id {
                self.state.resize(id + 1, [0.0; 13]);
            }
            let spans = [
                (IR_POSITION, 0, 3),
                (IR_ROTATION, 3, 4),
                (IR_LINEAR, 7, 3),
                (IR_ANGULAR, 10, 3),
            ];
            for (bit, start, len) in spans {
                if mask & bit != 0 {
                    for k in 0..len {
                        let v = f64::from_le_bytes(take(8)?.try_into().ok()?);
                        self.state[id][start + k] = v;
                    }
                }
            }
        }
        Some(count as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_round_trip_and_cost_what_the_reference_says() {
        let mut e = moving_entities(10);
        let mut buf = Vec::new();
        postcard_encode(1, &e, &mut buf);
        assert_eq!(postcard_decode(&buf).unwrap().entities, e);

        let mut enc = IrEncoder::default();
        let mut dec = IrDecoder::default();
        let first = enc.encode(&e).to_vec();
        assert_eq!(
            first.len(),
            4 + 10 * (9 + 13 * 8),
            "first message: everything"
        );
        assert_eq!(dec.decode(&first), Some(10));
        step(&mut e);
        let second = enc.encode(&e).to_vec();
        assert_eq!(
            second.len(),
            4 + 10 * (9 + 3 * 8),
            "steady motion: only positions"
        );
        dec.decode(&second).unwrap();
        assert_eq!(dec.state[3][2], f64::from(e[2].position[2]));
    }
}
