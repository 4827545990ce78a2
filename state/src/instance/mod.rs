//! The instance runtime: one location's simulation, the snapshot frame its
//! members share, the actions cached for late joiners, and its members,
//! as a state machine over them (no str0m, no socket, no clock). What it
//! says goes through an [`Outbox`] to a member's connection; members it
//! wants gone are listed in [`Io::removals`] for the router to disconnect
//! and then [`Instance::leave`].
//!
//! ```text
//! inst.join(session, user_id, name, link, now)?;   // the SDP answer went out
//! inst.open(user, &mut io);                        // both channels are open
//! inst.handle_message(user, channel, &bytes, &mut io);
//! inst.tick(&mut io);                              // due ticks, then snapshots
//! inst.leave(user, &mut io);                       // disconnected
//! ```

mod ending;
mod media;
mod member;
mod messages;
mod tick;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use engine::{SimConfig, SimError, Simulation, TickTimes, UserIndex, WorldConfig};
use net::conn::{ConnKey, SendError};
use net::input::InputLimits;
use net::messages::{
    ActionBroadcast, Cache, EntityOwner, Kick, KickReason, PeerLeft, Target, WELCOME_OWNERS_MAX,
    Welcome,
};
use net::quant::Quantizer;
use net::snapshot::{ClientSnapshots, SnapshotConfig, SnapshotEncoder, WorldFrame};
use net::{Channel, Decoder, Encoder, MessageKind};

use crate::commands::{
    InstanceKind, InstanceSpec, JoinRefused, LeaveReason, SessionId, ShardMetrics, Topics,
};
pub use media::{KEYFRAME_REQUEST_INTERVAL, MediaLimits, Track, Tracks};
pub use member::{Joined, Member, MemberState, STATE_BACKLOG_BYTES_MAX, SendFailed, TokenBucket};

/// Member slots allocated when an instance starts; more grow on demand.
pub const MEMBERS_PREALLOCATED_MAX: usize = 64;
/// Tick durations kept for the per-second p50/p99, in seconds of ticks.
const TICK_TIMES_SECONDS: usize = 4;

/// A clock read for metrics only (tick durations); no decision depends on it.
pub type Clock = fn() -> Instant;

/// Most ticks between two snapshots: baselines are kept for
/// `SnapshotConfig::history_len` (32) ticks, so at 6 apart a client still
/// acknowledges within about 5 snapshots.
pub const SNAPSHOT_INTERVAL_TICKS_MAX: u32 = 6;

/// Snapshot rates an instance may run besides its tick rate itself.
pub const SNAPSHOT_HZ_ALLOWED: [u32; 5] = [60, 30, 20, 15, 10];

/// Why `snapshot_hz` cannot go with `tick_hz`, if it cannot: it must be
/// the tick rate or one of [`SNAPSHOT_HZ_ALLOWED`], and divide the tick
/// rate (snapshots go out every `tick_hz / snapshot_hz` ticks) at most
/// [`SNAPSHOT_INTERVAL_TICKS_MAX`] ticks apart.
pub fn snapshot_hz_error(snapshot_hz: u32, tick_hz: u32) -> Option<String> {
    if snapshot_hz != tick_hz && !SNAPSHOT_HZ_ALLOWED.contains(&snapshot_hz) {
        return Some(format!(
            "snapshot_hz {snapshot_hz} is not the tick rate ({tick_hz}) nor one of {SNAPSHOT_HZ_ALLOWED:?}"
        ));
    }
    if snapshot_hz == 0 || snapshot_hz > tick_hz || !tick_hz.is_multiple_of(snapshot_hz) {
        return Some(format!(
            "snapshot_hz {snapshot_hz} does not divide the tick rate ({tick_hz})"
        ));
    }
    if tick_hz / snapshot_hz > SNAPSHOT_INTERVAL_TICKS_MAX {
        return Some(format!(
            "snapshot_hz {snapshot_hz} is more than {SNAPSHOT_INTERVAL_TICKS_MAX} ticks apart at {tick_hz} Hz \
             (snapshot baselines are kept for 32 ticks)"
        ));
    }
    None
}

/// The snapshot rate of an instance whose create request names none: 30
/// when that divides the tick rate (and is close enough), else every tick.
pub fn default_snapshot_hz(tick_hz: u32) -> u32 {
    if tick_hz.is_multiple_of(30) && tick_hz / 30 <= SNAPSHOT_INTERVAL_TICKS_MAX {
        30
    } else {
        tick_hz
    }
}

/// What an instance needs to know besides its spec.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    pub tick_hz: u32,
    pub entities_max: u32,
    pub avatar_speed_max_mps: f32,
    /// Cached actions kept for late joiners; the oldest are dropped.
    pub cached_actions_max: usize,
    /// Bytes of cached actions (topic, type and payload) kept for late
    /// joiners; the oldest are dropped.
    pub cached_action_bytes_max: usize,
    /// Invalid messages a member may send before it is disconnected.
    pub invalid_messages_max: u32,
    /// Actions and ownership requests one member may send per second; more
    /// are dropped and counted.
    pub actions_per_second_max: u32,
    /// Entities one user may own at once, its avatar aside.
    pub owned_entities_max: u32,
    pub media: MediaLimits,
    /// A joined member no message is heard from for this long is removed
    /// (`None`: never; the transport's idle timeout still applies).
    pub silence_timeout: Option<Duration>,
    /// Bytes queued on a member's reliable channel before it counts as
    /// congested and is disconnected.
    pub reliable_buffer_bytes_max: usize,
    pub snapshot: SnapshotConfig,
    pub input: InputLimits,
}

impl RuntimeConfig {
    /// The simulation's share of the configuration.
    pub fn sim_config(&self) -> SimConfig {
        SimConfig {
            tick_hz: self.tick_hz,
            world: WorldConfig {
                entities_max: self.entities_max,
                ..WorldConfig::default()
            },
            avatar: engine::AvatarConfig {
                speed_max_mps: self.avatar_speed_max_mps,
                ..SimConfig::default().avatar
            },
            ..SimConfig::default()
        }
    }
}

/// Where the instance's frames go: the router writes them to a member's
/// connection; tests record them.
pub trait Outbox {
    fn write(&mut self, to: ConnKey, channel: Channel, frame: &[u8]) -> Result<usize, SendError>;
    /// Bytes waiting on a channel of `to`.
    fn buffered(&mut self, to: ConnKey, channel: Channel) -> usize;
    /// Offers instance track `track` to `to` (see `Connections::send_track`).
    fn send_track(&mut self, _to: ConnKey, _track: u32, _kind: net::messages::TrackKind) {}
    /// Stops sending `track` to `to`.
    fn stop_track(&mut self, _to: ConnKey, _track: u32) {}
    /// A member's offer; returns the answer.
    fn accept_media_offer(&mut self, _to: ConnKey, _offer: &str) -> Result<String, String> {
        media::no_media()
    }
    /// A member's answer to the layer's offer.
    fn accept_media_answer(&mut self, _to: ConnKey, _answer: &str) -> Result<(), String> {
        media::no_media()
    }
    /// Asks `to` for a keyframe of the track it publishes on `mid`, of
    /// simulcast layer `rid`.
    fn request_keyframe(
        &mut self,
        _to: ConnKey,
        _mid: net::conn::Mid,
        _rid: Option<net::conn::Rid>,
    ) -> bool {
        false
    }
    /// Forwarding `track` to `to` resumes after a pause.
    fn restart_rtp(&mut self, _to: ConnKey, _track: u32) {}
    /// Asks `to` to send at most `bps` on the track it publishes on `mid`
    /// (layer `rid`): a REMB.
    fn request_bitrate(
        &mut self,
        _to: ConnKey,
        _mid: net::conn::Mid,
        _rid: Option<net::conn::Rid>,
        _bps: u32,
    ) {
    }
    /// Forwards one packet of `track` to `to`.
    fn write_rtp(
        &mut self,
        _to: ConnKey,
        _track: u32,
        _rtp: &net::conn::RtpIn,
    ) -> Result<(), net::conn::RtpDrop> {
        media::no_rtp()
    }
}

/// A member the instance wants disconnected (it was told why, if joined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    pub user: UserIndex,
    pub link: ConnKey,
    pub reason: LeaveReason,
}

/// What a call on an instance may use: shared by a shard's instances.
#[derive(Debug)]
pub struct Io<'a> {
    pub out: &'a mut dyn Outbox,
    pub encoder: &'a mut Encoder,
    /// Scratch of snapshot encoding, shared by the shard's clients.
    pub snapshots: &'a mut SnapshotEncoder,
    /// Members get a snapshot every this many ticks (1: every tick; more
    /// while the shard sheds load), staggered by user index.
    pub snapshot_divisor: u32,
    pub decoder: &'a mut Decoder,
    pub metrics: &'a mut ShardMetrics,
    pub removals: &'a mut Vec<Removal>,
    pub now: Instant,
    pub clock: Clock,
}

/// The connection layer is the outbox of the node's instances.
impl Outbox for net::conn::Connections {
    fn write(&mut self, to: ConnKey, channel: Channel, frame: &[u8]) -> Result<usize, SendError> {
        self.send(to, channel, frame)
    }

    fn buffered(&mut self, to: ConnKey, channel: Channel) -> usize {
        net::conn::Connections::buffered(self, to, channel)
    }

    fn send_track(&mut self, to: ConnKey, track: u32, kind: net::messages::TrackKind) {
        net::conn::Connections::send_track(self, to, track, kind);
    }

    fn stop_track(&mut self, to: ConnKey, track: u32) {
        net::conn::Connections::stop_track(self, to, track);
    }

    fn accept_media_offer(&mut self, to: ConnKey, offer: &str) -> Result<String, String> {
        net::conn::Connections::accept_media_offer(self, to, offer)
    }

    fn accept_media_answer(&mut self, to: ConnKey, answer: &str) -> Result<(), String> {
        net::conn::Connections::accept_media_answer(self, to, answer)
    }

    fn write_rtp(
        &mut self,
        to: ConnKey,
        track: u32,
        rtp: &net::conn::RtpIn,
    ) -> Result<(), net::conn::RtpDrop> {
        net::conn::Connections::write_rtp(self, to, track, rtp)
    }

    fn request_keyframe(
        &mut self,
        to: ConnKey,
        mid: net::conn::Mid,
        rid: Option<net::conn::Rid>,
    ) -> bool {
        net::conn::Connections::request_keyframe(self, to, mid, rid)
    }

    fn restart_rtp(&mut self, to: ConnKey, track: u32) {
        net::conn::Connections::restart_rtp(self, to, track);
    }

    fn request_bitrate(
        &mut self,
        to: ConnKey,
        mid: net::conn::Mid,
        rid: Option<net::conn::Rid>,
        bps: u32,
    ) {
        net::conn::Connections::request_bitrate(self, to, mid, rid, bps);
    }
}

impl std::fmt::Debug for dyn Outbox + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbox")
    }
}

/// What a tick did, for the shard's stall detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TickReport {
    pub steps: u32,
    /// Ran later than one tick period behind its schedule.
    pub late: bool,
}

/// Who left, as the control thread is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    pub session: SessionId,
    pub user_id: String,
    pub joined: bool,
}

#[derive(Debug)]
pub struct Instance {
    id: String,
    kind: InstanceKind,
    max_users: u32,
    config: RuntimeConfig,
    sim: Simulation,
    frame: WorldFrame,
    quantizer: Quantizer,
    /// Every member, joined or still connecting, in the order of their user
    /// index (which only grows): looked up by binary search.
    members: Vec<Member>,
    cached_actions: VecDeque<ActionBroadcast>,
    /// Tracks its members publish.
    tracks: Tracks,
    /// Bytes of topic, type and payload in `cached_actions`.
    cached_bytes: usize,
    /// User indices are never reused within an instance, so ownership
    /// recorded for a user who left can never pass to a newcomer.
    next_user_index: u32,
    empty_since: Option<Instant>,
    /// `None`: the instance runs until ended, even when empty.
    empty_timeout: Option<Duration>,
    drain_until: Option<Instant>,
    /// When members are next checked for silence.
    next_silence_check: Instant,
    /// Nobody in it and its world at rest: its clock is stopped and it is
    /// not ticked until someone joins.
    asleep: bool,
    /// Calls of [`Instance::tick`] that sent snapshots: the clock of
    /// overload pacing (ticks may advance several at a time when the shard
    /// is late).
    snapshot_rounds: u32,
    /// Snapshots per second; one every `tick_hz / snapshot_hz` ticks.
    snapshot_hz: u32,
    tick_times: TickTimes,
    last_tick_p50_us: u32,
    last_tick_p99_us: u32,
    #[cfg(feature = "fault-injection")]
    fault: Option<Fault>,
}

/// Where [`Instance::inject_fault`] makes an instance panic.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Tick,
    Message,
}

impl Instance {
    /// Makes the next tick or message handling panic, as a bug would.
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault(&mut self, fault: Fault) {
        self.fault = Some(fault);
    }

    pub fn new(
        spec: InstanceSpec,
        config: RuntimeConfig,
        now: Instant,
    ) -> Result<Instance, SimError> {
        if let Some(e) = snapshot_hz_error(spec.snapshot_hz, config.tick_hz) {
            return Err(SimError::Config(e));
        }
        let mut sim = Simulation::from_prepared(spec.scene, config.sim_config())?;
        let quantizer = Quantizer::new(sim.bounds());
        let media = spec.kind == InstanceKind::Media;
        if media {
            // Nothing to simulate, ever: no physics world, no clock.
            sim.pause();
        }
        Ok(Instance {
            id: spec.id,
            kind: spec.kind,
            max_users: spec.max_users,
            frame: WorldFrame::with_capacity(sim.world().len()),
            sim,
            quantizer,
            members: Vec::with_capacity((spec.max_users as usize).min(MEMBERS_PREALLOCATED_MAX)),
            cached_actions: VecDeque::new(),
            tracks: Tracks::default(),
            cached_bytes: 0,
            next_user_index: 0,
            empty_since: Some(now),
            empty_timeout: spec.empty_timeout,
            drain_until: None,
            next_silence_check: now,
            asleep: media,
            snapshot_rounds: 0,
            snapshot_hz: spec.snapshot_hz,
            tick_times: TickTimes::new(TICK_TIMES_SECONDS * config.tick_hz as usize),
            last_tick_p50_us: 0,
            last_tick_p99_us: 0,
            #[cfg(feature = "fault-injection")]
            fault: None,
            config,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn kind(&self) -> InstanceKind {
        self.kind
    }

    pub fn sim(&self) -> &Simulation {
        &self.sim
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, user: UserIndex) -> Option<&Member> {
        let i = self.members.binary_search_by_key(&user, |m| m.user).ok()?;
        self.members.get(i)
    }

    fn tick_now(&self) -> u32 {
        self.sim.world().tick().0
    }

    pub fn is_draining(&self) -> bool {
        self.drain_until.is_some()
    }

    /// Whether the instance is asleep: empty, its world at rest, not ticking.
    pub fn is_asleep(&self) -> bool {
        self.asleep
    }

    /// Restarts the clock of a sleeping instance, with a tick due at `now`
    /// (a media instance never ticks).
    fn wake(&mut self, now: Instant) {
        if self.asleep && self.kind == InstanceKind::World {
            self.asleep = false;
            self.sim.resume(now);
        }
    }

    /// Whether a new member would be admitted now.
    pub fn can_join(&self) -> Result<(), JoinRefused> {
        if self.drain_until.is_some() {
            return Err(JoinRefused::Draining);
        }
        if self.members.len() >= self.max_users as usize {
            return Err(JoinRefused::InstanceFull(self.id.clone()));
        }
        Ok(())
    }

    /// The same user joins again: its older sessions are told
    /// `Kick { reason: Replaced }` and listed in [`Io::removals`] (the
    /// router disconnects them before the newer one takes a seat). Returns
    /// how many were replaced.
    pub fn replace_user(&mut self, user_id: &str, io: &mut Io<'_>) -> usize {
        let kick = Kick {
            reason: KickReason::Replaced,
            message: "the same user joined again from another session".into(),
        };
        let older: Vec<UserIndex> = self.older_sessions(user_id).map(|m| m.user).collect();
        for &user in &older {
            self.kick(user, &kick, LeaveReason::Replaced, io);
        }
        older.len()
    }

    /// The sessions of `user_id` a new join of it replaces: its members not
    /// already on their way out.
    pub fn older_sessions<'a>(&'a self, user_id: &'a str) -> impl Iterator<Item = &'a Member> {
        self.members
            .iter()
            .filter(move |m| m.user_id == user_id && m.leaving.is_none())
    }

    /// Whether `user_id` would be admitted now, its own older sessions
    /// (which a join of it replaces) not counted against `max_users`.
    pub fn can_join_as(&self, user_id: &str) -> Result<(), JoinRefused> {
        if self.drain_until.is_some() {
            return Err(JoinRefused::Draining);
        }
        let replaced = self.older_sessions(user_id).count();
        if self.members.len() - replaced >= self.max_users as usize {
            return Err(JoinRefused::InstanceFull(self.id.clone()));
        }
        Ok(())
    }

    /// Takes a seat for a session whose connection `link` is coming up.
    pub fn join(
        &mut self,
        session: SessionId,
        user_id: String,
        name: String,
        topics: Topics,
        link: ConnKey,
        now: Instant,
    ) -> Result<UserIndex, JoinRefused> {
        self.can_join()?;
        let user = UserIndex(self.next_user_index);
        self.next_user_index += 1;
        self.members
            .push(Member::new(link, session, user, user_id, name, topics, now));
        self.empty_since = None;
        self.wake(now);
        Ok(user)
    }

    /// The member's channels are open: spawn its avatar, welcome it, tell
    /// the others. Returns false when it cannot join (it is in
    /// [`Io::removals`] then).
    pub fn open(&mut self, user: UserIndex, io: &mut Io<'_>) -> bool {
        let tick = self.tick_now();
        let Some(i) = self.members.binary_search_by_key(&user, |m| m.user).ok() else {
            debug_assert!(false, "open: {user:?} is not a member");
            return false;
        };
        debug_assert!(
            !self.members[i].is_joined(),
            "open: {user:?} already joined"
        );
        // A media instance has no world to stand in.
        let avatar = match self.kind {
            InstanceKind::Media => None,
            InstanceKind::World => match self.sim.spawn_avatar(user) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(instance = %self.id, "cannot spawn an avatar: {e}");
                    self.remove_later(i, LeaveReason::ConnectFailed, io);
                    return false;
                }
            },
        };
        let bounds = *self.sim.bounds();
        let world = self.sim.world();
        let avatar_id = avatar
            .and_then(|a| world.network_id(a).ok())
            .map_or(0, |n| n.0);
        let mut owners: Vec<EntityOwner> = world
            .optional
            .owners
            .iter()
            .filter(|(id, _)| !world.optional.avatars.contains(*id))
            .filter_map(|(id, o)| {
                Some(EntityOwner {
                    network_id: world.network_id(id).ok()?.0,
                    owner: o.user.0,
                })
            })
            .collect();
        // More than a Welcome lists follow it as ownership changes.
        let more_owners = owners.split_off(owners.len().min(WELCOME_OWNERS_MAX));
        let member = &mut self.members[i];
        let topics = &member.topics;
        let mut welcome = Welcome {
            user_id: member.user_id.clone(),
            user_index: user.0,
            avatar: avatar_id,
            tick_hz: self.config.tick_hz as u16,
            snapshot_hz: self.snapshot_hz as u16,
            bounds_min: [bounds.min.x, bounds.min.y, bounds.min.z],
            bounds_max: [bounds.max.x, bounds.max.y, bounds.max.z],
            position_bits: self.quantizer.position_bits(),
            cached_actions: self
                .cached_actions
                .iter()
                .filter(|a| topics.wants(&a.topic))
                .cloned()
                .collect(),
            owners,
        };
        member.last_heard = io.now;
        member.state = MemberState::Joined(Box::new(Joined {
            avatar,
            snapshots: ClientSnapshots::new(self.config.snapshot),
            input: net::input::PeerInput::new(user, self.config.input),
            actions: TokenBucket::full(self.config.actions_per_second_max, io.now),
        }));
        member.send_welcome(io, tick, &mut welcome);
        send_scene_names(member, &self.sim, io, tick);
        for o in more_owners {
            let changed = net::messages::OwnershipChanged {
                network_id: o.network_id,
                owner: Some(o.owner),
            };
            let _ = member.send(
                io,
                Channel::Actions,
                MessageKind::OwnershipChanged,
                tick,
                &changed,
            );
        }
        // Introduce the newcomer and the members already joined to each other.
        let newcomer = self.members[i].announcement(avatar_id);
        for j in 0..self.members.len() {
            if j == i || !self.members[j].is_listening() {
                continue;
            }
            let their_avatar = self.members[j]
                .avatar()
                .and_then(|a| self.sim.world().network_id(a).ok())
                .map_or(0, |n| n.0);
            let theirs = self.members[j].announcement(their_avatar);
            let _ = self.members[j].send(
                io,
                Channel::Actions,
                MessageKind::PeerJoined,
                tick,
                &newcomer,
            );
            let _ =
                self.members[i].send(io, Channel::Actions, MessageKind::PeerJoined, tick, &theirs);
        }
        self.introduce_tracks(i, io);
        self.announce_tracks_of(user, io);
        true
    }

    /// Removes a member (its connection is gone or going): despawns its
    /// avatar, releases what it owned, tells the others. `None` when it is
    /// not a member (already left).
    pub fn leave(&mut self, user: UserIndex, io: &mut Io<'_>) -> Option<Departure> {
        let i = self.members.binary_search_by_key(&user, |m| m.user).ok()?;
        let member = self.members.remove(i);
        if self.members.is_empty() {
            self.empty_since = Some(io.now);
        }
        // A member still connecting may have published (in its join offer).
        self.unpublish_all(user, io);
        let departure = Departure {
            session: member.session,
            user_id: member.user_id,
            joined: matches!(member.state, MemberState::Joined(_)),
        };
        let MemberState::Joined(joined) = member.state else {
            return Some(departure);
        };
        if let Some(avatar) = joined.avatar {
            let _ = self.sim.despawn(avatar);
        }
        self.forget_cached_state(user);
        let tick = self.tick_now();
        let released = joined.input.release_all(&mut self.sim);
        self.tell_everyone(
            io,
            MessageKind::PeerLeft,
            tick,
            &PeerLeft { user_index: user.0 },
        );
        for changed in released {
            self.tell_everyone(io, MessageKind::OwnershipChanged, tick, &changed);
        }
        Some(departure)
    }

    /// Asks the router to remove member `i`, once.
    fn remove_later(&mut self, i: usize, reason: LeaveReason, io: &mut Io<'_>) {
        let member = &mut self.members[i];
        if member.leaving.is_none() {
            member.leaving = Some(reason);
            io.removals.push(Removal {
                user: member.user,
                link: member.link,
                reason,
            });
        }
    }

    /// Sends `msg` on `actions` to every listening member.
    fn tell_everyone<T>(&mut self, io: &mut Io<'_>, kind: MessageKind, tick: u32, msg: &T)
    where
        T: for<'a, 'b> rkyv::Serialize<net::codec::FrameSerializer<'a, 'b>>,
    {
        self.broadcast(io, None, Target::Everyone, None, kind, tick, msg);
    }

    /// Sends `msg` on `actions` to one listening member, if it is one.
    fn tell<T>(&mut self, io: &mut Io<'_>, user: UserIndex, kind: MessageKind, tick: u32, msg: &T)
    where
        T: for<'a, 'b> rkyv::Serialize<net::codec::FrameSerializer<'a, 'b>>,
    {
        self.broadcast(io, None, Target::User(user.0), None, kind, tick, msg);
    }

    /// Sends `msg` on `actions` to the listening members `target` names
    /// (subscribed to `topic`, when it is an action), but `except`; a
    /// member whose reliable channel backs up beyond its limit is removed
    /// as congested. Returns how many it was sent to.
    #[allow(clippy::too_many_arguments)]
    fn broadcast<T>(
        &mut self,
        io: &mut Io<'_>,
        except: Option<UserIndex>,
        target: Target,
        topic: Option<&str>,
        kind: MessageKind,
        tick: u32,
        msg: &T,
    ) -> usize
    where
        T: for<'a, 'b> rkyv::Serialize<net::codec::FrameSerializer<'a, 'b>>,
    {
        let mut sent = 0;
        for i in 0..self.members.len() {
            let member = &mut self.members[i];
            let wanted = match target {
                Target::Everyone => true,
                Target::User(u) => member.user.0 == u,
                Target::Server => false,
            };
            if Some(member.user) == except
                || !wanted
                || !member.is_listening()
                || topic.is_some_and(|t| !member.topics.wants(t))
            {
                continue;
            }
            sent += 1;
            if let Err(e) = member.send(io, Channel::Actions, kind, tick, msg) {
                tracing::debug!(session = member.session, "broadcast dropped: {e}");
            }
            if io.out.buffered(member.link, Channel::Actions)
                > self.config.reliable_buffer_bytes_max
            {
                self.remove_later(i, LeaveReason::Congested, io);
            }
        }
        sent
    }

    /// Keeps a cached action for late joiners: a [`Cache::ReplaceOwn`]
    /// one in place of its sender's earlier one of the same type; the
    /// oldest are dropped beyond the count and byte limits.
    fn cache(&mut self, action: ActionBroadcast) {
        let max = self.config.cached_actions_max;
        let bytes_max = self.config.cached_action_bytes_max;
        if action.cache == Cache::ReplaceOwn {
            self.drop_cached(|a| {
                a.cache == Cache::ReplaceOwn
                    && a.sender == action.sender
                    && a.action_type == action.action_type
            });
        }
        let size = cached_size(&action);
        if max == 0 || size > bytes_max {
            return;
        }
        while self.cached_actions.len() >= max || self.cached_bytes + size > bytes_max {
            let Some(old) = self.cached_actions.pop_front() else {
                break;
            };
            self.cached_bytes -= cached_size(&old);
        }
        self.cached_bytes += size;
        self.cached_actions.push_back(action);
    }

    /// Drops what a leaving user cached as its own state
    /// ([`Cache::ReplaceOwn`]); its [`Cache::Keep`] actions stay.
    fn forget_cached_state(&mut self, user: UserIndex) {
        self.drop_cached(|a| a.cache == Cache::ReplaceOwn && a.sender == user.0);
    }

    /// Drops the cached actions `drop` picks, keeping the byte count.
    fn drop_cached(&mut self, drop: impl Fn(&ActionBroadcast) -> bool) {
        let mut removed = 0;
        self.cached_actions.retain(|a| {
            let gone = drop(a);
            if gone {
                removed += cached_size(a);
            }
            !gone
        });
        self.cached_bytes -= removed;
    }

    /// The cached actions, oldest first.
    pub fn cached_actions(&self) -> impl Iterator<Item = &ActionBroadcast> {
        self.cached_actions.iter()
    }
}

/// Sends a joining member the names of the named scene entities, in
/// [`net::messages::EntityNames`] messages of at most
/// [`net::messages::ENTITY_NAMES_MAX`] entries and about 48 KiB. Names
/// longer than [`net::messages::ENTITY_NAME_BYTES_MAX`] (a scene loaded with
/// a higher `name_bytes_max`) are left out: clients would refuse them.
fn send_scene_names(member: &mut Member, sim: &Simulation, io: &mut Io<'_>, tick: u32) {
    use net::messages::{ENTITY_NAME_BYTES_MAX, ENTITY_NAMES_MAX, EntityName, EntityNames};
    const CHUNK_BYTES: usize = 48 * 1024;
    // With a Welcome of at most 256 KiB, well within the reliable buffer
    // a member may have queued (`reliable_buffer_bytes_max`, 1 MiB).
    const JOIN_BYTES_MAX: usize = 256 * 1024;
    let mut total = 0;
    let mut chunk = EntityNames {
        entities: Vec::new(),
    };
    let mut bytes = 0;
    let flush = |chunk: &mut EntityNames, member: &mut Member, io: &mut Io<'_>| {
        if !chunk.entities.is_empty() {
            if member
                .send(
                    io,
                    Channel::Actions,
                    MessageKind::EntityNames,
                    tick,
                    &*chunk,
                )
                .is_err()
            {
                *io.metrics.dropped.entry("entity_names").or_default() += 1;
            }
            chunk.entities.clear();
        }
    };
    for (network_id, name) in sim.scene_names() {
        if name.len() > ENTITY_NAME_BYTES_MAX {
            continue;
        }
        // Each entry: a 12-byte root and its name, padded.
        let size = 16 + name.len();
        total += size;
        if total > JOIN_BYTES_MAX {
            // A scene this large names too much to send at every join.
            *io.metrics.dropped.entry("entity_names_cut").or_default() += 1;
            break;
        }
        if chunk.entities.len() == ENTITY_NAMES_MAX || bytes + size > CHUNK_BYTES {
            flush(&mut chunk, member, io);
            bytes = 0;
        }
        bytes += size;
        chunk.entities.push(EntityName {
            network_id: network_id.0,
            name: name.to_owned(),
        });
    }
    flush(&mut chunk, member, io);
}

/// What a cached action counts against `cached_action_bytes_max`.
fn cached_size(a: &ActionBroadcast) -> usize {
    a.topic.len() + a.action_type.len() + a.payload.len()
}

/// Whether `user` is one of `members` (sorted by user index) that has
/// joined and is not leaving: one an action or a transfer may target.
fn is_listening_member(members: &[Member], user: u32) -> bool {
    members
        .binary_search_by_key(&UserIndex(user), |m| m.user)
        .is_ok_and(|j| members[j].is_listening())
}

#[cfg(test)]
mod tests;
