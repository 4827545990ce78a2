// The wire protocol (version 4): frame headers, and the rkyv archives of
// every message, read in place and written byte for byte as the server's
// Rust encoder writes them. docs/protocol.md is the specification.

/** The protocol version this SDK speaks (the first byte of every frame). */
export const PROTOCOL_VERSION = 4;
/** Bytes of the frame header before the payload. */
export const FRAME_HEADER_LEN = 16;

/** Message kinds (the header's second byte). */
export const Kind = Object.freeze({
  Input: 1,
  Action: 2,
  OwnershipRequest: 3,
  Ping: 4,
  Sdp: 5,
  Welcome: 64,
  Snapshot: 65,
  ActionBroadcast: 66,
  PeerJoined: 67,
  PeerLeft: 68,
  OwnershipChanged: 69,
  Draining: 70,
  Kick: 71,
  Pong: 72,
  VersionMismatch: 73,
  OwnershipRefused: 74,
  OwnershipRequested: 75,
  EntityNames: 76,
  ServerSdp: 77,
  TrackAdded: 78,
  TrackRemoved: 79,
});

/** Longest SDP in an Sdp message, in bytes. */
export const SDP_BYTES_MAX = 65536;
const SDP_TYPES = ['offer', 'answer'];
const TRACK_KINDS = ['audio', 'video'];

const KIND_NAMES = new Map(Object.entries(Kind).map(([k, v]) => [v, k]));

/** Largest payload per kind, as the server enforces it. */
export const PAYLOAD_LIMITS = Object.freeze({
  [Kind.Input]: 1024,
  [Kind.Action]: 8192,
  [Kind.OwnershipRequest]: 64,
  [Kind.Ping]: 64,
  [Kind.Welcome]: 262144,
  [Kind.Snapshot]: 1134,
  [Kind.ActionBroadcast]: 8192,
  [Kind.PeerJoined]: 1024,
  [Kind.PeerLeft]: 64,
  [Kind.OwnershipChanged]: 64,
  [Kind.Draining]: 64,
  [Kind.Kick]: 1024,
  [Kind.Pong]: 64,
  [Kind.VersionMismatch]: 64,
  [Kind.OwnershipRefused]: 64,
  [Kind.OwnershipRequested]: 64,
  [Kind.EntityNames]: 65536,
  [Kind.Sdp]: SDP_BYTES_MAX + 64,
  [Kind.ServerSdp]: SDP_BYTES_MAX + 64,
  [Kind.TrackAdded]: 64,
  [Kind.TrackRemoved]: 64,
});

/** The channel each kind travels on. */
export function channelOf(kind) {
  return kind === Kind.Input || kind === Kind.Ping || kind === Kind.Snapshot || kind === Kind.Pong
    ? 'state'
    : 'actions';
}

// Limits of message contents (net/src/messages.rs).
export const INPUT_OWNED_MAX = 16;
export const ACTION_TYPE_BYTES_MAX = 64;
export const ACTION_PAYLOAD_BYTES_MAX = 4096;
export const TOPIC_BYTES_MAX = 32;
export const TOPICS_PER_SESSION_MAX = 16;
/** The user index the server stamps on its own actions. */
export const SERVER_SENDER = 0xffffffff;

export const Target = Object.freeze({ Everyone: 0, User: 1, Server: 2 });
export const Cache = Object.freeze({ No: 0, Keep: 1, ReplaceOwn: 2 });
export const OwnershipOp = Object.freeze({ Take: 0, Release: 1, Transfer: 2 });
const CACHE_NAMES = ['no', 'keep', 'replace_own'];
const OP_NAMES = ['take', 'release', 'transfer'];
const REFUSAL_NAMES = [
  'unknown_entity',
  'avatar',
  'owned_by',
  'not_owner',
  'unknown_user',
  'scene_body',
  'too_many',
];
/** Refusals that carry a number (a user index, or the limit). */
const REFUSAL_WITH_VALUE = new Set([2, 4, 6]);
export const KICK_REASONS = Object.freeze([
  'operator',
  'banned',
  'protocol_violation',
  'instance_ended',
  'server_error',
  'replaced',
  'silent',
]);

/** A frame or payload the protocol does not allow. */
export class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/** Whether a topic is valid: 1 to 32 bytes of a-z, 0-9, '.', '_', '-'. */
export function isValidTopic(topic) {
  return typeof topic === 'string' && /^[a-z0-9._-]{1,32}$/.test(topic);
}

const utf8 = new TextEncoder();
// ignoreBOM: a leading U+FEFF is part of the string, as in Rust.
const utf8Strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

// ---------------------------------------------------------------- reading

/**
 * Reads an rkyv archive in place: `view` covers the whole received
 * buffer, the archive is `[start, end)` of it. Every read is bounds
 * checked; a bad archive throws ProtocolError.
 */
export class ArchiveReader {
  /** @param {ArrayBuffer} buffer @param {number} start @param {number} end */
  constructor(buffer, start, end) {
    this.buffer = buffer;
    this.view = new DataView(buffer);
    this.start = start;
    this.end = end;
  }

  /** Position of the root of `size` bytes aligned to `align`. */
  root(size, align) {
    const at = this.end - size;
    if (at < this.start) throw new ProtocolError(`payload of ${this.end - this.start} bytes is shorter than its ${size}-byte root`);
    if ((at - this.start) % align !== 0) throw new ProtocolError('root not aligned');
    return at;
  }

  check(at, len) {
    if (at < this.start || len < 0 || at + len > this.end) {
      throw new ProtocolError(`archive reads ${len} bytes at ${at - this.start}, outside its ${this.end - this.start} bytes`);
    }
  }

  u8(at) { this.check(at, 1); return this.view.getUint8(at); }
  u16(at) { this.check(at, 2); return this.view.getUint16(at, true); }
  u32(at) { this.check(at, 4); return this.view.getUint32(at, true); }
  i32(at) { this.check(at, 4); return this.view.getInt32(at, true); }
  f32(at) { this.check(at, 4); return this.view.getFloat32(at, true); }
  /** A u64 as a Number (exact below 2^53). */
  u64(at) { this.check(at, 8); return Number(this.view.getBigUint64(at, true)); }

  bool(at) {
    const v = this.u8(at);
    if (v > 1) throw new ProtocolError(`bool of value ${v}`);
    return v === 1;
  }

  /** An enum's tag, checked against its variant count. */
  tag(at, variants, what) {
    const t = this.u8(at);
    if (t >= variants) throw new ProtocolError(`invalid ${what} tag ${t}`);
    return t;
  }

  /** `[f32; n]` at `at`. */
  f32s(at, n) {
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.f32(at + 4 * i);
    return out;
  }

  /**
   * A `Vec<T>` field: where its items start, and how many, checked to lie
   * inside the archive and be aligned for the item.
   */
  vec(at, itemSize, itemAlign) {
    const offset = this.i32(at);
    const len = this.u32(at + 4);
    const items = at + offset;
    // Empty vectors too: a typed array over them needs an aligned,
    // in-bounds start.
    if ((items - this.start) % itemAlign !== 0) throw new ProtocolError('vector items not aligned');
    this.check(items, len * itemSize);
    return { items, len };
  }

  /** The bytes of a `String` field (inline or out of line). */
  strBytes(at) {
    this.check(at, 8);
    const b0 = this.view.getUint8(at);
    if ((b0 & 0xc0) !== 0x80) {
      let len = 0;
      while (len < 8 && this.view.getUint8(at + len) !== 0xff) len++;
      return new Uint8Array(this.buffer, at, len);
    }
    const l = this.view.getUint32(at, true);
    const len = (l & 0x3f) | ((l >>> 2) & ~0x3f);
    const offset = this.view.getInt32(at + 4, true);
    if (len <= 8) throw new ProtocolError('an out-of-line string short enough to be inline');
    this.check(at + offset, len);
    return new Uint8Array(this.buffer, at + offset, len);
  }

  /** A `String` field, decoded (invalid UTF-8 throws). */
  str(at) {
    try {
      return utf8Strict.decode(this.strBytes(at));
    } catch (e) {
      if (e instanceof ProtocolError) throw e;
      throw new ProtocolError('string is not UTF-8');
    }
  }
}

/**
 * Splits a received frame. Checks the header as the server does; returns
 * `{kind, kindName, sequence, tick, payloadStart, payloadEnd}`, positions in
 * `buffer`. Throws ProtocolError on a bad frame. A frame of another
 * version throws with `error.version` set (the server's, readable from the
 * first byte), so that a caller can report a version mismatch.
 * @param {ArrayBuffer} buffer
 */
export function readFrame(buffer, expectedChannel) {
  if (!(buffer instanceof ArrayBuffer)) throw new ProtocolError('a frame must be an ArrayBuffer');
  if (buffer.byteLength < FRAME_HEADER_LEN) throw new ProtocolError(`frame of ${buffer.byteLength} bytes is shorter than its header`);
  const v = new DataView(buffer);
  const version = v.getUint8(0);
  const kind = v.getUint8(1);
  if (version !== PROTOCOL_VERSION) {
    // A VersionMismatch from a server of another version is still readable.
    const e = new ProtocolError(`frame of protocol version ${version}; this client speaks ${PROTOCOL_VERSION}`);
    e.version = version;
    throw e;
  }
  const name = KIND_NAMES.get(kind);
  if (name === undefined) throw new ProtocolError(`unknown message kind ${kind}`);
  if (v.getUint16(2, true) !== 0) throw new ProtocolError('flags must be 0');
  const length = v.getUint32(4, true);
  if (length > PAYLOAD_LIMITS[kind]) throw new ProtocolError(`${name} payload of ${length} bytes is over its limit of ${PAYLOAD_LIMITS[kind]}`);
  if (length !== buffer.byteLength - FRAME_HEADER_LEN) throw new ProtocolError(`header says ${length} payload bytes, the frame has ${buffer.byteLength - FRAME_HEADER_LEN}`);
  if (expectedChannel !== undefined && channelOf(kind) !== expectedChannel) throw new ProtocolError(`${name} on the wrong channel (${expectedChannel})`);
  return {
    kind,
    kindName: name,
    sequence: v.getUint32(8, true),
    tick: v.getUint32(12, true),
    payloadStart: FRAME_HEADER_LEN,
    payloadEnd: buffer.byteLength,
  };
}

function readTarget(r, at) {
  const t = r.tag(at, 3, 'Target');
  if (t === Target.User) return { kind: 'user', user: r.u32(at + 4) };
  return { kind: t === Target.Everyone ? 'everyone' : 'server' };
}

function readOp(r, at) {
  const t = r.tag(at, 3, 'OwnershipOp');
  const op = { kind: OP_NAMES[t] };
  if (t === OwnershipOp.Transfer) op.to = r.u32(at + 4);
  return op;
}

/** `ActionBroadcast` (40 bytes) at `at`. */
function readActionBroadcast(r, at) {
  const p = r.vec(at + 32, 1, 1);
  const topic = r.str(at + 4);
  const actionType = r.str(at + 12);
  if (!isValidTopic(topic)) throw new ProtocolError(`invalid topic ${JSON.stringify(topic.slice(0, 40))}`);
  if (actionType.length === 0 || utf8.encode(actionType).length > ACTION_TYPE_BYTES_MAX) throw new ProtocolError('action_type of 0 or more than 64 bytes');
  if (p.len > ACTION_PAYLOAD_BYTES_MAX) throw new ProtocolError('action payload over 4096 bytes');
  return {
    sender: r.u32(at),
    topic,
    actionType,
    target: readTarget(r, at + 20),
    cache: CACHE_NAMES[r.tag(at + 28, 3, 'Cache')],
    // A copy: the received buffer is not kept.
    payload: new Uint8Array(r.buffer.slice(p.items, p.items + p.len)),
  };
}

function textChecked(s, what, max = 256) {
  if (utf8.encode(s).length > max) throw new ProtocolError(`${what} over ${max} bytes`);
  return s;
}

/**
 * Decodes one server message. Snapshots are not decoded here (see
 * SnapshotReceiver); for them `{kind: 'Snapshot', tick, payloadStart,
 * payloadEnd}` is returned. Every other kind becomes a plain object named
 * by `kind`.
 * @param {ArrayBuffer} buffer
 * @param {'state'|'actions'} [channel]
 */
export function decodeServerMessage(buffer, channel) {
  const f = readFrame(buffer, channel);
  if (f.kind < 64) throw new ProtocolError(`${f.kindName} is a client message`);
  const r = new ArchiveReader(buffer, f.payloadStart, f.payloadEnd);
  const base = { kind: f.kindName, sequence: f.sequence, tick: f.tick };
  let at;
  switch (f.kind) {
    case Kind.Snapshot:
      return { ...base, payloadStart: f.payloadStart, payloadEnd: f.payloadEnd };
    case Kind.Welcome: {
      at = r.root(64, 4);
      const cached = r.vec(at + 48, 40, 4);
      const owners = r.vec(at + 56, 8, 4);
      if (cached.len > 1024) throw new ProtocolError('more than 1024 cached actions');
      if (owners.len > 4096) throw new ProtocolError('more than 4096 owners');
      const cachedActions = [];
      for (let i = 0; i < cached.len; i++) cachedActions.push(readActionBroadcast(r, cached.items + 40 * i));
      const ownerList = [];
      for (let i = 0; i < owners.len; i++) {
        ownerList.push({ networkId: r.u32(owners.items + 8 * i), owner: r.u32(owners.items + 8 * i + 4) });
      }
      return {
        ...base,
        userId: textChecked(r.str(at), 'user_id'),
        userIndex: r.u32(at + 8),
        avatar: r.u32(at + 12),
        tickHz: r.u16(at + 16),
        snapshotHz: r.u16(at + 18),
        boundsMin: r.f32s(at + 20, 3),
        boundsMax: r.f32s(at + 32, 3),
        positionBits: r.u8(at + 44),
        cachedActions,
        owners: ownerList,
      };
    }
    case Kind.ActionBroadcast:
      return { ...base, ...readActionBroadcast(r, r.root(40, 4)) };
    case Kind.PeerJoined:
      at = r.root(24, 4);
      return {
        ...base,
        userIndex: r.u32(at),
        userId: textChecked(r.str(at + 4), 'user_id'),
        name: textChecked(r.str(at + 12), 'name'),
        avatar: r.u32(at + 20),
      };
    case Kind.PeerLeft:
      return { ...base, userIndex: r.u32(r.root(4, 4)) };
    case Kind.OwnershipChanged: {
      at = r.root(12, 4);
      const some = r.tag(at + 4, 2, 'Option');
      return { ...base, networkId: r.u32(at), owner: some ? r.u32(at + 8) : null };
    }
    case Kind.OwnershipRefused: {
      at = r.root(20, 4);
      const t = r.tag(at + 12, REFUSAL_NAMES.length, 'OwnershipRefusal');
      const reason = { kind: REFUSAL_NAMES[t] };
      if (REFUSAL_WITH_VALUE.has(t)) reason.value = r.u32(at + 16);
      return { ...base, networkId: r.u32(at), op: readOp(r, at + 4), reason };
    }
    case Kind.OwnershipRequested:
      at = r.root(8, 4);
      return { ...base, networkId: r.u32(at), by: r.u32(at + 4) };
    case Kind.EntityNames: {
      at = r.root(8, 4);
      const v = r.vec(at, 12, 4);
      if (v.len > 2048) throw new ProtocolError('more than 2048 entity names');
      const entities = [];
      for (let i = 0; i < v.len; i++) {
        const e = v.items + 12 * i;
        entities.push({ networkId: r.u32(e), name: textChecked(r.str(e + 4), 'entity name', 128) });
      }
      return { ...base, entities };
    }
    case Kind.Draining:
      return { ...base, graceMs: r.u32(r.root(4, 4)) };
    case Kind.Kick:
      at = r.root(12, 4);
      return {
        ...base,
        reason: KICK_REASONS[r.tag(at, KICK_REASONS.length, 'KickReason')],
        message: textChecked(r.str(at + 4), 'message'),
      };
    case Kind.Pong:
      at = r.root(16, 8);
      return { ...base, clientTimeUs: r.u64(at), serverTick: r.u32(at + 8) };
    case Kind.VersionMismatch:
      return { ...base, serverVersion: r.u8(r.root(1, 1)) };
    case Kind.ServerSdp: {
      at = r.root(12, 4);
      const type = SDP_TYPES[r.tag(at, SDP_TYPES.length, 'SdpKind')];
      const bytes = r.strBytes(at + 4);
      if (bytes.length > SDP_BYTES_MAX) throw new ProtocolError(`an SDP of ${bytes.length} bytes`);
      return { ...base, type, sdp: r.str(at + 4) };
    }
    case Kind.TrackAdded:
      at = r.root(12, 4);
      return { ...base, track: r.u32(at), publisher: r.u32(at + 4), media: TRACK_KINDS[r.tag(at + 8, TRACK_KINDS.length, 'TrackKind')] };
    case Kind.TrackRemoved:
      return { ...base, track: r.u32(r.root(4, 4)) };
    default:
      throw new ProtocolError(`unexpected kind ${f.kindName}`);
  }
}

// ---------------------------------------------------------------- writing

/**
 * Builds one frame: the header, then an rkyv archive written as rkyv
 * writes it (out-of-line data first, in field order, each part aligned
 * for its type; the root last, at its alignment). Positions are counted
 * from the payload's start, which the 16-byte header keeps aligned.
 */
class FrameWriter {
  constructor(capacity = 256) {
    this.bytes = new Uint8Array(capacity);
    this.pos = 0; // within the payload
  }

  reserve(n) {
    const need = FRAME_HEADER_LEN + this.pos + n;
    if (need > this.bytes.length) {
      const grown = new Uint8Array(Math.max(need, this.bytes.length * 2));
      grown.set(this.bytes);
      this.bytes = grown;
    }
  }

  align(a) {
    const pad = (a - (this.pos % a)) % a;
    this.reserve(pad);
    this.pos += pad; // padding bytes are zero
  }

  /** Writes raw bytes; returns their position. */
  write(data) {
    this.reserve(data.length);
    const at = this.pos;
    this.bytes.set(data, FRAME_HEADER_LEN + at);
    this.pos += data.length;
    return at;
  }

  /** Out-of-line part of a string: its position, or -1 if it is inline. */
  stringData(bytes) {
    return bytes.length <= 8 ? -1 : this.write(bytes);
  }

  /** A zeroed root of `size` bytes at `align`; returns a DataView over it and its position. */
  root(size, align) {
    this.align(align);
    this.reserve(size);
    const at = this.pos;
    this.pos += size;
    return { at, view: new DataView(this.bytes.buffer, FRAME_HEADER_LEN + at, size) };
  }

  /** Writes a `String` field at `field` (position in the payload). */
  putString(view, rootAt, field, bytes, dataAt) {
    if (dataAt < 0) {
      for (let i = 0; i < 8; i++) view.setUint8(field + i, i < bytes.length ? bytes[i] : 0xff);
    } else {
      const len = bytes.length;
      view.setUint32(field, (len & 0x3f) | 0x80 | ((len & ~0x3f) << 2), true);
      view.setInt32(field + 4, dataAt - (rootAt + field), true);
    }
  }

  /** Writes a `Vec` field whose items are at `itemsAt`. */
  putVec(view, rootAt, field, itemsAt, len) {
    view.setInt32(field, itemsAt - (rootAt + field), true);
    view.setUint32(field + 4, len, true);
  }

  finish(kind, sequence, tick) {
    const len = this.pos;
    if (len > PAYLOAD_LIMITS[kind]) throw new ProtocolError(`${KIND_NAMES.get(kind)} payload of ${len} bytes is over its limit of ${PAYLOAD_LIMITS[kind]}`);
    const v = new DataView(this.bytes.buffer, 0, FRAME_HEADER_LEN);
    v.setUint8(0, PROTOCOL_VERSION);
    v.setUint8(1, kind);
    v.setUint16(2, 0, true);
    v.setUint32(4, len, true);
    v.setUint32(8, sequence >>> 0, true);
    v.setUint32(12, tick >>> 0, true);
    return this.bytes.slice(0, FRAME_HEADER_LEN + len);
  }
}

function finite(v, what) {
  if (!Number.isFinite(v)) throw new ProtocolError(`${what} must be a finite number`);
  return v;
}

/** A u32 field: an integer in 0..=0xffffffff, or ProtocolError. */
function u32(v, what) {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new ProtocolError(`${what} must be an integer in 0..=4294967295, not ${v}`);
  return v;
}

/**
 * An `Input` frame: `owned` is a list of `{networkId, position: [x,y,z],
 * rotation: [x,y,z,w]}` (at most 16); `ack` the newest snapshot tick
 * applied. Returns the frame's bytes.
 */
export function encodeInput(sequence, ack, owned = []) {
  if (owned.length > INPUT_OWNED_MAX) throw new ProtocolError(`at most ${INPUT_OWNED_MAX} owned updates per input`);
  const w = new FrameWriter(FRAME_HEADER_LEN + 8 + 32 * owned.length);
  w.align(4);
  const items = w.pos;
  for (const u of owned) {
    const { view } = w.root(32, 4);
    view.setUint32(0, u32(u.networkId, 'networkId'), true);
    for (let i = 0; i < 3; i++) view.setFloat32(4 + 4 * i, finite(u.position[i], 'position'), true);
    for (let i = 0; i < 4; i++) view.setFloat32(16 + 4 * i, finite(u.rotation[i], 'rotation'), true);
  }
  const { at, view } = w.root(8, 4);
  w.putVec(view, at, 0, items, owned.length);
  return w.finish(Kind.Input, sequence, ack);
}

/** A `Ping` frame carrying `clientTimeUs` (a finite number ≥ 0, floored). */
export function encodePing(sequence, ack, clientTimeUs) {
  if (!Number.isFinite(clientTimeUs) || clientTimeUs < 0) throw new ProtocolError(`clientTimeUs must be a finite number >= 0, not ${clientTimeUs}`);
  const w = new FrameWriter(FRAME_HEADER_LEN + 8);
  const { view } = w.root(8, 8);
  view.setBigUint64(0, BigInt(Math.floor(clientTimeUs)), true);
  return w.finish(Kind.Ping, sequence, ack);
}

function writeTarget(view, field, target) {
  const t = target ?? { kind: 'everyone' };
  const kind = typeof t === 'string' ? t : t.kind;
  if (kind === 'everyone') view.setUint8(field, Target.Everyone);
  else if (kind === 'server') view.setUint8(field, Target.Server);
  else if (kind === 'user') {
    view.setUint8(field, Target.User);
    view.setUint32(field + 4, u32(t.user, 'target user'), true);
  } else throw new ProtocolError(`unknown action target ${JSON.stringify(t)}`);
}

/**
 * An `Action` frame. `action` is `{topic, actionType, target?, cache?,
 * payload?}`: target `'everyone'` (default), `'server'` or `{kind: 'user',
 * user: index}`; cache `'no'` (default), `'keep'` or `'replace_own'`;
 * payload a Uint8Array or a string (UTF-8).
 */
export function encodeAction(sequence, action) {
  const { topic, actionType } = action;
  if (!isValidTopic(topic)) throw new ProtocolError(`invalid topic ${JSON.stringify(topic)}: 1 to 32 bytes of a-z 0-9 . _ -`);
  const type = utf8.encode(actionType ?? '');
  if (type.length === 0 || type.length > ACTION_TYPE_BYTES_MAX) throw new ProtocolError(`action type of 1 to ${ACTION_TYPE_BYTES_MAX} bytes`);
  const payload = typeof action.payload === 'string' ? utf8.encode(action.payload) : (action.payload ?? new Uint8Array(0));
  if (!(payload instanceof Uint8Array)) throw new ProtocolError('payload must be a Uint8Array or a string');
  if (payload.length > ACTION_PAYLOAD_BYTES_MAX) throw new ProtocolError(`action payload over ${ACTION_PAYLOAD_BYTES_MAX} bytes`);
  const cache = CACHE_NAMES.indexOf(action.cache ?? 'no');
  if (cache < 0) throw new ProtocolError(`unknown cache mode ${JSON.stringify(action.cache)}`);
  const topicBytes = utf8.encode(topic);
  const w = new FrameWriter(FRAME_HEADER_LEN + 64 + type.length + payload.length);
  const topicAt = w.stringData(topicBytes);
  const typeAt = w.stringData(type);
  const payloadAt = w.write(payload);
  const { at, view } = w.root(36, 4);
  w.putString(view, at, 0, topicBytes, topicAt);
  w.putString(view, at, 8, type, typeAt);
  writeTarget(view, 16, action.target);
  view.setUint8(24, cache);
  w.putVec(view, at, 28, payloadAt, payload.length);
  return w.finish(Kind.Action, sequence, 0);
}

/**
 * An `OwnershipRequest` frame: `op` is `'take'`, `'release'` or
 * `{kind: 'transfer', to: userIndex}`.
 */
export function encodeOwnershipRequest(sequence, networkId, op) {
  const w = new FrameWriter(FRAME_HEADER_LEN + 12);
  const { view } = w.root(12, 4);
  view.setUint32(0, u32(networkId, 'networkId'), true);
  const kind = typeof op === 'string' ? op : op?.kind;
  if (kind === 'take') view.setUint8(4, OwnershipOp.Take);
  else if (kind === 'release') view.setUint8(4, OwnershipOp.Release);
  else if (kind === 'transfer') {
    view.setUint8(4, OwnershipOp.Transfer);
    view.setUint32(8, u32(op.to, 'transfer to'), true);
  } else throw new ProtocolError(`unknown ownership op ${JSON.stringify(op)}`);
  return w.finish(Kind.OwnershipRequest, sequence, 0);
}

/**
 * An `Sdp` frame: `type` is `'offer'` or `'answer'`, `sdp` the
 * description's text (at most SDP_BYTES_MAX bytes of UTF-8).
 */
export function encodeSdp(sequence, type, sdp) {
  const tag = SDP_TYPES.indexOf(type);
  if (tag < 0) throw new ProtocolError(`unknown SDP type ${JSON.stringify(type)}`);
  if (typeof sdp !== 'string') throw new ProtocolError('the SDP must be a string');
  const bytes = utf8.encode(sdp);
  if (bytes.length > SDP_BYTES_MAX) throw new ProtocolError(`an SDP of ${bytes.length} bytes is over ${SDP_BYTES_MAX}`);
  const w = new FrameWriter(FRAME_HEADER_LEN + 32 + bytes.length);
  const dataAt = w.stringData(bytes);
  const { at, view } = w.root(12, 4);
  view.setUint8(0, tag);
  w.putString(view, at, 4, bytes, dataAt);
  return w.finish(Kind.Sdp, sequence, 0);
}
