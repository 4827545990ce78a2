//! The router of one shard: it maps connections ([`net::conn`]) to the
//! members of instances ([`state::instance`]), forwards the control
//! thread's commands, and turns what an instance says into connection
//! writes and control events. It is plain state driven by calls with an
//! explicit `now` (no socket, no clock, no thread); [`crate::io`] runs it
//! on a pinned glommio executor with an io_uring UDP socket, the test
//! harness on a virtual clock and an in-memory network.
//!
//! ```text
//! loop {
//!     shard.handle_command(cmd, now);           // from the control thread
//!     shard.handle_datagram(src, &bytes, now);  // from the socket
//!     shard.handle_timeout(now);                // connection timers, instance ticks, stats
//!     while let Some(t) = shard.poll_transmit() { socket.send_to(&t.contents, t.destination) }
//!     while let Some(e) = shard.poll_event() { events.send(e) }
//!     sleep until shard.poll_timeout()
//! }
//! ```
//!
//! A call into an instance that panics (a bug: outside input never
//! panics) ends that instance alone: its members are kicked with
//! `ServerError`, the control thread is told `InstanceEnded { Failed }`,
//! and the shard and its other instances go on.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use engine::UserIndex;
use net::conn::{CloseReason, ConnConfig, ConnEvent, ConnKey, Connections};
use net::slab::{Key, Slab};
use net::{Decoder, Encoder};
use state::commands::{Command, EndReason, Event, LeaveReason, SessionId, ShardMetrics};
use state::instance::{Clock, Instance, Io, Removal, RuntimeConfig};
use str0m::net::Transmit;

/// How often a shard reports [`Event::Stats`].
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Rounds of connection events handled in one flush; more is a runaway cascade.
const FLUSH_ROUNDS_MAX: usize = 64;

/// What the router needs to know; the node maps its `Config` onto it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// Instances on the shard at most.
    pub instances_max: usize,
    /// Ticks this far behind schedule for this long are reported as a stall.
    pub stall_report: Duration,
    pub conn: ConnConfig,
    pub instance: RuntimeConfig,
    pub overload: load::OverloadConfig,
}

/// Where a connection leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    instance: Key,
    user: UserIndex,
    session: SessionId,
}

#[derive(Debug)]
struct Hosted {
    instance: Instance,
    /// The earliest timer queued for it, if any.
    scheduled: Option<Instant>,
    /// Its last stats went out while it was asleep (they cannot change
    /// until it wakes).
    reported_asleep: bool,
}

/// The shard core. See the module documentation for its loop.
#[derive(Debug)]
pub struct Shard {
    index: usize,
    config: RouterConfig,
    clock: Clock,
    conns: Connections,
    instances: Slab<Hosted>,
    instance_ids: HashMap<String, Key>,
    links: HashMap<ConnKey, Link>,
    by_session: HashMap<SessionId, ConnKey>,
    timers: BinaryHeap<Reverse<(Instant, Key)>>,
    events: VecDeque<Event>,
    removals: Vec<Removal>,
    metrics: ShardMetrics,
    encoder: Encoder,
    snapshots: net::snapshot::SnapshotEncoder,
    decoder: Decoder,
    draining: bool,
    next_stats: Instant,
    stall: Stall,
    load: load::Load,
}

/// Since when ticks have run more than a period behind, and whether that
/// episode was reported.
#[derive(Debug, Default)]
struct Stall {
    behind_since: Option<Instant>,
    reported: bool,
}

impl Shard {
    /// Shard `index`. `seed` feeds the ICE credentials (the shell passes
    /// OS entropy); `clock` times ticks for metrics only.
    pub fn new(index: usize, config: RouterConfig, seed: u64, clock: Clock, now: Instant) -> Shard {
        let overload = config.overload;
        Shard {
            index,
            conns: Connections::new(config.conn.clone(), seed),
            config,
            clock,
            instances: Slab::default(),
            instance_ids: HashMap::new(),
            links: HashMap::new(),
            by_session: HashMap::new(),
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            removals: Vec::new(),
            metrics: ShardMetrics::default(),
            encoder: Encoder::default(),
            snapshots: net::snapshot::SnapshotEncoder::default(),
            decoder: Decoder::default(),
            draining: false,
            next_stats: now + STATS_INTERVAL,
            stall: Stall::default(),
            load: load::Load::new(overload),
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.config.conn.local
    }

    pub fn peers_len(&self) -> usize {
        self.conns.len()
    }

    pub fn instances_len(&self) -> usize {
        self.instances.len()
    }

    /// The shard's counters and gauges now.
    pub fn metrics(&self) -> ShardMetrics {
        let mut m = self.metrics.clone();
        let s = self.conns.stats();
        (m.packets_in, m.bytes_in) = (s.packets_in, s.bytes_in);
        (m.packets_out, m.bytes_out) = (s.packets_out, s.bytes_out);
        for (reason, n) in self.conns.drops().0 {
            *m.dropped.entry(reason).or_default() += n;
        }
        m.instances = self.instances.len() as u32;
        m.load_percent = (self.load.share() * 100.0).round() as u32;
        m.snapshot_divisor = self.load.snapshot_divisor();
        m.instances_asleep = self
            .instances
            .iter()
            .filter(|(_, h)| {
                h.instance.is_asleep() && h.instance.kind() == state::commands::InstanceKind::World
            })
            .count() as u32;
        for (_, h) in self.instances.iter() {
            for t in h.instance.tracks().iter().filter(|t| t.is_forwarded()) {
                m.media_tracks += 1;
                m.media_subscriptions += t.subscribers() as u32;
            }
        }
        m.peers = self.conns.len() as u32;
        m.timers = (self.conns.timers_len() + self.timers.len()) as u32;
        m
    }

    /// An instance of this shard, for tests and tools that look inside
    /// (the router alone changes it in a running node).
    #[doc(hidden)]
    pub fn instance_mut(&mut self, id: &str) -> Option<&mut Instance> {
        let key = *self.instance_ids.get(id)?;
        self.instances.get_mut(key).map(|h| &mut h.instance)
    }

    /// The share of its core the shard's thread used, or waited for, since
    /// the last report (the shell measures it a few times a second): past
    /// [`load::OverloadConfig`]'s shares, joins are refused and snapshots
    /// slow down.
    pub fn observe_load(&mut self, cpu_share: f32, now: Instant) {
        self.load.observe(cpu_share, self.conns.len(), now);
    }

    /// Counts a datagram the shell dropped (too large, send failed).
    pub fn drop_datagram(&mut self, reason: &'static str) {
        self.conns.drop_datagram(reason);
    }

    /// Applies one command. Returns false for [`Command::Shutdown`].
    pub fn handle_command(&mut self, command: Command, now: Instant) -> bool {
        match command {
            Command::CreateInstance(spec) => self.create_instance(spec, now),
            Command::Join(request) => {
                let result = self.join(&request, now);
                // The HTTP handler may have given up waiting; nothing to do
                // then (the connect timeout removes the connection).
                let _ = request.reply.send(result);
            }
            Command::Leave { session } => {
                if let Some(&conn) = self.by_session.get(&session) {
                    self.disconnect(conn, LeaveReason::Left, now);
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
            } => {
                if let Some(&key) = self.instance_ids.get(&instance_id) {
                    self.call(key, now, |i, io| {
                        i.kick_user(&user_id, banned, &message, io)
                    });
                }
            }
            Command::Moderate {
                instance_id,
                user_id,
                audio,
                video,
                muted,
            } => {
                if let Some(&key) = self.instance_ids.get(&instance_id) {
                    self.call(key, now, |i, io| {
                        i.moderate(&user_id, audio, video, muted, io)
                    });
                }
            }
            Command::Drain { grace } => self.drain(grace, now),
            Command::Shutdown => {
                for key in self.instances.keys() {
                    self.end_instance(key, EndReason::Drained, now);
                }
                self.flush(now);
                return false;
            }
        }
        self.flush(now);
        true
    }

    /// Routes one datagram from `source` to its connection.
    pub fn handle_datagram(&mut self, source: SocketAddr, datagram: &[u8], now: Instant) {
        self.conns.handle_datagram(source, datagram, now);
        self.flush(now);
    }

    /// Runs everything due at `now`: connection timers, instance ticks, stats.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conns.handle_timeout(now);
        self.flush(now);
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.instance_timer(key, at, now);
            self.flush(now);
        }
        if now >= self.next_stats {
            self.next_stats = now + STATS_INTERVAL;
            self.report_stats();
        }
    }

    /// When [`Shard::handle_timeout`] should next run.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        let instances = self.timers.peek().map(|Reverse((at, _))| *at);
        [self.conns.poll_timeout(), instances]
            .into_iter()
            .flatten()
            .fold(self.next_stats, Instant::min)
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.conns.poll_transmit()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Writes what was said, then handles what the connections said back,
    /// until nothing is left.
    fn flush(&mut self, now: Instant) {
        for _round in 0..FLUSH_ROUNDS_MAX {
            self.conns.flush(now);
            let mut any = false;
            while let Some(event) = self.conns.poll_event() {
                any = true;
                self.conn_event(event, now);
            }
            while let Some((conn, mid, rtp)) = self.conns.poll_rtp() {
                any = true;
                self.forward_rtp(conn, mid, &rtp, now);
            }
            if !any {
                return;
            }
        }
        tracing::warn!(
            shard = self.index,
            "connection event cascade cut at {FLUSH_ROUNDS_MAX} rounds"
        );
    }

    fn conn_event(&mut self, event: ConnEvent, now: Instant) {
        match event {
            ConnEvent::Opened(conn) => {
                // Its instance failed after this was queued, closing it.
                let Some(&link) = self.links.get(&conn) else {
                    return self.count_drop("opened_after_leave");
                };
                let opened = self.call(link.instance, now, |i, io| i.open(link.user, io));
                if opened == Some(true)
                    && let Some(inst) = self.instances.get(link.instance)
                    && let Some(member) = inst.instance.member(link.user)
                {
                    self.events.push_back(Event::SessionJoined {
                        shard: self.index,
                        instance_id: inst.instance.id().to_owned(),
                        session: link.session,
                        user_id: member.user_id.clone(),
                    });
                }
            }
            ConnEvent::Message(conn, channel, data) => {
                // Messages queued before the router closed the connection.
                let Some(&link) = self.links.get(&conn) else {
                    return self.count_drop("message_after_leave");
                };
                self.call(link.instance, now, |i, io| {
                    i.handle_message(link.user, channel, &data, io)
                });
            }
            ConnEvent::Published(conn, mid, kind, layers) => {
                if let Some(&link) = self.links.get(&conn) {
                    self.call(link.instance, now, |i, io| {
                        i.publish(link.user, mid, kind, layers, io)
                    });
                }
            }
            ConnEvent::Unpublished(conn, mid) => {
                if let Some(&link) = self.links.get(&conn) {
                    self.call(link.instance, now, |i, io| i.unpublish(link.user, mid, io));
                }
            }
            ConnEvent::KeyframeRequest(conn, track) => {
                if let Some(&link) = self.links.get(&conn) {
                    self.call(link.instance, now, |i, io| {
                        i.keyframe_request(link.user, track, io)
                    });
                }
            }
            ConnEvent::Offer(conn, sdp) => {
                if let Some(&link) = self.links.get(&conn) {
                    self.call(link.instance, now, |i, io| i.send_offer(link.user, sdp, io));
                }
            }
            ConnEvent::Closed(conn, reason) => {
                let reason = match reason {
                    CloseReason::Remote => LeaveReason::Left,
                    CloseReason::ConnectTimedOut => LeaveReason::ConnectFailed,
                    CloseReason::IdleTimedOut => LeaveReason::TimedOut,
                };
                self.forget(conn, reason, now);
            }
        }
    }

    /// One packet of a published track, to the publisher's instance.
    fn forward_rtp(
        &mut self,
        conn: ConnKey,
        mid: net::conn::Mid,
        rtp: &net::conn::RtpIn,
        now: Instant,
    ) {
        let Some(&link) = self.links.get(&conn) else {
            return self.count_drop("rtp_after_leave");
        };
        self.call(link.instance, now, |i, io| {
            i.forward_rtp(link.user, mid, rtp, io)
        });
    }

    fn count_drop(&mut self, reason: &'static str) {
        *self.metrics.dropped.entry(reason).or_default() += 1;
    }

    /// Calls into one instance with the shard's connections as its outbox,
    /// then removes the members it asked to. A panic ends that instance.
    fn call<R>(
        &mut self,
        key: Key,
        now: Instant,
        f: impl FnOnce(&mut Instance, &mut Io<'_>) -> R,
    ) -> Option<R> {
        let result = self.call_once(key, now, f)?;
        match result {
            Ok(r) => {
                self.remove_members(now);
                Some(r)
            }
            Err(message) => {
                self.fail_instance(key, message, now);
                None
            }
        }
    }

    /// One call into an instance, its panic caught and turned into a message.
    fn call_once<R>(
        &mut self,
        key: Key,
        now: Instant,
        f: impl FnOnce(&mut Instance, &mut Io<'_>) -> R,
    ) -> Option<Result<R, String>> {
        let hosted = self.instances.get_mut(key)?;
        let mut io = Io {
            out: &mut self.conns,
            encoder: &mut self.encoder,
            snapshots: &mut self.snapshots,
            snapshot_divisor: self.load.snapshot_divisor(),
            decoder: &mut self.decoder,
            metrics: &mut self.metrics,
            removals: &mut self.removals,
            now,
            clock: self.clock,
        };
        let instance = &mut hosted.instance;
        // The instance is dropped if this panics; nothing else it touched
        // is left half-written but the scratch codec, which is reset.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(instance, &mut io)));
        Some(result.map_err(|panic| {
            self.encoder = Encoder::default();
            self.decoder = Decoder::default();
            // Every buffer of it is cleared before use: reset all the same.
            self.snapshots = net::snapshot::SnapshotEncoder::default();
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            format!("instance {} failed: {what}", hosted.instance.id())
        }))
    }

    /// Disconnects and lets go of the members the instance asked to remove.
    fn remove_members(&mut self, now: Instant) {
        while !self.removals.is_empty() {
            let removals = std::mem::take(&mut self.removals);
            for r in removals {
                self.disconnect(r.link, r.reason, now);
            }
        }
    }

    /// Closes a member's connection (sending what it was last written) and
    /// lets its instance know it left.
    fn disconnect(&mut self, conn: ConnKey, reason: LeaveReason, now: Instant) {
        self.conns.close(conn);
        self.forget(conn, reason, now);
    }

    /// The connection `conn` is gone: its member leaves its instance.
    fn forget(&mut self, conn: ConnKey, reason: LeaveReason, now: Instant) {
        let Some(link) = self.links.remove(&conn) else {
            return; // Already forgotten (a removal asked for twice).
        };
        self.by_session.remove(&link.session);
        let Some(hosted) = self.instances.get(link.instance) else {
            debug_assert!(false, "a link to an instance that is gone");
            // Give the seat back all the same.
            return self.events.push_back(Event::SessionLeft {
                shard: self.index,
                instance_id: String::new(),
                session: link.session,
                user_id: String::new(),
                reason,
                joined: false,
            });
        };
        let instance_id = hosted.instance.id().to_owned();
        let member = hosted.instance.member(link.user);
        debug_assert!(member.is_some(), "a link without a member");
        let user_id = member.map(|m| m.user_id.clone()).unwrap_or_default();
        let joined = member.is_some_and(|m| m.is_joined());
        // When the instance fails here, it has left already; the seat is
        // given back below all the same.
        let _ = self.call(link.instance, now, |i, io| i.leave(link.user, io));
        self.schedule(link.instance);
        self.events.push_back(Event::SessionLeft {
            shard: self.index,
            instance_id,
            session: link.session,
            user_id,
            reason,
            joined,
        });
    }
}

mod lifecycle;
pub mod load;
