// Snapshots: the client side of net/src/snapshot.rs. A SnapshotReceiver
// holds the entities of the client's view as struct-of-arrays typed
// arrays, reads each snapshot's sections as typed-array views over the
// received buffer, and allocates nothing per entity (its arrays grow only
// when a view is larger than any before it).

import { ArchiveReader, ProtocolError } from './protocol.js';

const MASK_POS = 3;
const MASK_POS_I8 = 1;
const MASK_POS_I16 = 2;
const MASK_POS_U32 = 3;
const MASK_ROT = 1 << 2;
const MASK_LIN_VEL = 1 << 3;
const MASK_ANG_VEL = 1 << 4;
const MASK_BASELINE_SHIFT = 5;
const BASELINE_ESCAPE = 7;
const SNAPSHOT_BASELINES_MAX = 7;
const SNAPSHOT_ROOT_BYTES = 80;

/** Snapshots of this many ticks are kept as baselines (≥ the server's history). */
export const CLIENT_HISTORY_LEN = 32;
/** The largest view a client accepts. */
export const CLIENT_ENTITIES_MAX = 4096;

/**
 * Entity states as struct-of-arrays: `ids[i]`, `positions[3i..3i+3]`
 * (quantised millimetres from the bounds' minimum), `rotations[3i..]`
 * (smallest three), `linearVelocities[3i..]` (cm/s),
 * `angularVelocities[3i..]` (mrad/s); `count` rows are valid.
 */
export class EntityColumns {
  constructor(capacity = 64) {
    this.count = 0;
    this.alloc(capacity);
  }

  alloc(capacity) {
    this.capacity = capacity;
    this.ids = new Uint32Array(capacity);
    this.ticks = new Uint32Array(capacity);
    this.positions = new Uint32Array(3 * capacity);
    this.rotations = new Uint16Array(3 * capacity);
    this.linearVelocities = new Int16Array(3 * capacity);
    this.angularVelocities = new Int16Array(3 * capacity);
  }

  /** Makes room for `n` rows, keeping the first `count`. */
  ensure(n) {
    if (n <= this.capacity) return;
    const old = this;
    const { ids, ticks, positions, rotations, linearVelocities, angularVelocities } = old;
    this.alloc(Math.max(n, 2 * this.capacity));
    this.ids.set(ids);
    this.ticks.set(ticks);
    this.positions.set(positions);
    this.rotations.set(rotations);
    this.linearVelocities.set(linearVelocities);
    this.angularVelocities.set(angularVelocities);
  }

  /** Appends row `i` of `from` (with `tick`); returns the new row. */
  copyRow(from, i, tick) {
    const n = this.count;
    this.ensure(n + 1);
    this.ids[n] = from.ids[i];
    this.ticks[n] = tick;
    for (let k = 0; k < 3; k++) {
      this.positions[3 * n + k] = from.positions[3 * i + k];
      this.rotations[3 * n + k] = from.rotations[3 * i + k];
      this.linearVelocities[3 * n + k] = from.linearVelocities[3 * i + k];
      this.angularVelocities[3 * n + k] = from.angularVelocities[3 * i + k];
    }
    this.count = n + 1;
    return n;
  }

  /** Row of `id` at or after `from` (rows sorted by id), or -1. */
  seek(id, from) {
    let i = from;
    while (i < this.count && this.ids[i] < id) i++;
    return i < this.count && this.ids[i] === id ? i : -1;
  }

  /** Binary search for `id`; -1 if absent. */
  indexOf(id) {
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ids[mid] < id) lo = mid + 1;
      else hi = mid;
    }
    return lo < this.count && this.ids[lo] === id ? lo : -1;
  }
}

/** Reads one LEB128 value at `state.at` of `bytes`; throws on truncation or overflow. */
function readVarint(bytes, state, what) {
  let v = 0;
  for (let shift = 0; shift < 35; shift += 7) {
    if (state.at >= bytes.length) throw new ProtocolError(`bad ${what}`);
    const b = bytes[state.at++];
    const part = b & 0x7f;
    if (shift === 28 && part > 0x0f) throw new ProtocolError(`bad ${what}`);
    v += part * 2 ** shift;
    if ((b & 0x80) === 0) return v;
  }
  throw new ProtocolError(`bad ${what}`);
}

/**
 * The client's snapshot state: apply each received snapshot in turn; then
 * `entities` holds the view as of `latest` (the tick to acknowledge).
 */
export class SnapshotReceiver {
  constructor(historyLen = CLIENT_HISTORY_LEN, entitiesMax = CLIENT_ENTITIES_MAX) {
    /** The view, sorted by id; `ticks[i]` is the last snapshot that carried row i. */
    this.entities = new EntityColumns();
    this.next = new EntityColumns();
    /** Per tick slot: the entries that snapshot carried. */
    this.records = Array.from({ length: Math.max(2, historyLen) }, () => ({ tick: 0, valid: false, entries: new EntityColumns(16) }));
    this.cursors = new Int32Array(this.records.length);
    this.entitiesMax = entitiesMax;
    /** The newest tick applied, or null. */
    this.latest = null;
    this.scratch = new EntityColumns(16);
    this.ids = { at: 0 };
    this.rem = { at: 0 };
    this.old = { position: new Uint32Array(3), rotation: new Uint16Array(3), lin: new Int16Array(3), ang: new Int16Array(3) };
  }

  /**
   * Validates and applies one snapshot; on any error (ProtocolError) the
   * state is unchanged. A snapshot not newer than `latest` is refused.
   * @param {number} tick the frame's tick
   * @param {ArrayBuffer} buffer the received frame
   * @param {number} start payload start (16)
   * @param {number} end payload end
   */
  apply(tick, buffer, start, end) {
    if (tick === 0) throw new ProtocolError('snapshot tick 0');
    if (this.latest !== null && tick <= this.latest) throw new ProtocolError('snapshot older than the newest applied one');
    const r = new ArchiveReader(buffer, start, end);
    const root = r.root(SNAPSHOT_ROOT_BYTES, 4);
    const section = (field, size, Type) => {
      const v = r.vec(root + field, size, size);
      return new Type(buffer, v.items, v.len);
    };
    const body = {
      baselines: section(0, 4, Uint32Array),
      ids: section(8, 1, Uint8Array),
      masks: section(16, 1, Uint8Array),
      posI8: section(24, 1, Int8Array),
      posI16: section(32, 2, Int16Array),
      posU32: section(40, 4, Uint32Array),
      rotations: section(48, 2, Uint16Array),
      linear: section(56, 2, Int16Array),
      angular: section(64, 2, Int16Array),
      removed: section(72, 1, Uint8Array),
    };
    const entries = this.scratch;
    entries.count = 0;
    this.next.count = 0;
    this.decode(tick, body, entries);
    // Success: swap in the new view, keep the entries as a baseline.
    const prev = this.entities;
    this.entities = this.next;
    this.next = prev;
    const slot = tick % this.records.length;
    const rec = this.records[slot];
    this.scratch = rec.entries;
    rec.entries = entries;
    rec.tick = tick;
    rec.valid = true;
    this.latest = tick;
    return this.entities;
  }

  /** Fills `this.old` with the state of `id` after snapshot `baseline`; false if unknown. */
  baselineState(id, here, baseline) {
    const o = this.old;
    let src = null;
    let i = -1;
    if (here >= 0 && this.entities.ticks[here] === baseline) {
      src = this.entities;
      i = here;
    } else {
      const slot = baseline % this.records.length;
      const rec = this.records[slot];
      if (!(rec.valid && rec.tick === baseline)) return false;
      i = rec.entries.seek(id, this.cursors[slot]);
      if (i < 0) {
        // Ids come in increasing order: later searches start past here.
        let c = this.cursors[slot];
        while (c < rec.entries.count && rec.entries.ids[c] < id) c++;
        this.cursors[slot] = c;
        return false;
      }
      this.cursors[slot] = i;
      src = rec.entries;
    }
    for (let k = 0; k < 3; k++) {
      o.position[k] = src.positions[3 * i + k];
      o.rotation[k] = src.rotations[3 * i + k];
      o.lin[k] = src.linearVelocities[3 * i + k];
      o.ang[k] = src.angularVelocities[3 * i + k];
    }
    return true;
  }

  decode(tick, body, entries) {
    const { baselines, ids, masks, removed } = body;
    if (baselines.length > SNAPSHOT_BASELINES_MAX) throw new ProtocolError('more baselines than the table holds');
    for (let i = 0; i < baselines.length; i++) {
      if (baselines[i] >= tick) throw new ProtocolError('a baseline not before the snapshot');
    }
    this.cursors.fill(0);
    const idState = this.ids;
    const remState = this.rem;
    idState.at = 0;
    remState.at = 0;
    let i8s = 0, i16s = 0, u32s = 0, rots = 0, lins = 0, angs = 0;
    let id = 0;
    let remId = 0;
    const nextRemoved = (first) => {
      if (remState.at >= removed.length) return -1;
      const gap = readVarint(removed, remState, 'removed id');
      if (gap === 0 && !first) throw new ProtocolError('removed ids not increasing');
      remId += gap;
      if (remId > 0xffffffff) throw new ProtocolError('removed id overflow');
      return remId;
    };
    let rem = nextRemoved(true);
    const cur = this.entities;
    const next = this.next;
    const max = this.entitiesMax;
    let c = 0;
    // Keeps the current entities below `limit` (or all, with -1) that are not removed.
    const keepBelow = (limit) => {
      for (;;) {
        const here = c < cur.count && (limit < 0 || cur.ids[c] < limit) ? cur.ids[c] : -1;
        while (rem >= 0 && (here < 0 || rem < here) && (limit < 0 || rem < limit)) rem = nextRemoved(false);
        if (here < 0) return;
        if (rem === here) rem = nextRemoved(false);
        else {
          if (next.count >= max) throw new ProtocolError('more entities than the client allows');
          next.copyRow(cur, c, cur.ticks[c]);
        }
        c++;
      }
    };
    const o = this.old;
    for (let n = 0; n < masks.length; n++) {
      const mask = masks[n];
      const gap = readVarint(ids, idState, 'entity id');
      if (n > 0 && gap === 0) throw new ProtocolError('entity ids not increasing');
      id += gap;
      if (id > 0xffffffff) throw new ProtocolError('entity id overflow');
      keepBelow(id);
      if (rem === id) throw new ProtocolError('an entity both sent and removed');
      let here = -1;
      if (c < cur.count && cur.ids[c] === id) here = c++;
      const index = mask >>> MASK_BASELINE_SHIFT;
      let baseline;
      if (index === BASELINE_ESCAPE) {
        const age = readVarint(ids, idState, 'baseline age');
        if (age === 0 || age > tick) throw new ProtocolError('baseline age out of range');
        baseline = tick - age;
      } else {
        if (index >= baselines.length) throw new ProtocolError('baseline index past the table');
        baseline = baselines[index];
      }
      const absolute = baseline === 0;
      if (absolute) {
        o.position.fill(0);
        o.rotation.fill(0);
        o.lin.fill(0);
        o.ang.fill(0);
      } else if (!this.baselineState(id, here, baseline)) {
        throw new ProtocolError('unknown baseline');
      }
      if (next.count >= max) throw new ProtocolError('more entities than the client allows');
      next.ensure(next.count + 1);
      const row = next.count;
      next.ids[row] = id;
      next.ticks[row] = tick;
      const p = 3 * row;
      const mode = mask & MASK_POS;
      if (mode === 0) {
        next.positions[p] = o.position[0];
        next.positions[p + 1] = o.position[1];
        next.positions[p + 2] = o.position[2];
      } else if (mode === MASK_POS_U32) {
        if (u32s + 3 > body.posU32.length) throw new ProtocolError('pos_u32 too short');
        next.positions[p] = body.posU32[u32s];
        next.positions[p + 1] = body.posU32[u32s + 1];
        next.positions[p + 2] = body.posU32[u32s + 2];
        u32s += 3;
      } else {
        if (absolute) throw new ProtocolError('position delta without a baseline');
        let d;
        let k0;
        if (mode === MASK_POS_I8) {
          if (i8s + 3 > body.posI8.length) throw new ProtocolError('pos_i8 too short');
          d = body.posI8;
          k0 = i8s;
          i8s += 3;
        } else {
          if (i16s + 3 > body.posI16.length) throw new ProtocolError('pos_i16 too short');
          d = body.posI16;
          k0 = i16s;
          i16s += 3;
        }
        for (let k = 0; k < 3; k++) {
          const v = o.position[k] + d[k0 + k];
          if (v < 0 || v > 0xffffffff) throw new ProtocolError('position delta out of range');
          next.positions[p + k] = v;
        }
      }
      if (mask & MASK_ROT) {
        if (rots + 3 > body.rotations.length) throw new ProtocolError('rotations too short');
        for (let k = 0; k < 3; k++) next.rotations[p + k] = body.rotations[rots + k];
        rots += 3;
      } else if (absolute) {
        throw new ProtocolError('absolute entry without rotation');
      } else {
        for (let k = 0; k < 3; k++) next.rotations[p + k] = o.rotation[k];
      }
      if (mask & MASK_LIN_VEL) {
        if (lins + 3 > body.linear.length) throw new ProtocolError('linear_velocities too short');
        for (let k = 0; k < 3; k++) next.linearVelocities[p + k] = body.linear[lins + k];
        lins += 3;
      } else {
        for (let k = 0; k < 3; k++) next.linearVelocities[p + k] = o.lin[k];
      }
      if (mask & MASK_ANG_VEL) {
        if (angs + 3 > body.angular.length) throw new ProtocolError('angular_velocities too short');
        for (let k = 0; k < 3; k++) next.angularVelocities[p + k] = body.angular[angs + k];
        angs += 3;
      } else {
        for (let k = 0; k < 3; k++) next.angularVelocities[p + k] = o.ang[k];
      }
      if (absolute && mode !== MASK_POS_U32) throw new ProtocolError('absolute entry without an absolute position');
      next.count = row + 1;
      entries.copyRow(next, row, tick);
    }
    keepBelow(-1);
    const consumed =
      idState.at === ids.length &&
      i8s === body.posI8.length &&
      i16s === body.posI16.length &&
      u32s === body.posU32.length &&
      rots === body.rotations.length &&
      lins === body.linear.length &&
      angs === body.angular.length &&
      rem < 0 &&
      remState.at === removed.length;
    if (!consumed) throw new ProtocolError('sections longer than the masks say');
  }
}

// ---------------------------------------------------------------- quantisation

const ROTATION_CENTRE = (1 << 14) - 1;
const ROTATION_VALUE_MASK = (1 << 15) - 1;

/** Position `q` (3 quantised axes at `q[at..]`) in metres into `out[o..o+3]`. */
export function dequantizePosition(boundsMin, q, at, out, o) {
  out[o] = boundsMin[0] + q[at] * 0.001;
  out[o + 1] = boundsMin[1] + q[at + 1] * 0.001;
  out[o + 2] = boundsMin[2] + q[at + 2] * 0.001;
}

/** Smallest-three rotation at `q[at..at+3]` into the unit quaternion `out[o..o+4]` (x, y, z, w). */
export function dequantizeRotation(q, at, out, o) {
  const a = q[at];
  const b = q[at + 1];
  const c = q[at + 2];
  const largest = ((a >>> 15) << 1) | (b >>> 15);
  const s = (v) => (Math.min(v & ROTATION_VALUE_MASK, 2 * ROTATION_CENTRE) - ROTATION_CENTRE) / ROTATION_CENTRE / Math.SQRT2;
  const x0 = s(a);
  const x1 = s(b);
  const x2 = s(c);
  const rest = Math.sqrt(Math.max(0, 1 - x0 * x0 - x1 * x1 - x2 * x2));
  let k = 0;
  for (let i = 0; i < 4; i++) {
    out[o + i] = i === largest ? rest : k === 0 ? x0 : k === 1 ? x1 : x2;
    if (i !== largest) k++;
  }
  const len = Math.hypot(out[o], out[o + 1], out[o + 2], out[o + 3]);
  for (let i = 0; i < 4; i++) out[o + i] /= len;
}
