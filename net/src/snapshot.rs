//! Snapshots: what each client is sent every tick.
//!
//! Per instance, once a tick, [`WorldFrame::capture`] quantises every
//! networked entity (sorted by network id). Per client, a
//! [`ClientSnapshots`] keeps the client's *views*, a ring of the entity
//! states the client holds after each snapshot it was sent, and encodes the
//! next snapshot as a delta against the view of the last tick the client
//! acknowledged:
//! - **interest**: only entities within `interest_radius_m` of the client's
//!   avatar, plus entities marked [`engine::Global`]; entities leaving it are
//!   listed as removed;
//! - **delta**: unchanged entities are omitted; positions are sent as 8- or
//!   16-bit differences when they fit, else absolute;
//! - **budget**: changed entities are sent in order of an accumulated
//!   priority (grows every tick an entity waits, faster when near) until the
//!   datagram budget is full; the rest wait, keep their priority, and so
//!   arrive within a bounded number of ticks. A snapshot never exceeds the
//!   budget, so it is never fragmented.
//!
//! Encoding reuses every buffer: in steady state it does not allocate.

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
    /// Views kept per client: how old an acknowledged baseline may be, in ticks.
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

impl EntityState {
    fn same(&self, other: &EntityState, velocities: bool) -> bool {
        self.position == other.position
            && self.rotation == other.rotation
            && (!velocities
                || (self.linear_velocity == other.linear_velocity
                    && self.angular_velocity == other.angular_velocity))
    }
}

// Per-entity mask bits.
const MASK_POS_I8: u8 = 1;
const MASK_POS_I16: u8 = 2;
const MASK_POS_U32: u8 = 3;
const MASK_POS: u8 = 3;
const MASK_ROT: u8 = 1 << 2;
const MASK_LIN_VEL: u8 = 1 << 3;
const MASK_ANG_VEL: u8 = 1 << 4;
const MASK_KNOWN: u8 = MASK_POS | MASK_ROT | MASK_LIN_VEL | MASK_ANG_VEL;

/// Bytes of a snapshot besides its per-entity data: the frame header, the
/// archive's root (baseline tick and nine vectors of 8 bytes) and the
/// worst-case alignment padding between sections.
pub const SNAPSHOT_FIXED_BYTES: usize = FRAME_HEADER_LEN + 4 + 9 * 8 + 9 * 3 + 8;

/// The snapshot payload: struct-of-arrays sections, each a typed array a
/// browser can view in place. Entities are in increasing id order; `ids`
/// holds LEB128 gaps from the previous id (the first from 0); `masks` says
/// per entity which of the other sections hold its fields, in entity order.
#[derive(Archive, Serialize, Debug, Default, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct SnapshotBody {
    /// The tick this snapshot is a delta against; 0 when it is not (full).
    pub baseline_tick: u32,
    pub ids: Vec<u8>,
    pub masks: Vec<u8>,
    pub pos_i8: Vec<i8>,
    pub pos_i16: Vec<i16>,
    pub pos_u32: Vec<u32>,
    pub rotations: Vec<u16>,
    pub linear_velocities: Vec<i16>,
    pub angular_velocities: Vec<i16>,
    /// LEB128 gaps of the ids the client must drop (despawned, or out of interest).
    pub removed: Vec<u8>,
}

impl SnapshotBody {
    /// Sections sized so that no snapshot within `budget_bytes` makes one grow.
    fn with_budget(budget_bytes: usize) -> Self {
        SnapshotBody {
            baseline_tick: 0,
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

    fn clear(&mut self, baseline_tick: u32) {
        self.baseline_tick = baseline_tick;
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

/// A view on the client side: the entity states after the snapshot of `tick`.
#[derive(Debug, Default)]
struct View {
    tick: u32,
    valid: bool,
    entities: Vec<EntityState>,
}

/// A view the server sent: what the client holds if it received the
/// snapshot of `tick`.
#[derive(Debug)]
struct SentView {
    tick: u32,
    entities: Vec<EntityState>,
}

/// An entity that changed since the baseline and waits to be sent.
#[derive(Clone, Copy, Debug)]
struct Pending {
    frame_index: u32,
    /// Index of its state in the baseline, or `u32::MAX` when new to the client.
    baseline_index: u32,
    priority: f32,
    id: u32,
    /// Which fields its entry carries (see the mask bits).
    mask: u8,
    /// Bytes of its entry besides the id gap.
    data_bytes: u8,
}

/// What the last encoded snapshot held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Entities with an entry (new or changed).
    pub entities_sent: u32,
    /// Ids the client was told to drop.
    pub removed: u32,
    /// Changed entities left for later snapshots by the budget.
    pub waiting: u32,
    /// Whole frame bytes.
    pub bytes: u32,
    /// The tick the snapshot is a delta against (0: none).
    pub baseline_tick: u32,
}

/// Snapshot state of one client: the views it may still acknowledge, its
/// acknowledgement and the priorities of entities waiting their turn.
///
/// Only *live* views are kept: the acknowledged baseline and the ones sent
/// after it (one per tick in flight, so about the round trip in ticks);
/// older ones can never serve as a baseline again and their buffers are
/// reused. At most [`SnapshotConfig::history_len`] views are live: a client
/// that acknowledges nothing for that long gets a full snapshot. Memory per
/// client is thus live views × entities in view × 36 bytes, and the
/// scratch work of encoding lives in the shared [`SnapshotEncoder`].
#[derive(Debug)]
pub struct ClientSnapshots {
    stats: SnapshotStats,
    config: SnapshotConfig,
    /// Live views, oldest first, ticks increasing.
    views: VecDeque<SentView>,
    /// Buffers of released views, reused for the next ones.
    spare: Vec<Vec<EntityState>>,
    acked: Option<u32>,
    /// Accumulated priority of waiting entities, sorted by id.
    priorities: Vec<(u32, f32)>,
}

/// Buffers for encoding snapshots, shared by every client of a shard (one
/// encode runs at a time; the bytes it returns are written out before the
/// next). Reused: in steady state encoding does not allocate.
pub struct SnapshotEncoder {
    candidates: Vec<(u32, f32)>,
    pending: Vec<Pending>,
    removed: Vec<u32>,
    selected: Vec<bool>,
    order: Vec<(u32, f32)>,
    body: SnapshotBody,
    out: AlignedVec<16>,
    arena: Arena,
}

impl Default for SnapshotEncoder {
    fn default() -> Self {
        SnapshotEncoder {
            candidates: Vec::new(),
            pending: Vec::new(),
            removed: Vec::new(),
            selected: Vec::new(),
            order: Vec::new(),
            body: SnapshotBody::with_budget(crate::SNAPSHOT_DATAGRAM_BYTES_MAX),
            out: AlignedVec::with_capacity(crate::SNAPSHOT_DATAGRAM_BYTES_MAX + 64),
            arena: Arena::new(),
        }
    }
}

impl std::fmt::Debug for SnapshotEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotEncoder")
            .field("candidates", &self.candidates.capacity())
            .field("pending", &self.pending.capacity())
            .finish_non_exhaustive()
    }
}

impl ClientSnapshots {
    /// A client that holds nothing yet. Allocates nothing until its first
    /// snapshot; its buffers then grow to what its view needs.
    pub fn new(config: SnapshotConfig) -> Self {
        ClientSnapshots {
            stats: SnapshotStats::default(),
            config,
            views: VecDeque::new(),
            spare: Vec::new(),
            acked: None,
            priorities: Vec::new(),
        }
    }

    /// Records the client's acknowledgement of the snapshot of `tick` (from
    /// the `tick` field of its input frames) and releases the views before
    /// it. Older or unknown ticks are ignored.
    pub fn ack(&mut self, tick: u32) {
        if self.acked.is_some_and(|a| a >= tick) || self.view_index(tick).is_none() {
            return;
        }
        self.acked = Some(tick);
        while self.views.front().is_some_and(|v| v.tick < tick) {
            self.release_front();
        }
    }

    /// What the last snapshot held (for metrics and tests).
    pub fn last_stats(&self) -> SnapshotStats {
        self.stats
    }

    pub fn acked(&self) -> Option<u32> {
        self.acked
    }

    /// Views kept now: the acknowledged one and those sent after it.
    pub fn live_views(&self) -> usize {
        self.views.len()
    }

    fn view_index(&self, tick: u32) -> Option<usize> {
        if tick == 0 {
            return None;
        }
        self.views.binary_search_by_key(&tick, |v| v.tick).ok()
    }

    /// The entity states the client holds after the snapshot of `tick`, if
    /// that view is still kept.
    pub fn view(&self, tick: u32) -> Option<&[EntityState]> {
        self.view_index(tick).map(|i| &self.views[i].entities[..])
    }

    fn release_front(&mut self) {
        if let Some(v) = self.views.pop_front() {
            self.spare.push(v.entities);
        }
    }

    fn release_back(&mut self) {
        if let Some(v) = self.views.pop_back() {
            self.spare.push(v.entities);
        }
    }

    /// Encodes this tick's snapshot for a client whose avatar is at `viewer`.
    /// The bytes are a whole frame in `enc`'s buffer, valid until its next use.
    pub fn encode<'e>(
        &mut self,
        enc: &'e mut SnapshotEncoder,
        frame: &WorldFrame,
        viewer: Vec3,
        sequence: u32,
    ) -> Result<&'e [u8], ProtocolError> {
        let tick = frame.tick;
        let history = self.config.history_len.max(2) as u32;
        // A tick encoded again replaces what was sent for it and after it.
        while self.views.back().is_some_and(|v| v.tick >= tick) {
            self.release_back();
        }
        // Views too old to serve as a baseline, and room for this one.
        while self.views.front().is_some_and(|v| tick - v.tick >= history)
            || self.views.len() >= history as usize
        {
            self.release_front();
        }
        let baseline = self.acked.and_then(|a| self.view_index(a));
        let mut target = self.spare.pop().unwrap_or_default();
        let (base, baseline_tick) = match baseline {
            Some(i) => (&self.views[i].entities[..], self.views[i].tick),
            None => (&[][..], 0),
        };
        enc.collect_candidates(&self.config, frame, viewer);
        enc.diff_against(&self.config, frame, base, &self.priorities);
        enc.select_within_budget(self.config.budget_bytes);
        let selection = Selection {
            frame,
            base,
            pending: &enc.pending,
            selected: &enc.selected,
            removed: &enc.removed,
            velocities: self.config.velocities,
        };
        selection.build_view(&mut target);
        selection.fill_body(&mut enc.body, baseline_tick);
        // Entities left waiting keep their accumulated priority.
        self.priorities.clear();
        self.priorities.extend(
            enc.pending
                .iter()
                .zip(&enc.selected)
                .filter(|(_, sel)| !**sel)
                .map(|(p, _)| (p.id, p.priority)),
        );
        self.views.push_back(SentView {
            tick,
            entities: target,
        });
        enc.out.clear();
        enc.out.resize(FRAME_HEADER_LEN, 0);
        rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(
            &enc.body,
            &mut enc.out,
            enc.arena.acquire(),
        )
        .map_err(|e| ProtocolError::InvalidArchive {
            kind: MessageKind::Snapshot,
            reason: e.to_string(),
        })?;
        let len = enc.out.len() - FRAME_HEADER_LEN;
        if enc.out.len() > self.config.budget_bytes {
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
        let sent = enc.selected.iter().filter(|s| **s).count() as u32;
        self.stats = SnapshotStats {
            entities_sent: sent,
            removed: enc.removed.len() as u32,
            waiting: enc.pending.len() as u32 - sent,
            bytes: enc.out.len() as u32,
            baseline_tick,
        };
        Ok(enc.out.as_slice())
    }
}

impl SnapshotEncoder {
    /// Entities of interest, as (frame index, distance), sorted by id; the
    /// nearest `view_entities_max` when there are more.
    fn collect_candidates(&mut self, config: &SnapshotConfig, frame: &WorldFrame, viewer: Vec3) {
        self.candidates.clear();
        let r2 = config.interest_radius_m * config.interest_radius_m;
        for (i, p) in frame.positions.iter().enumerate() {
            let d = p.minus(viewer);
            let dist2 = d.x * d.x + d.y * d.y + d.z * d.z;
            if frame.global[i] || dist2 <= r2 {
                self.candidates.push((i as u32, dist2.sqrt()));
            }
        }
        let max = config.view_entities_max;
        if self.candidates.len() > max {
            self.candidates
                .select_nth_unstable_by(max, |a, b| a.1.total_cmp(&b.1));
            self.candidates.truncate(max);
            self.candidates.sort_unstable_by_key(|c| c.0);
        }
    }

    /// Splits candidates against the baseline: removed ids, and pending
    /// (changed or new) entities with their size and accumulated priority
    /// (`priorities`: what waiting entities carried, sorted by id).
    fn diff_against(
        &mut self,
        config: &SnapshotConfig,
        frame: &WorldFrame,
        base: &[EntityState],
        priorities: &[(u32, f32)],
    ) {
        self.removed.clear();
        self.pending.clear();
        let velocities = config.velocities;
        let (mut b, mut p) = (0usize, 0usize);
        for &(fi, dist) in &self.candidates {
            let state = &frame.states[fi as usize];
            while b < base.len() && base[b].id < state.id {
                self.removed.push(base[b].id);
                b += 1;
            }
            let old = (b < base.len() && base[b].id == state.id).then(|| {
                b += 1;
                b - 1
            });
            if let Some(o) = old
                && base[o].same(state, velocities)
            {
                continue;
            }
            while p < priorities.len() && priorities[p].0 < state.id {
                p += 1;
            }
            let carried = match priorities.get(p) {
                Some(&(id, acc)) if id == state.id => acc,
                _ => 0.0,
            };
            let weight = 1.0 + 10.0 / (1.0 + dist);
            let mask = entry_mask(old.map(|o| &base[o]), state, velocities);
            self.pending.push(Pending {
                frame_index: fi,
                baseline_index: old.map_or(u32::MAX, |o| o as u32),
                priority: carried + weight,
                id: state.id,
                mask,
                data_bytes: entry_data_bytes(mask),
            });
        }
        self.removed.extend(base[b..].iter().map(|s| s.id));
    }

    /// Marks which pending entities fit `budget_bytes`, highest priority first.
    ///
    /// Removals come first (up to half the budget; the rest wait a tick).
    /// When every changed entity fits, all are taken. Otherwise they are
    /// taken greedily by priority (only the head that can fit is sorted),
    /// costed with the id gap to the previous pending entity; skipping
    /// entities can only widen gaps, so the exact size is computed afterwards
    /// and the lowest-priority entities are dropped until it fits.
    fn select_within_budget(&mut self, budget_bytes: usize) {
        let budget = budget_bytes.saturating_sub(SNAPSHOT_FIXED_BYTES);
        let mut removed_bytes = 0;
        let mut prev = 0;
        let mut keep = 0;
        for &id in &self.removed {
            let b = varint_len(id - prev);
            if removed_bytes + b > budget / 2 {
                break;
            }
            removed_bytes += b;
            prev = id;
            keep += 1;
        }
        self.removed.truncate(keep);
        let budget = budget - removed_bytes;

        self.selected.clear();
        self.selected.resize(self.pending.len(), false);
        // Optimistic cost: the id gap to the previous pending entity.
        let cost = |pending: &[Pending], i: usize| {
            let prev_id = if i == 0 { 0 } else { pending[i - 1].id };
            usize::from(pending[i].data_bytes) + varint_len(pending[i].id - prev_id)
        };
        let total: usize = (0..self.pending.len())
            .map(|i| cost(&self.pending, i))
            .sum();
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        if total <= budget {
            // Everything fits: no ordering needed.
            self.selected.fill(true);
        } else {
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
fn entry_data_bytes(mask: u8) -> u8 {
    let pos = match mask & MASK_POS {
        MASK_POS_I8 => 3,
        MASK_POS_I16 => 6,
        MASK_POS_U32 => 12,
        _ => 0,
    };
    let field = |bit: u8| if mask & bit != 0 { 6 } else { 0 };
    1 + pos + field(MASK_ROT) + field(MASK_LIN_VEL) + field(MASK_ANG_VEL)
}

/// The outcome of selection for one snapshot, and what is built from it.
struct Selection<'a> {
    frame: &'a WorldFrame,
    base: &'a [EntityState],
    pending: &'a [Pending],
    selected: &'a [bool],
    removed: &'a [u32],
    velocities: bool,
}

impl Selection<'_> {
    /// The pending entities chosen for this snapshot, in id order.
    fn sent(&self) -> impl Iterator<Item = &Pending> {
        self.pending
            .iter()
            .zip(self.selected)
            .filter(|(_, s)| **s)
            .map(|(p, _)| p)
    }

    /// The client's view after this snapshot: the baseline without removed
    /// ids, with the selected entities updated or added. One merge pass
    /// over three id-sorted lists (baseline, sent, removed).
    fn build_view(&self, target: &mut Vec<EntityState>) {
        target.clear();
        let (base, removed) = (self.base, self.removed);
        let (mut b, mut r) = (0usize, 0usize);
        let mut keep_base_below = |target: &mut Vec<EntityState>, limit: u32, b: &mut usize| {
            while *b < base.len() && base[*b].id < limit {
                let old = &base[*b];
                *b += 1;
                while r < removed.len() && removed[r] < old.id {
                    r += 1;
                }
                if r < removed.len() && removed[r] == old.id {
                    r += 1;
                    continue;
                }
                target.push(*old);
            }
        };
        for p in self.sent() {
            let mut s = self.frame.states[p.frame_index as usize];
            if !self.velocities {
                // The client is not sent velocities, so its view holds none.
                s.linear_velocity = [0; 3];
                s.angular_velocity = [0; 3];
            }
            keep_base_below(target, s.id, &mut b);
            if b < base.len() && base[b].id == s.id {
                b += 1;
            }
            target.push(s);
        }
        keep_base_below(target, u32::MAX, &mut b);
        // An entity with id u32::MAX cannot exist (ids saturate below it).
    }

    /// The wire sections of this snapshot.
    fn fill_body(&self, body: &mut SnapshotBody, baseline_tick: u32) {
        body.clear(baseline_tick);
        let mut prev = 0u32;
        for p in self.sent() {
            let new = &self.frame.states[p.frame_index as usize];
            let old = (p.baseline_index != u32::MAX).then(|| &self.base[p.baseline_index as usize]);
            let mask = p.mask;
            push_varint(&mut body.ids, new.id - prev);
            prev = new.id;
            body.masks.push(mask);
            match (mask & MASK_POS, old) {
                (MASK_POS_I8, Some(old)) => body
                    .pos_i8
                    .extend(position_delta(old.position, new.position).map(|d| d as i8)),
                (MASK_POS_I16, Some(old)) => body
                    .pos_i16
                    .extend(position_delta(old.position, new.position).map(|d| d as i16)),
                (MASK_POS_U32, _) => body.pos_u32.extend(new.position),
                _ => {}
            }
            if mask & MASK_ROT != 0 {
                body.rotations.extend(new.rotation);
            }
            if mask & MASK_LIN_VEL != 0 {
                body.linear_velocities.extend(new.linear_velocity);
            }
            if mask & MASK_ANG_VEL != 0 {
                body.angular_velocities.extend(new.angular_velocity);
            }
        }
        let mut prev = 0u32;
        for &id in self.removed {
            push_varint(&mut body.removed, id - prev);
            prev = id;
        }
    }
}

/// The client side: applies snapshots to its own ring of views.
#[derive(Debug)]
pub struct SnapshotReceiver {
    views: Vec<View>,
    entities_max: usize,
    latest: Option<u32>,
}

impl SnapshotReceiver {
    pub fn new(history_len: usize, entities_max: usize) -> Self {
        SnapshotReceiver {
            views: (0..history_len.max(2)).map(|_| View::default()).collect(),
            entities_max,
            latest: None,
        }
    }

    /// The newest tick applied: what the client acknowledges.
    pub fn latest(&self) -> Option<u32> {
        self.latest
    }

    /// The entity states after the snapshot of `tick`, while that view is kept.
    pub fn view(&self, tick: u32) -> Option<&[EntityState]> {
        let v = &self.views[tick as usize % self.views.len()];
        (v.valid && v.tick == tick).then_some(&v.entities[..])
    }

    /// Validates a snapshot payload and applies it to the baseline view it
    /// names; returns the entity states as of `tick`.
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
        let slot = tick as usize % self.views.len();
        let baseline_tick = body.baseline_tick.to_native();
        let base_slot = if baseline_tick == 0 {
            None
        } else {
            let i = baseline_tick as usize % self.views.len();
            let v = &self.views[i];
            if !(v.valid && v.tick == baseline_tick && baseline_tick < tick) || i == slot {
                return Err(bad("unknown baseline tick"));
            }
            Some(i)
        };
        let mut target = std::mem::take(&mut self.views[slot].entities);
        self.views[slot].valid = false;
        let empty: &[EntityState] = &[];
        let base = base_slot.map_or(empty, |i| &self.views[i].entities[..]);
        let result = decode_into(&mut target, body, base, self.entities_max);
        let ok = result.is_ok();
        self.views[slot] = View {
            tick,
            valid: ok,
            entities: target,
        };
        result?;
        if self.latest.is_none_or(|l| l < tick) {
            self.latest = Some(tick);
        }
        Ok(&self.views[slot].entities)
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

fn decode_into(
    target: &mut Vec<EntityState>,
    body: &ArchivedSnapshotBody,
    base: &[EntityState],
    entities_max: usize,
) -> Result<(), ProtocolError> {
    let bad = |reason: &'static str| ProtocolError::InvalidArchive {
        kind: MessageKind::Snapshot,
        reason: reason.to_string(),
    };
    target.clear();
    let ids = body.ids.as_slice();
    let removed = body.removed.as_slice();
    let (mut at_id, mut at_rem) = (0usize, 0usize);
    let (mut i8s, mut i16s, mut u32s, mut rots, mut lins, mut angs) = (0, 0, 0, 0, 0, 0);
    let (mut id, mut rem_id) = (0u32, 0u32);
    let mut next_removed = || -> Result<Option<u32>, ProtocolError> {
        if at_rem >= removed.len() {
            return Ok(None);
        }
        let gap = read_varint(removed, &mut at_rem).ok_or_else(|| bad("bad removed id"))?;
        rem_id = rem_id
            .checked_add(gap)
            .ok_or_else(|| bad("removed id overflow"))?;
        Ok(Some(rem_id))
    };
    let mut rem = next_removed()?;
    let mut b = 0usize;
    let mut keep_base_below = |limit: Option<u32>,
                               target: &mut Vec<EntityState>,
                               b: &mut usize,
                               rem: &mut Option<u32>|
     -> Result<(), ProtocolError> {
        while *b < base.len() && limit.is_none_or(|l| base[*b].id < l) {
            let old = base[*b];
            *b += 1;
            if *rem == Some(old.id) {
                *rem = next_removed()?;
                continue;
            }
            if target.len() >= entities_max {
                return Err(bad("more entities than the client allows"));
            }
            target.push(old);
        }
        Ok(())
    };
    for (n, mask) in body.masks.iter().enumerate() {
        let mask = *mask;
        if mask & !MASK_KNOWN != 0 {
            return Err(bad("unknown mask bits"));
        }
        let gap = read_varint(ids, &mut at_id).ok_or_else(|| bad("bad entity id"))?;
        if n > 0 && gap == 0 {
            return Err(bad("entity ids not increasing"));
        }
        id = id
            .checked_add(gap)
            .ok_or_else(|| bad("entity id overflow"))?;
        keep_base_below(Some(id), target, &mut b, &mut rem)?;
        let old = (b < base.len() && base[b].id == id).then(|| {
            b += 1;
            base[b - 1]
        });
        let mut s = old.unwrap_or(EntityState {
            id,
            ..EntityState::default()
        });
        match mask & MASK_POS {
            0 => {}
            MASK_POS_U32 => {
                let k =
                    take3(body.pos_u32.len(), &mut u32s).ok_or_else(|| bad("pos_u32 too short"))?;
                s.position = k.map(|k| body.pos_u32[k].to_native());
            }
            m => {
                let old = old.ok_or_else(|| bad("position delta for a new entity"))?;
                let d: [i64; 3] = if m == MASK_POS_I8 {
                    let k = take3(body.pos_i8.len(), &mut i8s)
                        .ok_or_else(|| bad("pos_i8 too short"))?;
                    k.map(|k| i64::from(body.pos_i8[k]))
                } else {
                    let k = take3(body.pos_i16.len(), &mut i16s)
                        .ok_or_else(|| bad("pos_i16 too short"))?;
                    k.map(|k| i64::from(body.pos_i16[k].to_native()))
                };
                for ((p, o), d) in s.position.iter_mut().zip(old.position).zip(d) {
                    *p = u32::try_from(i64::from(o) + d)
                        .map_err(|_| bad("position delta out of range"))?;
                }
            }
        }
        if mask & MASK_ROT != 0 {
            let k =
                take3(body.rotations.len(), &mut rots).ok_or_else(|| bad("rotations too short"))?;
            s.rotation = k.map(|k| body.rotations[k].to_native());
        } else if old.is_none() {
            return Err(bad("new entity without rotation"));
        }
        if mask & MASK_LIN_VEL != 0 {
            let k = take3(body.linear_velocities.len(), &mut lins)
                .ok_or_else(|| bad("linear_velocities too short"))?;
            s.linear_velocity = k.map(|k| body.linear_velocities[k].to_native());
        }
        if mask & MASK_ANG_VEL != 0 {
            let k = take3(body.angular_velocities.len(), &mut angs)
                .ok_or_else(|| bad("angular_velocities too short"))?;
            s.angular_velocity = k.map(|k| body.angular_velocities[k].to_native());
        }
        if old.is_none() && mask & MASK_POS != MASK_POS_U32 {
            return Err(bad("new entity without an absolute position"));
        }
        if target.len() >= entities_max {
            return Err(bad("more entities than the client allows"));
        }
        target.push(s);
    }
    keep_base_below(None, target, &mut b, &mut rem)?;
    let consumed = at_id == ids.len()
        && i8s == body.pos_i8.len()
        && i16s == body.pos_i16.len()
        && u32s == body.pos_u32.len()
        && rots == body.rotations.len()
        && lins == body.linear_velocities.len()
        && angs == body.angular_velocities.len()
        && rem.is_none();
    if !consumed {
        return Err(bad(
            "sections longer than the masks say, or removed ids not in the baseline",
        ));
    }
    Ok(())
}
