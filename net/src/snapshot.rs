//! Snapshots: what each client is sent every tick.
//!
//! Per instance, once a tick, [`WorldFrame::capture`] quantises every
//! networked entity (sorted by network id). Per client, a
//! [`ClientSnapshots`] tracks each entity in the client's view: the state
//! the client has acknowledged (and its tick), the state last sent, and the
//! priority it has built up while waiting. Each tick one pass over the frame
//! and that table decides what to send (and, when everything fits, writes
//! it):
//! - **interest**: only entities within `interest_radius_m` of the client's
//!   avatar, plus entities marked [`engine::Global`]; entities leaving it are
//!   listed as removed until a snapshot listing them is acknowledged;
//! - **delta**: an entity is sent while the client may hold anything other
//!   than its current state, as a delta against its own acknowledged state
//!   (per entity, so an entity at rest costs nothing however old its
//!   acknowledgement); positions go as 8- or 16-bit differences when they
//!   fit, else absolute;
//! - **budget**: changed entities are sent in order of an accumulated
//!   priority (grows every tick an entity waits, faster when near) until the
//!   datagram budget is full; the rest wait, keep their priority, and so
//!   arrive within a bounded number of ticks. A snapshot never exceeds the
//!   budget, so it is never fragmented.
//!
//! The server keeps, per client, that table and the entries of the
//! snapshots not yet acknowledged (only what they carried); the client keeps
//! its entities and the entries of the snapshots of its last `history_len`
//! ticks, which is where it finds the baselines named on the wire. When the
//! changed entities do not all fit the budget, a second pass chooses among
//! them. Encoding reuses every buffer: in steady state it does not allocate.

use std::collections::VecDeque;

use engine::{Vec3, World};
use rkyv::rancor;
use rkyv::ser::allocator::Arena;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Serialize};

use crate::error::ProtocolError;
use crate::frame::{FRAME_HEADER_LEN, MessageKind, write_header};
use crate::quant::{self, Quantizer};

/// Settings of snapshot replication.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SnapshotConfig {
    /// Entities farther than this from the client's avatar are not sent.
    pub interest_radius_m: f32,
    /// Most bytes in one snapshot datagram, frame header included. Clients
    /// refuse snapshot frames over [`crate::SNAPSHOT_DATAGRAM_BYTES_MAX`]
    /// (the default), so only benchmarks raise it.
    pub budget_bytes: usize,
    /// How many ticks back a baseline the client has since received newer
    /// states of may be, how many snapshots the server keeps
    /// unacknowledged per client, and how long a removal is repeated
    /// without acknowledgement. Clients keep the entries of the snapshots
    /// of this many ticks ([`SnapshotReceiver::new`]); a client that keeps
    /// fewer refuses the snapshots whose deltas it cannot resolve, and
    /// catches up once those entities come absolute.
    pub history_len: usize,
    /// Most entities one client's view holds (the nearest are kept).
    pub view_entities_max: usize,
    /// Send linear and angular velocities (for client-side extrapolation).
    pub velocities: bool,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            interest_radius_m: 50.0,
            budget_bytes: crate::SNAPSHOT_DATAGRAM_BYTES_MAX,
            history_len: 32,
            view_entities_max: 1024,
            velocities: false,
        }
    }
}

/// One entity's quantised state (see [`crate::quant`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntityState {
    pub id: u32,
    pub position: [u32; 3],
    pub rotation: [u16; 3],
    pub linear_velocity: [i16; 3],
    pub angular_velocity: [i16; 3],
}

// Per-entity mask bits.
const MASK_POS_I8: u8 = 1;
const MASK_POS_I16: u8 = 2;
const MASK_POS_U32: u8 = 3;
const MASK_POS: u8 = 3;
const MASK_ROT: u8 = 1 << 2;
const MASK_LIN_VEL: u8 = 1 << 3;
const MASK_ANG_VEL: u8 = 1 << 4;
/// Bits 5–7 of a mask: the entry's baseline, an index into the snapshot's
/// `baselines` table, or [`BASELINE_ESCAPE`].
const MASK_BASELINE_SHIFT: u8 = 5;
/// Baseline index 7: the baseline's age in ticks follows the id gap in `ids`.
const BASELINE_ESCAPE: u8 = 7;
/// Most entries of a snapshot's `baselines` table.
pub const SNAPSHOT_BASELINES_MAX: usize = BASELINE_ESCAPE as usize;

/// Bytes of a snapshot besides its per-entity data: the frame header, the
/// archive's root (ten vectors of 8 bytes), a full baseline table and the
/// worst-case alignment padding between sections.
pub const SNAPSHOT_FIXED_BYTES: usize =
    FRAME_HEADER_LEN + 10 * 8 + SNAPSHOT_BASELINES_MAX * 4 + 10 * 3 + 8;

/// The snapshot payload: struct-of-arrays sections, each a typed array a
/// browser can view in place. Entries are in increasing id order; `masks`
/// says per entry which of the other sections hold its fields and which
/// baseline it is a delta against.
#[derive(Archive, Serialize, Debug, Default, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct SnapshotBody {
    /// The ticks entries are deltas against, indexed by mask bits 5–7; a
    /// tick of 0 marks an absolute entry (no baseline). At most
    /// [`SNAPSHOT_BASELINES_MAX`].
    pub baselines: Vec<u32>,
    /// Per entry, the LEB128 gap from the previous entry's id (the first
    /// from 0), then, when its baseline index is 7, the LEB128 age of its
    /// baseline in ticks.
    pub ids: Vec<u8>,
    pub masks: Vec<u8>,
    pub pos_i8: Vec<i8>,
    pub pos_i16: Vec<i16>,
    pub pos_u32: Vec<u32>,
    pub rotations: Vec<u16>,
    pub linear_velocities: Vec<i16>,
    pub angular_velocities: Vec<i16>,
    /// LEB128 gaps of the ids the client must drop (despawned, or out of
    /// interest); an id the client does not hold is ignored.
    pub removed: Vec<u8>,
}

impl SnapshotBody {
    /// Sections sized so that no snapshot within `budget_bytes` makes one grow.
    fn with_budget(budget_bytes: usize) -> Self {
        SnapshotBody {
            baselines: Vec::with_capacity(SNAPSHOT_BASELINES_MAX),
            ids: Vec::with_capacity(budget_bytes),
            masks: Vec::with_capacity(budget_bytes),
            pos_i8: Vec::with_capacity(budget_bytes),
            pos_i16: Vec::with_capacity(budget_bytes / 2),
            pos_u32: Vec::with_capacity(budget_bytes / 4),
            rotations: Vec::with_capacity(budget_bytes / 2),
            linear_velocities: Vec::with_capacity(budget_bytes / 2),
            angular_velocities: Vec::with_capacity(budget_bytes / 2),
            removed: Vec::with_capacity(budget_bytes),
        }
    }

    /// Empties every section but the baseline table.
    fn clear_entries(&mut self) {
        self.ids.clear();
        self.masks.clear();
        self.pos_i8.clear();
        self.pos_i16.clear();
        self.pos_u32.clear();
        self.rotations.clear();
        self.linear_velocities.clear();
        self.angular_velocities.clear();
        self.removed.clear();
    }
}

/// The networked entities of an instance at one tick, quantised, sorted by id.
#[derive(Debug, Default)]
pub struct WorldFrame {
    tick: u32,
    states: Vec<EntityState>,
    positions: Vec<Vec3>,
    global: Vec<bool>,
    order: Vec<(u32, u32)>,
}

impl WorldFrame {
    pub fn with_capacity(n: usize) -> Self {
        WorldFrame {
            tick: 0,
            states: Vec::with_capacity(n),
            positions: Vec::with_capacity(n),
            global: Vec::with_capacity(n),
            order: Vec::with_capacity(n),
        }
    }

    pub fn tick(&self) -> u32 {
        self.tick
    }

    pub fn states(&self) -> &[EntityState] {
        &self.states
    }

    /// Quantises the world's networked entities at its current tick.
    pub fn capture(&mut self, world: &World, quantizer: &Quantizer) {
        let c = world.columns();
        self.tick = world.tick().0;
        self.order.clear();
        for (row, id) in c.network_ids.iter().enumerate() {
            if !id.is_none() {
                self.order.push((id.0, row as u32));
            }
        }
        self.order.sort_unstable_by_key(|&(id, _)| id);
        self.states.clear();
        self.positions.clear();
        self.global.clear();
        for &(id, row) in &self.order {
            let r = row as usize;
            let position = c.positions.get(r);
            self.states.push(EntityState {
                id,
                position: quantizer.position(position),
                rotation: quant::rotation(c.rotations[r]),
                linear_velocity: quant::linear_velocity(c.linear_velocities.get(r)),
                angular_velocity: quant::angular_velocity(c.angular_velocities.get(r)),
            });
            self.positions.push(position);
            self.global.push(world.optional.globals.contains(c.ids[r]));
        }
    }
}

/// What the server knows about one entity of a client's view.
#[derive(Clone, Copy, Debug, Default)]
struct Tracked {
    id: u32,
    /// Tick of the newest acknowledged snapshot that carried the entity
    /// (0: none since it entered the view); `acked` is that state.
    acked_tick: u32,
    /// Tick of the last snapshot that carried it (0: none since it entered
    /// the view); `sent` is that state.
    sent_tick: u32,
    /// Tick of the last send before `sent_tick` whose state differs from
    /// `sent` (0: none): sends after the acknowledged one all carried `sent`
    /// when this is not after `acked_tick`.
    differing_tick: u32,
    /// The tick the entity (re)entered the view: acknowledgements of older
    /// snapshots say nothing about it.
    since_tick: u32,
    /// First tick its removal was sent (0: in view).
    removed_tick: u32,
    /// Accumulated priority while it waits for room in a snapshot.
    priority: f32,
    /// Its removal was acknowledged (or it left before it was ever sent):
    /// dropped at the next rebuild of the table.
    dead: bool,
    /// Some snapshot carried it, so the client may hold it.
    ever_sent: bool,
    acked: EntityState,
    sent: EntityState,
}

/// What one unacknowledged snapshot carried, to apply when it is acknowledged.
#[derive(Debug, Default)]
struct SentRecord {
    tick: u32,
    /// The table layout the slots refer to ([`ClientSnapshots::layout`]).
    layout: u32,
    /// Table slots and the states sent, in id order.
    slots: Vec<u32>,
    states: Vec<EntityState>,
    /// Table slots and ids of the removals sent.
    removed_slots: Vec<u32>,
    removed: Vec<u32>,
}

impl SentRecord {
    fn clear(&mut self, tick: u32, layout: u32) {
        self.tick = tick;
        self.layout = layout;
        self.slots.clear();
        self.states.clear();
        self.removed_slots.clear();
        self.removed.clear();
    }
}

/// What [`ClientSnapshots::fill_body`] wrote.
#[derive(Clone, Copy, Debug, Default)]
struct BodySummary {
    sent: u32,
    absolute: u32,
    escaped: u32,
    newest_baseline: u32,
    /// Bit `i`: some entry uses baseline table entry `i`.
    table_used: u8,
}

/// The row a pending entry or record slot names: a table slot, or with
/// [`ADDED`] an entry new this tick.
fn row_mut<'a>(table: &'a mut [Tracked], added: &'a mut [Tracked], slot: u32) -> &'a mut Tracked {
    if slot & ADDED != 0 {
        &mut added[(slot & !ADDED) as usize]
    } else {
        &mut table[slot as usize]
    }
}

/// Marks a [`Pending::slot`] that indexes [`ScanOut::added`].
const ADDED: u32 = 1 << 31;

/// An entity that changed since its baseline and waits to be sent.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// Its table slot, or [`ADDED`] | its index among the new entries.
    slot: u32,
    frame_index: u32,
    id: u32,
    /// The tick its entry is a delta against (0: absolute).
    baseline: u32,
    dist2: f32,
    /// Carried priority, plus this tick's weight when the budget is short.
    priority: f32,
    /// Field bits of its entry.
    mask: u8,
    /// Bytes of its entry besides the id gap (escaped baseline age included).
    data_bytes: u8,
}

/// What the last encoded snapshot held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Entities with an entry (new or changed).
    pub entities_sent: u32,
    /// Entries sent absolute (no baseline: new to the client, or its
    /// baseline too old).
    pub absolute: u32,
    /// Ids the client was told to drop.
    pub removed: u32,
    /// Changed entities left for later snapshots by the budget.
    pub waiting: u32,
    /// Whole frame bytes.
    pub bytes: u32,
    /// Entries of the baseline table in use (absolute aside).
    pub baselines: u32,
    /// Entries whose baseline is not in the table (its age is sent instead).
    pub escaped: u32,
    /// The newest baseline tick of an entry (0: none).
    pub newest_baseline: u32,
}

/// Snapshot state of one client: per entity of its view what it has
/// acknowledged and what was sent since, and the entries of the snapshots
/// it has not acknowledged yet (at most [`SnapshotConfig::history_len`]).
///
/// Memory per client is the table (about 110 bytes per entity in view) plus
/// 40 bytes per entry of each unacknowledged snapshot (about one snapshot
/// per tick of round trip, holding only what changed). The scratch work of
/// encoding lives in the shared [`SnapshotEncoder`].
#[derive(Debug)]
pub struct ClientSnapshots {
    stats: SnapshotStats,
    config: SnapshotConfig,
    /// Entities of the view and those being removed, sorted by id.
    table: Vec<Tracked>,
    /// Bumped whenever `table` is rebuilt (slots move).
    layout: u32,
    /// Table entries marked dead since the last rebuild.
    dead: u32,
    /// Unacknowledged snapshots, oldest first, ticks increasing.
    records: VecDeque<SentRecord>,
    /// Buffers of released records, reused for the next ones.
    spare: Vec<SentRecord>,
    acked: Option<u32>,
    last_tick: u32,
}

/// Buffers for encoding snapshots, shared by every client of a shard (one
/// encode runs at a time; the bytes it returns are written out before the
/// next). Reused: in steady state encoding does not allocate.
pub struct SnapshotEncoder {
    scan: ScanOut,
    pending: Vec<Pending>,
    selected: Vec<bool>,
    order: Vec<(u32, f32)>,
    distances: Vec<f32>,
    /// Distinct baseline ticks of the pending entries and their counts.
    baseline_counts: BaselineCounts,
    /// Bytes of all pending entries, id gaps to the previous pending one.
    total_bytes: usize,
    /// A table being rebuilt; swapped with a client's.
    table: Vec<Tracked>,
    body: SnapshotBody,
    out: AlignedVec<16>,
    arena: Arena,
}

impl Default for SnapshotEncoder {
    fn default() -> Self {
        SnapshotEncoder {
            scan: ScanOut::default(),
            pending: Vec::new(),
            selected: Vec::new(),
            order: Vec::new(),
            distances: Vec::new(),
            baseline_counts: BaselineCounts::default(),
            total_bytes: 0,
            table: Vec::new(),
            body: SnapshotBody::with_budget(crate::SNAPSHOT_DATAGRAM_BYTES_MAX),
            out: AlignedVec::with_capacity(crate::SNAPSHOT_DATAGRAM_BYTES_MAX + 64),
            arena: Arena::new(),
        }
    }
}

impl std::fmt::Debug for SnapshotEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotEncoder")
            .field("pending", &self.pending.capacity())
            .field("table", &self.table.capacity())
            .finish_non_exhaustive()
    }
}

/// What the pass over the view found besides changed entities.
#[derive(Debug, Default)]
struct ScanOut {
    /// Entities new to the view, in id order.
    added: Vec<Tracked>,
    /// Ids to remove and their table slots, in id order.
    removed: Vec<u32>,
    removed_slots: Vec<u32>,
}

/// The squared distance within which entities are in the view, and how
/// many entities exactly at it still fit: everything in range unless
/// more than `view_entities_max` are, then the nearest.
fn view_cutoff(
    distances: &mut Vec<f32>,
    config: &SnapshotConfig,
    frame: &WorldFrame,
    viewer: Vec3,
) -> (f32, usize) {
    let max = config.view_entities_max;
    if frame.states.len() <= max {
        return (f32::INFINITY, 0);
    }
    let r2 = config.interest_radius_m * config.interest_radius_m;
    distances.clear();
    distances.extend(
        frame
            .positions
            .iter()
            .zip(&frame.global)
            .map(|(p, &g)| (distance2(*p, viewer), g))
            .filter(|&(d, g)| g || d <= r2)
            .map(|(d, _)| d),
    );
    if distances.len() <= max {
        return (f32::INFINITY, 0);
    }
    if max == 0 {
        return (f32::NEG_INFINITY, 0);
    }
    let (_, &mut cutoff, _) = distances.select_nth_unstable_by(max - 1, f32::total_cmp);
    let below = distances.iter().filter(|&&d| d < cutoff).count();
    (cutoff, max - below)
}

/// How many pending entries use each baseline tick: by age for the recent
/// ones (one add each), in a short list for older ones.
#[derive(Debug)]
struct BaselineCounts {
    absolute: u32,
    /// Index: the snapshot's tick minus the baseline tick.
    by_age: [u32; 64],
    /// Older baseline ticks (at most a few hundred; entries of the rest
    /// escape) and their counts.
    older: Vec<(u32, u32)>,
    /// Every counted tick and its count, absolute (tick 0) first.
    all: Vec<(u32, u32)>,
}

impl Default for BaselineCounts {
    fn default() -> Self {
        BaselineCounts {
            absolute: 0,
            by_age: [0; 64],
            older: Vec::new(),
            all: Vec::new(),
        }
    }
}

impl BaselineCounts {
    fn clear(&mut self) {
        self.absolute = 0;
        self.by_age = [0; 64];
        self.older.clear();
    }

    #[inline(always)]
    fn count(&mut self, tick: u32, baseline: u32) {
        if baseline == 0 {
            self.absolute += 1;
            return;
        }
        let age = (tick - baseline) as usize;
        if age < self.by_age.len() {
            self.by_age[age] += 1;
            return;
        }
        const OLDER_MAX: usize = 256;
        if let Some(c) = self.older.iter_mut().find(|c| c.0 == baseline) {
            c.1 += 1;
        } else if self.older.len() < OLDER_MAX {
            self.older.push((baseline, 1));
        }
    }

    /// Gathers the counted ticks into `all`.
    fn gather(&mut self, tick: u32) -> &mut Vec<(u32, u32)> {
        self.all.clear();
        if self.absolute > 0 {
            self.all.push((0, self.absolute));
        }
        for (age, &n) in self.by_age.iter().enumerate() {
            if n > 0 {
                self.all.push((tick - age as u32, n));
            }
        }
        self.all.extend_from_slice(&self.older);
        &mut self.all
    }
}

/// Bytes of the removed ids' LEB128 gaps.
fn removed_bytes(removed: &[u32]) -> usize {
    let mut prev = 0;
    removed
        .iter()
        .map(|&id| {
            let b = varint_len(id - prev);
            prev = id;
            b
        })
        .sum()
}

/// Writes the removals into the body and the record.
fn write_removed(body: &mut SnapshotBody, record: &mut SentRecord, scan: &ScanOut) {
    let mut prev = 0u32;
    for &id in &scan.removed {
        push_varint(&mut body.removed, id - prev);
        prev = id;
    }
    record.removed.extend_from_slice(&scan.removed);
    record
        .removed_slots
        .extend_from_slice(&scan.removed_slots[..scan.removed.len()]);
}

/// Writes entries into a snapshot body and what they carried into the
/// snapshot's record, counting their bytes. The body's sections are moved
/// into the writer while it works (stores through one buffer then cannot
/// alias another's length) and back by [`EntryWriter::finish`].
struct EntryWriter<'a> {
    body: &'a mut SnapshotBody,
    record: &'a mut SentRecord,
    tick: u32,
    /// Add baseline ticks to the table as they come (the direct path);
    /// else the table is chosen beforehand and other ticks escape.
    grow_table: bool,
    table: [u32; SNAPSHOT_BASELINES_MAX],
    table_len: usize,
    last_base: (u32, u8),
    prev_id: u32,
    /// Entry bytes written so far.
    bytes: usize,
    summary: BodySummary,
    ids: Vec<u8>,
    masks: Vec<u8>,
    pos_i8: Vec<i8>,
    pos_i16: Vec<i16>,
    pos_u32: Vec<u32>,
    rotations: Vec<u16>,
    linear: Vec<i16>,
    angular: Vec<i16>,
    slots: Vec<u32>,
    states: Vec<EntityState>,
}

impl<'a> EntryWriter<'a> {
    /// Empties the body (and, when `grow_table`, its baseline table).
    fn new(
        body: &'a mut SnapshotBody,
        record: &'a mut SentRecord,
        tick: u32,
        grow_table: bool,
    ) -> Self {
        body.clear_entries();
        if grow_table {
            body.baselines.clear();
        }
        let mut table = [0; SNAPSHOT_BASELINES_MAX];
        let table_len = body.baselines.len().min(SNAPSHOT_BASELINES_MAX);
        table[..table_len].copy_from_slice(&body.baselines[..table_len]);
        EntryWriter {
            ids: std::mem::take(&mut body.ids),
            masks: std::mem::take(&mut body.masks),
            pos_i8: std::mem::take(&mut body.pos_i8),
            pos_i16: std::mem::take(&mut body.pos_i16),
            pos_u32: std::mem::take(&mut body.pos_u32),
            rotations: std::mem::take(&mut body.rotations),
            linear: std::mem::take(&mut body.linear_velocities),
            angular: std::mem::take(&mut body.angular_velocities),
            slots: std::mem::take(&mut record.slots),
            states: std::mem::take(&mut record.states),
            body,
            record,
            tick,
            grow_table,
            table,
            table_len,
            last_base: (u32::MAX, 0),
            prev_id: 0,
            bytes: 0,
            summary: BodySummary::default(),
        }
    }

    /// The baseline index of `baseline`, adding it to a growing table.
    #[inline(always)]
    fn base_index(&mut self, baseline: u32) -> u8 {
        if self.last_base.0 == baseline {
            return self.last_base.1;
        }
        let index = match self.table[..self.table_len]
            .iter()
            .position(|&b| b == baseline)
        {
            Some(i) => i as u8,
            None if self.grow_table && self.table_len < SNAPSHOT_BASELINES_MAX => {
                self.table[self.table_len] = baseline;
                self.table_len += 1;
                (self.table_len - 1) as u8
            }
            None => BASELINE_ESCAPE,
        };
        self.last_base = (baseline, index);
        index
    }

    /// Writes `p`'s entry (`new` against `base`); returns the entry bytes
    /// written so far.
    #[inline(always)]
    fn write(&mut self, p: &Pending, base: Option<&EntityState>, new: &EntityState) -> usize {
        let gap = new.id - self.prev_id;
        self.prev_id = new.id;
        push_varint(&mut self.ids, gap);
        let mut bytes = varint_len(gap) + usize::from(entry_data_bytes(p.mask));
        let index = self.base_index(p.baseline);
        if index == BASELINE_ESCAPE {
            let age = self.tick - p.baseline;
            push_varint(&mut self.ids, age);
            bytes += varint_len(age);
            self.summary.escaped += 1;
        } else {
            self.summary.table_used |= 1 << index;
        }
        self.bytes += bytes;
        self.summary.sent += 1;
        self.summary.absolute += u32::from(p.baseline == 0);
        self.summary.newest_baseline = self.summary.newest_baseline.max(p.baseline);
        self.masks.push(p.mask | index << MASK_BASELINE_SHIFT);
        match (p.mask & MASK_POS, base) {
            (MASK_POS_I8, Some(old)) => self
                .pos_i8
                .extend_from_slice(&position_delta(old.position, new.position).map(|d| d as i8)),
            (MASK_POS_I16, Some(old)) => self
                .pos_i16
                .extend_from_slice(&position_delta(old.position, new.position).map(|d| d as i16)),
            (MASK_POS_U32, _) => self.pos_u32.extend_from_slice(&new.position),
            _ => {}
        }
        if p.mask & MASK_ROT != 0 {
            self.rotations.extend_from_slice(&new.rotation);
        }
        if p.mask & MASK_LIN_VEL != 0 {
            self.linear.extend_from_slice(&new.linear_velocity);
        }
        if p.mask & MASK_ANG_VEL != 0 {
            self.angular.extend_from_slice(&new.angular_velocity);
        }
        self.slots.push(p.slot);
        self.states.push(*new);
        self.bytes
    }

    /// Puts the sections back (with the table as grown) and returns what
    /// was written.
    fn finish(self) -> BodySummary {
        let body = self.body;
        body.ids = self.ids;
        body.masks = self.masks;
        body.pos_i8 = self.pos_i8;
        body.pos_i16 = self.pos_i16;
        body.pos_u32 = self.pos_u32;
        body.rotations = self.rotations;
        body.linear_velocities = self.linear;
        body.angular_velocities = self.angular;
        if self.grow_table {
            body.baselines.clear();
            body.baselines
                .extend_from_slice(&self.table[..self.table_len]);
        }
        self.record.slots = self.slots;
        self.record.states = self.states;
        self.summary
    }
}

/// The state the client holds once sent `s`: velocities only when they are sent.
fn visible(s: &EntityState, velocities: bool) -> EntityState {
    if velocities {
        *s
    } else {
        EntityState {
            linear_velocity: [0; 3],
            angular_velocity: [0; 3],
            ..*s
        }
    }
}

fn distance2(a: Vec3, b: Vec3) -> f32 {
    let d = a.minus(b);
    d.x * d.x + d.y * d.y + d.z * d.z
}

impl ClientSnapshots {
    /// A client that holds nothing yet. Allocates nothing until its first
    /// snapshot; its buffers then grow to what its view needs.
    pub fn new(config: SnapshotConfig) -> Self {
        ClientSnapshots {
            stats: SnapshotStats::default(),
            config,
            table: Vec::new(),
            layout: 0,
            dead: 0,
            records: VecDeque::new(),
            spare: Vec::new(),
            acked: None,
            last_tick: 0,
        }
    }

    /// Records the client's acknowledgement of the snapshot of `tick` (from
    /// the `tick` field of its input frames): what it carried becomes the
    /// baseline of each entity in it, and the removals it listed are done.
    /// Older, repeated or unknown ticks are ignored.
    pub fn ack(&mut self, tick: u32) {
        if self.acked.is_some_and(|a| a >= tick) {
            return;
        }
        let Ok(i) = self.records.binary_search_by_key(&tick, |r| r.tick) else {
            return;
        };
        self.acked = Some(tick);
        for _ in 0..i {
            self.release_front();
        }
        let Some(record) = self.records.pop_front() else {
            return;
        };
        let same_layout = record.layout == self.layout;
        for (&slot, state) in record.slots.iter().zip(&record.states) {
            let Some(e) = self.entry_mut(same_layout, slot, state.id) else {
                continue;
            };
            if !e.dead && e.removed_tick == 0 && e.since_tick <= tick && e.acked_tick < tick {
                e.acked = *state;
                e.acked_tick = tick;
            }
        }
        for (&slot, &id) in record.removed_slots.iter().zip(&record.removed) {
            let Some(e) = self.entry_mut(same_layout, slot, id) else {
                continue;
            };
            if !e.dead && e.removed_tick != 0 && e.removed_tick <= tick {
                e.dead = true;
                self.dead += 1;
            }
        }
        self.spare.push(record);
    }

    /// The table entry of `id`: at `slot` when the table was not rebuilt
    /// since, else found by id.
    fn entry_mut(&mut self, same_layout: bool, slot: u32, id: u32) -> Option<&mut Tracked> {
        let i = if same_layout {
            slot as usize
        } else {
            self.table.binary_search_by_key(&id, |e| e.id).ok()?
        };
        self.table.get_mut(i).filter(|e| e.id == id)
    }

    /// What the last snapshot held (for metrics and tests).
    pub fn last_stats(&self) -> SnapshotStats {
        self.stats
    }

    /// The newest tick the client acknowledged.
    pub fn acked(&self) -> Option<u32> {
        self.acked
    }

    /// Snapshots sent and not acknowledged yet (their entries are kept).
    pub fn unacknowledged(&self) -> usize {
        self.records.len()
    }

    /// Entities the server tracks for this client: its view, plus those
    /// whose removal is not acknowledged yet.
    pub fn tracked(&self) -> usize {
        self.table.len()
    }

    fn release_front(&mut self) {
        if let Some(r) = self.records.pop_front() {
            self.spare.push(r);
        }
    }

    /// Encodes this tick's snapshot for a client whose avatar is at `viewer`.
    /// The bytes are a whole frame in `enc`'s buffer, valid until its next
    /// use. Ticks must increase from one call to the next.
    pub fn encode<'e>(
        &mut self,
        enc: &'e mut SnapshotEncoder,
        frame: &WorldFrame,
        viewer: Vec3,
        sequence: u32,
    ) -> Result<&'e [u8], ProtocolError> {
        let tick = frame.tick;
        if tick <= self.last_tick {
            return Err(ProtocolError::InvalidArchive {
                kind: MessageKind::Snapshot,
                reason: format!(
                    "snapshot tick {tick} is not after the last one encoded ({})",
                    self.last_tick
                ),
            });
        }
        let history = self.config.history_len.max(2) as u32;
        // Snapshots too old to serve as a baseline, and room for this one.
        while self
            .records
            .front()
            .is_some_and(|r| tick - r.tick >= history)
            || self.records.len() >= history as usize
        {
            self.release_front();
        }
        let mut record = self.spare.pop().unwrap_or_default();
        record.clear(tick, self.layout);
        // First try writing every changed entity straight into the snapshot
        // as the pass finds it (small views always fit). If the budget runs
        // out, start again: collect them, choose by priority, then write.
        // A client whose last snapshot overflowed goes straight to choosing.
        let direct = if self.stats.waiting == 0 {
            self.write_all(enc, frame, viewer, history, &mut record)
        } else {
            None
        };
        let (summary, waiting) = match direct {
            Some(summary) => (summary, 0),
            None => {
                record.clear(tick, self.layout);
                self.scan_pending(enc, frame, viewer, history);
                enc.assign_baselines(tick);
                enc.select_within_budget(self.config.budget_bytes);
                let summary = self.write_selected(enc, frame, &mut record);
                (summary, enc.pending.len() as u32 - summary.sent)
            }
        };
        // The table now records the entries as sent. Should the frame fail
        // its checks below (it cannot: sizes are counted exactly), the table
        // would merely resend what the client did not get.
        self.finish_commit(enc, &record, frame.tick);
        enc.out.clear();
        enc.out.resize(FRAME_HEADER_LEN, 0);
        let serialized = rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(
            &enc.body,
            &mut enc.out,
            enc.arena.acquire(),
        );
        if let Err(e) = serialized {
            self.spare.push(record);
            return Err(ProtocolError::InvalidArchive {
                kind: MessageKind::Snapshot,
                reason: e.to_string(),
            });
        }
        let len = enc.out.len() - FRAME_HEADER_LEN;
        if enc.out.len() > self.config.budget_bytes {
            self.spare.push(record);
            return Err(ProtocolError::TooLarge {
                kind: MessageKind::Snapshot,
                len,
                max: self.config.budget_bytes - FRAME_HEADER_LEN,
            });
        }
        write_header(
            enc.out.as_mut_slice(),
            MessageKind::Snapshot,
            len,
            sequence,
            tick,
        );
        self.records.push_back(record);
        self.last_tick = tick;
        let used = enc
            .body
            .baselines
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b != 0 && summary.table_used & (1 << i) != 0)
            .count() as u32;
        self.stats = SnapshotStats {
            entities_sent: summary.sent,
            absolute: summary.absolute,
            removed: enc.scan.removed.len() as u32,
            waiting,
            bytes: enc.out.len() as u32,
            baselines: used,
            escaped: summary.escaped,
            newest_baseline: summary.newest_baseline,
        };
        Ok(enc.out.as_slice())
    }

    /// The fused pass: walks the frame's entities and the client's table
    /// together (both sorted by id) and sorts every entity into one of:
    /// out of the view (listed in `out.removed`), unchanged for the client
    /// (skipped), or changed: handed to `changed` with its entry's fields
    /// and baseline (new entities also go to `out.added`). Stops early, and
    /// returns false, when `changed` does. Marks the table as it goes
    /// (removals, re-entries, settled priorities) in ways a second pass over
    /// the same frame repeats exactly.
    #[inline(always)]
    fn scan<F>(
        &mut self,
        out: &mut ScanOut,
        distances: &mut Vec<f32>,
        frame: &WorldFrame,
        viewer: Vec3,
        history: u32,
        mut changed: F,
    ) -> bool
    where
        F: FnMut(&Pending, Option<&EntityState>, &EntityState) -> bool,
    {
        out.added.clear();
        out.removed.clear();
        out.removed_slots.clear();
        let tick = frame.tick;
        let velocities = self.config.velocities;
        let radius2 = self.config.interest_radius_m * self.config.interest_radius_m;
        let (cutoff2, mut ties) = view_cutoff(distances, &self.config, frame, viewer);
        let table = &mut self.table[..];
        let mut dead = 0u32;
        let mut leave = |e: &mut Tracked, slot: usize, out: &mut ScanOut| {
            if e.dead {
                return;
            }
            if e.removed_tick == 0 {
                if !e.ever_sent {
                    // The client never had it: nothing to remove.
                    e.dead = true;
                    dead += 1;
                    return;
                }
                e.removed_tick = tick;
            } else if tick - e.removed_tick >= history {
                // Repeated for `history` ticks and never acknowledged: the
                // client acknowledges nothing (it will time out), or its
                // round trip outlasts the snapshots kept. Stop, so that
                // what a silent client costs stays bounded; should it come
                // back, an entity it missed the removal of stays on it.
                e.dead = true;
                dead += 1;
                return;
            }
            out.removed.push(e.id);
            out.removed_slots.push(slot as u32);
        };
        let mut t = 0usize;
        let mut complete = true;
        for (fi, state) in frame.states.iter().enumerate() {
            while t < table.len() && table[t].id < state.id {
                leave(&mut table[t], t, out);
                t += 1;
            }
            let slot = (t < table.len() && table[t].id == state.id).then(|| {
                t += 1;
                t - 1
            });
            let dist2 = distance2(frame.positions[fi], viewer);
            let wanted = (frame.global[fi] || dist2 <= radius2)
                && (dist2 < cutoff2 || (dist2 == cutoff2 && ties > 0));
            if !wanted {
                if let Some(s) = slot {
                    leave(&mut table[s], s, out);
                }
                continue;
            }
            if dist2 == cutoff2 {
                ties = ties.saturating_sub(1);
            }
            let current = visible(state, velocities);
            let Some(s) = slot.filter(|&s| !table[s].dead) else {
                let p = Pending {
                    slot: ADDED | out.added.len() as u32,
                    frame_index: fi as u32,
                    id: state.id,
                    baseline: 0,
                    dist2,
                    priority: 0.0,
                    mask: entry_mask(None, &current, velocities),
                    data_bytes: 0,
                };
                out.added.push(Tracked {
                    id: state.id,
                    since_tick: tick,
                    ..Tracked::default()
                });
                if !changed(&p, None, &current) {
                    complete = false;
                    break;
                }
                continue;
            };
            let e = &mut table[s];
            if e.removed_tick != 0 {
                // Back in view before its removal was acknowledged: the
                // client may or may not hold it, so it starts afresh.
                *e = Tracked {
                    id: e.id,
                    since_tick: tick,
                    ever_sent: true,
                    ..Tracked::default()
                };
            }
            if e.acked_tick != 0
                && current == e.acked
                && current == e.sent
                && e.differing_tick <= e.acked_tick
            {
                // Whatever the client holds of it is its current state.
                e.priority = 0.0;
                continue;
            }
            let usable =
                e.acked_tick != 0 && (e.sent_tick == e.acked_tick || tick - e.acked_tick < history);
            let (base, baseline) = if usable {
                (Some(&e.acked), e.acked_tick)
            } else {
                (None, 0)
            };
            let p = Pending {
                slot: s as u32,
                frame_index: fi as u32,
                id: state.id,
                baseline,
                dist2,
                priority: e.priority,
                mask: entry_mask(base, &current, velocities),
                data_bytes: 0,
            };
            if !changed(&p, base, &current) {
                complete = false;
                break;
            }
        }
        if complete {
            while t < table.len() {
                leave(&mut table[t], t, out);
                t += 1;
            }
        }
        self.dead += dead;
        complete
    }

    /// The direct path: one pass that writes every changed entity as it is
    /// found. `None` when they do not all fit the budget.
    fn write_all(
        &mut self,
        enc: &mut SnapshotEncoder,
        frame: &WorldFrame,
        viewer: Vec3,
        history: u32,
        record: &mut SentRecord,
    ) -> Option<BodySummary> {
        let budget = self
            .config
            .budget_bytes
            .saturating_sub(SNAPSHOT_FIXED_BYTES);
        let mut writer = EntryWriter::new(&mut enc.body, record, frame.tick, true);
        let complete = self.scan(
            &mut enc.scan,
            &mut enc.distances,
            frame,
            viewer,
            history,
            // Inlined into the pass: a call per entity, with its arguments
            // through memory, was a tenth of the encode.
            #[inline(always)]
            |p, base, current| writer.write(p, base, current) <= budget,
        );
        let entry_bytes = writer.bytes;
        let summary = writer.finish();
        let removed_bytes = removed_bytes(&enc.scan.removed);
        if !complete || entry_bytes + removed_bytes > budget {
            return None;
        }
        write_removed(&mut enc.body, record, &enc.scan);
        enc.pending.clear();
        enc.selected.clear();
        Some(summary)
    }

    /// The budgeted path's pass: collects the changed entities, their
    /// sizes and baseline ticks.
    fn scan_pending(
        &mut self,
        enc: &mut SnapshotEncoder,
        frame: &WorldFrame,
        viewer: Vec3,
        history: u32,
    ) {
        enc.pending.clear();
        enc.baseline_counts.clear();
        enc.total_bytes = 0;
        let (pending, counts, total) = (
            &mut enc.pending,
            &mut enc.baseline_counts,
            &mut enc.total_bytes,
        );
        let tick = frame.tick;
        self.scan(
            &mut enc.scan,
            &mut enc.distances,
            frame,
            viewer,
            history,
            |p, _, _| {
                let mut p = *p;
                p.data_bytes = entry_data_bytes(p.mask);
                let prev = pending.last().map_or(0, |q| q.id);
                *total += usize::from(p.data_bytes) + varint_len(p.id - prev);
                counts.count(tick, p.baseline);
                pending.push(p);
                true
            },
        );
    }

    /// The budgeted path's writing: the selected entries and the removals
    /// that fit, and the priority of what waits.
    fn write_selected(
        &mut self,
        enc: &mut SnapshotEncoder,
        frame: &WorldFrame,
        record: &mut SentRecord,
    ) -> BodySummary {
        let velocities = self.config.velocities;
        let mut writer = EntryWriter::new(&mut enc.body, record, frame.tick, false);
        for (p, &sent) in enc.pending.iter().zip(&enc.selected) {
            if !sent {
                row_mut(&mut self.table, &mut enc.scan.added, p.slot).priority = p.priority;
                continue;
            }
            let base = (p.baseline != 0).then(|| &self.table[p.slot as usize].acked);
            let current = visible(&frame.states[p.frame_index as usize], velocities);
            writer.write(p, base, &current);
        }
        let summary = writer.finish();
        write_removed(&mut enc.body, record, &enc.scan);
        summary
    }

    /// Marks what `record` carried as sent, then merges new entries in and
    /// drops dead ones.
    fn finish_commit(&mut self, enc: &mut SnapshotEncoder, record: &SentRecord, tick: u32) {
        for (&slot, new) in record.slots.iter().zip(&record.states) {
            let e = row_mut(&mut self.table, &mut enc.scan.added, slot);
            if e.sent_tick != 0 && e.sent != *new {
                e.differing_tick = e.sent_tick;
            }
            e.sent = *new;
            e.sent_tick = tick;
            e.ever_sent = true;
            e.priority = 0.0;
        }
        if !enc.scan.added.is_empty() || self.dead != 0 {
            // Slots move (the record keeps the old layout, so acks of it
            // find entries by id).
            self.rebuild(enc);
        }
    }

    /// Drops dead entries and merges the new ones in (both sorted by id).
    fn rebuild(&mut self, enc: &mut SnapshotEncoder) {
        let next = &mut enc.table;
        next.clear();
        let mut added = enc.scan.added.iter().peekable();
        for e in self.table.iter().filter(|e| !e.dead) {
            while let Some(a) = added.next_if(|a| a.id < e.id) {
                next.push(*a);
            }
            next.push(*e);
        }
        next.extend(added);
        std::mem::swap(&mut self.table, next);
        self.dead = 0;
        self.layout = self.layout.wrapping_add(1);
    }
}

impl SnapshotEncoder {
    /// Chooses the snapshot's baseline table: every baseline tick when they
    /// fit, else absolute entries' 0 and the most used; entries whose tick
    /// is left out send its age instead, which adds to their size.
    fn assign_baselines(&mut self, tick: u32) {
        let table = &mut self.body.baselines;
        table.clear();
        let counts = self.baseline_counts.gather(tick);
        if counts.len() <= SNAPSHOT_BASELINES_MAX {
            table.extend(counts.iter().map(|c| c.0));
            return;
        }
        counts.sort_unstable_by_key(|&(b, n)| (b != 0, std::cmp::Reverse(n), b));
        counts.truncate(SNAPSHOT_BASELINES_MAX);
        table.extend(counts.iter().map(|c| c.0));
        let mut prev = 0;
        self.total_bytes = 0;
        for p in &mut self.pending {
            if !table.contains(&p.baseline) {
                p.data_bytes += varint_len(tick - p.baseline) as u8;
            }
            self.total_bytes += usize::from(p.data_bytes) + varint_len(p.id - prev);
            prev = p.id;
        }
    }

    /// Marks which pending entities fit `budget_bytes`, highest priority first.
    ///
    /// Removals come first (up to half the budget; the rest wait a tick).
    /// When every changed entity fits, all are taken. Otherwise each gets
    /// this tick's weight (`1 + 10 / (1 + distance)`) on top of what it
    /// carried and they are taken greedily by priority (only the head that
    /// can fit is sorted), costed with the id gap to the previous pending
    /// entity; skipping entities can only widen gaps, so the exact size is
    /// computed afterwards and the lowest-priority entities are dropped
    /// until it fits.
    fn select_within_budget(&mut self, budget_bytes: usize) {
        let budget = budget_bytes.saturating_sub(SNAPSHOT_FIXED_BYTES);
        let mut removed_bytes = 0;
        let mut prev = 0;
        let mut keep = 0;
        for &id in &self.scan.removed {
            let b = varint_len(id - prev);
            if removed_bytes + b > budget / 2 {
                break;
            }
            removed_bytes += b;
            prev = id;
            keep += 1;
        }
        self.scan.removed.truncate(keep);
        let budget = budget - removed_bytes;

        self.selected.clear();
        self.selected.resize(self.pending.len(), false);
        // Optimistic cost: the id gap to the previous pending entity.
        let cost = |pending: &[Pending], i: usize| {
            let prev_id = if i == 0 { 0 } else { pending[i - 1].id };
            usize::from(pending[i].data_bytes) + varint_len(pending[i].id - prev_id)
        };
        let total = self.total_bytes;
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        if total <= budget {
            // Everything fits: no ordering needed.
            self.selected.fill(true);
        } else {
            for p in &mut self.pending {
                p.priority += 1.0 + 10.0 / (1.0 + p.dist2.sqrt());
            }
            order.extend(
                self.pending
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (i as u32, p.priority)),
            );
            // Only the entities that can fit need ordering: partition around
            // twice the count that fits at the average cost, sort that head.
            let n = order.len();
            let fits = (budget * n / total.max(1)).saturating_mul(2).clamp(1, n);
            let by_priority = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
            if fits < n {
                order.select_nth_unstable_by(fits, by_priority);
            }
            order[..fits].sort_unstable_by(by_priority);
            let mut left = budget;
            for &(i, _) in &order {
                let c = cost(&self.pending, i as usize);
                if c <= left {
                    left -= c;
                    self.selected[i as usize] = true;
                }
            }
        }
        // With everything selected the optimistic gaps are the real ones and
        // `order` is empty: nothing to check or drop.
        // Drop the lowest-priority selected entities until the real size fits.
        let mut candidates = order.iter().rev().map(|&(i, _)| i as usize);
        while !order.is_empty() && self.exact_bytes() > budget {
            match candidates.find(|&i| self.selected[i]) {
                Some(i) => self.selected[i] = false,
                None => break,
            }
        }
        self.order = order;
    }

    /// Bytes of the selected entries with their real id gaps.
    fn exact_bytes(&self) -> usize {
        let mut prev = 0;
        let mut total = 0;
        for (p, _) in self.pending.iter().zip(&self.selected).filter(|(_, s)| **s) {
            total += usize::from(p.data_bytes) + varint_len(p.id - prev);
            prev = p.id;
        }
        total
    }
}

fn varint_len(v: u32) -> usize {
    match v {
        0..=0x7F => 1,
        0x80..=0x3FFF => 2,
        0x4000..=0x1F_FFFF => 3,
        0x20_0000..=0xFFF_FFFF => 4,
        _ => 5,
    }
}

fn push_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn position_delta(old: [u32; 3], new: [u32; 3]) -> [i64; 3] {
    std::array::from_fn(|i| i64::from(new[i]) - i64::from(old[i]))
}

/// The mask of an entity's entry against its baseline state.
fn entry_mask(old: Option<&EntityState>, new: &EntityState, velocities: bool) -> u8 {
    let Some(old) = old else {
        let vel = if velocities {
            MASK_LIN_VEL | MASK_ANG_VEL
        } else {
            0
        };
        return MASK_POS_U32 | MASK_ROT | vel;
    };
    let mut mask = 0;
    if old.position != new.position {
        let d = position_delta(old.position, new.position);
        let widest = d.iter().map(|v| v.abs()).max().unwrap_or(0);
        mask |= if widest <= i64::from(i8::MAX) {
            MASK_POS_I8
        } else if widest <= i64::from(i16::MAX) {
            MASK_POS_I16
        } else {
            MASK_POS_U32
        };
    }
    if old.rotation != new.rotation {
        mask |= MASK_ROT;
    }
    if velocities && old.linear_velocity != new.linear_velocity {
        mask |= MASK_LIN_VEL;
    }
    if velocities && old.angular_velocity != new.angular_velocity {
        mask |= MASK_ANG_VEL;
    }
    mask
}

/// Bytes of an entry besides its id gap: the mask and the fields it sends.
#[inline(always)]
fn entry_data_bytes(mask: u8) -> u8 {
    ENTRY_DATA_BYTES[usize::from(mask & ENTRY_FIELD_BITS)]
}

/// The mask bits that say which fields an entry carries.
const ENTRY_FIELD_BITS: u8 = MASK_POS | MASK_ROT | MASK_LIN_VEL | MASK_ANG_VEL;

/// [`entry_data_bytes`] of every combination of field bits.
const ENTRY_DATA_BYTES: [u8; 32] = {
    let mut table = [0u8; 32];
    let mut mask = 0;
    while mask < 32 {
        let pos = match mask as u8 & MASK_POS {
            MASK_POS_I8 => 3,
            MASK_POS_I16 => 6,
            MASK_POS_U32 => 12,
            _ => 0,
        };
        let mut bytes = 1 + pos;
        let mut bit = MASK_ROT;
        while bit <= MASK_ANG_VEL {
            if mask as u8 & bit != 0 {
                bytes += 6;
            }
            bit <<= 1;
        }
        table[mask] = bytes;
        mask += 1;
    }
    table
};

/// The entries one applied snapshot carried (sorted by id), kept as the
/// baselines later snapshots may name.
#[derive(Debug, Default)]
struct Record {
    tick: u32,
    valid: bool,
    entities: Vec<EntityState>,
}

/// The client side: holds the entities of its view and the entries of its
/// snapshots of its last `history_len` ticks, and applies each new snapshot.
#[derive(Debug)]
pub struct SnapshotReceiver {
    /// The view, sorted by id, and per entity the tick of the last snapshot
    /// that carried it.
    entities: Vec<EntityState>,
    ticks: Vec<u32>,
    /// The next view while a snapshot is decoded (swapped in on success).
    next_entities: Vec<EntityState>,
    next_ticks: Vec<u32>,
    /// Ring of applied snapshots' entries, indexed by tick.
    records: Vec<Record>,
    /// The entries of the snapshot being decoded.
    scratch: Vec<EntityState>,
    /// Per ring slot, where the last baseline search in it stopped.
    cursors: Vec<usize>,
    entities_max: usize,
    latest: Option<u32>,
}

impl SnapshotReceiver {
    /// A client keeping the entries of the snapshots of its last `history_len` ticks
    /// (at least the server's [`SnapshotConfig::history_len`]) and refusing
    /// views of more than `entities_max` entities.
    pub fn new(history_len: usize, entities_max: usize) -> Self {
        SnapshotReceiver {
            entities: Vec::new(),
            ticks: Vec::new(),
            next_entities: Vec::new(),
            next_ticks: Vec::new(),
            records: (0..history_len.max(2)).map(|_| Record::default()).collect(),
            scratch: Vec::new(),
            cursors: Vec::new(),
            entities_max,
            latest: None,
        }
    }

    /// The newest tick applied: what the client acknowledges.
    pub fn latest(&self) -> Option<u32> {
        self.latest
    }

    /// The entity states as of the newest applied snapshot, sorted by id.
    pub fn entities(&self) -> &[EntityState] {
        &self.entities
    }

    /// Validates a snapshot payload and applies it; returns the entity
    /// states as of `tick`. A snapshot not newer than the newest applied
    /// one (reordered on the way) is refused: what it carried is stale.
    /// On any error the client's state is unchanged.
    pub fn apply(&mut self, tick: u32, payload: &[u8]) -> Result<&[EntityState], ProtocolError> {
        let body = rkyv::access::<ArchivedSnapshotBody, rancor::Error>(payload).map_err(|e| {
            ProtocolError::InvalidArchive {
                kind: MessageKind::Snapshot,
                reason: e.to_string(),
            }
        })?;
        let bad = |reason: &str| ProtocolError::InvalidArchive {
            kind: MessageKind::Snapshot,
            reason: reason.to_string(),
        };
        if tick == 0 {
            return Err(bad("snapshot tick 0"));
        }
        if self.latest.is_some_and(|l| tick <= l) {
            return Err(bad("snapshot older than the newest applied one"));
        }
        self.decode(tick, body)?;
        std::mem::swap(&mut self.entities, &mut self.next_entities);
        std::mem::swap(&mut self.ticks, &mut self.next_ticks);
        let slot = tick as usize % self.records.len();
        let record = &mut self.records[slot];
        std::mem::swap(&mut record.entities, &mut self.scratch);
        record.tick = tick;
        record.valid = true;
        self.latest = Some(tick);
        Ok(&self.entities)
    }

    /// The state of `id` after the snapshot of `baseline`, if this client
    /// still has it: its current state when that snapshot was the last to
    /// carry it, else that snapshot's entry.
    ///
    /// Entries come in increasing id order, so each record is searched
    /// forward from where the last search in it stopped (`cursors`, one per
    /// ring slot): one walk over a record per snapshot at most.
    fn baseline_state(
        &self,
        id: u32,
        current: Option<usize>,
        baseline: u32,
        cursors: &mut [usize],
    ) -> Option<EntityState> {
        if let Some(c) = current
            && self.ticks[c] == baseline
        {
            return Some(self.entities[c]);
        }
        let slot = baseline as usize % self.records.len();
        let r = &self.records[slot];
        if !(r.valid && r.tick == baseline) {
            return None;
        }
        let at = &mut cursors[slot];
        while r.entities.get(*at).is_some_and(|e| e.id < id) {
            *at += 1;
        }
        r.entities.get(*at).filter(|e| e.id == id).copied()
    }

    /// Decodes `body` against this client's state into `next_*` (the view
    /// after it) and `scratch` (its entries).
    fn decode(&mut self, tick: u32, body: &ArchivedSnapshotBody) -> Result<(), ProtocolError> {
        let bad = |reason: &'static str| ProtocolError::InvalidArchive {
            kind: MessageKind::Snapshot,
            reason: reason.to_string(),
        };
        let mut next_entities = std::mem::take(&mut self.next_entities);
        let mut next_ticks = std::mem::take(&mut self.next_ticks);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut cursors = std::mem::take(&mut self.cursors);
        next_entities.clear();
        next_ticks.clear();
        scratch.clear();
        cursors.clear();
        cursors.resize(self.records.len(), 0);
        let result = self.decode_into(
            tick,
            body,
            &mut next_entities,
            &mut next_ticks,
            &mut scratch,
            &mut cursors,
        );
        self.next_entities = next_entities;
        self.next_ticks = next_ticks;
        self.scratch = scratch;
        self.cursors = cursors;
        result.map_err(bad)
    }

    fn decode_into(
        &self,
        tick: u32,
        body: &ArchivedSnapshotBody,
        next: &mut Vec<EntityState>,
        next_ticks: &mut Vec<u32>,
        entries: &mut Vec<EntityState>,
        cursors: &mut [usize],
    ) -> Result<(), &'static str> {
        let baselines = body.baselines.as_slice();
        if baselines.len() > SNAPSHOT_BASELINES_MAX {
            return Err("more baselines than the table holds");
        }
        if baselines.iter().any(|b| b.to_native() >= tick) {
            return Err("a baseline not before the snapshot");
        }
        let ids = body.ids.as_slice();
        let removed = body.removed.as_slice();
        let (mut at_id, mut at_rem) = (0usize, 0usize);
        let (mut i8s, mut i16s, mut u32s, mut rots, mut lins, mut angs) = (0, 0, 0, 0, 0, 0);
        let mut id = 0u32;
        let mut rem_id = 0u32;
        let mut next_removed = |first: bool| -> Result<Option<u32>, &'static str> {
            if at_rem >= removed.len() {
                return Ok(None);
            }
            let gap = read_varint(removed, &mut at_rem).ok_or("bad removed id")?;
            if gap == 0 && !first {
                return Err("removed ids not increasing");
            }
            rem_id = rem_id.checked_add(gap).ok_or("removed id overflow")?;
            Ok(Some(rem_id))
        };
        let mut rem = next_removed(true)?;
        let (current, current_ticks) = (&self.entities[..], &self.ticks[..]);
        let mut c = 0usize;
        let max = self.entities_max;
        // Keeps the current entities below `limit` that are not removed.
        let mut keep_below = |limit: Option<u32>,
                              c: &mut usize,
                              rem: &mut Option<u32>,
                              next: &mut Vec<EntityState>,
                              next_ticks: &mut Vec<u32>|
         -> Result<(), &'static str> {
            loop {
                let here = current
                    .get(*c)
                    .map(|e| e.id)
                    .filter(|&e| limit.is_none_or(|l| e < l));
                // Removals of ids this client does not hold are ignored.
                while let Some(r) = *rem
                    && here.is_none_or(|h| r < h)
                    && limit.is_none_or(|l| r < l)
                {
                    *rem = next_removed(false)?;
                }
                let Some(h) = here else {
                    return Ok(());
                };
                if *rem == Some(h) {
                    *rem = next_removed(false)?;
                } else {
                    if next.len() >= max {
                        return Err("more entities than the client allows");
                    }
                    next.push(current[*c]);
                    next_ticks.push(current_ticks[*c]);
                }
                *c += 1;
            }
        };
        for (n, mask) in body.masks.iter().enumerate() {
            let mask = *mask;
            let gap = read_varint(ids, &mut at_id).ok_or("bad entity id")?;
            if n > 0 && gap == 0 {
                return Err("entity ids not increasing");
            }
            id = id.checked_add(gap).ok_or("entity id overflow")?;
            keep_below(Some(id), &mut c, &mut rem, next, next_ticks)?;
            if rem == Some(id) {
                return Err("an entity both sent and removed");
            }
            let here = (c < current.len() && current[c].id == id).then(|| {
                c += 1;
                c - 1
            });
            let index = mask >> MASK_BASELINE_SHIFT;
            let baseline = if index == BASELINE_ESCAPE {
                // An age equal to the tick names tick 0: absolute.
                let age = read_varint(ids, &mut at_id).ok_or("bad baseline age")?;
                if age == 0 || age > tick {
                    return Err("baseline age out of range");
                }
                tick - age
            } else {
                baselines
                    .get(usize::from(index))
                    .ok_or("baseline index past the table")?
                    .to_native()
            };
            let old = if baseline == 0 {
                None
            } else {
                Some(
                    self.baseline_state(id, here, baseline, cursors)
                        .ok_or("unknown baseline")?,
                )
            };
            let mut s = old.unwrap_or(EntityState {
                id,
                ..EntityState::default()
            });
            match mask & MASK_POS {
                0 => {}
                MASK_POS_U32 => {
                    let k = take3(body.pos_u32.len(), &mut u32s).ok_or("pos_u32 too short")?;
                    s.position = k.map(|k| body.pos_u32[k].to_native());
                }
                m => {
                    let old = old.ok_or("position delta without a baseline")?;
                    let d: [i64; 3] = if m == MASK_POS_I8 {
                        let k = take3(body.pos_i8.len(), &mut i8s).ok_or("pos_i8 too short")?;
                        k.map(|k| i64::from(body.pos_i8[k]))
                    } else {
                        let k = take3(body.pos_i16.len(), &mut i16s).ok_or("pos_i16 too short")?;
                        k.map(|k| i64::from(body.pos_i16[k].to_native()))
                    };
                    for ((p, o), d) in s.position.iter_mut().zip(old.position).zip(d) {
                        *p = u32::try_from(i64::from(o) + d)
                            .map_err(|_| "position delta out of range")?;
                    }
                }
            }
            if mask & MASK_ROT != 0 {
                let k = take3(body.rotations.len(), &mut rots).ok_or("rotations too short")?;
                s.rotation = k.map(|k| body.rotations[k].to_native());
            } else if old.is_none() {
                return Err("absolute entry without rotation");
            }
            if mask & MASK_LIN_VEL != 0 {
                let k = take3(body.linear_velocities.len(), &mut lins)
                    .ok_or("linear_velocities too short")?;
                s.linear_velocity = k.map(|k| body.linear_velocities[k].to_native());
            }
            if mask & MASK_ANG_VEL != 0 {
                let k = take3(body.angular_velocities.len(), &mut angs)
                    .ok_or("angular_velocities too short")?;
                s.angular_velocity = k.map(|k| body.angular_velocities[k].to_native());
            }
            if old.is_none() && mask & MASK_POS != MASK_POS_U32 {
                return Err("absolute entry without an absolute position");
            }
            if next.len() >= max {
                return Err("more entities than the client allows");
            }
            next.push(s);
            next_ticks.push(tick);
            entries.push(s);
        }
        keep_below(None, &mut c, &mut rem, next, next_ticks)?;
        let consumed = at_id == ids.len()
            && i8s == body.pos_i8.len()
            && i16s == body.pos_i16.len()
            && u32s == body.pos_u32.len()
            && rots == body.rotations.len()
            && lins == body.linear_velocities.len()
            && angs == body.angular_velocities.len()
            && rem.is_none()
            && at_rem == removed.len();
        if !consumed {
            return Err("sections longer than the masks say");
        }
        Ok(())
    }
}

/// The next three indices of a section of `len` items, advancing `at`.
fn take3(len: usize, at: &mut usize) -> Option<[usize; 3]> {
    (*at + 3 <= len).then(|| {
        *at += 3;
        [*at - 3, *at - 2, *at - 1]
    })
}

/// Reads one LEB128 value; `None` on truncation or overflow.
fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u32> {
    let mut v = 0u32;
    for shift in (0..35).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        let part = u32::from(b & 0x7F);
        if shift == 28 && part > 0x0F {
            return None;
        }
        v |= part << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-entity memory of a client's view, as docs/benchmarks.md
    /// quotes it: a table row, and an entry of an unacknowledged snapshot.
    #[test]
    fn a_tracked_entity_costs_104_bytes_and_a_sent_entry_40() {
        assert_eq!(std::mem::size_of::<Tracked>(), 104);
        assert_eq!(
            std::mem::size_of::<u32>() + std::mem::size_of::<EntityState>(),
            40
        );
    }

    /// Entry sizes as docs/protocol.md gives them: the mask, then 3, 6 or
    /// 12 bytes of position and 6 per other field sent.
    #[test]
    fn entry_sizes_follow_the_fields_sent() {
        assert_eq!(entry_data_bytes(0), 1);
        assert_eq!(entry_data_bytes(MASK_POS_I8), 4);
        assert_eq!(entry_data_bytes(MASK_POS_I16 | MASK_ROT), 13);
        assert_eq!(entry_data_bytes(MASK_POS_U32 | MASK_ROT), 19);
        assert_eq!(entry_data_bytes(MASK_ROT | MASK_ANG_VEL), 13);
        assert_eq!(
            entry_data_bytes(MASK_POS_U32 | MASK_ROT | MASK_LIN_VEL | MASK_ANG_VEL),
            31
        );
        let baseline_bits = BASELINE_ESCAPE << MASK_BASELINE_SHIFT;
        assert_eq!(entry_data_bytes(MASK_POS_I8 | baseline_bits), 4);
    }
}
