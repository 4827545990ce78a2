//! Sparse-set columns for optional components.

use crate::entity::EntityId;
use crate::hash::{StateHash, StateHasher};
use crate::tick::Tick;

const ABSENT: u32 = u32::MAX;

/// One optional component kind, stored densely.
///
/// `values`, `ids` and `ticks` are kept in step: row `r` holds the value of
/// entity `ids[r]`, last written at `ticks[r]`. `sparse[e.index()]` is the row
/// of entity index `e` or `ABSENT`; it grows to the largest entity index that
/// ever held this component, which the world's `entities_max` bounds.
/// Insert is O(1) amortised; remove is a swap-remove that fixes up the index
/// of the row that moved.
#[derive(Debug)]
pub struct SparseColumn<T> {
    sparse: Vec<u32>,
    ids: Vec<EntityId>,
    values: Vec<T>,
    ticks: Vec<Tick>,
}

impl<T> Default for SparseColumn<T> {
    fn default() -> Self {
        SparseColumn {
            sparse: Vec::new(),
            ids: Vec::new(),
            values: Vec::new(),
            ticks: Vec::new(),
        }
    }
}

impl<T> SparseColumn<T> {
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn row(&self, id: EntityId) -> Option<usize> {
        let row = *self.sparse.get(id.index() as usize)?;
        (row != ABSENT && self.ids[row as usize] == id).then_some(row as usize)
    }

    pub fn contains(&self, id: EntityId) -> bool {
        self.row(id).is_some()
    }

    pub fn get(&self, id: EntityId) -> Option<&T> {
        self.row(id).map(|r| &self.values[r])
    }

    /// Mutable access; stamps the row with `tick` as changed.
    pub fn get_mut(&mut self, id: EntityId, tick: Tick) -> Option<&mut T> {
        let r = self.row(id)?;
        self.ticks[r] = tick;
        Some(&mut self.values[r])
    }

    /// The tick at which the entity's value was last written.
    pub fn changed_at(&self, id: EntityId) -> Option<Tick> {
        self.row(id).map(|r| self.ticks[r])
    }

    /// Inserts or replaces; returns the previous value.
    ///
    /// The caller guarantees `id` is live in the owning world (the world's
    /// methods check it); a stale slot left by a despawned entity is
    /// overwritten.
    pub(crate) fn insert(&mut self, id: EntityId, value: T, tick: Tick) -> Option<T> {
        let index = id.index() as usize;
        if let Some(r) = self.row(id) {
            self.ticks[r] = tick;
            return Some(std::mem::replace(&mut self.values[r], value));
        }
        if self.sparse.len() <= index {
            self.sparse.resize(index + 1, ABSENT);
        }
        self.sparse[index] = self.values.len() as u32;
        self.ids.push(id);
        self.values.push(value);
        self.ticks.push(tick);
        None
    }

    pub(crate) fn remove(&mut self, id: EntityId) -> Option<T> {
        let r = self.row(id)?;
        self.sparse[id.index() as usize] = ABSENT;
        let last = self.values.len() - 1;
        if r != last {
            let moved = self.ids[last];
            self.sparse[moved.index() as usize] = r as u32;
        }
        self.ids.swap_remove(r);
        self.ticks.swap_remove(r);
        Some(self.values.swap_remove(r))
    }

    /// Entities holding this component, in storage order.
    pub fn ids(&self) -> &[EntityId] {
        &self.ids
    }

    /// Values, in the same order as [`Self::ids`].
    pub fn values(&self) -> &[T] {
        &self.values
    }

    /// Change ticks, in the same order as [`Self::ids`].
    pub fn ticks(&self) -> &[Tick] {
        &self.ticks
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (EntityId, &T)> {
        self.ids.iter().copied().zip(self.values.iter())
    }

    /// Entities whose value was written after `since`.
    pub fn changed_since(&self, since: Tick) -> impl Iterator<Item = (EntityId, &T)> {
        self.iter()
            .zip(self.ticks.iter())
            .filter(move |(_, t)| t.is_newer_than(since))
            .map(|(item, _)| item)
    }
}

impl<T: StateHash> SparseColumn<T> {
    pub(crate) fn hash_into(&self, h: &mut StateHasher) {
        h.write_u64(self.values.len() as u64);
        for ((id, value), tick) in self.iter().zip(&self.ticks) {
            h.write_u64(id.to_bits());
            h.write_u32(tick.0);
            value.hash_state(h);
        }
    }
}
