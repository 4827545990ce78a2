//! The struct-of-arrays world of one instance.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::column::SparseColumn;
use crate::components::{Motion, NetworkId, OptionalColumns, Transform, Velocity};
use crate::entity::{Entities, EntityId, Row};
use crate::error::WorldError;
use crate::hash::{StateHash, StateHasher};
use crate::math::Quat;
use crate::soa::{Vec3Column, Vec3Slices, Vec3SlicesMut};
use crate::tick::Tick;

/// Limits of one world.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorldConfig {
    /// Most entities alive at once; `spawn` fails beyond it.
    pub entities_max: u32,
    /// How many despawns of networked entities are remembered for delta
    /// snapshots. A client whose baseline is older than the oldest
    /// remembered despawn needs a full snapshot.
    pub despawn_log_len: u32,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            entities_max: 65_536,
            despawn_log_len: 4_096,
        }
    }
}

/// All entities of one instance and their components.
///
/// Invariants: the body columns (`ids`, `positions`, `rotations`,
/// `linear_velocities`, `angular_velocities`, `motions`, `network_ids`,
/// `changed`) all have length `entities.len()`; row `r` belongs to entity
/// `ids[r]`, and `entities.row(ids[r]) == Ok(Row(r))`. Despawn swap-removes
/// from every column and re-points the entity that moved into the hole.
#[derive(Debug)]
pub struct World {
    entities: Entities,
    ids: Vec<EntityId>,
    positions: Vec3Column,
    rotations: Vec<Quat>,
    linear_velocities: Vec3Column,
    angular_velocities: Vec3Column,
    motions: Vec<Motion>,
    network_ids: Vec<NetworkId>,
    changed: Vec<Tick>,
    /// Optional components (bodies, colliders, owners, avatars, spawn points).
    pub optional: OptionalColumns,
    tick: Tick,
    next_network_id: u32,
    /// Live networked entities by network id (what clients name them by).
    by_network_id: HashMap<NetworkId, EntityId, BuildHasherDefault<IdHasher>>,
    despawns: DespawnLog,
}

/// Read access to the body columns, all indexed by row.
#[derive(Debug, Clone, Copy)]
pub struct BodyColumns<'w> {
    pub ids: &'w [EntityId],
    pub positions: Vec3Slices<'w>,
    pub rotations: &'w [Quat],
    pub linear_velocities: Vec3Slices<'w>,
    pub angular_velocities: Vec3Slices<'w>,
    pub motions: &'w [Motion],
    pub network_ids: &'w [NetworkId],
    pub changed: &'w [Tick],
}

/// Write access to the body columns for systems. A system that changes a
/// row must stamp `changed[row] = tick` itself (so it can skip rows whose
/// value did not really change). Ids, motions and network ids stay read-only.
#[derive(Debug)]
pub struct BodyColumnsMut<'w> {
    pub tick: Tick,
    pub ids: &'w [EntityId],
    pub positions: Vec3SlicesMut<'w>,
    pub rotations: &'w mut [Quat],
    pub linear_velocities: Vec3SlicesMut<'w>,
    pub angular_velocities: Vec3SlicesMut<'w>,
    pub motions: &'w [Motion],
    pub network_ids: &'w [NetworkId],
    pub changed: &'w mut [Tick],
}

impl World {
    pub fn new(config: WorldConfig) -> Self {
        Self::with_capacity(config, 0)
    }

    /// A world with room for `capacity` entities reserved up front, so
    /// loading a scene does not reallocate column by column.
    pub fn with_capacity(config: WorldConfig, capacity: u32) -> Self {
        let n = capacity.min(config.entities_max) as usize;
        World {
            entities: Entities::new(config.entities_max),
            ids: Vec::with_capacity(n),
            positions: Vec3Column::with_capacity(n),
            rotations: Vec::with_capacity(n),
            linear_velocities: Vec3Column::with_capacity(n),
            angular_velocities: Vec3Column::with_capacity(n),
            motions: Vec::with_capacity(n),
            network_ids: Vec::with_capacity(n),
            changed: Vec::with_capacity(n),
            optional: OptionalColumns::default(),
            tick: Tick::ZERO,
            next_network_id: 1,
            by_network_id: HashMap::with_capacity_and_hasher(n, BuildHasherDefault::default()),
            despawns: DespawnLog::new(config.despawn_log_len as usize),
        }
    }

    /// Number of live entities.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn entities_max(&self) -> u32 {
        self.entities.max()
    }

    /// The current tick: writes are stamped with it.
    pub fn tick(&self) -> Tick {
        self.tick
    }

    /// Starts the next tick and returns it.
    pub fn begin_tick(&mut self) -> Tick {
        self.tick = self.tick.next();
        self.tick
    }

    /// Spawns an entity. `networked` entities get a fresh [`NetworkId`].
    pub fn spawn(
        &mut self,
        transform: Transform,
        velocity: Velocity,
        motion: Motion,
        networked: bool,
    ) -> Result<EntityId, WorldError> {
        check_finite(&transform, &velocity)?;
        let row = Row(self.ids.len() as u32);
        let id = self.entities.alloc(row)?;
        let network_id = if networked {
            let n = NetworkId(self.next_network_id);
            // Saturates: 4 billion spawns in one instance's life is far past
            // any real session; beyond it, entities are simply not networked.
            self.next_network_id = self.next_network_id.saturating_add(1);
            if n.0 == u32::MAX { NetworkId::NONE } else { n }
        } else {
            NetworkId::NONE
        };
        self.ids.push(id);
        self.positions.push(transform.position);
        self.rotations.push(transform.rotation);
        self.linear_velocities.push(velocity.linear);
        self.angular_velocities.push(velocity.angular);
        self.motions.push(motion);
        self.network_ids.push(network_id);
        if !network_id.is_none() {
            self.by_network_id.insert(network_id, id);
        }
        self.changed.push(self.tick);
        Ok(id)
    }

    /// Removes an entity and all its components. Its id is stale from now on.
    pub fn despawn(&mut self, id: EntityId) -> Result<(), WorldError> {
        let row = self.entities.free(id)?.index();
        let network_id = self.network_ids[row];
        let last = self.ids.len() - 1;
        if row != last {
            let moved = self.ids[last];
            self.entities.set_row(moved, Row(row as u32));
        }
        self.ids.swap_remove(row);
        self.positions.swap_remove(row);
        self.rotations.swap_remove(row);
        self.linear_velocities.swap_remove(row);
        self.angular_velocities.swap_remove(row);
        self.motions.swap_remove(row);
        self.network_ids.swap_remove(row);
        self.changed.swap_remove(row);
        self.optional.remove_entity(id);
        if !network_id.is_none() {
            self.by_network_id.remove(&network_id);
            self.despawns.push(self.tick, network_id);
        }
        Ok(())
    }

    /// The live entity clients know as `network_id`.
    pub fn by_network_id(&self, network_id: NetworkId) -> Option<EntityId> {
        self.by_network_id.get(&network_id).copied()
    }

    pub fn contains(&self, id: EntityId) -> bool {
        self.entities.contains(id)
    }

    /// The row of a live entity.
    pub fn row(&self, id: EntityId) -> Result<Row, WorldError> {
        self.entities.row(id)
    }

    pub fn transform(&self, id: EntityId) -> Result<Transform, WorldError> {
        let r = self.row(id)?.index();
        Ok(Transform {
            position: self.positions.get(r),
            rotation: self.rotations[r],
        })
    }

    pub fn velocity(&self, id: EntityId) -> Result<Velocity, WorldError> {
        let r = self.row(id)?.index();
        Ok(Velocity {
            linear: self.linear_velocities.get(r),
            angular: self.angular_velocities.get(r),
        })
    }

    pub fn motion(&self, id: EntityId) -> Result<Motion, WorldError> {
        Ok(self.motions[self.row(id)?.index()])
    }

    pub fn network_id(&self, id: EntityId) -> Result<NetworkId, WorldError> {
        Ok(self.network_ids[self.row(id)?.index()])
    }

    /// The tick at which any body column of the entity was last written.
    pub fn changed_at(&self, id: EntityId) -> Result<Tick, WorldError> {
        Ok(self.changed[self.row(id)?.index()])
    }

    /// Sets the transform; stamps the row only when the value differs.
    /// Physics-driven entities are overwritten by the next physics step: move
    /// them through [`crate::Physics`] instead.
    pub fn set_transform(&mut self, id: EntityId, t: Transform) -> Result<(), WorldError> {
        check_finite(&t, &Velocity::default())?;
        let r = self.row(id)?.index();
        if !(self.positions.get(r).bits_eq(t.position) && self.rotations[r].bits_eq(t.rotation)) {
            self.positions.set(r, t.position);
            self.rotations[r] = t.rotation;
            self.changed[r] = self.tick;
        }
        Ok(())
    }

    /// Sets the velocity; stamps the row only when the value differs.
    pub fn set_velocity(&mut self, id: EntityId, v: Velocity) -> Result<(), WorldError> {
        check_finite(&Transform::default(), &v)?;
        let r = self.row(id)?.index();
        if !(self.linear_velocities.get(r).bits_eq(v.linear)
            && self.angular_velocities.get(r).bits_eq(v.angular))
        {
            self.linear_velocities.set(r, v.linear);
            self.angular_velocities.set(r, v.angular);
            self.changed[r] = self.tick;
        }
        Ok(())
    }

    /// Writes a body's state after a physics step; stamps the row and
    /// returns true only when something really changed. A stale id (the
    /// entity was despawned but its body not yet removed) is ignored.
    pub(crate) fn write_physics_state(&mut self, id: EntityId, t: Transform, v: Velocity) -> bool {
        let Ok(row) = self.row(id) else {
            return false;
        };
        let r = row.index();
        let same = self.positions.get(r).bits_eq(t.position)
            && self.rotations[r].bits_eq(t.rotation)
            && self.linear_velocities.get(r).bits_eq(v.linear)
            && self.angular_velocities.get(r).bits_eq(v.angular);
        if !same {
            self.positions.set(r, t.position);
            self.rotations[r] = t.rotation;
            self.linear_velocities.set(r, v.linear);
            self.angular_velocities.set(r, v.angular);
            self.changed[r] = self.tick;
        }
        !same
    }

    /// Adds (or replaces) an optional component of a live entity, stamped
    /// with the current tick; returns the previous value.
    ///
    /// ```
    /// # use engine::{World, WorldConfig, Transform, Velocity, Motion, Owner, UserIndex};
    /// let mut world = World::new(WorldConfig::default());
    /// let e = world.spawn(Transform::default(), Velocity::default(), Motion::Static, true).unwrap();
    /// world.insert(e, Owner { user: UserIndex(3) }, |c| &mut c.owners).unwrap();
    /// assert_eq!(world.optional.owners.get(e), Some(&Owner { user: UserIndex(3) }));
    /// ```
    pub fn insert<T>(
        &mut self,
        id: EntityId,
        value: T,
        column: impl FnOnce(&mut OptionalColumns) -> &mut SparseColumn<T>,
    ) -> Result<Option<T>, WorldError> {
        self.row(id)?;
        let tick = self.tick;
        Ok(column(&mut self.optional).insert(id, value, tick))
    }

    /// Removes an optional component; `Ok(None)` when the entity lacked it.
    pub fn remove<T>(
        &mut self,
        id: EntityId,
        column: impl FnOnce(&mut OptionalColumns) -> &mut SparseColumn<T>,
    ) -> Result<Option<T>, WorldError> {
        self.row(id)?;
        Ok(column(&mut self.optional).remove(id))
    }

    pub fn columns(&self) -> BodyColumns<'_> {
        BodyColumns {
            ids: &self.ids,
            positions: self.positions.slices(),
            rotations: &self.rotations,
            linear_velocities: self.linear_velocities.slices(),
            angular_velocities: self.angular_velocities.slices(),
            motions: &self.motions,
            network_ids: &self.network_ids,
            changed: &self.changed,
        }
    }

    pub fn columns_mut(&mut self) -> BodyColumnsMut<'_> {
        BodyColumnsMut {
            tick: self.tick,
            ids: &self.ids,
            positions: self.positions.slices_mut(),
            rotations: &mut self.rotations,
            linear_velocities: self.linear_velocities.slices_mut(),
            angular_velocities: self.angular_velocities.slices_mut(),
            motions: &self.motions,
            network_ids: &self.network_ids,
            changed: &mut self.changed,
        }
    }

    /// Rows whose body columns were written after `since`.
    pub fn changed_since(&self, since: Tick) -> impl Iterator<Item = Row> + '_ {
        self.changed
            .iter()
            .enumerate()
            .filter(move |(_, t)| t.is_newer_than(since))
            .map(|(r, _)| Row(r as u32))
    }

    /// Network ids of entities despawned after `since`, or `None` when the
    /// despawn log no longer reaches back that far (the caller must then
    /// resend everything).
    pub fn despawned_since(&self, since: Tick) -> Option<impl Iterator<Item = NetworkId> + '_> {
        self.despawns.since(since)
    }

    /// A hash of the whole simulation state: equal worlds hash equal, and the
    /// hash is stable across runs, machines and builds of the same code.
    pub fn state_hash(&self) -> u64 {
        let mut h = StateHasher::default();
        h.write_u32(self.tick.0);
        h.write_u64(self.ids.len() as u64);
        for r in 0..self.ids.len() {
            h.write_u64(self.ids[r].to_bits());
            self.positions.get(r).hash_state(&mut h);
            self.rotations[r].hash_state(&mut h);
            self.linear_velocities.get(r).hash_state(&mut h);
            self.angular_velocities.get(r).hash_state(&mut h);
            h.write_u8(self.motions[r] as u8);
            h.write_u32(self.network_ids[r].0);
            h.write_u32(self.changed[r].0);
        }
        self.optional.hash_into(&mut h);
        h.finish()
    }
}

fn check_finite(t: &Transform, v: &Velocity) -> Result<(), WorldError> {
    if !t.position.is_finite() {
        return Err(WorldError::NotFinite { what: "position" });
    }
    if !t.rotation.to_array().iter().all(|c| c.is_finite()) {
        return Err(WorldError::NotFinite { what: "rotation" });
    }
    if !(v.linear.is_finite() && v.angular.is_finite()) {
        return Err(WorldError::NotFinite { what: "velocity" });
    }
    Ok(())
}

/// A multiplicative hasher for server-assigned ids. SipHash (the std
/// default) defends against keys an attacker chooses; network ids are
/// handed out by the world, so the cheaper hash is safe and halves the cost
/// of spawn and despawn.
#[derive(Clone, Copy, Debug, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A bounded ring of recent despawns of networked entities.
///
/// Invariant: `entries.len() <= capacity`; entries are in tick order;
/// `forgotten_through` is the newest tick of any entry that fell off.
#[derive(Debug)]
struct DespawnLog {
    entries: VecDeque<(Tick, NetworkId)>,
    capacity: usize,
    forgotten_through: Option<Tick>,
}

impl DespawnLog {
    fn new(capacity: usize) -> Self {
        // Grown as despawns happen (most worlds despawn little), up to
        // `capacity` entries.
        DespawnLog {
            entries: VecDeque::new(),
            capacity,
            forgotten_through: None,
        }
    }

    fn push(&mut self, tick: Tick, id: NetworkId) {
        if self.capacity == 0 {
            self.forgotten_through = Some(tick);
            return;
        }
        if self.entries.len() == self.capacity
            && let Some((t, _)) = self.entries.pop_front()
        {
            self.forgotten_through = Some(t);
        }
        self.entries.push_back((tick, id));
    }

    fn since(&self, since: Tick) -> Option<impl Iterator<Item = NetworkId> + '_> {
        if self
            .forgotten_through
            .is_some_and(|t| t.is_newer_than(since))
        {
            return None;
        }
        Some(
            self.entries
                .iter()
                .filter(move |(t, _)| t.is_newer_than(since))
                .map(|&(_, id)| id),
        )
    }
}
