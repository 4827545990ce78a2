//! Encoding into reused buffers and validated, in-place decoding.

use rkyv::api::high::{HighSerializer, HighValidator, to_bytes_in_with_alloc};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::{Arena, ArenaHandle};
use rkyv::util::AlignedVec;
use rkyv::{Portable, Serialize};

use crate::error::ProtocolError;
use crate::frame::{
    Channel, FRAME_HEADER_LEN, FrameHeader, MessageKind, split_frame, write_header,
};
use crate::messages::{
    ACTION_PAYLOAD_BYTES_MAX, ACTION_TYPE_BYTES_MAX, ArchivedAction, ArchivedActionBroadcast,
    ArchivedDraining, ArchivedEntityNames, ArchivedInput, ArchivedKick, ArchivedOwnershipChanged,
    ArchivedOwnershipRefused, ArchivedOwnershipRequest, ArchivedOwnershipRequested,
    ArchivedPeerJoined, ArchivedPeerLeft, ArchivedPing, ArchivedPong, ArchivedSdp,
    ArchivedTrackAdded, ArchivedTrackRemoved, ArchivedVersionMismatch, ArchivedWelcome,
    ENTITY_NAME_BYTES_MAX, ENTITY_NAMES_MAX, INPUT_OWNED_MAX, SDP_BYTES_MAX, TEXT_BYTES_MAX,
    WELCOME_CACHED_ACTIONS_MAX, WELCOME_OWNERS_MAX, is_valid_topic,
};

/// Largest payload any kind may carry; the decoder's scratch buffer size.
const PAYLOAD_BYTES_MAX: usize = 256 * 1024;

/// A validated message from a client, read in place.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientMessage<'a> {
    Input(FrameHeader, &'a ArchivedInput),
    Action(FrameHeader, &'a ArchivedAction),
    OwnershipRequest(FrameHeader, &'a ArchivedOwnershipRequest),
    Ping(FrameHeader, &'a ArchivedPing),
    Sdp(FrameHeader, &'a ArchivedSdp),
}

/// A validated message from the server, read in place (what clients and
/// bots decode). Snapshots are returned as their raw payload.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerMessage<'a> {
    Welcome(FrameHeader, &'a ArchivedWelcome),
    Snapshot(FrameHeader, &'a [u8]),
    ActionBroadcast(FrameHeader, &'a ArchivedActionBroadcast),
    PeerJoined(FrameHeader, &'a ArchivedPeerJoined),
    PeerLeft(FrameHeader, &'a ArchivedPeerLeft),
    OwnershipChanged(FrameHeader, &'a ArchivedOwnershipChanged),
    OwnershipRefused(FrameHeader, &'a ArchivedOwnershipRefused),
    OwnershipRequested(FrameHeader, &'a ArchivedOwnershipRequested),
    EntityNames(FrameHeader, &'a ArchivedEntityNames),
    Draining(FrameHeader, &'a ArchivedDraining),
    Kick(FrameHeader, &'a ArchivedKick),
    Pong(FrameHeader, &'a ArchivedPong),
    VersionMismatch(FrameHeader, &'a ArchivedVersionMismatch),
    Sdp(FrameHeader, &'a ArchivedSdp),
    TrackAdded(FrameHeader, &'a ArchivedTrackAdded),
    TrackRemoved(FrameHeader, &'a ArchivedTrackRemoved),
}

/// Decodes frames. Holds one aligned scratch buffer, used only when a
/// payload is not 16-byte aligned where it arrived; no other allocation.
#[derive(Debug)]
pub struct Decoder {
    scratch: AlignedVec<16>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            scratch: AlignedVec::with_capacity(FRAME_HEADER_LEN + 8 * 1024),
        }
    }
}

impl Decoder {
    /// Validates a frame a client sent on `channel`: the header, that the
    /// kind is a client kind on its channel, the archive (bytecheck), and
    /// every count, length and number in it.
    pub fn decode_client<'a>(
        &'a mut self,
        bytes: &'a [u8],
        channel: Channel,
    ) -> Result<ClientMessage<'a>, ProtocolError> {
        let (header, kind, payload) = self.open(bytes, channel, true)?;
        Ok(match kind {
            MessageKind::Input => {
                let input: &ArchivedInput = access(kind, payload)?;
                check_input(input)?;
                ClientMessage::Input(header, input)
            }
            MessageKind::Action => {
                let action: &ArchivedAction = access(kind, payload)?;
                check_action(
                    action.topic.as_str(),
                    action.action_type.as_str(),
                    action.payload.len(),
                )?;
                ClientMessage::Action(header, action)
            }
            MessageKind::OwnershipRequest => {
                ClientMessage::OwnershipRequest(header, access(kind, payload)?)
            }
            MessageKind::Ping => ClientMessage::Ping(header, access(kind, payload)?),
            MessageKind::Sdp => ClientMessage::Sdp(header, access_sdp(kind, payload)?),
            _ => return Err(ProtocolError::WrongDirection(kind)),
        })
    }

    /// Validates a frame the server sent on `channel` (the client side).
    pub fn decode_server<'a>(
        &'a mut self,
        bytes: &'a [u8],
        channel: Channel,
    ) -> Result<ServerMessage<'a>, ProtocolError> {
        let (header, kind, payload) = self.open(bytes, channel, false)?;
        Ok(match kind {
            MessageKind::Welcome => {
                let w: &ArchivedWelcome = access(kind, payload)?;
                check_text("user_id", w.user_id.len())?;
                check_count(
                    "cached_actions",
                    w.cached_actions.len(),
                    WELCOME_CACHED_ACTIONS_MAX,
                )?;
                for a in w.cached_actions.iter() {
                    check_action(a.topic.as_str(), a.action_type.as_str(), a.payload.len())?;
                }
                check_count("owners", w.owners.len(), WELCOME_OWNERS_MAX)?;
                ServerMessage::Welcome(header, w)
            }
            MessageKind::Snapshot => ServerMessage::Snapshot(header, payload),
            MessageKind::ActionBroadcast => {
                let a: &ArchivedActionBroadcast = access(kind, payload)?;
                check_action(a.topic.as_str(), a.action_type.as_str(), a.payload.len())?;
                ServerMessage::ActionBroadcast(header, a)
            }
            MessageKind::PeerJoined => {
                let p: &ArchivedPeerJoined = access(kind, payload)?;
                check_text("user_id", p.user_id.len())?;
                check_text("name", p.name.len())?;
                ServerMessage::PeerJoined(header, p)
            }
            MessageKind::PeerLeft => ServerMessage::PeerLeft(header, access(kind, payload)?),
            MessageKind::OwnershipChanged => {
                ServerMessage::OwnershipChanged(header, access(kind, payload)?)
            }
            MessageKind::OwnershipRefused => {
                ServerMessage::OwnershipRefused(header, access(kind, payload)?)
            }
            MessageKind::OwnershipRequested => {
                ServerMessage::OwnershipRequested(header, access(kind, payload)?)
            }
            MessageKind::EntityNames => {
                let n: &ArchivedEntityNames = access(kind, payload)?;
                check_count("entity names", n.entities.len(), ENTITY_NAMES_MAX)?;
                for e in n.entities.iter() {
                    check_count("entity name bytes", e.name.len(), ENTITY_NAME_BYTES_MAX)?;
                }
                ServerMessage::EntityNames(header, n)
            }
            MessageKind::Draining => ServerMessage::Draining(header, access(kind, payload)?),
            MessageKind::Kick => {
                let k: &ArchivedKick = access(kind, payload)?;
                check_text("message", k.message.len())?;
                ServerMessage::Kick(header, k)
            }
            MessageKind::Pong => ServerMessage::Pong(header, access(kind, payload)?),
            MessageKind::VersionMismatch => {
                ServerMessage::VersionMismatch(header, access(kind, payload)?)
            }
            MessageKind::ServerSdp => ServerMessage::Sdp(header, access_sdp(kind, payload)?),
            MessageKind::TrackAdded => ServerMessage::TrackAdded(header, access(kind, payload)?),
            MessageKind::TrackRemoved => {
                ServerMessage::TrackRemoved(header, access(kind, payload)?)
            }
            _ => return Err(ProtocolError::WrongDirection(kind)),
        })
    }
}

impl Decoder {
    /// The checks both directions share: the header, the sender's direction,
    /// the data channel; returns the payload aligned for in-place access.
    fn open<'a>(
        &'a mut self,
        bytes: &'a [u8],
        channel: Channel,
        from_client: bool,
    ) -> Result<(FrameHeader, MessageKind, &'a [u8]), ProtocolError> {
        let (header, kind, payload) = split_frame(bytes)?;
        if kind.is_from_client() != from_client {
            return Err(ProtocolError::WrongDirection(kind));
        }
        if kind.channel() != channel {
            return Err(ProtocolError::WrongChannel { kind });
        }
        Ok((header, kind, aligned(&mut self.scratch, payload)))
    }
}

/// Returns `payload` itself when it is 16-byte aligned, else a copy in `scratch`.
fn aligned<'a>(scratch: &'a mut AlignedVec<16>, payload: &'a [u8]) -> &'a [u8] {
    if payload.as_ptr().addr().is_multiple_of(16) {
        return payload;
    }
    scratch.clear();
    scratch.extend_from_slice(payload);
    scratch.as_slice()
}

fn access<'a, T>(kind: MessageKind, payload: &'a [u8]) -> Result<&'a T, ProtocolError>
where
    T: Portable + for<'v> CheckBytes<HighValidator<'v, rancor::Error>>,
{
    rkyv::access::<T, rancor::Error>(payload).map_err(|e| ProtocolError::InvalidArchive {
        kind,
        reason: e.to_string(),
    })
}

fn access_sdp(kind: MessageKind, payload: &[u8]) -> Result<&ArchivedSdp, ProtocolError> {
    let sdp: &ArchivedSdp = access(kind, payload)?;
    check_count("sdp bytes", sdp.sdp.len(), SDP_BYTES_MAX)?;
    Ok(sdp)
}

fn check_count(what: &'static str, count: usize, max: usize) -> Result<(), ProtocolError> {
    if count > max {
        return Err(ProtocolError::CountExceeded { what, count, max });
    }
    Ok(())
}

fn check_text(what: &'static str, len: usize) -> Result<(), ProtocolError> {
    check_count(what, len, TEXT_BYTES_MAX)
}

fn check_input(input: &ArchivedInput) -> Result<(), ProtocolError> {
    check_count("input.owned", input.owned.len(), INPUT_OWNED_MAX)?;
    for u in input.owned.iter() {
        if !u.position.iter().all(|v| v.to_native().is_finite()) {
            return Err(ProtocolError::NotFinite {
                what: "input.owned.position",
            });
        }
        if !u.rotation.iter().all(|v| v.to_native().is_finite()) {
            return Err(ProtocolError::NotFinite {
                what: "input.owned.rotation",
            });
        }
    }
    Ok(())
}

fn check_action(topic: &str, action_type: &str, payload_len: usize) -> Result<(), ProtocolError> {
    if !is_valid_topic(topic) {
        // Quoted in logs: at most 40 characters of it.
        return Err(ProtocolError::InvalidTopic(
            topic.chars().take(40).collect(),
        ));
    }
    if action_type.is_empty() {
        return Err(ProtocolError::CountExceeded {
            what: "action_type bytes (at least 1)",
            count: 0,
            max: ACTION_TYPE_BYTES_MAX,
        });
    }
    check_count(
        "action_type bytes",
        action_type.len(),
        ACTION_TYPE_BYTES_MAX,
    )?;
    check_count(
        "action payload bytes",
        payload_len,
        ACTION_PAYLOAD_BYTES_MAX,
    )
}

/// Encodes frames into one reused, aligned buffer with a reused serializer
/// arena: after the first few messages, encoding does not allocate.
pub struct Encoder {
    buf: AlignedVec<16>,
    arena: Arena,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("buf_capacity", &self.buf.capacity())
            .finish_non_exhaustive()
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            buf: AlignedVec::with_capacity(FRAME_HEADER_LEN + 8 * 1024),
            arena: Arena::new(),
        }
    }
}

/// The serializer messages are written with.
pub type FrameSerializer<'a, 'b> =
    HighSerializer<&'a mut AlignedVec<16>, ArenaHandle<'b>, rancor::Error>;

impl Encoder {
    /// Encodes `msg` as a frame of `kind`; the bytes stay valid until the
    /// next call. Fails when the payload is over the kind's limit (a sender
    /// bug, such as too many cached actions).
    pub fn encode<T>(
        &mut self,
        kind: MessageKind,
        sequence: u32,
        tick: u32,
        msg: &T,
    ) -> Result<&[u8], ProtocolError>
    where
        T: for<'a, 'b> Serialize<FrameSerializer<'a, 'b>>,
    {
        self.buf.clear();
        self.buf.resize(FRAME_HEADER_LEN, 0);
        to_bytes_in_with_alloc::<_, _, rancor::Error>(msg, &mut self.buf, self.arena.acquire())
            .map_err(|e| ProtocolError::InvalidArchive {
                kind,
                reason: e.to_string(),
            })?;
        let len = self.buf.len() - FRAME_HEADER_LEN;
        let max = kind.payload_bytes_max().min(PAYLOAD_BYTES_MAX);
        if len > max {
            return Err(ProtocolError::TooLarge { kind, len, max });
        }
        write_header(self.buf.as_mut_slice(), kind, len, sequence, tick);
        Ok(self.buf.as_slice())
    }
}
