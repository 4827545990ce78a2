//! Every message except snapshots, as rkyv archives.
//!
//! The structs here are what the sender builds; receivers read the
//! `Archived*` forms in place after validation (see [`crate::codec`]).

use rkyv::{Archive, Deserialize, Serialize};

/// Most owned-entity updates in one [`Input`].
pub const INPUT_OWNED_MAX: usize = 16;
/// Longest action type name, in bytes.
pub const ACTION_TYPE_BYTES_MAX: usize = 64;
/// Largest action payload, in bytes.
pub const ACTION_PAYLOAD_BYTES_MAX: usize = 4096;
/// Longest user id, display name or kick message, in bytes.
pub const TEXT_BYTES_MAX: usize = 256;
/// Most cached actions replayed in one [`Welcome`].
pub const WELCOME_CACHED_ACTIONS_MAX: usize = 1024;
/// Longest topic name, in bytes (`a-z`, `0-9`, `.`, `_`, `-`).
pub const TOPIC_BYTES_MAX: usize = 32;
/// Most topics one session may subscribe to.
pub const TOPICS_PER_SESSION_MAX: usize = 16;
/// Most owned entities listed in one [`Welcome`].
pub const WELCOME_OWNERS_MAX: usize = 4096;
/// Most entries in one [`EntityNames`].
pub const ENTITY_NAMES_MAX: usize = 2048;
/// Longest entity name, in bytes (the scene format's default limit).
pub const ENTITY_NAME_BYTES_MAX: usize = 128;
/// Longest SDP in an [`Sdp`] message, in bytes (as the HTTP join's offer).
pub const SDP_BYTES_MAX: usize = 64 * 1024;

/// Whether `topic` is a valid topic name: 1 to [`TOPIC_BYTES_MAX`] bytes of
/// lowercase ASCII letters, digits, `.`, `_` and `-`.
pub fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= TOPIC_BYTES_MAX
        && topic.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Client -> server on `state`: the transforms of entities the client owns.
/// The frame header's `tick` carries the last snapshot tick the client has
/// received (its acknowledgement) and `sequence` orders inputs.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Input {
    pub owned: Vec<OwnedUpdate>,
}

/// One owned entity's transform as the client sees it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct OwnedUpdate {
    pub network_id: u32,
    pub position: [f32; 3],
    /// Unit quaternion `[x, y, z, w]`.
    pub rotation: [f32; 4],
}

/// Who an action is for. Only members subscribed to the action's topic
/// receive it, whatever its target.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq))]
pub enum Target {
    /// Every other user of the instance (the sender has its own action).
    Everyone,
    /// One user, by instance-local user index.
    User(u32),
    /// The server only (not relayed).
    Server,
}

/// Whether an action is kept for users who join later (replayed in their
/// [`Welcome`]). Only actions for [`Target::Everyone`] are kept.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq))]
pub enum Cache {
    /// Relayed, not kept.
    No,
    /// Kept, beside every earlier one (a log: chat lines, spawned objects),
    /// until the instance's cache limits drop the oldest.
    Keep,
    /// Kept in place of the sender's earlier cached action of the same
    /// type (a state: avatar model, mute flag); dropped when the sender
    /// leaves.
    ReplaceOwn,
}

/// Client -> server on `actions`: an action to relay.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Action {
    /// What the action is about, e.g. `chat`, `world`, `media`: clients
    /// receive the topics they subscribed to at join (see
    /// [`is_valid_topic`]).
    pub topic: String,
    /// Application-defined name, e.g. `chat.message`; 1..=64 bytes.
    pub action_type: String,
    pub target: Target,
    pub cache: Cache,
    pub payload: Vec<u8>,
}

/// What an [`OwnershipRequest`] asks for.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq))]
pub enum OwnershipOp {
    /// Take an entity nobody owns. When another user owns it the request is
    /// refused and that owner is sent an [`OwnershipRequested`].
    Take,
    /// Give back an entity this user owns.
    Release,
    /// Hand an entity this user owns to another user of the instance.
    Transfer { to: u32 },
}

/// Client -> server on `actions`: take, release or hand over an entity.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct OwnershipRequest {
    pub network_id: u32,
    pub op: OwnershipOp,
}

/// Client -> server on `state`: round-trip measurement and keep-alive.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Ping {
    /// Echoed back in [`Pong`].
    pub client_time_us: u64,
}

/// Server -> client on `actions`, first message after the channels open.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Welcome {
    pub user_id: String,
    /// This user's instance-local index (stamped on its actions).
    pub user_index: u32,
    /// Network id of this user's avatar entity.
    pub avatar: u32,
    pub tick_hz: u16,
    /// Snapshots per second (a divisor of `tick_hz`): snapshot ticks are
    /// `tick_hz / snapshot_hz` apart.
    pub snapshot_hz: u16,
    /// World bounds; snapshot positions are quantised within them.
    pub bounds_min: [f32; 3],
    pub bounds_max: [f32; 3],
    /// Bits per quantised position axis (see `docs/protocol.md`).
    pub position_bits: u8,
    /// Cached actions on this user's topics, oldest first.
    pub cached_actions: Vec<ActionBroadcast>,
    /// Entities other than avatars that users own now (avatars are owned by
    /// their user: see [`PeerJoined::avatar`]).
    pub owners: Vec<EntityOwner>,
}

/// Server -> client on `actions`, after the [`Welcome`]: the scene names of
/// the instance's named scene entities, in one or more messages. Any
/// network id neither named here nor an avatar ([`PeerJoined::avatar`]) is
/// an entity spawned while the instance ran.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct EntityNames {
    pub entities: Vec<EntityName>,
}

/// A scene entity's network id and its name in the scene.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct EntityName {
    pub network_id: u32,
    pub name: String,
}

/// An entity and the user who owns it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct EntityOwner {
    pub network_id: u32,
    pub owner: u32,
}

/// Server -> client on `actions`: a relayed action. `sender` is stamped by
/// the server from the session, never taken from the client.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ActionBroadcast {
    /// User index of the sender; `u32::MAX` for the server itself.
    pub sender: u32,
    pub topic: String,
    pub action_type: String,
    pub target: Target,
    pub cache: Cache,
    pub payload: Vec<u8>,
}

/// Server -> client on `actions`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct PeerJoined {
    pub user_index: u32,
    pub user_id: String,
    pub name: String,
    /// Network id of the user's avatar (owned by the user).
    pub avatar: u32,
}

/// Server -> client on `actions`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct PeerLeft {
    pub user_index: u32,
}

/// Server -> client on `actions`: an entity's owner changed (granted,
/// revoked, or released).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct OwnershipChanged {
    pub network_id: u32,
    /// The new owner's user index, or `None` when nobody owns it.
    pub owner: Option<u32>,
}

/// Why an [`OwnershipRequest`] was refused.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq))]
pub enum OwnershipRefusal {
    /// No entity has that network id.
    UnknownEntity,
    /// Avatars belong to their user for the whole session.
    Avatar,
    /// Another user owns it (by user index); that user was asked to hand it
    /// over.
    OwnedBy(u32),
    /// Release or transfer of an entity this user does not own.
    NotOwner,
    /// A transfer to a user index that is not in the instance.
    UnknownUser(u32),
    /// A fixed or kinematic scene body (a wall, a floor, a platform): the
    /// scene places it, not users.
    SceneBody,
    /// The user (the taker, or the one transferred to) owns this many
    /// entities already, its avatar aside (`instance.owned_entities_max`).
    TooMany(u32),
}

/// Server -> client on `actions`, to the requester: its ownership request
/// was refused.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct OwnershipRefused {
    pub network_id: u32,
    pub op: OwnershipOp,
    pub reason: OwnershipRefusal,
}

/// Server -> client on `actions`, to an entity's owner: user `by` asked
/// for it. The owner may answer with [`OwnershipOp::Transfer`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct OwnershipRequested {
    pub network_id: u32,
    pub by: u32,
}

/// Server -> client on `actions`: the node is shutting down; the instance
/// ends after `grace_ms`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Draining {
    pub grace_ms: u32,
}

/// Why a client was removed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq))]
pub enum KickReason {
    /// An operator kicked the user (the control API).
    Operator,
    /// Banned for a while; reconnecting is refused until the ban ends.
    Banned,
    /// Too many invalid messages.
    ProtocolViolation,
    /// The instance ended.
    InstanceEnded,
    /// The instance failed (a server bug) and ended; the node goes on.
    ServerError,
    /// The same user joined again: the newer session replaces this one.
    Replaced,
    /// No message arrived for the instance's silence timeout (clients send
    /// a `Ping` a second when they have nothing else to send).
    Silent,
}

/// Server -> client on `actions`, sent before the server closes the peer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Kick {
    pub reason: KickReason,
    pub message: String,
}

/// Either direction on `actions`: an SDP offer or answer that renegotiates
/// the media of an open session (`docs/media.md`). The server offers when
/// it has tracks to add to or remove from what it sends the client; the
/// client offers when it adds or removes tracks it publishes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Sdp {
    pub kind: SdpKind,
    pub sdp: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq))]
pub enum SdpKind {
    Offer,
    Answer,
}

/// Audio or video.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq))]
pub enum TrackKind {
    Audio,
    Video,
}

/// Server -> client on `actions`: a member publishes a track. The server's
/// offer that adds it to what this client receives names it in its
/// `a=msid` line: stream id `track-<track>`. Replayed to joiners after the
/// `Welcome`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct TrackAdded {
    /// Instance-wide track id, never reused in the instance.
    pub track: u32,
    /// User index of the publisher.
    pub publisher: u32,
    pub kind: TrackKind,
}

/// Server -> client on `actions`: a track is no longer published (its
/// publisher removed it or left).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct TrackRemoved {
    pub track: u32,
}

/// Server -> client on `state`: answer to a [`Ping`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Pong {
    pub client_time_us: u64,
    pub server_tick: u32,
}

/// Server -> client on `actions`, then the server closes the peer: the
/// client's frame had another protocol version.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct VersionMismatch {
    pub server_version: u8,
}
