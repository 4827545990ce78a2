// Browser end-to-end tests: a real node (the instanceserver binary), real
// headless Chromium (Debian's package, driven by playwright-core), real
// WebRTC on loopback. Run from the repository root after a build:
//
//   cargo build --bin instanceserver && (cd web && npm ci) && node --test web/e2e/
//
// Environment: E2E_SERVER_BIN (default target/debug/instanceserver),
// E2E_CHROMIUM (default /usr/bin/chromium), E2E_SCREENSHOTS (default
// target/browser-screenshots). Each test saves a screenshot there.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../..');
const bin = process.env.E2E_SERVER_BIN ?? join(repo, 'target/debug/instanceserver');
const shots = process.env.E2E_SCREENSHOTS ?? join(repo, 'target/browser-screenshots');
mkdirSync(shots, { recursive: true });

/** Polls `fn` (in Node) until it returns a truthy value; fails after `ms`. */
async function until(what, fn, ms = 20000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/** A free TCP port on loopback. */
function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}

let node;
let nodeLog = '';
let nodeUrl;
let gameServer;
let gameUrl;
let browser;

/** The second origin: a game's own web server that ships the SDK (web/) itself. */
function startGameServer(port) {
  const types = { '.html': 'text/html', '.js': 'text/javascript' };
  const web = resolve(repo, 'web');
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const file = path === '/' ? join(web, 'demo/index.html') : normalize(join(web, path.replace(/^\/web\//, '')));
    if (!file.startsWith(web) || !path.match(/^\/($|web\/)/)) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = readFileSync(file);
      res.writeHead(200, { 'content-type': types[file.slice(file.lastIndexOf('.'))] ?? 'application/octet-stream' }).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((res) => server.listen(port, '127.0.0.1', () => res(server)));
}

before(async () => {
  const [httpPort, gamePort] = [await freePort(), await freePort()];
  nodeUrl = `http://127.0.0.1:${httpPort}`;
  // Another origin than the node's: another host name and port.
  gameUrl = `http://localhost:${gamePort}`;
  node = spawn(bin, [
    '--http-listen', `127.0.0.1:${httpPort}`,
    '--udp-port-base', '0',
    '--shards', '1',
    '--set', 'grpc.enabled=false',
    '--set', 'node.dev=true',
    // Chromium runs on the node's cores here: its waits are not the shard's load.
    '--set', 'shard.overload_counts_cpu_wait=false',
    '--set', `http.cors_origins=${gameUrl}`,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  node.stdout.on('data', (d) => { nodeLog += d; });
  node.stderr.on('data', (d) => { nodeLog += d; });
  node.on('exit', (code) => {
    if (code !== null && code !== 0) console.error(`the node exited with ${code}:\n${nodeLog}`);
  });
  await until('the node to answer /healthz', async () => {
    if (node.exitCode !== null) throw new Error(`the node exited with ${node.exitCode}:\n${nodeLog}`);
    try {
      return (await fetch(`${nodeUrl}/healthz`)).ok;
    } catch {
      return false;
    }
  });
  gameServer = await startGameServer(gamePort);
  browser = await chromium.launch({
    executablePath: process.env.E2E_CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--no-sandbox',
      '--use-angle=swiftshader',
      '--enable-unsafe-swiftshader',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      // Remote audio plays without a click, as after a user's first one.
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
});

after(async () => {
  await browser?.close();
  gameServer?.close();
  node?.kill('SIGTERM');
});

/** Opens the demo page at `url` and waits until it has joined and holds a view. */
async function openDemo(url, name) {
  const page = await browser.newPage({ viewport: { width: 960, height: 600 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.errors = errors;
  await page.goto(`${url}${url.includes('?') ? '&' : '?'}name=${name}`);
  await until(`${name} to join`, () =>
    page.evaluate(() => {
      const d = window.demo;
      if (d?.error) throw new Error(d.error);
      return d?.client?.connected && d.client.snapshots.entities.count > 0;
    }).catch((e) => {
      throw new Error(`${name}: ${e.message}\nnode log:\n${nodeLog.slice(-2000)}`);
    }),
  );
  return page;
}

const info = (page) =>
  page.evaluate(() => {
    const c = window.demo.client;
    return {
      userIndex: c.userIndex,
      avatar: c.avatar,
      peers: [...c.peers.values()].map((p) => ({ name: p.name, avatar: p.avatar })),
      chat: window.demo.chat,
      rendering: window.demo.rendering,
      stats: c.stats,
    };
  });

const positionOf = (page, id) => page.evaluate((id) => window.demo.positionOf(id), id);

test('two pages join one instance, see each other move, and chat', async () => {
  const a = await openDemo(`${nodeUrl}/`, 'ann');
  const b = await openDemo(`${nodeUrl}/`, 'bob');
  const ia = await info(a);
  await until('each page to list the other', async () => {
    const [x, y] = [await info(a), await info(b)];
    return x.peers.some((p) => p.name === 'bob') && y.peers.some((p) => p.name === 'ann');
  });
  const before = await positionOf(b, ia.avatar);
  assert.ok(before, "B holds A's avatar");
  // A walks forward for a second and a half.
  await a.keyboard.down('KeyW');
  await a.waitForTimeout(1500);
  await a.keyboard.up('KeyW');
  const moved = await until("B to see A's avatar move", async () => {
    const now = await positionOf(b, ia.avatar);
    const d = Math.hypot(now[0] - before[0], now[2] - before[2]);
    return d > 1 ? d : false;
  });
  assert.ok(moved > 1, `A's avatar moved ${moved} m as B sees it`);
  // A's own view agrees with B's within a snapshot's motion.
  const [pa, pb] = [await positionOf(a, ia.avatar), await positionOf(b, ia.avatar)];
  await until('both to agree', async () => {
    const [x, y] = [await positionOf(a, ia.avatar), await positionOf(b, ia.avatar)];
    return Math.hypot(x[0] - y[0], x[2] - y[2]) < 0.05;
  });
  assert.ok(pa && pb);
  // A chats; B shows it under A's name.
  await a.fill('#say', 'hello from ann');
  await a.press('#say', 'Enter');
  await until('B to receive the chat line', async () => (await info(b)).chat.some((l) => l.who === 'ann' && l.text === 'hello from ann'));
  const ib = await info(b);
  assert.ok(ib.rendering, 'B draws the scene (WebGL)');
  assert.ok(ib.stats.snapshotsPerSecond > 5, `B gets snapshots: ${ib.stats.snapshotsPerSecond}/s`);
  assert.ok(ib.stats.rttMs !== null && ib.stats.rttMs < 1000, `B measured its round trip: ${ib.stats.rttMs} ms`);
  await a.screenshot({ path: join(shots, 'two-pages-a.png') });
  await b.screenshot({ path: join(shots, 'two-pages-b.png') });
  assert.deepEqual([...a.errors, ...b.errors], []);
  await a.close();
  // A's page is gone: B is told it left.
  await until('B to see A leave', async () => !(await info(b)).peers.some((p) => p.name === 'ann'));
  await b.close();
});

test('a page served from another origin joins through CORS', async () => {
  const home = await openDemo(`${nodeUrl}/`, 'host');
  const page = await openDemo(`${gameUrl}/?server=${encodeURIComponent(nodeUrl)}`, 'guest');
  assert.equal(new URL(page.url()).origin, gameUrl);
  await until('the host to see the guest', async () => (await info(home)).peers.some((p) => p.name === 'guest'));
  await page.fill('#say', 'hi across origins');
  await page.press('#say', 'Enter');
  await until('the host to get the chat line', async () => (await info(home)).chat.some((l) => l.text === 'hi across origins'));
  await page.screenshot({ path: join(shots, 'cross-origin.png') });
  assert.deepEqual(page.errors, []);
  await page.close();
  await home.close();
});

test('an origin not in http.cors_origins is refused before any join', async () => {
  const otherPort = await freePort();
  const other = await startGameServer(otherPort);
  const origin = `http://127.0.0.1:${otherPort}`;
  try {
    const page = await browser.newPage();
    // 127.0.0.1 on another port: a third origin the node does not list.
    await page.goto(`${origin}/?server=${encodeURIComponent(nodeUrl)}&name=mallory&token=x`);
    const shown = await until('the page to report the refusal', () => page.evaluate(() => window.demo?.error));
    assert.match(shown, /fetch|network|failed/i);
    // The join itself, straight from the page: the browser's preflight is
    // refused, so the POST is never sent.
    const outcome = await page.evaluate(async (server) => {
      try {
        const r = await fetch(`${server}/v1/instances/demo/join`, {
          method: 'POST',
          headers: { authorization: 'Bearer x', 'content-type': 'application/sdp' },
          body: 'v=0\r\n',
        });
        return `answered ${r.status}`;
      } catch (e) {
        return `refused: ${e.message}`;
      }
    }, nodeUrl);
    assert.match(outcome, /^refused: /);
    // What the browser was told: 403 cors_origin to its preflight.
    const preflight = await fetch(`${nodeUrl}/v1/instances/demo/join`, {
      method: 'OPTIONS',
      headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' },
    });
    assert.equal(preflight.status, 403);
    assert.equal((await preflight.json()).error, 'cors_origin');
    assert.equal(preflight.headers.get('access-control-allow-origin'), null);
    await page.screenshot({ path: join(shots, 'cors-refused.png') });
    await page.close();
  } finally {
    other.close();
  }
});

test('the client reconnects after its connection drops', async () => {
  const page = await openDemo(`${nodeUrl}/`, 'dora');
  const first = (await info(page)).userIndex;
  // Close the peer connection under the client, as a network drop would.
  const droppedAt = Date.now();
  await page.evaluate(() => {
    const c = window.demo.client;
    window.causes = [];
    c.on('reconnecting', (r) => window.causes.push(String(r.cause?.message ?? r.cause)));
    c.conn.pc.close();
  });
  const events = await until('the client to join again', () =>
    page.evaluate(() => (window.demo.client.connected && window.demo.client.stats.reconnects > 0 ? window.demo.client.stats.reconnects : 0)),
  );
  assert.equal(events, 1);
  // The drop was seen when the channels closed, not by the 5 s silence check.
  const causes = await page.evaluate(() => window.causes);
  assert.match(causes[0] ?? '', /channel closed|peer connection closed/, `causes: ${causes}`);
  assert.ok(Date.now() - droppedAt < 5000, `rejoined after ${Date.now() - droppedAt} ms`);
  const again = await info(page);
  assert.notEqual(again.userIndex, null);
  assert.notEqual(again.userIndex, first, 'a new session, with a new user index');
  await page.screenshot({ path: join(shots, 'reconnected.png') });
  await page.close();
});

/**
 * A page on the node for the voice tests, with their helpers defined in it
 * as `window.media`: a dev token, waits, and the audio packets a client
 * has received over all its inbound streams.
 */
async function mediaPage() {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error(e.message));
  await page.goto(`${nodeUrl}/healthz`);
  await page.evaluate(() => {
    const wait = (ms) => new Promise((r) => setTimeout(r, ms));
    window.media = {
      token: async (sub) => (await (await fetch('/v1/dev/token', { method: 'POST', body: JSON.stringify({ sub, instance: 'demo' }) })).json()).token,
      wait,
      until: async (what, fn, ms = 10000) => {
        const end = Date.now() + ms;
        while (Date.now() < end) {
          if (fn()) return;
          await wait(100);
        }
        throw new Error(`timed out waiting for ${what}`);
      },
      packetsIn: async (client) => {
        let n = 0;
        (await client.conn.pc.getStats()).forEach((r) => {
          if (r.type === 'inbound-rtp' && r.kind === 'audio') n += r.packetsReceived;
        });
        return n;
      },
    };
  });
  return page;
}

test('a microphone published by one page is heard by another, and one published after joining too', async () => {
  const page = await mediaPage();
  const result = await page.evaluate(async () => {
    const { Client } = await import('/web/instanceserver.js');
    const { token, wait, until, packetsIn } = window.media;
    const fake = await navigator.mediaDevices.getUserMedia({ audio: true });
    const mic = fake.getAudioTracks()[0];
    // Ann publishes from her join offer on.
    const ann = await Client.join({ instance: 'demo', token: await token('ann-voice'), publish: [mic] });
    const heardByBob = [];
    const heardByAnn = [];
    ann.on('track', (t) => heardByAnn.push(t));
    const bob = await Client.join({ instance: 'demo', token: await token('bob-voice'), on: { track: (t) => heardByBob.push(t) } });
    await until('bob to receive ann\'s track', () => heardByBob.length > 0);
    await wait(2000);
    const first = await packetsIn(bob);
    await wait(1500);
    const second = await packetsIn(bob);
    // Bob publishes after joining: an offer of his over the actions channel.
    await bob.publish(mic.clone());
    await until('ann to receive bob\'s track', () => heardByAnn.length > 0);
    await wait(2000);
    const annIn = await packetsIn(ann);
    const out = {
      first,
      second,
      annIn,
      bobHeard: heardByBob.map((t) => ({ publisher: t.publisher, media: t.media, kind: t.mediaTrack.kind })),
      annHeard: heardByAnn.map((t) => ({ publisher: t.publisher, media: t.media })),
      ann: ann.userIndex,
      bob: bob.userIndex,
      tracksBobKnows: [...bob.tracks.values()].map((t) => t.publisher),
    };
    ann.leave();
    bob.leave();
    return out;
  });
  assert.deepEqual(result.bobHeard, [{ publisher: result.ann, media: 'audio', kind: 'audio' }]);
  // 50 packets a second of Opus: over a second and a half, well over 30.
  assert.ok(result.first > 0, `bob received ${result.first} audio packets`);
  assert.ok(result.second - result.first > 30, `bob's packets grew from ${result.first} to ${result.second}`);
  assert.deepEqual(result.annHeard, [{ publisher: result.bob, media: 'audio' }]);
  assert.ok(result.annIn > 30, `ann received ${result.annIn} audio packets from bob`);
  assert.deepEqual(result.tracksBobKnows, [result.ann]);
  await page.close();
});

test('a listener unsubscribes and subscribes again; a muted talker is announced and goes silent; the speaker is announced', async () => {
  const page = await mediaPage();
  const result = await page.evaluate(async () => {
    const { Client } = await import('/web/instanceserver.js');
    const { token, wait, until, packetsIn } = window.media;
    /** Packets `client` receives over `ms`. */
    const growth = async (client, ms) => {
      const before = await packetsIn(client);
      await wait(ms);
      return (await packetsIn(client)) - before;
    };
    const fake = await navigator.mediaDevices.getUserMedia({ audio: true });
    const mic = fake.getAudioTracks()[0];
    const tess = await Client.join({ instance: 'demo', token: await token('tess-talks'), publish: [mic] });
    const states = [];
    const speakers = [];
    const refusals = [];
    const heard = [];
    const leo = await Client.join({
      instance: 'demo',
      token: await token('leo-listens'),
      on: {
        track: (t) => heard.push(t),
        trackstate: (s) => states.push(s),
        activespeaker: (s) => speakers.push(s),
        mediarefused: (r) => refusals.push(r),
      },
    });
    // The demo instance may still hold a track of an earlier test's user.
    const tessTrack = () => heard.find((t) => t.publisher === tess.userIndex);
    await until('leo to receive tess\'s track', () => tessTrack() !== undefined);
    const track = tessTrack().track;
    await wait(1500);
    const subscribed = await growth(leo, 1500);
    leo.subscribe(track, false);
    await wait(300);
    const unsubscribed = await growth(leo, 1500);
    leo.subscribe(track);
    await wait(300);
    const again = await growth(leo, 1500);
    tess.setMuted(true);
    await until('leo to be told tess muted', () => states.some((s) => s.muted));
    await wait(300);
    const muted = await growth(leo, 1500);
    leo.setLayer(track, 'low');
    await until('the refusal of a layer for audio', () => refusals.length > 0);
    const out = { track, subscribed, unsubscribed, again, muted, states, speakers, refusals, tess: tess.userIndex };
    tess.leave();
    leo.leave();
    return out;
  });
  assert.ok(result.subscribed > 30, `subscribed: ${result.subscribed} packets in 1.5 s`);
  assert.ok(result.unsubscribed <= 2, `unsubscribed: ${result.unsubscribed} packets in 1.5 s`);
  assert.ok(result.again > 30, `subscribed again: ${result.again} packets in 1.5 s`);
  assert.ok(result.muted <= 2, `muted: ${result.muted} packets in 1.5 s`);
  assert.deepEqual(result.states.at(-1), { track: result.track, publisher: result.tess, muted: true, paused: false, moderated: false });
  // Chromium sends the audio level extension: the fake microphone's beeps make Tess the speaker.
  assert.ok(result.speakers.some((s) => s.user === result.tess && s.track === result.track), JSON.stringify(result.speakers));
  assert.equal(result.refusals[0].reason, `track ${result.track} has no simulcast layers`);
  await page.close();
});

test('on the demo page, one user talks, the other sees who speaks, hears it, and can mute', async () => {
  const a = await openDemo(`${nodeUrl}/`, 'vera');
  const b = await openDemo(`${nodeUrl}/`, 'walt');
  await until('each page to list the other', async () => {
    const [x, y] = [await info(a), await info(b)];
    return x.peers.some((p) => p.name === 'walt') && y.peers.some((p) => p.name === 'vera');
  });
  await a.click('#mic');
  await until('vera\'s microphone to be on', () => a.evaluate(() => document.getElementById('mic').textContent.startsWith('Microphone: on')));
  // Chromium's fake microphone beeps: walt's page shows vera speaking.
  await until('walt to see vera speak', () => b.evaluate(() => window.demo.spoke.includes('vera')), 20000);
  await until('vera to see herself speak', () => a.evaluate(() => window.demo.spoke.includes('vera')), 20000);
  const playing = await b.evaluate(() => [...document.querySelectorAll('#audio audio')].map((el) => ({ paused: el.paused, muted: el.muted })));
  assert.deepEqual(playing, [{ paused: false, muted: false }]);
  await until('the indicator to light', () => b.evaluate(() => document.querySelector('#userlist li.speaking')?.textContent.startsWith('vera')), 20000);
  await b.screenshot({ path: join(shots, 'voice-speaking.png') });
  // Walt mutes vera for himself: her audio element is muted.
  await b.click('#userlist li:not(.me) button');
  assert.deepEqual(await b.evaluate(() => [...document.querySelectorAll('#audio audio')].map((el) => el.muted)), [true]);
  await b.click('#userlist li:not(.me) button');
  // Vera mutes her microphone: she sends silence, and stops showing as speaking.
  await a.click('#mic');
  assert.match(await a.evaluate(() => document.getElementById('mic').textContent), /muted/);
  await a.waitForTimeout(1500);
  const quiet = [];
  for (let i = 0; i < 8; i++) {
    quiet.push(await b.evaluate(() => window.demo.speaking.includes('vera')));
    await b.waitForTimeout(250);
  }
  assert.deepEqual(quiet, new Array(8).fill(false));
  await a.screenshot({ path: join(shots, 'voice-muted.png') });
  assert.deepEqual([...a.errors, ...b.errors], []);
  await a.close();
  await b.close();
});

test('handlers passed at join hear the cached actions; leave() during a join fails it and frees the seat', async () => {
  const page = await browser.newPage();
  await page.goto(`${nodeUrl}/healthz`);
  const result = await page.evaluate(async () => {
    const { Client } = await import('/web/instanceserver.js');
    const token = async (sub) => (await (await fetch('/v1/dev/token', { method: 'POST', body: JSON.stringify({ sub, instance: 'demo' }) })).json()).token;
    // Ann leaves a cached action in the instance.
    const ann = await Client.join({ instance: 'demo', token: await token('ann-cache') });
    ann.sendAction({ topic: 'game', actionType: 'flag', cache: 'keep', payload: 'red' });
    await new Promise((r) => setTimeout(r, 500));
    // Bob's handlers are on before his first join: the Welcome's replay reaches them.
    const heard = [];
    let joined = 0;
    const bob = await Client.join({
      instance: 'demo',
      token: await token('bob-cache'),
      on: { action: (a) => heard.push({ type: a.actionType, cached: a.cached === true, text: new TextDecoder().decode(a.payload) }), joined: () => joined++ },
    });
    // Carol leaves while her join is under way.
    const carol = new Client({ instance: 'demo', token: await token('carol-cache'), reconnect: false });
    const pending = carol.start();
    setTimeout(() => carol.leave(), 0);
    let failure = null;
    try {
      await pending;
    } catch (e) {
      failure = { name: e.name, code: e.code };
    }
    bob.leave();
    ann.leave();
    return { heard, joined, failure, carolConnected: carol.connected };
  });
  assert.deepEqual(result.heard, [{ type: 'flag', cached: true, text: 'red' }]);
  assert.equal(result.joined, 1);
  assert.deepEqual(result.failure, { name: 'JoinError', code: 'left' });
  assert.equal(result.carolConnected, false);
  // Nobody is left holding a seat: carol's session, if the node made one, was deleted.
  await until('the instance to empty', async () => {
    const r = await (await fetch(`${nodeUrl}/v1/instances/demo`)).json();
    assert.ok(Array.isArray(r.users_present), JSON.stringify(r));
    return !r.users_present.some((u) => u.user_id.endsWith('-cache'));
  });
  await page.close();
});
