//! One bot: joins an instance over HTTP and WebRTC with the Rust client
//! library, moves its avatar at the input rate (one `Input` per input tick,
//! which also carries the snapshot acknowledgement), chats now and then, and
//! measures what a user would notice: join time, snapshot delivery and
//! inter-arrival jitter, end-to-end latency of another user's move, bytes.
//!
//! Bots of one process run on one thread (a tokio `LocalSet`), so bots of
//! the same instance share the latency probe's state without locks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use engine::Vec3;
use net::client::{self, Client, ClientEvent, ClientIo, Session, SessionStats};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::fleet::JoinProgress;
use super::stats::{Histogram, Recorder};
use super::tokens::TokenSource;

/// How far an avatar walks from its spawn point, metres.
pub const WALK_AMPLITUDE_M: f32 = 1.5;
/// The probe rests, then walks, each for this long (so every observer sees
/// a clear start of motion after a still period).
pub const PROBE_PHASE: Duration = Duration::from_secs(1);
/// A probe counts as moved once an observer sees it this far from where it
/// rested (well above the quantisation step and the controller's jitter).
pub const PROBE_MOVED_M: f32 = 0.01;
/// Longest a bot waits between joining and seeing its own avatar.
pub const FIRST_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a bot refused 503 `busy` waits before it asks again (the
/// server's `Retry-After`), as a real client would.
pub const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What every bot of a run does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    /// The node's HTTP address (signaling).
    pub http: SocketAddr,
    /// Inputs per second (one datagram each).
    pub input_hz: u32,
    /// Walking speed, m/s.
    pub speed_mps: f32,
    /// Milliseconds between a bot's chat actions; 0: no chat.
    pub chat_interval_ms: u64,
    /// Longest a join (HTTP, ICE, DTLS, SCTP, Welcome) may take.
    pub join_timeout_ms: u64,
    /// How long an applied snapshot waits for an input to carry its ack
    /// (the client's `set_ack_delay`); 0 acks every snapshot at once with an
    /// empty input, as the client did before inputs carried acks.
    pub ack_delay_ms: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            input_hz: 30,
            speed_mps: 2.0,
            chat_interval_ms: 10_000,
            join_timeout_ms: 15_000,
            ack_delay_ms: client::ACK_DELAY_DEFAULT.as_millis() as u64,
        }
    }
}

/// One bot: who it is and where it goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BotSpec {
    pub instance: String,
    pub user: String,
    /// The instance's latency probe: rests and walks in turns; the other
    /// bots of the instance time when they see it start.
    pub probe: bool,
}

/// The phase of a run, set by whoever drives the bots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Join and play; nothing is counted yet.
    Warmup,
    /// Play and count.
    Measure,
    /// Leave (with `DELETE`) and report.
    Stop,
}

/// What one bot saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BotResult {
    pub instance: String,
    pub user: String,
    pub joined: bool,
    pub join_error: Option<String>,
    /// From asking for a token to the first snapshot that shows the bot's
    /// own avatar (HTTP join, ICE, DTLS, SCTP, Welcome), ms.
    pub join_ms: Option<f64>,
    /// The snapshot rate the Welcome announced.
    pub tick_hz: u32,
    /// How long this bot measured (its own view of the window), seconds.
    pub window_s: f64,
    /// Snapshots applied inside the window.
    pub snapshots: u64,
    pub interarrival: Histogram,
    /// From the probe's first step to this bot seeing it move.
    pub latency: Histogram,
    /// Through the bot's socket inside the window.
    pub window_io: IoCounts,
    /// Input frames inside the window: with movement, and ack-only.
    pub window_inputs: u64,
    pub window_acks: u64,
    /// Over the whole run: Input frames that carried movement, and empty
    /// ones sent only to acknowledge.
    pub inputs_sent: u64,
    pub acks_sent: u64,
    pub chats_sent: u64,
    /// Chat actions from others received inside the window.
    pub chats_received: u64,
    /// The connection ended before the run did (kicked or closed).
    pub ended_early: Option<String>,
}

impl BotResult {
    /// Snapshots received / snapshots the tick rate promises, in the window.
    pub fn delivery(&self) -> Option<f64> {
        let expected = self.window_s * f64::from(self.tick_hz);
        (self.joined && expected > 0.0).then(|| self.snapshots as f64 / expected)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoCounts {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
}

impl IoCounts {
    fn between(a: ClientIo, b: ClientIo) -> IoCounts {
        IoCounts {
            datagrams_in: b.datagrams_in - a.datagrams_in,
            bytes_in: b.bytes_in - a.bytes_in,
            datagrams_out: b.datagrams_out - a.datagrams_out,
            bytes_out: b.bytes_out - a.bytes_out,
        }
    }

    pub fn add(&mut self, o: &IoCounts) {
        self.datagrams_in += o.datagrams_in;
        self.bytes_in += o.bytes_in;
        self.datagrams_out += o.datagrams_out;
        self.bytes_out += o.bytes_out;
    }
}

/// The latency probe of one instance, as its observers see it.
#[derive(Debug, Default)]
pub struct Probe {
    avatar: Option<u32>,
    /// Counts the probe's walks; an observer measures each walk once.
    walk: u64,
    walking: bool,
    /// When the probe sent the first input of its current walk.
    walk_started: Option<Instant>,
}

/// Probes by instance, shared by the bots of one process.
pub type Probes = Rc<RefCell<HashMap<String, Probe>>>;

/// Where a bot wants its avatar at a given time.
#[derive(Debug)]
struct Walk {
    origin: Vec3,
    start: Instant,
    speed_mps: f32,
    probe: bool,
}

impl Walk {
    /// Bots walk back and forth along x; the probe rests and walks in turns
    /// (rest, walk out, rest, walk back).
    fn target(&self, now: Instant) -> (Vec3, bool) {
        let t = now.saturating_duration_since(self.start).as_secs_f32();
        let mut p = self.origin;
        if self.probe {
            let phase = PROBE_PHASE.as_secs_f32();
            let step = (t / phase) as u64 % 4;
            let into = t % phase;
            let walk = self.speed_mps * phase;
            let (offset, walking) = match step {
                0 => (0.0, false),
                1 => (self.speed_mps * into, true),
                2 => (walk, false),
                _ => (walk - self.speed_mps * into, true),
            };
            p.x += offset;
            return (p, walking);
        }
        let span = 4.0 * WALK_AMPLITUDE_M / self.speed_mps;
        let u = (t % span) / span;
        let tri = if u < 0.5 {
            4.0 * u - 1.0
        } else {
            3.0 - 4.0 * u
        };
        p.x += WALK_AMPLITUDE_M * tri;
        (p, true)
    }
}

/// What an observer remembers of the probe.
#[derive(Debug, Default)]
struct Watch {
    /// Where the probe was last seen while it rested.
    rest: Option<Vec3>,
    /// The walk this observer timed last.
    measured_walk: u64,
}

/// Runs one bot until `phase` says stop (or its connection ends).
pub async fn run(
    spec: BotSpec,
    workload: Workload,
    tokens: TokenSource,
    probes: Probes,
    mut phase: watch::Receiver<Phase>,
    progress: &JoinProgress,
) -> BotResult {
    let mut result = BotResult {
        instance: spec.instance.clone(),
        user: spec.user.clone(),
        ..BotResult::default()
    };
    let started = Instant::now();
    let joined = tokio::time::timeout(
        Duration::from_millis(workload.join_timeout_ms),
        join(&spec, &workload, &tokens),
    )
    .await
    .unwrap_or_else(|_| Err("join timed out".into()));
    let (mut client, avatar, origin) = match joined {
        Ok(j) => j,
        Err(e) => {
            progress.failed.set(progress.failed.get() + 1);
            result.join_error = Some(e);
            return result;
        }
    };
    client
        .session()
        .set_ack_delay(Duration::from_millis(workload.ack_delay_ms));
    progress.joined.set(progress.joined.get() + 1);
    result.joined = true;
    result.join_ms = Some(started.elapsed().as_secs_f64() * 1e3);
    result.tick_hz = client
        .session()
        .welcome()
        .map_or(0, |w| u32::from(w.snapshot_hz));
    if spec.probe {
        probes
            .borrow_mut()
            .entry(spec.instance.clone())
            .or_default()
            .avatar = Some(avatar);
    }
    play(
        &mut client,
        &spec,
        &workload,
        avatar,
        origin,
        &probes,
        &mut phase,
        &mut result,
    )
    .await;
    let stats = client.session().stats();
    result.inputs_sent = stats.inputs_sent;
    result.acks_sent = stats.acks_sent;
    if result.ended_early.is_none() {
        let _ = tokio::time::timeout(Duration::from_secs(5), client.leave()).await;
    }
    result
}

/// HTTP join, ICE/DTLS/SCTP, the Welcome and the first snapshot that shows
/// the bot's own avatar: returns the client, the avatar and where it stands.
async fn join(
    spec: &BotSpec,
    workload: &Workload,
    tokens: &TokenSource,
) -> Result<(Client, u32, Vec3), String> {
    let token = tokens
        .token(workload.http, &spec.user, &spec.instance)
        .await
        .map_err(|e| format!("token: {e}"))?;
    // Refused `busy` (the shard sheds load), ask again after its
    // Retry-After while half the join budget lasts; then report the refusal.
    let retry_until = Instant::now() + Duration::from_millis(workload.join_timeout_ms / 2);
    let mut client = loop {
        match Client::join(workload.http, &spec.instance, &token).await {
            Ok(c) => break c,
            Err(client::ClientError::Refused { status: 503, body })
                if body.contains(r#""error":"busy""#)
                    && Instant::now() + BUSY_RETRY_AFTER < retry_until =>
            {
                tokio::time::sleep(BUSY_RETRY_AFTER).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let mut found = None;
    let mut ended = None;
    client
        .run_until(FIRST_SNAPSHOT_TIMEOUT, |session, event| match event {
            ClientEvent::Snapshot { .. } => {
                let avatar = session.welcome().map(|w| w.avatar);
                found = avatar.and_then(|a| session.position_of(a).map(|p| (a, p)));
                found.is_some()
            }
            ClientEvent::Kicked { message, .. } => {
                ended = Some(format!("kicked: {message}"));
                true
            }
            ClientEvent::Closed => {
                ended = Some("closed".into());
                true
            }
            _ => false,
        })
        .await
        .map_err(|e| e.to_string())?;
    if let Some(e) = ended {
        return Err(e);
    }
    let (avatar, origin) = found.ok_or("no snapshot with the bot's avatar")?;
    Ok((client, avatar, origin))
}

#[allow(clippy::too_many_arguments)]
async fn play(
    client: &mut Client,
    spec: &BotSpec,
    workload: &Workload,
    avatar: u32,
    origin: Vec3,
    probes: &Probes,
    phase: &mut watch::Receiver<Phase>,
    result: &mut BotResult,
) {
    let period = Duration::from_secs_f64(1.0 / f64::from(workload.input_hz.max(1)));
    let walk = Walk {
        origin,
        start: Instant::now(),
        speed_mps: workload.speed_mps,
        probe: spec.probe,
    };
    let chat_every =
        (workload.chat_interval_ms > 0).then(|| Duration::from_millis(workload.chat_interval_ms));
    // Spread the chats of different bots over the interval.
    let mut next_chat = chat_every.map(|d| Instant::now() + d.mul_f64(jitter(&spec.user)));
    let mut next_input = Instant::now();
    let mut window: Option<(Instant, ClientIo, SessionStats)> = None;
    let mut interarrival = Recorder::default();
    let mut latency = Recorder::default();
    let mut last_snapshot: Option<Instant> = None;
    let mut watch = Watch::default();
    let mut was_walking = false;
    loop {
        let current = *phase.borrow_and_update();
        let now = Instant::now();
        match (current, window) {
            (Phase::Measure, None) => window = Some((now, client.io(), client.session().stats())),
            (Phase::Stop, _) => break,
            _ => {}
        }
        if now >= next_input {
            let (target, walking) = walk.target(now);
            if spec.probe && walking != was_walking {
                let mut probes = probes.borrow_mut();
                let probe = probes.entry(spec.instance.clone()).or_default();
                probe.walking = walking;
                if walking {
                    probe.walk += 1;
                    probe.walk_started = Some(now);
                }
            }
            was_walking = walking;
            let update = client::owned_update(avatar, target);
            if client.session().send_input(vec![update], now).is_err() {
                result.ended_early = Some("input refused: channel closed".into());
                break;
            }
            next_input += period;
            if next_input < now {
                next_input = now + period;
            }
        }
        if let Some(at) = next_chat.filter(|&at| now >= at) {
            let chat = client::action(
                "chat",
                "chat.message",
                b"hello from a bot",
                net::messages::Cache::No,
            );
            if client.session().send_action(&chat, now).is_ok() {
                result.chats_sent += 1;
            }
            next_chat = chat_every.map(|d| at + d);
        }
        let measuring = window.is_some();
        let wait = next_input.saturating_duration_since(Instant::now());
        let ended = client
            .run_until(wait, |session, event| match event {
                ClientEvent::Snapshot { .. } => {
                    let at = Instant::now();
                    if measuring {
                        result.snapshots += 1;
                        if let Some(prev) = last_snapshot {
                            interarrival.record(at - prev);
                        }
                        last_snapshot = Some(at);
                    }
                    // Latency is another user's move: the probe does not time itself.
                    if !spec.probe {
                        let mut discard = Recorder::default();
                        let into = if measuring {
                            &mut latency
                        } else {
                            &mut discard
                        };
                        observe_probe(session, &spec.instance, probes, &mut watch, into);
                    }
                    false
                }
                ClientEvent::Action(a) => {
                    if measuring && a.topic == "chat" {
                        result.chats_received += 1;
                    }
                    false
                }
                ClientEvent::Kicked { message, .. } => {
                    result.ended_early = Some(format!("kicked: {message}"));
                    true
                }
                ClientEvent::Closed => {
                    result.ended_early = Some("closed".into());
                    true
                }
                _ => false,
            })
            .await;
        match ended {
            Ok(false) => {}
            Ok(true) => break,
            Err(e) => {
                result.ended_early = Some(e.to_string());
                break;
            }
        }
    }
    if let Some((from, io, stats)) = window {
        result.window_s = from.elapsed().as_secs_f64();
        result.window_io = IoCounts::between(io, client.io());
        let end = client.session().stats();
        result.window_inputs = end.inputs_sent - stats.inputs_sent;
        result.window_acks = end.acks_sent - stats.acks_sent;
    }
    result.interarrival = interarrival.finish();
    result.latency = latency.finish();
}

/// An observer's view of its instance's probe: while the probe rests, its
/// position is remembered; once it walks, the first snapshot that shows it
/// away from that position times the walk.
fn observe_probe(
    session: &Session,
    instance: &str,
    probes: &Probes,
    watch: &mut Watch,
    latency: &mut Recorder,
) {
    let probes = probes.borrow();
    let Some(probe) = probes.get(instance) else {
        return;
    };
    let Some(position) = probe.avatar.and_then(|a| session.position_of(a)) else {
        return;
    };
    if !probe.walking {
        watch.rest = Some(position);
        return;
    }
    // Only a walk that began after this observer saw the probe rest.
    let (Some(rest), Some(started)) = (watch.rest, probe.walk_started) else {
        return;
    };
    if probe.walk > watch.measured_walk && position.minus(rest).length() > PROBE_MOVED_M {
        latency.record(started.elapsed());
        watch.measured_walk = probe.walk;
        watch.rest = None;
    }
}

/// A stable fraction in [0, 1) from a name, to spread bots over an interval.
fn jitter(name: &str) -> f64 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % 10_000) as f64 / 10_000.0
}
