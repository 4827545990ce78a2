//! Entity ids and their allocator.

use crate::error::WorldError;

/// An entity: a slot index plus the generation of that slot.
///
/// When an entity is despawned its slot's generation is bumped, so every id
/// handed out before is rejected from then on ("stale"), even after the slot
/// is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId {
    index: u32,
    generation: u32,
}

impl EntityId {
    pub fn index(self) -> u32 {
        self.index
    }

    pub fn generation(self) -> u32 {
        self.generation
    }

    /// Packs the id into 64 bits (generation high, index low).
    pub fn to_bits(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    pub fn from_bits(bits: u64) -> Self {
        EntityId {
            index: bits as u32,
            generation: (bits >> 32) as u32,
        }
    }
}

/// The position of an entity in the dense columns of its world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Row(pub(crate) u32);

impl Row {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Marks a free slot in [`Slot::row`].
const NO_ROW: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Slot {
    generation: u32,
    /// Row in the world's dense columns, or `NO_ROW` while the slot is free.
    row: u32,
}

/// Hands out entity ids and maps live ones to rows.
///
/// Invariants: `live` equals the number of slots whose `row != NO_ROW`;
/// `free` holds exactly the indices of free slots that may be reused (a slot
/// whose generation reached `u32::MAX` is retired and never reused);
/// `slots.len() <= max`.
#[derive(Debug)]
pub struct Entities {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: u32,
    max: u32,
}

impl Entities {
    /// An allocator that never holds more than `max` live entities and never
    /// creates more than `max` slots.
    pub fn new(max: u32) -> Self {
        assert!(max < NO_ROW, "entity maximum must be below u32::MAX");
        Entities {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            max,
        }
    }

    pub fn len(&self) -> u32 {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// Allocates an id whose row is `row`.
    pub(crate) fn alloc(&mut self, row: Row) -> Result<EntityId, WorldError> {
        if self.live >= self.max {
            return Err(WorldError::Full { max: self.max });
        }
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                if self.slots.len() as u32 >= self.max {
                    // Only retired slots remain beyond the live ones.
                    return Err(WorldError::Full { max: self.max });
                }
                self.slots.push(Slot {
                    generation: 0,
                    row: NO_ROW,
                });
                self.slots.len() as u32 - 1
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.row = row.0;
        self.live += 1;
        Ok(EntityId {
            index,
            generation: slot.generation,
        })
    }

    /// Frees `id` and returns the row it had.
    pub(crate) fn free(&mut self, id: EntityId) -> Result<Row, WorldError> {
        let row = self.row(id)?;
        let slot = &mut self.slots[id.index as usize];
        slot.row = NO_ROW;
        slot.generation = slot.generation.wrapping_add(1);
        if slot.generation != u32::MAX {
            self.free.push(id.index);
        }
        self.live -= 1;
        Ok(row)
    }

    /// The row of a live entity, or `Stale` when the id was despawned or never existed.
    pub fn row(&self, id: EntityId) -> Result<Row, WorldError> {
        match self.slots.get(id.index as usize) {
            Some(slot) if slot.generation == id.generation && slot.row != NO_ROW => {
                Ok(Row(slot.row))
            }
            _ => Err(WorldError::Stale(id)),
        }
    }

    pub fn contains(&self, id: EntityId) -> bool {
        self.row(id).is_ok()
    }

    /// Points a live entity at a new row (after a swap-remove moved it).
    pub(crate) fn set_row(&mut self, id: EntityId, row: Row) {
        let slot = &mut self.slots[id.index as usize];
        debug_assert!(slot.generation == id.generation && slot.row != NO_ROW);
        slot.row = row.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_are_rejected_after_reuse() {
        let mut e = Entities::new(4);
        let a = e.alloc(Row(0)).unwrap();
        assert_eq!(e.free(a).unwrap(), Row(0));
        let b = e.alloc(Row(0)).unwrap();
        assert_eq!(a.index(), b.index(), "slot is reused");
        assert_ne!(a, b);
        assert!(matches!(e.row(a), Err(WorldError::Stale(_))));
        assert!(matches!(e.free(a), Err(WorldError::Stale(_))));
        assert_eq!(e.row(b).unwrap(), Row(0));
    }

    #[test]
    fn maximum_is_enforced() {
        let mut e = Entities::new(2);
        e.alloc(Row(0)).unwrap();
        let b = e.alloc(Row(1)).unwrap();
        assert!(matches!(e.alloc(Row(2)), Err(WorldError::Full { max: 2 })));
        e.free(b).unwrap();
        assert!(e.alloc(Row(1)).is_ok());
    }

    #[test]
    fn bits_round_trip() {
        let id = EntityId {
            index: 7,
            generation: 3,
        };
        assert_eq!(EntityId::from_bits(id.to_bits()), id);
    }
}
