//! One WebRTC peer on a shard: its str0m `Rtc` (ICE-lite, DTLS, SCTP), its
//! two data channels, and the user's per-session protocol state.

use std::net::SocketAddr;
use std::time::Instant;

use engine::{EntityId, UserIndex};
use net::codec::FrameSerializer;
use net::input::{InputLimits, PeerInput};
use net::messages::{PeerJoined, Welcome};
use net::snapshot::ClientSnapshots;
use net::{Channel, Encoder, MessageKind, ProtocolError};
use rkyv::Serialize;
use state::commands::{JoinRequest, LeaveReason, SessionId};
use str0m::channel::ChannelId;
use str0m::net::Transmit;
use str0m::{Event, Output, Rtc};

use super::instance::Instance;
use super::slab::Key;

/// Bytes waiting on a peer's `state` channel above which its snapshot for
/// a tick is skipped (two full snapshots).
pub const STATE_BACKLOG_BYTES_MAX: usize = 2 * net::SNAPSHOT_DATAGRAM_BYTES_MAX;

/// Remote addresses remembered per peer (ICE may try several candidates).
pub const PEER_ADDRS_MAX: usize = 4;

/// What the shard must act on after polling a peer.
#[derive(Debug)]
pub enum PeerEvent {
    ChannelOpen(ChannelId, String),
    ChannelData(ChannelId, Vec<u8>),
    /// The peer connection closed, failed, or a channel we need closed.
    Closed,
}

#[derive(Debug)]
pub struct Peer {
    pub rtc: Rtc,
    pub session: SessionId,
    pub instance: Key,
    pub user_id: String,
    pub name: String,
    pub user: UserIndex,
    pub ufrag: String,
    pub addrs: Vec<SocketAddr>,
    pub state_channel: Option<ChannelId>,
    pub actions_channel: Option<ChannelId>,
    /// Both channels opened, avatar spawned, `Welcome` sent.
    pub joined: bool,
    pub avatar: Option<EntityId>,
    pub input: PeerInput,
    pub snapshots: Option<Box<ClientSnapshots>>,
    pub state_sequence: u32,
    pub actions_sequence: u32,
    pub invalid_messages: u32,
    /// Token bucket of actions: tokens left and when it was last filled.
    pub action_tokens: f32,
    pub action_tokens_at: Instant,
    pub created: Instant,
    pub last_heard: Instant,
    /// When str0m next wants a timeout.
    pub rtc_wake: Instant,
    /// The earliest timer queued for this peer, if any.
    pub scheduled: Option<Instant>,
    /// Set while it is being removed.
    pub leaving: Option<LeaveReason>,
    pub dirty: bool,
}

/// Why a message could not be written to a peer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the {0:?} channel is not open")]
    NotOpen(Channel),
    #[error("encode: {0}")]
    Encode(#[from] ProtocolError),
    #[error("the channel refused the message (buffer full)")]
    Refused,
    #[error("{0}")]
    Rtc(#[from] str0m::RtcError),
}

impl Peer {
    /// A peer whose offer was just accepted; it joins when both channels open.
    pub fn new(
        rtc: Rtc,
        request: &JoinRequest,
        instance: Key,
        user: UserIndex,
        ufrag: String,
        limits: InputLimits,
        now: Instant,
    ) -> Peer {
        Peer {
            rtc,
            session: request.session,
            instance,
            user_id: request.user_id.clone(),
            name: request.name.clone(),
            user,
            ufrag,
            addrs: Vec::with_capacity(PEER_ADDRS_MAX),
            state_channel: None,
            actions_channel: None,
            joined: false,
            avatar: None,
            input: PeerInput::new(user, limits),
            snapshots: None,
            state_sequence: 0,
            actions_sequence: 0,
            invalid_messages: 0,
            action_tokens: 0.0,
            action_tokens_at: now,
            created: now,
            last_heard: now,
            rtc_wake: now,
            scheduled: None,
            leaving: None,
            dirty: false,
        }
    }

    /// Starts the action bucket full: `per_second` actions may come at once.
    pub fn with_action_burst(mut self, per_second: u32) -> Peer {
        self.action_tokens = per_second as f32;
        self
    }

    /// Encodes and writes one frame on `channel`.
    pub fn send<T>(
        &mut self,
        encoder: &mut Encoder,
        channel: Channel,
        kind: MessageKind,
        tick: u32,
        msg: &T,
    ) -> Result<usize, SendError>
    where
        T: for<'a, 'b> Serialize<FrameSerializer<'a, 'b>>,
    {
        let sequence = match channel {
            Channel::State => &mut self.state_sequence,
            Channel::Actions => &mut self.actions_sequence,
        };
        *sequence = sequence.wrapping_add(1);
        let bytes = encoder.encode(kind, *sequence, tick, msg)?;
        self.write(channel, bytes)
    }

    /// Writes an already encoded frame on `channel`.
    pub fn write(&mut self, channel: Channel, bytes: &[u8]) -> Result<usize, SendError> {
        let id = self
            .channel_id(channel)
            .ok_or(SendError::NotOpen(channel))?;
        let mut ch = self.rtc.channel(id).ok_or(SendError::NotOpen(channel))?;
        if ch.write(true, bytes)? {
            Ok(bytes.len())
        } else {
            Err(SendError::Refused)
        }
    }

    /// Bytes waiting to be sent on `channel`.
    pub fn buffered(&mut self, channel: Channel) -> usize {
        match self.channel_id(channel).and_then(|id| self.rtc.channel(id)) {
            Some(mut ch) => ch.buffered_amount(),
            None => 0,
        }
    }

    fn channel_id(&self, channel: Channel) -> Option<ChannelId> {
        match channel {
            Channel::State => self.state_channel,
            Channel::Actions => self.actions_channel,
        }
    }

    /// Sends the `Welcome`. A long action cache may not fit one frame: the
    /// oldest half is left out until it fits.
    pub fn send_welcome(&mut self, encoder: &mut Encoder, tick: u32, welcome: &mut Welcome) {
        while let Err(e) = self.send(
            encoder,
            Channel::Actions,
            MessageKind::Welcome,
            tick,
            &*welcome,
        ) {
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

    /// Who this peer is, as told to the others.
    pub fn announcement(&self) -> PeerJoined {
        PeerJoined {
            user_index: self.user.0,
            user_id: self.user_id.clone(),
            name: self.name.clone(),
        }
    }

    /// Encodes this tick's snapshot of `inst` for this peer and writes it on
    /// `state`; returns its bytes, or why nothing was sent (a metrics label).
    pub fn send_snapshot(&mut self, inst: &Instance) -> Result<usize, &'static str> {
        // A snapshot queued behind older ones arrives late and is acked too
        // late to serve as a baseline: while the transport is backed up
        // (congestion control after loss), skip this tick's snapshot; the
        // next one carries everything that changed.
        if self.buffered(Channel::State) > STATE_BACKLOG_BYTES_MAX {
            return Err("snapshot_backlog");
        }
        let viewer = self
            .avatar
            .and_then(|a| inst.sim.world().transform(a).ok())
            .map(|t| t.position)
            .unwrap_or_default();
        let sequence = self.state_sequence.wrapping_add(1);
        let snapshots = self.snapshots.as_deref_mut().ok_or("snapshot_not_joined")?;
        let bytes = snapshots
            .encode(&inst.frame, viewer, sequence)
            .map_err(|e| {
                tracing::warn!(session = self.session, "snapshot encode failed: {e}");
                "snapshot_encode"
            })?;
        let len = bytes.len();
        // The frame lives in `snapshots`' buffer: written without a copy.
        let written = self
            .state_channel
            .and_then(|id| self.rtc.channel(id))
            .map(|mut ch| ch.write(true, bytes));
        self.state_sequence = sequence;
        match written {
            Some(Ok(true)) => Ok(len),
            _ => Err("snapshot_refused"),
        }
    }

    /// Which of our channels `id` is.
    pub fn channel_of(&self, id: ChannelId) -> Option<Channel> {
        if Some(id) == self.state_channel {
            Some(Channel::State)
        } else if Some(id) == self.actions_channel {
            Some(Channel::Actions)
        } else {
            None
        }
    }

    /// Polls str0m until it only has a timeout left: datagrams go to
    /// `transmit`, events to `events`. Returns false when the peer is dead.
    pub fn pump(
        &mut self,
        key: Key,
        mut transmit: impl FnMut(Transmit),
        events: &mut Vec<(Key, PeerEvent)>,
    ) -> bool {
        self.dirty = false;
        loop {
            if !self.rtc.is_alive() {
                events.push((key, PeerEvent::Closed));
                return false;
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.rtc_wake = t;
                    return true;
                }
                Ok(Output::Transmit(t)) => transmit(t),
                Ok(Output::Event(e)) => match e {
                    Event::ChannelOpen(id, label) => {
                        events.push((key, PeerEvent::ChannelOpen(id, label)))
                    }
                    Event::ChannelData(d) => {
                        events.push((key, PeerEvent::ChannelData(d.id, d.data)))
                    }
                    Event::ChannelClose(id) if self.channel_of(id).is_some() => {
                        events.push((key, PeerEvent::Closed));
                    }
                    Event::IceConnectionStateChange(str0m::IceConnectionState::Disconnected) => {
                        events.push((key, PeerEvent::Closed));
                    }
                    _ => {}
                },
                Err(e) => {
                    tracing::debug!(session = self.session, "peer failed: {e}");
                    events.push((key, PeerEvent::Closed));
                    return false;
                }
            }
        }
    }

    /// Refills the action token bucket and takes one token if there is one.
    pub fn take_action_token(&mut self, now: Instant, per_second: u32) -> bool {
        let elapsed = now
            .saturating_duration_since(self.action_tokens_at)
            .as_secs_f32();
        self.action_tokens_at = now;
        let burst = per_second as f32;
        self.action_tokens = (self.action_tokens + elapsed * per_second as f32).min(burst);
        if self.action_tokens >= 1.0 {
            self.action_tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
