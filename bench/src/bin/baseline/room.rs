//! Rooms and their members: one tokio task per room owns the simulation and
//! its members; webrtc-rs drives each member's peer connection on its own
//! tasks and hands data channel events to the room over a queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use engine::{EntityId, Scene, Simulation, UserIndex};
use instanceserver::config::{Config, InstanceConfig};
use net::input::{InputLimits, Outcome, PeerInput};
use net::messages::{ActionBroadcast, Cache, PeerJoined, PeerLeft, Target, Welcome};
use net::quant::Quantizer;
use net::snapshot::{ClientSnapshots, SnapshotConfig, SnapshotEncoder, WorldFrame};
use net::{Channel, Decoder, Encoder, MessageKind};
use state::auth::{AuthConfig, Verifier};
use state::instance::STATE_BACKLOG_BYTES_MAX;
use tokio::sync::{mpsc, oneshot, watch};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
};

use crate::Args;

/// Commands queued to one room before senders wait.
pub const ROOM_QUEUE: usize = 4096;
/// Longest ICE gathering may take before the answer goes out.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a room looks for members that never opened their channels.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Counters read by `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub sessions: AtomicU64,
    pub joins_ok: AtomicU64,
    pub joins_refused: AtomicU64,
    pub inputs: AtomicU64,
    pub invalid: AtomicU64,
    pub snapshots: AtomicU64,
    pub snapshot_bytes: AtomicU64,
    pub actions: AtomicU64,
    pub send_errors: AtomicU64,
    pub ticks: AtomicU64,
    pub skipped_ticks: AtomicU64,
    pub snapshots_skipped: AtomicU64,
}

#[derive(Debug)]
pub enum JoinError {
    Full,
    TooManyRooms,
    Offer(String),
    Rtc(String),
}

/// Everything the HTTP handlers share.
pub struct Hub {
    pub args: Args,
    pub verifier: Verifier,
    pub metrics: Metrics,
    scene: Arc<Scene>,
    /// The node's own instance defaults, so both servers simulate and
    /// replicate alike.
    instance: InstanceConfig,
    rooms: Mutex<HashMap<String, RoomHandle>>,
    /// Leave tokens: the room and session they name.
    sessions: Mutex<HashMap<String, (String, u64)>>,
    next_session: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("args", &self.args)
            .finish_non_exhaustive()
    }
}

struct RoomHandle {
    tx: mpsc::Sender<Command>,
    /// Members admitted (counted here, under the rooms lock, so a room
    /// ends only when no join is on its way in).
    seats: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Hub {
    pub fn new(args: Args, scene: Arc<Scene>) -> Arc<Hub> {
        let verifier = Verifier::dev(&AuthConfig::default(), &args.secret);
        let mut instance = Config::default().instance;
        instance.tick_hz = args.tick_hz;
        Arc::new(Hub {
            args,
            verifier,
            metrics: Metrics::default(),
            scene,
            instance,
            rooms: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        })
    }

    pub fn rooms_open(&self) -> usize {
        lock(&self.rooms).len()
    }

    /// Takes a seat in `room_id`, creating the room if needed.
    fn reserve(self: &Arc<Self>, room_id: &str) -> Result<mpsc::Sender<Command>, JoinError> {
        let mut rooms = lock(&self.rooms);
        if let Some(r) = rooms.get_mut(room_id) {
            if r.seats >= self.args.members_max {
                return Err(JoinError::Full);
            }
            r.seats += 1;
            return Ok(r.tx.clone());
        }
        if rooms.len() >= self.args.rooms_max {
            return Err(JoinError::TooManyRooms);
        }
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        let room = Room::new(self.clone(), room_id.to_string(), rx)
            .map_err(|e| JoinError::Rtc(format!("cannot build the room: {e}")))?;
        tokio::spawn(room.run());
        rooms.insert(
            room_id.to_string(),
            RoomHandle {
                tx: tx.clone(),
                seats: 1,
            },
        );
        Ok(tx)
    }

    fn release_seat(&self, room_id: &str) {
        if let Some(r) = lock(&self.rooms).get_mut(room_id) {
            r.seats = r.seats.saturating_sub(1);
        }
    }

    /// Removes an empty room; false when a join took a seat meanwhile.
    fn try_end(&self, room_id: &str) -> bool {
        let mut rooms = lock(&self.rooms);
        if rooms.get(room_id).is_some_and(|r| r.seats == 0) {
            rooms.remove(room_id);
            true
        } else {
            false
        }
    }

    /// Answers `offer` and adds the member to the room; returns the leave
    /// token and the SDP answer.
    pub async fn join(
        self: &Arc<Self>,
        room_id: &str,
        user_id: String,
        name: String,
        offer: String,
    ) -> Result<(String, String), JoinError> {
        let offer =
            RTCSessionDescription::offer(offer).map_err(|e| JoinError::Offer(e.to_string()))?;
        let tx = self.reserve(room_id)?;
        let mut seat = Seat {
            hub: self.clone(),
            room: room_id.to_string(),
            armed: true,
        };
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (gathered_tx, mut gathered_rx) = watch::channel(false);
        let handler = Arc::new(PeerHandler {
            session,
            room: tx.clone(),
            gathered: gathered_tx,
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_handler(handler)
            .with_udp_addrs(vec![SocketAddr::new(self.args.udp_ip, 0)])
            .build()
            .await
            .map_err(|e| JoinError::Rtc(e.to_string()))?;
        let answered = async {
            pc.set_remote_description(offer)
                .await
                .map_err(|e| JoinError::Offer(e.to_string()))?;
            let answer = pc
                .create_answer(None)
                .await
                .map_err(|e| JoinError::Offer(e.to_string()))?;
            pc.set_local_description(answer)
                .await
                .map_err(|e| JoinError::Rtc(e.to_string()))?;
            tokio::time::timeout(GATHER_TIMEOUT, gathered_rx.wait_for(|g| *g))
                .await
                .map_err(|_| JoinError::Rtc(format!("ICE gathering took over {GATHER_TIMEOUT:?}")))?
                .map_err(|_| JoinError::Rtc("the peer connection ended".into()))?;
            pc.local_description()
                .await
                .map(|d| d.sdp)
                .ok_or_else(|| JoinError::Rtc("no local description".into()))
        }
        .await;
        let answer = match answered {
            Ok(a) => a,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };
        let token = random_hex(16);
        let (close_tx, close_rx) = oneshot::channel::<()>();
        // The connection lives until the room lets it go (or the room ends).
        tokio::spawn(async move {
            let _ = close_rx.await;
            let _ = pc.close().await;
        });
        lock(&self.sessions).insert(token.clone(), (room_id.to_string(), session));
        let command = Command::Join {
            session,
            token: token.clone(),
            user_id,
            name,
            close: close_tx,
        };
        if tx.send(command).await.is_err() {
            lock(&self.sessions).remove(&token);
            return Err(JoinError::Rtc("the room ended".into()));
        }
        // The room owns the seat now.
        seat.armed = false;
        Ok((token, answer))
    }

    /// Leaves by token; false when the token is unknown.
    pub async fn leave(&self, token: &str) -> bool {
        let Some((room_id, session)) = lock(&self.sessions).remove(token) else {
            return false;
        };
        let tx = lock(&self.rooms).get(&room_id).map(|r| r.tx.clone());
        if let Some(tx) = tx {
            let _ = tx.send(Command::Leave { session }).await;
        }
        true
    }
}

/// A seat taken for a join in progress; released unless the room took it.
struct Seat {
    hub: Arc<Hub>,
    room: String,
    armed: bool,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if self.armed {
            self.hub.release_seat(&self.room);
        }
    }
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// What the HTTP handlers and webrtc-rs tell a room.
pub enum Command {
    Join {
        session: u64,
        token: String,
        user_id: String,
        name: String,
        close: oneshot::Sender<()>,
    },
    Channel {
        session: u64,
        channel: Channel,
        dc: Arc<dyn DataChannel>,
    },
    Message {
        session: u64,
        channel: Channel,
        data: BytesMut,
    },
    /// The connection failed or closed, or a channel closed.
    Gone { session: u64 },
    /// `DELETE` on the session.
    Leave { session: u64 },
}

/// webrtc-rs callbacks of one member's peer connection.
struct PeerHandler {
    session: u64,
    room: mpsc::Sender<Command>,
    gathered: watch::Sender<bool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PeerHandler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        // `Disconnected` may recover; only the final states end a member.
        if matches!(
            state,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
        ) {
            let _ = self
                .room
                .send(Command::Gone {
                    session: self.session,
                })
                .await;
        }
    }

    /// Called when a channel the client opened is open.
    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let session = self.session;
        let room = self.room.clone();
        tokio::spawn(async move {
            let channel = match dc.label().await.as_deref() {
                Ok("state") => Channel::State,
                Ok("actions") => Channel::Actions,
                _ => return,
            };
            let announce = Command::Channel {
                session,
                channel,
                dc: dc.clone(),
            };
            if room.send(announce).await.is_err() {
                return;
            }
            while let Some(event) = dc.poll().await {
                let command = match event {
                    DataChannelEvent::OnMessage(m) => Command::Message {
                        session,
                        channel,
                        data: m.data,
                    },
                    DataChannelEvent::OnClose => Command::Gone { session },
                    _ => continue,
                };
                if room.send(command).await.is_err() {
                    return;
                }
            }
        });
    }
}

struct Member {
    session: u64,
    token: String,
    user_id: String,
    name: String,
    user: UserIndex,
    state: Option<Arc<dyn DataChannel>>,
    actions: Option<Arc<dyn DataChannel>>,
    avatar: Option<EntityId>,
    input: PeerInput,
    snapshots: Box<ClientSnapshots>,
    state_sequence: u32,
    actions_sequence: u32,
    joined_at: Instant,
    close: Option<oneshot::Sender<()>>,
}

impl Member {
    fn welcomed(&self) -> bool {
        self.avatar.is_some()
    }
}

struct Room {
    hub: Arc<Hub>,
    id: String,
    rx: mpsc::Receiver<Command>,
    sim: Simulation,
    frame: WorldFrame,
    snapshot_encoder: SnapshotEncoder,
    quantizer: Quantizer,
    members: Vec<Member>,
    next_user: u32,
    cached: Vec<ActionBroadcast>,
    encoder: Encoder,
    decoder: Decoder,
    snapshot_config: SnapshotConfig,
    input_limits: InputLimits,
    empty_since: Option<Instant>,
}

impl Room {
    fn new(
        hub: Arc<Hub>,
        id: String,
        rx: mpsc::Receiver<Command>,
    ) -> Result<Room, engine::SimError> {
        let c = &hub.instance;
        let sim = Simulation::new(&hub.scene, c.runtime().sim_config())?;
        let quantizer = Quantizer::new(sim.bounds());
        let snapshot_config = SnapshotConfig {
            interest_radius_m: c.interest_radius_m,
            view_entities_max: c.view_entities_max,
            ..SnapshotConfig::default()
        };
        let input_limits = InputLimits {
            owned_speed_max_mps: c.owned_speed_max_mps,
            ..InputLimits::default()
        };
        Ok(Room {
            frame: WorldFrame::with_capacity(sim.world().len()),
            snapshot_encoder: SnapshotEncoder::default(),
            sim,
            quantizer,
            members: Vec::new(),
            next_user: 0,
            cached: Vec::new(),
            encoder: Encoder::default(),
            decoder: Decoder::default(),
            snapshot_config,
            input_limits,
            empty_since: Some(Instant::now()),
            hub,
            id,
            rx,
        })
    }

    async fn run(mut self) {
        let period = Duration::from_secs_f64(1.0 / f64::from(self.hub.instance.tick_hz));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        let empty_timeout = Duration::from_millis(self.hub.args.room_empty_timeout_ms);
        loop {
            tokio::select! {
                command = self.rx.recv() => match command {
                    Some(c) => self.handle(c).await,
                    None => break,
                },
                due = ticker.tick() => {
                    // Skip drops the ticks a late room missed; count them.
                    let late = due.elapsed();
                    if late >= period {
                        let missed = (late.as_nanos() / period.as_nanos().max(1)) as u64;
                        self.hub.metrics.skipped_ticks.fetch_add(missed, Ordering::Relaxed);
                    }
                    self.tick().await
                }
                _ = sweep.tick() => {
                    self.sweep().await;
                    if self.empty_since.is_some_and(|t| t.elapsed() >= empty_timeout)
                        && self.hub.try_end(&self.id)
                    {
                        break;
                    }
                }
            }
        }
        for m in std::mem::take(&mut self.members) {
            self.forget(m);
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Join {
                session,
                token,
                user_id,
                name,
                close,
            } => {
                let user = UserIndex(self.next_user);
                self.next_user += 1;
                self.members.push(Member {
                    session,
                    token,
                    user_id,
                    name,
                    user,
                    state: None,
                    actions: None,
                    avatar: None,
                    input: PeerInput::new(user, self.input_limits),
                    snapshots: Box::new(ClientSnapshots::new(self.snapshot_config)),
                    state_sequence: 0,
                    actions_sequence: 0,
                    joined_at: Instant::now(),
                    close: Some(close),
                });
                self.empty_since = None;
            }
            Command::Channel {
                session,
                channel,
                dc,
            } => {
                let Some(m) = self.members.iter_mut().find(|m| m.session == session) else {
                    let _ = dc.close().await;
                    return;
                };
                match channel {
                    Channel::State => m.state = Some(dc),
                    Channel::Actions => m.actions = Some(dc),
                }
                if m.state.is_some() && m.actions.is_some() && !m.welcomed() {
                    self.admit(session).await;
                }
            }
            Command::Message {
                session,
                channel,
                data,
            } => self.message(session, channel, &data).await,
            Command::Gone { session } | Command::Leave { session } => self.remove(session).await,
        }
    }

    /// Both channels are open: spawn the avatar, welcome, introduce.
    async fn admit(&mut self, session: u64) {
        let Some(i) = self.members.iter().position(|m| m.session == session) else {
            return;
        };
        let avatar = match self.sim.spawn_avatar(self.members[i].user) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(room = %self.id, "cannot spawn an avatar: {e}");
                return self.remove(session).await;
            }
        };
        let bounds = *self.sim.bounds();
        let tick = self.sim.world().tick().0;
        let welcome = Welcome {
            user_id: self.members[i].user_id.clone(),
            user_index: self.members[i].user.0,
            avatar: self.sim.world().network_id(avatar).map_or(0, |n| n.0),
            tick_hz: self.hub.instance.tick_hz as u16,
            snapshot_hz: self.hub.instance.tick_hz as u16,
            bounds_min: [bounds.min.x, bounds.min.y, bounds.min.z],
            bounds_max: [bounds.max.x, bounds.max.y, bounds.max.z],
            position_bits: self.quantizer.position_bits(),
            cached_actions: self.cached.clone(),
            owners: Vec::new(),
        };
        self.members[i].avatar = Some(avatar);
        self.hub.metrics.sessions.fetch_add(1, Ordering::Relaxed);
        self.send(i, Channel::Actions, MessageKind::Welcome, tick, &welcome)
            .await;
        let newcomer = PeerJoined {
            user_index: self.members[i].user.0,
            user_id: self.members[i].user_id.clone(),
            name: self.members[i].name.clone(),
            avatar: self.avatar_id(i),
        };
        for j in 0..self.members.len() {
            if j == i || !self.members[j].welcomed() {
                continue;
            }
            self.send(
                j,
                Channel::Actions,
                MessageKind::PeerJoined,
                tick,
                &newcomer,
            )
            .await;
            let theirs = PeerJoined {
                user_index: self.members[j].user.0,
                user_id: self.members[j].user_id.clone(),
                name: self.members[j].name.clone(),
                avatar: self.avatar_id(j),
            };
            self.send(i, Channel::Actions, MessageKind::PeerJoined, tick, &theirs)
                .await;
        }
    }

    async fn message(&mut self, session: u64, channel: Channel, data: &[u8]) {
        let Some(i) = self.members.iter().position(|m| m.session == session) else {
            return;
        };
        if !self.members[i].welcomed() {
            return;
        }
        let m = &mut self.members[i];
        let outcome = match self.decoder.decode_client(data, channel) {
            Ok(msg) => m.input.handle(&mut self.sim, &mut m.snapshots, &msg),
            Err(_) => {
                self.hub.metrics.invalid.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let tick = self.sim.world().tick().0;
        match outcome {
            Outcome::Input { .. } => {
                self.hub.metrics.inputs.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Pong(pong) => {
                self.send(i, Channel::State, MessageKind::Pong, tick, &pong)
                    .await;
            }
            Outcome::Broadcast(action) => {
                if action.cache != Cache::No && action.target == Target::Everyone {
                    self.cached.push(action.clone());
                    let max = self.hub.instance.cached_actions_max;
                    if self.cached.len() > max {
                        let extra = self.cached.len() - max;
                        self.cached.drain(..extra);
                    }
                }
                for j in 0..self.members.len() {
                    let wanted = match action.target {
                        Target::Everyone => j != i,
                        Target::User(u) => self.members[j].user.0 == u,
                        Target::Server => false,
                    };
                    if wanted && self.members[j].welcomed() {
                        self.send(
                            j,
                            Channel::Actions,
                            MessageKind::ActionBroadcast,
                            tick,
                            &action,
                        )
                        .await;
                        self.hub.metrics.actions.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Outcome::Ownership { network_id, op } => {
                let user = self.members[i].user;
                let members: Vec<u32> = self.members.iter().map(|m| m.user.0).collect();
                let owned_max = self.hub.instance.owned_entities_max;
                let Ok(Some(changed)) = net::input::change_ownership(
                    &mut self.sim,
                    user,
                    network_id,
                    op,
                    owned_max,
                    |u| members.contains(&u),
                ) else {
                    return;
                };
                for j in 0..self.members.len() {
                    if self.members[j].welcomed() {
                        self.send(
                            j,
                            Channel::Actions,
                            MessageKind::OwnershipChanged,
                            tick,
                            &changed,
                        )
                        .await;
                    }
                }
            }
            _ => {}
        }
    }

    /// The network id of member `i`'s avatar (0 before it has one).
    fn avatar_id(&self, i: usize) -> u32 {
        self.members[i]
            .avatar
            .and_then(|a| self.sim.world().network_id(a).ok())
            .map_or(0, |n| n.0)
    }

    /// Encodes `msg` and sends it to member `i` on `channel`.
    async fn send<T>(&mut self, i: usize, channel: Channel, kind: MessageKind, tick: u32, msg: &T)
    where
        T: for<'a, 'b> rkyv::Serialize<net::codec::FrameSerializer<'a, 'b>>,
    {
        let m = &mut self.members[i];
        let (dc, sequence) = match channel {
            Channel::State => (&m.state, &mut m.state_sequence),
            Channel::Actions => (&m.actions, &mut m.actions_sequence),
        };
        let Some(dc) = dc.clone() else {
            return;
        };
        *sequence = sequence.wrapping_add(1);
        let bytes = match self.encoder.encode(kind, *sequence, tick, msg) {
            Ok(b) => BytesMut::from(b),
            Err(e) => {
                tracing::warn!(room = %self.id, "cannot encode {kind:?}: {e}");
                return;
            }
        };
        if dc.send(bytes).await.is_err() {
            self.hub.metrics.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One simulation step, then every welcomed member's snapshot.
    async fn tick(&mut self) {
        self.sim.step();
        self.hub.metrics.ticks.fetch_add(1, Ordering::Relaxed);
        self.frame.capture(self.sim.world(), &self.quantizer);
        for m in &mut self.members {
            let (Some(avatar), Some(dc)) = (m.avatar, m.state.clone()) else {
                continue;
            };
            // Like ours: a snapshot queued behind older ones arrives too late
            // to be a baseline, so skip it while the channel is backed up.
            if dc.outstanding_bytes().await.unwrap_or(0) > STATE_BACKLOG_BYTES_MAX {
                self.hub
                    .metrics
                    .snapshots_skipped
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let viewer = self
                .sim
                .world()
                .transform(avatar)
                .map(|t| t.position)
                .unwrap_or_default();
            m.state_sequence = m.state_sequence.wrapping_add(1);
            let bytes = match m.snapshots.encode(
                &mut self.snapshot_encoder,
                &self.frame,
                viewer,
                m.state_sequence,
            ) {
                Ok(b) => BytesMut::from(b),
                Err(e) => {
                    tracing::warn!(room = %self.id, "snapshot encode failed: {e}");
                    continue;
                }
            };
            let len = bytes.len() as u64;
            if dc.send(bytes).await.is_ok() {
                self.hub.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
                self.hub
                    .metrics
                    .snapshot_bytes
                    .fetch_add(len, Ordering::Relaxed);
            } else {
                self.hub.metrics.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Drops members whose channels did not both open in time.
    async fn sweep(&mut self) {
        let limit = Duration::from_millis(self.hub.args.join_timeout_ms);
        let late: Vec<u64> = self
            .members
            .iter()
            .filter(|m| !m.welcomed() && m.joined_at.elapsed() >= limit)
            .map(|m| m.session)
            .collect();
        for session in late {
            self.remove(session).await;
        }
    }

    async fn remove(&mut self, session: u64) {
        let Some(i) = self.members.iter().position(|m| m.session == session) else {
            return;
        };
        let m = self.members.swap_remove(i);
        let left = PeerLeft {
            user_index: m.user.0,
        };
        let was_welcomed = m.welcomed();
        if let Some(avatar) = m.avatar {
            let _ = self.sim.despawn(avatar);
        }
        // What it held falls again (the ownership change is not relayed:
        // the baseline serves bots that never take anything).
        let _ = m.input.release_all(&mut self.sim);
        self.forget(m);
        if was_welcomed {
            let tick = self.sim.world().tick().0;
            for j in 0..self.members.len() {
                if self.members[j].welcomed() {
                    self.send(j, Channel::Actions, MessageKind::PeerLeft, tick, &left)
                        .await;
                }
            }
        }
        if self.members.is_empty() {
            self.empty_since = Some(Instant::now());
        }
    }

    /// Lets a member's connection go and gives its seat and token back.
    fn forget(&mut self, mut m: Member) {
        if m.welcomed() {
            self.hub.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(close) = m.close.take() {
            let _ = close.send(());
        }
        lock(&self.hub.sessions).remove(&m.token);
        self.hub.release_seat(&self.id);
    }
}
