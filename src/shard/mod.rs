//! A shard: the instances and WebRTC peers of one core, as plain state
//! driven by calls with an explicit `now` (no socket, no clock, no thread).
//! [`io`] runs it on a pinned glommio executor with an io_uring UDP socket;
//! the test harness runs it on a virtual clock and an in-memory network.
//!
//! ```text
//! loop {
//!     shard.handle_command(cmd, now);           // from the control thread
//!     shard.handle_datagram(src, &bytes, now);  // from the socket
//!     shard.handle_timeout(now);                // ticks, str0m timers, peer timeouts
//!     while let Some(t) = shard.poll_transmit() { socket.send_to(&t.contents, t.destination) }
//!     while let Some(e) = shard.poll_event() { events.send(e) }
//!     sleep until shard.poll_timeout()
//! }
//! ```
//!
//! Demux is O(1): remote address → peer, and for a new address the ICE
//! username fragment in its STUN request → peer. Timers (str0m timeouts,
//! connect and idle deadlines, instance ticks) live in one binary heap.

pub mod instance;
pub mod io;
pub mod peer;
pub mod slab;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use engine::{NetworkId, UserIndex};
use net::input::{InputLimits, Outcome};
use net::messages::{
    Draining, Kick, KickReason, OwnershipChanged, PeerLeft, Target, VersionMismatch, Welcome,
};
use net::snapshot::{ClientSnapshots, SnapshotConfig};
use net::{Channel, ClientMessage, Decoder, Encoder, MessageKind, ProtocolError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use state::commands::{
    Command, EndReason, Event, InstanceSpec, InstanceStats, JoinRefused, JoinRequest, LeaveReason,
    SessionId, ShardMetrics,
};
use str0m::change::SdpOffer;
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Candidate, IceCreds, Input, Rtc};

use crate::config::Config;
use instance::Instance;
use peer::{PEER_ADDRS_MAX, Peer, PeerEvent};
use slab::{Key, Slab};

pub use peer::STATE_BACKLOG_BYTES_MAX;

/// How often a shard reports [`Event::Stats`].
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Peer(Key),
    Instance(Key),
}

/// The shard core. See the module documentation for its loop.
#[derive(Debug)]
pub struct Shard {
    index: usize,
    config: Config,
    /// The address in this shard's ICE candidate (and `Receive::destination`).
    local: SocketAddr,
    rng: StdRng,
    instances: Slab<Instance>,
    instance_ids: HashMap<String, Key>,
    peers: Slab<Peer>,
    by_addr: HashMap<SocketAddr, Key>,
    by_ufrag: HashMap<String, Key>,
    by_session: HashMap<SessionId, Key>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    peer_events: Vec<(Key, PeerEvent)>,
    dirty: Vec<Key>,
    metrics: ShardMetrics,
    decoder: Decoder,
    encoder: Encoder,
    draining: bool,
    next_stats: Instant,
    /// Since when the shard's ticks have run later than one tick behind.
    behind_since: Option<Instant>,
    stall_reported: bool,
}

impl Shard {
    /// A shard whose peers are told to reach it at `local`. `seed` feeds the
    /// generator of ICE credentials (the I/O shell passes OS entropy).
    pub fn new(index: usize, config: Config, local: SocketAddr, seed: u64, now: Instant) -> Shard {
        str0m::crypto::from_feature_flags().install_process_default();
        Shard {
            index,
            local,
            rng: StdRng::seed_from_u64(seed),
            instances: Slab::default(),
            instance_ids: HashMap::new(),
            peers: Slab::default(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_session: HashMap::new(),
            timers: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            peer_events: Vec::new(),
            dirty: Vec::new(),
            metrics: ShardMetrics::default(),
            decoder: Decoder::default(),
            encoder: Encoder::default(),
            draining: false,
            next_stats: now + STATS_INTERVAL,
            behind_since: None,
            stall_reported: false,
            config,
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn metrics(&self) -> &ShardMetrics {
        &self.metrics
    }

    pub fn peers_len(&self) -> usize {
        self.peers.len()
    }

    pub fn instances_len(&self) -> usize {
        self.instances.len()
    }

    /// Applies one command. Returns false for [`Command::Shutdown`].
    pub fn handle_command(&mut self, command: Command, now: Instant) -> bool {
        match command {
            Command::CreateInstance(spec) => self.create_instance(spec, now),
            Command::Join(request) => {
                let result = self.join(&request, now);
                // The HTTP handler may have given up waiting; nothing to do then
                // (the connect timeout removes the peer).
                let _ = request.reply.send(result);
            }
            Command::Leave { session } => {
                if let Some(&key) = self.by_session.get(&session) {
                    self.remove_peer(key, LeaveReason::Left, now);
                }
            }
            Command::EndInstance { instance_id } => {
                if let Some(&key) = self.instance_ids.get(&instance_id) {
                    self.end_instance(key, EndReason::Ended, now);
                }
            }
            Command::Kick {
                instance_id,
                user_id,
                banned,
                message,
            } => self.kick_user(&instance_id, &user_id, banned, &message, now),
            Command::Drain { grace } => self.drain(grace, now),
            Command::Shutdown => {
                for key in self.instances.keys() {
                    self.end_instance(key, EndReason::Drained, now);
                }
                self.flush(now);
                return false;
            }
            _ => {}
        }
        self.flush(now);
        true
    }

    /// Routes one datagram from `source` to its peer.
    pub fn handle_datagram(&mut self, source: SocketAddr, datagram: &[u8], now: Instant) {
        self.metrics.packets_in += 1;
        self.metrics.bytes_in += datagram.len() as u64;
        let key = match self.by_addr.get(&source) {
            Some(&key) => key,
            None => match net::stun::local_ufrag(datagram).and_then(|u| self.by_ufrag.get(u)) {
                Some(&key) => key,
                None => return self.drop_datagram("unknown_source"),
            },
        };
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.local, datagram) else {
            return self.drop_datagram("unparsable");
        };
        let Some(peer) = self.peers.get_mut(key) else {
            return self.drop_datagram("unknown_source");
        };
        if let Err(e) = peer.rtc.handle_input(Input::Receive(now, receive)) {
            tracing::debug!(session = peer.session, "input refused: {e}");
            return self.drop_datagram("rejected");
        }
        peer.last_heard = now;
        if !peer.addrs.contains(&source) {
            // A peer whose path changed more than PEER_ADDRS_MAX times keeps
            // its newest addresses.
            if peer.addrs.len() >= PEER_ADDRS_MAX {
                let oldest = peer.addrs.remove(0);
                if self.by_addr.get(&oldest) == Some(&key) {
                    self.by_addr.remove(&oldest);
                }
            }
            peer.addrs.push(source);
            self.by_addr.insert(source, key);
        }
        self.mark_dirty(key);
        self.flush(now);
    }

    /// Runs everything due at `now`: peer timers, instance ticks, stats.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Peer(key) => self.peer_timer(key, at, now),
                Timer::Instance(key) => self.instance_timer(key, at, now),
            }
            self.flush(now);
        }
        if now >= self.next_stats {
            self.next_stats = now + STATS_INTERVAL;
            self.report_stats();
        }
        self.compact_timers();
    }

    /// When [`Shard::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Instant {
        let next = self.timers.peek().map(|Reverse((at, _))| *at);
        next.map_or(self.next_stats, |t| t.min(self.next_stats))
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn drop_datagram(&mut self, reason: &'static str) {
        *self.metrics.dropped.entry(reason).or_default() += 1;
    }

    fn mark_dirty(&mut self, key: Key) {
        if let Some(peer) = self.peers.get_mut(key)
            && !peer.dirty
        {
            peer.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Polls every peer something happened to and handles what they said,
    /// until nothing is left (handling one peer's message can wake others).
    fn flush(&mut self, now: Instant) {
        for _round in 0..64 {
            // Peers written to through `Peer::send` set `dirty` themselves.
            let dirty = std::mem::take(&mut self.dirty);
            let mut events = std::mem::take(&mut self.peer_events);
            for key in dirty {
                self.pump(key, &mut events, now);
            }
            if events.is_empty() && self.dirty.is_empty() {
                self.peer_events = events;
                return;
            }
            for (key, event) in events.drain(..) {
                self.peer_event(key, event, now);
            }
            self.peer_events = events;
        }
        tracing::warn!(shard = self.index, "peer event cascade cut at 64 rounds");
    }

    fn pump(&mut self, key: Key, events: &mut Vec<(Key, PeerEvent)>, now: Instant) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let (transmits, metrics) = (&mut self.transmits, &mut self.metrics);
        let queue_max = self.config.shard.send_queue_len;
        peer.pump(
            key,
            |t| queue_transmit(transmits, metrics, queue_max, t),
            events,
        );
        if let Some(at) = self.peer_wake_at(key) {
            self.schedule_peer(key, at.max(now));
        }
    }

    /// When a peer next needs attention: str0m's timeout or its deadline.
    fn peer_wake_at(&self, key: Key) -> Option<Instant> {
        let deadline = self.peer_deadline(key)?;
        self.peers.get(key).map(|p| deadline.min(p.rtc_wake))
    }

    /// The connect or idle deadline of a peer.
    fn peer_deadline(&self, key: Key) -> Option<Instant> {
        let peer = self.peers.get(key)?;
        Some(if peer.joined {
            peer.last_heard + self.config.webrtc.idle_timeout()
        } else {
            peer.created + self.config.webrtc.connect_timeout()
        })
    }

    fn schedule_peer(&mut self, key: Key, at: Instant) {
        if let Some(peer) = self.peers.get_mut(key)
            && peer.scheduled.is_none_or(|s| at < s)
        {
            peer.scheduled = Some(at);
            self.timers.push(Reverse((at, Timer::Peer(key))));
        }
    }

    fn schedule_instance(&mut self, key: Key) {
        if let Some(inst) = self.instances.get_mut(key)
            && let Some(at) = inst.wake_at()
            && inst.scheduled.is_none_or(|s| at < s)
        {
            inst.scheduled = Some(at);
            self.timers.push(Reverse((at, Timer::Instance(key))));
        }
    }

    fn peer_timer(&mut self, key: Key, at: Instant, now: Instant) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        if peer.scheduled == Some(at) {
            peer.scheduled = None;
        }
        let joined = peer.joined;
        if let Some(deadline) = self.peer_deadline(key)
            && now >= deadline
        {
            let reason = if joined {
                LeaveReason::TimedOut
            } else {
                LeaveReason::ConnectFailed
            };
            return self.remove_peer(key, reason, now);
        }
        if let Some(peer) = self.peers.get_mut(key)
            && peer.rtc_wake <= now
            && let Err(e) = peer.rtc.handle_input(Input::Timeout(now))
        {
            tracing::debug!(session = peer.session, "timeout failed: {e}");
        }
        // Pumping reschedules at the earlier of str0m's wake and the deadline.
        self.mark_dirty(key);
    }

    /// Rebuilds the heap when stale entries pile up, keeping it bounded.
    fn compact_timers(&mut self) {
        if self.timers.len() <= 4 * (self.peers.len() + self.instances.len()) + 1024 {
            return;
        }
        self.timers.clear();
        for key in self.peers.keys() {
            if let Some(p) = self.peers.get_mut(key) {
                p.scheduled = None;
            }
            if let Some(at) = self.peer_wake_at(key) {
                self.schedule_peer(key, at);
            }
        }
        for key in self.instances.keys() {
            if let Some(i) = self.instances.get_mut(key) {
                i.scheduled = None;
            }
            self.schedule_instance(key);
        }
    }

    fn create_instance(&mut self, spec: InstanceSpec, now: Instant) {
        let id = spec.id.clone();
        let refuse = |reason: String| Event::InstanceEnded {
            shard: self.index,
            instance_id: id.clone(),
            reason: EndReason::LoadFailed(reason),
        };
        if self.instance_ids.contains_key(&id) {
            let e = refuse("an instance with this id already runs on the shard".into());
            return self.events.push_back(e);
        }
        if self.instances.len() >= self.config.shard.instances_max {
            let e = refuse(format!(
                "the shard hosts its maximum of {} instances",
                self.config.shard.instances_max
            ));
            return self.events.push_back(e);
        }
        match Instance::new(spec, &self.config.instance, now) {
            Ok(inst) => {
                let entities = inst.sim.world().len() as u32;
                let key = self.instances.insert(inst);
                self.instance_ids.insert(id.clone(), key);
                // The first tick starts the instance's clock.
                self.tick_instance(key, now);
                self.schedule_instance(key);
                self.events.push_back(Event::InstanceStarted {
                    shard: self.index,
                    instance_id: id,
                    entities,
                });
            }
            Err(e) => {
                let e = refuse(e.to_string());
                self.events.push_back(e);
            }
        }
    }

    fn join(&mut self, request: &JoinRequest, now: Instant) -> Result<String, JoinRefused> {
        if self.draining {
            return Err(JoinRefused::Draining);
        }
        let &inst_key = self
            .instance_ids
            .get(&request.instance_id)
            .ok_or_else(|| JoinRefused::UnknownInstance(request.instance_id.clone()))?;
        let inst = self
            .instances
            .get(inst_key)
            .expect("instance_ids only names live instances");
        if inst.drain_until.is_some() {
            return Err(JoinRefused::Draining);
        }
        if inst.peers.len() >= inst.max_users as usize {
            return Err(JoinRefused::InstanceFull(request.instance_id.clone()));
        }
        if self.peers.len() >= self.config.shard.peers_max {
            return Err(JoinRefused::ShardFull(self.config.shard.peers_max));
        }
        let offer = SdpOffer::from_sdp_string(&request.offer_sdp)
            .map_err(|e| JoinRefused::BadOffer(e.to_string()))?;
        let ufrag = self.random_token(16);
        let creds = IceCreds {
            ufrag: ufrag.clone(),
            pass: self.random_token(24),
        };
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .set_local_ice_credentials(creds)
            .build(now);
        let candidate = Candidate::host(self.local, "udp")
            .map_err(|e| JoinRefused::BadOffer(format!("server candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| JoinRefused::BadOffer(e.to_string()))?;
        let answer = answer.to_sdp_string();
        if !answer.contains("m=application") {
            return Err(JoinRefused::BadOffer(
                "the offer has no data channel (m=application) section".into(),
            ));
        }
        let inst = self.instances.get_mut(inst_key).expect("checked above");
        let user = UserIndex(inst.next_user_index);
        inst.next_user_index += 1;
        let limits = InputLimits {
            owned_speed_max_mps: self.config.instance.owned_speed_max_mps,
            ..InputLimits::default()
        };
        let peer = Peer::new(rtc, request, inst_key, user, ufrag.clone(), limits, now)
            .with_action_burst(self.config.instance.actions_per_second_max);
        let key = self.peers.insert(peer);
        inst.peers.push(key);
        inst.empty_since = None;
        self.by_ufrag.insert(ufrag, key);
        self.by_session.insert(request.session, key);
        self.mark_dirty(key);
        Ok(answer)
    }

    fn random_token(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..len)
            .map(|_| ALPHABET[self.rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    }

    fn peer_event(&mut self, key: Key, event: PeerEvent, now: Instant) {
        match event {
            PeerEvent::Closed => self.remove_peer(key, LeaveReason::Left, now),
            PeerEvent::ChannelOpen(id, label) => {
                let Some(peer) = self.peers.get_mut(key) else {
                    return;
                };
                match label.as_str() {
                    "state" => peer.state_channel = Some(id),
                    "actions" => peer.actions_channel = Some(id),
                    _ => return self.drop_datagram("unknown_channel"),
                }
                if !peer.joined && peer.state_channel.is_some() && peer.actions_channel.is_some() {
                    self.admit(key, now);
                }
            }
            PeerEvent::ChannelData(id, data) => {
                let Some(peer) = self.peers.get(key) else {
                    return;
                };
                match peer.channel_of(id) {
                    Some(channel) if peer.joined => self.handle_message(key, channel, &data, now),
                    _ => self.drop_datagram("message_before_join"),
                }
            }
        }
    }

    /// Both channels are open: spawn the avatar, welcome the user, tell the others.
    fn admit(&mut self, key: Key, now: Instant) {
        let Some(peer) = self.peers.get(key) else {
            return;
        };
        let inst_key = peer.instance;
        let user = peer.user;
        let Some(inst) = self.instances.get_mut(inst_key) else {
            return;
        };
        let avatar = match inst.sim.spawn_avatar(user) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(instance = %inst.id, "cannot spawn an avatar: {e}");
                return self.remove_peer(key, LeaveReason::ConnectFailed, now);
            }
        };
        let avatar_net = inst.sim.world().network_id(avatar).map_or(0, |n| n.0);
        let bounds = *inst.sim.bounds();
        let tick = inst.sim.world().tick().0;
        let mut welcome = Welcome {
            user_id: String::new(),
            user_index: user.0,
            avatar: avatar_net,
            tick_hz: self.config.instance.tick_hz as u16,
            bounds_min: [bounds.min.x, bounds.min.y, bounds.min.z],
            bounds_max: [bounds.max.x, bounds.max.y, bounds.max.z],
            position_bits: inst.quantizer.position_bits(),
            cached_actions: inst.cached_actions.iter().cloned().collect(),
        };
        let others: Vec<Key> = inst.peers.iter().copied().filter(|&k| k != key).collect();
        let snapshot_config = SnapshotConfig {
            interest_radius_m: self.config.instance.interest_radius_m,
            view_entities_max: self.config.instance.view_entities_max,
            ..SnapshotConfig::default()
        };
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        welcome.user_id = peer.user_id.clone();
        peer.joined = true;
        peer.avatar = Some(avatar);
        peer.last_heard = now;
        peer.snapshots = Some(Box::new(ClientSnapshots::new(snapshot_config)));
        peer.send_welcome(&mut self.encoder, tick, &mut welcome);
        let session = peer.session;
        let user_id = peer.user_id.clone();
        self.introduce(key, &others, tick);
        self.mark_dirty(key);
        let instance_id = self
            .instances
            .get(inst_key)
            .map(|i| i.id.clone())
            .unwrap_or_default();
        self.events.push_back(Event::SessionJoined {
            shard: self.index,
            instance_id,
            session,
            user_id,
        });
    }

    /// Tells the joined `others` about the newcomer `key`, and it about them.
    fn introduce(&mut self, key: Key, others: &[Key], tick: u32) {
        let Some(newcomer) = self.peers.get(key).map(Peer::announcement) else {
            return;
        };
        for &other in others {
            let Some(o) = self.peers.get_mut(other) else {
                continue;
            };
            if !o.joined {
                continue;
            }
            let theirs = o.announcement();
            let _ = o.send(
                &mut self.encoder,
                Channel::Actions,
                MessageKind::PeerJoined,
                tick,
                &newcomer,
            );
            self.mark_dirty(other);
            if let Some(p) = self.peers.get_mut(key) {
                let _ = p.send(
                    &mut self.encoder,
                    Channel::Actions,
                    MessageKind::PeerJoined,
                    tick,
                    &theirs,
                );
            }
        }
    }

    fn handle_message(&mut self, key: Key, channel: Channel, data: &[u8], now: Instant) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let Some(inst) = self.instances.get_mut(peer.instance) else {
            return;
        };
        let msg = match self.decoder.decode_client(data, channel) {
            Ok(msg) => msg,
            Err(e) => return self.invalid_message(key, e, now),
        };
        if matches!(msg, ClientMessage::Action(..))
            && !peer.take_action_token(now, self.config.instance.actions_per_second_max)
        {
            *self
                .metrics
                .refused_messages
                .entry("action_rate")
                .or_default() += 1;
            return;
        }
        let snapshots = peer
            .snapshots
            .as_deref_mut()
            .expect("joined peers have snapshots");
        let outcome = peer.input.handle(&mut inst.sim, snapshots, &msg);
        let tick = inst.sim.world().tick().0;
        let refused = &mut self.metrics.refused_messages;
        match outcome {
            Outcome::Input { refused: n, .. } => {
                self.metrics.inputs += 1;
                if n > 0 {
                    *self
                        .metrics
                        .refused_messages
                        .entry("owned_update")
                        .or_default() += u64::from(n);
                }
            }
            Outcome::StaleInput => *refused.entry("stale_input").or_default() += 1,
            Outcome::Refused(_) => *refused.entry("ownership").or_default() += 1,
            Outcome::ServerAction(_) => *refused.entry("server_action").or_default() += 1,
            Outcome::Pong(pong) => {
                let _ = peer.send(
                    &mut self.encoder,
                    Channel::State,
                    MessageKind::Pong,
                    tick,
                    &pong,
                );
            }
            Outcome::Broadcast(action) => {
                let target = action.target;
                // Only actions for everyone are replayed to late joiners.
                if action.cached && target == Target::Everyone {
                    inst.cache(action.clone());
                }
                let peers = inst.peers.clone();
                self.broadcast(
                    &peers,
                    Some(key),
                    target,
                    MessageKind::ActionBroadcast,
                    tick,
                    &action,
                );
            }
            Outcome::Ownership(changed) => {
                let peers = inst.peers.clone();
                self.broadcast(
                    &peers,
                    None,
                    Target::Everyone,
                    MessageKind::OwnershipChanged,
                    tick,
                    &changed,
                );
            }
            _ => {}
        }
        self.mark_dirty(key);
    }

    /// Sends `msg` to the joined peers among `peers` that `target` names,
    /// skipping `except`.
    fn broadcast<T>(
        &mut self,
        peers: &[Key],
        except: Option<Key>,
        target: Target,
        kind: MessageKind,
        tick: u32,
        msg: &T,
    ) where
        T: for<'a, 'b> rkyv::Serialize<net::codec::FrameSerializer<'a, 'b>>,
    {
        for &k in peers {
            if Some(k) == except {
                continue;
            }
            let Some(p) = self.peers.get_mut(k) else {
                continue;
            };
            let wanted = match target {
                Target::Everyone => true,
                Target::User(u) => p.user.0 == u,
                Target::Server => false,
            };
            if !p.joined || !wanted {
                continue;
            }
            if let Err(e) = p.send(&mut self.encoder, Channel::Actions, kind, tick, msg) {
                tracing::debug!(session = p.session, "broadcast dropped: {e}");
            }
            let congested =
                p.buffered(Channel::Actions) > self.config.instance.reliable_buffer_bytes_max;
            if !p.dirty {
                p.dirty = true;
                self.dirty.push(k);
            }
            if congested {
                p.leaving = Some(LeaveReason::Congested);
            }
        }
    }

    fn invalid_message(&mut self, key: Key, error: ProtocolError, now: Instant) {
        *self
            .metrics
            .invalid_messages
            .entry(error.reason())
            .or_default() += 1;
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        if let ProtocolError::VersionMismatch { .. } = error {
            let msg = VersionMismatch {
                server_version: net::PROTOCOL_VERSION,
            };
            let _ = peer.send(
                &mut self.encoder,
                Channel::Actions,
                MessageKind::VersionMismatch,
                0,
                &msg,
            );
            return self.remove_peer(key, LeaveReason::ProtocolViolation, now);
        }
        peer.invalid_messages += 1;
        if peer.invalid_messages > self.config.instance.invalid_messages_max {
            let kick = Kick {
                reason: KickReason::ProtocolViolation,
                message: format!(
                    "more than {} invalid messages",
                    self.config.instance.invalid_messages_max
                ),
            };
            self.kick(key, &kick, 0, LeaveReason::ProtocolViolation, now);
        }
    }

    fn instance_timer(&mut self, key: Key, at: Instant, now: Instant) {
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        if inst.scheduled == Some(at) {
            inst.scheduled = None;
        }
        if inst.drain_until.is_some_and(|t| now >= t) {
            return self.end_instance(key, EndReason::Drained, now);
        }
        if inst.empty_deadline().is_some_and(|t| now >= t) {
            return self.end_instance(key, EndReason::Empty, now);
        }
        if inst.sim.next_tick_due().is_none_or(|due| due <= now) {
            self.tick_instance(key, now);
        }
        self.schedule_instance(key);
    }

    /// Runs the ticks due, then sends every joined peer its snapshot.
    fn tick_instance(&mut self, key: Key, now: Instant) {
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        let period = inst.sim.config().tick_duration();
        let lateness = inst
            .sim
            .next_tick_due()
            .map_or(Duration::ZERO, |due| now.saturating_duration_since(due));
        let due = inst.sim.due_ticks(now);
        for _ in 0..due.steps {
            // Wall time of the tick, for metrics only; no decision depends on it.
            let started = std::time::Instant::now();
            inst.sim.step();
            let took = started.elapsed();
            inst.tick_times.record(took);
            self.metrics.observe_tick(took.as_micros() as u64);
        }
        self.metrics.skipped_ticks += due.skipped;
        self.track_stall(lateness > period, now);
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        if due.steps == 0 {
            return;
        }
        inst.frame.capture(inst.sim.world(), &inst.quantizer);
        for &k in &inst.peers {
            let Some(p) = self.peers.get_mut(k) else {
                continue;
            };
            if !p.joined {
                continue;
            }
            match p.send_snapshot(inst) {
                Ok(len) => {
                    self.metrics.snapshots_sent += 1;
                    self.metrics.snapshot_bytes += len as u64;
                }
                Err(reason) => *self.metrics.dropped.entry(reason).or_default() += 1,
            }
            if !p.dirty {
                p.dirty = true;
                self.dirty.push(k);
            }
        }
        let congested: Vec<Key> = inst
            .peers
            .iter()
            .copied()
            .filter(|&k| self.peers.get(k).is_some_and(|p| p.leaving.is_some()))
            .collect();
        for k in congested {
            self.remove_peer(k, LeaveReason::Congested, now);
        }
    }

    fn track_stall(&mut self, behind: bool, now: Instant) {
        if !behind {
            self.behind_since = None;
            self.stall_reported = false;
            return;
        }
        let since = *self.behind_since.get_or_insert(now);
        let behind_ms = now.saturating_duration_since(since).as_millis() as u64;
        if !self.stall_reported && behind_ms >= self.config.shard.stall_report_ms {
            self.stall_reported = true;
            self.metrics.stalls += 1;
            tracing::warn!(
                shard = self.index,
                behind_ms,
                "shard stalled: ticks behind schedule"
            );
            self.events.push_back(Event::Stalled {
                shard: self.index,
                behind_ms,
            });
        }
    }

    fn remove_peer(&mut self, key: Key, reason: LeaveReason, now: Instant) {
        let Some(mut peer) = self.peers.remove(key) else {
            return;
        };
        self.by_ufrag.remove(&peer.ufrag);
        self.by_session.remove(&peer.session);
        for a in &peer.addrs {
            if self.by_addr.get(a) == Some(&key) {
                self.by_addr.remove(a);
            }
        }
        // Send what was written last (a Kick), then let the close (SCTP
        // shutdown, DTLS close_notify) reach the client.
        let mut scratch = Vec::new();
        for close in [false, true] {
            if close {
                let _ = peer.rtc.close();
            }
            let (transmits, metrics) = (&mut self.transmits, &mut self.metrics);
            let queue_max = self.config.shard.send_queue_len;
            peer.pump(
                key,
                |t| queue_transmit(transmits, metrics, queue_max, t),
                &mut scratch,
            );
        }
        let Some(inst) = self.instances.get_mut(peer.instance) else {
            return;
        };
        inst.peers.retain(|&k| k != key);
        if inst.peers.is_empty() {
            inst.empty_since = Some(now);
        }
        let instance_id = inst.id.clone();
        if peer.joined {
            if let Some(avatar) = peer.avatar {
                let _ = inst.sim.despawn(avatar);
            }
            let tick = inst.sim.world().tick().0;
            let released = release_ownership(inst, peer.user);
            let peers = inst.peers.clone();
            let left = PeerLeft {
                user_index: peer.user.0,
            };
            self.broadcast(
                &peers,
                None,
                Target::Everyone,
                MessageKind::PeerLeft,
                tick,
                &left,
            );
            for network_id in released {
                let changed = OwnershipChanged {
                    network_id,
                    owner: None,
                };
                self.broadcast(
                    &peers,
                    None,
                    Target::Everyone,
                    MessageKind::OwnershipChanged,
                    tick,
                    &changed,
                );
            }
        }
        self.schedule_instance(peer.instance);
        self.events.push_back(Event::SessionLeft {
            shard: self.index,
            instance_id,
            session: peer.session,
            user_id: peer.user_id,
            reason,
            joined: peer.joined,
        });
    }

    fn kick_user(
        &mut self,
        instance_id: &str,
        user_id: &str,
        banned: bool,
        message: &str,
        now: Instant,
    ) {
        let Some(&inst_key) = self.instance_ids.get(instance_id) else {
            return;
        };
        let Some(inst) = self.instances.get(inst_key) else {
            return;
        };
        let tick = inst.sim.world().tick().0;
        let targets: Vec<Key> = inst
            .peers
            .iter()
            .copied()
            .filter(|&k| self.peers.get(k).is_some_and(|p| p.user_id == user_id))
            .collect();
        let kick = Kick {
            reason: if banned {
                KickReason::Banned
            } else {
                KickReason::Operator
            },
            message: message
                .chars()
                .take(net::messages::TEXT_BYTES_MAX / 4)
                .collect(),
        };
        for k in targets {
            self.kick(k, &kick, tick, LeaveReason::Kicked, now);
        }
    }

    /// Tells a joined peer why it is being removed, then removes it (the
    /// removal sends what was written before it closes the connection).
    fn kick(&mut self, key: Key, kick: &Kick, tick: u32, reason: LeaveReason, now: Instant) {
        if let Some(p) = self.peers.get_mut(key)
            && p.joined
        {
            let _ = p.send(
                &mut self.encoder,
                Channel::Actions,
                MessageKind::Kick,
                tick,
                kick,
            );
        }
        self.remove_peer(key, reason, now);
    }

    fn end_instance(&mut self, key: Key, reason: EndReason, now: Instant) {
        let Some(inst) = self.instances.get(key) else {
            return;
        };
        let peers = inst.peers.clone();
        let tick = inst.sim.world().tick().0;
        let kick = Kick {
            reason: KickReason::InstanceEnded,
            message: "the instance ended".into(),
        };
        for k in peers {
            self.kick(k, &kick, tick, LeaveReason::InstanceEnded, now);
        }
        if let Some(inst) = self.instances.remove(key) {
            self.instance_ids.remove(&inst.id);
            self.events.push_back(Event::InstanceEnded {
                shard: self.index,
                instance_id: inst.id,
                reason,
            });
        }
    }

    fn drain(&mut self, grace: Duration, now: Instant) {
        self.draining = true;
        let grace_ms = grace.as_millis().min(u128::from(u32::MAX)) as u32;
        for key in self.instances.keys() {
            let Some(inst) = self.instances.get_mut(key) else {
                continue;
            };
            // Nobody to warn: an empty instance ends at once.
            if inst.peers.is_empty() {
                self.end_instance(key, EndReason::Drained, now);
                continue;
            }
            inst.drain_until = Some(now + grace);
            let tick = inst.sim.world().tick().0;
            let peers = inst.peers.clone();
            self.broadcast(
                &peers,
                None,
                Target::Everyone,
                MessageKind::Draining,
                tick,
                &Draining { grace_ms },
            );
            self.schedule_instance(key);
        }
    }

    fn report_stats(&mut self) {
        let mut instances = Vec::with_capacity(self.instances.len());
        for key in self.instances.keys() {
            let Some(inst) = self.instances.get_mut(key) else {
                continue;
            };
            let summary = inst.tick_times.take();
            if summary.ticks > 0 {
                inst.last_tick_p50_us = summary.p50.as_micros() as u32;
                inst.last_tick_p99_us = summary.p99.as_micros() as u32;
            }
            let users = inst
                .peers
                .iter()
                .filter(|&&k| self.peers.get(k).is_some_and(|p| p.joined))
                .count() as u32;
            instances.push(InstanceStats {
                instance_id: inst.id.clone(),
                users,
                entities: inst.sim.world().len() as u32,
                tick_p50_us: inst.last_tick_p50_us,
                tick_p99_us: inst.last_tick_p99_us,
            });
        }
        self.metrics.instances = self.instances.len() as u32;
        self.metrics.peers = self.peers.len() as u32;
        self.metrics.timers = self.timers.len() as u32;
        self.events.push_back(Event::Stats {
            shard: self.index,
            metrics: Box::new(self.metrics.clone()),
            instances,
        });
    }
}

/// Queues a datagram for the socket, or drops and counts it at the limit.
fn queue_transmit(
    transmits: &mut VecDeque<Transmit>,
    metrics: &mut ShardMetrics,
    queue_max: usize,
    t: Transmit,
) {
    if transmits.len() >= queue_max {
        *metrics.dropped.entry("send_queue_full").or_default() += 1;
    } else {
        metrics.packets_out += 1;
        metrics.bytes_out += t.contents.len() as u64;
        transmits.push_back(t);
    }
}

/// Clears the owner of every non-avatar entity `user` owned; returns their network ids.
fn release_ownership(inst: &mut Instance, user: UserIndex) -> Vec<u32> {
    let world = inst.sim.world_mut();
    let owned: Vec<_> = world
        .optional
        .owners
        .iter()
        .filter(|(id, o)| o.user == user && !world.optional.avatars.contains(*id))
        .map(|(id, _)| id)
        .collect();
    let mut released = Vec::with_capacity(owned.len());
    for id in owned {
        let _ = world.remove(id, |c| &mut c.owners);
        if let Ok(NetworkId(n)) = world.network_id(id) {
            released.push(n);
        }
    }
    released
}
