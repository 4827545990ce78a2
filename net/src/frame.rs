//! The fixed frame header that starts every message.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::ProtocolError;

/// The protocol version this build speaks. See `docs/protocol.md` for what a
/// peer of another version is told.
pub const PROTOCOL_VERSION: u8 = 4;

/// Bytes in a [`FrameHeader`]. Sixteen, so an archive that follows it in a
/// 16-byte aligned buffer is itself 16-byte aligned.
pub const FRAME_HEADER_LEN: usize = 16;

/// The frame header, little-endian, read in place from received bytes.
///
/// ```text
/// offset 0  u8   version   PROTOCOL_VERSION
/// offset 1  u8   kind      MessageKind
/// offset 2  u16  flags     reserved: must be 0
/// offset 4  u32  length    payload bytes after the header
/// offset 8  u32  sequence  per channel and direction, +1 per message
/// offset 12 u32  tick      sender's view: server tick, or client's last snapshot tick
/// ```
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct FrameHeader {
    pub version: u8,
    pub kind: u8,
    pub flags: U16,
    pub length: U32,
    pub sequence: U32,
    pub tick: U32,
}

const _: () = assert!(size_of::<FrameHeader>() == FRAME_HEADER_LEN);

/// Every message kind, both directions. Client kinds are below 64, server
/// kinds from 64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum MessageKind {
    // client -> server
    Input = 1,
    Action = 2,
    OwnershipRequest = 3,
    Ping = 4,
    Sdp = 5,
    // server -> client
    Welcome = 64,
    Snapshot = 65,
    ActionBroadcast = 66,
    PeerJoined = 67,
    PeerLeft = 68,
    OwnershipChanged = 69,
    Draining = 70,
    Kick = 71,
    Pong = 72,
    VersionMismatch = 73,
    OwnershipRefused = 74,
    OwnershipRequested = 75,
    EntityNames = 76,
    ServerSdp = 77,
    TrackAdded = 78,
    TrackRemoved = 79,
}

impl MessageKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        use MessageKind::*;
        Some(match v {
            1 => Input,
            2 => Action,
            3 => OwnershipRequest,
            4 => Ping,
            5 => Sdp,
            64 => Welcome,
            65 => Snapshot,
            66 => ActionBroadcast,
            67 => PeerJoined,
            68 => PeerLeft,
            69 => OwnershipChanged,
            70 => Draining,
            71 => Kick,
            72 => Pong,
            73 => VersionMismatch,
            74 => OwnershipRefused,
            75 => OwnershipRequested,
            76 => EntityNames,
            77 => ServerSdp,
            78 => TrackAdded,
            79 => TrackRemoved,
            _ => return None,
        })
    }

    pub fn is_from_client(self) -> bool {
        (self as u8) < 64
    }

    /// The data channel this kind travels on.
    pub fn channel(self) -> Channel {
        match self {
            MessageKind::Input | MessageKind::Snapshot | MessageKind::Ping | MessageKind::Pong => {
                Channel::State
            }
            _ => Channel::Actions,
        }
    }

    /// The largest payload this kind may carry.
    pub fn payload_bytes_max(self) -> usize {
        match self {
            MessageKind::Input => 1024,
            MessageKind::Ping | MessageKind::Pong => 64,
            MessageKind::OwnershipRequest
            | MessageKind::OwnershipChanged
            | MessageKind::OwnershipRefused
            | MessageKind::OwnershipRequested => 64,
            MessageKind::PeerLeft | MessageKind::Draining | MessageKind::VersionMismatch => 64,
            MessageKind::TrackAdded | MessageKind::TrackRemoved => 64,
            // The SDP and its archive's string header.
            MessageKind::Sdp | MessageKind::ServerSdp => crate::messages::SDP_BYTES_MAX + 64,
            MessageKind::Snapshot => crate::SNAPSHOT_DATAGRAM_BYTES_MAX - FRAME_HEADER_LEN,
            MessageKind::Action | MessageKind::ActionBroadcast => 8 * 1024,
            MessageKind::PeerJoined | MessageKind::Kick => 1024,
            MessageKind::EntityNames => 64 * 1024,
            MessageKind::Welcome => 256 * 1024,
        }
    }
}

/// The two data channels of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `state`: unordered, no retransmits. Snapshots, inputs, ping/pong.
    State,
    /// `actions`: reliable, ordered. Everything else.
    Actions,
}

impl Channel {
    /// The data channel label in the SDP / DCEP open.
    pub fn label(self) -> &'static str {
        match self {
            Channel::State => "state",
            Channel::Actions => "actions",
        }
    }
}

/// Checks a frame's header and returns it with the payload.
///
/// Checks, in order: at least a header's bytes; the version (a different
/// one is `VersionMismatch`, so the caller can tell the peer which version
/// it speaks); a known kind; flags zero; the declared length equal to the
/// bytes that follow and within the kind's maximum.
pub fn split_frame(bytes: &[u8]) -> Result<(FrameHeader, MessageKind, &[u8]), ProtocolError> {
    let (header, payload) = FrameHeader::read_from_prefix(bytes)
        .map_err(|_| ProtocolError::Truncated { len: bytes.len() })?;
    if header.version != PROTOCOL_VERSION {
        return Err(ProtocolError::VersionMismatch {
            theirs: header.version,
        });
    }
    let kind = MessageKind::from_u8(header.kind).ok_or(ProtocolError::UnknownKind(header.kind))?;
    if header.flags.get() != 0 {
        return Err(ProtocolError::ReservedFlags(header.flags.get()));
    }
    let declared = header.length.get() as usize;
    if declared > kind.payload_bytes_max() {
        return Err(ProtocolError::TooLarge {
            kind,
            len: declared,
            max: kind.payload_bytes_max(),
        });
    }
    if declared != payload.len() {
        return Err(ProtocolError::LengthMismatch {
            declared,
            actual: payload.len(),
        });
    }
    Ok((header, kind, payload))
}

/// Writes a header for `kind` into the first [`FRAME_HEADER_LEN`] bytes of `out`.
pub fn write_header(out: &mut [u8], kind: MessageKind, length: usize, sequence: u32, tick: u32) {
    let header = FrameHeader {
        version: PROTOCOL_VERSION,
        kind: kind as u8,
        flags: U16::new(0),
        length: U32::new(length as u32),
        sequence: U32::new(sequence),
        tick: U32::new(tick),
    };
    out[..FRAME_HEADER_LEN].copy_from_slice(header.as_bytes());
}
