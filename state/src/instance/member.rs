//! One member of an instance: a user's session, connecting or joined.

use std::time::Instant;

use engine::{EntityId, UserIndex};
use net::codec::FrameSerializer;
use net::conn::{ConnKey, SendError};
use net::input::PeerInput;
use net::messages::{PeerJoined, Welcome};
use net::snapshot::{ClientSnapshots, WorldFrame};
use net::{Channel, MessageKind, ProtocolError};
use rkyv::Serialize;

use super::Io;
use crate::commands::{LeaveReason, SessionId, Topics};

/// Bytes waiting on a member's `state` channel above which its snapshot
/// for a tick is skipped (two full snapshots).
pub const STATE_BACKLOG_BYTES_MAX: usize = 2 * net::SNAPSHOT_DATAGRAM_BYTES_MAX;

/// Where a member stands.
#[derive(Debug)]
pub enum MemberState {
    /// The SDP answer went out; the connection is coming up.
    Connecting { since: Instant },
    /// Both channels opened, avatar spawned, `Welcome` sent.
    Joined(Box<Joined>),
}

/// What a joined member has.
#[derive(Debug)]
pub struct Joined {
    /// `None` in a media instance.
    pub avatar: Option<EntityId>,
    pub snapshots: ClientSnapshots,
    pub input: PeerInput,
    pub actions: TokenBucket,
}

#[derive(Debug)]
pub struct Member {
    /// Its connection (where the router writes what it is sent).
    pub link: ConnKey,
    pub session: SessionId,
    pub user: UserIndex,
    pub user_id: String,
    pub name: String,
    /// The action topics it receives.
    pub topics: Topics,
    pub state: MemberState,
    state_sequence: u32,
    actions_sequence: u32,
    invalid_messages: u32,
    /// Set once its removal is asked for: it is sent nothing more.
    pub leaving: Option<LeaveReason>,
    /// When its last valid message arrived (or it joined).
    pub last_heard: Instant,
}

/// Why a frame was not sent to a member (a metrics label for snapshots).
#[derive(Debug, thiserror::Error)]
pub enum SendFailed {
    #[error("encode: {0}")]
    Encode(#[from] ProtocolError),
    #[error("{0}")]
    Write(#[from] SendError),
}

impl Member {
    pub fn new(
        link: ConnKey,
        session: SessionId,
        user: UserIndex,
        user_id: String,
        name: String,
        topics: Topics,
        now: Instant,
    ) -> Member {
        Member {
            link,
            session,
            user,
            user_id,
            name,
            topics,
            state: MemberState::Connecting { since: now },
            state_sequence: 0,
            actions_sequence: 0,
            invalid_messages: 0,
            leaving: None,
            last_heard: now,
        }
    }

    pub fn is_joined(&self) -> bool {
        matches!(self.state, MemberState::Joined(_))
    }

    /// Joined and not on its way out: it is sent what the instance says.
    pub fn is_listening(&self) -> bool {
        self.is_joined() && self.leaving.is_none()
    }

    pub fn joined_mut(&mut self) -> Option<&mut Joined> {
        match &mut self.state {
            MemberState::Joined(j) => Some(j),
            MemberState::Connecting { .. } => None,
        }
    }

    pub fn avatar(&self) -> Option<EntityId> {
        match &self.state {
            MemberState::Joined(j) => j.avatar,
            MemberState::Connecting { .. } => None,
        }
    }

    /// Counts an invalid message; true when it is one too many.
    pub fn count_invalid(&mut self, max: u32) -> bool {
        self.invalid_messages += 1;
        self.invalid_messages > max
    }

    /// Encodes and writes one frame on `channel`.
    pub fn send<T>(
        &mut self,
        io: &mut Io<'_>,
        channel: Channel,
        kind: MessageKind,
        tick: u32,
        msg: &T,
    ) -> Result<usize, SendFailed>
    where
        T: for<'a, 'b> Serialize<FrameSerializer<'a, 'b>>,
    {
        let sequence = match channel {
            Channel::State => &mut self.state_sequence,
            Channel::Actions => &mut self.actions_sequence,
        };
        *sequence = sequence.wrapping_add(1);
        let bytes = io.encoder.encode(kind, *sequence, tick, msg)?;
        Ok(io.out.write(self.link, channel, bytes)?)
    }

    /// Sends the `Welcome`. A long action cache may not fit one frame: the
    /// oldest half is left out until it fits.
    pub fn send_welcome(&mut self, io: &mut Io<'_>, tick: u32, welcome: &mut Welcome) {
        while let Err(e) = self.send(io, Channel::Actions, MessageKind::Welcome, tick, &*welcome) {
            if welcome.cached_actions.is_empty() {
                tracing::warn!(session = self.session, "cannot send Welcome: {e}");
                return;
            }
            let half = welcome.cached_actions.len() / 2;
            welcome
                .cached_actions
                .drain(..=half.min(welcome.cached_actions.len() - 1));
        }
    }

    /// Who this member is, as told to the others: `avatar` is the network
    /// id of its avatar.
    pub fn announcement(&self, avatar: u32) -> PeerJoined {
        PeerJoined {
            user_index: self.user.0,
            user_id: self.user_id.clone(),
            name: self.name.clone(),
            avatar,
        }
    }

    /// Encodes this tick's snapshot of `frame` as seen from `viewer` and
    /// writes it on `state`; returns its bytes, or why nothing was sent (a
    /// metrics label).
    pub fn send_snapshot(
        &mut self,
        io: &mut Io<'_>,
        frame: &WorldFrame,
        viewer: engine::Vec3,
    ) -> Result<usize, &'static str> {
        // A snapshot queued behind older ones arrives late and is acked too
        // late to serve as a baseline: while the transport is backed up
        // (congestion control after loss), skip this tick's snapshot; the
        // next one carries everything that changed.
        if io.out.buffered(self.link, Channel::State) > STATE_BACKLOG_BYTES_MAX {
            return Err("snapshot_backlog");
        }
        let sequence = self.state_sequence.wrapping_add(1);
        let MemberState::Joined(joined) = &mut self.state else {
            debug_assert!(false, "snapshots go to joined members only");
            return Err("snapshot_not_joined");
        };
        let bytes = joined
            .snapshots
            .encode(io.snapshots, frame, viewer, sequence)
            .map_err(|e| {
                tracing::warn!(session = self.session, "snapshot encode failed: {e}");
                "snapshot_encode"
            })?;
        // The frame lives in the shard's encoder buffer: written without a copy.
        let written = io.out.write(self.link, Channel::State, bytes);
        self.state_sequence = sequence;
        written.map_err(|_| "snapshot_refused")
    }
}

/// A token bucket of actions: `per_second` refill, a burst of as many.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f32,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(per_second: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: per_second as f32,
            at: now,
        }
    }

    /// Refills the bucket and takes one token if there is one.
    pub fn take(&mut self, now: Instant, per_second: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f32();
        self.at = now;
        let burst = per_second as f32;
        self.tokens = (self.tokens + elapsed * burst).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
