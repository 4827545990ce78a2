// Types of the instanceserver browser SDK (instanceserver.js).

export const PROTOCOL_VERSION: 3;
export const FRAME_HEADER_LEN: 16;
export const SERVER_SENDER: 0xffffffff;
export const INTERPOLATION_DELAY_MS: number;
export const CLIENT_HISTORY_LEN: number;
export const CLIENT_ENTITIES_MAX: number;
export const Kind: Readonly<Record<string, number>>;

export type Vec3 = [number, number, number];
/** A unit quaternion, x, y, z, w. */
export type Quat = [number, number, number, number];

export type Target = 'everyone' | 'server' | { kind: 'everyone' | 'server' } | { kind: 'user'; user: number };
export type CacheMode = 'no' | 'keep' | 'replace_own';
export type OwnershipOp = 'take' | 'release' | { kind: 'take' | 'release' } | { kind: 'transfer'; to: number };

export interface ActionOut {
  /** 1 to 32 bytes of a-z 0-9 . _ - */
  topic: string;
  /** 1 to 64 bytes */
  actionType: string;
  target?: Target;
  cache?: CacheMode;
  /** At most 4,096 bytes; a string is sent as UTF-8. */
  payload?: Uint8Array | string;
}

export interface ActionIn {
  /** User index of the sender, or SERVER_SENDER; stamped by the server. */
  sender: number;
  topic: string;
  actionType: string;
  target: { kind: 'everyone' | 'server' } | { kind: 'user'; user: number };
  cache: CacheMode;
  payload: Uint8Array;
  /** Replayed from the Welcome (sent before this user joined). */
  cached?: boolean;
}

export interface Welcome {
  userId: string;
  userIndex: number;
  avatar: number;
  tickHz: number;
  snapshotHz: number;
  boundsMin: Vec3;
  boundsMax: Vec3;
  positionBits: number;
  cachedActions: ActionIn[];
  owners: { networkId: number; owner: number }[];
}

export interface Peer {
  userIndex: number;
  userId: string;
  name: string;
  avatar: number;
}

export interface ClientStats {
  rttMs: number | null;
  snapshotsPerSecond: number;
  bytesPerSecond: number;
  entities: number;
  interpolationDelayMs: number;
  reconnects: number;
}

export interface ClientEvents {
  joined: Welcome;
  snapshot: { tick: number; entities: EntityColumns };
  action: ActionIn;
  peerjoined: Peer;
  peerleft: Partial<Peer> & { userIndex: number };
  ownership: { networkId: number; owner: number | null };
  ownershiprefused: { networkId: number; op: { kind: string; to?: number }; reason: { kind: string; value?: number } };
  ownershiprequested: { networkId: number; by: number };
  names: { networkId: number; name: string }[];
  draining: { graceMs: number };
  kicked: { reason: string; message: string };
  reconnecting: { attempt: number; delayMs: number; cause: unknown };
  error: Error;
  closed: { reason: 'left' | 'kicked' | 'dropped' | 'reconnect_failed' | 'version_mismatch'; [k: string]: unknown };
  stats: ClientStats;
  /** A member publishes a track (also for those published before this client joined). */
  trackadded: { track: number; publisher: number; media: 'audio' | 'video' };
  trackremoved: { track: number };
  /** A remote track is playing: give `stream` to an <audio> or <video> element. */
  track: RemoteTrack;
  /** A track was muted, paused or moderated, or no longer is (also for a joiner). */
  trackstate: { track: number; publisher: number; muted: boolean; paused: boolean; moderated: boolean };
  /** The loudest speaker changed (at most 4 times a second). */
  activespeaker: { user: number; track: number; level: number };
  /** The simulcast layer this client receives of a track. */
  layer: { track: number; layer: 'low' | 'mid' | 'high' };
  /** A media request refused, with the reason. */
  mediarefused: { type: string; track: number | null; reason: string };
  /** A track of this client's is over its bitrate cap. */
  tracklimited: { track: number; reason: string };
}

export interface RemoteTrack {
  track: number;
  publisher?: number;
  media?: 'audio' | 'video';
  mediaTrack: MediaStreamTrack;
  stream: MediaStream;
}

export interface JoinOptions {
  /** Base URL of the node; default: the page's origin. */
  server?: string;
  instance?: string;
  /** A room code instead of an instance id. */
  room?: string;
  /** The join JWT, or a function giving a fresh one for each attempt. */
  token: string | (() => string | Promise<string>);
  /** Action topics to receive (default: all). */
  topics?: string[];
  interpolationDelayMs?: number;
  /** Inputs and acknowledgements per second (default: the snapshot rate). */
  inputHz?: number;
  heartbeatMs?: number;
  /** No message from the server for this long counts as a drop (default 5,000). */
  silenceMs?: number;
  joinTimeoutMs?: number;
  /** A media offer of this client's not answered in this time fails (default 10,000). */
  answerTimeoutMs?: number;
  /** Tracks to publish from the join on (in the join offer). */
  publish?: MediaStreamTrack[];
  reconnect?: false | { attempts?: number; baseMs?: number; maxMs?: number };
  RTCPeerConnection?: typeof RTCPeerConnection;
  /** Handlers subscribed before joining, so they hear the first join's events too. */
  on?: { [K in keyof ClientEvents]?: (value: ClientEvents[K]) => void };
}

export class Emitter<E = ClientEvents> {
  on<K extends keyof E>(name: K, fn: (value: E[K]) => void): () => void;
  off<K extends keyof E>(name: K, fn: (value: E[K]) => void): void;
}

export class JoinError extends Error {
  status: number;
  code: string;
  retryAfterMs: number | null;
  readonly retryable: boolean;
}

export class ProtocolError extends Error {
  version?: number;
}

export class Client extends Emitter<ClientEvents> {
  static join(options: JoinOptions): Promise<Client>;
  constructor(options: JoinOptions);
  /** Joins a client made with `new Client(options)`, once its handlers are on. */
  start(): Promise<void>;
  /** Publishes a local track (video: as three simulcast layers with `simulcast`); resolves once the node answered. */
  publish(track: MediaStreamTrack, options?: { simulcast?: boolean }): Promise<void>;
  unpublish(track: MediaStreamTrack): Promise<void>;
  /** Mutes every published track (they send silence or black; the node stops forwarding them and tells the others). */
  setMuted(muted: boolean): void;
  /** A media request (docs/media.md): subscribe, unsubscribe, layer, mute, unmute, pause, resume. */
  mediaRequest(type: string, body: { track?: number; mid?: string; layer?: 'low' | 'mid' | 'high' }): void;
  /** Stops (false) or starts again (true, the default) receiving a track. */
  subscribe(track: number, on?: boolean): void;
  /** Of a simulcast track: the layer to receive. */
  setLayer(track: number, layer: 'low' | 'mid' | 'high'): void;
  readonly muted: boolean;
  /** Audio levels 0..1: others' tracks by track id, and this client's microphone. */
  audioLevels(): Promise<{ remote: Map<number, number>; local: number | null }>;
  /** Others' tracks by track id. */
  readonly tracks: Map<number, Partial<RemoteTrack> & { track: number }>;
  readonly welcome: Welcome | null;
  readonly userIndex: number | null;
  readonly avatar: number | null;
  readonly connected: boolean;
  readonly peers: Map<number, Peer>;
  readonly owners: Map<number, number>;
  readonly names: Map<number, string>;
  readonly snapshots: SnapshotReceiver;
  readonly stats: ClientStats;
  interpolationDelayMs: number;
  setOwned(networkId: number, position: Vec3, rotation?: Quat): void;
  moveAvatar(position: Vec3, rotation?: Quat): void;
  forgetOwned(networkId: number): void;
  sendAction(action: ActionOut): void;
  chat(text: string): void;
  requestOwnership(networkId: number, op?: OwnershipOp): void;
  sample(out?: InterpolatedView, nowMs?: number): InterpolatedView;
  leave(): void;
}

export class EntityColumns {
  count: number;
  ids: Uint32Array;
  ticks: Uint32Array;
  /** Quantised: millimetres from the bounds' minimum, 3 per entity. */
  positions: Uint32Array;
  /** Smallest three, 3 per entity. */
  rotations: Uint16Array;
  /** cm/s, 3 per entity (0 unless the server sends velocities). */
  linearVelocities: Int16Array;
  /** mrad/s, 3 per entity. */
  angularVelocities: Int16Array;
  indexOf(id: number): number;
}

export class SnapshotReceiver {
  constructor(historyLen?: number, entitiesMax?: number);
  entities: EntityColumns;
  latest: number | null;
  apply(tick: number, buffer: ArrayBuffer, start: number, end: number): EntityColumns;
}

export class InterpolatedView {
  count: number;
  ids: Uint32Array;
  /** x, y, z metres per entity. */
  positions: Float32Array;
  /** x, y, z, w per entity. */
  rotations: Float32Array;
  behindMs: number;
  indexOf(id: number): number;
}

export class Interpolator {
  constructor(options?: { delayMs?: number; frames?: number });
  delayMs: number;
  push(nowMs: number, tick: number, tickHz: number, boundsMin: Vec3, entities: EntityColumns): void;
  sample(nowMs: number, out: InterpolatedView): InterpolatedView;
}

export function dequantizePosition(boundsMin: ArrayLike<number>, q: ArrayLike<number>, at: number, out: { [i: number]: number }, o: number): void;
export function dequantizeRotation(q: ArrayLike<number>, at: number, out: { [i: number]: number }, o: number): void;
export function isValidTopic(topic: string): boolean;
export function readFrame(buffer: ArrayBuffer, channel?: 'state' | 'actions'): { kind: number; kindName: string; sequence: number; tick: number; payloadStart: number; payloadEnd: number };
export function decodeServerMessage(buffer: ArrayBuffer, channel?: 'state' | 'actions'): { kind: string; sequence: number; tick: number; [field: string]: unknown };
export function encodeInput(sequence: number, ack: number, owned?: { networkId: number; position: Vec3; rotation: Quat }[]): Uint8Array;
export function encodePing(sequence: number, ack: number, clientTimeUs: number): Uint8Array;
export function encodeSdp(sequence: number, type: 'offer' | 'answer', sdp: string): Uint8Array;
export const SDP_BYTES_MAX: number;
export function encodeAction(sequence: number, action: ActionOut): Uint8Array;
export function encodeOwnershipRequest(sequence: number, networkId: number, op: OwnershipOp): Uint8Array;
