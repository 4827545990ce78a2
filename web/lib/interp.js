// The interpolation buffer: keeps the last snapshots' entity states in
// world units and renders a moment `delayMs` behind the newest, blending
// the two snapshots around it. Frames are reused; nothing is allocated per
// entity or per rendered frame once the buffers have grown to the view.

import { dequantizePosition, dequantizeRotation } from './snapshot.js';

/** Default render delay behind the newest snapshot, in ms. */
export const INTERPOLATION_DELAY_MS = 100;

class Frame {
  constructor() {
    this.time = 0;
    this.tick = 0;
    this.count = 0;
    this.capacity = 0;
    this.grow(64);
  }

  grow(n) {
    if (n <= this.capacity) return;
    this.capacity = Math.max(n, 2 * this.capacity);
    this.ids = new Uint32Array(this.capacity);
    this.positions = new Float32Array(3 * this.capacity);
    this.rotations = new Float32Array(4 * this.capacity);
  }
}

/** Rendered states: `count` rows of `ids`, `positions` (x, y, z metres), `rotations` (x, y, z, w). */
export class InterpolatedView {
  constructor() {
    this.count = 0;
    this.frame = new Frame();
    this.ids = this.frame.ids;
    this.positions = this.frame.positions;
    this.rotations = this.frame.rotations;
    /** How far behind the newest snapshot this view is, in ms. */
    this.behindMs = 0;
  }

  /** Row of `id`, or -1. */
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

export class Interpolator {
  /**
   * @param {{delayMs?: number, frames?: number}} [options] `frames`:
   * snapshots kept (enough to cover the delay at the snapshot rate).
   */
  constructor(options = {}) {
    this.delayMs = options.delayMs ?? INTERPOLATION_DELAY_MS;
    this.frames = Array.from({ length: Math.max(2, options.frames ?? 16) }, () => new Frame());
    this.head = 0; // next frame to write
    this.stored = 0;
    /** Estimated local time minus server time, ms. */
    this.offset = null;
  }

  /**
   * Records the receiver's view after a snapshot of `tick` arrived at
   * local time `nowMs`. `tickHz` and `boundsMin` come from the Welcome.
   */
  push(nowMs, tick, tickHz, boundsMin, entities) {
    const serverMs = (tick * 1000) / tickHz;
    const sample = nowMs - serverMs;
    // Follow the quickest arrival at once, slower ones slowly: the offset
    // tracks the network's least delay and drifts with the clocks.
    if (this.offset === null || sample < this.offset) this.offset = sample;
    else this.offset += (sample - this.offset) * 0.02;
    const f = this.frames[this.head];
    f.grow(entities.count);
    f.time = serverMs;
    f.tick = tick;
    f.count = entities.count;
    f.ids.set(entities.ids.subarray(0, entities.count));
    for (let i = 0; i < entities.count; i++) {
      dequantizePosition(boundsMin, entities.positions, 3 * i, f.positions, 3 * i);
      dequantizeRotation(entities.rotations, 3 * i, f.rotations, 4 * i);
    }
    this.head = (this.head + 1) % this.frames.length;
    this.stored = Math.min(this.stored + 1, this.frames.length);
  }

  frameAt(back) {
    const n = this.frames.length;
    return this.frames[(this.head - 1 - back + 2 * n) % n];
  }

  /**
   * The states at local time `nowMs` minus the delay, into `out` (an
   * InterpolatedView). Before two snapshots, or past the newest, the
   * nearest snapshot is shown as it is.
   */
  sample(nowMs, out) {
    if (this.stored === 0) {
      out.count = 0;
      return out;
    }
    const newest = this.frameAt(0);
    const t = nowMs - this.offset - this.delayMs;
    let b = newest;
    let a = null;
    for (let back = 1; back < this.stored; back++) {
      const f = this.frameAt(back);
      if (f.time <= t) {
        a = f;
        break;
      }
      b = f;
    }
    out.behindMs = Math.max(0, newest.time - Math.min(t, newest.time));
    const o = out.frame;
    o.grow(b.count);
    out.ids = o.ids;
    out.positions = o.positions;
    out.rotations = o.rotations;
    out.count = b.count;
    o.ids.set(b.ids.subarray(0, b.count));
    if (a === null || t >= b.time) {
      o.positions.set(b.positions.subarray(0, 3 * b.count));
      o.rotations.set(b.rotations.subarray(0, 4 * b.count));
      return out;
    }
    const w = Math.min(1, Math.max(0, (t - a.time) / (b.time - a.time)));
    let j = 0;
    for (let i = 0; i < b.count; i++) {
      const id = b.ids[i];
      while (j < a.count && a.ids[j] < id) j++;
      const p = 3 * i;
      const r = 4 * i;
      if (j < a.count && a.ids[j] === id) {
        const pa = 3 * j;
        const ra = 4 * j;
        for (let k = 0; k < 3; k++) o.positions[p + k] = a.positions[pa + k] + (b.positions[p + k] - a.positions[pa + k]) * w;
        // Normalised lerp along the shorter arc.
        let dot = 0;
        for (let k = 0; k < 4; k++) dot += a.rotations[ra + k] * b.rotations[r + k];
        const s = dot < 0 ? -1 : 1;
        let len = 0;
        for (let k = 0; k < 4; k++) {
          const v = a.rotations[ra + k] * (1 - w) + s * b.rotations[r + k] * w;
          o.rotations[r + k] = v;
          len += v * v;
        }
        len = Math.sqrt(len) || 1;
        for (let k = 0; k < 4; k++) o.rotations[r + k] /= len;
      } else {
        for (let k = 0; k < 3; k++) o.positions[p + k] = b.positions[p + k];
        for (let k = 0; k < 4; k++) o.rotations[r + k] = b.rotations[r + k];
      }
    }
    return out;
  }
}
