//! The control thread: one tokio current-thread runtime serving HTTP
//! signaling, health and metrics, and the gRPC control API. It owns the
//! instance registry, places instances on shards, and applies the events
//! shards send back (pumped by a small thread that blocks on the event
//! channel). Nothing here is on the per-datagram or per-tick path.

pub mod agones;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod ratelimit;
pub mod web;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use engine::{Scene, SceneCache, SceneLimits};
use state::auth::Verifier;
use state::commands::{
    Command, EndReason, Event, InstanceSpec, LeaveReason, SessionId, ShardMetrics,
};
use state::registry::{InstanceRecord, Lifecycle, Registry, RegistryError};
use tokio::sync::oneshot;

use crate::config::Config;
use ratelimit::JoinRateLimiter;

/// What the control thread knows about one shard.
#[derive(Debug)]
pub struct ShardSlot {
    pub commands: Sender<Command>,
    pub advertised: std::net::SocketAddr,
    pub metrics: ShardMetrics,
    /// Tick time used in the last stats period, µs per second.
    pub busy_us_per_s: u64,
    last_tick_sum_us: u64,
    /// When the shard's loop last came round ([`crate::io::monotonic_ms`]).
    pub heartbeat: Arc<std::sync::atomic::AtomicU64>,
}

/// Counters of the control plane, for `/metrics`.
#[derive(Debug, Default)]
pub struct ControlMetrics {
    pub auth_failures: BTreeMap<&'static str, u64>,
    /// Join responses by HTTP status.
    pub joins: BTreeMap<u16, u64>,
    pub sessions_left: BTreeMap<&'static str, u64>,
    pub instances_ended: BTreeMap<&'static str, u64>,
}

/// Why a control operation failed, mapped to HTTP and gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Registry(#[from] RegistryError),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("scene: {0}")]
    Scene(String),
    #[error("shard {0} is not accepting commands (queue full or stopped)")]
    ShardUnavailable(usize),
    #[error("the node is draining")]
    Draining,
    #[error("no free room code found: too many instances have one")]
    RoomCodesExhausted,
    #[error("timed out waiting for shard {0}")]
    Timeout(usize),
}

/// The control thread's state, shared by its HTTP and gRPC handlers and the
/// event pump (a mutex held only for short, non-async sections).
#[derive(Debug)]
pub struct Control {
    pub config: Config,
    pub registry: Registry,
    pub shards: Vec<ShardSlot>,
    pub verifier: Verifier,
    pub join_rates: JoinRateLimiter,
    pub draining: bool,
    /// The grace of the drain under way, if any (the binary waits this long).
    pub drain_grace: Option<Duration>,
    pub metrics: ControlMetrics,
    /// Session resource tokens (the `Location` of a join) → session.
    pub session_tokens: HashMap<String, SessionId>,
    token_of_session: HashMap<SessionId, String>,
    /// Creates waiting for their shard's `InstanceStarted`.
    pending_creates: HashMap<String, oneshot::Sender<Result<(), String>>>,
    next_instance: u64,
    /// Every scene sent to a shard, prepared once and shared by its instances.
    scenes: SceneCache,
    /// Who was in which instance, when.
    pub attendance: state::attendance::Attendance,
    /// The gRPC bearer token (`grpc.token_file`), which also guards the
    /// HTTP routes that name users outside dev mode; `None` without a file.
    pub operator_token: Option<String>,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub type Shared = Arc<Mutex<Control>>;

/// Resolves when a created instance runs (or with why it could not start).
pub type Started = oneshot::Receiver<Result<(), String>>;

/// Locks the control state. A poisoned lock means a handler panicked
/// mid-update; the state is still the best there is, so keep serving.
pub fn lock(shared: &Shared) -> MutexGuard<'_, Control> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a create request names its scene.
#[derive(Debug, Clone)]
pub enum SceneSource {
    /// A scene shipped in the binary (`demo`, `social`: [`engine::scene::BUILTIN_SCENES`]).
    Builtin(&'static str),
    /// A file name inside `node.scene_dir` (from an API request).
    File(String),
    /// A path from the operator's own configuration.
    Path(std::path::PathBuf),
    Json(String),
}

/// A create request (from gRPC, or the dev `demo` instance).
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub instance_id: Option<String>,
    /// World (a scene) or media (members and actions only).
    pub kind: state::commands::InstanceKind,
    pub location_id: String,
    pub scene: SceneSource,
    pub max_users: Option<u32>,
    /// `None`: the node's `instance.snapshot_hz`.
    pub snapshot_hz: Option<u32>,
    pub labels: BTreeMap<String, String>,
    /// `None`: the node's `instance.empty_timeout_ms`.
    pub empty_timeout_ms: Option<u64>,
    /// Private: only these users (and room-code joiners) may join.
    pub private: bool,
    pub allowed_user_ids: Vec<String>,
    /// Six digits, or `None`; `generate_room_code` makes one up.
    pub room_code: Option<String>,
    pub generate_room_code: bool,
    /// Runs until ended, even with nobody in it (the dev instance).
    pub persistent: bool,
}

/// Longest empty timeout an instance may ask for (a week).
pub const EMPTY_TIMEOUT_MS_MAX: u64 = crate::config::DURATION_MS_MAX;
/// Shortest empty timeout an instance may ask for.
pub const EMPTY_TIMEOUT_MS_MIN: u64 = 1000;
/// Most user ids on one private instance's allowlist (room-code joiners
/// beyond it are refused).
pub const ALLOWED_USERS_MAX: usize = 4096;
/// Longest user id on an allowlist, in bytes.
pub const USER_ID_BYTES_MAX: usize = 256;

/// Whether `code` is a room code: six ASCII digits.
pub fn is_room_code(code: &str) -> bool {
    code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())
}

/// Longest accepted instance or location id.
pub const ID_BYTES_MAX: usize = 128;

impl Control {
    pub fn new(config: Config, shards: Vec<ShardSlot>, verifier: Verifier) -> Control {
        let instances_max = config.shard.instances_max.saturating_mul(shards.len());
        Control {
            registry: Registry::new(instances_max),
            join_rates: JoinRateLimiter::new(
                config.http.joins_per_ip_per_minute,
                config.http.join_rate_ips_max,
            ),
            shards,
            verifier,
            draining: false,
            drain_grace: None,
            metrics: ControlMetrics::default(),
            session_tokens: HashMap::new(),
            token_of_session: HashMap::new(),
            pending_creates: HashMap::new(),
            next_instance: 1,
            scenes: SceneCache::default(),
            attendance: state::attendance::Attendance::new(config.node.attendance_records_max),
            operator_token: config.grpc.token(config.node.dev).ok().flatten(),
            config,
        }
    }

    /// The shard with the least load: tick time used, then seats, then instances.
    pub fn least_loaded_shard(&self) -> usize {
        let mut load = vec![(0u64, 0u64, 0u64); self.shards.len()];
        for r in self.registry.instances() {
            if let Some(l) = load.get_mut(r.shard) {
                l.1 += u64::from(r.seats);
                l.2 += 1;
            }
        }
        (0..self.shards.len())
            .min_by_key(|&i| {
                let (_, seats, instances) = load[i];
                // 1 ms of tick time per second weighs like one seat.
                (
                    self.shards[i].busy_us_per_s / 1000 + seats + 2 * instances,
                    instances,
                )
            })
            .unwrap_or(0)
    }

    /// Sends a command to a shard without blocking.
    pub fn send(&self, shard: usize, command: Command) -> Result<(), ControlError> {
        let slot = self
            .shards
            .get(shard)
            .ok_or(ControlError::ShardUnavailable(shard))?;
        match slot.commands.try_send(command) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                Err(ControlError::ShardUnavailable(shard))
            }
        }
    }

    /// Shards whose loop has not come round for `shard.stuck_ms`: stuck
    /// (in a loop, or blocked), not merely slow. Health fails while any is.
    pub fn stuck_shards(&self) -> Vec<usize> {
        let now = crate::io::monotonic_ms();
        let stuck_ms = self.config.shard.stuck_ms;
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.silent_ms(now) >= stuck_ms)
            .map(|(i, _)| i)
            .collect()
    }

    /// Validates and registers an instance, sends it to its shard, and
    /// returns a receiver that resolves when the shard reports it running.
    pub fn create(
        &mut self,
        request: CreateRequest,
        scene: Scene,
    ) -> Result<(String, usize, Started), ControlError> {
        if self.draining {
            return Err(ControlError::Draining);
        }
        let id = match request.instance_id.filter(|s| !s.is_empty()) {
            Some(id) => id,
            None => loop {
                let id = format!("i{:06}", self.next_instance);
                self.next_instance += 1;
                if self.registry.get(&id).is_none() {
                    break id;
                }
            },
        };
        check_id("instance_id", &id)?;
        if !request.location_id.is_empty() {
            check_id("location_id", &request.location_id)?;
        }
        if request.labels.len() > 64 {
            return Err(ControlError::Invalid("at most 64 labels".into()));
        }
        let max_users = request
            .max_users
            .filter(|&m| m > 0)
            .unwrap_or(self.config.instance.max_users);
        if max_users as usize > self.config.shard.peers_max {
            return Err(ControlError::Invalid(format!(
                "max_users {max_users} is over shard.peers_max ({})",
                self.config.shard.peers_max
            )));
        }
        let empty_timeout_ms = match (request.persistent, request.empty_timeout_ms) {
            (true, Some(_)) => {
                return Err(ControlError::Invalid(
                    "a persistent instance has no empty_timeout_ms".into(),
                ));
            }
            (true, None) => None,
            (false, Some(ms)) if !(EMPTY_TIMEOUT_MS_MIN..=EMPTY_TIMEOUT_MS_MAX).contains(&ms) => {
                return Err(ControlError::Invalid(format!(
                    "empty_timeout_ms {ms} is not within {EMPTY_TIMEOUT_MS_MIN}..={EMPTY_TIMEOUT_MS_MAX}"
                )));
            }
            (false, ms) => Some(ms.unwrap_or(self.config.instance.empty_timeout_ms)),
        };
        if request.allowed_user_ids.len() > ALLOWED_USERS_MAX {
            return Err(ControlError::Invalid(format!(
                "at most {ALLOWED_USERS_MAX} allowed_user_ids"
            )));
        }
        if let Some(bad) = request
            .allowed_user_ids
            .iter()
            .find(|u| u.is_empty() || u.len() > USER_ID_BYTES_MAX)
        {
            return Err(ControlError::Invalid(format!(
                "allowed user id {:?} is not 1 to {USER_ID_BYTES_MAX} bytes",
                bad.chars().take(40).collect::<String>()
            )));
        }
        if !request.private && !request.allowed_user_ids.is_empty() {
            return Err(ControlError::Invalid(
                "allowed_user_ids are for a private instance (set private)".into(),
            ));
        }
        if (request.generate_room_code
            || request.room_code.as_deref().is_some_and(|c| !c.is_empty()))
            && request.location_id.is_empty()
        {
            return Err(ControlError::Invalid(
                "a room code is for tokens scoped to a location: set location_id".into(),
            ));
        }
        let room_code = match (
            request.room_code.filter(|c| !c.is_empty()),
            request.generate_room_code,
        ) {
            (Some(_), true) => {
                return Err(ControlError::Invalid(
                    "room_code and generate_room_code exclude each other".into(),
                ));
            }
            (Some(code), false) if !is_room_code(&code) => {
                return Err(ControlError::Invalid(format!(
                    "room_code {:?} is not six digits",
                    code.chars().take(16).collect::<String>()
                )));
            }
            (Some(code), false) => Some(code),
            (None, true) => Some(self.new_room_code()?),
            (None, false) => None,
        };
        let snapshot_hz = request
            .snapshot_hz
            .unwrap_or_else(|| self.config.instance.default_snapshot_hz());
        if let Some(e) =
            state::instance::snapshot_hz_error(snapshot_hz, self.config.instance.tick_hz)
        {
            return Err(ControlError::Invalid(e));
        }
        let scene = self
            .scenes
            .prepare(scene)
            .map_err(|e| ControlError::Scene(e.to_string()))?;
        let shard = self.least_loaded_shard();
        let record = InstanceRecord::new(
            id.clone(),
            request.location_id.clone(),
            shard,
            max_users,
            request.labels.clone(),
        );
        let record = InstanceRecord {
            kind: request.kind.label(),
            snapshot_hz,
            empty_timeout_ms,
            allowed_users: request
                .private
                .then(|| request.allowed_user_ids.into_iter().collect()),
            room_code,
            scene: (request.kind == state::commands::InstanceKind::World).then(|| scene.clone()),
            ..record
        };
        self.registry.insert(record)?;
        let spec = InstanceSpec {
            id: id.clone(),
            kind: request.kind,
            location_id: request.location_id,
            scene,
            max_users,
            snapshot_hz,
            labels: request.labels,
            empty_timeout: empty_timeout_ms.map(Duration::from_millis),
        };
        if let Err(e) = self.send(shard, Command::CreateInstance(spec)) {
            self.registry.remove(&id);
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        self.pending_creates.insert(id.clone(), tx);
        Ok((id, shard, rx))
    }

    /// A room code no instance of the node uses.
    fn new_room_code(&self) -> Result<String, ControlError> {
        use rand::Rng;
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let code = format!("{:06}", rng.random_range(100_000..1_000_000u32));
            if !self.registry.room_code_taken(&code) {
                return Ok(code);
            }
        }
        Err(ControlError::RoomCodesExhausted)
    }

    /// Applies one event from a shard.
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::InstanceStarted {
                instance_id,
                entities,
                ..
            } => {
                if let Some(r) = self.registry.get_mut(&instance_id) {
                    if r.lifecycle == Lifecycle::Loading {
                        r.lifecycle = if self.draining {
                            Lifecycle::Draining
                        } else {
                            Lifecycle::Running
                        };
                    }
                    r.entities = entities;
                }
                if let Some(tx) = self.pending_creates.remove(&instance_id) {
                    let _ = tx.send(Ok(()));
                }
            }
            Event::InstanceEnded {
                instance_id,
                reason,
                ..
            } => {
                *self
                    .metrics
                    .instances_ended
                    .entry(reason.label())
                    .or_default() += 1;
                if let Some(tx) = self.pending_creates.remove(&instance_id) {
                    let message = match reason {
                        EndReason::LoadFailed(m) => m,
                        other => format!("instance ended while loading: {other:?}"),
                    };
                    let _ = tx.send(Err(message));
                }
                self.registry.remove(&instance_id);
                let registry = &self.registry;
                self.token_of_session
                    .retain(|s, _| registry.session(*s).is_some());
                self.session_tokens
                    .retain(|_, s| registry.session(*s).is_some());
            }
            Event::SessionJoined {
                session,
                instance_id,
                user_id,
                ..
            } => {
                self.registry.session_joined(session, unix_ms());
                self.attendance
                    .joined(&instance_id, &user_id, session, unix_ms());
            }
            Event::SessionLeft {
                session,
                reason,
                joined,
                ..
            } => {
                if joined {
                    self.attendance.left(session, reason, unix_ms());
                }
                self.session_ended(session, reason);
            }
            Event::Stats {
                shard,
                metrics,
                instances,
            } => {
                if let Some(slot) = self.shards.get_mut(shard) {
                    slot.busy_us_per_s = metrics.tick_sum_us.saturating_sub(slot.last_tick_sum_us);
                    slot.last_tick_sum_us = metrics.tick_sum_us;
                    slot.metrics = *metrics;
                }
                for s in instances {
                    if let Some(r) = self.registry.get_mut(&s.instance_id) {
                        r.entities = s.entities;
                        r.tick_p99_us = s.tick_p99_us;
                    }
                }
            }
            Event::Stalled { shard, behind_ms } => {
                tracing::warn!(shard, behind_ms, "shard reported a stall");
            }
        }
    }

    fn session_ended(&mut self, session: SessionId, reason: LeaveReason) {
        *self
            .metrics
            .sessions_left
            .entry(reason.label())
            .or_default() += 1;
        self.registry.close_session(session);
        if let Some(token) = self.token_of_session.remove(&session) {
            self.session_tokens.remove(&token);
        }
    }

    /// Remembers the resource token of a new session.
    pub fn name_session(&mut self, session: SessionId, token: String) {
        self.session_tokens.insert(token.clone(), session);
        self.token_of_session.insert(session, token);
    }

    /// A join that failed before reaching its shard, or that its shard refused.
    pub fn abandon_session(&mut self, session: SessionId) {
        self.registry.close_session(session);
        if let Some(token) = self.token_of_session.remove(&session) {
            self.session_tokens.remove(&token);
        }
    }

    /// Stops admitting, tells every shard to drain.
    /// Marks the node and its instances draining. Returns the shards'
    /// command queues, for [`deliver_drain`] to use after the lock is
    /// released, and how many instances there are.
    pub fn begin_drain(&mut self, grace: Duration) -> (Vec<Sender<Command>>, usize) {
        self.draining = true;
        self.drain_grace = Some(grace);
        self.registry.drain_all();
        let queues = self.shards.iter().map(|s| s.commands.clone()).collect();
        (queues, self.registry.len())
    }

    /// The shard hosting `instance_id`.
    fn shard_of(&self, instance_id: &str) -> Result<usize, ControlError> {
        Ok(self
            .registry
            .get(instance_id)
            .ok_or_else(|| RegistryError::Unknown(instance_id.to_string()))?
            .shard)
    }

    /// Ends an instance now.
    pub fn end(&mut self, instance_id: &str) -> Result<(), ControlError> {
        let shard = self.shard_of(instance_id)?;
        self.send(
            shard,
            Command::EndInstance {
                instance_id: instance_id.to_string(),
            },
        )
    }

    /// Kicks a user's sessions, optionally banning the user for `ban`.
    pub fn kick(
        &mut self,
        instance_id: &str,
        user_id: &str,
        ban: Option<Duration>,
        message: String,
        now: Instant,
    ) -> Result<u32, ControlError> {
        let shard = self.shard_of(instance_id)?;
        if let Some(ban) = ban {
            self.registry.ban(instance_id, user_id, now + ban, now)?;
        }
        let sessions = self.registry.sessions_of(instance_id, user_id);
        self.send(
            shard,
            Command::Kick {
                instance_id: instance_id.to_string(),
                user_id: user_id.to_string(),
                banned: ban.is_some(),
                message,
            },
        )?;
        Ok(sessions)
    }

    /// A moderator mutes or unmutes `user_id`'s audio and/or video in an
    /// instance; returns the user's sessions in it now.
    pub fn mute(
        &mut self,
        instance_id: &str,
        user_id: &str,
        audio: bool,
        video: bool,
        muted: bool,
    ) -> Result<u32, ControlError> {
        let shard = self.shard_of(instance_id)?;
        let sessions = self.registry.sessions_of(instance_id, user_id);
        self.send(
            shard,
            Command::Moderate {
                instance_id: instance_id.to_string(),
                user_id: user_id.to_string(),
                audio,
                video,
                muted,
            },
        )?;
        Ok(sessions)
    }
}

/// Reads and validates a scene. Call it outside the control lock (and off
/// the control thread for files): parsing a large scene takes a while.
pub fn load_scene(config: &Config, source: &SceneSource) -> Result<Scene, ControlError> {
    let limits = SceneLimits::default();
    match source {
        SceneSource::Builtin(name) => Scene::builtin(name)
            .ok_or_else(|| ControlError::Invalid(format!("no built-in scene `{name}`"))),
        SceneSource::Path(path) => Scene::load(path, &limits).map_err(|e| {
            ControlError::Scene(format!(
                "cannot load scene {}: {}",
                path.display(),
                chain(&e)
            ))
        }),
        SceneSource::Json(text) => Scene::from_json(text.as_bytes(), &limits)
            .map_err(|e| ControlError::Scene(e.to_string())),
        SceneSource::File(name) => {
            let valid = !name.is_empty()
                && name.len() <= ID_BYTES_MAX
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !name.starts_with('.');
            if !valid {
                return Err(ControlError::Invalid(format!(
                    "scene `{name}`: a file name inside node.scene_dir (letters, digits, '-', '_', '.')"
                )));
            }
            let path = config.node.scene_dir.join(name);
            Scene::load(&path, &limits).map_err(|e| ControlError::Scene(chain(&e)))
        }
    }
}

/// Sends `Drain` to every shard, waiting up to a second per shard for room
/// in its queue (a drain must not be lost to a momentarily full queue).
/// Blocks: call it without the control lock, off the tokio thread.
pub fn deliver_drain(queues: &[Sender<Command>], grace: Duration) {
    for (i, q) in queues.iter().enumerate() {
        if let Err(e) = q.send_timeout(Command::Drain { grace }, Duration::from_secs(1)) {
            tracing::error!(shard = i, "drain not delivered: {e}");
        }
    }
}

/// An error with its sources, `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Ids are printable ASCII without spaces or slashes, 1 to [`ID_BYTES_MAX`] bytes.
pub fn check_id(what: &str, id: &str) -> Result<(), ControlError> {
    let ok = !id.is_empty()
        && id.len() <= ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'?' && b != b'#');
    if ok {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "{what} must be 1 to {ID_BYTES_MAX} printable ASCII characters without '/', '?' or '#'"
        )))
    }
}

impl ShardSlot {
    pub fn new(
        commands: Sender<Command>,
        advertised: std::net::SocketAddr,
        heartbeat: Arc<std::sync::atomic::AtomicU64>,
    ) -> ShardSlot {
        ShardSlot {
            commands,
            advertised,
            metrics: ShardMetrics::default(),
            busy_us_per_s: 0,
            last_tick_sum_us: 0,
            heartbeat,
        }
    }

    /// Milliseconds since the shard's loop last came round, at `now_ms`.
    pub fn silent_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.heartbeat.load(std::sync::atomic::Ordering::Relaxed))
    }
}
