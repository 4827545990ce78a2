//! What crosses between the control thread and a shard: commands down,
//! events up, each an owned value on a bounded channel. Replies to a join
//! travel on a one-shot channel inside the command, so the HTTP handler that
//! waits for the SDP answer never blocks a thread.

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Arc;

use engine::PreparedScene;
use tokio::sync::oneshot;

/// A session (one WebRTC peer of one user) on the node; unique per node.
pub type SessionId = u64;

/// What an instance is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstanceKind {
    /// A location's world: scene, simulation, snapshots, actions.
    #[default]
    World,
    /// A room for a party or group, for their voice/video channel:
    /// members and actions only; no scene, no physics, no tick (the node
    /// forwards no media yet).
    Media,
}

impl InstanceKind {
    pub fn label(self) -> &'static str {
        match self {
            InstanceKind::World => "world",
            InstanceKind::Media => "media",
        }
    }
}

/// What a new instance needs.
#[derive(Debug)]
pub struct InstanceSpec {
    pub id: String,
    pub kind: InstanceKind,
    pub location_id: String,
    /// The scene, prepared once and shared by its instances on the node.
    pub scene: Arc<PreparedScene>,
    pub max_users: u32,
    /// Snapshots per second ([`crate::instance::snapshot_hz_error`] holds).
    pub snapshot_hz: u32,
    pub labels: BTreeMap<String, String>,
    /// Ends after this long with nobody in it; `None`: runs until ended.
    pub empty_timeout: Option<Duration>,
}

/// The action topics a session receives (it subscribes at join).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Topics {
    /// Every topic (the default).
    #[default]
    All,
    /// These topics only.
    Only(Vec<String>),
}

impl Topics {
    /// Whether an action on `topic` goes to this session.
    pub fn wants(&self, topic: &str) -> bool {
        match self {
            Topics::All => true,
            Topics::Only(list) => list.iter().any(|t| t == topic),
        }
    }

    /// Parses a comma-separated list (`chat,world`): each a valid topic
    /// ([`net::messages::is_valid_topic`]), at most
    /// [`net::messages::TOPICS_PER_SESSION_MAX`], duplicates merged. An
    /// empty list subscribes to nothing (presence and ownership still
    /// arrive).
    pub fn parse(list: &str) -> Result<Topics, String> {
        use net::messages::{TOPIC_BYTES_MAX, TOPICS_PER_SESSION_MAX, is_valid_topic};
        let mut topics: Vec<String> = Vec::new();
        for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !is_valid_topic(t) {
                let shown: String = t.chars().take(40).collect();
                return Err(format!(
                    "topic {shown:?} is not 1 to {TOPIC_BYTES_MAX} bytes of a-z, 0-9, '.', '_' and '-'"
                ));
            }
            if !topics.iter().any(|x| x == t) {
                topics.push(t.to_owned());
            }
            if topics.len() > TOPICS_PER_SESSION_MAX {
                return Err(format!(
                    "more than {TOPICS_PER_SESSION_MAX} topics (TOPICS_PER_SESSION_MAX)"
                ));
            }
        }
        Ok(Topics::Only(topics))
    }
}

/// A user's request to join, already authenticated by the control thread.
#[derive(Debug)]
pub struct JoinRequest {
    pub instance_id: String,
    pub session: SessionId,
    pub user_id: String,
    pub name: String,
    /// The action topics it receives.
    pub topics: Topics,
    pub offer_sdp: String,
    pub reply: oneshot::Sender<Result<String, JoinRefused>>,
}

/// Why a shard refused a join (the HTTP status follows from it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    #[error("malformed SDP offer: {0}")]
    BadOffer(String),
    #[error("instance {0} does not exist on this node")]
    UnknownInstance(String),
    #[error("instance {0} is full")]
    InstanceFull(String),
    #[error("the node is draining and admits nobody")]
    Draining,
    #[error("the shard hosts its maximum of {0} peers")]
    ShardFull(usize),
    #[error("the shard is busy ({load_percent}% of its core): try again shortly")]
    Busy { load_percent: u32 },
    #[error("nobody waits for this join any more")]
    Abandoned,
}

/// Control thread → shard.
#[derive(Debug)]
pub enum Command {
    CreateInstance(InstanceSpec),
    Join(JoinRequest),
    /// The user's session ends (`DELETE` on the session location).
    Leave {
        session: SessionId,
    },
    EndInstance {
        instance_id: String,
    },
    /// Removes every session of `user_id` from the instance, telling them why.
    Kick {
        instance_id: String,
        user_id: String,
        banned: bool,
        message: String,
    },
    /// A moderator mutes (or unmutes) `user_id`'s audio and/or video.
    Moderate {
        instance_id: String,
        user_id: String,
        audio: bool,
        video: bool,
        muted: bool,
    },
    /// Tell every client, end every instance after `grace`, admit nobody.
    Drain {
        grace: Duration,
    },
    /// Stop the shard now.
    Shutdown,
}

/// Why an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Nobody in it for its empty timeout.
    Empty,
    /// Ended through the control API.
    Ended,
    /// The node drained.
    Drained,
    /// Its scene could not be loaded.
    LoadFailed(String),
    /// A bug: its tick or message handling panicked (the message says
    /// where); the shard and its other instances went on.
    Failed(String),
}

impl EndReason {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            EndReason::Empty => "empty",
            EndReason::Ended => "ended",
            EndReason::Drained => "drained",
            EndReason::LoadFailed(_) => "load_failed",
            EndReason::Failed(_) => "failed",
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The client said so (`DELETE`, or it closed the peer connection).
    Left,
    /// ICE, DTLS or the data channels did not come up in time.
    ConnectFailed,
    /// Nothing heard from the client for the idle timeout.
    TimedOut,
    Kicked,
    /// Too many invalid messages, or an unsupported protocol version.
    ProtocolViolation,
    /// The reliable channel backed up beyond its limit.
    Congested,
    InstanceEnded,
    /// The same user joined again; the newer session took its place.
    Replaced,
    /// Joined, but no message arrived for the instance's silence timeout.
    Silent,
}

impl LeaveReason {
    pub fn label(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::ConnectFailed => "connect_failed",
            LeaveReason::TimedOut => "timed_out",
            LeaveReason::Kicked => "kicked",
            LeaveReason::ProtocolViolation => "protocol_violation",
            LeaveReason::Congested => "congested",
            LeaveReason::InstanceEnded => "instance_ended",
            LeaveReason::Replaced => "replaced",
            LeaveReason::Silent => "silent",
        }
    }
}

/// One instance's figures, sent with [`Event::Stats`].
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceStats {
    pub instance_id: String,
    pub users: u32,
    pub entities: u32,
    pub tick_p50_us: u32,
    pub tick_p99_us: u32,
}

/// Upper bounds (µs) of the tick-duration histogram buckets; the last bucket is +Inf.
pub const TICK_BUCKETS_US: [u64; 10] = [
    50, 100, 250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 33_000,
];

/// A shard's counters since it started (monotonic) and gauges (current).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardMetrics {
    pub instances: u32,
    /// Instances asleep: empty, their world at rest, not ticking.
    pub instances_asleep: u32,
    /// Smoothed share of its core the shard's thread uses, in percent.
    pub load_percent: u32,
    /// Peers get a snapshot every this many ticks (1: every tick; more
    /// while the shard sheds load).
    pub snapshot_divisor: u32,
    /// Joins refused because the shard was over its load limit.
    pub joins_refused_busy: u64,
    pub peers: u32,
    /// Entries in the shard's timer heap (stale ones included until they
    /// fall due or the heap is compacted).
    pub timers: u32,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Datagrams dropped by reason (unknown source, unparsable, send queue full...).
    pub dropped: BTreeMap<&'static str, u64>,
    /// Invalid client messages by protocol error reason.
    pub invalid_messages: BTreeMap<&'static str, u64>,
    /// Refused owned-entity updates, stale inputs, rate-limited actions.
    pub refused_messages: BTreeMap<&'static str, u64>,
    /// `Input` frames accepted (acks and owned-entity updates), stale ones excluded.
    pub inputs: u64,
    pub snapshots_sent: u64,
    pub snapshot_bytes: u64,
    /// Tick-duration histogram: counts per bucket of [`TICK_BUCKETS_US`], then +Inf.
    pub tick_buckets: [u64; TICK_BUCKETS_US.len() + 1],
    pub tick_sum_us: u64,
    pub ticks: u64,
    pub skipped_ticks: u64,
    pub stalls: u64,
    /// Tracks members published (counted when published).
    pub media_tracks_published: u64,
    /// RTP packets received on published tracks.
    pub media_packets_in: u64,
    /// RTP packets written to receivers, and their payload bytes.
    pub media_packets_forwarded: u64,
    pub media_bytes_forwarded: u64,
    /// Receivers' keyframe requests relayed to publishers, and those
    /// answered by a request relayed shortly before.
    pub media_keyframe_requests: u64,
    pub media_keyframe_requests_coalesced: u64,
    /// Receivers moved from one simulcast layer to another.
    pub media_layer_switches: u64,
    /// Active speaker changes announced.
    pub media_speaker_changes: u64,
    /// Gauges: tracks published (live), and receivers subscribed to them.
    pub media_tracks: u32,
    pub media_subscriptions: u32,
}

impl ShardMetrics {
    pub fn observe_tick(&mut self, us: u64) {
        let i = TICK_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(TICK_BUCKETS_US.len());
        self.tick_buckets[i] += 1;
        self.tick_sum_us += us;
        self.ticks += 1;
    }
}

/// Shard → control thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    InstanceStarted {
        shard: usize,
        instance_id: String,
        entities: u32,
    },
    InstanceEnded {
        shard: usize,
        instance_id: String,
        reason: EndReason,
    },
    /// ICE, DTLS and both channels are up; the user has an avatar.
    SessionJoined {
        shard: usize,
        instance_id: String,
        session: SessionId,
        user_id: String,
    },
    SessionLeft {
        shard: usize,
        instance_id: String,
        session: SessionId,
        user_id: String,
        reason: LeaveReason,
        /// Whether the session had fully joined (a seat is released either way).
        joined: bool,
    },
    /// Sent once a second.
    Stats {
        shard: usize,
        metrics: Box<ShardMetrics>,
        instances: Vec<InstanceStats>,
    },
    /// Ticks have run behind schedule for `behind_ms`.
    Stalled { shard: usize, behind_ms: u64 },
}
