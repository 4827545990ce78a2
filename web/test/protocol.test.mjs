// The SDK's decoder and encoder against frames the Rust encoders wrote
// (vectors.json, from net/tests/js_vectors.rs). Run: node --test web/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import {
  decodeServerMessage,
  encodeAction,
  encodeInput,
  encodeOwnershipRequest,
  encodePing,
  encodeSdp,
  readFrame,
  ProtocolError,
} from '../lib/protocol.js';
import { SnapshotReceiver, dequantizeRotation, dequantizePosition } from '../lib/snapshot.js';
import { Interpolator, InterpolatedView } from '../lib/interp.js';

const vectors = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8'));

function bytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** The frame as a data channel hands it over: its own ArrayBuffer. */
function buffer(hex) {
  return bytes(hex).buffer;
}

/** Decoded values as JSON would hold them (payloads as arrays of numbers). */
function plain(v) {
  return JSON.parse(JSON.stringify(v, (_, x) => (x instanceof Uint8Array ? Array.from(x) : x)));
}

test('every server message kind decodes to what the Rust encoder wrote', () => {
  assert.ok(vectors.server.length >= 12);
  for (const v of vectors.server) {
    const m = decodeServerMessage(buffer(v.frame), v.channel);
    assert.deepEqual(plain(m), v.expect, v.name);
  }
});

test('the encoder writes client messages byte for byte as the Rust encoder does', () => {
  for (const v of vectors.client) {
    const e = v.encode;
    let out;
    switch (e.kind) {
      case 'Input':
        out = encodeInput(e.sequence, e.ack, e.owned);
        break;
      case 'Action':
        out = encodeAction(e.sequence, { ...e, payload: Uint8Array.from(e.payload) });
        break;
      case 'OwnershipRequest':
        out = encodeOwnershipRequest(e.sequence, e.networkId, e.op);
        break;
      case 'Ping':
        out = encodePing(e.sequence, e.ack, e.clientTimeUs);
        break;
      case 'Sdp':
        out = encodeSdp(e.sequence, e.type, e.sdp);
        break;
      default:
        assert.fail(`unknown kind ${e.kind}`);
    }
    assert.deepEqual(Array.from(out), Array.from(bytes(v.frame)), v.name);
  }
});

test('a frame on the wrong channel, truncated, or of another version is refused', () => {
  const welcome = vectors.server.find((v) => v.name === 'welcome');
  assert.throws(() => decodeServerMessage(buffer(welcome.frame), 'state'), /wrong channel/);
  const b = bytes(welcome.frame);
  assert.throws(() => decodeServerMessage(b.slice(0, b.length - 1).buffer, 'actions'), ProtocolError);
  assert.throws(() => decodeServerMessage(b.slice(0, 10).buffer), /shorter than its header/);
  const other = b.slice();
  other[0] = 2;
  assert.throws(() => decodeServerMessage(other.buffer), (e) => e instanceof ProtocolError && e.version === 2);
  const badKind = b.slice();
  badKind[1] = 99;
  assert.throws(() => decodeServerMessage(badKind.buffer), /unknown message kind 99/);
  const flags = b.slice();
  flags[2] = 1;
  assert.throws(() => decodeServerMessage(flags.buffer), /flags/);
  // A client message from the server is refused.
  assert.throws(() => decodeServerMessage(encodePing(1, 0, 5).buffer, 'state'), /client message/);
  assert.throws(() => readFrame(new Uint8Array(4)), /ArrayBuffer/);
});

test('archives pointing outside themselves or with bad tags are refused, not read', () => {
  const kick = vectors.server.find((v) => v.name === 'kick banned');
  const b = bytes(kick.frame);
  const tag = b.slice();
  tag[16 + (b.length - 16 - 12)] = 200; // the reason's tag, first byte of the root
  assert.throws(() => decodeServerMessage(tag.buffer, 'actions'), /invalid KickReason tag 200/);
  const names = vectors.server.find((v) => v.name === 'entity names');
  const n = bytes(names.frame);
  const root = n.length - 8;
  const far = n.slice();
  new DataView(far.buffer).setUint32(root + 4, 100000, true); // the Vec's length
  assert.throws(() => decodeServerMessage(far.buffer, 'actions'), /outside/);
  const peer = vectors.server.find((v) => v.name === 'peer joined');
  const p = bytes(peer.frame);
  const bad = p.slice();
  // Its user_id is out of line: point its bytes past the end.
  new DataView(bad.buffer).setInt32(bad.length - 24 + 4 + 4, 5000, true);
  assert.throws(() => decodeServerMessage(bad.buffer, 'actions'), /outside/);
});

test('the encoder refuses what the server would refuse', () => {
  assert.throws(() => encodeAction(1, { topic: 'Chat', actionType: 'm' }), /invalid topic/);
  assert.throws(() => encodeAction(1, { topic: 'chat', actionType: '' }), /action type/);
  assert.throws(() => encodeAction(1, { topic: 'chat', actionType: 'm', payload: new Uint8Array(4097) }), /payload/);
  assert.throws(() => encodeAction(1, { topic: 'chat', actionType: 'm', cache: 'forever' }), /cache/);
  assert.throws(() => encodeAction(1, { topic: 'chat', actionType: 'm', target: { kind: 'user' } }), /target/);
  assert.throws(() => encodeInput(1, 0, new Array(17).fill({ networkId: 1, position: [0, 0, 0], rotation: [0, 0, 0, 1] })), /at most 16/);
  assert.throws(() => encodeInput(1, 0, [{ networkId: 1, position: [NaN, 0, 0], rotation: [0, 0, 0, 1] }]), /finite/);
  assert.throws(() => encodeOwnershipRequest(1, 5, 'steal'), /ownership op/);
});

function expectedView(entities) {
  return entities.map((e) => e.slice());
}

function viewOf(cols) {
  const out = [];
  for (let i = 0; i < cols.count; i++) {
    out.push([
      cols.ids[i],
      ...cols.positions.subarray(3 * i, 3 * i + 3),
      ...cols.rotations.subarray(3 * i, 3 * i + 3),
      ...cols.linearVelocities.subarray(3 * i, 3 * i + 3),
      ...cols.angularVelocities.subarray(3 * i, 3 * i + 3),
    ]);
  }
  return out;
}

test('a run of snapshots leaves the client holding what the Rust client holds', () => {
  const run = vectors.snapshotRun;
  assert.ok(run.snapshots.length > 40);
  const r = new SnapshotReceiver();
  for (const s of run.snapshots) {
    const buf = buffer(s.frame);
    const m = decodeServerMessage(buf, 'state');
    assert.equal(m.kind, 'Snapshot');
    assert.equal(m.tick, s.tick);
    const view = r.apply(m.tick, buf, m.payloadStart, m.payloadEnd);
    assert.deepEqual(viewOf(view), expectedView(s.entities), `tick ${s.tick}`);
    assert.equal(r.latest, s.tick);
  }
});

test('a snapshot that cannot be applied leaves the state unchanged', () => {
  const run = vectors.snapshotRun;
  const r = new SnapshotReceiver();
  const first = run.snapshots[0];
  const b = buffer(first.frame);
  r.apply(first.tick, b, 16, b.byteLength);
  const before = viewOf(r.entities);
  // Stale: not newer than the newest applied.
  assert.throws(() => r.apply(first.tick, b, 16, b.byteLength), /older/);
  // A later snapshot whose deltas name a baseline this client never had.
  const late = run.snapshots.find((s) => s.tick > first.tick + 5 && bytes(s.frame).length < 400);
  const fresh = new SnapshotReceiver();
  const lb = buffer(late.frame);
  assert.throws(() => fresh.apply(late.tick, lb, 16, lb.byteLength), (e) => e instanceof ProtocolError && /^(unknown baseline|baseline index past the table)$/.test(e.message));
  assert.equal(fresh.latest, null);
  assert.equal(fresh.entities.count, 0);
  // A truncated one.
  const cut = bytes(run.snapshots[1].frame);
  assert.throws(() => r.apply(run.snapshots[1].tick, cut.slice(0, cut.length - 8).buffer, 16, cut.length - 8), ProtocolError);
  assert.deepEqual(viewOf(r.entities), before);
  assert.equal(r.latest, first.tick);
});

/** The snapshot root's sections: [field offset, item size, name]. */
const SECTIONS = [[0, 4, 'baselines'], [8, 1, 'ids'], [16, 1, 'masks'], [24, 1, 'posI8'], [32, 2, 'posI16'],
  [40, 4, 'posU32'], [48, 2, 'rotations'], [56, 2, 'linear'], [64, 2, 'angular'], [72, 1, 'removed']];

test('a snapshot whose sections are misaligned, even empty ones, or whose varints are bad is refused', () => {
  const run = vectors.snapshotRun;
  // An empty section of 2- or 4-byte items: a typed array over it needs an aligned start too.
  let found = null;
  for (const s of run.snapshots) {
    const b = bytes(s.frame);
    const root = b.length - 80;
    const v = new DataView(b.buffer);
    const empty = SECTIONS.find(([field, size]) => size > 1 && v.getUint32(root + field + 4, true) === 0);
    if (empty) {
      found = { s, b, root, field: empty[0] };
      break;
    }
  }
  assert.ok(found, 'the run has a snapshot with an empty multi-byte section');
  const { s, b, root, field } = found;
  const v = new DataView(b.buffer);
  v.setInt32(root + field, v.getInt32(root + field, true) + 1, true);
  assert.throws(() => new SnapshotReceiver().apply(s.tick, b.buffer, 16, b.length), /not aligned/);
  // Past the end, though empty.
  v.setInt32(root + field, b.length, true);
  assert.throws(() => new SnapshotReceiver().apply(s.tick, b.buffer, 16, b.length), /outside/);

  // An id varint that runs past 32 bits.
  const first = run.snapshots[0];
  const f = bytes(first.frame);
  const fv = new DataView(f.buffer);
  const froot = f.length - 80;
  const idsAt = froot + 8 + fv.getInt32(froot + 8, true);
  const idsLen = fv.getUint32(froot + 8 + 4, true);
  assert.ok(idsLen >= 5, 'the first snapshot sends at least five bytes of ids');
  f.fill(0xff, idsAt, idsAt + 5);
  const r = new SnapshotReceiver();
  assert.throws(() => r.apply(first.tick, f.buffer, 16, f.length), (e) => e instanceof ProtocolError && /^bad /.test(e.message));
  assert.equal(r.latest, null);
  assert.equal(r.entities.count, 0);
});

test('a string starting with a byte order mark keeps it, as Rust does', () => {
  const kick = bytes(vectors.server.find((v) => v.name === 'kick operator').frame);
  // The message is inline (8 bytes after the reason's tag): U+FEFF then 'a'.
  kick.set([0xef, 0xbb, 0xbf, 0x61, 0xff, 0xff, 0xff, 0xff], 16 + 4);
  const m = decodeServerMessage(kick.buffer, 'actions');
  assert.equal(m.message, '\ufeffa');
});

test('quantised positions and rotations come back in metres and unit quaternions', () => {
  const out = new Float32Array(4);
  // Smallest three of the identity: w (index 3) dropped, the others at the centre.
  dequantizeRotation(Uint16Array.from([16383 | 0x8000, 16383 | 0x8000, 16383]), 0, out, 0);
  assert.deepEqual(Array.from(out), [0, 0, 0, 1]);
  const p = new Float64Array(3);
  dequantizePosition([-100, -10, -100], Uint32Array.from([100000, 10500, 0]), 0, p, 0);
  assert.deepEqual(Array.from(p).map((v) => Math.round(v * 1000) / 1000), [0, 0.5, -100]);
  // Every rotation of the run is a unit quaternion.
  const r = new SnapshotReceiver();
  for (const s of vectors.snapshotRun.snapshots) {
    const b = buffer(s.frame);
    r.apply(s.tick, b, 16, b.byteLength);
  }
  for (let i = 0; i < r.entities.count; i++) {
    dequantizeRotation(r.entities.rotations, 3 * i, out, 0);
    assert.ok(Math.abs(Math.hypot(...out) - 1) < 1e-6);
  }
});

test('the interpolation buffer renders between the two snapshots around the delayed time', () => {
  const interp = new Interpolator({ delayMs: 100 });
  const cols = (x) => ({
    count: 1,
    ids: Uint32Array.from([7]),
    positions: Uint32Array.from([x, 0, 0]),
    rotations: Uint16Array.from([16383 | 0x8000, 16383 | 0x8000, 16383]),
  });
  // Tick 30 at 60 Hz is 500 ms of server time; arriving at local 1500 ms.
  interp.push(1500, 30, 60, [0, 0, 0], cols(1000));
  interp.push(1550, 33, 60, [0, 0, 0], cols(2000));
  const view = new InterpolatedView();
  // Local 1625 - offset 1000 - delay 100 = server 525 ms: halfway from 500 to 550.
  interp.sample(1625, view);
  assert.equal(view.count, 1);
  assert.equal(view.ids[0], 7);
  assert.ok(Math.abs(view.positions[0] - 1.5) < 1e-6, `${view.positions[0]}`);
  // Past the newest: held at it.
  interp.sample(5000, view);
  assert.ok(Math.abs(view.positions[0] - 2) < 1e-6);
  assert.equal(view.indexOf(7), 0);
  assert.equal(view.indexOf(8), -1);
});
