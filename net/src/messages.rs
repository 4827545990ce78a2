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

/// Who an action is for.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq))]
pub enum Target {
    /// Every user of the instance, the sender included.
    Everyone,
    /// One user, by instance-local user index.
    User(u32),
    /// The server only (not relayed).
    Server,
}

/// Client -> server on `actions`: an action to relay.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Action {
    /// Application-defined name, e.g. `chat.message`; 1..=64 bytes.
    pub action_type: String,
    pub target: Target,
    /// Replayed to users who join later (in their [`Welcome`]).
    pub cached: bool,
    pub payload: Vec<u8>,
}

/// Client -> server on `actions`: take or release ownership of an entity.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct OwnershipRequest {
    pub network_id: u32,
    /// `true` to take ownership, `false` to release it.
    pub take: bool,
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
    /// Cached actions, oldest first.
    pub cached_actions: Vec<ActionBroadcast>,
}

/// Server -> client on `actions`: a relayed action. `sender` is stamped by
/// the server from the session, never taken from the client.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ActionBroadcast {
    /// User index of the sender; `u32::MAX` for the server itself.
    pub sender: u32,
    pub action_type: String,
    pub target: Target,
    pub cached: bool,
    pub payload: Vec<u8>,
}

/// Server -> client on `actions`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct PeerJoined {
    pub user_index: u32,
    pub user_id: String,
    pub name: String,
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
}

/// Server -> client on `actions`, sent before the server closes the peer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Kick {
    pub reason: KickReason,
    pub message: String,
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
