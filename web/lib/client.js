// The browser client: joins an instance over HTTP signaling and WebRTC,
// keeps the view from snapshots, sends inputs, acknowledgements, heartbeats
// and actions, and reconnects with backoff after a drop.

import {
  ProtocolError,
  decodeServerMessage,
  encodeAction,
  encodeInput,
  encodeOwnershipRequest,
  encodePing,
  encodeSdp,
  INPUT_OWNED_MAX,
  isValidTopic,
  TOPICS_PER_SESSION_MAX,
} from './protocol.js';
import { SnapshotReceiver } from './snapshot.js';
import { Interpolator, InterpolatedView, INTERPOLATION_DELAY_MS } from './interp.js';

/** A small event emitter: `on(name, fn)` returns a function that unsubscribes. */
export class Emitter {
  constructor() {
    this.handlers = new Map();
  }

  on(name, fn) {
    if (!this.handlers.has(name)) this.handlers.set(name, new Set());
    this.handlers.get(name).add(fn);
    return () => this.off(name, fn);
  }

  off(name, fn) {
    this.handlers.get(name)?.delete(fn);
  }

  emit(name, value) {
    for (const fn of this.handlers.get(name) ?? []) {
      try {
        fn(value);
      } catch (e) {
        // A handler's bug must not stop the client.
        console.error(`instanceserver: a '${name}' handler threw`, e);
      }
    }
  }
}

/** A join the server refused, or that did not complete. */
export class JoinError extends Error {
  /** @param {number} status HTTP status (0: no answer) @param {string} code @param {string} message */
  constructor(status, code, message, retryAfterMs = null) {
    super(`${code}: ${message}`);
    this.name = 'JoinError';
    this.status = status;
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }

  /** Whether trying again later may succeed (busy, draining elsewhere, timeouts, network errors). */
  get retryable() {
    return this.status === 0 || this.status === 429 || this.status === 503 || this.status === 504;
  }
}

export const DEFAULTS = Object.freeze({
  heartbeatMs: 1000,
  /** No message from the server for this long counts as a drop. */
  silenceMs: 5000,
  /** Re-send a changed owned update for this long (the state channel is lossy). */
  resendMs: 300,
  joinTimeoutMs: 15000,
  /** A media offer of this client's not answered in this time fails (`publish`). */
  answerTimeoutMs: 10000,
  reconnect: Object.freeze({ attempts: 8, baseMs: 500, maxMs: 10000 }),
});

const now = () => (typeof performance !== 'undefined' ? performance.now() : Date.now());
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const utf8Decoder = new TextDecoder();
/** The sender index of the node's own actions. */
const SERVER_SENDER = 0xffffffff;
/** Simulcast layers, lowest first (the order the node ranks them low, mid, high). */
const SIMULCAST_ENCODINGS = [
  { rid: 'l', scaleResolutionDownBy: 4 },
  { rid: 'm', scaleResolutionDownBy: 2 },
  { rid: 'h' },
];

/**
 * One user's connection to one instance. Create it with `Client.join`.
 *
 * Events (`client.on(name, fn)`): `joined` (the Welcome, also after a
 * reconnect), `snapshot` ({tick, entities}), `action`, `peerjoined`,
 * `peerleft`, `ownership` ({networkId, owner}), `ownershiprefused`,
 * `ownershiprequested`, `names`, `draining` ({graceMs}), `kicked`
 * ({reason, message}), `reconnecting` ({attempt, delayMs, cause}),
 * `error` (a ProtocolError or a failed send), `closed` ({reason}),
 * `stats` (once a second); media: `trackadded` ({track, publisher,
 * media}), `trackremoved` ({track}), `track` ({track, publisher, media,
 * mediaTrack, stream}: a remote track is playing).
 */
export class Client extends Emitter {
  /**
   * Joins and resolves once the server's Welcome arrived.
   * @param {object} options
   * @param {string} [options.server] base URL of the node (default: the page's origin)
   * @param {string} [options.instance] instance id to join
   * @param {string} [options.room] or a room code
   * @param {string|(() => Promise<string>|string)} options.token the join JWT, or a function giving a fresh one (called for every attempt)
   * @param {string[]} [options.topics] action topics to receive (default: all)
   * @param {number} [options.interpolationDelayMs] render delay (default 100)
   * @param {number} [options.inputHz] inputs and acks per second (default: the snapshot rate)
   * @param {false|{attempts?: number, baseMs?: number, maxMs?: number}} [options.reconnect]
   * @param {MediaStreamTrack[]} [options.publish] tracks to publish from the
   *   join on (a microphone, a camera): no extra round trip
   * @param {Object<string, Function>} [options.on] event handlers, subscribed
   *   before joining so they hear the first join's events too (`joined`, the
   *   cached actions, the members already in)
   */
  static async join(options) {
    const client = new Client(options);
    await client.start();
    return client;
  }

  /** Joins a client made with `new Client(options)` after its handlers are on. */
  async start() {
    if (this.started) throw new Error('start() once per client');
    this.started = true;
    await this.connectWithRetry(null);
  }

  constructor(options) {
    super();
    if (!options || (!options.instance && !options.room)) throw new TypeError('Client.join needs an instance id or a room code');
    if (options.token === undefined) throw new TypeError('Client.join needs a token');
    const topics = options.topics ?? null;
    if (topics !== null) {
      if (!Array.isArray(topics) || topics.length === 0 || topics.length > TOPICS_PER_SESSION_MAX || !topics.every(isValidTopic)) {
        throw new TypeError(`topics: 1 to ${TOPICS_PER_SESSION_MAX} of 1 to 32 bytes of a-z 0-9 . _ -`);
      }
    }
    this.options = {
      ...DEFAULTS,
      ...options,
      reconnect: options.reconnect === false ? false : { ...DEFAULTS.reconnect, ...(options.reconnect ?? {}) },
    };
    this.server = (options.server ?? globalThis.location?.origin ?? '').replace(/\/$/, '');
    this.topics = topics;
    this.PeerConnection = options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    if (!this.PeerConnection) throw new TypeError('no RTCPeerConnection in this environment');
    this.interpolator = new Interpolator({ delayMs: options.interpolationDelayMs ?? INTERPOLATION_DELAY_MS });
    this.owned = new Map();
    /** The local tracks this client publishes (again after a reconnect). */
    this.publishing = [...(options.publish ?? [])];
    /** Published tracks sent as simulcast layers. */
    this.simulcast = new Set();
    this.muted = false;
    this.ended = false;
    this.started = false;
    this.conn = null;
    this.resetState();
    this.totals = { bytesIn: 0, snapshots: 0, inputsSent: 0, acksSent: 0, pingsSent: 0, invalid: 0, offersIgnored: 0 };
    this.stats = { rttMs: null, snapshotsPerSecond: 0, bytesPerSecond: 0, entities: 0, interpolationDelayMs: 0, reconnects: 0 };
    this.window = { at: now(), bytes: 0, snapshots: 0 };
    for (const [name, fn] of Object.entries(options.on ?? {})) {
      if (typeof fn !== 'function') throw new TypeError(`on.${name} must be a function`);
      this.on(name, fn);
    }
  }

  /** Per-connection state, cleared on every (re)join. */
  resetState() {
    /** The Welcome: {userId, userIndex, avatar, tickHz, snapshotHz, boundsMin, boundsMax, ...} */
    this.welcome = null;
    this.snapshots = new SnapshotReceiver();
    this.interpolator.stored = 0;
    this.interpolator.offset = null;
    /** userIndex → {userIndex, userId, name, avatar} of the other members. */
    this.peers = new Map();
    /** networkId → userIndex of entities (not avatars) someone owns. */
    this.owners = new Map();
    /** networkId → scene name. */
    this.names = new Map();
    /** Track id → {track, publisher, media, mediaTrack?, stream?}: the tracks others publish. */
    this.tracks = new Map();
    this.sequence = { state: 0, actions: 0 };
    this.lastAcked = 0;
    // Owned entities belong to the old session: the new one owns its own
    // avatar (a new network id) and nothing else.
    this.owned?.clear();
  }

  /** This user's index in the instance (stamped on its actions). */
  get userIndex() {
    return this.welcome?.userIndex ?? null;
  }

  /** Network id of this user's avatar. */
  get avatar() {
    return this.welcome?.avatar ?? null;
  }

  get connected() {
    return this.conn !== null && this.conn.open && this.welcome !== null;
  }

  async token() {
    const t = this.options.token;
    return typeof t === 'function' ? await t() : t;
  }

  /** Joins, retrying `busy`/timeouts with backoff when reconnection is on. */
  async connectWithRetry(cause) {
    const policy = this.options.reconnect;
    let attempt = 0;
    for (;;) {
      try {
        await this.connect();
        if (cause !== null) this.stats.reconnects++;
        return;
      } catch (e) {
        const retryable = e instanceof JoinError ? e.retryable : true;
        attempt++;
        if (this.ended || !policy || !retryable || attempt > policy.attempts) {
          if (cause !== null) this.close({ reason: 'reconnect_failed', error: e });
          throw e;
        }
        const backoff = Math.min(policy.maxMs, policy.baseMs * 2 ** (attempt - 1));
        // Retry-After counts, but never beyond maxMs.
        const delayMs = Math.min(policy.maxMs, Math.max(e.retryAfterMs ?? 0, Math.round(backoff * (0.5 + Math.random() / 2))));
        this.emit('reconnecting', { attempt, delayMs, cause: cause ?? e });
        await sleep(delayMs);
        if (this.ended) throw e;
      }
    }
  }

  /** One join: peer connection, offer, HTTP join, answer, channels, Welcome. */
  async connect() {
    this.resetState();
    const pc = new this.PeerConnection();
    const state = pc.createDataChannel('state', { ordered: false, maxRetransmits: 0 });
    const actions = pc.createDataChannel('actions');
    state.binaryType = 'arraybuffer';
    actions.binaryType = 'arraybuffer';
    for (const track of this.publishing) pc.addTransceiver(track, this.transceiverInit(track));
    const conn = {
      pc, state, actions, open: false, lastHeard: now(), timers: [], location: null,
      // SDP exchanges after the join run one at a time, in order.
      sdpChain: Promise.resolve(),
      // The node's answer to this client's offer, when one waits.
      answerWaiting: null,
    };
    pc.ontrack = (ev) => this.remoteTrack(conn, ev);
    this.conn = conn;
    let welcomed;
    let failed;
    const welcome = new Promise((resolve, reject) => {
      welcomed = resolve;
      failed = reject;
    });
    // Without this a join failed before anyone awaits `welcome` would log
    // an unhandled rejection; it is awaited below.
    welcome.catch(() => {});
    // A closed RTCPeerConnection never settles the promises of its pending
    // operations: each step races this, rejected when the join fails.
    let abort;
    const aborted = new Promise((_, reject) => {
      abort = reject;
    });
    aborted.catch(() => {});
    const step = (p) => Promise.race([p, aborted]);
    conn.failJoin = (e) => {
      conn.failure ??= e;
      failed(e);
      abort(e);
    };
    const onMessage = (channel) => (ev) => {
      if (this.conn !== conn) return;
      conn.lastHeard = now();
      this.receive(channel, ev.data, welcomed);
    };
    state.onmessage = onMessage('state');
    actions.onmessage = onMessage('actions');
    const onClose = () => this.dropped(conn, 'channel closed');
    state.onclose = onClose;
    actions.onclose = onClose;
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed' || pc.connectionState === 'closed') this.dropped(conn, `peer connection ${pc.connectionState}`);
    };
    const opened = Promise.all([state, actions].map((ch) => new Promise((resolve) => {
      if (ch.readyState === 'open') resolve();
      else ch.addEventListener('open', () => resolve(), { once: true });
    })));
    try {
      const offer = await step(pc.createOffer());
      await step(pc.setLocalDescription(offer));
      // No need to wait for ICE gathering: the server is ICE-lite and
      // learns this peer's address from its connectivity checks.
      // Not raced: once the node answers, its session's Location is known
      // and a failed join DELETEs it.
      const answer = await this.signal(pc.localDescription.sdp, conn);
      if (conn.failure) throw conn.failure;
      await step(pc.setRemoteDescription({ type: 'answer', sdp: answer }));
      let timer;
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new JoinError(0, 'timeout', `no Welcome within ${this.options.joinTimeoutMs} ms`)),
          this.options.joinTimeoutMs,
        );
      });
      try {
        await Promise.race([Promise.all([opened, welcome]), timeout]);
      } finally {
        clearTimeout(timer);
      }
      conn.open = true;
    } catch (e) {
      // A session the server made (201) but this client gives up on is
      // DELETEd, so it does not hold a seat until its silence timeout.
      this.teardown(conn, true);
      if (this.conn === conn) this.conn = null;
      throw conn.failure ?? e;
    }
    this.startTimers(conn);
    // A muted client's tracks, published again after a reconnect, are
    // muted at the node too.
    if (this.muted) this.setMuted(true);
    this.emit('joined', this.welcome);
    for (const a of this.welcome.cachedActions) this.emit('action', { ...a, cached: true });
  }

  /** The HTTP join: returns the SDP answer. */
  async signal(sdp, conn) {
    const path = this.options.room
      ? `/v1/rooms/${encodeURIComponent(this.options.room)}/join`
      : `/v1/instances/${encodeURIComponent(this.options.instance)}/join`;
    const query = this.topics ? `?topics=${this.topics.join(',')}` : '';
    let response;
    try {
      response = await fetch(`${this.server}${path}${query}`, {
        method: 'POST',
        headers: { 'content-type': 'application/sdp', authorization: `Bearer ${await this.token()}` },
        body: sdp,
      });
    } catch (e) {
      throw new JoinError(0, 'network', String(e?.message ?? e));
    }
    const text = await response.text();
    if (response.status !== 201) {
      let code = 'http_error';
      let message = text.slice(0, 200);
      try {
        const body = JSON.parse(text);
        code = body.error ?? code;
        message = body.message ?? message;
      } catch {
        // not JSON: keep the text
      }
      const retryAfter = Number(response.headers.get('retry-after'));
      throw new JoinError(response.status, code, message, Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : null);
    }
    const location = response.headers.get('location');
    conn.location = location ? new URL(location, `${this.server || globalThis.location?.origin}/`).toString() : null;
    return text;
  }

  startTimers(conn) {
    const inputEvery = 1000 / (this.options.inputHz ?? (this.welcome.snapshotHz || this.welcome.tickHz || 30));
    conn.timers.push(setInterval(() => this.inputTick(conn), inputEvery));
    conn.timers.push(setInterval(() => this.heartbeat(conn), this.options.heartbeatMs));
    conn.timers.push(setInterval(() => this.statsTick(), 1000));
  }

  receive(channel, data, welcomed) {
    if (!(data instanceof ArrayBuffer)) {
      this.invalid(new ProtocolError('a text message on a data channel'));
      return;
    }
    this.totals.bytesIn += data.byteLength;
    this.window.bytes += data.byteLength;
    let m;
    try {
      m = decodeServerMessage(data, channel);
    } catch (e) {
      if (e instanceof ProtocolError && e.version !== undefined) {
        this.close({ reason: 'version_mismatch', serverVersion: e.version });
        return;
      }
      this.invalid(e);
      return;
    }
    switch (m.kind) {
      case 'Snapshot':
        if (this.welcome === null) return;
        try {
          const entities = this.snapshots.apply(m.tick, data, m.payloadStart, m.payloadEnd);
          this.interpolator.push(now(), m.tick, this.welcome.tickHz, this.welcome.boundsMin, entities);
          this.totals.snapshots++;
          this.window.snapshots++;
          this.emit('snapshot', { tick: m.tick, entities });
        } catch (e) {
          // Stale (reordered) snapshots are expected on the unordered channel.
          if (!String(e.message).startsWith('snapshot older')) this.invalid(e);
        }
        return;
      case 'Welcome':
        this.welcome = m;
        for (const o of m.owners) this.owners.set(o.networkId, o.owner);
        welcomed(m);
        return;
      case 'ActionBroadcast':
        this.emit('action', m);
        if (m.topic === 'media' && m.sender === SERVER_SENDER) this.mediaAction(m);
        return;
      case 'PeerJoined':
        this.peers.set(m.userIndex, { userIndex: m.userIndex, userId: m.userId, name: m.name, avatar: m.avatar });
        this.emit('peerjoined', this.peers.get(m.userIndex));
        return;
      case 'PeerLeft': {
        const peer = this.peers.get(m.userIndex) ?? { userIndex: m.userIndex };
        this.peers.delete(m.userIndex);
        for (const [id, owner] of this.owners) if (owner === m.userIndex) this.owners.delete(id);
        this.emit('peerleft', peer);
        return;
      }
      case 'OwnershipChanged':
        if (m.owner === null) this.owners.delete(m.networkId);
        else this.owners.set(m.networkId, m.owner);
        this.emit('ownership', { networkId: m.networkId, owner: m.owner });
        return;
      case 'OwnershipRefused':
        this.emit('ownershiprefused', m);
        return;
      case 'OwnershipRequested':
        this.emit('ownershiprequested', m);
        return;
      case 'EntityNames':
        for (const e of m.entities) this.names.set(e.networkId, e.name);
        this.emit('names', m.entities);
        return;
      case 'Draining':
        this.emit('draining', { graceMs: m.graceMs });
        return;
      case 'Kick':
        this.emit('kicked', { reason: m.reason, message: m.message });
        this.close({ reason: 'kicked', kick: m.reason, message: m.message });
        return;
      case 'Pong':
        this.stats.rttMs = Math.max(0, now() - m.clientTimeUs / 1000);
        return;
      case 'VersionMismatch':
        this.close({ reason: 'version_mismatch', serverVersion: m.serverVersion });
        return;
      case 'TrackAdded': {
        const t = { track: m.track, publisher: m.publisher, media: m.media };
        this.tracks.set(m.track, { ...this.tracks.get(m.track), ...t });
        this.emit('trackadded', t);
        return;
      }
      case 'TrackRemoved':
        this.tracks.delete(m.track);
        this.emit('trackremoved', { track: m.track });
        return;
      case 'ServerSdp': {
        const conn = this.conn;
        if (!conn) return;
        if (m.type === 'answer') {
          // This client's offer is answered: a node offer from now on (its
          // re-offer after giving way) is taken, queued behind this answer.
          const w = conn.answerWaiting;
          if (w && !w.op.settled) {
            w.op.settled = true;
            conn.offering -= 1;
          }
          // Not queued: the offer it answers holds the queue until it comes.
          this.serverSdp(conn, m.type, m.sdp).catch((e) => {
            conn.answerWaiting?.reject(e);
            conn.answerWaiting = null;
            this.invalid(e);
          });
        } else if (conn.offering > 0) {
          // Both offered at once (this client's offer is queued or sent and
          // not answered yet): decided on arrival, as the node decides on
          // its side. The node gives way, answers this client's offer and
          // offers its changes again.
          this.totals.offersIgnored++;
        } else {
          conn.sdpChain = conn.sdpChain.then(() => this.serverSdp(conn, m.type, m.sdp)).catch((e) => this.invalid(e));
        }
        return;
      }
      default:
    }
  }

  /** The node's offer (tracks to receive) or its answer to this client's offer. */
  async serverSdp(conn, type, sdp) {
    if (this.conn !== conn) return;
    const { pc } = conn;
    if (type === 'answer') {
      if (pc.signalingState !== 'have-local-offer') throw new ProtocolError('an answer with no offer waiting');
      await pc.setRemoteDescription({ type: 'answer', sdp });
      conn.answerWaiting?.resolve();
      conn.answerWaiting = null;
      return;
    }
    await pc.setRemoteDescription({ type: 'offer', sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    if (this.conn !== conn) return;
    // Straight on the channel: this may run before the join has resolved.
    conn.actions.send(encodeSdp(this.nextSequence('actions'), 'answer', pc.localDescription.sdp));
  }

  /** A track the node sends: its m-line's stream id is `track-<id>`. */
  remoteTrack(conn, ev) {
    if (this.conn !== conn) return;
    const stream = ev.streams[0];
    const id = Number(/^track-(\d+)$/.exec(stream?.id ?? '')?.[1]);
    if (!Number.isInteger(id)) return;
    const t = { ...this.tracks.get(id), track: id, mediaTrack: ev.track, stream };
    this.tracks.set(id, t);
    this.emit('track', t);
  }

  /**
   * Publishes a local track (a microphone's, a camera's) to the other
   * members; resolves once the node has answered. Published again after a
   * reconnect, until `unpublish`.
   */
  async publish(track, options = {}) {
    const conn = this.conn;
    if (!conn || !conn.open) throw new Error('not connected');
    if (this.publishing.includes(track)) return;
    if (this.muted) track.enabled = false;
    this.publishing.push(track);
    if (options.simulcast && track.kind === 'video') this.simulcast.add(track);
    const transceiver = conn.pc.addTransceiver(track, this.transceiverInit(track));
    try {
      await this.renegotiate(conn);
    } catch (e) {
      this.publishing = this.publishing.filter((t) => t !== track);
      this.simulcast.delete(track);
      transceiver.stop();
      throw e;
    }
    if (this.muted && transceiver.mid) this.mediaRequest('mute', { mid: transceiver.mid });
  }

  /** How a published track is added: send-only, as simulcast layers if asked. */
  transceiverInit(track) {
    const init = { direction: 'sendonly' };
    if (this.simulcast.has(track)) init.sendEncodings = SIMULCAST_ENCODINGS;
    return init;
  }

  /** Stops publishing a track; resolves once the node has answered. */
  async unpublish(track) {
    this.publishing = this.publishing.filter((t) => t !== track);
    this.simulcast.delete(track);
    const conn = this.conn;
    if (!conn || !conn.open) return;
    const transceiver = conn.pc.getTransceivers().find((t) => t.sender.track === track);
    if (!transceiver) return;
    transceiver.sender.replaceTrack(null);
    transceiver.direction = 'inactive';
    await this.renegotiate(conn);
  }

  /**
   * Mutes (or unmutes) every track this client publishes: they send
   * silence or black, the node stops forwarding them and tells the others
   * (a `trackstate` event on their side).
   */
  setMuted(muted) {
    for (const t of this.publishing) t.enabled = !muted;
    this.muted = muted;
    const conn = this.conn;
    if (!conn || !conn.open) return;
    for (const tr of conn.pc.getTransceivers()) {
      if (tr.mid && this.publishing.includes(tr.sender.track)) {
        this.mediaRequest(muted ? 'mute' : 'unmute', { mid: tr.mid });
      }
    }
  }

  /**
   * A media request to the node (an action on topic `media`, see
   * docs/media.md): `subscribe`, `unsubscribe`, `layer`, `mute`,
   * `unmute`, `pause`, `resume`, with `{track}` (or `{mid}` for a track of
   * this client's). A refusal comes back as a `mediarefused` event.
   */
  mediaRequest(type, body) {
    this.sendAction({ topic: 'media', actionType: type, target: { kind: 'server' }, payload: JSON.stringify(body) });
  }

  /** Stops (`false`) or starts again (`true`) receiving another member's track. */
  subscribe(track, on = true) {
    this.mediaRequest(on ? 'subscribe' : 'unsubscribe', { track });
  }

  /** Of a simulcast track: the layer to receive, 'low', 'mid' or 'high' (the default). */
  setLayer(track, layer) {
    this.mediaRequest('layer', { track, layer });
  }

  /** The node's media actions, as events: trackstate, activespeaker, layer, mediarefused, tracklimited. */
  mediaAction(m) {
    let body;
    try {
      body = JSON.parse(utf8Decoder.decode(m.payload));
    } catch {
      return; // track_refused carries text: the 'action' event has it.
    }
    const events = {
      track_state: 'trackstate',
      active_speaker: 'activespeaker',
      layer: 'layer',
      refused: 'mediarefused',
      track_limited: 'tracklimited',
    };
    const name = events[m.actionType];
    if (name) this.emit(name, body);
  }

  /**
   * Audio levels (0 to 1) from the peer connection's statistics: the
   * remote tracks' by track id, and this client's own microphone's as
   * `local` (null without one). Each is the RMS level over the time since
   * the previous call (from `totalAudioEnergy` and `totalSamplesDuration`),
   * so a short sound between two calls still shows; on the first call, or
   * where those are missing, the level of the newest packets.
   */
  async audioLevels() {
    const conn = this.conn;
    const out = { remote: new Map(), local: null };
    if (!conn) return out;
    if (!this.energy || this.energy.conn !== conn) this.energy = { conn, last: new Map() };
    const last = this.energy.last;
    const level = (key, r) => {
      const energy = r.totalAudioEnergy;
      const duration = r.totalSamplesDuration;
      const before = last.get(key);
      if (energy === undefined || duration === undefined) return r.audioLevel ?? 0;
      last.set(key, { energy, duration });
      if (!before || duration <= before.duration) return r.audioLevel ?? 0;
      return Math.min(1, Math.sqrt(Math.max(0, energy - before.energy) / (duration - before.duration)));
    };
    const byTrackId = new Map();
    for (const t of this.tracks.values()) if (t.mediaTrack) byTrackId.set(t.mediaTrack.id, t.track);
    (await conn.pc.getStats()).forEach((r) => {
      if (r.kind !== 'audio') return;
      if (r.type === 'media-source') out.local = Math.max(out.local ?? 0, level(`local ${r.id}`, r));
      if (r.type === 'inbound-rtp' && byTrackId.has(r.trackIdentifier)) out.remote.set(byTrackId.get(r.trackIdentifier), level(`in ${r.id}`, r));
    });
    // Browsers whose statistics name no track: the receivers' newest packets.
    for (const receiver of conn.pc.getReceivers()) {
      const track = byTrackId.get(receiver.track.id);
      if (track === undefined || out.remote.has(track) || receiver.track.kind !== 'audio') continue;
      out.remote.set(track, receiver.getSynchronizationSources()[0]?.audioLevel ?? 0);
    }
    if (this.muted) out.local = 0;
    return out;
  }

  /** This client's offer over `actions`, in turn with the node's. */
  renegotiate(conn) {
    // From now on, until its answer arrives, a node offer is ignored (the
    // node gives way to this one).
    conn.offering = (conn.offering ?? 0) + 1;
    const op = { settled: false };
    const run = async () => {
      if (this.conn !== conn) throw new Error('not connected');
      let timer;
      const answered = new Promise((resolve, reject) => {
        conn.answerWaiting = { resolve, reject, op };
        timer = setTimeout(() => reject(new Error(`no answer to the offer within ${this.options.answerTimeoutMs} ms`)), this.options.answerTimeoutMs);
      });
      try {
        await conn.pc.setLocalDescription(await conn.pc.createOffer());
        this.send('actions', encodeSdp(this.nextSequence('actions'), 'offer', conn.pc.localDescription.sdp));
        await answered;
      } catch (e) {
        // Back to stable, so the node's next offer is taken.
        if (conn.pc.signalingState === 'have-local-offer') await conn.pc.setLocalDescription({ type: 'rollback' }).catch(() => {});
        throw e;
      } finally {
        clearTimeout(timer);
        conn.answerWaiting = null;
      }
    };
    const done = conn.sdpChain.then(run).finally(() => {
      if (!op.settled) {
        op.settled = true;
        conn.offering -= 1;
      }
    });
    conn.sdpChain = done.catch(() => {});
    return done;
  }

  invalid(e) {
    this.totals.invalid++;
    this.emit('error', e);
  }

  send(channel, bytes) {
    const conn = this.conn;
    if (!conn || !conn.open) throw new Error('not connected');
    const ch = channel === 'state' ? conn.state : conn.actions;
    // The state channel is lossy anyway: skip rather than queue behind a stall.
    if (channel === 'state' && ch.bufferedAmount > 64 * 1024) return false;
    ch.send(bytes);
    return true;
  }

  nextSequence(channel) {
    this.sequence[channel] = (this.sequence[channel] + 1) >>> 0;
    return this.sequence[channel];
  }

  /** Sends this tick's owned updates, or an empty Input when only an acknowledgement is due. */
  inputTick(conn) {
    if (this.conn !== conn || !conn.open) return;
    const t = now();
    const updates = [];
    for (const [networkId, u] of this.owned) {
      if (t - u.changedAt > this.options.resendMs) continue;
      if (updates.length === INPUT_OWNED_MAX) break;
      updates.push({ networkId, position: u.position, rotation: u.rotation });
    }
    const ack = this.snapshots.latest ?? 0;
    if (updates.length === 0 && ack === this.lastAcked) return;
    if (this.send('state', encodeInput(this.nextSequence('state'), ack, updates))) {
      this.lastAcked = ack;
      if (updates.length > 0) this.totals.inputsSent++;
      else this.totals.acksSent++;
    }
  }

  heartbeat(conn) {
    if (this.conn !== conn || !conn.open) return;
    if (now() - conn.lastHeard > this.options.silenceMs) {
      this.dropped(conn, `nothing from the server for ${this.options.silenceMs} ms`);
      return;
    }
    const ack = this.snapshots.latest ?? 0;
    if (this.send('state', encodePing(this.nextSequence('state'), ack, now() * 1000))) this.totals.pingsSent++;
  }

  statsTick() {
    const t = now();
    const s = (t - this.window.at) / 1000;
    if (s <= 0) return;
    this.stats.snapshotsPerSecond = this.window.snapshots / s;
    this.stats.bytesPerSecond = this.window.bytes / s;
    this.stats.entities = this.snapshots.entities.count;
    this.window = { at: t, bytes: 0, snapshots: 0 };
    this.emit('stats', { ...this.stats });
  }

  /**
   * Moves an entity this user owns (its avatar, or one it took): sent with
   * the next inputs, and re-sent for a short while so a lost datagram
   * does not lose it. `rotation` is a unit quaternion [x, y, z, w].
   */
  setOwned(networkId, position, rotation = [0, 0, 0, 1]) {
    if (!Number.isInteger(networkId) || networkId < 0 || networkId > 0xffffffff) throw new TypeError(`networkId ${networkId} is not a u32`);
    if (position?.length !== 3 || rotation?.length !== 4) throw new TypeError('position is [x, y, z], rotation [x, y, z, w]');
    if (!position.every(Number.isFinite) || !rotation.every(Number.isFinite)) throw new TypeError('position and rotation must be finite');
    const u = this.owned.get(networkId);
    if (u && u.position.every((v, i) => v === position[i]) && u.rotation.every((v, i) => v === rotation[i])) return;
    this.owned.set(networkId, { position: [...position], rotation: [...rotation], changedAt: now() });
  }

  /** Walks this user's avatar toward `position` (metres). */
  moveAvatar(position, rotation) {
    if (this.avatar === null) throw new Error('not joined');
    this.setOwned(this.avatar, position, rotation);
  }

  /** Stops sending updates for an entity (after releasing it). */
  forgetOwned(networkId) {
    this.owned.delete(networkId);
  }

  /** Sends an action: `{topic, actionType, target?, cache?, payload?}` (see encodeAction). */
  sendAction(action) {
    this.send('actions', encodeAction(this.nextSequence('actions'), action));
  }

  /** A chat line to everyone: topic `chat`, type `message`, the text as UTF-8. */
  chat(text) {
    this.sendAction({ topic: 'chat', actionType: 'message', payload: String(text) });
  }

  /** Asks for authority: `op` is 'take', 'release' or {kind: 'transfer', to: userIndex}. */
  requestOwnership(networkId, op = 'take') {
    this.send('actions', encodeOwnershipRequest(this.nextSequence('actions'), networkId, op));
  }

  /** The view interpolated for local time `nowMs` into `out` (an InterpolatedView). */
  sample(out = this.view ?? (this.view = new InterpolatedView()), nowMs = now()) {
    this.interpolator.sample(nowMs, out);
    this.stats.interpolationDelayMs = out.behindMs;
    return out;
  }

  /** Render delay behind the newest snapshot, ms. */
  set interpolationDelayMs(ms) {
    this.interpolator.delayMs = ms;
  }

  get interpolationDelayMs() {
    return this.interpolator.delayMs;
  }

  dropped(conn, cause) {
    if (this.conn !== conn || this.ended) return;
    if (!conn.open) {
      conn.failJoin?.(new JoinError(0, 'dropped', cause));
      return;
    }
    this.teardown(conn, false);
    this.conn = null;
    if (!this.options.reconnect) {
      this.close({ reason: 'dropped', cause });
      return;
    }
    // Attempt 0: the drop itself, so a page can say so at once.
    this.emit('reconnecting', { attempt: 0, delayMs: 0, cause });
    this.connectWithRetry(cause).catch(() => {});
  }

  teardown(conn, sayGoodbye) {
    conn.open = false;
    conn.answerWaiting?.reject(new Error('the connection closed'));
    conn.answerWaiting = null;
    conn.pc.ontrack = null;
    for (const t of conn.timers) clearInterval(t);
    conn.timers = [];
    for (const ch of [conn.state, conn.actions]) {
      ch.onmessage = null;
      ch.onclose = null;
    }
    conn.pc.onconnectionstatechange = null;
    if (sayGoodbye && conn.location && !conn.deleted) {
      conn.deleted = true;
      // The session URL is the secret: DELETE needs no token.
      fetch(conn.location, { method: 'DELETE', keepalive: true }).catch(() => {});
    }
    try {
      conn.pc.close();
    } catch {
      // already closed
    }
  }

  close(info) {
    if (this.ended) return;
    this.ended = true;
    const conn = this.conn;
    this.conn = null;
    if (conn) {
      // A join under way fails with the reason (a kick before the Welcome,
      // a version mismatch, leave()); its own catch DELETEs the session.
      if (!conn.open) conn.failJoin?.(new JoinError(0, info.reason, info.message ?? `closed: ${info.reason}`));
      this.teardown(conn, info.reason === 'left');
    }
    this.emit('closed', info);
  }

  /** Leaves the instance (DELETE of the session) and closes. */
  leave() {
    this.close({ reason: 'left' });
  }
}
