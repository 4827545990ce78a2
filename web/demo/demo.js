// The demo page: joins an instance (by default `demo`, with a dev token),
// draws it, moves this user's avatar with WASD or the arrow keys, and
// shows chat, the users present (speaking or not, each with a mute
// button), a microphone button and connection statistics.
//
// Query parameters: `instance` (default demo), `token` (a JWT; without it
// the page asks the node for a dev token, which only a dev node gives),
// `name`, `server` (another node's URL, for cross-origin use).

import { Client, InterpolatedView } from '../instanceserver.js';
import { Renderer } from './render.js';

const params = new URLSearchParams(location.search);
const server = (params.get('server') ?? location.origin).replace(/\/$/, '');
const instance = params.get('instance') ?? 'demo';
const suffix = Math.random().toString(36).slice(2, 6);
const name = params.get('name') ?? `guest-${suffix}`;

const $ = (id) => document.getElementById(id);
const status = (text) => {
  $('status').textContent = text;
};

/** What the page knows, for people and for the browser tests. */
const demo = {
  client: null,
  scene: null,
  chat: [],
  rendering: false,
  /** Names speaking now, and every name heard speaking since the page opened. */
  speaking: [],
  spoke: [],
  /** User indices whose audio this page muted. */
  mutedUsers: new Set(),
  mic: null,
  /** The interpolated position of an entity, or null. */
  positionOf(networkId) {
    const view = demo.client?.snapshots.entities;
    if (!view) return null;
    const i = view.indexOf(networkId);
    if (i < 0) return null;
    const min = demo.client.welcome.boundsMin;
    return [0, 1, 2].map((k) => min[k] + view.positions[3 * i + k] * 0.001);
  },
};
window.demo = demo;

async function devToken() {
  const r = await fetch(`${server}/v1/dev/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ sub: name, name, instance }),
  });
  if (!r.ok) throw new Error(`this node gives no dev token (${r.status}); open the page with ?token=<a join JWT>`);
  return (await r.json()).token;
}

function addChat(who, text) {
  demo.chat.push({ who, text });
  const line = document.createElement('div');
  const w = document.createElement('span');
  w.className = 'who';
  w.textContent = `${who}: `;
  line.append(w, document.createTextNode(text));
  $('log').append(line);
  $('log').scrollTop = $('log').scrollHeight;
}

function nameOf(client, userIndex) {
  if (userIndex === client.userIndex) return `${name} (you)`;
  if (userIndex === 0xffffffff) return 'server';
  return client.peers.get(userIndex)?.name || client.peers.get(userIndex)?.userId || `user ${userIndex}`;
}

function showUsers(client) {
  const list = $('userlist');
  list.replaceChildren();
  const me = document.createElement('li');
  me.className = 'me';
  me.dataset.user = 'me';
  me.textContent = `${name} (you)`;
  list.append(me);
  for (const p of client.peers.values()) {
    const li = document.createElement('li');
    li.dataset.user = String(p.userIndex);
    li.textContent = p.name || p.userId;
    const mute = document.createElement('button');
    mute.textContent = demo.mutedUsers.has(p.userIndex) ? 'unmute' : 'mute';
    mute.title = 'Mute this user for you';
    mute.addEventListener('click', () => {
      if (demo.mutedUsers.has(p.userIndex)) demo.mutedUsers.delete(p.userIndex);
      else demo.mutedUsers.add(p.userIndex);
      applyMutes(client);
      showUsers(client);
    });
    li.append(mute);
    list.append(li);
  }
  showSpeaking();
}

// ---------------------------------------------------------------- voice

/** <audio> elements playing the remote tracks, by track id. */
const players = new Map();

function play(client, t) {
  let el = players.get(t.track);
  if (!el) {
    el = document.createElement('audio');
    el.autoplay = true;
    players.set(t.track, el);
    $('audio').append(el);
  }
  el.srcObject = t.stream ?? new MediaStream([t.mediaTrack]);
  el.dataset.publisher = String(t.publisher);
  applyMutes(client);
  el.play().catch(() => {
    status('click anywhere to hear the others (the browser blocks sound until then)');
    window.addEventListener('click', () => el.play().catch(() => {}), { once: true });
  });
}

function stopPlaying(track) {
  players.get(track)?.remove();
  players.delete(track);
}

function applyMutes(client) {
  for (const [track, el] of players) {
    const publisher = client.tracks.get(track)?.publisher ?? Number(el.dataset.publisher);
    el.muted = demo.mutedUsers.has(publisher);
  }
}

/** The microphone button: publish, then mute and unmute. */
async function toggleMic(client) {
  if (!demo.mic) {
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      demo.mic = stream.getAudioTracks()[0];
      await client.publish(demo.mic);
    } catch (e) {
      demo.mic = null;
      $('mic').textContent = 'Microphone: unavailable';
      addChat('*', `no microphone: ${e.message}`);
      return;
    }
  } else {
    client.setMuted(!client.muted);
  }
  $('mic').textContent = client.muted ? 'Microphone: muted (click to unmute)' : 'Microphone: on (click to mute)';
}

const SPEAKING_LEVEL = 0.02;

function showSpeaking() {
  for (const li of $('userlist').children) {
    const who = li.dataset.user === 'me' ? name : li.firstChild.textContent;
    li.classList.toggle('speaking', demo.speaking.includes(who));
  }
}

/** Polls the audio levels a few times a second for the speaking indicators. */
function watchSpeaking(client) {
  setInterval(async () => {
    const levels = await client.audioLevels().catch(() => null);
    if (!levels) return;
    const now = [];
    if ((levels.local ?? 0) > SPEAKING_LEVEL) now.push(name);
    for (const [track, level] of levels.remote) {
      const publisher = client.tracks.get(track)?.publisher;
      const peer = client.peers.get(publisher);
      if (peer && level > SPEAKING_LEVEL && !demo.mutedUsers.has(publisher)) now.push(peer.name || peer.userId);
    }
    demo.speaking = now;
    for (const n of now) if (!demo.spoke.includes(n)) demo.spoke.push(n);
    showSpeaking();
  }, 250);
}

// ---------------------------------------------------------------- movement

const keys = new Set();
const MOVE_KEYS = new Set(['KeyW', 'KeyA', 'KeyS', 'KeyD', 'ArrowUp', 'ArrowDown', 'ArrowLeft', 'ArrowRight']);
window.addEventListener('keydown', (e) => {
  if (document.activeElement === $('say')) return;
  if (MOVE_KEYS.has(e.code)) {
    keys.add(e.code);
    e.preventDefault();
  }
});
window.addEventListener('keyup', (e) => keys.delete(e.code));
window.addEventListener('blur', () => keys.clear());

const camera = { yaw: 0, pitch: 0.45, distance: 9 };
let dragging = null;
window.addEventListener('pointerdown', (e) => {
  if (e.target.id === 'view') dragging = { x: e.clientX, y: e.clientY };
});
window.addEventListener('pointerup', () => {
  dragging = null;
});
window.addEventListener('pointermove', (e) => {
  if (!dragging) return;
  camera.yaw -= (e.clientX - dragging.x) * 0.005;
  camera.pitch = Math.min(1.3, Math.max(0.05, camera.pitch + (e.clientY - dragging.y) * 0.005));
  dragging = { x: e.clientX, y: e.clientY };
});

const WALK_MPS = 4;
/** Where this user's avatar is being sent; follows the server's position. */
let target = null;

function steer(client, dt) {
  const at = demo.positionOf(client.avatar);
  if (!at) return;
  if (target === null) target = at.slice();
  let forward = 0;
  let right = 0;
  if (keys.has('KeyW') || keys.has('ArrowUp')) forward += 1;
  if (keys.has('KeyS') || keys.has('ArrowDown')) forward -= 1;
  if (keys.has('KeyD') || keys.has('ArrowRight')) right += 1;
  if (keys.has('KeyA') || keys.has('ArrowLeft')) right -= 1;
  if (forward === 0 && right === 0) {
    target = at.slice();
    return;
  }
  // Forward is away from the camera.
  const fx = -Math.sin(camera.yaw);
  const fz = -Math.cos(camera.yaw);
  let dx = forward * fx - right * fz;
  let dz = forward * fz + right * fx;
  const len = Math.hypot(dx, dz);
  dx /= len;
  dz /= len;
  // Run ahead of the server's avatar by at most a metre: walls stop it.
  target[0] += dx * WALK_MPS * dt;
  target[2] += dz * WALK_MPS * dt;
  target[1] = at[1];
  const ahead = Math.hypot(target[0] - at[0], target[2] - at[2]);
  if (ahead > 1) {
    target[0] = at[0] + ((target[0] - at[0]) / ahead);
    target[2] = at[2] + ((target[2] - at[2]) / ahead);
  }
  const yaw = Math.atan2(dx, dz);
  client.moveAvatar(target, [0, Math.sin(yaw / 2), 0, Math.cos(yaw / 2)]);
}

// ---------------------------------------------------------------- drawing

const PALETTE = [[0.85, 0.45, 0.3], [0.35, 0.6, 0.85], [0.9, 0.75, 0.3], [0.5, 0.75, 0.4], [0.7, 0.45, 0.75]];

function sceneItems(renderer, scene) {
  const fixed = [];
  const byId = new Map();
  scene.entities.forEach((e, i) => {
    if (!e.shape) return;
    const m = renderer.shapeMesh(e.shape, i);
    if (!m) return;
    const item = { ...m, position: e.position, rotation: e.rotation, color: e.body === 'fixed' ? [0.72, 0.72, 0.68] : PALETTE[i % PALETTE.length] };
    if (e.network_id === null) fixed.push(item);
    else byId.set(e.network_id, item);
  });
  return { fixed, byId };
}

function startRendering(client) {
  let renderer;
  try {
    renderer = new Renderer($('view'));
  } catch (e) {
    status(`joined; no 3D view: ${e.message}`);
    return;
  }
  demo.rendering = true;
  const { fixed, byId } = sceneItems(renderer, demo.scene);
  const avatarMesh = renderer.shapeMesh(demo.scene.avatar, 'avatar');
  const view = new InterpolatedView();
  let last = performance.now();
  const frame = (now) => {
    const dt = Math.min(0.1, (now - last) / 1000);
    last = now;
    if (client.connected) steer(client, dt);
    client.sample(view, now);
    const items = fixed.slice();
    const avatars = new Map([[client.avatar, [0.95, 0.95, 1.0]]]);
    for (const p of client.peers.values()) avatars.set(p.avatar, [0.3, 0.8, 0.7]);
    let eyeTarget = [0, 1, 0];
    for (let i = 0; i < view.count; i++) {
      const id = view.ids[i];
      const position = view.positions.subarray(3 * i, 3 * i + 3);
      const rotation = view.rotations.subarray(4 * i, 4 * i + 4);
      const colour = avatars.get(id);
      if (colour) {
        items.push({ ...avatarMesh, position, rotation, color: colour });
        if (id === client.avatar) eyeTarget = [position[0], position[1] + 0.8, position[2]];
      } else {
        const it = byId.get(id);
        if (it) items.push({ ...it, position, rotation });
      }
    }
    const c = Math.cos(camera.pitch);
    const eye = [
      eyeTarget[0] + Math.sin(camera.yaw) * c * camera.distance,
      eyeTarget[1] + Math.sin(camera.pitch) * camera.distance,
      eyeTarget[2] + Math.cos(camera.yaw) * c * camera.distance,
    ];
    renderer.draw(items, eye, eyeTarget);
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}

function showStats(client) {
  const s = client.stats;
  $('stats').textContent = [
    `rtt        ${s.rttMs === null ? '-' : `${s.rttMs.toFixed(1)} ms`}`,
    `snapshots  ${s.snapshotsPerSecond.toFixed(1)} /s`,
    `received   ${(s.bytesPerSecond / 1024).toFixed(1)} KiB/s`,
    `in view    ${s.entities} entities`,
    `interp     ${s.interpolationDelayMs.toFixed(0)} ms behind`,
    `reconnects ${s.reconnects}`,
  ].join('\n');
}

// ---------------------------------------------------------------- main

async function main() {
  const token = params.get('token') ?? (await devToken());
  const sceneResponse = await fetch(`${server}/v1/instances/${encodeURIComponent(instance)}/scene`);
  if (!sceneResponse.ok) throw new Error(`instance ${instance}: ${(await sceneResponse.json()).message}`);
  demo.scene = await sceneResponse.json();
  status(`joining ${instance}…`);
  const client = new Client({ server, instance, token });
  demo.client = client;
  client.on('joined', (w) => {
    status(`${name} in ${instance} (user ${w.userIndex})`);
    target = null;
    showUsers(client);
  });
  client.on('peerjoined', (p) => {
    showUsers(client);
    addChat('*', `${p.name || p.userId} joined`);
  });
  client.on('peerleft', (p) => {
    showUsers(client);
    addChat('*', `${p.name || p.userId || 'someone'} left`);
  });
  client.on('action', (a) => {
    if (a.topic === 'chat' && a.actionType === 'message') addChat(nameOf(client, a.sender), new TextDecoder().decode(a.payload));
  });
  client.on('reconnecting', (r) => status(r.attempt === 0
    ? 'connection lost; reconnecting…'
    : `connection lost; reconnecting (attempt ${r.attempt} failed, next in ${(r.delayMs / 1000).toFixed(1)} s)`));
  client.on('kicked', (k) => status(`removed from the instance: ${k.reason}${k.message ? ` (${k.message})` : ''}`));
  client.on('draining', (d) => status(`the node is shutting down in ${(d.graceMs / 1000).toFixed(0)} s`));
  client.on('closed', (c) => {
    if (c.reason !== 'kicked') status(`disconnected: ${c.reason}`);
  });
  client.on('stats', () => showStats(client));
  client.on('track', (t) => play(client, t));
  client.on('trackremoved', (t) => stopPlaying(t.track));
  client.on('joined', () => {
    // A new session after a reconnect: the node offers the tracks again.
    for (const track of [...players.keys()]) if (!client.tracks.has(track)) stopPlaying(track);
  });
  await client.start();
  $('say').addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || !$('say').value.trim()) return;
    const text = $('say').value.trim();
    try {
      client.chat(text);
      addChat(nameOf(client, client.userIndex), text);
      $('say').value = '';
    } catch (err) {
      addChat('*', `not sent: ${err.message}`);
    }
  });
  $('mic').addEventListener('click', () => toggleMic(client));
  watchSpeaking(client);
  window.addEventListener('pagehide', () => client.leave());
  startRendering(client);
}

main().catch((e) => {
  status(`could not join: ${e.message}`);
  demo.error = e.message;
});
